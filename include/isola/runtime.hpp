// isola::runtime: owns CPython's lifetime in the process, from Py_InitializeFromConfig to
// Py_Finalize, and ends every interpreter it created in the right order first.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <isola/attach.hpp>

namespace isola {

struct runtime_options {
  /// sys.executable-style program name used by CPython's path computation.
  std::string program_name = "isola";
  /// Extra entries put at the front of sys.path in every interpreter.
  std::vector<std::string> sys_path;
  /// Python's home (prefix holding lib/python3.X); empty lets CPython find it.
  std::string python_home;
  /// Honour PYTHON* environment variables (PYTHONPATH, PYTHONHOME, ...). Off by default:
  /// the isolated configuration ignores them.
  bool use_environment = false;
  /// Let CPython install its signal handlers (SIGINT -> KeyboardInterrupt) in the main
  /// interpreter. Off by default: an embedding program usually owns its signals.
  bool install_signal_handlers = false;
  /// sys.argv of the main interpreter.
  std::vector<std::string> argv;
  /// Count the memory every interpreter holds (interpreter::memory(), isola.memory()) and
  /// allow hard limits (interpreter_config::memory_limit). It wraps CPython's allocators before
  /// CPython starts, so it is chosen once per process. On by default: it touches only large
  /// blocks and arenas, not pymalloc's small-object path (docs/memory.md has its cost).
  bool memory_accounting = true;
};

/// Owns CPython in this process.
/// - At most one runtime can exist in a process, ever: CPython cannot be re-initialised
///   reliably once extension modules have been loaded. A second one throws std::logic_error.
/// - Construct and destroy it on the same thread (normally main()); it keeps the main
///   interpreter's thread state and does not hold the main GIL between calls.
/// - Destruction refuses new attaches (errc::runtime_finalizing), ends every live interpreter
///   last-in first-out, then calls Py_Finalize. isola::interpreter objects that outlive it are
///   left closed and safe to destroy. Ending an interpreter here does not wait for its work:
///   queued tasks fail (errc::runtime_finalizing), SystemExit is raised in a running task and
///   in threads its code left running (after interpreter_config::end_timeout), each step
///   logged as a warning; code that still does not stop within interpreter_config::end_grace
///   is abandoned (see abandoned_interpreters()).
/// - If any interpreter was abandoned (its code ignored the interrupts: stuck in C code, say),
///   the destructor logs it and leaves CPython initialized rather than finalize it under a
///   running thread; the program should then end with std::quick_exit() or _exit().
class runtime {
 public:
  explicit runtime(runtime_options options = {});
  ~runtime();
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  /// True while a runtime is alive and not finalizing.
  static bool running() noexcept;

  /// A handle for attaching C++ threads to the main interpreter.
  interpreter_handle main_interpreter() const;

  /// Version of the CPython this process runs, e.g. "3.13.0".
  static std::string python_version();
  /// Number of interpreters created through isola that have not ended yet (abandoned ones
  /// excluded).
  std::size_t live_interpreters() const;
  /// Number of interpreters abandoned because their code did not stop when interrupted (a
  /// task stuck in C code past its timeout and grace period, threads that ignore SystemExit
  /// when their interpreter ends) and still running. While it is not 0, destroying the
  /// runtime leaves CPython initialized. Static: it can be asked after the runtime ended.
  static std::size_t abandoned_interpreters();
  /// Whether memory accounting is on in this process (runtime_options::memory_accounting).
  static bool memory_accounting() noexcept;
  /// Bytes still counted to interpreters that have ended (0 without accounting): their blocks
  /// that live on elsewhere, and the arenas CPython 3.12 and 3.13 keep when an interpreter ends
  /// with any block left (CPython gh-110411), a few MiB per ended interpreter.
  static std::size_t memory_of_ended_interpreters() noexcept;

  const runtime_options& options() const noexcept { return options_; }

 private:
  runtime_options options_;
};

}  // namespace isola
