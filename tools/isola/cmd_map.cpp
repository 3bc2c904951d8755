// `isola map`: calls module:function on every input line (a Python literal) in a pool of N
// interpreters and prints the results' reprs in input order on stdout.
// - Before anything runs, the target is imported everywhere and every line is parsed once (in
//   the pool): a missing module or a line that is not a literal is a usage error, not a
//   failure halfway through.
// - Inputs go to the pool in chunks; a helper module in every interpreter parses each line
//   with ast.literal_eval (plus fast paths that give the same values), calls the function and
//   returns the reprs. A failing input is recorded there and the chunk goes on, so one bad
//   input never stops the others.
// - At most a window of chunks is in flight; results are printed as soon as the oldest chunk
//   is back (flushed whenever the command would wait, and after every chunk on a terminal),
//   so output streams while later chunks run.
// - --timeout S limits each input's call: the helper re-arms its task's deadline to S before
//   each call (isola._set_deadline), so the pool's watchdog interrupts an input S seconds
//   after it started (isola.TaskTimeout), and the chunk goes on with the next input.
// - SIGINT/SIGTERM: nothing more is dispatched, queued chunks are cancelled, running ones get
//   KeyboardInterrupt and hand back what they finished; every finished result is printed, the
//   inputs that did not run are named, and the command exits 130/143.
#include "tools/isola/cli.hpp"
#include "tools/isola/map_input.hpp"
#include "tools/isola/map_output.hpp"
#include "tools/isola/pool_support.hpp"
#include "tools/isola/signals.hpp"
#include "tools/isola/py/map_helper.py.hpp"

#include <isola/error.hpp>
#include <isola/pool.hpp>
#include <isola/runtime.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <fmt/core.h>

namespace isola::cli {
namespace {

namespace fs = std::filesystem;

constexpr unsigned max_interpreters = 1024;
constexpr std::size_t max_auto_chunk = 256;

struct map_options {
  unsigned interpreters = cores();
  std::string target;
  std::string input = "-";
  std::size_t chunk_size = 0;  ///< 0: automatic
  std::vector<std::string> paths;
  double timeout = 0;  ///< seconds per input; 0: none
  bool progress = false;     ///< --progress: from the start, whatever the input's length
  bool no_progress = false;  ///< --no-progress
  bool quiet = false;
  bool stats = false;
  bool allow_os_exit = false;
  memory_limits memory;
  extension_policy extensions = extension_policy::strict;
  std::vector<std::string> lane_modules;  ///< --policy FILE
  std::string log_level;
};

struct failure_report {
  std::size_t count = 0;
  std::vector<std::size_t> lines;  ///< first few failing line numbers, for the summary
  bool traceback_shown = false;
};

class mapper {
 public:
  mapper(pool& p, const map_options& o, const std::vector<input_item>& items, std::size_t chunk)
      : pool_(p), o_(o), items_(items), chunk_(chunk),
        progress_(!o.quiet && !o.no_progress, o.progress, items.size()),
        out_(progress_) {
    auto colon = o.target.find(':');
    function_ = o.target.substr(colon + 1);
  }

  /// Returns the number of failed inputs.
  std::size_t run() {
    const std::size_t total = items_.size();
    const std::size_t window = std::max<std::size_t>(4 * pool_.size(), 8);
    std::size_t next = 0;
    while (!inflight_.empty() || (next < total && !stopping())) {
      while (!stopping() && next < total && inflight_.size() < window) {
        std::size_t count = std::min(chunk_, total - next);
        inflight_.push_back(submit(next, count));
        next += count;
      }
      piece& front = inflight_.front();
      if (front.fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
        out_.flush();  // what is done is shown before we wait
        while (front.fut.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
          progress_.update(done_);
          if (stopping() && clock::now() >= give_up_) break;
        }
        if (stopping() && clock::now() >= give_up_ &&
            front.fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
          stuck_ = true;  // did not stop on its KeyboardInterrupt: leave it and the rest
          for (const auto& p : inflight_) not_run(p.first, p.count);
          inflight_.clear();
          break;
        }
      }
      value result;
      std::exception_ptr err;
      try {
        result = front.fut.get();
      } catch (...) {
        err = std::current_exception();
      }
      if (err) {
        if (stopping()) {  // cancelled before it ran, or its interrupt escaped the helper
          not_run(front.first, front.count);
          inflight_.pop_front();
        } else {
          chunk_failed(err);
        }
        continue;
      }
      const auto& parts = result.as_tuple().items;
      const auto& reprs = parts.at(0).as_list().items;
      const auto& fails = parts.at(1).as_list().items;
      const auto consumed = static_cast<std::size_t>(parts.at(2).as_int());
      std::size_t f = 0;
      for (std::size_t i = 0; i < consumed; ++i) {
        if (f < fails.size() && static_cast<std::size_t>(fails[f].as_tuple().items[0].as_int()) == i) {
          item_failed(items_[front.first + i], fails[f].as_tuple().items);
          ++f;
        } else {
          out_.line(reprs[i].as_str());
        }
        ++done_;
      }
      out_.chunk_done();
      if (consumed < front.count && stopping()) {
        not_run(front.first + consumed, front.count - consumed);
        inflight_.pop_front();
      } else if (consumed < front.count) {
        // The function itself raised KeyboardInterrupt (the command did not ask for it): that
        // input failed; the rest of the chunk goes on as a new one.
        report(items_[front.first + consumed],
               fmt::format("{}({}) raised KeyboardInterrupt", function_,
                           shown(items_[front.first + consumed])));
        ++done_;
        const std::size_t rest = front.count - consumed - 1;
        if (rest > 0) {
          front = submit(front.first + consumed + 1, rest);
        } else {
          inflight_.pop_front();
        }
      } else {
        inflight_.pop_front();
      }
      progress_.update(done_);
    }
    if (stopping() && next < total) not_run(next, total - next);
    out_.flush();
    progress_.clear();
    return failures_.count;
  }

  const failure_report& failures() const { return failures_; }
  bool progress_printed() const { return progress_.printed(); }
  /// The signal that stopped the run, or 0.
  int signal() const { return signal_; }
  /// Inputs that never ran (or did not finish) because a signal stopped the run.
  std::size_t not_run_count() const { return not_run_count_; }
  /// Their line ranges, the first few: "12-40, 97-200".
  std::string not_run_lines() const {
    std::string out;
    for (std::size_t k = 0; k < not_run_.size(); ++k) {
      if (k == 5) return out + ", ...";
      const std::size_t a = items_[not_run_[k].first].line;
      const std::size_t b = items_[not_run_[k].second - 1].line;
      out += (out.empty() ? "" : ", ") +
             (a == b ? std::to_string(a) : std::to_string(a) + "-" + std::to_string(b));
    }
    return out;
  }
  /// An input that did not stop on its KeyboardInterrupt is still running.
  bool stuck() const { return stuck_; }

 private:
  struct piece {
    std::size_t first = 0, count = 0;
    task_future fut;
  };

  /// True once a signal asked the run to stop; the first call that sees it interrupts the
  /// chunks in flight (queued ones are cancelled, running ones get KeyboardInterrupt).
  bool stopping() {
    if (signal_ != 0) return true;
    signal_ = stop_signal();
    if (signal_ == 0) return false;
    out_.flush();
    progress_.clear();
    fmt::print(stderr, "map: {}: stopping (finished results are kept)\n", signal_name(signal_));
    for (auto& p : inflight_) p.fut.interrupt();
    give_up_ = clock::now() + std::chrono::seconds(2);
    return true;
  }

  void not_run(std::size_t first, std::size_t count) {
    if (count == 0) return;
    not_run_count_ += count;
    if (!not_run_.empty() && not_run_.back().second == first) {
      not_run_.back().second = first + count;  // adjoins the last range
    } else {
      not_run_.emplace_back(first, first + count);
    }
  }

  piece submit(std::size_t first, std::size_t count) {
    auto fut = pool_.submit_with(
        "_isola_map:map_chunk",
        {value(o_.target), value(lines_of(items_, first, count)), value(o_.timeout)}, {},
        chunk_options_);
    return piece{first, count, std::move(fut)};
  }

  /// The chunk's task failed as a whole (an input stuck in C code past its timeout, a timeout
  /// that landed between inputs): run its inputs again one task each, so the failure is
  /// pinned on one input.
  void chunk_failed(const std::exception_ptr& err) {
    piece front = std::move(inflight_.front());
    inflight_.pop_front();
    if (front.count > 1) {
      for (std::size_t k = front.count; k-- > 0;) inflight_.push_front(submit(front.first + k, 1));
      return;
    }
    std::string why;
    try {
      std::rethrow_exception(err);
    } catch (const error& e) {
      why = e.code() == errc::timeout
                ? fmt::format("timed out (limit {:g} s) and did not stop on its "
                              "isola.TaskTimeout (it caught it, or is stuck in C code); its "
                              "interpreter was abandoned",
                              o_.timeout)
                : e.what();
    } catch (...) {
      why = describe(err);
    }
    report(items_[front.first], fmt::format("{}({}) failed: {}", function_, shown(items_[front.first]), why));
    ++done_;
  }

  void item_failed(const input_item& it, const std::vector<value>& f) {
    const std::string& phase = f[1].as_str();
    const std::string& type = f[2].as_str();
    const std::string& message = f[3].as_str();
    const std::string& tb = f[4].as_str();
    std::string what = message.empty() ? type : type + ": " + message;
    if (phase == "parse") {
      report(it, fmt::format("cannot parse {} as a Python literal: {}", quoted(it), what));
    } else if (phase == "timeout") {
      report(it, fmt::format("{}({}) timed out: {}, over the --timeout of {:g} s", function_,
                             shown(it), message, o_.timeout));
    } else {
      report(it, fmt::format("{}({}) raised {}", function_, shown(it), what));
      if (!tb.empty() && !failures_.traceback_shown) {
        failures_.traceback_shown = true;
        fmt::print(stderr, "{}", strip_helper_frames(tb));
      }
    }
  }

  void report(const input_item& it, const std::string& text) {
    out_.flush();  // results before this line come first
    progress_.clear();
    fmt::print(stderr, "map: line {}: {}\n", it.line, text);
    ++failures_.count;
    if (failures_.lines.size() < 10) failures_.lines.push_back(it.line);
  }

  pool& pool_;
  const map_options& o_;
  const std::vector<input_item>& items_;
  std::size_t chunk_;
 public:
  /// Where the chunks run: the shared-GIL lane when the target's module needs it.
  task_options chunk_options_;
 private:
  std::string function_;
  std::deque<piece> inflight_;
  std::size_t done_ = 0;
  progress_line progress_;
  output out_;  // after progress_, which it refers to
  failure_report failures_;
  int signal_ = 0;
  clock::time_point give_up_{};
  bool stuck_ = false;
  std::size_t not_run_count_ = 0;
  std::vector<std::pair<std::size_t, std::size_t>> not_run_;  ///< input index ranges [a, b)
};

std::vector<std::string> sys_path_for(const map_options& o) {
  std::vector<std::string> out;
  for (const auto& p : o.paths) {
    std::error_code ec;
    if (!fs::is_directory(p, ec)) {
      throw usage_error(fmt::format("map: --path '{}' is not a directory", p));
    }
    out.push_back(fs::absolute(p, ec).lexically_normal().string());
  }
  std::error_code ec;
  out.push_back(fs::current_path(ec).string());
  return out;
}

// Whether the pool sends `module`'s tasks to its shared-GIL lane (--policy).
bool routed_to_lane(const pool& p, std::string module) {
  const auto listed = p.lane_modules();
  for (;;) {
    if (std::find(listed.begin(), listed.end(), module) != listed.end()) return true;
    const auto dot = module.rfind('.');
    if (dot == std::string::npos) return false;
    module.resize(dot);
  }
}

/// Imports the target's module in every interpreter and checks the function is there, so a
/// typo is reported once, up front, not once per input.
/// Returns whether the function runs in the shared-GIL lane (its module is listed by --policy,
/// or --extensions auto and own-GIL interpreters refuse it).
bool check_target_everywhere(pool& p, const map_options& o) {
  std::string module = o.target.substr(0, o.target.find(':'));
  std::string function = o.target.substr(o.target.find(':') + 1);
  task_options in_lane;
  in_lane.lane = task_options::lane_choice::shared_gil;
  std::vector<task_future> checks;
  bool lane = routed_to_lane(p, module);
  if (lane) {
    checks.push_back(p.submit_with("_isola_map:check_target", {value(o.target)}, {}, in_lane));
  } else {
    for (std::size_t k = 0; k < p.size(); ++k) {
      task_options opts;
      opts.interpreter_index = static_cast<int>(k);
      opts.lane = task_options::lane_choice::own_gil;
      checks.push_back(p.submit_with("_isola_map:check_target", {value(o.target)}, {}, opts));
    }
  }
  for (auto& c : checks) {
    value v = c.get();
    auto r = v.as_tuple().items;
    if (r[0].as_str() == "import_failed" && p.lane_size() > 0 &&
        o.extensions == extension_policy::automatic &&
        r[1].as_str().find("cannot be loaded in an own-GIL interpreter") != std::string::npos) {
      // --extensions auto: the tasks will run in the shared-GIL lane; check it there.
      value again = p.submit_with("_isola_map:check_target", {value(o.target)}, {}, in_lane).get();
      r = again.as_tuple().items;
      lane = true;
    }
    const std::string& problem = r[0].as_str();
    const std::string& message = r[1].as_str();
    if (problem == "ok") continue;
    if (problem == "not_found") {
      std::string where;
      for (const auto& dir : sys_path_for(o)) where += (where.empty() ? "" : ", ") + dir;
      throw usage_error(fmt::format(
          "map: cannot import module '{}' ({}); looked in {} and the standard library; add "
          "the module's folder with --path DIR",
          module, message, where));
    }
    if (problem == "no_attribute") {
      throw usage_error(fmt::format("map: module '{}' has no function '{}' ({})", module,
                                    function, message));
    }
    if (problem == "not_callable") {
      throw usage_error(fmt::format("map: '{}' cannot be called: {}", o.target, message));
    }
    // The module was found but raised while being imported.
    std::string tb = strip_helper_frames(r[2].as_str());
    if (!tb.empty()) fmt::print(stderr, "{}", tb);
    throw std::runtime_error(fmt::format("map: importing module '{}' failed: {}", module, message));
  }
  return lane;
}

/// Parses every input in the pool before the function is called on any of them: an input that
/// is not a Python literal is a usage error (exit 2, nothing run), named with its line.
void check_literals(pool& p, const std::vector<input_item>& items) {
  constexpr std::size_t max_named = 10;
  const std::size_t total = items.size();
  const std::size_t chunk = std::clamp<std::size_t>(total / (p.size() * 4), 64, 4096);
  const std::size_t window = 4 * p.size();
  std::deque<std::pair<std::size_t, task_future>> inflight;
  std::vector<std::pair<std::size_t, std::string>> bad;  // (index, what is wrong)
  std::size_t bad_count = 0;
  std::size_t next = 0;
  while (next < total || !inflight.empty()) {
    while (next < total && inflight.size() < window) {
      const std::size_t count = std::min(chunk, total - next);
      inflight.emplace_back(next, p.submit("_isola_map:check_lines", lines_of(items, next, count)));
      next += count;
    }
    auto [first, fut] = std::move(inflight.front());
    inflight.pop_front();
    const value found = fut.get();
    for (const auto& f : found.as_list().items) {
      const auto& t = f.as_tuple().items;
      ++bad_count;
      if (bad.size() < max_named) {
        const std::string& type = t[1].as_str();
        const std::string& message = t[2].as_str();
        bad.emplace_back(first + static_cast<std::size_t>(t[0].as_int()),
                         message.empty() ? type : type + ": " + message);
      }
    }
  }
  if (bad_count == 0) return;
  std::string lines;
  for (const auto& [index, what] : bad) {
    const input_item& it = items[index];
    fmt::print(stderr, "map: line {}: cannot parse {} as a Python literal: {}\n", it.line,
               quoted(it), what);
    lines += (lines.empty() ? "" : ", ") + std::to_string(it.line);
  }
  if (bad_count > bad.size()) {
    fmt::print(stderr, "map: ... and {} more\n", bad_count - bad.size());
    lines += ", ...";
  }
  throw usage_error(fmt::format(
      "map: {} of {} input lines {} (line{} {}); nothing was run. Each line must be one "
      "literal: a number, a quoted string ('text'), True, False, None, or a tuple, list, dict "
      "or set of those; fix or remove {}",
      bad_count, total, bad_count == 1 ? "is not a Python literal" : "are not Python literals",
      bad_count == 1 ? "" : "s", lines, bad_count == 1 ? "that line" : "those lines"));
}

std::size_t auto_chunk(std::size_t total, std::size_t n) {
  // About 8 chunks per interpreter keeps them all busy to the end; 256 inputs per chunk are
  // enough to make a task's own cost negligible.
  std::size_t c = total / (n * 8);
  return std::clamp<std::size_t>(c, 1, max_auto_chunk);
}

int run_map(const map_options& o) {
  check_target_format(o.target);
  auto sys_path = sys_path_for(o);
  auto items = load_inputs(o.input);
  apply_log_level(o.log_level);
  quiet_timeout_warnings(o.log_level, o.timeout > 0);
  watch_stop_signals();

  const auto t0 = clock::now();
  runtime rt;
  pool_options po;
  po.size = o.interpreters;
  po.interpreter.name = "map";
  po.interpreter.allow_os_exit = o.allow_os_exit;
  po.interpreter.memory_limit = o.memory.hard;
  po.max_memory_per_interpreter = o.memory.soft;
  po.extensions = o.extensions;
  po.shared_gil_modules = o.lane_modules;
  // Threads a function leaves running get SystemExit when the interpreters end.
  po.interpreter.end_timeout = std::chrono::milliseconds(0);
  po.sys_path = sys_path;
  po.init_code = helper_module_init("_isola_map", embedded::map_helper);
  std::unique_ptr<pool> p;
  try {
    p = std::make_unique<pool>(po);
  } catch (const std::invalid_argument& e) {  // a memory limit below what one needs
    throw usage_error(fmt::format("map: {}", e.what()));
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("map: could not create {} interpreter{}: {}",
                                         o.interpreters, o.interpreters == 1 ? "" : "s",
                                         e.what()));
  }
  // Before any input ran, a signal ends the command after the step it arrived in.
  auto signalled = [&]() -> int {
    const int sig = stop_signal();
    if (sig != 0) {
      fmt::print(stderr, "map: interrupted by {} before any input ran\n", signal_name(sig));
    }
    return sig;
  };
  if (int sig = signalled()) return signal_exit_status(sig);
  const bool in_lane = check_target_everywhere(*p, o);
  if (int sig = signalled()) return signal_exit_status(sig);
  check_literals(*p, items);
  if (int sig = signalled()) return signal_exit_status(sig);

  const std::size_t chunk = o.chunk_size != 0 ? o.chunk_size : auto_chunk(items.size(), p->size());
  mapper m(*p, o, items, chunk);
  if (in_lane) m.chunk_options_.lane = task_options::lane_choice::shared_gil;
  const std::size_t failed = m.run();
  const double took = seconds_since(t0);
  const pool_stats stats = p->stats();
  const int sig = m.signal();
  const std::size_t finished = items.size() - m.not_run_count();

  if (!m.stuck()) {
    // Output the function printed, before isola's summary.
    std::vector<task_future> flushes;
    for (std::size_t k = 0; k < p->size(); ++k) {
      task_options opts;
      opts.interpreter_index = static_cast<int>(k);
      flushes.push_back(p->submit_with("_isola_map:flush", {}, {}, opts));
    }
    for (auto& f : flushes) {
      try {
        f.get();
      } catch (const std::exception&) {
      }
    }
  }
  std::fflush(stdout);

  // A summary ends a long input (the progress --help promises), a run that showed progress,
  // had failures or was stopped.
  if (!o.quiet && (failed > 0 || sig != 0 || o.progress || m.progress_printed() ||
                   items.size() > progress_threshold)) {
    std::string lines;
    for (auto l : m.failures().lines) lines += (lines.empty() ? "" : ", ") + std::to_string(l);
    if (failed > m.failures().lines.size()) lines += ", ...";
    std::string rate;
    if (items.size() >= progress_threshold && took > 0 && sig == 0) {
      rate = fmt::format("{:.0f} inputs/s; ", static_cast<double>(items.size()) / took);
    }
    std::string stopped;
    if (sig != 0) {
      stopped = fmt::format("interrupted by {}: {} of ", signal_name(sig), finished);
    }
    std::string not_run;
    if (m.not_run_count() > 0) {
      not_run = fmt::format(", {} not run (line{} {})", m.not_run_count(),
                            m.not_run_count() == 1 ? "" : "s", m.not_run_lines());
    }
    fmt::print(stderr, "map: {}{} input{}{}, {} ok, {} failed{}{} in {:.2f} s ({}{} "
               "interpreter{}, chunks of {})\n",
               stopped, items.size(), items.size() == 1 ? "" : "s", sig != 0 ? " finished" : "",
               finished - failed, failed,
               failed > 0 ? " (line" + std::string(failed == 1 ? " " : "s ") + lines + ")" : "",
               not_run, took, rate, p->size(), p->size() == 1 ? "" : "s", chunk);
  }
  if (o.stats) print_pool_stats(stats);
  const int status = sig != 0 ? signal_exit_status(sig) : failed > 0 ? exit_failed : exit_ok;
  if (m.stuck()) {
    fmt::print(stderr, "map: an input did not stop on its KeyboardInterrupt (stuck in C code?)\n");
    exit_leaving_stuck_interpreters(status);
  }
  p->shutdown();  // bounded: interpreters that do not end in time are abandoned
  p.reset();
  if (rt.abandoned_interpreters() > 0) exit_leaving_stuck_interpreters(status);
  return status;
}

}  // namespace

void add_map_command(CLI::App& app, dispatch& d) {
  auto o = std::make_shared<map_options>();
  auto* sub = app.add_subcommand(
      "map", "Call module:function on every input line (a Python literal) in N interpreters "
             "and print the results in order");
  formatter_of(app).usage(sub, "module:function [OPTIONS]");
  sub->add_option("target", o->target,
                  "The function to call, as module:function (package.module:Class.method works "
                  "too)")
      ->required()
      ->type_name("module:function");
  sub->add_option("-n,--interpreters", o->interpreters,
                  fmt::format("Number of interpreters (default: cores, here {})", cores()))
      ->check(CLI::Range(1u, max_interpreters))
      ->type_name("N");
  sub->add_option("-i,--input", o->input,
                  "File with one input per line, or '-' for stdin (the default)")
      ->type_name("FILE|-");
  sub->add_option("-c,--chunk-size", o->chunk_size,
                  fmt::format("Inputs per task (default: automatic, at most {})", max_auto_chunk))
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
      ->type_name("K");
  // One folder per --path (repeat it for more), so that the target after it stays the target.
  sub->add_option("-p,--path", o->paths,
                  "Folder to put first on sys.path of every interpreter, unless it is there "
                  "already (repeat --path for more); the current directory always is")
      ->type_name("DIR")
      ->allow_extra_args(false);
  add_timeout_option(*sub, o->timeout,
                     "Limit for each input's call: isola.TaskTimeout is raised in a call that "
                     "runs longer, and that input fails with TimeoutError (default: no limit)");
  sub->add_flag("--allow-os-exit", o->allow_os_exit,
                "Let os._exit() and os.abort() end the whole process, as in CPython (by default "
                "they raise RuntimeError: one input must not end the run unreported)");
  sub->add_flag("--progress", o->progress,
                fmt::format("Show progress from the start, even for {} inputs or fewer",
                            progress_threshold));
  sub->add_flag("--no-progress", o->no_progress, "Never show progress")
      ->excludes(sub->get_option("--progress"));
  sub->add_flag("-q,--quiet", o->quiet, "No progress and no summary; failures are still named");
  add_memory_options(*sub, o->memory);
  add_extensions_option(*sub, o->extensions);
  add_policy_option(*sub, o->lane_modules);
  sub->add_flag("--stats", o->stats,
                "After the run, print the pool's counters on stderr, with each interpreter's "
                "memory and peak");
  add_log_level_option(*sub, o->log_level);
  sub->footer(
      "Input: one Python literal per line (42, -1.5, 'text', [1, 2], {'k': (1, None)}, True),\n"
      "parsed as ast.literal_eval parses it (no code runs), inside the interpreters. Blank lines\n"
      "are skipped; line numbers in messages still count them. Every line is parsed before the\n"
      "function is called on any: a line that is not a literal is a usage error (its number, the\n"
      "line and the parse error are named; exit 2, nothing runs).\n"
      "\n"
      "Output: repr() of each result on stdout, one per line, in input order. An input whose\n"
      "call raises (or passes --timeout) is named on stderr (line number, input, exception type\n"
      "and message; the first one's traceback too) and prints nothing on stdout, so stdout holds\n"
      "the results of the inputs that succeeded, in order; the other inputs go on.\n"
      "\n"
      "Progress: \"mapped 12000/50000 (24%)\" on stderr once there are more than 1000 inputs or\n"
      "the run has taken 2 s; redrawn in place on a terminal, else a line every 5 s at most.\n"
      "A summary line ends a run of more than 1000 inputs, and one that showed progress, had\n"
      "failures or was stopped.\n"
      "\n"
      "The module is imported in every interpreter from the current directory or a --path\n"
      "folder; it must support subinterpreters (pure-Python modules do). The function sees an\n"
      "empty stdin (the inputs are this command's), and os._exit(), os.abort() and os.fork()\n"
      "raise RuntimeError in it.\n"
      "\n"
      "SIGINT (Ctrl-C) or SIGTERM stops the run: nothing more starts, the running calls get\n"
      "KeyboardInterrupt, every finished result is printed, the summary names the inputs that\n"
      "did not run, and the exit status is 130 or 143; a second signal exits at once.\n"
      "\n"
      "Examples:\n"
      "  seq 1 100000 | isola map mymod:square              one result per line\n"
      "  isola map -n 4 --path lib tasks:score --input items.txt --timeout 5\n"
      "\n"
      "Exit status: 0 every input ok, 1 any input failed (or the module raised on import),\n"
      "2 usage error (bad target, missing input file, module or function not found, a line that\n"
      "is not a Python literal), 130/143 stopped by SIGINT/SIGTERM.");
  sub->callback([o, &d] { d.chosen = [o] { return run_map(*o); }; });
}

}  // namespace isola::cli
