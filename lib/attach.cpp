// Safe thread attach (PEP 788's idea on 3.12/3.13): a guard count per interpreter that closing
// waits for, checked under the interpreter's mutex so that attach never races with its end.
#include "lib/python.hpp"

#include "lib/state.hpp"

#include <isola/attach.hpp>
#include <isola/log.hpp>

namespace isola {
namespace detail {

/// One attach on this thread. Frames form a per-thread stack (innermost on top).
struct attach_frame {
  std::shared_ptr<interp_state> state;
  PyThreadState* tstate = nullptr;    ///< the thread state this frame made current
  PyThreadState* previous = nullptr;  ///< current before this frame (restored at its end)
  bool owns_tstate = false;           ///< made by this frame (else reused the current one)
  attach_frame* outer = nullptr;
};

namespace {
thread_local attach_frame* top_frame = nullptr;

attach_error fail(errc code, const interp_state& s, const char* why) {
  return {code, "cannot attach to " + s.label() + ": " + why};
}
}  // namespace
}  // namespace detail

std::int64_t interpreter_handle::id() const noexcept { return state_ ? state_->id : -1; }

bool interpreter_handle::alive() const noexcept {
  if (!state_) return false;
  std::lock_guard lock(state_->mu);
  return state_->phase == detail::interp_phase::running;
}

void throw_exception_from_error(const attach_error& e, const boost::source_location&) {
  throw error(e.code, e.message);
}

attach_result attach(const interpreter_handle& handle) {
  return detail::attach_internal(handle, false);
}

attach_result detail::attach_internal(const interpreter_handle& handle, bool for_interrupt) {
  using namespace detail;
  if (!handle) return attach_error{errc::interpreter_closed, "cannot attach: empty interpreter handle"};
  const auto& s = handle.state_;

  // Already attached to this interpreter on this thread: reuse the current thread state.
  // No phase check: the thread is inside already, and its outer scope keeps it alive.
  if (attached_here(*s)) {
    auto* f = new attach_frame{s, current_tstate(), current_tstate(), false, top_frame};
    top_frame = f;
    return attach_guard(f);
  }

  auto& rt = runtime();
  switch (rt.phase.load()) {
    case runtime_phase::running: break;
    case runtime_phase::finalizing:
      if (for_interrupt) break;
      return fail(errc::runtime_finalizing, *s, "the isola runtime is finalizing");
    default:
      return fail(errc::no_runtime, *s, "no isola runtime is running");
  }

  PyInterpreterState* interp = nullptr;
  {
    std::lock_guard lock(s->mu);
    if (s->phase == interp_phase::ending ||
        (s->phase == interp_phase::closing && !for_interrupt)) {
      return fail(errc::interpreter_closing, *s, "it is closing");
    }
    if (s->phase == interp_phase::closed || s->interp == nullptr) {
      return fail(errc::interpreter_closed, *s, "it has ended");
    }
    ++s->guards;  // from here on the interpreter cannot end until we let go
    interp = s->interp;
  }

  PyThreadState* ts = PyThreadState_New(interp);
  if (ts == nullptr) {
    std::lock_guard lock(s->mu);
    --s->guards;
    s->cv.notify_all();
    return fail(errc::out_of_memory, *s, "CPython could not allocate a thread state");
  }
  PyThreadState* prev = current_tstate();
  if (prev != nullptr) {
    PyThreadState_Swap(ts);  // releases prev's GIL, takes this interpreter's
  } else {
    PyEval_RestoreThread(ts);
  }
  auto* f = new attach_frame{s, ts, prev, true, top_frame};
  top_frame = f;
  return attach_guard(f);
}

attach_guard::attach_guard(attach_guard&& other) noexcept
    : frame_(std::exchange(other.frame_, nullptr)) {}

std::int64_t attach_guard::interpreter_id() const noexcept {
  return frame_ ? frame_->state->id : -1;
}

attach_guard::~attach_guard() {
  using namespace detail;
  if (frame_ == nullptr) return;
  if (frame_ != top_frame) {
    // Guards are scopes; ending one out of order would restore the wrong thread state.
    logger("isola.attach")
        ->critical("attach_guard for {} ended out of order or on another thread",
                   frame_->state->label());
    std::abort();
  }
  top_frame = frame_->outer;
  std::unique_ptr<attach_frame> f(frame_);
  if (!f->owns_tstate) return;

  PyThreadState_Clear(f->tstate);
  PyThreadState_DeleteCurrent();  // frees it and releases this interpreter's GIL
  if (f->previous != nullptr) PyEval_RestoreThread(f->previous);

  std::lock_guard lock(f->state->mu);
  if (--f->state->guards == 0) f->state->cv.notify_all();
}

}  // namespace isola
