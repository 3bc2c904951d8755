// The worker thread: creation (Py_NewInterpreterFromConfig on this thread), the task loop,
// and ending the interpreter on the same thread (which CPython 3.12 requires). Closing waits
// for it within bounds and leaves the thread behind if its code does not stop.
#include "interp/worker.hpp"


#include <isola/log.hpp>

#include <chrono>

#include <fmt/core.h>

namespace isola::detail {
namespace {

using clock = std::chrono::steady_clock;
constexpr auto warn_every = std::chrono::seconds(2);

double seconds_since(clock::time_point t) {
  return std::chrono::duration<double>(clock::now() - t).count();
}

}  // namespace

worker::worker(interpreter_config config) : config_(std::move(config)), host_(config_) {
  if (auto problem = config_.validate(); !problem.empty()) throw std::invalid_argument(problem);
}

std::shared_ptr<worker> worker::start(interpreter_config config) {
  auto w = std::make_shared<worker>(std::move(config));
  // The runtime ends live interpreters through this at shutdown; a weak reference, so an
  // interpreter destroyed meanwhile is simply gone.
  w->state()->closer = [weak = std::weak_ptr<worker>(w)] {
    if (auto self = weak.lock()) self->close_now();
  };
  w->launch();
  return w;
}

void worker::launch() {
  std::promise<void> created;
  auto ready = created.get_future();
  {
    std::lock_guard serial(close_mu_);
    // The promise moves into the thread: set_value() may still be touching it after get()
    // has returned here. The thread shares ownership of the worker: one left behind (its code
    // did not stop) must not outlive what it uses.
    thread_ = std::thread([self = shared_from_this(), p = std::move(created)]() mutable {
      self->thread_main(p);
    });
  }
  try {
    release_gil unlocked;  // creation needs the main GIL, which our caller might hold
    ready.get();
  } catch (...) {
    std::lock_guard serial(close_mu_);
    if (thread_.joinable()) thread_.join();
    closed_ = true;
    throw;
  }
}

worker::~worker() {
  try {
    close();
  } catch (const std::exception& e) {
    logger("isola.interp")->critical("[interp {}] could not be closed: {}", state()->id, e.what());
  }
}

void worker::thread_main(std::promise<void>& created) {
  auto log = logger("isola.interp");
  auto t0 = clock::now();
  try {
    host_.create();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (...) {
    created.set_exception(std::current_exception());
    return;
  }
  log->debug("[interp {}] created in {:.2f} ms", state()->id,
             std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  created.set_value();

  for (;;) {
    std::shared_ptr<task> t;
    {
      std::unique_lock lock(queue_mu_);
      queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) {  // stopping and drained
        ending_since_ = clock::now();
        break;
      }
      t = std::move(queue_.front());
      queue_.pop_front();
      task_since_ = clock::now();
      current_ = t;
    }
    host_.enter();
    host_.task_started();
    t->run();
    host_.task_finished();
    host_.leave();
    host_.report_memory_refusals();
    {
      std::lock_guard lock(queue_mu_);
      task_since_.reset();
      current_.reset();
    }
    t.reset();
    status_cv_.notify_all();
  }
  status_cv_.notify_all();
  const bool clean = host_.end([this] {
    {
      std::lock_guard lock(queue_mu_);
      gave_up_ = true;
    }
    status_cv_.notify_all();
  });
  {
    std::lock_guard lock(queue_mu_);
    ended_ = true;
  }
  status_cv_.notify_all();
  log->debug("[interp {}] ended{}", state()->id, clean ? "" : " (after it was abandoned)");
}

void worker::post(std::shared_ptr<task> t) {
  {
    const auto& s = *state();
    std::lock_guard lock(s.mu);
    if (s.phase != interp_phase::running) {
      bool closed = s.phase == interp_phase::closed;
      throw error(closed ? errc::interpreter_closed : errc::interpreter_closing,
                  "cannot run code in " + s.label() + ": it " +
                      (closed ? "has ended" : "is closing"));
    }
  }
  {
    std::lock_guard lock(queue_mu_);
    queue_.push_back(std::move(t));
  }
  queue_cv_.notify_one();
}

bool worker::interrupt(std::string_view exception_type) {
  return host_.interrupt(exception_type);
}

void worker::close() { close_impl(false); }
void worker::close_now() { close_impl(true); }

bool worker::wait_for_tasks(std::unique_lock<std::mutex>& lock,
                            std::optional<clock::time_point> deadline) {
  const auto started = clock::now();
  auto next_warning = started + warn_every;
  for (;;) {
    if (ending_since_ || ended_) return true;
    auto until = deadline ? std::min(*deadline, next_warning) : next_warning;
    status_cv_.wait_until(lock, until);
    if (ending_since_ || ended_) return true;
    const auto now = clock::now();
    if (deadline && now >= *deadline) return false;
    if (now >= next_warning) {
      next_warning = now + warn_every;
      logger("isola.interp")
          ->warn("[interp {}] closing {} waits for its work ({:.1f} s so far): {}{} queued",
                 state()->id, state()->label(), seconds_since(started),
                 task_since_ ? fmt::format("a task has run {:.1f} s, ", seconds_since(*task_since_))
                             : std::string(),
                 queue_.size());
    }
  }
}

void worker::abandon(const std::string& why) {
  abandon_interp(state(), why);
  thread_.detach();  // it holds shared ownership of this worker
}

void worker::close_impl(bool now) {
  std::lock_guard serial(close_mu_);
  if (closed_) return;
  if (std::this_thread::get_id() == thread_.get_id()) {
    throw std::logic_error("cannot close " + state()->label() + " from its own worker thread");
  }
  if (attached_here(*state())) {
    throw std::logic_error("cannot close " + state()->label() +
                           " from a thread attached to it; end the attach_guard first");
  }
  auto log = logger("isola.interp");
  {
    std::lock_guard lock(state()->mu);
    if (state()->phase == interp_phase::running) state()->phase = interp_phase::closing;
  }
  stop_waits(*state());  // a task blocked on a channel ends with ChannelClosed
  std::deque<std::shared_ptr<task>> dropped;
  bool busy = false;
  {
    std::lock_guard lock(queue_mu_);
    stopping_ = true;
    if (now) dropped.swap(queue_);
    busy = task_since_.has_value();
  }
  queue_cv_.notify_all();
  for (auto& t : dropped) {
    t->fail(std::make_exception_ptr(error(
        errc::runtime_finalizing, "the isola runtime shut down before the task ran in " +
                                      state()->label())));
  }
  // However it ends (joined, or left behind), the object is closed when this returns.
  struct mark_closed {
    std::atomic<bool>& closed;
    ~mark_closed() { closed = true; }
  } closed_at_return{closed_};

  release_gil unlocked;
  std::unique_lock lock(queue_mu_);
  if (now && busy && !ending_since_) {
    // Its caller learns at once; what the task then returns or raises is dropped.
    if (current_) {
      current_->fail(std::make_exception_ptr(error(
          errc::runtime_finalizing, "the isola runtime shut down while the task ran in " +
                                        state()->label() + " (SystemExit was raised in it)")));
    }
    // A helper raises it: attaching waits for the GIL, which code stuck in C never gives up.
    log->warn("[interp {}] the runtime is shutting down while {} runs a task; raising "
              "SystemExit in it",
              state()->id, state()->label());
    lock.unlock();
    std::thread([self = shared_from_this()] {
      try {
        self->host_.interrupt("SystemExit");
      } catch (const std::exception& e) {
        logger("isola.interp")->error("[interp {}] interrupt failed: {}", self->state()->id, e.what());
      }
    }).detach();
    lock.lock();
    if (!wait_for_tasks(lock, clock::now() + config_.end_grace)) {
      lock.unlock();
      abandon("its task did not stop within end_grace after SystemExit (stuck in C code?)");
      return;
    }
  } else {
    wait_for_tasks(lock, std::nullopt);
  }
  // Ending: bounded by end() itself, except for guest code it runs (atexit handlers,
  // __del__) and threads holding the GIL, which only a watcher can bound.
  const auto deadline = *ending_since_ + host_.end_budget();
  if (!status_cv_.wait_until(lock, deadline, [&] { return ended_ || gave_up_; })) {
    lock.unlock();
    abandon("ending it took longer than end_timeout + 2 * end_grace (an atexit handler or "
            "__del__ that does not return, or a thread holding its GIL)");
    return;
  }
  if (gave_up_ && !ended_) {
    lock.unlock();
    thread_.detach();  // end() abandoned it already and goes on waiting for its threads
    return;
  }
  lock.unlock();
  if (thread_.joinable()) thread_.join();
  unregister_interp(state().get());
}

bool worker::closed() const noexcept { return closed_; }

}  // namespace isola::detail
