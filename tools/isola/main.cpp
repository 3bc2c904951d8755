// The `isola` command line: parses the arguments with CLI11, hands over to one subcommand
// (info, run, map, bench, compat, serve) and maps the outcome to exit statuses: 0 ok, 1 the work failed, 2 usage.
#include "tools/isola/cli.hpp"

#include <isola/log.hpp>
#include <isola/version.hpp>

#include <iostream>
#include <memory>

#include <fmt/core.h>

int main(int argc, char** argv) {
  using namespace isola::cli;

  CLI::App app{
      "isola: runs many isolated CPython interpreters, each with its own GIL, in one "
      "process.",
      "isola"};
  app.formatter(std::make_shared<formatter>());
  app.set_version_flag("--version", ISOLA_VERSION, "Print isola's version and exit");
  app.require_subcommand(0, 1);
  formatter_of(app).usage(&app, "[--version] COMMAND [OPTIONS] [ARGS...]");

  dispatch d;
  add_info_command(app, d);
  add_run_command(app, d);
  add_map_command(app, d);
  add_bench_command(app, d);
  add_compat_command(app, d);
  add_serve_command(app, d);
  for (auto* sub : app.get_subcommands({})) sub->group("Commands");
  // Unknown words and options at the top level, and what follows a "--", stay on the root
  // (remaining()) instead of a generic CLI11 error. Set after the subcommands, which would
  // inherit it otherwise.
  app.prefix_command();
  app.failure_message([](const CLI::App* root, const CLI::Error& e) {
    std::string path = "isola";
    for (const CLI::App* a = root; a != nullptr;) {
      auto subs = a->get_subcommands();  // the parsed ones
      a = subs.empty() ? nullptr : subs.front();
      if (a != nullptr) path += " " + a->get_name();
    }
    return fmt::format("{}: {}\nRun '{} --help' for usage.\n", path, e.what(), path);
  });
  // Set after the subcommands: CLI11 copies a parent's footer into subcommands made later.
  app.footer(
      "Run 'isola COMMAND --help' for the options of a command.\n"
      "Exit status: 0 success, 1 the work failed (a script or an input raised or timed out, an\n"
      "interpreter could not be created), 2 usage error (nothing was run).");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_ok : exit_usage;
  }
  auto extra = app.remaining();
  if (!extra.empty() && !(d.chosen && d.takes_root_extras)) {
    const std::string& what = extra.front();
    if (what.starts_with("-")) {
      fmt::print(stderr, "isola: unknown option '{}'; see 'isola --help'\n", what);
    } else if (d.chosen) {
      fmt::print(stderr, "isola: unexpected argument '{}'; see 'isola --help'\n", what);
    } else {
      fmt::print(stderr, "isola: unknown command '{}'; choose one of: info, run, map, bench, compat\n", what);
    }
    return exit_usage;
  }
  if (!d.chosen) {
    std::cerr << app.help() << "\nisola: no command given; choose one of: info, run, map, bench, compat\n";
    return exit_usage;
  }

  int status = exit_failed;
  try {
    status = d.chosen();
  } catch (const usage_error& e) {
    fmt::print(stderr, "isola: {}\n", e.what());
    status = exit_usage;
  } catch (const std::exception& e) {
    fmt::print(stderr, "isola: {}\n", e.what());
    status = exit_failed;
  }
  isola::flush_logs();
  return status;
}
