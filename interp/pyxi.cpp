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

int add_embedded_module(PyObject* isola_module, const char* attr, const char* name,
                        const char* source) noexcept {
  try {
    return with_python_errors([&] {
      PyObject* dict = PyModule_GetDict(isola_module);  // borrowed
      if (PyDict_GetItemString(dict, attr) != nullptr) return 0;
      auto mod = py::check(PyModule_New(name));
      PyObject* ns = PyModule_GetDict(mod.get());  // borrowed
      py::check_zero(PyDict_SetItemString(ns, "__builtins__", PyEval_GetBuiltins()));
      const std::string file = std::string("<") + name + ">";
      run_source(source, file.c_str(), Py_file_input, ns);
      if (PyDict_GetItemString(dict, attr) != nullptr) return 0;  // another thread was first
      PyObject* modules = PyImport_GetModuleDict();  // borrowed
      py::check_zero(PyDict_SetItemString(modules, name, mod.get()));
      py::check_zero(PyDict_SetItemString(dict, attr, mod.get()));
      return 0;
    });
  } catch (const python_error& e) {
    // Raised again here, as a RuntimeError that carries the module's own failure.
    PyErr_Format(PyExc_RuntimeError, "isola: making %s failed: %s", name, e.traceback().c_str());
    return -1;
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
    return -1;
  }
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

int make_xi(PyObject* m) {
  return add_embedded_module(m, "_xi", "isola._xi", embedded::xi);
}

const lazy_attribute xi_lazy[] = {{"_xi", make_xi}, {nullptr, nullptr}};

module_part_registrar xi_part({"xi", nullptr, nullptr, xi_lazy});

}  // namespace
}  // namespace isola::detail
