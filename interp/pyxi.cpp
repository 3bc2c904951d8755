// See pyxi.hpp. Also registers isola._xi, the module that carries calls between interpreters
// (interp/py/xi.py), made on first use.
#include "interp/pyxi.hpp"

#include "lib/interrupt.hpp"
#include "lib/module.hpp"
#include "lib/pyexec.hpp"
#include "interp/py/xi.py.hpp"

#include <chrono>
#include <string>

namespace isola::detail {

std::int64_t current_interp_id() noexcept {
  return PyInterpreterState_GetID(PyInterpreterState_Get());
}

std::shared_ptr<interp_state> current_interp_state() { return find_interp(current_interp_id()); }

std::vector<std::string> sys_path_entries() {
  std::vector<std::string> out;
  PyObject* path = PySys_GetObject("path");  // borrowed
  if (path == nullptr || !PyList_Check(path)) return out;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(path); ++i) {
    PyObject* item = PyList_GET_ITEM(path, i);  // borrowed
    const char* s = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : nullptr;
    if (s == nullptr) {
      PyErr_Clear();  // not a str (or not encodable): not a folder the new one can use
      continue;
    }
    out.emplace_back(s);
  }
  return out;
}

int add_submodule_attribute(PyObject* isola_module, const char* attr) noexcept {
  PyObject* dict = PyModule_GetDict(isola_module);  // borrowed
  if (PyDict_GetItemString(dict, attr) != nullptr) return 0;
  py::object mod = py::steal(import_submodule(attr));
  if (!mod) return -1;
  if (PyDict_GetItemString(dict, attr) != nullptr) return 0;  // set by the import
  return PyDict_SetItemString(dict, attr, mod.get());
}

value excinfo_of(const python_error& e) {
  const std::string& full = e.type_name();
  const auto dot = full.rfind('.');
  std::string name = dot == std::string::npos ? full : full.substr(dot + 1);
  std::string module = dot == std::string::npos ? "builtins" : full.substr(0, dot);
  std::string formatted = e.message().empty() ? full : full + ": " + e.message();
  std::string display = e.traceback();
  while (!display.empty() && display.back() == '\n') display.pop_back();
  return isola::make_tuple(name, name, std::move(module), e.message(), std::move(formatted),
                           std::move(display));
}

wait_outcome wait_for_work(const std::future<value>& fut,
                           const std::shared_ptr<interp_state>& caller) {
  // The work's completion cannot signal these flags' condition variables, so the wait looks
  // at them between short waits on the future.
  constexpr auto slice = std::chrono::milliseconds(20);
  interrupt_slot* slot = current_interrupt_slot();
  release_gil unlocked;
  for (;;) {
    if (fut.wait_for(slice) == std::future_status::ready) return wait_outcome::ready;
    if (slot != nullptr) {
      std::lock_guard lock(slot->mu);
      if (slot->interrupted) return wait_outcome::interrupted;
    } else if (caller != nullptr) {
      std::lock_guard lock(caller->mu);
      if (caller->sleeps_interrupted) return wait_outcome::interrupted;
    }
  }
}

namespace {

int make_xi(PyObject* m) { return add_submodule_attribute(m, "_xi"); }

const lazy_attribute xi_lazy[] = {{"_xi", make_xi}, {nullptr, nullptr}};

module_part_registrar xi_part({"xi", nullptr, nullptr, xi_lazy});
submodule_registrar xi_submodule({"_xi", embedded::xi});

}  // namespace
}  // namespace isola::detail
