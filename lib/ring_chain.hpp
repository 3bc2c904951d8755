// detail::ring_chain<T>: the queue under isola::channel. Bounded, it is one ring (lib/ring.hpp)
// and adds nothing to its operations but a predictable branch. Unbounded, it is a linked list
// of rings of `segment_items` each, as LCRQ (Morrison and Afek, 2013) links its rings:
// producers fill the last ring; one that finds it full closes it (the ring's closed mark) and
// links a new ring after it; consumers drain the first ring and move to the next once the first
// is closed and empty, and the memory of the drained ring is freed once no thread can still be
// inside it (hazard pointers, lib/hazard.hpp).
// - While the consumers keep up, producers and consumers go round one ring, as a bounded
//   channel does, with the same figures; a backlog adds rings, and draining it frees them.
// - A push into an unbounded chain never waits for room. If the memory for a new ring cannot be
//   had, it reports would_block (a full channel), and the sender waits for a receiver to make
//   room instead of the process ending.
// - Bias (see ring.hpp) carries over: the thread that owned the producers' (consumers') side
//   of a ring owns that side of the next ring from the start, and an owner closes a full ring
//   with a plain store (ring::seal_owned), without interrupting the other threads.
// - The per-ring work stays off the receivers' path: drained rings are retired in batches
//   (one asymmetric fence for several), and a freed ring goes to a few spares that producers
//   take before they ask the kernel for pages; a consumer that finds the chain empty gives the
//   spares and the retired rings back, so memory returns to what one ring takes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

#include <sys/mman.h>

#include "lib/hazard.hpp"
#include "lib/ring.hpp"
#include "lib/sync.hpp"

namespace isola::detail {

/// Items per ring of an unbounded ring_chain (ring_chain::segment_items).
inline constexpr std::size_t ring_chain_segment_items = 1024;

template <typename T>
class ring_chain {
  /// A ring and its link. A bounded chain's one segment is an ordinary object; an unbounded
  /// chain's segments each live at the start of pages of their own (mmap), the ring's slots
  /// after them, so that a freed segment's memory leaves the process.
  struct segment {
    segment(std::size_t capacity, const char* what, void* slots) : r(capacity, what, slots) {}
    ring<T> r;
    /// The next ring once this one is closed: nullptr before, terminal() if the chain itself
    /// was closed here.
    alignas(cache_line) std::atomic<segment*> next{nullptr};
    std::uint64_t index = 0;  ///< place in the chain, for size()
    segment* retired_next = nullptr;  ///< in the retired or the spare list
  };
  /// Bytes before the slots in a mapped segment, and the whole mapping.
  static constexpr std::size_t header_bytes =
      (sizeof(segment) + ring<T>::slot_alignment - 1) / ring<T>::slot_alignment *
      ring<T>::slot_alignment;
  static constexpr std::size_t mapping_bytes = header_bytes + ring<T>::slot_bytes(ring_chain_segment_items);

 public:
  /// Items per ring of an unbounded chain: 64 KiB of slots.
  static constexpr std::size_t segment_items = ring_chain_segment_items;

  /// capacity 0: unbounded; else a bounded ring of that capacity (see ring's constructor).
  explicit ring_chain(std::size_t capacity, const char* what = "a channel's capacity (maxsize)")
      : bounded_(capacity != 0),
        light_(asymmetric_fence_available()),
        fixed_(capacity != 0 ? new segment(capacity, what, nullptr) : map_segment(what)) {
    head_.store(fixed_, std::memory_order_relaxed);
    tail_.store(fixed_, std::memory_order_relaxed);
  }

  /// Destroys the items still queued and every ring. Only with no other thread using it.
  ~ring_chain() {
    if (bounded_) {
      delete fixed_;
      return;
    }
    segment* s = head_.load(std::memory_order_relaxed);
    while (s != nullptr && s != terminal()) {
      segment* n = s->next.load(std::memory_order_relaxed);
      unmap_segment(s);
      s = n;
    }
    for (segment* list : {retired_, spares_}) {
      for (segment* r = list; r != nullptr;) {
        segment* n = r->retired_next;
        unmap_segment(r);
        r = n;
      }
    }
  }

  ring_chain(const ring_chain&) = delete;
  ring_chain& operator=(const ring_chain&) = delete;

  bool bounded() const noexcept { return bounded_; }
  /// The bound, or 0 for an unbounded chain.
  std::size_t capacity() const noexcept { return bounded_ ? fixed_->r.capacity() : 0; }
  /// Most items one claim can move: the ring's capacity.
  std::size_t claim_limit() const noexcept {
    return bounded_ ? fixed_->r.capacity() : segment_items;
  }
  /// Rings allocated now (the live ones and drained ones not yet freed), for tests and memory
  /// figures.
  std::size_t rings() const noexcept { return rings_.load(std::memory_order_relaxed); }

  ring_status try_push(T& item, bool exact = true) noexcept {
    if (bounded_) [[likely]] return fixed_->r.try_push(item, exact);
    std::size_t n = 0;
    return push_chain<true>(&item, 1, n);
  }

  ring_status try_push_n(T* items, std::size_t count, std::size_t& pushed,
                         bool exact = true) noexcept {
    if (bounded_) return fixed_->r.try_push_n(items, count, pushed, exact);
    return push_chain<false>(items, count, pushed);
  }

  template <typename Consume>
  ring_status try_pop(Consume&& consume, bool exact = true) noexcept {
    if (bounded_) [[likely]] return fixed_->r.try_pop(consume, exact);
    std::size_t n = 0;
    return pop_chain<true>(1, n, consume, exact);
  }

  template <typename Consume>
  ring_status try_pop_n(std::size_t max_items, std::size_t& popped, Consume&& consume,
                        bool exact = true) noexcept {
    if (bounded_) return fixed_->r.try_pop_n(max_items, popped, consume, exact);
    return pop_chain<false>(max_items, popped, consume, exact);
  }

  /// ring::try_pop_owned_if on the first ring (0 taken when it is closed and drained: the
  /// caller goes on with try_pop, which moves to the next ring).
  template <typename Take>
  ISOLA_RING_INLINE bool try_pop_owned_if(Take&& take) noexcept {
    if (bounded_) [[likely]] return fixed_->r.try_pop_owned_if(take);
    hazard_guard h;
    return h.protect(head_, light_)->r.try_pop_owned_if(take);
  }

  template <typename Take>
  ISOLA_RING_INLINE std::size_t try_pop_owned_run_if(std::size_t max_items, Take&& take) noexcept {
    if (bounded_) [[likely]] return fixed_->r.try_pop_owned_run_if(max_items, take);
    hazard_guard h;
    return h.protect(head_, light_)->r.try_pop_owned_run_if(max_items, take);
  }

  /// Closes the chain: pushes fail from now on, pops drain every ring. True if this call
  /// closed it.
  bool close() noexcept {
    if (bounded_) return fixed_->r.close();
    if (closing_.exchange(true, std::memory_order_seq_cst)) return false;
    hazard_guard h;
    segment* s = h.protect(tail_, light_);
    for (;;) {
      if (s->r.close()) {
        // Closed here: no ring follows. A producer that closed a full ring before `closing_`
        // was set links one, and the loop closes that one.
        s->next.store(terminal(), std::memory_order_release);
        break;
      }
      segment* n = wait_next(s);
      if (n == terminal()) break;
      help_tail(s, n);
      s = h.protect(tail_, light_);
    }
    closed_.store(true, std::memory_order_release);
    return true;
  }

  bool closed() const noexcept {
    return bounded_ ? fixed_->r.closed() : closed_.load(std::memory_order_acquire);
  }

  void fence_against(bool producers) noexcept {
    if (bounded_) return fixed_->r.fence_against(producers);
    hazard_guard h;
    h.protect(producers ? tail_ : head_, light_)->r.fence_against(producers);
  }

  bool owned(bool producers) const noexcept {
    if (bounded_) return fixed_->r.owned(producers);
    hazard_guard h;
    return h.protect(producers ? tail_ : head_, light_)->r.owned(producers);
  }

  /// ring::pop_ready on the first ring; also true when that ring is closed (there is a next
  /// ring to move to, or the chain is closed: either way an attempt has something to do).
  bool pop_ready(std::uint64_t ahead = 0) const noexcept {
    if (bounded_) [[likely]] return fixed_->r.pop_ready(ahead);
    hazard_guard h;
    const segment* s = h.protect(head_, light_);
    return s->r.pop_ready(ahead) || s->next.load(std::memory_order_acquire) != nullptr;
  }
  /// An unbounded chain always has room.
  bool push_ready(std::uint64_t ahead = 0) const noexcept {
    return bounded_ ? fixed_->r.push_ready(ahead) : true;
  }

  /// Items queued; approximate while other threads use the chain.
  std::size_t size() const noexcept {
    if (bounded_) return fixed_->r.size();
    hazard_guard hh;
    hazard_guard ht;
    const segment* h = hh.protect(head_, light_);
    const segment* t = ht.protect(tail_, light_);
    if (h == t || t->index <= h->index) return h->r.size();
    // The rings between the first and the last are full: they were closed full and only the
    // first ring is drained.
    return h->r.size() + t->r.size() +
           static_cast<std::size_t>(t->index - h->index - 1) * segment_items;
  }

 private:
  static segment* terminal() noexcept { return reinterpret_cast<segment*>(std::uintptr_t{1}); }

  /// A segment in pages of its own; throws std::length_error when there are none to be had.
  static segment* map_segment(const char* what) {
    void* p = ::mmap(nullptr, mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (p == MAP_FAILED) {
      throw std::length_error(std::string(what) + ": no memory could be mapped for a ring of " +
                              std::to_string(segment_items) + " items");
    }
    return new (p) segment(segment_items, what, static_cast<char*>(p) + header_bytes);
  }
  static void unmap_segment(segment* s) noexcept {
    s->~segment();
    ::munmap(s, mapping_bytes);
  }

  /// A fresh segment for a producer: a spare if there is one, else new pages. nullptr when
  /// there is no memory for one.
  segment* make_segment() noexcept {
    {
      std::lock_guard lock(retired_mu_);
      if (segment* s = spares_) {
        spares_ = s->retired_next;
        --spare_count_;
        s->retired_next = nullptr;
        s->next.store(nullptr, std::memory_order_relaxed);
        return s;  // reset when it was retired
      }
    }
    try {
      segment* s = map_segment("an unbounded channel's ring");
      rings_.fetch_add(1, std::memory_order_relaxed);
      return s;
    } catch (const std::length_error&) {
      return nullptr;
    }
  }

  /// s is closed: its next ring, once the thread that closed it has linked it.
  static segment* wait_next(segment* s) noexcept {
    backoff b;
    for (;;) {
      segment* n = s->next.load(std::memory_order_acquire);
      if (n != nullptr) return n;
      b.snooze();
    }
  }

  void help_tail(segment* s, segment* n) noexcept {
    tail_.compare_exchange_strong(s, n, std::memory_order_seq_cst, std::memory_order_relaxed);
  }

  /// s was full: closes it and links a new ring after it, unless another thread closed it
  /// first (then that thread links one). False only when no memory could be had for a ring.
  bool extend(segment* s) noexcept {
    if (s->next.load(std::memory_order_acquire) != nullptr) return true;
    segment* n = make_segment();
    if (n == nullptr) return false;
    const bool mine = s->r.owned_by_me(true);
    if (!s->r.seal_owned() && !s->r.close()) {  // closed by another producer, or by close()
      drop_unused(n);
      return true;
    }
    if (closing_.load(std::memory_order_seq_cst)) {
      drop_unused(n);
      s->next.store(terminal(), std::memory_order_release);
      return true;
    }
    n->index = s->index + 1;
    if (mine) n->r.bias_to_me(true);  // not yet visible to any other thread
    s->next.store(n, std::memory_order_release);
    help_tail(s, n);
    return true;
  }

  void drop_unused(segment* n) noexcept {
    std::lock_guard lock(retired_mu_);
    keep_or_free(n);
  }

  template <bool single>
  ring_status push_chain(T* items, std::size_t count, std::size_t& pushed) noexcept {
    pushed = 0;
    hazard_guard h;
    segment* s = h.protect(tail_, light_);
    for (;;) {
      ring_status st;
      if constexpr (single) {
        st = s->r.try_push(*items, false);
        if (st == ring_status::would_block) st = s->r.try_push(*items, true);
        if (st == ring_status::ok) pushed = 1;
      } else {
        st = s->r.try_push_n(items, count, pushed, false);
        if (st == ring_status::would_block) st = s->r.try_push_n(items, count, pushed, true);
      }
      if (st == ring_status::ok) return st;
      if (st == ring_status::would_block && !extend(s)) return st;  // no memory: as if full
      segment* n = wait_next(s);
      if (n == terminal()) return ring_status::closed;
      help_tail(s, n);
      s = h.protect(tail_, light_);
    }
  }

  /// single: max_items is 1, through the ring's single-item path.
  template <bool single, typename Consume>
  ring_status pop_chain(std::size_t max_items, std::size_t& popped, Consume& consume,
                        bool exact) noexcept {
    popped = 0;
    hazard_guard h;
    segment* s = h.protect(head_, light_);
    auto attempt = [&](bool ex) {
      if constexpr (single) {
        const ring_status st = s->r.try_pop(consume, ex);
        if (st == ring_status::ok) popped = 1;
        return st;
      } else {
        return s->r.try_pop_n(max_items, popped, consume, ex);
      }
    };
    for (;;) {
      ring_status st = attempt(exact);
      if (st == ring_status::ok) return st;
      if (st == ring_status::would_block) {
        // Not closed when looked at: empty (or, without exact, maybe not published yet).
        if (s->next.load(std::memory_order_acquire) == nullptr) {
          // Empty: the moment to give back what a backlog left (once; it sets the flag).
          if (spare_pending_.load(std::memory_order_relaxed)) [[unlikely]] trim();
          return st;
        }
        // Closed since: drain it for sure before moving on.
        st = attempt(true);
        if (st != ring_status::closed) return st;
      }
      segment* n = wait_next(s);
      if (n == terminal()) {  // closed and drained
        if (spare_pending_.load(std::memory_order_relaxed)) [[unlikely]] trim();
        return ring_status::closed;
      }
      const bool moved = advance_head(s, n);
      segment* drained = s;
      s = h.protect(head_, light_);  // off the drained ring first: this slot named it
      if (moved) retire(drained);
    }
  }

  /// s is closed and drained and n follows it: moves the consumers on. True if this call did;
  /// the caller then retires s (frees it once no thread is inside it).
  bool advance_head(segment* s, segment* n) noexcept {
    const bool mine = s->r.owned_by_me(false);
    segment* expected = s;
    if (!head_.compare_exchange_strong(expected, n, std::memory_order_seq_cst,
                                       std::memory_order_relaxed)) {
      return false;  // another consumer moved on
    }
    if (mine) n->r.bias_to_me(false);
    // Unreachable once the producers have moved on too (they may not have yet).
    help_tail(s, n);
    return true;
  }

  /// Rings retired before one fence reclaims them all, and spares kept for producers.
  static constexpr unsigned retire_batch = 4;
  static constexpr unsigned max_spares = 4;

  void retire(segment* s) noexcept {
    std::lock_guard lock(retired_mu_);
    s->retired_next = retired_;
    retired_ = s;
    spare_pending_.store(true, std::memory_order_relaxed);
    if (++retired_count_ >= retire_batch) reclaim_locked();
  }

  /// With retired_mu_ held: the retired rings no thread is inside become spares or are freed.
  void reclaim_locked() noexcept {
    if (retired_ == nullptr) return;
    if (light_) {
      asymmetric_fence();
    } else {
      std::atomic_thread_fence(std::memory_order_seq_cst);
    }
    segment** link = &retired_;
    while (segment* r = *link) {
      if (hazard_in_use(r)) {
        link = &r->retired_next;
      } else {
        *link = r->retired_next;
        --retired_count_;
        keep_or_free(r);
      }
    }
  }

  /// With retired_mu_ held: r (drained, unreachable) becomes a spare, or is freed.
  void keep_or_free(segment* r) noexcept {
    if (spare_count_ < max_spares) {
      r->r.reset();
      r->retired_next = spares_;
      spares_ = r;
      ++spare_count_;
    } else {
      unmap_segment(r);
      rings_.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  /// The chain was found empty: frees the spares and the retired rings no thread is inside.
  void trim() noexcept {
    std::unique_lock lock(retired_mu_, std::try_to_lock);
    if (!lock) return;  // another thread is at it
    reclaim_locked();
    for (segment* r = spares_; r != nullptr;) {
      segment* n = r->retired_next;
      unmap_segment(r);
      rings_.fetch_sub(1, std::memory_order_relaxed);
      r = n;
    }
    spares_ = nullptr;
    spare_count_ = 0;
    spare_pending_.store(retired_ != nullptr, std::memory_order_relaxed);
  }

  // Read by every operation, written never: one line.
  const bool bounded_;
  const bool light_;  ///< asymmetric fences: readers publish hazards with a compiler fence
  segment* const fixed_;  ///< the bounded chain's ring (unbounded: the first, freed once drained)

  alignas(cache_line) std::atomic<segment*> head_{nullptr};  ///< consumers' ring
  alignas(cache_line) std::atomic<segment*> tail_{nullptr};  ///< producers' ring
  alignas(cache_line) std::atomic<bool> closing_{false};
  std::atomic<bool> closed_{false};
  /// Set when there are retired rings or spares: a consumer that finds the chain empty trims.
  std::atomic<bool> spare_pending_{false};
  std::atomic<std::size_t> rings_{1};
  std::mutex retired_mu_;  ///< guards the lists below; once per ring, never per item
  segment* retired_ = nullptr;
  unsigned retired_count_ = 0;
  segment* spares_ = nullptr;
  unsigned spare_count_ = 0;
};

}  // namespace isola::detail
