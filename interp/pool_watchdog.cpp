// The pool's watchdog: one thread that keeps the deadlines of running tasks (isola.TaskTimeout,
// then a grace period, then the interpreter is declared broken and replaced), of interpreters
// ending, and of interpreters being created; and the helper threads that raise interrupts
// (they may wait for a stuck GIL, so nothing else waits for them).
#include "interp/pool_impl.hpp"

#include "interp/guest.hpp"

#include <isola/log.hpp>

#include <cxxabi.h>

#include <algorithm>

namespace isola::detail {

void pool_impl::watch_locked(std::chrono::steady_clock::time_point when, deadline_entry e) {
  if (auto t = e.task.lock()) t->watched = true;
  deadlines_.emplace(when, std::move(e));
  // Only a deadline before the one the watchdog sleeps until needs it awake. A task's entry is
  // usually erased long before its deadline, so waking it for each task, whenever the map was
  // empty, would cost a wake-up and two context switches a task.
  if (when < wd_sleeping_until_) wd_cv_.notify_one();
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
      wd_sleeping_until_ = std::chrono::steady_clock::time_point::max();
      wd_cv_.wait(lock);
      wd_sleeping_until_ = std::chrono::steady_clock::time_point::min();  // it looks again
      continue;
    }
    // A copy: wait_until keeps reading its argument while the lock is released, and run_task
    // may erase (free) the entry meanwhile. An entry erased meanwhile leaves it to wake at its
    // time, find nothing due and sleep again until the next.
    const auto when = deadlines_.begin()->first;
    wd_sleeping_until_ = when;
    const auto woke = wd_cv_.wait_until(lock, when);
    wd_sleeping_until_ = std::chrono::steady_clock::time_point::min();
    if (woke != std::cv_status::timeout) continue;
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

}  // namespace isola::detail
