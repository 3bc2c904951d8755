// What `isola compat`'s children do in the main interpreter, through CPython's C API: turn on
// faulthandler, and (`--child-inspect MODULE`) find why CPython refuses a module in own-GIL
// interpreters, read from the module itself. It is imported in the main interpreter (which
// loads any extension), and its PyModuleDef says how it initialises: no slots is single-phase
// init; with slots (multi-phase, PEP 489), the Py_mod_multiple_interpreters slot says what it
// declared (PEP 684). A separate process: a refused single-phase module may already have run
// its init in the probe's interpreters.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "tools/compat/child_report.hpp"
#include "tools/compat/compat.hpp"

#include <isola/attach.hpp>
#include <isola/log.hpp>
#include <isola/runtime.hpp>

#include <string>

namespace isola::cli::compat {
namespace {

std::string str_of(PyObject* o) {
  if (o == nullptr) return {};
  PyObject* s = PyObject_Str(o);
  const char* text = s != nullptr ? PyUnicode_AsUTF8(s) : nullptr;
  std::string out = text != nullptr ? text : "(unprintable)";
  Py_XDECREF(s);
  PyErr_Clear();
  return out;
}

/// What `import name` in the main interpreter gives, as JSON fields. Needs the GIL.
boost::json::object inspect(const std::string& name) {
  boost::json::object r;
  PyObject* module = PyImport_ImportModule(name.c_str());
  if (module == nullptr) {
    PyObject* exc = PyErr_GetRaisedException();
    r["main_import"] = "raised";
    r["type"] = exc != nullptr ? Py_TYPE(exc)->tp_name : "";
    r["message"] = str_of(exc);
    Py_XDECREF(exc);
    return r;
  }
  r["main_import"] = "ok";
  PyModuleDef* def = PyModule_Check(module) ? PyModule_GetDef(module) : nullptr;
  PyErr_Clear();
  if (def == nullptr) {
    r["init"] = "python";  // no PyModuleDef: not an extension module
  } else if (def->m_slots == nullptr) {
    r["init"] = "single-phase";
  } else {
    r["init"] = "multi-phase";
    std::string declared = "not declared";
    for (PyModuleDef_Slot* s = def->m_slots; s->slot != 0; ++s) {
      if (s->slot != Py_mod_multiple_interpreters) continue;
      if (s->value == Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED) {
        declared = "not supported";
      } else if (s->value == Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED) {
        declared = "supported";
      } else if (s->value == Py_MOD_PER_INTERPRETER_GIL_SUPPORTED) {
        declared = "per-interpreter GIL";
      }
    }
    r["multiple_interpreters"] = declared;
  }
  Py_DECREF(module);
  return r;
}

}  // namespace

void enable_faulthandler(const runtime& rt) {
  auto guard = attach(rt.main_interpreter()).value();
  if (PyRun_SimpleString("import faulthandler\nfaulthandler.enable(all_threads=True)\n") != 0) {
    throw std::runtime_error("compat: could not enable faulthandler in the main interpreter");
  }
}

int run_inspect_child(const child_options& o) {
  child_report report(o.report);
  try {
    runtime_options ro;
    if (!o.path.empty()) ro.sys_path.push_back(o.path);
    runtime rt(ro);
    boost::json::object r;
    {
      auto guard = attach(rt.main_interpreter()).value();
      r = inspect(o.module);
    }
    report.line(r);
  } catch (const std::exception& e) {
    report.error("inspect", e.what());
    flush_logs();
    return 1;
  }
  flush_logs();
  return 0;
}

}  // namespace isola::cli::compat
