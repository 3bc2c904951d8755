// Safe thread attach: any C++ thread can enter any interpreter for a scoped visit. If the
// interpreter or the runtime is shutting down, attach fails with a code and a message, never a
// crash or a hang (what PEP 788 brings to CPython 3.15, given here on 3.12 and 3.13).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <boost/system/result.hpp>

#include <isola/error.hpp>

namespace isola {

class attach_guard;
struct attach_error;

class interpreter_handle;

namespace detail {
struct interp_state;
struct attach_frame;
/// isola's own attach, for interrupting code that runs in the interpreter: like attach(), but
/// it also succeeds while the interpreter is closing (not once it is ending) and while the
/// runtime is finalizing, since ending either may wait for the code it interrupts.
boost::system::result<attach_guard, attach_error> attach_internal(const interpreter_handle&,
                                                                  bool for_interrupt);
}  // namespace detail

/// A copyable reference to an interpreter: its id plus shared state. It never touches the
/// PyInterpreterState after the interpreter has ended, so it is safe to keep anywhere and to
/// use from any thread; attach() through it then reports errc::interpreter_closed (or
/// errc::no_runtime once the runtime itself has ended).
class interpreter_handle {
 public:
  interpreter_handle() = default;
  /// Made by isola (interpreter::handle(), runtime::main_interpreter()).
  explicit interpreter_handle(std::shared_ptr<detail::interp_state> s) : state_(std::move(s)) {}
  /// CPython's interpreter id (0 is the main interpreter); -1 for an empty handle.
  std::int64_t id() const noexcept;
  /// False once the interpreter has started closing (or for an empty handle).
  bool alive() const noexcept;
  explicit operator bool() const noexcept { return state_ != nullptr; }
  friend bool operator==(const interpreter_handle& a, const interpreter_handle& b) {
    return a.state_ == b.state_;
  }

 private:
  friend boost::system::result<attach_guard, attach_error> detail::attach_internal(
      const interpreter_handle&, bool);
  std::shared_ptr<detail::interp_state> state_;
};

/// Why attach failed: one of errc::interpreter_closing, interpreter_closed, runtime_finalizing,
/// no_runtime, out_of_memory, plus a message naming the interpreter.
struct attach_error {
  errc code;
  std::string message;
};
/// boost::system::result calls this when value() is used on an error: throws isola::error.
[[noreturn]] void throw_exception_from_error(const attach_error& e,
                                             const boost::source_location& loc);

/// While alive, the calling thread is attached to the interpreter (holds its GIL through a
/// thread state of that interpreter) and may use the CPython API there.
/// - A live guard keeps the interpreter from being destroyed: closing waits for it.
/// - Destroy it on the thread that made it, in reverse order of creation (it is a scope).
/// - Nested attach to the interpreter this thread is already attached to reuses the current
///   thread state. Attaching to another interpreter swaps thread states and the guard's end
///   swaps back, so an attached thread can visit a second interpreter and return.
class attach_guard {
 public:
  attach_guard(attach_guard&& other) noexcept;
  attach_guard& operator=(attach_guard&&) = delete;
  attach_guard(const attach_guard&) = delete;
  ~attach_guard();

  std::int64_t interpreter_id() const noexcept;

 private:
  friend boost::system::result<attach_guard, attach_error> attach(const interpreter_handle&);
  friend boost::system::result<attach_guard, attach_error> detail::attach_internal(
      const interpreter_handle&, bool);
  explicit attach_guard(detail::attach_frame* f) noexcept : frame_(f) {}
  detail::attach_frame* frame_;
};

using attach_result = boost::system::result<attach_guard, attach_error>;

/// Attaches the calling thread to the interpreter. Never blocks on shutdown: it fails at once
/// if the interpreter is closing or closed or the runtime is finalizing. It does wait for the
/// interpreter's GIL, as any Python thread would.
attach_result attach(const interpreter_handle& interp);

}  // namespace isola
