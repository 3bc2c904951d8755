// See report.hpp: from a child's report lines and exit to an outcome, and the three outputs.
#include "tools/compat/report.hpp"

#include <isola/version.hpp>

#include <boost/json.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace isola::cli::compat {

const char* outcome_name(outcome o) noexcept {
  switch (o) {
    case outcome::ok: return "ok";
    case outcome::ok_with_workaround: return "ok with workaround";
    case outcome::not_found: return "not found";
    case outcome::refused: return "refused";
    case outcome::fails: return "fails";
    case outcome::hangs: return "hangs";
    case outcome::crashes: return "crashes";
  }
  return "?";
}

namespace {

constexpr outcome all_outcomes[] = {outcome::ok,      outcome::ok_with_workaround,
                                    outcome::not_found, outcome::refused,
                                    outcome::fails,   outcome::hangs,
                                    outcome::crashes};

std::string str_at(const boost::json::array& a, std::size_t i) {
  if (i >= a.size() || !a[i].is_string()) return {};
  return std::string(a[i].get_string());
}

/// What a crashed child's output says about the crash, on one line, or "": glibc's and
/// CPython's fatal messages, and from faulthandler's dump (see enable_faulthandler) whether the
/// thread was collecting garbage and its innermost Python frame. faulthandler's own line for
/// the signal ("Fatal Python error: Segmentation fault") adds nothing to the signal's name.
std::string crash_summary(const std::string& output) {
  static constexpr const char* markers[] = {
      "Fatal Python error", "double free", "free(): ", "malloc(): ", "corrupted",
      "Assertion",          "AddressSanitizer", "terminate called", "stack smashing"};
  static constexpr const char* signal_lines[] = {
      "Fatal Python error: Segmentation fault", "Fatal Python error: Aborted",
      "Fatal Python error: Bus error", "Fatal Python error: Floating-point exception",
      "Fatal Python error: Illegal instruction"};
  std::vector<std::string> parts;
  bool in_dump = false, frame_seen = false;
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    std::string text = line.substr(std::min(line.size(), line.find_first_not_of(" \t")));
    if (text.starts_with("Current thread ") || text.starts_with("Thread 0x")) {
      in_dump = true;
      continue;
    }
    if (in_dump && text == "Garbage-collecting") {
      parts.push_back("while collecting garbage");
      continue;
    }
    if (in_dump && !frame_seen && text.starts_with("File \"")) {
      // File "path", line N in function; innermost first. The import system's frames say
      // only that an extension's init was running; the probe's own code is "<string>".
      auto close = text.find('"', 6);
      auto ln = text.find(", line ");
      if (close == std::string::npos || ln == std::string::npos) continue;
      const std::string file = text.substr(6, close - 6);
      if (file.starts_with("<frozen importlib")) {
        for (const char* init : {"create_module", "exec_module"}) {
          if (text.ends_with(std::string(" in ") + init)) {
            parts.push_back(fmt::format("in the module's init ({})", init));
            frame_seen = true;
          }
        }
        continue;
      }
      frame_seen = true;
      if (file != "<string>") parts.push_back(fmt::format("in {}:{}", file, text.substr(ln + 7)));
      continue;
    }
    if (text.empty()) in_dump = false;
    bool is_signal_line = std::any_of(std::begin(signal_lines), std::end(signal_lines),
                                      [&](const char* s) { return text.starts_with(s); });
    if (is_signal_line) continue;
    for (const char* m : markers) {
      if (text.find(m) == std::string::npos) continue;
      if (text.size() > 200) text = text.substr(0, 197) + "...";
      if (std::find(parts.begin(), parts.end(), text) == parts.end()) parts.push_back(text);
      break;
    }
  }
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

/// The end of a child's output, at most about 2000 characters, from a line start.
std::string tail_of(const std::string& output) {
  if (output.size() <= 2000) return output;
  std::size_t at = output.find('\n', output.size() - 2000);
  return at == std::string::npos ? output.substr(output.size() - 2000) : output.substr(at + 1);
}

/// "TYPE: message" on one line, at most 300 characters.
std::string exception_text(const std::string& type, const std::string& message) {
  std::string text = type.empty() ? message : message.empty() ? type : type + ": " + message;
  std::replace(text.begin(), text.end(), '\n', ' ');
  if (text.size() > 300) text = text.substr(0, 297) + "...";
  return text;
}

int rank(outcome o) { return static_cast<int>(o); }

/// Steps in the order a child takes them.
int step_index(const std::string& step) {
  static constexpr const char* steps[] = {"start", "create", "import", "use", "teardown", "exit"};
  for (int i = 0; i < 6; ++i) {
    if (step == steps[i]) return i;
  }
  return 6;
}

/// Whether run a is worse than run b: a worse outcome, or the same one at an earlier step.
bool worse(const order_result& a, const order_result& b) {
  if (a.result != b.result) return rank(a.result) > rank(b.result);
  return step_index(a.where) < step_index(b.where);
}

/// The outcome of the import step, from its per-interpreter answers, into r (result, detail,
/// refused, workarounds).
void read_import(const boost::json::array& interps, order_result& r) {
  outcome worst = outcome::ok;
  std::string detail;
  int count = 0;  // interpreters with the worst outcome
  for (const auto& v : interps) {
    if (!v.is_array()) continue;
    const auto& a = v.get_array();
    const std::string what = str_at(a, 0);
    outcome o = outcome::ok;
    std::string d;
    if (what == "refused") {
      o = outcome::refused;
      d = str_at(a, 2);
      r.refused = str_at(a, 3);
    } else if (what == "not found") {
      o = outcome::not_found;
      d = exception_text(str_at(a, 1), str_at(a, 2));
    } else if (what == "raised") {
      o = outcome::fails;
      d = exception_text(str_at(a, 1), str_at(a, 2));
      if (!str_at(a, 3).empty()) d += " (" + str_at(a, 3) + ")";
    } else if (what == "blocked") {
      o = outcome::ok_with_workaround;
      const std::string blocked = str_at(a, 3);
      if (std::find(r.workarounds.begin(), r.workarounds.end(), blocked) == r.workarounds.end()) {
        r.workarounds.push_back(blocked);
      }
    }
    if (rank(o) > rank(worst)) {
      worst = o;
      detail = d;
      count = 1;
    } else if (o == worst) {
      ++count;
    }
  }
  if (worst != outcome::ok && worst != outcome::ok_with_workaround &&
      count < static_cast<int>(interps.size())) {
    detail += fmt::format(" (in {} of {} interpreters)", count, interps.size());
  }
  r.result = worst;
  r.detail = detail;
  if (worst == outcome::fails) r.where = "import";
}

/// The use step's answers into r.
void read_use(const boost::json::object& end, order_result& r) {
  if (const auto* interps = end.if_contains("interpreters"); interps && interps->is_array()) {
    bool all_ran = true;
    for (const auto& v : interps->get_array()) {
      if (!v.is_array()) continue;
      const auto& a = v.get_array();
      const std::string what = str_at(a, 0);
      if (what == "raised") {
        all_ran = false;
        if (rank(outcome::fails) > rank(r.result)) {
          r.result = outcome::fails;
          r.where = "use";
          r.detail = exception_text(str_at(a, 2), str_at(a, 3));
          if (!str_at(a, 4).empty()) r.detail += " (" + str_at(a, 4) + ")";
        }
      } else if (what == "ok") {
        r.exercise = str_at(a, 1);
      }
    }
    r.used = all_ran;
  }
  if (const auto* lists = end.if_contains("workarounds"); lists && lists->is_array()) {
    for (const auto& v : lists->get_array()) {
      if (!v.is_array()) continue;
      for (const auto& w : v.get_array()) {
        if (!w.is_string()) continue;
        std::string name(w.get_string());
        if (std::find(r.workarounds.begin(), r.workarounds.end(), name) == r.workarounds.end()) {
          r.workarounds.push_back(name);
        }
      }
    }
  }
  if (r.result == outcome::ok && !r.workarounds.empty()) r.result = outcome::ok_with_workaround;
}

}  // namespace

order_result classify(close_order order, const std::vector<std::string>& report_lines,
                      const process_result& p, const std::string& output) {
  order_result r;
  r.order = order;
  r.seconds = p.seconds;
  std::vector<std::string> open;  // steps begun and not ended, in order
  std::map<std::string, boost::json::object> ends;
  std::string error, error_step;
  for (const auto& text : report_lines) {
    boost::system::error_code ec;
    auto v = boost::json::parse(text, ec);
    if (ec || !v.is_object()) continue;  // a line cut short by a kill
    const auto& o = v.get_object();
    if (const auto* b = o.if_contains("begin"); b && b->is_string()) {
      open.emplace_back(b->get_string());
    } else if (const auto* e = o.if_contains("end"); e && e->is_string()) {
      std::string step(e->get_string());
      std::erase(open, step);
      ends[step] = o;
    } else if (const auto* err = o.if_contains("error"); err && err->is_string()) {
      error = err->get_string();
      if (const auto* s = o.if_contains("step"); s && s->is_string()) error_step = s->get_string();
    }
  }

  // What the module did, as far as the child got.
  if (auto it = ends.find("import"); it != ends.end()) {
    const auto* interps = it->second.if_contains("interpreters");
    if (interps != nullptr && interps->is_array()) read_import(interps->get_array(), r);
  }
  if (auto it = ends.find("use"); it != ends.end()) read_use(it->second, r);
  if (auto it = ends.find("teardown"); it != ends.end()) {
    const auto* abandoned = it->second.if_contains("abandoned");
    if (abandoned && abandoned->is_number() && abandoned->to_number<double>() > 0) {
      r.result = outcome::hangs;
      r.where = "teardown";
      r.detail = "an interpreter did not end (isola abandoned it after its end timeout)";
    }
  }

  // How the process ended overrides it: a crash or a hang is worse than anything it reported.
  const std::string step = open.empty() ? "exit" : open.back();
  std::string before;  // what the import did, when a crash or hang followed it
  if (r.result == outcome::refused) {
    before = "after the import was refused";
  } else if (r.result == outcome::not_found) {
    before = "after the import found no such module";
  } else if (r.result == outcome::fails) {
    before = fmt::format("after the {} failed: {}", r.where, r.detail);
  }
  auto with_before = [&](std::string d) {
    if (before.empty()) return d;
    return d.empty() ? before : d + "; " + before;
  };
  if (p.timed_out) {
    r.result = outcome::hangs;
    r.where = step;
    r.detail = with_before(fmt::format("still running after {:.0f} s; killed", p.seconds));
    r.output = tail_of(output);
  } else if (p.signal != 0) {
    r.result = outcome::crashes;
    r.where = step;
    r.signal = signal_label(p.signal);
    r.detail = with_before(crash_summary(output));
    r.output = tail_of(output);
  } else if (!error.empty()) {
    r.result = outcome::fails;
    r.where = error_step;
    r.detail = "isola: " + error;
    r.output = tail_of(output);
  } else if (p.exit_code != 0 || !open.empty()) {
    r.result = outcome::crashes;
    r.where = step;
    r.exit_status = p.exit_code;
    r.detail = with_before(crash_summary(output));
    r.output = tail_of(output);
  }
  return r;
}

std::string outcome_label(const module_result& m) {
  switch (m.result) {
    case outcome::fails:
    case outcome::hangs:
    case outcome::crashes:
      return fmt::format("{} at {}", outcome_name(m.result), m.where);
    default:
      return outcome_name(m.result);
  }
}

std::string outcome_label(const order_result& r) {
  switch (r.result) {
    case outcome::fails:
    case outcome::hangs:
    case outcome::crashes:
      return fmt::format("{} at {}", outcome_name(r.result), r.where);
    default:
      return outcome_name(r.result);
  }
}

std::string known_bug_of_this_python() {
  const std::string text = unfixed_python_bug();
  auto at = text.find("gh-");
  if (at == std::string::npos) return {};
  auto end = text.find_first_not_of("0123456789", at + 3);
  std::string bug = text.substr(at, end == std::string::npos ? std::string::npos : end - at);
  if (auto fixed = text.find("fixed in "); fixed != std::string::npos) {
    auto v_end = text.find_first_not_of("0123456789.", fixed + 9);
    std::string version = text.substr(fixed + 9, v_end == std::string::npos ? std::string::npos
                                                                            : v_end - fixed - 9);
    while (!version.empty() && version.back() == '.') version.pop_back();
    if (!version.empty()) bug += ", fixed in " + version;
  }
  return bug;
}

namespace {

bool same(const order_result& a, const order_result& b) {
  return a.result == b.result && a.where == b.where && a.signal == b.signal &&
         a.exit_status == b.exit_status;
}

}  // namespace

module_result combine(const std::string& module, std::vector<order_result> runs) {
  module_result m;
  m.module = module;
  m.runs = std::move(runs);
  if (m.runs.empty()) return m;
  const order_result* worst = &m.runs.front();
  for (const auto& r : m.runs) {
    if (worse(r, *worst)) worst = &r;
    if (!r.exercise.empty() && m.exercise.empty()) m.exercise = r.exercise;
    for (const auto& w : r.workarounds) {
      if (std::find(m.workarounds.begin(), m.workarounds.end(), w) == m.workarounds.end()) {
        m.workarounds.push_back(w);
      }
    }
  }
  m.result = worst->result;
  m.where = worst->where;
  m.signal = worst->signal;
  m.detail = worst->detail;
  bool all_same = std::all_of(m.runs.begin(), m.runs.end(),
                              [&](const order_result& r) { return same(r, *worst); });
  m.orders = all_same ? "both" : order_name(worst->order);
  if (m.workarounds.empty() && m.result == outcome::ok_with_workaround) m.result = outcome::ok;
  return m;
}

std::string reason_from_inspection(bool refused, const std::string& inspect_line) {
  boost::system::error_code ec;
  auto v = boost::json::parse(inspect_line, ec);
  if (ec || !v.is_object()) return {};
  const auto& o = v.get_object();
  auto field = [&](const char* key) -> std::string {
    const auto* f = o.if_contains(key);
    return f && f->is_string() ? std::string(f->get_string()) : std::string();
  };
  if (field("main_import") == "raised") {
    return "fails in the main interpreter too: " +
           exception_text(field("type"), field("message"));
  }
  if (field("main_import") != "ok") return {};
  if (!refused) return "imports in the main interpreter";
  const std::string init = field("init");
  if (init == "single-phase") {
    return "single-phase init (no PEP 489 multi-phase init): CPython loads it only in "
           "interpreters that share the main GIL";
  }
  if (init == "multi-phase") {
    const std::string declared = field("multiple_interpreters");
    if (declared == "not declared") {
      return "multi-phase init without a Py_mod_multiple_interpreters slot, which CPython "
             "takes as support for a shared GIL only";
    }
    if (declared == "supported") {
      return "multi-phase init, declares Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED: several "
             "interpreters, but not one GIL each";
    }
    if (declared == "not supported") {
      return "multi-phase init, declares Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED";
    }
    return "multi-phase init, declares per-interpreter GIL support (yet refused)";
  }
  return {};
}

namespace {

constexpr const char* gh_130522_text =
    "CPython 3.13.0-3.13.2 remove the dummy thread that threading.current_thread() made for a "
    "thread it did not start (isola's worker) in a __del__ that fails when the interpreter "
    "ends (\"Exception ignored in _DeleteDummyThreadOnDel.__del__\"); isola replaces that "
    "__del__ just before the interpreter ends";

std::string workaround_text(const std::string& name) {
  if (name == "gh-130522") {
    return "gh-130522 (threading's dummy thread patched at interpreter end)";
  }
  for (const auto& w : active_workarounds()) {
    if (w.module == name) return fmt::format("{} blocked, {} used instead", w.module, w.fallback);
  }
  return name;
}

/// Which runs showed the result: the orders of ending (which only matter from teardown on)
/// and, when only some runs did, how many and what the others showed. Before teardown a
/// difference between runs is chance (a race between the two imports, say).
std::string order_phrase(const module_result& m) {
  auto matches = [&](const order_result& r) {
    return r.result == m.result && r.where == m.where && r.signal == m.signal;
  };
  const std::size_t n = m.runs.size();
  std::size_t k = 0;
  bool creation = false, reverse = false;
  std::vector<std::string> others;
  for (const auto& r : m.runs) {
    if (matches(r)) {
      ++k;
      (r.order == close_order::creation ? creation : reverse) = true;
    } else if (std::string l = outcome_label(r);
               std::find(others.begin(), others.end(), l) == others.end()) {
      others.push_back(l);
    }
  }
  std::string other_text;
  for (const auto& o : others) other_text += (other_text.empty() ? "" : ", ") + o;
  const bool ending = m.where == "teardown" || m.where == "exit";
  if (!ending) {
    return k == n ? "" : fmt::format("in {} of {} runs (the others: {})", k, n, other_text);
  }
  if (creation && reverse) {
    return k == n ? "in both orders"
                  : fmt::format("in both orders, in {} of {} runs (the others: {})", k, n,
                                other_text);
  }
  const close_order o = creation ? close_order::creation : close_order::reverse;
  const std::size_t in_order = static_cast<std::size_t>(std::count_if(
      m.runs.begin(), m.runs.end(), [&](const order_result& r) { return r.order == o; }));
  if (k == in_order) {
    return fmt::format("interpreters ended in {} order (the other order: {})", order_name(o),
                       other_text);
  }
  return fmt::format("interpreters ended in {} order, in {} of {} runs (the others: {})",
                     order_name(o), k, n, other_text);
}

}  // namespace

std::string details(const module_result& m) {
  std::vector<std::string> parts;
  auto add = [&](std::string s) {
    if (!s.empty()) parts.push_back(std::move(s));
  };
  switch (m.result) {
    case outcome::ok:
      add(m.exercise.empty() ? "import only" : "used: " + m.exercise);
      break;
    case outcome::ok_with_workaround: {
      std::string names;
      for (const auto& w : m.workarounds) names += (names.empty() ? "" : "; ") + workaround_text(w);
      add("isola's workaround: " + names);
      add(m.exercise.empty() ? "import only" : "used: " + m.exercise);
      break;
    }
    case outcome::refused:
      // The reason read from the module says it shorter than the refusal's message, which
      // also lists the ways out (JSON keeps it, as "detail").
      add(m.reason.empty() ? m.detail : m.reason);
      add(order_phrase(m));
      break;
    case outcome::not_found:
    case outcome::fails:
      add(m.detail);
      add(m.reason);
      add(order_phrase(m));
      break;
    case outcome::hangs:
      add(order_phrase(m));
      add(m.detail);
      if (!m.import_alone.empty()) add("import alone: " + m.import_alone);
      break;
    case outcome::crashes: {
      const auto& worst = *std::find_if(m.runs.begin(), m.runs.end(), [&](const order_result& r) {
        return r.result == m.result && r.where == m.where;
      });
      add(m.signal.empty() ? fmt::format("exit status {}", worst.exit_status) : m.signal);
      add(order_phrase(m));
      add(m.detail);
      add(m.reason);
      if (!m.import_alone.empty()) add("import alone: " + m.import_alone);
      if (!m.known_bug.empty()) {
        add(fmt::format("probably CPython's {}, which isola cannot work around ('isola info')",
                        m.known_bug));
      }
      break;
    }
  }
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : "; ") + p;
  return out;
}

std::string count_summary(const std::vector<module_result>& rows) {
  std::string out;
  for (outcome o : all_outcomes) {
    auto n = std::count_if(rows.begin(), rows.end(),
                           [&](const module_result& m) { return m.result == o; });
    if (n > 0) out += fmt::format("{}{} {}", out.empty() ? "" : ", ", n, outcome_name(o));
  }
  return out.empty() ? "nothing checked" : out;
}

void print_table(const run_info& info, const std::vector<module_result>& rows) {
  fmt::print("isola compat: isola {}, CPython {}, {} module{}{}\n\n", ISOLA_VERSION, info.python,
             rows.size(), rows.size() == 1 ? "" : "s",
             info.modules_from.empty() ? "" : " (" + info.modules_from + ")");
  std::size_t mw = 6, ow = 7;
  for (const auto& m : rows) {
    mw = std::max(mw, m.module.size());
    ow = std::max(ow, outcome_label(m).size());
  }
  fmt::print("  {:<{}}  {:<{}}  {}\n", "module", mw, "outcome", ow, "details");
  for (const auto& m : rows) {
    fmt::print("  {:<{}}  {:<{}}  {}\n", m.module, mw, outcome_label(m), ow, details(m));
  }
  fmt::print("\n{} module{}: {}\n", rows.size(), rows.size() == 1 ? "" : "s", count_summary(rows));
}

void print_json(const run_info& info, const std::vector<module_result>& rows) {
  namespace json = boost::json;
  json::array modules;
  for (const auto& m : rows) {
    json::array runs;
    for (const auto& r : m.runs) {
      json::object run{{"order", order_name(r.order)},
                       {"outcome", outcome_name(r.result)},
                       {"where", r.where},
                       {"signal", r.signal},
                       {"exit_status", r.exit_status},
                       {"detail", r.detail},
                       {"seconds", std::round(r.seconds * 1000) / 1000}};
      if (!r.output.empty()) run["output"] = r.output;
      runs.push_back(std::move(run));
    }
    json::array workarounds;
    for (const auto& w : m.workarounds) {
      json::object o{{"name", w}, {"text", workaround_text(w)}};
      if (w == "gh-130522") o["reason"] = gh_130522_text;
      for (const auto& a : info.workarounds) {
        if (a.module == w) {
          o["fallback"] = a.fallback;
          o["reason"] = a.reason;
        }
      }
      workarounds.push_back(std::move(o));
    }
    modules.push_back(json::object{{"module", m.module},
                                   {"outcome", outcome_name(m.result)},
                                   {"label", outcome_label(m)},
                                   {"where", m.where},
                                   {"signal", m.signal},
                                   {"orders", m.orders},
                                   {"detail", m.detail},
                                   {"reason", m.reason},
                                   {"exercise", m.exercise},
                                   {"import_alone", m.import_alone},
                                   {"known_bug", m.known_bug},
                                   {"details", details(m)},
                                   {"workarounds", std::move(workarounds)},
                                   {"runs", std::move(runs)}});
  }
  json::object counts;
  for (outcome o : all_outcomes) {
    counts[outcome_name(o)] = std::count_if(
        rows.begin(), rows.end(), [&](const module_result& m) { return m.result == o; });
  }
  json::object doc{{"isola", ISOLA_VERSION},
                   {"python", info.python},
                   {"command", info.command},
                   {"platform", info.platform},
                   {"modules_from", info.modules_from},
                   {"jobs", info.jobs},
                   {"repeat", info.repeat},
                   {"timeout", info.timeout},
                   {"seconds", std::round(info.seconds * 10) / 10},
                   {"counts", std::move(counts)},
                   {"modules", std::move(modules)}};
  fmt::print("{}\n", json::serialize(doc));
}

namespace {
std::string md_cell(std::string s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out;
}
}  // namespace

void print_markdown(const run_info& info, const std::vector<module_result>& rows) {
  fmt::print("# Module compatibility with own-GIL interpreters: CPython {}\n\n", info.python);
  fmt::print("Made by `{}` (isola {}, CPython {}, {}{}); run it again to regenerate this file.\n\n",
             info.command, ISOLA_VERSION, info.python, info.platform,
             info.modules_from.empty() ? "" : "; " + info.modules_from);
  fmt::print(
      "Each module is imported in two of isola's default interpreters (own GIL, own allocator, "
      "strict extension checks) at once, used a little where isola knows it, and the two "
      "interpreters are ended in creation order in one child process and in reverse order in "
      "another{}, so that a crash or a hang is a result. A row shows the worst run.\n\n",
      info.repeat == 1 ? std::string()
                       : fmt::format(" ({} runs of each, since some crashes are races)",
                                     info.repeat));
  fmt::print(
      "Outcomes: **ok** it imported, its use worked and every run ended cleanly; **ok with "
      "workaround** the same, thanks to one of isola's workarounds (named); **refused** not "
      "loaded in an interpreter with its own GIL: CPython's check, under isola's strict "
      "extension policy (the reason says why); **fails at STEP** it raised there; **crashes "
      "at STEP** the process died there (the signal); **hangs at STEP** it did not finish "
      "within {:g} s. Steps: import, use, teardown (ending the interpreters), exit (ending the "
      "runtime: Py_Finalize).\n\n",
      info.timeout);
  fmt::print("| module | outcome | details |\n|---|---|---|\n");
  for (const auto& m : rows) {
    fmt::print("| `{}` | {} | {} |\n", m.module, outcome_label(m), md_cell(details(m)));
  }
  fmt::print("\n{} modules: {}.\n", rows.size(), count_summary(rows));
  const bool dummy_threads = std::any_of(rows.begin(), rows.end(), [](const module_result& m) {
    return std::count(m.workarounds.begin(), m.workarounds.end(), "gh-130522") > 0;
  });
  if (!info.workarounds.empty() || dummy_threads) {
    fmt::print("\nisola's workarounds on CPython {}:\n\n", info.python);
    for (const auto& w : info.workarounds) {
      fmt::print("- `{}` blocked, `{}` used instead: {}\n", w.module, w.fallback, w.reason);
    }
    if (dummy_threads) fmt::print("- gh-130522: {}\n", gh_130522_text);
  }
}

}  // namespace isola::cli::compat
