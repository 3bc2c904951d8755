// isola::value <-> Python objects. Depth is bounded (value::max_depth) and cycles are found by
// keeping the containers on the current path, so no input can overflow the C++ stack.
#include "lib/value_codec.hpp"

#include <algorithm>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace isola::detail {
namespace {

// Error messages are joined with this rather than `"..." + std::string(...)`, which sets off a
// GCC 12 -Wrestrict false positive in release builds.
std::string join(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (std::string_view p : parts) s += p;
  return s;
}

struct decoder {
  std::vector<PyObject*> path;  // containers being converted, outermost first

  void enter(PyObject* o) {
    if (std::find(path.begin(), path.end(), o) != path.end()) {
      py::raise(PyExc_ValueError, join({"cannot convert a cyclic structure: a ",
                                        py::type_name(Py_TYPE(o)), " contains itself"}));
    }
    if (path.size() >= static_cast<std::size_t>(value::max_depth)) {
      py::raise(PyExc_ValueError, join({"cannot convert a structure nested deeper than ",
                                        std::to_string(value::max_depth), " levels"}));
    }
    path.push_back(o);
  }

  std::vector<value> items(PyObject* seq) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject** it = PySequence_Fast_ITEMS(seq);
    std::vector<value> out;
    out.reserve(static_cast<std::size_t>(n));
    // A list can change size while we recurse (a __del__ or nothing: our converters call no
    // Python code), so read the size each time.
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
      it = PySequence_Fast_ITEMS(seq);
      out.push_back(convert(it[i]));
    }
    return out;
  }

  value convert(PyObject* o) {
    if (o == Py_None) return none;
    if (PyBool_Check(o)) return o == Py_True;
    if (PyLong_CheckExact(o)) {
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
      if (overflow == 0) {
        if (v == -1 && PyErr_Occurred()) throw py::error_already_set{};
        return static_cast<std::int64_t>(v);
      }
      auto hex = py::check(PyNumber_ToBase(o, 16));  // "-0x1f"
      std::string s = py::to_string(hex.get());
      bool negative = s[0] == '-';
      std::string digits = negative ? "-" : "";
      digits.append(s, negative ? 3 : 2);  // without "0x" / "-0x"
      return big_int{std::move(digits)};
    }
    if (PyFloat_CheckExact(o)) return PyFloat_AS_DOUBLE(o);
    if (PyUnicode_CheckExact(o)) {
      Py_ssize_t n = 0;
      if (const char* u = PyUnicode_AsUTF8AndSize(o, &n)) {
        return std::string(u, static_cast<std::size_t>(n));
      }
      PyErr_Clear();  // lone surrogates: keep them, as Python's "surrogatepass" does
      auto b = py::check(PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass"));
      return std::string(PyBytes_AS_STRING(b.get()),
                         static_cast<std::size_t>(PyBytes_GET_SIZE(b.get())));
    }
    if (PyBytes_CheckExact(o)) {
      return bytes{std::string(PyBytes_AS_STRING(o), static_cast<std::size_t>(PyBytes_GET_SIZE(o)))};
    }
    if (PyTuple_CheckExact(o) || PyList_CheckExact(o)) {
      enter(o);
      std::vector<value> v = items(o);
      path.pop_back();
      if (PyTuple_CheckExact(o)) return tuple{std::move(v)};
      return list{std::move(v)};
    }
    if (PyDict_CheckExact(o)) {
      enter(o);
      dict d;
      d.items.reserve(static_cast<std::size_t>(PyDict_GET_SIZE(o)));
      Py_ssize_t pos = 0;
      PyObject *k = nullptr, *v = nullptr;
      while (PyDict_Next(o, &pos, &k, &v)) {
        auto key_ref = py::borrow(k);  // keep both alive across the recursive calls
        auto val_ref = py::borrow(v);
        value key = convert(k);
        d.items.emplace_back(std::move(key), convert(v));
      }
      path.pop_back();
      return d;
    }
    py::raise(PyExc_TypeError,
              join({"cannot convert an object of type '", py::type_name(Py_TYPE(o)),
                    "' to an isola value (supported: None, bool, int, float, str, bytes, tuple, "
                    "list, dict)"}));
  }
};

struct encoder {
  int depth = 0;

  py::object convert(const value& v) {
    return std::visit([&](const auto& x) { return convert_one(x); }, v.data());
  }

  py::object convert_one(none_t) { return py::borrow(Py_None); }
  py::object convert_one(bool b) { return py::borrow(b ? Py_True : Py_False); }
  py::object convert_one(std::int64_t i) { return py::check(PyLong_FromLongLong(i)); }
  py::object convert_one(const big_int& b) {
    bool negative = !b.hex.empty() && b.hex[0] == '-';
    std::string text = (negative ? "-0x" : "0x") + b.hex.substr(negative ? 1 : 0);
    return py::check(PyLong_FromString(text.c_str(), nullptr, 16));
  }
  py::object convert_one(double d) { return py::check(PyFloat_FromDouble(d)); }
  py::object convert_one(const std::string& s) {
    return py::check(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()),
                                          "surrogatepass"));
  }
  py::object convert_one(const bytes& b) {
    return py::check(PyBytes_FromStringAndSize(b.data.data(), static_cast<Py_ssize_t>(b.data.size())));
  }
  void enter() {
    if (++depth > value::max_depth) {
      py::raise(PyExc_ValueError, join({"cannot convert a value nested deeper than ",
                                        std::to_string(value::max_depth), " levels"}));
    }
  }
  py::object convert_one(const tuple& t) {
    enter();
    auto out = py::check(PyTuple_New(static_cast<Py_ssize_t>(t.items.size())));
    for (std::size_t i = 0; i < t.items.size(); ++i) {
      PyTuple_SET_ITEM(out.get(), static_cast<Py_ssize_t>(i), convert(t.items[i]).release());
    }
    --depth;
    return out;
  }
  py::object convert_one(const list& l) {
    enter();
    auto out = py::check(PyList_New(static_cast<Py_ssize_t>(l.items.size())));
    for (std::size_t i = 0; i < l.items.size(); ++i) {
      PyList_SET_ITEM(out.get(), static_cast<Py_ssize_t>(i), convert(l.items[i]).release());
    }
    --depth;
    return out;
  }
  py::object convert_one(const dict& d) {
    enter();
    auto out = py::check(PyDict_New());
    for (const auto& [k, v] : d.items) {
      auto key = convert(k);
      auto val = convert(v);
      py::check_zero(PyDict_SetItem(out.get(), key.get(), val.get()));
    }
    --depth;
    return out;
  }
};

}  // namespace

value from_python(PyObject* o) { return decoder{}.convert(o); }

py::object to_python(const value& v) { return encoder{}.convert(v); }

value call_with_values(PyObject* fn, const std::vector<value>& args,
                       const std::vector<std::pair<std::string, value>>& kwargs) {
  auto a = py::check(PyTuple_New(static_cast<Py_ssize_t>(args.size())));
  for (std::size_t i = 0; i < args.size(); ++i) {
    PyTuple_SET_ITEM(a.get(), static_cast<Py_ssize_t>(i), to_python(args[i]).release());
  }
  py::object kw;
  if (!kwargs.empty()) {
    kw = py::check(PyDict_New());
    for (const auto& [k, v] : kwargs) {
      py::check_zero(PyDict_SetItemString(kw.get(), k.c_str(), to_python(v).get()));
    }
  }
  auto r = py::check(PyObject_Call(fn, a.get(), kw.get()));
  return from_python(r.get());
}

}  // namespace isola::detail
