// Workarounds for CPython bugs met in own-GIL interpreters; each entry says which versions.
#include "workarounds.hpp"

#include "py.hpp"

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
  // _datetime keeps static types whose per-interpreter state is torn down with the first
  // interpreter that ends, so later teardowns crash: CPython 3.12.x and 3.13.0.
  if (v < 0x030D01F0) {
    out.push_back({"_datetime", "_pydatetime",
                   "CPython <= 3.13.0 crashes at own-GIL interpreter teardown after import "
                   "datetime"});
  }
  if (v < 0x030D0000) {
    out.push_back({"_decimal", "_pydecimal",
                   "CPython 3.12 crashes at own-GIL interpreter teardown after import decimal"});
    out.push_back({"_asyncio", "asyncio's pure-Python futures and tasks",
                   "CPython 3.12 crashes at own-GIL interpreter teardown after import asyncio"});
    out.push_back({"_hashlib", "hashlib's builtin _md5/_sha1/_sha2/_sha3/_blake2",
                   "CPython 3.12 crashes at own-GIL interpreter teardown after import hashlib"});
  }
  return out;
}

void apply_module_workarounds() {
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  for (const auto& w : module_workarounds()) {
    py::check_zero(PyDict_SetItemString(modules, w.module, Py_None));
  }
}

}  // namespace isola::detail
