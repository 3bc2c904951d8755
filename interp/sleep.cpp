// isola._sleep: the time.sleep isola installs in its interpreters. Same contract as
// time.sleep, but a worker's sleep waits on a condition variable that interrupt() signals, so
// a timeout or cancel() ends `time.sleep(100)` at once instead of after 100 s; a sleep on the
// interpreter's other threads waits on one that ending the interpreter signals when it raises
// SystemExit in them, and that isola._interrupt_thread signals for the thread it interrupts.
#include "lib/python.hpp"

#include "lib/interrupt.hpp"
#include "lib/state.hpp"
#include "lib/module.hpp"

#include <chrono>
#include <cmath>
#include <thread>

namespace isola::detail {
namespace {

PyObject* sleep(PyObject*, PyObject* arg) {
  double secs = PyFloat_AsDouble(arg);
  if (secs == -1.0 && PyErr_Occurred()) {
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
      PyErr_Format(PyExc_TypeError, "'%s' object cannot be interpreted as an integer or float",
                   Py_TYPE(arg)->tp_name);
    }
    return nullptr;
  }
  if (std::isnan(secs)) {
    PyErr_SetString(PyExc_ValueError, "Invalid value NaN (not a number)");
    return nullptr;
  }
  if (secs < 0) {
    PyErr_SetString(PyExc_ValueError, "sleep length must be non-negative");
    return nullptr;
  }
  using clock = std::chrono::steady_clock;
  // Clamp absurd lengths so the deadline cannot overflow (about 31 years).
  auto length = std::chrono::duration<double>(std::min(secs, 1e9));
  auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(length);
  interrupt_slot* slot = current_interrupt_slot();
  std::shared_ptr<interp_state> state;
  if (slot == nullptr) state = find_interp(PyInterpreterState_GetID(PyInterpreterState_Get()));
  for (;;) {
    bool ended = true;
    Py_BEGIN_ALLOW_THREADS
    if (slot != nullptr) {
      std::unique_lock lock(slot->mu);
      slot->cv.wait_until(lock, deadline, [&] { return slot->interrupted; });
    } else if (state != nullptr) {
      std::unique_lock lock(state->mu);
      const auto wakeups = state->sleep_wakeups;
      state->sleep_cv.wait_until(lock, deadline, [&] {
        return state->sleeps_interrupted || state->sleep_wakeups != wakeups;
      });
      // Woken for another thread's interrupt (nudge_sleeps): sleep on.
      ended = state->sleeps_interrupted || clock::now() >= deadline;
    } else {
      std::this_thread::sleep_until(deadline);
    }
    Py_END_ALLOW_THREADS
    if (ended || PyThreadState_Get()->async_exc != nullptr) break;
  }
  // A pending interrupt (async exception) is raised by the eval loop right after we return.
  Py_RETURN_NONE;
}

PyMethodDef sleep_methods[] = {
    {"_sleep", sleep, METH_O,
     "_sleep(seconds)\n\ntime.sleep in isola's interpreters: the same behaviour, but an "
     "interrupt (pool timeout, cancel, interpreter.interrupt) wakes it at once."},
    {nullptr, nullptr, 0, nullptr}};

module_part_registrar sleep_part({"sleep", sleep_methods, nullptr});

}  // namespace
}  // namespace isola::detail
