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
};

/// Owns CPython in this process.
/// - At most one runtime can exist in a process, ever: CPython cannot be re-initialised
///   reliably once extension modules have been loaded. A second one throws std::logic_error.
/// - Construct and destroy it on the same thread (normally main()); it keeps the main
///   interpreter's thread state and does not hold the main GIL between calls.
/// - Destruction refuses new attaches (errc::runtime_finalizing), ends every live interpreter
///   last-in first-out (each waits for its attached threads), then calls Py_Finalize.
///   isola::interpreter objects that outlive it are left closed and safe to destroy.
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
  /// Number of interpreters created through isola that have not ended yet.
  std::size_t live_interpreters() const;

  const runtime_options& options() const noexcept { return options_; }

 private:
  runtime_options options_;
};

}  // namespace isola
