// A multi-phase init extension module that declares Py_MOD_PER_INTERPRETER_GIL_SUPPORTED: it
// loads in own-GIL interpreters under every policy. Its state lives in the module object.
#include <Python.h>

namespace {
struct state {
  long counter;
};

PyObject* bump(PyObject* m, PyObject*) {
  auto* s = static_cast<state*>(PyModule_GetState(m));
  return PyLong_FromLong(++s->counter);
}

PyMethodDef methods[] = {{"bump", bump, METH_NOARGS, "bump() -> int: this module's counter, plus one"},
                         {nullptr, nullptr, 0, nullptr}};

int exec(PyObject* m) {
  static_cast<state*>(PyModule_GetState(m))->counter = 0;
  return 0;
}

PyModuleDef_Slot slots[] = {
    {Py_mod_exec, reinterpret_cast<void*>(exec)},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
    {0, nullptr}};

PyModuleDef def = {PyModuleDef_HEAD_INIT, "isola_ext_pergil", nullptr, sizeof(state), methods,
                   slots, nullptr, nullptr, nullptr};
}  // namespace

extern "C" PyMODINIT_FUNC PyInit_isola_ext_pergil() { return PyModuleDef_Init(&def); }
