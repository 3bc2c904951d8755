// A pool worker's thread: creating its interpreter (watched when it may wait for a GIL),
// taking tasks (spin, then park), running them, recycling and ending its interpreter, and
// isola._set_deadline, which a running task calls.
#include "interp/pool_impl.hpp"

#include "interp/guest.hpp"
#include "lib/memory.hpp"
#include "lib/module.hpp"
#include "lib/pyexec.hpp"
#include "lib/value_codec.hpp"

#include <isola/log.hpp>

#include <cxxabi.h>

#include <fmt/core.h>

#include <algorithm>
#include <random>

namespace isola::detail {

thread_local run_context* current_run = nullptr;

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
  {
    std::lock_guard lock(s.state_mu);
    s.state = w.host->state();
  }
  // The runtime ends the whole pool (cancelling queued work, interrupting running tasks) if it
  // is destroyed first.
  w.host->state()->closer = [weak = weak_from_this()] {
    if (auto p = weak.lock()) p->shutdown(stop_mode::interrupt_running);
  };
  if (!options_.init_code.empty() || !options_.init_call.empty()) run_init(w);
  check_soft_limit(w);
}

void pool_impl::run_init(pool_worker& w) {
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

void pool_impl::check_soft_limit(pool_worker& w) {
  if (over_soft_limit(*w.host->state())) {
    const std::size_t held = memory_of(*w.host->state()).bytes;
    w.host->end();
    throw std::invalid_argument(fmt::format(
        "a soft memory limit (max_memory_per_interpreter) of {} is below what a fresh "
        "interpreter holds once started and initialised: {} was measured; every task would "
        "end it, so set it above that, with room for the work",
        format_size(options_.max_memory_per_interpreter), format_size(held)));
  }
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
  // As gunicorn's max_requests_jitter: each interpreter draws its own limit, so interpreters
  // that started together are not all replaced at the same moment.
  std::minstd_rand jitter_rng(static_cast<unsigned>(std::random_device{}()) + w->slot);
  auto draw_limit = [&] {
    if (options_.max_tasks_per_interpreter == 0 || options_.max_tasks_jitter == 0) {
      return options_.max_tasks_per_interpreter;
    }
    return options_.max_tasks_per_interpreter +
           std::uniform_int_distribution<std::size_t>(0, options_.max_tasks_jitter)(jitter_rng);
  };
  std::size_t task_limit = draw_limit();
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
    slot.memory_refused += w->host->report_memory_refusals();
    if (stopping_.load()) continue;
    if (task_limit != 0 && ++since_recycle >= task_limit) {
      since_recycle = 0;
      task_limit = draw_limit();
      if (!recycle(w, false)) return;
    } else if (over_soft_limit(*w->host->state())) {
      since_recycle = 0;
      task_limit = draw_limit();
      if (!recycle(w, true)) return;
    }
  }
  if (w->host->created()) end_interpreter(w);
  worker_exited(*w);
}

bool pool_impl::reroute(pool_slot& slot, pool_task& t, const std::exception_ptr& err) {
  // Counted as it is handed over, before the lane can deliver its outcome: stats must never
  // lag behind a ready future.
  bool counted = false;
  const bool taken = t.reroute(err, [&] {
    counted = true;
    ++slot.failed;
    ++slot.rerouted;
    ++completed_;
  });
  if (!taken && counted) {
    --slot.failed;
    --slot.rerouted;
    --completed_;
  }
  return taken;
}

bool pool_impl::over_soft_limit(const interp_state& s) const {
  if (options_.max_memory_per_interpreter == 0) return false;
  return memory_of(s).bytes > options_.max_memory_per_interpreter;
}

bool pool_impl::recycle(const std::shared_ptr<pool_worker>& w, bool for_memory) {
  auto& slot = *slots_[w->slot];
  const auto old_id = w->host->state()->id;
  const std::size_t held = for_memory ? memory_of(*w->host->state()).bytes : 0;
  auto fresh = std::make_shared<interp_host>(config_);
  end_interpreter(w);
  if (w->abandoned) {  // the old one did not end in time; a new worker took over
    worker_exited(*w);
    return false;
  }
  {
    std::lock_guard lock(w->host_mu);
    w->host = std::move(fresh);
  }
  try {
    create_watched(w);
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (const std::exception& e) {
    slot_died(w->slot, std::string("recycling interpreter ") + std::to_string(old_id) + ": " +
                           e.what());
    worker_exited(*w);
    return false;
  }
  ++slot.recycled;
  if (for_memory) {
    ++slot.recycled_for_memory;
    log_->info("[slot {}] interpreter {} held {}, over max_memory_per_interpreter ({}): "
               "replaced by interpreter {}",
               w->slot, old_id, format_size(held), format_size(options_.max_memory_per_interpreter),
               w->host->state()->id);
  } else {
    log_->debug("[slot {}] recycled interpreter {} -> {}", w->slot, old_id, w->host->state()->id);
  }
  return true;
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
      if (queue_.try_pop([&](pool_task*&& x) noexcept { raw = x; }) != ring_status::ok) {
        return nullptr;
      }
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

namespace {

// Runs the task's Python code (GIL held) and returns its result; throws
// py::error_already_set. An interrupt that arrived before the task started found no task to
// hit; the flags it set first are visible now (both sides hold this interpreter's GIL).
value execute(const pool_task& t) {
  if (t.stopped_by_runtime.load()) {
    PyErr_SetNone(PyExc_SystemExit);
    throw py::error_already_set();
  }
  if (t.phase.load() == cancelling) {
    PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw py::error_already_set();
  }
  if (t.timed_out.load()) {
    PyErr_SetNone(find_exception_class(task_timeout_exception));
    throw py::error_already_set();
  }
  switch (t.kind) {
    case task_kind::call: {
      auto fn = resolve_target(t.text);
      return call_with_values(fn.get(), t.args, t.kwargs);
    }
    case task_kind::code: {
      auto g = main_globals();
      // One expression gives its value; otherwise run the statements.
      PyObject* code = Py_CompileString(t.text.c_str(), "<task>", Py_eval_input);
      if (code == nullptr && PyErr_ExceptionMatches(PyExc_SyntaxError)) {
        PyErr_Clear();
        run_source(t.text, "<task>", Py_file_input, g.get());
        return none;
      }
      auto c = py::check(code);
      auto r = py::check(PyEval_EvalCode(c.get(), g.get(), g.get()));
      return from_python(r.get());
    }
    case task_kind::map_chunk: {
      auto fn = resolve_target(t.text);
      isola::list out;
      out.items.reserve(t.args.size());
      for (const auto& a : t.args) {
        auto arg = to_python(a);
        auto r = py::check(PyObject_CallOneArg(fn.get(), arg.get()));
        out.items.push_back(from_python(r.get()));
      }
      return out;
    }
  }
  return none;
}

}  // namespace

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
    result = with_python_errors([&] { return execute(*t); });
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
  complete(w, t, t0, std::move(err), std::move(result));
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

// isola._set_deadline(seconds): see its doc string below.
void pool_impl::complete(pool_worker& w, const std::shared_ptr<pool_task>& t,
                         std::chrono::steady_clock::time_point t0, std::exception_ptr err,
                         value result) {
  auto& slot = *slots_[w.slot];
  // declare_broken() may have delivered errc::timeout already; then it has counted the task
  // (and its busy time up to then).
  const int claimed = t->claim_started();
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
  } else if (err && t->reroute && !t->timed_out.load() && reroute(slot, *t, err)) {
    return;  // the shared-GIL lane runs it again and delivers its outcome
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

namespace {

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

}  // namespace

}  // namespace isola::detail
