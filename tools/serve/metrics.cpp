// Prometheus text rendering of isola serve's counters.
#include "tools/serve/metrics.hpp"

#include <fmt/core.h>

namespace isola::serve {

void metrics::request_finished(int status, std::chrono::nanoseconds d) noexcept {
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
  if (status >= 100 && status < 700) by_status_[status - 100].fetch_add(1, std::memory_order_relaxed);
  const double s = std::chrono::duration<double>(d).count();
  std::size_t i = 0;
  while (i < bounds.size() && s > bounds[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  latency_ns_sum_.fetch_add(static_cast<std::uint64_t>(d.count()), std::memory_order_relaxed);
}

std::uint64_t metrics::requests() const noexcept {
  std::uint64_t n = 0;
  for (const auto& c : by_status_) n += c.load(std::memory_order_relaxed);
  return n;
}

std::string metrics::render(const pool_stats& pool) const {
  std::string out;
  auto line = [&out](const std::string& s) {
    out += s;
    out += '\n';
  };
  line("# HELP isola_serve_requests_total Requests answered, by HTTP status.");
  line("# TYPE isola_serve_requests_total counter");
  for (std::size_t i = 0; i < by_status_.size(); ++i) {
    const auto n = by_status_[i].load(std::memory_order_relaxed);
    if (n != 0) line(fmt::format("isola_serve_requests_total{{status=\"{}\"}} {}", i + 100, n));
  }
  line("# HELP isola_serve_request_duration_seconds Time from a request's head to its last "
       "response byte.");
  line("# TYPE isola_serve_request_duration_seconds histogram");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    line(fmt::format("isola_serve_request_duration_seconds_bucket{{le=\"{}\"}} {}", bounds[i],
                     cumulative));
  }
  cumulative += buckets_[bounds.size()].load(std::memory_order_relaxed);
  line(fmt::format("isola_serve_request_duration_seconds_bucket{{le=\"+Inf\"}} {}", cumulative));
  line(fmt::format("isola_serve_request_duration_seconds_sum {}",
                   static_cast<double>(latency_ns_sum_.load(std::memory_order_relaxed)) / 1e9));
  line(fmt::format("isola_serve_request_duration_seconds_count {}", cumulative));
  line("# HELP isola_serve_requests_in_flight Requests being handled now.");
  line("# TYPE isola_serve_requests_in_flight gauge");
  line(fmt::format("isola_serve_requests_in_flight {}", in_flight()));
  line("# HELP isola_serve_connections Open client connections.");
  line("# TYPE isola_serve_connections gauge");
  line(fmt::format("isola_serve_connections {}", connections_.load(std::memory_order_relaxed)));
  line("# HELP isola_serve_timeouts_total Requests interrupted by --timeout.");
  line("# TYPE isola_serve_timeouts_total counter");
  line(fmt::format("isola_serve_timeouts_total {}", timeouts_.load(std::memory_order_relaxed)));
  line("# HELP isola_serve_reloads_total Application reloads (SIGHUP).");
  line("# TYPE isola_serve_reloads_total counter");
  line(fmt::format("isola_serve_reloads_total {}", reloads_.load(std::memory_order_relaxed)));

  struct family {
    const char* name;
    const char* type;
    const char* help;
    double (*get)(const interpreter_stats&);
  };
  static const family families[] = {
      {"isola_serve_interpreter_busy_seconds_total", "counter",
       "Time the interpreter spent running requests.",
       [](const interpreter_stats& s) { return std::chrono::duration<double>(s.busy).count(); }},
      {"isola_serve_interpreter_requests_total", "counter", "Requests the interpreter ran.",
       [](const interpreter_stats& s) {
         return static_cast<double>(s.tasks_done + s.tasks_failed);
       }},
      {"isola_serve_interpreter_memory_bytes", "gauge",
       "Memory the interpreter holds (isola's accounting).",
       [](const interpreter_stats& s) { return static_cast<double>(s.memory_bytes); }},
      {"isola_serve_interpreter_recycles_total", "counter",
       "Times the interpreter was replaced (--max-requests, memory soft limit).",
       [](const interpreter_stats& s) { return static_cast<double>(s.recycled); }},
      {"isola_serve_interpreter_timeouts_total", "counter",
       "Requests interrupted by --timeout in the interpreter.",
       [](const interpreter_stats& s) { return static_cast<double>(s.tasks_timed_out); }},
  };
  for (const auto& f : families) {
    line(fmt::format("# HELP {} {}", f.name, f.help));
    line(fmt::format("# TYPE {} {}", f.name, f.type));
    for (const auto& s : pool.interpreters) {
      line(fmt::format("{}{{interpreter=\"{}\",lane=\"{}\"}} {}", f.name, s.index,
                       s.shared_gil_lane ? "shared-gil" : "own-gil", f.get(s)));
    }
  }
  line("# HELP isola_serve_queue_depth Requests waiting for a free interpreter.");
  line("# TYPE isola_serve_queue_depth gauge");
  line(fmt::format("isola_serve_queue_depth {}", pool.queue_depth));
  return out;
}

}  // namespace isola::serve
