// See config/serve.hpp. One table of keys drives reading (load_toml), checking (validate) and
// writing (to_toml), so the three cannot disagree about a key.
#include "config/serve.hpp"

#include <isola/memory.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include <fmt/core.h>
#include <toml++/toml.h>

namespace isola::config {
namespace {

constexpr std::size_t max_workers = 1024;
constexpr std::size_t max_threads = 1024;
constexpr std::size_t max_limit_request_line = 8190;     // gunicorn's cap
constexpr std::size_t max_limit_request_fields = 32768;  // gunicorn's cap
constexpr std::uint16_t default_port = 8000;

constexpr std::string_view bind_forms =
    "use HOST:PORT (127.0.0.1:8000), [IPV6]:PORT ([::1]:8000), :PORT (all IPv4 interfaces), "
    "PORT (on 127.0.0.1), HOST (port 8000) or unix:PATH";

// ---- the keys ----------------------------------------------------------------------------------

enum class kind {
  text,     // a string
  whole,    // an integer >= min
  seconds,  // an integer or float >= 0
  binds,    // a string or an array of strings, each a bind address
  paths,    // a comma-separated string or an array of strings
};

struct key_def {
  const char* name;  // the underscore spelling
  const char* flag;  // how the command line of `isola serve` gives it
  kind type;
  std::string serve_config::*text = nullptr;
  std::size_t serve_config::*whole = nullptr;
  double serve_config::*seconds = nullptr;
  std::size_t min = 0;  // whole only: the least value a file may give
};

key_def text_key(const char* name, const char* flag, std::string serve_config::*m) {
  return {name, flag, kind::text, m, nullptr, nullptr, 0};
}
key_def whole_key(const char* name, const char* flag, std::size_t serve_config::*m,
                  std::size_t min = 0) {
  return {name, flag, kind::whole, nullptr, m, nullptr, min};
}
key_def seconds_key(const char* name, const char* flag, double serve_config::*m) {
  return {name, flag, kind::seconds, nullptr, nullptr, m, 0};
}

const std::vector<key_def>& key_defs() {
  using c = serve_config;
  static const std::vector<key_def> defs{
      text_key("app", "the APP argument", &c::app),
      {"bind", "--bind", kind::binds},
      whole_key("workers", "--workers", &c::workers),
      whole_key("threads", "--threads", &c::threads, 1),
      seconds_key("timeout", "--timeout", &c::timeout),
      seconds_key("graceful_timeout", "--graceful-timeout", &c::graceful_timeout),
      seconds_key("keep_alive", "--keep-alive", &c::keep_alive),
      whole_key("max_requests", "--max-requests", &c::max_requests),
      whole_key("max_requests_jitter", "--max-requests-jitter", &c::max_requests_jitter),
      whole_key("limit_request_line", "--limit-request-line", &c::limit_request_line),
      whole_key("limit_request_fields", "--limit-request-fields", &c::limit_request_fields),
      whole_key("limit_request_field_size", "--limit-request-field_size",
                &c::limit_request_field_size),
      whole_key("backlog", "--backlog", &c::backlog),
      seconds_key("header_timeout", "--header-timeout", &c::header_timeout),
      text_key("access_logfile", "--access-logfile", &c::access_logfile),
      text_key("access_logformat", "--access-logformat", &c::access_logformat),
      text_key("error_logfile", "--error-logfile", &c::error_logfile),
      text_key("log_level", "--log-level", &c::log_level),
      text_key("chdir", "--chdir", &c::chdir),
      {"pythonpath", "--pythonpath", kind::paths},
      text_key("memory_limit", "--memory-limit", &c::memory_limit),
      text_key("max_memory_per_interpreter", "--max-memory-per-interpreter",
               &c::max_memory_per_interpreter),
      text_key("extensions", "--extensions", &c::extensions),
      text_key("metrics_bind", "--metrics-bind", &c::metrics_bind),
  };
  return defs;
}

/// The key a spelling names: '-' and '_' are the same (limit-request-field_size too).
const key_def* find_key(std::string_view spelled) {
  std::string name(spelled);
  std::replace(name.begin(), name.end(), '-', '_');
  for (const auto& k : key_defs()) {
    if (name == k.name) return &k;
  }
  return nullptr;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

/// The known key closest to `spelled`, if it is close enough to be a likely typo.
const key_def* closest_key(std::string_view spelled) {
  std::string name(spelled);
  std::replace(name.begin(), name.end(), '-', '_');
  for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const key_def* best = nullptr;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (const auto& k : key_defs()) {
    const std::size_t d = edit_distance(name, k.name);
    if (d < best_distance) {
      best = &k;
      best_distance = d;
    }
  }
  const std::size_t allowed = std::min<std::size_t>(3, std::max<std::size_t>(1, name.size() / 3));
  return best_distance <= allowed ? best : nullptr;
}

// ---- formatting values -------------------------------------------------------------------------

/// `s` as a TOML basic string, quotes included.
std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (u < 0x20 || u == 0x7f) {
          out += fmt::format("\\u{:04X}", static_cast<unsigned>(u));
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

/// `s` as a TOML string for to_toml: a literal string ('...') when it holds a '"' or a '\\'
/// that a basic string would escape and a literal string can hold as it is.
std::string toml_string(std::string_view s) {
  const bool needs_escapes = s.find_first_of("\"\\") != std::string_view::npos;
  const bool literal_ok = std::none_of(s.begin(), s.end(), [](char ch) {
    const auto u = static_cast<unsigned char>(ch);
    return ch == '\'' || (u < 0x20 && ch != '\t') || u == 0x7f;
  });
  return needs_escapes && literal_ok ? "'" + std::string(s) + "'" : quoted(s);
}

/// A number of seconds as TOML: the shortest text that reads back as the same double.
std::string seconds_text(double v) { return fmt::format("{}", v); }

/// What a TOML value is, for "expected X, got Y".
std::string describe(const toml::node& v) {
  switch (v.type()) {
    case toml::node_type::string: return "a string (" + quoted(v.as_string()->get()) + ")";
    case toml::node_type::integer: return fmt::format("an integer ({})", v.as_integer()->get());
    case toml::node_type::floating_point:
      return "a float (" + seconds_text(v.as_floating_point()->get()) + ")";
    case toml::node_type::boolean: return v.as_boolean()->get() ? "a boolean (true)"
                                                                : "a boolean (false)";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    default: return "nothing";
  }
}

std::string bind_text(const bind_address& b) {
  if (!b.text.empty()) return b.text;
  if (b.type == bind_address::kind::unix_socket) return "unix:" + b.path;
  if (b.host.find(':') != std::string::npos) return fmt::format("[{}]:{}", b.host, b.port);
  return fmt::format("{}:{}", b.host, b.port);
}

// ---- checking values ---------------------------------------------------------------------------

bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }
bool is_ident_char(char ch) {
  const auto u = static_cast<unsigned char>(ch);
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || is_digit(ch) || ch == '_' ||
         u >= 0x80;  // Python identifiers may be non-ASCII
}
bool is_identifier(std::string_view s) {
  return !s.empty() && !is_digit(s[0]) && std::all_of(s.begin(), s.end(), is_ident_char);
}

bool is_module_name(std::string_view s) {
  std::size_t at = 0;
  while (true) {
    const std::size_t dot = s.find('.', at);
    if (!is_identifier(s.substr(at, dot == std::string_view::npos ? dot : dot - at))) return false;
    if (dot == std::string_view::npos) return true;
    at = dot + 1;
  }
}

/// "module", "module:name", "module:name()" or "module:name(args)".
bool is_app(std::string_view s) {
  const std::size_t colon = s.find(':');
  if (!is_module_name(s.substr(0, colon))) return false;
  if (colon == std::string_view::npos) return true;
  std::string_view callable = s.substr(colon + 1);
  const std::size_t paren = callable.find('(');
  if (paren != std::string_view::npos) {
    if (callable.back() != ')') return false;
    callable = callable.substr(0, paren);
  }
  return is_identifier(callable);
}

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw config_error(where + ": " + what);
}

/// Checks the value of key `k` in `c`; an error starts with `where`. What a file cannot get
/// wrong by its type (ranges, names, formats) is checked here, for a file and for flags alike.
void check_key(const key_def& k, const serve_config& c, const std::string& where) {
  const std::string_view name = k.name;
  if (name == "app") {
    if (!c.app.empty() && !is_app(c.app)) {
      fail(where, fmt::format(
                      "'{}' is not an application; write MODULE:CALLABLE (myapp:app), "
                      "MODULE:FACTORY() or MODULE:FACTORY(ARGS) (myapp:create_app(\"prod\")), or "
                      "MODULE alone for MODULE:application; MODULE is a dotted module name "
                      "(pkg.web) and CALLABLE a name in it",
                      c.app));
    }
  } else if (name == "workers") {
    if (c.workers > max_workers) {
      fail(where, fmt::format("{} is too many; allowed: 0 (one per core) to {}", c.workers,
                              max_workers));
    }
  } else if (name == "threads") {
    if (c.threads < 1 || c.threads > max_threads) {
      fail(where, fmt::format("{} is out of range; allowed: 1 to {}", c.threads, max_threads));
    }
  } else if (name == "limit_request_line") {
    if (c.limit_request_line > max_limit_request_line) {
      fail(where, fmt::format("{} is too large; allowed: 0 (unlimited) to {}",
                              c.limit_request_line, max_limit_request_line));
    }
  } else if (name == "limit_request_fields") {
    if (c.limit_request_fields > max_limit_request_fields) {
      fail(where, fmt::format("{} is too many; allowed: 0 to {}", c.limit_request_fields,
                              max_limit_request_fields));
    }
  } else if (name == "backlog") {
    if (c.backlog > static_cast<std::size_t>(INT_MAX)) {
      fail(where, fmt::format("{} is too large; allowed: 0 to {}", c.backlog, INT_MAX));
    }
  } else if (k.type == kind::seconds) {
    const double v = c.*k.seconds;
    if (!std::isfinite(v) || v < 0) {
      fail(where, fmt::format("{} is not a number of seconds; allowed: a finite number >= 0",
                              seconds_text(v)));
    }
  } else if (name == "log_level") {
    std::string level = c.log_level;
    for (auto& ch : level) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (level != "debug" && level != "info" && level != "warning" && level != "error" &&
        level != "critical") {
      fail(where, fmt::format("'{}' is not a log level; allowed: debug, info, warning, error, "
                              "critical",
                              c.log_level));
    }
  } else if (name == "extensions") {
    if (c.extensions != "strict" && c.extensions != "shared-gil" && c.extensions != "unsafe" &&
        c.extensions != "auto") {
      fail(where, fmt::format("'{}' is not an extension policy; allowed: strict, shared-gil, "
                              "unsafe, auto (see docs/extensions.md)",
                              c.extensions));
    }
  } else if (name == "memory_limit" || name == "max_memory_per_interpreter") {
    const std::string& size = c.*k.text;
    if (size.empty()) return;
    try {
      (void)isola::parse_size(size);
    } catch (const std::invalid_argument& e) {
      fail(where, e.what());
    }
  } else if (name == "metrics_bind") {
    if (c.metrics_bind.empty()) return;
    const bind_address b = parse_bind(c.metrics_bind, where);
    if (b.type != bind_address::kind::tcp) {
      fail(where, fmt::format("'{}' is a unix socket; metrics are served on TCP: use HOST:PORT "
                              "(127.0.0.1:9100)",
                              c.metrics_bind));
    }
  }
}

// ---- reading a file ----------------------------------------------------------------------------

std::string read_whole_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    throw config_error(
        fmt::format("cannot read config file '{}': {}", path, std::strerror(errno)));
  }
  std::string text;
  char buffer[65536];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, f)) > 0) text.append(buffer, n);
  const bool failed = std::ferror(f) != 0;
  const int error = errno;
  std::fclose(f);
  if (failed) {
    throw config_error(
        fmt::format("cannot read config file '{}': {}", path, std::strerror(error)));
  }
  return text;
}

/// "serve.toml:7" (or just the path if toml++ gave no line).
std::string at_line(const std::string& path, const toml::source_region& where) {
  if (where.begin.line == 0) return path;
  return fmt::format("{}:{}", path, where.begin.line);
}

/// The line a value is on: its own, else its key's.
const toml::source_region& region_of(const toml::node& v, const toml::key& key) {
  return v.source().begin.line != 0 ? v.source() : key.source();
}

std::size_t read_whole(const toml::node& v, std::size_t min, const std::string& where) {
  const auto* i = v.as_integer();
  if (i == nullptr || i->get() < 0 || static_cast<std::uint64_t>(i->get()) < min) {
    fail(where, fmt::format("expected a whole number >= {}, got {}", min, describe(v)));
  }
  return static_cast<std::size_t>(i->get());
}

double read_seconds(const toml::node& v, const std::string& where) {
  double value = -1;
  if (const auto* i = v.as_integer()) value = static_cast<double>(i->get());
  if (const auto* f = v.as_floating_point()) value = f->get();
  if (!(std::isfinite(value) && value >= 0)) {
    fail(where, "expected a number of seconds >= 0 (e.g. 30 or 0.5), got " + describe(v));
  }
  return value;
}

const std::string& read_text(const toml::node& v, const std::string& where) {
  const auto* s = v.as_string();
  if (s == nullptr) fail(where, "expected a string, got " + describe(v));
  return s->get();
}

/// A string, or an array of strings; calls each(text, where it is) for every string.
template <typename Each>
void read_strings(const toml::node& v, const std::string& path, const toml::key& key,
                  const std::string& what, Each&& each) {
  const std::string where =
      at_line(path, region_of(v, key)) + ": key '" + std::string(key.str()) + "'";
  if (const auto* s = v.as_string()) {
    each(s->get(), where);
    return;
  }
  const auto* list = v.as_array();
  if (list == nullptr) fail(where, "expected " + what + ", got " + describe(v));
  for (const auto& item : *list) {
    const std::string item_where =
        (item.source().begin.line != 0 ? at_line(path, item.source())
                                       : at_line(path, region_of(v, key))) +
        ": key '" + std::string(key.str()) + "'";
    const auto* s = item.as_string();
    if (s == nullptr) {
      fail(item_where, "expected " + what + ", got an array holding " + describe(item));
    }
    each(s->get(), item_where);
  }
}

std::vector<std::string> split_paths(std::string_view text) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at <= text.size()) {
    std::size_t comma = text.find(',', at);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view part = text.substr(at, comma - at);
    while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
    while (!part.empty() && part.back() == ' ') part.remove_suffix(1);
    if (!part.empty()) out.emplace_back(part);
    at = comma + 1;
  }
  return out;
}

}  // namespace

// ---- bind addresses ----------------------------------------------------------------------------

bind_address parse_bind(const std::string& text, const std::string& where) {
  auto bad = [&](const std::string& why) {
    return config_error(
        fmt::format("{}: '{}' is not a bind address ({}); {}", where, text, why, bind_forms));
  };
  bind_address b;
  b.text = text;
  std::string_view s = text;
  if (s.substr(0, 5) == "unix:") {
    s.remove_prefix(s.substr(0, 7) == "unix://" ? 7 : 5);
    if (s.empty()) throw bad("no socket path after 'unix:'");
    b.type = bind_address::kind::unix_socket;
    b.path = std::string(s);
    return b;
  }
  if (s.substr(0, 5) == "fd://") {
    throw config_error(fmt::format(
        "{}: '{}': isola serve does not support fd:// binds (a socket inherited by number) yet; "
        "{}",
        where, text, bind_forms));
  }
  if (s.substr(0, 6) == "tcp://") s.remove_prefix(6);
  if (s.empty()) throw bad("it is empty");

  std::string_view host;
  std::string_view port;
  bool has_port = false;
  if (s.front() == '[') {
    const std::size_t close = s.find(']');
    if (close == std::string_view::npos) throw bad("no ']' after the IPv6 address");
    host = s.substr(1, close - 1);
    const std::string_view rest = s.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') throw bad("expected ':PORT' after ']'");
      port = rest.substr(1);
      has_port = true;
    }
    const std::size_t zone = host.find('%');  // fe80::1%eth0
    const std::string_view address = host.substr(0, zone);
    const bool address_ok =
        address.find(':') != std::string_view::npos &&
        std::all_of(address.begin(), address.end(), [](char ch) {
          return std::isxdigit(static_cast<unsigned char>(ch)) || ch == ':' || ch == '.';
        });
    const std::string_view zone_id =
        zone == std::string_view::npos ? std::string_view{} : host.substr(zone + 1);
    const bool zone_ok =
        zone == std::string_view::npos ||
        (!zone_id.empty() && std::all_of(zone_id.begin(), zone_id.end(), [](char ch) {
          return is_ident_char(ch) || ch == '-' || ch == '.';
        }));
    if (!address_ok || !zone_ok) {
      throw bad("'" + std::string(host) + "' in brackets is not an IPv6 address");
    }
  } else {
    const auto colons = std::count(s.begin(), s.end(), ':');
    if (colons > 1) throw bad("an IPv6 address goes in brackets: [::1]:8000");
    if (colons == 1) {
      const std::size_t colon = s.find(':');
      host = s.substr(0, colon);
      port = s.substr(colon + 1);
      has_port = true;
      if (host.empty()) host = "0.0.0.0";
    } else if (std::all_of(s.begin(), s.end(), is_digit)) {
      host = "127.0.0.1";
      port = s;
      has_port = true;
    } else {
      host = s;
    }
    const bool host_ok = std::all_of(host.begin(), host.end(), [](char ch) {
      return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || is_digit(ch) || ch == '.' ||
             ch == '-' || ch == '_';
    });
    if (!host_ok) throw bad("'" + std::string(host) + "' is not a host name or address");
  }
  b.host = std::string(host);
  for (auto& ch : b.host) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  b.port = default_port;
  if (has_port) {
    if (port.empty()) throw bad("no port after ':'");
    const bool numeric = port.size() <= 5 && std::all_of(port.begin(), port.end(), is_digit);
    const unsigned long value = numeric ? std::stoul(std::string(port)) : 0;
    if (!numeric || value > 65535) {
      throw bad("port '" + std::string(port) + "' is not a number from 0 to 65535");
    }
    b.port = static_cast<std::uint16_t>(value);
  }
  return b;
}

// ---- load_toml, validate, to_toml, keys --------------------------------------------------------

void load_toml(const std::string& path, serve_config& into) {
  const std::string text = read_whole_file(path);
  toml::table table;
  try {
    table = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    throw config_error(fmt::format("{}:{}:{}: not valid TOML: {}", path, e.source().begin.line,
                                   e.source().begin.column, e.description()));
  }

  // toml++ keeps keys sorted; errors are reported in the order of the file.
  std::vector<std::pair<const toml::key*, const toml::node*>> entries;
  for (const auto& [key, value] : table) entries.emplace_back(&key, &value);
  std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    const auto& x = a.first->source().begin;
    const auto& y = b.first->source().begin;
    return x.line != y.line ? x.line < y.line : x.column < y.column;
  });

  serve_config c = into;  // `into` changes only if the whole file is good
  std::vector<std::pair<const key_def*, const toml::key*>> seen;
  for (const auto& [key_ptr, value_ptr] : entries) {
    const toml::key& key = *key_ptr;
    const toml::node& v = *value_ptr;
    const std::string key_line = at_line(path, key.source());
    const key_def* k = find_key(key.str());
    if (k == nullptr) {
      if (v.is_table() || v.is_array_of_tables()) {
        fail(key_line,
             fmt::format("{}{}{} is a table; isola serve's settings are top-level keys (workers "
                         "= 4), not in [sections]",
                         v.is_table() ? "[" : "[[", key.str(), v.is_table() ? "]" : "]]"));
      }
      const key_def* near = closest_key(key.str());
      if (near != nullptr) {
        fail(key_line,
             fmt::format("unknown key '{}'; did you mean '{}'?", key.str(), near->name));
      }
      fail(key_line, fmt::format("unknown key '{}'; see `isola serve --help` (a key is a long "
                                 "option without its dashes: max_requests or max-requests)",
                                 key.str()));
    }
    for (const auto& [other_def, other_key] : seen) {
      if (other_def == k) {
        fail(key_line, fmt::format("key '{}' sets '{}' again (line {}); keep one of them",
                                   key.str(), other_key->str(), other_key->source().begin.line));
      }
    }
    seen.emplace_back(k, &key);

    const std::string where =
      at_line(path, region_of(v, key)) + ": key '" + std::string(key.str()) + "'";
    switch (k->type) {
      case kind::text: c.*k->text = read_text(v, where); break;
      case kind::whole: c.*k->whole = read_whole(v, k->min, where); break;
      case kind::seconds: c.*k->seconds = read_seconds(v, where); break;
      case kind::binds: {
        std::vector<bind_address> binds;
        read_strings(v, path, key, "a bind address or an array of them",
                     [&](const std::string& s, const std::string& at) {
                       binds.push_back(parse_bind(s, at));
                     });
        c.bind = std::move(binds);
        break;
      }
      case kind::paths: {
        std::vector<std::string> paths;
        if (const auto* s = v.as_string()) {
          paths = split_paths(s->get());
        } else {
          read_strings(v, path, key, "a comma-separated string or an array of strings",
                       [&](const std::string& s, const std::string&) { paths.push_back(s); });
        }
        c.pythonpath = std::move(paths);
        break;
      }
    }
    check_key(*k, c, where);
  }
  into = std::move(c);
}

void validate(const serve_config& c) {
  if (c.app.empty()) {
    throw config_error(
        "no application: give MODULE:CALLABLE (e.g. myapp:app) on the command line or "
        "`app = \"myapp:app\"` in the config file");
  }
  for (const auto& k : key_defs()) {
    check_key(k, c, fmt::format("key '{}' ({})", k.name, k.flag));
  }
}

std::string to_toml(const serve_config& c) {
  std::string out = "# isola serve: effective configuration\n";
  if (!c.config_file.empty()) out += "# read from " + c.config_file + "\n";
  auto strings = [](const auto& items, auto text_of) {
    std::string s = "[";
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (i > 0) s += ", ";
      s += toml_string(text_of(items[i]));
    }
    return s + "]";
  };
  for (const auto& k : key_defs()) {
    std::string value;
    switch (k.type) {
      case kind::text: value = toml_string(c.*k.text); break;
      case kind::whole: value = fmt::format("{}", c.*k.whole); break;
      case kind::seconds: value = seconds_text(c.*k.seconds); break;
      case kind::binds: value = strings(c.bind, bind_text); break;
      case kind::paths:
        value = strings(c.pythonpath, [](const std::string& s) -> const std::string& { return s; });
        break;
    }
    out += fmt::format("{} = {}\n", k.name, value);
  }
  return out;
}

const std::vector<std::string>& keys() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& k : key_defs()) out.emplace_back(k.name);
    return out;
  }();
  return names;
}

}  // namespace isola::config
