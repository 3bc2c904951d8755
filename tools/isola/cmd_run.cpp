// `isola run`: runs one script in N interpreters at once (own GIL each by default), then
// reports every interpreter's outcome and the wall time on stderr. The interpreters are an
// isola::pool of N; each runs the script once as a task pinned to it.
#include "cli.hpp"
#include "pool_support.hpp"

#include <isola/error.hpp>
#include <isola/pool.hpp>
#include <isola/runtime.hpp>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <fmt/core.h>

namespace isola::cli {
namespace {

namespace fs = std::filesystem;

constexpr unsigned max_interpreters = 1024;

struct run_options {
  unsigned interpreters = cores();
  bool shared_gil = false;
  std::string log_level;
  bool quiet = false;
  bool stats = false;
  double timeout = 0;  ///< seconds; 0: none
  fs::path script;
  std::vector<std::string> args;  ///< sys.argv[1:]
};

/// How the script ended in one interpreter.
struct run_outcome {
  std::int64_t interpreter_id = -1;
  double seconds = 0;  ///< from submitting the script to its end
  bool ok = false;
  std::string summary;    ///< "ValueError: boom", "sys.exit(3)"; empty when ok
  std::string traceback;  ///< Python's formatted traceback, if there is one
};

/// Checks the script before any interpreter exists, so a typo costs nothing.
void check_script(const fs::path& script) {
  std::error_code ec;
  auto st = fs::status(script, ec);
  if (!fs::exists(st)) {
    throw usage_error(
        fmt::format("run: cannot open script '{}': no such file (looked in {}); check the path",
                    script.string(), fs::absolute(script, ec).parent_path().string()));
  }
  if (fs::is_directory(st)) {
    throw usage_error(
        fmt::format("run: '{}' is a directory; give the path of a .py file (running a package's "
                    "__main__.py is not supported)",
                    script.string()));
  }
  errno = 0;
  std::ifstream probe(script, std::ios::binary);
  if (!probe) {
    const int e = errno;
    throw usage_error(fmt::format("run: cannot read script '{}': {}; check its permissions",
                                  script.string(), e != 0 ? std::strerror(e) : "unreadable"));
  }
}

/// The runner every pool task calls: runs the file as `python script.py` would (runpy with
/// run_name '__main__': __name__, __file__, sys.argv; the script's folder first on sys.path;
/// SystemExit with code 0 or None is success), then flushes the interpreter's sys.stdout and
/// sys.stderr so that the script's output comes before isola's report.
constexpr const char* runner_source = R"py(
import os
import runpy
import sys


def run_script(path, argv):
    sys.argv = [path] + list(argv)
    folder = os.path.dirname(os.path.abspath(path))
    if not sys.path or sys.path[0] != folder:
        sys.path.insert(0, folder)
    try:
        runpy.run_path(path, run_name='__main__')
    except SystemExit as e:
        # sys.exit(0) or sys.exit() is success, as for `python script.py`; the task then
        # counts as done in the pool's stats too.
        if e.code is not None and e.code != 0:
            raise
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
)py";

pool_options pool_options_for(const run_options& o) {
  pool_options p;
  p.size = o.interpreters;
  p.interpreter = o.shared_gil ? interpreter_config::legacy() : interpreter_config::isolated();
  p.interpreter.name = "run";
  p.init_code = helper_module_init("_isola_run", runner_source);
  // One task per interpreter: the queue never holds more than N.
  p.queue_capacity = std::max<std::size_t>(o.interpreters, 1);
  return p;
}

/// Creates the pool (its interpreters are made in parallel). Throws std::runtime_error that
/// says which interpreter could not be created.
std::unique_ptr<pool> create_pool(const run_options& o) {
  try {
    return std::make_unique<pool>(pool_options_for(o));
  } catch (const std::exception& e) {
    // When some could be created, the likely cause is a limit (threads, memory).
    throw std::runtime_error(fmt::format("run: could not create {} interpreter{}: {}{}",
                                         o.interpreters, o.interpreters == 1 ? "" : "s",
                                         e.what(),
                                         o.interpreters > 1 ? "; try fewer interpreters (-n)" : ""));
  }
}

run_outcome outcome_of(std::int64_t id, std::exception_ptr err, const run_options& o) {
  run_outcome r;
  r.interpreter_id = id;
  if (!err) {
    r.ok = true;
    return r;
  }
  try {
    std::rethrow_exception(err);
  } catch (const python_error& e) {
    if (e.is("SystemExit")) {
      // message() is "exit code X" with X = str(SystemExit.code); 0 and None mean success.
      std::string code = e.message().substr(std::min<std::size_t>(e.message().size(), 10));
      r.ok = code == "0" || code == "None";
      if (!r.ok) r.summary = "sys.exit(" + code + ")";
    } else {
      if (e.is("TimeoutError") && o.timeout > 0 &&
          e.message().starts_with("task exceeded its timeout")) {
        r.summary = fmt::format("timed out after {:g} s (TimeoutError raised in the script)",
                                o.timeout);
      } else {
        r.summary = e.type_name() + (e.message().empty() ? "" : ": " + e.message());
      }
      r.traceback = strip_helper_frames(e.traceback());
    }
  } catch (const error& e) {
    if (e.code() == errc::timeout) {
      r.summary = fmt::format(
          "timed out after {:g} s and did not stop on its TimeoutError (it caught it, or is "
          "stuck in C code); its interpreter was replaced",
          o.timeout);
    } else {
      r.summary = e.what();
    }
  } catch (const std::exception& e) {
    r.summary = e.what();
  }
  return r;
}

/// Starts the script on every interpreter of the pool at once (one task pinned to each) and
/// waits for all of them. Outcomes come back in interpreter id order, each with its own
/// finish time, taken when its task completed.
std::vector<run_outcome> run_everywhere(pool& p, const run_options& o) {
  const std::size_t n = p.size();
  std::vector<std::int64_t> ids;
  for (const auto& s : p.stats().interpreters) ids.push_back(s.interpreter_id);

  isola::list argv;
  for (const auto& a : o.args) argv.items.emplace_back(a);
  std::vector<value> args = {value(o.script.string()), value(argv)};

  std::vector<run_outcome> out(n);
  std::mutex mu;
  std::condition_variable cv;
  std::size_t pending = n;
  const auto t0 = clock::now();
  for (std::size_t k = 0; k < n; ++k) {
    task_options opts;
    opts.interpreter_index = static_cast<int>(k);
    opts.timeout = timeout_ms(o.timeout);
    auto finish = [&, k](std::exception_ptr e, value) {
      run_outcome r = outcome_of(ids[k], std::move(e), o);
      r.seconds = seconds_since(t0);
      std::lock_guard lock(mu);
      out[k] = std::move(r);
      if (--pending == 0) cv.notify_one();
    };
    // async_submit reports a failure to submit through the handler too.
    p.async_submit("_isola_run:run_script", args, std::move(finish), opts);
  }
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return pending == 0; });
  }
  std::sort(out.begin(), out.end(), [](const run_outcome& a, const run_outcome& b) {
    return a.interpreter_id < b.interpreter_id;
  });
  return out;
}

void report(const std::vector<run_outcome>& outcomes, const run_options& o, double wall,
            double create_s) {
  std::set<std::string> shown;  // identical tracebacks are printed once
  std::size_t failed = 0;
  for (const auto& r : outcomes) {
    if (r.ok) {
      if (!o.quiet) fmt::print(stderr, "[interp {}] ok in {:.2f} s\n", r.interpreter_id, r.seconds);
      continue;
    }
    ++failed;
    fmt::print(stderr, "[interp {}] failed in {:.2f} s: {}\n", r.interpreter_id, r.seconds,
               r.summary);
    if (r.traceback.empty()) continue;
    if (shown.insert(r.traceback).second) {
      fmt::print(stderr, "{}", r.traceback);
    } else if (!o.quiet) {
      fmt::print(stderr, "  (same traceback as above)\n");
    }
  }
  if (!o.quiet || failed > 0) {
    fmt::print(stderr,
               "{} interpreter{}, {} ok, {} failed, wall {:.2f} s ({}; created in {:.2f} s)\n",
               outcomes.size(), outcomes.size() == 1 ? "" : "s", outcomes.size() - failed, failed,
               wall, o.shared_gil ? "shared GIL" : "own GIL each", create_s);
  }
}

/// rest: the script and its arguments. after_dashes: they followed "--", so a script name
/// starting with '-' is meant literally.
int run_script(run_options& o, const std::vector<std::string>& rest, bool after_dashes) {
  if (rest.empty()) {
    throw usage_error(
        "run: missing the script to run; usage: isola run [OPTIONS] script.py [ARGS...] "
        "(see 'isola run --help')");
  }
  if (!after_dashes && rest.front().size() > 1 && rest.front().front() == '-') {
    throw usage_error(fmt::format(
        "run: unknown option '{}'; options go before the script, see 'isola run --help'",
        rest.front()));
  }
  if (rest.front() == "-") {
    throw usage_error("run: reading the script from stdin is not supported; give a file path");
  }
  o.script = rest.front();
  o.args.assign(rest.begin() + 1, rest.end());
  check_script(o.script);
  apply_log_level(o.log_level);
  quiet_timeout_warnings(o.log_level, o.timeout > 0);

  runtime rt;
  auto t0 = clock::now();
  auto p = create_pool(o);
  const double create_s = seconds_since(t0);

  t0 = clock::now();
  auto outcomes = run_everywhere(*p, o);
  const double wall = seconds_since(t0);
  const pool_stats stats = p->stats();

  std::fflush(stdout);
  report(outcomes, o, wall, create_s);
  if (o.stats) print_pool_stats(stats);
  p->shutdown();  // joins the workers and the watchdog: the counters are final
  const bool stuck = has_stuck_interpreters(p->stats());
  p.reset();  // ends the interpreters before the runtime
  const bool all_ok = std::all_of(outcomes.begin(), outcomes.end(), [](auto& r) { return r.ok; });
  const int status = all_ok ? exit_ok : exit_failed;
  if (stuck) exit_leaving_stuck_interpreters(status);
  return status;
}


}  // namespace

void add_run_command(CLI::App& app, dispatch& d) {
  auto opts = std::make_shared<run_options>();
  auto* sub = app.add_subcommand(
      "run", "Run a script in N interpreters at once (own GIL each) and report how each one ended");
  // Everything from the first argument run does not know (the script) on is left for the
  // script, options included: `isola run -n 2 script.py -n 5` gives the script "-n 5".
  sub->prefix_command();
  formatter_of(app).usage(sub, "[OPTIONS] script.py [ARGS...]");
  sub->add_option("-n,--interpreters", opts->interpreters,
                  fmt::format("Number of interpreters, each running the script once in "
                              "parallel (default: cores, here {})",
                              cores()))
      ->check(CLI::Range(1u, max_interpreters))
      ->type_name("N");
  sub->add_flag("--shared-gil", opts->shared_gil,
                "Use CPython's legacy configuration (all interpreters share the main GIL and "
                "allocator) for comparison: the runs then take turns instead of running in "
                "parallel");
  add_log_level_option(*sub, opts->log_level);
  sub->add_flag("-q,--quiet", opts->quiet,
                "Report only failures (no per-interpreter ok lines, no summary)");
  sub->add_flag("--stats", opts->stats,
                "After the run, print the pool's counters on stderr: per interpreter its id, "
                "tasks done/failed/timed out, busy time, recycling; the queue depth");
  sub->add_option("--timeout", opts->timeout,
                  "Stop a script that runs longer than this: TimeoutError is raised in it and "
                  "that interpreter counts as failed (default: no limit)")
      ->check(CLI::Range(0.001, 1e6))
      ->type_name("SECONDS");
  sub->footer(
      "Runs script.py once in each of N interpreters, all at the same time (a pool of N\n"
      "interpreters, one task pinned to each), then reports each interpreter's outcome (ok, or\n"
      "the exception and its traceback) and the wall time.\n"
      "The script's output goes to stdout/stderr as usual; isola's report goes to stderr.\n"
      "\n"
      "Arguments:\n"
      "  script.py       the Python file to run, as `python script.py` would (__name__ is\n"
      "                  '__main__', its folder is put first on sys.path)\n"
      "  ARGS...         passed to the script as sys.argv[1:]\n"
      "\n"
      "Examples:\n"
      "  isola run -n 2 tools/demo/cpu_bound.py               2 at once, in about the time of 1\n"
      "  isola run --shared-gil -n 2 tools/demo/cpu_bound.py  one GIL: they take turns\n"
      "  isola run -n 4 script.py --verbose -n 1             the script's sys.argv[1:] is\n"
      "                                                       ['--verbose', '-n', '1']\n"
      "  isola run -n 2 --stats --timeout 10 script.py        at most 10 s each, then the\n"
      "                                                       pool's counters\n"
      "\n"
      "Exit status: 0 all interpreters ok (sys.exit(0) counts as ok), 1 any failed (or timed\n"
      "out) or could not be created, 2 usage error (bad option, missing or unreadable script).");
  sub->callback([opts, sub, &app, &d] {
    auto rest = sub->remaining();
    bool after_dashes = false;
    if (rest.empty()) {  // `isola run [OPTIONS] -- script.py ...`: CLI11 left them on the root
      rest = app.remaining();
      after_dashes = !rest.empty();
      d.takes_root_extras = true;
    }
    d.chosen = [opts, rest, after_dashes] { return run_script(*opts, rest, after_dashes); };
  });
}

}  // namespace isola::cli
