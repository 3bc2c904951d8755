// Test helpers: see support.hpp.
#include "support.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace isola_test {

std::string py_dir() { return ISOLA_TEST_PY_DIR; }

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
};

/// Starts argv[0] with stdin from in_path (empty: inherited), stdout to out_path and stderr to
/// err_path (empty: to stdout as well), and waits for it.
exit_status spawn_and_wait(std::vector<std::string> args, const std::string& in_path,
                           const std::string& out_path, const std::string& err_path) {
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
  pid_t pid = 0;
  int rc = posix_spawn(&pid, args[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("cannot start " + args[0] + ": " + std::strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error("waitpid failed");
  }
  exit_status r;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

std::string describe_end(int exit_code, int signal) {
  return signal != 0 ? "killed by signal " + std::to_string(signal) + " (" + strsignal(signal) +
                           ")"
                     : "exit code " + std::to_string(exit_code);
}
}  // namespace

std::string child_result::describe() const {
  return describe_end(exit_code, signal) + "; output:\n" + output;
}

child_result run_child(const std::vector<std::string>& args) {
  temp_dir dir;
  std::vector<std::string> all{child_path()};
  all.insert(all.end(), args.begin(), args.end());
  const exit_status st = spawn_and_wait(std::move(all), "", dir.file("output"), "");
  child_result r;
  r.exit_code = st.exit_code;
  r.signal = st.signal;
  r.output = read_file(dir.file("output"));
  return r;
}

std::string program_result::describe() const {
  return describe_end(exit_code, signal) + "\n--- stdout:\n" + out + "--- stderr:\n" + err;
}

program_result run_program(const std::vector<std::string>& argv, const std::string& input) {
  temp_dir dir;
  write_file(dir.file("stdin"), input);
  const exit_status st =
      spawn_and_wait(argv, dir.file("stdin"), dir.file("stdout"), dir.file("stderr"));
  program_result r;
  r.exit_code = st.exit_code;
  r.signal = st.signal;
  r.out = read_file(dir.file("stdout"));
  r.err = read_file(dir.file("stderr"));
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
