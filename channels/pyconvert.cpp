// Python objects <-> isola::message for channels: plain values are copied, large bytes and
// memoryviews are shared without copying, channels travel as channels, other objects are
// pickled with protocol 5 and out-of-band buffers.
#include "channels/pychannel.hpp"

#include "channels/pybuffer.hpp"
#include "channels/pyunbound.hpp"
#include "lib/module.hpp"
#include "lib/py.hpp"
#include "lib/value_codec.hpp"

#include <isola/log.hpp>

#include <algorithm>
#include <cmath>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace isola::detail {
namespace {

// ---- Python object <-> message ----------------------------------------------------------------


// Finds the first object inside obj (depth first) that is not a plain value, nor a channel
// (which pickles), and says where: `where` becomes "[0]", "['key'][2]" ... (empty for obj
// itself) and `type` its type's name. False if there is none (pickling failed for another
// reason: depth, a cycle).
bool find_not_plain(PyObject* obj, PyTypeObject* channel_type, std::string& where,
                    std::string& type, int depth = 0) {
  if (obj == Py_None || PyBool_Check(obj) || PyLong_CheckExact(obj) || PyFloat_CheckExact(obj) ||
      PyUnicode_CheckExact(obj) || PyBytes_CheckExact(obj) || Py_TYPE(obj) == channel_type) {
    return false;
  }
  if (depth > value::max_depth) return false;
  if (PyTuple_CheckExact(obj) || PyList_CheckExact(obj)) {
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    for (Py_ssize_t i = 0; i < n && i < PySequence_Fast_GET_SIZE(obj); ++i) {
      std::string inner;
      if (find_not_plain(PySequence_Fast_ITEMS(obj)[i], channel_type, inner, type, depth + 1)) {
        where = "[" + std::to_string(i) + "]" + inner;
        return true;
      }
    }
    return false;
  }
  if (PyDict_CheckExact(obj)) {
    Py_ssize_t pos = 0;
    PyObject *k = nullptr, *v = nullptr;
    while (PyDict_Next(obj, &pos, &k, &v)) {
      std::string inner;
      if (find_not_plain(k, channel_type, inner, type, depth + 1)) {
        where = " key " + py::to_string(py::steal(PyObject_Repr(k)).get());
        return true;
      }
      if (find_not_plain(v, channel_type, inner, type, depth + 1)) {
        py::object r = py::steal(PyObject_Repr(k));
        where = "[" + (r ? py::to_string(r.get()) : std::string("?")) + "]" + inner;
        return true;
      }
    }
    return false;
  }
  where.clear();
  type = py::type_name(Py_TYPE(obj));
  return true;
}

}  // namespace

// CPython 3.13's shareable objects (what its queues take with syncobj=True): None, bool,
// int, float, str, bytes, memoryview, a channel, and a tuple of such objects. The first one
// inside obj that is not, or nullptr.
PyObject* first_not_shareable(PyObject* obj, PyTypeObject* channel_type, int depth) {
  if (obj == Py_None || PyBool_Check(obj) || PyLong_CheckExact(obj) || PyFloat_CheckExact(obj) ||
      PyUnicode_CheckExact(obj) || PyBytes_CheckExact(obj) || PyMemoryView_Check(obj) ||
      Py_TYPE(obj) == channel_type) {
    return nullptr;
  }
  if (!PyTuple_CheckExact(obj) || depth > value::max_depth) return obj;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); ++i) {
    if (PyObject* bad = first_not_shareable(PyTuple_GET_ITEM(obj, i), channel_type, depth + 1)) {
      return bad;
    }
  }
  return nullptr;
}

bool require_shareable(PyObject* module, PyTypeObject* channel_type, PyObject* obj) {
  PyObject* bad = first_not_shareable(obj, channel_type, 0);
  if (bad == nullptr) return true;
  py::object r = py::steal(PyObject_Repr(bad));
  if (!r) return false;
  raise_from_module(module, "NotShareableError",
                    py::to_string(r.get()) + " does not support cross-interpreter data (with "
                    "syncobj=True only None, bool, int, float, str, bytes, memoryview, a "
                    "channel and tuples of them are sent; send it with syncobj=False)");
  return false;
}

// Converts obj for sending through ch. Returns false with a Python exception set.
bool to_message(PyTypeObject* channel_type, const channel& ch, PyObject* obj, message& out) {
  if (std::int64_t v = 0; PyLong_CheckExact(obj) && small_int(obj, v)) {
    out.payload.emplace<value>(v);
    return true;
  }
  if (Py_TYPE(obj) == channel_type) {
    out = message(channel_ref(reinterpret_cast<py_channel*>(obj)->ch));
    return true;
  }
  const bool big_bytes = PyBytes_CheckExact(obj) && PyBytes_GET_SIZE(obj) >= zero_copy_min;
  if (big_bytes || PyMemoryView_Check(obj)) {
    shared_buffer b;
    if (!buffer_from_python(obj, b)) return false;
    // Bytes are shared in flight and arrive as bytes. Where they could not be shared (an
    // interpreter isola does not manage), they travel as a plain value, which does too.
    if (!big_bytes || is_shared_bytes(b)) {
      out = message(std::move(b));
      return true;
    }
  }
  try {
    out = message(from_python(obj));
    return true;
  } catch (const py::error_already_set&) {
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError)) {
      return false;
    }
  }
  if (!channel_allows_pickle(ch)) {
    PyObject *type = nullptr, *val = nullptr, *tb = nullptr;
    PyErr_Fetch(&type, &val, &tb);
    std::string why = val != nullptr ? py::to_string(val) : "";
    Py_XDECREF(type);
    Py_XDECREF(val);
    Py_XDECREF(tb);
    PyErr_Format(PyExc_TypeError,
                 "cannot send an object of type '%s' through a channel with pickling off (%s); "
                 "send plain values (None, bool, int, float, str, bytes, tuple, list, dict) or "
                 "create the channel with pickle=True",
                 Py_TYPE(obj)->tp_name, why.c_str());
    return false;
  }
  PyErr_Clear();
  pickled p;
  if (!pickle_to(obj, p)) {
    // pickle's own exception (PicklingError, AttributeError, TypeError: callers may catch
    // those), with a note that says why pickle was involved at all.
    std::string where, type;
    const bool inside = find_not_plain(obj, channel_type, where, type) && !where.empty();
    std::string why;
    if (inside) {
      why = std::string("a ") + Py_TYPE(obj)->tp_name + " is sent as a plain value only if " +
            "everything in it is one, and item" + where + " is an object of type '" + type +
            "'";
    } else {
      why = std::string("an object of type '") + Py_TYPE(obj)->tp_name +
            "' is not a plain value (None, bool, int, float, str, bytes, tuple, list, dict), "
            "a buffer or a channel";
    }
    add_note_to_current("isola: " + why +
                        ", so the channel pickles it, and pickling failed; send a picklable "
                        "object or plain values instead");
    return false;
  }
  out = message(std::move(p));
  return true;
}

PyObject* from_message(PyObject* module, const message& m) {
  switch (m.payload.index()) {
    case 0:
      // The common case first, without the general converter.
      if (const std::int64_t* i = plain_int(m)) return PyLong_FromLongLong(*i);
      try {
        return to_python(*m.as_value()).release();
      } catch (const py::error_already_set&) {
        return nullptr;
      }
    case 1: {
      // As it was sent: bytes as bytes, a memoryview (or C++'s shared_buffer) as a memoryview.
      if (is_shared_bytes(*m.as_buffer())) return bytes_of(*m.as_buffer());
      bool bound = false, removed = false;
      PyObject* o = from_bound(module, m, bound, removed);  // put with unbounditems
      if (bound) return o;
      return memoryview_of(module, *m.as_buffer());
    }
    case 2: {
      PyObject* o = unpickle(module, *m.as_pickled());
      if (o == nullptr) {
        add_note_to_current(
            "isola: this item was pickled by the sending interpreter and could not be "
            "unpickled in this one; its class must be importable here by the same module and "
            "name (a class defined in the sender's __main__ is not: put it in a module both "
            "interpreters import)");
      }
      return o;
    }
    case 3: {
      PyTypeObject* type = channel_type_of(module);
      if (type == nullptr) return nullptr;
      return wrap_channel(type, channel(*m.as_channel()));
    }
  }
  PyErr_SetString(PyExc_SystemError, "isola: unknown message kind");
  return nullptr;
}

}  // namespace isola::detail
