// The worker thread behind one interpreter: it creates the interpreter, owns its long-lived
// thread state, runs queued tasks with the GIL held, and ends the interpreter on close.
#pragma once

#include <cxxabi.h>

#include "lib/python.hpp"

#include "interp/host.hpp"
#include "lib/pyexec.hpp"
#include "lib/state.hpp"

#include <isola/interpreter.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace isola::detail {

/// A unit of work for a worker. run() is called on the worker with the interpreter attached;
/// fail() instead when the task will never run (the interpreter closed first), or from
/// another thread when its interpreter is abandoned while it runs. Its outcome is delivered
/// once: whichever of the two comes first.
struct task {
  virtual ~task() = default;
  virtual void run() = 0;
  virtual void fail(std::exception_ptr e) = 0;

 protected:
  /// True for the first caller only.
  bool settle() noexcept { return !settled_.exchange(true); }

 private:
  std::atomic<bool> settled_{false};
};

/// A task that runs fn (which may throw py::error_already_set) and fulfils a promise.
template <typename R, typename F>
struct promise_task final : task {
  explicit promise_task(F f) : fn(std::move(f)) {}
  F fn;
  std::promise<R> promise;
  void run() override;
  void fail(std::exception_ptr e) override {
    if (settle()) promise.set_exception(std::move(e));
  }
};

/// One interpreter and its thread. Thread-safe; see isola::interpreter for the contract.
class worker : public std::enable_shared_from_this<worker> {
 public:
  /// Starts the thread and waits until the interpreter exists (or throws why it could not).
  static std::shared_ptr<worker> start(interpreter_config config);
  explicit worker(interpreter_config config);  ///< validates only; use start()
  ~worker();

  const std::shared_ptr<interp_state>& state() const noexcept { return host_.state(); }
  const interpreter_config& config() const noexcept { return config_; }

  /// Queues a task. Throws isola::error (interpreter_closing / interpreter_closed) if the
  /// interpreter no longer takes work.
  void post(std::shared_ptr<task> t);

  /// Runs fn on the worker (or inline if this thread is attached here) and returns its result;
  /// waits with the caller's GIL released.
  template <typename F>
  auto run(F fn) -> decltype(fn());

  /// Queues fn and returns a future of its result.
  template <typename F>
  auto run_async(F fn) -> std::future<decltype(fn())>;

  bool interrupt(std::string_view exception_type);
  /// Lets queued work finish (warning every few seconds while it waits), then ends the
  /// interpreter (bounded: see interp_host::end and end_budget).
  void close();
  /// The runtime's closer: queued tasks fail with errc::runtime_finalizing, a running task
  /// gets SystemExit and config.end_grace to stop, then the interpreter ends as in close().
  /// Code that does not stop is abandoned; it never waits without bound.
  void close_now();
  bool closed() const noexcept;

 private:
  void launch();
  void thread_main(std::promise<void>& created);
  /// close()'s steps; `now`: close_now().
  void close_impl(bool now);
  /// Waits (queue_mu_ held in `lock`) until the worker has left its task loop; logs a warning
  /// every few seconds. With a deadline, returns false if it passed first.
  bool wait_for_tasks(std::unique_lock<std::mutex>& lock,
                      std::optional<std::chrono::steady_clock::time_point> deadline);
  /// Gives up on the interpreter (abandon_interp) and leaves the thread running.
  void abandon(const std::string& why);

  interpreter_config config_;
  interp_host host_;
  std::thread thread_;

  mutable std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<std::shared_ptr<task>> queue_;
  bool stopping_ = false;
  std::shared_ptr<task> current_;  ///< the task running, if any (guarded by queue_mu_)
  // The worker's progress, guarded by queue_mu_ and signalled on status_cv_.
  std::condition_variable status_cv_;
  std::optional<std::chrono::steady_clock::time_point> task_since_;  ///< running a task since
  std::optional<std::chrono::steady_clock::time_point> ending_since_;  ///< ending since
  bool ended_ = false;      ///< the thread has ended the interpreter
  bool gave_up_ = false;    ///< end() abandoned the interpreter itself

  std::mutex close_mu_;
  std::atomic<bool> closed_{false};
};

template <typename R, typename F>
void promise_task<R, F>::run() {
  std::exception_ptr err;
  try {
    if constexpr (std::is_void_v<R>) {
      fn();
      if (settle()) promise.set_value();
    } else {
      R r = fn();
      if (settle()) promise.set_value(std::move(r));
    }
    return;
  } catch (const py::error_already_set&) {
    err = std::make_exception_ptr(fetch_python_error());
  } catch (abi::__forced_unwind&) {
    throw;  // CPython ends this thread (runtime finalising); never swallow that
  } catch (...) {
    err = std::current_exception();
  }
  if (settle()) promise.set_exception(std::move(err));
}

template <typename F>
auto worker::run_async(F fn) -> std::future<decltype(fn())> {
  using R = decltype(fn());
  auto t = std::make_shared<promise_task<R, F>>(std::move(fn));
  auto fut = t->promise.get_future();
  post(std::move(t));
  return fut;
}

template <typename F>
auto worker::run(F fn) -> decltype(fn()) {
  if (attached_here(*state())) return with_python_errors(fn);
  auto fut = run_async(std::move(fn));
  {
    release_gil unlocked;
    fut.wait();
  }
  return fut.get();
}

}  // namespace isola::detail
