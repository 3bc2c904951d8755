// gunicorn's access-log atoms (gunicorn/glogging.py): %(h)s remote address, %(l)s '-',
// %(u)s user ('-'), %(t)s [day/month/year:H:M:S zone], %(r)s request line, %(m)s method,
// %(U)s path, %(q)s query, %(H)s protocol, %(s)s status, %(b)s length or '-', %(B)s length,
// %(f)s referer, %(a)s user agent, %(T)s seconds, %(D)s microseconds, %(M)s milliseconds,
// %(L)s seconds with decimals, %(p)s process id, %({name}i)s request header,
// %({name}o)s response header, %({name}e)s environment ('-').
#include "tools/serve/access_log.hpp"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <stdexcept>

#include <fmt/chrono.h>
#include <fmt/core.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

namespace isola::serve {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

const std::string* find_header(const std::vector<std::pair<std::string, std::string>>& h,
                               const std::string& lower_name) {
  for (const auto& [k, v] : h) {
    if (k.size() == lower_name.size() && lower(k) == lower_name) return &v;
  }
  return nullptr;
}

std::string or_dash(const std::string* v) { return v == nullptr || v->empty() ? "-" : *v; }

}  // namespace

access_format::access_format(std::string_view f) {
  std::string literal;
  for (std::size_t i = 0; i < f.size();) {
    if (f[i] == '%' && i + 1 < f.size() && f[i + 1] == '(') {
      const auto close = f.find(")s", i + 2);
      if (close == std::string_view::npos) {
        throw std::invalid_argument(fmt::format(
            "--access-logformat: '%(' at offset {} has no closing ')s'; atoms are written "
            "%(h)s, %(r)s, %({{header}}i)s",
            i));
      }
      const std::string_view name = f.substr(i + 2, close - i - 2);
      part p;
      if (name.size() >= 3 && name.front() == '{' && name[name.size() - 2] == '}' &&
          (name.back() == 'i' || name.back() == 'o' || name.back() == 'e')) {
        p.atom = name.back();
        p.text = lower(std::string(name.substr(1, name.size() - 3)));
      } else if (name.size() == 1 &&
                 std::string_view("hlutrmUqHsbBfaTDMLp").find(name[0]) != std::string_view::npos) {
        p.atom = name[0];
      } else {
        throw std::invalid_argument(fmt::format(
            "--access-logformat: unknown atom '%({})s'; gunicorn's atoms are h l u t r m U q H "
            "s b B f a T D M L p and {{header}}i, {{header}}o, {{variable}}e",
            name));
      }
      if (!literal.empty()) parts_.push_back({0, std::move(literal)});
      literal.clear();
      parts_.push_back(std::move(p));
      i = close + 2;
    } else if (f[i] == '%' && i + 1 < f.size() && f[i + 1] == '%') {
      literal += '%';
      i += 2;
    } else {
      literal += f[i++];
    }
  }
  if (!literal.empty()) parts_.push_back({0, std::move(literal)});
}

std::string access_format::format(const access_record& r) const {
  std::string out;
  out.reserve(160);
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(r.duration).count();
  for (const auto& p : parts_) {
    switch (p.atom) {
      case 0: out += p.text; break;
      case 'h': out += r.remote_addr.empty() ? "-" : r.remote_addr; break;
      case 'l': out += '-'; break;
      case 'u': out += '-'; break;
      case 't': {
        const std::time_t t = std::chrono::system_clock::to_time_t(r.started);
        std::tm tm{};
        localtime_r(&t, &tm);
        char buf[64];
        std::strftime(buf, sizeof buf, "[%d/%b/%Y:%H:%M:%S %z]", &tm);
        out += buf;
        break;
      }
      case 'r': out += fmt::format("{} {} {}", r.method, r.target, r.protocol); break;
      case 'm': out += r.method; break;
      case 'U': out += r.path; break;
      case 'q': out += r.query; break;
      case 'H': out += r.protocol; break;
      case 's': out += std::to_string(r.status); break;
      case 'b': out += r.body_bytes == 0 ? "-" : std::to_string(r.body_bytes); break;
      case 'B': out += std::to_string(r.body_bytes); break;
      case 'f': out += or_dash(find_header(r.request_headers, "referer")); break;
      case 'a': out += or_dash(find_header(r.request_headers, "user-agent")); break;
      case 'T': out += std::to_string(us / 1000000); break;
      case 'D': out += std::to_string(us); break;
      case 'M': out += std::to_string(us / 1000); break;
      case 'L': out += fmt::format("{:.6f}", static_cast<double>(us) / 1e6); break;
      case 'p': out += fmt::format("<{}>", ::getpid()); break;
      case 'i': out += or_dash(find_header(r.request_headers, p.text)); break;
      case 'o': out += or_dash(find_header(r.response_headers, p.text)); break;
      case 'e': out += '-'; break;
      default: break;
    }
  }
  return out;
}

access_log::access_log(const std::string& path, std::string_view format) : format_(format) {
  if (path.empty()) return;
  if (path == "-") {
    logger_ = std::make_shared<spdlog::logger>("isola.access",
                                               std::make_shared<spdlog::sinks::stdout_sink_mt>());
  } else {
    try {
      logger_ = std::make_shared<spdlog::logger>(
          "isola.access", std::make_shared<spdlog::sinks::basic_file_sink_mt>(path));
    } catch (const spdlog::spdlog_ex& e) {
      throw std::runtime_error(fmt::format(
          "cannot open the access log '{}': {}; check the folder exists and is writable", path,
          e.what()));
    }
  }
  logger_->set_pattern("%v");
  logger_->set_level(spdlog::level::info);
  logger_->flush_on(spdlog::level::warn);
}

void access_log::write(const access_record& r) {
  if (logger_) logger_->info(format_.format(r));
}

void access_log::flush() {
  if (logger_) logger_->flush();
}

}  // namespace isola::serve
