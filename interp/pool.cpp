// isola::pool: N interpreter workers fed by one bounded lock-free queue (lib/ring.hpp, the ring
// channels use too).
// Idle workers park on a futex (lib/sync.hpp) after a short spin (pool_worker.cpp); a watchdog
// thread enforces timeouts and bounds ends and creations (pool_watchdog.cpp). This file: the
// pool itself (start, submitting, cancelling, shutdown, stats) and the public face.
#include "interp/pool_impl.hpp"
#include "lib/memory.hpp"

#include <isola/log.hpp>
#include <isola/runtime.hpp>

#include <algorithm>
#include <set>

namespace isola {
namespace detail {

namespace {

/// The queue's capacity, if the semaphore that counts its room can count that far; the ring
/// checks the rest (at least 1, and fits in memory).
std::size_t checked_queue_capacity(std::size_t capacity) {
  constexpr auto most = static_cast<std::size_t>(std::counting_semaphore<>::max());
  if (capacity > most) {
    throw std::invalid_argument("pool_options::queue_capacity must be at most " +
                                std::to_string(most) + ", not " + std::to_string(capacity));
  }
  return capacity;
}

}  // namespace

pool_impl::pool_impl(pool_options o)
    : options_(std::move(o)),
      log_(logger("isola.pool")),
      queue_(checked_queue_capacity(options_.queue_capacity), "the pool's queue (pool_options::queue_capacity)"),
      room_(static_cast<std::ptrdiff_t>(options_.queue_capacity)) {
  if (options_.size == 0) options_.size = std::max(1u, std::thread::hardware_concurrency());
  config_ = options_.interpreter;
  config_.sys_path.insert(config_.sys_path.end(), options_.sys_path.begin(),
                          options_.sys_path.end());
  if (auto problem = config_.validate(); !problem.empty()) throw std::invalid_argument(problem);
  if (options_.max_memory_per_interpreter != 0 && !memory::enabled()) {
    throw std::invalid_argument(
        "pool_options: max_memory_per_interpreter needs memory accounting, which is off in "
        "this process (runtime_options::memory_accounting)");
  }
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
    } catch (const std::invalid_argument& e) {  // a limit below what an interpreter needs
      if (!first) {
        first = std::make_exception_ptr(
            std::invalid_argument("pool interpreter " + std::to_string(i) + ": " + e.what()));
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
  while (queue_.try_pop([&](pool_task*&& x) noexcept { raw = x; }) == ring_status::ok) {
    auto t = std::move(raw->self);
    --in_shared_;
    room_.release();
    fail_unstarted(t, code, msg);
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
    // room_ guarantees a free slot; one still being left by a worker is waited for.
    pool_task* raw_task = t.get();
    while (queue_.try_push(raw_task) != ring_status::ok) cpu_relax();
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
    i.recycled_for_memory = s->recycled_for_memory.load();
    i.rerouted = s->rerouted.load();
    i.shared_gil_lane = lane_;
    i.memory_refused = s->memory_refused.load();
    std::shared_ptr<interp_state> st;
    {
      std::lock_guard lock(s->state_mu);
      st = s->state;
    }
    if (st && memory::enabled()) {
      const memory_usage u = memory_of(*st);
      i.memory_bytes = u.bytes;
      i.memory_peak = u.peak;
    }
    i.replaced_broken = s->replaced_broken.load();
    i.dead = s->dead.load();
    i.busy = std::chrono::nanoseconds(s->busy_ns.load());
    out.interpreters.push_back(i);
  }
  out.queue_depth = queued_.load();
  out.submitted = submitted_.load();
  return out;
}

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

namespace detail {

/// The shared-GIL lane of a pool and what goes there.
struct pool_lanes {
  std::shared_ptr<pool_impl> lane;
  bool rerun = false;  ///< automatic, where re-running a refused task is safe (3.13+)
  mutable std::mutex mu;
  std::set<std::string> modules;  ///< shared_gil_modules, then the refused ones
  std::shared_ptr<spdlog::logger> log = logger("isola.pool");

  // Whether `target`'s module ("pkg.mod:fn" -> pkg.mod, pkg) is routed to the lane.
  bool routes(const std::string& target) const {
    std::string module = target.substr(0, target.find(':'));
    std::lock_guard lock(mu);
    for (;;) {
      if (modules.count(module) != 0) return true;
      const auto dot = module.rfind('.');
      if (dot == std::string::npos) return false;
      module.resize(dot);
    }
  }
  void remember(const std::string& module) {
    std::lock_guard lock(mu);
    modules.insert(module);
  }
};

namespace {

// The module named by isola's strict refusal ("module 'X' (...) cannot be loaded in an own-GIL
// interpreter"), or "" if `e` is not one.
std::string refused_module(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const python_error& p) {
    const std::string& m = p.message();
    if (p.type_name() != "ImportError" ||
        m.find("cannot be loaded in an own-GIL interpreter") == std::string::npos ||
        !m.starts_with("module '")) {
      return {};
    }
    const auto end = m.find('\'', 8);
    return end == std::string::npos ? std::string() : m.substr(8, end - 8);
  } catch (...) {
  }
  return {};
}

interpreter_config lane_config(interpreter_config c) {
  c.gil = interpreter_config::gil_mode::shared;
  c.use_main_obmalloc = true;
  c.check_multi_interp_extensions = false;
  c.extensions = extension_policy::shared_gil;
  c.memory_limit = 0;  // its small objects live in the main interpreter's arenas
  c.name = c.name.empty() ? "shared-gil lane" : c.name + " (shared-gil lane)";
  return c;
}

}  // namespace
}  // namespace detail

pool::pool(pool_options options) {
  const auto policy = options.extensions;
  if (policy == extension_policy::shared_gil) {
    options.interpreter = detail::lane_config(std::move(options.interpreter));
  } else if (policy == extension_policy::unsafe) {
    options.interpreter.extensions = extension_policy::unsafe;
  }
  const bool with_lane = policy == extension_policy::automatic ||
                         (!options.shared_gil_modules.empty() && policy != extension_policy::shared_gil);
  if (with_lane) {
    if (options.shared_gil_lane_size == 0) {
      throw std::invalid_argument(
          "pool_options: shared_gil_lane_size must be at least 1 when extensions is automatic "
          "or shared_gil_modules is set");
    }
    pool_options lane = options;
    lane.size = options.shared_gil_lane_size;
    lane.interpreter = detail::lane_config(options.interpreter);
    lane.max_memory_per_interpreter = 0;
    lanes_ = std::make_shared<detail::pool_lanes>();
    lanes_->modules.insert(options.shared_gil_modules.begin(), options.shared_gil_modules.end());
    lanes_->rerun = policy == extension_policy::automatic && PY_VERSION_HEX >= 0x030D0000;
    if (policy == extension_policy::automatic && !lanes_->rerun) {
      lanes_->log->warn(
          "extensions=auto on CPython {}: a refused module's single-phase init has already run "
          "inside the own-GIL interpreter before CPython refuses it, so tasks are not re-run in "
          "the shared-GIL lane; only pool_options::shared_gil_modules route tasks there",
          runtime::python_version());
    }
    lanes_->lane = std::make_shared<detail::pool_impl>(std::move(lane));
    lanes_->lane->set_lane(true);
    lanes_->lane->start();
  }
  try {
    impl_ = std::make_shared<detail::pool_impl>(std::move(options));
    impl_->start();
  } catch (...) {
    if (lanes_) lanes_->lane->shutdown(detail::stop_mode::cancel_queued);
    throw;
  }
}

pool::~pool() {
  if (impl_) impl_->shutdown(detail::stop_mode::finish);
  if (lanes_) lanes_->lane->shutdown(detail::stop_mode::finish);
}

std::size_t pool::size() const noexcept { return impl_->size(); }
std::size_t pool::lane_size() const noexcept { return lanes_ ? lanes_->lane->size() : 0; }

std::vector<std::string> pool::lane_modules() const {
  if (!lanes_) return {};
  std::lock_guard lock(lanes_->mu);
  return {lanes_->modules.begin(), lanes_->modules.end()};
}

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

detail::pool_impl& pool::route(const std::shared_ptr<detail::pool_task>& t,
                               task_options::lane_choice lane) {
  using lc = task_options::lane_choice;
  if (lane == lc::shared_gil && !lanes_) {
    throw std::invalid_argument(
        "task_options::lane: this pool has no shared-GIL lane; give it one with "
        "pool_options::extensions = extension_policy::automatic or shared_gil_modules");
  }
  const bool named = t->kind != detail::task_kind::code;
  if (lanes_ && (lane == lc::shared_gil || (lane == lc::any && named && lanes_->routes(t->text)))) {
    if (t->pinned >= static_cast<int>(lanes_->lane->size())) t->pinned = -1;
    t->pool = lanes_->lane;
    return *lanes_->lane;
  }
  t->pool = impl_;
  if (lanes_ && lanes_->rerun && lane == lc::any) {
    // A refused import: the same task again, from the start, in the lane; its outcome goes to
    // the caller's future or handler through this task.
    std::weak_ptr<detail::pool_task> weak = t;
    t->reroute = [lanes = lanes_, weak](const std::exception_ptr& e,
                                        const std::function<void()>& handing_over) {
      const std::string module = detail::refused_module(e);
      auto original = weak.lock();
      if (module.empty() || !original) return false;
      auto again = std::make_shared<detail::pool_task>();
      again->kind = original->kind;
      again->text = original->text;
      again->args = original->args;
      again->kwargs = original->kwargs;
      again->timeout = original->timeout;
      again->done = [original](std::exception_ptr err, value v) {
        original->deliver(std::move(err), std::move(v));
      };
      again->pool = lanes->lane;
      // Remembered first: the caller may submit its next task as soon as this one delivers.
      lanes->remember(module);
      if (original->kind != detail::task_kind::code) {
        lanes->remember(original->text.substr(0, original->text.find(':')));
      }
      handing_over();
      try {
        lanes->lane->enqueue(again, false);
      } catch (const std::exception& x) {
        lanes->log->warn("could not re-run a task in the shared-GIL lane ({}): {}", module, x.what());
        return false;
      }
      lanes->log->info("'{}' was refused in an own-GIL interpreter: the task runs again in the "
                       "shared-GIL lane, and tasks that name it go there from now on",
                       module);
      return true;
    };
  }
  return *impl_;
}

task_future pool::submit_with(std::string target, std::vector<value> args,
                              std::vector<std::pair<std::string, value>> kwargs,
                              task_options options) {
  auto t = make_task(detail::task_kind::call, std::move(target), std::move(args), options);
  t->kwargs = std::move(kwargs);
  auto f = t->promise.get_future();
  route(t, options.lane).enqueue(t, true);
  return task_future(std::move(f), std::move(t));
}

task_future pool::submit_code(std::string code, task_options options) {
  auto t = make_task(detail::task_kind::code, std::move(code), {}, options);
  auto f = t->promise.get_future();
  route(t, options.lane).enqueue(t, true);
  return task_future(std::move(f), std::move(t));
}

boost::system::result<task_future> pool::try_submit_with(std::string target,
                                                         std::vector<value> args,
                                                         task_options options) {
  auto t = make_task(detail::task_kind::call, std::move(target), std::move(args), options);
  auto f = t->promise.get_future();
  try {
    route(t, options.lane).enqueue(t, false);
  } catch (const error& e) {
    return boost::system::error_code(e.code());
  }
  return task_future(std::move(f), std::move(t));
}

std::shared_ptr<detail::pool_task> pool::make_async_task(
    std::string target, std::vector<value> args, task_options o,
    std::shared_ptr<detail::submit_op_base> op) {
  auto t = make_task(detail::task_kind::call, std::move(target), std::move(args), o);
  t->done = [op = std::move(op)](std::exception_ptr e, value v) {
    op->complete(std::move(e), std::move(v));
  };
  t->pool = impl_;  // for a cancellation that comes before it is queued
  return t;
}

void pool::start_async_task(const std::shared_ptr<detail::pool_task>& t) {
  try {
    auto p = t->pool.lock();
    if (!p) throw error(errc::shut_down, "pool shut down");
    p->enqueue(t, true);
  } catch (...) {
    if (t->claim(detail::queued)) t->deliver(std::current_exception());
  }
}

void detail::task_cancel::operator()(boost::asio::cancellation_type_t type) const noexcept {
  if (type == boost::asio::cancellation_type::none) return;
  auto p = pool.lock();
  auto t = task.lock();
  if (p && t) p->cancel(t);
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
    route(t, task_options::lane_choice::any).enqueue(t, true);
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
  const auto mode = cancel_pending ? detail::stop_mode::cancel_queued : detail::stop_mode::finish;
  impl_->shutdown(mode);
  if (lanes_) lanes_->lane->shutdown(mode);
}

pool_stats pool::stats() const {
  pool_stats s = impl_->stats();
  if (lanes_) {
    pool_stats l = lanes_->lane->stats();
    s.interpreters.insert(s.interpreters.end(), l.interpreters.begin(), l.interpreters.end());
    s.queue_depth += l.queue_depth;
    s.submitted += l.submitted;
    s.completed += l.completed;
    s.not_run += l.not_run;
  }
  return s;
}

}  // namespace isola
