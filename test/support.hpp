// Helpers shared by the test files: the runtime main() holds, catching an expected failure
// as a value, counting failures in threads, running isola_test_child and other programs.
#pragma once

#include <isola/isola.hpp>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace isola_test {

/// The runtime main() constructed for the whole run.
isola::runtime& rt();

/// Folder of the helper modules (test/py); it is on sys.path of every interpreter.
std::string py_dir();

/// The isola executable of this build ($ISOLA_CLI overrides it).
std::string isola_path();

/// Marks the running case as unable to check (what it needs is missing; `why` says what) and
/// warns with `why`. A run in which a case skipped and none failed exits with 77, which meson
/// reports as SKIP. Call it from the test thread, then return from the case.
void skip(const std::string& why);

/// Whether skip() was called in this run.
bool skipped();

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

/// How long run_child and run_program let a program run before they kill it (with its whole
/// process group) and report it as hung: every wait in the suite is bounded.
inline constexpr int default_limit_seconds = 120;

/// Runs isola_test_child with args and waits: exit code (or the signal that killed it) and
/// everything it wrote to stdout and stderr.
struct child_result {
  int exit_code = -1;  ///< -1 if it did not exit normally
  int signal = 0;      ///< the signal that ended it, else 0
  bool hung = false;   ///< still running after the limit: killed
  std::string output;
  std::string describe() const;
};
child_result run_child(const std::vector<std::string>& args,
                       int limit_seconds = default_limit_seconds);

/// Runs a program (argv[0] is its path) with `input` on stdin and waits: what it wrote to
/// stdout and to stderr, separately.
struct program_result {
  int exit_code = -1;  ///< -1 if it did not exit normally
  int signal = 0;      ///< the signal that ended it, else 0
  bool hung = false;   ///< still running after the limit: killed
  std::string out;
  std::string err;
  std::string describe() const;
};
program_result run_program(const std::vector<std::string>& argv, const std::string& input = "",
                           int limit_seconds = default_limit_seconds, const std::string& cwd = "");

/// `isola bench ARGS... --json --quiet`, run as a program; `in` is a new interpreter whose
/// globals hold its output as `text` and the JSON's "results" dict as `results`. Throws
/// std::runtime_error describing the run when it does not exit 0.
struct bench_run {
  program_result run;
  std::unique_ptr<isola::interpreter> in;
};
bench_run run_bench(std::vector<std::string> args);

/// A program started in the background, in a process group of its own (killed with it if the
/// test ends first), with `input` on stdin and its output in files.
class background_program {
 public:
  /// Runs in `cwd` if given, else in this process's working directory.
  background_program(const std::vector<std::string>& argv, const std::string& input = "",
                     const std::string& cwd = "");
  ~background_program();
  background_program(const background_program&) = delete;
  background_program& operator=(const background_program&) = delete;
  /// What it has written to stdout / stderr so far.
  std::string out_so_far() const;
  std::string err_so_far() const;
  /// Waits until its stdout holds `text`, at most limit_seconds; false if it did not.
  bool wait_for_stdout(const std::string& text, int limit_seconds = 60) const;
  /// The same for stderr; false at once if the program has ended without writing it.
  bool wait_for_stderr(const std::string& text, int limit_seconds = 60) const;
  /// Whether it is still running (not ended, not reaped).
  bool running() const;
  int pid() const noexcept { return pid_; }
  void send_signal(int signal) const;
  /// Waits for it to end (killing it after limit_seconds) and collects what it wrote.
  program_result wait(int limit_seconds = default_limit_seconds);

 private:
  bool exited_zombie() const;
  std::string dir_;
  int pid_ = -1;
  bool reaped_ = false;
};

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
