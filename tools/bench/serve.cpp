// `isola bench serve`: `isola serve` against gunicorn, over HTTP on 127.0.0.1, in the same run.
// Each server is a child process (this executable's `serve`, or `python -m gunicorn` with the
// Python isola embeds) serving one of the apps of examples/serve/ (carried in this executable
// and written to a temporary folder), loaded by wrk (-t2). Three phases, each of --rounds
// rounds in which every variant runs once, in an order that rotates from round to round:
// - hello.py: isola serve, gunicorn's sync worker and its gthread worker (--threads 4), all
//   with --workers; requests/s at 32 connections, then p99 latency at 64, then the RSS;
// - cpu.py (~2 ms of pure Python per request): isola serve with --workers and with 1
//   interpreter, and gunicorn sync and gthread (the better of the two on cpu.py is its
//   figure);
// - flask_app.py, where Flask imports: isola serve and gunicorn in its better hello
//   configuration.
// A server counts as started once its port accepts a connection and GET / answers 2xx (30 s at
// most; else the error quotes its last log lines); it then gets a 1 s warm-up before it is
// measured, and is stopped with SIGTERM (SIGKILL for it and its children 10 s later). Ratios
// are medians of each round's ratio. Debian's gunicorn and Flask are built for Debian's
// python3; they run on the embedded Python through a mirror of their pure-Python files
// (py/debian_pure_path.py).
#include "tools/bench/bench.hpp"
#include "tools/build_info.hpp"
#include "tools/isola/cli.hpp"
#include "tools/bench/debian_pure_path.py.hpp"
#include "tools/bench/serve_cpu.py.hpp"
#include "tools/bench/serve_flask_app.py.hpp"
#include "tools/bench/serve_hello.py.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/core.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

namespace isola::cli {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct serve_bench_options {
  unsigned rounds = 3;
  unsigned duration = 5;  ///< seconds of each measured wrk run
  unsigned workers = 2;
  bool no_peers = false;
};

constexpr unsigned wrk_threads = 2;
constexpr unsigned connections = 32;      ///< requests/s runs
constexpr unsigned p99_connections = 64;  ///< the latency run (hello.py)
constexpr unsigned gthread_threads = 4;
constexpr unsigned warmup_seconds = 1;
constexpr double ready_timeout_s = 30;
constexpr double stop_timeout_s = 10;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("bench serve: " + what);
}

// ---- files and processes ---------------------------------------------------------------------

/// A new temporary folder, removed with everything in it when the object goes.
class temp_folder {
 public:
  temp_folder() {
    std::string tmpl = (fs::temp_directory_path() / "isola-bench-serve-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      fail(fmt::format("cannot create a temporary folder: {}", std::strerror(errno)));
    }
    path_ = tmpl;
  }
  ~temp_folder() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  temp_folder(const temp_folder&) = delete;
  temp_folder& operator=(const temp_folder&) = delete;
  const fs::path& path() const noexcept { return path_; }

 private:
  fs::path path_;
};

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) fail("cannot write " + path.string());
}

/// The executable `name` on PATH, or empty.
std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) dir = ".";
    const fs::path candidate = fs::path(dir) / name;
    if (access(candidate.c_str(), X_OK) == 0 && fs::is_regular_file(candidate)) {
      return candidate.string();
    }
  }
  return {};
}

/// This process's environment with `set` applied: a key mapped to nullopt is removed.
using env_changes = std::map<std::string, std::optional<std::string>>;
std::vector<std::string> environment_with(const env_changes& set) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    if (!set.contains(entry.substr(0, entry.find('=')))) env.push_back(std::move(entry));
  }
  for (const auto& [key, value] : set) {
    if (value) env.push_back(key + "=" + *value);
  }
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

/// Starts args with stdin from /dev/null and stdout and stderr to `log` (or, if `out_fd` is
/// not -1, stdout to that descriptor); returns the pid.
pid_t spawn(std::vector<std::string> args, std::vector<std::string> env, const fs::path& log,
            int out_fd = -1) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (out_fd >= 0) {
    posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, out_fd);
  } else {
    posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  }
  auto argv = c_strings(args);
  auto envp = c_strings(env);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, args[0].c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) fail(fmt::format("cannot start {}: {}", args[0], std::strerror(rc)));
  return pid;
}

/// waitpid that retries on EINTR; returns what waitpid returned (0: still running).
pid_t wait_child(pid_t pid, int& status, int flags) {
  for (;;) {
    const pid_t r = waitpid(pid, &status, flags);
    if (r >= 0 || errno != EINTR) return r;
  }
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return fmt::format("signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  }
  return fmt::format("status {}", status);
}

/// The last `lines` lines of a file (for an error message), indented.
std::string tail_of(const fs::path& file, std::size_t lines = 20) {
  std::ifstream f(file);
  std::vector<std::string> all;
  for (std::string line; std::getline(f, line);) all.push_back(std::move(line));
  if (all.empty()) return "  (nothing)";
  std::string out;
  for (std::size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) {
    out += (out.empty() ? "  " : "\n  ") + all[i];
  }
  return out;
}

struct run_result {
  int status = 0;
  std::string out;
};

/// Runs args to completion with stdout captured and stderr into `log`; kills it (and fails)
/// after `timeout_s`.
run_result run_bounded(std::vector<std::string> args, std::vector<std::string> env,
                       const fs::path& log, double timeout_s) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) fail(std::string("pipe: ") + std::strerror(errno));
  pid_t pid = 0;
  try {
    pid = spawn(args, std::move(env), log, fds[1]);
  } catch (...) {
    close(fds[0]);
    close(fds[1]);
    throw;
  }
  close(fds[1]);
  run_result r;
  const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s);
  bool timed_out = false;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int n = poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;  // the deadline is checked above
    char buf[4096];
    const ssize_t got = read(fds[0], buf, sizeof buf);
    if (got > 0) {
      r.out.append(buf, static_cast<std::size_t>(got));
    } else if (got == 0 || errno != EINTR) {
      break;
    }
  }
  close(fds[0]);
  if (timed_out) kill(pid, SIGKILL);
  wait_child(pid, r.status, 0);
  if (timed_out) {
    fail(fmt::format("{} did not finish within {:.0f} s and was killed", args[0], timeout_s));
  }
  return r;
}

// ---- /proc ------------------------------------------------------------------------------------

/// VmRSS of one process in MiB; 0 if it is gone.
double vm_rss_mb(pid_t pid) {
  std::ifstream f(fmt::format("/proc/{}/status", pid));
  for (std::string line; std::getline(f, line);) {
    if (line.starts_with("VmRSS:")) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  return 0;
}

/// The parent of every process, from /proc/PID/stat.
std::map<pid_t, pid_t> parents() {
  std::map<pid_t, pid_t> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(entry.path() / "stat");
    std::string stat;
    std::getline(f, stat);
    const auto close_paren = stat.rfind(')');  // the command name may hold spaces and ')'
    if (close_paren == std::string::npos) continue;
    std::istringstream rest(stat.substr(close_paren + 1));
    char state = 0;
    pid_t ppid = 0;
    if (rest >> state >> ppid) out[std::stoi(name)] = ppid;
  }
  return out;
}

/// pid and all its descendants.
std::vector<pid_t> process_tree(pid_t root) {
  const auto parent = parents();
  std::vector<pid_t> tree = {root};
  for (std::size_t i = 0; i < tree.size(); ++i) {
    for (const auto& [pid, ppid] : parent) {
      if (ppid == tree[i]) tree.push_back(pid);
    }
  }
  return tree;
}

// ---- sockets ----------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago.
unsigned free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail(std::string("socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const int e = errno;
    close(fd);
    fail(std::string("cannot find a free port on 127.0.0.1: ") + std::strerror(e));
  }
  close(fd);
  return ntohs(a.sin_port);
}

/// A connected socket to 127.0.0.1:port, or -1.
int connect_local(unsigned port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/// One `GET path` on a connected socket; returns the status line ("" if none came within
/// timeout_s).
std::string http_get_status(int fd, const std::string& path, double timeout_s) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout_s);
  tv.tv_usec = static_cast<suseconds_t>((timeout_s - static_cast<double>(tv.tv_sec)) * 1e6);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const std::string request =
      "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return {};
  }
  std::string got;
  char buf[1024];
  while (got.find("\r\n") == std::string::npos && got.size() < 8192) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      got.append(buf, static_cast<std::size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  return got.substr(0, got.find("\r\n"));
}

// ---- a server under test ----------------------------------------------------------------------

/// A server child process: started by the constructor, ready() once it answers, stopped with
/// SIGTERM (SIGKILL to it and its children after stop_timeout_s) by stop() or the destructor.
class server_process {
 public:
  server_process(std::string label, std::vector<std::string> args, std::vector<std::string> env,
                 fs::path log, unsigned port)
      : label_(std::move(label)), log_(std::move(log)), port_(port) {
    pid_ = spawn(std::move(args), std::move(env), log_);
  }
  ~server_process() {
    try {
      stop();
    } catch (...) {
    }
  }
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;

  pid_t pid() const noexcept { return pid_; }
  const std::string& label() const noexcept { return label_; }

  /// Waits until the port accepts a connection and GET / answers with a 2xx status; fails
  /// with the server's last log lines if it exits or is not ready within ready_timeout_s.
  void ready() {
    const auto t0 = clock::now();
    for (;;) {
      check_alive("while starting");
      const double left = ready_timeout_s - seconds_since(t0);
      if (left <= 0) {
        fail(fmt::format("{} did not accept connections on 127.0.0.1:{} within {:.0f} s; its "
                         "last messages:\n{}",
                         label_, port_, ready_timeout_s, tail_of(log_)));
      }
      const int fd = connect_local(port_);
      if (fd < 0) {
        std::this_thread::sleep_for(50ms);
        continue;
      }
      const auto asked = clock::now();
      const std::string status = http_get_status(fd, "/", left);
      close(fd);
      if (status.starts_with("HTTP/1.") && status.size() > 9 && status[9] == '2') return;
      // A server that closed the connection may be on its way out: say so if it is.
      for (int k = 0; k < 20; ++k) {
        check_alive("while answering its first request");
        std::this_thread::sleep_for(100ms);
      }
      const std::string what =
          !status.empty() ? fmt::format("answered GET / with '{}', not a 2xx status", status)
          : seconds_since(asked) + 0.5 < left
              ? std::string("closed the connection of its first request (GET /) unanswered")
              : fmt::format("did not answer GET / within {:.0f} s", left);
      fail(fmt::format("{} {}; its last messages:\n{}", label_, what, tail_of(log_)));
    }
  }

  /// Fails, with the log's tail, if the server has exited.
  void check_alive(const char* when) {
    if (exited_) fail(fmt::format("{} is no longer running", label_));
    int status = 0;
    if (wait_child(pid_, status, WNOHANG) == pid_) {
      exited_ = true;
      fail(fmt::format("{} exited {} ({}); its last messages:\n{}", label_, when,
                       describe_status(status), tail_of(log_)));
    }
  }

  /// RSS of the server process alone, or of it and all its children, in MiB.
  double rss_mb(bool whole_tree) const {
    if (!whole_tree) return vm_rss_mb(pid_);
    double sum = 0;
    for (pid_t p : process_tree(pid_)) sum += vm_rss_mb(p);
    return sum;
  }

  /// SIGTERM, then SIGKILL to it and its children after stop_timeout_s. Returns how it ended
  /// ("" for an exit by SIGTERM or with status 0), for the caller to report.
  std::string stop() {
    if (exited_) return {};
    const auto tree = process_tree(pid_);
    kill(pid_, SIGTERM);
    int status = 0;
    const auto t0 = clock::now();
    while (wait_child(pid_, status, WNOHANG) == 0) {
      if (seconds_since(t0) > stop_timeout_s) {
        for (pid_t p : tree) kill(p, SIGKILL);
        wait_child(pid_, status, 0);
        exited_ = true;
        return fmt::format("did not stop within {:.0f} s of SIGTERM and was killed",
                           stop_timeout_s);
      }
      std::this_thread::sleep_for(20ms);
    }
    exited_ = true;
    if ((WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
        (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM)) {
      return {};
    }
    return fmt::format("ended with {} after SIGTERM; its last messages:\n{}",
                       describe_status(status), tail_of(log_));
  }

 private:
  std::string label_;
  fs::path log_;
  unsigned port_;
  pid_t pid_ = -1;
  bool exited_ = false;
};

// ---- wrk --------------------------------------------------------------------------------------

struct wrk_figures {
  double rps = 0;
  double requests = 0;
  double p50_ms = 0, p99_ms = 0;
  double socket_errors = 0;  ///< connect + read + write + timeout
  double non_2xx_3xx = 0;
};

/// "1.23ms" -> 1.23; "456.00us" -> 0.456; "1.01s" -> 1010.
double wrk_time_ms(const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  const std::string unit(end);
  if (unit == "us") return v / 1000;
  if (unit == "ms") return v;
  if (unit == "s") return v * 1000;
  if (unit == "m") return v * 60'000;
  if (unit == "h") return v * 3'600'000;
  return -1;
}

/// Reads wrk's --latency report. Fails, quoting it, if it has no Requests/sec.
wrk_figures parse_wrk(const std::string& out) {
  wrk_figures f;
  bool have_rps = false;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string first;
    words >> first;
    if (first == "Requests/sec:") {
      have_rps = static_cast<bool>(words >> f.rps);
    } else if (first == "50%" || first == "99%") {
      std::string value;
      words >> value;
      (first == "50%" ? f.p50_ms : f.p99_ms) = wrk_time_ms(value);
    } else if (first == "Socket") {  // Socket errors: connect 0, read 0, write 0, timeout 0
      std::string word;
      while (words >> word) {
        if (word == "connect" || word == "read" || word == "write" || word == "timeout") {
          double n = 0;
          if (words >> n) f.socket_errors += n;
        }
      }
    } else if (first == "Non-2xx") {  // Non-2xx or 3xx responses: N
      const auto colon = line.rfind(':');
      if (colon != std::string::npos) {
        f.non_2xx_3xx = std::strtod(line.c_str() + colon + 1, nullptr);
      }
    } else if (line.find(" requests in ") != std::string::npos) {
      f.requests = std::strtod(first.c_str(), nullptr);
    }
  }
  if (!have_rps) fail("wrk printed no Requests/sec:\n" + out);
  return f;
}

// ---- the suite --------------------------------------------------------------------------------

/// One way of serving an app: how to start it, and what it measured, round by round.
struct variant {
  variant(std::string label, bool is_isola, unsigned workers, unsigned threads)
      : label(std::move(label)), is_isola(is_isola), workers(workers), threads(threads) {}
  std::string label;  ///< "isola serve -w 2", for progress and errors
  bool is_isola;
  unsigned workers;
  unsigned threads;  ///< gunicorn --threads (1: the sync worker)
  std::vector<double> rps, p99_ms, p50_ms, rss_mb;
  double socket_errors = 0;
};

class serve_bench {
 public:
  serve_bench(const serve_bench_options& o, const bench_context& ctx) : o_(o), ctx_(ctx) {}

  bench_report run();

 private:
  void find_tools();
  std::optional<std::string> pure_path(const std::vector<std::string>& modules,
                                       const std::string& name);
  bool python_imports(const std::vector<std::string>& modules, const std::string& pythonpath);
  std::unique_ptr<server_process> start(const variant& v, const std::string& app, unsigned port);
  wrk_figures load(server_process& s, unsigned port, unsigned conns, unsigned seconds,
                   variant& v);
  void measure(variant& v, const std::string& app, bool latency_and_rss);
  void rounds(const std::string& phase, std::vector<variant*> variants, const std::string& app,
              bool latency_and_rss);
  fs::path next_log(const std::string& what);

  const serve_bench_options& o_;
  const bench_context& ctx_;
  temp_folder tmp_;
  fs::path apps_;
  std::string exe_, wrk_, python_;
  std::string gunicorn_path_;  ///< PYTHONPATH gunicorn needs ("": the Python has it)
  std::optional<std::string> flask_path_;  ///< the path Flask needs; nullopt: no Flask
  std::string gunicorn_version_;
  unsigned log_count_ = 0;
};

fs::path serve_bench::next_log(const std::string& what) {
  return tmp_.path() / fmt::format("{:02}-{}.log", ++log_count_, what);
}

/// True if python_ imports every module with PYTHONPATH set to pythonpath (none if empty).
bool serve_bench::python_imports(const std::vector<std::string>& modules,
                                 const std::string& pythonpath) {
  std::string code = "import ";
  for (std::size_t i = 0; i < modules.size(); ++i) code += (i ? ", " : "") + modules[i];
  env_changes env{{"PYTHONPATH", pythonpath.empty() ? std::nullopt
                                                    : std::optional<std::string>(pythonpath)},
                  {"PYTHONHOME", std::nullopt}};
  const auto r = run_bounded({python_, "-c", code}, environment_with(env),
                             tmp_.path() / "import-check.log", 60);
  return WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0;
}

/// The PYTHONPATH under which python_ imports `modules`: "" if it does as it is, else a mirror
/// of Debian's pure-Python packages (py/debian_pure_path.py) in the temporary folder; nullopt
/// if neither works (the mirror's last messages then go to the progress lines).
std::optional<std::string> serve_bench::pure_path(const std::vector<std::string>& modules,
                                                  const std::string& name) {
  if (python_imports(modules, "")) return std::string();
  const fs::path dest = tmp_.path() / ("pure-" + name);
  std::vector<std::string> args = {python_,  "-I",     "-c",   embedded::debian_pure_path,
                                   "--quiet", "--python", python_, "--dest",
                                   dest.string()};
  args.insert(args.end(), modules.begin(), modules.end());
  const fs::path log = next_log("pure-" + name);
  const auto r = run_bounded(args, environment_with({}), log, 120);
  if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
    ctx_.progress(fmt::format("{} for {}: {}", name, python_, tail_of(log, 3)));
    return std::nullopt;
  }
  return dest.string();
}

void serve_bench::find_tools() {
  exe_ = fs::read_symlink("/proc/self/exe").string();
  const auto help = run_bounded({exe_, "serve", "--help"}, environment_with({}),
                                tmp_.path() / "serve-help.log", 30);
  if (!WIFEXITED(help.status) || WEXITSTATUS(help.status) != 0) {
    fail(fmt::format("'{} serve --help' failed ({}): this isola has no working serve command",
                     exe_, describe_status(help.status)));
  }
  wrk_ = find_on_path("wrk");
  if (wrk_.empty()) fail("wrk not found on PATH: apt-get install wrk");

  python_ = ISOLA_TOOLS_PYTHON_EXECUTABLE;
  const bool have_python = access(python_.c_str(), X_OK) == 0;
  if (!o_.no_peers) {
    if (!have_python) {
      fail(fmt::format("the Python isola embeds, {}, is not here to run gunicorn with (or run "
                       "with --no-peers)",
                       python_));
    }
    auto path = pure_path({"gunicorn.app.wsgiapp", "gunicorn.workers.sync",
                           "gunicorn.workers.gthread"},
                          "gunicorn");
    if (!path) {
      fail(fmt::format("gunicorn not found for {}: apt-get install gunicorn (Debian's runs "
                       "through a mirror of its pure-Python files), or run with --no-peers",
                       python_));
    }
    gunicorn_path_ = *path;
    env_changes env{{"PYTHONPATH", gunicorn_path_}};
    auto version = run_bounded({python_, "-c", "import gunicorn; print(gunicorn.__version__)"},
                               environment_with(env), tmp_.path() / "gunicorn-version.log", 60);
    gunicorn_version_ = version.out.substr(0, version.out.find('\n'));
  }
  if (have_python) flask_path_ = pure_path({"flask"}, "flask");
  if (!flask_path_) {
    ctx_.progress("Flask not found for the Python isola embeds (apt-get install python3-flask): "
                  "no flask figures");
  }
}

std::unique_ptr<server_process> serve_bench::start(const variant& v, const std::string& app,
                                                   unsigned port) {
  const std::string bind = fmt::format("127.0.0.1:{}", port);
  const bool flask = app.starts_with("flask_app:");
  std::vector<std::string> args;
  env_changes env;
  if (v.is_isola) {
    args = {exe_, "serve", "-b", bind, "-w", std::to_string(v.workers), "--chdir",
            apps_.string(), "--access-logfile", "", "--log-level", "warning"};
    if (flask && !flask_path_->empty()) {
      args.insert(args.end(), {"--pythonpath", *flask_path_});
    }
  } else {
    args = {python_, "-m", "gunicorn", "-b", bind, "-w", std::to_string(v.workers), "--chdir",
            apps_.string(), "--log-level", "warning"};
    if (v.threads > 1) args.insert(args.end(), {"--threads", std::to_string(v.threads)});
    std::string path = gunicorn_path_;
    if (flask && !flask_path_->empty()) path += (path.empty() ? "" : ":") + *flask_path_;
    env["PYTHONPATH"] = path.empty() ? std::nullopt : std::optional<std::string>(path);
    env["PYTHONHOME"] = std::nullopt;
  }
  args.push_back(app);
  auto s = std::make_unique<server_process>(v.label, std::move(args), environment_with(env),
                                            next_log(v.is_isola ? "isola" : "gunicorn"), port);
  s->ready();
  return s;
}

/// One wrk run against the server; fails on non-2xx/3xx answers or if the server died.
wrk_figures serve_bench::load(server_process& s, unsigned port, unsigned conns, unsigned seconds,
                              variant& v) {
  const fs::path log = next_log("wrk");
  const auto r = run_bounded({wrk_, "-t" + std::to_string(wrk_threads),
                              "-c" + std::to_string(conns), fmt::format("-d{}s", seconds),
                              "--latency", fmt::format("http://127.0.0.1:{}/", port)},
                             environment_with({}), log, seconds + 60.0);
  if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
    fail(fmt::format("wrk failed ({}) against {}:\n{}\n{}", describe_status(r.status), v.label,
                     r.out, tail_of(log)));
  }
  s.check_alive("under load");
  const auto f = parse_wrk(r.out);
  if (f.non_2xx_3xx > 0) {
    fail(fmt::format("{} answered {} of {} requests with a status other than 2xx/3xx; wrk "
                     "said:\n{}",
                     v.label, f.non_2xx_3xx, f.requests, r.out));
  }
  if (f.rps <= 0 || f.requests <= 0) fail(fmt::format("{} served no request:\n{}", v.label, r.out));
  if (f.socket_errors > 0) {
    v.socket_errors += f.socket_errors;
    ctx_.progress(fmt::format("  {}: wrk counted {} socket errors in {} requests at {} "
                              "connections",
                              v.label, f.socket_errors, f.requests, conns));
  }
  return f;
}

/// One server start: warm-up, requests/s at `connections`, and for hello.py the p99 at
/// p99_connections and the RSS after it.
void serve_bench::measure(variant& v, const std::string& app, bool latency_and_rss) {
  const unsigned port = free_port();
  auto server = start(v, app, port);
  load(*server, port, connections, warmup_seconds, v);
  const auto f = load(*server, port, connections, o_.duration, v);
  v.rps.push_back(f.rps);
  std::string line = fmt::format("{:.0f} requests/s", f.rps);
  if (latency_and_rss) {
    const auto lat = load(*server, port, p99_connections, o_.duration, v);
    v.p99_ms.push_back(lat.p99_ms);
    v.p50_ms.push_back(lat.p50_ms);
    v.rss_mb.push_back(server->rss_mb(!v.is_isola));
    line += fmt::format("; at {} connections p50 {:.2f} ms, p99 {:.2f} ms; RSS {:.1f} MiB",
                        p99_connections, lat.p50_ms, lat.p99_ms, v.rss_mb.back());
  }
  const std::string ended = server->stop();
  if (!ended.empty()) ctx_.progress(fmt::format("  {} {}", v.label, ended));
  ctx_.progress(fmt::format("  {}: {}", v.label, line));
}

void serve_bench::rounds(const std::string& phase, std::vector<variant*> variants,
                         const std::string& app, bool latency_and_rss) {
  for (unsigned round = 0; round < o_.rounds; ++round) {
    ctx_.progress(fmt::format("{}: round {}/{}", phase, round + 1, o_.rounds));
    // Rotate the order so that no variant always runs first, or always right after another.
    for (std::size_t step = 0; step < variants.size(); ++step) {
      measure(*variants[(round + step) % variants.size()], app, latency_and_rss);
    }
  }
}

bench_report serve_bench::run() {
  find_tools();
  apps_ = tmp_.path() / "apps";
  fs::create_directory(apps_);
  write_file(apps_ / "hello.py", embedded::serve_hello);
  write_file(apps_ / "cpu.py", embedded::serve_cpu);
  write_file(apps_ / "flask_app.py", embedded::serve_flask_app);

  const bool peers = !o_.no_peers;
  const unsigned w = o_.workers;
  ctx_.progress(fmt::format(
      "isola serve{} on 127.0.0.1, {} workers, loaded by wrk -t{} -c{} for {} s after {} s of "
      "warm-up; {} rounds{}",
      peers ? fmt::format(" against gunicorn {} (sync and gthread --threads {})",
                          gunicorn_version_, gthread_threads)
            : "",
      w, wrk_threads, connections, o_.duration, warmup_seconds, o_.rounds,
      flask_path_ ? "; Flask too" : ""));
  const double load_start = load_average();
  const cpu_ticks start_ticks = cpu_ticks_now();

  variant isola{fmt::format("isola serve -w {}", w), true, w, 1};
  variant g_sync{fmt::format("gunicorn -w {}", w), false, w, 1};
  variant g_gthread{fmt::format("gunicorn -w {} --threads {}", w, gthread_threads), false, w,
                    gthread_threads};
  std::vector<variant*> hello = {&isola};
  if (peers) hello.insert(hello.end(), {&g_sync, &g_gthread});
  rounds("hello.py", hello, "hello:app", true);

  // gunicorn's better configuration for hello.py serves the other apps.
  const bool gthread_best = median(g_gthread.rps) > median(g_sync.rps);
  const variant& g_best = gthread_best ? g_gthread : g_sync;

  variant isola_cpu{fmt::format("isola serve -w {}", w), true, w, 1};
  variant isola_cpu_1{"isola serve -w 1", true, 1, 1};
  variant g_cpu_sync{g_sync.label, false, w, 1};
  variant g_cpu_gthread{g_gthread.label, false, w, gthread_threads};
  std::vector<variant*> cpu = {&isola_cpu, &isola_cpu_1};
  if (peers) cpu.insert(cpu.end(), {&g_cpu_sync, &g_cpu_gthread});
  rounds("cpu.py", cpu, "cpu:app", false);
  const variant& g_cpu =
      median(g_cpu_gthread.rps) > median(g_cpu_sync.rps) ? g_cpu_gthread : g_cpu_sync;

  variant isola_flask{fmt::format("isola serve -w {}", w), true, w, 1};
  variant g_flask{g_best.label, false, w, g_best.threads};
  if (flask_path_) {
    std::vector<variant*> flask = {&isola_flask};
    if (peers) flask.push_back(&g_flask);
    rounds("flask_app.py", flask, "flask_app:app", false);
  }
  const double load_end = load_average();
  const double stolen = stolen_percent(start_ticks, cpu_ticks_now());

  bench_report r;
  r.params = {{"rounds", o_.rounds},
              {"duration_s", o_.duration},
              {"workers", w},
              {"connections", connections},
              {"p99_connections", p99_connections},
              {"wrk_threads", wrk_threads}};
  if (peers) r.params.emplace_back("gunicorn_best_threads", g_best.threads);

  r.add("hello_rps", median(isola.rps), "req/s", 0,
        fmt::format("hello.py, isola serve -w {}, {} connections (median)", w, connections));
  if (peers) {
    r.add("gunicorn_hello_rps", median(g_best.rps), "req/s", 0,
          fmt::format("the same, gunicorn's better of sync and gthread ({})", g_best.label));
    r.add("gunicorn_sync_hello_rps", median(g_sync.rps), "req/s", 0,
          fmt::format("the same, {} (sync worker)", g_sync.label));
    r.add("gunicorn_gthread_hello_rps", median(g_gthread.rps), "req/s", 0,
          fmt::format("the same, {} (gthread worker)", g_gthread.label));
    r.add("hello_ratio", median_ratio(isola.rps, g_best.rps), "x", 2,
          "isola / gunicorn's better, hello.py requests/s (median of the rounds' ratios)");
  }
  r.add("cpu_rps", median(isola_cpu.rps), "req/s", 0,
        fmt::format("cpu.py (~2 ms of Python a request), isola serve -w {}", w));
  if (peers) {
    r.add("gunicorn_cpu_rps", median(g_cpu.rps), "req/s", 0,
          fmt::format("the same, gunicorn's better of sync and gthread on cpu.py ({})",
                      g_cpu.label));
  }
  r.add("cpu_rps_one_interp", median(isola_cpu_1.rps), "req/s", 0,
        "the same, isola serve -w 1 (one interpreter)");
  if (peers) {
    r.add("cpu_ratio", median_ratio(isola_cpu.rps, g_cpu.rps), "x", 2,
          "isola / gunicorn, cpu.py requests/s (median of the rounds' ratios)");
  }
  r.add("cpu_scaling", median_ratio(isola_cpu.rps, isola_cpu_1.rps), "x", 2,
        fmt::format("cpu.py requests/s with {} interpreters / with 1 (median of the rounds' "
                    "ratios; at most the cores free beside wrk)",
                    w));
  r.add("p99_ms", median(isola.p99_ms), "ms", 2,
        fmt::format("hello.py p99 latency, isola serve, {} connections (median)",
                    p99_connections));
  if (peers) {
    r.add("gunicorn_p99_ms", median(g_best.p99_ms), "ms", 2,
          fmt::format("the same, {}", g_best.label));
  }
  r.add("rss_mb", median(isola.rss_mb), "MiB", 1,
        "isola serve's VmRSS after the hello.py runs (one process)");
  if (peers) {
    r.add("gunicorn_rss_mb", median(g_best.rss_mb), "MiB", 1,
          fmt::format("the VmRSS of gunicorn's master and workers, summed, after the same ({})",
                      g_best.label));
  }
  if (flask_path_) {
    r.add("flask_rps", median(isola_flask.rps), "req/s", 0,
          fmt::format("flask_app.py GET /, isola serve -w {}", w));
    if (peers) {
      r.add("gunicorn_flask_rps", median(g_flask.rps), "req/s", 0,
            fmt::format("the same, {}", g_flask.label));
      r.add("flask_ratio", median_ratio(isola_flask.rps, g_flask.rps), "x", 2,
            "isola / gunicorn, Flask requests/s (median of the rounds' ratios)");
    }
  }
  double isola_errors = 0, gunicorn_errors = 0;
  for (const variant* v : {&isola, &isola_cpu, &isola_cpu_1, &isola_flask}) {
    isola_errors += v->socket_errors;
  }
  for (const variant* v : {&g_sync, &g_gthread, &g_cpu_sync, &g_cpu_gthread, &g_flask}) {
    gunicorn_errors += v->socket_errors;
  }
  r.add("socket_errors", isola_errors, "", 0,
        "socket errors wrk counted against isola serve, all runs (connect, read, write, timeout)");
  if (peers) r.add("gunicorn_socket_errors", gunicorn_errors, "", 0, "the same against gunicorn");
  r.add("load_avg_1m_start", load_start, "", 2,
        "load average when the suite started (above the core count: contended)");
  r.add("load_avg_1m_end", load_end, "", 2, "load average when it ended");
  r.add("cpu_stolen_pct", stolen, "%", 1,
        "share of the machine's CPU time over the suite that a hypervisor took (steal)");

  r.chart("hello.py: requests/s", "req/s", true,
          {{"isola serve", "hello_rps"},
           {"gunicorn sync", "gunicorn_sync_hello_rps"},
           {"gunicorn gthread", "gunicorn_gthread_hello_rps"}});
  r.chart(fmt::format("hello.py: p99 latency at {} connections", p99_connections), "ms", false,
          {{"isola serve", "p99_ms"}, {"gunicorn", "gunicorn_p99_ms"}});
  r.chart("cpu.py (~2 ms of Python a request): requests/s", "req/s", true,
          {{fmt::format("isola serve -w {}", w), "cpu_rps"},
           {"gunicorn", "gunicorn_cpu_rps"},
           {"isola serve -w 1", "cpu_rps_one_interp"}});
  r.chart("Memory after load (RSS)", "MiB", false,
          {{"isola serve", "rss_mb"}, {"gunicorn, all processes", "gunicorn_rss_mb"}});
  if (flask_path_) {
    r.chart("Flask: requests/s", "req/s", true,
            {{"isola serve", "flask_rps"}, {"gunicorn", "gunicorn_flask_rps"}});
  }
  return r;
}

bench_suite_registrar serve_suite({
    "serve",
    "isola serve against gunicorn over HTTP (wrk): requests/s, p99 latency, memory",
    [](CLI::App& app) -> bench_runner {
      auto o = std::make_shared<serve_bench_options>();
      app.add_option("--rounds", o->rounds,
                     "Rounds; each runs every server variant once, in turn (medians reported)")
          ->check(CLI::Range(1u, 100u))
          ->capture_default_str()
          ->type_name("N");
      app.add_option("--duration", o->duration, "Seconds of each measured wrk run")
          ->check(CLI::Range(1u, 600u))
          ->capture_default_str()
          ->type_name("S");
      app.add_option("-w,--workers", o->workers,
                     "Interpreters of isola serve, and processes of gunicorn")
          ->check(CLI::Range(1u, 256u))
          ->capture_default_str()
          ->type_name("N");
      app.add_flag("--no-peers", o->no_peers, "Measure isola serve only, without gunicorn");
      app.footer(
          "Needs wrk on PATH; gunicorn (and Flask, optional) importable by the Python isola\n"
          "embeds, as it is or through a mirror of Debian's pure-Python packages\n"
          "(apt-get install wrk gunicorn python3-flask). Servers listen on 127.0.0.1 only.\n"
          "Phases: hello.py (isola, gunicorn sync, gunicorn gthread), cpu.py (isola with\n"
          "--workers and with 1, gunicorn sync and gthread: the better counts), flask_app.py\n"
          "(isola, gunicorn's better hello configuration). Each measurement starts its server, warms it up for 1 s, then runs\n"
          "wrk -t2 -c32 for --duration seconds (and for hello.py -c64 for the p99).\n"
          "Results (JSON keys): hello_rps, gunicorn_hello_rps, gunicorn_sync_hello_rps,\n"
          "gunicorn_gthread_hello_rps, hello_ratio; cpu_rps, gunicorn_cpu_rps,\n"
          "cpu_rps_one_interp, cpu_ratio, cpu_scaling; p99_ms, gunicorn_p99_ms; rss_mb,\n"
          "gunicorn_rss_mb; flask_rps, gunicorn_flask_rps, flask_ratio; socket_errors,\n"
          "gunicorn_socket_errors; load_avg_1m_start, load_avg_1m_end, cpu_stolen_pct.\n"
          "Ratios are isola / gunicorn, medians of the rounds' ratios. wrk shares the machine's\n"
          "cores with the server under test.\n"
          "Progress goes to stderr, results to stdout.");
      return [o](const bench_context& ctx) {
        serve_bench b(*o, ctx);
        return b.run();
      };
    },
});

}  // namespace
}  // namespace isola::cli
