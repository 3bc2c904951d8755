// Boost.JSON's implementation, compiled once into the tool (header-only mode: Debian ships the
// headers with libboost1.81-dev; no separate libboost_json link is needed).
#include <boost/json/src.hpp>
