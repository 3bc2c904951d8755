// SIGINT and SIGTERM for the commands that run work (run, map): the first one asks the
// command to stop (it interrupts the running Python code, reports what finished and exits
// 130 or 143); a second one ends the process at once.
#pragma once

namespace isola::cli {

/// Installs the handlers (SA_RESTART, so system calls on other threads are not cut short).
/// The handler only records the signal; the command polls stop_signal() while it waits.
void watch_stop_signals();

/// The first SIGINT/SIGTERM received since watch_stop_signals(), or 0.
int stop_signal() noexcept;

/// The exit status for a command stopped by `signal`: 128 + signal (130 SIGINT, 143 SIGTERM).
inline int signal_exit_status(int signal) { return 128 + signal; }

/// "SIGINT", "SIGTERM".
const char* signal_name(int signal) noexcept;

}  // namespace isola::cli
