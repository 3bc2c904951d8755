// isola._interrupt_thread and isola._memory_held: what code that runs its own threads inside
// an interpreter (isola serve's handler threads) needs to time them out and to watch the
// interpreter's memory, as the pool does for its tasks.
#include "lib/python.hpp"

#include "lib/memory.hpp"
#include "lib/module.hpp"
#include "lib/pyexec.hpp"
#include "lib/state.hpp"

#include <string>

namespace isola::detail {
namespace {

std::shared_ptr<interp_state> current_state() {
  return find_interp(PyInterpreterState_GetID(PyInterpreterState_Get()));
}

// _interrupt_thread(ident, exception): see the doc string below.
PyObject* interrupt_thread(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_Format(PyExc_TypeError,
                 "isola._interrupt_thread takes 2 arguments (ident, exception), not %zd", nargs);
    return nullptr;
  }
  const unsigned long ident = PyLong_AsUnsignedLong(args[0]);
  if (ident == static_cast<unsigned long>(-1) && PyErr_Occurred()) return nullptr;
  PyObject* exc = nullptr;  // None: clear a pending interrupt
  if (args[1] != Py_None) {
    if (!PyUnicode_Check(args[1])) {
      PyErr_Format(PyExc_TypeError,
                   "isola._interrupt_thread: exception must be a name such as "
                   "'isola.TaskTimeout', or None, not %s",
                   Py_TYPE(args[1])->tp_name);
      return nullptr;
    }
    Py_ssize_t n = 0;
    const char* name = PyUnicode_AsUTF8AndSize(args[1], &n);
    if (name == nullptr) return nullptr;
    exc = find_exception_class(std::string_view(name, static_cast<std::size_t>(n)));
    if (exc == nullptr) {
      PyErr_Format(PyExc_ValueError, "isola._interrupt_thread: unknown exception %R", args[1]);
      return nullptr;
    }
  }
  // Only threads of this interpreter are searched (CPython looks in the current one).
  const int found = PyThreadState_SetAsyncExc(ident, exc);
  if (found != 0 && exc != nullptr) {
    if (auto s = current_state()) nudge_sleeps(*s);  // a sleeping target wakes
  }
  return PyBool_FromLong(found != 0);
}

PyObject* memory_held(PyObject*, PyObject*) {
  auto s = current_state();
  if (!s) Py_RETURN_NONE;
  {
    std::lock_guard lock(s->mu);
    if (s->memory == nullptr) Py_RETURN_NONE;
  }
  return PyLong_FromSize_t(memory_of(*s).bytes);
}

PyMethodDef thread_methods[] = {
    {"_interrupt_thread", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(interrupt_thread)),
     METH_FASTCALL,
     "_interrupt_thread(ident, exception)\n\nRaises the exception named (e.g. "
     "'isola.TaskTimeout') in this interpreter's thread `ident` as soon as it runs Python "
     "code, and wakes it from an isola time.sleep; with None, clears an exception still "
     "pending there. Returns whether the thread was found."},
    {"_memory_held", memory_held, METH_NOARGS,
     "_memory_held()\n\nThe bytes this interpreter holds (isola's accounting), or None when "
     "memory accounting is off."},
    {nullptr, nullptr, 0, nullptr}};

module_part_registrar threads_part({"threads", thread_methods, nullptr});

}  // namespace
}  // namespace isola::detail
