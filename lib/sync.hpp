// The synchronisation primitives every part shares: a CPU pause hint for spin loops, parking
// a thread on a 32-bit word (a futex on Linux, with a deadline on the steady clock, which
// C++20's atomic::wait lacks), and an asymmetric fence. Spin first with cpu_relax(), then
// park(): the pool's idle workers and the channels' waiting sides both do.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace isola::detail {

inline constexpr std::size_t cache_line = 64;

/// One pause instruction: tells the core (and its hyper-thread sibling) that we are spinning.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::this_thread::yield();
#endif
}

using deadline = std::optional<std::chrono::steady_clock::time_point>;

/// Blocks while word == expected, until unpark() or the deadline. Returns false only when the
/// deadline has passed; true on a wake-up, a changed word, or a spurious return (callers
/// re-check their condition in a loop).
bool park(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
          const deadline& until) noexcept;

/// Wakes up to count threads parked on word (call it after changing the word).
void unpark(std::atomic<std::uint32_t>& word, int count) noexcept;

/// The heavy half of an asymmetric fence (Linux membarrier, private expedited): when it
/// returns, every other running thread of the process has passed a full memory barrier. With
/// it, a hot path may order a store before a load with only a compiler fence
/// (std::atomic_signal_fence) and the rare path that pairs with it pays instead.
/// - asymmetric_fence_available() says whether the kernel offers it (registration is done on
///   the first call); it is false under ThreadSanitizer, which cannot see such fences.
///   Registering takes the kernel 10-15 ms once the process has other threads (microseconds
///   with one), so isola::runtime calls it first thing and every channel calls it when it is
///   made: the cost never falls on a stream of items, at the operation that first biases a
///   side.
/// - asymmetric_fence_checked(): whether that first call has completed (for tests).
/// - asymmetric_fence() must only be called when it is available.
bool asymmetric_fence_available() noexcept;
bool asymmetric_fence_checked() noexcept;
void asymmetric_fence() noexcept;

}  // namespace isola::detail
