// The Python face of channels, shared by its files: pychannel.cpp (the isola.Channel type and
// the helpers below), pyconvert.cpp (Python objects <-> isola::message) and pymodule.cpp
// (isola.channel(name), isola.select, the exceptions, the module part). See docs/channels.md.
#pragma once

#include "lib/python.hpp"

#include "channels/channel_ext.hpp"
#include "lib/interrupt.hpp"
#include "lib/pyexec.hpp"
#include "lib/state.hpp"

#include <isola/channel.hpp>

#include <boost/system/error_code.hpp>

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>
#include <stop_token>
#include <string>
#include <type_traits>

namespace isola::detail {

using namespace std::chrono_literals;

/// Waits in the main interpreter wake this often to run signal handlers (KeyboardInterrupt).
inline constexpr auto signal_check_interval = 50ms;
/// A blocking send/recv that finds the channel full/empty first spins this many rounds (about
/// 1-2 us) holding the GIL before it releases the GIL to wait: the other side is often that
/// close, and releasing and re-taking the GIL costs more than the spin.
inline constexpr int spin_before_release = 64;

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

inline py_channel* as_chan(PyObject* self) { return reinterpret_cast<py_channel*>(self); }

/// The module that made `type` (types are per interpreter, made by PyType_FromModuleAndSpec).
PyObject* module_of(PyTypeObject* type);
/// isola.<name> of that module (new reference), or nullptr with an exception set.
PyObject* module_attr(PyObject* module, const char* name);
/// Raises the module's exception exc_name ("ChannelClosed") with msg.
void raise_from_module(PyObject* module, const char* exc_name, const std::string& msg);
/// Adds a note (PEP 678) to the exception being raised, leaving its type and message as they
/// are. Best effort: a failure to add it keeps the original exception.
void add_note_to_current(const std::string& note);
/// The module's Channel type (borrowed), or nullptr with an exception set.
PyTypeObject* channel_type_of(PyObject* module);
/// A new Channel object of `type` holding ch.
PyObject* wrap_channel(PyTypeObject* type, channel ch);

/// Raises the Python exception for a failed channel operation (ChannelClosed, QueueEmpty, ...).
void raise_channel_error(PyObject* module, const channel& ch, boost::system::error_code ec,
                         bool queue_names);
/// Parses a size argument (an int) of fn; false with TypeError/OverflowError naming `what`.
bool parse_size(PyObject* o, const char* fn, const char* what, Py_ssize_t& out);
/// Parses a timeout argument (None, or seconds >= 0); false with an exception set.
bool parse_timeout(PyObject* o, channel_timeout& out);

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

/// Converts obj for sending through ch. Returns false with a Python exception set.
bool to_message(PyTypeObject* channel_type, const channel& ch, PyObject* obj, message& out);
/// The first object in obj that CPython 3.13 would not share (syncobj=True), or nullptr:
/// obj is None, bool, int, float, str, bytes, memoryview, a channel or a tuple of them.
PyObject* first_not_shareable(PyObject* obj, PyTypeObject* channel_type, int depth = 0);
/// True if obj is shareable; else false with isola.NotShareableError raised, naming the item.
bool require_shareable(PyObject* module, PyTypeObject* channel_type, PyObject* obj);
/// A Python int for an item still in its ring slot; nullptr (no exception set) if there is
/// no memory now: the item is then left for the general path, which raises that properly.
/// Inline: the receive loops call it for every item.
inline void* int_object(std::int64_t i) noexcept {
  PyObject* o = PyLong_FromLongLong(i);
  if (o == nullptr) PyErr_Clear();
  return o;
}
/// recv's and recv_many's step on an item still in its ring slot: a plain int becomes a
/// Python int on the spot; nullptr (no exception set) means "move it out and convert it later".
inline PyObject* int_from_slot(const message& m) noexcept {
  const std::int64_t* i = plain_int(m);
  return i != nullptr ? static_cast<PyObject*>(int_object(*i)) : nullptr;
}
/// The Python object for a received message (new reference), or nullptr with an exception.
PyObject* from_message(PyObject* module, const message& m);

/// The isola.Channel type's spec (pymodule.cpp makes the type from it per interpreter).
extern PyType_Spec channel_spec;

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

}  // namespace isola::detail
