// See lib/memory.hpp.
#include "lib/memory.hpp"

#include "lib/state.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>

#if PY_VERSION_HEX < 0x030D0000
#include <malloc.h>

// Exported by CPython 3.12's libpython (pycore_pymem.h): swaps a domain's allocator for
// CPython's default one and gives back the one it replaced.
extern "C" int _PyMem_SetDefaultAllocator(PyMemAllocatorDomain domain,
                                          PyMemAllocatorEx* old_alloc);
#endif

namespace isola {

std::size_t parse_size(std::string_view text) {
  auto bad = [&](const char* why) {
    return std::invalid_argument(fmt::format(
        "'{}' is not a size ({}); write a number of bytes with an optional K, M, G or T "
        "suffix (powers of 1024), e.g. 512M or 1.5G",
        text, why));
  };
  std::string_view s = text;
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  if (s.empty()) throw bad("it is empty");
  std::size_t digits = 0;
  bool dot = false;
  while (digits < s.size() &&
         ((s[digits] >= '0' && s[digits] <= '9') || (s[digits] == '.' && !dot))) {
    dot = dot || s[digits] == '.';
    ++digits;
  }
  if (digits == 0 || s.substr(0, digits) == ".") throw bad("it does not start with a number");
  const std::string number(s.substr(0, digits));
  std::string unit(s.substr(digits));
  while (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  for (auto& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  double scale = 1;
  if (!unit.empty() && unit != "b") {
    const std::string_view units = "kmgt";
    const auto at = units.find(unit[0]);
    const std::string rest = unit.substr(1);
    if (at == std::string_view::npos || !(rest.empty() || rest == "b" || rest == "ib")) {
      throw bad("unknown unit");
    }
    scale = std::pow(1024.0, static_cast<double>(at + 1));
  }
  const double v = std::stod(number) * scale;
  if (!(v < static_cast<double>(std::numeric_limits<std::size_t>::max()) / 2)) {
    throw bad("it is too large");
  }
  return static_cast<std::size_t>(std::llround(v));
}

std::string format_size(std::size_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes) / 1024;
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return v < 10 && u >= 2 ? fmt::format("{:.2f} {}", v, units[u])
                          : fmt::format("{:.1f} {}", v, units[u]);
}

}  // namespace isola

namespace isola::detail::memory {
namespace {

// ---- contexts and the interpreter table --------------------------------------------------------

struct registry {
  std::mutex mu;
  std::deque<context> contexts;  // stable addresses; never shrinks
  std::vector<context*> retired;
  std::vector<std::pair<PyInterpreterState*, context*>> bound;
  std::atomic<std::uint64_t> epoch{1};
  context main;
  context others;  ///< interpreters isola did not create (CPython's _interpreters module)
};

// Never destroyed: blocks are freed after static destructors have started (CPython's own
// teardown, other libraries'), and their headers point into it.
registry& reg() noexcept {
  static registry* r = new registry;
  return *r;
}

std::atomic<bool> installed{false};

struct thread_cache {
  PyInterpreterState* interp = nullptr;
  context* ctx = nullptr;
  std::uint64_t epoch = 0;
  context* last = nullptr;  ///< the context this thread last ran in
  std::uint32_t last_generation = 0;
  context* creating = nullptr;
};
[[gnu::tls_model("initial-exec")]] thread_local thread_cache tl;

context* lookup_slow(PyInterpreterState* in, std::uint64_t epoch) noexcept {
  auto& r = reg();
  const bool is_main = in == PyInterpreterState_Main();
  std::lock_guard lock(r.mu);
  // While an interpreter is created on this thread, what the borrowed main thread state
  // allocates is the new interpreter's (its interpreter state, its allocator state). Not
  // cached: end_creation() must take effect at once.
  if (tl.creating != nullptr && is_main) return tl.creating;
  context* c = nullptr;
  for (const auto& [i, ctx] : r.bound) {
    if (i == in) {
      c = ctx;
      break;
    }
  }
  if (c == nullptr) {
    if (tl.creating != nullptr) {
      // The interpreter being created on this thread: bound on its first allocation.
      r.bound.emplace_back(in, tl.creating);
      epoch = r.epoch.fetch_add(1, std::memory_order_acq_rel) + 1;
      c = tl.creating;
    } else {
      c = is_main ? &r.main : &r.others;
    }
  }
  tl.interp = in;
  tl.ctx = c;
  tl.epoch = epoch;
  return c;
}

context* current_for_alloc() noexcept {
  PyThreadState* ts = current_tstate();
  if (ts == nullptr) {
    if (tl.creating != nullptr) return tl.creating;
    context* last = tl.last;
    if (last != nullptr &&
        last->generation.load(std::memory_order_relaxed) == tl.last_generation) {
      return last;
    }
    return &reg().others;
  }
  PyInterpreterState* in = ts->interp;
  const std::uint64_t e = reg().epoch.load(std::memory_order_acquire);
  context* c = (in == tl.interp && e == tl.epoch) ? tl.ctx : lookup_slow(in, e);
  if (c != tl.last) {
    tl.last = c;
    tl.last_generation = c->generation.load(std::memory_order_relaxed);
  }
  return c;
}

// Adds n to c's count; with `enforce`, refuses (false) what would pass its limit.
bool charge(context* c, std::size_t n, bool enforce) noexcept {
  const auto delta = static_cast<std::int64_t>(n);
  const std::int64_t now = c->bytes.fetch_add(delta, std::memory_order_relaxed) + delta;
  if (enforce) {
    const std::size_t limit = c->limit.load(std::memory_order_relaxed);
    if (limit != 0 && now > static_cast<std::int64_t>(limit)) {
      c->bytes.fetch_sub(delta, std::memory_order_relaxed);
      c->refused.fetch_add(1, std::memory_order_relaxed);
      std::size_t largest = c->largest_refused.load(std::memory_order_relaxed);
      while (n > largest &&
             !c->largest_refused.compare_exchange_weak(largest, n, std::memory_order_relaxed)) {
      }
      return false;
    }
  }
  std::int64_t peak = c->peak.load(std::memory_order_relaxed);
  while (now > peak && !c->peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
  return true;
}

void uncharge(context* c, std::size_t n) noexcept {
  c->bytes.fetch_sub(static_cast<std::int64_t>(n), std::memory_order_relaxed);
}

// ---- block hooks (raw domain; mem and object domains when they are plain malloc) ---------------

struct header {
  context* owner;
  std::size_t size;  ///< the whole block, header included
};
static_assert(sizeof(header) == 16, "blocks must keep malloc's 16-byte alignment");
constexpr std::size_t header_size = sizeof(header);

struct domain {
  PyMemAllocatorEx next{};
};
domain raw_domain, mem_domain, obj_domain;

// A new block from the next allocator (or nullptr): its header names c, which was charged
// `total` for it; a failed allocation gives the charge back.
void* stamp(context* c, void* p, std::size_t total) noexcept {
  if (p == nullptr) {
    uncharge(c, total);
    return nullptr;
  }
  auto* h = static_cast<header*>(p);
  h->owner = c;
  h->size = total;
  return h + 1;
}

void* block_malloc(void* d, std::size_t n) {
  const auto& next = static_cast<domain*>(d)->next;
  if (n > std::numeric_limits<std::size_t>::max() - header_size) return nullptr;
  const std::size_t total = n + header_size;
  context* c = current_for_alloc();
  if (!charge(c, total, true)) return nullptr;
  return stamp(c, next.malloc(next.ctx, total), total);
}

void* block_calloc(void* d, std::size_t nelem, std::size_t elsize) {
  const auto& next = static_cast<domain*>(d)->next;
  if (elsize != 0 && nelem > (std::numeric_limits<std::size_t>::max() - header_size) / elsize) {
    return nullptr;
  }
  const std::size_t total = nelem * elsize + header_size;
  context* c = current_for_alloc();
  if (!charge(c, total, true)) return nullptr;
  return stamp(c, next.calloc(next.ctx, 1, total), total);
}

void block_free(void* d, void* ptr) {
  if (ptr == nullptr) return;
  const auto& next = static_cast<domain*>(d)->next;
  auto* h = static_cast<header*>(ptr) - 1;
  uncharge(h->owner, h->size);
  next.free(next.ctx, h);
}

// The block moves to the resizing interpreter's count (normally the one that made it). Shrinks
// are never refused.
void* block_realloc(void* d, void* ptr, std::size_t n) {
  if (ptr == nullptr) return block_malloc(d, n);
  const auto& next = static_cast<domain*>(d)->next;
  if (n > std::numeric_limits<std::size_t>::max() - header_size) return nullptr;
  const std::size_t total = n + header_size;
  auto* h = static_cast<header*>(ptr) - 1;
  context* const old_owner = h->owner;
  const std::size_t old_size = h->size;
  context* c = current_for_alloc();
  const bool grows = total > old_size;
  if (c == old_owner) {
    if (grows && !charge(c, total - old_size, true)) return nullptr;
    void* p = next.realloc(next.ctx, h, total);
    if (p == nullptr) {
      if (grows) uncharge(c, total - old_size);
      return nullptr;
    }
    if (!grows) uncharge(c, old_size - total);
    h = static_cast<header*>(p);
  } else {
    if (!charge(c, total, grows)) return nullptr;
    void* p = next.realloc(next.ctx, h, total);
    if (p == nullptr) {
      uncharge(c, total);
      return nullptr;
    }
    uncharge(old_owner, old_size);
    h = static_cast<header*>(p);
    h->owner = c;
  }
  h->size = total;
  return h + 1;
}

void wrap(PyMemAllocatorDomain which, domain& d) {
  PyMem_GetAllocator(which, &d.next);
  PyMemAllocatorEx hook{&d, block_malloc, block_calloc, block_realloc, block_free};
  PyMem_SetAllocator(which, &hook);
}

// ---- trailer hooks (the raw domain on CPython 3.12) --------------------------------------------
#if PY_VERSION_HEX < 0x030D0000 && !defined(Py_DEBUG)
//
// CPython 3.12 creates every interpreter with a call (_Py_ClearStandardStreamEncoding, from
// init_sys_streams) that swaps the process-wide raw allocator for its default one and back,
// while other interpreters run on other threads. What they allocate in that window comes
// straight from malloc, and what they free in it goes straight to free. Blocks with a header
// in front would be corrupted both ways. These hooks hand out malloc's own blocks and keep
// their owner in a trailer at the end of the block's usable size, with a check word that
// tells them from blocks malloc gave out during a swap. The next allocator must be malloc
// (CPython's default raw allocator), which wrap_raw() checks. They ignore their context
// argument: a call made during a swap may read CPython's (NULL) with these functions.

struct trailer {
  context* owner;
  std::uintptr_t check;  ///< trailer_magic ^ block address ^ owner
};
constexpr std::size_t trailer_size = sizeof(trailer);
constexpr std::uintptr_t trailer_magic = 0x69736f6c61a110c8ULL;

std::uintptr_t trailer_check(const void* p, const context* c) noexcept {
  return trailer_magic ^ reinterpret_cast<std::uintptr_t>(p) ^ reinterpret_cast<std::uintptr_t>(c);
}

char* trailer_at(void* p, std::size_t usable) noexcept {
  return static_cast<char*>(p) + usable - trailer_size;
}

// The context that owns p, or nullptr for a block these hooks did not stamp.
context* trailer_owner(void* p, std::size_t usable) noexcept {
  if (usable < trailer_size) return nullptr;
  trailer t;
  std::memcpy(&t, trailer_at(p, usable), trailer_size);
  return t.check == trailer_check(p, t.owner) ? t.owner : nullptr;
}

// Stamps p as c's (nullptr: as no one's, for a block given back to malloc).
void trailer_write(void* p, std::size_t usable, context* c) noexcept {
  const trailer t{c, c == nullptr ? 0 : trailer_check(p, c)};
  std::memcpy(trailer_at(p, usable), &t, trailer_size);
}

// A new block (or nullptr) for which c was charged `total`: the charge becomes its usable
// size, and the trailer names c.
void* trailer_stamp(context* c, void* p, std::size_t total) noexcept {
  if (p == nullptr) {
    uncharge(c, total);
    return nullptr;
  }
  const std::size_t usable = malloc_usable_size(p);
  if (usable > total) charge(c, usable - total, false);
  trailer_write(p, usable, c);
  return p;
}

void* trailer_malloc(void*, std::size_t n) {
  const auto& next = raw_domain.next;
  if (n > std::numeric_limits<std::size_t>::max() - trailer_size) return nullptr;
  const std::size_t total = n + trailer_size;
  context* c = current_for_alloc();
  if (!charge(c, total, true)) return nullptr;
  return trailer_stamp(c, next.malloc(next.ctx, total), total);
}

void* trailer_calloc(void*, std::size_t nelem, std::size_t elsize) {
  const auto& next = raw_domain.next;
  if (elsize != 0 && nelem > (std::numeric_limits<std::size_t>::max() - trailer_size) / elsize) {
    return nullptr;
  }
  const std::size_t total = nelem * elsize + trailer_size;
  context* c = current_for_alloc();
  if (!charge(c, total, true)) return nullptr;
  return trailer_stamp(c, next.calloc(next.ctx, 1, total), total);
}

void trailer_free(void*, void* ptr) {
  if (ptr == nullptr) return;
  const auto& next = raw_domain.next;
  const std::size_t usable = malloc_usable_size(ptr);
  if (context* owner = trailer_owner(ptr, usable)) {
    trailer_write(ptr, usable, nullptr);  // malloc may give the block out again during a swap
    uncharge(owner, usable);
  }
  next.free(next.ctx, ptr);
}

// As block_realloc: the block moves to the resizing interpreter's count; shrinks are never
// refused. A block malloc gave out during a swap is counted from here on.
void* trailer_realloc(void*, void* ptr, std::size_t n) {
  if (ptr == nullptr) return trailer_malloc(nullptr, n);
  const auto& next = raw_domain.next;
  if (n > std::numeric_limits<std::size_t>::max() - trailer_size) return nullptr;
  const std::size_t total = n + trailer_size;
  const std::size_t old_usable = malloc_usable_size(ptr);
  context* const old_owner = trailer_owner(ptr, old_usable);
  context* c = current_for_alloc();
  // What c is charged for the block until the outcome is known.
  std::size_t charged = 0;
  if (c == old_owner) {
    if (total > old_usable && !charge(c, total - old_usable, true)) return nullptr;
    charged = std::max(total, old_usable);
  } else {
    if (!charge(c, total, old_owner == nullptr || total > old_usable)) return nullptr;
    charged = total;
  }
  if (old_owner != nullptr) trailer_write(ptr, old_usable, nullptr);
  void* p = next.realloc(next.ctx, ptr, total);
  if (p == nullptr) {  // ptr is unchanged: restore its trailer and the counts
    if (old_owner != nullptr) trailer_write(ptr, old_usable, old_owner);
    uncharge(c, c == old_owner ? charged - old_usable : charged);
    return nullptr;
  }
  if (old_owner != nullptr && old_owner != c) uncharge(old_owner, old_usable);
  if (c == old_owner) {
    // c held old_usable before; it now holds the new block's usable size.
    const std::size_t usable = malloc_usable_size(p);
    if (usable > charged) charge(c, usable - charged, false);
    if (usable < charged) uncharge(c, charged - usable);
    trailer_write(p, usable, c);
    return p;
  }
  return trailer_stamp(c, p, total);
}

// Whether the raw domain's allocator is CPython's default one (malloc). Called once, before
// any interpreter runs.
bool raw_is_default() {
  PyMemAllocatorEx current{}, def{};
  _PyMem_SetDefaultAllocator(PYMEM_DOMAIN_RAW, &current);
  PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &def);
  PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &current);
  return current.ctx == def.ctx && current.malloc == def.malloc &&
         current.calloc == def.calloc && current.realloc == def.realloc &&
         current.free == def.free;
}
#endif  // CPython 3.12

void wrap_raw() {
#if PY_VERSION_HEX < 0x030D0000 && !defined(Py_DEBUG)
  if (raw_is_default()) {
    PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &raw_domain.next);
    PyMemAllocatorEx hook{&raw_domain, trailer_malloc, trailer_calloc, trailer_realloc,
                          trailer_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &hook);
    return;
  }
#endif
  wrap(PYMEM_DOMAIN_RAW, raw_domain);
}

// ---- arena hooks -------------------------------------------------------------------------------

// pymalloc's arena size on 64-bit builds of 3.12 and 3.13 (ARENA_BITS 20): how an arena is
// told from a frame-stack chunk, which also comes from the arena allocator.
constexpr std::size_t arena_size = std::size_t{1} << 20;

struct arenas {
  PyObjectArenaAllocator next{};
  std::mutex mu;
  std::unordered_map<void*, std::pair<context*, std::size_t>> owners;
};
arenas& arena_table() noexcept {
  static arenas* a = new arenas;  // never destroyed, as reg()
  return *a;
}

void* arena_alloc(void*, std::size_t size) {
  auto& a = arena_table();
  context* c = current_for_alloc();
  if (c->shares_main_arenas && size == arena_size) c = &reg().main;
  if (!charge(c, size, true)) return nullptr;
  void* p = a.next.alloc(a.next.ctx, size);
  if (p == nullptr) {
    uncharge(c, size);
    return nullptr;
  }
  try {
    std::lock_guard lock(a.mu);
    a.owners.emplace(p, std::make_pair(c, size));
  } catch (...) {
    a.next.free(a.next.ctx, p, size);
    uncharge(c, size);
    return nullptr;
  }
  return p;
}

void arena_free(void*, void* p, std::size_t size) {
  auto& a = arena_table();
  context* c = nullptr;
  {
    std::lock_guard lock(a.mu);
    auto it = a.owners.find(p);
    if (it != a.owners.end()) {
      c = it->second.first;
      a.owners.erase(it);
    }
  }
  if (c != nullptr) uncharge(c, size);  // else allocated before the hooks: never counted
  a.next.free(a.next.ctx, p, size);
}

}  // namespace

bool enabled() noexcept { return installed.load(std::memory_order_acquire); }

void install(bool object_domains_use_malloc) {
  if (installed.exchange(true)) return;
  wrap_raw();
  if (object_domains_use_malloc) {
    wrap(PYMEM_DOMAIN_MEM, mem_domain);
    wrap(PYMEM_DOMAIN_OBJ, obj_domain);
  }
  auto& a = arena_table();
  PyObject_GetArenaAllocator(&a.next);
  PyObjectArenaAllocator hook{nullptr, arena_alloc, arena_free};
  PyObject_SetArenaAllocator(&hook);
}

context* main_context() noexcept { return &reg().main; }

context* acquire(bool shares_main_arenas) {
  auto& r = reg();
  std::lock_guard lock(r.mu);
  context* c = nullptr;
  for (auto it = r.retired.begin(); it != r.retired.end(); ++it) {
    if ((*it)->bytes.load(std::memory_order_acquire) == 0) {
      c = *it;
      r.retired.erase(it);
      break;
    }
  }
  if (c == nullptr) c = &r.contexts.emplace_back();
  c->peak.store(0, std::memory_order_relaxed);
  c->limit.store(0, std::memory_order_relaxed);
  c->refused.store(0, std::memory_order_relaxed);
  c->largest_refused.store(0, std::memory_order_relaxed);
  c->shares_main_arenas = shares_main_arenas;
  c->retired = false;
  return c;
}

void begin_creation(context* c) noexcept {
  tl.creating = c;
  tl.interp = nullptr;
}

void end_creation() noexcept {
  tl.creating = nullptr;
  tl.interp = nullptr;
}

void bind(PyInterpreterState* interp, context* c) {
  auto& r = reg();
  std::lock_guard lock(r.mu);
  std::erase_if(r.bound, [&](const auto& b) { return b.first == interp; });
  r.bound.emplace_back(interp, c);
  r.epoch.fetch_add(1, std::memory_order_acq_rel);
}

void unbind(PyInterpreterState* interp, context* c) {
  auto& r = reg();
  std::lock_guard lock(r.mu);
  std::erase_if(r.bound, [&](const auto& b) { return b.first == interp || b.second == c; });
  r.epoch.fetch_add(1, std::memory_order_acq_rel);
  c->limit.store(0, std::memory_order_relaxed);
  c->generation.fetch_add(1, std::memory_order_relaxed);
  if (!c->retired && c != &r.main && c != &r.others) {
    c->retired = true;
    r.retired.push_back(c);
  }
}

context* current() noexcept {
  if (!enabled()) return nullptr;
  context* c = current_for_alloc();
  return c == &reg().others && current_tstate() == nullptr ? nullptr : c;
}

std::size_t ended_bytes() noexcept {
  auto& r = reg();
  std::lock_guard lock(r.mu);
  std::int64_t sum = 0;
  for (const context* c : r.retired) sum += std::max<std::int64_t>(0, c->bytes.load(std::memory_order_relaxed));
  return static_cast<std::size_t>(sum);
}

std::size_t largest_refused(const context& c) noexcept {
  return c.largest_refused.load(std::memory_order_relaxed);
}

memory_usage read(const context& c) noexcept {
  memory_usage u;
  u.bytes = static_cast<std::size_t>(std::max<std::int64_t>(0, c.bytes.load(std::memory_order_relaxed)));
  u.peak = static_cast<std::size_t>(std::max<std::int64_t>(0, c.peak.load(std::memory_order_relaxed)));
  u.limit = c.limit.load(std::memory_order_relaxed);
  u.refused = c.refused.load(std::memory_order_relaxed);
  return u;
}

}  // namespace isola::detail::memory

namespace isola::detail {

memory_usage memory_of(const interp_state& s) {
  if (!memory::enabled()) {
    throw std::logic_error(
        "memory(): memory accounting is off in this process; it is on unless "
        "runtime_options::memory_accounting is false when the runtime starts");
  }
  std::lock_guard lock(s.mu);
  if (s.memory != nullptr) return memory::read(*s.memory);
  return s.final_memory;
}

}  // namespace isola::detail
