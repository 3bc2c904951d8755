// config/serve.hpp, isola serve's configuration: every key read from a TOML file in either
// spelling, the errors a bad file gets (with its line and key), bind addresses, validate's
// ranges and names, and to_toml read back to the same configuration.
#include <catch2/catch.hpp>

#include "config/serve.hpp"
#include "test/support.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using isola::config::bind_address;
using isola::config::config_error;
using isola::config::serve_config;

/// Runs f and returns the message of the config_error it threw, or "" if it threw none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const config_error& e) {
    return e.what();
  }
  return "";
}

/// A serve.toml in a temporary folder. Error messages name the file by the path given to
/// load_toml; error() shows it as "serve.toml".
struct toml_file {
  isola_test::temp_dir dir;
  std::string path = dir.file("serve.toml");

  explicit toml_file(const std::string& text) { isola_test::write_file(path, text); }

  serve_config load(serve_config c = {}) const {
    isola::config::load_toml(path, c);
    return c;
  }
  std::string error(serve_config c = {}) const {
    std::string message = error_of([&] { isola::config::load_toml(path, c); });
    const auto at = message.find(path);
    if (at != std::string::npos) message.replace(at, path.size(), "serve.toml");
    return message;
  }
};

std::string load_error(const std::string& text) { return toml_file(text).error(); }

std::string validate_error(const serve_config& c) {
  return error_of([&] { isola::config::validate(c); });
}

/// A configuration that passes validate.
serve_config valid() {
  serve_config c;
  c.app = "myapp:app";
  return c;
}

bind_address bind(const std::string& text) { return isola::config::parse_bind(text, "--bind"); }

std::string bind_error(const std::string& text) {
  return error_of([&] { isola::config::parse_bind(text, "--bind"); });
}

/// Every field of a and b is the same (doubles bit for bit, or both NaN).
void check_same(const serve_config& a, const serve_config& b) {
  auto same_double = [](double x, double y) {
    return (std::isnan(x) && std::isnan(y)) || x == y;
  };
  CHECK(a.app == b.app);
  CHECK(a.bind == b.bind);
  CHECK(a.workers == b.workers);
  CHECK(a.threads == b.threads);
  CHECK(same_double(a.timeout, b.timeout));
  CHECK(same_double(a.graceful_timeout, b.graceful_timeout));
  CHECK(same_double(a.keep_alive, b.keep_alive));
  CHECK(a.max_requests == b.max_requests);
  CHECK(a.max_requests_jitter == b.max_requests_jitter);
  CHECK(a.limit_request_line == b.limit_request_line);
  CHECK(a.limit_request_fields == b.limit_request_fields);
  CHECK(a.limit_request_field_size == b.limit_request_field_size);
  CHECK(a.backlog == b.backlog);
  CHECK(same_double(a.header_timeout, b.header_timeout));
  CHECK(a.access_logfile == b.access_logfile);
  CHECK(a.access_logformat == b.access_logformat);
  CHECK(a.error_logfile == b.error_logfile);
  CHECK(a.log_level == b.log_level);
  CHECK(a.chdir == b.chdir);
  CHECK(a.pythonpath == b.pythonpath);
  CHECK(a.memory_limit == b.memory_limit);
  CHECK(a.max_memory_per_interpreter == b.max_memory_per_interpreter);
  CHECK(a.extensions == b.extensions);
  CHECK(a.metrics_bind == b.metrics_bind);
}

/// to_toml(c), written to a file and read back into a default configuration.
serve_config round_trip(const serve_config& c) {
  const std::string text = isola::config::to_toml(c);
  INFO(text);
  const toml_file f(text);
  REQUIRE(f.error() == "");
  return f.load();
}

const char* const every_key_file = R"toml(# every key
app = "shop.web:create_app('prod')"
bind = ["0.0.0.0:8080", "unix:/run/shop.sock"]
workers = 8
threads = 4
timeout = 60
graceful_timeout = 12.5
keep_alive = 5
max_requests = 1000
max_requests_jitter = 50
limit_request_line = 8190
limit_request_fields = 200
limit_request_field_size = 0
backlog = 512
header_timeout = 0.25
access_logfile = "-"
access_logformat = '%(h)s "%(r)s" %(s)s'
error_logfile = "/var/log/shop/error.log"
log_level = "debug"
chdir = "/srv/shop"
pythonpath = "/srv/lib, /srv/vendor"
memory_limit = "512M"
max_memory_per_interpreter = "256MiB"
extensions = "auto"
metrics_bind = "127.0.0.1:9100"
)toml";

}  // namespace

TEST_CASE("config: keys() lists every key, in the order to_toml writes them", "[config]") {
  const auto& keys = isola::config::keys();
  const std::vector<std::string> expected{
      "app", "bind", "workers", "threads", "timeout", "graceful_timeout", "keep_alive",
      "max_requests", "max_requests_jitter", "limit_request_line", "limit_request_fields",
      "limit_request_field_size", "backlog", "header_timeout", "access_logfile",
      "access_logformat", "error_logfile", "log_level", "chdir", "pythonpath", "memory_limit",
      "max_memory_per_interpreter", "extensions", "metrics_bind"};
  CHECK(keys == expected);

  const std::string text = isola::config::to_toml(valid());
  CHECK(text.rfind("# isola serve: effective configuration\n", 0) == 0);
  std::size_t at = 0;
  for (const auto& k : keys) {
    const auto found = text.find("\n" + k + " = ", at);
    INFO(k);
    REQUIRE(found != std::string::npos);
    at = found + 1;
  }
}

TEST_CASE("config: every key is read from a file", "[config]") {
  const serve_config c = toml_file(every_key_file).load();
  CHECK(c.app == "shop.web:create_app('prod')");
  REQUIRE(c.bind.size() == 2);
  CHECK(c.bind[0].type == bind_address::kind::tcp);
  CHECK(c.bind[0].host == "0.0.0.0");
  CHECK(c.bind[0].port == 8080);
  CHECK(c.bind[0].text == "0.0.0.0:8080");
  CHECK(c.bind[1].type == bind_address::kind::unix_socket);
  CHECK(c.bind[1].path == "/run/shop.sock");
  CHECK(c.workers == 8);
  CHECK(c.threads == 4);
  CHECK(c.timeout == 60);
  CHECK(c.graceful_timeout == 12.5);
  CHECK(c.keep_alive == 5);
  CHECK(c.max_requests == 1000);
  CHECK(c.max_requests_jitter == 50);
  CHECK(c.limit_request_line == 8190);
  CHECK(c.limit_request_fields == 200);
  CHECK(c.limit_request_field_size == 0);
  CHECK(c.backlog == 512);
  CHECK(c.header_timeout == 0.25);
  CHECK(c.access_logfile == "-");
  CHECK(c.access_logformat == R"(%(h)s "%(r)s" %(s)s)");
  CHECK(c.error_logfile == "/var/log/shop/error.log");
  CHECK(c.log_level == "debug");
  CHECK(c.chdir == "/srv/shop");
  CHECK(c.pythonpath == std::vector<std::string>{"/srv/lib", "/srv/vendor"});
  CHECK(c.memory_limit == "512M");
  CHECK(c.max_memory_per_interpreter == "256MiB");
  CHECK(c.extensions == "auto");
  CHECK(c.metrics_bind == "127.0.0.1:9100");
  CHECK_NOTHROW(isola::config::validate(c));
}

TEST_CASE("config: a file changes only the keys it sets, and nothing when it is refused",
          "[config]") {
  serve_config before = valid();
  before.workers = 3;
  before.bind = {bind("127.0.0.1:9000")};
  serve_config c = toml_file("threads = 2\n").load(before);
  CHECK(c.threads == 2);
  CHECK(c.workers == 3);
  CHECK(c.app == "myapp:app");
  CHECK(c.bind == before.bind);

  // The error is on the last line: the keys before it are not applied either.
  const toml_file bad("workers = 7\nthreads = 2\nbacklog = \"big\"\n");
  c = before;
  CHECK(error_of([&] { isola::config::load_toml(bad.path, c); }) != "");
  check_same(c, before);

  // An empty file is a valid one.
  check_same(toml_file("").load(before), before);
}

TEST_CASE("config: keys may be spelled with '-' as well as '_'", "[config]") {
  const serve_config c = toml_file(
                             "graceful-timeout = 3\n"
                             "max-requests = 10\n"
                             "max-requests-jitter = 2\n"
                             "limit-request-field_size = 100\n"
                             "keep-alive = 1.5\n"
                             "max-memory-per-interpreter = \"1G\"\n"
                             "metrics-bind = \":9100\"\n")
                             .load();
  CHECK(c.graceful_timeout == 3);
  CHECK(c.max_requests == 10);
  CHECK(c.max_requests_jitter == 2);
  CHECK(c.limit_request_field_size == 100);
  CHECK(c.keep_alive == 1.5);
  CHECK(c.max_memory_per_interpreter == "1G");
  CHECK(c.metrics_bind == ":9100");
  CHECK(toml_file("limit-request-field-size = 7\n").load().limit_request_field_size == 7);
  CHECK(toml_file("limit_request_field_size = 9\n").load().limit_request_field_size == 9);

  // Two spellings of one key in one file: refused, naming both lines.
  CHECK(load_error("max_requests = 1\nworkers = 2\nmax-requests = 3\n") ==
        "serve.toml:3: key 'max-requests' sets 'max_requests' again (line 1); keep one of them");
}

TEST_CASE("config: a value of the wrong type names the file, the line and the key", "[config]") {
  CHECK(load_error("app = \"a:b\"\n\n\n\n\n\nworkers = \"four\"\n") ==
        "serve.toml:7: key 'workers': expected a whole number >= 0, got a string (\"four\")");
  CHECK(load_error("workers = -2\n") ==
        "serve.toml:1: key 'workers': expected a whole number >= 0, got an integer (-2)");
  CHECK(load_error("\nmax-requests = 2.5\n") ==
        "serve.toml:2: key 'max-requests': expected a whole number >= 0, got a float (2.5)");
  CHECK(load_error("threads = 0\n") ==
        "serve.toml:1: key 'threads': expected a whole number >= 1, got an integer (0)");
  CHECK(load_error("backlog = true\n") ==
        "serve.toml:1: key 'backlog': expected a whole number >= 0, got a boolean (true)");
  CHECK(load_error("timeout = \"30s\"\n") ==
        "serve.toml:1: key 'timeout': expected a number of seconds >= 0 (e.g. 30 or 0.5), got "
        "a string (\"30s\")");
  CHECK(load_error("keep_alive = -1\n") ==
        "serve.toml:1: key 'keep_alive': expected a number of seconds >= 0 (e.g. 30 or 0.5), "
        "got an integer (-1)");
  CHECK(load_error("header_timeout = inf\n") ==
        "serve.toml:1: key 'header_timeout': expected a number of seconds >= 0 (e.g. 30 or "
        "0.5), got a float (inf)");
  CHECK_THAT(load_error("graceful_timeout = nan\n"),
             Catch::StartsWith("serve.toml:1: key 'graceful_timeout': expected a number of "
                               "seconds"));
  CHECK(load_error("app = 3\n") ==
        "serve.toml:1: key 'app': expected a string, got an integer (3)");
  CHECK(load_error("log_level = [\"info\"]\n") ==
        "serve.toml:1: key 'log_level': expected a string, got an array");
  CHECK(load_error("chdir = 1979-05-27\n") ==
        "serve.toml:1: key 'chdir': expected a string, got a date");
  CHECK(load_error("bind = 8000\n") ==
        "serve.toml:1: key 'bind': expected a bind address or an array of them, got an integer "
        "(8000)");
  CHECK(load_error("bind = [\n  \"127.0.0.1:80\",\n  8000,\n]\n") ==
        "serve.toml:3: key 'bind': expected a bind address or an array of them, got an array "
        "holding an integer (8000)");
  CHECK(load_error("pythonpath = 1\n") ==
        "serve.toml:1: key 'pythonpath': expected a comma-separated string or an array of "
        "strings, got an integer (1)");
  // A known key written as a table is a wrong type too.
  CHECK(load_error("[workers]\ncount = 4\n") ==
        "serve.toml:1: key 'workers': expected a whole number >= 0, got a table");
}

TEST_CASE("config: a value out of range in a file names the file, the line and the key",
          "[config]") {
  CHECK(load_error("workers = 5000\n") ==
        "serve.toml:1: key 'workers': 5000 is too many; allowed: 0 (one per core) to 1024");
  CHECK(load_error("\nlog-level = \"loud\"\n") ==
        "serve.toml:2: key 'log-level': 'loud' is not a log level; allowed: debug, info, "
        "warning, error, critical");
  CHECK_THAT(load_error("memory_limit = \"12Q\"\n"),
             Catch::StartsWith("serve.toml:1: key 'memory_limit': '12Q' is not a size "
                               "(unknown unit)"));
  CHECK_THAT(load_error("extensions = \"none\"\n"),
             Catch::StartsWith("serve.toml:1: key 'extensions': 'none' is not an extension "
                               "policy"));
  CHECK_THAT(load_error("app = \"my-app:app\"\n"),
             Catch::StartsWith("serve.toml:1: key 'app': 'my-app:app' is not an application"));
  CHECK_THAT(load_error("metrics_bind = \"unix:/tmp/m.sock\"\n"),
             Catch::StartsWith("serve.toml:1: key 'metrics_bind': 'unix:/tmp/m.sock' is a unix "
                          "socket; metrics are served on TCP"));
  CHECK_THAT(load_error("bind = \"localhost:http\"\n"),
             Catch::StartsWith("serve.toml:1: key 'bind': 'localhost:http' is not a bind address "
                          "(port 'http' is not a number from 0 to 65535)"));
  CHECK_THAT(load_error("bind = [\"127.0.0.1:80\",\n        \"fd://3\"]\n"),
             Catch::StartsWith("serve.toml:2: key 'bind': 'fd://3': isola serve does not support "
                          "fd:// binds"));
  // workers = 0 (one per core) is what to_toml writes for the default.
  CHECK(toml_file("workers = 0\n").load().workers == 0);
}

TEST_CASE("config: an unknown key is refused, with the closest key when one is close",
          "[config]") {
  CHECK(load_error("app = \"a:b\"\n\nworker = 4\n") ==
        "serve.toml:3: unknown key 'worker'; did you mean 'workers'?");
  CHECK(load_error("max-request = 4\n") ==
        "serve.toml:1: unknown key 'max-request'; did you mean 'max_requests'?");
  CHECK(load_error("timout = 4\n") ==
        "serve.toml:1: unknown key 'timout'; did you mean 'timeout'?");
  CHECK(load_error("loglevel = \"info\"\n") ==
        "serve.toml:1: unknown key 'loglevel'; did you mean 'log_level'?");
  CHECK_THAT(load_error("daemon = true\n"),
             Catch::StartsWith("serve.toml:1: unknown key 'daemon'; see `isola serve --help`"));
  // config_file is a field, not a key: a file does not name another file.
  CHECK_THAT(load_error("config_file = \"other.toml\"\n"),
             Catch::StartsWith("serve.toml:1: unknown key 'config_file'"));
  // The first mistake in the file is the one reported, whatever order toml++ keeps keys in.
  CHECK_THAT(load_error("zzz = 1\naaa = 2\n"),
             Catch::StartsWith("serve.toml:1: unknown key 'zzz'"));
}

TEST_CASE("config: a table is refused: settings are top-level keys", "[config]") {
  CHECK(load_error("[server]\nworkers = 4\n") ==
        "serve.toml:1: [server] is a table; isola serve's settings are top-level keys (workers = "
        "4), not in [sections]");
  CHECK_THAT(load_error("workers = 2\nserver.threads = 4\n"),
             Catch::StartsWith("serve.toml:2: [server] is a table"));
  CHECK_THAT(load_error("[[server]]\nworkers = 4\n"),
             Catch::StartsWith("serve.toml:1: [[server]] is a table"));
  CHECK_THAT(load_error("gunicorn = { workers = 4 }\n"),
             Catch::StartsWith("serve.toml:1: [gunicorn] is a table"));
}

TEST_CASE("config: a file that is not TOML, or cannot be read, is refused", "[config]") {
  const std::string syntax = load_error("workers = 4\nthreads = = 2\n");
  CHECK_THAT(syntax, Catch::StartsWith("serve.toml:2:") && Catch::Contains(": not valid TOML: "));
  CHECK_THAT(load_error("workers = 4\nworkers = 5\n"),
             Catch::StartsWith("serve.toml:2:") && Catch::Contains("not valid TOML"));

  isola_test::temp_dir d;
  const std::string missing = d.file("absent.toml");
  serve_config c;
  CHECK(error_of([&] { isola::config::load_toml(missing, c); }) ==
        "cannot read config file '" + missing + "': No such file or directory");
  CHECK(error_of([&] { isola::config::load_toml(d.path(), c); }) ==
        "cannot read config file '" + d.path() + "': Is a directory");
}

TEST_CASE("config: bind addresses in gunicorn's forms", "[config]") {
  auto tcp = [](const std::string& text, const std::string& host, int port) {
    const bind_address b = bind(text);
    INFO(text);
    CHECK(b.type == bind_address::kind::tcp);
    CHECK(b.host == host);
    CHECK(b.port == port);
    CHECK(b.text == text);
    CHECK(b.path.empty());
  };
  tcp("127.0.0.1:8000", "127.0.0.1", 8000);
  tcp("0.0.0.0:80", "0.0.0.0", 80);
  tcp("[::1]:8000", "::1", 8000);
  tcp("[::]:8000", "::", 8000);
  tcp("[::1]", "::1", 8000);
  tcp("[fe80::1%eth0]:8080", "fe80::1%eth0", 8080);
  tcp(":8000", "0.0.0.0", 8000);
  tcp("8000", "127.0.0.1", 8000);
  tcp("localhost", "localhost", 8000);
  tcp("Example.COM:443", "example.com", 443);
  tcp("127.0.0.1:0", "127.0.0.1", 0);
  tcp("127.0.0.1:65535", "127.0.0.1", 65535);
  tcp("tcp://10.0.0.1:81", "10.0.0.1", 81);

  const bind_address unix_socket = bind("unix:/tmp/isola.sock");
  CHECK(unix_socket.type == bind_address::kind::unix_socket);
  CHECK(unix_socket.path == "/tmp/isola.sock");
  CHECK(unix_socket.host.empty());
  CHECK(bind("unix:///tmp/isola.sock").path == "/tmp/isola.sock");
  CHECK(bind("unix:relative.sock").path == "relative.sock");
}

TEST_CASE("config: a bad bind address is refused, naming where and the accepted forms",
          "[config]") {
  CHECK(bind_error("127.0.0.1:99999") ==
        "--bind: '127.0.0.1:99999' is not a bind address (port '99999' is not a number from 0 to "
        "65535); use HOST:PORT (127.0.0.1:8000), [IPV6]:PORT ([::1]:8000), :PORT (all IPv4 "
        "interfaces), PORT (on 127.0.0.1), HOST (port 8000) or unix:PATH");
  auto refused = [](const std::string& text, const std::string& why) {
    INFO(text);
    CHECK_THAT(bind_error(text),
               Catch::StartsWith("--bind: '" + text + "' is not a bind address (" + why + ")") &&
                   Catch::Contains("or unix:PATH"));
  };
  refused("", "it is empty");
  refused("host:", "no port after ':'");
  refused(":", "no port after ':'");
  refused("host:80x", "port '80x' is not a number from 0 to 65535");
  refused("host:-1", "port '-1' is not a number from 0 to 65535");
  refused("host:0000080000", "port '0000080000' is not a number from 0 to 65535");
  refused("::1:8000", "an IPv6 address goes in brackets: [::1]:8000");
  refused("[::1", "no ']' after the IPv6 address");
  refused("[::1]8000", "expected ':PORT' after ']'");
  refused("[]:80", "'' in brackets is not an IPv6 address");
  refused("[localhost]:80", "'localhost' in brackets is not an IPv6 address");
  refused("my host:80", "'my host' is not a host name or address");
  refused("unix:", "no socket path after 'unix:'");
  CHECK_THAT(bind_error("fd://3"),
             Catch::StartsWith("--bind: 'fd://3': isola serve does not support fd:// binds"));
  CHECK_THAT(error_of([] { isola::config::parse_bind("x:y", "serve.toml:2: key 'bind'"); }),
             Catch::StartsWith("serve.toml:2: key 'bind': 'x:y' is not a bind address"));
}

TEST_CASE("config: bind and pythonpath take a string or an array of strings", "[config]") {
  serve_config c = toml_file("bind = \"[::1]:9000\"\n").load();
  REQUIRE(c.bind.size() == 1);
  CHECK(c.bind[0].host == "::1");
  CHECK(c.bind[0].port == 9000);
  c = toml_file("bind = []\n").load(valid());
  CHECK(c.bind.empty());
  c = toml_file("bind = [\":1\", \"unix:/s\", \"h\"]\n").load();
  CHECK(c.bind == std::vector<bind_address>{bind(":1"), bind("unix:/s"), bind("h")});

  CHECK(toml_file("pythonpath = \"a,b , ,c\"\n").load().pythonpath ==
        std::vector<std::string>{"a", "b", "c"});
  CHECK(toml_file("pythonpath = \"\"\n").load().pythonpath.empty());
  CHECK(toml_file("pythonpath = [\"/x,y\", \"/z\"]\n").load().pythonpath ==
        std::vector<std::string>{"/x,y", "/z"});
}

TEST_CASE("config: validate refuses what serve cannot run, naming the key and what is allowed",
          "[config]") {
  CHECK_NOTHROW(isola::config::validate(valid()));
  CHECK(validate_error(serve_config{}) ==
        "no application: give MODULE:CALLABLE (e.g. myapp:app) on the command line or `app = "
        "\"myapp:app\"` in the config file");

  auto refused = [](auto change, const std::string& start) {
    serve_config c = valid();
    change(c);
    CHECK_THAT(validate_error(c), Catch::StartsWith(start));
  };
  auto allowed = [](auto change) {
    serve_config c = valid();
    change(c);
    CHECK(validate_error(c) == "");
  };

  for (const char* app : {"myapp", "myapp:app", "pkg.web:app", "pkg.web:create_app()",
                          "pkg.web:create_app(\"prod\", debug=True)", "_m:_a", "módulo:app"}) {
    INFO(app);
    allowed([&](serve_config& c) { c.app = app; });
  }
  for (const char* app : {"my-app:app", "myapp:", ":app", "pkg..web:app", "1pkg:app",
                          "myapp:app.attr", "myapp:create_app(", "myapp:app()x", "my app",
                          "myapp:(x)"}) {
    INFO(app);
    refused([&](serve_config& c) { c.app = app; },
            std::string("key 'app' (the APP argument): '") + app + "' is not an application");
  }

  refused([](serve_config& c) { c.workers = 1025; },
          "key 'workers' (--workers): 1025 is too many; allowed: 0 (one per core) to 1024");
  allowed([](serve_config& c) { c.workers = 1024; });
  refused([](serve_config& c) { c.threads = 0; },
          "key 'threads' (--threads): 0 is out of range; allowed: 1 to 1024");
  refused([](serve_config& c) { c.threads = 1025; }, "key 'threads' (--threads): 1025");
  allowed([](serve_config& c) { c.threads = 1024; });
  refused([](serve_config& c) { c.limit_request_fields = 32769; },
          "key 'limit_request_fields' (--limit-request-fields): 32769 is too many; allowed: 0 "
          "to 32768");
  refused([](serve_config& c) { c.limit_request_line = 8191; },
          "key 'limit_request_line' (--limit-request-line): 8191 is too large; allowed: 0 "
          "(unlimited) to 8190");
  allowed([](serve_config& c) {
    c.limit_request_line = 0;
    c.limit_request_field_size = 0;
    c.limit_request_fields = 32768;
  });
  allowed([](serve_config& c) { c.limit_request_field_size = 1 << 20; });

  for (const char* level : {"debug", "info", "warning", "error", "critical", "WARNING", "Info"}) {
    allowed([&](serve_config& c) { c.log_level = level; });
  }
  refused([](serve_config& c) { c.log_level = "verbose"; },
          "key 'log_level' (--log-level): 'verbose' is not a log level; allowed: debug, info, "
          "warning, error, critical");
  for (const char* policy : {"strict", "shared-gil", "unsafe", "auto"}) {
    allowed([&](serve_config& c) { c.extensions = policy; });
  }
  refused([](serve_config& c) { c.extensions = "shared_gil"; },
          "key 'extensions' (--extensions): 'shared_gil' is not an extension policy; allowed: "
          "strict, shared-gil, unsafe, auto");

  for (const char* size : {"512M", "1G", "1048576", "1.5G", "2GiB", "64kb", "3 T", "100B"}) {
    INFO(size);
    allowed([&](serve_config& c) {
      c.memory_limit = size;
      c.max_memory_per_interpreter = size;
    });
  }
  refused([](serve_config& c) { c.memory_limit = "12Q"; },
          "key 'memory_limit' (--memory-limit): '12Q' is not a size (unknown unit); write a "
          "number of bytes with an optional K, M, G or T suffix");
  refused([](serve_config& c) { c.max_memory_per_interpreter = "M"; },
          "key 'max_memory_per_interpreter' (--max-memory-per-interpreter): 'M' is not a size "
          "(it does not start with a number)");
  refused([](serve_config& c) { c.memory_limit = "-1G"; }, "key 'memory_limit'");
  refused([](serve_config& c) { c.memory_limit = "1MiBs"; }, "key 'memory_limit'");
  refused([](serve_config& c) { c.memory_limit = "99999999999T"; },
          "key 'memory_limit' (--memory-limit): '99999999999T' is not a size (it is too large)");

  allowed([](serve_config& c) { c.metrics_bind = "127.0.0.1:9100"; });
  allowed([](serve_config& c) { c.metrics_bind = ":9100"; });
  refused([](serve_config& c) { c.metrics_bind = "127.0.0.1:x"; },
          "key 'metrics_bind' (--metrics-bind): '127.0.0.1:x' is not a bind address");
  refused([](serve_config& c) { c.metrics_bind = "unix:/m.sock"; },
          "key 'metrics_bind' (--metrics-bind): 'unix:/m.sock' is a unix socket");

  refused([](serve_config& c) { c.timeout = -1; },
          "key 'timeout' (--timeout): -1 is not a number of seconds; allowed: a finite number "
          ">= 0");
  refused([](serve_config& c) { c.graceful_timeout = std::nan(""); },
          "key 'graceful_timeout' (--graceful-timeout): ");
  refused([](serve_config& c) { c.keep_alive = std::numeric_limits<double>::infinity(); },
          "key 'keep_alive' (--keep-alive): inf is not a number of seconds");
  refused([](serve_config& c) { c.header_timeout = -0.5; }, "key 'header_timeout'");
  allowed([](serve_config& c) {
    c.timeout = 0;
    c.header_timeout = 0.001;
  });

  // gunicorn allows a jitter without max_requests (it then does nothing).
  allowed([](serve_config& c) {
    c.max_requests = 0;
    c.max_requests_jitter = 10;
  });
}

TEST_CASE("config: to_toml reads back to the same configuration", "[config]") {
  SECTION("the defaults") {
    const serve_config c;
    check_same(round_trip(c), c);
    const std::string text = isola::config::to_toml(c);
    CHECK(text.rfind("# isola serve: effective configuration\n", 0) == 0);
    // A string with '"' and no '\'' is written as a literal string, without escapes.
    CHECK_THAT(text, Catch::Contains("\naccess_logformat = '" + c.access_logformat + "'\n"));
    CHECK_THAT(text, Catch::Contains("\nbind = []\n"));
  }
  SECTION("every key read from a file") {
    const serve_config c = toml_file(every_key_file).load();
    check_same(round_trip(c), c);
  }
  SECTION("every field changed, with strings TOML must escape") {
    serve_config c;
    c.app = "pkg.web:create_app(\"a\\b\", n=1)";
    c.bind = {bind(":8000"), bind("[::1]:9000"), bind("unix:///tmp/a \"b\".sock"), bind("8001"),
              bind("tcp://Host.example:80")};
    c.workers = 12;
    c.threads = 3;
    c.timeout = 0.1;
    c.graceful_timeout = 1e-7;
    c.keep_alive = 123456789.125;
    c.max_requests = 9007199254740993;  // above 2^53: read back as an integer, not a double
    c.max_requests_jitter = 1;
    c.limit_request_line = 0;
    c.limit_request_fields = 32768;
    c.limit_request_field_size = 65536;
    c.backlog = 64;
    c.header_timeout = 1e300;
    c.access_logfile = "/var/log/a\tb\nc.log";
    c.access_logformat = "'%(h)s' \"%(r)s\" \\ \x01 \x7f é ✓";
    c.error_logfile = "";
    c.log_level = "WARNING";
    c.chdir = "C:\\srv";
    c.pythonpath = {"/a,b", "", "/c"};
    c.memory_limit = "1.5G";
    c.max_memory_per_interpreter = "256MiB";
    c.extensions = "shared-gil";
    c.metrics_bind = "[::]:9100";
    const serve_config back = round_trip(c);
    check_same(back, c);
    CHECK(isola::config::to_toml(back) == isola::config::to_toml(c));
  }
  SECTION("a bind address made in code, without its text") {
    serve_config c = valid();
    bind_address v6;
    v6.host = "::1";
    v6.port = 81;
    bind_address sock;
    sock.type = bind_address::kind::unix_socket;
    sock.path = "/run/s";
    c.bind = {v6, sock};
    const serve_config back = round_trip(c);
    REQUIRE(back.bind.size() == 2);
    CHECK(back.bind[0].host == "::1");
    CHECK(back.bind[0].port == 81);
    CHECK(back.bind[0].text == "[::1]:81");
    CHECK(back.bind[1].path == "/run/s");
  }
  SECTION("the file it came from is a comment") {
    serve_config c = valid();
    c.config_file = "/etc/isola/serve.toml";
    const std::string text = isola::config::to_toml(c);
    CHECK(text.rfind("# isola serve: effective configuration\n# read from "
                     "/etc/isola/serve.toml\napp = ",
                     0) == 0);
    check_same(round_trip(c), c);
  }
}
