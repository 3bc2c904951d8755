// isola::pool: N interpreter workers fed by one bounded lock-free queue (Boost.Lockfree).
// Idle workers park on a futex (lib/sync.hpp) after a short spin; a watchdog thread
// enforces timeouts, first by raising isola.TaskTimeout in the task, then by replacing an
// interpreter that stays stuck; it also bounds how long an interpreter may take to end or a
// replacement to be created, and abandons workers that pass those bounds.
#include "lib/python.hpp"

#include "interp/guest.hpp"
#include "interp/host.hpp"
#include "lib/module.hpp"
#include "lib/pyexec.hpp"
#include "lib/sync.hpp"
#include "lib/value_codec.hpp"

#include <isola/log.hpp>
#include <isola/pool.hpp>

#include <boost/lockfree/queue.hpp>

#include <cxxabi.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <optional>
#include <semaphore>
#include <thread>


namespace isola {
namespace detail {

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

namespace {

std::exception_ptr make_error(errc code, const std::string& msg) {
  return std::make_exception_ptr(error(code, msg));
}

constexpr int spin_rounds = 2000;  // ~tens of microseconds before an idle worker parks

}  // namespace

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
      replaced_broken{0};
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
thread_local run_context* current_run = nullptr;

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
  /// With workers_mu_ held: whether a slot that lost its worker needs a new one.
  bool slot_needs_worker(int slot) const;
  void worker_exited(pool_worker& w);
  void slot_died(int slot, const std::string& why);
  bool fail_unstarted(const std::shared_ptr<pool_task>& t, errc code, const std::string& msg);
  void fail_pinned(pool_slot& s, errc code, const std::string& msg);
  void fail_shared_queue(errc code, const std::string& msg);
  void reap_helpers(bool all);

  pool_options options_;
  interpreter_config config_;
  std::shared_ptr<spdlog::logger> log_;

  boost::lockfree::queue<pool_task*> queue_;
  std::counting_semaphore<> room_;
  std::atomic<std::size_t> queued_{0};        ///< live tasks waiting (for stats)
  std::atomic<std::size_t> in_shared_{0};     ///< entries in queue_, tombstones included
  std::atomic<std::size_t> live_slots_{0};
  std::atomic<std::uint64_t> task_ids_{0};
  std::vector<std::unique_ptr<pool_slot>> slots_;

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

pool_impl::pool_impl(pool_options o)
    : options_(std::move(o)),
      log_(logger("isola.pool")),
      queue_(std::max<std::size_t>(options_.queue_capacity, 1)),
      room_(static_cast<std::ptrdiff_t>(std::max<std::size_t>(options_.queue_capacity, 1))) {
  if (options_.queue_capacity == 0) {
    throw std::invalid_argument("pool_options::queue_capacity must be at least 1");
  }
  if (options_.size == 0) options_.size = std::max(1u, std::thread::hardware_concurrency());
  config_ = options_.interpreter;
  config_.sys_path.insert(config_.sys_path.end(), options_.sys_path.begin(),
                          options_.sys_path.end());
  if (auto problem = config_.validate(); !problem.empty()) throw std::invalid_argument(problem);
  for (std::size_t i = 0; i < options_.size; ++i) {
    auto s = std::make_unique<pool_slot>();
    s->index = static_cast<int>(i);
    slots_.push_back(std::move(s));
  }
  live_slots_ = options_.size;
  workers_.resize(options_.size);
}

pool_impl::~pool_impl() { shutdown(stop_mode::finish); }

void pool_impl::start() {
  std::vector<std::promise<void>> started(slots_.size());
  std::vector<std::future<void>> ready;
  for (auto& p : started) ready.push_back(p.get_future());
  {
    std::lock_guard lock(workers_mu_);
    for (std::size_t i = 0; i < slots_.size(); ++i) spawn_locked(static_cast<int>(i), &started[i]);
  }
  std::exception_ptr first;
  for (std::size_t i = 0; i < ready.size(); ++i) {
    try {
      ready[i].get();
    } catch (const python_error& e) {
      if (!first) {
        first = std::make_exception_ptr(python_error(
            e.type_name(), "pool interpreter " + std::to_string(i) + ": init failed: " + e.message(),
            e.traceback(), e.filename(), e.line(), e.column()));
      }
    } catch (const std::exception& e) {
      if (!first) {
        first = std::make_exception_ptr(error(
            errc::creation_failed, "pool interpreter " + std::to_string(i) + ": " + e.what()));
      }
    }
  }
  watchdog_ = std::thread([this] { watchdog_main(); });
  if (first) {
    shutdown(stop_mode::cancel_queued);
    std::rethrow_exception(first);
  }
}

// With workers_mu_ held. The thread owns a reference to the pool, so a worker left behind
// (stuck in C code) never touches a freed pool when it returns. A replacement's creation (no
// `started`) is watched: if the interpreters share a GIL that a stuck one holds, it never
// finishes, and nothing may wait for it.
void pool_impl::spawn_locked(int slot, std::promise<void>* started) {
  auto w = std::make_shared<pool_worker>();
  w->slot = slot;
  w->host = std::make_shared<interp_host>(config_);
  workers_[slot] = w;
  w->watch_creation = started == nullptr;
  w->thread = std::thread(
      [self = shared_from_this(), w, started] { self->worker_main(w, started); });
}

bool pool_impl::slot_needs_worker(int slot) const {
  return !stopping_.load() || slots_[slot]->pinned_count.load() != 0 || in_shared_.load() != 0;
}

void pool_impl::init_interpreter(pool_worker& w) {
  w.host->create();
  auto& s = *slots_[w.slot];
  s.interpreter_id = w.host->state()->id;
  // The runtime ends the whole pool (cancelling queued work, interrupting running tasks) if it
  // is destroyed first.
  w.host->state()->closer = [weak = weak_from_this()] {
    if (auto p = weak.lock()) p->shutdown(stop_mode::interrupt_running);
  };
  if (options_.init_code.empty() && options_.init_call.empty()) return;
  w.host->enter();
  try {
    with_python_errors([&] {
      if (!options_.init_code.empty()) {
        auto g = main_globals();
        run_source(options_.init_code, "<pool init>", Py_file_input, g.get());
      }
      if (!options_.init_call.empty()) {
        auto fn = resolve_target(options_.init_call);
        py::check(PyObject_CallNoArgs(fn.get()));
      }
    });
  } catch (...) {
    w.host->leave();
    w.host->end();
    throw;
  }
  w.host->leave();
}

void pool_impl::worker_exited(pool_worker& w) {
  {
    std::lock_guard lock(workers_mu_);
    w.exited = true;
  }
  workers_cv_.notify_all();
}

void pool_impl::end_interpreter(const std::shared_ptr<pool_worker>& w) {
  const std::shared_ptr<interp_host> host = w->host;
  {
    std::lock_guard lock(wd_mu_);
    watch_locked(std::chrono::steady_clock::now() + host->end_budget(),
                 deadline_entry{w, {}, nullptr, 0, w->slot, watch::ending, host});
  }
  host->end([this, w, host] {
    abandon_worker(w, host->state(), "threads its code left running did not stop when it ended");
  });
}

void pool_impl::create_watched(const std::shared_ptr<pool_worker>& w) {
  w->created = false;
  if (w->watch_creation) {
    std::lock_guard lock(wd_mu_);
    watch_locked(std::chrono::steady_clock::now() + options_.grace_period,
                 deadline_entry{w, {}, nullptr, 0, w->slot, watch::creating, w->host});
  }
  init_interpreter(*w);
  w->created = true;
}

void pool_impl::worker_main(const std::shared_ptr<pool_worker>& w, std::promise<void>* started) {
  try {
    create_watched(w);
  } catch (abi::__forced_unwind&) {
    throw;  // CPython ends this thread (runtime finalising)
  } catch (...) {
    if (started != nullptr) {
      started->set_exception(std::current_exception());
    } else {
      std::string why = "unknown error";
      try {
        throw;
      } catch (const std::exception& e) {
        why = e.what();
      } catch (...) {
      }
      slot_died(w->slot, why);
    }
    worker_exited(*w);
    return;
  }
  if (started != nullptr) started->set_value();
  w->watch_creation = true;  // recycled ones are watched too
  if (w->abandoned) {  // created too late: a new worker serves the slot already
    end_interpreter(w);
    worker_exited(*w);
    return;
  }

  std::size_t since_recycle = 0;
  auto& slot = *slots_[w->slot];
  for (;;) {
    auto t = next_task(*w);
    if (!t) break;
    run_task(*w, std::move(t));
    if (w->abandoned) {
      log_->warn("[slot {}] stuck interpreter {} came back; ending it", w->slot,
                 w->host->state()->id);
      break;
    }
    if (options_.max_tasks_per_interpreter != 0 &&
        ++since_recycle >= options_.max_tasks_per_interpreter && !stopping_.load()) {
      since_recycle = 0;
      auto old_id = w->host->state()->id;
      auto fresh = std::make_shared<interp_host>(config_);
      end_interpreter(w);
      if (w->abandoned) break;  // the old one did not end in time; a new worker took over
      {
        std::lock_guard lock(w->host_mu);
        w->host = std::move(fresh);
      }
      try {
        create_watched(w);
      } catch (abi::__forced_unwind&) {
        throw;
      } catch (const std::exception& e) {
        slot_died(w->slot, std::string("recycling interpreter ") + std::to_string(old_id) +
                               ": " + e.what());
        worker_exited(*w);
        return;
      }
      ++slot.recycled;
      log_->debug("[slot {}] recycled interpreter {} -> {}", w->slot, old_id,
                  w->host->state()->id);
    }
  }
  if (w->host->created()) end_interpreter(w);
  worker_exited(*w);
}

// The slot has no interpreter and cannot get one: its pinned tasks fail, new pinned tasks are
// refused, and when no slot is left every queued task fails too.
void pool_impl::slot_died(int slot, const std::string& why) {
  auto& s = *slots_[slot];
  if (s.dead.exchange(true)) return;
  log_->critical("[slot {}] no interpreter: {}; the slot is out of service", slot, why);
  std::string msg = "pool interpreter " + std::to_string(slot) +
                    " could not be created: " + why;
  fail_pinned(s, errc::creation_failed, msg);
  if (--live_slots_ == 0) {
    fail_shared_queue(errc::creation_failed, "no pool interpreter is left (" + msg + ")");
  }
}

bool pool_impl::fail_unstarted(const std::shared_ptr<pool_task>& t, errc code,
                               const std::string& msg) {
  if (!t->claim(queued)) return false;
  --queued_;
  ++not_run_;
  ++completed_;
  t->deliver(make_error(code, msg));
  return true;
}

void pool_impl::fail_pinned(pool_slot& s, errc code, const std::string& msg) {
  std::deque<std::shared_ptr<pool_task>> pinned;
  {
    std::lock_guard lock(s.pinned_mu);
    pinned.swap(s.pinned);
    s.pinned_count = 0;
  }
  for (auto& t : pinned) {
    room_.release();
    fail_unstarted(t, code, msg);
  }
}

void pool_impl::fail_shared_queue(errc code, const std::string& msg) {
  pool_task* raw = nullptr;
  while (queue_.pop(raw)) {
    auto t = std::move(raw->self);
    --in_shared_;
    room_.release();
    fail_unstarted(t, code, msg);
  }
}

std::shared_ptr<pool_task> pool_impl::try_pop(pool_worker& w) {
  auto& slot = *slots_[w.slot];
  for (;;) {
    std::shared_ptr<pool_task> t;
    if (slot.pinned_count.load() != 0) {
      std::lock_guard lock(slot.pinned_mu);
      if (!slot.pinned.empty()) {
        t = std::move(slot.pinned.front());
        slot.pinned.pop_front();
        --slot.pinned_count;
      }
    }
    if (!t) {
      pool_task* raw = nullptr;
      if (!queue_.pop(raw)) return nullptr;
      t = std::move(raw->self);
      --in_shared_;
    }
    room_.release();
    if (cancelling_.load()) {
      if (stopped_by_runtime_.load()) {
        fail_unstarted(t, errc::runtime_finalizing, "the isola runtime shut down before the task ran");
      } else {
        fail_unstarted(t, errc::cancelled, cancelled_by_shutdown);
      }
      continue;
    }
    // Claim it. Whoever moves a task out of `queued` (this CAS, cancel, a shutdown that
    // cancels) also takes it off queued_. A cancelled task is a tombstone: drop it.
    t->running_on = w.slot;
    t->worker = w.weak_from_this();
    int expected = queued;
    if (t->phase.compare_exchange_strong(expected, running)) {
      --queued_;
      return t;
    }
  }
}

std::shared_ptr<pool_task> pool_impl::next_task(pool_worker& w) {
  auto& slot = *slots_[w.slot];
  for (int spin = 0;; ++spin) {
    if (w.abandoned) return nullptr;
    if (auto t = try_pop(w)) return t;
    if (stopping_.load()) return nullptr;  // stopping and nothing left for us
    if (spin < spin_rounds) {
      cpu_relax();
      continue;
    }
    // Park. Register as idle, then look once more, so a submit between our last look and
    // the registration cannot be missed (both sides use seq_cst).
    std::uint32_t bell = slot.bell.load();
    {
      std::lock_guard lock(idle_mu_);
      idle_.push_back(w.slot);
      sleepers_.fetch_add(1);
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool work = in_shared_.load() != 0 || slot.pinned_count.load() != 0 || stopping_.load() ||
                w.abandoned.load();
    if (!work) park(slot.bell, bell, std::nullopt);  // returns early too: we look again
    {
      std::lock_guard lock(idle_mu_);
      auto it = std::find(idle_.begin(), idle_.end(), w.slot);
      if (it != idle_.end()) {
        idle_.erase(it);
        sleepers_.fetch_sub(1);
      }
    }
    spin = 0;
  }
}

void pool_impl::ring(int slot) {
  slots_[slot]->bell.fetch_add(1);
  unpark(slots_[slot]->bell, 1);
}

void pool_impl::wake_one() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (sleepers_.load() == 0) return;
  int slot = -1;
  {
    std::lock_guard lock(idle_mu_);
    if (idle_.empty()) return;
    slot = idle_.back();
    idle_.pop_back();
    sleepers_.fetch_sub(1);
  }
  ring(slot);
}

void pool_impl::run_task(pool_worker& w, std::shared_ptr<pool_task> task) {
  // The running task lives in w.current (moved, so its reference count, which the submitting
  // thread also touches, is left alone); only this thread changes it, under current_mu.
  {
    std::lock_guard lock(w.current_mu);
    w.current = std::move(task);
  }
  struct release_current {
    pool_worker& w;
    ~release_current() {
      std::shared_ptr<pool_task> done;
      std::lock_guard lock(w.current_mu);
      done.swap(w.current);
    }
  } at_exit{w};
  const std::shared_ptr<pool_task>& t = w.current;
  auto& slot = *slots_[w.slot];
  auto timeout = t->timeout.count() > 0 ? t->timeout : options_.default_timeout;
  auto t0 = std::chrono::steady_clock::now();
  t->started = t0;
  bool has_deadline = timeout.count() > 0;
  if (has_deadline) {
    t->armed_ms = timeout.count();
    std::lock_guard lock(wd_mu_);
    watch_locked(t0 + timeout,
                 deadline_entry{w.weak_from_this(), t, t.get(), t->token.load(), w.slot, watch::task});
  }

  std::exception_ptr err;
  value result;
  w.host->enter();
  w.host->task_started(t->token.load());
  run_context context{this, &w, t.get()};
  current_run = &context;
  try {
    result = with_python_errors([&]() -> value {
      // An interrupt that reached us before task_started() found no task to hit; the flags
      // it set first are visible now (both sides hold this interpreter's GIL).
      if (t->stopped_by_runtime.load()) {
        PyErr_SetNone(PyExc_SystemExit);
        throw py::error_already_set();
      }
      if (t->phase.load() == cancelling) {
        PyErr_SetNone(PyExc_KeyboardInterrupt);
        throw py::error_already_set();
      }
      if (t->timed_out.load()) {
        PyErr_SetNone(find_exception_class(task_timeout_exception));
        throw py::error_already_set();
      }
      switch (t->kind) {
        case task_kind::call: {
          auto fn = resolve_target(t->text);
          auto a = py::check(PyTuple_New(static_cast<Py_ssize_t>(t->args.size())));
          for (std::size_t i = 0; i < t->args.size(); ++i) {
            PyTuple_SET_ITEM(a.get(), static_cast<Py_ssize_t>(i), to_python(t->args[i]).release());
          }
          py::object kw;
          if (!t->kwargs.empty()) {
            kw = py::check(PyDict_New());
            for (const auto& [k, v] : t->kwargs) {
              py::check_zero(PyDict_SetItemString(kw.get(), k.c_str(), to_python(v).get()));
            }
          }
          auto r = py::check(PyObject_Call(fn.get(), a.get(), kw.get()));
          return from_python(r.get());
        }
        case task_kind::code: {
          auto g = main_globals();
          // One expression gives its value; otherwise run the statements.
          PyObject* code = Py_CompileString(t->text.c_str(), "<task>", Py_eval_input);
          if (code == nullptr && PyErr_ExceptionMatches(PyExc_SyntaxError)) {
            PyErr_Clear();
            run_source(t->text, "<task>", Py_file_input, g.get());
            return none;
          }
          auto c = py::check(code);
          auto r = py::check(PyEval_EvalCode(c.get(), g.get(), g.get()));
          return from_python(r.get());
        }
        case task_kind::map_chunk: {
          auto fn = resolve_target(t->text);
          isola::list out;
          out.items.reserve(t->args.size());
          for (const auto& a : t->args) {
            auto arg = to_python(a);
            auto r = py::check(PyObject_CallOneArg(fn.get(), arg.get()));
            out.items.push_back(from_python(r.get()));
          }
          return out;
        }
      }
      return none;
    });
  } catch (abi::__forced_unwind&) {
    throw;  // CPython ends this thread (runtime finalising while we were stuck)
  } catch (...) {
    err = std::current_exception();
  }
  current_run = nullptr;
  w.host->task_finished();
  w.host->leave();
  if (t->watched.load()) {
    // The watchdog may have moved the entry to its grace stage, and the task may have re-armed
    // its deadline (or set one without having had any): erase whatever is ours.
    std::lock_guard lock(wd_mu_);
    unwatch_task_locked(t.get());
  }
  // declare_broken() may have delivered errc::timeout already; then it has counted the task
  // (and its busy time up to then).
  int claimed = t->claim_started();
  if (claimed < 0) return;
  slot.busy_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now() - t0)
                      .count();
  if (claimed == cancelling) {
    ++slot.cancelled;
    ++slot.failed;
    err = make_error(errc::cancelled, "task cancelled while running");
  } else if (err && t->stopped_by_runtime.load()) {
    ++slot.failed;
    err = make_error(errc::runtime_finalizing,
                     "the isola runtime shut down while the task ran (SystemExit was raised in "
                     "it)");
  } else if (err) {
    ++slot.failed;
    if (t->timed_out.load()) {
      ++slot.timed_out;
      try {
        std::rethrow_exception(err);
      } catch (const python_error& e) {
        // The task's TaskTimeout becomes the TimeoutError callers catch, with its traceback.
        if (e.is(task_timeout_exception)) {
          err = std::make_exception_ptr(python_error(
              "TimeoutError",
              "task exceeded its timeout of " + std::to_string(t->armed_ms.load()) +
                  " ms and was interrupted" + (e.message().empty() ? "" : " " + e.message()),
              e.traceback()));
        }
      } catch (...) {
      }
    }
  } else {
    ++slot.done;
  }
  ++completed_;
  t->deliver(err, std::move(result));
}

void pool_impl::enqueue(const std::shared_ptr<pool_task>& t, bool wait_for_room) {
  if (stopping_.load()) {
    throw error(errc::shut_down, "cannot submit: the pool has been shut down");
  }
  if (t->pinned >= static_cast<int>(slots_.size()) || t->pinned < -1) {
    throw std::out_of_range("interpreter_index " + std::to_string(t->pinned) +
                            " is out of range; the pool has " + std::to_string(slots_.size()) +
                            " interpreters (0.." + std::to_string(slots_.size() - 1) + ")");
  }
  auto dead_error = [&] {
    return error(errc::creation_failed,
                 t->pinned >= 0
                     ? "cannot submit: pool interpreter " + std::to_string(t->pinned) +
                           " is out of service (a replacement could not be created; see the log)"
                     : std::string("cannot submit: no pool interpreter is left (replacements "
                                   "could not be created; see the log)"));
  };
  if ((t->pinned >= 0 && slots_[t->pinned]->dead.load()) || live_slots_.load() == 0) {
    throw dead_error();
  }
  if (wait_for_room) {
    room_.acquire();
  } else if (!room_.try_acquire()) {
    throw error(errc::queue_full, "cannot submit: the pool's queue is full (" +
                                      std::to_string(options_.queue_capacity) +
                                      " tasks); wait, use submit(), or raise queue_capacity");
  }
  if (stopping_.load()) {
    room_.release();
    throw error(errc::shut_down, "cannot submit: the pool has been shut down");
  }
  t->id = next_task_id();
  t->token.store(t->id, std::memory_order_relaxed);  // published to the worker by the queue
  t->pool = weak_from_this();
  ++submitted_;
  ++queued_;
  if (t->pinned >= 0) {
    auto& slot = *slots_[t->pinned];
    {
      std::lock_guard lock(slot.pinned_mu);
      slot.pinned.push_back(t);
      ++slot.pinned_count;
    }
    ring(t->pinned);
    // The slot may have died meanwhile (its pinned tasks were failed before ours arrived).
    if (slot.dead.load()) fail_pinned(slot, errc::creation_failed, dead_error().what());
  } else {
    t->self = t;
    ++in_shared_;
    queue_.bounded_push(t.get());  // room_ guarantees space
    wake_one();
    if (live_slots_.load() == 0) fail_shared_queue(errc::creation_failed, dead_error().what());
  }
}

void pool_impl::wake_for_tombstone(const pool_task& t) {
  // A task failed while queued stays there as a tombstone holding room until a worker drops
  // it: wake one.
  if (t.pinned >= 0) {
    ring(t.pinned);
  } else {
    wake_one();
  }
}

bool pool_impl::cancel(const std::shared_ptr<pool_task>& t) {
  if (fail_unstarted(t, errc::cancelled, "task cancelled before it ran")) {
    wake_for_tombstone(*t);
    return true;
  }
  int expected = running;
  if (!t->phase.compare_exchange_strong(expected, cancelling)) return false;  // finished
  if (auto w = t->worker.lock()) interrupt_async(w, t->token.load(), "KeyboardInterrupt");
  return true;
}

bool pool_impl::interrupt(const std::shared_ptr<pool_task>& t, std::string_view exception_type) {
  if (fail_unstarted(t, errc::cancelled, "task interrupted before it ran")) {
    wake_for_tombstone(*t);
    return true;
  }
  if (t->phase.load() != running) return false;
  if (auto w = t->worker.lock()) interrupt_async(w, t->token.load(), std::string(exception_type));
  return true;
}

void pool_impl::set_deadline(run_context& c, std::optional<std::chrono::nanoseconds> in) {
  pool_task& t = *c.task;
  const auto now = std::chrono::steady_clock::now();
  const auto own = t.timeout.count() > 0 ? t.timeout : options_.default_timeout;
  std::optional<std::chrono::steady_clock::time_point> when;
  std::chrono::milliseconds length{0};
  if (in) {
    when = now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(*in);
    length = std::chrono::ceil<std::chrono::milliseconds>(*in);
  }
  if (own.count() > 0 && (!when || *when > t.started + own)) {  // never past its own
    when = t.started + own;
    length = own;
  }
  const std::uint64_t token = next_task_id();
  {
    std::lock_guard lock(wd_mu_);
    unwatch_task_locked(&t);
    t.timed_out = false;
    t.token = token;
    t.armed_ms = length.count();
    if (when) {
      std::shared_ptr<pool_task> task;
      {
        std::lock_guard cur(c.worker->current_mu);
        task = c.worker->current;
      }
      watch_locked(*when, deadline_entry{c.worker->weak_from_this(), task, &t, token,
                                         c.worker->slot, watch::task});
    }
  }
  // GIL held (we run inside the task): interrupts for the old token are dropped from now on.
  c.worker->host->retoken(token);
}

void pool_impl::watch_locked(std::chrono::steady_clock::time_point when, deadline_entry e) {
  if (auto t = e.task.lock()) t->watched = true;
  auto it = deadlines_.emplace(when, std::move(e));
  if (it == deadlines_.begin()) wd_cv_.notify_one();
}

void pool_impl::unwatch_task_locked(const pool_task* t) {
  std::erase_if(deadlines_, [t](const auto& kv) { return kv.second.task_ptr == t; });
}

void pool_impl::interrupt_async(const std::shared_ptr<pool_worker>& w, std::uint64_t token,
                                std::string type) {
  auto finished = std::make_shared<std::atomic<bool>>(false);
  std::thread th([w, token, type = std::move(type), finished] {
    try {
      w->current_host()->interrupt(type, token);
    } catch (abi::__forced_unwind&) {
      throw;
    } catch (const std::exception& e) {
      logger("isola.pool")->error("[slot {}] interrupt failed: {}", w->slot, e.what());
    }
    *finished = true;
  });
  std::lock_guard lock(helpers_mu_);
  helpers_.push_back({std::move(th), finished});
}

void pool_impl::reap_helpers(bool all) {
  std::vector<helper> done;
  {
    std::lock_guard lock(helpers_mu_);
    auto it = std::partition(helpers_.begin(), helpers_.end(),
                             [&](const helper& h) { return !all && !h.finished->load(); });
    std::move(it, helpers_.end(), std::back_inserter(done));
    helpers_.erase(it, helpers_.end());
  }
  for (auto& h : done) {
    if (h.finished->load()) {
      h.thread.join();
    } else {
      // Blocked on the GIL of an interpreter stuck in C code: it cannot be joined without
      // hanging shutdown. It holds shared ownership of everything it touches.
      log_->critical("an interrupt thread is blocked on a stuck interpreter; leaving it behind");
      h.thread.detach();
    }
  }
}

void pool_impl::watchdog_main() {
  std::unique_lock lock(wd_mu_);
  while (!wd_stop_) {
    if (deadlines_.empty()) {
      wd_cv_.wait(lock);
      continue;
    }
    // A copy: wait_until keeps reading its argument while the lock is released, and run_task
    // may erase (free) the entry meanwhile.
    const auto when = deadlines_.begin()->first;
    if (wd_cv_.wait_until(lock, when) != std::cv_status::timeout) continue;
    auto first = deadlines_.begin();
    if (first == deadlines_.end() || first->first > std::chrono::steady_clock::now()) continue;
    deadline_entry e = first->second;
    deadlines_.erase(first);
    auto w = e.worker.lock();
    if (!w) continue;
    switch (e.kind) {
      case watch::task: {
        auto t = e.task.lock();
        if (!t || t->phase.load() == finished) break;
        t->timed_out = true;
        watch_locked(std::chrono::steady_clock::now() + options_.grace_period,
                     deadline_entry{e.worker, e.task, e.task_ptr, e.token, e.slot, watch::grace});
        lock.unlock();
        log_->warn("[slot {}] task timed out; raising {} in it", e.slot, task_timeout_exception);
        interrupt_async(w, e.token, task_timeout_exception);
        reap_helpers(false);
        lock.lock();
        break;
      }
      case watch::grace: {
        auto t = e.task.lock();
        if (!t || t->phase.load() == finished) break;
        lock.unlock();
        declare_broken(w, t);
        lock.lock();
        break;
      }
      case watch::ending: {
        auto host = e.host.lock();
        if (!host || w->exited.load()) break;
        {
          std::lock_guard state_lock(host->state()->mu);
          if (host->state()->phase == interp_phase::closed) break;  // it ended in time
        }
        lock.unlock();
        abandon_worker(w, host->state(),
                       "ending it took longer than end_timeout + 2 * end_grace (an atexit "
                       "handler or __del__ that does not return, or a thread holding its GIL)");
        lock.lock();
        break;
      }
      case watch::creating: {
        auto host = e.host.lock();
        if (!host || w->created.load() || w->exited.load() || w->current_host() != host) break;
        lock.unlock();
        abandon_worker(w, host->state(),
                       "a new interpreter was not created within grace_period (its creation "
                       "waits for a GIL that a stuck interpreter holds?)");
        lock.lock();
        break;
      }
    }
  }
}

void pool_impl::declare_broken(const std::shared_ptr<pool_worker>& w,
                               const std::shared_ptr<pool_task>& t) {
  auto& s = *slots_[w->slot];
  std::int64_t stuck_id = s.interpreter_id.load();
  bool replaced = false;
  const bool by_runtime = t->stopped_by_runtime.load();
  {
    std::lock_guard lock(workers_mu_);
    if (w->abandoned || w->exited || workers_[w->slot] != w) return;
    if (t->claim_started() < 0) return;  // it returned just now: not stuck
    w->abandoned = true;
    abandoned_.push_back(w);
    ++s.failed;
    if (!by_runtime) ++s.timed_out;
    ++s.replaced_broken;
    s.busy_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::steady_clock::now() - t->started)
                     .count();
    ++completed_;
    // The replacement is in place before anyone can see the task fail, so a shutdown() that
    // follows waits for the replacement, not for the stuck thread.
    if (slot_needs_worker(w->slot)) {
      spawn_locked(w->slot, nullptr);
      replaced = true;
    }
  }
  // The stuck interpreter must not hold up runtime shutdown, and the runtime must know that
  // its thread still runs.
  abandon_interp(w->current_host()->state(),
                 "its task did not stop within grace_period after " +
                     std::string(by_runtime ? "SystemExit (runtime shutdown)"
                                            : task_timeout_exception) +
                     " (stuck in C code?)");
  workers_cv_.notify_all();
  log_->critical("[slot {}] interpreter {} is stuck after {}; {} (the stuck one is abandoned "
                 "and ends if it ever returns)",
                 w->slot, stuck_id, by_runtime ? "the runtime's SystemExit" : "a timeout",
                 replaced ? "starting a replacement" : "the pool is stopping");
  t->deliver(by_runtime
                 ? make_error(errc::runtime_finalizing,
                              "the isola runtime shut down while the task ran, and it did not "
                              "stop on SystemExit within the grace period (stuck in C code?)")
                 : make_error(errc::timeout,
                              "task did not stop within the grace period after its timeout "
                              "(stuck in C code?); its interpreter was replaced"));
}

bool pool_impl::abandon_worker(const std::shared_ptr<pool_worker>& w,
                               const std::shared_ptr<interp_state>& state, const std::string& why) {
  bool replaced = false;
  {
    std::lock_guard lock(workers_mu_);
    if (w->abandoned || w->exited) return false;
    w->abandoned = true;
    abandoned_.push_back(w);
    if (workers_[w->slot] == w && slot_needs_worker(w->slot)) {
      spawn_locked(w->slot, nullptr);
      replaced = true;
    }
  }
  abandon_interp(state, why);
  ++slots_[w->slot]->replaced_broken;
  workers_cv_.notify_all();
  if (replaced) log_->warn("[slot {}] starting a replacement interpreter", w->slot);
  return true;
}

void pool_impl::shutdown(stop_mode mode) {
  std::lock_guard serial(shutdown_mu_);
  if (shut_down_) return;
  const bool cancel_pending = mode != stop_mode::finish;
  if (mode == stop_mode::interrupt_running) stopped_by_runtime_ = true;
  if (cancel_pending) cancelling_ = true;  // before stopping_: see cancelling_
  stopping_ = true;
  if (cancel_pending) {
    const errc code = mode == stop_mode::interrupt_running ? errc::runtime_finalizing : errc::cancelled;
    const char* why = mode == stop_mode::interrupt_running
                          ? "the isola runtime shut down before the task ran"
                          : cancelled_by_shutdown;
    for (auto& s : slots_) fail_pinned(*s, code, why);
    fail_shared_queue(code, why);
    // Tasks blocked on a channel would never finish: end those waits (ChannelClosed).
    std::lock_guard lock(workers_mu_);
    for (auto& w : workers_) {
      if (!w) continue;
      if (auto host = w->current_host()) stop_waits(*host->state());
    }
  }
  if (mode == stop_mode::interrupt_running) {
    // The runtime is going away: running tasks get SystemExit and grace_period to stop, then
    // their interpreters are declared broken (abandoned), as after a timeout.
    std::vector<std::shared_ptr<pool_worker>> current;
    {
      std::lock_guard lock(workers_mu_);
      current = workers_;
    }
    for (auto& w : current) {
      if (!w) continue;
      std::shared_ptr<pool_task> t;
      {
        std::lock_guard lock(w->current_mu);
        t = w->current;
      }
      if (!t || t->phase.load() == finished) continue;
      t->stopped_by_runtime = true;
      log_->warn("[slot {}] the runtime is shutting down while a task runs; raising SystemExit "
                 "in it",
                 w->slot);
      {
        std::lock_guard lock(wd_mu_);
        unwatch_task_locked(t.get());
        watch_locked(std::chrono::steady_clock::now() + options_.grace_period,
                     deadline_entry{w, t, t.get(), t->token.load(), w->slot, watch::grace});
      }
      interrupt_async(w, t->token.load(), "SystemExit");
    }
  }
  for (std::size_t i = 0; i < slots_.size(); ++i) ring(static_cast<int>(i));

  std::vector<std::shared_ptr<pool_worker>> all;
  {
    release_gil unlocked;
    {
      // Wait until every slot's current worker has exited or been abandoned; the watchdog
      // keeps running meanwhile, so a stuck worker is abandoned after its grace period and
      // its replacement (installed under this lock) is waited for instead, and an interpreter
      // that takes too long to end (or a replacement to be created) is abandoned.
      std::unique_lock lock(workers_mu_);
      workers_cv_.wait(lock, [&] {
        return std::all_of(workers_.begin(), workers_.end(), [](const auto& w) {
          return !w || w->exited.load() || w->abandoned.load();
        });
      });
      all = workers_;
      all.insert(all.end(), abandoned_.begin(), abandoned_.end());
    }
    {
      std::lock_guard lock(wd_mu_);
      wd_stop_ = true;
    }
    wd_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    reap_helpers(true);
    for (auto& w : all) {
      if (!w->thread.joinable()) continue;
      if (w->exited.load()) {
        w->thread.join();
      } else {
        log_->critical("[slot {}] leaving a stuck interpreter's thread behind at shutdown",
                       w->slot);
        w->thread.detach();
      }
    }
  }
  // Whatever is still queued had no interpreter left to run it.
  for (auto& s : slots_) fail_pinned(*s, errc::shut_down, "pool shut down; no interpreter ran the task");
  fail_shared_queue(errc::shut_down, "pool shut down; no interpreter ran the task");
  shut_down_ = true;
}

pool_stats pool_impl::stats() const {
  pool_stats out;
  // Read completed first: every counter it covers was bumped before it.
  out.completed = completed_.load();
  out.not_run = not_run_.load();
  for (const auto& s : slots_) {
    interpreter_stats i;
    i.index = static_cast<std::size_t>(s->index);
    i.interpreter_id = s->interpreter_id.load();
    i.tasks_done = s->done.load();
    i.tasks_failed = s->failed.load();
    i.tasks_timed_out = s->timed_out.load();
    i.tasks_cancelled = s->cancelled.load();
    i.recycled = s->recycled.load();
    i.replaced_broken = s->replaced_broken.load();
    i.dead = s->dead.load();
    i.busy = std::chrono::nanoseconds(s->busy_ns.load());
    out.interpreters.push_back(i);
  }
  out.queue_depth = queued_.load();
  out.submitted = submitted_.load();
  return out;
}

// isola._set_deadline(seconds): see its doc string below.
PyObject* py_set_deadline(PyObject*, PyObject* arg) {
  run_context* c = current_run;
  if (c == nullptr) {
    PyErr_SetString(PyExc_RuntimeError,
                    "isola._set_deadline: only a task running in an isola pool has a deadline");
    return nullptr;
  }
  std::optional<std::chrono::nanoseconds> in;
  if (arg != Py_None) {
    const double secs = PyFloat_AsDouble(arg);
    if (secs == -1.0 && PyErr_Occurred()) return nullptr;
    if (!(secs >= 0) || secs > 1e9) {  // NaN fails the first test
      PyErr_Format(PyExc_ValueError,
                   "isola._set_deadline: seconds must be a number from 0 to 1e9, or None, not %R",
                   arg);
      return nullptr;
    }
    in = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(secs));
  }
  try {
    c->pool->set_deadline(*c, in);
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  Py_RETURN_NONE;
}

PyMethodDef pool_methods[] = {
    {"_set_deadline", py_set_deadline, METH_O,
     "_set_deadline(seconds)\n\nIn a task running in an isola pool: its timeout now ends "
     "`seconds` from now (isola.TaskTimeout is raised in it then), or, with None, at the "
     "task's own timeout again. Never later than the task's own timeout. Used by isola map to "
     "time each input of a chunk."},
    {nullptr, nullptr, 0, nullptr}};

module_part_registrar pool_part({"pool", pool_methods, nullptr});

}  // namespace detail

// ---- public face -----------------------------------------------------------------------------

void task_future::spin_briefly() const noexcept {
  if (!future_.valid()) return;
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
  for (int i = 0;; ++i) {
    if (future_.wait_for(std::chrono::seconds(0)) == std::future_status::ready) return;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until) return;
    detail::cpu_relax();
  }
}

bool task_future::cancel() {
  if (!task_) return false;
  auto p = task_->pool.lock();
  if (!p) return false;
  return p->cancel(task_);
}

bool task_future::interrupt(std::string_view exception_type) {
  if (!task_) return false;
  auto p = task_->pool.lock();
  if (!p) return false;
  return p->interrupt(task_, exception_type);
}

pool::pool(pool_options options) : impl_(std::make_shared<detail::pool_impl>(std::move(options))) {
  impl_->start();
}

pool::~pool() {
  if (impl_) impl_->shutdown(detail::stop_mode::finish);
}

std::size_t pool::size() const noexcept { return impl_->size(); }

namespace {
std::shared_ptr<detail::pool_task> make_task(detail::task_kind kind, std::string text,
                                             std::vector<value> args, task_options o) {
  auto t = std::make_shared<detail::pool_task>();
  t->kind = kind;
  t->text = std::move(text);
  t->args = std::move(args);
  t->timeout = o.timeout;
  t->pinned = o.interpreter_index;
  return t;
}
}  // namespace

task_future pool::submit_with(std::string target, std::vector<value> args,
                              std::vector<std::pair<std::string, value>> kwargs,
                              task_options options) {
  auto t = make_task(detail::task_kind::call, std::move(target), std::move(args), options);
  t->kwargs = std::move(kwargs);
  auto f = t->promise.get_future();
  impl_->enqueue(t, true);
  return task_future(std::move(f), std::move(t));
}

task_future pool::submit_code(std::string code, task_options options) {
  auto t = make_task(detail::task_kind::code, std::move(code), {}, options);
  auto f = t->promise.get_future();
  impl_->enqueue(t, true);
  return task_future(std::move(f), std::move(t));
}

task_future pool::try_submit_with(std::string target, std::vector<value> args,
                                  task_options options) {
  auto t = make_task(detail::task_kind::call, std::move(target), std::move(args), options);
  auto f = t->promise.get_future();
  impl_->enqueue(t, false);
  return task_future(std::move(f), std::move(t));
}

void pool::submit_callback(std::string target, std::vector<value> args, task_options o,
                           std::function<void(std::exception_ptr, value)> done) {
  auto t = make_task(detail::task_kind::call, std::move(target), std::move(args), o);
  t->done = std::move(done);
  try {
    impl_->enqueue(t, true);
  } catch (...) {
    if (t->claim(detail::queued)) t->deliver(std::current_exception());
  }
}

std::vector<value> pool::map(std::string function, const std::vector<value>& inputs,
                             std::size_t chunk_size) {
  if (chunk_size == 0) throw std::invalid_argument("map: chunk_size must be at least 1");
  std::vector<task_future> futures;
  futures.reserve((inputs.size() + chunk_size - 1) / chunk_size);
  for (std::size_t i = 0; i < inputs.size(); i += chunk_size) {
    std::vector<value> chunk(inputs.begin() + static_cast<std::ptrdiff_t>(i),
                             inputs.begin() + static_cast<std::ptrdiff_t>(std::min(i + chunk_size, inputs.size())));
    auto t = make_task(detail::task_kind::map_chunk, function, std::move(chunk), {});
    auto f = t->promise.get_future();
    impl_->enqueue(t, true);
    futures.emplace_back(std::move(f), std::move(t));
  }
  std::vector<value> out;
  out.reserve(inputs.size());
  for (auto& f : futures) {
    value chunk = f.get();  // throws the first failure in input order
    auto& items = std::get<isola::list>(chunk.data()).items;
    for (auto& v : items) out.push_back(std::move(v));
  }
  return out;
}

void pool::shutdown(bool cancel_pending) {
  impl_->shutdown(cancel_pending ? detail::stop_mode::cancel_queued : detail::stop_mode::finish);
}

pool_stats pool::stats() const { return impl_->stats(); }

}  // namespace isola
