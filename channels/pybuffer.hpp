// Buffers and pickles between Python and isola::message, for the channels' Python face.
// - Sending shares a large bytes object or a memoryview without copying: the message keeps a
//   Py_buffer of the sender's object, released in the sender's interpreter (attached safely)
//   when the last reference anywhere is gone. See docs/channels.md for what happens when the
//   sender ends first.
// - Receiving gives what was sent: a bytes object for bytes (one copy, made by the receiver),
//   a read-only memoryview over an isola._SharedBuffer that holds the message's buffer for a
//   memoryview or any other buffer.
// Everything here needs the GIL of the current interpreter.
#pragma once

#include "lib/python.hpp"

#include "channels/channel_ext.hpp"

#include <isola/channel.hpp>
#include <isola/message.hpp>

#include <optional>
#include <span>
#include <stop_token>

namespace isola::detail {

/// Buffers at least this large are shared; smaller ones are copied (cheaper than the
/// bookkeeping, and small blocks live in the interpreter's own allocator arenas).
constexpr Py_ssize_t zero_copy_min = 64 * 1024;

/// A shared_buffer over obj's contiguous buffer (a copy if it is small, non-contiguous, or the
/// current interpreter is not one isola manages). False with a Python exception set.
bool buffer_from_python(PyObject* obj, shared_buffer& out);

/// A new read-only memoryview of b in the current interpreter.
PyObject* memoryview_of(PyObject* module, const shared_buffer& b);
/// Whether b shares a bytes object that a Python sender sent (it arrives as bytes).
bool is_shared_bytes(const shared_buffer& b) noexcept;
/// b as a bytes object: the sender's own object where it was sent, else a copy.
PyObject* bytes_of(const shared_buffer& b);

/// pickle.dumps(obj, protocol=5) with out-of-band buffers. False with an exception set. The
/// channels pickled inside obj (see note_pickled_channel) are kept alive by the payload.
bool pickle_to(PyObject* obj, pickled& out);
/// Called by Channel.__reduce__: while a pickle_to runs on this thread, the payload it makes
/// will hold ch. False with MemoryError set.
bool note_pickled_channel(const channel& ch);
/// pickle.loads of a payload, its buffers given as memoryviews.
PyObject* unpickle(PyObject* module, const pickled& p);

/// PyModule_Add (3.13+) for 3.12 as well: adds value under name and steals the reference,
/// also on failure.
inline int module_add(PyObject* module, const char* name, PyObject* value) {
  int rc = PyModule_AddObjectRef(module, name, value);
  Py_XDECREF(value);
  return rc;
}

/// Adds isola._SharedBuffer to the module.
int add_shared_buffer_type(PyObject* module);

}  // namespace isola::detail
