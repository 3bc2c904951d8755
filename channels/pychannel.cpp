// The isola.Channel type: its methods (send/recv and the PEP 734 queue names, batches,
// close, iteration) and the helpers every part of channels' Python face uses.
#include "channels/pychannel.hpp"
#include "channels/pyunbound.hpp"

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

channel make_channel(Py_ssize_t maxsize) {
  channel ch = maxsize > 0 ? channel(static_cast<std::size_t>(maxsize)) : channel(unbounded);
  set_channel_maxsize(ch, maxsize);
  return ch;
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
                      ch.unbounded()
                          ? label + " is full: no memory could be allocated for more items"
                          : label + " is full (maxsize " + std::to_string(ch.capacity()) + ")");
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

namespace {

// ---- Channel methods --------------------------------------------------------------------------

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
// unbound: put's unbounditems mode (pyunbound.hpp); send() never binds its items.
PyObject* do_send(PyObject* self, PyObject* obj, bool block, PyObject* timeout_arg,
                  bool queue_names, int unbound = unbound_keep) {
  auto& ch = as_chan(self)->ch;
  channel_timeout timeout;
  if (!parse_timeout(timeout_arg, timeout)) return nullptr;
  message m;
  if (!to_message(Py_TYPE(self), ch, obj, m)) return nullptr;
  if (unbound != unbound_keep) bind_to_current(m, unbound);
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
            [&](channel_timeout t, std::stop_token st) -> boost::system::result<void> {
              boost::system::error_code ec;
              ch.send(std::move(m), t, std::move(st), ec);
              if (ec) return ec;
              return {};
            },
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
  const std::uint64_t removed = removed_items();
  std::vector<bool> skip;  // items skipped (UNBOUND_REMOVE), by index
  for (std::size_t k = 0; k < later.size(); ++k) {
    const std::size_t at = later[k].first;
    const std::uint64_t before = removed_items();
    if ((objects[at] = from_message(module, later[k].second)) != nullptr) {
      if (removed_items() != before) [[unlikely]] {
        skip.resize(objects.size());
        skip[at] = true;
      }
      continue;
    }
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
  std::size_t kept = 0;
  for (std::size_t i = 0; i < size; ++i) {
    if (removed_items() != removed && i < skip.size() && skip[i]) {
      Py_DECREF(objects[i]);
      continue;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(kept++), objects[i]);
  }
  Py_SET_SIZE(list, static_cast<Py_ssize_t>(kept));  // shorter when an item failed or was skipped
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
PyObject* do_recv_once(PyObject* self, bool block, PyObject* timeout_arg, bool queue_names,
                       bool quick_tried) {
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
    auto wait = [&](channel_timeout t,
                    std::stop_token st) -> boost::system::result<message> {
      boost::system::error_code ec;
      message m = ch.recv(t, std::move(st), ec);
      if (ec) return ec;
      return m;
    };
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

// A receive: an item skipped because its interpreter has ended (put with
// unbounditems=UNBOUND_REMOVE) is dropped and the next one taken, with the same timeout.
PyObject* do_recv(PyObject* self, bool block, PyObject* timeout_arg, bool queue_names,
                  bool quick_tried = false) {
  for (;;) {
    const std::uint64_t removed = removed_items();
    PyObject* o = do_recv_once(self, block, timeout_arg, queue_names, quick_tried);
    if (o == nullptr || removed_items() == removed) [[likely]] return o;
    Py_DECREF(o);
    quick_tried = false;
  }
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
    const std::uint64_t removed = removed_items();
    if (recv_quick(self, o)) {
      if (o == nullptr || removed_items() == removed) [[likely]] return o;
      Py_DECREF(o);  // an item skipped (UNBOUND_REMOVE): wait for the next one
      return do_recv(self, true, nullptr, false);
    }
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
// put's and put_nowait's syncobj (CPython 3.13): None takes the channel's default; true
// refuses, with NotShareableError, what CPython would not share. False with an exception set.
bool check_syncobj(PyObject* self, PyObject* obj, PyObject* syncobj_arg) {
  bool sync = channel_syncobj_default(as_chan(self)->ch);
  if (syncobj_arg != nullptr && syncobj_arg != Py_None) {
    const int t = PyObject_IsTrue(syncobj_arg);
    if (t < 0) return false;
    sync = t != 0;
  }
  return !sync || require_shareable(self_module(self), Py_TYPE(self), obj);
}

// put's and put_nowait's unbounditems (PEP 734, CPython 3.14), or `unbound`, its name in
// CPython 3.13: None takes the channel's default. False with an exception set.
bool unbound_arg(PyObject* self, PyObject* items, PyObject* unbound_313, int& mode) {
  if (items != nullptr && unbound_313 != nullptr) {
    PyErr_SetString(PyExc_TypeError,
                    "give unbounditems or unbound (its CPython 3.13 name), not both");
    return false;
  }
  return parse_unbound(self_module(self), items != nullptr ? items : unbound_313,
                       channel_unbound_default(as_chan(self)->ch), mode);
}

PyObject* ch_put(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  std::vector<PyObject*> a;
  if (!parse_args("put", args, nargs, kw,
                  {"obj", "block", "timeout", "syncobj", "unbounditems", "unbound"}, 1, a)) {
    return nullptr;
  }
  int block = 1, mode = unbound_keep;
  if (!truthy(a[1], true, block) || !unbound_arg(self, a[4], a[5], mode)) return nullptr;
  if (!check_syncobj(self, a[0], a[3])) return nullptr;
  return do_send(self, a[0], block != 0, a[2], true, mode);
}
PyObject* ch_put_nowait(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  std::vector<PyObject*> a;
  if (!parse_args("put_nowait", args, nargs, kw, {"obj", "syncobj", "unbounditems", "unbound"}, 1,
                  a)) {
    return nullptr;
  }
  int mode = unbound_keep;
  if (!unbound_arg(self, a[2], a[3], mode) || !check_syncobj(self, a[0], a[1])) return nullptr;
  return do_send(self, a[0], false, nullptr, true, mode);
}
PyObject* ch_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  std::vector<PyObject*> a;
  if (!parse_args("get", args, nargs, kw, {"block", "timeout"}, 0, a)) return nullptr;
  int block = 1;
  if (!truthy(a[0], true, block)) return nullptr;
  return do_recv(self, block != 0, a[1], true);
}

// Reserving for a length hint: at most this many items up front (the vector grows from there; a
// __length_hint__ of 10**15 must not ask for 48 PB at once). Ranges are iterated like any
// iterable rather than read from their bounds: a sender that skips making the int objects
// outruns the receiver and polls a full ring, which slows the receiver, so batches move fewer
// items that way (7.3-8.9 against 11.0-11.6 M items/s measured).
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
              boost::system::error_code ec;
              sent += ch.send_many(rest.subspan(sent), t, std::move(st), ec);
              if (ec) return ec;
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
            [&](channel_timeout t,
                std::stop_token st) -> boost::system::result<std::size_t> {
              boost::system::error_code ec;
              const std::size_t n =
                  ch.recv_many(got, static_cast<std::size_t>(max_items), t, std::move(st), ec);
              if (ec) return ec;
              return n;
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
  return PyBool_FromLong(!ch.unbounded() && ch.size() >= ch.capacity());
}
PyObject* ch_closed(PyObject* self, void*) { return PyBool_FromLong(as_chan(self)->ch.closed()); }
PyObject* ch_maxsize(PyObject* self, void*) {
  return PyLong_FromLongLong(channel_maxsize(as_chan(self)->ch));
}
PyObject* ch_unbounditems(PyObject* self, void*) {
  return unbound_object(self_module(self), channel_unbound_default(as_chan(self)->ch));
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
  if (!ch.unbounded()) {
    s += '/';
    s += std::to_string(ch.capacity());
  }
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

// Channel(id=N): a handle to the live channel with that id, or QueueNotFoundError.
PyObject* attach_by_id(PyTypeObject* type, PyObject* id_arg) {
  if (!PyLong_Check(id_arg)) {
    PyErr_Format(PyExc_TypeError, "Channel: id must be an int, not %s", Py_TYPE(id_arg)->tp_name);
    return nullptr;
  }
  const unsigned long long id = PyLong_AsUnsignedLongLong(id_arg);
  if (id == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();  // negative or too large: no channel has it
  } else if (auto ch = channel::find_id(id)) {
    return wrap_channel(type, std::move(*ch));
  }
  PyObject* module = module_of(type);
  PyObject* text = PyUnicode_FromFormat(
      "Channel: no channel has id %R (it was never made, or every handle to it is gone)",
      id_arg);
  if (text == nullptr) return nullptr;
  raise_from_module(module, "QueueNotFoundError", PyUnicode_AsUTF8(text));
  Py_DECREF(text);
  return nullptr;
}

PyObject* ch_new(PyTypeObject* type, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"maxsize", "pickle", "syncobj", "unbounditems", "id", nullptr};
  PyObject* maxsize_arg = nullptr;
  PyObject* pickle_arg = nullptr;
  PyObject* syncobj_arg = nullptr;
  PyObject* unbound_arg = nullptr;
  PyObject* id_arg = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$OOOO:Channel", const_cast<char**>(kwlist),
                                   &maxsize_arg, &pickle_arg, &syncobj_arg, &unbound_arg,
                                   &id_arg)) {
    return nullptr;
  }
  if (id_arg != nullptr) {
    if (maxsize_arg != nullptr || pickle_arg != nullptr || syncobj_arg != nullptr ||
        unbound_arg != nullptr) {
      PyErr_SetString(PyExc_TypeError,
                      "Channel: give id alone (a handle to an existing channel), or maxsize, "
                      "pickle, syncobj and unbounditems (a new channel)");
      return nullptr;
    }
    return attach_by_id(type, id_arg);
  }
  Py_ssize_t maxsize = 0;
  if (maxsize_arg != nullptr && !parse_size(maxsize_arg, "Channel", "maxsize", maxsize)) {
    return nullptr;
  }
  int pickle = 1, syncobj = 0, unbound = unbound_keep;
  if (pickle_arg != nullptr && (pickle = PyObject_IsTrue(pickle_arg)) < 0) return nullptr;
  if (syncobj_arg != nullptr && (syncobj = PyObject_IsTrue(syncobj_arg)) < 0) return nullptr;
  if (!parse_unbound(module_of(type), unbound_arg, unbound_keep, unbound)) return nullptr;
  try {
    channel ch = make_channel(maxsize);
    set_channel_pickle(ch, pickle != 0);
    set_channel_syncobj_default(ch, syncobj != 0);
    set_channel_unbound_default(ch, unbound);
    return wrap_channel(type, std::move(ch));
  } catch (const std::length_error& e) {  // a ring that cannot be allocated
    PyErr_Format(PyExc_MemoryError, "Channel(maxsize=%zd): %s", maxsize, e.what());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_Format(PyExc_ValueError, "Channel: %s", e.what());
    return nullptr;
  }
}

// Pickles as Channel(id=N): unpickled in any interpreter of this process while the channel
// lives, it is a handle to the same channel (QueueNotFoundError once it is gone). Pickled
// inside an item sent through a channel, the item keeps the channel alive.
PyObject* ch_reduce(PyObject* self, PyObject*) {
  if (!note_pickled_channel(as_chan(self)->ch)) return nullptr;
  PyObject* copyreg = PyImport_ImportModule("copyreg");
  if (copyreg == nullptr) return nullptr;
  PyObject* newobj_ex = PyObject_GetAttrString(copyreg, "__newobj_ex__");
  Py_DECREF(copyreg);
  if (newobj_ex == nullptr) return nullptr;
  PyObject* kwargs = Py_BuildValue("{sK}", "id",
                                   static_cast<unsigned long long>(as_chan(self)->ch.id()));
  PyObject* r = kwargs == nullptr ? nullptr
                                  : Py_BuildValue("(N(O()N))", newobj_ex,
                                                  reinterpret_cast<PyObject*>(Py_TYPE(self)),
                                                  kwargs);
  if (kwargs == nullptr) Py_DECREF(newobj_ex);
  return r;
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
     "put(obj, block=True, timeout=None, syncobj=None)\n\nqueue.Queue / PEP 734 style send: "
     "raises QueueFull when not blocking and full, or when the timeout passes. syncobj=True "
     "(CPython 3.13's meaning; None takes the channel's default) sends only what CPython "
     "shares (None, bool, int, float, str, bytes, memoryview, channels, tuples of them) and "
     "raises NotShareableError for anything else."},
    {"get", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ch_get)),
     METH_FASTCALL | METH_KEYWORDS,
     "get(block=True, timeout=None)\n\nqueue.Queue / PEP 734 style receive: raises QueueEmpty "
     "when not blocking and empty, or when the timeout passes."},
    {"put_nowait", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ch_put_nowait)),
     METH_FASTCALL | METH_KEYWORDS,
     "put_nowait(obj, syncobj=None)\n\nThe same as send_nowait(obj); syncobj as for put()."},
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
    {"__reduce__", ch_reduce, METH_NOARGS,
     "Pickles as Channel(id=...): a handle to the same channel in any interpreter of this "
     "process."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef channel_getset[] = {
    {"closed", ch_closed, nullptr, "True once close() has been called.", nullptr},
    {"maxsize", ch_maxsize, nullptr,
     "The bound on queued items, as given when made (<= 0: unbounded).", nullptr},
    {"unbounditems", ch_unbounditems, nullptr,
     "put()'s default unbounditems: None (the item is kept after the interpreter that put it "
     "has ended), isola.UNBOUND, UNBOUND_ERROR or UNBOUND_REMOVE.",
     nullptr},
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
                    "Channel(maxsize=0, *, pickle=True, syncobj=False, unbounditems=None)\n"
                    "Channel(*, id)\n\nA FIFO shared by every interpreter and C++ thread "
                    "that holds it; maxsize <= 0 (the default) means unbounded, as in PEP 734. "
                    "Send it through another channel, or pickle it, to share it; Channel(id=N) "
                    "attaches to a live channel. Values (None, bool, int, float, str, bytes, "
                    "tuple, list, dict) arrive as the type they were sent; memoryviews arrive as "
                    "a read-only memoryview over the same memory; other objects are pickled "
                    "(protocol 5) unless pickle=False.")},
    {0, nullptr}};

}  // namespace

PyType_Spec channel_spec = {"isola.Channel", sizeof(py_channel), 0, Py_TPFLAGS_DEFAULT,
                            channel_slots};

}  // namespace isola::detail
