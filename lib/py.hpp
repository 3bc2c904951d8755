// Owning references to Python objects and the helpers that turn the C API's
// "NULL or -1 with an exception set" into a C++ exception.
#pragma once

#include "lib/python.hpp"

#include <string>
#include <string_view>
#include <utility>

namespace isola::detail::py {

/// Thrown when a C API call failed and left a Python exception set in the current thread
/// state. The boundary (run_in_interp) turns it into isola::python_error.
struct error_already_set {};

/// An owning reference: copy increfs, move steals, destructor decrefs. Built only through
/// steal() or borrow(), so every call site shows who owns the reference.
class object {
 public:
  object() noexcept = default;
  object(const object& o) noexcept : p_(Py_XNewRef(o.p_)) {}
  object(object&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  object& operator=(object o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~object() { Py_XDECREF(p_); }

  PyObject* get() const noexcept { return p_; }
  /// Gives up ownership: the caller now owns the reference.
  PyObject* release() noexcept { return std::exchange(p_, nullptr); }
  explicit operator bool() const noexcept { return p_ != nullptr; }

  friend object steal(PyObject* p) noexcept;
  friend object borrow(PyObject* p) noexcept;

 private:
  PyObject* p_ = nullptr;
};

/// Takes over a new reference (as returned by most C API calls).
inline object steal(PyObject* p) noexcept {
  object o;
  o.p_ = p;
  return o;
}
/// Adds a reference to a borrowed one.
inline object borrow(PyObject* p) noexcept {
  object o;
  o.p_ = Py_XNewRef(p);
  return o;
}

/// steal(p), throwing error_already_set if p is NULL.
inline object check(PyObject* p) {
  if (p == nullptr) throw error_already_set{};
  return steal(p);
}
inline void check_zero(int rc) {
  if (rc != 0) throw error_already_set{};
}
inline void check_nonneg(int rc) {
  if (rc < 0) throw error_already_set{};
}

inline object str(std::string_view s) {
  return check(PyUnicode_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())));
}
inline object import(const char* name) { return check(PyImport_ImportModule(name)); }
inline object getattr(PyObject* o, const char* name) {
  return check(PyObject_GetAttrString(o, name));
}

/// str(o) as UTF-8; "<unprintable T>" if str() itself fails (the error is cleared).
std::string to_string(PyObject* o) noexcept;
/// "ValueError" for builtins, "module.QualName" otherwise.
std::string type_name(PyTypeObject* t) noexcept;

/// Raises a Python exception of the given type with a formatted message and throws
/// error_already_set.
[[noreturn]] void raise(PyObject* type, const std::string& message);

}  // namespace isola::detail::py
