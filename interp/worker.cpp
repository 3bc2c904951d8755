// The worker thread: creation (Py_NewInterpreterFromConfig on this thread), the task loop,
// and ending the interpreter on the same thread (which CPython 3.12 requires).
#include "worker.hpp"


#include <isola/log.hpp>

#include <chrono>

namespace isola::detail {

worker::worker(interpreter_config config) : config_(std::move(config)), host_(config_) {
  if (auto problem = config_.validate(); !problem.empty()) throw std::invalid_argument(problem);
}

std::shared_ptr<worker> worker::start(interpreter_config config) {
  auto w = std::make_shared<worker>(std::move(config));
  // The runtime ends live interpreters through this at shutdown; a weak reference, so an
  // interpreter destroyed meanwhile is simply gone.
  w->state()->closer = [weak = std::weak_ptr<worker>(w)] {
    if (auto self = weak.lock()) self->close();
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
    // has returned here.
    thread_ = std::thread([this, p = std::move(created)]() mutable { thread_main(p); });
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
  auto t0 = std::chrono::steady_clock::now();
  try {
    host_.create();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (...) {
    created.set_exception(std::current_exception());
    return;
  }
  log->debug("[interp {}] created in {:.2f} ms", state()->id,
             std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  created.set_value();

  for (;;) {
    std::unique_ptr<task> t;
    {
      std::unique_lock lock(queue_mu_);
      queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping and drained
      t = std::move(queue_.front());
      queue_.pop_front();
    }
    host_.enter();
    host_.task_started();
    t->run();
    host_.task_finished();
    host_.leave();
    t.reset();
  }
  host_.end();
  log->debug("[interp {}] ended", state()->id);
}

void worker::post(std::unique_ptr<task> t) {
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

std::size_t worker::queued() const {
  std::lock_guard lock(queue_mu_);
  return queue_.size();
}

bool worker::interrupt(std::string_view exception_type) {
  return host_.interrupt(exception_type);
}

void worker::close() {
  std::lock_guard serial(close_mu_);
  if (closed_) return;
  if (std::this_thread::get_id() == thread_.get_id()) {
    throw std::logic_error("cannot close " + state()->label() + " from its own worker thread");
  }
  if (attached_here(*state())) {
    throw std::logic_error("cannot close " + state()->label() +
                           " from a thread attached to it; end the attach_guard first");
  }
  {
    std::lock_guard lock(state()->mu);
    if (state()->phase == interp_phase::running) state()->phase = interp_phase::closing;
  }
  stop_waits(*state());  // a task blocked on a channel ends with ChannelClosed
  {
    std::lock_guard lock(queue_mu_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  {
    release_gil unlocked;
    if (thread_.joinable()) thread_.join();
  }
  unregister_interp(state().get());
  closed_ = true;
}

bool worker::closed() const noexcept { return closed_; }

}  // namespace isola::detail
