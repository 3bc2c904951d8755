// A single-phase init extension module that keeps a Python object in C global state: every
// interpreter that loads it appends to the same list, created by whichever interpreter came
// first. This is the danger the strict policy guards against: with unsafe, two own-GIL
// interpreters touch one object's reference count without a common lock.
#include <Python.h>

namespace {
PyObject* seen = nullptr;  // the first loader's list, used by all

PyObject* note(PyObject*, PyObject* arg) {
  if (PyList_Append(seen, arg) < 0) return nullptr;
  return PyLong_FromSsize_t(PyList_GET_SIZE(seen));
}

PyMethodDef methods[] = {{"note", note, METH_O, "note(x) -> int: appends x to the process-wide list"},
                         {nullptr, nullptr, 0, nullptr}};

PyModuleDef def = {PyModuleDef_HEAD_INIT, "isola_ext_global", nullptr, -1, methods,
                   nullptr, nullptr, nullptr, nullptr};
}  // namespace

extern "C" PyMODINIT_FUNC PyInit_isola_ext_global() {
  if (seen == nullptr && (seen = PyList_New(0)) == nullptr) return nullptr;
  return PyModule_Create(&def);
}
