// Helpers the subcommands share: the help formatter, --log-level, cores, closing
// interpreters in the order CPython tolerates.
#include "tools/isola/cli.hpp"

#include <isola/interpreter.hpp>
#include <isola/log.hpp>
#include <isola/memory.hpp>

#include <fmt/core.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <thread>

namespace isola::cli {

std::string formatter::make_usage(const CLI::App* app, std::string name) const {
  auto it = usages_.find(app);
  if (it == usages_.end()) return CLI::Formatter::make_usage(app, std::move(name));
  return get_label("Usage") + ": " + name + " " + it->second + "\n";
}

formatter& formatter_of(CLI::App& app) {
  auto f = std::dynamic_pointer_cast<formatter>(app.get_formatter());
  if (!f) throw std::logic_error("isola: the root app must use isola::cli::formatter");
  return *f;
}

namespace {
constexpr const char* log_levels[] = {"trace",   "debug", "info",     "warn",
                                      "warning", "error", "critical", "off"};
}  // namespace

CLI::Option* add_log_level_option(CLI::App& app, std::string& level) {
  return app
      .add_option("--log-level", level,
                  "Level of isola's log lines on stderr: trace, debug, info, warn, error, "
                  "critical or off (default: $ISOLA_LOG_LEVEL, else warn)")
      ->check(CLI::IsMember(std::vector<std::string>(std::begin(log_levels), std::end(log_levels))))
      ->type_name("LEVEL");
}

CLI::Option* add_timeout_option(CLI::App& app, double& seconds, const std::string& help) {
  CLI::Validator finite_seconds(
      [](std::string& text) -> std::string {
        double v = 0;
        std::size_t used = 0;
        try {
          v = std::stod(text, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != text.size() || !std::isfinite(v) || v < 0.001 || v > 1e6) {
          return "SECONDS must be a finite number from 0.001 to 1000000, not '" + text + "'";
        }
        return {};
      },
      "");
  return app.add_option("--timeout", seconds, help)->check(finite_seconds)->type_name("SECONDS");
}

namespace {
CLI::Option* add_size_option(CLI::App& app, const std::string& name, std::size_t& bytes,
                             const std::string& help) {
  return app
      .add_option_function<std::string>(
          name,
          [&bytes, name](const std::string& text) {
            try {
              bytes = parse_size(text);
            } catch (const std::invalid_argument& e) {
              throw CLI::ValidationError(name, e.what());
            }
          },
          help)
      ->type_name("SIZE");
}
}  // namespace

std::optional<extension_policy> parse_extension_policy(std::string_view text) {
  if (text == "strict") return extension_policy::strict;
  if (text == "shared-gil") return extension_policy::shared_gil;
  if (text == "unsafe") return extension_policy::unsafe;
  if (text == "auto") return extension_policy::automatic;
  return std::nullopt;
}

CLI::Option* add_extensions_option(CLI::App& app, extension_policy& policy) {
  return app
      .add_option_function<std::string>(
          "--extensions",
          [&policy](const std::string& text) {
            const auto parsed = parse_extension_policy(text);
            if (!parsed) {
              throw CLI::ValidationError(
                  "--extensions", "'" + text + "' is not an extension policy; use strict, "
                                  "shared-gil, unsafe or auto (see docs/extensions.md)");
            }
            policy = *parsed;
          },
                  "What to do with an extension module that does not support per-interpreter "
                  "GILs: strict (refuse it at import, the default), shared-gil (run every "
                  "interpreter in the shared-GIL lane), unsafe (load it anyway, with a "
                  "warning), auto (run a refused task again in a shared-GIL interpreter)")
      ->type_name("strict|shared-gil|unsafe|auto");
}

CLI::Option* add_policy_option(CLI::App& app, std::vector<std::string>& modules) {
  return app
      .add_option_function<std::string>(
          "--policy",
          [&modules](const std::string& file) {
            toml::table t;
            try {
              t = toml::parse_file(file);
            } catch (const toml::parse_error& e) {
              throw CLI::ValidationError(
                  "--policy", fmt::format("'{}' is not a policy file: {} (line {}); write it with "
                                          "isola compat --emit-policy",
                                          file, e.description(), e.source().begin.line));
            }
            const auto* list = t["shared_gil_modules"].as_array();
            if (list == nullptr) {
              throw CLI::ValidationError(
                  "--policy", "'" + file + "' has no shared_gil_modules = [\"module\", ...] list");
            }
            for (const auto& item : *list) {
              const auto* name = item.as_string();
              if (name == nullptr) {
                throw CLI::ValidationError(
                    "--policy", "'" + file + "': shared_gil_modules must hold module names (strings)");
              }
              modules.push_back(name->get());
            }
          },
          "Run the tasks of the modules a policy file lists (shared_gil_modules, as isola "
          "compat --emit-policy writes it) in a shared-GIL interpreter")
      ->type_name("FILE");
}

void add_memory_options(CLI::App& app, memory_limits& limits) {
  add_size_option(app, "--memory-limit", limits.hard,
                  "Hard limit on the memory each interpreter holds (e.g. 512M, 2G): an "
                  "allocation past it raises MemoryError in that interpreter only "
                  "(default: none)");
  add_size_option(app, "--max-memory-per-interpreter", limits.soft,
                  "Soft limit (e.g. 256M): after a task, an interpreter holding more is ended "
                  "and replaced by a fresh one, like uWSGI's --reload-on-rss for one "
                  "interpreter (default: none)");
}

void apply_log_level(const std::string& level) {
  if (!level.empty()) isola::set_log_level(level);
}

unsigned cores() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : n;
}

void close_newest_first(std::vector<interpreter>& interps) {
  std::vector<interpreter*> order;
  for (auto& i : interps) order.push_back(&i);
  std::sort(order.begin(), order.end(),
            [](const interpreter* a, const interpreter* b) { return a->id() > b->id(); });
  for (auto* i : order) i->close();
}

}  // namespace isola::cli
