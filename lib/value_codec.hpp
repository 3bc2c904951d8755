// Converting isola::value to and from Python objects in the current interpreter.
#pragma once

#include "lib/py.hpp"

#include <isola/value.hpp>

#include <string>
#include <utility>
#include <vector>

namespace isola::detail {

/// Copies a Python object into C++-owned memory. Raises (Python) TypeError naming the type for
/// unsupported objects and ValueError for cyclic or too deep structures, then throws
/// py::error_already_set.
value from_python(PyObject* o);

/// Makes new Python objects in the current interpreter. TypeError for unhashable dict keys.
py::object to_python(const value& v);

/// fn(*args, **kwargs) with the values converted; its result converted back. Throws
/// py::error_already_set.
value call_with_values(PyObject* fn, const std::vector<value>& args,
                       const std::vector<std::pair<std::string, value>>& kwargs = {});

}  // namespace isola::detail
