// A single-phase init extension module (PyModule_Create): the kind CPython refuses in own-GIL
// interpreters. Its counter is C global state, shared by every interpreter that loads it.
#include <Python.h>

namespace {
long counter = 0;

PyObject* bump(PyObject*, PyObject*) { return PyLong_FromLong(++counter); }

PyMethodDef methods[] = {{"bump", bump, METH_NOARGS, "bump() -> int: the process-wide counter, plus one"},
                         {nullptr, nullptr, 0, nullptr}};

PyModuleDef def = {PyModuleDef_HEAD_INIT, "isola_ext_single", nullptr, -1, methods,
                   nullptr, nullptr, nullptr, nullptr};
}  // namespace

extern "C" PyMODINIT_FUNC PyInit_isola_ext_single() { return PyModule_Create(&def); }
