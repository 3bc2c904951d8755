// Workarounds for CPython bugs met in own-GIL interpreters; each entry says which versions.
#include "lib/workarounds.hpp"

#include "lib/py.hpp"

#include <isola/log.hpp>

namespace isola::detail {

void prepend_sys_path(const std::vector<std::string>& entries) {
  if (entries.empty()) return;
  PyObject* path = PySys_GetObject("path");  // borrowed
  if (path == nullptr || !PyList_Check(path)) py::raise(PyExc_RuntimeError, "sys.path is not a list");
  Py_ssize_t at = 0;
  for (const auto& e : entries) {
    auto item = py::str(e);
    int present = PySequence_Contains(path, item.get());
    py::check_nonneg(present);
    if (present) continue;
    py::check_zero(PyList_Insert(path, at++, item.get()));
  }
}

std::vector<module_workaround> module_workarounds() {
  std::vector<module_workaround> out;
  const unsigned long v = Py_Version;
  // gh-136421/gh-136423: _datetime's static types get per-interpreter objects allocated by the
  // first interpreter that imports it; ending interpreters in any other order than
  // last-importer-first frees them with the wrong allocator (3.13.0: segfault in
  // Py_EndInterpreter, also via `import sqlite3`). On 3.12 the module is refused in isolated
  // interpreters, but its init has already run, so the second import crashes (gh-110415).
  // Fixed upstream by gh-136583 (main interpreter owns the types), not in 3.12/3.13.
  if (v < 0x030E0000) {
    out.push_back({"_datetime", "_pydatetime",
                   "CPython 3.12/3.13 crash when own-allocator interpreters that imported "
                   "datetime (or sqlite3) end (gh-136421, gh-110415)"});
    // _zoneinfo needs _datetime's C API (PyDateTime_IMPORT) and fails with AttributeError,
    // which zoneinfo's `except ImportError` does not catch; its pure-Python twin works.
    out.push_back({"_zoneinfo", "zoneinfo._zoneinfo",
                   "the C _zoneinfo needs the C _datetime, which is blocked"});
  }
  // 3.12: _decimal is refused in isolated interpreters after its init ran; the second import
  // in another interpreter crashes (same class as gh-110415).
  if (v < 0x030D0000) {
    out.push_back({"_decimal", "_pydecimal",
                   "CPython 3.12 crashes on the second import of decimal in isolated "
                   "interpreters (gh-110415)"});
  }
  return out;
}

const char* known_unfixed_bug() {
  const unsigned long v = Py_Version;
  if (v >= 0x030C0000 && v < 0x030C04F0) {
    return "CPython 3.12.0-3.12.3 can crash in Py_Finalize after an isolated interpreter passed "
           "keyword arguments to a C function of an extension module (hashlib, ssl, asyncio: "
           "gh-119213, fixed in 3.12.4); isola cannot work around it: use CPython >= 3.12.4";
  }
  return nullptr;
}

void apply_exit_workarounds() noexcept {
  const unsigned long v = Py_Version;
  if (v < 0x030D0000 || v >= 0x030D03F0) return;  // 3.13.0-3.13.2 only
  PyObject* modules = PyImport_GetModuleDict();   // borrowed
  PyObject* threading = PyDict_GetItemString(modules, "threading");  // borrowed
  if (threading == nullptr || threading == Py_None) return;
  // The fix of gh-130522: the lock and the dict are bound when the method is made.
  static constexpr const char* patch = R"(
def _isola_patch(t):
    cls = getattr(t, '_DeleteDummyThreadOnDel', None)
    if cls is None or getattr(cls, '_isola_patched', False):
        return
    def __del__(self, _active_limbo_lock=t._active_limbo_lock, _active=t._active):
        with _active_limbo_lock:
            if _active.get(self._tident) is self._dummy_thread:
                _active.pop(self._tident, None)
    cls.__del__ = __del__
    cls._isola_patched = True
)";
  py::object ns = py::steal(PyDict_New());
  bool ok = ns && PyDict_SetItemString(ns.get(), "__builtins__", PyEval_GetBuiltins()) == 0;
  if (ok) {
    py::object r = py::steal(PyRun_String(patch, Py_file_input, ns.get(), ns.get()));
    PyObject* fn = r ? PyDict_GetItemString(ns.get(), "_isola_patch") : nullptr;  // borrowed
    ok = fn != nullptr && py::steal(PyObject_CallOneArg(fn, threading));
  }
  if (!ok) {
    PyErr_Clear();
    logger("isola.interp")->warn("could not apply the workaround for gh-130522 (threading's dummy threads); "
                   "'Exception ignored in _DeleteDummyThreadOnDel.__del__' may be printed");
  }
}

void apply_module_workarounds() {
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  for (const auto& w : module_workarounds()) {
    py::check_zero(PyDict_SetItemString(modules, w.module, Py_None));
  }
}

}  // namespace isola::detail
