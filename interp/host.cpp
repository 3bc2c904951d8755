// interp_host: create, enter, interrupt and end one interpreter on its worker thread.
#include "host.hpp"

#include "pyexec.hpp"
#include "workarounds.hpp"

#include <isola/log.hpp>

namespace isola::detail {
namespace {

// CPython 3.12 cannot create interpreters in parallel (and we keep ends out of creations'
// way too); 3.13 can.
std::mutex& lifecycle_mutex() {
  static std::mutex m;
  return m;
}
constexpr bool serialise_lifecycle = PY_VERSION_HEX < 0x030D0000;

thread_local sleep_slot* this_thread_sleep_slot = nullptr;

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

// isola's set-up inside a new interpreter (GIL held).
void set_up_interpreter(const interpreter_config& config) {
  if (!config.use_main_obmalloc) apply_module_workarounds();
  std::vector<std::string> paths = config.sys_path;
  const auto& rt_paths = runtime().sys_path;
  paths.insert(paths.end(), rt_paths.begin(), rt_paths.end());
  prepend_sys_path(paths);
  // time.sleep -> isola's interruptible sleep, so timeouts and cancel() reach sleeping tasks.
  auto isola_mod = py::import("isola");
  auto sleep = py::getattr(isola_mod.get(), "_sleep");
  auto time_mod = py::import("time");
  py::check_zero(PyObject_SetAttrString(time_mod.get(), "sleep", sleep.get()));
}

}  // namespace

sleep_slot* current_sleep_slot() noexcept { return this_thread_sleep_slot; }

interp_host::interp_host(const interpreter_config& config) : config_(config) {
  state_ = std::make_shared<interp_state>();
  state_->name = config_.name;
}

void interp_host::create() {
  register_interp(state_);  // throws if no runtime; from now on the runtime waits for us
  std::unique_lock<std::mutex> serial(lifecycle_mutex(), std::defer_lock);
  if (serialise_lifecycle) serial.lock();

  // Py_NewInterpreterFromConfig must be called with a thread state attached: borrow a
  // temporary one of the main interpreter, then throw it away.
  PyThreadState* main_ts = PyThreadState_New(PyInterpreterState_Main());
  if (main_ts == nullptr) {
    unregister_interp(state_.get());
    throw error(errc::out_of_memory, "cannot allocate a thread state");
  }
  PyEval_RestoreThread(main_ts);
  PyInterpreterConfig pcfg = to_cpython(config_);
  PyThreadState* ts = nullptr;
  PyStatus status = Py_NewInterpreterFromConfig(&ts, &pcfg);
  if (PyStatus_Exception(status) || ts == nullptr) {
    std::string why = status.err_msg ? status.err_msg : "unknown error";
    if (current_tstate() != main_ts) PyThreadState_Swap(main_ts);
    PyThreadState_Clear(main_ts);
    PyThreadState_DeleteCurrent();
    unregister_interp(state_.get());
    throw error(errc::creation_failed, "Py_NewInterpreterFromConfig failed: " + why);
  }
  // `ts` is current and holds the new interpreter's GIL. Swap back to dispose of main_ts.
  PyThreadState_Swap(main_ts);
  PyThreadState_Clear(main_ts);
  PyThreadState_DeleteCurrent();
  if (serial.owns_lock()) serial.unlock();

  PyEval_RestoreThread(ts);
  tstate_ = ts;
  ident_ = PyThread_get_thread_ident();
  this_thread_sleep_slot = &sleep_;
  PyInterpreterState* interp = PyThreadState_GetInterpreter(ts);
  {
    std::lock_guard lock(state_->mu);
    state_->id = PyInterpreterState_GetID(interp);
    state_->interp = interp;
  }
  try {
    with_python_errors([&] { set_up_interpreter(config_); });
  } catch (const python_error& e) {
    PyEval_SaveThread();
    end();
    throw error(errc::creation_failed, std::string("setting up the interpreter failed: ") + e.what());
  }
  PyEval_SaveThread();
}

void interp_host::end() {
  if (tstate_ == nullptr) return;
  {
    std::unique_lock lock(state_->mu);
    if (state_->phase == interp_phase::running) state_->phase = interp_phase::closing;
    wait_for_guards(*state_, lock);
  }
  std::unique_lock<std::mutex> serial(lifecycle_mutex(), std::defer_lock);
  if (serialise_lifecycle) serial.lock();
  PyEval_RestoreThread(tstate_);
  run_at_end(*state_);
  Py_EndInterpreter(tstate_);  // needs the GIL; leaves no thread state current
  tstate_ = nullptr;
  this_thread_sleep_slot = nullptr;
  {
    std::lock_guard lock(state_->mu);
    state_->phase = interp_phase::closed;
    state_->interp = nullptr;
    state_->cv.notify_all();
  }
  unregister_interp(state_.get());
}

void interp_host::task_started(std::uint64_t task_id) noexcept {
  running_task_ = task_id;
  std::lock_guard lock(sleep_.mu);
  sleep_.interrupted = false;
}

void interp_host::task_finished() noexcept {
  running_task_ = 0;
  // An interrupt that arrived as the task ended must not hit the next one.
  PyThreadState_SetAsyncExc(ident_, nullptr);
  PyErr_Clear();
}

bool interp_host::interrupt(std::string_view type, std::uint64_t task_id) {
  auto guard = attach(interpreter_handle(state_));
  if (!guard) return false;
  return with_python_errors([&] {
    PyObject* builtins = PyEval_GetBuiltins();  // borrowed
    PyObject* exc = PyDict_GetItemString(builtins, std::string(type).c_str());
    if (exc == nullptr || !PyExceptionClass_Check(exc)) {
      throw std::invalid_argument("interrupt: '" + std::string(type) +
                                  "' is not a builtin exception type");
    }
    if (running_task_ == 0 || PyThread_get_thread_ident() == ident_) return false;
    if (task_id != 0 && running_task_ != task_id) return false;
    if (PyThreadState_SetAsyncExc(ident_, exc) == 0) return false;
    {
      std::lock_guard lock(sleep_.mu);
      sleep_.interrupted = true;
      sleep_.interrupt_type = std::string(type);
      if (sleep_.wait_stop != nullptr) sleep_.wait_stop->request_stop();
    }
    sleep_.cv.notify_all();
    return true;
  });
}

}  // namespace isola::detail
