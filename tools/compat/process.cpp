// Runs one child process of `isola compat` under a timeout: its own process group (so a
// timeout kills whatever it started too), its output in a file, its end as exit status,
// signal or timeout.
#include "tools/compat/compat.hpp"
#include "tools/isola/signals.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace isola::cli::compat {

std::string signal_label(int signal) {
  if (const char* abbrev = sigabbrev_np(signal); abbrev != nullptr) {
    return std::string("SIG") + abbrev;
  }
  return "signal " + std::to_string(signal);
}

process_result run_process(const std::vector<std::string>& args, const std::string& log_path,
                           double timeout_seconds) {
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group, so that the timeout kills what it started too; default signal
  // dispositions, so that the parent's SIGINT/SIGTERM handlers are not inherited.
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGTERM);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);

  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    throw std::runtime_error("compat: cannot start " + args[0] + ": " + std::strerror(rc));
  }

  process_result r;
  const auto deadline = t0 + std::chrono::duration<double>(timeout_seconds);
  auto pause = std::chrono::milliseconds(1);
  int status = 0;
  for (;;) {
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) {
      throw std::runtime_error(std::string("compat: waitpid: ") + std::strerror(errno));
    }
    const bool stop = stop_signal() != 0;
    if (stop || clock::now() >= deadline) {
      (stop ? r.stopped : r.timed_out) = true;
      kill(-pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    std::this_thread::sleep_for(pause);
    if (pause < std::chrono::milliseconds(20)) pause *= 2;
  }
  r.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  if (r.timed_out || r.stopped) return r;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

}  // namespace isola::cli::compat
