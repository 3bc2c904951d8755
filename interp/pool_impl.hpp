// The pool's insides, shared by its parts: pool.cpp (the pool: queue, submit, cancel,
// shutdown, stats, and the public face), pool_worker.cpp (a worker's thread: its interpreter's
// life and running tasks), pool_watchdog.cpp (deadlines: timeouts, stuck interpreters, bounded
// ends and creations).
#pragma once

#include "lib/python.hpp"

#include "interp/host.hpp"
#include "lib/ring.hpp"
#include "lib/sync.hpp"

#include <isola/error.hpp>
#include <isola/pool.hpp>


#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <semaphore>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <spdlog/logger.h>

namespace isola::detail {

inline std::exception_ptr make_error(errc code, const std::string& msg) {
  return std::make_exception_ptr(error(code, msg));
}

inline constexpr int spin_rounds = 2000;  ///< ~tens of microseconds before an idle worker parks

enum class task_kind { call, code, map_chunk };
enum task_phase : int { queued, running, cancelling, finished };

struct pool_worker;

struct pool_task {
  std::uint64_t id = 0;  ///< unique in the pool; interrupts name the task they are meant for
  task_kind kind = task_kind::call;
  std::string text;  ///< call target or code
  std::vector<value> args;
  std::vector<std::pair<std::string, value>> kwargs;
  std::chrono::milliseconds timeout{0};
  int pinned = -1;
  /// Names the running task to interrupts: its id, then a fresh one each time the task re-arms
  /// its deadline (isola._set_deadline), so that an interrupt meant for the old deadline is
  /// dropped. Written by the worker with the GIL held.
  std::atomic<std::uint64_t> token{0};
  /// The runtime's shutdown raised SystemExit in it: it fails with errc::runtime_finalizing.
  std::atomic<bool> stopped_by_runtime{false};
  /// The length of the deadline armed last (its own timeout, or _set_deadline's), for the
  /// TimeoutError message.
  std::atomic<std::int64_t> armed_ms{0};
  /// The watchdog has (or had) an entry for it. Tasks without one never take its lock; an
  /// entry added as the task ends (runtime shutdown) expires harmlessly.
  std::atomic<bool> watched{false};

  /// queued -> running -> finished, or queued -> finished (cancelled or dropped before it
  /// ran), or running -> cancelling -> finished (cancel() of a running task).
  std::atomic<int> phase{queued};
  std::atomic<bool> timed_out{false};
  // Written by the worker that claims the task before its queued -> running CAS, read by
  // others only after they saw `running`.
  int running_on = -1;
  std::weak_ptr<pool_worker> worker;
  /// When it started running (written by the worker before it registers a deadline; read by
  /// the watchdog, which learns of the task only through that deadline).
  std::chrono::steady_clock::time_point started;

  std::promise<value> promise;                               ///< used when done is empty
  std::function<void(std::exception_ptr, value)> done;       ///< Asio / callback completion
  std::shared_ptr<pool_task> self;  ///< keeps the task alive while its raw pointer is queued
  /// Set by a pool with an automatic shared-GIL lane: given the task's error, returns true if
  /// it has taken the task over (re-run in the lane, which delivers the outcome), false to
  /// let the error be delivered. It calls `handing_over` just before the lane can see the task.
  std::function<bool(const std::exception_ptr&, const std::function<void()>& handing_over)>
      reroute;
  std::weak_ptr<pool_impl> pool;

  /// Exactly one caller wins the move from `from` to finished; only it may count the task and
  /// then deliver() its outcome (count first, so stats never lag behind a ready future).
  bool claim(int from) {
    int expected = from;
    return phase.compare_exchange_strong(expected, finished);
  }
  /// Claims a started task: returns the phase it was claimed from (running or cancelling), or
  /// -1 if someone else finished it.
  int claim_started() {
    int expected = running;
    if (phase.compare_exchange_strong(expected, finished)) return running;
    if (expected == cancelling && phase.compare_exchange_strong(expected, finished)) {
      return cancelling;
    }
    return -1;
  }
  void deliver(std::exception_ptr e, value v = {}) {
    if (done) {
      done(std::move(e), std::move(v));
    } else if (e) {
      promise.set_exception(std::move(e));
    } else {
      promise.set_value(std::move(v));
    }
  }
};


/// One interpreter slot: counters that survive recycling, pinned tasks, the doorbell.
struct pool_slot {
  int index = 0;
  std::atomic<std::uint32_t> bell{0};
  std::mutex pinned_mu;
  std::deque<std::shared_ptr<pool_task>> pinned;
  std::atomic<std::size_t> pinned_count{0};  ///< pinned.size(), readable without the lock
  std::atomic<bool> dead{false};  ///< a replacement interpreter could not be created

  std::atomic<std::int64_t> interpreter_id{-1};
  std::atomic<std::uint64_t> done{0}, failed{0}, timed_out{0}, cancelled{0}, recycled{0},
      replaced_broken{0}, recycled_for_memory{0}, memory_refused{0}, rerouted{0};
  /// The slot's current interpreter (for its memory figures); replaced on recycling.
  std::mutex state_mu;
  std::shared_ptr<interp_state> state;
  std::atomic<std::int64_t> busy_ns{0};
};

/// One worker thread serving a slot. Shared with the thread, so an abandoned (stuck) worker
/// keeps its data alive after the pool has moved on.
struct pool_worker : std::enable_shared_from_this<pool_worker> {
  int slot = 0;
  std::thread thread;
  std::atomic<bool> abandoned{false};
  std::atomic<bool> exited{false};
  std::atomic<bool> created{false};  ///< its current interpreter exists (not being created)
  /// Whether its next creation is watched: every one but the first of a pool's initial workers
  /// (the pool's constructor waits for those itself). Worker thread only, after the start.
  bool watch_creation = false;
  /// The worker thread's interpreter; replaced (recycling) under host_mu. The worker thread
  /// reads it freely; other threads take a reference with current_host(), never holding
  /// host_mu while they use it (an interrupt may wait for a stuck GIL for ever).
  std::shared_ptr<interp_host> host;
  std::mutex host_mu;
  std::shared_ptr<interp_host> current_host() {
    std::lock_guard lock(host_mu);
    return host;
  }
  std::mutex current_mu;
  /// The task it runs, if any: the runtime's shutdown interrupts running tasks through it.
  /// Written by the worker thread only, under current_mu; others read it under the lock.
  std::shared_ptr<pool_task> current;
};

/// What isola._set_deadline needs: the task running on this thread, in which pool.
struct run_context {
  pool_impl* pool = nullptr;
  pool_worker* worker = nullptr;
  pool_task* task = nullptr;
};
/// The task running on this thread (set by run_task), for isola._set_deadline.
extern thread_local run_context* current_run;

/// How shutdown treats work in progress.
enum class stop_mode {
  finish,             ///< queued tasks run, running ones finish (shutdown())
  cancel_queued,      ///< queued tasks fail with errc::cancelled (shutdown(true))
  interrupt_running,  ///< as cancel_queued, and SystemExit in running tasks (runtime shutdown)
};

class pool_impl : public std::enable_shared_from_this<pool_impl> {
 public:
  explicit pool_impl(pool_options o);
  ~pool_impl();

  void start();
  /// Marks this pool's interpreters as the shared-GIL lane in stats.
  void set_lane(bool lane) noexcept { lane_ = lane; }
  void enqueue(const std::shared_ptr<pool_task>& t, bool wait_for_room);
  bool cancel(const std::shared_ptr<pool_task>& t);
  bool interrupt(const std::shared_ptr<pool_task>& t, std::string_view exception_type);
  void shutdown(stop_mode mode);
  /// isola._set_deadline: re-arms the running task's deadline (see the function's doc).
  void set_deadline(run_context& c, std::optional<std::chrono::nanoseconds> in);
  pool_stats stats() const;
  std::size_t size() const noexcept { return slots_.size(); }
  std::uint64_t next_task_id() noexcept { return ++task_ids_; }

 private:
  void worker_main(const std::shared_ptr<pool_worker>& w, std::promise<void>* started);
  void spawn_locked(int slot, std::promise<void>* started);
  void init_interpreter(pool_worker& w);
  std::shared_ptr<pool_task> next_task(pool_worker& w);
  std::shared_ptr<pool_task> try_pop(pool_worker& w);
  /// Runs the task (moved in: it stays in w.current while it runs).
  void run_task(pool_worker& w, std::shared_ptr<pool_task> task);
  /// After the task ran (started at t0): counts it, turns its error into what its caller
  /// sees (a timeout's TaskTimeout into TimeoutError, ...) and delivers the outcome, unless
  /// declare_broken() did that already.
  void complete(pool_worker& w, const std::shared_ptr<pool_task>& t,
                std::chrono::steady_clock::time_point t0, std::exception_ptr err, value result);
  void ring(int slot);
  void wake_one();
  void wake_for_tombstone(const pool_task& t);
  void interrupt_async(const std::shared_ptr<pool_worker>& w, std::uint64_t token,
                       std::string type);
  void watchdog_main();
  void declare_broken(const std::shared_ptr<pool_worker>& w, const std::shared_ptr<pool_task>& t);
  /// Gives up on a worker whose interpreter did not end or get created in time: it stops
  /// counting for shutdown, its interpreter is abandoned, and the slot gets a new worker if
  /// work may still need it. False if it had exited or was abandoned already.
  bool abandon_worker(const std::shared_ptr<pool_worker>& w,
                      const std::shared_ptr<interp_state>& state, const std::string& why);
  /// Creates the worker's interpreter (init_interpreter), watched: a creation that waits
  /// longer than grace_period for a GIL is abandoned.
  void create_watched(const std::shared_ptr<pool_worker>& w);
  /// Ends the worker's interpreter (bounded, watched by the watchdog).
  void end_interpreter(const std::shared_ptr<pool_worker>& w);
  /// Ends the worker's interpreter and creates a fresh one in its place. False if the worker
  /// must exit (the old one was abandoned, or no new one could be made: the slot died).
  bool recycle(const std::shared_ptr<pool_worker>& w, bool for_memory);
  /// With workers_mu_ held: whether a slot that lost its worker needs a new one.
  bool slot_needs_worker(int slot) const;
  /// Whether the interpreter holds more than max_memory_per_interpreter.
  bool over_soft_limit(const interp_state& s) const;
  /// A task whose import was refused: hands it to the shared-GIL lane (t.reroute), counting it
  /// here as failed and rerouted first. False if the lane did not take it.
  bool reroute(pool_slot& slot, pool_task& t, const std::exception_ptr& err);

  /// Parts of init_interpreter: the init code and call; the soft limit's check against what a
  /// fresh interpreter holds (std::invalid_argument, after ending it, if it is over).
  void run_init(pool_worker& w);
  void check_soft_limit(pool_worker& w);
  void worker_exited(pool_worker& w);
  void slot_died(int slot, const std::string& why);
  bool fail_unstarted(const std::shared_ptr<pool_task>& t, errc code, const std::string& msg);
  void fail_pinned(pool_slot& s, errc code, const std::string& msg);
  void fail_shared_queue(errc code, const std::string& msg);
  void reap_helpers(bool all);

  pool_options options_;
  interpreter_config config_;
  std::shared_ptr<spdlog::logger> log_;

  ::isola::detail::ring<pool_task*> queue_;  ///< the shared queue (pinned tasks: per slot)
  std::counting_semaphore<> room_;
  std::atomic<std::size_t> queued_{0};        ///< live tasks waiting (for stats)
  std::atomic<std::size_t> in_shared_{0};     ///< entries in queue_, tombstones included
  std::atomic<std::size_t> live_slots_{0};
  std::atomic<std::uint64_t> task_ids_{0};
  std::vector<std::unique_ptr<pool_slot>> slots_;

  bool lane_ = false;
  std::mutex workers_mu_;
  std::condition_variable workers_cv_;  ///< a worker exited or was abandoned
  std::vector<std::shared_ptr<pool_worker>> workers_;     ///< current worker per slot
  std::vector<std::shared_ptr<pool_worker>> abandoned_;   ///< stuck workers replaced

  std::mutex idle_mu_;
  std::vector<int> idle_;
  std::atomic<int> sleepers_{0};

  std::atomic<bool> stopping_{false};
  /// Set by shutdown(true) before stopping_: a worker that pops a task after this cancels it
  /// instead of running it (else a worker freed just then could start a task shutdown(true)
  /// promised to cancel).
  std::atomic<bool> cancelling_{false};
  std::atomic<bool> stopped_by_runtime_{false};  ///< set with cancelling_ by the runtime's stop
  /// The error message of a queued task that shutdown(true) cancelled.
  static constexpr const char* cancelled_by_shutdown = "pool shut down before the task ran";
  std::atomic<bool> shut_down_{false};
  std::mutex shutdown_mu_;
  std::atomic<std::uint64_t> submitted_{0}, completed_{0}, not_run_{0};

  // Watchdog: deadlines of running tasks, of interpreters ending, of replacements starting.
  enum class watch {
    task,      ///< the task's deadline: raise isola.TaskTimeout in it
    grace,     ///< TaskTimeout (or SystemExit) was raised: declare the interpreter broken
    ending,    ///< the worker ends its interpreter: abandon it if still ending
    creating,  ///< a replacement or recycled interpreter is being created: abandon the worker
               ///< if it is not created yet
  };
  struct deadline_entry {
    std::weak_ptr<pool_worker> worker;
    std::weak_ptr<pool_task> task;
    const pool_task* task_ptr;  ///< identity only, for finding a task's entries
    std::uint64_t token;
    int slot;
    watch kind;
    std::weak_ptr<interp_host> host = {};  ///< ending, creating: the interpreter concerned
  };
  void watch_locked(std::chrono::steady_clock::time_point when, deadline_entry e);
  void unwatch_task_locked(const pool_task* t);
  std::mutex wd_mu_;
  std::condition_variable wd_cv_;
  /// When the watchdog will wake by itself (max: only when notified); min while it is awake
  /// and will read deadlines_ again before it sleeps. Guarded by wd_mu_.
  std::chrono::steady_clock::time_point wd_sleeping_until_ =
      std::chrono::steady_clock::time_point::min();
  std::multimap<std::chrono::steady_clock::time_point, deadline_entry> deadlines_;
  bool wd_stop_ = false;
  std::thread watchdog_;

  // Short-lived threads that attach to interrupt a task (they may block on a stuck GIL).
  struct helper {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  std::mutex helpers_mu_;
  std::vector<helper> helpers_;
};

}  // namespace isola::detail
