// `isola run`: runs one script in N interpreters at once (own GIL each by default), then
// reports every interpreter's outcome and the wall time on stderr. The phases (create, run,
// report) are separate functions so that a pool can replace the first two.
#include "cli.hpp"

#include <isola/error.hpp>
#include <isola/interpreter.hpp>
#include <isola/runtime.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
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

interpreter_config config_for(const run_options& o, unsigned index) {
  auto c = o.shared_gil ? interpreter_config::legacy() : interpreter_config::isolated();
  c.name = fmt::format("run-{}", index);
  return c;
}

/// Creates o.interpreters interpreters, a few at a time in parallel (up to one per core).
/// Throws std::runtime_error naming the first one that could not be created.
std::vector<interpreter> create_interpreters(const run_options& o) {
  const unsigned n = o.interpreters;
  std::vector<std::optional<interpreter>> slots(n);
  std::vector<std::exception_ptr> errors(n);
  {
    const unsigned makers = std::min(n, cores());
    std::vector<std::jthread> threads;
    for (unsigned t = 0; t < makers; ++t) {
      threads.emplace_back([&, t] {
        for (unsigned k = t; k < n; k += makers) {
          try {
            slots[k].emplace(config_for(o, k));
          } catch (...) {
            errors[k] = std::current_exception();
          }
        }
      });
    }
  }
  std::vector<interpreter> out;
  for (unsigned k = 0; k < n; ++k) {
    if (errors[k]) {
      std::string why;
      try {
        std::rethrow_exception(errors[k]);
      } catch (const std::exception& e) {
        why = e.what();
      }
      // When some could be created, the likely cause is a limit (threads, memory).
      throw std::runtime_error(fmt::format("run: could not create interpreter {} of {}: {}{}",
                                           k + 1, n, why,
                                           k > 0 ? "; try fewer interpreters (-n)" : ""));
    }
    out.push_back(std::move(*slots[k]));
  }
  return out;
}

run_outcome await_outcome(std::int64_t id, std::future<void> run, clock::time_point t0) {
  run_outcome r;
  r.interpreter_id = id;
  try {
    run.get();
    r.ok = true;
  } catch (const python_error& e) {
    if (e.is("SystemExit")) {
      // message() is "exit code X" with X = str(SystemExit.code); 0 and None mean success.
      std::string code = e.message().substr(std::min<std::size_t>(e.message().size(), 10));
      r.ok = code == "0" || code == "None";
      if (!r.ok) r.summary = "sys.exit(" + code + ")";
    } else {
      r.summary = e.type_name() + (e.message().empty() ? "" : ": " + e.message());
      r.traceback = e.traceback();
    }
  } catch (const std::exception& e) {
    r.summary = e.what();
  }
  r.seconds = seconds_since(t0);
  return r;
}

/// Starts the script in every interpreter at once and waits for all of them. Outcomes come
/// back in interpreter id order, each with its own finish time.
std::vector<run_outcome> run_everywhere(std::vector<interpreter>& interps, const run_options& o) {
  const auto t0 = clock::now();
  std::vector<std::future<run_outcome>> waiters;
  for (auto& interp : interps) {
    std::future<void> run;
    try {
      run = interp.run_file_async(o.script, o.args);
    } catch (...) {
      std::promise<void> failed;
      failed.set_exception(std::current_exception());
      run = failed.get_future();
    }
    waiters.push_back(
        std::async(std::launch::async, await_outcome, interp.id(), std::move(run), t0));
  }
  std::vector<run_outcome> out;
  for (auto& w : waiters) out.push_back(w.get());
  std::sort(out.begin(), out.end(), [](const run_outcome& a, const run_outcome& b) {
    return a.interpreter_id < b.interpreter_id;
  });
  return out;
}

/// Scripts' sys.stdout and sys.stderr are buffered per interpreter; flush them so their
/// output precedes the report.
void flush_python_output(std::vector<interpreter>& interps) {
  for (auto& interp : interps) {
    try {
      interp.exec(
          "import sys as _isola_sys\n"
          "for _isola_s in (_isola_sys.stdout, _isola_sys.stderr):\n"
          "    try:\n"
          "        _isola_s.flush()\n"
          "    except Exception:\n"
          "        pass\n"
          "del _isola_sys, _isola_s\n");
    } catch (const std::exception&) {
      // A script that broke sys itself still gets its outcome reported.
    }
  }
  std::fflush(stdout);
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

  runtime rt;
  auto t0 = clock::now();
  std::vector<interpreter> interps = create_interpreters(o);
  const double create_s = seconds_since(t0);

  t0 = clock::now();
  auto outcomes = run_everywhere(interps, o);
  const double wall = seconds_since(t0);

  flush_python_output(interps);
  report(outcomes, o, wall, create_s);
  close_newest_first(interps);

  bool all_ok = std::all_of(outcomes.begin(), outcomes.end(), [](auto& r) { return r.ok; });
  return all_ok ? exit_ok : exit_failed;
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
  sub->footer(
      "Runs script.py once in each of N interpreters, all at the same time, then reports each\n"
      "interpreter's outcome (ok, or the exception and its traceback) and the wall time.\n"
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
      "\n"
      "Exit status: 0 all interpreters ok (sys.exit(0) counts as ok), 1 any failed or could\n"
      "not be created, 2 usage error (bad option, missing or unreadable script).");
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
