// Parking a thread on a 32-bit word until another thread changes it and wakes it: a futex on
// Linux, with a deadline on the steady clock (C++20's atomic::wait has none).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

namespace isola::detail {

using deadline = std::optional<std::chrono::steady_clock::time_point>;

/// Blocks while word == expected, until unpark() or the deadline. Returns false only when the
/// deadline has passed; true on a wake-up, a changed word, or a spurious return (callers
/// re-check their condition in a loop).
bool park(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
          const deadline& until) noexcept;

/// Wakes up to count threads parked on word (call it after changing the word).
void unpark(std::atomic<std::uint32_t>& word, int count) noexcept;

}  // namespace isola::detail
