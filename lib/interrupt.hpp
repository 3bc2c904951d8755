// How isola interrupts the code a worker thread runs. The thread that owns an interpreter
// (interp/) gives itself an interrupt_slot; an interrupt (a timeout, cancel()) raises an
// exception in its Python code and marks the slot, which wakes whatever blocks there with the
// GIL released (isola's time.sleep, a channel wait: they register their stop source) so that
// the exception is raised at once.
#pragma once

#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <string>

namespace isola::detail {

struct interrupt_slot {
  std::mutex mu;
  std::condition_variable cv;
  bool interrupted = false;
  std::stop_source* wait_stop = nullptr;  ///< a wait in progress on this thread, if any
  std::string interrupt_type;  ///< the exception of the last interrupt ("KeyboardInterrupt")
};

/// The slot of the calling thread, or nullptr (threads that are no interpreter's worker).
interrupt_slot* current_interrupt_slot() noexcept;
/// Set by the worker thread for itself (nullptr when its interpreter has ended).
void set_current_interrupt_slot(interrupt_slot* slot) noexcept;

}  // namespace isola::detail
