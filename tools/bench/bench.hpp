// The registry behind `isola bench SUITE`: each suite lives in its own <suite>.cpp,
// registers itself with a bench_suite_registrar, and returns its figures as a bench_report
// that bench_command.cpp prints as a table or as one JSON object.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>

namespace isola::cli {

/// One measured figure. key is what JSON consumers see ("create_ms_isola").
struct bench_metric {
  std::string key;
  double value = 0;
  std::string unit;         ///< "ms", "MB", "x", "s"; empty for plain counts
  int precision = 2;        ///< decimals kept in the table and in JSON
  std::string description;  ///< one line for the table
};

/// A bar chart of --svg: one figure of isola (the first bar) against its peers', by metric
/// key. Bars whose metric the run did not measure (--no-peers) are left out.
struct bench_chart {
  std::string title;
  std::string unit;
  bool higher_is_better = true;
  std::vector<std::pair<std::string, std::string>> bars;  ///< (label, metric key)
};

/// What a suite measured, plus the settings it used (echoed as "params" in JSON), and the
/// charts --svg draws.
struct bench_report {
  std::vector<bench_metric> results;
  std::vector<std::pair<std::string, double>> params;
  std::vector<bench_chart> charts;

  void add(std::string key, double value, std::string unit, int precision,
           std::string description) {
    results.push_back({std::move(key), value, std::move(unit), precision, std::move(description)});
  }
  void chart(std::string title, std::string unit, bool higher_is_better,
             std::vector<std::pair<std::string, std::string>> bars) {
    charts.push_back({std::move(title), std::move(unit), higher_is_better, std::move(bars)});
  }
};

/// The report's charts as one SVG document (plain SVG 1.1, no scripts, no external files).
/// `heading` names the suite, the machine and the versions.
std::string render_svg(const std::string& heading, const bench_report& r);

/// Given to a running suite: where to report progress (stderr, unless --quiet).
class bench_context {
 public:
  bench_context(std::string suite, bool quiet) : suite_(std::move(suite)), quiet_(quiet) {}
  /// Prints "[suite] message" on stderr; for the long parts of a suite.
  void progress(const std::string& message) const;
  /// True with --quiet (a suite that runs a subprocess passes it on).
  bool quiet() const noexcept { return quiet_; }

 private:
  std::string suite_;
  bool quiet_;
};

/// Runs a suite with its parsed options. Throws on failure (exit status 1).
using bench_runner = std::function<bench_report(const bench_context&)>;

/// A suite: its name (the subcommand), a one-line description for `isola bench --help`, and
/// setup, which adds the suite's own options to its subcommand and returns the runner that
/// will read them. Options every suite has (--json, --quiet, --log-level) are added for it.
struct bench_suite {
  std::string name;
  std::string description;
  std::function<bench_runner(CLI::App&)> setup;
};

/// All registered suites, in registration order.
std::vector<bench_suite>& bench_suites();

/// Registers a suite from a static initialiser in its <suite>.cpp (tools/bench/).
struct bench_suite_registrar {
  explicit bench_suite_registrar(bench_suite s) { bench_suites().push_back(std::move(s)); }
};

/// The median of samples (the mean of the middle two for an even count); 0 if empty.
double median(std::vector<double> samples);

/// Resident set size of this process in bytes, from /proc/self/statm. Throws
/// std::runtime_error where there is no /proc.
double rss_bytes();

/// The median of a[i] / b[i]: the ratio of two figures measured in turn, round by round, so
/// that a drift of the machine's speed moves both sides of each ratio alike. 0 if empty.
double median_ratio(const std::vector<double>& a, const std::vector<double>& b);

/// A new temporary folder holding one Python module (for a peer benchmark's subprocess to
/// import); removed with the object. Throws std::runtime_error naming what failed.
class module_folder {
 public:
  module_folder(const std::string& prefix, const std::string& file_name,
                const std::string& contents);
  ~module_folder();
  module_folder(const module_folder&) = delete;
  module_folder& operator=(const module_folder&) = delete;
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

/// Runs argv (argv[0] is a path) and returns its stdout; stderr passes through. Throws if it
/// cannot start or does not exit with 0.
std::string run_capture(std::vector<std::string> args);

/// Runs a peer benchmark's script with the tools' Python (`python -I -c script folder
/// config-json`) and returns the JSON object it prints. Throws std::runtime_error when it
/// fails or prints no JSON object.
boost::json::object run_peer(const std::string& script, const std::filesystem::path& folder,
                             const boost::json::object& config);

/// The 1-minute load average, or -1 where it cannot be read.
double load_average();

/// The CPU time of the whole machine so far, all CPUs, in clock ticks (/proc/stat's first
/// line): the total, and the part a hypervisor gave to something else while this machine's
/// vCPUs wanted to run ("steal"). Not `known` where /proc/stat cannot be read.
struct cpu_ticks {
  double total = 0, stolen = 0;
  bool known = false;
};
cpu_ticks cpu_ticks_now();
/// The percentage of the machine's CPU time from a to b that was stolen (0 to 100); NaN if
/// either reading is unknown or no tick passed.
double stolen_percent(const cpu_ticks& a, const cpu_ticks& b);

}  // namespace isola::cli
