// What the `isola` command's parts share: exit codes, the usage error, the hook through which a
// subcommand hands its work to main(), and small helpers (cores, log-level option, timing,
// closing interpreters).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include <isola/interpreter.hpp>

namespace isola::cli {

/// Exit statuses of every isola command.
enum exit_status : int {
  exit_ok = 0,      ///< the work was done
  exit_failed = 1,  ///< the work failed (a script raised, an interpreter could not be created)
  exit_usage = 2,   ///< the command line was wrong; nothing was run
};

/// A command line mistake found after parsing (a missing script, an unknown suite). main()
/// prints the message, which says what was wrong and how to fix it, and exits with exit_usage.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The work of the chosen subcommand, run by main() after parsing; returns an exit_status.
using action = std::function<int()>;

/// What parsing decided. The root app keeps whatever follows a "--" that a subcommand did not
/// take (CLI11 hands "--" back to the parent of a subcommand without positionals); a command
/// that wants those (run: `isola run -- script.py`) says so, else main() rejects them.
struct dispatch {
  action chosen;
  bool takes_root_extras = false;
};

/// Each adds one subcommand to `app`. When that subcommand is on the command line, parsing
/// sets d.chosen to its work.
void add_info_command(CLI::App& app, dispatch& d);
void add_run_command(CLI::App& app, dispatch& d);
void add_map_command(CLI::App& app, dispatch& d);
void add_bench_command(CLI::App& app, dispatch& d);
void add_compat_command(CLI::App& app, dispatch& d);
void add_serve_command(CLI::App& app, dispatch& d);

/// CLI11's help layout, except that a command may spell out its usage line itself: run's
/// "script.py [ARGS...]" are not CLI11 options (they go to the script untouched), and bench's
/// subcommands are suites.
class formatter : public CLI::Formatter {
 public:
  /// The usage line of `app` becomes "Usage: <its name> <args>".
  void usage(const CLI::App* app, std::string args) { usages_[app] = std::move(args); }
  std::string make_usage(const CLI::App* app, std::string name) const override;

 private:
  std::map<const CLI::App*, std::string> usages_;
};

/// The formatter main() installed on the root app (subcommands inherit it).
formatter& formatter_of(CLI::App& app);

/// Adds --log-level (validated against isola's level names) storing into `level`.
CLI::Option* add_log_level_option(CLI::App& app, std::string& level);
/// Applies a --log-level value (empty: keep ISOLA_LOG_LEVEL or the default, warn).
void apply_log_level(const std::string& level);

/// Adds --timeout SECONDS storing into `seconds`: a finite number from 0.001 to 1e6 (nan, inf,
/// 0 and negative numbers are refused with a message that says so).
CLI::Option* add_timeout_option(CLI::App& app, double& seconds, const std::string& help);

/// The memory limits of a pool-based command, in bytes (0: none).
struct memory_limits {
  std::size_t hard = 0;  ///< --memory-limit: interpreter_config::memory_limit
  std::size_t soft = 0;  ///< --max-memory-per-interpreter: pool_options::max_memory_per_interpreter
};

/// Adds --memory-limit SIZE and --max-memory-per-interpreter SIZE (sizes as isola::parse_size
/// reads them: 512M, 1G; anything else is a usage error that says so).
void add_memory_options(CLI::App& app, memory_limits& limits);

/// An extension policy by its command-line name (strict, shared-gil, unsafe, auto); nullopt for
/// any other text.
std::optional<extension_policy> parse_extension_policy(std::string_view text);

/// Adds --extensions strict|shared-gil|unsafe|auto storing into `policy` (see
/// docs/extensions.md).
CLI::Option* add_extensions_option(CLI::App& app, extension_policy& policy);

/// Adds --policy FILE: the TOML `isola compat --emit-policy` writes; its shared_gil_modules go
/// into `modules` (read when the option is parsed; a missing or malformed file is a usage
/// error naming the problem).
CLI::Option* add_policy_option(CLI::App& app, std::vector<std::string>& modules);

/// Logical cores available (std::thread::hardware_concurrency(), at least 1).
unsigned cores();

/// Ends interpreters newest first (highest id first), as the runtime does at shutdown: CPython
/// 3.13.0 can crash in extension module teardown when interpreters end in creation order,
/// which is the order a std::vector destroys its elements in.
void close_newest_first(std::vector<interpreter>& interps);

using clock = std::chrono::steady_clock;
inline double seconds_since(clock::time_point t0) {
  return std::chrono::duration<double>(clock::now() - t0).count();
}

}  // namespace isola::cli
