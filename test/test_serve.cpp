// isola serve, run as a program against the applications in test/serve/apps.py: HTTP/1.1
// (keep-alive, pipelining, chunked bodies, 100-continue, HEAD, Connection: close), PEP 3333
// (every well-behaved app is wrapped in wsgiref.validate.validator), bad requests and faulty
// applications, timeouts, signals, the config file and the metrics.
#include "support.hpp"

#include "tools/build_info.hpp"

#include <Python.h>

#include <catch2/catch.hpp>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using isola_test::background_program;
using isola_test::temp_dir;
using isola_test::write_file;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// `isola serve` on a free port of 127.0.0.1, serving test/serve/apps.py.
struct served {
  explicit served(std::vector<std::string> args, const std::string& app = "apps:router") {
#if defined(__SANITIZE_ADDRESS__)
    // AddressSanitizer keeps freed memory (256 MiB by default) before reusing it, which would
    // hide whether the server's memory stays bounded.
    static const bool once = [] {
      const char* given = std::getenv("ASAN_OPTIONS");
      const std::string opts = std::string(given == nullptr ? "" : given) + ":quarantine_size_mb=16";
      return ::setenv("ASAN_OPTIONS", opts.c_str(), 1) == 0;
    }();
    (void)once;
#endif
    std::vector<std::string> argv{isola_test::isola_path(), "serve", "-b", "127.0.0.1:0",
                                  "--pythonpath", ISOLA_TEST_SERVE_DIR, "-w", "2"};
    argv.insert(argv.end(), args.begin(), args.end());
    if (!app.empty()) argv.push_back(app);
    p = std::make_unique<background_program>(argv);
    const std::string marker = "Listening at: http://127.0.0.1:";
    if (!p->wait_for_stderr(marker, 60)) {
      FAIL("isola serve did not start:\n" << p->err_so_far());
    }
    const auto err = p->err_so_far();
    port = std::stoi(err.substr(err.find(marker) + marker.size()));
  }
  ~served() {
    if (p->running()) {
      p->send_signal(SIGKILL);
      p->wait(10);
    }
  }
  /// SIGTERM, then the outcome.
  isola_test::program_result stop() {
    p->send_signal(SIGTERM);
    return p->wait(60);
  }
  std::unique_ptr<background_program> p;
  int port = 0;
};

/// The port `isola serve --metrics-bind 127.0.0.1:0` serves its metrics on (it prints it).
int metrics_port(const served& s) {
  const auto err = s.p->err_so_far();
  const std::string marker = "Metrics at: http://127.0.0.1:";
  REQUIRE(contains(err, marker));
  return std::stoi(err.substr(err.find(marker) + marker.size()));
}

struct reply {
  int status = 0;
  std::map<std::string, std::string> headers;  ///< lower-case names
  std::string body;
  bool keep_alive = true;
  bool chunked = false;
};

/// One client connection.
class client {
 public:
  explicit client(int port) : socket_(io_) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"),
                                  static_cast<unsigned short>(port)));
  }
  void send(const std::string& raw) { asio::write(socket_, asio::buffer(raw)); }
  /// Reads one response; `head`: it answers a HEAD request (no body follows).
  reply read(bool head = false) {
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);
    parser.skip(head);
    http::read(socket_, buffer_, parser);
    reply r;
    const auto& res = parser.get();
    r.status = static_cast<int>(res.result_int());
    for (const auto& f : res) {
      std::string name(f.name_string());
      std::transform(name.begin(), name.end(), name.begin(), ::tolower);
      r.headers[name] = std::string(f.value());
    }
    r.body = res.body();
    r.keep_alive = res.keep_alive();
    r.chunked = res.chunked();
    return r;
  }
  reply get(const std::string& target, const std::string& extra_headers = "") {
    send(fmt::format("GET {} HTTP/1.1\r\nHost: localhost\r\n{}\r\n", target, extra_headers));
    return read();
  }
  /// Whether the server has closed the connection (reads until EOF or an error, bounded).
  bool closed_by_server(int seconds = 10) {
    socket_.non_blocking(false);
    timeval tv{seconds, 0};
    setsockopt(socket_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char c;
    beast::error_code ec;
    for (;;) {
      socket_.read_some(asio::buffer(&c, 1), ec);
      if (ec == asio::error::eof || ec == asio::error::connection_reset) return true;
      if (ec) return false;  // timed out: still open
    }
  }
  /// Everything the server sends until it closes (bounded by `seconds`).
  std::string read_all(int seconds = 10) {
    timeval tv{seconds, 0};
    setsockopt(socket_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string out(static_cast<const char*>(buffer_.data().data()), buffer_.size());
    char buf[4096];
    beast::error_code ec;
    for (;;) {
      const auto n = socket_.read_some(asio::buffer(buf), ec);
      if (ec) return out;
      out.append(buf, n);
    }
  }
  tcp::socket& socket() { return socket_; }

 private:
  asio::io_context io_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
};

reply get(int port, const std::string& target, const std::string& extra = "") {
  client c(port);
  return c.get(target, extra);
}

std::string last_lines(const std::string& s, std::size_t n = 30) {
  std::size_t pos = s.size();
  for (std::size_t i = 0; i < n && pos > 0; ++i) pos = s.rfind('\n', pos - 1);
  return pos == std::string::npos ? s : s.substr(pos);
}

/// The server's stderr must not show validator complaints (wsgiref.validate reports some,
/// such as an iterator that was never closed, only there).
void check_validator_quiet(const served& s) {
  const auto err = s.p->err_so_far();
  INFO(last_lines(err));
  CHECK(!contains(err, "AssertionError"));
  CHECK(!contains(err, "Exception ignored"));
  CHECK(!contains(err, "WSGIWarning"));
}

std::string chunked_body(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += fmt::format("{:x}\r\n{}\r\n", p.size(), p);
  return out + "0\r\n\r\n";
}

long rss_kb(int pid, const char* field = "VmRSS:") {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.starts_with(field)) return std::stol(line.substr(std::strlen(field)));
  }
  return -1;
}

}  // namespace

TEST_CASE("isola serve: a WSGI app over HTTP/1.1, keep-alive, pipelining, PEP 3333 environ",
          "[serve]") {
  served s({"--access-logfile", "-"});
  client c(s.port);
  auto r = c.get("/");
  CHECK(r.status == 200);
  CHECK(r.body == "Hello, World!");
  CHECK(r.headers["content-length"] == "13");
  CHECK(r.headers["server"].starts_with("isola/"));
  CHECK(!r.headers["date"].empty());
  CHECK(r.keep_alive);

  // The same connection, twice more, then two requests in one write (pipelined).
  CHECK(c.get("/hello").body == "Hello, World!");
  r = c.get("/env/a%20b/%C3%A9?x=1&y=%20", "X-Custom: one\r\nX-Custom: two\r\nCookie: a=1\r\n"
                                           "Cookie: b=2\r\nX_Forged: no\r\n");
  REQUIRE(r.status == 200);
  INFO(r.body);
  // PATH_INFO is decoded and latin-1: b'\xc3\xa9' arrives as two code points.
  CHECK(contains(r.body, "\"PATH_INFO\": \"/env/a b/\\u00c3\\u00a9\""));
  CHECK(contains(r.body, "\"QUERY_STRING\": \"x=1&y=%20\""));
  CHECK(contains(r.body, "\"wsgi.multithread\": false"));
  CHECK(contains(r.body, "\"RAW_URI\": \"/env/a%20b/%C3%A9?x=1&y=%20\""));
  CHECK(contains(r.body, "\"REQUEST_METHOD\": \"GET\""));
  CHECK(contains(r.body, "\"SERVER_PROTOCOL\": \"HTTP/1.1\""));
  CHECK(contains(r.body, "\"SERVER_NAME\": \"localhost\""));
  CHECK(contains(r.body, "\"SCRIPT_NAME\": \"\""));
  CHECK(contains(r.body, "\"REMOTE_ADDR\": \"127.0.0.1\""));
  CHECK(contains(r.body, "\"HTTP_X_CUSTOM\": \"one,two\""));
  CHECK(contains(r.body, "\"HTTP_COOKIE\": \"a=1; b=2\""));
  CHECK(!contains(r.body, "FORGED"));  // a header with '_' is dropped
  CHECK(contains(r.body, "\"wsgi.url_scheme\": \"http\""));
  CHECK(contains(r.body, "\"wsgi.version\": [1, 0]"));
  CHECK(contains(r.body, "\"wsgi.multiprocess\": false"));
  CHECK(contains(r.body, "\"wsgi.run_once\": false"));
  CHECK(contains(r.body, "\"wsgi.input_terminated\": true"));

  c.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /whoami HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(c.read().body == "Hello, World!");
  r = c.read();
  CHECK(r.status == 200);
  CHECK(contains(r.body, std::to_string(s.p->pid())));

  // Connection: close and HTTP/1.0 end the connection after the response.
  c.send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  r = c.read();
  CHECK(r.status == 200);
  CHECK(!r.keep_alive);
  CHECK(c.closed_by_server());
  client old(s.port);
  old.send("GET / HTTP/1.0\r\n\r\n");
  r = old.read();
  CHECK(r.body == "Hello, World!");
  CHECK(old.closed_by_server());
  client old_keep(s.port);
  old_keep.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  r = old_keep.read();
  CHECK(r.headers["connection"] == "keep-alive");
  CHECK(old_keep.get("/").body == "Hello, World!");

  // HEAD: the headers of a GET, no body.
  client h(s.port);
  h.send("HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  r = h.read(true);
  CHECK(r.status == 200);
  CHECK(r.headers["content-length"] == "13");
  CHECK(h.get("/").body == "Hello, World!");  // nothing stray was left on the connection

  auto out = s.stop();
  CHECK(out.exit_code == 0);
  // The access log, in gunicorn's default format.
  INFO(out.out);
  CHECK(contains(out.out, "127.0.0.1 - - ["));
  CHECK(contains(out.out, "\"GET /hello HTTP/1.1\" 200 13 \"-\" \"-\""));
  CHECK(contains(out.out, "\"HEAD /hello HTTP/1.1\" 200"));
  check_validator_quiet(s);
}

TEST_CASE("isola serve: request bodies whole, chunked, with 100-continue, and streamed",
          "[serve]") {
  // --threads 1: a pool task per request; above 1: the interpreters' serve loops.
  const std::string threads = GENERATE(as<std::string>{}, "1", "4");
  served s({"--threads", threads});
  client c(s.port);
  const std::string small(1000, 'x');
  c.send(fmt::format("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nContent-Type: "
                     "text/plain\r\n\r\n{}",
                     small.size(), small));
  auto r = c.read();
  INFO(r.body);
  CHECK(contains(r.body, "\"length\": 1000"));
  CHECK(contains(r.body, "\"content_length\": \"1000\""));
  const long rss_before = std::stol(r.body.substr(r.body.find("\"rss_kb\": ") + 10));

  c.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
         chunked_body({"hello ", "chunked ", "world"}));
  r = c.read();
  CHECK(contains(r.body, "\"length\": 19"));
  c.send("POST /lines HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nab\ncd\nef\ngh\n");
  r = c.read();
  CHECK(contains(r.body, "\"first\": \"ab\\n\", \"rest\": 3"));

  // Expect: 100-continue: the interim response comes before the body is sent.
  client e(s.port);
  e.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
  http::response_parser<http::empty_body> interim;
  beast::flat_buffer buf;
  http::read_header(e.socket(), buf, interim);
  CHECK(interim.get().result_int() == 100);
  e.send("abcde");
  http::response_parser<http::string_body> final_parser;
  http::read(e.socket(), buf, final_parser);
  CHECK(contains(final_parser.get().body(), "\"length\": 5"));

  // A large body streams through wsgi.input: 256 MiB uploaded, the server's memory stays
  // far below that.
  client big(s.port);
  const std::size_t total = std::size_t{256} << 20;
  big.send(fmt::format("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", total));
  const std::string block(1 << 20, 'z');
  for (std::size_t sent = 0; sent < total; sent += block.size()) big.send(block);
  r = big.read();
  INFO(r.body);
  CHECK(contains(r.body, fmt::format("\"length\": {}", total)));
  // The server's peak resident size grew by far less than the upload (KiB).
  const auto hwm = std::stol(r.body.substr(r.body.find("\"hwm_kb\": ") + 10));
  CHECK(hwm - rss_before < 96 * 1024);
  // A chunked upload of 32 MiB streams as well.
  client chunked(s.port);
  chunked.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  for (int i = 0; i < 32; ++i) chunked.send(fmt::format("{:x}\r\n{}\r\n", block.size(), block));
  chunked.send("0\r\n\r\n");
  r = chunked.read();
  CHECK(contains(r.body, fmt::format("\"length\": {}", 32 << 20)));
  // An application that does not read the body: the connection still goes on.
  client unread(s.port);
  unread.send(fmt::format("POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
                          small.size(), small));
  CHECK(unread.read().body == "Hello, World!");
  CHECK(unread.get("/hello").body == "Hello, World!");
  s.stop();
  check_validator_quiet(s);
}

TEST_CASE("isola serve: streamed responses, file_wrapper, write(), exc_info, close()",
          "[serve]") {
  // --threads 1: a pool task per request; above 1: the interpreters' serve loops.
  const std::string threads = GENERATE(as<std::string>{}, "1", "4");
  served s({"--threads", threads});
  temp_dir d;
  client c(s.port);
  // Small: one piece with a Content-Length. Large: chunked as it is produced.
  auto r = c.get("/stream?chunks=3&size=10");
  CHECK(r.body == std::string(10, 'A') + std::string(10, 'B') + std::string(10, 'C'));
  CHECK(r.headers["content-length"] == "30");
  r = c.get("/stream?chunks=40&size=100000");
  CHECK(r.chunked);
  REQUIRE(r.body.size() == 4000000);
  CHECK(r.body.substr(3900000, 3) == "NNN");
  CHECK(c.get("/hello").body == "Hello, World!");
  // The same for an HTTP/1.0 client: no chunked framing, the end of the connection ends it.
  client old(s.port);
  old.send("GET /stream?chunks=40&size=100000 HTTP/1.0\r\n\r\n");
  const auto raw = old.read_all();
  CHECK(!contains(raw.substr(0, raw.find("\r\n\r\n")), "chunked"));
  CHECK(raw.size() - raw.find("\r\n\r\n") - 4 == 4000000);

  const std::string content(300000, 'f');
  write_file(d.file("data.bin"), content);
  r = c.get("/file?path=" + d.file("data.bin"));
  CHECK(r.body == content);
  // Unwrapped (the validator's wrapper hides the file): sent with sendfile, from the file's
  // position.
  r = c.get("/file_raw?skip=1000&path=" + d.file("data.bin"));
  CHECK(r.headers["content-length"] == "299000");
  CHECK(r.body == content.substr(1000));
  client h(s.port);
  h.send("HEAD /file_raw?path=" + d.file("data.bin") + " HTTP/1.1\r\nHost: x\r\n\r\n");
  r = h.read(true);
  CHECK(r.headers["content-length"] == "300000");
  CHECK(h.get("/hello").body == "Hello, World!");
  r = c.get("/write_callable");
  CHECK(r.body == "written and returned");
  r = c.get("/app_error_page");
  CHECK(r.status == 500);
  CHECK(r.body == "custom error page");

  // close() is called on the iterable, whether it finished or failed.
  r = c.get("/closing?mark=" + d.file("mark"));
  CHECK(r.body == "first second");
  client f(s.port);
  r = f.get("/closing?fail=1&mark=" + d.file("mark"));
  CHECK(r.status == 500);
  CHECK(isola_test::read_file(d.file("mark")) == "closed\nclosed\n");
  s.stop();
  check_validator_quiet(s);
}

TEST_CASE("isola serve: malformed and oversized requests, slow and vanishing clients",
          "[serve]") {
  served s({"--header-timeout", "1", "--limit-request-line", "200",
            "--limit-request-fields", "10", "--limit-request-field_size", "300"});
  auto raw = [&](const std::string& text) {
    client c(s.port);
    beast::error_code ec;  // the server may answer and close before it has read everything
    asio::write(c.socket(), asio::buffer(text), ec);
    return c.read_all();
  };
  CHECK(raw("NOT HTTP AT ALL\r\n\r\n").starts_with("HTTP/1.1 400 "));
  CHECK(raw("GET / HTTP/1.1\r\nBad Header Line\r\n\r\n").starts_with("HTTP/1.1 400 "));
  CHECK(raw("GET /" + std::string(300, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n")
            .starts_with("HTTP/1.1 414 "));
  CHECK(raw("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(400, 'b') + "\r\n\r\n")
            .starts_with("HTTP/1.1 431 "));
  std::string many = "GET / HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 20; ++i) many += fmt::format("X-H{}: v\r\n", i);
  CHECK(raw(many + "\r\n").starts_with("HTTP/1.1 431 "));
  CHECK(raw("GET / HTTP/1.1\r\nHost: x\r\nX-Huge: " + std::string(1 << 20, 'h') + "\r\n\r\n")
            .starts_with("HTTP/1.1 431 "));
  CHECK(raw("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .starts_with("HTTP/1.1 400 "));

  // A client that sends a byte a second is dropped after --header-timeout.
  client slow(s.port);
  const auto t0 = std::chrono::steady_clock::now();
  bool dropped = false;
  const std::string head = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  for (char ch : head) {
    beast::error_code ec;
    asio::write(slow.socket(), asio::buffer(&ch, 1), ec);
    if (ec) {
      dropped = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(4)) break;
  }
  CHECK((dropped || slow.closed_by_server(5)));

  // A client that goes away in the middle of a large streamed response.
  for (int i = 0; i < 3; ++i) {
    client gone(s.port);
    gone.send("GET /stream?chunks=400&size=100000 HTTP/1.1\r\nHost: x\r\n\r\n");
    char buf[1000];
    gone.socket().read_some(asio::buffer(buf));
    gone.socket().close();
  }
  // The server goes on serving.
  CHECK(get(s.port, "/").body == "Hello, World!");
  auto out = s.stop();
  CHECK(out.exit_code == 0);
}

TEST_CASE("isola serve: an application's bugs are answered 500 and named in the log",
          "[serve]") {
  // --threads 1: a pool task per request; above 1: the interpreters' serve loops.
  const std::string threads = GENERATE(as<std::string>{}, "1", "4");
  served s({"--threads", threads});
  struct bug {
    std::string path;
    std::string logged;
  };
  const std::vector<bug> bugs{
      {"/raises", "ValueError: boom from the app"},
      {"/non_iterable", "returned a int, which is not an iterable of bytes"},
      {"/twice", "start_response was called a second time without exc_info"},
      {"/str_body", "the application yielded a str; the body must be bytes"},
      {"/no_start", "yielded body data before calling start_response"},
  };
  for (const auto& b : bugs) {
    auto r = get(s.port, b.path);
    INFO(b.path);
    CHECK(r.status == 500);
    CHECK(contains(r.body, "500 Internal Server Error"));
    CHECK(!r.keep_alive);
  }
  CHECK(get(s.port, "/").body == "Hello, World!");
  auto out = s.stop();
  for (const auto& b : bugs) {
    INFO(b.path);
    CHECK(contains(out.err, "Error handling request GET " + b.path));
    CHECK(contains(out.err, b.logged));
  }
}

TEST_CASE("isola serve: --timeout interrupts a request's Python code; the interpreter serves on",
          "[serve]") {
  const std::string threads = GENERATE(as<std::string>{}, "1", "4");
  served s({"--timeout", "1", "-w", "1", "--threads", threads});
  const auto first = get(s.port, "/whoami").body;
  auto r = get(s.port, "/spin");
  CHECK(r.status == 503);
  CHECK(contains(r.body, "--timeout"));
  // A sleep is interrupted too (isola's time.sleep wakes for the interrupt).
  r = get(s.port, "/slow?s=100");
  CHECK(r.status == 503);
  CHECK(get(s.port, "/").body == "Hello, World!");
  CHECK(get(s.port, "/whoami").body == first);  // the same interpreter
  auto out = s.stop();
  CHECK(contains(out.err, "ran longer than 1 s (--timeout)"));
}

namespace {

void stuck_request_is_answered_and_interpreter_replaced(const std::string& threads) {
  served s({"--timeout", "1", "-w", "1", "--threads", threads, "--metrics-bind", "127.0.0.1:0"});
  const auto before = get(s.port, "/whoami").body;
  auto r = get(s.port, "/stuck");
  CHECK(r.status == 503);
  CHECK(contains(r.body, "its interpreter was replaced"));
  const auto after = get(s.port, "/whoami").body;
  CHECK(after != before);  // a fresh interpreter serves
  CHECK(get(s.port, "/").body == "Hello, World!");
  // The stuck request counts as a timeout of its interpreter slot, and as one of its requests.
  const auto m = get(metrics_port(s), "/metrics").body;
  INFO(m);
  const std::string slot = "{interpreter=\"0\",lane=\"own-gil\"}";
  CHECK(contains(m, "isola_serve_interpreter_timeouts_total" + slot + " 1\n"));
  CHECK(contains(m, "isola_serve_interpreter_requests_total" + slot + " 4\n"));
  CHECK(contains(m, "isola_serve_timeouts_total 1\n"));
  auto out = s.stop();
  CHECK(out.exit_code == 0);
  CHECK(contains(out.err, "did not stop when interrupted"));
}

}  // namespace

TEST_CASE("isola serve: a request stuck in C code past --timeout: 503, the interpreter replaced",
          "[serve]") {
  const std::string threads = GENERATE(as<std::string>{}, "1", "4");
  stuck_request_is_answered_and_interpreter_replaced(threads);
}

TEST_CASE("isola serve --threads 4: a request stuck in C code as a fresh interpreter's first: "
          "the interpreter is still replaced",
          "[serve]") {
  // With --max-requests 1 the interpreter is recycled after "/", and "/stuck" waits in the
  // requests channel until the fresh interpreter's serve loop starts: its first handler thread
  // takes it while the loop is still starting the others. The loop must have armed its
  // heartbeat before any handler takes a request, or the pool never learns that the
  // interpreter is stuck.
  served s({"--timeout", "1", "-w", "1", "--threads", "4", "--max-requests", "1"});
  CHECK(get(s.port, "/").body == "Hello, World!");
  auto r = get(s.port, "/stuck");
  CHECK(r.status == 503);
  auto next = get(s.port, "/");
  INFO(last_lines(s.p->err_so_far()));
  CHECK(next.body == "Hello, World!");
  auto out = s.stop();
  CHECK(out.exit_code == 0);
  CHECK(contains(out.err, "did not stop when interrupted"));
}

TEST_CASE("isola serve --threads 4: a request busy in C code within --timeout keeps its "
          "interpreter",
          "[serve]") {
  if (PY_VERSION_HEX < 0x030D0000) {
    WARN("skipped: the app holds the GIL through ctypes, and CPython 3.12's _ctypes cannot be "
         "imported in an own-GIL interpreter (single-phase init)");
    return;
  }
  // /hold keeps the GIL in one C call for 3.5 s: longer than the serve loop's heartbeat and
  // the pool's grace period together (3 s), well within --timeout.
  served s({"--timeout", "20", "-w", "1", "--threads", "4"});
  const auto before = get(s.port, "/whoami").body;
  auto r = get(s.port, "/hold?s=3.5");
  CHECK(r.status == 200);
  CHECK(r.body == "held");
  CHECK(get(s.port, "/whoami").body == before);  // not replaced
  auto out = s.stop();
  CHECK(out.exit_code == 0);
  CHECK(!contains(out.err, "stuck"));
}

TEST_CASE("isola serve --threads 2: a request that waited for a free thread still gets its "
          "whole --timeout",
          "[serve]") {
  // Ten requests of 1.5 s on two threads: the last two wait 6 s for a thread, then run within
  // their 2 s timeout. No interpreter is stuck, so none of them is answered 503.
  served s({"--timeout", "2", "-w", "1", "--threads", "2"});
  std::vector<reply> replies(10);
  std::vector<std::thread> clients;
  for (std::size_t i = 0; i < replies.size(); ++i) {
    clients.emplace_back([&, i] { replies[i] = get(s.port, "/slow?s=1.5"); });
  }
  for (auto& t : clients) t.join();
  for (const auto& r : replies) {
    CHECK(r.status == 200);
    CHECK(r.body == "slept");
  }
  CHECK(s.stop().exit_code == 0);
}

TEST_CASE("isola serve: --threads runs requests side by side in one interpreter; "
          "--max-requests recycles it",
          "[serve]") {
  {
    served s({"-w", "1", "--threads", "4"});
    auto r = get(s.port, "/env");
    CHECK(contains(r.body, "\"wsgi.multithread\": true"));
    // Four requests that each wait for the other three: they can only all succeed if one
    // interpreter runs them at once, on four threads.
    std::vector<std::string> bodies(4);
    std::vector<std::thread> clients;
    for (int i = 0; i < 4; ++i) {
      clients.emplace_back([&, i] { bodies[i] = get(s.port, "/meet?n=4").body; });
    }
    for (auto& t : clients) t.join();
    std::vector<std::string> interpreters, threads;
    for (const auto& b : bodies) {
      INFO(b);
      REQUIRE(b.starts_with("met "));
      const auto words = b.substr(4);
      interpreters.push_back(words.substr(0, words.find(' ')));
      threads.push_back(words.substr(words.find(' ') + 1));
    }
    CHECK(std::count(interpreters.begin(), interpreters.end(), interpreters[0]) == 4);
    std::sort(threads.begin(), threads.end());
    CHECK(std::unique(threads.begin(), threads.end()) == threads.end());
    check_validator_quiet(s);
    CHECK(s.stop().exit_code == 0);
  }
  {
    served s({"-w", "1", "--threads", "2", "--max-requests", "5"});
    std::vector<std::string> seen;
    for (int i = 0; i < 12; ++i) {
      auto r = get(s.port, "/whoami");
      INFO(r.body << last_lines(s.p->err_so_far()));
      REQUIRE(r.status == 200);
      if (std::find(seen.begin(), seen.end(), r.body) == seen.end()) seen.push_back(r.body);
    }
    CHECK(seen.size() >= 2);  // replaced after about five requests (each of two threads may
                              // have taken one more)
    CHECK(s.stop().exit_code == 0);
  }
}

TEST_CASE("isola serve: SIGTERM drains, SIGHUP reloads without refusing a request",
          "[serve]") {
  const std::string threads = GENERATE(as<std::string>{}, "1", "4");
  {
    served s({"--graceful-timeout", "20", "--threads", threads});
    std::string slow_body;
    std::thread t([&] { slow_body = get(s.port, "/slow?s=1.5").body; });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    client idle(s.port);  // an idle keep-alive connection must not hold the drain up
    CHECK(idle.get("/").status == 200);
    s.p->send_signal(SIGTERM);
    t.join();
    CHECK(slow_body == "slept");
    auto out = s.p->wait(30);
    CHECK(out.exit_code == 0);
    CHECK(contains(out.err, "draining"));
  }
  {
    served s({"--threads", threads});
    const auto before = get(s.port, "/whoami").body;
    std::atomic<bool> stop{false};
    std::atomic<int> ok{0}, failed{0};
    std::thread load([&] {
      while (!stop) {
        try {
          auto r = get(s.port, "/");
          (r.status == 200 ? ok : failed)++;
        } catch (const std::exception&) {
          failed++;
        }
      }
    });
    s.p->send_signal(SIGHUP);
    REQUIRE(s.p->wait_for_stderr("reloaded apps:router", 60));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    stop = true;
    load.join();
    CHECK(failed == 0);
    CHECK(ok > 0);
    const auto after = get(s.port, "/whoami").body;
    CHECK(after != before);  // fresh interpreters (new ids), the same process
    CHECK(after.substr(after.find(' ')) == before.substr(before.find(' ')));
    s.p->send_signal(SIGQUIT);
    auto out = s.p->wait(30);
    CHECK(out.exit_code == 0);
  }
}

TEST_CASE("isola serve: config file, flags over it, --check-config, errors that name the key",
          "[serve]") {
  temp_dir d;
  write_file(d.file("serve.toml"),
             "app = \"apps:hello\"\n"
             "workers = 3\n"
             "max-requests = 50\n"
             "timeout = 5\n"
             "bind = [\"127.0.0.1:8123\", \"unix:/tmp/x.sock\"]\n");
  auto r = isola_test::run_program({isola_test::isola_path(), "serve", "-c", d.file("serve.toml"),
                                    "--check-config", "-w", "2"});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK(contains(r.out, "app = \"apps:hello\""));
  CHECK(contains(r.out, "workers = 2"));  // the flag wins
  CHECK(contains(r.out, "max_requests = 50"));
  CHECK(contains(r.out, "\"unix:/tmp/x.sock\""));

  write_file(d.file("bad.toml"), "app = \"apps:hello\"\nworkers = \"four\"\n");
  r = isola_test::run_program({isola_test::isola_path(), "serve", "-c", d.file("bad.toml")});
  CHECK(r.exit_code == 2);
  CHECK(contains(r.err, "bad.toml:2"));
  CHECK(contains(r.err, "workers"));
  write_file(d.file("typo.toml"), "app = \"apps:hello\"\nworker = 4\n");
  r = isola_test::run_program({isola_test::isola_path(), "serve", "-c", d.file("typo.toml")});
  CHECK(r.exit_code == 2);
  CHECK(contains(r.err, "did you mean 'workers'"));
  r = isola_test::run_program({isola_test::isola_path(), "serve", "-b", "nowhere:port", "a:b"});
  CHECK(r.exit_code == 2);
  CHECK(contains(r.err, "nowhere:port"));
  r = isola_test::run_program({isola_test::isola_path(), "serve"});
  CHECK(r.exit_code == 2);
  CHECK(contains(r.err, "no application"));
  // An application that does not load: exit 1, the reason shown.
  r = isola_test::run_program({isola_test::isola_path(), "serve", "--pythonpath",
                               ISOLA_TEST_SERVE_DIR, "-b", "127.0.0.1:0", "apps:missing"});
  CHECK(r.exit_code == 1);
  CHECK(contains(r.err, "failed to find attribute 'missing' in 'apps'"));
  // A factory, as gunicorn's module:factory(args).
  served s({}, "apps:make_app('from the factory')");
  CHECK(get(s.port, "/").body == "from the factory");
}

TEST_CASE("isola serve: Prometheus metrics", "[serve]") {
  served s({"--metrics-bind", "127.0.0.1:0"});
  const int mport = metrics_port(s);
  for (int i = 0; i < 5; ++i) get(s.port, "/");
  get(s.port, "/raises");
  auto m = get(mport, "/metrics");
  INFO(m.body);
  CHECK(m.status == 200);
  CHECK(contains(m.headers["content-type"], "text/plain; version=0.0.4"));
  CHECK(contains(m.body, "isola_serve_requests_total{status=\"200\"} 5"));
  CHECK(contains(m.body, "isola_serve_requests_total{status=\"500\"} 1"));
  CHECK(contains(m.body, "isola_serve_request_duration_seconds_count 6"));
  CHECK(contains(m.body, "isola_serve_requests_in_flight 0"));
  CHECK(contains(m.body, "isola_serve_interpreter_busy_seconds_total{interpreter=\"1\""));
  CHECK(contains(m.body, "isola_serve_interpreter_memory_bytes{interpreter=\"0\""));
}

TEST_CASE("isola serve: 1000 concurrent keep-alive connections", "[serve]") {
  served s({"--keep-alive", "60"});  // the second round reaches the last ones late
  std::vector<std::unique_ptr<client>> clients;
  for (int i = 0; i < 1000; ++i) clients.push_back(std::make_unique<client>(s.port));
  for (auto& c : clients) c->send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  int ok = 0;
  for (auto& c : clients) ok += c->read().body == "Hello, World!";
  CHECK(ok == 1000);
  // Every connection is still open and serves a second request.
  ok = 0;
  for (auto& c : clients) ok += c->get("/hello").status == 200;
  CHECK(ok == 1000);
}

TEST_CASE("isola serve: 100 000 requests; resident memory returns to its plateau", "[serve]") {
  served s({});
  auto load = [&](int requests) {
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        client c(s.port);
        for (int i = t; i < requests; i += 4) ok += c.get(i % 10 == 0 ? "/env" : "/hello").status == 200;
      });
    }
    for (auto& t : threads) t.join();
    return ok.load();
  };
  CHECK(load(20000) == 20000);  // warm: interpreters, caches, allocator arenas
  const long plateau = rss_kb(s.p->pid());
  CHECK(load(100000) == 100000);
  const long after = rss_kb(s.p->pid());
  INFO("plateau " << plateau << " KiB, after " << after << " KiB");
  CHECK(after - plateau < 16 * 1024);
}

TEST_CASE("isola serve: a Flask application (Debian's python3-flask on this CPython's path)",
          "[serve]") {
  if (!std::filesystem::exists("/usr/lib/python3/dist-packages/flask/__init__.py")) {
    isola_test::skip("Flask is not installed (apt-get install python3-flask)");
    return;
  }
  temp_dir d;
  // Only Flask's pure-Python packages, never the modules Debian compiled for its own Python.
  auto mirror = isola_test::run_program(
      {ISOLA_TOOLS_PYTHON_EXECUTABLE, std::string(ISOLA_TOOLS_SOURCE_DIR) + "/tools/bench/py/debian_pure_path.py",
       "-q", "--python", ISOLA_TOOLS_PYTHON_EXECUTABLE, "--dest", d.file("site"), "flask"});
  INFO(mirror.err);
  REQUIRE(mirror.exit_code == 0);
  served s({"--pythonpath", d.file("site"), "--chdir",
            std::string(ISOLA_TOOLS_SOURCE_DIR) + "/examples/serve"},
           "flask_app:app");
  client c(s.port);
  auto r = c.get("/");
  CHECK(r.status == 200);
  CHECK(r.body == "Hello, World!");
  r = c.get("/json");
  CHECK(r.headers["content-type"] == "application/json");
  CHECK(contains(r.body, "\"server\":\"isola\""));
  c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
         "Content-Length: 7\r\n\r\nabcdefg");
  r = c.read();
  CHECK(contains(r.body, "\"length\":7"));
  CHECK(c.get("/missing").status == 404);
  CHECK(s.stop().exit_code == 0);
}
