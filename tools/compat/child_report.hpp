// The report file of an `isola compat` child process: JSON lines, each written with one
// write(2) on a file opened for appending, so that what was written before a crash is there
// for the parent to read.
#pragma once

#include <boost/json.hpp>

#include <string>
#include <string_view>

namespace isola::cli::compat {

class child_report {
 public:
  /// Opens (creates) the file; throws std::runtime_error naming it if it cannot. Also asks the
  /// kernel to kill this process if the parent dies (a parent stopped with Ctrl-C leaves no
  /// child hanging on a module's import).
  explicit child_report(const std::string& path);
  ~child_report();
  child_report(const child_report&) = delete;
  child_report& operator=(const child_report&) = delete;

  /// {"begin": step, ...fields}
  void begin(std::string_view step, boost::json::object fields = {});
  /// {"end": step, ...fields}
  void end(std::string_view step, boost::json::object fields);
  /// {"error": what, "step": step}: isola itself failed in that step.
  void error(std::string_view step, std::string_view what);
  /// Any one line.
  void line(const boost::json::object& o);

 private:
  int fd_ = -1;
};

}  // namespace isola::cli::compat
