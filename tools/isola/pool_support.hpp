// What the pool-based commands (run, map, bench pool) share: installing a small Python helper
// module in every pool interpreter, cleaning isola's own frames out of tracebacks, describing
// a failed task in one line, and printing the pool's counters (--stats).
#pragma once

#include <isola/pool.hpp>

#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

namespace isola::cli {

/// File name given to the helper modules' code, so their frames can be found in tracebacks.
inline constexpr std::string_view helper_filename = "<isola>";

/// Statements for pool_options::init_code that make `source` the module `name` in sys.modules
/// (compiled with helper_filename), so tasks can call "name:function".
std::string helper_module_init(std::string_view name, std::string_view source);

/// A Python traceback without the frames of the helper modules, runpy and the import
/// machinery, so that a script's traceback looks as it does under `python script.py`.
std::string strip_helper_frames(const std::string& traceback);

/// One line for a failed task: "ValueError: boom" for a Python exception, else what().
std::string describe(const std::exception_ptr& e);

/// The pool's counters as a small table: one row per interpreter slot, then the queue.
void print_pool_stats(const pool_stats& s, std::FILE* out = stderr);

/// With a --timeout and no explicit log level (option or $ISOLA_LOG_LEVEL), the pool's
/// "task timed out" warnings are left out: the command reports each timeout itself.
void quiet_timeout_warnings(const std::string& log_level_option, bool has_timeout);

/// Ends the process with `status` without finalizing CPython or running static destructors:
/// for when runtime::abandoned_interpreters() is not 0, whose threads may still run Python
/// code. Flushes stdout, stderr and isola's logs first. Call it after the pool is destroyed.
[[noreturn]] void exit_leaving_stuck_interpreters(int status);

/// Seconds as a std::chrono::milliseconds timeout (0 stays 0: no timeout).
std::chrono::milliseconds timeout_ms(double seconds);

}  // namespace isola::cli
