// A multi-phase init extension module with no Py_mod_multiple_interpreters slot: CPython takes
// it as supported in subinterpreters that share the main GIL only, and refuses it in own-GIL ones.
#include <Python.h>

namespace {
PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }

PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, "answer() -> 42"},
                         {nullptr, nullptr, 0, nullptr}};

PyModuleDef_Slot slots[] = {{0, nullptr}};

PyModuleDef def = {PyModuleDef_HEAD_INIT, "isola_ext_multi_noslot", nullptr, 0, methods,
                   slots, nullptr, nullptr, nullptr};
}  // namespace

extern "C" PyMODINIT_FUNC PyInit_isola_ext_multi_noslot() { return PyModuleDef_Init(&def); }
