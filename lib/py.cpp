// Small helpers over the C API shared by every part: string conversion, type names, raising.
#include "lib/py.hpp"

namespace isola::detail::py {

std::string to_string(PyObject* o) noexcept {
  if (o == nullptr) return "<NULL>";
  PyObject* s = PyObject_Str(o);
  if (s == nullptr) {
    PyErr_Clear();
    return "<unprintable " + type_name(Py_TYPE(o)) + ">";
  }
  Py_ssize_t n = 0;
  const char* u = PyUnicode_AsUTF8AndSize(s, &n);
  std::string out;
  if (u != nullptr) {
    out.assign(u, static_cast<std::size_t>(n));
  } else {
    PyErr_Clear();
    PyObject* b = PyUnicode_AsEncodedString(s, "utf-8", "backslashreplace");
    if (b != nullptr) {
      out.assign(PyBytes_AS_STRING(b), static_cast<std::size_t>(PyBytes_GET_SIZE(b)));
      Py_DECREF(b);
    } else {
      PyErr_Clear();
      out = "<unprintable>";
    }
  }
  Py_DECREF(s);
  return out;
}

std::string type_name(PyTypeObject* t) noexcept {
  if (t == nullptr) return "<NULL>";
  PyObject* mod = PyObject_GetAttrString(reinterpret_cast<PyObject*>(t), "__module__");
  PyObject* qual = PyObject_GetAttrString(reinterpret_cast<PyObject*>(t), "__qualname__");
  std::string out;
  if (mod != nullptr && qual != nullptr && PyUnicode_Check(mod) && PyUnicode_Check(qual)) {
    const char* m = PyUnicode_AsUTF8(mod);
    const char* q = PyUnicode_AsUTF8(qual);
    if (m != nullptr && q != nullptr) {
      out = std::string_view(m) == "builtins" ? std::string(q) : std::string(m) + "." + q;
    }
  }
  Py_XDECREF(mod);
  Py_XDECREF(qual);
  if (out.empty()) {
    PyErr_Clear();
    out = t->tp_name;
  }
  return out;
}

void raise(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw error_already_set{};
}

}  // namespace isola::detail::py
