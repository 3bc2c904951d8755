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
#include "tools/isola/pool_support.hpp"
#include "tools/isola/signals.hpp"
#include "tools/isola/py/map_helper.py.hpp"

#include <isola/error.hpp>
#include <isola/pool.hpp>
#include <isola/runtime.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/core.h>
#include <unistd.h>

namespace isola::cli {
namespace {

namespace fs = std::filesystem;

constexpr unsigned max_interpreters = 1024;
constexpr std::size_t max_auto_chunk = 256;
constexpr std::size_t progress_threshold = 1000;  ///< more inputs than this show progress
constexpr auto progress_after = std::chrono::seconds(2);  ///< so does a run this long

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
  std::string log_level;
};

/// One non-blank input line.
struct input_item {
  std::size_t line = 0;  ///< 1-based line number in the input
  std::string text;      ///< without surrounding whitespace
  bool utf8 = true;
};

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    std::uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (std::size_t k = 1; k < len; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
      return false;
    }
    i += len;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r\n\f\v";
  auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

std::vector<input_item> read_inputs(std::istream& in) {
  std::vector<input_item> items;
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    auto t = trim(line);
    if (t.empty()) continue;
    input_item it;
    it.line = number;
    it.text.assign(t);
    it.utf8 = valid_utf8(it.text);
    items.push_back(std::move(it));
  }
  return items;
}

std::vector<input_item> load_inputs(const map_options& o) {
  if (o.input == "-") {
    if (isatty(STDIN_FILENO)) {
      fmt::print(stderr, "map: reading inputs from the terminal, one per line; end with Ctrl-D\n");
    }
    std::ios::sync_with_stdio(false);
    auto items = read_inputs(std::cin);
    if (std::cin.bad()) throw std::runtime_error("map: reading the input from stdin failed");
    return items;
  }
  std::error_code ec;
  auto st = fs::status(o.input, ec);
  if (!fs::exists(st)) {
    throw usage_error(fmt::format("map: cannot open input file '{}': no such file; give an "
                                  "existing file, or '-' (the default) for stdin",
                                  o.input));
  }
  if (fs::is_directory(st)) {
    throw usage_error(fmt::format("map: input '{}' is a directory; give a file", o.input));
  }
  errno = 0;
  std::ifstream in(o.input, std::ios::binary);
  if (!in) {
    const int e = errno;
    throw usage_error(fmt::format("map: cannot read input file '{}': {}", o.input,
                                  e != 0 ? std::strerror(e) : "unreadable"));
  }
  auto items = read_inputs(in);
  if (in.bad()) throw std::runtime_error(fmt::format("map: reading '{}' failed", o.input));
  return items;
}

bool identifier_path(std::string_view s) {
  if (s.empty()) return false;
  std::size_t start = 0;
  for (;;) {
    auto dot = s.find('.', start);
    auto part = s.substr(start, dot == std::string_view::npos ? s.npos : dot - start);
    if (part.empty()) return false;
    if (std::isdigit(static_cast<unsigned char>(part.front()))) return false;
    for (unsigned char c : part) {
      if (!(std::isalnum(c) || c == '_' || c >= 0x80)) return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

void check_target_format(const std::string& target) {
  auto colon = target.find(':');
  if (colon == std::string::npos || !identifier_path(target.substr(0, colon)) ||
      !identifier_path(target.substr(colon + 1))) {
    throw usage_error(fmt::format(
        "map: bad target '{}': expected module:function, e.g. mymodule:process or "
        "package.module:Class.method (the module is imported from the current directory or a "
        "--path folder)",
        target));
  }
}

constexpr std::size_t max_shown = 120;  ///< longer inputs are cut in messages

/// The start of the input for messages: not cut inside a UTF-8 character.
std::string head_of(const input_item& it, bool& cut) {
  cut = it.text.size() > max_shown;
  if (!cut) return it.text;
  std::string t = it.text.substr(0, max_shown);
  if (it.utf8) {
    while (!t.empty() && !valid_utf8(t)) t.pop_back();
  }
  return t;
}

/// The input as typed (a call's argument: "f(42)"), bytes that are not UTF-8 escaped.
std::string shown(const input_item& it) {
  bool cut = false;
  std::string t = head_of(it, cut);
  return (it.utf8 ? t : value(isola::bytes{t}).repr()) + (cut ? "..." : "");
}

/// The input quoted as a Python string (or bytes) literal, for "cannot parse '...'".
std::string quoted(const input_item& it) {
  bool cut = false;
  std::string t = head_of(it, cut);
  return (it.utf8 ? value(t).repr() : value(isola::bytes{t}).repr()) + (cut ? "..." : "");
}

/// Inputs [first, first + count) as the list of str (bytes when not UTF-8) a task gets.
isola::list lines_of(const std::vector<input_item>& items, std::size_t first, std::size_t count) {
  isola::list lines;
  lines.items.reserve(count);
  for (std::size_t i = first; i < first + count; ++i) {
    const auto& it = items[i];
    if (it.utf8) {
      lines.items.emplace_back(it.text);
    } else {
      lines.items.emplace_back(isola::bytes{it.text});  // parse() reports the bad byte
    }
  }
  return lines;
}

/// Progress on stderr, "mapped 12000/50000 (24%)", once the input is long (more than
/// progress_threshold inputs) or the run has taken progress_after: on a terminal one line
/// redrawn in place (at most 5 times a second), else a new line at most every 5 seconds.
class progress_line {
 public:
  progress_line(const map_options& o, std::size_t total)
      : enabled_(!o.quiet && !o.no_progress),
        long_(o.progress || total > progress_threshold),
        total_(total),
        tty_(isatty(STDERR_FILENO)),
        start_(clock::now()),
        last_(start_) {}

  void update(std::size_t done) {
    if (!enabled_) return;
    const auto now = clock::now();
    if (!long_ && now - start_ < progress_after) return;
    if (now - last_ < (tty_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(5000))) {
      return;
    }
    last_ = now;
    std::string text = fmt::format("mapped {}/{} ({}%)", done, total_,
                                   total_ == 0 ? 100 : done * 100 / total_);
    if (tty_) {
      fmt::print(stderr, "\r{}\033[K", text);
      on_screen_ = true;
    } else {
      fmt::print(stderr, "{}\n", text);
    }
    printed_ = true;
    std::fflush(stderr);
  }
  /// Before other stderr output: clears the line being redrawn.
  void clear() {
    if (on_screen_) {
      fmt::print(stderr, "\r\033[K");
      on_screen_ = false;
    }
  }
  /// Whether update() may print (the caller then polls for it while it waits).
  bool enabled() const { return enabled_; }
  /// Whether a progress line was printed: the run then ends with a summary line.
  bool printed() const { return printed_; }

 private:
  bool enabled_;
  bool long_;
  std::size_t total_;
  bool tty_;
  bool on_screen_ = false;
  bool printed_ = false;
  clock::time_point start_;
  clock::time_point last_;
};

/// Writes results to stdout in blocks, clearing the progress line first (stdout and stderr
/// may be the same terminal). The mapper flushes it whenever it is about to wait, and after
/// every chunk when stdout is a terminal, so results appear as they complete.
class output {
 public:
  explicit output(progress_line& progress) : progress_(progress), tty_(isatty(STDOUT_FILENO)) {}
  void line(std::string_view s) {
    buf_.append(s);
    buf_ += '\n';
    if (buf_.size() >= (1u << 16)) flush();
  }
  /// After a chunk's results: on a terminal they show at once.
  void chunk_done() {
    if (tty_) flush();
  }
  void flush() {
    if (!buf_.empty()) {
      progress_.clear();
      std::fwrite(buf_.data(), 1, buf_.size(), stdout);
      buf_.clear();
    }
    std::fflush(stdout);
  }

 private:
  progress_line& progress_;
  bool tty_;
  std::string buf_;
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
        progress_(o, items.size()),
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
        {value(o_.target), value(lines_of(items_, first, count)), value(o_.timeout)}, {}, {});
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

/// Imports the target's module in every interpreter and checks the function is there, so a
/// typo is reported once, up front, not once per input.
void check_target_everywhere(pool& p, const map_options& o) {
  std::vector<task_future> checks;
  for (std::size_t k = 0; k < p.size(); ++k) {
    task_options opts;
    opts.interpreter_index = static_cast<int>(k);
    checks.push_back(p.submit_with("_isola_map:check_target", {value(o.target)}, {}, opts));
  }
  std::string module = o.target.substr(0, o.target.find(':'));
  std::string function = o.target.substr(o.target.find(':') + 1);
  for (auto& c : checks) {
    value v = c.get();
    const auto& r = v.as_tuple().items;
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
  auto items = load_inputs(o);
  apply_log_level(o.log_level);
  quiet_timeout_warnings(o.log_level, o.timeout > 0);
  watch_stop_signals();

  const auto t0 = clock::now();
  runtime rt;
  pool_options po;
  po.size = o.interpreters;
  po.interpreter.name = "map";
  po.interpreter.allow_os_exit = o.allow_os_exit;
  // Threads a function leaves running get SystemExit when the interpreters end.
  po.interpreter.end_timeout = std::chrono::milliseconds(0);
  po.sys_path = sys_path;
  po.init_code = helper_module_init("_isola_map", embedded::map_helper);
  std::unique_ptr<pool> p;
  try {
    p = std::make_unique<pool>(po);
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
  check_target_everywhere(*p, o);
  if (int sig = signalled()) return signal_exit_status(sig);
  check_literals(*p, items);
  if (int sig = signalled()) return signal_exit_status(sig);

  const std::size_t chunk = o.chunk_size != 0 ? o.chunk_size : auto_chunk(items.size(), p->size());
  mapper m(*p, o, items, chunk);
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
  sub->add_flag("--stats", o->stats, "After the run, print the pool's counters on stderr");
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
