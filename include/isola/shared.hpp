// Shared immortal values: immutable data published once and read by every interpreter of the
// process as the very same Python objects, without copies, locks or reference-count traffic.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <isola/value.hpp>

namespace isola {

/// How a value is published.
struct share_options {
  /// Publishing a name that is taken is an error (std::invalid_argument) unless true; the
  /// value replaced stays valid for whoever still holds it.
  bool replace = false;
  /// The most bytes the published objects may take (0: no limit); a larger value is refused
  /// with std::length_error (MemoryError from Python) that gives its size.
  std::size_t max_bytes = 0;
};

/// Publishes a deep, immutable copy of v under `name`, for every interpreter of the process
/// (isola.shared(name) in Python).
/// - What can be shared: None, bool, int, float, str, bytes, tuples of them, and mappings
///   (an isola::dict becomes a read-only mapping, isola.SharedMapping in Python) with keys of
///   those types, nested up to 2000 levels deep. A list is published as a tuple.
/// - Lifetime: the published objects are immortal (CPython's reference counts never change
///   and no interpreter's allocator ever frees them) and live until the runtime ends, also
///   after the interpreter that published them has ended and after the name is replaced.
///   Readers must not keep pointers to them past the runtime.
/// - They are made in the main interpreter (its GIL is taken for the time it takes) and
///   everything CPython would cache on first use (a str's hash and UTF-8 form, a bytes'
///   hash) is filled in here, so that readers never write to them; a str is marked interned,
///   so interning it anywhere changes nothing (sys.intern(s) returns s itself).
/// - Throws std::invalid_argument (name taken, empty name), std::length_error (over
///   max_bytes), isola::error{no_runtime} without a runtime. Thread-safe.
void share(std::string_view name, const value& v, share_options options = {});

/// The names published now, in the order they were first published.
std::vector<std::string> shared_names();

/// Whether a value is published under name.
bool is_shared(std::string_view name);

/// A published value read into an isola::value (a copy, for C++ code that wants one).
/// std::nullopt when nothing is published under name. Needs a runtime.
std::optional<value> shared_copy(std::string_view name);

}  // namespace isola
