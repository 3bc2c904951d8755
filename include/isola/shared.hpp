// Shared immortal values: immutable data published once and read by every interpreter of the
// process as the very same Python objects, without copies, locks or reference-count traffic.
#pragma once

#include <cstddef>
#include <cstdint>
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

/// A read-only view of a published value for C++ code: it reads the shared objects themselves,
/// without a copy and without taking any interpreter's GIL (they are immortal and nothing
/// writes to them). Valid until the runtime ends; cheap to copy (a pointer). Asking for the
/// wrong kind throws std::logic_error.
class shared_view {
 public:
  enum class kind { none, boolean, integer, floating, complex, str, bytes, tuple, mapping };
  kind type() const noexcept;
  bool as_bool() const;
  /// Throws std::out_of_range for an int beyond 64 bits.
  std::int64_t as_int() const;
  double as_float() const;
  /// UTF-8. Throws std::domain_error for a str with a lone surrogate (it has no UTF-8 form).
  std::string_view as_str() const;
  std::string_view as_bytes() const;
  /// Items of a tuple or a mapping.
  std::size_t size() const;
  /// A tuple's item i (std::out_of_range past the end).
  shared_view operator[](std::size_t i) const;
  /// A mapping's value for a str or int key (a lookup in its hash table), if there is one.
  std::optional<shared_view> find(std::string_view key) const;
  std::optional<shared_view> find(std::int64_t key) const;
  /// A mapping's i-th key and value, in insertion order.
  shared_view key(std::size_t i) const;
  shared_view value(std::size_t i) const;

 private:
  friend struct shared_access;
  explicit shared_view(const void* object) noexcept : o_(object) {}
  const void* o_;  ///< the shared PyObject
};

/// A view of the value published under name, if there is one (never blocks on an interpreter).
std::optional<shared_view> shared_ref(std::string_view name);

/// A published value read into an isola::value (a copy, for C++ code that wants one).
/// std::nullopt when nothing is published under name. Needs a runtime.
std::optional<value> shared_copy(std::string_view name);

}  // namespace isola
