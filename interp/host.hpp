// interp_host: one interpreter living on the calling (worker) thread: creation with
// Py_NewInterpreterFromConfig, entering and leaving its long-lived thread state, interrupting
// the task it runs, and ending it on the same thread. Shared by interpreter and pool workers.
#pragma once

#include "python.hpp"

#include "state.hpp"

#include <isola/interpreter.hpp>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>

namespace isola::detail {

/// Lets an interrupt wake `time.sleep` in the worker: isola replaces time.sleep in its
/// interpreters with a version that waits here (GIL released) instead of in the kernel.
/// A blocking channel wait registers its stop source here the same way.
struct sleep_slot {
  std::mutex mu;
  std::condition_variable cv;
  bool interrupted = false;
  std::stop_source* wait_stop = nullptr;  ///< a channel wait in progress on this thread
  std::string interrupt_type;  ///< the builtin exception of the last interrupt
};

/// The sleep slot of the calling worker thread, or nullptr on other threads.
sleep_slot* current_sleep_slot() noexcept;

class interp_host {
 public:
  /// Makes a fresh interp_state (not yet registered with the runtime).
  explicit interp_host(const interpreter_config& config);
  interp_host(const interp_host&) = delete;
  interp_host& operator=(const interp_host&) = delete;

  const std::shared_ptr<interp_state>& state() const noexcept { return state_; }

  /// On the worker thread: registers with the runtime, creates the interpreter, applies
  /// isola's set-up (workarounds, sys.path, interruptible sleep) and leaves the GIL released.
  /// Throws isola::error (creation_failed, no_runtime, runtime_finalizing).
  void create();
  /// On the worker thread: waits for attached threads, ends the interpreter, unregisters it.
  void end();

  /// Takes / releases the interpreter's GIL with the worker's thread state.
  void enter() noexcept { PyEval_RestoreThread(tstate_); }
  void leave() noexcept { PyEval_SaveThread(); }

  /// With the GIL held, around each task: marks task `task_id` (non-zero) as running and
  /// interruptible, then clears any interrupt that arrived too late to hit it.
  void task_started(std::uint64_t task_id = 1) noexcept;
  void task_finished() noexcept;

  /// From any other thread: raises the builtin exception `type` in the running task and wakes
  /// an isola sleep. With a non-zero `task_id`, only if that task is the one running (an
  /// interrupt that waited for the GIL while its task ended must not hit the next task).
  /// Returns false if nothing (or another task) was running or the interpreter is closing.
  /// Blocks while the task holds the GIL (C code that never releases it).
  bool interrupt(std::string_view type, std::uint64_t task_id = 0);

  bool created() const noexcept { return tstate_ != nullptr; }

 private:
  interpreter_config config_;
  std::shared_ptr<interp_state> state_;
  PyThreadState* tstate_ = nullptr;
  unsigned long ident_ = 0;  ///< PyThread_get_thread_ident() of the worker thread
  std::uint64_t running_task_ = 0;  ///< id of the running task, 0 if none; GIL held
  sleep_slot sleep_;
};

}  // namespace isola::detail
