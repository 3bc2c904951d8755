// detail::ring<T>: the bounded multi-producer multi-consumer ring under isola::channel. Lock-free
// claims with one CAS per operation (or per batch), per-slot stamps, and a "closed" bit in the
// tail so that no send can succeed after close().
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <new>
#include <string>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__GLIBC__)
#include <pthread.h>
#endif
#include <unistd.h>

#include "lib/sync.hpp"

#if defined(__GNUC__)
#define ISOLA_RING_INLINE [[gnu::always_inline]] inline
#else
#define ISOLA_RING_INLINE inline
#endif

namespace isola::detail {

/// Exponential backoff for the short windows where another thread has claimed a slot and not
/// yet finished with it: a few pauses, then yields (crossbeam's Backoff).
class backoff {
 public:
  void spin() noexcept {
    for (unsigned i = 0; i < (1u << std::min(step_, spin_limit)); ++i) cpu_relax();
    if (step_ <= spin_limit) ++step_;
  }
  void snooze() noexcept {
    if (step_ <= spin_limit) {
      for (unsigned i = 0; i < (1u << step_); ++i) cpu_relax();
    } else {
      std::this_thread::yield();
    }
    if (step_ <= yield_limit) ++step_;
  }

 private:
  static constexpr unsigned spin_limit = 6;
  static constexpr unsigned yield_limit = 10;
  unsigned step_ = 0;
};

/// A token for the calling thread, never 0 or 1. A later thread may get the same token, which
/// is harmless: tokens only have to tell apart threads that are alive at the same time.
/// - With glibc, pthread_self() is the address of the thread's descriptor, which is the
///   thread register itself on x86-64 (read with __builtin_thread_pointer(), no call): no call
///   into the dynamic linker either, which a thread_local in a shared library costs on every
///   use (__tls_get_addr; measured with callgrind, about 20 instructions of each push and pop).
/// - Elsewhere, the address of a thread-local byte.
#if defined(__GLIBC__) && defined(__x86_64__) && defined(__has_builtin)
#if __has_builtin(__builtin_thread_pointer)
#define ISOLA_RING_THREAD_POINTER 1
#endif
#endif
inline std::uintptr_t this_thread_token() noexcept {
#if defined(ISOLA_RING_THREAD_POINTER)
  // The thread register itself (what pthread_self() returns on x86-64 glibc) without the call.
  return reinterpret_cast<std::uintptr_t>(__builtin_thread_pointer());
#elif defined(__GLIBC__)
  return static_cast<std::uintptr_t>(pthread_self());
#else
  static thread_local char byte;
  return reinterpret_cast<std::uintptr_t>(&byte);
#endif
}

/// Per thread and side: the ring this thread last moved an item through with a CAS, the
/// position that CAS left, and how many of its CASes in a row found the position where its
/// previous one had left it (no other thread in between). Thread-local, so that counting
/// streaks writes nothing shared.
struct bias_streak {
  const void* ring = nullptr;
  std::uint64_t expect = 0;
  std::uint32_t n = 0;
};
inline thread_local bias_streak producer_streak;
inline thread_local bias_streak consumer_streak;

/// How a ring puts an item into a slot and ends it there. The default is T's move constructor
/// and destructor; a specialization may take a cheaper path for some items (channel.cpp does
/// for messages that hold a scalar). It must be visible wherever ring<T>'s members are used.
template <typename T>
struct slot_ops {
  static void put(void* storage, T& item) noexcept { new (storage) T(std::move(item)); }
  static void drop(T& item) noexcept { item.~T(); }
};

enum class ring_status : unsigned char {
  ok,           ///< at least one item moved
  would_block,  ///< empty (pop) or full (push)
  closed,       ///< push: closed; pop: closed and drained
};

/// Bounded MPMC ring of T, the array queue of Dmitry Vyukov as refined by crossbeam-channel:
/// - Positions (head, tail) are `lap | index` with index < capacity in the low bits; the bit
///   above the index bits is the "closed" mark, set only in tail. Wrapping moves to index 0 of
///   the next lap, so any capacity works without a division.
/// - A slot's stamp is `position` when free for the producer of that position and
///   `position + 1` when it holds that position's item; the consumer sets it to the same
///   index one lap later. A CAS on tail (head) claims one position or a run of positions.
/// - Tail and head CASes are seq_cst, and the emptiness/fullness checks go through a seq_cst
///   fence: the channel's waiter counters rely on that (a producer's tail CAS and its later
///   load of the receiver counter pair with a receiver's counter increment and later
///   emptiness check, so one of the two always sees the other).
/// - Not wait-free: a thread that has claimed a slot and is descheduled before publishing it
///   makes others spin (then yield) on that slot, as in every array queue of this kind.
/// - Biased sides. A locked instruction per item (the CAS) makes each item wait for the
///   previous one's slot line to cross between cores, so line transfers happen one at a time
///   instead of overlapping (one producer and one consumer on a 2-core x86 VM: 5-8 M items/s
///   with a CAS per item, ~48 M with plain stores). So a side (producers or
///   consumers) that one thread has used alone for a while (`bias_threshold` operations in a
///   row) becomes owned by that thread: the `owned` bit is set in its position word, so every
///   CAS of other threads fails, and the owner moves items with plain loads and stores.
///   - Another thread that needs the side revokes the bias: it marks the owner word, runs an
///     asymmetric fence (membarrier), waits for the owner's `busy` flag to drop, and clears
///     the bit. The owner sets `busy` and then re-reads the owner word with only a compiler
///     fence between them; the heavy fence makes that Dekker pair sound. A side whose bias was
///     revoked needs twice as many operations in a row before it is biased again.
///   - The owner publishes with release stores and no seq_cst RMW, so whoever pairs a
///     "counter increment, then look" with the owner's "publish, then read the counter" (the
///     channel's parking and async queues, select) calls fence_against(side) between the two.
///   - Without membarrier (other kernels, ThreadSanitizer) sides are never biased.
/// - T must be nothrow-movable: a claimed slot cannot be given back.
template <typename T>
class ring {
  static_assert(std::is_nothrow_move_constructible_v<T>);
  static_assert(std::is_nothrow_destructible_v<T>);

  // One slot per cache line (or more lines for a large T): a consumer finishing slot i and a
  // producer filling slot i+1 never write the same line. Padding doubles the throughput of
  // ring<int64_t> over packing four slots per line, where the consumer's look at the head slot
  // and the producer's next store share a line.
  struct alignas(cache_line) slot {
    std::atomic<std::uint64_t> stamp;
    alignas(T) unsigned char storage[sizeof(T)];
    T* item() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
  };

 public:
  /// Largest capacity: positions need index, mark and lap bits in 64 bits.
  static constexpr std::size_t max_capacity = std::size_t{1} << 40;

  /// Bytes of slot memory a ring of `capacity` needs (for the constructor's slot_memory).
  static constexpr std::size_t slot_bytes(std::size_t capacity) noexcept {
    return sizeof(slot) * capacity;
  }
  static constexpr std::size_t slot_alignment = alignof(slot);

  /// `what` names the capacity in error messages, with the setting that chose it.
  /// slot_memory: slot_bytes(capacity) bytes aligned to slot_alignment that the caller owns
  /// and frees after the ring (the rings of an unbounded channel live in pages of their own);
  /// nullptr: the ring allocates its slots.
  explicit ring(std::size_t capacity, const char* what = "a channel's capacity (maxsize)",
                void* slot_memory = nullptr)
      : cap_(capacity),
        mark_bit_(std::bit_ceil(capacity + 1)),
        one_lap_(mark_bit_ * 2),
        external_(slot_memory != nullptr) {
    if (capacity == 0 || capacity > max_capacity) {
      throw std::invalid_argument(std::string(what) + " must be between 1 and 2^40, not " +
                                  std::to_string(capacity));
    }
    // The whole ring is allocated (and its stamps written) up front: refuse, with a message
    // that says so, a capacity whose ring cannot fit in this machine's memory.
    const double bytes = static_cast<double>(sizeof(slot)) * static_cast<double>(cap_);
    // (Rings under 64 MiB fit anywhere: no system call to ask.)
    const double ram = bytes < 64.0 * 1024 * 1024
                           ? 0
                           : static_cast<double>(::sysconf(_SC_PHYS_PAGES)) *
                                 static_cast<double>(::sysconf(_SC_PAGESIZE));
    auto too_big = [&](const char* why) {
      char text[384];
      std::snprintf(text, sizeof text,
                    "room for the whole of %s is allocated up front: %zu items need %.1f GB, "
                    "%s; use a smaller capacity",
                    what, cap_, bytes / 1e9, why);
      return std::length_error(text);
    };
    if (ram > 0 && bytes > ram) {
      char why[96];
      std::snprintf(why, sizeof why, "more than this machine's %.1f GB of memory", ram / 1e9);
      throw too_big(why);
    }
    if (external_) {
      slots_ = static_cast<slot*>(slot_memory);
    } else {
      try {
        slots_ = static_cast<slot*>(
            ::operator new(sizeof(slot) * cap_, std::align_val_t{alignof(slot)}));
      } catch (const std::bad_alloc&) {
        throw too_big("which could not be allocated");
      }
    }
    for (std::size_t i = 0; i < cap_; ++i) {
      new (&slots_[i].stamp) std::atomic<std::uint64_t>(i);
    }
  }

  /// Destroys the items still queued. Only with no other thread using the ring.
  ~ring() {
    std::uint64_t head = head_.load(std::memory_order_relaxed) & ~owned_bit;
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed) & ~(mark_bit_ | owned_bit);
    while (head != tail) {
      slot& s = slots_[head & (mark_bit_ - 1)];
      if (s.stamp.load(std::memory_order_relaxed) == head + 1) slot_ops<T>::drop(*s.item());
      head = next(head);
    }
    for (std::size_t i = 0; i < cap_; ++i) slots_[i].stamp.~atomic();
    if (!external_) ::operator delete(slots_, std::align_val_t{alignof(slot)});
  }

  ring(const ring&) = delete;
  ring& operator=(const ring&) = delete;

  std::size_t capacity() const noexcept { return cap_; }

  /// Moves item into the ring (item is left untouched unless the result is ok).
  /// - exact: would_block means the ring was full at some instant (a slot still being left by
  ///   a consumer is waited for), which needs a look at the consumers' head. Without exact,
  ///   would_block may also mean "the tail slot is not free yet"; the head (another thread's
  ///   hot line) is not touched, which is what spinning and first attempts want.
  ring_status try_push(T& item, bool exact = true) noexcept {
    // The owner's common case inline: its side, a free slot. Everything else out of line.
    if (tail_.load(std::memory_order_relaxed) & owned_bit) [[likely]] {
      if (enter_owned(producers_, this_thread_token())) {
        const std::uint64_t tail = tail_.load(std::memory_order_relaxed) & ~owned_bit;
        slot& s = slots_[tail & (mark_bit_ - 1)];
        const bool free = s.stamp.load(std::memory_order_acquire) == tail;
        if (free) [[likely]] {
          slot_ops<T>::put(s.storage, item);
          s.stamp.store(tail + 1, std::memory_order_release);
          tail_.store(next(tail) | owned_bit, std::memory_order_release);
        }
        leave_owned(producers_);
        if (free) [[likely]] return ring_status::ok;
      }
    }
    return push_one_slow(item, exact);
  }

  /// Moves a prefix of items[0..count) into the ring with one claim: as many as there are free
  /// slots up to the end of the ring's array (a later call continues at its start). `pushed`
  /// says how many; the rest are untouched.
  ring_status try_push_n(T* items, std::size_t count, std::size_t& pushed,
                         bool exact = true) noexcept {
    return push_impl<false>(items, count, pushed, exact);
  }

  /// Takes one item: consume(T&&) is called with it (it must not throw).
  /// - exact: would_block means empty at some instant, closed means closed and drained (both
  ///   need a look at the producers' tail). Without exact, would_block may also mean "not
  ///   published yet" or "closed": the tail is not touched.
  template <typename Consume>
  ring_status try_pop(Consume&& consume, bool exact = true) noexcept {
    // The owner's common case inline (as try_push), everything else out of line.
    if (try_pop_owned_if([&](T& item) noexcept {
          consume(std::move(item));
          return true;
        })) [[likely]] {
      return ring_status::ok;
    }
    return pop_one_slow(consume, exact);
  }

  /// The owner's inline pop for a caller that handles only some items itself: if this thread
  /// owns the consumers' side, the head item is published and take(T&) accepts it (returns
  /// true; it must not throw and leaves the item to be destroyed here), the item is popped.
  /// False otherwise, with nothing changed: the caller goes on with try_pop.
  template <typename Take>
  ISOLA_RING_INLINE bool try_pop_owned_if(Take&& take) noexcept {
    return try_pop_owned_run_if(1, [&](T& item, std::size_t) noexcept { return take(item); }) ==
           1;
  }

  /// try_pop_owned_if for a run: while this thread owns the consumers' side, takes the
  /// published items from head on, up to max_items and the end of the ring's array, as long
  /// as take(T&, i) accepts the i-th (it must not throw; the item is destroyed here). Stops
  /// at the first item that is not published or not accepted, which stays in the ring.
  /// Returns how many were taken: 0 with nothing changed when the side is not owned by this
  /// thread (the caller goes on with try_pop_n). One store of head for the whole run.
  /// Inline: with max_items 1 (try_pop_owned_if) the loop folds away.
  template <typename Take>
  ISOLA_RING_INLINE std::size_t try_pop_owned_run_if(std::size_t max_items, Take&& take) noexcept {
    if (!(head_.load(std::memory_order_relaxed) & owned_bit)) return 0;
    if (!enter_owned(consumers_, this_thread_token())) return 0;
    const std::uint64_t head = head_.load(std::memory_order_relaxed) & ~owned_bit;
    const std::uint64_t index = head & (mark_bit_ - 1);
    // index < cap_, so a single item always has room.
    const std::uint64_t room =
        max_items == 1 ? 1 : std::min<std::uint64_t>(max_items, cap_ - index);
    std::uint64_t k = 0;
    for (; k < room; ++k) {
      slot& s = slots_[index + k];
      if (s.stamp.load(std::memory_order_acquire) != head + k + 1 ||
          !take(*s.item(), static_cast<std::size_t>(k))) {
        break;
      }
      slot_ops<T>::drop(*s.item());
      s.stamp.store(head + k + one_lap_, std::memory_order_release);
    }
    if (k > 0) head_.store(advance(head, k) | owned_bit, std::memory_order_release);
    leave_owned(consumers_);
    return static_cast<std::size_t>(k);
  }

  /// Takes up to max_items with one claim (up to the end of the ring's array), calling
  /// consume(T&&) for each in order; `popped` says how many.
  template <typename Consume>
  ring_status try_pop_n(std::size_t max_items, std::size_t& popped, Consume&& consume,
                        bool exact = true) noexcept {
    return pop_impl<false>(max_items, popped, consume, exact);
  }

 private:
  [[gnu::noinline]] ring_status push_one_slow(T& item, bool exact) noexcept {
    std::size_t n = 0;
    return push_impl<true>(&item, 1, n, exact);
  }
  template <typename Consume>
  [[gnu::noinline]] ring_status pop_one_slow(Consume& consume, bool exact) noexcept {
    std::size_t n = 0;
    return pop_impl<true>(1, n, consume, exact);
  }

  /// try_push_n; with `single`, count is 1 and the compiler drops the loops over runs (a
  /// single send is most of the traffic: callgrind counted 113 instructions per item in the
  /// general code).
  template <bool single>
  ring_status push_impl(T* items, std::size_t count, std::size_t& pushed, bool exact) noexcept {
    if constexpr (single) count = 1;
    pushed = 0;
    if (count == 0) return ring_status::ok;
    const std::uintptr_t me = this_thread_token();
    backoff b;
    std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    for (;;) {
      if (tail & owned_bit) {
        if (enter_owned(producers_, me)) {
          const ring_status st = owned_push(items, count, pushed, exact);
          leave_owned(producers_);
          if (pushed > 0 || st != ring_status::ok) return st;
          b.snooze();  // ok with nothing pushed: a consumer is still leaving the slot
        } else {
          revoke(producers_, tail_);
        }
        tail = tail_.load(std::memory_order_relaxed);
        continue;
      }
      if (tail & mark_bit_) return ring_status::closed;
      const std::uint64_t index = tail & (mark_bit_ - 1);
      const std::uint64_t stamp = slots_[index].stamp.load(std::memory_order_acquire);
      if (stamp == tail) {
        // Free. Extend the claim over the following free slots of this lap.
        const std::uint64_t k = free_run(index, tail, count);
        const std::uint64_t new_tail = advance(tail, k);
        if (tail_.compare_exchange_weak(tail, new_tail, std::memory_order_seq_cst,
                                        std::memory_order_relaxed)) {
          fill(index, tail, k, items);
          pushed = static_cast<std::size_t>(k);
          note_cas_op(producers_, tail_, producer_streak, tail, new_tail, me);
          return ring_status::ok;
        }
        b.spin();
      } else if (stamp + one_lap_ == tail + 1) {
        // The slot holds the item of the previous lap: full, unless a consumer has claimed it.
        if (!exact) return ring_status::would_block;
        std::atomic_thread_fence(std::memory_order_seq_cst);
        const std::uint64_t head = head_.load(std::memory_order_relaxed) & ~owned_bit;
        if (head + one_lap_ == tail) return ring_status::would_block;
        b.spin();
        tail = tail_.load(std::memory_order_relaxed);
      } else {
        // Our tail is stale, or a consumer of the previous lap is still reading the slot.
        b.snooze();
        tail = tail_.load(std::memory_order_relaxed);
      }
    }
  }

  /// try_pop_n; with `single`, max_items is 1 (as push_impl).
  template <bool single, typename Consume>
  ring_status pop_impl(std::size_t max_items, std::size_t& popped, Consume& consume,
                       bool exact) noexcept {
    if constexpr (single) max_items = 1;
    popped = 0;
    if (max_items == 0) return ring_status::ok;
    const std::uintptr_t me = this_thread_token();
    backoff b;
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    for (;;) {
      if (head & owned_bit) {
        if (enter_owned(consumers_, me)) {
          const ring_status st = owned_pop(max_items, popped, consume, exact);
          leave_owned(consumers_);
          if (popped > 0 || st != ring_status::ok) return st;
          b.snooze();  // a producer has claimed the slot and not yet filled it
        } else {
          revoke(consumers_, head_);
        }
        head = head_.load(std::memory_order_relaxed);
        continue;
      }
      const std::uint64_t index = head & (mark_bit_ - 1);
      const std::uint64_t stamp = slots_[index].stamp.load(std::memory_order_acquire);
      if (stamp == head + 1) {
        const std::uint64_t k = published_run(index, head, max_items);
        const std::uint64_t new_head = advance(head, k);
        if (head_.compare_exchange_weak(head, new_head, std::memory_order_seq_cst,
                                        std::memory_order_relaxed)) {
          take(index, head, k, consume);
          popped = static_cast<std::size_t>(k);
          note_cas_op(consumers_, head_, consumer_streak, head, new_head, me);
          return ring_status::ok;
        }
        b.spin();
      } else if (stamp == head) {
        // Nothing published here yet: empty, unless a producer has claimed the slot.
        if (!exact) return ring_status::would_block;
        std::atomic_thread_fence(std::memory_order_seq_cst);
        const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
        if ((tail & ~(mark_bit_ | owned_bit)) == head) {
          return (tail & mark_bit_) ? ring_status::closed : ring_status::would_block;
        }
        b.spin();
        head = head_.load(std::memory_order_relaxed);
      } else {
        b.snooze();
        head = head_.load(std::memory_order_relaxed);
      }
    }
  }

 public:
  /// Whether the producers' (consumers') side is biased to a thread now (for tests and stats).
  bool owned(bool producers) const noexcept {
    return ((producers ? tail_ : head_).load(std::memory_order_acquire) & owned_bit) != 0;
  }

  /// Whether the calling thread owns the producers' (consumers') side now.
  bool owned_by_me(bool producers) const noexcept {
    const side_bias& b = producers ? producers_ : consumers_;
    return b.owner.load(std::memory_order_relaxed) == this_thread_token();
  }

  /// Biases the producers' (consumers') side to the calling thread at once, as if it had
  /// reached the threshold: for a thread that owned the same side of the ring this one
  /// continues (lib/ring_chain.hpp). Does nothing where sides are never biased, when the side
  /// is owned or being changed, or when the ring is closed.
  void bias_to_me(bool producers) noexcept {
    if (!asymmetric_fence_available()) return;
    side_bias& b = producers ? producers_ : consumers_;
    claim_bias(b, producers ? tail_ : head_, this_thread_token());
  }

  /// For the thread that owns the producers' side: sets the closed mark with the owner's plain
  /// store, as it publishes items, so no other thread is interrupted (close() would revoke the
  /// bias first, an asymmetric fence). False, with nothing done, when this thread does not own
  /// the side: close() is the way then.
  bool seal_owned() noexcept {
    if (!(tail_.load(std::memory_order_relaxed) & owned_bit)) return false;
    if (!enter_owned(producers_, this_thread_token())) return false;
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    tail_.store(tail | mark_bit_, std::memory_order_seq_cst);
    leave_owned(producers_);
    return true;
  }

  /// Makes the ring as new: empty, open, no side biased. Only on a drained ring that no
  /// other thread can reach (an unbounded channel reuses its drained rings).
  void reset() noexcept {
    head_.store(0, std::memory_order_relaxed);
    tail_.store(0, std::memory_order_relaxed);
    for (std::size_t i = 0; i < cap_; ++i) slots_[i].stamp.store(i, std::memory_order_relaxed);
    for (side_bias* b : {&producers_, &consumers_}) {
      b->owner.store(side_bias::none, std::memory_order_relaxed);
      b->busy.store(0, std::memory_order_relaxed);
      b->threshold.store(bias_threshold, std::memory_order_relaxed);
    }
    std::atomic_thread_fence(std::memory_order_release);
  }

  /// Sets the closed mark; true if this call set it. Pushes fail from now on; pops drain.
  bool close() noexcept {
    std::uint64_t tail = tail_.load(std::memory_order_seq_cst);
    for (;;) {
      if (tail & mark_bit_) return false;
      if (tail & owned_bit) {
        // The owner stores tail_ without a CAS and would lose the mark: take the side back.
        revoke(producers_, tail_);
        tail = tail_.load(std::memory_order_seq_cst);
        continue;
      }
      if (tail_.compare_exchange_weak(tail, tail | mark_bit_, std::memory_order_seq_cst)) {
        return true;
      }
    }
  }

  /// For a thread that has just announced itself (a seq_cst increment of a waiter counter) and
  /// is about to look at the ring before it sleeps: if the producers' (consumers') side is
  /// owned, the owner publishes without a seq_cst RMW, so this runs the heavy fence that
  /// pairs with the owner's "publish, then read the counter". Producers' side for a thread
  /// waiting for items, consumers' side for one waiting for room.
  void fence_against(bool producers) noexcept {
    side_bias& b = producers ? producers_ : consumers_;
    if (b.owner.load(std::memory_order_seq_cst) != side_bias::none) asymmetric_fence();
  }

  bool closed() const noexcept { return (tail_.load(std::memory_order_acquire) & mark_bit_) != 0; }

  /// Cheap probes for spinning (no fence, no claim, no look at the other side's counter, so
  /// a spinning thread does not pull that line away from its owner): an item is published at
  /// head / the slot at tail is free (or the ring is closed, which only push can see here).
  /// With ahead > 0: the item `ahead` places after head is published too, i.e. producers have
  /// made a run of items (a consumer that waits for that, rather than for one item, stops
  /// fighting the producer over the line it is filling when the ring is empty).
  bool pop_ready(std::uint64_t ahead = 0) const noexcept {
    const std::uint64_t head = head_.load(std::memory_order_relaxed) & ~owned_bit;
    if (ahead == 0) [[likely]] {
      return slots_[head & (mark_bit_ - 1)].stamp.load(std::memory_order_acquire) == head + 1;
    }
    const std::uint64_t pos = position_after(head, std::min<std::uint64_t>(ahead, cap_ - 1));
    return slots_[pos & (mark_bit_ - 1)].stamp.load(std::memory_order_acquire) == pos + 1;
  }
  /// With ahead > 0: the slot `ahead` places after tail is free too, i.e. consumers have made
  /// a run of room (a producer that waits for that, rather than for one slot, stops fighting
  /// the consumer over the line it is emptying when the ring is full).
  bool push_ready(std::uint64_t ahead = 0) const noexcept {
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed) & ~owned_bit;
    if (tail & mark_bit_) return true;
    const std::uint64_t pos = position_after(tail, std::min<std::uint64_t>(ahead, cap_ - 1));
    return slots_[pos & (mark_bit_ - 1)].stamp.load(std::memory_order_acquire) == pos;
  }

  /// Items queued (claimed slots count); exact only when no one is using the ring.
  std::size_t size() const noexcept {
    for (;;) {
      const std::uint64_t tail = tail_.load(std::memory_order_seq_cst) & ~owned_bit;
      const std::uint64_t head = head_.load(std::memory_order_seq_cst) & ~owned_bit;
      if ((tail_.load(std::memory_order_seq_cst) & ~owned_bit) != tail) continue;
      const std::uint64_t ti = tail & (mark_bit_ - 1);
      const std::uint64_t hi = head & (mark_bit_ - 1);
      if (hi < ti) return static_cast<std::size_t>(ti - hi);
      if (hi > ti) return static_cast<std::size_t>(cap_ - hi + ti);
      return (tail & ~mark_bit_) == head ? 0 : static_cast<std::size_t>(cap_);
    }
  }

 private:
  /// Free slots from index on (the first one is free), up to count and the array's end.
  /// Inline, so that a single item (count 1) costs no call and no loop.
  ISOLA_RING_INLINE std::uint64_t free_run(std::uint64_t index, std::uint64_t tail,
                                           std::uint64_t count) const noexcept {
    if (count == 1) return 1;
    const std::uint64_t room = std::min<std::uint64_t>(count, cap_ - index);
    std::uint64_t k = 1;
    while (k < room && slots_[index + k].stamp.load(std::memory_order_acquire) == tail + k) ++k;
    return k;
  }
  /// Moves k items into the claimed slots from index on and publishes each.
  ISOLA_RING_INLINE void fill(std::uint64_t index, std::uint64_t tail, std::uint64_t k,
                              T* items) noexcept {
    for (std::uint64_t i = 0; i < k; ++i) {
      slot& s = slots_[index + i];
      slot_ops<T>::put(s.storage, items[i]);
      s.stamp.store(tail + i + 1, std::memory_order_release);
    }
  }
  /// Published items from index on (the first one is), up to max_items and the array's end.
  ISOLA_RING_INLINE std::uint64_t published_run(std::uint64_t index, std::uint64_t head,
                                                std::uint64_t max_items) const noexcept {
    if (max_items == 1) return 1;
    const std::uint64_t avail = std::min<std::uint64_t>(max_items, cap_ - index);
    std::uint64_t k = 1;
    while (k < avail && slots_[index + k].stamp.load(std::memory_order_acquire) == head + k + 1) {
      ++k;
    }
    return k;
  }
  /// Hands the k claimed items from index on to consume and frees their slots for the next lap.
  template <typename Consume>
  ISOLA_RING_INLINE void take(std::uint64_t index, std::uint64_t head, std::uint64_t k,
                              Consume& consume) noexcept {
    for (std::uint64_t i = 0; i < k; ++i) {
      slot& s = slots_[index + i];
      T* item = s.item();
      consume(std::move(*item));
      slot_ops<T>::drop(*item);
      s.stamp.store(head + i + one_lap_, std::memory_order_release);
    }
  }

  /// The owner's push: as the CAS path, with plain stores of tail_ (the owned bit stays set;
  /// only the owner itself can set the closed mark while the side is owned: seal_owned()).
  /// ok with pushed == 0: retry.
  ISOLA_RING_INLINE ring_status owned_push(T* items, std::size_t count, std::size_t& pushed,
                                           bool exact) noexcept {
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed) & ~owned_bit;
    if (tail & mark_bit_) [[unlikely]] return ring_status::closed;
    const std::uint64_t index = tail & (mark_bit_ - 1);
    const std::uint64_t stamp = slots_[index].stamp.load(std::memory_order_acquire);
    if (stamp == tail) {
      const std::uint64_t k = free_run(index, tail, count);
      fill(index, tail, k, items);
      tail_.store(advance(tail, k) | owned_bit, std::memory_order_release);
      pushed = static_cast<std::size_t>(k);
      return ring_status::ok;
    }
    if (stamp + one_lap_ == tail + 1) {
      if (!exact) return ring_status::would_block;
      std::atomic_thread_fence(std::memory_order_seq_cst);
      const std::uint64_t head = head_.load(std::memory_order_relaxed) & ~owned_bit;
      if (head + one_lap_ == tail) return ring_status::would_block;
    }
    return ring_status::ok;  // a consumer is still leaving the slot
  }

  /// The owner's pop: as the CAS path, with plain stores of head_. ok with popped == 0: retry.
  template <typename Consume>
  ISOLA_RING_INLINE ring_status owned_pop(std::size_t max_items, std::size_t& popped,
                                          Consume& consume, bool exact) noexcept {
    const std::uint64_t head = head_.load(std::memory_order_relaxed) & ~owned_bit;
    const std::uint64_t index = head & (mark_bit_ - 1);
    const std::uint64_t stamp = slots_[index].stamp.load(std::memory_order_acquire);
    if (stamp == head + 1) {
      const std::uint64_t k = published_run(index, head, max_items);
      take(index, head, k, consume);
      head_.store(advance(head, k) | owned_bit, std::memory_order_release);
      popped = static_cast<std::size_t>(k);
      return ring_status::ok;
    }
    if (stamp == head) {
      if (!exact) return ring_status::would_block;
      std::atomic_thread_fence(std::memory_order_seq_cst);
      const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
      if ((tail & ~(mark_bit_ | owned_bit)) == head) {
        return (tail & mark_bit_) ? ring_status::closed : ring_status::would_block;
      }
    }
    return ring_status::ok;  // a producer has claimed the slot and not yet filled it
  }

  /// The position k places after pos, where pos + k - 1 is still in pos's lap.
  std::uint64_t advance(std::uint64_t pos, std::uint64_t k) const noexcept {
    const std::uint64_t index = pos & (mark_bit_ - 1);
    if (index + k < cap_) return pos + k;
    return (pos & ~(one_lap_ - 1)) + one_lap_;
  }
  std::uint64_t next(std::uint64_t pos) const noexcept { return advance(pos, 1); }
  /// The position k places after pos (k < capacity), into the next lap if need be.
  std::uint64_t position_after(std::uint64_t pos, std::uint64_t k) const noexcept {
    const std::uint64_t index = (pos & (mark_bit_ - 1)) + k;
    if (index < cap_) return pos + k;
    return (pos & ~(one_lap_ - 1)) + one_lap_ + (index - cap_);
  }

  /// The bias of one side: a line that only the owner writes while it owns the side.
  struct side_bias {
    static constexpr std::uintptr_t none = 0;
    static constexpr std::uintptr_t changing = 1;  ///< being acquired or revoked
    alignas(cache_line) std::atomic<std::uintptr_t> owner{none};
    std::atomic<std::uint32_t> busy{0};
    std::atomic<std::uint32_t> threshold{bias_threshold};  ///< written only when revoked
  };

  /// After a successful CAS-mode operation that moved the side's position from `from` to
  /// `to`: counts this thread's streak and biases the side to it at the threshold.
  void note_cas_op(side_bias& b, std::atomic<std::uint64_t>& word, bias_streak& streak,
                   std::uint64_t from, std::uint64_t to, std::uintptr_t me) noexcept {
    if (streak.ring == this && streak.expect == from) {
      ++streak.n;
    } else {
      streak.ring = this;
      streak.n = 0;
    }
    streak.expect = to;
    if (streak.n < b.threshold.load(std::memory_order_relaxed) || !asymmetric_fence_available()) {
      return;
    }
    streak.n = 0;
    claim_bias(b, word, me);
  }

  /// Sets the owned bit in `word` for `me` unless the side is owned, changing or closed.
  void claim_bias(side_bias& b, std::atomic<std::uint64_t>& word, std::uintptr_t me) noexcept {
    std::uintptr_t expected = side_bias::none;
    if (!b.owner.compare_exchange_strong(expected, side_bias::changing,
                                         std::memory_order_seq_cst)) {
      return;
    }
    std::uint64_t w = word.load(std::memory_order_relaxed);
    while ((w & (owned_bit | mark_bit_)) == 0) {
      if (word.compare_exchange_weak(w, w | owned_bit, std::memory_order_seq_cst,
                                     std::memory_order_relaxed)) {
        b.owner.store(me, std::memory_order_seq_cst);
        return;
      }
    }
    b.owner.store(side_bias::none, std::memory_order_seq_cst);  // closed meanwhile
  }

  /// Takes the side back from its owner (see the class comment). Returns when the side is no
  /// longer owned or another thread is changing its bias; the caller re-reads and retries.
  void revoke(side_bias& b, std::atomic<std::uint64_t>& word) noexcept {
    std::uintptr_t o = b.owner.load(std::memory_order_seq_cst);
    if (o == side_bias::changing) {
      cpu_relax();
      return;
    }
    if (o == side_bias::none) return;  // the bit is being set or cleared; look again
    if (!b.owner.compare_exchange_strong(o, side_bias::changing, std::memory_order_seq_cst)) {
      return;
    }
    asymmetric_fence();
    // The owner is either past its check (busy is visible as 1, wait for 0) or will see
    // `changing` and keep off the fast path.
    backoff wait;
    while (b.busy.load(std::memory_order_acquire) != 0) wait.snooze();
    word.fetch_and(~owned_bit, std::memory_order_seq_cst);
    const std::uint32_t t = b.threshold.load(std::memory_order_relaxed);
    b.threshold.store(t < max_bias_threshold ? t * 2 : t, std::memory_order_relaxed);
    b.owner.store(side_bias::none, std::memory_order_seq_cst);
  }

  /// Enters the owner's fast path: true if `me` owns the side (then leave() must follow).
  ISOLA_RING_INLINE static bool enter_owned(side_bias& b, std::uintptr_t me) noexcept {
    if (b.owner.load(std::memory_order_relaxed) != me) return false;
    b.busy.store(1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // the light half of the fence
    if (b.owner.load(std::memory_order_relaxed) == me) return true;
    b.busy.store(0, std::memory_order_release);
    return false;
  }
  ISOLA_RING_INLINE static void leave_owned(side_bias& b) noexcept {
    b.busy.store(0, std::memory_order_release);
  }

  /// Operations in a row by one thread before its side is biased to it, and the most a
  /// revoked side can ask for.
  static constexpr std::uint32_t bias_threshold = 256;
  static constexpr std::uint32_t max_bias_threshold = 1u << 20;
  /// Set in head_ / tail_ while the side is owned (the top bit: positions reach it only after
  /// 2^63 items).
  static constexpr std::uint64_t owned_bit = std::uint64_t{1} << 63;

  const std::uint64_t cap_;
  const std::uint64_t mark_bit_;
  const std::uint64_t one_lap_;
  const bool external_;
  slot* slots_ = nullptr;
  alignas(cache_line) std::atomic<std::uint64_t> head_{0};
  alignas(cache_line) std::atomic<std::uint64_t> tail_{0};
  side_bias producers_;
  side_bias consumers_;
};

}  // namespace isola::detail
