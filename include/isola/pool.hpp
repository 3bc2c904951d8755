// isola::pool: parallel work over N own-GIL interpreters. Tasks return futures or take
// Boost.Asio completion tokens; a timeout interrupts Python code that is still running.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/system/result.hpp>

#include <isola/async.hpp>
#include <isola/error.hpp>
#include <isola/interpreter.hpp>
#include <isola/value.hpp>

namespace isola {

struct pool_options {
  /// Number of interpreters; 0 means one per core (std::thread::hardware_concurrency()).
  std::size_t size = 0;
  /// Configuration of every interpreter (isolated by default).
  interpreter_config interpreter;
  /// Statements run once in each interpreter after it is created (imports, app state).
  std::string init_code;
  /// "module:function" called once (no arguments) in each interpreter after init_code.
  std::string init_call;
  /// Extra sys.path entries for every interpreter (added to interpreter.sys_path).
  std::vector<std::string> sys_path;
  /// How many tasks may wait in the queue; submit() waits for room, try_submit() fails.
  std::size_t queue_capacity = 4096;
  /// Timeout applied to tasks that do not give their own; zero means none. It counts from
  /// the moment the task starts running.
  std::chrono::milliseconds default_timeout{0};
  /// How long a timed-out task may take to react to its isola.TaskTimeout (or a task to
  /// SystemExit at runtime shutdown) before its interpreter is declared broken (stuck in C
  /// code), abandoned and replaced; also how long a replacement may take to be created before
  /// it is abandoned too (shared-GIL interpreters wait for the GIL a stuck one holds).
  std::chrono::milliseconds grace_period{2000};
  /// Replace an interpreter with a fresh one after this many tasks; 0 means never.
  std::size_t max_tasks_per_interpreter = 0;
  /// Adds a random 0..max_tasks_jitter to each interpreter's max_tasks_per_interpreter, drawn
  /// again at each replacement (gunicorn's max_requests_jitter), so that interpreters started
  /// together are not replaced together.
  std::size_t max_tasks_jitter = 0;
  /// Soft memory limit, in bytes; 0 means none. After a task, an interpreter that holds more
  /// (see memory_usage) is ended and replaced by a fresh one, as uWSGI's reload-on-rss does
  /// for a worker process, counted in interpreter_stats::recycled_for_memory. The hard limit
  /// is interpreter.memory_limit. A value below what a fresh interpreter holds once its init
  /// code has run is an error when the pool is created. Needs memory accounting.
  std::size_t max_memory_per_interpreter = 0;

  /// Extension modules without per-interpreter GIL support (docs/extensions.md): strict
  /// (refused), unsafe (loaded with a warning), shared_gil (every interpreter of the pool
  /// shares the main GIL and loads any module) or automatic (a task whose import is refused
  /// runs again from the start in the shared-GIL lane, and its module goes there directly
  /// from then on; side effects before the import happen twice). interpreter.extensions and
  /// interpreter.unsafe_extensions apply as well.
  extension_policy extensions = extension_policy::strict;
  /// Tasks whose target's module (or a package it is in) is listed here run in the shared-GIL
  /// lane; `isola compat --emit-policy` writes such a list.
  std::vector<std::string> shared_gil_modules;
  /// Interpreters of the shared-GIL lane, made when extensions is automatic or
  /// shared_gil_modules is not empty. They share the main GIL, so more than one only helps
  /// tasks that release it. The hard memory limit does not apply to them.
  std::size_t shared_gil_lane_size = 1;
};

/// Per-task settings.
struct task_options {
  /// Overrides pool_options::default_timeout when non-zero.
  std::chrono::milliseconds timeout{0};
  /// Run on this interpreter (0 .. size()-1, or of the shared-GIL lane for a task that runs
  /// there) only; -1 means any.
  int interpreter_index = -1;
  /// Which interpreters may run it: any (the pool decides: the shared-GIL lane for the
  /// modules routed there, else its own-GIL interpreters), own_gil, or shared_gil (the lane;
  /// std::invalid_argument if the pool has none).
  enum class lane_choice { any, own_gil, shared_gil };
  lane_choice lane = lane_choice::any;
};

/// Counters of one interpreter slot (a slot keeps its counters across recycling).
struct interpreter_stats {
  std::size_t index = 0;
  std::int64_t interpreter_id = -1;  ///< the slot's current interpreter
  std::uint64_t tasks_done = 0;      ///< completed successfully
  std::uint64_t tasks_failed = 0;    ///< raised (timeouts and cancellations while running included)
  std::uint64_t tasks_timed_out = 0;
  std::uint64_t tasks_cancelled = 0;  ///< cancelled while running here (see pool_stats::not_run)
  std::uint64_t recycled = 0;  ///< replaced after max_tasks_per_interpreter or memory
  std::uint64_t recycled_for_memory = 0;  ///< of which over max_memory_per_interpreter
  /// Allocations refused by interpreter.memory_limit (a MemoryError each), over the slot's life.
  std::uint64_t memory_refused = 0;
  /// The current interpreter's memory (see memory_usage); zero without memory accounting.
  std::size_t memory_bytes = 0;
  std::size_t memory_peak = 0;
  bool dead = false;           ///< a replacement interpreter could not be created
  bool shared_gil_lane = false;  ///< an interpreter of the shared-GIL lane (index is the lane's)
  /// Failed here because an extension module was refused, and ran again in the shared-GIL
  /// lane (pool_options::extensions automatic); counted in tasks_failed too.
  std::uint64_t rerouted = 0;
  std::uint64_t replaced_broken = 0;  ///< replaced because stuck after a timeout
  std::chrono::nanoseconds busy{0};   ///< time spent running tasks
};

struct pool_stats {
  std::vector<interpreter_stats> interpreters;
  std::size_t queue_depth = 0;  ///< tasks waiting (not yet running)
  std::uint64_t submitted = 0;
  std::uint64_t completed = 0;  ///< finished in any way; counted before the future is ready
  /// Finished without running on any interpreter: cancelled while queued, dropped by
  /// shutdown(true), or failed because no interpreter could be created for it. Invariant once
  /// quiet: sum of tasks_done + tasks_failed over interpreters + not_run == completed.
  std::uint64_t not_run = 0;
};

namespace detail {
struct pool_task;
class pool_impl;
struct pool_lanes;

/// A pending async_submit: the task's outcome is posted to the handler.
class submit_op_base {
 public:
  virtual ~submit_op_base() = default;
  /// Called exactly once, from any thread: posts the handler.
  virtual void complete(std::exception_ptr e, value v) noexcept = 0;
};

template <typename Handler>
class submit_op final : public submit_op_base {
 public:
  explicit submit_op(Handler h) : done_(std::move(h)) {}
  void complete(std::exception_ptr e, value v) noexcept override {
    done_.post(std::move(e), std::move(v));
  }

 private:
  completion<Handler> done_;
};

/// Installed in a handler's cancellation slot: any cancellation type cancels the task if it
/// has not completed yet.
struct task_cancel {
  task_cancel(std::weak_ptr<pool_impl> p, std::weak_ptr<pool_task> t) noexcept
      : pool(std::move(p)), task(std::move(t)) {}
  std::weak_ptr<pool_impl> pool;
  std::weak_ptr<pool_task> task;
  void operator()(boost::asio::cancellation_type_t type) const noexcept;
};
}  // namespace detail

/// The result of a submitted task: a std::future<value> plus cancel() and interrupt().
/// - get() returns the value or throws: python_error (a Python exception; TimeoutError for a
///   timeout, which raised isola.TaskTimeout in the task), isola::error with errc::timeout
///   (the task did not stop on its TaskTimeout and its interpreter was replaced),
///   errc::cancelled (also: pool shut down with cancel_pending), errc::runtime_finalizing (the
///   runtime shut down: SystemExit was raised in it, or it never ran) or
///   errc::creation_failed (no interpreter could be made to run it).
class task_future {
 public:
  task_future() = default;
  task_future(std::future<value> f, std::shared_ptr<detail::pool_task> t)
      : future_(std::move(f)), task_(std::move(t)) {}

  /// get() and wait() first spin for a few microseconds (a short task's result usually arrives
  /// within that, and a futex sleep and wake-up costs more than the task), then block.
  value get() {
    spin_briefly();
    return future_.get();
  }
  void wait() const {
    spin_briefly();
    future_.wait();
  }
  template <typename Rep, typename Period>
  std::future_status wait_for(const std::chrono::duration<Rep, Period>& d) const {
    return future_.wait_for(d);
  }
  bool valid() const noexcept { return future_.valid(); }
  /// Removes a queued task (its future fails with errc::cancelled) or interrupts a running
  /// one (KeyboardInterrupt is raised in it; the future fails with errc::cancelled).
  /// Returns false if the task had already finished (or was already cancelled); when it
  /// returns true the future fails with errc::cancelled.
  bool cancel();
  /// Like Ctrl-C for one task: raises exception_type (a builtin exception name, KeyboardInterrupt
  /// by default) in it if it is running, and the future then gets whatever the task returns
  /// or raises (code that handles the exception can return a partial result); a task still
  /// queued is cancelled instead (errc::cancelled). Returns false if it had finished.
  bool interrupt(std::string_view exception_type = "KeyboardInterrupt");

 private:
  void spin_briefly() const noexcept;
  std::future<value> future_;
  std::shared_ptr<detail::pool_task> task_;
};

/// N interpreters, each on its own worker thread, fed from one bounded lock-free queue.
/// - Thread-safe: any thread may submit, cancel, read stats or shut down.
/// - Idle workers sleep on a futex; nothing polls.
/// - A Python exception fails only its task; the interpreter stays in service.
/// - The destructor is shutdown() (queued tasks finish) and joins every thread. A runtime
///   destroyed while a pool is alive shuts the pool down first: queued tasks fail with
///   errc::runtime_finalizing and SystemExit is raised in running ones.
class pool {
 public:
  /// Creates the interpreters (in parallel on 3.13) and runs the init code in each. Throws
  /// isola::python_error whose message names the interpreter index if init fails there.
  explicit pool(pool_options options = {});
  ~pool();
  pool(const pool&) = delete;
  pool& operator=(const pool&) = delete;

  /// Own-GIL interpreters (or, with extensions = shared_gil, all of them); the shared-GIL lane
  /// is not counted: see lane_size().
  std::size_t size() const noexcept;
  /// Interpreters of the shared-GIL lane (0 if the pool has none).
  std::size_t lane_size() const noexcept;
  /// Modules whose tasks the pool sends to the shared-GIL lane: shared_gil_modules and those
  /// learnt from refused imports (automatic).
  std::vector<std::string> lane_modules() const;

  /// Calls "package.module:function" with args; waits for room in the queue.
  template <typename... Args>
  task_future submit(std::string target, Args&&... args) {
    return submit_with(std::move(target), make_values(std::forward<Args>(args)...));
  }
  task_future submit_with(std::string target, std::vector<value> args,
                          std::vector<std::pair<std::string, value>> kwargs = {},
                          task_options options = {});
  /// Runs code: one expression gives its value; statements give None.
  task_future submit_code(std::string code, task_options options = {});
  /// Like submit() but pinned to one interpreter.
  template <typename... Args>
  task_future submit_to(int interpreter_index, std::string target, Args&&... args) {
    task_options o;
    o.interpreter_index = interpreter_index;
    return submit_with(std::move(target), make_values(std::forward<Args>(args)...), {}, o);
  }
  /// Like submit_with, without waiting: an error code instead of a task when the queue has no
  /// room (errc::queue_full) or the pool takes no tasks (errc::shut_down, creation_failed).
  boost::system::result<task_future> try_submit_with(std::string target, std::vector<value> args,
                                                     task_options options = {});

  /// Calls function on every input (one argument each), chunk_size inputs per task, and
  /// returns the results in input order. Throws the first failure (by input order).
  std::vector<value> map(std::string function, const std::vector<value>& inputs,
                         std::size_t chunk_size = 1);

  /// Asio form of submit_with. Completion signature: void(std::exception_ptr, isola::value).
  /// The handler runs on its associated executor (default: asio::system_executor), never on
  /// a worker thread; the operation keeps outstanding work on that executor until the handler
  /// has been posted, so io_context::run() does not return early. Works with callbacks,
  /// asio::use_future, asio::use_awaitable and asio::deferred. Per-operation cancellation
  /// (a cancellation slot bound to the handler): any cancellation type cancels the task as
  /// task_future::cancel() does, and the handler gets errc::cancelled.
  template <typename CompletionToken>
  auto async_submit(std::string target, std::vector<value> args, CompletionToken&& token,
                    task_options options = {}) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, value)>(
        [this](auto handler, std::string target, std::vector<value> args, task_options o) {
          auto slot = boost::asio::get_associated_cancellation_slot(handler);
          auto op = std::make_shared<detail::submit_op<decltype(handler)>>(std::move(handler));
          auto task = make_async_task(std::move(target), std::move(args), o, std::move(op));
          route(task, o.lane);
          if (slot.is_connected()) slot.template emplace<detail::task_cancel>(impl_, task);
          start_async_task(task);
        },
        token, std::move(target), std::move(args), options);
  }

  /// Stops taking tasks. Queued tasks finish (or, with cancel_pending, fail with
  /// errc::cancelled); running tasks finish; then the interpreters end and threads are joined.
  /// An interpreter stuck in C code past its timeout and grace period does not hold shutdown
  /// up: its thread is left behind (detached) and ends its interpreter if it ever returns.
  /// Ending each interpreter is bounded (interpreter_config::end_timeout and end_grace: the
  /// threads its code left running); one that does not end in time is abandoned the same way.
  /// A task with no timeout that never returns does hold it up.
  void shutdown(bool cancel_pending = false);

  pool_stats stats() const;

 private:
  /// A call task whose outcome goes to op (async_submit), and queuing it (waiting for room;
  /// a task the pool refuses completes with the error instead).
  std::shared_ptr<detail::pool_task> make_async_task(std::string target, std::vector<value> args,
                                                     task_options o,
                                                     std::shared_ptr<detail::submit_op_base> op);
  void start_async_task(const std::shared_ptr<detail::pool_task>& task);
  /// The interpreters that run `t` (its lane), preparing it to move to the shared-GIL lane if
  /// its import is refused there.
  detail::pool_impl& route(const std::shared_ptr<detail::pool_task>& t, task_options::lane_choice lane);
  std::shared_ptr<detail::pool_impl> impl_;
  std::shared_ptr<detail::pool_lanes> lanes_;  ///< the shared-GIL lane and its routing
};

}  // namespace isola
