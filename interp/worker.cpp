// The worker thread: creation (Py_NewInterpreterFromConfig on this thread), the task loop,
// and ending the interpreter on the same thread (which CPython 3.12 requires).
#include "worker.hpp"

#include "workarounds.hpp"

#include <isola/log.hpp>

#include <chrono>

namespace isola::detail {
namespace {

// CPython 3.12 cannot create interpreters in parallel (and we keep ends out of creations'
// way too); 3.13 can.
std::mutex& creation_mutex() {
  static std::mutex m;
  return m;
}
constexpr bool serialise_lifecycle = PY_VERSION_HEX < 0x030D0000;

PyInterpreterConfig to_cpython(const interpreter_config& c) {
  PyInterpreterConfig p{};
  p.use_main_obmalloc = c.use_main_obmalloc;
  p.allow_fork = c.allow_fork;
  p.allow_exec = c.allow_exec;
  p.allow_threads = c.allow_threads;
  p.allow_daemon_threads = c.allow_daemon_threads;
  p.check_multi_interp_extensions = c.check_multi_interp_extensions;
  p.gil = c.gil == interpreter_config::gil_mode::own ? PyInterpreterConfig_OWN_GIL
                                                     : PyInterpreterConfig_SHARED_GIL;
  return p;
}

}  // namespace

worker::worker(interpreter_config config) : config_(std::move(config)) {
  if (auto problem = config_.validate(); !problem.empty()) throw std::invalid_argument(problem);
  state_ = std::make_shared<interp_state>();
  state_->name = config_.name;
}

std::shared_ptr<worker> worker::start(interpreter_config config) {
  auto w = std::make_shared<worker>(std::move(config));
  // The runtime ends live interpreters through this at shutdown; a weak reference, so an
  // interpreter destroyed meanwhile is simply gone.
  w->state_->closer = [weak = std::weak_ptr<worker>(w)] {
    if (auto self = weak.lock()) self->close();
  };
  w->launch();
  return w;
}

void worker::launch() {
  register_interp(state_);  // throws if no runtime; from now on the runtime waits for us
  std::promise<void> created;
  auto ready = created.get_future();
  {
    std::lock_guard serial(close_mu_);
    try {
      // The promise moves into the thread: set_value() may still be touching it after get()
      // has returned here.
      thread_ = std::thread([this, p = std::move(created)]() mutable { thread_main(p); });
    } catch (...) {
      unregister_interp(state_.get());
      closed_ = true;
      throw;
    }
  }
  try {
    release_gil unlocked;  // creation needs the main GIL, which our caller might hold
    ready.get();
  } catch (...) {
    std::lock_guard serial(close_mu_);
    if (thread_.joinable()) thread_.join();
    unregister_interp(state_.get());
    closed_ = true;
    throw;
  }
}

worker::~worker() {
  try {
    close();
  } catch (const std::exception& e) {
    logger("isola.interp")->critical("[interp {}] could not be closed: {}", state_->id, e.what());
  }
}

void worker::create_interpreter() {
  std::unique_lock<std::mutex> serial(creation_mutex(), std::defer_lock);
  if (serialise_lifecycle) serial.lock();

  // Py_NewInterpreterFromConfig must be called with a thread state attached: borrow a
  // temporary one of the main interpreter, then throw it away.
  PyThreadState* main_ts = PyThreadState_New(PyInterpreterState_Main());
  if (main_ts == nullptr) throw error(errc::out_of_memory, "cannot allocate a thread state");
  PyEval_RestoreThread(main_ts);
  PyInterpreterConfig pcfg = to_cpython(config_);
  PyThreadState* ts = nullptr;
  PyStatus status = Py_NewInterpreterFromConfig(&ts, &pcfg);
  if (PyStatus_Exception(status) || ts == nullptr) {
    std::string why = status.err_msg ? status.err_msg : "unknown error";
    if (current_tstate() != main_ts) PyThreadState_Swap(main_ts);
    PyThreadState_Clear(main_ts);
    PyThreadState_DeleteCurrent();
    throw error(errc::creation_failed, "Py_NewInterpreterFromConfig failed: " + why);
  }
  // `ts` is current and holds the new interpreter's GIL. Swap back to dispose of main_ts.
  PyThreadState_Swap(main_ts);
  PyThreadState_Clear(main_ts);
  PyThreadState_DeleteCurrent();
  if (serial.owns_lock()) serial.unlock();

  PyEval_RestoreThread(ts);
  tstate_ = ts;
  thread_ident_ = PyThread_get_thread_ident();
  PyInterpreterState* interp = PyThreadState_GetInterpreter(ts);
  {
    std::lock_guard lock(state_->mu);
    state_->id = PyInterpreterState_GetID(interp);
    state_->interp = interp;
  }
  try {
    with_python_errors([&] {
      if (!config_.use_main_obmalloc) apply_module_workarounds();
      std::vector<std::string> paths = config_.sys_path;
      const auto& rt_paths = runtime().sys_path;
      paths.insert(paths.end(), rt_paths.begin(), rt_paths.end());
      prepend_sys_path(paths);
    });
  } catch (const python_error& e) {
    Py_EndInterpreter(ts);  // leaves no thread state current
    tstate_ = nullptr;
    std::lock_guard lock(state_->mu);
    state_->phase = interp_phase::closed;
    state_->interp = nullptr;
    throw error(errc::creation_failed, std::string("setting up the interpreter failed: ") + e.what());
  }
  PyEval_SaveThread();
}

void worker::end_interpreter() {
  {
    std::unique_lock lock(state_->mu);
    wait_for_guards(*state_, lock);
  }
  std::unique_lock<std::mutex> serial(creation_mutex(), std::defer_lock);
  if (serialise_lifecycle) serial.lock();
  PyEval_RestoreThread(tstate_);
  Py_EndInterpreter(tstate_);  // needs the GIL; leaves no thread state current
  tstate_ = nullptr;
  std::lock_guard lock(state_->mu);
  state_->phase = interp_phase::closed;
  state_->interp = nullptr;
  state_->cv.notify_all();
}

void worker::thread_main(std::promise<void>& created) {
  auto log = logger("isola.interp");
  auto t0 = std::chrono::steady_clock::now();
  try {
    create_interpreter();
  } catch (...) {
    created.set_exception(std::current_exception());
    return;
  }
  log->debug("[interp {}] created in {:.2f} ms", state_->id,
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
    PyEval_RestoreThread(tstate_);
    running_task_ = true;
    t->run();
    running_task_ = false;
    // An interrupt() that arrived as the task ended must not hit the next task.
    PyThreadState_SetAsyncExc(thread_ident_, nullptr);
    PyErr_Clear();
    PyEval_SaveThread();
    t.reset();
  }
  end_interpreter();
  log->debug("[interp {}] ended", state_->id);
}

void worker::post(std::unique_ptr<task> t) {
  {
    std::lock_guard lock(state_->mu);
    if (state_->phase != interp_phase::running) {
      bool closed = state_->phase == interp_phase::closed;
      throw error(closed ? errc::interpreter_closed : errc::interpreter_closing,
                  "cannot run code in " + state_->label() + ": it " +
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
  auto guard = attach(interpreter_handle(state_));
  if (!guard) return false;
  return with_python_errors([&] {
    auto builtins = py::borrow(PyEval_GetBuiltins());
    PyObject* type = PyDict_GetItemString(builtins.get(), std::string(exception_type).c_str());
    if (type == nullptr || !PyExceptionClass_Check(type)) {
      throw std::invalid_argument("interrupt: '" + std::string(exception_type) +
                                  "' is not a builtin exception type");
    }
    if (!running_task_ || std::this_thread::get_id() == thread_.get_id()) return false;
    return PyThreadState_SetAsyncExc(thread_ident_, type) > 0;
  });
}

void worker::close() {
  std::lock_guard serial(close_mu_);
  if (closed_) return;
  if (std::this_thread::get_id() == thread_.get_id()) {
    throw std::logic_error("cannot close " + state_->label() + " from its own worker thread");
  }
  if (attached_here(*state_)) {
    throw std::logic_error("cannot close " + state_->label() +
                           " from a thread attached to it; end the attach_guard first");
  }
  {
    std::lock_guard lock(state_->mu);
    if (state_->phase == interp_phase::running) state_->phase = interp_phase::closing;
  }
  {
    std::lock_guard lock(queue_mu_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  {
    release_gil unlocked;
    if (thread_.joinable()) thread_.join();
  }
  unregister_interp(state_.get());
  closed_ = true;
}

bool worker::closed() const noexcept { return closed_; }

}  // namespace isola::detail
