// What `isola compat` found for each module: the classification of what a child process wrote
// and how it ended, and the three ways of printing the results (table, JSON, Markdown).
#pragma once

#include "tools/compat/compat.hpp"

#include <isola/info.hpp>

#include <map>
#include <string>
#include <vector>

namespace isola::cli::compat {

/// The outcome classes, from best to worst (a module's row shows the worst of its runs).
enum class outcome { ok, ok_with_workaround, not_found, refused, fails, hangs, crashes };
const char* outcome_name(outcome o) noexcept;

/// One child process: one module, one order of ending the interpreters.
struct order_result {
  close_order order = close_order::creation;
  outcome result = outcome::ok;
  std::string where;      ///< the step: start, create, import, use, teardown, exit ("" if ok)
  std::string signal;     ///< crashes: "SIGSEGV"; "" when it exited with a status
  int exit_status = 0;    ///< crashes without a signal: the process's exit status
  std::string detail;     ///< one line: the exception, the crash's message
  std::string exercise;   ///< what the use step did; "" if it was not reached or import only
  bool used = false;      ///< the use step ran in both interpreters
  std::vector<std::string> workarounds;  ///< isola's workarounds the run went through
  std::string refused;    ///< refused: the module CPython refused (may be a dependency)
  std::string output;     ///< the end of what the child wrote (crashes, hangs, isola errors)
  double seconds = 0;
};

/// Reads a child's report lines and how it ended.
order_result classify(close_order order, const std::vector<std::string>& report_lines,
                      const process_result& p, const std::string& output);

/// A module's row.
struct module_result {
  std::string module;
  outcome result = outcome::ok;
  std::string where, signal, detail;
  std::string orders;   ///< which orders showed the result: "both", "creation", "reverse"
  std::string reason;   ///< refused: why; fails at import: how the main interpreter fares
  std::string exercise; ///< what was exercised ("" for import only)
  std::vector<std::string> workarounds;
  std::vector<order_result> runs;
  /// A crash or hang at teardown or exit after the module was used: how a run that only
  /// imports it ends ("ok", "crashes at exit"), which tells the import from the use.
  std::string import_alone;
  /// A crash at exit on a CPython with a known bug there that isola cannot work around: the
  /// bug ("gh-119213, fixed in 3.12.4").
  std::string known_bug;
  bool stopped = false; ///< not finished: the command was stopped (SIGINT/SIGTERM)
};

/// The worst of the runs, described.
module_result combine(const std::string& module, std::vector<order_result> runs);

/// The reason text of a refusal (`refused`) or an import failure, from --child-inspect's line
/// (empty if it tells nothing).
std::string reason_from_inspection(bool refused, const std::string& inspect_line);

/// The outcome with its step: "crashes at teardown", "ok with workaround".
std::string outcome_label(const module_result& m);
std::string outcome_label(const order_result& r);
/// "gh-119213, fixed in 3.12.4" out of isola's text on the running CPython's unfixed bug, or
/// "" if there is none.
std::string known_bug_of_this_python();
/// The details column: the signal, the exception, the workaround, the exercise.
std::string details(const module_result& m);

/// What the output header says about the run.
struct run_info {
  std::string python;   ///< running version, "3.13.0"
  std::string command;  ///< the command that made it ("isola compat --stdlib --markdown")
  std::string modules_from;  ///< "the standard library's extension modules", "/path", ""
  std::string platform;  ///< "Linux x86_64"
  unsigned jobs = 1;
  unsigned repeat = 1;
  double timeout = 0;
  double seconds = 0;
  std::vector<module_workaround_info> workarounds;
};

void print_table(const run_info& info, const std::vector<module_result>& rows);
void print_json(const run_info& info, const std::vector<module_result>& rows);
void print_markdown(const run_info& info, const std::vector<module_result>& rows);

/// "80 ok, 3 ok with workaround, 2 refused".
std::string count_summary(const std::vector<module_result>& rows);

}  // namespace isola::cli::compat
