// `isola compat`: which Python modules work in isola's own-GIL interpreters. The parent
// (compat_command.cpp) lists the modules and runs, for each, child processes of this same
// executable (child.cpp) under a timeout (process.cpp), so that a crash or a hang is a result;
// report.cpp classifies what the children wrote and prints the table, JSON or Markdown.
#pragma once

#include <string>
#include <vector>

namespace isola {
class runtime;
}

namespace isola::cli::compat {

// ---- child processes (child.cpp) --------------------------------------------------------------

/// The order in which a child ends its two interpreters.
enum class close_order { creation, reverse };
const char* order_name(close_order o) noexcept;

/// `isola compat --child MODULE --order ORDER --report FILE [--path DIR]`: starts the runtime,
/// creates two own-GIL interpreters, imports MODULE in both at once, uses it a little where it
/// is known, ends them in ORDER, then ends the runtime. Before each step it appends a line
/// {"begin": STEP} to FILE, and after it {"end": STEP, ...what happened}, each with one
/// write(2), so that whatever kills the process the parent knows the step it was in. Steps:
/// start (the runtime), create, import, use (not with --import-only), teardown, exit
/// (Py_Finalize). Exit status 0 when every step ran (whatever the module did), 1 when isola
/// itself failed ({"error": ...}).
struct child_options {
  std::string module;
  close_order order = close_order::creation;
  std::string report;
  std::string path;  ///< put first on sys.path, if not empty
  bool import_only = false;  ///< skip the use step (--import-only)
};
int run_probe_child(const child_options& o);

/// `isola compat --child-inspect MODULE --report FILE [--path DIR]`: imports MODULE in the
/// main interpreter only, and says in one JSON line whether that worked and, for an extension
/// module, how it initialises: {"main_import": "ok"} or {"main_import": "raised", "type",
/// "message"}, then "init": "single-phase" | "multi-phase" | "python" and, for multi-phase,
/// "multiple_interpreters": "not supported" | "supported" | "per-interpreter GIL" |
/// "not declared". Used to give the reason of a refusal.
int run_inspect_child(const child_options& o);

/// In the main interpreter of `rt`: faulthandler.enable(), so that a fatal signal prints
/// "Fatal Python error" and the Python stack of the thread it hit into the child's output,
/// which the parent shows; a crash says nothing otherwise. The process still ends by the
/// signal. Throws std::runtime_error if it fails.
void enable_faulthandler(const runtime& rt);

// ---- running a child (process.cpp) ------------------------------------------------------------

/// How a child process ended.
struct process_result {
  int exit_code = -1;      ///< -1 if it did not exit normally
  int signal = 0;          ///< the signal that ended it (not the timeout's SIGKILL), else 0
  bool timed_out = false;  ///< still running after the timeout: its process group was killed
  bool stopped = false;    ///< killed because this process got SIGINT/SIGTERM
  double seconds = 0;
};

/// Runs argv (argv[0] a path) in a process group of its own, stdin from /dev/null, stdout and
/// stderr into log_path, and waits at most timeout_seconds; then it kills the group (SIGKILL).
/// It also kills it when this process is asked to stop (SIGINT/SIGTERM, see signals.hpp).
/// Throws std::runtime_error if the program cannot be started.
process_result run_process(const std::vector<std::string>& argv, const std::string& log_path,
                           double timeout_seconds);

/// "SIGSEGV" for 11; "signal N" for a number without a name.
std::string signal_label(int signal);

}  // namespace isola::cli::compat
