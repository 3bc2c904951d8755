// isola::interpreter: one isolated CPython interpreter (Py_NewInterpreterFromConfig) with a
// worker thread that owns its long-lived thread state and runs its work.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <isola/attach.hpp>
#include <isola/memory.hpp>
#include <isola/value.hpp>

namespace isola {

/// What an own-GIL interpreter does with an extension module that does not declare
/// per-interpreter GIL support (single-phase init, or multi-phase without
/// Py_MOD_PER_INTERPRETER_GIL_SUPPORTED). See docs/extensions.md.
enum class extension_policy {
  /// Refused at import with an ImportError that names the module, why, and the ways out.
  strict,
  /// Run in interpreters that share the main GIL and allocator, where CPython loads any
  /// module (interpreter_config::shared_gil()); a pool with this policy is all shared-GIL.
  shared_gil,
  /// Loaded anyway, with an isola.UnsafeExtensionWarning (a RuntimeWarning) naming the module
  /// once per interpreter. It may crash: the module's C state is shared without a lock.
  unsafe,
  /// Pools only: a task whose import is refused runs again, from the start, in the pool's
  /// shared-GIL lane, and its module goes there directly from then on (CPython 3.13+; on 3.12,
  /// where a refused module's init has already run inside the interpreter, only the pool's
  /// shared_gil_modules route tasks).
  automatic,
};

/// Every field of CPython's PyInterpreterConfig, plus isola's own. The default is the isolated
/// configuration: own GIL, own object allocator, strict extension checks, threads allowed, no
/// fork, no daemon threads, no os._exit.
struct interpreter_config {
  enum class gil_mode { own, shared };
  gil_mode gil = gil_mode::own;
  bool use_main_obmalloc = false;
  /// os.fork() (and os.forkpty()): refused with a RuntimeError that names this option unless
  /// true. On CPython 3.12/3.13 a child forked from any interpreter but the main one dies at
  /// once with a fatal error, so there is little reason to allow it.
  bool allow_fork = false;
  bool allow_exec = false;
  bool allow_threads = true;
  bool allow_daemon_threads = false;
  bool check_multi_interp_extensions = true;
  /// os._exit() (and os.abort()) end the whole process at once: every interpreter's work is
  /// lost and nothing is reported. Refused with a RuntimeError that names this option unless
  /// true.
  bool allow_os_exit = false;

  /// Ending the interpreter (close(), pool shutdown or recycling, runtime shutdown) waits this
  /// long for the non-daemon threads its code left running, as CPython waits for them (forever,
  /// there); then SystemExit is raised in every thread still running in it. Daemon threads
  /// (and threads started with _thread) get SystemExit at once.
  std::chrono::milliseconds end_timeout{std::chrono::seconds(30)};
  /// How long code has to stop after isola interrupts it while ending the interpreter (the
  /// SystemExit above; atexit handlers and __del__ methods that run while it ends; a task
  /// interrupted at runtime shutdown). Past it the interpreter is abandoned: its thread is left
  /// running, logged at critical level, and counted by runtime::abandoned_interpreters().
  std::chrono::milliseconds end_grace{std::chrono::seconds(2)};

  /// Hard limit on the memory the interpreter holds (see memory_usage), in bytes; 0: none.
  /// An allocation that would pass it fails, so the code that asked gets MemoryError there;
  /// other interpreters are not affected, and once the objects are freed the interpreter
  /// works as before. Frees and shrinks are never refused. It applies once the interpreter
  /// has started: a limit below what it then holds is an error at creation that names the
  /// measured figure. Needs runtime_options::memory_accounting and an own object allocator
  /// (use_main_obmalloc=false).
  std::size_t memory_limit = 0;

  /// Extension modules without per-interpreter GIL support: strict (refused) or unsafe (loaded
  /// with a warning). shared_gil needs gil_mode::shared (see shared_gil()); automatic is for
  /// pools (pool_options::extensions).
  extension_policy extensions = extension_policy::strict;
  /// Modules (and packages: their submodules too) loaded as unsafe would, whatever
  /// `extensions` says; the rest follow it.
  std::vector<std::string> unsafe_extensions;

  /// Extra sys.path entries for this interpreter, put in front of the runtime's.
  std::vector<std::string> sys_path;
  /// A name for log lines ("worker-3"); the interpreter id is always logged as well.
  std::string name;

  static interpreter_config isolated() { return {}; }
  /// CPython's legacy settings: shares the main GIL and allocator, loads any extension,
  /// allows fork, exec, daemon threads and os._exit.
  static interpreter_config legacy();
  /// The shared-GIL lane: shares the main GIL and allocator and loads any extension (as
  /// legacy()), but with isolated()'s process safety: no fork, no daemon threads, no os._exit.
  static interpreter_config shared_gil();

  /// Empty if valid, else a message naming the conflicting fields and the fix
  /// (e.g. an own GIL needs its own allocator: use_main_obmalloc=false).
  std::string validate() const;
};

/// One isolated interpreter.
/// - Created by the constructor on a new worker thread (throws isola::error with
///   errc::creation_failed and CPython's reason if that fails, std::invalid_argument for an
///   invalid config, isola::error{no_runtime} without a runtime).
/// - Every operation runs on the worker, one at a time in submission order. Blocking forms
///   release the caller's GIL while they wait. Called from a thread that is already attached
///   to this interpreter (a nested call from Python, an attach_guard), they run inline instead,
///   so they cannot deadlock on themselves.
/// - Python exceptions come back as isola::python_error; the interpreter stays usable.
///   SystemExit ends the call with a python_error of type "SystemExit", never the process.
/// - Globals live in the interpreter's __main__ module.
/// - close() (and the destructor) refuses new work, lets queued work finish (logging a
///   warning every few seconds while it waits), waits for attached threads, then ends the
///   interpreter on its worker thread (threads its code left running: see
///   interpreter_config::end_timeout) and joins it. If ending does not finish within
///   end_timeout + 2 * end_grace, the interpreter is abandoned and close() returns.
/// - Thread-safe: any thread may call any member concurrently, except destroying the object
///   while another thread still uses it.
class interpreter {
 public:
  explicit interpreter(interpreter_config config = {});
  ~interpreter();
  interpreter(interpreter&&) noexcept;
  /// Closes the interpreter this one held, as its destructor would (never throwing), then
  /// takes other's.
  interpreter& operator=(interpreter&&) noexcept;
  interpreter(const interpreter&) = delete;
  interpreter& operator=(const interpreter&) = delete;

  /// CPython's interpreter id; also what isola.interpreter_id() returns inside it.
  std::int64_t id() const noexcept;
  interpreter_handle handle() const noexcept;
  /// Throws std::logic_error on a moved-from interpreter.
  const interpreter_config& config() const;

  /// Runs statements in __main__.
  void exec(std::string_view code);
  std::future<void> exec_async(std::string code);

  /// Evaluates one expression in __main__ and converts the result.
  value eval(std::string_view expression);
  std::future<value> eval_async(std::string expression);

  /// Calls "package.module:function" (or "module:obj.method") with positional and keyword
  /// arguments. The module is imported if needed.
  value call_with(std::string_view target, std::vector<value> args = {},
                  std::vector<std::pair<std::string, value>> kwargs = {});
  std::future<value> call_with_async(std::string target, std::vector<value> args = {},
                                     std::vector<std::pair<std::string, value>> kwargs = {});
  template <typename... Args>
  value call(std::string_view target, Args&&... args) {
    return call_with(target, make_values(std::forward<Args>(args)...));
  }
  template <typename... Args>
  std::future<value> call_async(std::string target, Args&&... args) {
    return call_with_async(std::move(target), make_values(std::forward<Args>(args)...));
  }

  /// Runs a file as __main__ would: __file__ is set, sys.argv becomes {path, argv...}.
  void run_file(const std::filesystem::path& path, std::vector<std::string> argv = {});
  std::future<void> run_file_async(std::filesystem::path path, std::vector<std::string> argv = {});

  void set_global(std::string_view name, value v);
  std::future<void> set_global_async(std::string name, value v);
  /// Throws python_error (NameError) if the global does not exist.
  value get_global(std::string_view name);
  std::future<value> get_global_async(std::string name);

  /// Raises exception_type (a builtin exception name such as "KeyboardInterrupt" or
  /// "SystemExit", or one of isola's such as "isola.TaskTimeout") in the worker's running
  /// Python code at its next bytecode boundary, and wakes its time.sleep. Returns false if no
  /// task was running. Code blocked inside C does not see it until it returns to the
  /// interpreter loop. Works while the interpreter is closing, too.
  bool interrupt(std::string_view exception_type = "KeyboardInterrupt");

  /// Ends the interpreter (idempotent; safe from any thread but its own worker and threads
  /// attached to it, which get std::logic_error). Logs a warning while it waits long.
  void close();
  bool closed() const noexcept;

  /// What the interpreter holds now, its peak and its limit (after close(): what it held when
  /// it ended). Any thread, no GIL needed. Throws std::logic_error if memory accounting is off
  /// (runtime_options::memory_accounting) or the interpreter was moved from.
  memory_usage memory() const;

 private:
  class impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace isola
