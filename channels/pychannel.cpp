// The Python face of channels: isola.Channel, isola.channel(name), isola.select, the
// exceptions, and the conversion between Python objects and isola::message (plain values are
// copied, large bytes and memoryviews are shared without copying, other objects are pickled
// with protocol 5 and out-of-band buffers). See docs/channels.md.
#include "lib/python.hpp"

#include "channels/pybuffer.hpp"
#include "lib/interrupt.hpp"
#include "lib/module.hpp"
#include "lib/py.hpp"
#include "lib/pyexec.hpp"
#include "lib/state.hpp"
#include "lib/value_codec.hpp"

#include <isola/channel.hpp>
#include <isola/log.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace isola::detail {
namespace {

using namespace std::chrono_literals;

/// Channel(maxsize=0) gets this bound.
constexpr std::size_t default_maxsize = 4096;
/// Waits in the main interpreter wake this often to run signal handlers (KeyboardInterrupt).
constexpr auto signal_check_interval = 50ms;
/// A blocking send/recv that finds the channel full/empty first spins this many rounds (about
/// 1-2 us) holding the GIL before it releases the GIL to wait: the other side is often that
/// close, and releasing and re-taking the GIL costs more than the spin.
constexpr int spin_before_release = 64;

// ---- the Channel type -------------------------------------------------------------------------

// The object header and the weak-reference list, in a standard-layout base so that
// offsetof() can name the list for __weaklistoffset__.
struct py_channel_head {
  PyObject_HEAD
  PyObject* weakreflist;  ///< weak references to this handle; tp_alloc zeroes it
};
static_assert(std::is_standard_layout_v<py_channel_head>);

struct py_channel : py_channel_head {
  channel ch;
  /// Items this handle has taken from the channel and not handed out yet: the rest of a
  /// recv_many batch in which an item could not be converted (see finish_batch). Every
  /// receive on this handle serves them first, in order.
  std::deque<message> held;
  /// The exception of that item, raised by the next receive on this handle (its traceback
  /// dropped, so it keeps no frames alive). A receive that got items before the failing one
  /// returns those and leaves the exception here.
  PyObject* held_error = nullptr;

  bool holds() const noexcept { return held_error != nullptr || !held.empty(); }
};

// The module that made `type` (types are per interpreter, made by PyType_FromModuleAndSpec).
PyObject* module_of(PyTypeObject* type) { return PyType_GetModule(type); }

PyObject* module_attr(PyObject* module, const char* name) {
  PyObject* o = module != nullptr ? PyObject_GetAttrString(module, name) : nullptr;
  if (o == nullptr && !PyErr_Occurred()) {
    PyErr_Format(PyExc_RuntimeError, "isola.%s is missing", name);
  }
  return o;
}

void raise_from_module(PyObject* module, const char* exc_name, const std::string& msg) {
  PyObject* exc = module_attr(module, exc_name);
  if (exc == nullptr) return;
  PyErr_SetString(exc, msg.c_str());
  Py_DECREF(exc);
}

// Adds a note (PEP 678) to the exception being raised, leaving its type and message as they
// are. Best effort: a failure to add it keeps the original exception.
void add_note_to_current(const std::string& note) {
  PyObject* exc = PyErr_GetRaisedException();
  if (exc == nullptr) return;
  PyObject* r = PyObject_CallMethod(exc, "add_note", "s", note.c_str());
  if (r == nullptr) PyErr_Clear();
  Py_XDECREF(r);
  PyErr_SetRaisedException(exc);
}

PyTypeObject* channel_type_of(PyObject* module) {
  PyObject* t = module_attr(module, "Channel");
  if (t == nullptr) return nullptr;
  if (!PyType_Check(t)) {
    Py_DECREF(t);
    PyErr_SetString(PyExc_TypeError, "isola.Channel has been replaced by something else");
    return nullptr;
  }
  auto* type = reinterpret_cast<PyTypeObject*>(t);
  Py_DECREF(t);  // the module keeps it alive
  return type;
}

PyObject* wrap_channel(PyTypeObject* type, channel ch) {
  auto* self = reinterpret_cast<py_channel*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  new (&self->ch) channel(std::move(ch));
  new (&self->held) std::deque<message>();
  self->held_error = nullptr;
  return reinterpret_cast<PyObject*>(self);
}

// ---- errors -----------------------------------------------------------------------------------

// Sets the Python exception for a failed channel operation. `what` is "send" / "recv".
void raise_channel_error(PyObject* module, const channel& ch, boost::system::error_code ec,
                         bool queue_names) {
  std::string label = ch.name().empty() ? "channel #" + std::to_string(ch.id())
                                        : "channel '" + ch.name() + "'";
  if (ec == errc::channel_closed) {
    raise_from_module(module, "ChannelClosed", label + " is closed");
  } else if (ec == errc::channel_empty) {
    raise_from_module(module, "QueueEmpty", label + " is empty");
  } else if (ec == errc::channel_full) {
    raise_from_module(module, "QueueFull",
                      label + " is full (maxsize " + std::to_string(ch.capacity()) + ")");
  } else if (ec == errc::timeout) {
    if (queue_names) {
      // queue.Queue semantics: get/put with a timeout raise Empty/Full.
      raise_from_module(module, "QueueEmpty", label + ": timed out");
    } else {
      PyErr_Format(PyExc_TimeoutError, "%s: timed out", label.c_str());
    }
  } else {
    PyErr_Format(PyExc_RuntimeError, "%s: %s", label.c_str(), ec.message().c_str());
  }
}

// Parses the int argument `what` of `fn` (anything with __index__), with errors that name
// both: TypeError for a non-int, OverflowError beyond Py_ssize_t.
bool parse_size(PyObject* o, const char* fn, const char* what, Py_ssize_t& out) {
  py::object i = py::steal(PyNumber_Index(o));
  if (!i) {
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
      PyErr_Format(PyExc_TypeError, "%s: %s must be an int, not %s", fn, what,
                   Py_TYPE(o)->tp_name);
    }
    return false;
  }
  out = PyLong_AsSsize_t(i.get());
  if (out == -1 && PyErr_Occurred()) {
    if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
      PyErr_Format(PyExc_OverflowError, "%s: %s is out of range: %R", fn, what, i.get());
    }
    return false;
  }
  return true;
}

// Parses a timeout argument: None -> wait forever; a non-negative number of seconds.
bool parse_timeout(PyObject* o, channel_timeout& out) {
  if (o == nullptr || o == Py_None) {
    out = std::nullopt;
    return true;
  }
  double secs = PyFloat_AsDouble(o);
  if (secs == -1.0 && PyErr_Occurred()) {
    PyErr_Format(PyExc_TypeError, "timeout must be None or a number of seconds, not %s",
                 Py_TYPE(o)->tp_name);
    return false;
  }
  if (std::isnan(secs) || secs < 0) {
    PyErr_SetString(PyExc_ValueError, "timeout must be a non-negative number of seconds");
    return false;
  }
  out = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::duration<double>(std::min(secs, 1e9)));
  return true;
}

// ---- waiting with the GIL released, interruptibly ---------------------------------------------

// Runs op(timeout, stop_token) with the GIL released.
// - In an isola worker (pool task, interpreter), interrupt() (a timeout, cancel()) stops the
//   wait and the interrupt's exception is raised here.
// - In the main interpreter, the wait wakes every 50 ms to run signal handlers, so
//   KeyboardInterrupt ends it.
// Returns false with a Python exception set when interrupted; else true and `result` holds
// op's result (which may be an error such as timeout).
template <typename Result, typename Op>
bool wait_released(PyObject* module, Op&& op, channel_timeout timeout, Result& result) {
  interrupt_slot* slot = current_interrupt_slot();
  auto interp = find_interp(PyInterpreterState_GetID(PyInterpreterState_Get()));
  std::stop_source stop;
  auto raise_interrupt = [&]() {
    std::string type;
    {
      std::lock_guard lock(slot->mu);
      slot->interrupted = false;
      type = slot->interrupt_type.empty() ? "KeyboardInterrupt" : slot->interrupt_type;
    }
    // Deliver it now rather than at the next bytecode: clear the pending async exception.
    PyThreadState_SetAsyncExc(PyThread_get_thread_ident(), nullptr);
    PyObject* exc = find_exception_class(type);
    PyErr_SetNone(exc != nullptr ? exc : PyExc_KeyboardInterrupt);
    return false;
  };
  auto raise_closing = [&]() {
    raise_from_module(module, "ChannelClosed",
                      "the interpreter is closing; channel waits in it have ended");
    return false;
  };
  bool interrupted_early = false;
  if (slot != nullptr) {
    std::lock_guard lock(slot->mu);
    // An interrupt that arrived before we could register: do not wait at all.
    if (slot->interrupted) {
      interrupted_early = true;
    } else {
      slot->wait_stop = &stop;
    }
  }
  if (interrupted_early) return raise_interrupt();
  auto unregister = [&] {
    if (slot != nullptr) {
      std::lock_guard lock(slot->mu);
      slot->wait_stop = nullptr;
    }
    if (interp) unregister_wait(*interp, &stop);
  };
  if (interp && !register_wait(*interp, &stop)) {
    unregister();
    return raise_closing();
  }

  const bool check_signals = PyInterpreterState_Get() == PyInterpreterState_Main();
  using clock = std::chrono::steady_clock;
  std::optional<clock::time_point> deadline;
  if (timeout) deadline = clock::now() + *timeout;
  for (;;) {
    channel_timeout slice = timeout;
    if (check_signals) {
      auto left = deadline ? std::max(*deadline - clock::now(), clock::duration::zero())
                           : clock::duration(signal_check_interval);
      slice = std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::min<clock::duration>(left, signal_check_interval));
    }
    Py_BEGIN_ALLOW_THREADS
    result = op(slice, stop.get_token());
    Py_END_ALLOW_THREADS
    if (!check_signals || result.has_value() || result.error() != errc::timeout) break;
    if (PyErr_CheckSignals() < 0) {
      unregister();
      return false;
    }
    if (deadline && clock::now() >= *deadline) break;
  }
  unregister();
  if (!result.has_value() && result.error() == errc::cancelled) {
    if (slot != nullptr) {
      std::lock_guard lock(slot->mu);
      interrupted_early = slot->interrupted;
    }
    if (interrupted_early) return raise_interrupt();
    return raise_closing();
  }
  return true;
}

// ---- Python object <-> message ----------------------------------------------------------------

// An exact int that fits in 64 bits, read without a call when it is compact (3.12+). False
// (no exception set) for a bigger one.
inline bool small_int(PyObject* obj, std::int64_t& out) noexcept {
  auto* l = reinterpret_cast<PyLongObject*>(obj);
  if (PyUnstable_Long_IsCompact(l)) {
    out = static_cast<std::int64_t>(PyUnstable_Long_CompactValue(l));
    return true;
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  out = static_cast<std::int64_t>(v);
  return true;
}

// Finds the first object inside obj (depth first) that is not a plain value and says where:
// `where` becomes "[0]", "['key'][2]" ... (empty for obj itself) and `type` its type's name.
// False if everything in it is plain (conversion failed for another reason: depth, a cycle).
bool find_not_plain(PyObject* obj, std::string& where, std::string& type, int depth = 0) {
  if (obj == Py_None || PyBool_Check(obj) || PyLong_CheckExact(obj) || PyFloat_CheckExact(obj) ||
      PyUnicode_CheckExact(obj) || PyBytes_CheckExact(obj)) {
    return false;
  }
  if (depth > value::max_depth) return false;
  if (PyTuple_CheckExact(obj) || PyList_CheckExact(obj)) {
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    for (Py_ssize_t i = 0; i < n && i < PySequence_Fast_GET_SIZE(obj); ++i) {
      std::string inner;
      if (find_not_plain(PySequence_Fast_ITEMS(obj)[i], inner, type, depth + 1)) {
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
      if (find_not_plain(k, inner, type, depth + 1)) {
        where = " key " + py::to_string(py::steal(PyObject_Repr(k)).get());
        return true;
      }
      if (find_not_plain(v, inner, type, depth + 1)) {
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
  if ((PyBytes_CheckExact(obj) && PyBytes_GET_SIZE(obj) >= zero_copy_min) ||
      PyMemoryView_Check(obj)) {
    shared_buffer b;
    if (!buffer_from_python(obj, b)) return false;
    out = message(std::move(b));
    return true;
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
    const bool inside = find_not_plain(obj, where, type) && !where.empty();
    std::string why;
    if (inside) {
      why = std::string("a ") + Py_TYPE(obj)->tp_name + " is sent as a plain value only if " +
            "everything in it is one, and item" + where + " is an object of type '" + type +
            "'" +
            (type.find("Channel") != std::string::npos
                 ? " (a channel can be sent on its own, not inside a tuple, list or dict)"
                 : "");
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

// A Python int for an item still in its ring slot; nullptr (no exception set) if there is no
// memory now: the item is then left for the general path, which raises that properly.
void* int_object(std::int64_t i) noexcept {
  PyObject* o = PyLong_FromLongLong(i);
  if (o == nullptr) PyErr_Clear();
  return o;
}

// recv's and recv_many's step on an item still in its ring slot: a plain int becomes a Python
// int on the spot; nullptr (no exception set) means "move it out and convert it later" (not a
// plain int, or no memory now).
PyObject* int_from_slot(const message& m) noexcept {
  const std::int64_t* i = plain_int(m);
  return i != nullptr ? static_cast<PyObject*>(int_object(*i)) : nullptr;
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
    case 1:
      return memoryview_of(module, *m.as_buffer());
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

// ---- Channel methods --------------------------------------------------------------------------

py_channel* as_chan(PyObject* self) { return reinterpret_cast<py_channel*>(self); }
PyObject* self_module(PyObject* self) { return module_of(Py_TYPE(self)); }

// Argument parsing for (obj, timeout=None) / (timeout=None) style fast calls.
bool parse_args(const char* fname, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                std::initializer_list<const char*> names, std::size_t required,
                std::vector<PyObject*>& out) {
  out.assign(names.size(), nullptr);
  if (static_cast<std::size_t>(nargs) > names.size()) {
    PyErr_Format(PyExc_TypeError, "%s() takes at most %zu arguments (%zd given)", fname,
                 names.size(), nargs);
    return false;
  }
  for (Py_ssize_t i = 0; i < nargs; ++i) out[static_cast<std::size_t>(i)] = args[i];
  if (kwnames != nullptr) {
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); ++k) {
      PyObject* key = PyTuple_GET_ITEM(kwnames, k);
      std::size_t idx = 0;
      bool found = false;
      for (const char* n : names) {
        if (PyUnicode_CompareWithASCIIString(key, n) == 0) {
          found = true;
          break;
        }
        ++idx;
      }
      if (!found) {
        PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname, key);
        return false;
      }
      if (out[idx] != nullptr) {
        PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'", fname, key);
        return false;
      }
      out[idx] = args[nargs + k];
    }
  }
  for (std::size_t i = 0; i < required; ++i) {
    if (out[i] == nullptr) {
      PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                   *(names.begin() + i));
      return false;
    }
  }
  return true;
}

// send(obj, timeout=None) and put(obj, block=True, timeout=None).
PyObject* do_send(PyObject* self, PyObject* obj, bool block, PyObject* timeout_arg,
                  bool queue_names) {
  auto& ch = as_chan(self)->ch;
  channel_timeout timeout;
  if (!parse_timeout(timeout_arg, timeout)) return nullptr;
  message m;
  if (!to_message(Py_TYPE(self), ch, obj, m)) return nullptr;
  const bool waits = block && (!timeout || timeout->count() > 0);
  // A call that may wait starts with a quick attempt (no look at the receivers' position);
  // the exact attempt after the spin, or the blocking send, decides.
  auto r = waits ? try_send_quick(ch, std::move(m)) : ch.try_send(std::move(m));
  if (r) Py_RETURN_NONE;
  PyObject* module = self_module(self);
  if (r.error() == errc::channel_full && waits &&
      spin_until_ready(ch, false, spin_before_release)) {
    r = ch.try_send(std::move(m));
  }
  if (!r && r.error() == errc::channel_full && waits) {
    boost::system::result<void> wr;
    if (!wait_released(module,
            [&](channel_timeout t, std::stop_token st) { return ch.send(std::move(m), t, st); },
            timeout, wr)) {
      return nullptr;
    }
    r = wr;
  }
  if (!r && block && (r.error() == errc::timeout || r.error() == errc::channel_full)) {
    // A blocking send whose time ran out (timeout=0 included).
    if (queue_names) {
      raise_from_module(module, "QueueFull", "channel is full: timed out waiting for room");
    } else {
      raise_channel_error(module, ch, make_error_code(errc::timeout), false);
    }
    return nullptr;
  }
  if (!r) {
    raise_channel_error(module, ch, r.error(), queue_names);
    return nullptr;
  }
  Py_RETURN_NONE;
}

// Whether an item whose conversion failed with the exception now set is kept for another
// try: only for lack of memory, and not for a pickle (its unpickling runs the sender's code,
// whose exception is what that item gives).
bool keep_for_retry(const message& m) noexcept {
  return !m.is_pickled() && PyErr_ExceptionMatches(PyExc_MemoryError);
}

// A received item as a Python object. If there is no memory for it now, the item goes to the
// front of this handle's held items and MemoryError is raised: the next receive on this
// handle tries again, so nothing is lost (unless there is not even memory to hold it).
PyObject* deliver(PyObject* self, PyObject* module, message&& m) {
  PyObject* o = from_message(module, m);
  if (o != nullptr || !keep_for_retry(m)) return o;
  try {
    as_chan(self)->held.push_front(std::move(m));
  } catch (const std::bad_alloc&) {  // MemoryError stays set; the item is gone
  }
  return nullptr;
}

// The first item this handle holds (see py_channel::held), or its pending exception.
PyObject* take_held(PyObject* self, PyObject* module) {
  auto* c = as_chan(self);
  if (c->held_error != nullptr) {
    PyErr_SetRaisedException(c->held_error);  // steals the reference
    c->held_error = nullptr;
    return nullptr;
  }
  message m = std::move(c->held.front());
  c->held.pop_front();
  return deliver(self, module, std::move(m));
}

// Puts the items of a batch from index `from` on back at the front of this handle's held
// items, in order: objects[i] is a plain int made on the spot (made into an int message again
// and released) or nullptr where the item is still later[next], later[next + 1], ... With
// `first`, that message goes in front of them. False (MemoryError set) if there was no memory
// to hold them: they are gone.
bool hold_back(py_channel* c, std::vector<PyObject*>& objects,
               std::vector<std::pair<std::size_t, message>>& later, std::size_t from,
               std::size_t next, message* first) {
  try {
    std::vector<message> rest;
    rest.reserve(objects.size() - from + 1);
    if (first != nullptr) rest.push_back(std::move(*first));
    for (std::size_t i = from; i < objects.size(); ++i) {
      if (objects[i] == nullptr) {
        rest.push_back(std::move(later[next++].second));
      } else {  // a plain int converted on the spot: the same int again
        rest.emplace_back(static_cast<std::int64_t>(PyLong_AsLongLong(objects[i])));
        Py_CLEAR(objects[i]);
      }
    }
    c->held.insert(c->held.begin(), std::make_move_iterator(rest.begin()),
                   std::make_move_iterator(rest.end()));
    return true;
  } catch (const std::bad_alloc&) {
    for (std::size_t i = from; i < objects.size(); ++i) Py_CLEAR(objects[i]);
    PyErr_NoMemory();
    return false;
  }
}

// The end of a recv_many: objects[i] is the item converted already, or nullptr where the item
// is still a message in `later` (index, message; in order). Converts those and returns the
// list. Nothing taken is dropped when something fails:
// - no memory for the list: every item goes back to the front of this handle's held items
//   and MemoryError is raised;
// - an item cannot be converted: the items after it go back to the front of the held items
//   (the item itself too when there was no memory for it: keep_for_retry); the items before
//   it are returned now and its exception is raised by the next receive (or now, when it is
//   the first item).
PyObject* finish_batch(PyObject* self, PyObject* module, std::vector<PyObject*>& objects,
                       std::vector<std::pair<std::size_t, message>>& later) {
  auto* c = as_chan(self);
  // The list first: once items are converted, failing to make it would lose them.
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(objects.size()));
  if (list == nullptr) {
    hold_back(c, objects, later, 0, 0, nullptr);
    return nullptr;
  }
  std::size_t size = objects.size();
  for (std::size_t k = 0; k < later.size(); ++k) {
    const std::size_t at = later[k].first;
    if ((objects[at] = from_message(module, later[k].second)) != nullptr) continue;
    message* again = keep_for_retry(later[k].second) ? &later[k].second : nullptr;
    hold_back(c, objects, later, at + 1, k + 1, again);  // MemoryError instead if it fails
    if (at == 0) {
      Py_DECREF(list);  // its slots are still empty
      return nullptr;   // nothing to return first: raise now
    }
    size = at;
    PyObject* exc = PyErr_GetRaisedException();
    PyException_SetTraceback(exc, Py_None);
    Py_XSETREF(c->held_error, exc);
    break;
  }
  for (std::size_t i = 0; i < size; ++i) {
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), objects[i]);
  }
  Py_SET_SIZE(list, static_cast<Py_ssize_t>(size));  // shorter when an item failed
  return list;
}

// finish_batch for items that are all still messages (recv_many's waiting path and the items a
// handle holds). When memory runs out before any item is converted, MemoryError is raised
// and `got` is left as it was (untouched is set), so the caller can keep the items.
PyObject* finish_messages(PyObject* self, PyObject* module, std::vector<message>& got,
                          bool& untouched) {
  std::vector<PyObject*> objects;
  std::vector<std::pair<std::size_t, message>> later;
  untouched = false;
  try {
    objects.assign(got.size(), nullptr);
    later.reserve(got.size());
  } catch (const std::bad_alloc&) {
    untouched = true;
    PyErr_NoMemory();
    return nullptr;
  }
  for (std::size_t i = 0; i < got.size(); ++i) later.emplace_back(i, std::move(got[i]));
  return finish_batch(self, module, objects, later);
}

// The quick first attempt of a recv that may wait (see do_send): true if it took an item, and
// then `out` is the object (or nullptr with an exception set). An int becomes a Python int
// straight from its ring slot (no message object on the way; on a receiving side this thread
// owns, not even a callback); anything else is moved out and converted. The caller has
// checked that the handle holds no items (holds()). Inline: a call frame here cost recv()
// about 17 instructions (callgrind).
[[gnu::always_inline]] inline bool recv_quick(PyObject* self, PyObject*& out) {
  if (void* o = try_take_int_quick(as_chan(self)->ch, int_object)) {
    out = static_cast<PyObject*>(o);
    return true;
  }
  struct taken {
    PyObject* obj = nullptr;
    std::optional<message> other;
  } t;
  auto consume = [](void* ctx, message&& m) noexcept {
    auto& t = *static_cast<taken*>(ctx);
    if ((t.obj = int_from_slot(m)) == nullptr) t.other.emplace(std::move(m));
  };
  if (!try_take_quick(as_chan(self)->ch, consume, &t)) return false;
  out = t.obj != nullptr ? t.obj : deliver(self, self_module(self), std::move(*t.other));
  return true;
}

// quick_tried: the caller has just made recv_quick's attempt (and it took nothing).
PyObject* do_recv(PyObject* self, bool block, PyObject* timeout_arg, bool queue_names,
                  bool quick_tried = false) {
  auto& ch = as_chan(self)->ch;
  channel_timeout timeout;
  if (!parse_timeout(timeout_arg, timeout)) return nullptr;
  if (as_chan(self)->holds()) return take_held(self, self_module(self));
  const bool waits = block && (!timeout || timeout->count() > 0);
  if (waits && !quick_tried) {
    PyObject* o = nullptr;
    if (recv_quick(self, o)) return o;
  }
  PyObject* module = self_module(self);
  boost::system::result<message> r =
      waits ? boost::system::result<message>(make_error_code(errc::channel_empty))
            : ch.try_recv();
  if (!r && r.error() == errc::channel_empty && waits &&
      spin_until_ready(ch, true, spin_before_release)) {
    r = ch.try_recv();
  }
  if (!r && r.error() == errc::channel_empty && waits) {
    auto wait = [&](channel_timeout t, std::stop_token st) { return ch.recv(t, st); };
    if (!wait_released(module, wait, timeout, r)) {
      return nullptr;
    }
  }
  if (!r && block && r.error() == errc::channel_empty) {
    raise_channel_error(module, ch, make_error_code(errc::timeout), queue_names);  // timeout=0
    return nullptr;
  }
  if (!r) {
    raise_channel_error(module, ch, r.error(), queue_names);
    return nullptr;
  }
  return deliver(self, module, std::move(*r));
}

bool truthy(PyObject* o, bool dflt, int& out) {
  if (o == nullptr) {
    out = dflt;
    return true;
  }
  out = PyObject_IsTrue(o);
  return out >= 0;
}

// send(i) and recv() with no timeout, for small ints, are most of the calls a message-passing
// loop makes: they try the ring once before the general path (parsing, conversion, waiting).
// callgrind, one thread, send + recv of ints: see docs/channels-performance.md.
PyObject* ch_send(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  if (nargs == 1 && kw == nullptr) {
    PyObject* obj = args[0];
    if (PyLong_CheckExact(obj)) {
      std::int64_t v = 0;
      if (small_int(obj, v) && try_send_int_quick(as_chan(self)->ch, v)) Py_RETURN_NONE;
    }
    return do_send(self, obj, true, nullptr, false);
  }
  std::vector<PyObject*> a;
  if (!parse_args("send", args, nargs, kw, {"obj", "timeout"}, 1, a)) return nullptr;
  return do_send(self, a[0], true, a[1], false);
}
PyObject* ch_recv(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  if (nargs == 0 && kw == nullptr) {
    if (as_chan(self)->holds()) return do_recv(self, true, nullptr, false);
    PyObject* o = nullptr;
    if (recv_quick(self, o)) return o;
    return do_recv(self, true, nullptr, false, true);
  }
  std::vector<PyObject*> a;
  if (!parse_args("recv", args, nargs, kw, {"timeout"}, 0, a)) return nullptr;
  return do_recv(self, true, a[0], false);
}
PyObject* ch_send_nowait(PyObject* self, PyObject* obj) {
  return do_send(self, obj, false, nullptr, true);
}
PyObject* ch_recv_nowait(PyObject* self, PyObject*) {
  return do_recv(self, false, nullptr, true);
}
PyObject* ch_put(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  std::vector<PyObject*> a;
  if (!parse_args("put", args, nargs, kw, {"obj", "block", "timeout"}, 1, a)) return nullptr;
  int block = 1;
  if (!truthy(a[1], true, block)) return nullptr;
  return do_send(self, a[0], block != 0, a[2], true);
}
PyObject* ch_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  std::vector<PyObject*> a;
  if (!parse_args("get", args, nargs, kw, {"block", "timeout"}, 0, a)) return nullptr;
  int block = 1;
  if (!truthy(a[0], true, block)) return nullptr;
  return do_recv(self, block != 0, a[1], true);
}

// Reserving for a length hint: at most this many items up front (the vector grows from there; a
// __length_hint__ of 10**15 must not ask for 48 PB at once). (Reading ranges from their bounds
// instead of iterating was tried: the sender then outran the receiver, the ring stayed full,
// and batches got slower, 7.3-8.9 against 11.0-11.6 M items/s.)
constexpr std::size_t max_reserve = std::size_t{1} << 20;

// Converts every item of send_many's iterable before anything is sent (so a bad item sends
// nothing). False with a Python exception set.
bool collect_items(PyObject* self, const channel& ch, PyObject* iterable,
                   std::vector<message>& items) {
  try {
    py::object it = py::steal(PyObject_GetIter(iterable));
    if (!it) return false;
    if (Py_ssize_t hint = PyObject_LengthHint(iterable, 0); hint > 0) {
      items.reserve(std::min(static_cast<std::size_t>(hint), max_reserve));
    } else if (hint < 0) {
      PyErr_Clear();
    }
    while (PyObject* o = PyIter_Next(it.get())) {
      std::int64_t v = 0;
      if (PyLong_CheckExact(o) && small_int(o, v)) {  // the common case, without to_message
        items.emplace_back(v);
        Py_DECREF(o);
        continue;
      }
      const bool ok = to_message(Py_TYPE(self), ch, o, items.emplace_back());  // in place
      Py_DECREF(o);
      if (!ok) return false;
    }
    return !PyErr_Occurred();
  } catch (const std::bad_alloc&) {
    items.clear();
    PyErr_NoMemory();
    return false;
  } catch (const std::length_error&) {
    items.clear();
    PyErr_NoMemory();
    return false;
  }
}

// send_many's exception when it stops early (timeout, close): as send's, with `sent`, the
// number of items that went into the channel (the first `sent` of the iterable's).
PyObject* raise_send_many_error(PyObject* module, const channel& ch, boost::system::error_code ec,
                                std::size_t sent) {
  raise_channel_error(module, ch, ec, false);
  PyObject* exc = PyErr_GetRaisedException();
  if (exc == nullptr) return nullptr;
  PyObject* n = PyLong_FromSize_t(sent);
  if (n == nullptr || PyObject_SetAttrString(exc, "sent", n) < 0) {
    Py_XDECREF(n);
    Py_DECREF(exc);
    return nullptr;  // that error instead
  }
  Py_DECREF(n);
  PyErr_SetRaisedException(exc);
  return nullptr;
}

PyObject* ch_send_many(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  std::vector<PyObject*> a;
  if (!parse_args("send_many", args, nargs, kw, {"items", "timeout"}, 1, a)) return nullptr;
  auto& ch = as_chan(self)->ch;
  PyObject* module = self_module(self);
  channel_timeout timeout;
  if (!parse_timeout(a[1], timeout)) return nullptr;
  std::vector<message> items;
  if (!collect_items(self, ch, a[0], items)) return nullptr;
  std::span<message> rest(items);
  auto first = ch.try_send_many(rest);
  std::size_t sent = first.sent;
  if (sent < items.size() && first.error == errc::channel_full &&
      (!timeout || timeout->count() > 0)) {
    // Loop so that the main interpreter's periodic signal checks resume where they stopped.
    boost::system::result<std::size_t> step;
    if (!wait_released(module,
            [&](channel_timeout t, std::stop_token st) -> boost::system::result<std::size_t> {
              auto r = ch.send_many(rest.subspan(sent), t, st);
              sent += r.sent;
              if (r.error) return r.error;
              return sent;
            },
            timeout, step)) {
      return nullptr;
    }
    if (!step) return raise_send_many_error(module, ch, step.error(), sent);
  } else if (first.error && sent < items.size()) {
    return raise_send_many_error(module, ch, first.error, sent);
  }
  return PyLong_FromSize_t(sent);
}

// recv_many's fast path: the items there now (up to max_items, at most 4096 per call), as a
// list built straight from the ring. nullptr without an exception set when there are none (or
// the channel is closed and drained): the caller then waits or reports as usual.
PyObject* recv_many_now(PyObject* self, PyObject* module, const channel& ch,
                        std::size_t max_items) {
  struct gathered {
    std::vector<PyObject*> objects;  ///< nullptr where the item is in `later`
    std::vector<std::pair<std::size_t, message>> later;
  } g;
  const std::size_t chunk = std::min<std::size_t>(max_items, 4096);
  try {
    // The callbacks must not reallocate either: an item taken from the ring and not kept
    // would be lost.
    g.objects.resize(chunk);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
    return nullptr;
  }
  // On a receiving side this thread owns, a run of ints becomes Python ints in one pass over
  // the slots (no callback per item, one store of the ring's head).
  bool other_next = false;
  const std::size_t ints = try_take_ints(ch, chunk, int_object,
                                         reinterpret_cast<void**>(g.objects.data()), other_next);
  g.objects.resize(ints);  // shrinking: no allocation
  if (ints == chunk || (ints > 0 && !other_next)) {  // nothing else there now
    return finish_batch(self, module, g.objects, g.later);
  }
  try {
    g.later.reserve(chunk - ints);
  } catch (const std::bad_alloc&) {
    if (ints > 0) return finish_batch(self, module, g.objects, g.later);
    PyErr_NoMemory();
    return nullptr;
  }
  auto consume = [](void* ctx, message&& m) noexcept {
    auto& g = *static_cast<gathered*>(ctx);
    PyObject* o = int_from_slot(m);
    if (o == nullptr) g.later.emplace_back(g.objects.size(), std::move(m));  // reserved
    g.objects.push_back(o);  // within the capacity of chunk
  };
  auto r = try_recv_each(ch, chunk - ints, consume, &g);
  if (!r && ints == 0) return nullptr;
  return finish_batch(self, module, g.objects, g.later);
}

PyObject* ch_recv_many(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  std::vector<PyObject*> a;
  if (!parse_args("recv_many", args, nargs, kw, {"max_items", "timeout"}, 1, a)) return nullptr;
  auto& ch = as_chan(self)->ch;
  PyObject* module = self_module(self);
  Py_ssize_t max_items = 0;
  if (!parse_size(a[0], "recv_many", "max_items", max_items)) return nullptr;
  if (max_items < 1) {
    PyErr_SetString(PyExc_ValueError, "recv_many: max_items must be at least 1");
    return nullptr;
  }
  channel_timeout timeout;
  if (!parse_timeout(a[1], timeout)) return nullptr;
  if (auto* c = as_chan(self); c->holds()) {
    if (c->held_error != nullptr) return take_held(self, module);
    std::vector<message> got;
    const std::size_t n = std::min(c->held.size(), static_cast<std::size_t>(max_items));
    try {
      got.reserve(n);  // before any item leaves the handle
    } catch (const std::bad_alloc&) {
      PyErr_NoMemory();
      return nullptr;
    }
    for (std::size_t i = 0; i < n; ++i) {
      got.push_back(std::move(c->held.front()));
      c->held.pop_front();
    }
    bool untouched = false;
    PyObject* list = finish_messages(self, module, got, untouched);
    if (untouched) {
      for (auto it = got.rbegin(); it != got.rend(); ++it) {
        c->held.push_front(std::move(*it));  // back where they were
      }
    }
    return list;
  }
  // What is there now goes from the ring slots straight into the list's objects: small ints
  // become Python ints on the spot, anything else is kept aside and converted afterwards.
  if (PyObject* list = recv_many_now(self, module, ch, static_cast<std::size_t>(max_items))) {
    return list;
  }
  if (PyErr_Occurred()) return nullptr;
  std::vector<message> got;
  got.reserve(static_cast<std::size_t>(std::min<Py_ssize_t>(max_items, 4096)));
  auto r = ch.try_recv_many(got, static_cast<std::size_t>(max_items));
  if (!r && r.error() == errc::channel_empty && (!timeout || timeout->count() > 0)) {
    if (!wait_released(module,
            [&](channel_timeout t, std::stop_token st) {
              return ch.recv_many(got, static_cast<std::size_t>(max_items), t, st);
            },
            timeout, r)) {
      return nullptr;
    }
  }
  if (!r) {
    raise_channel_error(module, ch, r.error(), false);
    return nullptr;
  }
  bool untouched = false;  // out of memory: the items are lost, none could be handed out
  return finish_messages(self, module, got, untouched);
}

PyObject* ch_close(PyObject* self, PyObject*) {
  return PyBool_FromLong(as_chan(self)->ch.close());
}
// qsize() and empty() count the items this handle holds (see py_channel::held).
std::size_t held_count(const py_channel* c) noexcept {
  return c->held.size() + (c->held_error != nullptr ? 1 : 0);
}
PyObject* ch_qsize(PyObject* self, PyObject*) {
  return PyLong_FromSize_t(as_chan(self)->ch.size() + held_count(as_chan(self)));
}
PyObject* ch_empty(PyObject* self, PyObject*) {
  return PyBool_FromLong(as_chan(self)->ch.size() + held_count(as_chan(self)) == 0);
}
PyObject* ch_full(PyObject* self, PyObject*) {
  auto& ch = as_chan(self)->ch;
  return PyBool_FromLong(ch.size() >= ch.capacity());
}
PyObject* ch_closed(PyObject* self, void*) { return PyBool_FromLong(as_chan(self)->ch.closed()); }
PyObject* ch_maxsize(PyObject* self, void*) {
  return PyLong_FromSize_t(as_chan(self)->ch.capacity());
}
PyObject* ch_id(PyObject* self, void*) {
  return PyLong_FromUnsignedLongLong(as_chan(self)->ch.id());
}
PyObject* ch_name(PyObject* self, void*) {
  const auto& n = as_chan(self)->ch.name();
  if (n.empty()) Py_RETURN_NONE;
  return PyUnicode_FromStringAndSize(n.data(), static_cast<Py_ssize_t>(n.size()));
}
PyObject* ch_pickle(PyObject* self, void*) {
  return PyBool_FromLong(channel_allows_pickle(as_chan(self)->ch));
}

PyObject* ch_iter(PyObject* self) { return Py_NewRef(self); }
PyObject* ch_next(PyObject* self) {
  PyObject* o = do_recv(self, true, nullptr, false);
  if (o == nullptr) {
    PyObject* module = self_module(self);
    PyObject* closed = module_attr(module, "ChannelClosed");
    if (closed != nullptr && PyErr_ExceptionMatches(closed)) PyErr_Clear();  // -> StopIteration
    Py_XDECREF(closed);
  }
  return o;
}

PyObject* ch_repr(PyObject* self) {
  auto& ch = as_chan(self)->ch;
  // Appended piece by piece: `" " + std::to_string(...)` set off a GCC 12 -Wrestrict false
  // positive in release builds.
  std::string s = "<isola.Channel #";
  s += std::to_string(ch.id());
  if (!ch.name().empty()) {
    s += " '";
    s += ch.name();
    s += '\'';
  }
  s += ' ';
  s += std::to_string(ch.size());
  s += '/';
  s += std::to_string(ch.capacity());
  if (ch.closed()) s += " closed";
  s += '>';
  return PyUnicode_FromString(s.c_str());
}

PyObject* ch_richcompare(PyObject* a, PyObject* b, int op) {
  if (Py_TYPE(a) != Py_TYPE(b) || (op != Py_EQ && op != Py_NE)) Py_RETURN_NOTIMPLEMENTED;
  bool eq = as_chan(a)->ch == as_chan(b)->ch;
  return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}
Py_hash_t ch_hash(PyObject* self) {
  return static_cast<Py_hash_t>(as_chan(self)->ch.id() & 0x7fffffffffffffffULL);
}

PyObject* ch_new(PyTypeObject* type, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"maxsize", "pickle", nullptr};
  PyObject* maxsize_arg = nullptr;
  Py_ssize_t maxsize = 0;
  int pickle = 1;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$p:Channel", const_cast<char**>(kwlist),
                                   &maxsize_arg, &pickle)) {
    return nullptr;
  }
  if (maxsize_arg != nullptr && !parse_size(maxsize_arg, "Channel", "maxsize", maxsize)) {
    return nullptr;
  }
  if (maxsize < 0) {
    PyErr_SetString(PyExc_ValueError, "Channel: maxsize must be >= 0 (0 means the default bound)");
    return nullptr;
  }
  try {
    channel ch(maxsize == 0 ? default_maxsize : static_cast<std::size_t>(maxsize));
    set_channel_pickle(ch, pickle != 0);
    return wrap_channel(type, std::move(ch));
  } catch (const std::length_error& e) {  // a ring that cannot be allocated
    PyErr_Format(PyExc_MemoryError, "Channel(maxsize=%zd): %s", maxsize, e.what());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_Format(PyExc_ValueError, "Channel: %s", e.what());
    return nullptr;
  }
}

void ch_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  auto* c = as_chan(self);
  if (c->weakreflist != nullptr) PyObject_ClearWeakRefs(self);
  Py_CLEAR(c->held_error);
  c->held.~deque();
  c->ch.~channel();
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef channel_methods[] = {
    {"send", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ch_send)),
     METH_FASTCALL | METH_KEYWORDS,
     "send(obj, timeout=None)\n\nWaits for room (GIL released), then sends obj. Raises "
     "ChannelClosed after close(), TimeoutError when timeout seconds pass."},
    {"recv", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ch_recv)),
     METH_FASTCALL | METH_KEYWORDS,
     "recv(timeout=None)\n\nWaits for an item (GIL released) and returns it. Raises "
     "ChannelClosed once the channel is closed and drained, TimeoutError on timeout."},
    {"send_nowait", ch_send_nowait, METH_O,
     "send_nowait(obj)\n\nSends at once or raises QueueFull (ChannelClosed after close())."},
    {"recv_nowait", ch_recv_nowait, METH_NOARGS,
     "recv_nowait()\n\nReturns an item at once or raises QueueEmpty (ChannelClosed when "
     "closed and drained)."},
    {"put", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ch_put)),
     METH_FASTCALL | METH_KEYWORDS,
     "put(obj, block=True, timeout=None)\n\nqueue.Queue / PEP 734 style send: raises QueueFull "
     "when not blocking and full, or when the timeout passes."},
    {"get", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ch_get)),
     METH_FASTCALL | METH_KEYWORDS,
     "get(block=True, timeout=None)\n\nqueue.Queue / PEP 734 style receive: raises QueueEmpty "
     "when not blocking and empty, or when the timeout passes."},
    {"put_nowait", ch_send_nowait, METH_O, "put_nowait(obj)\n\nThe same as send_nowait(obj)."},
    {"get_nowait", ch_recv_nowait, METH_NOARGS, "get_nowait()\n\nThe same as recv_nowait()."},
    {"send_many", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ch_send_many)),
     METH_FASTCALL | METH_KEYWORDS,
     "send_many(items, timeout=None) -> int\n\nSends every item of the iterable in order, "
     "waiting for room as needed; returns how many were sent."},
    {"recv_many", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ch_recv_many)),
     METH_FASTCALL | METH_KEYWORDS,
     "recv_many(max_items, timeout=None) -> list\n\nWaits for at least one item, then returns "
     "up to max_items that are available at once."},
    {"close", ch_close, METH_NOARGS,
     "close() -> bool\n\nCloses the channel: sends fail from now on, receivers get what was "
     "already sent, then ChannelClosed. True if this call closed it."},
    {"qsize", ch_qsize, METH_NOARGS, "qsize() -> int\n\nItems queued now (approximate)."},
    {"empty", ch_empty, METH_NOARGS, "empty() -> bool"},
    {"full", ch_full, METH_NOARGS, "full() -> bool"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef channel_getset[] = {
    {"closed", ch_closed, nullptr, "True once close() has been called.", nullptr},
    {"maxsize", ch_maxsize, nullptr, "The bound on queued items.", nullptr},
    {"id", ch_id, nullptr, "Process-unique id of the channel.", nullptr},
    {"name", ch_name, nullptr, "The name it was opened under, or None.", nullptr},
    {"pickle", ch_pickle, nullptr, "Whether objects may be sent pickled.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyMemberDef channel_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(py_channel_head, weakreflist), Py_READONLY,
     nullptr},
    {nullptr, 0, 0, 0, nullptr}};

PyType_Slot channel_slots[] = {
    {Py_tp_members, channel_members},
    {Py_tp_new, reinterpret_cast<void*>(ch_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(ch_dealloc)},
    {Py_tp_methods, channel_methods},
    {Py_tp_getset, channel_getset},
    {Py_tp_iter, reinterpret_cast<void*>(ch_iter)},
    {Py_tp_iternext, reinterpret_cast<void*>(ch_next)},
    {Py_tp_repr, reinterpret_cast<void*>(ch_repr)},
    {Py_tp_richcompare, reinterpret_cast<void*>(ch_richcompare)},
    {Py_tp_hash, reinterpret_cast<void*>(ch_hash)},
    {Py_tp_doc, const_cast<char*>(
                    "Channel(maxsize=0, *, pickle=True)\n\nA bounded FIFO shared by every "
                    "interpreter and C++ thread that holds it. maxsize=0 means the default bound "
                    "(4096). Send it through another channel to share it. Values (None, bool, "
                    "int, float, str, bytes, tuple, list, dict) are copied; bytes of 64 KiB or "
                    "more and memoryviews arrive as a read-only memoryview over the same memory; "
                    "other objects are pickled (protocol 5) unless pickle=False.")},
    {0, nullptr}};

PyType_Spec channel_spec = {"isola.Channel", sizeof(py_channel), 0, Py_TPFLAGS_DEFAULT,
                            channel_slots};

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
  if (maxsize < 0) {
    PyErr_SetString(PyExc_ValueError, "isola.channel: maxsize must be >= 0");
    return nullptr;
  }
  PyTypeObject* type = channel_type_of(module);
  if (type == nullptr) return nullptr;
  try {
    auto ch = channel::open(std::string_view(name, static_cast<std::size_t>(size)),
                            maxsize == 0 ? default_maxsize : static_cast<std::size_t>(maxsize));
    return wrap_channel(type, std::move(ch));
  } catch (const std::length_error& e) {  // a ring that cannot be allocated
    PyErr_Format(PyExc_MemoryError, "isola.channel(maxsize=%zd): %s", maxsize, e.what());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_Format(PyExc_ValueError, "isola.channel: %s", e.what());
    return nullptr;
  }
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
     "maxsize, 0 meaning the default bound) if there is none: the way to wire interpreters "
     "together. The name is registered while any handle to the channel exists."},
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
  if (add_exception(m, "ChannelClosed", "The channel is closed (and, for receivers, drained).",
                    nullptr) < 0) {
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
             "No item is available (subclass of queue.Empty, as in PEP 734)."},
        pair{"QueueFull", "ChannelFull", "Full",
             "No room is available (subclass of queue.Full, as in PEP 734)."}}) {
    PyObject* dict = PyModule_GetDict(m);  // borrowed
    PyObject* found = PyDict_GetItemString(dict, p.name);  // borrowed
    if (found == nullptr) found = PyDict_GetItemString(dict, p.alias);
    py::object exc = py::borrow(found);
    if (!exc) {
      py::object base = py::steal(PyObject_GetAttrString(queue.get(), p.base));
      if (!base) return -1;
      exc = py::steal(new_exception(p.name, p.doc, base.get()));
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
                                       {nullptr, nullptr}};

module_part_registrar channels_part({"channels", channel_functions, exec_channels, channel_lazy});

}  // namespace
}  // namespace isola::detail
