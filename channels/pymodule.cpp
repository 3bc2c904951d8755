// The channel functions of the `isola` module: isola.channel(name), isola.select, the
// exceptions (ChannelClosed, and QueueEmpty/QueueFull made on first use), and the module part
// that adds them and the Channel type to every interpreter's `isola`.
#include "channels/pychannel.hpp"
#include "channels/pyunbound.hpp"
#include "channels/py/queues.py.hpp"

#include "channels/pybuffer.hpp"
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

// ---- module functions -------------------------------------------------------------------------

PyObject* open_named(PyObject* module, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"name", "maxsize", nullptr};
  PyObject* name_arg = nullptr;
  PyObject* maxsize_arg = nullptr;
  const char* name = nullptr;
  Py_ssize_t size = 0;
  Py_ssize_t maxsize = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:channel", const_cast<char**>(kwlist),
                                   &name_arg, &maxsize_arg)) {
    return nullptr;
  }
  if (PyUnicode_Check(name_arg)) {
    name = PyUnicode_AsUTF8AndSize(name_arg, &size);
    if (name == nullptr) return nullptr;
  } else if (PyBytes_Check(name_arg)) {
    name = PyBytes_AS_STRING(name_arg);
    size = PyBytes_GET_SIZE(name_arg);
  } else {
    PyErr_Format(PyExc_TypeError, "isola.channel: name must be a str, not %s",
                 Py_TYPE(name_arg)->tp_name);
    return nullptr;
  }
  if (maxsize_arg != nullptr && !parse_size(maxsize_arg, "isola.channel", "maxsize", maxsize)) {
    return nullptr;
  }
  if (size == 0) {
    PyErr_SetString(PyExc_ValueError, "isola.channel: the name must not be empty");
    return nullptr;
  }
  PyTypeObject* type = channel_type_of(module);
  if (type == nullptr) return nullptr;
  try {
    const std::string_view n(name, static_cast<std::size_t>(size));
    auto ch = maxsize > 0 ? channel::open(n, static_cast<std::size_t>(maxsize))
                          : channel::open(n, unbounded);
    return wrap_channel(type, std::move(ch));
  } catch (const std::length_error& e) {  // a ring that cannot be allocated
    PyErr_Format(PyExc_MemoryError, "isola.channel(maxsize=%zd): %s", maxsize, e.what());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_Format(PyExc_ValueError, "isola.channel: %s", e.what());
    return nullptr;
  }
}

PyObject* is_shareable(PyObject* module, PyObject* obj) {
  PyTypeObject* type = channel_type_of(module);
  if (type == nullptr) return nullptr;
  return PyBool_FromLong(first_not_shareable(obj, type) == nullptr);
}

PyObject* list_channels(PyObject* module, PyObject*) {
  PyTypeObject* type = channel_type_of(module);
  if (type == nullptr) return nullptr;
  std::vector<channel> all = channel::list_all();
  py::object list = py::steal(PyList_New(static_cast<Py_ssize_t>(all.size())));
  if (!list) return nullptr;
  for (std::size_t i = 0; i < all.size(); ++i) {
    PyObject* handle = wrap_channel(type, std::move(all[i]));
    if (handle == nullptr) return nullptr;
    PyList_SET_ITEM(list.get(), static_cast<Py_ssize_t>(i), handle);
  }
  return list.release();
}

PyObject* select_ready(PyObject* module, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"channels", "timeout", nullptr};
  PyObject* seq = nullptr;
  PyObject* timeout_arg = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:select", const_cast<char**>(kwlist), &seq,
                                   &timeout_arg)) {
    return nullptr;
  }
  channel_timeout timeout;
  if (!parse_timeout(timeout_arg, timeout)) return nullptr;
  PyTypeObject* type = channel_type_of(module);
  if (type == nullptr) return nullptr;
  if (PyObject_TypeCheck(seq, type)) {
    // A channel is iterable: listing it would take its items (and wait until it is closed).
    PyErr_SetString(PyExc_TypeError,
                    "select: channels must be a list (or other iterable) of isola.Channel, not "
                    "a channel itself: write select([ch])");
    return nullptr;
  }
  py::object list;
  try {
    list = py::check(PySequence_List(seq));
  } catch (const py::error_already_set&) {
    return nullptr;
  }
  std::vector<channel> chans;
  std::optional<Py_ssize_t> holding;  // a handle that holds items is ready now
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list.get()); ++i) {
    PyObject* o = PyList_GET_ITEM(list.get(), i);
    if (Py_TYPE(o) != type) {
      PyErr_Format(PyExc_TypeError, "select: item %zd is a %s, not an isola.Channel", i,
                   Py_TYPE(o)->tp_name);
      return nullptr;
    }
    if (!holding && as_chan(o)->holds()) holding = i;
    chans.push_back(as_chan(o)->ch);
  }
  if (chans.empty()) {
    PyErr_SetString(PyExc_ValueError, "select: give at least one channel");
    return nullptr;
  }
  boost::system::result<std::size_t> r;
  if (holding) {
    r = static_cast<std::size_t>(*holding);
  } else if (auto now = select_now(chans)) {
    r = *now;
  } else if (timeout && timeout->count() == 0) {
    Py_RETURN_NONE;
  } else if (!wait_released(module, [&](channel_timeout t,
                                std::stop_token st) { return wait_select(chans, t, st); },
                            timeout, r)) {
    return nullptr;
  }
  if (!r) {
    if (r.error() == errc::timeout) Py_RETURN_NONE;
    PyErr_Format(PyExc_RuntimeError, "select: %s", r.error().message().c_str());
    return nullptr;
  }
  return Py_NewRef(PyList_GET_ITEM(list.get(), static_cast<Py_ssize_t>(*r)));
}

PyObject* buffer_address(PyObject*, PyObject* obj) {
  Py_buffer view;
  if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return nullptr;
  void* addr = view.buf;
  PyBuffer_Release(&view);
  return PyLong_FromVoidPtr(addr);
}

PyMethodDef channel_functions[] = {
    {"_buffer_address", buffer_address, METH_O,
     "_buffer_address(obj) -> int\n\nThe address of obj's buffer memory (for checking that a "
     "received memoryview shares the sender's memory)."},
    {"channel", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(open_named)),
     METH_VARARGS | METH_KEYWORDS,
     "channel(name, maxsize=0) -> Channel\n\nThe channel registered under name, created (with "
     "maxsize; <= 0 means unbounded) if there is none: the way to wire interpreters "
     "together. The name is registered while any handle to the channel exists."},
    {"is_shareable", is_shareable, METH_O,
     "is_shareable(obj) -> bool\n\nWhether CPython 3.13 would share obj between "
     "interpreters: None, bool, int, float, str, bytes, memoryview, a channel, or a tuple of "
     "them (put(obj, syncobj=True) takes exactly these)."},
    {"list_channels", list_channels, METH_NOARGS,
     "list_channels() -> list[Channel]\n\nA handle to every live channel of the process, "
     "oldest first (PEP 734's list_all())."},
    {"select", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(select_ready)),
     METH_VARARGS | METH_KEYWORDS,
     "select(channels, timeout=None) -> Channel | None\n\nWaits (GIL released) until one of "
     "the channels has an item or is closed, and returns the first such channel in the order "
     "given; None when timeout seconds pass first. It does not receive the item. channels is a "
     "list (or other iterable) of channels; a channel on its own is refused with TypeError."},
    {nullptr, nullptr, 0, nullptr}};

// A new exception class isola.<name> (a new reference; nullptr with an exception set).
PyObject* new_exception(const char* name, const char* doc, PyObject* base) {
  const std::string full = std::string("isola.") + name;
  return PyErr_NewExceptionWithDoc(full.c_str(), doc, base, nullptr);
}

int add_exception(PyObject* m, const char* name, const char* doc, PyObject* base) {
  PyObject* e = new_exception(name, doc, base);
  if (e == nullptr) return -1;
  return module_add(m, name, e);
}

int exec_channels(PyObject* m) {
  PyObject* type = PyType_FromModuleAndSpec(m, &channel_spec, nullptr);
  if (type == nullptr) return -1;
  if (module_add(m, "Channel", type) < 0) return -1;
  if (add_shared_buffer_type(m) < 0) return -1;
  // The exception classes of PEP 734's queues (CPython's _interpqueues and _interpreters),
  // with the same bases, so code written for those catches isola's.
  py::object queue_error = py::steal(new_exception(
      "QueueError", "A channel (queue) operation failed (PEP 734's QueueError).",
      PyExc_RuntimeError));
  if (!queue_error || module_add(m, "QueueError", Py_NewRef(queue_error.get())) < 0) return -1;
  if (add_exception(m, "ChannelClosed", "The channel is closed (and, for receivers, drained).",
                    queue_error.get()) < 0 ||
      add_exception(m, "QueueNotFoundError",
                    "No channel has the id given (it was never made, or it is gone).",
                    queue_error.get()) < 0 ||
      add_exception(m, "NotShareableError",
                    "The object cannot go to another interpreter in the form asked for.",
                    PyExc_ValueError) < 0) {
    return -1;
  }
  return 0;
}

// QueueEmpty and QueueFull subclass queue.Empty and queue.Full (PEP 734), and importing
// `queue` costs every interpreter ~3 ms and 0.6 MB (it pulls in threading, collections and
// heapq), so they and their aliases are made on first use (`isola.QueueEmpty`, or the first
// time a channel raises one).
int make_queue_exceptions(PyObject* m) {
  py::object queue = py::steal(PyImport_ImportModule("queue"));
  if (!queue) return -1;
  // After the import, which may have let another thread of this interpreter make them: each
  // exception is made only if neither of its names is there, and a missing name (deleted
  // from the module, say) becomes the other one again.
  struct pair {
    const char* name;
    const char* alias;
    const char* base;
    const char* doc;
  };
  for (const pair& p :
       {pair{"QueueEmpty", "ChannelEmpty", "Empty",
             "No item is available (subclass of QueueError and queue.Empty, as in PEP 734)."},
        pair{"QueueFull", "ChannelFull", "Full",
             "No room is available (subclass of QueueError and queue.Full, as in PEP 734)."}}) {
    PyObject* dict = PyModule_GetDict(m);  // borrowed
    PyObject* found = PyDict_GetItemString(dict, p.name);  // borrowed
    if (found == nullptr) found = PyDict_GetItemString(dict, p.alias);
    py::object exc = py::borrow(found);
    if (!exc) {
      py::object base = py::steal(PyObject_GetAttrString(queue.get(), p.base));
      if (!base) return -1;
      PyObject* queue_error = PyDict_GetItemString(dict, "QueueError");  // borrowed
      if (queue_error == nullptr) {
        PyErr_SetString(PyExc_RuntimeError, "isola.QueueError was deleted from the module");
        return -1;
      }
      py::object bases = py::steal(PyTuple_Pack(2, queue_error, base.get()));
      if (!bases) return -1;
      exc = py::steal(new_exception(p.name, p.doc, bases.get()));
      if (!exc) return -1;
    }
    for (const char* n : {p.name, p.alias}) {
      if (PyDict_GetItemString(dict, n) == nullptr &&
          PyModule_AddObjectRef(m, n, exc.get()) < 0) {
        return -1;
      }
    }
  }
  return 0;
}

const lazy_attribute channel_lazy[] = {{"QueueEmpty", make_queue_exceptions},
                                       {"QueueFull", make_queue_exceptions},
                                       {"ChannelEmpty", make_queue_exceptions},
                                       {"ChannelFull", make_queue_exceptions},
                                       {"UNBOUND", make_unbound_names},
                                       {"UNBOUND_ERROR", make_unbound_names},
                                       {"UNBOUND_REMOVE", make_unbound_names},
                                       {"UnboundItem", make_unbound_names},
                                       {"ItemInterpreterDestroyed", make_unbound_names},
                                       {nullptr, nullptr}};

module_part_registrar channels_part({"channels", channel_functions, exec_channels, channel_lazy});
submodule_registrar queues_submodule({"queues", embedded::queues});

}  // namespace
}  // namespace isola::detail
