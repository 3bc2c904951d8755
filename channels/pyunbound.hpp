// PEP 734's unbound items for Python's channels: put(..., unbounditems=...) binds an item to
// the interpreter that put it, and get() then gives, once that interpreter has ended, what the
// item's mode says: isola.UNBOUND in its place, ItemInterpreterDestroyed, or nothing (the item
// is skipped). CPython's flags: UNBOUND_REMOVE 1, UNBOUND_ERROR 2, UNBOUND 3; isola's own 0
// keeps the item (it is a C++ copy, valid after its interpreter has ended).
#pragma once

#include "lib/python.hpp"

#include <isola/message.hpp>

#include <cstdint>

namespace isola::detail {

inline constexpr int unbound_keep = 0;
inline constexpr int unbound_remove = 1;
inline constexpr int unbound_error = 2;
inline constexpr int unbound_replace = 3;

/// The mode an unbounditems argument names: nullptr or None gives `dflt`; isola.UNBOUND,
/// UNBOUND_ERROR and UNBOUND_REMOVE their flags. False with NotImplementedError set (CPython's
/// error) for anything else.
bool parse_unbound(PyObject* module, PyObject* arg, int dflt, int& out);
/// The object that names a mode (None for keep); a new reference, nullptr with an exception.
PyObject* unbound_object(PyObject* module, int mode);

/// Binds m to the calling interpreter with `mode` (nothing for unbound_keep, or an
/// interpreter isola does not run).
void bind_to_current(message& m, int mode);

/// For a bound item (else nullptr): its object, the replacement, or ItemInterpreterDestroyed.
/// `bound` is set when m is a bound item; `removed` when it is to be skipped (the object
/// returned is then None and must be dropped).
PyObject* from_bound(PyObject* module, const message& m, bool& bound, bool& removed);

/// Items skipped (UNBOUND_REMOVE) by this thread's conversions so far: a receive that finds
/// the count moved drops what it got and takes the next item. Read on every receive: an
/// initial-exec thread_local, one load and no call.
[[gnu::tls_model("initial-exec")]] inline thread_local std::uint64_t unbound_removed_count = 0;
inline std::uint64_t removed_items() noexcept { return unbound_removed_count; }

/// Makes isola.UNBOUND, UNBOUND_ERROR, UNBOUND_REMOVE and ItemInterpreterDestroyed (a lazy
/// attribute maker, see lib/module.hpp).
int make_unbound_names(PyObject* module);

}  // namespace isola::detail
