// Test helpers: see support.hpp.
#include "test/support.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace isola_test {

std::string py_dir() { return ISOLA_TEST_PY_DIR; }

bench_run run_bench(std::vector<std::string> args) {
  args.insert(args.begin(), {isola_path(), "bench"});
  args.insert(args.end(), {"--json", "--quiet"});
  bench_run b{run_program(args), nullptr};
  if (b.run.exit_code != 0) throw std::runtime_error("isola bench failed: " + b.run.describe());
  b.in = std::make_unique<isola::interpreter>();
  b.in->set_global("text", b.run.out);
  b.in->exec("import json\nresults = json.loads(text)['results']\n");
  return b;
}

std::string isola_path() {
  if (const char* p = std::getenv("ISOLA_CLI"); p != nullptr && *p != '\0') return p;
  return ISOLA_TEST_CLI;
}

namespace {
std::string child_path() {
  if (const char* p = std::getenv("ISOLA_TEST_CHILD"); p != nullptr && *p != '\0') return p;
  // Run by hand: the child is built next to the test executable.
  return (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "isola_test_child")
      .string();
}

struct exit_status {
  int exit_code = -1;
  int signal = 0;
  bool hung = false;
};

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Starts argv[0] in a process group of its own with stdin from in_path (empty: inherited),
/// stdout to out_path and stderr to err_path (empty: to stdout as well).
pid_t spawn(std::vector<std::string> args, const std::string& in_path, const std::string& out_path,
            const std::string& err_path, const std::string& cwd = "") {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!in_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, 0, in_path.c_str(), O_RDONLY, 0);
  }
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  if (err_path.empty()) {
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  } else {
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0600);
  }
  if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, args[0].c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw std::runtime_error("cannot start " + args[0] + ": " + std::strerror(rc));
  return pid;
}

/// Waits for pid; after limit_seconds kills its process group and reports it as hung.
exit_status reap(pid_t pid, int limit_seconds) {
  const double deadline = now_seconds() + limit_seconds;
  exit_status r;
  int status = 0;
  for (;;) {
    const pid_t got = waitpid(pid, &status, WNOHANG);
    if (got == pid) break;
    if (got < 0 && errno != EINTR) throw std::runtime_error("waitpid failed");
    if (now_seconds() >= deadline) {
      r.hung = true;
      kill(-pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Whatever the program left in its group (a forked child, say) goes with it.
  kill(-pid, SIGKILL);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

std::string describe_end(int exit_code, int signal, bool hung) {
  if (hung) return "hung: still running after the test's limit, killed";
  return signal != 0 ? "killed by signal " + std::to_string(signal) + " (" + strsignal(signal) +
                           ")"
                     : "exit code " + std::to_string(exit_code);
}
}  // namespace

std::string child_result::describe() const {
  return describe_end(exit_code, signal, hung) + "; output:\n" + output;
}

child_result run_child(const std::vector<std::string>& args, int limit_seconds) {
  temp_dir dir;
  std::vector<std::string> all{child_path()};
  all.insert(all.end(), args.begin(), args.end());
  const exit_status st = reap(spawn(std::move(all), "", dir.file("output"), ""), limit_seconds);
  child_result r;
  r.exit_code = st.exit_code;
  r.signal = st.signal;
  r.hung = st.hung;
  r.output = read_file(dir.file("output"));
  return r;
}

std::string program_result::describe() const {
  return describe_end(exit_code, signal, hung) + "\n--- stdout:\n" + out + "--- stderr:\n" + err;
}

program_result run_program(const std::vector<std::string>& argv, const std::string& input,
                           int limit_seconds, const std::string& cwd) {
  background_program p(argv, input, cwd);
  return p.wait(limit_seconds);
}

background_program::background_program(const std::vector<std::string>& argv,
                                       const std::string& input, const std::string& cwd) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "isola-test-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
  write_file(dir_ + "/stdin", input);
  pid_ = spawn(argv, dir_ + "/stdin", dir_ + "/stdout", dir_ + "/stderr", cwd);
}

background_program::~background_program() {
  if (!reaped_ && pid_ > 0) {
    kill(-pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string background_program::out_so_far() const { return read_file(dir_ + "/stdout"); }
std::string background_program::err_so_far() const { return read_file(dir_ + "/stderr"); }

bool background_program::wait_for_stdout(const std::string& text, int limit_seconds) const {
  const double deadline = now_seconds() + limit_seconds;
  while (now_seconds() < deadline) {
    if (out_so_far().find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

bool background_program::wait_for_stderr(const std::string& text, int limit_seconds) const {
  const double deadline = now_seconds() + limit_seconds;
  while (now_seconds() < deadline) {
    if (err_so_far().find(text) != std::string::npos) return true;
    if (!running()) return err_so_far().find(text) != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

bool background_program::running() const { return !reaped_ && !exited_zombie(); }

// Whether it has ended (left for wait() to reap: WNOWAIT).
bool background_program::exited_zombie() const {
  siginfo_t info{};
  info.si_pid = 0;
  return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == pid_;
}

void background_program::send_signal(int signal) const { kill(pid_, signal); }

program_result background_program::wait(int limit_seconds) {
  const exit_status st = reap(pid_, limit_seconds);
  reaped_ = true;
  program_result r;
  r.exit_code = st.exit_code;
  r.signal = st.signal;
  r.hung = st.hung;
  r.out = out_so_far();
  r.err = err_so_far();
  return r;
}

temp_dir::temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "isola-test-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace isola_test
