// `isola bench memory`: what memory accounting costs. An allocation-heavy workload
// (py/memory_workload.py) runs in both interpreters of a pool of 2 at once, with CPython's
// allocators untouched (accounting off), with isola's allocator hooks (on), and with the hooks
// and a hard limit on every interpreter (limit). The hooks are installed before CPython starts,
// once per process, so each measurement is a child process of this same executable, and the
// three variants run in turn, round after round; the overheads are medians of each round's
// ratios to the "off" run.
//
// The child: `isola bench memory --child off|on|limit --json --quiet` plus the sizes. The
// option is hidden from --help. The child creates the runtime (accounting off for "off"), the
// pool of 2, reads what each fresh interpreter holds, sets the workload up, runs it once in both
// interpreters untimed, then times --repeat repetitions of it in both at once, and reports its
// figures (child_* keys) through the ordinary --json output: one JSON line on stdout.
#include "tools/bench/bench.hpp"
#include "tools/isola/cli.hpp"
#include "tools/bench/py/memory_workload.py.hpp"

#include <boost/json.hpp>

#include <isola/log.hpp>
#include <isola/memory.hpp>
#include <isola/pool.hpp>
#include <isola/runtime.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/core.h>

namespace isola::cli {
namespace {

constexpr double mib = 1024.0 * 1024.0;
constexpr std::size_t pool_size = 2;

struct memory_bench_options {
  unsigned rounds = 7;
  unsigned repeat = 5;
  std::int64_t rows = 200'000;
  std::int64_t doc_items = 30'000;
  std::int64_t trips = 3;
  std::string limit = "1G";
  bool quick = false;
  std::string child;  ///< off, on or limit: run one measurement (a child process)
};

/// --quick: a smoke run of a few seconds, for the options not given explicitly.
void apply_quick(memory_bench_options& o, const CLI::App& app) {
  auto unset = [&](const char* name) { return app.get_option(name)->count() == 0; };
  if (unset("--rounds")) o.rounds = 3;
  if (unset("--repeat")) o.repeat = 3;
  if (unset("--rows")) o.rows = 20'000;
  if (unset("--doc-items")) o.doc_items = 3'000;
  if (unset("--trips")) o.trips = 1;
}

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("bench memory: " + what);
}

// ---- the child: one measurement -----------------------------------------------------------

bench_report run_child(const memory_bench_options& o) {
  const bool accounting = o.child != "off";
  runtime_options ro;
  ro.memory_accounting = accounting;
  runtime rt(ro);
  check(runtime::memory_accounting() == accounting,
        fmt::format("memory accounting should be {} in the '{}' child", accounting ? "on" : "off",
                    o.child));

  pool_options po;
  po.size = pool_size;
  if (o.child == "limit") po.interpreter.memory_limit = parse_size(o.limit);
  pool p(po);

  // What a fresh interpreter holds, before any task ran in it (0 with accounting off).
  double idle_bytes = 0;
  for (const auto& s : p.stats().interpreters) idle_bytes += static_cast<double>(s.memory_bytes);
  idle_bytes /= pool_size;

  std::int64_t doc_bytes = 0;
  for (std::size_t i = 0; i < pool_size; ++i) {
    task_options pinned;
    pinned.interpreter_index = static_cast<int>(i);
    p.submit_code(embedded::memory_workload, pinned).get();
    doc_bytes = p.submit_to(static_cast<int>(i), "__main__:setup", o.doc_items).get().as_int();
  }

  const std::int64_t expected = o.rows + o.trips * o.doc_items;
  auto both_at_once = [&] {
    const auto t0 = clock::now();
    std::array<task_future, pool_size> runs;
    for (std::size_t i = 0; i < pool_size; ++i) {
      runs[i] = p.submit_to(static_cast<int>(i), "__main__:workload", o.rows, o.trips);
    }
    for (auto& r : runs) {
      const std::int64_t done = r.get().as_int();
      check(done == expected, fmt::format("workload() gave {}, not {}", done, expected));
    }
    return seconds_since(t0);
  };
  both_at_once();  // warm-up: code paths, arenas, the document's first round trip
  std::vector<double> times;
  for (unsigned k = 0; k < o.repeat; ++k) times.push_back(both_at_once());

  double peak_bytes = 0;
  std::uint64_t refused = 0;
  for (const auto& s : p.stats().interpreters) {
    peak_bytes += static_cast<double>(s.memory_peak);
    refused += s.memory_refused;
  }
  peak_bytes /= pool_size;
  check(refused == 0, fmt::format("the hard limit of {} refused {} allocations: the workload "
                                  "needs more; give a larger --limit",
                                  o.limit, refused));

  bench_report r;
  r.add("child_seconds", median(times), "s", 6, "median time of one repetition, both at once");
  r.add("child_idle_bytes", idle_bytes, "B", 0, "held by a fresh interpreter (mean of 2)");
  r.add("child_peak_bytes", peak_bytes, "B", 0, "peak of an interpreter (mean of 2)");
  r.add("child_doc_bytes", static_cast<double>(doc_bytes), "B", 0, "the document as JSON text");
  return r;
}

// ---- the parent: the variants in turn --------------------------------------------------------

struct child_figures {
  double seconds = 0, idle_bytes = 0, peak_bytes = 0, doc_bytes = 0;
};

double figure(const boost::json::object& results, const char* key) {
  const auto* v = results.if_contains(key);
  check(v != nullptr && v->is_number(),
        fmt::format("the child process reported no number for {}", key));
  return v->to_number<double>();
}

/// Runs one measurement in a child process, whose isola log lines show at `log_level`.
child_figures run_variant(const std::string& exe, const std::string& variant,
                          const memory_bench_options& o, spdlog::level::level_enum log_level) {
  const auto level_name = spdlog::level::to_string_view(log_level);
  std::string out;
  try {
    out = run_capture({exe, "bench", "memory", "--child", variant, "--json", "--quiet",
                       "--log-level", std::string(level_name.data(), level_name.size()),
                       "--repeat", std::to_string(o.repeat), "--rows", std::to_string(o.rows),
                       "--doc-items", std::to_string(o.doc_items), "--trips",
                       std::to_string(o.trips), "--limit", o.limit});
  } catch (const std::runtime_error&) {
    throw std::runtime_error(fmt::format(
        "bench memory: the '{}' measurement failed (a child process, {} bench memory --child "
        "{}); its messages are above",
        variant, exe, variant));
  }
  boost::json::object results;
  try {
    results = boost::json::parse(out).as_object().at("results").as_object();
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format(
        "bench memory: the '{}' child process printed no JSON results ({}): {}", variant,
        e.what(), out));
  }
  child_figures f;
  f.seconds = figure(results, "child_seconds");
  f.idle_bytes = figure(results, "child_idle_bytes");
  f.peak_bytes = figure(results, "child_peak_bytes");
  f.doc_bytes = figure(results, "child_doc_bytes");
  check(f.seconds > 0, fmt::format("the '{}' child measured no time", variant));
  return f;
}

bench_report run_memory_bench(const memory_bench_options& o, const bench_context& ctx) {
  const std::size_t limit_bytes = parse_size(o.limit);  // a bad size fails before any child
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::array<std::string, 3> variants = {"off", "on", "limit"};

  bench_report r;
  r.params = {{"rounds", o.rounds},
              {"repeat", o.repeat},
              {"pool_size", pool_size},
              {"rows", static_cast<double>(o.rows)},
              {"doc_items", static_cast<double>(o.doc_items)},
              {"trips", static_cast<double>(o.trips)},
              {"limit_bytes", static_cast<double>(limit_bytes)}};
  ctx.progress(fmt::format(
      "{} rounds of 3 child processes in turn (accounting off, on, on with a limit of {}); each "
      "times {} repetitions in a pool of {}, both interpreters at once, of: {} small dicts built "
      "and dropped, {} json round trips of a {}-item document",
      o.rounds, format_size(limit_bytes), o.repeat, pool_size, o.rows, o.trips, o.doc_items));

  // The first child logs at this process's level (--log-level, ISOLA_LOG_LEVEL); the others
  // only errors, so that a warning every runtime gives at start-up (CPython 3.12.0-3.12.3's
  // gh-119213) shows once, not once per child.
  const auto log_level = logger("isola.runtime")->level();
  const auto quieter = std::max(log_level, spdlog::level::err);
  const double load_start = load_average();
  const cpu_ticks suite_start = cpu_ticks_now();
  std::vector<double> off_s, on_s, limit_s, idle, peak;
  for (unsigned round = 0; round < o.rounds; ++round) {
    // Rotate the order so that no variant always runs first, or always right after another.
    std::array<child_figures, 3> got;
    for (std::size_t step = 0; step < variants.size(); ++step) {
      const std::size_t v = (round + step) % variants.size();
      got[v] = run_variant(exe, variants[v], o, round == 0 && step == 0 ? log_level : quieter);
    }
    off_s.push_back(got[0].seconds);
    on_s.push_back(got[1].seconds);
    limit_s.push_back(got[2].seconds);
    idle.push_back(got[1].idle_bytes);
    peak.push_back(got[1].peak_bytes);
    if (round == 0) {
      ctx.progress(fmt::format("  the document is {:.1f} MiB as JSON text; a fresh interpreter "
                               "holds {}",
                               got[1].doc_bytes / mib,
                               format_size(static_cast<std::size_t>(got[1].idle_bytes))));
    }
    ctx.progress(fmt::format("  round {}/{}: off {:.3f} s, on {:.3f} s ({:.3f}x), limit {:.3f} s "
                             "({:.3f}x)",
                             round + 1, o.rounds, off_s.back(), on_s.back(),
                             on_s.back() / off_s.back(), limit_s.back(),
                             limit_s.back() / off_s.back()));
  }

  const double load_end = load_average();
  const double suite_stolen = stolen_percent(suite_start, cpu_ticks_now());

  r.add("overhead_accounting", median_ratio(on_s, off_s), "x", 3,
        "time with accounting on / off, median of the rounds' ratios (target: <= 1.05)");
  r.add("overhead_limit", median_ratio(limit_s, off_s), "x", 3,
        fmt::format("time with accounting and a {} limit / off, median of the rounds' ratios "
                    "(target: <= 1.07)",
                    format_size(limit_bytes)));
  r.add("seconds_off", median(off_s), "s", 3,
        "one repetition in both interpreters at once, CPython's allocators untouched (median)");
  r.add("seconds_on", median(on_s), "s", 3, "the same with memory accounting on (median)");
  r.add("seconds_limit", median(limit_s), "s", 3,
        "the same with accounting on and a hard limit on each interpreter (median)");
  r.add("bytes_per_interp_idle", median(idle), "B", 0,
        "what a fresh interpreter of the pool holds, before any task (interpreter::memory())");
  r.add("peak_per_interp_mib", median(peak) / mib, "MiB", 1,
        "an interpreter's peak while running the workload (memory_usage::peak)");
  r.add("load_avg_1m_start", load_start, "", 2,
        "load average when the suite started (above the core count: the rounds were contended)");
  r.add("load_avg_1m_end", load_end, "", 2, "load average when it ended");
  r.add("cpu_stolen_pct", suite_stolen, "%", 1,
        "share of the machine's CPU time over the whole suite that a hypervisor took (steal in "
        "/proc/stat)");
  r.chart("The workload in a pool of 2, both interpreters at once", "s", false,
          {{"accounting on", "seconds_on"},
           {"accounting off", "seconds_off"},
           {"accounting on, with a limit", "seconds_limit"}});
  return r;
}

bench_suite_registrar memory_suite({
    "memory",
    "What memory accounting and hard limits cost an allocation-heavy workload",
    [](CLI::App& app) -> bench_runner {
      auto o = std::make_shared<memory_bench_options>();
      app.add_option("--rounds", o->rounds,
                     "Rounds; each runs the three variants once, in turn (medians reported)")
          ->check(CLI::Range(1u, 1000u))
          ->capture_default_str()
          ->type_name("N");
      app.add_option("-r,--repeat", o->repeat,
                     "Timed repetitions of the workload in each child process (median kept)")
          ->check(CLI::Range(1u, 1000u))
          ->capture_default_str()
          ->type_name("R");
      app.add_option("--rows", o->rows, "Small dicts built and dropped per repetition")
          ->check(CLI::Range(std::int64_t{1}, std::int64_t{100'000'000}))
          ->capture_default_str()
          ->type_name("N");
      app.add_option("--doc-items", o->doc_items,
                     "Items of the document round-tripped through json (about 130 bytes each)")
          ->check(CLI::Range(std::int64_t{1}, std::int64_t{100'000'000}))
          ->capture_default_str()
          ->type_name("N");
      app.add_option("--trips", o->trips, "json round trips of the document per repetition")
          ->check(CLI::Range(std::int64_t{0}, std::int64_t{10'000}))
          ->capture_default_str()
          ->type_name("N");
      app.add_option("--limit", o->limit,
                     "The hard limit of the 'limit' variant (interpreter_config::memory_limit), "
                     "well above what the workload needs: 512M, 1G")
          ->check(CLI::Validator(
              [](std::string& text) -> std::string {
                try {
                  if (parse_size(text) == 0) return "the limit must be above 0, not '" + text + "'";
                } catch (const std::invalid_argument& e) {
                  return e.what();
                }
                return {};
              },
              ""))
          ->capture_default_str()
          ->type_name("SIZE");
      app.add_flag("--quick", o->quick,
                   "A smoke run of a few seconds: 3 rounds of 3 repetitions, small sizes "
                   "(options given explicitly still apply)");
      // One measurement, run by the suite itself in a child process of this executable.
      app.add_option("--child", o->child)
          ->check(CLI::IsMember({"off", "on", "limit"}))
          ->group("");
      app.footer(
          "Each variant runs in a child process of this executable, since the allocator hooks\n"
          "are chosen once, before CPython starts: accounting off (CPython's allocators as they\n"
          "are), on, and on with a hard limit on each interpreter. Every round runs the three\n"
          "in turn.\n"
          "Results (JSON keys): overhead_accounting, overhead_limit (time / the 'off' time,\n"
          "medians of the rounds' ratios); seconds_off, seconds_on, seconds_limit;\n"
          "bytes_per_interp_idle; peak_per_interp_mib; load_avg_1m_start, load_avg_1m_end,\n"
          "cpu_stolen_pct.\n"
          "Progress goes to stderr, results to stdout.");
      return [o, &app](const bench_context& ctx) {
        memory_bench_options opts = *o;
        if (!opts.child.empty()) return run_child(opts);
        if (opts.quick) apply_quick(opts, app);
        return run_memory_bench(opts, ctx);
      };
    },
});

}  // namespace
}  // namespace isola::cli
