// `isola bench SUITE`: one subcommand per registered suite, the options all suites share, and
// the output: a readable table, or with --json one object
// {"suite", "isola", "python", "cores", "params", "results"}.
#include "tools/bench/bench.hpp"
#include "tools/build_info.hpp"
#include "tools/isola/cli.hpp"
#include <boost/json.hpp>

#include <isola/runtime.hpp>
#include <isola/version.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include <fmt/core.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

namespace isola::cli {

std::vector<bench_suite>& bench_suites() {
  static std::vector<bench_suite> s;
  return s;
}

double rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  long long size = 0, resident = 0;
  if (!(statm >> size >> resident)) {
    throw std::runtime_error("cannot read /proc/self/statm (needs Linux's /proc)");
  }
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

double median(std::vector<double> samples) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  std::size_t n = samples.size();
  return n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
}

boost::json::object run_peer(const std::string& script, const std::filesystem::path& folder,
                             const boost::json::object& config) {
  std::string out = run_capture({ISOLA_TOOLS_PYTHON_EXECUTABLE, "-I", "-c", script,
                                 folder.string(), boost::json::serialize(config)});
  try {
    return boost::json::parse(out).as_object();
  } catch (const std::exception& e) {
    throw std::runtime_error(
        fmt::format("the peer benchmark printed no JSON object ({}): {}", e.what(), out));
  }
}

double median_ratio(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> ratios;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (b[i] > 0) ratios.push_back(a[i] / b[i]);
  }
  return median(std::move(ratios));
}

module_folder::module_folder(const std::string& prefix, const std::string& file_name,
                             const std::string& contents) {
  namespace fs = std::filesystem;
  std::string tmpl = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error(
        fmt::format("cannot create a temporary folder: {}", std::strerror(errno)));
  }
  path_ = tmpl;
  std::ofstream f(path_ / file_name);
  f << contents;
  if (!f) throw std::runtime_error("cannot write " + (path_ / file_name).string());
}

module_folder::~module_folder() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string run_capture(std::vector<std::string> args) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, args[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    throw std::runtime_error(fmt::format("cannot start {}: {}", args[0], std::strerror(rc)));
  }
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error(std::string("waitpid: ") + std::strerror(errno));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(fmt::format(
        "the peer benchmark '{} -c ...' failed ({}); its messages are above", args[0],
        WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                          : fmt::format("signal {}", WTERMSIG(status))));
  }
  return out;
}

double load_average() {
  double l[1] = {0};
  return getloadavg(l, 1) == 1 ? l[0] : -1;
}

cpu_ticks cpu_ticks_now() {
  std::ifstream f("/proc/stat");
  std::string label;
  // user nice system idle iowait irq softirq steal (guest time is inside user already)
  double t[8] = {};
  if (!(f >> label) || label != "cpu") return {};
  for (double& x : t) {
    if (!(f >> x)) return {};
  }
  cpu_ticks c;
  for (double x : t) c.total += x;
  c.stolen = t[7];
  c.known = true;
  return c;
}

double stolen_percent(const cpu_ticks& a, const cpu_ticks& b) {
  const double total = b.total - a.total;
  if (!a.known || !b.known || total <= 0) return std::numeric_limits<double>::quiet_NaN();
  return 100.0 * (b.stolen - a.stolen) / total;
}

void bench_context::progress(const std::string& message) const {
  if (!quiet_) fmt::print(stderr, "[{}] {}\n", suite_, message);
}

namespace {

struct common_options {
  bool json = false;
  bool quiet = false;
  std::string svg;  ///< --svg FILE
  std::string log_level;
};

double rounded(double v, int precision) {
  double scale = std::pow(10.0, precision);
  return std::round(v * scale) / scale;
}

std::string suite_names() {
  std::string names;
  for (const auto& s : bench_suites()) names += (names.empty() ? "" : ", ") + s.name;
  return names;
}

/// Whole numbers go out as JSON integers (200000, not 2E5).
boost::json::value json_number(double v) {
  if (std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 9e15) {
    return static_cast<std::int64_t>(v);
  }
  return v;
}

/// boost::json::serialize, except that doubles are written the shortest way that reads back
/// exactly (53.9, not 5.39E1); NaN and infinities become null.
std::string to_json(const boost::json::value& v) {
  switch (v.kind()) {
    case boost::json::kind::double_: {
      double d = v.get_double();
      return std::isfinite(d) ? fmt::format("{}", d) : "null";
    }
    case boost::json::kind::object: {
      std::string out = "{";
      for (const auto& kv : v.get_object()) {
        if (out.size() > 1) out += ',';
        out += boost::json::serialize(boost::json::value(kv.key())) + ":" + to_json(kv.value());
      }
      return out + "}";
    }
    case boost::json::kind::array: {
      std::string out = "[";
      for (const auto& item : v.get_array()) {
        if (out.size() > 1) out += ',';
        out += to_json(item);
      }
      return out + "]";
    }
    default:
      return boost::json::serialize(v);
  }
}

void print_json(const std::string& suite, const bench_report& r) {
  boost::json::object params, results;
  for (const auto& [k, v] : r.params) params[k] = json_number(v);
  for (const auto& m : r.results) results[m.key] = json_number(rounded(m.value, m.precision));
  boost::json::object doc{{"suite", suite},
                          {"python", runtime::python_version()},
                          {"cores", cores()},
                          {"isola", ISOLA_VERSION},
                          {"params", std::move(params)},
                          {"results", std::move(results)}};
  fmt::print("{}\n", to_json(doc));
}

void print_table(const std::string& suite, const bench_report& r) {
  std::string params;
  for (const auto& [k, v] : r.params) params += fmt::format(", {} {}", k, v);
  fmt::print("isola bench {}: isola {}, CPython {}, {} cores{}\n\n", suite, ISOLA_VERSION,
             runtime::python_version(), cores(), params);
  std::size_t key_width = 6;
  for (const auto& m : r.results) key_width = std::max(key_width, m.key.size());
  fmt::print("  {:<{}}  {:>12}  {}\n", "metric", key_width, "value", "what");
  for (const auto& m : r.results) {
    std::string value = fmt::format("{:.{}f}", m.value, m.precision);
    if (!m.unit.empty()) value += (m.unit == "x" ? "" : " ") + m.unit;
    fmt::print("  {:<{}}  {:>12}  {}\n", m.key, key_width, value, m.description);
  }
}

int run_suite(const std::string& name, const bench_runner& runner, const common_options& o) {
  apply_log_level(o.log_level);
  bench_context ctx(name, o.quiet);
  bench_report r = runner(ctx);
  if (o.json) {
    print_json(name, r);
  } else {
    print_table(name, r);
  }
  if (!o.svg.empty()) {
    const std::string heading =
        fmt::format("isola bench {}: isola {}, CPython {}, {} cores", name, ISOLA_VERSION,
                    runtime::python_version(), cores());
    std::ofstream out(o.svg, std::ios::binary);
    out << render_svg(heading, r);
    out.close();
    if (!out) {
      throw std::runtime_error(fmt::format("bench: cannot write the chart to '{}': {}", o.svg,
                                           std::strerror(errno)));
    }
    ctx.progress(fmt::format("chart written to {}", o.svg));
  }
  return exit_ok;
}

}  // namespace

void add_bench_command(CLI::App& app, dispatch& d) {
  auto* bench = app.add_subcommand(
      "bench",
      fmt::format("Measure isola against its peers: the raw C API, Python threads, "
                  "concurrent.futures executors (suites: {})",
                  suite_names()));
  formatter_of(app).usage(bench, "SUITE [OPTIONS]");
  bench->require_subcommand(0, 1);
  // An unknown suite name lands in remaining() rather than a generic CLI11 error, so the
  // message below can list the valid suites.
  bench->allow_extras();

  for (const auto& suite : bench_suites()) {
    auto* sub = bench->add_subcommand(suite.name, suite.description);
    sub->allow_extras(false);
    sub->group("Suites");
    auto common = std::make_shared<common_options>();
    sub->add_flag("--json", common->json, "Print the results as one JSON object on stdout");
    sub->add_flag("-q,--quiet", common->quiet, "No progress lines on stderr");
    sub->add_option("--svg", common->svg,
                    "Also draw the figures against the peers' as a bar chart in FILE (SVG)")
        ->type_name("FILE");
    add_log_level_option(*sub, common->log_level);
    auto runner = std::make_shared<bench_runner>(suite.setup(*sub));
    sub->callback([name = suite.name, runner, common, &d] {
      d.chosen = [name, runner, common] { return run_suite(name, *runner, *common); };
    });
  }
  bench->footer(
      "Each suite measures isola and its peers in the same run, prints medians and ratios as a\n"
      "table, or with --json as one JSON object on stdout; --svg FILE also draws them against\n"
      "the peers' as a bar chart. Progress goes to stderr. A full run takes from seconds\n"
      "(startup) to minutes; pool, channels, shared and memory have --quick for a smoke run.\n"
      "Every suite has its own --help.\n"
      "\n"
      "Examples:\n"
      "  isola bench pool --quick                  a smoke run: a few seconds, rough figures\n"
      "  isola bench channels --quick --json       the same, as one JSON object on stdout\n"
      "\n"
      "Exit status: 0 measured, 1 a measurement failed, 2 usage error.");

  // Runs after the chosen suite's callback (CLI11 calls subcommands' callbacks first).
  bench->callback([bench, &d] {
    auto extra = bench->remaining();
    if (!extra.empty()) {
      const std::string& what = extra.front();
      std::string msg =
          what.starts_with("-")
              ? fmt::format("bench: unknown option '{}'; see 'isola bench --help'", what)
              : fmt::format("bench: unknown suite '{}'; valid suites: {}", what, suite_names());
      d.chosen = [msg]() -> int { throw usage_error(msg); };
    } else if (bench->get_subcommands().empty()) {
      d.chosen = []() -> int {
        throw usage_error(
            fmt::format("bench: which suite? usage: isola bench SUITE [--json]; valid suites: {}",
                        suite_names()));
      };
    }
  });
}

}  // namespace isola::cli
