// Thread parking: FUTEX_WAIT_BITSET with an absolute CLOCK_MONOTONIC deadline
// (the clock of std::chrono::steady_clock in libstdc++ and libc++); elsewhere a condition
// variable shared by all words (correct, slower).
#include "lib/sync.hpp"

#include <climits>
#include <cstdlib>
#include <ctime>

#if defined(__linux__)
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#else
#include <condition_variable>
#include <mutex>
#endif

namespace isola::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
              std::atomic<std::uint32_t>::is_always_lock_free);

#if defined(__linux__)

bool park(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
          const deadline& until) noexcept {
  timespec ts{};
  if (until) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                        until->time_since_epoch())
                        .count();
    if (ns <= 0) return false;
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  }
  const long r = ::syscall(SYS_futex, reinterpret_cast<const std::uint32_t*>(&word),
                           FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected,
                           until ? &ts : nullptr, nullptr, FUTEX_BITSET_MATCH_ANY);
  if (r == -1 && errno == ETIMEDOUT) return false;
  return true;  // woken, EAGAIN (word changed), EINTR: the caller re-checks
}

void unpark(std::atomic<std::uint32_t>& word, int count) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE | FUTEX_PRIVATE_FLAG,
            count, nullptr, nullptr, 0);
}

#else

namespace {
std::mutex park_mu;
std::condition_variable park_cv;
}  // namespace

bool park(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
          const deadline& until) noexcept {
  std::unique_lock lock(park_mu);
  if (word.load() != expected) return true;
  if (!until) {
    park_cv.wait(lock);
    return true;
  }
  return park_cv.wait_until(lock, *until) == std::cv_status::no_timeout;
}

void unpark(std::atomic<std::uint32_t>&, int) noexcept {
  { std::lock_guard lock(park_mu); }
  park_cv.notify_all();
}

#endif

// ---- asymmetric fences ---------------------------------------------------------------------

#if defined(__SANITIZE_THREAD__)
#define ISOLA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ISOLA_TSAN 1
#endif
#endif

#if defined(__linux__) && !defined(ISOLA_TSAN)

namespace {
long membarrier(int cmd) noexcept { return ::syscall(SYS_membarrier, cmd, 0, 0); }
std::atomic<bool> fence_checked{false};  ///< set once asymmetric_fence_available() has checked
}  // namespace

bool asymmetric_fence_available() noexcept {
  static const bool ok = [] {
    const long cmds = membarrier(MEMBARRIER_CMD_QUERY);
    const bool registered = cmds >= 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
                            membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
    fence_checked.store(true, std::memory_order_release);
    return registered;
  }();
  return ok;
}

bool asymmetric_fence_checked() noexcept { return fence_checked.load(std::memory_order_acquire); }

void asymmetric_fence() noexcept {
  // Cannot fail once registered (EINTR is not among its errors); a failure here would break
  // the fast paths' ordering, so it is fatal rather than ignored.
  if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0) std::abort();
}

#else

bool asymmetric_fence_available() noexcept { return false; }
bool asymmetric_fence_checked() noexcept { return true; }  // nothing to register
void asymmetric_fence() noexcept { std::abort(); }

#endif

}  // namespace isola::detail
