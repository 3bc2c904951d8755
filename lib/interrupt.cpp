// See interrupt.hpp.
#include "lib/interrupt.hpp"

namespace isola::detail {
namespace {
thread_local interrupt_slot* this_thread_slot = nullptr;
}  // namespace

interrupt_slot* current_interrupt_slot() noexcept { return this_thread_slot; }
void set_current_interrupt_slot(interrupt_slot* slot) noexcept { this_thread_slot = slot; }

}  // namespace isola::detail
