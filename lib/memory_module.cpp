// isola.memory(): what this interpreter holds, from Python.
#include "lib/memory.hpp"
#include "lib/module.hpp"

namespace isola::detail {
namespace {

PyStructSequence_Field usage_fields[] = {
    {"bytes", "bytes this interpreter holds now"},
    {"peak", "the most it has held since it was created"},
    {"limit", "its hard limit (MemoryError past it), 0 if none"},
    {"refused", "allocations the limit refused since it was created"},
    {nullptr, nullptr}};

PyStructSequence_Desc usage_desc = {
    "isola.MemoryUsage",
    "What an interpreter holds, as isola counts it: its object allocator arenas and the large "
    "blocks and buffers it allocated (see isola's docs/memory.md).",
    usage_fields, 4};

PyObject* memory(PyObject* m, PyObject*) {
  memory::context* c = memory::current();
  if (c == nullptr) {
    PyErr_SetString(PyExc_RuntimeError,
                    "isola.memory(): memory accounting is off in this process "
                    "(isola::runtime_options::memory_accounting was false at start-up)");
    return nullptr;
  }
  const memory_usage u = memory::read(*c);
  PyObject* type = PyObject_GetAttrString(m, "MemoryUsage");
  if (type == nullptr) return nullptr;
  if (!PyType_Check(type)) {
    Py_DECREF(type);
    PyErr_SetString(PyExc_TypeError, "isola.MemoryUsage has been replaced");
    return nullptr;
  }
  PyObject* r = PyStructSequence_New(reinterpret_cast<PyTypeObject*>(type));
  Py_DECREF(type);
  if (r == nullptr) return nullptr;
  const unsigned long long values[] = {u.bytes, u.peak, u.limit, u.refused};
  for (Py_ssize_t i = 0; i < 4; ++i) {
    PyObject* v = PyLong_FromUnsignedLongLong(values[i]);
    if (v == nullptr) {
      Py_DECREF(r);
      return nullptr;
    }
    PyStructSequence_SetItem(r, i, v);
  }
  return r;
}

int exec_memory(PyObject* m) {
  PyTypeObject* type = PyStructSequence_NewType(&usage_desc);
  if (type == nullptr) return -1;
  const int rc = PyModule_AddObjectRef(m, "MemoryUsage", reinterpret_cast<PyObject*>(type));
  Py_DECREF(type);
  return rc;
}

PyMethodDef memory_methods[] = {
    {"memory", memory, METH_NOARGS,
     "memory() -> isola.MemoryUsage\n\nWhat this interpreter holds now (bytes), the most it "
     "has held (peak), its hard limit (limit, 0 if none) and how many allocations that limit "
     "refused (refused). Counted by isola's allocator hooks: the object allocator's arenas "
     "and the large blocks and buffers allocated while this interpreter's code ran; memory "
     "that C libraries take with malloc directly is not counted. RuntimeError if the host "
     "turned accounting off."},
    {nullptr, nullptr, 0, nullptr}};

module_part_registrar memory_part({"memory", memory_methods, exec_memory});

}  // namespace
}  // namespace isola::detail
