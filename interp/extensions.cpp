// The extension policy inside an own-GIL interpreter (interp/py/extension_policy.py does the
// import side), and what `isola` offers about it: isola.extension_policy(),
// isola.UnsafeExtensionWarning, and why a module was refused (read in the main interpreter).
#include "interp/extensions.hpp"

#include "interp/py/extension_policy.py.hpp"
#include "lib/module.hpp"
#include "lib/py.hpp"
#include "lib/pyexec.hpp"
#include "lib/state.hpp"

#include <isola/attach.hpp>
#include <isola/runtime.hpp>

#include <string>

namespace isola::detail {

const char* policy_name(extension_policy p) noexcept {
  switch (p) {
    case extension_policy::strict: return "strict";
    case extension_policy::shared_gil: return "shared-gil";
    case extension_policy::unsafe: return "unsafe";
    case extension_policy::automatic: return "auto";
  }
  return "strict";
}

namespace {

// Why an extension module does not declare per-interpreter GIL support, from its PyModuleDef.
std::string kind_of_def(PyModuleDef* def) {
  // A multi-phase module always keeps its definition; a single-phase one that CPython gives
  // from its cache of loaded extensions (the copy made when it was first loaded) has none.
  if (def == nullptr || def->m_slots == nullptr) {
    return "it uses single-phase init (PyModule_Create), whose state lives in C globals that "
           "every interpreter would share";
  }
  for (PyModuleDef_Slot* s = def->m_slots; s->slot != 0; ++s) {
    if (s->slot != Py_mod_multiple_interpreters) continue;
    if (s->value == Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED) {
      return "it uses multi-phase init and declares that it does not support subinterpreters "
             "(Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED)";
    }
    return "it uses multi-phase init but supports only interpreters that share the main GIL "
           "(Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED, not Py_MOD_PER_INTERPRETER_GIL_SUPPORTED)";
  }
  return "it uses multi-phase init but has no Py_mod_multiple_interpreters slot, which means "
         "it supports only interpreters that share the main GIL (it does not declare "
         "Py_MOD_PER_INTERPRETER_GIL_SUPPORTED)";
}

// isola._extension_kind(name, origin) -> str: made in the main interpreter, which loads any
// extension (CPython 3.13 runs every extension's init there first anyway).
PyObject* extension_kind(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "_extension_kind(name: str, origin: str)");
    return nullptr;
  }
  const std::string name = py::to_string(args[0]);
  const std::string origin = py::to_string(args[1]);
  std::string kind = "it uses single-phase init or does not declare "
                     "Py_MOD_PER_INTERPRETER_GIL_SUPPORTED";
  {
    auto guard = attach(interpreter_handle(runtime().main));
    if (guard) {
      try {
        kind = with_python_errors([&] {
          PyObject* modules = PyImport_GetModuleDict();  // borrowed
          py::object mod = py::borrow(PyDict_GetItemString(modules, name.c_str()));
          if (!mod) {
            auto machinery = py::import("importlib.machinery");
            auto spec_type = py::getattr(machinery.get(), "ModuleSpec");
            auto call_args = py::check(Py_BuildValue("(sO)", name.c_str(), Py_None));
            auto kwargs = py::check(Py_BuildValue("{ss}", "origin", origin.c_str()));
            auto spec = py::check(PyObject_Call(spec_type.get(), call_args.get(), kwargs.get()));
            auto imp = py::import("_imp");
            // A module compiled into CPython has the origin "built-in".
            auto create = py::getattr(
                imp.get(), origin == "built-in" ? "create_builtin" : "create_dynamic");
            mod = py::check(PyObject_CallOneArg(create.get(), spec.get()));
          }
          return kind_of_def(PyModule_Check(mod.get()) ? PyModule_GetDef(mod.get()) : nullptr);
        });
      } catch (const std::exception&) {
        // The module did not load even in the main interpreter: keep the general reason.
      }
    }
  }
  return PyUnicode_FromStringAndSize(kind.data(), static_cast<Py_ssize_t>(kind.size()));
}

// isola.extension_policy() -> str
PyObject* current_policy(PyObject*, PyObject*) {
  auto s = find_interp(PyInterpreterState_GetID(PyInterpreterState_Get()));
  const char* name = s == nullptr ? "strict" : s->is_main ? "main" : s->extension_policy.c_str();
  if (s != nullptr && !s->is_main && s->extension_policy.empty()) name = "strict";
  return PyUnicode_FromString(name);
}

int exec_extensions(PyObject* m) {
  PyObject* w = PyErr_NewExceptionWithDoc(
      "isola.UnsafeExtensionWarning",
      "An extension module that does not declare per-interpreter GIL support was loaded into "
      "an own-GIL interpreter under isola's unsafe extension policy.",
      PyExc_RuntimeWarning, nullptr);
  if (w == nullptr) return -1;
  const int rc = PyModule_AddObjectRef(m, "UnsafeExtensionWarning", w);
  Py_DECREF(w);
  return rc;
}

PyMethodDef extension_methods[] = {
    {"extension_policy", current_policy, METH_NOARGS,
     "extension_policy() -> str\n\nThe extension policy of this interpreter: 'strict' (modules "
     "without per-interpreter GIL support are refused), 'unsafe' (loaded anyway, with "
     "isola.UnsafeExtensionWarning), 'shared-gil' (an interpreter of the shared-GIL lane: it "
     "loads any module) or 'main'."},
    {"_extension_kind", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(extension_kind)),
     METH_FASTCALL,
     "_extension_kind(name, origin) -> str\n\nWhy the extension module does not support "
     "per-interpreter GILs, read from its module definition in the main interpreter."},
    {nullptr, nullptr, 0, nullptr}};

module_part_registrar extensions_part({"extensions", extension_methods, exec_extensions});

}  // namespace

void install_extension_policy(const interpreter_config& config) {
  if (config.gil == interpreter_config::gil_mode::shared) return;  // loads any module
  auto g = py::check(PyDict_New());
  py::check_zero(PyDict_SetItemString(g.get(), "__builtins__", PyEval_GetBuiltins()));
  run_source(embedded::extension_policy, "<isola extension policy>", Py_file_input, g.get());
  PyObject* install = PyDict_GetItemString(g.get(), "install");  // borrowed
  if (install == nullptr) py::raise(PyExc_RuntimeError, "extension policy: install() missing");
  auto unsafe = py::check(PyFrozenSet_New(nullptr));
  for (const auto& m : config.unsafe_extensions) {
    py::check_zero(PySet_Add(unsafe.get(), py::str(m).get()));
  }
  auto isola_mod = py::import("isola");
  auto kind = py::getattr(isola_mod.get(), "_extension_kind");
  auto warning = py::getattr(isola_mod.get(), "UnsafeExtensionWarning");
  auto policy = py::str(policy_name(config.extensions));
  py::check(PyObject_CallFunctionObjArgs(install, policy.get(), unsafe.get(), kind.get(),
                                         warning.get(), nullptr));
}

}  // namespace isola::detail
