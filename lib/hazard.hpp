// Hazard pointers (Maged Michael, 2004) with an asymmetric fence, as folly's hazptr does: a
// thread publishes the pointer it is about to use in a slot of its own, and memory that other
// threads may still hold is freed only once no slot names it. Used by the unbounded channel
// (lib/ring_chain.hpp) to free the rings it has drained while other threads may still be on
// their way into them.
#pragma once

#include <atomic>
#include <cassert>
#include <cstdint>

#include "lib/sync.hpp"

namespace isola::detail {

/// One thread's hazard slots. Records are never freed: a thread that ends leaves its record
/// for the next thread that needs one.
/// A cache line of its own: two threads' records on one line would make every channel
/// operation of each write the line the other is writing.
struct alignas(cache_line) hazard_record {
  static constexpr unsigned slots = 4;  ///< guards alive at once in one thread
  std::atomic<const void*> hp[slots] = {};
  unsigned depth = 0;  ///< guards alive now (only the owning thread touches it)
  std::atomic<bool> in_use{false};
  hazard_record* next = nullptr;  ///< the list of every record; set before it is published
};

/// The calling thread's record, taken on first use. A trivially-initialised thread_local
/// pointer in the initial-exec model: one load from the thread register, no call.
[[gnu::tls_model("initial-exec")]] inline thread_local hazard_record* this_thread_hazard = nullptr;
hazard_record* acquire_hazard_record() noexcept;

/// Whether any thread's slot names p now. The caller must have made p unreachable first and
/// then run the heavy fence (asymmetric_fence(), or a seq_cst fence when that is not
/// available): see hazard_guard::protect.
bool hazard_in_use(const void* p) noexcept;

/// One slot for the guard's scope.
class hazard_guard {
 public:
  hazard_guard() noexcept {
    hazard_record* r = this_thread_hazard;
    if (r == nullptr) [[unlikely]] r = acquire_hazard_record();
    rec_ = r;
    assert(r->depth < hazard_record::slots);
    slot_ = r->depth++;
  }
  ~hazard_guard() {
    // Release: the memory's last use here happens before a reclaimer that reads the slot
    // empty frees it.
    rec_->hp[slot_].store(nullptr, std::memory_order_release);
    --rec_->depth;
  }
  hazard_guard(const hazard_guard&) = delete;
  hazard_guard& operator=(const hazard_guard&) = delete;

  /// Loads src and publishes the pointer until a second load of src agrees: the pointer was
  /// still reachable after it was published, so a reclaimer that makes it unreachable later
  /// scans after the publication and sees it. light: the reclaimer uses asymmetric_fence(),
  /// so a compiler fence orders the publication before the second load here; otherwise a
  /// full fence does.
  template <typename P>
  P* protect(const std::atomic<P*>& src, bool light) noexcept {
    P* p = src.load(std::memory_order_acquire);
    for (;;) {
      // Release: whatever this thread did with the pointer the slot named before happens
      // before a reclaimer that reads the new one frees that memory.
      rec_->hp[slot_].store(p, std::memory_order_release);
      if (light) {
        std::atomic_signal_fence(std::memory_order_seq_cst);
      } else {
        std::atomic_thread_fence(std::memory_order_seq_cst);
      }
      P* q = src.load(std::memory_order_acquire);
      if (q == p) return p;
      p = q;
    }
  }

 private:
  hazard_record* rec_;
  unsigned slot_;
};

}  // namespace isola::detail
