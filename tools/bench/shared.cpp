// isola bench shared: one table shared by many interpreters (isola.share) against each
// interpreter owning its copy, the way it is done without shared values: resident memory, the
// speed of lookups, how lookups scale when two interpreters read at once, and the time to
// publish the table against sending it once through a channel, pickled.
#include "tools/bench/bench.hpp"

#include <isola/interpreter.hpp>
#include <isola/runtime.hpp>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <chrono>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace isola::cli {
namespace {

constexpr double mib = 1024.0 * 1024.0;

struct shared_options {
  std::size_t keys = 1'000'000;   ///< entries of the table
  unsigned interpreters = 8;      ///< readers kept alive for the memory figures
  std::size_t lookups = 1'000'000;  ///< per lookup run
  unsigned repeat = 5;            ///< lookup runs of each kind, in turn
  bool quick = false;
};

// The table (str key -> (int, float, str)) and the lookup loop, in every interpreter.
constexpr const char* helpers = R"(
import isola, pickle, random, time

def build(n):
    return {f'key-{i:07d}': (i, i * 0.5, f'value-{i}') for i in range(n)}

def lookup_keys(n_keys, count, seed):
    rnd = random.Random(seed)
    return [f'key-{rnd.randrange(n_keys):07d}' for _ in range(count)]

def lookups(table, keys):
    start = time.perf_counter()
    total = 0
    for k in keys:
        v = table[k]
        total += v[0]
        v[1]
        v[2]
    return len(keys) / (time.perf_counter() - start), total
)";

std::unique_ptr<interpreter> make_interp() {
  auto in = std::make_unique<interpreter>();
  in->exec(helpers);
  return in;
}

double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bench_report run_shared(const shared_options& o, const bench_context& ctx) {
  bench_report r;
  r.params = {{"keys", static_cast<double>(o.keys)},
              {"interpreters", o.interpreters},
              {"lookups", static_cast<double>(o.lookups)},
              {"repeat", o.repeat}};
  runtime rt;
  const std::string n = std::to_string(o.keys);
  const std::string name = "isola-bench-shared-table";

  // Shared: one interpreter builds and publishes the table, then ends; the readers only
  // look it up.
  ctx.progress(fmt::format("shared: a table of {} keys published, then {} interpreters read it",
                           o.keys, o.interpreters));
  double publish_s = 0, shared_mb = 0;
  {
    const double before = rss_bytes();
    {
      auto p = make_interp();
      p->exec("table = build(" + n + ")");
      const auto t0 = std::chrono::steady_clock::now();
      p->exec("isola.share('" + name + "', table)");
      publish_s = seconds(t0);
    }
    std::vector<std::unique_ptr<interpreter>> readers;
    for (unsigned i = 0; i < o.interpreters; ++i) {
      readers.push_back(make_interp());
      readers.back()->exec("table = isola.shared('" + name + "')\n"
                           "lookups(table, lookup_keys(" + n + ", 1000, 1))");
    }
    shared_mb = (rss_bytes() - before) / mib;
    ctx.progress(fmt::format("  published in {:.2f} s; resident memory +{:.0f} MiB", publish_s,
                             shared_mb));
  }

  ctx.progress("one copy: one interpreter builds the table");
  double one_copy_mb = 0;
  {
    const double before = rss_bytes();
    auto x = make_interp();
    x->exec("table = build(" + n + ")");
    one_copy_mb = (rss_bytes() - before) / mib;
    ctx.progress(fmt::format("  resident memory +{:.0f} MiB", one_copy_mb));
  }

  ctx.progress(fmt::format("copied: {} interpreters build their own copy", o.interpreters));
  double copied_mb = 0;
  {
    const double before = rss_bytes();
    std::vector<std::unique_ptr<interpreter>> owners;
    std::vector<std::future<void>> built;
    for (unsigned i = 0; i < o.interpreters; ++i) {
      owners.push_back(make_interp());
      built.push_back(owners.back()->exec_async("table = build(" + n + ")"));
    }
    for (auto& f : built) f.get();
    copied_mb = (rss_bytes() - before) / mib;
    ctx.progress(fmt::format("  resident memory +{:.0f} MiB", copied_mb));
  }

  ctx.progress("the peer of publishing: the table sent once through a channel, pickled");
  double channel_s = 0;
  {
    auto a = make_interp();
    auto b = make_interp();
    a->exec("table = build(" + n + ")\nch = isola.channel('isola-bench-shared-pickle')");
    b->exec("ch = isola.channel('isola-bench-shared-pickle')");
    const auto t0 = std::chrono::steady_clock::now();
    auto got = b->exec_async("copy = pickle.loads(ch.recv())");
    // Positional: a keyword argument to a C function makes CPython 3.12.0-3.12.3 crash at exit
    // (gh-119213).
    a->exec("ch.send(pickle.dumps(table, 5))");
    got.get();
    channel_s = seconds(t0);
    if (b->eval("len(copy)").as_int() != static_cast<std::int64_t>(o.keys)) {
      throw std::runtime_error("bench shared: the pickled table arrived incomplete");
    }
    ctx.progress(fmt::format("  {:.2f} s", channel_s));
  }

  // Lookups: an interpreter that owns its dict and one that reads the shared table, in turn.
  ctx.progress(fmt::format("lookups: {} runs of {} random keys each way, in turn", o.repeat,
                           o.lookups));
  const std::string keys = "keys = lookup_keys(" + n + ", " + std::to_string(o.lookups) + ", ";
  auto local = make_interp();
  local->exec("table = build(" + n + ")\n" + keys + "2)");
  auto shared1 = make_interp();
  shared1->exec("table = isola.shared('" + name + "')\n" + keys + "2)");
  auto shared2 = make_interp();
  shared2->exec("table = isola.shared('" + name + "')\n" + keys + "3)");
  auto local2 = make_interp();
  local2->exec("table = build(" + n + ")\n" + keys + "3)");
  // Rates over the wall time seen from here, so that two runs at once count only while both
  // were asked to run.
  const auto count = static_cast<double>(o.lookups);
  auto rate = [&](interpreter& in) {
    const auto t0 = std::chrono::steady_clock::now();
    in.eval("lookups(table, keys)[0]");
    return count / seconds(t0);
  };
  auto rate_pair = [&](interpreter& a, interpreter& b) {
    const auto t0 = std::chrono::steady_clock::now();
    auto fa = a.eval_async("lookups(table, keys)[0]");
    auto fb = b.eval_async("lookups(table, keys)[0]");
    fa.get();
    fb.get();
    return 2 * count / seconds(t0);
  };
  for (interpreter* in : {local.get(), local2.get(), shared1.get(), shared2.get()}) rate(*in);  // warm-up
  std::vector<double> local_rates, shared_rates, one_rates, two_rates, local_one, local_two;
  for (unsigned k = 0; k < o.repeat; ++k) {
    local_rates.push_back(rate(*local));
    shared_rates.push_back(rate(*shared1));
    // One alone: the mean of each of the pair alone, so that a difference between the two
    // (their keys, where their objects lie) does not pass for scaling.
    one_rates.push_back((rate(*shared1) + rate(*shared2)) / 2);
    two_rates.push_back(rate_pair(*shared1, *shared2));
    local_one.push_back((rate(*local) + rate(*local2)) / 2);
    local_two.push_back(rate_pair(*local, *local2));
    ctx.progress(fmt::format("  run {}/{}: local {:.0f}/s, shared {:.0f}/s; two at once: shared "
                             "{:.2f}x, local copies {:.2f}x",
                             k + 1, o.repeat, local_rates.back(), shared_rates.back(),
                             two_rates.back() / one_rates.back(),
                             local_two.back() / local_one.back()));
  }

  r.add("rss_mb_shared_8", shared_mb, "MiB", 0,
        fmt::format("resident memory growth: the table published once, {} interpreters "
                    "reading it (the publisher ended)",
                    o.interpreters));
  r.add("rss_mb_one_copy", one_copy_mb, "MiB", 0,
        "resident memory growth: one interpreter with one copy (an ordinary dict)");
  r.add("rss_mb_copied_8", copied_mb, "MiB", 0,
        fmt::format("resident memory growth: {} interpreters, each with its own copy",
                    o.interpreters));
  r.add("shared_vs_one_copy", shared_mb / one_copy_mb, "x", 2,
        "rss_mb_shared_8 / rss_mb_one_copy (target: <= 1.15)");
  r.add("copied_vs_shared", copied_mb / shared_mb, "x", 1,
        "rss_mb_copied_8 / rss_mb_shared_8 (target: >= 5)");
  r.add("lookups_per_s_shared", median(shared_rates), "/s", 0,
        "random key lookups + reading the tuple, one interpreter, the shared table (median)");
  r.add("lookups_per_s_local", median(local_rates), "/s", 0,
        "the same loop over an ordinary dict that interpreter owns (median, runs in turn)");
  r.add("shared_vs_local", median_ratio(shared_rates, local_rates), "x", 2,
        "lookups_per_s_shared / lookups_per_s_local, median of the ratios (target: >= 0.9)");
  r.add("lookup_scaling_2", median_ratio(two_rates, one_rates), "x", 2,
        "two interpreters reading the shared table at once: their summed rate / one alone "
        "(median of the ratios; target >= 1.8 on 2 cores)");
  r.add("lookup_scaling_2_local", median_ratio(local_two, local_one), "x", 2,
        "the same with each interpreter reading its own dict: what the machine allows");
  r.add("publish_s", publish_s, "s", 2, "isola.share() of the table");
  r.add("channel_pickle_s", channel_s, "s", 2,
        "the peer: pickle.dumps, send through a channel, recv and pickle.loads in another "
        "interpreter");
  r.chart("Resident memory, table of " + n + " keys", "MiB", false,
          {{"shared, 8 readers", "rss_mb_shared_8"},
           {"one copy", "rss_mb_one_copy"},
           {"8 copies", "rss_mb_copied_8"}});
  return r;
}

bench_suite_registrar shared_suite({
    "shared",
    "A table shared by many interpreters (isola.share) against a copy in each",
    [](CLI::App& app) -> bench_runner {
      auto o = std::make_shared<shared_options>();
      app.add_option("--keys", o->keys, "Entries of the table (str key -> (int, float, str))")
          ->check(CLI::Range(std::size_t{1000}, std::size_t{100'000'000}))
          ->capture_default_str()
          ->type_name("N");
      app.add_option("-n,--interpreters", o->interpreters,
                     "Interpreters alive for the memory figures")
          ->check(CLI::Range(1u, 256u))
          ->capture_default_str()
          ->type_name("N");
      app.add_option("--lookups", o->lookups, "Random lookups per run")
          ->check(CLI::Range(std::size_t{1000}, std::size_t{1'000'000'000}))
          ->capture_default_str()
          ->type_name("N");
      app.add_option("-r,--repeat", o->repeat, "Lookup runs of each kind (medians reported)")
          ->check(CLI::Range(1u, 100u))
          ->capture_default_str()
          ->type_name("R");
      app.add_flag("--quick", o->quick,
                   "A smoke run: 100 000 keys, 100 000 lookups, one run (options given "
                   "explicitly still apply)");
      app.footer(
          "Results (JSON keys): rss_mb_shared_8, rss_mb_one_copy, rss_mb_copied_8,\n"
          "shared_vs_one_copy, copied_vs_shared; lookups_per_s_shared, lookups_per_s_local,\n"
          "shared_vs_local; lookup_scaling_2, lookup_scaling_2_local; publish_s,\n"
          "channel_pickle_s. Memory is the growth of this process's resident set while each\n"
          "configuration is alive. Progress goes to stderr, results to stdout.");
      return [o, &app](const bench_context& ctx) {
        shared_options opts = *o;
        if (opts.quick) {
          auto unset = [&](const char* flag) { return app.get_option(flag)->count() == 0; };
          if (unset("--keys")) opts.keys = 100'000;
          if (unset("--lookups")) opts.lookups = 100'000;
          if (unset("--repeat")) opts.repeat = 1;
        }
        return run_shared(opts, ctx);
      };
    },
});

}  // namespace
}  // namespace isola::cli
