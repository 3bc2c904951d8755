// interp_host: create, enter, interrupt and end one interpreter on its worker thread.
#include "interp/host.hpp"

#include "interp/extensions.hpp"
#include "interp/guest.hpp"
#include "lib/memory.hpp"
#include "lib/pyexec.hpp"
#include "lib/workarounds.hpp"
#include "interp/py/describe_threads.py.hpp"

#include <isola/log.hpp>

#include <thread>
#include <vector>

#include <fmt/core.h>

namespace isola::detail {
namespace {

// CPython 3.12 cannot create interpreters in parallel (and we keep ends out of creations'
// way too); 3.13 can.
std::mutex& lifecycle_mutex() {
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
  guard_process(config);
  install_extension_policy(config);
}

/// What end() says about a thread the interpreter's code left running.
struct left_thread {
  unsigned long ident = 0;
  bool daemon = true;  ///< daemon threading threads, and threads threading does not know
  std::string text;    ///< "'Thread-1 (work)' in work (job.py:12)"
};

// describe() above, made once per end (GIL held); empty if guest code broke what it needs.
py::object make_describer() {
  try {
    return with_python_errors([] {
      auto g = py::check(PyDict_New());
      py::check_zero(PyDict_SetItemString(g.get(), "__builtins__", PyEval_GetBuiltins()));
      run_source(embedded::describe_threads, "<isola>", Py_file_input, g.get());
      PyObject* fn = PyDict_GetItemString(g.get(), "describe");  // borrowed
      if (fn == nullptr) py::raise(PyExc_RuntimeError, "describe() missing");
      return py::borrow(fn);
    });
  } catch (const std::exception&) {
    return {};
  }
}

std::vector<left_thread> describe_threads(const py::object& describer,
                                          const std::vector<unsigned long>& idents) {
  std::vector<left_thread> out;
  try {
    if (!describer) throw std::runtime_error("no describer");
    with_python_errors([&] {
      auto ids = py::check(PyList_New(0));
      for (auto id : idents) {
        py::check_zero(PyList_Append(ids.get(), py::check(PyLong_FromUnsignedLong(id)).get()));
      }
      // The frames of this interpreter's threads only (see describe_threads.py).
      auto frames = py::check(PyDict_New());
      for (PyThreadState* t = PyInterpreterState_ThreadHead(PyInterpreterState_Get());
           t != nullptr; t = PyThreadState_Next(t)) {
        auto frame = py::steal(reinterpret_cast<PyObject*>(PyThreadState_GetFrame(t)));
        if (!frame) continue;
        auto key = py::check(PyLong_FromUnsignedLong(t->thread_id));
        py::check_zero(PyDict_SetItem(frames.get(), key.get(), frame.get()));
      }
      auto r = py::check(PyObject_CallFunctionObjArgs(describer.get(), ids.get(), frames.get(),
                                                      nullptr));
      for (Py_ssize_t i = 0; i < PyList_GET_SIZE(r.get()); ++i) {
        PyObject* t = PyList_GET_ITEM(r.get(), i);
        left_thread lt;
        lt.ident = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(t, 0));
        lt.daemon = PyObject_IsTrue(PyTuple_GET_ITEM(t, 1)) == 1;
        lt.text = py::to_string(PyTuple_GET_ITEM(t, 2));
        out.push_back(std::move(lt));
      }
    });
  } catch (const std::exception&) {
    // Guest code can break what describe() relies on (threading._active, say): the threads
    // are still ended, just described by ident.
    out.clear();
    for (auto id : idents) out.push_back({id, true, "thread " + std::to_string(id)});
  }
  return out;
}

std::string join_texts(const std::vector<left_thread>& threads) {
  std::string s;
  for (const auto& t : threads) s += (s.empty() ? "" : ", ") + t.text;
  return s;
}

// The other thread states of `ts`'s interpreter (GIL held): the check Py_EndInterpreter makes
// before it aborts with "not the last thread".
std::vector<unsigned long> other_threads(PyThreadState* ts) {
  std::vector<unsigned long> out;
  for (PyThreadState* t = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(ts));
       t != nullptr; t = PyThreadState_Next(t)) {
    if (t != ts) out.push_back(t->thread_id);
  }
  return out;
}

}  // namespace

interp_host::interp_host(const interpreter_config& config) : config_(config) {
  state_ = std::make_shared<interp_state>();
  state_->name = config_.name;
  state_->extension_policy = policy_name(config_.extensions);
}

void interp_host::create() {
  if (config_.memory_limit != 0 && !memory::enabled()) {
    throw std::invalid_argument(
        "interpreter_config: memory_limit needs memory accounting, which is off in this "
        "process (runtime_options::memory_accounting)");
  }
  register_interp(state_);  // throws if no runtime; from now on the runtime waits for us
  memory::context* mem = memory::enabled() ? memory::acquire(config_.use_main_obmalloc) : nullptr;
  // What the creation allocates on this thread is the new interpreter's, until it is set up.
  struct creation_scope {
    memory::context* c;
    explicit creation_scope(memory::context* m) : c(m) {
      if (c != nullptr) memory::begin_creation(c);
    }
    ~creation_scope() {
      if (c != nullptr) memory::end_creation();
    }
  } creating(mem);
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
    if (mem != nullptr) memory::unbind(nullptr, mem);
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
  set_current_interrupt_slot(&sleep_);
  PyInterpreterState* interp = PyThreadState_GetInterpreter(ts);
  if (mem != nullptr) memory::bind(interp, mem);
  {
    std::lock_guard lock(state_->mu);
    state_->id = PyInterpreterState_GetID(interp);
    state_->interp = interp;
    state_->memory = mem;
  }
  try {
    with_python_errors([&] { set_up_interpreter(config_); });
  } catch (const python_error& e) {
    PyEval_SaveThread();
    end();
    throw error(errc::creation_failed, std::string("setting up the interpreter failed: ") + e.what());
  }
  PyEval_SaveThread();
  if (mem != nullptr && config_.memory_limit != 0) {
    // The limit applies from here on: refusing what start-up needs would fail in CPython's
    // own set-up, where a MemoryError is a fatal error.
    const std::size_t held = memory::read(*mem).bytes;
    if (held >= config_.memory_limit) {
      end();
      throw std::invalid_argument(fmt::format(
          "a memory limit (memory_limit) of {} is below what an interpreter holds once "
          "started: {} was measured (interpreter {}); set it above that, with room for the "
          "work it will do",
          format_size(config_.memory_limit), format_size(held), state_->id));
    }
    mem->limit.store(config_.memory_limit, std::memory_order_relaxed);
  }
}

std::uint64_t interp_host::report_memory_refusals() {
  memory::context* mem = nullptr;
  {
    std::lock_guard lock(state_->mu);
    mem = state_->memory;
  }
  if (mem == nullptr) return 0;
  const auto refused = mem->refused.load(std::memory_order_relaxed);
  if (refused == refusals_reported_) return 0;
  const auto n = refused - refusals_reported_;
  refusals_reported_ = refused;
  logger("isola.interp")
      ->warn("[interp {}] {} reached its memory limit of {}: {} allocation{} refused (the "
             "largest {}), each a MemoryError in its code",
             state_->id, state_->label(), format_size(mem->limit.load(std::memory_order_relaxed)),
             n, n == 1 ? " was" : "s were", format_size(memory::largest_refused(*mem)));
  return n;
}

bool interp_host::end(const std::function<void()>& on_abandon) {
  if (tstate_ == nullptr) return true;
  {
    std::unique_lock lock(state_->mu);
    if (state_->phase == interp_phase::running) state_->phase = interp_phase::closing;
    wait_for_guards(*state_, lock);
    state_->phase = interp_phase::ending;  // from here on nothing attaches, not even interrupts
  }
  stop_waits(*state_);  // its threads' channel waits end (ChannelClosed)
  memory::context* mem = nullptr;
  {
    std::lock_guard lock(state_->mu);
    mem = state_->memory;
  }
  // Ending runs atexit handlers and module teardown, which must not fail on the limit.
  if (mem != nullptr) mem->limit.store(0, std::memory_order_relaxed);
  PyEval_RestoreThread(tstate_);
  run_at_end(*state_);
  end_threads(on_abandon);
  apply_exit_workarounds();
  // On 3.12, ends are serialised with creations, which take the main GIL: a shared-GIL
  // interpreter must not hold it while it waits for them.
  std::unique_lock<std::mutex> serial(lifecycle_mutex(), std::defer_lock);
  if (serialise_lifecycle) {
    PyEval_SaveThread();
    serial.lock();
    PyEval_RestoreThread(tstate_);
  }
  PyInterpreterState* const ended = PyThreadState_GetInterpreter(tstate_);
  Py_EndInterpreter(tstate_);  // needs the GIL; leaves no thread state current
  tstate_ = nullptr;
  if (mem != nullptr) {
    memory::unbind(ended, mem);
    std::lock_guard lock(state_->mu);
    state_->final_memory = memory::read(*mem);
    state_->final_memory.limit = config_.memory_limit;
    state_->memory = nullptr;
  }
  set_current_interrupt_slot(nullptr);
  bool abandoned = false;
  {
    std::lock_guard lock(state_->mu);
    abandoned = state_->abandoned;
    state_->phase = interp_phase::closed;
    state_->interp = nullptr;
    state_->cv.notify_all();
  }
  unregister_interp(state_.get());
  if (abandoned) logger("isola.interp")->warn("[interp {}] the abandoned {} has ended", state_->id, state_->label());
  return !abandoned;
}

bool interp_host::end_threads(const std::function<void()>& on_abandon) {
  using clock = std::chrono::steady_clock;
  auto log = logger("isola.interp");
  const auto join_deadline = clock::now() + config_.end_timeout;
  clock::time_point grace_deadline{};
  bool waiting_logged = false, interrupted = false, abandoned = false;
  py::object describer;
  for (;;) {
    const auto idents = other_threads(tstate_);
    if (idents.empty()) return !abandoned;
    if (!describer) describer = make_describer();
    const auto threads = describe_threads(describer, idents);
    const auto now = clock::now();
    if (!interrupted) {
      const bool non_daemon =
          std::any_of(threads.begin(), threads.end(), [](const auto& t) { return !t.daemon; });
      if (non_daemon && now < join_deadline) {
        if (!waiting_logged) {
          waiting_logged = true;
          log->warn("[interp {}] ending waits up to {:.1f} s for {} thread(s) its code left "
                    "running: {}",
                    state_->id, std::chrono::duration<double>(config_.end_timeout).count(),
                    threads.size(), join_texts(threads));
        }
      } else {
        log->warn("[interp {}] ending: raising SystemExit in {} thread(s) its code left running: {}",
                  state_->id, threads.size(), join_texts(threads));
        for (const auto& t : threads) PyThreadState_SetAsyncExc(t.ident, PyExc_SystemExit);
        wake_sleeps(*state_);
        interrupted = true;
        grace_deadline = now + config_.end_grace;
      }
    } else if (!abandoned && now >= grace_deadline) {
      abandoned = true;
      abandon_interp(state_, std::to_string(threads.size()) +
                                 " thread(s) its code left running did not stop on SystemExit "
                                 "within end_grace: " + join_texts(threads));
      if (on_abandon) on_abandon();
    }
    PyEval_SaveThread();
    std::this_thread::sleep_for(abandoned ? std::chrono::milliseconds(100)
                                          : std::chrono::milliseconds(5));
    PyEval_RestoreThread(tstate_);
  }
}

void interp_host::task_started(std::uint64_t token) noexcept {
  running_task_ = token;
  std::lock_guard lock(sleep_.mu);
  sleep_.interrupted = false;
}

void interp_host::task_finished() noexcept {
  running_task_ = 0;
  // An interrupt that arrived as the task ended must not hit the next one.
  PyThreadState_SetAsyncExc(ident_, nullptr);
  PyErr_Clear();
}

bool interp_host::interrupt(std::string_view type, std::uint64_t token) {
  auto guard = attach_internal(interpreter_handle(state_), true);
  if (!guard) return false;
  return with_python_errors([&] {
    PyObject* exc = find_exception_class(type);
    if (exc == nullptr) {
      throw std::invalid_argument("interrupt: '" + std::string(type) +
                                  "' is not an exception class (a builtin name such as "
                                  "'KeyboardInterrupt', or 'isola.TaskTimeout')");
    }
    if (running_task_ == 0 || PyThread_get_thread_ident() == ident_) return false;
    if (token != 0 && running_task_ != token) return false;
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
