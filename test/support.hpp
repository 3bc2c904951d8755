// Helpers shared by the test files: the runtime main() holds, catching an expected failure
// as a value, counting failures in threads, running isola_test_child and other programs.
#pragma once

#include <isola/isola.hpp>

#include <atomic>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace isola_test {

/// The runtime main() constructed for the whole run.
isola::runtime& rt();

/// Folder of the helper modules (test/py); it is on sys.path of every interpreter.
std::string py_dir();

/// Runs f and returns the python_error it threw, or nothing if it threw none (any other
/// exception propagates, so Catch reports it).
template <typename F>
std::optional<isola::python_error> python_error_of(F&& f) {
  try {
    f();
  } catch (const isola::python_error& e) {
    return e;
  }
  return std::nullopt;
}

/// Runs f and returns the code of the isola::error it threw, or nothing if it threw none.
template <typename F>
std::optional<std::error_code> isola_error_of(F&& f) {
  try {
    f();
  } catch (const isola::error& e) {
    return e.code();
  }
  return std::nullopt;
}

/// Catch2 is not thread-safe: worker threads record failures here (with a note of the first)
/// and the test thread checks failures == 0 after joining them.
struct thread_failures {
  std::atomic<int> count{0};
  std::atomic<bool> noted{false};
  std::string first;  ///< written once, by the thread that set `noted`
  void fail(const std::string& what) {
    if (!noted.exchange(true)) first = what;
    ++count;
  }
  void check(bool ok, const std::string& what) {
    if (!ok) fail(what);
  }
};

/// Runs isola_test_child with args and waits: exit code (or the signal that killed it) and
/// everything it wrote to stdout and stderr.
struct child_result {
  int exit_code = -1;  ///< -1 if it did not exit normally
  int signal = 0;      ///< the signal that ended it, else 0
  std::string output;
  std::string describe() const;
};
child_result run_child(const std::vector<std::string>& args);

/// Runs a program (argv[0] is its path) with `input` on stdin and waits: what it wrote to
/// stdout and to stderr, separately.
struct program_result {
  int exit_code = -1;  ///< -1 if it did not exit normally
  int signal = 0;      ///< the signal that ended it, else 0
  std::string out;
  std::string err;
  std::string describe() const;
};
program_result run_program(const std::vector<std::string>& argv, const std::string& input = "");

/// A temporary directory removed with its contents at scope end.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& text);

}  // namespace isola_test
