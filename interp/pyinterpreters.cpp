// isola.interpreters' C++ side: the interpreters Python code makes with
// isola.interpreters.create() are isola::interpreter objects, kept in a process-wide registry
// by id (plain C++ data), owned by the interpreter that made them. The isola._interp_*
// functions below are what interp/py/interpreters.py calls.
//
// Lifetime and safety rules (see docs/interpreters-from-python.md):
// - An interpreter is closed by close(), when the handles to it in the interpreter that made
//   it (its creator) are all gone, or at the latest when its creator ends (an at-end hook of
//   the creator ends it within bounds, before the creator's own threads are stopped).
// - exec/call/prepare_main on an interpreter that runs one of them already, and close() of a
//   running one, raise InterpreterError (as in CPython), so two interpreters can never wait
//   for each other's worker; an interpreter cannot run, call or close itself or close one of
//   the interpreters that made it.
// - The caller waits with its GIL released and stops waiting when isola interrupts it (a
//   timeout, cancel(), its interpreter ending); the call then goes on to its end where it runs.
#include "interp/pyxi.hpp"

#include "lib/module.hpp"
#include "lib/pyexec.hpp"
#include "lib/value_codec.hpp"
#include "interp/py/interpreters.py.hpp"

#include <isola/interpreter.hpp>
#include <isola/log.hpp>

#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace isola::detail {
namespace {

constexpr const char* own_whence = "isola.interpreters";

/// One interpreter made by isola.interpreters.create().
struct child {
  explicit child(interpreter_config config) : interp(std::move(config)) {}
  isola::interpreter interp;
  std::int64_t id = -1;
  std::int64_t creator = -1;
  // Guarded by registry().mu.
  int owner_refs = 0;    ///< Interpreter objects in the creator that keep it alive
  int calls = 0;         ///< exec/call/prepare_main in progress
  std::vector<std::future<value>> orphans;  ///< calls whose caller stopped waiting
  bool closing = false;  ///< no new calls; being (or about to be) closed
  bool close_when_idle = false;  ///< the last handle went while it ran: the last call closes it
  bool creator_ended = false;    ///< closed because its creator ended
};

struct registry_t {
  std::mutex mu;
  std::map<std::int64_t, std::shared_ptr<child>> children;  ///< until closed
  std::set<std::int64_t> hooked;  ///< creators whose at-end hook is installed
};

// Never destroyed: an interpreter's end may use it during static destruction.
registry_t& registry() {
  static auto* r = new registry_t;
  return *r;
}

// With registry().mu held.
bool busy_locked(child& c) {
  std::erase_if(c.orphans, [](const std::future<value>& f) {
    return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  });
  return c.calls > 0 || !c.orphans.empty();
}

// With registry().mu held: the child `id`, if it is alive and takes calls.
std::shared_ptr<child> find_locked(std::int64_t id) {
  auto& r = registry();
  auto it = r.children.find(id);
  if (it == r.children.end() || it->second->closing) return nullptr;
  return it->second;
}

// Raises isola.interpreters.<cls> (RuntimeError if that module is not made) with msg.
PyObject* raise(const char* cls, const std::string& msg) {
  PyObject* type = PyExc_RuntimeError;
  PyObject* mod = PyDict_GetItemString(PyImport_GetModuleDict(), "isola.interpreters");
  py::object found;
  if (mod != nullptr) found = py::steal(PyObject_GetAttrString(mod, cls));
  if (found) type = found.get();
  PyErr_Clear();
  PyErr_SetString(type, msg.c_str());
  return nullptr;
}

PyObject* not_found(std::int64_t id) {
  return raise("InterpreterNotFoundError", "unrecognized interpreter ID " + std::to_string(id));
}

// Where an interpreter comes from, or nullptr if isola does not know it.
const char* whence_of(std::int64_t id) {
  {
    std::lock_guard lock(registry().mu);
    if (find_locked(id)) return own_whence;
  }
  auto s = find_interp(id);
  if (!s) return nullptr;
  if (s->is_main) return "runtime init";
  {
    std::lock_guard lock(registry().mu);
    auto it = registry().children.find(id);
    if (it != registry().children.end()) return nullptr;  // one of ours, closing
  }
  return "C-API";
}

// Whether `ancestor` made the current interpreter, or made the one that made it, and so on.
bool made_current(std::int64_t ancestor) {
  std::lock_guard lock(registry().mu);
  std::int64_t id = current_interp_id();
  for (int depth = 0; depth < 10000; ++depth) {
    auto it = registry().children.find(id);
    if (it == registry().children.end()) return false;
    id = it->second->creator;
    if (id == ancestor) return true;
  }
  return false;
}

// Ends c (GIL released while it waits). Already off the registry, or marked closing.
void close_child(std::shared_ptr<child> c) {
  {
    release_gil unlocked;
    try {
      c->interp.close();
    } catch (const std::exception& e) {
      logger("isola.interp")->error("[interp {}] could not be closed: {}", c->id, e.what());
      defer_release(c);
    }
  }
  std::lock_guard lock(registry().mu);
  auto it = registry().children.find(c->id);
  if (it != registry().children.end() && it->second == c) registry().children.erase(it);
}

// The creator's at-end hook (its thread, GIL held): ends, within bounds, every interpreter it
// made that is still alive. Its running call gets SystemExit and end_grace to stop.
void creator_ending(std::int64_t creator) noexcept {
  std::vector<std::shared_ptr<child>> left;
  {
    std::lock_guard lock(registry().mu);
    registry().hooked.erase(creator);
    for (auto& [id, c] : registry().children) {
      if (c->creator != creator || c->creator_ended) continue;
      c->closing = true;
      c->creator_ended = true;
      left.push_back(c);
    }
  }
  // Newest first, as the runtime ends interpreters.
  for (auto it = left.rbegin(); it != left.rend(); ++it) {
    auto& c = *it;
    try {
      if (auto s = find_interp(c->id); s && s->closer) s->closer();
    } catch (const std::exception& e) {
      logger("isola.interp")->error("[interp {}] could not be ended with interpreter {}: {}",
                                    c->id, creator, e.what());
    }
    close_child(c);
  }
}

bool ended_by_creator(const child& c) {
  std::lock_guard lock(registry().mu);
  return c.creator_ended;
}

// Maps a failure of isola's C++ API to the Python exception the caller sees.
PyObject* raise_current(std::int64_t id, bool creator_ended) {
  try {
    throw;
  } catch (const error& e) {
    if (creator_ended) {
      return raise("InterpreterError", "interpreter " + std::to_string(id) +
                                           " was closed: the interpreter that made it is ending");
    }
    if (e.code() == errc::interpreter_closed || e.code() == errc::interpreter_closing) {
      return not_found(id);
    }
    return raise("InterpreterError", e.what());
  } catch (const python_error& e) {
    return raise("InterpreterError", e.what());
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  } catch (const std::exception& e) {
    return raise("InterpreterError", e.what());
  }
}

// isola._interp_create() -> id
PyObject* py_create(PyObject*, PyObject*) {
  const std::int64_t creator = current_interp_id();
  auto creator_state = find_interp(creator);
  interpreter_config config;
  config.name = "made by interpreter " + std::to_string(creator);
  config.sys_path = sys_path_entries();
  std::shared_ptr<child> c;
  try {
    c = std::make_shared<child>(std::move(config));  // waits with the GIL released
  } catch (...) {
    return raise_current(-1, false);
  }
  c->id = c->interp.id();
  c->creator = creator;
  bool hook = false;
  {
    std::lock_guard lock(registry().mu);
    registry().children[c->id] = c;
    hook = creator_state && registry().hooked.insert(creator).second;
  }
  if (hook && !add_at_end(*creator_state, [creator] { creator_ending(creator); })) {
    {
      std::lock_guard lock(registry().mu);
      registry().hooked.erase(creator);
      c->closing = true;
    }
    close_child(c);
    return raise("InterpreterError", "this interpreter is ending: it cannot make interpreters");
  }
  return PyLong_FromLongLong(c->id);
}

// isola._interp_incref(id) -> bool: whether the handle being made here owns a reference.
PyObject* py_incref(PyObject*, PyObject* arg) {
  const long long id = PyLong_AsLongLong(arg);
  if (id == -1 && PyErr_Occurred()) return nullptr;
  std::lock_guard lock(registry().mu);
  auto c = find_locked(id);
  if (!c || c->creator != current_interp_id()) Py_RETURN_FALSE;
  ++c->owner_refs;
  Py_RETURN_TRUE;
}

// isola._interp_decref(id): a handle that owned a reference is gone.
PyObject* py_decref(PyObject*, PyObject* arg) {
  const long long id = PyLong_AsLongLong(arg);
  if (id == -1 && PyErr_Occurred()) return nullptr;
  std::shared_ptr<child> victim;
  {
    std::lock_guard lock(registry().mu);
    auto c = find_locked(id);
    if (!c || c->creator != current_interp_id() || c->owner_refs == 0) Py_RETURN_NONE;
    if (--c->owner_refs > 0) Py_RETURN_NONE;
    c->closing = true;
    if (busy_locked(*c)) {
      c->close_when_idle = true;
    } else {
      victim = c;
    }
  }
  if (victim) close_child(std::move(victim));
  Py_RETURN_NONE;
}

// isola._interp_close(id)
PyObject* py_close(PyObject*, PyObject* arg) {
  const long long id = PyLong_AsLongLong(arg);
  if (id == -1 && PyErr_Occurred()) return nullptr;
  if (id == current_interp_id()) {
    return raise("InterpreterError", "cannot destroy the current interpreter");
  }
  if (made_current(id)) {
    return raise("InterpreterError",
                 "cannot destroy interpreter " + std::to_string(id) +
                     ": it made the current interpreter, which would end with it");
  }
  std::shared_ptr<child> c;
  {
    std::lock_guard lock(registry().mu);
    c = find_locked(id);
  }
  if (!c) {
    if (whence_of(id) == nullptr) return not_found(id);
    return raise("InterpreterError", "cannot destroy unrecognized interpreter " +
                                         std::to_string(id) +
                                         ": only interpreters made by "
                                         "isola.interpreters.create() can be closed");
  }
  {
    std::lock_guard lock(registry().mu);
    if (c->closing) return not_found(id);
    if (busy_locked(*c)) return raise("InterpreterError", "interpreter running");
    c->closing = true;
  }
  close_child(std::move(c));
  Py_RETURN_NONE;
}

// A call (exec, call, prepare_main) in progress on a child; ends it on destruction, and closes
// the child if it was the last call of one that lost its last handle meanwhile.
class call_scope {
 public:
  explicit call_scope(std::shared_ptr<child> c) : c_(std::move(c)) {}
  call_scope(const call_scope&) = delete;
  call_scope& operator=(const call_scope&) = delete;
  ~call_scope() {
    bool close_now = false;
    {
      std::lock_guard lock(registry().mu);
      --c_->calls;
      if (c_->close_when_idle && !busy_locked(*c_) && !c_->creator_ended) {
        c_->close_when_idle = false;
        close_now = true;
      }
    }
    // Not from an interpreter it made: that one would end with it, under this very call.
    if (close_now && !made_current(c_->id)) close_child(c_);
  }
  child& operator*() const noexcept { return *c_; }
  child* operator->() const noexcept { return c_.get(); }

 private:
  std::shared_ptr<child> c_;
};

// Starts a call on child `id` ("exec code for", "call a function in", ...); nullptr with an
// exception set if it may not run now.
std::shared_ptr<child> begin_call(std::int64_t id, const char* what) {
  if (id == current_interp_id()) {
    raise("InterpreterError", "interpreter already running");
    return nullptr;
  }
  {
    std::lock_guard lock(registry().mu);
    if (auto c = find_locked(id)) {
      if (busy_locked(*c)) {
        raise("InterpreterError", "interpreter already running");
        return nullptr;
      }
      ++c->calls;
      return c;
    }
  }
  if (whence_of(id) == nullptr) {
    not_found(id);
  } else {
    raise("InterpreterError", std::string("cannot ") + what + " unrecognized interpreter " +
                                  std::to_string(id) +
                                  ": only interpreters made by isola.interpreters.create() "
                                  "can be used this way");
  }
  return nullptr;
}

// Runs target(args) in child `id` and returns its result as a Python object.
PyObject* run_in_child(PyObject* id_obj, const char* what, const char* target,
                       std::vector<value> args) {
  const long long id = PyLong_AsLongLong(id_obj);
  if (id == -1 && PyErr_Occurred()) return nullptr;
  auto started = begin_call(id, what);
  if (!started) return nullptr;
  call_scope c(std::move(started));
  std::future<value> fut;
  try {
    fut = c->interp.call_with_async(target, std::move(args));
  } catch (...) {
    return raise_current(id, ended_by_creator(*c));
  }
  if (wait_for_work(fut, current_interp_state()) == wait_outcome::interrupted) {
    {
      std::lock_guard lock(registry().mu);
      c->orphans.push_back(std::move(fut));
    }
    return raise("InterpreterError",
                 "stopped waiting for interpreter " + std::to_string(id) +
                     ": this thread was interrupted (the call goes on there)");
  }
  value result;
  try {
    result = fut.get();
  } catch (const python_error& e) {
    // The helper itself failed (it could not be found, or ran out of memory).
    if (std::string_view(target).ends_with("exec_main")) {
      return with_python_errors([&] { return to_python(excinfo_of(e)).release(); });
    }
    return raise("InterpreterError", e.what());
  } catch (...) {
    return raise_current(id, ended_by_creator(*c));
  }
  try {
    return with_python_errors([&] { return to_python(result).release(); });
  } catch (...) {
    return raise_current(id, false);
  }
}

std::string utf8_of(PyObject* o) {
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(o, &n);
  if (s == nullptr) throw py::error_already_set{};
  return std::string(s, static_cast<std::size_t>(n));
}

std::string bytes_of(PyObject* o) {
  char* data = nullptr;
  Py_ssize_t n = 0;
  if (PyBytes_AsStringAndSize(o, &data, &n) < 0) throw py::error_already_set{};
  return std::string(data, static_cast<std::size_t>(n));
}

// isola._interp_exec(id, source) -> None or the excinfo tuple
PyObject* py_exec(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyUnicode_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "_interp_exec(id, source: str)");
    return nullptr;
  }
  std::string code;
  try {
    code = utf8_of(args[1]);
  } catch (const py::error_already_set&) {
    return nullptr;
  }
  return run_in_child(args[0], "exec code for", "isola:_xi.exec_main", make_values(code));
}

// isola._interp_call(id, pickled) -> (status, payload, excinfo); see isola._xi.run_pickled
PyObject* py_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyBytes_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "_interp_call(id, pickled: bytes)");
    return nullptr;
  }
  return run_in_child(args[0], "call a function in", "isola:_xi.run_pickled",
                      make_values(0, isola::bytes{bytes_of(args[1])}));
}

// isola._interp_prepare_main(id, pickled dict)
PyObject* py_prepare_main(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyBytes_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "_interp_prepare_main(id, pickled: bytes)");
    return nullptr;
  }
  return run_in_child(args[0], "update __main__ for", "isola:_xi.set_main",
                      make_values(isola::bytes{bytes_of(args[1])}));
}

// isola._interp_is_running(id) -> bool
PyObject* py_is_running(PyObject*, PyObject* arg) {
  const long long id = PyLong_AsLongLong(arg);
  if (id == -1 && PyErr_Occurred()) return nullptr;
  if (id == current_interp_id()) Py_RETURN_TRUE;
  {
    std::lock_guard lock(registry().mu);
    if (auto c = find_locked(id)) return PyBool_FromLong(busy_locked(*c));
  }
  if (whence_of(id) == nullptr) return not_found(id);
  Py_RETURN_FALSE;  // isola's other interpreters: not known from here
}

// isola._interp_whence(id) -> str
PyObject* py_whence(PyObject*, PyObject* arg) {
  const long long id = PyLong_AsLongLong(arg);
  if (id == -1 && PyErr_Occurred()) return nullptr;
  const char* w = whence_of(id);
  if (w == nullptr) {
    if (id == current_interp_id()) return PyUnicode_FromString("unknown");
    return not_found(id);
  }
  return PyUnicode_FromString(w);
}

// isola._interp_current() -> (id, whence)
PyObject* py_current(PyObject*, PyObject*) {
  const std::int64_t id = current_interp_id();
  const char* w = whence_of(id);
  return Py_BuildValue("(Ls)", static_cast<long long>(id), w != nullptr ? w : "unknown");
}

// isola._interp_list() -> [(id, whence), ...]: the main interpreter and isola's live ones.
PyObject* py_list(PyObject*, PyObject*) {
  std::vector<std::int64_t> ids;
  {
    auto& rt = runtime();
    std::lock_guard lock(rt.mu);
    if (rt.main) ids.push_back(rt.main->id);
    for (const auto& s : rt.live) ids.push_back(s->id);
  }
  auto out = py::steal(PyList_New(0));
  if (!out) return nullptr;
  for (auto id : ids) {
    const char* w = whence_of(id);
    if (w == nullptr) continue;  // ended meanwhile, or closing
    auto item = py::steal(Py_BuildValue("(Ls)", static_cast<long long>(id), w));
    if (!item || PyList_Append(out.get(), item.get()) < 0) return nullptr;
  }
  return out.release();
}

PyMethodDef interp_methods[] = {
    {"_interp_create", py_create, METH_NOARGS, "isola.interpreters.create()'s C++ side."},
    {"_interp_incref", py_incref, METH_O, "isola.interpreters: a handle is made."},
    {"_interp_decref", py_decref, METH_O, "isola.interpreters: a handle is gone."},
    {"_interp_close", py_close, METH_O, "isola.interpreters.Interpreter.close()'s C++ side."},
    {"_interp_exec", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_exec)),
     METH_FASTCALL, "isola.interpreters.Interpreter.exec()'s C++ side."},
    {"_interp_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_call)),
     METH_FASTCALL, "isola.interpreters.Interpreter.call()'s C++ side."},
    {"_interp_prepare_main",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_prepare_main)), METH_FASTCALL,
     "isola.interpreters.Interpreter.prepare_main()'s C++ side."},
    {"_interp_is_running", py_is_running, METH_O, "isola.interpreters: is_running()."},
    {"_interp_whence", py_whence, METH_O, "isola.interpreters: where an interpreter comes from."},
    {"_interp_current", py_current, METH_NOARGS, "isola.interpreters.get_current()'s C++ side."},
    {"_interp_list", py_list, METH_NOARGS, "isola.interpreters.list_all()'s C++ side."},
    {nullptr, nullptr, 0, nullptr}};

int make_interpreters(PyObject* m) {
  return add_submodule_attribute(m, "interpreters");
}

const lazy_attribute interp_lazy[] = {{"interpreters", make_interpreters},
                                      {"_interp_rebuild", make_interpreters},
                                      {nullptr, nullptr}};

module_part_registrar interpreters_part({"interpreters", interp_methods, nullptr, interp_lazy});
submodule_registrar interpreters_submodule({"interpreters", embedded::interpreters});

}  // namespace
}  // namespace isola::detail
