// See signals.hpp. The handler is async-signal-safe: an atomic exchange, and on the second
// signal write(2) and _exit().
#include "tools/isola/signals.hpp"

#include <atomic>
#include <csignal>
#include <cstring>

#include <unistd.h>

namespace isola::cli {
namespace {

std::atomic<int> received{0};
static_assert(std::atomic<int>::is_always_lock_free);

void on_signal(int sig) {
  int none = 0;
  if (received.compare_exchange_strong(none, sig)) return;
  static const char msg[] = "isola: second signal; exiting at once\n";
  (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
  ::_exit(128 + sig);
}

}  // namespace

void watch_stop_signals() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

int stop_signal() noexcept { return received.load(); }

const char* signal_name(int signal) noexcept {
  switch (signal) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    default: return "a signal";
  }
}

}  // namespace isola::cli
