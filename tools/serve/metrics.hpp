// isola serve's metrics in Prometheus' text exposition format (version 0.0.4): requests by
// status, a latency histogram, requests in flight, timeouts, and per-interpreter busy time,
// memory and recycling from the pool's stats. Counters are atomics: recording a request takes
// no lock.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include <isola/pool.hpp>

namespace isola::serve {

class metrics {
 public:
  /// Upper bounds of the latency histogram, in seconds (Prometheus' client defaults).
  static constexpr std::array<double, 14> bounds{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                 0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0};

  void request_started() noexcept { in_flight_.fetch_add(1, std::memory_order_relaxed); }
  /// A response was finished (or the request given up) with `status` after `duration`.
  void request_finished(int status, std::chrono::nanoseconds duration) noexcept;
  void timed_out() noexcept { timeouts_.fetch_add(1, std::memory_order_relaxed); }
  void connection_opened() noexcept { connections_.fetch_add(1, std::memory_order_relaxed); }
  void connection_closed() noexcept { connections_.fetch_sub(1, std::memory_order_relaxed); }
  void reloaded() noexcept { reloads_.fetch_add(1, std::memory_order_relaxed); }

  std::int64_t in_flight() const noexcept { return in_flight_.load(std::memory_order_relaxed); }
  std::uint64_t requests() const noexcept;

  /// The exposition text; `pool` gives the per-interpreter figures.
  std::string render(const pool_stats& pool) const;

 private:
  std::atomic<std::int64_t> in_flight_{0};
  std::atomic<std::int64_t> connections_{0};
  std::atomic<std::uint64_t> timeouts_{0};
  std::atomic<std::uint64_t> reloads_{0};
  std::array<std::atomic<std::uint64_t>, 600> by_status_{};  ///< index: status - 100
  std::array<std::atomic<std::uint64_t>, bounds.size() + 1> buckets_{};  ///< last: +Inf
  std::atomic<std::uint64_t> latency_ns_sum_{0};
};

}  // namespace isola::serve
