// isola.PoolExecutor's C++ side: isola._ExecutorCore owns an isola::pool and the outcomes of
// the tasks submitted to it (interp/py/executor.py is the Python face). Each task is
// pool.async_submit of isola._xi.run_pickled, completing on an io_context that only the
// executor's collector thread runs (in core.collect(), GIL released): completions, and the
// cancellations that future.cancel() asks for, all happen on that one thread, so a task's
// Asio cancellation slot is never used from two threads at once.
//
// A task is cancelled only while it has not started: its phase goes queued -> started when
// run_pickled claims it in the pool (isola._task_claim), or queued -> cancelled when cancel()
// wins; a cancelled task is taken off the pool's queue, and one a worker took already does
// nothing when it claims.
#include "interp/pyxi.hpp"

#include "lib/module.hpp"
#include "lib/pyexec.hpp"
#include "lib/value_codec.hpp"
#include "interp/py/executor.py.hpp"

#include <isola/log.hpp>
#include <isola/pool.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <stop_token>
#include <unordered_map>
#include <vector>

namespace isola::detail {
namespace {

namespace asio = boost::asio;

enum task_phase_py : int { queued_phase, started_phase, cancelled_phase };
/// The outcome kinds executor.py knows (its _OK, _RAISED, ...).
enum outcome_status : int { status_ok, status_raised, status_cancelled, status_broken, status_failed };

struct exec_task {
  std::uint64_t key = 0;
  std::atomic<int> phase{queued_phase};
  asio::cancellation_signal signal;  ///< used on the collector's thread only
  // Guarded by the core's mu.
  bool armed = false;           ///< async_submit has installed its cancellation handler
  bool cancel_pending = false;  ///< cancelled before that: the submitter emits
};

struct done_item {
  std::uint64_t key = 0;
  int status = status_ok;
  std::string payload;
  value info;
};

// Every executor task of the process by key, for isola._task_claim in the pool's interpreters
// (plain C++ data; weak references).
struct claims_t {
  std::mutex mu;
  std::unordered_map<std::uint64_t, std::weak_ptr<exec_task>> tasks;
};
claims_t& claims() {
  static auto* c = new claims_t;  // never destroyed: pool threads may claim during exit
  return *c;
}
std::atomic<std::uint64_t> last_key{0};

/// - Thread-safe, except collect() and cancel_all(): only the collector thread calls them.
/// - The pool is shut down by shutdown_pool() or the destructor.
class executor_core : public std::enable_shared_from_this<executor_core> {
 public:
  explicit executor_core(pool_options o) : pool_(std::make_shared<isola::pool>(std::move(o))) {}
  ~executor_core() {
    release_gil unlocked;
    pool_.reset();  // shuts it down if shutdown_pool() did not
  }

  std::size_t size() const noexcept { return pool_->size(); }

  /// GIL held; releases it while the pool's queue has no room.
  void submit(std::uint64_t key, std::string data) {
    auto t = std::make_shared<exec_task>();
    t->key = key;
    {
      std::lock_guard lock(mu_);
      if (shutdown_requested_ || closing_) {
        throw std::runtime_error("cannot schedule new futures after shutdown");
      }
      tasks_[key] = t;
    }
    {
      std::lock_guard lock(claims().mu);
      claims().tasks[key] = t;
    }
    auto handler = [weak = weak_from_this(), key](std::exception_ptr e, value v) {
      if (auto self = weak.lock()) self->on_done(key, std::move(e), std::move(v));
    };
    {
      release_gil unlocked;
      pool_->async_submit("isola:_xi.run_pickled",
                          make_values(static_cast<std::int64_t>(key), isola::bytes{std::move(data)}),
                          asio::bind_cancellation_slot(t->signal.slot(),
                                                       asio::bind_executor(io_, handler)));
    }
    std::lock_guard lock(mu_);
    t->armed = true;
    if (t->cancel_pending) asio::post(io_, [t] { t->signal.emit(asio::cancellation_type::terminal); });
  }

  /// Cancels a task that has not started; false if it started (or ended) already.
  bool cancel(std::uint64_t key) {
    std::lock_guard lock(mu_);
    auto it = tasks_.find(key);
    if (it == tasks_.end()) return false;
    auto t = it->second;
    int expected = queued_phase;
    if (!t->phase.compare_exchange_strong(expected, cancelled_phase)) return false;
    if (t->armed) {
      asio::post(io_, [t] { t->signal.emit(asio::cancellation_type::terminal); });
    } else {
      t->cancel_pending = true;
    }
    return true;
  }

  /// Whether the task has started in the pool (or ended).
  bool started(std::uint64_t key) {
    std::lock_guard lock(mu_);
    auto it = tasks_.find(key);
    return it == tasks_.end() || it->second->phase.load() == started_phase;
  }

  /// Collector thread: cancels every task (queued ones are taken off the queue, running ones
  /// get KeyboardInterrupt); returns the keys of those that had not started.
  std::vector<std::uint64_t> cancel_all() {
    std::vector<std::shared_ptr<exec_task>> all;
    std::vector<std::uint64_t> unstarted;
    {
      std::lock_guard lock(mu_);
      for (auto& [key, t] : tasks_) {
        int expected = queued_phase;
        if (t->phase.compare_exchange_strong(expected, cancelled_phase)) unstarted.push_back(key);
        if (t->armed) {
          all.push_back(t);
        } else {
          t->cancel_pending = true;
        }
      }
    }
    // This is the thread that runs io_: the slots are not in use elsewhere.
    for (auto& t : all) t->signal.emit(asio::cancellation_type::terminal);
    return unstarted;
  }

  void request_shutdown() {
    {
      std::lock_guard lock(mu_);
      shutdown_requested_ = true;
    }
    asio::post(io_, [] {});  // wakes collect()
  }

  enum class state { more, closing, done };

  /// Collector thread, GIL held (released while it waits): the outcomes that arrived, and
  /// whether to go on. `closing`: the calling interpreter is ending. `done`: shut down and
  /// nothing outstanding.
  state collect(std::vector<done_item>& out) {
    auto caller = current_interp_state();
    std::stop_source stop;
    const bool registered = caller != nullptr && register_wait(*caller, &stop);
    if (caller != nullptr && !registered) stop.request_stop();  // its waits were stopped
    state result = state::more;
    {
      std::stop_callback wake(stop.get_token(), [this] { asio::post(io_, [] {}); });
      release_gil unlocked;
      for (;;) {
        {
          std::lock_guard lock(mu_);
          if (!ready_.empty()) break;
          if (stop.stop_requested()) {
            closing_ = true;
            result = state::closing;
            break;
          }
          if (shutdown_requested_ && tasks_.empty()) {
            result = state::done;
            break;
          }
        }
        io_.run_one();
      }
      std::lock_guard lock(mu_);
      out.swap(ready_);
    }
    if (registered) unregister_wait(*caller, &stop);
    return result;
  }

  /// Collector thread: shuts the pool down (cancel: queued tasks fail with errc::cancelled),
  /// GIL released while it waits for running tasks.
  void shutdown_pool(bool cancel) {
    release_gil unlocked;
    pool_->shutdown(cancel);
    {
      std::lock_guard lock(mu_);
      pool_down_ = true;
    }
    pool_down_cv_.notify_all();
  }

  /// The calling interpreter's at-end hook (GIL held, released while it waits): gives the
  /// collector, which its closing woke, up to `limit` to settle the futures and shut the pool
  /// down, so that the interpreter's end does not find it still running.
  void wait_pool_down(std::chrono::milliseconds limit) {
    release_gil unlocked;
    std::unique_lock lock(mu_);
    pool_down_cv_.wait_for(lock, limit, [&] { return pool_down_; });
  }

 private:
  // On the collector's thread (io_.run_one()), no GIL.
  void on_done(std::uint64_t key, std::exception_ptr e, value v) noexcept {
    done_item d;
    d.key = key;
    try {
      if (!e) {
        auto& items = v.as_tuple().items;
        d.status = static_cast<int>(items.at(0).as_int());
        d.payload = items.at(1).as_bytes().data;
        d.info = std::move(items.at(2));
      } else {
        std::rethrow_exception(e);
      }
    } catch (const python_error& pe) {
      d.status = status_failed;
      d.info = excinfo_of(pe);
    } catch (const error& ie) {
      d.status = ie.code() == errc::cancelled ? status_cancelled : status_broken;
      d.info = std::string(ie.what());
    } catch (const std::exception& other) {
      d.status = status_broken;
      d.info = std::string(other.what());
    }
    {
      std::lock_guard lock(claims().mu);
      claims().tasks.erase(key);
    }
    std::lock_guard lock(mu_);
    tasks_.erase(key);
    ready_.push_back(std::move(d));
  }

  // io_ outlives pool_: a pool shutting down posts outcomes to it.
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_{io_.get_executor()};
  std::shared_ptr<isola::pool> pool_;
  std::mutex mu_;
  std::map<std::uint64_t, std::shared_ptr<exec_task>> tasks_;  ///< outstanding
  std::vector<done_item> ready_;
  bool shutdown_requested_ = false;
  bool closing_ = false;
  bool pool_down_ = false;
  std::condition_variable pool_down_cv_;
};

// The Python object: one reference to the core.
struct py_core {
  PyObject_HEAD
  std::shared_ptr<executor_core>* core;
};

executor_core& core_of(PyObject* self) { return **reinterpret_cast<py_core*>(self)->core; }

std::uint64_t key_of(PyObject* arg) {
  const unsigned long long k = PyLong_AsUnsignedLongLong(arg);
  if (k == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw py::error_already_set{};
  return k;
}

// Runs f, turning C++ failures into Python exceptions; returns nullptr then.
template <typename F>
PyObject* guarded(F&& f) noexcept {
  try {
    return f();
  } catch (const py::error_already_set&) {
    return nullptr;
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// _ExecutorCore(max_workers, init_code, name)
PyObject* core_new(PyTypeObject* type, PyObject* args, PyObject* kwds) {
  long long size = 0;
  const char* init_code = nullptr;
  const char* name = nullptr;
  if (kwds != nullptr && PyDict_GET_SIZE(kwds) != 0) {
    PyErr_SetString(PyExc_TypeError, "_ExecutorCore takes no keyword arguments");
    return nullptr;
  }
  if (!PyArg_ParseTuple(args, "Lss", &size, &init_code, &name)) return nullptr;
  if (size < 0) {
    PyErr_SetString(PyExc_ValueError, "max_workers must be greater than 0");
    return nullptr;
  }
  pool_options o;
  o.size = static_cast<std::size_t>(size);
  o.init_code = init_code;
  o.interpreter.name = name;
  o.sys_path = sys_path_entries();
  std::shared_ptr<executor_core> core;
  try {
    release_gil unlocked;  // the interpreters are made (and initialised) meanwhile
    core = std::make_shared<executor_core>(std::move(o));
  } catch (const python_error& e) {  // the initializer failed
    PyObject* isola = PyImport_ImportModule("isola");
    PyObject* cls = isola != nullptr ? PyObject_GetAttrString(isola, "_ExecutorInitError") : nullptr;
    Py_XDECREF(isola);
    if (cls == nullptr) return nullptr;
    PyErr_SetString(cls, e.what());
    Py_DECREF(cls);
    return nullptr;
  } catch (...) {
    return guarded([]() -> PyObject* { throw; });
  }
  if (auto caller = current_interp_state()) {
    add_at_end(*caller, [weak = std::weak_ptr<executor_core>(core)] {
      if (auto c = weak.lock()) c->wait_pool_down(std::chrono::seconds(5));
    });
  }
  auto* self = reinterpret_cast<py_core*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->core = new std::shared_ptr<executor_core>(std::move(core));
  return reinterpret_cast<PyObject*>(self);
}

void core_dealloc(PyObject* self) {
  auto* p = reinterpret_cast<py_core*>(self);
  delete p->core;  // the last reference shuts the pool down (GIL released meanwhile)
  PyTypeObject* tp = Py_TYPE(self);
  tp->tp_free(self);
  Py_DECREF(tp);
}

PyObject* core_next_key(PyObject*, PyObject*) { return PyLong_FromUnsignedLongLong(++last_key); }

PyObject* core_submit(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    if (nargs != 2 || !PyBytes_Check(args[1])) {
      PyErr_SetString(PyExc_TypeError, "submit(key, pickled: bytes)");
      return nullptr;
    }
    const auto key = key_of(args[0]);
    std::string data(PyBytes_AS_STRING(args[1]), static_cast<std::size_t>(PyBytes_GET_SIZE(args[1])));
    core_of(self).submit(key, std::move(data));
    Py_RETURN_NONE;
  });
}

PyObject* core_cancel(PyObject* self, PyObject* arg) {
  return guarded([&] { return PyBool_FromLong(core_of(self).cancel(key_of(arg))); });
}

PyObject* core_started(PyObject* self, PyObject* arg) {
  return guarded([&] { return PyBool_FromLong(core_of(self).started(key_of(arg))); });
}

PyObject* core_cancel_all(PyObject* self, PyObject*) {
  return guarded([&]() -> PyObject* {
    auto keys = core_of(self).cancel_all();
    auto out = py::check(PyList_New(0));
    for (auto k : keys) {
      py::check_zero(PyList_Append(out.get(), py::check(PyLong_FromUnsignedLongLong(k)).get()));
    }
    return out.release();
  });
}

PyObject* core_request_shutdown(PyObject* self, PyObject*) {
  return guarded([&]() -> PyObject* {
    core_of(self).request_shutdown();
    Py_RETURN_NONE;
  });
}

PyObject* core_collect(PyObject* self, PyObject*) {
  return guarded([&]() -> PyObject* {
    std::vector<done_item> items;
    const auto s = core_of(self).collect(items);
    auto list = py::check(PyList_New(0));
    for (auto& d : items) {
      auto info = with_python_errors([&] { return to_python(d.info); });
      auto item = py::check(Py_BuildValue("(Kiy#O)", static_cast<unsigned long long>(d.key),
                                          d.status, d.payload.data(),
                                          static_cast<Py_ssize_t>(d.payload.size()), info.get()));
      py::check_zero(PyList_Append(list.get(), item.get()));
    }
    const char* name = s == executor_core::state::closing ? "closing"
                       : s == executor_core::state::done  ? "done"
                                                          : "more";
    return Py_BuildValue("(Os)", list.get(), name);
  });
}

PyObject* core_shutdown_pool(PyObject* self, PyObject* arg) {
  return guarded([&]() -> PyObject* {
    const int cancel = PyObject_IsTrue(arg);
    if (cancel < 0) return nullptr;
    core_of(self).shutdown_pool(cancel != 0);
    Py_RETURN_NONE;
  });
}

PyObject* core_size(PyObject* self, void*) {
  return PyLong_FromSize_t(core_of(self).size());
}

PyMethodDef core_methods[] = {
    {"next_key", core_next_key, METH_NOARGS, "A new task key."},
    {"submit", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(core_submit)),
     METH_FASTCALL, "submit(key, pickled): queues isola._xi.run_pickled(key, pickled)."},
    {"cancel", core_cancel, METH_O, "cancel(key) -> bool: cancels a task that has not started."},
    {"started", core_started, METH_O, "started(key) -> bool: the task started (or ended)."},
    {"cancel_all", core_cancel_all, METH_NOARGS,
     "Collector thread: cancels every task; returns the keys of those that had not started."},
    {"request_shutdown", core_request_shutdown, METH_NOARGS,
     "No more tasks; collect() says 'done' once the outstanding ones have ended."},
    {"collect", core_collect, METH_NOARGS,
     "Collector thread: ([(key, status, payload, info), ...], 'more'|'closing'|'done')."},
    {"shutdown_pool", core_shutdown_pool, METH_O, "Collector thread: shuts the pool down."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef core_getset[] = {
    {"size", core_size, nullptr, "The number of interpreters.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot core_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(core_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(core_dealloc)},
    {Py_tp_methods, core_methods},
    {Py_tp_getset, core_getset},
    {Py_tp_doc, const_cast<char*>("isola.PoolExecutor's pool and task outcomes (internal).")},
    {0, nullptr}};

PyType_Spec core_spec = {"isola._ExecutorCore", sizeof(py_core), 0, Py_TPFLAGS_DEFAULT,
                         core_slots};

// isola._task_claim(key) -> bool, in the pool's interpreter as a task starts: whether it may
// run (it was not cancelled first).
PyObject* task_claim(PyObject*, PyObject* arg) {
  return guarded([&] {
    const auto key = key_of(arg);
    std::shared_ptr<exec_task> t;
    {
      std::lock_guard lock(claims().mu);
      auto it = claims().tasks.find(key);
      if (it != claims().tasks.end()) t = it->second.lock();
    }
    int expected = queued_phase;
    return PyBool_FromLong(t && t->phase.compare_exchange_strong(expected, started_phase));
  });
}

int make_executor(PyObject* m) {
  PyObject* dict = PyModule_GetDict(m);  // borrowed
  if (PyDict_GetItemString(dict, "_ExecutorCore") == nullptr) {
    PyObject* type = PyType_FromModuleAndSpec(m, &core_spec, nullptr);
    if (type == nullptr) return -1;
    const int rc = PyModule_AddObjectRef(m, "_ExecutorCore", type);
    Py_DECREF(type);
    if (rc < 0) return -1;
  }
  if (PyDict_GetItemString(dict, "_ExecutorInitError") == nullptr) {
    PyObject* exc = PyErr_NewException("isola._ExecutorInitError", PyExc_RuntimeError, nullptr);
    if (exc == nullptr) return -1;
    const int rc = PyModule_AddObjectRef(m, "_ExecutorInitError", exc);
    Py_DECREF(exc);
    if (rc < 0) return -1;
  }
  if (add_submodule_attribute(m, "_executor") < 0) return -1;
  PyObject* mod = PyDict_GetItemString(dict, "_executor");  // borrowed
  for (const char* name : {"PoolExecutor", "BrokenInterpreterPool"}) {
    PyObject* v = PyObject_GetAttrString(mod, name);
    if (v == nullptr) return -1;
    const int rc = PyDict_SetItemString(dict, name, v);
    Py_DECREF(v);
    if (rc < 0) return -1;
  }
  return 0;
}

PyMethodDef executor_methods[] = {
    {"_task_claim", task_claim, METH_O,
     "isola.PoolExecutor: a task starts in the pool; False if it was cancelled first."},
    {nullptr, nullptr, 0, nullptr}};

const lazy_attribute executor_lazy[] = {{"PoolExecutor", make_executor},
                                        {"BrokenInterpreterPool", make_executor},
                                        {"_ExecutorCore", make_executor},
                                        {"_ExecutorInitError", make_executor},
                                        {"_executor", make_executor},
                                        {nullptr, nullptr}};

module_part_registrar executor_part({"executor", executor_methods, nullptr, executor_lazy});
submodule_registrar executor_submodule({"_executor", embedded::executor});

}  // namespace
}  // namespace isola::detail
