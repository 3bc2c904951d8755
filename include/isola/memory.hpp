// Memory accounting per interpreter: what an interpreter holds, its peak, and its hard limit.
// See docs/memory.md for exactly what is counted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace isola {

/// What one interpreter holds, as counted by isola's allocator hooks (runtime_options::
/// memory_accounting): the object allocator's arenas it made (1 MiB each, whole, however full)
/// and every block of CPython's raw domain (large objects and buffers, C-level data) allocated
/// while the interpreter's thread state was current. A block counts for the interpreter that
/// allocated it until it is freed, wherever it is freed.
struct memory_usage {
  std::size_t bytes = 0;  ///< held now
  std::size_t peak = 0;   ///< the highest `bytes` since the interpreter was created
  std::size_t limit = 0;  ///< the hard limit in force (interpreter_config::memory_limit), 0: none
  /// Allocations the hard limit refused (each one a MemoryError, or a fallback inside CPython).
  std::uint64_t refused = 0;
};

/// A size as people write it: "4096", "512K", "512M", "1G", "1.5GiB", "100MB", "2T". Suffixes
/// K, M, G and T (with an optional "B" or "iB", any case) are powers of 1024, as in ulimit,
/// Docker and uWSGI. Throws std::invalid_argument that quotes the text and shows the form.
std::size_t parse_size(std::string_view text);

/// bytes for people: "812 B", "4.0 KiB", "512.0 MiB", "1.50 GiB".
std::string format_size(std::size_t bytes);

}  // namespace isola
