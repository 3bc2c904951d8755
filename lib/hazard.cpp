// Hazard records: a lock-free list of every thread's record, reused as threads come and go.
#include "lib/hazard.hpp"

namespace isola::detail {
namespace {

/// Every record ever made, newest first. Leaked on purpose: threads may use theirs during
/// static destruction.
std::atomic<hazard_record*> all_records{nullptr};

/// Gives the thread's record back when the thread ends.
struct record_releaser {
  ~record_releaser() {
    if (hazard_record* r = this_thread_hazard) {
      this_thread_hazard = nullptr;
      r->in_use.store(false, std::memory_order_release);
    }
  }
};

}  // namespace

hazard_record* acquire_hazard_record() noexcept {
  static thread_local record_releaser releaser;  // registers the release at thread exit
  (void)&releaser;
  hazard_record* r = all_records.load(std::memory_order_acquire);
  for (; r != nullptr; r = r->next) {
    bool free = false;
    if (!r->in_use.load(std::memory_order_relaxed) &&
        r->in_use.compare_exchange_strong(free, true, std::memory_order_acquire)) {
      break;
    }
  }
  if (r == nullptr) {
    r = new hazard_record;  // no exceptions expected this small; terminate is the answer if so
    r->in_use.store(true, std::memory_order_relaxed);
    hazard_record* head = all_records.load(std::memory_order_relaxed);
    do {
      r->next = head;
    } while (!all_records.compare_exchange_weak(head, r, std::memory_order_release,
                                                std::memory_order_relaxed));
  }
  this_thread_hazard = r;
  return r;
}

bool hazard_in_use(const void* p) noexcept {
  for (hazard_record* r = all_records.load(std::memory_order_acquire); r != nullptr; r = r->next) {
    for (const auto& slot : r->hp) {
      if (slot.load(std::memory_order_acquire) == p) return true;
    }
  }
  return false;
}

}  // namespace isola::detail
