// The one header that includes <Python.h>; every isola source that needs the C API includes
// this (first), never <Python.h> directly.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX < 0x030C0000
#error "isola needs CPython 3.12 or newer (per-interpreter GIL, PEP 684)"
#endif

namespace isola::detail {

/// The current thread state or nullptr, without the fatal error PyThreadState_Get() gives.
inline PyThreadState* current_tstate() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
  return PyThreadState_GetUnchecked();
#else
  return _PyThreadState_UncheckedGet();
#endif
}

/// Releases the calling thread's GIL (whatever interpreter it is attached to) for a scope.
class release_gil {
 public:
  release_gil() noexcept : saved_(current_tstate() ? PyEval_SaveThread() : nullptr) {}
  ~release_gil() {
    if (saved_ != nullptr) PyEval_RestoreThread(saved_);
  }
  release_gil(const release_gil&) = delete;
  release_gil& operator=(const release_gil&) = delete;

 private:
  PyThreadState* saved_;
};

}  // namespace isola::detail
