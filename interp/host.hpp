// interp_host: one interpreter living on the calling (worker) thread: creation with
// Py_NewInterpreterFromConfig, entering and leaving its long-lived thread state, interrupting
// the task it runs, and ending it on the same thread, within bounds, whatever its code left
// running. Shared by interpreter and pool workers.
#pragma once

#include "lib/python.hpp"

#include "lib/interrupt.hpp"
#include "lib/state.hpp"

#include <isola/interpreter.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>

namespace isola::detail {

class interp_host {
 public:
  /// Makes a fresh interp_state (not yet registered with the runtime).
  explicit interp_host(const interpreter_config& config);
  interp_host(const interp_host&) = delete;
  interp_host& operator=(const interp_host&) = delete;

  const std::shared_ptr<interp_state>& state() const noexcept { return state_; }

  /// On the worker thread: registers with the runtime, creates the interpreter, applies
  /// isola's set-up (workarounds, sys.path, interruptible sleep, os._exit and fork refused
  /// unless allowed) and leaves the GIL released.
  /// Throws isola::error (creation_failed, no_runtime, runtime_finalizing).
  void create();

  /// On the worker thread, GIL released: ends the interpreter, within bounds.
  /// 1. No thread may attach any more (waits for attach guards, logging while it waits);
  ///    channel waits of its threads end.
  /// 2. The threads its code left running: non-daemon threading threads get up to
  ///    config.end_timeout to finish, as CPython waits for them; then SystemExit is raised in
  ///    every thread still there (daemon and _thread ones at once) and their isola sleeps are
  ///    woken; they get config.end_grace to go.
  /// 3. Py_EndInterpreter (atexit handlers, module teardown).
  /// Threads still running after step 2 make it abandon the interpreter (abandon_interp,
  /// naming them and where they are) and call `on_abandon` once; it then goes on waiting for
  /// them and ends the interpreter if they ever finish. Returns true if it ended without being
  /// abandoned (by itself or by a watcher: see end_budget()).
  bool end(const std::function<void()>& on_abandon = {});

  /// How long an owner watching end() from another thread should let it run before it
  /// abandons the interpreter itself (end() stuck in guest code: an atexit handler or __del__
  /// that never returns, a thread holding the GIL).
  std::chrono::milliseconds end_budget() const noexcept {
    return config_.end_timeout + 2 * config_.end_grace;
  }

  /// Takes / releases the interpreter's GIL with the worker's thread state.
  void enter() noexcept { PyEval_RestoreThread(tstate_); }
  void leave() noexcept { PyEval_SaveThread(); }

  /// With the GIL held, around each task: marks `token` (non-zero) as the running task's and
  /// interruptible, then clears any interrupt that arrived too late to hit it.
  void task_started(std::uint64_t token = 1) noexcept;
  void task_finished() noexcept;
  /// With the GIL held, during a task: interrupts meant for the old token are dropped from
  /// now on (a pool task that re-arms its deadline).
  void retoken(std::uint64_t token) noexcept { running_task_ = token; }

  /// From any other thread: raises the exception `type` (see find_exception_class in
  /// lib/pyexec.hpp) in the
  /// running task and wakes an isola sleep. With a non-zero `token`, only if that is the
  /// running task's (an interrupt that waited for the GIL while its task ended must not hit
  /// the next task). Works while the interpreter is closing. Returns false if nothing (or
  /// another task) was running or the interpreter is ending. Blocks while the task holds the
  /// GIL (C code that never releases it).
  bool interrupt(std::string_view type, std::uint64_t token = 0);

  bool created() const noexcept { return tstate_ != nullptr; }

  /// After a task: logs (warning) the allocations its memory limit refused since the last
  /// call, naming the interpreter and its limit, and returns how many there were.
  std::uint64_t report_memory_refusals();

 private:
  /// Step 2 of end(), GIL held (released while it waits). True when no other thread is left.
  bool end_threads(const std::function<void()>& on_abandon);

  interpreter_config config_;
  std::shared_ptr<interp_state> state_;
  PyThreadState* tstate_ = nullptr;
  unsigned long ident_ = 0;  ///< PyThread_get_thread_ident() of the worker thread
  std::uint64_t running_task_ = 0;  ///< token of the running task, 0 if none; GIL held
  std::uint64_t refusals_reported_ = 0;
  interrupt_slot sleep_;
};

}  // namespace isola::detail
