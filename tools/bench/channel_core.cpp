// isola_channel_bench: throughput and round-trip figures of the channel core, as JSON.
// One C++ thread sends, another receives; each figure is the median of its runs.
//   isola_channel_bench [--messages N] [--runs R] [--capacity C] [--batch B] [--rounds N]
//                       [--only single|batch|ring|local|pingpong] (--help says more)
#include <isola/channel.hpp>

#include "lib/ring.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <time.h>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct options {
  std::size_t messages = 4'000'000;
  int runs = 3;
  std::size_t capacity = 4096;
  std::size_t batch = 256;
  int rounds = 200'000;
  std::string only;  ///< run just this figure (for profiling): single, batch, ring, local, pingpong
};

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "isola_channel_bench: %s\n", what);
  std::exit(1);
}

/// Messages per second, one sender and one receiver, single-item send()/recv().
double single_items(const options& o) {
  isola::channel ch(o.capacity);
  std::int64_t sum = 0;
  auto t0 = clock_type::now();
  // The receiver has its own handle and copy of the options: reading the sender's `ch` or
  // `o` (on the sender's stack) for every item shares a line with the sender's locals.
  std::thread receiver([&sum, ch = ch, o = o]() mutable {
    // Summed in a local: a total on the sending thread's stack would share a cache line with
    // the sender's own locals, and that false sharing was most of what early runs measured.
    std::int64_t total = 0;
    try {
      for (std::size_t i = 0; i < o.messages; ++i) {
        isola::message m = ch.recv();
        total += std::get<std::int64_t>(std::get<isola::value>(m.payload).data());
      }
    } catch (const isola::error& e) {  // a thread reports failure with fail(), not by throwing
      fail(e.what());
    }
    sum = total;
  });
  for (std::size_t i = 0; i < o.messages; ++i) {
    ch.send(isola::message(static_cast<std::int64_t>(i)));
  }
  receiver.join();
  const double s = seconds_since(t0);
  const auto n = static_cast<std::int64_t>(o.messages);
  if (sum != n * (n - 1) / 2) fail("single-item checksum mismatch");
  return static_cast<double>(o.messages) / s;
}

/// Items per second with send_many()/recv_many() in batches of o.batch.
double batches(const options& o) {
  isola::channel ch(o.capacity);
  std::int64_t sum = 0;
  auto t0 = clock_type::now();
  // The receiver has its own handle and copy of the options: reading the sender's `ch` or
  // `o` (on the sender's stack) for every item shares a line with the sender's locals.
  std::thread receiver([&sum, ch = ch, o = o]() mutable {
    std::vector<isola::message> got;
    got.reserve(o.batch);
    std::size_t n = 0;
    std::int64_t total = 0;  // a local, as in single_items()
    while (n < o.messages) {
      got.clear();
      boost::system::error_code ec;
      const std::size_t k = ch.recv_many(got, o.batch, std::nullopt, {}, ec);
      if (ec) fail("recv_many failed");
      for (auto& m : got) total += std::get<std::int64_t>(std::get<isola::value>(m.payload).data());
      n += k;
    }
    sum = total;
  });
  std::vector<isola::message> batch;
  batch.reserve(o.batch);
  for (std::size_t i = 0; i < o.messages;) {
    batch.clear();
    for (std::size_t k = 0; k < o.batch && i < o.messages; ++k, ++i) {
      batch.emplace_back(static_cast<std::int64_t>(i));
    }
    ch.send_many(batch);
  }
  receiver.join();
  const double s = seconds_since(t0);
  const auto n = static_cast<std::int64_t>(o.messages);
  if (sum != n * (n - 1) / 2) fail("batch checksum mismatch");
  return static_cast<double>(o.messages) / s;
}

/// The typed ring alone (T = int64_t, try_push/try_pop spinning): the ceiling under the
/// channel's message handling and wake-up protocol.
double raw_ring(const options& o) {
  isola::detail::ring<std::int64_t> ring(o.capacity);
  std::int64_t sum = 0;
  auto t0 = clock_type::now();
  std::thread receiver([&sum, &ring, o = o] {
    std::int64_t total = 0;  // a local, as in single_items()
    for (std::size_t i = 0; i < o.messages;) {
      if (ring.try_pop([&](std::int64_t&& v) noexcept { total += v; }) ==
          isola::detail::ring_status::ok) {
        ++i;
      } else {
        isola::detail::cpu_relax();
      }
    }
    sum = total;
  });
  for (std::size_t i = 0; i < o.messages;) {
    auto v = static_cast<std::int64_t>(i);
    if (ring.try_push(v) == isola::detail::ring_status::ok) {
      ++i;
    } else {
      isola::detail::cpu_relax();
    }
  }
  receiver.join();
  const double s = seconds_since(t0);
  const auto n = static_cast<std::int64_t>(o.messages);
  if (sum != n * (n - 1) / 2) fail("ring checksum mismatch");
  return static_cast<double>(o.messages) / s;
}

/// CPU nanoseconds for one send() plus one recv() on the same thread (no other thread, no
/// waiting): the cost of the fast path itself. Thread CPU time, so other load on the machine
/// does not inflate it.
double same_thread_ns(const options& o) {
  auto cpu_now = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
  };
  isola::channel ch(o.capacity);
  std::int64_t sum = 0;
  const double t0 = cpu_now();
  for (std::size_t i = 0; i < o.messages; ++i) {
    ch.send(isola::message(static_cast<std::int64_t>(i)));
    isola::message m = ch.recv();
    sum += std::get<std::int64_t>(std::get<isola::value>(m.payload).data());
  }
  const double ns = cpu_now() - t0;
  const auto n = static_cast<std::int64_t>(o.messages);
  if (sum != n * (n - 1) / 2) fail("same-thread checksum mismatch");
  return ns / static_cast<double>(o.messages);
}

struct rtt {
  double p50_us, p99_us;
};

/// Round trip: A sends on one channel, B echoes on another, A receives; per-round times.
rtt pingpong(const options& o) {
  isola::channel there(1), back(1);
  std::thread echo([&] {
    for (;;) {
      boost::system::error_code ec;
      isola::message m = there.recv(ec);
      if (ec) return;  // closed
      back.send(std::move(m), ec);
      if (ec) fail("echo send failed");
    }
  });
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(o.rounds));
  for (int i = 0; i < o.rounds; ++i) {
    auto t0 = clock_type::now();
    there.send(isola::message(std::int64_t{i}));
    (void)back.recv();
    us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
  }
  there.close();
  echo.join();
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100]};
}

constexpr const char* usage =
    "usage: isola_channel_bench [--messages N] [--runs R] [--capacity C] [--batch B]\n"
    "                           [--rounds N] [--only single|batch|ring|local|pingpong]\n";

constexpr const char* help_text =
    "Throughput and round-trip figures of isola's channel core between C++ threads, printed as\n"
    "one JSON object on stdout. One thread sends int messages, another receives them; each\n"
    "figure is the median of its runs.\n"
    "\n"
    "  --messages N   messages per throughput run (default 4000000)\n"
    "  --runs R       runs of each figure (default 3)\n"
    "  --capacity C   channel capacity (default 4096)\n"
    "  --batch B      items per send_many / recv_many (default 256)\n"
    "  --rounds N     ping-pong round trips per run (default 200000)\n"
    "  --only FIGURE  measure just one figure (for profiling); the others print 0:\n"
    "                 single (cpp_msgs_per_s), batch (cpp_batch_items_per_s),\n"
    "                 ring (cpp_ring_int64_msgs_per_s), local (cpp_same_thread_send_recv_ns),\n"
    "                 pingpong (cpp_pingpong_rtt_us_p50/_p99)\n"
    "  -h, --help     this text\n"
    "\n"
    "The figures with Python and CPython's own queues come from `isola bench channels`.\n";

std::size_t parse(const std::string& option, const char* s) {
  char* end = nullptr;
  errno = 0;
  auto v = std::strtoull(s, &end, 10);
  if (!end || *end != '\0' || v == 0 || errno == ERANGE || *s == '-') {
    fail((option + " wants a positive integer, not '" + s + "'").c_str());
  }
  return static_cast<std::size_t>(v);
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage, stdout);
      std::fputs("\n", stdout);
      std::fputs(help_text, stdout);
      return 0;
    }
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) fail((a + " needs a value (see --help)").c_str());
      return argv[++i];
    };
    if (a == "--messages") o.messages = parse(a, value());
    else if (a == "--runs") o.runs = static_cast<int>(std::min<std::size_t>(parse(a, value()), 1000));
    else if (a == "--capacity") o.capacity = parse(a, value());
    else if (a == "--batch") o.batch = parse(a, value());
    else if (a == "--rounds") o.rounds = static_cast<int>(std::min<std::size_t>(parse(a, value()), 1u << 30));
    else if (a == "--only") o.only = value();
    else {
      std::fputs(usage, stderr);
      fail(("unknown option '" + a + "' (see --help)").c_str());
    }
  }
  if (!o.only.empty() && o.only != "single" && o.only != "batch" && o.only != "ring" &&
      o.only != "local" && o.only != "pingpong") {
    fail(("--only takes single, batch, ring, local or pingpong, not '" + o.only + "'").c_str());
  }
  if (o.capacity > isola::channel::max_capacity) {
    fail("--capacity must be at most 2^40");
  }

  std::vector<double> single, batch, ring, local, p50, p99;
  auto want = [&](const char* figure) { return o.only.empty() || o.only == figure; };
  try {
    for (int r = 0; r < o.runs; ++r) {
      single.push_back(want("single") ? single_items(o) : 0);
      batch.push_back(want("batch") ? batches(o) : 0);
      ring.push_back(want("ring") ? raw_ring(o) : 0);
      local.push_back(want("local") ? same_thread_ns(o) : 0);
      const rtt t = want("pingpong") ? pingpong(o) : rtt{0, 0};
      p50.push_back(t.p50_us);
      p99.push_back(t.p99_us);
    }
  } catch (const isola::error& e) {  // a send or recv on the measuring thread failed
    fail(e.what());
  }
  std::printf(
      "{\n"
      "  \"messages\": %zu,\n"
      "  \"runs\": %d,\n"
      "  \"capacity\": %zu,\n"
      "  \"batch\": %zu,\n"
      "  \"hardware_threads\": %u,\n"
      "  \"cpp_msgs_per_s\": %.0f,\n"
      "  \"cpp_batch_items_per_s\": %.0f,\n"
      "  \"cpp_ring_int64_msgs_per_s\": %.0f,\n"
      "  \"cpp_same_thread_send_recv_ns\": %.1f,\n"
      "  \"cpp_pingpong_rtt_us_p50\": %.3f,\n"
      "  \"cpp_pingpong_rtt_us_p99\": %.3f\n"
      "}\n",
      o.messages, o.runs, o.capacity, o.batch, std::thread::hardware_concurrency(),
      median(single), median(batch), median(ring), median(local), median(p50), median(p99));
}
