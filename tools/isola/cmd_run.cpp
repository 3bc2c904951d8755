// `isola run`: runs one script in N interpreters at once (own GIL each by default), then
// reports every interpreter's outcome and the wall time on stderr. The interpreters are an
// isola::pool of N; each runs the script once as a task pinned to it. --timeout bounds each
// interpreter's whole life: the script, the threads it left running, and its end. SIGINT or
// SIGTERM interrupts the scripts (KeyboardInterrupt) and reports what finished.
#include "tools/isola/cli.hpp"
#include "tools/isola/pool_support.hpp"
#include "tools/isola/signals.hpp"
#include "tools/isola/py/run_helper.py.hpp"

#include <isola/error.hpp>
#include <isola/pool.hpp>
#include <isola/runtime.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <spdlog/spdlog.h>

namespace isola::cli {
namespace {

namespace fs = std::filesystem;

constexpr unsigned max_interpreters = 1024;

struct run_options {
  unsigned interpreters = cores();
  bool shared_gil = false;
  extension_policy extensions = extension_policy::strict;
  std::vector<std::string> lane_modules;  ///< --policy FILE
  std::string lane_reason;  ///< why the script runs in the shared-GIL lane (--policy); or empty
  bool allow_os_exit = false;
  std::string stdin_mode = "first";  ///< first: the lowest id reads the process's stdin; none
  std::string log_level;
  bool quiet = false;
  bool stats = false;
  double timeout = 0;  ///< seconds; 0: none
  memory_limits memory;
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

bool runs_shared(const run_options& o) {
  return o.shared_gil || o.extensions == extension_policy::shared_gil || !o.lane_reason.empty();
}

/// --policy FILE: the first module the script imports (its import statements, read with
/// Python's ast in a short-lived interpreter) that the file lists, or its package; empty when
/// none is. A script that does not parse names none: its run reports the SyntaxError.
std::string listed_import(const run_options& o) {
  interpreter scan(interpreter_config::isolated());
  scan.exec(
      "def _isola_listed(path, listed):\n"
      "    import ast\n"
      "    try:\n"
      "        with open(path, 'rb') as f:\n"
      "            tree = ast.parse(f.read(), path)\n"
      "    except (SyntaxError, ValueError, OSError):\n"
      "        return ''\n"
      "    for node in ast.walk(tree):\n"
      "        if isinstance(node, ast.Import):\n"
      "            names = [a.name for a in node.names]\n"
      "        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:\n"
      "            names = [node.module]\n"
      "        else:\n"
      "            continue\n"
      "        for name in names:\n"
      "            parts = name.split('.')\n"
      "            for i in range(1, len(parts) + 1):\n"
      "                if '.'.join(parts[:i]) in listed:\n"
      "                    return name\n"
      "    return ''\n");
  isola::list listed;
  for (const auto& m : o.lane_modules) listed.items.emplace_back(m);
  scan.set_global("_isola_script", value(o.script.string()));
  scan.set_global("_isola_lane_modules", value(std::move(listed)));
  return scan.eval("_isola_listed(_isola_script, set(_isola_lane_modules))").as_str();
}

pool_options pool_options_for(const run_options& o) {
  pool_options p;
  p.size = o.interpreters;
  const bool shared = runs_shared(o);
  p.interpreter = shared ? interpreter_config::shared_gil() : interpreter_config::isolated();
  if (!shared) p.extensions = o.extensions;
  p.interpreter.name = "run";
  p.interpreter.allow_os_exit = o.allow_os_exit;
  p.interpreter.memory_limit = o.memory.hard;
  p.max_memory_per_interpreter = o.memory.soft;
  // The runner waits for the script's threads inside its task (within --timeout); threads
  // still there when the interpreter ends get SystemExit at once.
  p.interpreter.end_timeout = std::chrono::milliseconds(0);
  p.init_code = helper_module_init("_isola_run", embedded::run_helper);
  // One task per interpreter: the queue never holds more than N.
  p.queue_capacity = std::max<std::size_t>(o.interpreters, 1);
  return p;
}

/// Creates the pool (its interpreters are made in parallel). Throws std::runtime_error that
/// says which interpreter could not be created.
std::unique_ptr<pool> create_pool(const run_options& o) {
  try {
    return std::make_unique<pool>(pool_options_for(o));
  } catch (const std::invalid_argument& e) {  // a memory limit below what one needs
    throw usage_error(fmt::format("run: {}", e.what()));
  } catch (const std::exception& e) {
    // When some could be created, the likely cause is a limit (threads, memory).
    throw std::runtime_error(fmt::format("run: could not create {} interpreter{}: {}{}",
                                         o.interpreters, o.interpreters == 1 ? "" : "s",
                                         e.what(),
                                         o.interpreters > 1 ? "; try fewer interpreters (-n)" : ""));
  }
}

run_outcome outcome_of(std::int64_t id, std::exception_ptr err, const run_options& o,
                       int signal) {
  run_outcome r;
  r.interpreter_id = id;
  if (!err) {
    r.ok = true;
    return r;
  }
  const std::string stopped_by =
      signal != 0 ? fmt::format("interrupted by {}", signal_name(signal)) : std::string();
  try {
    std::rethrow_exception(err);
  } catch (const python_error& e) {
    if (e.is("SystemExit")) {
      // message() is "exit code X" with X = str(SystemExit.code); 0 and None mean success.
      std::string code = e.message().substr(std::min<std::size_t>(e.message().size(), 10));
      r.ok = code == "0" || code == "None";
      if (!r.ok) r.summary = "sys.exit(" + code + ")";
    } else {
      constexpr std::string_view timed_out = "and was interrupted";
      if (const auto at = e.message().find(timed_out);
          e.is("TimeoutError") && o.timeout > 0 &&
          e.message().starts_with("task exceeded its timeout") && at != std::string::npos) {
        // "... was interrupted while waiting for the threads ...": keep what it was doing.
        const std::string doing = e.message().substr(at + timed_out.size());
        r.summary = fmt::format(
            "timed out after {:g} s{} (TimeoutError: isola.TaskTimeout was raised in the script)",
            o.timeout, doing);
      } else if (e.is("KeyboardInterrupt") && signal != 0) {
        r.summary = stopped_by + " (KeyboardInterrupt raised in the script)";
      } else {
        r.summary = e.type_name() + (e.message().empty() ? "" : ": " + e.message());
      }
      r.traceback = strip_helper_frames(e.traceback());
    }
  } catch (const error& e) {
    if (e.code() == errc::timeout) {
      r.summary = fmt::format(
          "timed out after {:g} s and did not stop on its isola.TaskTimeout (it caught it, or "
          "is stuck in C code): TimeoutError; its interpreter was abandoned",
          o.timeout);
    } else if (e.code() == errc::cancelled && signal != 0) {
      r.summary = stopped_by + " before it started";
    } else {
      r.summary = e.what();
    }
  } catch (const std::exception& e) {
    r.summary = e.what();
  }
  return r;
}

/// How long scripts have to stop after the KeyboardInterrupt a signal raises in them.
constexpr auto signal_grace = std::chrono::seconds(2);

/// Starts the script on every interpreter of the pool at once (one task pinned to each) and
/// waits for all of them, or, after SIGINT/SIGTERM, for them to stop on the KeyboardInterrupt
/// it raises in them (at most signal_grace). Outcomes come back in interpreter id order; each
/// one's time is its task's busy time. `signal` is set to the signal that stopped them, and
/// `stuck` when a script did not stop on it (its task still runs).
std::vector<run_outcome> run_everywhere(pool& p, const run_options& o, int& signal, bool& stuck) {
  const std::size_t n = p.size();
  std::vector<std::int64_t> ids;
  for (const auto& s : p.stats().interpreters) ids.push_back(s.interpreter_id);

  isola::list argv;
  for (const auto& a : o.args) argv.items.emplace_back(a);

  // Interpreters are created side by side, so slot 0 need not hold the lowest id: stdin goes
  // to the interpreter reported as the first one.
  const auto first_slot =
      static_cast<std::size_t>(std::min_element(ids.begin(), ids.end()) - ids.begin());

  std::vector<run_outcome> out(n);
  std::vector<task_future> futures;
  const auto t0 = clock::now();
  for (std::size_t k = 0; k < n; ++k) {
    task_options opts;
    opts.interpreter_index = static_cast<int>(k);
    opts.timeout = timeout_ms(o.timeout);
    const bool own_stdin = o.stdin_mode == "first" && k == first_slot;
    futures.push_back(p.submit_with("_isola_run:run_script",
                                    {value(o.script.string()), value(argv), value(own_stdin)},
                                    {}, opts));
  }
  std::vector<bool> done(n, false);
  std::optional<clock::time_point> give_up;
  for (std::size_t left = n; left > 0;) {
    std::size_t first_pending = n;
    for (std::size_t k = 0; k < n; ++k) {
      if (done[k]) continue;
      if (futures[k].wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
        first_pending = std::min(first_pending, k);
        continue;
      }
      std::exception_ptr err;
      try {
        futures[k].get();
      } catch (...) {
        err = std::current_exception();
      }
      out[k] = outcome_of(ids[k], err, o, signal);
      out[k].seconds = std::chrono::duration<double>(p.stats().interpreters.at(k).busy).count();
      done[k] = true;
      --left;
    }
    if (left == 0) break;
    if (signal == 0 && (signal = stop_signal()) != 0) {
      for (std::size_t k = 0; k < n; ++k) {
        if (!done[k]) futures[k].interrupt();
      }
      give_up = clock::now() + signal_grace;
    }
    if (give_up && clock::now() >= *give_up) {
      stuck = true;
      for (std::size_t k = 0; k < n; ++k) {
        if (done[k]) continue;
        out[k].interpreter_id = ids[k];
        out[k].seconds = seconds_since(t0);
        out[k].summary = fmt::format("interrupted by {}, and still running {:g} s later (stuck "
                                     "in C code?)",
                                     signal_name(signal),
                                     std::chrono::duration<double>(signal_grace).count());
      }
      break;
    }
    futures[first_pending].wait_for(std::chrono::milliseconds(20));
  }
  std::sort(out.begin(), out.end(), [](const run_outcome& a, const run_outcome& b) {
    return a.interpreter_id < b.interpreter_id;
  });
  return out;
}

void report(const std::vector<run_outcome>& outcomes, const run_options& o, double wall,
            double create_s, int signal) {
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
  if (!o.quiet || failed > 0 || signal != 0) {
    fmt::print(stderr,
               "{} interpreter{}, {} ok, {} failed, wall {:.2f} s ({}; created in {:.2f} s){}\n",
               outcomes.size(), outcomes.size() == 1 ? "" : "s", outcomes.size() - failed, failed,
               wall,
               !o.lane_reason.empty()  ? fmt::format("shared GIL: {}", o.lane_reason)
               : runs_shared(o)        ? std::string("shared GIL")
                                       : std::string("own GIL each"),
               create_s,
               signal != 0 ? fmt::format("; interrupted by {}", signal_name(signal)) : "");
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
  watch_stop_signals();

  runtime rt;
  if (!o.lane_modules.empty()) {
    const auto module = listed_import(o);
    if (!module.empty()) {
      o.lane_reason = fmt::format("it imports {}, which --policy lists", module);
      spdlog::debug("run: the script runs in the shared-GIL lane: {}", o.lane_reason);
    }
  }
  auto t0 = clock::now();
  auto p = create_pool(o);
  const double create_s = seconds_since(t0);

  int signal = stop_signal();
  bool stuck = false;
  std::vector<run_outcome> outcomes;
  double wall = 0;
  if (signal == 0) {
    t0 = clock::now();
    outcomes = run_everywhere(*p, o, signal, stuck);
    wall = seconds_since(t0);
    std::fflush(stdout);
    report(outcomes, o, wall, create_s, signal);
  } else {
    fmt::print(stderr, "isola: interrupted by {} before the scripts started\n",
               signal_name(signal));
  }
  if (o.stats) print_pool_stats(p->stats());
  const bool all_ok = std::all_of(outcomes.begin(), outcomes.end(), [](auto& r) { return r.ok; });
  const int status = signal != 0 ? signal_exit_status(signal) : all_ok ? exit_ok : exit_failed;
  // A script that did not stop on its KeyboardInterrupt has no timeout: shutdown would wait
  // for it.
  if (stuck) exit_leaving_stuck_interpreters(status);
  p->shutdown();  // bounded: interpreters that do not end in time are abandoned
  p.reset();      // ends the interpreters before the runtime
  if (rt.abandoned_interpreters() > 0) exit_leaving_stuck_interpreters(status);
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
                "Run in interpreters that share the main GIL and allocator and load any "
                "extension module (isola's shared-GIL lane): the runs then take turns instead of "
                "running in parallel");
  sub->add_flag("--allow-os-exit", opts->allow_os_exit,
                "Let os._exit() and os.abort() end the whole process, as in CPython (by "
                "default they raise RuntimeError in the script: one script must not end the "
                "others' work unreported)");
  sub->add_option("--stdin", opts->stdin_mode,
                  "Who reads this process's stdin: 'first' (the default: the first interpreter; "
                  "the others see an empty stdin) or 'none' (every interpreter sees an empty "
                  "stdin)")
      ->check(CLI::IsMember({"first", "none"}))
      ->type_name("first|none");
  add_extensions_option(*sub, opts->extensions);
  add_policy_option(*sub, opts->lane_modules)
      ->description("TOML file with shared_gil_modules (as `isola compat --emit-policy` writes "
                    "it): a script whose import statements name a listed module (or a module "
                    "of a listed package) runs in interpreters that share the main GIL, as with "
                    "--shared-gil");
  add_log_level_option(*sub, opts->log_level);
  sub->add_flag("-q,--quiet", opts->quiet,
                "Report only failures (no per-interpreter ok lines, no summary)");
  sub->add_flag("--stats", opts->stats,
                "After the run, print the pool's counters on stderr: per interpreter its id, "
                "tasks done/failed/timed out, busy time, recycling, memory held and peak; the "
                "queue depth");
  add_memory_options(*sub, opts->memory);
  add_timeout_option(*sub, opts->timeout,
                     "Limit for each interpreter's whole life, from the script's start to the "
                     "end of the threads it left running: isola.TaskTimeout is raised in the "
                     "script (threads still running then get SystemExit) and that interpreter "
                     "counts as failed; code that ignores it is abandoned after 2 s more "
                     "(default: no limit)");
  sub->footer(
      "Runs script.py once in each of N interpreters, all at the same time (a pool of N\n"
      "interpreters, one task pinned to each), then reports each interpreter's outcome (ok, or\n"
      "the exception and its traceback) and the wall time.\n"
      "The script's output goes to stdout/stderr as usual; isola's report goes to stderr.\n"
      "As under `python script.py`, an interpreter's run ends when the script has ended and\n"
      "the non-daemon threads it started have finished. os._exit(), os.abort() and os.fork()\n"
      "raise RuntimeError (a script cannot end or fork the whole process); daemon threads are\n"
      "refused, as CPython refuses them in isolated interpreters.\n"
      "SIGINT (Ctrl-C) or SIGTERM raises KeyboardInterrupt in the scripts, reports how each\n"
      "one ended and exits 130 or 143; a second signal exits at once.\n"
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
      "  isola run -n 4 --memory-limit 512M script.py         MemoryError past 512 MiB, in\n"
      "                                                       that interpreter only\n"
      "\n"
      "Exit status: 0 all interpreters ok (sys.exit(0) counts as ok), 1 any failed (or timed\n"
      "out) or could not be created, 2 usage error (bad option, missing or unreadable script),\n"
      "130/143 stopped by SIGINT/SIGTERM.");
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
