// `isola serve`: its command line (gunicorn's option names), the config file (-c), and
// --check-config. Flags override the file; everything is checked before anything starts.
#include "tools/isola/cli.hpp"
#include "tools/serve/server.hpp"

#include "config/serve.hpp"

#include <isola/log.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include <unistd.h>

namespace isola::cli {

namespace {

/// A flag and how to copy its value from the parsed flags into the effective configuration.
struct flag_binding {
  CLI::Option* option;
  std::function<void(config::serve_config& to, const config::serve_config& from)> apply;
};

struct serve_flags {
  config::serve_config values;
  std::vector<std::string> bind;
  std::string pythonpath;
  std::vector<flag_binding> bindings;
  std::string config_file;
  bool check_config = false;
};

template <typename T>
void bind_flag(serve_flags& f, CLI::Option* o, T config::serve_config::*member) {
  f.bindings.push_back({o, [member](config::serve_config& to, const config::serve_config& from) {
                          to.*member = from.*member;
                        }});
}

std::string spdlog_level(const std::string& gunicorn) {
  std::string l;
  for (char c : gunicorn) l += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return l == "warning" ? "warn" : l;
}

int serve_main(serve_flags& f, const std::vector<std::string>& positional) {
  config::serve_config cfg;
  if (!f.config_file.empty()) {
    config::load_toml(f.config_file, cfg);
    cfg.config_file = f.config_file;
  }
  for (const auto& b : f.bindings) {
    if (b.option->count() > 0) b.apply(cfg, f.values);
  }
  if (!f.bind.empty()) {
    cfg.bind.clear();
    for (const auto& text : f.bind) cfg.bind.push_back(config::parse_bind(text, "--bind"));
  }
  if (!f.pythonpath.empty()) {
    cfg.pythonpath.clear();
    std::string item;
    for (char c : f.pythonpath + ",") {
      if (c == ',') {
        if (!item.empty()) cfg.pythonpath.push_back(item);
        item.clear();
      } else {
        item += c;
      }
    }
  }
  if (positional.size() > 1) {
    throw usage_error(fmt::format("serve: one application only, got {} ('{}', '{}', ...)",
                                  positional.size(), positional[0], positional[1]));
  }
  if (!positional.empty()) cfg.app = positional.front();
  config::validate(cfg);
  if (f.check_config) {
    fmt::print("{}", config::to_toml(cfg));
    return exit_ok;
  }

  if (!cfg.error_logfile.empty() && cfg.error_logfile != "-") log_to_file(cfg.error_logfile);
  set_log_level(spdlog_level(cfg.log_level));
  if (!cfg.chdir.empty()) {
    std::error_code ec;
    std::filesystem::current_path(cfg.chdir, ec);
    if (ec) {
      throw usage_error(fmt::format("serve: --chdir '{}': {}", cfg.chdir, ec.message()));
    }
  }
  return serve::run(cfg);
}

}  // namespace

void add_serve_command(CLI::App& app, dispatch& d) {
  auto f = std::make_shared<serve_flags>();
  auto& v = f->values;
  auto* sub = app.add_subcommand(
      "serve",
      "Serve a WSGI application (PEP 3333) over HTTP/1.1 from own-GIL interpreters, with "
      "gunicorn's options");
  formatter_of(app).usage(sub, "[OPTIONS] MODULE:CALLABLE");
  auto positional = std::make_shared<std::vector<std::string>>();
  auto* app_option = sub->add_option("app", *positional,
                  "The application: module:callable, module:factory() or module:factory(args) "
                  "(as gunicorn), or module (its `application`)")
      ->type_name("MODULE:CALLABLE");
  sub->add_option("-c,--config", f->config_file,
                  "TOML file with the same keys as the long options (max_requests or "
                  "max-requests); flags override it")
      ->type_name("FILE");
  sub->add_flag("--check-config", f->check_config,
                "Check the configuration (file and flags), print the effective one as TOML and "
                "exit (0 if valid, 2 otherwise)");
  auto* bind_option = sub->add_option("-b,--bind", f->bind,
                  "Address to listen on, repeatable: HOST:PORT, [IPV6]:PORT, :PORT, or "
                  "unix:PATH (default 127.0.0.1:8000)")
      ->type_name("ADDRESS")
      ->allow_extra_args(false);
  bind_flag(*f, sub->add_option("-w,--workers", v.workers,
                                fmt::format("Interpreters (own GIL each) running the "
                                            "application (default: cores, here {})",
                                            cores()))
                    ->type_name("N"),
            &config::serve_config::workers);
  bind_flag(*f, sub->add_option("--threads", v.threads,
                                "Requests each interpreter runs at once (default 1)")
                    ->type_name("N"),
            &config::serve_config::threads);
  bind_flag(*f, sub->add_option("-t,--timeout", v.timeout,
                                "Seconds a request may run: then its Python code is interrupted, "
                                "the client gets 503 and the interpreter serves the next request "
                                "(one stuck in C code is replaced); 0: no limit (default 30)")
                    ->type_name("SECONDS"),
            &config::serve_config::timeout);
  bind_flag(*f, sub->add_option("--graceful-timeout", v.graceful_timeout,
                                "Seconds requests in flight get to finish after SIGTERM/SIGINT "
                                "(default 30)")
                    ->type_name("SECONDS"),
            &config::serve_config::graceful_timeout);
  bind_flag(*f, sub->add_option("--keep-alive", v.keep_alive,
                                "Seconds an idle keep-alive connection waits for its next "
                                "request (default 2)")
                    ->type_name("SECONDS"),
            &config::serve_config::keep_alive);
  bind_flag(*f, sub->add_option("--max-requests", v.max_requests,
                                "Replace an interpreter with a fresh one after this many "
                                "requests (the process stays); 0: never (default)")
                    ->type_name("N"),
            &config::serve_config::max_requests);
  bind_flag(*f, sub->add_option("--max-requests-jitter", v.max_requests_jitter,
                                "Add a random 0..N to each interpreter's --max-requests")
                    ->type_name("N"),
            &config::serve_config::max_requests_jitter);
  bind_flag(*f, sub->add_option("--limit-request-line", v.limit_request_line,
                                "Largest request line in bytes, else 414 (default 4094; 0: no "
                                "limit)")
                    ->type_name("BYTES"),
            &config::serve_config::limit_request_line);
  bind_flag(*f, sub->add_option("--limit-request-fields", v.limit_request_fields,
                                "Most header fields in a request, else 431 (default 100)")
                    ->type_name("N"),
            &config::serve_config::limit_request_fields);
  bind_flag(*f, sub->add_option("--limit-request-field_size,--limit-request-field-size",
                                v.limit_request_field_size,
                                "Largest header field in bytes, else 431 (default 8190; 0: no "
                                "limit)")
                    ->type_name("BYTES"),
            &config::serve_config::limit_request_field_size);
  bind_flag(*f, sub->add_option("--backlog", v.backlog,
                                "Connections the kernel queues before they are accepted "
                                "(default 2048)")
                    ->type_name("N"),
            &config::serve_config::backlog);
  bind_flag(*f, sub->add_option("--header-timeout", v.header_timeout,
                                "Seconds a client has to send a request's head (and each part "
                                "of its body), else it is dropped (default 10)")
                    ->type_name("SECONDS"),
            &config::serve_config::header_timeout);
  bind_flag(*f, sub->add_option("--access-logfile", v.access_logfile,
                                "Access log file, '-' for stdout (default: none)")
                    ->type_name("FILE"),
            &config::serve_config::access_logfile);
  bind_flag(*f, sub->add_option("--access-logformat", v.access_logformat,
                                "Access log line, with gunicorn's atoms (default: gunicorn's)")
                    ->type_name("FORMAT"),
            &config::serve_config::access_logformat);
  bind_flag(*f, sub->add_option("--error-logfile,--log-file", v.error_logfile,
                                "Error log file, '-' for stderr (the default)")
                    ->type_name("FILE"),
            &config::serve_config::error_logfile);
  bind_flag(*f, sub->add_option("--log-level", v.log_level,
                                "debug, info (default), warning, error or critical")
                    ->type_name("LEVEL"),
            &config::serve_config::log_level);
  bind_flag(*f, sub->add_option("--chdir", v.chdir,
                                "Change to this folder before loading the application (it is "
                                "put first on sys.path)")
                    ->type_name("DIR"),
            &config::serve_config::chdir);
  sub->add_option("--pythonpath", f->pythonpath,
                  "Comma-separated folders to add to sys.path")
      ->type_name("DIRS");
  bind_flag(*f, sub->add_option("--memory-limit", v.memory_limit,
                                "Hard memory limit per interpreter (512M, 1G): past it an "
                                "allocation raises MemoryError in that interpreter only")
                    ->type_name("SIZE"),
            &config::serve_config::memory_limit);
  bind_flag(*f, sub->add_option("--max-memory-per-interpreter", v.max_memory_per_interpreter,
                                "Soft memory limit: after a request, an interpreter holding "
                                "more is replaced by a fresh one")
                    ->type_name("SIZE"),
            &config::serve_config::max_memory_per_interpreter);
  bind_flag(*f, sub->add_option("--extensions", v.extensions,
                                "Extension modules without per-interpreter GIL support: strict "
                                "(refused, the default), shared-gil, unsafe or auto (see "
                                "docs/extensions.md)")
                    ->type_name("POLICY"),
            &config::serve_config::extensions);
  bind_flag(*f, sub->add_option("--metrics-bind", v.metrics_bind,
                                "Serve Prometheus metrics at http://ADDRESS/metrics")
                    ->type_name("HOST:PORT"),
            &config::serve_config::metrics_bind);
  // As gunicorn: an option given twice takes its last value (-b is the one that repeats).
  for (auto* o : sub->get_options()) {
    if (o != bind_option && o != app_option && o->get_type_size() != 0) {
      o->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    }
  }
  sub->footer(
      "Loads the application once in each of --workers interpreters (own GIL each, in this\n"
      "one process) and serves it over HTTP/1.1 (keep-alive, chunked bodies, 100-continue,\n"
      "streaming responses, wsgi.file_wrapper with sendfile).\n"
      "\n"
      "Signals: SIGTERM or SIGINT drain (stop accepting, let requests in flight finish within\n"
      "--graceful-timeout, exit 0); SIGHUP loads the application into fresh interpreters and\n"
      "retires the old ones after their requests; SIGQUIT stops at once.\n"
      "\n"
      "Examples:\n"
      "  isola serve myapp:app                        127.0.0.1:8000, one interpreter per core\n"
      "  isola serve -w 4 -b 0.0.0.0:8080 myapp:app\n"
      "  isola serve 'myapp:create_app()' --timeout 10 --access-logfile -\n"
      "  isola serve -c serve.toml --check-config     print the effective configuration\n"
      "\n"
      "Exit status: 0 after a drain, 1 the application could not be loaded or an address\n"
      "bound, 2 usage or configuration error.");
  sub->callback([f, positional, &d] {
    d.chosen = [f, positional] {
      try {
        return serve_main(*f, *positional);
      } catch (const config::config_error& e) {
        throw usage_error(fmt::format("serve: {}", e.what()));
      }
    };
  });
}

}  // namespace isola::cli
