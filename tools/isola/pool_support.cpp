// See pool_support.hpp.
#include "tools/isola/pool_support.hpp"

#include <isola/error.hpp>
#include <isola/log.hpp>
#include <isola/memory.hpp>
#include <isola/runtime.hpp>
#include <isola/value.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <vector>

#include <fmt/core.h>

namespace isola::cli {

std::string helper_module_init(std::string_view name, std::string_view source) {
  const std::string mod = value(std::string(name)).repr();
  return fmt::format(
      "import sys as _isola_sys, types as _isola_types\n"
      "_isola_m = _isola_types.ModuleType({0})\n"
      "exec(compile({1}, {2}, 'exec'), _isola_m.__dict__)\n"
      "_isola_sys.modules[{0}] = _isola_m\n"
      "del _isola_sys, _isola_types, _isola_m\n",
      mod, value(std::string(source)).repr(), value(std::string(helper_filename)).repr());
}

std::string strip_helper_frames(const std::string& traceback) {
  // A frame is a line '  File "name", line N, in f' followed by lines indented deeper (the
  // source line, carets). Drop the frames whose file is one of ours, runpy's or importlib's.
  std::istringstream in(traceback);
  std::string line;
  std::vector<std::string> kept;
  bool dropping = false;
  const std::string ours = fmt::format("  File \"{}\"", helper_filename);
  while (std::getline(in, line)) {
    if (line.starts_with("  File \"")) {
      dropping = line.starts_with(ours) || line.starts_with("  File \"<frozen runpy>\"") ||
                 line.starts_with("  File \"<frozen importlib.") ||
                 (line.find("/importlib/__init__.py\", line ") != std::string::npos &&
                  line.ends_with(", in import_module"));
    } else if (!line.starts_with("    ")) {
      dropping = false;
    }
    if (!dropping) kept.push_back(line);
  }
  // A header left with no frame under it goes too: a script's SyntaxError then reads as under
  // `python script.py` (its '  File "x.py", line N' is the error's location, not a frame).
  std::string out;
  for (std::size_t i = 0; i < kept.size(); ++i) {
    if (kept[i] == "Traceback (most recent call last):") {
      const bool frame_follows = i + 1 < kept.size() && kept[i + 1].starts_with("  File \"") &&
                                 kept[i + 1].find(", in ") != std::string::npos;
      if (!frame_follows) continue;
    }
    out += kept[i] + "\n";
  }
  if (!traceback.empty() && traceback.back() != '\n' && !out.empty()) out.pop_back();
  return out;
}

std::string describe(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const python_error& p) {
    return p.message().empty() ? p.type_name() : p.type_name() + ": " + p.message();
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown error";
  }
}

void print_pool_stats(const pool_stats& s, std::FILE* out) {
  fmt::print(out, "pool: {} interpreter{}, {} task{} submitted, {} finished{}, queue depth {}\n",
             s.interpreters.size(), s.interpreters.size() == 1 ? "" : "s", s.submitted,
             s.submitted == 1 ? "" : "s", s.completed,
             s.not_run > 0 ? fmt::format(" ({} without running)", s.not_run) : "",
             s.queue_depth);
  const bool memory = runtime::memory_accounting();
  fmt::print(out, "  {:>4}  {:>6}  {:>8}  {:>6}  {:>9}  {:>9}  {:>8}  {:>8}", "slot", "interp",
             "done", "failed", "timed out", "busy s", "recycled", "replaced");
  if (memory) fmt::print(out, "  {:>11}  {:>11}  {:>10}  {:>7}", "memory", "peak", "for memory", "refused");
  fmt::print(out, "\n");
  for (const auto& i : s.interpreters) {
    fmt::print(out, "  {:>4}  {:>6}  {:>8}  {:>6}  {:>9}  {:>9.3f}  {:>8}  {:>8}", i.index,
               i.interpreter_id, i.tasks_done, i.tasks_failed, i.tasks_timed_out,
               std::chrono::duration<double>(i.busy).count(), i.recycled, i.replaced_broken);
    if (memory) {
      fmt::print(out, "  {:>11}  {:>11}  {:>10}  {:>7}", format_size(i.memory_bytes),
                 format_size(i.memory_peak), i.recycled_for_memory, i.memory_refused);
    }
    fmt::print(out, "{}\n", i.dead ? "  dead (no interpreter could be created)" : "");
  }
  if (memory) {
    if (const std::size_t ended = runtime::memory_of_ended_interpreters(); ended > 0) {
      fmt::print(out,
                 "  ended interpreters still hold {} (CPython keeps an ended interpreter's "
                 "arenas when blocks of it are left; see docs/memory.md)\n",
                 format_size(ended));
    }
  }
}

void quiet_timeout_warnings(const std::string& log_level_option, bool has_timeout) {
  if (!has_timeout || !log_level_option.empty() || std::getenv("ISOLA_LOG_LEVEL") != nullptr) {
    return;
  }
  logger("isola.pool")->set_level(spdlog::level::err);
}

void exit_leaving_stuck_interpreters(int status) {
  fmt::print(stderr,
             "isola: an interpreter whose code did not stop when interrupted is still running "
             "(see the log above); exiting without finalizing Python\n");
  std::fflush(stdout);
  std::fflush(stderr);
  flush_logs();
  std::_Exit(status);
}

std::chrono::milliseconds timeout_ms(double seconds) {
  if (seconds <= 0) return std::chrono::milliseconds{0};
  return std::chrono::milliseconds{std::max<long long>(1, std::llround(seconds * 1000.0))};
}

}  // namespace isola::cli
