// Running Python code from C++ inside the current interpreter and carrying exceptions out as
// isola::python_error. Every function here needs the calling thread attached.
#pragma once

#include "lib/py.hpp"

#include <isola/error.hpp>

#include <string_view>

namespace isola::detail {

/// Takes the currently raised Python exception (which must be set), clears it and copies it
/// into a python_error: type, message, formatted traceback, SyntaxError location.
python_error fetch_python_error() noexcept;

/// Runs fn(); if it throws py::error_already_set, the pending Python exception is converted
/// and thrown as python_error. This is the one place where that mapping happens.
template <typename F>
decltype(auto) with_python_errors(F&& fn) {
  try {
    return fn();
  } catch (const py::error_already_set&) {
    throw fetch_python_error();
  }
}

/// The dict of the interpreter's __main__ module (borrowed from sys.modules, kept alive).
py::object main_globals();

/// Compiles and runs source. mode is Py_file_input (statements, returns None) or
/// Py_eval_input (one expression, returns its value).
py::object run_source(std::string_view source, const char* filename, int mode,
                      PyObject* globals);

/// The exception class `name` names in the current interpreter: a builtin ("SystemExit") or
/// "module.Name" of a module already imported ("isola.TaskTimeout"). Borrowed; nullptr (no
/// exception set) if there is none.
PyObject* find_exception_class(std::string_view name) noexcept;

/// Resolves "package.module:attr.path" (the part after ':' may be dotted). Without ':' the
/// last dotted component is the attribute: "os.path.join".
py::object resolve_target(std::string_view target);

}  // namespace isola::detail
