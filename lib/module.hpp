// The builtin module `isola`, importable in every interpreter. It is assembled from parts that
// register themselves (this file's core part, channels, shared values, ...).
#pragma once

#include "lib/python.hpp"

namespace isola::detail {

/// An attribute of `isola` made on first use rather than when the module is imported, for
/// attributes that need other modules: every interpreter imports `isola` when it is created,
/// so whatever its exec step imports is paid by every interpreter (`import queue` alone costs
/// ~3 ms and 0.6 MB per interpreter). `make` adds the attribute, and any others made with
/// it, to the module; it returns 0, or -1 with an exception set. It may release the GIL
/// (imports do), so it must cope with another thread having added them meanwhile.
struct lazy_attribute {
  const char* name;
  int (*make)(PyObject* module);
};

/// One part of the `isola` module: functions to add, an optional exec step (types,
/// constants) and attributes made on first use. `methods` ends with a {nullptr} sentinel,
/// `lazy` with a {nullptr, nullptr} one; both must have static storage.
struct module_part {
  const char* name;
  PyMethodDef* methods;
  int (*exec)(PyObject* module);  ///< may be nullptr; returns 0, or -1 with an exception set
  const lazy_attribute* lazy = nullptr;
};

/// A submodule of `isola` written in Python (isola.queues, isola.interpreters): a builtin
/// module of the dotted name whose code is `source`, run in the new module's namespace when it
/// is first imported, so an interpreter that never uses it pays nothing. `import isola.queues`,
/// `from isola import queues` and the attribute `isola.queues` all give the one module.
/// `name` is the part after "isola."; both must have static storage.
struct python_submodule {
  const char* name;
  const char* source;
};
void register_submodule(const python_submodule& sub);
struct submodule_registrar {
  explicit submodule_registrar(const python_submodule& sub) { register_submodule(sub); }
};

/// With the GIL held: imports the submodule `isola.<name>` (see python_submodule) and returns
/// it (a new reference), or nullptr with the exception its code raised.
PyObject* import_submodule(const char* name);

/// Registers a part; call from a static initialiser (see module_part_registrar).
void register_module_part(const module_part& part);

struct module_part_registrar {
  explicit module_part_registrar(const module_part& part) { register_module_part(part); }
};

/// Adds `isola` to the inittab; the runtime calls it before Py_InitializeFromConfig.
void add_isola_to_inittab();

}  // namespace isola::detail
