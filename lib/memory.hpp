// The allocator context of each interpreter: hooks on CPython's raw domain and arena allocator
// that count what every interpreter holds and refuse what would pass its hard limit.
//
// - install() wraps the allocators once, after Py_PreInitialize and before Py_Initialize (the
//   only time CPython allows replacing them). Nothing is ever uninstalled.
// - Raw blocks get a 16-byte header naming the context that allocated them, so a block freed
//   in another interpreter, or on a thread with no interpreter, is taken off the right count.
// - Arenas (1 MiB, the object allocator's small blocks; also frame stacks) are looked up in a
//   table on free: few, and allocated rarely.
// - The current thread's context comes from its thread state's interpreter, cached per thread
//   and checked against an epoch that changes whenever an interpreter is bound or unbound.
// - Contexts are never freed (blocks may outlive their interpreter); an ended interpreter's
//   context is reused once nothing it counted is still allocated.
#pragma once

#include "lib/python.hpp"

#include <isola/memory.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace isola::detail::memory {

struct context {
  std::atomic<std::int64_t> bytes{0};
  std::atomic<std::int64_t> peak{0};
  std::atomic<std::size_t> limit{0};  ///< 0: none; enforced only while non-zero
  std::atomic<std::uint64_t> refused{0};
  std::atomic<std::size_t> largest_refused{0};
  /// Bumped when the context's interpreter ends: threads that remember it stop using it.
  std::atomic<std::uint32_t> generation{0};
  /// Interpreters that share the main interpreter's object allocator: their arenas are main's.
  bool shares_main_arenas = false;
  bool retired = false;  ///< guarded by the registry's mutex
};

/// Whether the hooks are installed (runtime_options::memory_accounting).
bool enabled() noexcept;

/// Wraps the raw domain and the arena allocator (and, when CPython was pre-initialised with
/// the malloc allocator (PYTHONMALLOC=malloc), the mem and object domains too). Call once,
/// after Py_PreInitialize and before Py_InitializeFromConfig.
void install(bool object_domains_use_malloc);

/// The main interpreter's context (also what allocations in it before start-up count to).
context* main_context() noexcept;

/// A context for a new interpreter: a fresh one, or an ended interpreter's once its count is
/// back to zero. Not bound to any interpreter yet.
context* acquire(bool shares_main_arenas);

/// While a context is being created on this thread, what it allocates, under the main
/// interpreter's borrowed thread state or the new interpreter's, counts to `c` (the new
/// interpreter is bound to `c` the first time it allocates). end_creation() stops that.
void begin_creation(context* c) noexcept;
void end_creation() noexcept;

/// Binds / unbinds an interpreter and its context. unbind() also retires the context: its
/// limit is lifted and threads stop counting to it.
void bind(PyInterpreterState* interp, context* c);
void unbind(PyInterpreterState* interp, context* c);

/// The calling thread's context (its interpreter's, with a thread state; else the one it last
/// ran in while that still lives; else nullptr). Never null for a thread holding a GIL of an
/// isola interpreter or the main one.
context* current() noexcept;

memory_usage read(const context& c) noexcept;

/// What ended interpreters still hold: blocks of theirs not freed yet, and the arenas CPython
/// keeps when an interpreter ends with blocks left in them.
std::size_t ended_bytes() noexcept;

/// The largest allocation the limit refused since the context was acquired.
std::size_t largest_refused(const context& c) noexcept;

}  // namespace isola::detail::memory

namespace isola::detail {

struct interp_state;

/// What an interpreter holds (what it held when it ended, once it has). Throws
/// std::logic_error if memory accounting is off.
memory_usage memory_of(const interp_state& s);

}  // namespace isola::detail
