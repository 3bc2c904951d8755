// Running code and converting exceptions; see pyexec.hpp.
#include "lib/pyexec.hpp"

#include <string>

namespace isola::detail {

python_error fetch_python_error() noexcept {
  PyObject* exc = PyErr_GetRaisedException();
  if (exc == nullptr) return python_error("SystemError", "error reported but no exception set", "");
  auto owned = py::steal(exc);
  std::string type = py::type_name(Py_TYPE(exc));
  std::string message = py::to_string(exc);
  std::string file;
  long line = 0, column = 0;

  if (PyErr_GivenExceptionMatches(exc, PyExc_SyntaxError)) {
    auto get = [&](const char* name) { return py::steal(PyObject_GetAttrString(exc, name)); };
    if (auto f = get("filename"); f && f.get() != Py_None) file = py::to_string(f.get());
    if (auto l = get("lineno"); l && PyLong_Check(l.get())) line = PyLong_AsLong(l.get());
    if (auto o = get("offset"); o && PyLong_Check(o.get())) column = PyLong_AsLong(o.get());
    if (auto m = get("msg"); m && m.get() != Py_None) message = py::to_string(m.get());
    PyErr_Clear();
  } else if (PyErr_GivenExceptionMatches(exc, PyExc_SystemExit)) {
    auto code = py::steal(PyObject_GetAttrString(exc, "code"));
    message = "exit code " + (code ? py::to_string(code.get()) : std::string("None"));
    PyErr_Clear();
  }

  std::string tb;
  PyObject* mod = PyImport_ImportModule("traceback");
  if (mod != nullptr) {
    PyObject* lines = PyObject_CallMethod(mod, "format_exception", "O", exc);
    if (lines != nullptr) {
      PyObject* empty = PyUnicode_FromString("");
      PyObject* joined = empty ? PyUnicode_Join(empty, lines) : nullptr;
      if (joined != nullptr) tb = py::to_string(joined);
      Py_XDECREF(joined);
      Py_XDECREF(empty);
      Py_DECREF(lines);
    }
    Py_DECREF(mod);
  }
  if (PyErr_Occurred()) PyErr_Clear();
  if (tb.empty()) tb = message.empty() ? type + "\n" : type + ": " + message + "\n";
  return python_error(std::move(type), std::move(message), std::move(tb), std::move(file), line,
                      column);
}

py::object main_globals() {
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  PyObject* main = PyDict_GetItemString(modules, "__main__");
  if (main == nullptr) {
    main = PyImport_AddModule("__main__");  // borrowed
    if (main == nullptr) throw py::error_already_set{};
  }
  return py::borrow(PyModule_GetDict(main));
}

py::object run_source(std::string_view source, const char* filename, int mode,
                      PyObject* globals) {
  std::string text(source);  // the compiler needs NUL termination
  if (text.find('\0') != std::string::npos) {
    py::raise(PyExc_ValueError, std::string("source code for ") + filename +
                                    " contains a NUL byte");
  }
  auto code = py::check(Py_CompileStringExFlags(text.c_str(), filename, mode, nullptr, -1));
  return py::check(PyEval_EvalCode(code.get(), globals, globals));
}

py::object resolve_target(std::string_view target) {
  std::string_view module_name, attr_path;
  if (auto colon = target.find(':'); colon != std::string_view::npos) {
    module_name = target.substr(0, colon);
    attr_path = target.substr(colon + 1);
  } else if (auto dot = target.rfind('.'); dot != std::string_view::npos) {
    module_name = target.substr(0, dot);
    attr_path = target.substr(dot + 1);
  }
  if (module_name.empty() || attr_path.empty()) {
    py::raise(PyExc_ValueError, "call target '" + std::string(target) +
                                    "' is not of the form 'package.module:function'");
  }
  auto obj = py::import(std::string(module_name).c_str());
  while (!attr_path.empty()) {
    auto dot = attr_path.find('.');
    std::string part(attr_path.substr(0, dot));
    obj = py::getattr(obj.get(), part.c_str());
    attr_path = dot == std::string_view::npos ? std::string_view{} : attr_path.substr(dot + 1);
  }
  return obj;
}

PyObject* find_exception_class(std::string_view name) noexcept {
  PyObject* found = nullptr;  // borrowed
  if (auto dot = name.rfind('.'); dot == std::string_view::npos) {
    found = PyDict_GetItemString(PyEval_GetBuiltins(), std::string(name).c_str());
  } else {
    py::object mod_name = py::steal(
        PyUnicode_FromStringAndSize(name.data(), static_cast<Py_ssize_t>(dot)));
    py::object mod = mod_name ? py::steal(PyImport_GetModule(mod_name.get())) : py::object{};
    if (mod) {
      py::object cls = py::steal(PyObject_GetAttrString(mod.get(), std::string(name.substr(dot + 1)).c_str()));
      found = cls.get();  // kept alive by the module
    }
  }
  if (PyErr_Occurred()) PyErr_Clear();
  return found != nullptr && PyExceptionClass_Check(found) ? found : nullptr;
}

}  // namespace isola::detail
