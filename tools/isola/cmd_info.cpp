// `isola info`: what this isola was built with and runs on (versions, build options, the
// CPython it embeds, cores, active workarounds), plus a self-check that creates one
// own-GIL interpreter. --json prints the same as one JSON object.
#include "tools/build_info.hpp"
#include "tools/isola/cli.hpp"

#include <isola/info.hpp>
#include <isola/interpreter.hpp>
#include <isola/runtime.hpp>
#include <isola/version.hpp>

#include <boost/json.hpp>
#include <boost/version.hpp>
#include <fmt/core.h>
#include <spdlog/version.h>

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace isola::cli {
namespace {

struct info_options {
  bool json = false;
  bool no_check = false;
};

/// The outcome of starting CPython and creating one own-GIL interpreter.
struct self_check {
  bool ok = false;
  std::string error;       ///< why it failed
  std::string sys_prefix;  ///< sys.prefix as the running interpreter found it
  std::int64_t interpreter_id = -1;
  double create_ms = 0;
};

struct info {
  std::string isola = ISOLA_VERSION;
  std::string build_type = ISOLA_BUILD_TYPE;
  std::string compiler = ISOLA_COMPILER;
  std::string sanitize = ISOLA_SANITIZE;
  std::string python_compiled = python_build().compiled_version;
  std::string python_runtime = python_build().running_version;
  std::string python_executable = ISOLA_TOOLS_PYTHON_EXECUTABLE;
  std::string python_prefix = ISOLA_TOOLS_PYTHON_PREFIX;
  bool free_threaded = python_build().free_threaded;
  std::string boost = fmt::format("{}.{}.{}", BOOST_VERSION / 100000, BOOST_VERSION / 100 % 1000,
                                  BOOST_VERSION % 100);
  std::string boost_lib = BOOST_LIB_VERSION;
  std::string spdlog =
      fmt::format("{}.{}.{}", SPDLOG_VER_MAJOR, SPDLOG_VER_MINOR, SPDLOG_VER_PATCH);
  std::string fmt =
      fmt::format("{}.{}.{}", FMT_VERSION / 10000, FMT_VERSION / 100 % 100, FMT_VERSION % 100);
  std::string cli11 = CLI11_VERSION;
  unsigned cores = cli::cores();
  std::vector<module_workaround_info> workarounds = active_workarounds();
  std::optional<self_check> check;

  /// "3.13.0" out of "3.13.0 (main, ...) [GCC ...]".
  std::string python_runtime_version() const {
    return python_runtime.substr(0, python_runtime.find(' '));
  }
};

self_check run_self_check() {
  self_check c;
  try {
    runtime rt;
    auto t0 = clock::now();
    interpreter interp;
    c.create_ms = seconds_since(t0) * 1000;
    c.interpreter_id = interp.id();
    c.sys_prefix = interp.eval("__import__('sys').prefix").as_str();
    c.ok = true;
  } catch (const std::exception& e) {
    c.error = e.what();
  }
  return c;
}

void print_json(const info& i) {
  namespace json = boost::json;
  json::object python{{"compiled", i.python_compiled},
                      {"runtime", i.python_runtime_version()},
                      {"runtime_full", i.python_runtime},
                      {"executable", i.python_executable},
                      {"prefix", i.python_prefix},
                      {"free_threaded", i.free_threaded}};
  if (i.check && i.check->ok) python["sys_prefix"] = i.check->sys_prefix;
  json::array workarounds;
  for (const auto& w : i.workarounds) {
    workarounds.push_back(
        json::object{{"module", w.module}, {"fallback", w.fallback}, {"reason", w.reason}});
  }
  json::object doc{{"isola", i.isola},
                   {"python", std::move(python)},
                   {"boost", i.boost},
                   {"boost_lib_version", i.boost_lib},
                   {"spdlog", i.spdlog},
                   {"fmt", i.fmt},
                   {"cli11", i.cli11},
                   {"compiler", i.compiler},
                   {"build_type", i.build_type},
                   {"sanitize", i.sanitize},
                   {"cores", i.cores},
                   {"workarounds", std::move(workarounds)}};
  if (i.check) {
    json::object check{{"ok", i.check->ok}};
    if (i.check->ok) {
      check["interpreter_id"] = i.check->interpreter_id;
      check["create_ms"] = std::round(i.check->create_ms * 100) / 100;
    } else {
      check["error"] = i.check->error;
    }
    doc["self_check"] = std::move(check);
  }
  fmt::print("{}\n", json::serialize(doc));
}

void print_text(const info& i) {
  auto row = [](std::string_view label, std::string_view text) {
    fmt::print("{:<20}{}\n", label, text);
  };
  row("isola", i.isola);
  row("build type", i.build_type);
  row("compiler", i.compiler);
  row("sanitizers", i.sanitize);
  row("cores", std::to_string(i.cores));
  fmt::print("\n");
  row("CPython compiled", i.python_compiled);
  std::string running = i.python_runtime;
  if (i.python_runtime_version() != i.python_compiled) {
    running += "  (differs from the compiled version: rebuild isola against this Python)";
  }
  row("CPython running", running);
  row("free-threaded", i.free_threaded ? "yes" : "no");
  row("python executable", i.python_executable);
  row("python prefix", i.python_prefix);
  if (i.check && i.check->ok) row("sys.prefix", i.check->sys_prefix);
  fmt::print("\n");
  row("Boost", fmt::format("{} (BOOST_LIB_VERSION {})", i.boost, i.boost_lib));
  row("spdlog", i.spdlog);
  row("fmt", i.fmt);
  row("CLI11", i.cli11);
  fmt::print("\n");
  if (i.workarounds.empty()) {
    row("workarounds", "none needed for CPython " + i.python_runtime_version());
  } else {
    row("workarounds", fmt::format("{} active for CPython {} (accelerator blocked -> fallback)",
                                   i.workarounds.size(), i.python_runtime_version()));
    for (const auto& w : i.workarounds) {
      row(std::string("  ") + w.module, fmt::format("-> {}: {}", w.fallback, w.reason));
    }
  }
  if (i.check) {
    fmt::print("\n");
    if (i.check->ok) {
      row("self-check", fmt::format("ok: own-GIL interpreter {} created in {:.1f} ms",
                                    i.check->interpreter_id, i.check->create_ms));
    } else {
      row("self-check", "FAILED: " + i.check->error);
    }
  }
}

int run_info(const info_options& o) {
  info i;
  if (!o.no_check) i.check = run_self_check();
  if (o.json) {
    print_json(i);
  } else {
    print_text(i);
  }
  return !i.check || i.check->ok ? exit_ok : exit_failed;
}

}  // namespace

void add_info_command(CLI::App& app, dispatch& d) {
  auto opts = std::make_shared<info_options>();
  auto* sub = app.add_subcommand(
      "info", "Show versions, build options, the embedded CPython, cores and active workarounds");
  sub->add_flag("--json", opts->json, "Print everything as one JSON object on stdout");
  sub->add_flag("--no-check", opts->no_check,
                "Skip the self-check (do not start CPython): report build-time facts only");
  sub->footer(
      "Reports isola's version and build options (compiler, build type, sanitizers), the\n"
      "CPython it embeds (the version compiled against and the one running, the executable and\n"
      "prefix found at build time), Boost, spdlog, fmt and CLI11 versions, the number of cores\n"
      "and the CPython workarounds active for the running version. Then, as a self-check, it\n"
      "starts CPython and creates one own-GIL interpreter.\n"
      "\n"
      "Exit status: 0 ok, 1 the self-check failed, 2 usage error.");
  sub->callback([opts, &d] { d.chosen = [opts] { return run_info(*opts); }; });
}

}  // namespace isola::cli
