// `isola bench channels`: channels between own-GIL interpreters against CPython's own ways of
// passing data between interpreters and processes, in the same run on the same Python.
// - small ints, one sending and one receiving interpreter in parallel (ch.send / ch.recv in a
//   Python loop), against CPython's cross-interpreter queues (PEP 734's API, on 3.13
//   test.support.interpreters.queues) and multiprocessing.Queue between two processes;
// - send_many / recv_many batches; a ping-pong round trip; 100 MB of bytes shared without
//   copying against receiving a copy;
// - the C++ core alone: one C++ thread to another through isola::channel (the measuring loops
//   of tools/bench/channel_core.cpp).
// The CPython peers run in a subprocess of the python isola was built against
// (ISOLA_PYTHON_EXECUTABLE), which prints its figures as JSON. Every transfer is checked (sums,
// echoes, the last byte), so a broken channel or peer fails the run instead of looking fast.
#include "tools/bench/bench.hpp"
#include "tools/build_info.hpp"
#include "tools/isola/cli.hpp"
#include "tools/bench/py/channels_isola.py.hpp"
#include "tools/bench/py/channels_peer_module.py.hpp"
#include "tools/bench/py/channels_peer.py.hpp"

#include <boost/json.hpp>
#include <boost/lockfree/queue.hpp>
#include <boost/lockfree/spsc_queue.hpp>

#include <isola/channel.hpp>
#include <isola/error.hpp>
#include <isola/interpreter.hpp>
#include <isola/runtime.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/core.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

namespace isola::cli {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

/// Default capacity of the channels the transfers use: the default bound of isola.Channel() and
/// isola.channel(name) (and tools/bench/channel_core.cpp's).
constexpr std::size_t default_capacity = 4096;
/// Items per loop of the one-thread cost measurements (a channel that holds them all).
constexpr std::size_t cost_loop = 4096;
/// The paced transfers' sender waits for the receiver after this many items.
constexpr std::size_t paced_burst = 256;

struct channels_options {
  std::size_t messages = 3'000'000;       ///< ints sent interpreter to interpreter per run
  std::size_t batch_messages = 10'000'000;  ///< items sent in batches per run
  std::size_t batch = 1000;
  std::size_t rounds = 20'000;            ///< ping-pong round trips measured
  std::size_t cpp_messages = 20'000'000;  ///< C++ thread to thread, per run
  std::size_t peer_messages = 500'000;    ///< for CPython's queues and multiprocessing.Queue
  std::size_t capacity = default_capacity;  ///< of the channels the transfers use
  std::size_t burst = 10'000'000;  ///< items queued at once in the unbounded channel's burst
  std::size_t big_mb = 100;
  unsigned big_rounds = 7;
  unsigned repeat = 3;
  bool no_peers = false;
  bool no_pin = false;
  bool quick = false;
};

/// --quick: a smoke run of a few seconds, for the options not given explicitly.
void apply_quick(channels_options& o, const CLI::App& app) {
  auto unset = [&](const char* name) { return app.get_option(name)->count() == 0; };
  if (unset("--messages")) o.messages = 200'000;
  if (unset("--batch-messages")) o.batch_messages = 500'000;
  if (unset("--rounds")) o.rounds = 2'000;
  if (unset("--cpp-messages")) o.cpp_messages = 1'000'000;
  if (unset("--peer-messages")) o.peer_messages = 20'000;
  if (unset("--big-rounds")) o.big_rounds = 3;
  if (unset("--repeat")) o.repeat = 1;
  if (unset("--burst")) o.burst = 1'000'000;
}

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("bench channels: " + what);
}

std::int64_t triangle(std::size_t n) {
  const auto m = static_cast<std::int64_t>(n);
  return m * (m - 1) / 2;
}

/// A fresh channel name per measurement: a closed channel stays closed while it is registered.
std::string fresh_name(const char* what) {
  static std::atomic<int> counter{0};
  return fmt::format("isola-bench-{}-{}", what, counter++);
}

// ---- Python: interpreter to interpreter --------------------------------------------------

/// Two own-GIL interpreters with the measuring functions in __main__.
struct interpreter_pair {
  std::vector<interpreter> team;
  interpreter_pair() {
    for (int k = 0; k < 2; ++k) {
      interpreter_config c;
      c.name = k == 0 ? "bench-sender" : "bench-receiver";
      team.emplace_back(c);
      team.back().exec(embedded::channels_isola);
    }
  }
  ~interpreter_pair() { close_newest_first(team); }
  interpreter& sender() { return team[0]; }
  interpreter& receiver() { return team[1]; }
};

struct pair_outcome {
  value received, sent;     ///< what each call returned
  clock::time_point done;  ///< when the receiving call was seen to have returned
};

/// Waits for the receiving call, then the sending one. If either call fails, the channels are
/// closed so that the other side's send / recv raises ChannelClosed and returns too; then the
/// failure is rethrown.
pair_outcome finish(std::future<value>& received, std::future<value>& sent,
                    std::vector<channel> chans) {
  auto close_all = [&] {
    for (auto& c : chans) c.close();
  };
  pair_outcome out;
  bool sent_done = false;
  while (received.wait_for(10ms) != std::future_status::ready) {
    if (!sent_done && sent.wait_for(0s) == std::future_status::ready) {
      sent_done = true;
      try {
        out.sent = sent.get();
      } catch (...) {
        close_all();
        received.wait();
        throw;
      }
    }
  }
  out.done = clock::now();
  try {
    out.received = received.get();
  } catch (...) {
    close_all();
    if (!sent_done) sent.wait();
    throw;
  }
  if (!sent_done) out.sent = sent.get();
  return out;
}

/// One run of a transfer: items per second; the time both threads ran on a CPU over the wall
/// time (2: both ran all along, working or spinning), and the time they waited for a CPU while
/// runnable (other work on the machine had it). 2 - cores - waiting: they were parked.
struct transfer_run {
  double rate = 0, cores = 0, waiting = 0;
  /// Percent of the machine's CPU time during the run that a hypervisor took (steal).
  double stolen = std::numeric_limits<double>::quiet_NaN();
};

/// (ns on a CPU, ns waiting for one while runnable) of the calling thread, from
/// /proc/thread-self/schedstat (CPU time and no waiting where that is missing).
std::pair<double, double> sched_ns() {
  std::ifstream f("/proc/thread-self/schedstat");
  double on_cpu = 0, waiting = 0;
  if (f >> on_cpu >> waiting) return {on_cpu, waiting};
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return {static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec), 0};
}

/// Items per second from the start of both calls until the receiver has all n and returned
/// their sum (checked); with until_both, until both calls have returned (the no-channel
/// loops, where the sender does not pace the receiver).
transfer_run python_transfer(interpreter_pair& p, std::size_t capacity, const char* send_fn,
                             const char* recv_fn, std::size_t n, std::vector<value> extra,
                             bool until_both = false) {
  const std::string name = fresh_name("py");
  // Held for the whole run; capacity 0: unbounded.
  channel ch = capacity > 0 ? channel::open(name, capacity) : channel::open(name, unbounded);
  std::vector<value> args{value(name), value(static_cast<std::int64_t>(n))};
  args.insert(args.end(), extra.begin(), extra.end());
  const cpu_ticks k0 = cpu_ticks_now();
  auto t0 = clock::now();
  auto received = p.receiver().call_with_async(fmt::format("__main__:{}", recv_fn), args);
  auto sent = p.sender().call_with_async(fmt::format("__main__:{}", send_fn), args);
  const pair_outcome out = finish(received, sent, {ch});
  const auto end = until_both ? clock::now() : out.done;
  const cpu_ticks k1 = cpu_ticks_now();
  const double s = std::chrono::duration<double>(end - t0).count();
  const auto& got = out.received.as_tuple().items;  // (sum, ns on a CPU, ns waiting)
  const auto& sender = out.sent.as_tuple().items;   // (ns on a CPU, ns waiting)
  const std::int64_t total = got.at(0).as_int();
  check(total == triangle(n), fmt::format("{}: the receiver's sum is {}, not {}", recv_fn, total,
                                          triangle(n)));
  const double on_cpu = static_cast<double>(got.at(1).as_int() + sender.at(0).as_int()) / 1e9;
  const double waiting = static_cast<double>(got.at(2).as_int() + sender.at(1).as_int()) / 1e9;
  return {static_cast<double>(n) / s, on_cpu / s, waiting / s, stolen_percent(k0, k1)};
}

struct rate_figures {
  double median = 0, best = 0;
  double cores = 0, waiting = 0, stolen = 0;  ///< transfer_run's, medians over the runs
};

/// The runs of one measurement, summed up as rate_figures.
class rate_samples {
 public:
  void add(const transfer_run& t) {
    rates_.push_back(t.rate);
    cores_.push_back(t.cores);
    waiting_.push_back(t.waiting);
    if (!std::isnan(t.stolen)) stolen_.push_back(t.stolen);
  }
  rate_figures figures() const {
    return {median(rates_), *std::max_element(rates_.begin(), rates_.end()), median(cores_),
            median(waiting_),
            stolen_.empty() ? std::numeric_limits<double>::quiet_NaN() : median(stolen_)};
  }

 private:
  std::vector<double> rates_, cores_, waiting_, stolen_;
};

void report_run(const bench_context& ctx, const std::string& what, const transfer_run& t,
                const char* unit) {
  ctx.progress(fmt::format("  {}: {:.0f} {} (the two threads ran {:.2f} cores, waited for a CPU "
                           "{:.2f}; the hypervisor took {:.0f}% of the CPU time)",
                           what, t.rate, unit, t.cores, t.waiting, t.stolen));
}

rate_figures repeated(unsigned repeat, const bench_context& ctx, const char* unit,
                      const std::function<transfer_run()>& run) {
  rate_samples samples;
  for (unsigned r = 0; r < repeat; ++r) {
    const transfer_run t = run();
    samples.add(t);
    report_run(ctx, fmt::format("run {}/{}", r + 1, repeat), t, unit);
  }
  return samples.figures();
}

/// repeated() for a transfer and the same loops with no channel between them, run by run in
/// turn, so that both see the same phases of a machine whose speed drifts.
std::pair<rate_figures, rate_figures> repeated_with_ceiling(
    unsigned repeat, const bench_context& ctx, const char* unit,
    const std::function<transfer_run()>& run, const std::function<transfer_run()>& no_channel) {
  rate_samples with, without;
  for (unsigned r = 0; r < repeat; ++r) {
    const transfer_run t = run();
    with.add(t);
    report_run(ctx, fmt::format("run {}/{}", r + 1, repeat), t, unit);
    const transfer_run u = no_channel();
    without.add(u);
    report_run(ctx, fmt::format("run {}/{}, no channel", r + 1, repeat), u, unit);
  }
  return {with.figures(), without.figures()};
}

struct rtt_figures {
  double p50_us = 0, p99_us = 0;
};

rtt_figures python_pingpong(interpreter_pair& p, std::size_t rounds) {
  const std::string there = fresh_name("ping"), back = fresh_name("pong");
  channel a = channel::open(there, default_capacity), b = channel::open(back, default_capacity);
  auto echoed = p.receiver().call_async("__main__:echo", there, back);
  const std::int64_t warmup = static_cast<std::int64_t>(std::max<std::size_t>(rounds / 10, 100));
  const value r = p.sender().call("__main__:ping", there, back,
                                  static_cast<std::int64_t>(rounds), warmup);
  const std::int64_t count = echoed.get().as_int();
  check(count == static_cast<std::int64_t>(rounds) + warmup,
        fmt::format("ping-pong: {} echoes for {} rounds", count, rounds));
  const auto& t = r.as_tuple().items;
  return {static_cast<double>(t.at(0).as_int()) / 1e3, static_cast<double>(t.at(1).as_int()) / 1e3};
}

/// Milliseconds from before send() of the sender's `big` bytes (as bytes, or a memoryview of
/// them) in one interpreter to after the other has read the last byte of what it received (a
/// bytes object, or a memoryview of the sender's memory). The receiver is already waiting when
/// the send starts.
double python_big(interpreter_pair& p, bool as_bytes, std::size_t size) {
  const std::string name = fresh_name("big");
  channel ch = channel::open(name, default_capacity);
  auto received = p.receiver().call_async("__main__:recv_big", name, as_bytes,
                                          static_cast<std::int64_t>(size));
  std::this_thread::sleep_for(20ms);  // the receiver is parked in recv() by now
  auto sent = p.sender().call_async("__main__:send_big", name, as_bytes);
  const pair_outcome out = finish(received, sent, {ch});
  const auto& from = out.sent.as_tuple().items;  // (t0, address of the bytes sent)
  const auto& got = out.received.as_tuple().items;  // (t1, address of what was read)
  const std::int64_t t0 = from.at(0).as_int(), t1 = got.at(0).as_int();
  check(as_bytes != (from.at(1).as_int() == got.at(1).as_int()),
        as_bytes ? "the bytes arrived at the sender's address: the receiver got no bytes of "
                   "its own"
                 : "the memoryview arrived at another address: it was copied");
  return static_cast<double>(t1 - t0) / 1e6;
}

// ---- C++: thread to thread (the loops of tools/bench/channel_core.cpp) --------------------------

std::int64_t int_of(const message& m) {
  return std::get<std::int64_t>(std::get<value>(m.payload).data());
}

/// CPU time the calling thread has used.
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

/// CPU nanoseconds per item of one send() plus one recv() in one thread (a loop of sends, then
/// one of recvs, through a channel that holds them all): the channel's own cost per message,
/// whatever else runs on the machine.
double cpp_one_thread_ns(std::size_t rounds) {
  channel ch(cost_loop);
  std::int64_t sum = 0;
  const double c0 = thread_cpu_seconds();
  for (std::size_t r = 0; r < rounds; ++r) {
    for (std::size_t i = 0; i < cost_loop; ++i) {
      ch.send(message(static_cast<std::int64_t>(i)));
    }
    for (std::size_t i = 0; i < cost_loop; ++i) sum += int_of(ch.recv());
  }
  const double c1 = thread_cpu_seconds();
  check(sum == static_cast<std::int64_t>(rounds) * triangle(cost_loop),
        "C++ one-thread: wrong sum");
  return (c1 - c0) * 1e9 / static_cast<double>(rounds * cost_loop);
}

/// How a C++ single-item run starts, fixed rather than left to thread start-up, so that runs
/// are alike (docs/channels-performance.md, "Head probes on a faster machine"; measured, the
/// two starts give the same figure within a few percent, and which side then waits depends
/// on the build):
/// - ring_full: the receiver starts once the sender has filled the ring;
/// - receiver_waiting: the sender starts once the receiver is about to receive.
enum class cpp_start { ring_full, receiver_waiting };

/// Stores into `out` the (CPU, waiting) nanoseconds sched_ns() counts for the calling thread
/// while the object lives: a receiving thread's share of a transfer.
class sched_scope {
 public:
  explicit sched_scope(std::pair<double, double>& out) : out_(out), start_(sched_ns()) {}
  ~sched_scope() {
    const auto end = sched_ns();
    out_ = {end.first - start_.first, end.second - start_.second};
  }
  sched_scope(const sched_scope&) = delete;
  sched_scope& operator=(const sched_scope&) = delete;

 private:
  std::pair<double, double>& out_;
  std::pair<double, double> start_;
};

/// Where the two threads of a C++ transfer run: the sender on one CPU and the receiver on
/// another, fixed for the whole run, or wherever the scheduler puts them (`on` false). Two
/// threads left free share a core now and then, and move between cores; each move changes
/// which side waits, and with it the figure.
struct cpu_pins {
  bool on = false;
  int sender = -1, receiver = -1;
};

/// The first two CPUs this process may run on, or pins that are off (one CPU, or --no-pin).
cpu_pins choose_pins(bool wanted) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (!wanted || sched_getaffinity(0, sizeof set, &set) != 0) return {};
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.size() < 2) return {};
  return {true, cpus[0], cpus[1]};
}

/// Pins the calling thread to one CPU for its scope, then gives it back its earlier CPUs.
class pinned_thread {
 public:
  explicit pinned_thread(int cpu) {
    if (cpu < 0) return;
    restore_ = pthread_getaffinity_np(pthread_self(), sizeof old_, &old_) == 0;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    check(pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0,
          fmt::format("cannot pin a thread to CPU {} (run with --no-pin)", cpu));
  }
  ~pinned_thread() {
    if (restore_) pthread_setaffinity_np(pthread_self(), sizeof old_, &old_);
  }
  pinned_thread(const pinned_thread&) = delete;
  pinned_thread& operator=(const pinned_thread&) = delete;

 private:
  cpu_set_t old_{};
  bool restore_ = false;
};

/// A spin-wait hint for the peers' loops (Boost.Lockfree has no blocking calls).
inline void pause_cpu() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// The same transfer as cpp_single (n ints, one sending and one receiving thread, the
/// receiver summing them), through one of Boost.Lockfree's queues, whose loops spin while
/// the queue is full or empty: boost::lockfree::queue is multi-producer multi-consumer like
/// isola::channel, spsc_queue single-producer single-consumer. Items are plain int64s, since
/// Boost.Lockfree takes only trivially copyable ones. Messages per second.
template <typename Queue>
double boost_transfer(Queue& q, std::size_t n, const cpu_pins& pins) {
  std::int64_t sum = 0;
  auto t0 = clock::now();
  std::thread receiver([&q, &sum, n, cpu = pins.receiver] {
    pinned_thread here(cpu);
    std::int64_t total = 0, v = 0;
    for (std::size_t i = 0; i < n; ++i) {
      while (!q.pop(v)) pause_cpu();
      total += v;
    }
    sum = total;
  });
  {
    pinned_thread here(pins.sender);
    for (std::size_t i = 0; i < n; ++i) {
      while (!q.push(static_cast<std::int64_t>(i))) pause_cpu();
    }
  }
  receiver.join();
  const double s = seconds_since(t0);
  check(sum == triangle(n), "Boost.Lockfree transfer: wrong sum");
  return static_cast<double>(n) / s;
}

double boost_mpmc(std::size_t capacity, std::size_t n, const cpu_pins& pins) {
  // Bounded, as isola's channel is (without a bound, push() grows the queue instead of
  // waiting). The capacity fixed at compile time is the faster form (2.9 against 1.8 M
  // msgs/s on a 2-core VM), so the default capacity uses it.
  if (capacity == default_capacity) {
    boost::lockfree::queue<std::int64_t, boost::lockfree::capacity<default_capacity>> q;
    return boost_transfer(q, n, pins);
  }
  boost::lockfree::queue<std::int64_t, boost::lockfree::fixed_sized<true>> q(capacity);
  return boost_transfer(q, n, pins);
}

double boost_spsc(std::size_t capacity, std::size_t n, const cpu_pins& pins) {
  boost::lockfree::spsc_queue<std::int64_t> q(capacity);
  return boost_transfer(q, n, pins);
}

/// Messages per second, one sending and one receiving thread, single-item send()/recv().
transfer_run cpp_single(std::size_t capacity, std::size_t n, cpp_start start,
                        const cpu_pins& pins = {}) {
  pinned_thread sender_cpu(pins.sender);
  channel ch(capacity);
  std::int64_t sum = 0;
  bool failed = false;
  std::pair<double, double> receiver_sched;
  // Set by the sender when the ring is full (ring_full), by the receiver when it is about to
  // receive (receiver_waiting). Read only before the loops.
  std::atomic<bool> go{false};
  auto wait_for_go = [&go] {
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
  };
  const std::size_t fill = std::min(n, capacity);
  const cpu_ticks k0 = cpu_ticks_now();
  auto t0 = clock::now();
  const auto c0 = sched_ns();
  // The receiver has its own handle and its own copies of the counts: reading the sender's
  // `ch` or `n` (on the sender's stack) for every item shares a cache line with the sender's
  // locals, which the sender writes for every item.
  std::thread receiver([&, ch = ch, n = n]() mutable {
    pinned_thread receiver_cpu(pins.receiver);
    sched_scope sched(receiver_sched);
    if (start == cpp_start::ring_full) {
      wait_for_go();
    } else {
      go.store(true, std::memory_order_release);
    }
    // Summed in a local and stored once: a total on the sending thread's stack shares a cache
    // line with the sender's locals, and that false sharing halved the figure.
    std::int64_t total = 0;
    try {  // the throwing forms, as a C++ user writes the loop
      for (std::size_t i = 0; i < n; ++i) total += int_of(ch.recv());
    } catch (const isola::error&) {
      failed = true;
      return;
    }
    sum = total;
  });
  if (start == cpp_start::receiver_waiting) wait_for_go();
  try {
    for (std::size_t i = 0; i < n; ++i) {
      if (i == fill && start == cpp_start::ring_full) go.store(true, std::memory_order_release);
      ch.send(message(static_cast<std::int64_t>(i)));
    }
  } catch (const isola::error&) {  // closed: the receiver reports the shortfall
  }
  go.store(true, std::memory_order_release);  // n <= capacity, or a failed send
  const auto c1 = sched_ns();
  receiver.join();
  const double s = seconds_since(t0);
  const cpu_ticks k1 = cpu_ticks_now();
  check(!failed && sum == triangle(n), "C++ send/recv: wrong sum");
  return {static_cast<double>(n) / s, (c1.first - c0.first + receiver_sched.first) / 1e9 / s,
          (c1.second - c0.second + receiver_sched.second) / 1e9 / s, stolen_percent(k0, k1)};
}

/// Items per second with send_many()/recv_many() in batches.
transfer_run cpp_batches(std::size_t capacity, std::size_t n, std::size_t batch) {
  channel ch(capacity);
  std::int64_t sum = 0;
  bool failed = false;
  std::pair<double, double> receiver_sched;
  const cpu_ticks k0 = cpu_ticks_now();
  auto t0 = clock::now();
  const auto c0 = sched_ns();
  // The receiver has its own handle and its own copies of the counts: reading the sender's
  // `ch` or `n` (on the sender's stack) for every item shares a cache line with the sender's
  // locals, which the sender writes for every item.
  std::thread receiver([&, ch = ch, n = n, batch = batch]() mutable {
    sched_scope sched(receiver_sched);
    std::vector<message> got;
    got.reserve(batch);
    std::int64_t total = 0;  // a local, as in cpp_single()
    for (std::size_t k = 0; k < n;) {
      got.clear();
      boost::system::error_code ec;
      const std::size_t got_now = ch.recv_many(got, batch, std::nullopt, {}, ec);
      if (ec) {
        failed = true;
        return;
      }
      for (auto& m : got) total += int_of(m);
      k += got_now;
    }
    sum = total;
  });
  std::vector<message> items;
  items.reserve(batch);
  for (std::size_t i = 0; i < n;) {
    items.clear();
    for (std::size_t k = 0; k < batch && i < n; ++k, ++i) {
      items.emplace_back(static_cast<std::int64_t>(i));
    }
    boost::system::error_code ec;
    ch.send_many(items, std::nullopt, {}, ec);
    if (ec) break;
  }
  const auto c1 = sched_ns();
  receiver.join();
  const double s = seconds_since(t0);
  const cpu_ticks k1 = cpu_ticks_now();
  check(!failed && sum == triangle(n), "C++ send_many/recv_many: wrong sum");
  return {static_cast<double>(n) / s, (c1.first - c0.first + receiver_sched.first) / 1e9 / s,
          (c1.second - c0.second + receiver_sched.second) / 1e9 / s, stolen_percent(k0, k1)};
}

// ---- an unbounded channel's burst -----------------------------------------------------------

struct burst_figures {
  double first_ring_mib = 0;  ///< RSS growth when the channel is made (its first ring)
  double peak_mib = 0;        ///< RSS growth over that with the burst queued
  double after_mib = 0;       ///< RSS growth over that once the burst is drained
  double fill_s = 0, drain_s = 0;
};

/// n ints into an unbounded channel with no receiver, then all received: the resident memory
/// before, at the peak and after, from /proc/self/statm.
burst_figures unbounded_burst(std::size_t n) {
  constexpr double mib = 1024.0 * 1024.0;
  const double before = rss_bytes();
  channel ch(unbounded);
  const double baseline = rss_bytes();
  auto t0 = clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    check(bool(ch.try_send(message(static_cast<std::int64_t>(i)))),
          "unbounded burst: try_send refused an item");
  }
  const double fill = seconds_since(t0);
  const double peak = rss_bytes();
  check(ch.size() == n, "unbounded burst: size() differs from the items sent");
  t0 = clock::now();
  std::vector<message> got;
  std::int64_t sum = 0;
  for (std::size_t k = 0; k < n;) {
    got.clear();
    auto r = ch.try_recv_many(got, 4096);
    check(bool(r), "unbounded burst: an item went missing");
    for (auto& m : got) sum += int_of(m);
    k += *r;
  }
  const double drain = seconds_since(t0);
  check(sum == triangle(n), "unbounded burst: wrong sum");
  const double after = rss_bytes();
  return {(baseline - before) / mib, (peak - baseline) / mib, (after - baseline) / mib, fill,
          drain};
}

// ---- the peers ------------------------------------------------------------------------------

boost::json::object measure_peers(const fs::path& folder, const channels_options& o, bool quiet) {
  boost::json::object config{{"messages", o.peer_messages},
                             {"repeat", std::max(1u, std::min(o.repeat, 3u))},
                             {"big_bytes", o.big_mb << 20},
                             {"big_rounds", std::max(1u, std::min(o.big_rounds, 5u))},
                             {"cost_rounds", o.quick ? 3 : 30},
                             {"cost_loop", cost_loop},
                             {"quiet", quiet}};
  return run_peer(embedded::channels_peer, folder, config);
}

/// A peer's figure, or NaN (printed as null) when it has none.
double number(const boost::json::object& o, const char* key) {
  auto* v = o.if_contains(key);
  if (v == nullptr || v->is_null()) return std::numeric_limits<double>::quiet_NaN();
  return v->to_number<double>();
}

double ratio(double a, double b) {
  return std::isfinite(a) && std::isfinite(b) && b > 0 ? a / b
                                                        : std::numeric_limits<double>::quiet_NaN();
}

bench_report run_channels_bench(const channels_options& o, const bench_context& ctx) {
  bench_report r;
  r.params = {{"messages", static_cast<double>(o.messages)},
              {"batch_messages", static_cast<double>(o.batch_messages)},
              {"batch", static_cast<double>(o.batch)},
              {"rounds", static_cast<double>(o.rounds)},
              {"cpp_messages", static_cast<double>(o.cpp_messages)},
              {"peer_messages", static_cast<double>(o.peer_messages)},
              {"big_mb", static_cast<double>(o.big_mb)},
              {"big_rounds", o.big_rounds},
              {"repeat", o.repeat},
              {"capacity", static_cast<double>(o.capacity)}};
  const double load_start = load_average();
  const cpu_ticks suite_start = cpu_ticks_now();
  ctx.progress(
      fmt::format("load average (1 min) at start: {:.2f} on {} cores", load_start, cores()));

  rate_figures ints, ints_no_channel, ints_unbounded, batches, batches_no_channel, cpp,
      cpp_receiver_waits, cpp_batch;
  std::vector<double> bounded_rates, unbounded_rates;  // in turn, pair by pair
  std::vector<double> paced_bounded_rates, paced_unbounded_rates;
  burst_figures burst;
  rtt_figures rtt;
  double zero_copy_ms = 0, bytes_ms = 0;
  double py_send_ns = 0, py_recv_ns = 0, py_loop_ns = 0, py_keep_ns = 0, py_make_ns = 0;
  double cpp_pair_ns = 0;
  // The C++ transfers and their Boost.Lockfree peers, run in turn, one value per round. More
  // rounds than the other figures: this one moves most from run to run.
  const unsigned cpp_rounds = o.quick ? 1 : std::max(5u, o.repeat);
  std::vector<double> cpp_rates, mpmc_rates, spsc_rates;
  cpu_pins pins;
  {
    runtime rt;
    interpreter_pair p;

    const auto cost_rounds = static_cast<std::int64_t>(o.quick ? 10 : 100);
    ctx.progress(fmt::format("isola: CPU time per send(i) / recv() in one interpreter, {} loops "
                             "of {}",
                             cost_rounds, cost_loop));
    p.sender().call("__main__:one_thread_costs", 2, static_cast<std::int64_t>(cost_loop));
    {
      const value c = p.sender().call("__main__:one_thread_costs", cost_rounds,
                                      static_cast<std::int64_t>(cost_loop));
      const auto& t = c.as_tuple().items;
      py_send_ns = t.at(0).as_float();
      py_recv_ns = t.at(1).as_float();
      py_loop_ns = t.at(2).as_float();
      py_keep_ns = t.at(3).as_float();
      py_make_ns = t.at(4).as_float();
      ctx.progress(fmt::format("  send {:.1f} ns, recv {:.1f} ns, of which the loop {:.1f} ns; "
                               "in their place set().discard {:.1f} ns, "
                               "itertools.count().__next__ {:.1f} ns",
                               py_send_ns, py_recv_ns, py_loop_ns, py_keep_ns, py_make_ns));
    }

    ctx.progress(fmt::format("isola: {} runs of {} ints, ch.send(i) in one interpreter, "
                             "ch.recv() in another; in turn, the same loops with no channel",
                             o.repeat, o.messages));
    python_transfer(p, o.capacity, "send_ints", "recv_ints",
                    std::min<std::size_t>(o.messages, 100'000), {});
    std::tie(ints, ints_no_channel) = repeated_with_ceiling(
        o.repeat, ctx, "msgs/s",
        [&] { return python_transfer(p, o.capacity, "send_ints", "recv_ints", o.messages, {}); },
        [&] {
          return python_transfer(p, o.capacity, "send_ints_nowhere", "recv_ints_nowhere",
                                 o.messages, {}, true);
        });

    ctx.progress(fmt::format("isola: {} pairs of runs of {} ints, through a channel of {} "
                             "and an unbounded one in turn",
                             o.repeat, o.messages, o.capacity));
    python_transfer(p, 0, "send_ints", "recv_ints", std::min<std::size_t>(o.messages, 100'000),
                    {});
    {
      rate_samples runs;
      for (unsigned k = 0; k < o.repeat; ++k) {
        const transfer_run b =
            python_transfer(p, o.capacity, "send_ints", "recv_ints", o.messages, {});
        const transfer_run u = python_transfer(p, 0, "send_ints", "recv_ints", o.messages, {});
        bounded_rates.push_back(b.rate);
        unbounded_rates.push_back(u.rate);
        runs.add(u);
        ctx.progress(fmt::format("  pair {}/{}: bounded {:.0f}, unbounded {:.0f} msgs/s", k + 1,
                                 o.repeat, b.rate, u.rate));
      }
      ints_unbounded = runs.figures();
    }
    ctx.progress(fmt::format("isola: {} pairs of runs of {} ints, the sender waiting for the "
                             "receiver after every {}: a channel of {} and an unbounded one in "
                             "turn",
                             o.repeat, o.messages, paced_burst, o.capacity));
    {
      const value burst(static_cast<std::int64_t>(paced_burst));
      for (unsigned k = 0; k < o.repeat; ++k) {
        const transfer_run b = python_transfer(p, o.capacity, "send_ints_paced",
                                               "recv_ints_paced", o.messages, {burst});
        const transfer_run u =
            python_transfer(p, 0, "send_ints_paced", "recv_ints_paced", o.messages, {burst});
        paced_bounded_rates.push_back(b.rate);
        paced_unbounded_rates.push_back(u.rate);
        ctx.progress(fmt::format("  pair {}/{}: bounded {:.0f}, unbounded {:.0f} msgs/s", k + 1,
                                 o.repeat, b.rate, u.rate));
      }
    }

    ctx.progress(fmt::format("isola: {} runs of {} ints in send_many/recv_many batches of {}; "
                             "in turn, the same loops with no channel",
                             o.repeat, o.batch_messages, o.batch));
    const value batch(static_cast<std::int64_t>(o.batch));
    python_transfer(p, o.capacity, "send_batches", "recv_batches",
                    std::min<std::size_t>(o.batch_messages, 100'000), {batch});
    std::tie(batches, batches_no_channel) = repeated_with_ceiling(
        o.repeat, ctx, "items/s",
        [&] {
          return python_transfer(p, o.capacity, "send_batches", "recv_batches",
                                 o.batch_messages, {batch});
        },
        [&] {
          return python_transfer(p, o.capacity, "send_batches_nowhere", "recv_batches_nowhere",
                                 o.batch_messages, {batch}, true);
        });

    ctx.progress(fmt::format("isola: ping-pong, {} round trips per run, {} runs", o.rounds,
                             o.repeat));
    std::vector<double> p50, p99;
    for (unsigned k = 0; k < o.repeat; ++k) {
      const rtt_figures f = python_pingpong(p, o.rounds);
      p50.push_back(f.p50_us);
      p99.push_back(f.p99_us);
      ctx.progress(fmt::format("  run {}/{}: p50 {:.2f} us, p99 {:.2f} us", k + 1, o.repeat,
                               f.p50_us, f.p99_us));
    }
    rtt = {median(p50), median(p99)};

    ctx.progress(fmt::format("isola: {} transfers of {} MiB, as a memoryview and as bytes",
                             o.big_rounds, o.big_mb));
    const std::size_t big_size = o.big_mb << 20;
    p.sender().call("__main__:make_big", static_cast<std::int64_t>(big_size));
    python_big(p, false, big_size);  // warm-up: first touch of the receiver's code paths
    std::vector<double> shared, as_bytes;
    for (unsigned k = 0; k < o.big_rounds; ++k) {
      shared.push_back(python_big(p, false, big_size));
      as_bytes.push_back(python_big(p, true, big_size));
    }
    zero_copy_ms = median(shared);
    bytes_ms = median(as_bytes);
    ctx.progress(fmt::format("  memoryview {:.3f} ms, bytes {:.1f} ms (medians)", zero_copy_ms,
                             bytes_ms));
    p.sender().exec("big = None");
  }

  ctx.progress(fmt::format("C++: a burst of {} ints into an unbounded channel, then drained",
                           o.burst));
  burst = unbounded_burst(o.burst);
  ctx.progress(fmt::format("  memory: +{:.1f} MiB at the peak, {:+.1f} MiB once drained "
                           "(filled in {:.2f} s, drained in {:.2f} s)",
                           burst.peak_mib, burst.after_mib, burst.fill_s, burst.drain_s));

  ctx.progress("C++: CPU time per send + recv in one thread");
  cpp_one_thread_ns(10);
  cpp_pair_ns = cpp_one_thread_ns(o.quick ? 50 : 500);
  ctx.progress(fmt::format("  {:.1f} ns", cpp_pair_ns));
  pins = choose_pins(!o.no_pin);
  ctx.progress(fmt::format(
      "C++: {} rounds of {} int messages, one thread to another, {}; in each round isola, "
      "then Boost.Lockfree's queue and spsc_queue",
      cpp_rounds, o.cpp_messages,
      pins.on ? fmt::format("sender on CPU {}, receiver on CPU {}", pins.sender, pins.receiver)
              : std::string("threads not pinned")));
  cpp_single(o.capacity, std::min<std::size_t>(o.cpp_messages, 1'000'000), cpp_start::ring_full,
             pins);
  {
    rate_samples isola_runs;
    for (unsigned r = 0; r < cpp_rounds; ++r) {
      const transfer_run t = cpp_single(o.capacity, o.cpp_messages, cpp_start::ring_full, pins);
      isola_runs.add(t);
      cpp_rates.push_back(t.rate);
      mpmc_rates.push_back(boost_mpmc(o.capacity, o.cpp_messages, pins));
      spsc_rates.push_back(boost_spsc(o.capacity, o.cpp_messages, pins));
      ctx.progress(fmt::format("  round {}/{}: isola {:.0f}, Boost queue {:.0f}, Boost "
                               "spsc_queue {:.0f} msgs/s",
                               r + 1, cpp_rounds, t.rate, mpmc_rates.back(),
                               spsc_rates.back()));
    }
    cpp = isola_runs.figures();
  }
  ctx.progress(fmt::format("C++: {} runs of {} int messages, the receiver waiting at the start",
                           o.repeat, o.cpp_messages));
  cpp_receiver_waits = repeated(o.repeat, ctx, "msgs/s", [&] {
    return cpp_single(o.capacity, o.cpp_messages, cpp_start::receiver_waiting, pins);
  });
  ctx.progress(fmt::format("C++: {} runs of {} ints in send_many/recv_many batches of {}",
                           o.repeat, o.cpp_messages, o.batch));
  cpp_batch = repeated(o.repeat, ctx, "items/s",
                       [&] { return cpp_batches(o.capacity, o.cpp_messages, o.batch); });

  boost::json::object peers;
  const std::string python = ISOLA_TOOLS_PYTHON_EXECUTABLE;
  const bool with_peers = !o.no_peers && access(python.c_str(), X_OK) == 0;
  if (with_peers) {
    ctx.progress(fmt::format("peers: CPython's queues and multiprocessing in a subprocess of {}",
                             python));
    module_folder folder("isola-bench-channels", "isola_bc.py", embedded::channels_peer_module);
    peers = measure_peers(folder.path(), o, ctx.quiet());
    if (auto* why = peers.if_contains("cpython_queue_skipped")) {
      ctx.progress(fmt::format("cpython_queue_* skipped (null): {}",
                               std::string(why->as_string())));
    }
  } else if (!o.no_peers) {
    ctx.progress(fmt::format("{} is not executable here: no peer figures", python));
  }
  const double load_end = load_average();
  const double suite_stolen = stolen_percent(suite_start, cpu_ticks_now());

  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double cq = with_peers ? number(peers, "cpython_queue_msgs_per_s_int") : nan;
  const double mq = with_peers ? number(peers, "mp_queue_msgs_per_s_int") : nan;
  const double cq_big = with_peers ? number(peers, "cpython_queue_100mb_ms") : nan;
  const double cq_put = with_peers ? number(peers, "cpython_queue_put_ns_cpu") : nan;
  const double cq_get = with_peers ? number(peers, "cpython_queue_get_ns_cpu") : nan;

  r.add("py_msgs_per_s_int", ints.median, "msgs/s", 0,
        fmt::format("isola: ch.send(i) loop in one interpreter, ch.recv() in another, {} ints "
                    "(median of {})",
                    o.messages, o.repeat));
  r.add("py_msgs_per_s_int_best", ints.best, "msgs/s", 0, "the same, best run");
  r.add("py_msgs_per_s_int_unbounded", ints_unbounded.median, "msgs/s", 0,
        fmt::format("the same loops through an unbounded channel (isola.Channel()), {} ints "
                    "(median of {}; runs in turn with a channel of {})",
                    o.messages, o.repeat, o.capacity));
  r.add("unbounded_vs_bounded", median_ratio(unbounded_rates, bounded_rates), "x", 2,
        "unbounded / bounded channel, py ints: median of the ratios of runs made in turn");
  r.add("py_paced_msgs_per_s_int_unbounded", median(paced_unbounded_rates), "msgs/s", 0,
        fmt::format("the same loops through an unbounded channel with the sender waiting for "
                    "the receiver after every {} items (no backlog; median)",
                    paced_burst));
  r.add("paced_unbounded_vs_bounded", median_ratio(paced_unbounded_rates, paced_bounded_rates),
        "x", 2,
        "unbounded / bounded channel, paced sender: what the unbounded channel costs per item "
        "(median of the ratios of runs made in turn)");
  r.add("unbounded_burst_items", static_cast<double>(o.burst), "items", 0,
        "ints queued at once in an unbounded channel with no receiver, then drained (C++)");
  r.add("unbounded_first_ring_mib", burst.first_ring_mib, "MiB", 2,
        "resident memory an unbounded channel takes when made (its first ring of 1024 slots)");
  r.add("unbounded_burst_peak_mib", burst.peak_mib, "MiB", 1,
        "resident memory growth with the burst queued (64 bytes a slot)");
  r.add("unbounded_burst_after_mib", burst.after_mib, "MiB", 2,
        "resident memory growth once the burst is drained (0: back to the baseline)");
  r.add("py_msgs_cores_used", ints.cores, "", 2,
        "time both threads ran on a CPU / wall time (2: both ran all along)");
  r.add("py_msgs_cores_waiting", ints.waiting, "", 2,
        "time both threads waited for a CPU while runnable / wall time (other load had it)");
  r.add("py_msgs_cpu_stolen_pct", ints.stolen, "%", 1,
        "share of the machine's CPU time during the runs that the hypervisor gave to other "
        "guests (/proc/stat steal; median of the runs): the VM's vCPUs wanted to run and did not");
  r.add("cpython_queue_msgs_per_s_int", cq, "msgs/s", 0,
        fmt::format("CPython's interpreter queues (3.13 test.support.interpreters.queues, "
                    "syncobj=True, unbounded): Queue.put(i) / Queue.get(), {} ints{}",
                    o.peer_messages, std::isnan(cq) ? " (skipped: null)" : ""));
  r.add("mp_queue_msgs_per_s_int", mq, "msgs/s", 0,
        fmt::format("multiprocessing.Queue between two processes, {} ints", o.peer_messages));
  r.add("py_vs_cpython_queue", ratio(ints.median, cq), "x", 1,
        "isola / CPython interpreter queue throughput");
  r.add("py_vs_mp_queue", ratio(ints.median, mq), "x", 1,
        "isola / multiprocessing.Queue throughput");
  r.add("py_no_channel_per_s_int", ints_no_channel.median, "msgs/s", 0,
        "the same two loops at the same time in the same two interpreters with no channel: "
        "send replaced by a C method that keeps nothing (set().discard), recv by one that makes "
        "a new int per call (itertools.count().__next__): the rate the loops themselves allow "
        "here (median; runs in turn with the channel's)");
  r.add("py_vs_no_channel", ratio(ints.median, ints_no_channel.median), "", 2,
        "py_msgs_per_s_int / py_no_channel_per_s_int (1: the channel costs nothing)");
  r.add("py_batch_items_per_s", batches.median, "items/s", 0,
        fmt::format("isola: send_many(range) / recv_many({}) between two interpreters, {} ints",
                    o.batch, o.batch_messages));
  r.add("py_batch_items_per_s_best", batches.best, "items/s", 0, "the same, best run");
  r.add("py_batch_no_channel_per_s", batches_no_channel.median, "items/s", 0,
        "the same batch loops with no channel: send_many replaced by a C call that iterates "
        "its range and keeps nothing (deque(maxlen=0).extend), recv_many by a new list of new "
        "ints (list(range(...))); median, runs in turn with the channel's");
  r.add("py_batch_vs_no_channel", ratio(batches.median, batches_no_channel.median), "", 2,
        "py_batch_items_per_s / py_batch_no_channel_per_s");
  r.add("py_batch_cores_used", batches.cores, "", 2, "time both threads ran / wall time");
  r.add("py_batch_cores_waiting", batches.waiting, "", 2,
        "time both threads waited for a CPU / wall time");
  r.add("py_batch_cpu_stolen_pct", batches.stolen, "%", 1, "the same for the batch runs");
  r.add("py_send_ns_cpu", py_send_ns, "ns", 1,
        "CPU time of one ch.send(i) in a Python loop, one thread, never waiting (loop included)");
  r.add("py_recv_ns_cpu", py_recv_ns, "ns", 1,
        "CPU time of one ch.recv() in a Python loop, one thread, never waiting (loop included)");
  r.add("py_loop_ns_cpu", py_loop_ns, "ns", 1, "CPU time of one turn of the bare loop");
  r.add("py_c_method_send_ns_cpu", py_keep_ns, "ns", 1,
        "for comparison, the send loop with a C method of CPython that keeps nothing "
        "(set().discard) in place of ch.send");
  r.add("py_c_method_recv_ns_cpu", py_make_ns, "ns", 1,
        "for comparison, the recv loop with a C method of CPython that makes the same ints "
        "(itertools.count().__next__) in place of ch.recv");
  r.add("cpython_queue_put_ns_cpu", cq_put, "ns", 1,
        "CPU time of one Queue.put(i) of CPython's interpreter queues, measured the same way");
  r.add("cpython_queue_get_ns_cpu", cq_get, "ns", 1, "the same for Queue.get()");
  r.add("py_vs_cpython_queue_cpu", ratio(cq_put + cq_get, py_send_ns + py_recv_ns), "x", 1,
        "CPU per item, put + get / send + recv: the throughput ratio when neither side waits");
  r.add("pingpong_rtt_us_p50", rtt.p50_us, "us", 2,
        fmt::format("isola: A sends, B echoes on a second channel, A receives; median of {} "
                    "round trips (median of {} runs)",
                    o.rounds, o.repeat));
  r.add("pingpong_rtt_us_p99", rtt.p99_us, "us", 2, "the same, 99th percentile");
  r.add("zero_copy_100mb_ms", zero_copy_ms, "ms", 3,
        fmt::format("isola: send a memoryview of {} MiB of bytes, the other interpreter reads "
                    "the last byte of the memoryview of the sender's memory it gets (median "
                    "of {})",
                    o.big_mb, o.big_rounds));
  r.add("bytes_100mb_ms", bytes_ms, "ms", 3,
        "the same bytes sent as bytes: they arrive as a bytes object of the receiver's own (one "
        "copy, made by the receiver)");
  r.add("bytes_vs_zero_copy", ratio(bytes_ms, zero_copy_ms), "x", 0,
        "bytes / memoryview transfer time");
  r.add("cpython_queue_100mb_ms", cq_big, "ms", 3,
        "CPython's interpreter queues: put() the same bytes, get() them as bytes in the other "
        "interpreter, read the last byte");
  r.add("bytes_vs_cpython_queue", ratio(cq_big, bytes_ms), "x", 2,
        "CPython's queue time / isola's, for the same bytes arriving as bytes");
  r.add("cpp_msgs_per_s", cpp.median, "msgs/s", 0,
        fmt::format("C++ thread to C++ thread, isola::channel send/recv of int messages, {} "
                    "(median of {}); the receiver starts once the ring is full",
                    o.cpp_messages, o.repeat));
  r.add("cpp_msgs_per_s_min", *std::min_element(cpp_rates.begin(), cpp_rates.end()), "msgs/s",
        0, "the slowest of those runs");
  r.add("cpp_msgs_per_s_max", *std::max_element(cpp_rates.begin(), cpp_rates.end()), "msgs/s",
        0, "the fastest of those runs");
  r.add("cpp_threads_pinned", pins.on ? 1.0 : 0.0, "", 0,
        "1 when the sender and the receiver each ran on a CPU of their own (--no-pin: 0)");
  r.add("boost_mpmc_msgs_per_s", median(mpmc_rates), "msgs/s", 0,
        "boost::lockfree::queue (multi-producer multi-consumer, fixed-size, the capacity of "
        "isola's channel), the same transfer of int64s, spinning while full or empty; median "
        "of the rounds");
  r.add("boost_spsc_msgs_per_s", median(spsc_rates), "msgs/s", 0,
        "boost::lockfree::spsc_queue (single producer, single consumer), the same");
  r.add("cpp_vs_boost_mpmc", median_ratio(cpp_rates, mpmc_rates), "x", 2,
        "isola / boost::lockfree::queue, median of the rounds' ratios (measured in turn)");
  r.add("cpp_vs_boost_spsc", median_ratio(cpp_rates, spsc_rates), "x", 2,
        "isola / boost::lockfree::spsc_queue, the same");
  r.add("cpp_msgs_per_s_receiver_waits", cpp_receiver_waits.median, "msgs/s", 0,
        "the same, with the sender starting once the receiver is waiting for items");
  r.add("cpp_cores_used", cpp.cores, "", 2, "time both threads ran / wall time");
  r.add("cpp_cores_waiting", cpp.waiting, "", 2, "time both threads waited for a CPU / wall time");
  r.add("cpp_cpu_stolen_pct", cpp.stolen, "%", 1, "the same for the C++ single-item runs");
  r.add("cpp_batch_items_per_s", cpp_batch.median, "items/s", 0,
        fmt::format("the same with send_many/recv_many batches of {}", o.batch));
  r.add("cpp_send_recv_ns_cpu", cpp_pair_ns, "ns", 1,
        "CPU time of one send() plus one recv() of an int message in one C++ thread");
  r.add("load_avg_1m_start", load_start, "", 2, "load average when the suite started");
  r.add("load_avg_1m_end", load_end, "", 2, "load average when it ended");
  r.add("cpu_stolen_pct", suite_stolen, "%", 1,
        "share of the machine's CPU time over the whole suite that the hypervisor took (steal)");
  r.chart("Small ints from one interpreter to another", "msgs/s", true,
          {{"isola channel", "py_msgs_per_s_int"},
           {"CPython interpreter queue", "cpython_queue_msgs_per_s_int"},
           {"multiprocessing.Queue", "mp_queue_msgs_per_s_int"}});
  r.chart("Batches of 1000 ints (send_many / recv_many)", "items/s", true,
          {{"isola channel", "py_batch_items_per_s"},
           {"the same loops, no channel", "py_batch_no_channel_per_s"}});
  r.chart("A 100 MB buffer, sent and its last byte read", "ms", false,
          {{"isola, a memoryview (shared, no copy)", "zero_copy_100mb_ms"},
           {"isola, bytes", "bytes_100mb_ms"},
           {"CPython interpreter queue, bytes", "cpython_queue_100mb_ms"}});
  return r;
}

bench_suite_registrar channels_suite({
    "channels",
    "Channels between interpreters against CPython's interpreter queues and multiprocessing",
    [](CLI::App& app) -> bench_runner {
      auto o = std::make_shared<channels_options>();
      auto count = [&](const char* name, std::size_t& v, const char* what, std::size_t lo) {
        app.add_option(name, v, what)
            ->check(CLI::Range(lo, std::size_t{1'000'000'000}))
            ->capture_default_str()
            ->type_name("N");
      };
      count("-m,--messages", o->messages,
            "Ints sent from one interpreter to another per run (send/recv)", 1000);
      count("--batch-messages", o->batch_messages, "Ints sent per run in batches", 1000);
      count("--batch", o->batch, "Items per send_many / recv_many", 1);
      count("--rounds", o->rounds, "Ping-pong round trips measured per run", 100);
      count("--cpp-messages", o->cpp_messages, "Messages per run between two C++ threads",
            1000);
      count("--peer-messages", o->peer_messages,
            "Ints per run through CPython's queues and multiprocessing.Queue (slower)", 1000);
      app.add_option("--capacity", o->capacity,
                     "Capacity of the channels the throughput tests use, Python and C++ (default: "
                     "isola.Channel's default bound)")
          ->check(CLI::Range(std::size_t{1}, channel::max_capacity))
          ->capture_default_str()
          ->type_name("C");
      count("--burst", o->burst,
            "Ints queued at once in an unbounded channel, then drained (memory figures)", 1000);
      app.add_option("--big-mb", o->big_mb, "Size of the large bytes transfer, in MiB")
          ->check(CLI::Range(std::size_t{1}, std::size_t{4096}))
          ->capture_default_str()
          ->type_name("MB");
      app.add_option("--big-rounds", o->big_rounds, "Large transfers timed each way (median)")
          ->check(CLI::Range(1u, 100u))
          ->capture_default_str()
          ->type_name("R");
      app.add_option("-r,--repeat", o->repeat,
                     "Runs of each throughput and ping-pong test (median reported; the peers "
                     "use at most 3)")
          ->check(CLI::Range(1u, 100u))
          ->capture_default_str()
          ->type_name("R");
      app.add_flag("--no-pin", o->no_pin,
                   "Leave the C++ transfers' two threads wherever the scheduler puts them "
                   "(by default each is pinned to a CPU of its own)");
      app.add_flag("--no-peers", o->no_peers,
                   "Measure isola only (no CPython queue / multiprocessing subprocess)");
      app.add_flag("--quick", o->quick,
                   "A smoke run of a few seconds: fewer messages and rounds, one run (options "
                   "given explicitly still apply); the figures are rougher");
      app.footer(
          "Results (JSON keys): py_msgs_per_s_int (and _best), py_msgs_per_s_int_unbounded,\n"
          "unbounded_vs_bounded, py_paced_msgs_per_s_int_unbounded, paced_unbounded_vs_bounded,\n"
          "unbounded_burst_items, unbounded_first_ring_mib,\n"
          "unbounded_burst_peak_mib, unbounded_burst_after_mib, cpython_queue_msgs_per_s_int,\n"
          "mp_queue_msgs_per_s_int, py_vs_cpython_queue, py_vs_mp_queue; py_batch_items_per_s\n"
          "(and _best); py_no_channel_per_s_int, py_batch_no_channel_per_s (the same loops\n"
          "with no channel, in turn with them: what CPython allows) and py_vs_no_channel,\n"
          "py_batch_vs_no_channel; pingpong_rtt_us_p50/_p99; zero_copy_100mb_ms, bytes_100mb_ms,\n"
          "bytes_vs_zero_copy, cpython_queue_100mb_ms, bytes_vs_cpython_queue; cpp_msgs_per_s\n"
          "(the receiver starting once the ring is full; _min, _max over the rounds),\n"
          "boost_mpmc_msgs_per_s, boost_spsc_msgs_per_s (Boost.Lockfree's queue and spsc_queue,\n"
          "measured in turn with it), cpp_vs_boost_mpmc, cpp_vs_boost_spsc, cpp_threads_pinned,\n"
          "cpp_msgs_per_s_receiver_waits (the sender starting once the receiver waits),\n"
          "cpp_batch_items_per_s;\n"
          "load_avg_1m_start/_end (other work on the machine skews every figure); cpu_stolen_pct\n"
          "and *_cpu_stolen_pct, the share of the CPU time a hypervisor took (steal in /proc/stat:\n"
          "on a VM whose host is busy, every figure drops with it).\n"
          "What limits them: py_send_ns_cpu, py_recv_ns_cpu, py_loop_ns_cpu (and in their\n"
          "place C methods of CPython: py_c_method_send_ns_cpu, py_c_method_recv_ns_cpu),\n"
          "cpython_queue_put_ns_cpu, cpython_queue_get_ns_cpu and cpp_send_recv_ns_cpu are CPU\n"
          "times per operation in one thread that never waits (less sensitive to other load than\n"
          "the rates; py_vs_cpython_queue_cpu is their ratio); *_cores_used is the time both\n"
          "threads of a transfer ran on a CPU over its wall time (2: both all along),\n"
          "*_cores_waiting the time they were runnable but other work had the CPU\n"
          "(/proc/thread-self/schedstat).\n"
          "Transfers: two own-GIL interpreters (or two C++ threads), each on its own thread,\n"
          "through a channel of --capacity items (default 4096, isola.Channel's default bound; on\n"
          "a busy machine a larger one rides out more of the time a side waits for a CPU); a rate\n"
          "runs from the start of both sides until the receiver has every item (sum checked).\n"
          "The peers run in a subprocess of the python isola was built against: CPython's\n"
          "interpreter queues (test.support.interpreters.queues, 3.13; null with a note on 3.12,\n"
          "which lacks them) and multiprocessing.Queue ('forkserver').\n"
          "Progress goes to stderr, results to stdout.");
      return [o, &app](const bench_context& ctx) {
        if (o->quick) apply_quick(*o, app);
        return run_channels_bench(*o, ctx);
      };
    },
});

}  // namespace
}  // namespace isola::cli
