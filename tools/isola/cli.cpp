// Helpers the subcommands share: the help formatter, --log-level, cores, closing
// interpreters in the order CPython tolerates.
#include "cli.hpp"

#include <isola/interpreter.hpp>
#include <isola/log.hpp>

#include <algorithm>
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
