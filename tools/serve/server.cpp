// isola serve: listeners, connections and the hand-over to the WSGI side.
//
// Each connection is one coroutine on its own strand. It reads a request's head with Beast
// (limits checked there), builds the CGI variables in C++, reads a small body whole, and
// submits the request to the pool, which runs _isola_serve.handle in a free own-GIL
// interpreter. The connection's response channel carries what comes back: the pool's
// completion handler sends "done" into it, and a streaming response (a large or slow
// iterable) sends its head and chunks through it first, so the coroutine waits on one thing.
// A large or chunked request body streams the other way through a per-request channel that
// wsgi.input reads. Both channels are bounded: a slow client slows the application down
// instead of filling memory.
// With --threads above 1, each interpreter runs _isola_serve.serve_loop instead (one long
// pool task), whose handler threads take requests from a channel all the loops share; the
// outcome then comes back through the response channel as a tuple (see `application`).
#include "tools/serve/server.hpp"

#include "tools/isola/cli.hpp"
#include "tools/isola/pool_support.hpp"
#include "tools/serve/access_log.hpp"
#include "tools/serve/metrics.hpp"
#include "tools/serve/py/wsgi_helper.py.hpp"

#include <isola/channel.hpp>
#include <isola/error.hpp>
#include <isola/log.hpp>
#include <isola/memory.hpp>
#include <isola/pool.hpp>
#include <isola/runtime.hpp>
#include <isola/version.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/core.h>
#include <spdlog/spdlog.h>

#include <sys/resource.h>
#include <sys/sendfile.h>
#include <unistd.h>

namespace isola::serve {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using unix_proto = asio::local::stream_protocol;
using clock = std::chrono::steady_clock;
constexpr auto tuple_token = asio::as_tuple(asio::use_awaitable);

/// A request body up to this size is read whole before the application runs; a larger or
/// chunked one streams through a channel.
constexpr std::size_t inline_body_limit = 256 * 1024;
constexpr std::size_t body_chunk = 64 * 1024;
/// Items a response or body channel holds before its sender waits.
constexpr std::size_t channel_depth = 8;

std::shared_ptr<spdlog::logger> log() {
  static auto l = isola::logger("serve");
  return l;
}

// ---- text helpers ----------------------------------------------------------------------

/// Bytes as a str of code points 0-255 (PEP 3333's latin-1 environ strings), in UTF-8, which
/// is how isola::value carries text into Python.
std::string latin1_to_utf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (unsigned char c : in) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

/// The reverse, for status lines and headers from the application; nullopt when a code point
/// is above 255 (not latin-1, which PEP 3333 requires).
std::optional<std::string> utf8_to_latin1(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    const auto c = static_cast<unsigned char>(in[i]);
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if ((c & 0xE0) == 0xC0 && c <= 0xC3 && i + 1 < in.size()) {
      out += static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(in[++i]) & 0x3F));
    } else {
      return std::nullopt;
    }
  }
  return out;
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size() && hex(in[i + 1]) >= 0 && hex(in[i + 2]) >= 0) {
      out += static_cast<char>(hex(in[i + 1]) * 16 + hex(in[i + 2]));
      i += 2;
    } else {
      out += in[i];
    }
  }
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

/// The Date header's value, made once a second per thread.
const std::string& http_date() {
  thread_local std::time_t last = 0;
  thread_local std::string text;
  const std::time_t now = std::time(nullptr);
  if (now != last) {
    last = now;
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    text = buf;
  }
  return text;
}

const char* reason_of(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

/// A response isola makes itself (errors): a short text body, and Connection: close when the
/// connection cannot go on.
std::string error_response(int status, std::string_view detail, bool close) {
  std::string body = fmt::format("{} {}\n{}\n", status, reason_of(status), detail);
  return fmt::format(
      "HTTP/1.1 {} {}\r\nServer: isola/{}\r\nDate: {}\r\nContent-Type: text/plain; "
      "charset=utf-8\r\nContent-Length: {}\r\n{}\r\n{}",
      status, reason_of(status), ISOLA_VERSION, http_date(), body.size(),
      close ? "Connection: close\r\n" : "", body);
}

/// Closes a file descriptor when it goes (a response's sendfile source).
struct unique_fd {
  int fd = -1;
  explicit unique_fd(int f) : fd(f) {}
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() {
    if (fd >= 0) ::close(fd);
  }
};

// ---- the application's interpreters ----------------------------------------------------

/// The WSGI side as the module _isola_serve, then the application loaded by it.
std::string helper_init(const config::serve_config& cfg) {
  auto repr = [](const std::string& s) { return value(s).repr(); };
  return cli::helper_module_init("_isola_serve", embedded::wsgi_helper) +
         fmt::format("import _isola_serve\n_isola_serve.load({}, {}, {})\n", repr(cfg.app),
                     repr(std::string("isola/") + ISOLA_VERSION),
                     cfg.threads > 1 ? "True" : "False");  // wsgi.multithread
}

std::shared_ptr<pool> make_pool(const config::serve_config& cfg) {
  pool_options o;
  o.size = cfg.workers;
  // validate() has checked the name.
  const auto policy = cli::parse_extension_policy(cfg.extensions).value_or(extension_policy::strict);
  o.interpreter =
      policy == extension_policy::shared_gil ? interpreter_config::shared_gil()
                                             : interpreter_config::isolated();
  if (policy != extension_policy::shared_gil) o.extensions = policy;
  o.interpreter.name = "serve";
  o.sys_path = cfg.pythonpath;
  o.sys_path.insert(o.sys_path.begin(), std::filesystem::current_path().string());
  if (!cfg.memory_limit.empty()) o.interpreter.memory_limit = parse_size(cfg.memory_limit);
  if (!cfg.max_memory_per_interpreter.empty()) {
    o.max_memory_per_interpreter = parse_size(cfg.max_memory_per_interpreter);
  }
  if (cfg.threads > 1) {
    o.max_tasks_per_interpreter = 1;  // a serve loop that returns is followed by a fresh one
  } else {
    o.max_tasks_per_interpreter = cfg.max_requests;
    o.max_tasks_jitter = cfg.max_requests_jitter;
  }
  o.init_code = helper_init(cfg);
  return std::make_shared<pool>(std::move(o));
}

/// The application's interpreters: a pool that runs _isola_serve.handle once per request
/// (--threads 1), or, with --threads above 1, one _isola_serve.serve_loop per interpreter,
/// whose handler threads take requests from a channel all the loops share. A loop that
/// returns (--max-requests, the soft memory limit) or fails (its interpreter got stuck and
/// was replaced) is started again in its slot's fresh interpreter until the channel closes.
class application : public std::enable_shared_from_this<application> {
 public:
  /// How long past the earliest deadline of its requests (or, with none running, past
  /// now + --timeout) a serve loop's watchdog may go without re-arming its pool deadline
  /// before the pool declares the interpreter stuck (serve_loop's `heartbeat`).
  static constexpr std::chrono::seconds heartbeat{1};

  static std::shared_ptr<application> start(const config::serve_config& cfg) {
    auto app = std::shared_ptr<application>(new application(cfg));
    if (app->threaded()) {
      for (std::size_t i = 0; i < app->workers_->size(); ++i) app->run_loop(static_cast<int>(i));
    }
    return app;
  }

  pool& workers() noexcept { return *workers_; }
  const std::shared_ptr<pool>& workers_ptr() const noexcept { return workers_; }
  bool threaded() const noexcept { return cfg_.threads > 1; }
  /// --threads above 1: where requests go, as (environ, body, in_id, out_id).
  channel& requests() noexcept { return requests_; }
  /// --threads above 1: how many interpreters the pool has replaced as stuck (their requests
  /// get no answer from them).
  std::uint64_t stuck_replaced() const noexcept {
    return stuck_replaced_.load(std::memory_order_acquire);
  }

  /// Requests already handed over finish; then the interpreters end (bounded).
  void shutdown() {
    if (requests_) requests_.close();  // the loops drain it, then return
    workers_->shutdown();
  }

  /// --threads above 1: a request that ran in `slot` for busy_ns, as the pool counts its tasks
  /// with --threads 1 (interpreter metrics).
  void count(std::int64_t slot, std::int64_t busy_ns, bool ok, bool timed_out) {
    if (slot < 0 || static_cast<std::size_t>(slot) >= counters_.size()) return;
    auto& c = counters_[static_cast<std::size_t>(slot)];
    (ok ? c.done : c.failed).fetch_add(1, std::memory_order_relaxed);
    if (timed_out) c.timed_out.fetch_add(1, std::memory_order_relaxed);
    c.busy_ns.fetch_add(busy_ns, std::memory_order_relaxed);
  }

  /// The pool's figures; with --threads above 1, per request rather than per serve loop.
  pool_stats stats() const {
    auto st = workers_->stats();
    if (!threaded()) return st;
    for (auto& i : st.interpreters) {
      if (i.shared_gil_lane || i.index >= counters_.size()) continue;
      const auto& c = counters_[i.index];
      // A request stuck in C code never reports back: the pool replaced its interpreter,
      // which it counts as a broken serve loop.
      i.tasks_done = c.done.load(std::memory_order_relaxed);
      i.tasks_failed = c.failed.load(std::memory_order_relaxed) + i.replaced_broken;
      i.tasks_timed_out = c.timed_out.load(std::memory_order_relaxed) + i.replaced_broken;
      i.busy = std::chrono::nanoseconds(c.busy_ns.load(std::memory_order_relaxed));
    }
    return st;
  }

 private:
  struct slot_counters {
    std::atomic<std::uint64_t> done{0}, failed{0}, timed_out{0};
    std::atomic<std::int64_t> busy_ns{0};
  };

  explicit application(const config::serve_config& cfg)
      : cfg_(cfg), workers_(make_pool(cfg)), counters_(workers_->size()) {
    if (threaded()) requests_ = channel(std::max<std::size_t>(64, 4 * cfg.workers * cfg.threads));
    if (!cfg.max_memory_per_interpreter.empty()) {
      soft_limit_ = parse_size(cfg.max_memory_per_interpreter);
    }
  }

  std::size_t draw_limit() {
    if (cfg_.max_requests == 0 || cfg_.max_requests_jitter == 0) return cfg_.max_requests;
    std::lock_guard lock(rng_mu_);
    return cfg_.max_requests +
           std::uniform_int_distribution<std::size_t>(0, cfg_.max_requests_jitter)(rng_);
  }

  void run_loop(int slot) {
    std::vector<value> args{value(std::int64_t{slot}),
                            value(static_cast<std::int64_t>(requests_.id())),
                            value(static_cast<std::int64_t>(cfg_.threads)),
                            value(static_cast<std::int64_t>(draw_limit())), value(cfg_.timeout),
                            value(static_cast<std::int64_t>(soft_limit_)),
                            value(std::chrono::duration<double>(heartbeat).count())};
    task_options opts;
    opts.interpreter_index = slot;
    std::weak_ptr<application> weak = weak_from_this();
    workers_->async_submit(
        "_isola_serve:serve_loop", std::move(args),
        [weak, slot](std::exception_ptr e, value) {
          auto self = weak.lock();
          if (!self) return;
          if (e) {
            try {
              std::rethrow_exception(e);
            } catch (const isola::error& err) {
              if (err.code() == errc::shut_down) return;  // the pool is ending
              if (err.code() == errc::timeout) {  // stuck, and replaced
                self->stuck_replaced_.fetch_add(1, std::memory_order_release);
              }
              log()->error("interpreter {}: {}", slot, err.what());
            } catch (const python_error& err) {
              log()->error("interpreter {}: the serve loop failed: {}", slot,
                           err.traceback().empty() ? err.what() : err.traceback());
            } catch (const std::exception& err) {
              log()->error("interpreter {}: the serve loop failed: {}", slot, err.what());
            }
          }
          // Requests accepted before the channel closed are still served.
          if (!self->requests_.closed() || self->requests_.size() > 0) self->run_loop(slot);
        },
        opts);
  }

  config::serve_config cfg_;
  std::shared_ptr<pool> workers_;
  channel requests_;
  std::vector<slot_counters> counters_;
  std::size_t soft_limit_ = 0;  ///< --max-memory-per-interpreter in bytes (0: none)
  std::atomic<std::uint64_t> stuck_replaced_{0};
  std::mutex rng_mu_;
  std::minstd_rand rng_{std::random_device{}()};
};

/// --threads above 1: a request whose interpreter the pool replaced as stuck gets no answer
/// from it, and the pool cannot tell which requests it had taken. This timer answers it (503):
/// it fires after the request's --timeout plus the time the pool takes to give up on a stuck
/// interpreter, and closes the response channel if an interpreter was replaced as stuck since
/// the request was handed over. Otherwise the request is still queued, or running in a live
/// interpreter that interrupts it at its own timeout, and the timer waits on. It runs on the
/// connection's strand, like the request's coroutine.
struct request_guard {
  template <typename Executor>
  request_guard(Executor ex, std::shared_ptr<application> a, std::uint64_t stuck_before,
                std::shared_ptr<bool> expired, channel out)
      : timer(ex), app(std::move(a)), stuck_before(stuck_before), expired(std::move(expired)),
        out(std::move(out)) {}

  static void arm(const std::shared_ptr<request_guard>& g, asio::steady_timer::duration period) {
    g->timer.expires_after(period);
    g->timer.async_wait([g, period](const boost::system::error_code& ec) {
      if (ec || g->done) return;
      if (g->app->stuck_replaced() == g->stuck_before) {
        arm(g, period);
        return;
      }
      *g->expired = true;
      g->out.close();
    });
  }

  asio::steady_timer timer;
  std::shared_ptr<application> app;
  std::uint64_t stuck_before;
  std::shared_ptr<bool> expired;
  channel out;
  bool done = false;  ///< the request has its outcome
};

// ---- server state ----------------------------------------------------------------------

struct connection_handle {
  std::function<void()> close_if_idle;  ///< posted to the connection's strand
};

struct server_state {
  config::serve_config cfg;
  asio::io_context io;
  std::atomic<std::shared_ptr<application>> app;
  metrics stats;
  access_log alog;
  std::atomic<bool> draining{false};
  std::mutex connections_mu;
  std::list<std::weak_ptr<connection_handle>> connections;
  std::size_t header_limit = 0;

  explicit server_state(const config::serve_config& c)
      : cfg(c), alog(c.access_logfile, c.access_logformat) {
    const std::size_t line = cfg.limit_request_line == 0 ? 65536 : cfg.limit_request_line;
    const std::size_t field = cfg.limit_request_field_size == 0 ? 65536 : cfg.limit_request_field_size;
    header_limit = std::min<std::size_t>(line + 2 + (cfg.limit_request_fields + 1) * (field + 2) + 2,
                                         std::size_t{16} << 20);
  }

  std::list<std::weak_ptr<connection_handle>>::iterator add(std::weak_ptr<connection_handle> h) {
    std::lock_guard lock(connections_mu);
    return connections.insert(connections.end(), std::move(h));
  }
  void remove(std::list<std::weak_ptr<connection_handle>>::iterator it) {
    std::lock_guard lock(connections_mu);
    connections.erase(it);
  }
  void close_idle_connections() {
    std::lock_guard lock(connections_mu);
    for (auto& w : connections) {
      if (auto h = w.lock()) h->close_if_idle();
    }
  }
};

/// What the connection knows about the request being served.
struct request_info {
  std::string method;
  std::string target;
  std::string path;   ///< raw, before decoding
  std::string query;
  std::string protocol;
  unsigned version = 11;
  bool keep_alive = true;
  bool head = false;
  std::vector<std::pair<std::string, std::string>> headers;
  clock::time_point started;
  std::chrono::system_clock::time_point wall_started;
};

/// Where the pool's completion leaves the outcome; read by the connection after it receives
/// "done" on the response channel (the channel orders the two).
struct outcome {
  std::exception_ptr error;
  value result;
};

struct peer {
  std::string addr;
  std::string port;
  std::string server_name;
  std::string server_port;
};

template <class Stream>
class connection : public std::enable_shared_from_this<connection<Stream>> {
 public:
  connection(std::shared_ptr<server_state> s, Stream stream, peer p)
      : s_(std::move(s)), stream_(std::move(stream)), peer_(std::move(p)) {}

  asio::awaitable<void> serve() {
    auto self = this->shared_from_this();
    auto handle = std::make_shared<connection_handle>();
    std::weak_ptr<connection> weak = self;
    auto ex = stream_.get_executor();
    handle->close_if_idle = [weak, ex] {
      asio::post(ex, [weak] {
        if (auto c = weak.lock(); c && c->idle_) {
          beast::error_code ignored;
          c->stream_.socket().shutdown(asio::socket_base::shutdown_both, ignored);
          c->stream_.socket().close(ignored);
        }
      });
    };
    const auto it = s_->add(handle);
    s_->stats.connection_opened();
    try {
      co_await loop();
    } catch (const std::exception& e) {
      log()->debug("connection from {}: {}", peer_.addr, e.what());
    }
    s_->stats.connection_closed();
    s_->remove(it);
    beast::error_code ignored;
    stream_.socket().shutdown(asio::socket_base::shutdown_both, ignored);
    stream_.socket().close(ignored);
    if (out_) out_.close();
  }

 private:
  asio::awaitable<void> loop() {
    bool first = true;
    for (;;) {
      if (s_->draining.load()) co_return;
      // Between requests: wait up to keep_alive for the next one to start; a request's
      // head must then arrive within header_timeout.
      idle_ = true;
      if (!first && buffer_.size() == 0) {
        stream_.expires_after(seconds(s_->cfg.keep_alive));
        auto [ec, n] = co_await stream_.async_read_some(buffer_.prepare(4096), tuple_token);
        if (ec) co_return;
        buffer_.commit(n);
      }
      if (s_->draining.load() && buffer_.size() == 0) co_return;
      first = false;
      http::request_parser<http::buffer_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(s_->header_limit));
      parser.body_limit(boost::none);
      stream_.expires_after(seconds(s_->cfg.header_timeout));
      auto [ec, n] = co_await http::async_read_header(stream_, buffer_, parser, tuple_token);
      idle_ = false;
      if (ec == http::error::end_of_stream || ec == asio::error::eof ||
          ec == asio::error::connection_reset || ec == asio::error::operation_aborted) {
        co_return;
      }
      if (ec == beast::error::timeout) {
        if (buffer_.size() > 0 || n > 0) {
          log()->info("dropped a connection from {}: no complete request head within {} s "
                      "(--header-timeout)",
                      peer_.addr, s_->cfg.header_timeout);
          co_await write_raw(error_response(408, "the request head did not arrive in time", true));
        }
        co_return;
      }
      if (ec == http::error::header_limit) {
        co_await reject(431, "the request's header fields are too large (--limit-request-field_size, --limit-request-fields)");
        co_return;
      }
      if (ec) {
        co_await reject(400, fmt::format("malformed request: {}", ec.message()));
        co_return;
      }
      if (!co_await serve_request(parser)) co_return;
    }
  }

  static std::chrono::steady_clock::duration seconds(double s) {
    if (s <= 0) return std::chrono::hours(24 * 365);
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(s));
  }

  asio::awaitable<void> reject(int status, std::string why) {
    log()->info("{} from {}: {}", status, peer_.addr, why);
    s_->stats.request_started();
    s_->stats.request_finished(status, std::chrono::nanoseconds(0));
    co_await write_raw(error_response(status, why, true));
  }

  asio::awaitable<bool> write_raw(std::string text) {
    stream_.expires_after(write_timeout());
    auto [ec, n] = co_await asio::async_write(stream_, asio::buffer(text), tuple_token);
    co_return !ec;
  }

  std::chrono::steady_clock::duration write_timeout() const {
    return seconds(std::max(30.0, s_->cfg.timeout));
  }

  /// Returns whether the connection can take another request.
  asio::awaitable<bool> serve_request(http::request_parser<http::buffer_body>& parser) {
    auto& req = parser.get();
    request_info r;
    r.started = clock::now();
    r.wall_started = std::chrono::system_clock::now();
    r.method = std::string(req.method_string());
    r.target = std::string(req.target());
    r.version = req.version();
    r.protocol = r.version == 10 ? "HTTP/1.0" : "HTTP/1.1";
    r.keep_alive = req.keep_alive();
    r.head = req.method() == http::verb::head;
    const auto q = r.target.find('?');
    r.path = r.target.substr(0, q);
    if (q != std::string::npos) r.query = r.target.substr(q + 1);

    // Limits, with gunicorn's option names.
    if (s_->cfg.limit_request_line != 0 &&
        r.method.size() + r.target.size() + 10 > s_->cfg.limit_request_line) {
      co_await reject(414, fmt::format("the request line is longer than {} bytes "
                                       "(--limit-request-line)",
                                       s_->cfg.limit_request_line));
      co_return false;
    }
    std::size_t fields = 0;
    for (const auto& f : req) {
      ++fields;
      if (s_->cfg.limit_request_field_size != 0 &&
          f.name_string().size() + f.value().size() + 2 > s_->cfg.limit_request_field_size) {
        co_await reject(431, fmt::format("header field '{}' is longer than {} bytes "
                                         "(--limit-request-field_size)",
                                         std::string(f.name_string()),
                                         s_->cfg.limit_request_field_size));
        co_return false;
      }
      r.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    }
    if (fields > s_->cfg.limit_request_fields) {
      co_await reject(431, fmt::format("the request has {} header fields, more than {} "
                                       "(--limit-request-fields)",
                                       fields, s_->cfg.limit_request_fields));
      co_return false;
    }
    if (r.target.empty() || (r.target[0] != '/' && r.target != "*" &&
                             r.target.find("://") == std::string::npos)) {
      co_await reject(400, fmt::format("malformed request target '{}'", r.target));
      co_return false;
    }

    s_->stats.request_started();
    if (req[http::field::expect].size() > 0 && iequals(req[http::field::expect], "100-continue") &&
        !parser.is_done() && r.version >= 11) {
      co_await write_raw("HTTP/1.1 100 Continue\r\n\r\n");
    }

    // The body: small ones whole; larger or chunked ones stream through a channel.
    std::string body;
    bool body_error = false;
    while (!parser.is_done() && body.size() < inline_body_limit) {
      if (!co_await read_body_part(parser, body)) {
        body_error = true;
        break;
      }
    }
    if (body_error) {
      // A body that is not valid HTTP (bad chunk framing) or stopped arriving.
      std::string text = error_response(400, "malformed or incomplete request body", true);
      co_await write_raw(std::move(text));
      finish(r, 400, 0, {});
      co_return false;
    }
    channel in;
    std::shared_ptr<bool> pump_done;
    std::shared_ptr<asio::steady_timer> pump_wait;
    if (!parser.is_done()) {
      in = channel(channel_depth);
      if (!body.empty()) in.try_send(message(isola::bytes{std::move(body)}));
      body.clear();
      pump_done = std::make_shared<bool>(false);
      pump_wait = std::make_shared<asio::steady_timer>(stream_.get_executor(),
                                                       asio::steady_timer::time_point::max());
      asio::co_spawn(stream_.get_executor(), pump_body(parser, in, pump_done, pump_wait),
                     asio::detached);
    }

    if (!out_) out_ = channel(channel_depth);
    auto env = environ(r);
    auto done = std::make_shared<outcome>();
    auto app = s_->app.load();
    task_options opts;
    opts.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(s_->cfg.timeout * 1000));
    std::vector<value> args{value(std::move(env)), value(isola::bytes{std::move(body)}),
                            value(in ? static_cast<std::int64_t>(in.id()) : std::int64_t{-1}),
                            value(static_cast<std::int64_t>(out_.id()))};
    auto expired = std::make_shared<bool>(false);
    std::shared_ptr<request_guard> guard;
    if (app && app->threaded()) {
      std::uint64_t stuck_before = 0;
      app = co_await hand_over(std::move(app), std::move(args), stuck_before);
      if (app && s_->cfg.timeout > 0) {
        guard = std::make_shared<request_guard>(stream_.get_executor(), app, stuck_before,
                                                expired, out_);
        request_guard::arm(guard, seconds(s_->cfg.timeout) + 2 * application::heartbeat +
                                      pool_options{}.grace_period);
      }
      if (!app) {
        done->error = std::make_exception_ptr(
            error(errc::shut_down, "the server is stopping: no interpreter takes requests"));
        out_.try_send(message(value("done")));
      }
    } else {
      submit(app->workers_ptr(), std::move(args), opts, done);
    }

    // The response: the head and chunks of a streamed one, then "done".
    int status = 0;
    std::uint64_t sent = 0;
    std::vector<std::pair<std::string, std::string>> response_headers;
    bool streaming = false, chunked = false, complete = false, broken = false, finished = false;
    bool keep = r.keep_alive && !s_->draining.load();
    for (;;) {
      auto [ec, m] = co_await out_.async_recv(tuple_token);
      if (ec) {
        broken = true;
        break;
      }
      const value* v = m.as_value();
      if (v != nullptr && v->type() == kind::str) {  // "done": the outcome is in `done`
        finished = true;
        break;
      }
      if (v != nullptr && v->type() == kind::tuple && app && app->threaded() &&
          take_reply(*app, v->as_tuple().items, *done)) {
        finished = true;
        break;
      }
      if (broken) continue;                               // drain what is left
      if (v != nullptr && v->type() == kind::tuple) {
        const auto& t = v->as_tuple().items;
        if (t.size() == 3 && t[0].as_str() == "head") {
          auto head = response_head(r, t[1], t[2], std::nullopt, keep, status, response_headers,
                                    chunked);
          if (!head) {
            broken = true;
            out_.close();
            continue;
          }
          streaming = true;
          if (!co_await write_raw(std::move(*head))) {
            broken = true;
            out_.close();
          }
        } else if (!t.empty() && t[0].as_str() == "end") {
          if (chunked && !r.head && !co_await write_raw("0\r\n\r\n")) broken = true;
          complete = true;
        }
        continue;
      }
      std::string_view data;
      if (v != nullptr && v->type() == kind::bytes) {
        data = v->as_bytes().data;
      } else if (const auto* b = m.as_buffer()) {
        data = std::string_view(reinterpret_cast<const char*>(b->data()), b->size());
      }
      if (r.head || data.empty()) continue;
      sent += data.size();
      bool ok;
      if (chunked) {
        std::string framed = fmt::format("{:x}\r\n", data.size());
        std::array<asio::const_buffer, 3> bufs{asio::buffer(framed), asio::buffer(data),
                                               asio::buffer("\r\n", 2)};
        stream_.expires_after(write_timeout());
        auto [wec, wn] = co_await asio::async_write(stream_, bufs, tuple_token);
        ok = !wec;
      } else {
        stream_.expires_after(write_timeout());
        auto [wec, wn] = co_await asio::async_write(stream_, asio::buffer(data), tuple_token);
        ok = !wec;
      }
      if (!ok) {
        broken = true;
        out_.close();  // the application's next send fails: it stops and its iterable closes
      }
    }
    if (guard) {
      guard->done = true;
      guard->timer.cancel();
    }
    if (*expired && !finished) {
      done->error = std::make_exception_ptr(error(
          errc::timeout, "the request did not stop after its timeout; its interpreter was "
                         "replaced"));
      finished = true;
      if (!streaming) broken = false;
      out_ = channel();
    }
    if (broken) out_ = channel();  // a fresh one for the next request, if there is one

    // The body pump must be done with the socket before the next request is read; a body
    // the application left unread is drained (or the connection closed).
    if (in) {
      in.close();
      if (!*pump_done) {
        beast::error_code ignored;
        co_await pump_wait->async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      }
      if (!parser.is_done()) keep = false;
    }

    if (!finished) {  // the client went away while the application was still running
      finish(r, status, sent, response_headers);
      co_return false;
    }
    if (done->error) {
      std::string why;
      int code = 500;
      try {
        std::rethrow_exception(done->error);
      } catch (const python_error& e) {
        if (e.is("TimeoutError") || e.is("isola.TaskTimeout")) {
          code = 503;
          s_->stats.timed_out();
          why = fmt::format("the request ran longer than {} s (--timeout) and was interrupted",
                            s_->cfg.timeout);
        } else {
          why = e.traceback().empty() ? fmt::format("{}: {}", e.type_name(), e.message())
                                      : e.traceback();
        }
      } catch (const isola::error& e) {
        if (e.code() == errc::timeout) {
          code = 503;
          s_->stats.timed_out();
          why = fmt::format("the request ran longer than {} s (--timeout) and did not stop: its "
                            "interpreter was replaced",
                            s_->cfg.timeout);
        } else {
          code = 503;
          why = e.what();
        }
      } catch (const std::exception& e) {
        why = e.what();
      }
      if (streaming || broken) {
        log()->error("Error handling request {} {} (the response was cut short): {}", r.method,
                     r.target, why);
        finish(r, status, sent, response_headers);
        co_return false;
      }
      log()->error("Error handling request {} {}: {}", r.method, r.target, why);
      const bool close = code != 503 || !keep;
      // Named first: GCC 12 destroys a conditional's temporary twice inside co_await.
      std::string text = error_response(
          code, code == 503 ? why : std::string("the application failed; see the server's error log"),
          close);
      co_await write_raw(std::move(text));
      finish(r, code, 0, {});
      co_return !close;
    }
    if (broken) {
      finish(r, status, sent, response_headers);
      co_return false;
    }
    if (streaming) {
      if (!chunked) keep = false;  // length unknown to an HTTP/1.0 client: close ends it
      finish(r, status, sent, response_headers);
      co_return complete && keep;
    }

    // The whole response came back at once.
    const auto& t = done->result.as_tuple().items;
    std::optional<std::string_view> whole;
    std::optional<std::tuple<int, std::int64_t, std::int64_t>> file;
    if (t[2].type() == kind::bytes) {
      whole = t[2].as_bytes().data;
    } else {
      const auto& f = t[2].as_tuple().items;
      file.emplace(static_cast<int>(f[1].as_int()), f[2].as_int(), f[3].as_int());
    }
    unique_fd fd_guard(file ? std::get<0>(*file) : -1);
    std::optional<std::uint64_t> length;
    if (whole) length = whole->size();
    if (file) length = static_cast<std::uint64_t>(std::get<2>(*file));
    auto head = response_head(r, t[0], t[1], length, keep, status, response_headers, chunked);
    if (!head) {
      co_await write_raw(error_response(500, "the application's response was malformed; see the "
                                             "server's error log", true));
      finish(r, 500, 0, {});
      co_return false;
    }
    if (whole) {
      std::array<asio::const_buffer, 2> bufs{asio::buffer(*head),
                                             asio::buffer(r.head ? std::string_view() : *whole)};
      stream_.expires_after(write_timeout());
      auto [wec, wn] = co_await asio::async_write(stream_, bufs, tuple_token);
      if (wec) {
        finish(r, status, 0, response_headers);
        co_return false;
      }
      sent = r.head ? 0 : whole->size();
    } else {
      if (!co_await write_raw(std::move(*head))) co_return false;
      if (!r.head) {
        auto [ok, n] = co_await send_file(fd_guard.fd, std::get<1>(*file), std::get<2>(*file));
        sent = n;
        if (!ok) keep = false;
      }
    }
    finish(r, status, sent, response_headers);
    co_return keep;
  }

  /// --threads above 1: the request goes into the serve loops' channel. A reload may close
  /// it between load() and the send: the request then goes to the application that replaced
  /// it. Returns the application that took it, or nullptr once the server is stopping;
  /// `stuck_before` is that application's stuck_replaced() from just before the send.
  asio::awaitable<std::shared_ptr<application>> hand_over(std::shared_ptr<application> app,
                                                          std::vector<value> args,
                                                          std::uint64_t& stuck_before) {
    while (app) {
      stuck_before = app->stuck_replaced();  // of the application that takes the request
      message m(value(isola::tuple{args}));
      auto [ec] = co_await app->requests().async_send(std::move(m), tuple_token);
      if (!ec) co_return app;
      auto fresh = s_->app.load();
      if (fresh == app) break;
      app = std::move(fresh);
    }
    co_return nullptr;
  }

  /// --threads above 1: a serve loop's reply, ('done', slot, busy_ns, result) or ('error',
  /// slot, busy_ns, type, message, traceback, timed_out), into `done`. False if `t` is not one.
  static bool take_reply(application& app, const std::vector<value>& t, outcome& done) {
    if (t.size() == 4 && t[0].type() == kind::str && t[0].as_str() == "done") {
      app.count(t[1].as_int(), t[2].as_int(), true, false);
      done.result = t[3];
      return true;
    }
    if (t.size() == 7 && t[0].type() == kind::str && t[0].as_str() == "error") {
      const bool timed_out = t[6].type() == kind::boolean && t[6].as_bool();
      app.count(t[1].as_int(), t[2].as_int(), false, timed_out);
      done.error = std::make_exception_ptr(
          python_error(t[3].as_str(), t[4].as_str(), t[5].as_str()));
      return true;
    }
    return false;
  }

  void submit(const std::shared_ptr<pool>& app, std::vector<value> args, task_options opts,
              std::shared_ptr<outcome> done) {
    auto ex = s_->io.get_executor();
    // Runs on an I/O thread. The send's own completion is bound there too: a handler without
    // an executor would be posted to Asio's system thread pool, waking one of its threads for
    // every request.
    auto finish = [done, out = out_, ex](std::exception_ptr e, value v) mutable {
      done->error = std::move(e);
      done->result = std::move(v);
      out.async_send(message(value("done")), asio::bind_executor(ex, [](boost::system::error_code) {}));
    };
    // A reload may retire the pool between load() and submit: the task is then refused with
    // errc::shut_down and goes to the pool that replaced it.
    auto retry = [s = s_, args, opts, finish, ex](std::exception_ptr e, value v) mutable {
      if (e) {
        try {
          std::rethrow_exception(e);
        } catch (const isola::error& err) {
          if (err.code() == errc::shut_down) {
            if (auto fresh = s->app.load()) {
              fresh->workers().async_submit("_isola_serve:handle", std::move(args),
                                  asio::bind_executor(ex, std::move(finish)), opts);
              return;
            }
          }
        } catch (...) {
        }
      }
      finish(std::move(e), std::move(v));
    };
    app->async_submit("_isola_serve:handle", std::move(args),
                      asio::bind_executor(ex, std::move(retry)), opts);
  }

  /// Reads the next part of a body into `body`; false on a read error (logged).
  asio::awaitable<bool> read_body_part(http::request_parser<http::buffer_body>& parser,
                                       std::string& body) {
    const std::size_t old = body.size();
    body.resize(old + body_chunk);
    parser.get().body().data = body.data() + old;
    parser.get().body().size = body_chunk;
    stream_.expires_after(seconds(s_->cfg.header_timeout));
    auto [ec, n] = co_await http::async_read(stream_, buffer_, parser, tuple_token);
    body.resize(old + body_chunk - parser.get().body().size);
    if (ec && ec != http::error::need_buffer) {
      log()->info("request body from {}: {}", peer_.addr, ec.message());
      co_return false;
    }
    co_return true;
  }

  asio::awaitable<void> pump_body(http::request_parser<http::buffer_body>& parser, channel in,
                                  std::shared_ptr<bool> done,
                                  std::shared_ptr<asio::steady_timer> wake) {
    bool sending = true;
    while (!parser.is_done()) {
      std::string chunk;
      if (!co_await read_body_part(parser, chunk)) break;
      if (!sending || chunk.empty()) continue;
      // Named first: GCC 12 destroys an aggregate temporary twice inside co_await.
      message item(value(isola::bytes{std::move(chunk)}));
      auto [ec] = co_await in.async_send(std::move(item), tuple_token);
      if (ec) {
        // wsgi.input is no longer read: the response is done. Drain a short remainder so the
        // connection can go on; a long one ends it.
        sending = false;
        if (parser.content_length_remaining() && *parser.content_length_remaining() > (1u << 20)) {
          break;
        }
      }
    }
    in.close();
    *done = true;
    wake->cancel();
  }

  /// Builds the status line and headers (latin-1), adding Date, Server, Content-Length or
  /// chunked framing, and Connection; nullopt (logged) when the application's status or
  /// headers are not latin-1.
  std::optional<std::string> response_head(const request_info& r, const value& status_v,
                                           const value& headers_v,
                                           std::optional<std::uint64_t> length, bool& keep,
                                           int& status,
                                           std::vector<std::pair<std::string, std::string>>& out,
                                           bool& chunked) {
    auto status_text = utf8_to_latin1(status_v.as_str());
    if (!status_text) {
      log()->error("Error handling request {} {}: the status {} is not latin-1 (PEP 3333)",
                   r.method, r.target, status_v.repr());
      return std::nullopt;
    }
    status = std::atoi(status_text->substr(0, 3).c_str());
    std::string head = fmt::format("{} {}\r\n", r.version == 10 ? "HTTP/1.0" : "HTTP/1.1",
                                   *status_text);
    bool has_length = false, has_date = false, has_server = false;
    for (const auto& h : headers_v.as_list().items) {
      const auto& pair = h.as_tuple().items;
      auto name = utf8_to_latin1(pair[0].as_str());
      auto val = utf8_to_latin1(pair[1].as_str());
      if (!name || !val) {
        log()->error("Error handling request {} {}: header {} is not latin-1 (PEP 3333)",
                     r.method, r.target, h.repr());
        return std::nullopt;
      }
      if (iequals(*name, "content-length")) has_length = true;
      if (iequals(*name, "date")) has_date = true;
      if (iequals(*name, "server")) has_server = true;
      head += *name;
      head += ": ";
      head += *val;
      head += "\r\n";
      out.emplace_back(std::move(*name), std::move(*val));
    }
    if (!has_date) head += "Date: " + http_date() + "\r\n";
    if (!has_server) head += fmt::format("Server: isola/{}\r\n", ISOLA_VERSION);
    const bool no_body = status < 200 || status == 204 || status == 304;
    chunked = false;
    if (!has_length && !no_body) {
      if (length) {
        head += fmt::format("Content-Length: {}\r\n", *length);
      } else if (r.version >= 11) {
        head += "Transfer-Encoding: chunked\r\n";
        chunked = true;
      } else {
        keep = false;
      }
    }
    if (!keep) {
      head += "Connection: close\r\n";
    } else if (r.version == 10) {
      head += "Connection: keep-alive\r\n";
    }
    head += "\r\n";
    return head;
  }

  /// sendfile(2) from fd to the socket; returns (all sent, bytes sent).
  asio::awaitable<std::pair<bool, std::uint64_t>> send_file(int fd, std::int64_t offset,
                                                            std::int64_t length) {
    auto& sock = stream_.socket();
    sock.native_non_blocking(true);
    off_t off = offset;
    std::uint64_t sent = 0;
    while (static_cast<std::int64_t>(sent) < length) {
      const ssize_t n = ::sendfile(sock.native_handle(), fd, &off,
                                   static_cast<std::size_t>(length - static_cast<std::int64_t>(sent)));
      if (n > 0) {
        sent += static_cast<std::uint64_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        stream_.expires_after(write_timeout());
        auto [ec] = co_await sock.async_wait(asio::socket_base::wait_write, tuple_token);
        if (ec) co_return std::pair{false, sent};
        continue;
      }
      co_return std::pair{false, sent};  // an error, or the file shrank
    }
    co_return std::pair{true, sent};
  }

  isola::dict environ(const request_info& r) {
    isola::dict env;
    env.items.reserve(16 + r.headers.size());
    auto add = [&env](std::string k, std::string v) {
      env.items.emplace_back(value(std::move(k)), value(std::move(v)));
    };
    add("REQUEST_METHOD", r.method);
    add("PATH_INFO", latin1_to_utf8(percent_decode(r.path)));
    add("QUERY_STRING", latin1_to_utf8(r.query));
    add("RAW_URI", latin1_to_utf8(r.target));
    add("SERVER_PROTOCOL", r.protocol);
    add("REMOTE_ADDR", peer_.addr);
    add("REMOTE_PORT", peer_.port);
    add("wsgi.url_scheme", "http");
    std::string server_name = peer_.server_name;
    std::string server_port = peer_.server_port;
    std::vector<std::pair<std::string, std::string>> http_vars;
    for (const auto& [name, val] : r.headers) {
      if (iequals(name, "content-type")) {
        add("CONTENT_TYPE", latin1_to_utf8(val));
        continue;
      }
      if (iequals(name, "content-length")) {
        add("CONTENT_LENGTH", val);
        continue;
      }
      // A header with '_' would be indistinguishable from one with '-' once both become
      // HTTP_X_Y: dropped, as gunicorn and nginx do, so a client cannot forge a header a
      // proxy set.
      if (name.find('_') != std::string::npos) continue;
      std::string key = "HTTP_";
      for (char c : name) key += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      auto found = std::find_if(http_vars.begin(), http_vars.end(),
                                [&](const auto& kv) { return kv.first == key; });
      if (found != http_vars.end()) {
        found->second += (key == "HTTP_COOKIE" ? "; " : ",") + val;
      } else {
        http_vars.emplace_back(std::move(key), val);
      }
      if (iequals(name, "host")) {
        std::string_view host = val;
        if (!host.empty() && host.front() == '[') {
          const auto end = host.find(']');
          server_name = std::string(host.substr(1, end == std::string_view::npos ? host.npos : end - 1));
          if (end != std::string_view::npos && end + 1 < host.size() && host[end + 1] == ':') {
            server_port = std::string(host.substr(end + 2));
          }
        } else if (const auto colon = host.rfind(':'); colon != std::string_view::npos) {
          server_name = std::string(host.substr(0, colon));
          server_port = std::string(host.substr(colon + 1));
        } else {
          server_name = std::string(host);
        }
      }
    }
    for (auto& [k, v] : http_vars) add(std::move(k), latin1_to_utf8(v));
    add("SERVER_NAME", latin1_to_utf8(server_name));
    add("SERVER_PORT", server_port);
    return env;
  }

  void finish(const request_info& r, int status, std::uint64_t sent,
              std::vector<std::pair<std::string, std::string>> response_headers) {
    const auto d = clock::now() - r.started;
    s_->stats.request_finished(status, d);
    if (!s_->alog.enabled()) return;
    access_record rec;
    rec.remote_addr = peer_.addr;
    rec.method = r.method;
    rec.target = r.target;
    rec.path = r.path;
    rec.query = r.query;
    rec.protocol = r.protocol;
    rec.status = status;
    rec.body_bytes = sent;
    rec.started = r.wall_started;
    rec.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(d);
    rec.request_headers = r.headers;
    rec.response_headers = std::move(response_headers);
    s_->alog.write(rec);
  }

  std::shared_ptr<server_state> s_;
  Stream stream_;
  peer peer_;
  beast::flat_buffer buffer_;
  channel out_;
  bool idle_ = true;
};

// ---- listeners -------------------------------------------------------------------------

std::string host_of(const tcp::endpoint& e) { return e.address().to_string(); }

asio::awaitable<void> accept_tcp(std::shared_ptr<server_state> s, tcp::acceptor& acceptor) {
  const auto local = acceptor.local_endpoint();
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(s->io), tuple_token);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      log()->warn("accept on {}: {}", local.port(), ec.message());
      if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
        asio::steady_timer t(s->io, std::chrono::milliseconds(100));
        co_await t.async_wait(asio::use_awaitable);
      }
      continue;
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    peer p;
    const auto remote = socket.remote_endpoint(ignored);
    p.addr = host_of(remote);
    p.port = std::to_string(remote.port());
    p.server_name = host_of(local);
    p.server_port = std::to_string(local.port());
    auto ex = socket.get_executor();
    auto c = std::make_shared<connection<beast::tcp_stream>>(s, beast::tcp_stream(std::move(socket)),
                                                             std::move(p));
    asio::co_spawn(ex, [c]() { return c->serve(); }, asio::detached);
  }
}

asio::awaitable<void> accept_unix(std::shared_ptr<server_state> s, unix_proto::acceptor& acceptor,
                                  std::string path) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(s->io), tuple_token);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      log()->warn("accept on unix:{}: {}", path, ec.message());
      continue;
    }
    peer p;
    p.addr = "";
    p.port = "";
    p.server_name = path;
    p.server_port = "";
    auto ex = socket.get_executor();
    using stream_t = beast::basic_stream<unix_proto>;
    auto c = std::make_shared<connection<stream_t>>(s, stream_t(std::move(socket)), std::move(p));
    asio::co_spawn(ex, [c]() { return c->serve(); }, asio::detached);
  }
}

/// The metrics endpoint: any GET answers the exposition text, then closes.
asio::awaitable<void> serve_metrics(std::shared_ptr<server_state> s, tcp::acceptor& acceptor) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(tuple_token);
    if (ec) {
      if (!acceptor.is_open()) co_return;
      continue;
    }
    asio::co_spawn(
        s->io,
        [s, sock = std::move(socket)]() mutable -> asio::awaitable<void> {
          beast::tcp_stream stream(std::move(sock));
          beast::flat_buffer buf;
          http::request<http::empty_body> req;
          stream.expires_after(std::chrono::seconds(10));
          auto [rec, n] = co_await http::async_read(stream, buf, req, tuple_token);
          if (rec) co_return;
          http::response<http::string_body> res;
          res.version(11);
          res.keep_alive(false);
          if (req.target() != "/metrics" && req.target() != "/") {
            res.result(http::status::not_found);
            res.body() = "isola serve: metrics are at /metrics\n";
            res.set(http::field::content_type, "text/plain; charset=utf-8");
          } else {
            auto app = s->app.load();
            res.result(http::status::ok);
            res.body() = s->stats.render(app ? app->stats() : pool_stats{});
            res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
          }
          res.prepare_payload();
          co_await http::async_write(stream, res, tuple_token);
          beast::error_code ignored;
          stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        },
        asio::detached);
  }
}

tcp::acceptor open_tcp(asio::io_context& io, const config::bind_address& b, int backlog) {
  beast::error_code ec;
  const auto address = asio::ip::make_address(b.host, ec);
  if (ec) {
    // A host name: resolve it.
    tcp::resolver resolver(io);
    auto results = resolver.resolve(b.host, std::to_string(b.port), ec);
    if (ec || results.empty()) {
      throw std::runtime_error(fmt::format("cannot resolve the bind address '{}': {}", b.text,
                                           ec ? ec.message() : "no address"));
    }
    return open_tcp(io,
                    config::bind_address{config::bind_address::kind::tcp,
                                         results.begin()->endpoint().address().to_string(), b.port,
                                         "", b.text},
                    backlog);
  }
  tcp::endpoint ep(address, b.port);
  tcp::acceptor a(io);
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec && ep.address().is_v6()) a.set_option(asio::ip::v6_only(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(backlog, ec);
  if (ec) {
    throw std::runtime_error(fmt::format(
        "cannot listen on {}: {}{}", b.text, ec.message(),
        ec == asio::error::address_in_use ? " (another process holds it: stop it, or choose "
                                            "another port with -b)"
                                          : ""));
  }
  return a;
}

unix_proto::acceptor open_unix(asio::io_context& io, const config::bind_address& b, int backlog) {
  std::error_code fec;
  if (std::filesystem::is_socket(b.path, fec)) std::filesystem::remove(b.path, fec);
  beast::error_code ec;
  unix_proto::acceptor a(io);
  unix_proto::endpoint ep(b.path);
  a.open(ep.protocol(), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(backlog, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot listen on {}: {}", b.text, ec.message()));
  return a;
}

std::string listening_text(const tcp::acceptor& a) {
  const auto ep = a.local_endpoint();
  return ep.address().is_v6() ? fmt::format("http://[{}]:{}", ep.address().to_string(), ep.port())
                              : fmt::format("http://{}:{}", ep.address().to_string(), ep.port());
}

}  // namespace

namespace {

/// CPython 3.12.0-3.12.3 crash in Py_Finalize after an own-GIL interpreter called a C function
/// with keyword arguments (gh-119213), which nearly every web application does. A server has
/// nothing left to do once it has stopped, so on those versions it ends without finalizing.
bool finalize_crashes() {
  const auto v = runtime::python_version();
  return v.starts_with("3.12.") && v.size() > 5 && v[5] >= '0' && v[5] <= '3' &&
         (v.size() == 6 || !std::isdigit(static_cast<unsigned char>(v[6])));
}

int serve_until_stopped(const config::serve_config& given) {
  config::serve_config cfg = given;
  if (cfg.workers == 0) cfg.workers = std::max(1u, std::thread::hardware_concurrency());
  if (cfg.bind.empty()) cfg.bind.push_back(config::parse_bind("127.0.0.1:8000", "--bind"));

  // Each connection is a descriptor: take the hard limit, as servers do (often 1024 soft).
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }

  auto s = std::make_shared<server_state>(cfg);
  const auto t0 = clock::now();
  try {
    s->app.store(application::start(cfg));
  } catch (const python_error& e) {
    throw std::runtime_error(fmt::format("cannot load the application '{}': {}: {}{}{}", cfg.app,
                                         e.type_name(), e.message(),
                                         e.traceback().empty() ? "" : "\n", e.traceback()));
  }
  log()->info("loaded {} into {} interpreter{} in {:.2f} s", cfg.app, cfg.workers,
              cfg.workers == 1 ? "" : "s",
              std::chrono::duration<double>(clock::now() - t0).count());

  std::vector<tcp::acceptor> tcp_acceptors;
  std::vector<std::pair<unix_proto::acceptor, std::string>> unix_acceptors;
  for (const auto& b : cfg.bind) {
    if (b.type == config::bind_address::kind::unix_socket) {
      unix_acceptors.emplace_back(open_unix(s->io, b, static_cast<int>(cfg.backlog)), b.path);
    } else {
      tcp_acceptors.push_back(open_tcp(s->io, b, static_cast<int>(cfg.backlog)));
    }
  }
  std::optional<tcp::acceptor> metrics_acceptor;
  if (!cfg.metrics_bind.empty()) {
    metrics_acceptor.emplace(
        open_tcp(s->io, config::parse_bind(cfg.metrics_bind, "--metrics-bind"), 64));
  }
  for (auto& a : tcp_acceptors) {
    log()->info("Listening at: {} ({} worker interpreter{}, pid {})", listening_text(a),
                cfg.workers, cfg.workers == 1 ? "" : "s", ::getpid());
    // The first line a user (and a script waiting for the server) looks for.
    fmt::print(stderr, "[isola serve] Listening at: {}\n", listening_text(a));
    asio::co_spawn(s->io, accept_tcp(s, a), asio::detached);
  }
  for (auto& [a, path] : unix_acceptors) {
    fmt::print(stderr, "[isola serve] Listening at: unix:{}\n", path);
    asio::co_spawn(s->io, accept_unix(s, a, path), asio::detached);
  }
  if (metrics_acceptor) {
    fmt::print(stderr, "[isola serve] Metrics at: {}/metrics\n", listening_text(*metrics_acceptor));
    asio::co_spawn(s->io, serve_metrics(s, *metrics_acceptor), asio::detached);
  }

  // Signals.
  int exit_status = 0;
  std::atomic<bool> stopping{false};
  std::thread reloader;
  std::mutex reload_mu;
  asio::signal_set signals(s->io, SIGINT, SIGTERM, SIGHUP);
  signals.add(SIGQUIT);
  auto stop_listening = [&] {
    beast::error_code ignored;
    for (auto& a : tcp_acceptors) a.close(ignored);
    for (auto& [a, path] : unix_acceptors) a.close(ignored);
    if (metrics_acceptor) metrics_acceptor->close(ignored);
  };
  std::function<void(const beast::error_code&, int)> on_signal;
  on_signal = [&](const beast::error_code& ec, int sig) {
    if (ec) return;
    if (sig == SIGQUIT) {
      log()->warn("SIGQUIT: stopping at once ({} request{} in flight)", s->stats.in_flight(),
                     s->stats.in_flight() == 1 ? "" : "s");
      s->alog.flush();
      flush_logs();
      std::_Exit(0);
    }
    if (sig == SIGHUP) {
      std::lock_guard lock(reload_mu);
      if (reloader.joinable()) reloader.join();
      log()->info("SIGHUP: loading {} into fresh interpreters", cfg.app);
      reloader = std::thread([s, &cfg] {
        try {
          auto fresh = application::start(cfg);
          auto old = s->app.exchange(fresh);
          s->stats.reloaded();
          log()->info("reloaded {}: new requests go to the fresh interpreters; the old ones end "
                      "after their requests",
                      cfg.app);
          old->shutdown();
        } catch (const std::exception& e) {
          log()->error("SIGHUP: cannot load {} again, the running interpreters keep serving: {}",
                       cfg.app, e.what());
        }
      });
      signals.async_wait(on_signal);
      return;
    }
    if (stopping.exchange(true)) {  // a second SIGINT/SIGTERM: at once
      log()->warn("second stop signal: stopping at once");
      s->alog.flush();
      flush_logs();
      std::_Exit(0);
    }
    log()->info("{}: draining: no new connections; {} request{} in flight get up to {} s "
                "(--graceful-timeout)",
                sig == SIGINT ? "SIGINT" : "SIGTERM", s->stats.in_flight(),
                s->stats.in_flight() == 1 ? "" : "s", cfg.graceful_timeout);
    s->draining = true;
    stop_listening();
    s->close_idle_connections();
    asio::co_spawn(
        s->io,
        [s, &exit_status]() -> asio::awaitable<void> {
          const auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(
                                                   std::chrono::duration<double>(s->cfg.graceful_timeout));
          asio::steady_timer t(s->io);
          while (s->stats.in_flight() > 0 && clock::now() < deadline) {
            t.expires_after(std::chrono::milliseconds(20));
            co_await t.async_wait(asio::use_awaitable);
            s->close_idle_connections();
          }
          if (s->stats.in_flight() > 0) {
            log()->warn("graceful timeout: {} request{} still in flight are abandoned",
                           s->stats.in_flight(), s->stats.in_flight() == 1 ? "" : "s");
            s->alog.flush();
            flush_logs();
            std::_Exit(0);
          }
          s->io.stop();
        },
        asio::detached);
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);

  // I/O threads: the HTTP side is light next to the Python side, so a few threads serve many
  // interpreters.
  const unsigned io_threads = std::max(1u, std::thread::hardware_concurrency() / 2);
  std::vector<std::thread> threads;
  for (unsigned i = 1; i < io_threads; ++i) threads.emplace_back([s] { s->io.run(); });
  s->io.run();
  for (auto& t : threads) t.join();
  {
    std::lock_guard lock(reload_mu);
    if (reloader.joinable()) reloader.join();
  }
  log()->info("stopped: {} requests served", s->stats.requests());
  s->alog.flush();
  auto app = s->app.exchange(nullptr);
  if (app) app->shutdown();  // bounded: an interpreter stuck in C code is left behind
  app.reset();
  // Finalizing CPython would wait for a thread still stuck in C code.
  if (runtime::abandoned_interpreters() > 0) cli::exit_leaving_stuck_interpreters(exit_status);
  return exit_status;
}

[[noreturn]] void exit_without_finalizing(int status) {
  log()->info("exiting without finalizing CPython {}: it can crash there (gh-119213, fixed in "
              "3.12.4)",
              runtime::python_version());
  std::fflush(stdout);
  std::fflush(stderr);
  flush_logs();
  std::_Exit(status);
}

}  // namespace

int run(const config::serve_config& cfg) {
  runtime rt;
  if (!finalize_crashes()) return serve_until_stopped(cfg);
  int status = 1;
  try {
    status = serve_until_stopped(cfg);
  } catch (const std::exception& e) {
    fmt::print(stderr, "isola: {}\n", e.what());
  }
  exit_without_finalizing(status);
}

}  // namespace isola::serve
