// The builtin `isola` module: multi-phase init, per-interpreter-GIL safe, no GIL needed on
// free-threaded 3.13. Core functions: interpreter_id() and log(level, msg).
#include "lib/module.hpp"

#include "lib/py.hpp"

#include <isola/log.hpp>
#include <isola/version.hpp>

#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace isola::detail {
namespace {

std::vector<module_part>& parts() {
  static std::vector<module_part> p;
  return p;
}

std::vector<python_submodule>& submodules() {
  static std::vector<python_submodule> s;
  return s;
}

/// Full names ("isola.queues") for the inittab, which keeps the pointers.
std::vector<std::string>& submodule_names() {
  static std::vector<std::string> n;
  return n;
}

PyObject* interpreter_id(PyObject*, PyObject*) {
  return PyLong_FromLongLong(PyInterpreterState_GetID(PyInterpreterState_Get()));
}

PyObject* log(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_Format(PyExc_TypeError, "isola.log(level, message) takes 2 arguments (%zd given)", nargs);
    return nullptr;
  }
  spdlog::level::level_enum level;
  if (PyLong_Check(args[0])) {
    long n = PyLong_AsLong(args[0]);  // the logging module's numbers
    if (n == -1 && PyErr_Occurred()) return nullptr;
    level = n >= 50   ? spdlog::level::critical
            : n >= 40 ? spdlog::level::err
            : n >= 30 ? spdlog::level::warn
            : n >= 20 ? spdlog::level::info
            : n >= 10 ? spdlog::level::debug
                      : spdlog::level::trace;
  } else if (PyUnicode_Check(args[0])) {
    std::string name = py::to_string(args[0]);
    if (name == "warning") name = "warn";
    if (name == "error") name = "err";
    level = spdlog::level::from_str(name);
    if (level == spdlog::level::off) {
      PyErr_Format(PyExc_ValueError,
                   "isola.log: unknown level %R; use 'debug', 'info', 'warning', 'error', "
                   "'critical' or a logging level number",
                   args[0]);
      return nullptr;
    }
  } else {
    PyErr_Format(PyExc_TypeError, "isola.log: level must be str or int, not %s",
                 Py_TYPE(args[0])->tp_name);
    return nullptr;
  }
  std::string msg = py::to_string(args[1]);
  auto id = PyInterpreterState_GetID(PyInterpreterState_Get());
  // Release the GIL around the call: it only queues the line, but other threads of this
  // interpreter need not wait for even that.
  Py_BEGIN_ALLOW_THREADS
  logger("isola.python")->log(level, "[interp {}] {}", id, msg);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// Calls f(const lazy_attribute&) for every part's lazy attributes until it returns true;
// returns that attribute, or nullptr.
template <typename F>
const lazy_attribute* find_lazy_if(F&& f) {
  for (const auto& part : parts()) {
    for (const lazy_attribute* a = part.lazy; a != nullptr && a->name != nullptr; ++a) {
      if (f(*a)) return a;
    }
  }
  return nullptr;
}

// Module-level __getattr__ (PEP 562): called for names the module's dict lacks. `make`
// adds what is missing (and leaves what is there), so the attribute is then in the dict.
PyObject* module_getattr(PyObject* m, PyObject* name) {
  if (!PyUnicode_Check(name)) {
    PyErr_Format(PyExc_TypeError, "attribute name must be str, not %s", Py_TYPE(name)->tp_name);
    return nullptr;
  }
  Py_ssize_t size = 0;
  const char* utf8 = PyUnicode_AsUTF8AndSize(name, &size);
  if (utf8 == nullptr) return nullptr;
  const std::string_view wanted(utf8, static_cast<size_t>(size));
  const lazy_attribute* a = find_lazy_if([&](const lazy_attribute& l) { return wanted == l.name; });
  if (a == nullptr) {
    for (const auto& sub : submodules()) {
      // Importing it sets the attribute on the package, as for any submodule.
      if (wanted == sub.name) return import_submodule(sub.name);
    }
    PyErr_Format(PyExc_AttributeError, "module 'isola' has no attribute %R", name);
    return nullptr;
  }
  if (a->make(m) < 0) return nullptr;
  PyObject* value = PyDict_GetItemWithError(PyModule_GetDict(m), name);  // borrowed
  if (value == nullptr && !PyErr_Occurred()) {
    PyErr_Format(PyExc_RuntimeError, "isola: making attribute %R did not add it", name);
  }
  return Py_XNewRef(value);
}

// Module-level __dir__: the dict's names plus the lazy ones not made yet.
PyObject* module_dir(PyObject* m, PyObject*) {
  py::object names = py::steal(PyDict_Keys(PyModule_GetDict(m)));
  if (!names) return nullptr;
  bool failed = false;
  auto add = [&](const char* name) {
    py::object n = py::steal(PyUnicode_FromString(name));
    const int present = n ? PySequence_Contains(names.get(), n.get()) : -1;
    failed = present < 0 || (present == 0 && PyList_Append(names.get(), n.get()) < 0);
    return failed;
  };
  find_lazy_if([&](const lazy_attribute& l) { return add(l.name); });
  for (const auto& sub : submodules()) {
    if (failed || add(sub.name)) break;
  }
  if (failed || PyList_Sort(names.get()) < 0) return nullptr;
  return names.release();
}

PyMethodDef core_methods[] = {
    {"__getattr__", module_getattr, METH_O,
     "__getattr__(name)\n\nMakes isola's attributes that are made on first use (they need "
     "other modules, which an interpreter should not import just by starting)."},
    {"__dir__", module_dir, METH_NOARGS, "__dir__() -> list\n\nThe module's names."},
    {"interpreter_id", interpreter_id, METH_NOARGS,
     "interpreter_id() -> int\n\nThe id of the interpreter this code runs in (0 is the main "
     "interpreter); the same id isola's C++ API and log lines use."},
    {"log", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(log)), METH_FASTCALL,
     "log(level, message)\n\nWrites a line to isola's log (logger 'isola.python'), tagged with "
     "this interpreter's id. level: 'debug', 'info', 'warning', 'error', 'critical' or a "
     "logging module number."},
    {nullptr, nullptr, 0, nullptr}};

module_part_registrar core_part({"core", core_methods, nullptr});

// __all__: the public names, the lazy ones included, so that `from isola import *` gets
// those too (it looks each one up, which makes it).
int add_all(PyObject* m) {
  py::object names = py::steal(module_dir(m, nullptr));
  if (!names) return -1;
  py::object all = py::steal(PyList_New(0));
  if (!all) return -1;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names.get()); ++i) {
    PyObject* n = PyList_GET_ITEM(names.get(), i);  // borrowed
    if (PyUnicode_READ_CHAR(n, 0) == '_') continue;
    if (PyList_Append(all.get(), n) < 0) return -1;
  }
  return PyModule_AddObjectRef(m, "__all__", all.get());
}

int exec_module(PyObject* m) {
  for (const auto& part : parts()) {
    if (part.methods != nullptr && PyModule_AddFunctions(m, part.methods) < 0) return -1;
    if (part.exec != nullptr && part.exec(m) < 0) return -1;
  }
  if (PyModule_AddStringConstant(m, "__version__", ISOLA_VERSION) < 0) return -1;
  // A package, so that `import isola.queues` looks for the submodule: the builtin importer
  // finds it in the inittab.
  py::object path = py::steal(PyList_New(0));
  if (!path || PyModule_AddObjectRef(m, "__path__", path.get()) < 0) return -1;
  return add_all(m);
}

// A submodule's exec: runs its source in its namespace.
int exec_submodule(PyObject* m) {
  const char* name = PyModule_GetName(m);
  if (name == nullptr) return -1;
  for (const auto& sub : submodules()) {
    if (std::string_view(name) != std::string("isola.") + sub.name) continue;
    PyObject* dict = PyModule_GetDict(m);  // borrowed
    if (PyDict_SetItemString(dict, "__builtins__", PyEval_GetBuiltins()) < 0) return -1;
    const std::string file = std::string("<") + name + ">";  // for tracebacks
    py::object code = py::steal(Py_CompileString(sub.source, file.c_str(), Py_file_input));
    if (!code) return -1;
    py::object r = py::steal(PyEval_EvalCode(code.get(), dict, dict));
    return r ? 0 : -1;
  }
  PyErr_Format(PyExc_ImportError, "isola has no submodule named %s", name);
  return -1;
}

PyModuleDef_Slot submodule_slots[] = {
    {Py_mod_exec, reinterpret_cast<void*>(exec_submodule)},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, nullptr}};

PyModuleDef submodule_def = {
    PyModuleDef_HEAD_INIT, "isola.submodule", nullptr, 0, nullptr, submodule_slots,
    nullptr,               nullptr,           nullptr,
};

PyObject* init_submodule() { return PyModuleDef_Init(&submodule_def); }

PyModuleDef_Slot slots[] = {
    {Py_mod_exec, reinterpret_cast<void*>(exec_module)},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, nullptr}};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "isola",
    "isola: the host process's services for this interpreter (ids, logging, channels, shared "
    "values).",
    0,
    nullptr,
    slots,
    nullptr,
    nullptr,
    nullptr,
};

PyObject* init_isola() { return PyModuleDef_Init(&module_def); }

}  // namespace

void register_module_part(const module_part& part) { parts().push_back(part); }

void register_submodule(const python_submodule& sub) { submodules().push_back(sub); }

PyObject* import_submodule(const char* name) {
  const std::string full = std::string("isola.") + name;
  return PyImport_ImportModule(full.c_str());
}

void add_isola_to_inittab() {
  if (PyImport_AppendInittab("isola", init_isola) != 0) {
    throw std::runtime_error("isola: could not add the 'isola' module to CPython's inittab");
  }
  // Made once: the inittab keeps pointers into these strings (Py_Finalize drops the entries
  // added, so a later runtime adds them again).
  auto& names = submodule_names();
  if (names.empty()) {
    for (const auto& sub : submodules()) names.push_back(std::string("isola.") + sub.name);
  }
  for (const auto& name : names) {
    if (PyImport_AppendInittab(name.c_str(), init_submodule) != 0) {
      throw std::runtime_error("isola: could not add '" + name + "' to CPython's inittab");
    }
  }
}

}  // namespace isola::detail
