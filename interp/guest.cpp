// See guest.hpp. The replacements are C functions made per interpreter from static method
// definitions; they keep CPython's names (os._exit.__name__ is still '_exit').
#include "interp/guest.hpp"

#include "lib/module.hpp"
#include "lib/py.hpp"

#include <string>

namespace isola::detail {
namespace {

long long interp_id() { return PyInterpreterState_GetID(PyInterpreterState_Get()); }

PyObject* refused_exit(PyObject*, PyObject* args) {
  PyObject* status = PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : Py_None;
  PyErr_Format(PyExc_RuntimeError,
               "os._exit(%R) is refused in isola's interpreter %lld: it would end the whole "
               "process at once, with the work of every other interpreter, and report nothing. "
               "End this code with sys.exit(%R) instead, or allow os._exit with "
               "interpreter_config::allow_os_exit (isola run/map --allow-os-exit)",
               status, interp_id(), status);
  return nullptr;
}

PyObject* refused_abort(PyObject*, PyObject*) {
  PyErr_Format(PyExc_RuntimeError,
               "os.abort() is refused in isola's interpreter %lld: it would kill the whole "
               "process at once, with the work of every other interpreter. Raise an exception "
               "instead, or allow it with interpreter_config::allow_os_exit (isola run/map "
               "--allow-os-exit)",
               interp_id());
  return nullptr;
}

PyObject* refused_fork(PyObject*, PyObject*) {
  PyErr_Format(PyExc_RuntimeError,
               "os.fork() is refused in isola's interpreter %lld: CPython 3.12 and 3.13 end a "
               "child forked from any interpreter but the main one with a fatal error, and this "
               "process runs many threads. Start programs with subprocess instead; "
               "interpreter_config::allow_fork allows it",
               interp_id());
  return nullptr;
}

PyMethodDef exit_def = {"_exit", refused_exit, METH_VARARGS,
                        "_exit(status)\n\nRefused in isola's interpreters: raises RuntimeError "
                        "(interpreter_config::allow_os_exit allows os._exit)."};
PyMethodDef abort_def = {"abort", refused_abort, METH_NOARGS,
                         "abort()\n\nRefused in isola's interpreters: raises RuntimeError "
                         "(interpreter_config::allow_os_exit allows os.abort)."};
PyMethodDef fork_def = {"fork", refused_fork, METH_NOARGS,
                        "fork()\n\nRefused in isola's interpreters: raises RuntimeError "
                        "(interpreter_config::allow_fork allows it)."};
PyMethodDef forkpty_def = {"forkpty", refused_fork, METH_NOARGS,
                           "forkpty()\n\nRefused in isola's interpreters: raises RuntimeError "
                           "(interpreter_config::allow_fork allows it)."};

// Sets name on os and posix to a new function made from def (skipping names the platform
// lacks, such as forkpty without a pty library).
void replace(PyObject* os, PyObject* posix, const char* name, PyMethodDef* def) {
  auto fn = py::check(PyCFunction_NewEx(def, nullptr, nullptr));
  for (PyObject* m : {os, posix}) {
    py::object current = py::steal(PyObject_GetAttrString(m, name));
    if (!current) {
      if (!PyErr_ExceptionMatches(PyExc_AttributeError)) throw py::error_already_set{};
      PyErr_Clear();
      continue;
    }
    py::check_zero(PyObject_SetAttrString(m, name, fn.get()));
  }
}

int exec_guest(PyObject* m) {
  PyObject* exc = PyErr_NewExceptionWithDoc(
      task_timeout_exception,
      "Raised inside a task whose timeout has passed (an isola pool timeout, isola map "
      "--timeout, isola run --timeout). It derives from BaseException, not from Exception or "
      "OSError, so that ordinary handlers (importlib's `except OSError`, `except Exception`) "
      "do not swallow it; code that must clean up can catch it and re-raise. The caller of "
      "the task sees TimeoutError.",
      PyExc_BaseException, nullptr);
  if (exc == nullptr) return -1;
  if (PyModule_AddObjectRef(m, "TaskTimeout", exc) < 0) {
    Py_DECREF(exc);
    return -1;
  }
  Py_DECREF(exc);
  return 0;
}

module_part_registrar guest_part({"guest", nullptr, exec_guest});

}  // namespace

void guard_process(const interpreter_config& config) {
  auto os = py::import("os");
  auto posix = py::import("posix");
  if (!config.allow_os_exit) {
    replace(os.get(), posix.get(), "_exit", &exit_def);
    replace(os.get(), posix.get(), "abort", &abort_def);
  }
  if (!config.allow_fork) {
    replace(os.get(), posix.get(), "fork", &fork_def);
    replace(os.get(), posix.get(), "forkpty", &forkpty_def);
  }
}

}  // namespace isola::detail
