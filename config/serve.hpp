// isola serve's configuration: typed settings with gunicorn's option names, read from a TOML
// file (the same keys as the long options, with '-' or '_': `max_requests` or
// `max-requests`), then overridden by command-line flags. Every value is checked before
// anything starts; an error names the file, the line and the key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace isola::config {

/// A configuration error: what was wrong and how to fix it, with where it was found
/// ("serve.toml:12: key 'workers': ..." or "--workers: ...").
class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One listening address, as gunicorn writes it: "HOST:PORT", "[::1]:8000", ":8000" (all
/// IPv4 interfaces), "PORT", or "unix:/path/to/socket".
struct bind_address {
  enum class kind { tcp, unix_socket };
  kind type = kind::tcp;
  std::string host;            ///< "0.0.0.0", "127.0.0.1", "::1" (no brackets); tcp only
  std::uint16_t port = 0;      ///< tcp only; 0 picks a free port
  std::string path;            ///< unix_socket only
  std::string text;            ///< as written
  friend bool operator==(const bind_address&, const bind_address&) = default;
};

/// Parses one bind address; throws config_error naming `where` and the text.
bind_address parse_bind(const std::string& text, const std::string& where);

/// Every setting of `isola serve`. Defaults are gunicorn's where gunicorn has the option.
struct serve_config {
  std::string app;                                ///< "module:callable" or "module:factory()"
  std::vector<bind_address> bind;                 ///< -b/--bind; empty means 127.0.0.1:8000
  std::size_t workers = 0;                        ///< -w/--workers: interpreters; 0 = cores
  std::size_t threads = 1;                        ///< --threads: requests at once per interpreter
  double timeout = 30;                            ///< -t/--timeout, seconds; 0 = none
  double graceful_timeout = 30;                   ///< --graceful-timeout, seconds
  double keep_alive = 2;                          ///< --keep-alive, seconds idle between requests
  std::size_t max_requests = 0;                   ///< --max-requests; 0 = never recycle
  std::size_t max_requests_jitter = 0;            ///< --max-requests-jitter
  std::size_t limit_request_line = 4094;          ///< --limit-request-line; 0 = unlimited
  std::size_t limit_request_fields = 100;         ///< --limit-request-fields (max 32768)
  std::size_t limit_request_field_size = 8190;    ///< --limit-request-field_size; 0 = unlimited
  std::size_t backlog = 2048;                     ///< --backlog
  double header_timeout = 10;                     ///< --header-timeout: a request's head, seconds
  std::string access_logfile;                     ///< --access-logfile; "-" = stdout; "" = none
  std::string access_logformat =                  ///< --access-logformat (gunicorn's atoms)
      R"(%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s")";
  std::string error_logfile = "-";                ///< --error-logfile; "-" = stderr
  std::string log_level = "info";                 ///< --log-level: debug|info|warning|error|critical
  std::string chdir;                              ///< --chdir: before loading the app
  std::vector<std::string> pythonpath;            ///< --pythonpath (comma-separated on the CLI)
  std::string memory_limit;                       ///< --memory-limit SIZE (hard, per interpreter)
  std::string max_memory_per_interpreter;         ///< --max-memory-per-interpreter SIZE (soft)
  std::string extensions = "strict";              ///< --extensions strict|shared-gil|unsafe|auto
  std::string metrics_bind;                       ///< --metrics-bind HOST:PORT; "" = none
  std::string config_file;                        ///< -c/--config: where this came from
};

/// Reads a TOML file into `into` (only the keys it sets change). An unknown key, a wrong type
/// or an out-of-range value throws config_error naming the file, line and key.
void load_toml(const std::string& path, serve_config& into);

/// Checks the values that do not depend on where they came from (ranges, the app string, log
/// level, sizes); throws config_error. Called after the flags are applied.
void validate(const serve_config& c);

/// The effective configuration as TOML, the same keys a file takes (--check-config prints it).
std::string to_toml(const serve_config& c);

/// Every key a file or flag may set, in the order to_toml writes them.
const std::vector<std::string>& keys();

}  // namespace isola::config
