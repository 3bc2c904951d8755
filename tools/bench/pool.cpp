// `isola bench pool`: isola::pool against CPython's own executors, in the same run.
// - trivial tasks (x + 1) submitted one by one as futures: throughput of the pool against
//   concurrent.futures.ThreadPoolExecutor and ProcessPoolExecutor with as many workers;
// - round trip: submit one task, wait for it, repeat (latency);
// - CPU-bound speed-up: K tasks of ~0.2 s on the pool against the same K one after another in
//   one interpreter, and the same with a ProcessPoolExecutor.
// The executors run in a subprocess of the very python isola was built against
// (ISOLA_PYTHON_EXECUTABLE) that prints its figures as JSON: no fork of this multi-threaded
// process, and the same interpreter version on both sides. Both sides call the same function
// from the same module file, written to a temporary folder put on sys.path. Every result is
// checked on both sides, so a broken pool or executor fails the run instead of looking fast.
#include "tools/bench/bench.hpp"
#include "tools/build_info.hpp"
#include "tools/isola/cli.hpp"
#include "tools/bench/py/pool_tasks.py.hpp"
#include "tools/bench/py/pool_peer.py.hpp"

#include <boost/json.hpp>

#include <isola/error.hpp>
#include <isola/pool.hpp>
#include <isola/runtime.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <unistd.h>

namespace isola::cli {
namespace {

namespace fs = std::filesystem;

struct pool_bench_options {
  unsigned size = cores();
  std::size_t tasks = 200000;
  std::size_t process_tasks = 20000;
  std::size_t roundtrips = 20000;
  std::size_t process_roundtrips = 2000;
  unsigned repeat = 5;
  unsigned cpu_tasks = 8;
  double cpu_task_ms = 200;
  bool no_peers = false;
  bool quick = false;
};

/// --quick: the sizes of a smoke run of a few seconds, for the options not given explicitly.
void apply_quick(pool_bench_options& o, const CLI::App& app) {
  auto unset = [&](const char* name) { return app.get_option(name)->count() == 0; };
  if (unset("--tasks")) o.tasks = 20000;
  if (unset("--process-tasks")) o.process_tasks = 2000;
  if (unset("--roundtrips")) o.roundtrips = 2000;
  if (unset("--process-roundtrips")) o.process_roundtrips = 200;
  if (unset("--repeat")) o.repeat = 1;
  if (unset("--cpu-task-ms")) o.cpu_task_ms = 50;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(k, v.size() - 1)];
}

struct isola_figures {
  double trivial_median = 0, trivial_best = 0;
  double rt_p50 = 0, rt_p90 = 0, rt_p99 = 0;
  double cpu_serial_s = 0, cpu_parallel_s = 0;
  std::int64_t spin_n = 0;
  std::int64_t spin_expected = 0;  ///< spin(spin_n), which every run must give
};

/// A result that is not what the function returns means the figure is not to be trusted.
void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("bench pool: " + what);
}

double trivial_run(pool& p, std::size_t m) {
  std::vector<task_future> futures;
  futures.reserve(m);
  auto t0 = clock::now();
  for (std::size_t i = 0; i < m; ++i) {
    futures.push_back(p.submit("isola_bt:inc", static_cast<std::int64_t>(i)));
  }
  std::int64_t sum = 0;
  for (auto& f : futures) sum += f.get().as_int();
  double s = seconds_since(t0);
  const auto mm = static_cast<std::int64_t>(m);
  check(sum == mm * (mm + 1) / 2, fmt::format("wrong sum of inc() results: {}", sum));
  return static_cast<double>(m) / s;
}

isola_figures measure_isola(pool& p, const pool_bench_options& o, const bench_context& ctx) {
  isola_figures f;
  ctx.progress(fmt::format("isola pool of {}: {} runs of {} trivial tasks (submit() each, then "
                           "wait for all)",
                           p.size(), o.repeat, o.tasks));
  trivial_run(p, std::min<std::size_t>(o.tasks, 20000));  // warm-up
  std::vector<double> rates;
  for (unsigned r = 0; r < o.repeat; ++r) {
    rates.push_back(trivial_run(p, o.tasks));
    ctx.progress(fmt::format("  run {}/{}: {:.0f} tasks/s", r + 1, o.repeat, rates.back()));
  }
  f.trivial_median = median(rates);
  f.trivial_best = *std::max_element(rates.begin(), rates.end());

  ctx.progress(fmt::format("isola pool: {} round trips (submit one, wait, repeat)", o.roundtrips));
  for (int i = 0; i < 1000; ++i) p.submit("isola_bt:inc", i).get();
  std::vector<double> us;
  us.reserve(o.roundtrips);
  for (std::size_t i = 0; i < o.roundtrips; ++i) {
    const auto x = static_cast<std::int64_t>(i);
    auto t0 = clock::now();
    const value r = p.submit("isola_bt:inc", x).get();
    us.push_back(seconds_since(t0) * 1e6);
    check(r.as_int() == x + 1, fmt::format("inc({}) gave {}", x, r.repr()));
  }
  f.rt_p50 = percentile(us, 0.5);
  f.rt_p90 = percentile(us, 0.9);
  f.rt_p99 = percentile(us, 0.99);
  ctx.progress(fmt::format("  p50 {:.2f} us, p90 {:.2f} us, p99 {:.2f} us", f.rt_p50, f.rt_p90,
                           f.rt_p99));

  // Calibrate spin(n) to about cpu_task_ms in one interpreter.
  std::int64_t n = 20000;
  double took = 0;
  for (;;) {
    auto t0 = clock::now();
    p.submit_to(0, "isola_bt:spin", n).get();
    took = seconds_since(t0);
    if (took >= 0.05) break;
    n *= 4;
  }
  f.spin_n = static_cast<std::int64_t>(static_cast<double>(n) * (o.cpu_task_ms / 1000.0) / took);
  const unsigned rounds = std::max(1u, std::min(o.repeat, 3u));
  ctx.progress(fmt::format("isola pool: {} CPU-bound tasks of spin({}) ~{:.0f} ms, on the pool "
                           "vs one after another in one interpreter, {} rounds",
                           o.cpu_tasks, f.spin_n, o.cpu_task_ms, rounds));
  std::vector<double> serial, parallel;
  for (unsigned r = 0; r < rounds; ++r) {
    auto t0 = clock::now();
    const value ser = p.submit_to(0, "isola_bt:spin_serial", o.cpu_tasks, f.spin_n).get();
    serial.push_back(seconds_since(t0));
    if (r == 0) f.spin_expected = ser.as_list().items.at(0).as_int();
    for (const auto& x : ser.as_list().items) {
      check(x.as_int() == f.spin_expected, "spin() gave different results in one interpreter");
    }
    t0 = clock::now();
    std::vector<task_future> fs;
    for (unsigned k = 0; k < o.cpu_tasks; ++k) fs.push_back(p.submit("isola_bt:spin", f.spin_n));
    std::vector<std::int64_t> got;
    for (auto& x : fs) got.push_back(x.get().as_int());
    parallel.push_back(seconds_since(t0));
    for (auto g : got) {
      check(g == f.spin_expected, "spin() on the pool differs from the serial run");
    }
    ctx.progress(fmt::format("  round {}/{}: serial {:.2f} s, pool {:.2f} s", r + 1, rounds,
                             serial.back(), parallel.back()));
  }
  f.cpu_serial_s = median(serial);
  f.cpu_parallel_s = median(parallel);
  return f;
}

boost::json::object measure_peers(const fs::path& folder, const pool_bench_options& o,
                                  std::int64_t spin_n, std::int64_t spin_expected, bool quiet) {
  boost::json::object config{{"workers", o.size},
                             {"repeat", std::max(1u, std::min(o.repeat, 3u))},
                             {"thread_tasks", o.tasks},
                             {"process_tasks", o.process_tasks},
                             {"process_roundtrips", o.process_roundtrips},
                             {"cpu_tasks", o.cpu_tasks},
                             {"cpu_rounds", std::max(1u, std::min(o.repeat, 3u))},
                             {"spin_n", spin_n},
                             {"spin_expected", spin_expected},
                             {"quiet", quiet}};
  return run_peer(embedded::pool_peer, folder, config);
}

double number(const boost::json::object& o, const char* key) {
  auto* v = o.if_contains(key);
  if (v == nullptr || v->is_null()) return 0;
  return v->is_double() ? v->as_double() : static_cast<double>(v->to_number<double>());
}

bench_report run_pool_bench(const pool_bench_options& o, const bench_context& ctx) {
  bench_report r;
  r.params = {{"size", o.size},
              {"tasks", static_cast<double>(o.tasks)},
              {"process_tasks", static_cast<double>(o.process_tasks)},
              {"roundtrips", static_cast<double>(o.roundtrips)},
              {"process_roundtrips", static_cast<double>(o.process_roundtrips)},
              {"repeat", o.repeat},
              {"cpu_tasks", o.cpu_tasks},
              {"cpu_task_ms", o.cpu_task_ms}};
  const double load_start = load_average();
  const cpu_ticks suite_start = cpu_ticks_now();
  ctx.progress(fmt::format("load average (1 min) at start: {:.2f} on {} cores", load_start, cores()));

  module_folder folder("isola-bench-pool", "isola_bt.py", embedded::pool_tasks);
  isola_figures f;
  {
    runtime rt;
    pool_options po;
    po.size = o.size;
    po.sys_path = {folder.path().string()};
    po.init_code = "import isola_bt\n";
    pool p(po);
    f = measure_isola(p, o, ctx);
  }

  boost::json::object peers;
  const std::string python = ISOLA_TOOLS_PYTHON_EXECUTABLE;
  const bool with_peers = !o.no_peers && access(python.c_str(), X_OK) == 0;
  if (with_peers) {
    ctx.progress(fmt::format("peers: concurrent.futures in a subprocess of {}", python));
    peers = measure_peers(folder.path(), o, f.spin_n, f.spin_expected, ctx.quiet());
  } else if (!o.no_peers) {
    ctx.progress(fmt::format("{} is not executable here: no peer figures", python));
  }
  const double load_end = load_average();
  const double suite_stolen = stolen_percent(suite_start, cpu_ticks_now());

  r.add("trivial_tasks_per_s", f.trivial_median, "tasks/s", 0,
        fmt::format("isola pool of {}: x+1 tasks submitted one by one as futures (median of {})",
                    o.size, o.repeat));
  r.add("trivial_tasks_per_s_best", f.trivial_best, "tasks/s", 0, "the same, best run");
  if (with_peers) {
    const double proc = number(peers, "processpool_trivial_tasks_per_s");
    const double thr = number(peers, "threadpool_trivial_tasks_per_s");
    r.add("processpool_trivial_tasks_per_s", proc, "tasks/s", 0,
          fmt::format("ProcessPoolExecutor({}, forkserver), {} tasks", o.size, o.process_tasks));
    r.add("threadpool_trivial_tasks_per_s", thr, "tasks/s", 0,
          fmt::format("ThreadPoolExecutor({}), {} tasks", o.size, o.tasks));
    r.add("trivial_vs_processpool", proc > 0 ? f.trivial_median / proc : 0, "x", 1,
          "isola pool / process pool throughput");
    r.add("trivial_vs_threadpool", thr > 0 ? f.trivial_median / thr : 0, "x", 2,
          "isola pool / thread pool throughput");
  }
  r.add("roundtrip_us_p50", f.rt_p50, "us", 2, "submit one task, wait for it: median");
  r.add("roundtrip_us_p90", f.rt_p90, "us", 2, "the same, 90th percentile");
  r.add("roundtrip_us_p99", f.rt_p99, "us", 2, "the same, 99th percentile");
  if (with_peers) {
    const double proc = number(peers, "processpool_roundtrip_us_p50");
    const double thr = number(peers, "threadpool_roundtrip_us_p50");
    r.add("processpool_roundtrip_us_p50", proc, "us", 2,
          fmt::format("ProcessPoolExecutor: submit one, wait, median of {}", o.process_roundtrips));
    r.add("threadpool_roundtrip_us_p50", thr, "us", 2,
          fmt::format("ThreadPoolExecutor: submit one, wait, median of {}", o.process_roundtrips));
    r.add("roundtrip_vs_processpool", f.rt_p50 > 0 ? proc / f.rt_p50 : 0, "x", 1,
          "process pool round trip / isola round trip (how many times faster)");
    r.add("roundtrip_vs_threadpool", f.rt_p50 > 0 ? thr / f.rt_p50 : 0, "x", 2,
          "thread pool round trip / isola round trip");
  }
  r.add("cpu_serial_s", f.cpu_serial_s, "s", 3,
        fmt::format("{} CPU-bound tasks one after another in one interpreter", o.cpu_tasks));
  r.add("cpu_parallel_s", f.cpu_parallel_s, "s", 3,
        fmt::format("the same {} tasks on the pool of {}", o.cpu_tasks, o.size));
  r.add("cpu_speedup", f.cpu_serial_s / f.cpu_parallel_s, "x", 2,
        "serial / pool (ideal: min(cores, size, tasks))");
  if (with_peers) {
    const double ps = number(peers, "processpool_cpu_serial_s");
    const double pp = number(peers, "processpool_cpu_parallel_s");
    r.add("processpool_cpu_serial_s", ps, "s", 3, "the same tasks one after another in python");
    r.add("processpool_cpu_parallel_s", pp, "s", 3,
          fmt::format("the same tasks on ProcessPoolExecutor({})", o.size));
    r.add("processpool_cpu_speedup", pp > 0 ? ps / pp : 0, "x", 2, "serial / process pool");
    const double isola_speedup = f.cpu_serial_s / f.cpu_parallel_s;
    r.add("cpu_speedup_vs_processpool", pp > 0 && ps > 0 ? isola_speedup / (ps / pp) : 0, "x", 2,
          "isola's speed-up / the process pool's");
  }
  r.add("load_avg_1m_start", load_start, "", 2, "load average when the suite started");
  r.add("load_avg_1m_end", load_end, "", 2, "load average when it ended");
  r.add("cpu_stolen_pct", suite_stolen, "%", 1,
        "share of the machine's CPU time over the whole suite that a hypervisor took (steal in "
        "/proc/stat; a busy host slows every figure)");
  r.chart("Trivial tasks (x + 1), one by one as futures", "tasks/s", true,
          {{"isola pool", "trivial_tasks_per_s"},
           {"ThreadPoolExecutor", "threadpool_trivial_tasks_per_s"},
           {"ProcessPoolExecutor", "processpool_trivial_tasks_per_s"}});
  r.chart("Round trip: submit one task, wait for it (median)", "µs", false,
          {{"isola pool", "roundtrip_us_p50"},
           {"ThreadPoolExecutor", "threadpool_roundtrip_us_p50"},
           {"ProcessPoolExecutor", "processpool_roundtrip_us_p50"}});
  r.chart("CPU-bound tasks: speed-up over one after another", "x", true,
          {{"isola pool", "cpu_speedup"}, {"ProcessPoolExecutor", "processpool_cpu_speedup"}});
  return r;
}

bench_suite_registrar pool_suite({
    "pool",
    "isola::pool throughput, latency and CPU speed-up against concurrent.futures executors",
    [](CLI::App& app) -> bench_runner {
      auto o = std::make_shared<pool_bench_options>();
      app.add_option("-n,--size", o->size,
                     fmt::format("Interpreters in the pool and workers in each executor "
                                 "(default: cores, here {})",
                                 cores()))
          ->check(CLI::Range(1u, 256u))
          ->type_name("N");
      app.add_option("-m,--tasks", o->tasks,
                     "Trivial tasks per run for the isola pool and the thread pool")
          ->check(CLI::Range(std::size_t{1000}, std::size_t{100000000}))
          ->capture_default_str()
          ->type_name("M");
      app.add_option("--process-tasks", o->process_tasks,
                     "Trivial tasks per run for the process pool (it is much slower)")
          ->check(CLI::Range(std::size_t{100}, std::size_t{100000000}))
          ->capture_default_str()
          ->type_name("M");
      app.add_option("--roundtrips", o->roundtrips, "Round trips measured on the isola pool")
          ->check(CLI::Range(std::size_t{100}, std::size_t{100000000}))
          ->capture_default_str()
          ->type_name("R");
      app.add_option("--process-roundtrips", o->process_roundtrips,
                     "Round trips measured on the executors")
          ->check(CLI::Range(std::size_t{10}, std::size_t{100000000}))
          ->capture_default_str()
          ->type_name("R");
      app.add_option("-r,--repeat", o->repeat,
                     "Runs of the throughput test (median reported; the executors and the CPU "
                     "test use at most 3)")
          ->check(CLI::Range(1u, 100u))
          ->capture_default_str()
          ->type_name("R");
      app.add_option("--cpu-tasks", o->cpu_tasks, "CPU-bound tasks in the speed-up test")
          ->check(CLI::Range(1u, 1024u))
          ->capture_default_str()
          ->type_name("K");
      app.add_option("--cpu-task-ms", o->cpu_task_ms,
                     "Length of one CPU-bound task in one interpreter, in milliseconds")
          ->check(CLI::Range(10.0, 60000.0))
          ->capture_default_str()
          ->type_name("MS");
      app.add_flag("--no-peers", o->no_peers,
                   "Measure the isola pool only (no concurrent.futures subprocess)");
      app.add_flag("--quick", o->quick,
                   "A smoke run of a few seconds: fewer tasks and round trips, one run, CPU "
                   "tasks of 50 ms (options given explicitly still apply); the figures are "
                   "rougher");
      app.footer(
          "Results (JSON keys): trivial_tasks_per_s (median) and _best; the executors'\n"
          "processpool_trivial_tasks_per_s, threadpool_trivial_tasks_per_s; trivial_vs_processpool,\n"
          "trivial_vs_threadpool (ratios of throughput); roundtrip_us_p50/_p90/_p99 and the\n"
          "executors' processpool_roundtrip_us_p50, threadpool_roundtrip_us_p50;\n"
          "roundtrip_vs_processpool, roundtrip_vs_threadpool (their latency / isola's); cpu_serial_s,\n"
          "cpu_parallel_s, cpu_speedup and processpool_cpu_serial_s, _parallel_s, _speedup;\n"
          "cpu_speedup_vs_processpool; load_avg_1m_start/_end (other work on the machine skews\n"
          "every figure: compare runs made at low load); cpu_stolen_pct, the share of the CPU\n"
          "time a hypervisor took (steal in /proc/stat).\n"
          "Every result is checked (sums of the trivial tasks, each round trip, the CPU tasks\n"
          "against the serial run); a wrong one fails the run (exit status 1).\n"
          "The executors run in a subprocess of the python isola was built against, on the same\n"
          "module file; the process pool uses the 'forkserver' start method. Progress goes to\n"
          "stderr, results to stdout.");
      return [o, &app](const bench_context& ctx) {
        if (o->quick) apply_quick(*o, app);
        return run_pool_bench(*o, ctx);
      };
    },
});

}  // namespace
}  // namespace isola::cli
