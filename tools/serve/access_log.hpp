// isola serve's access log: gunicorn's --access-logformat atoms, compiled once, written
// through spdlog (a file, or stdout for "-").
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace spdlog {
class logger;
}

namespace isola::serve {

/// What the access log knows about one finished request.
struct access_record {
  std::string remote_addr;
  std::string method;
  std::string target;        ///< as sent: path and query
  std::string path;          ///< decoded PATH_INFO
  std::string query;
  std::string protocol;      ///< "HTTP/1.1"
  int status = 0;
  std::uint64_t body_bytes = 0;
  std::chrono::system_clock::time_point started;
  std::chrono::nanoseconds duration{0};
  /// Request headers (lower-case names) and response headers, for %({name}i)s / %({name}o)s.
  std::vector<std::pair<std::string, std::string>> request_headers;
  std::vector<std::pair<std::string, std::string>> response_headers;
};

/// A --access-logformat compiled into literal text and atoms: h l u t r m U q H s b B f a T D
/// M L p, {header}i, {header}o and {var}e (the request's CGI variables are not kept: '-').
class access_format {
 public:
  explicit access_format(std::string_view format);
  std::string format(const access_record& r) const;

 private:
  struct part {
    char atom = 0;          ///< 0: literal
    std::string text;       ///< the literal, or the header name for i/o
  };
  std::vector<part> parts_;
};

/// Where access lines go: none (empty path), stdout ("-"), or a file (appended).
class access_log {
 public:
  access_log(const std::string& path, std::string_view format);
  bool enabled() const noexcept { return logger_ != nullptr; }
  void write(const access_record& r);
  void flush();

 private:
  access_format format_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace isola::serve
