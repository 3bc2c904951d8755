// The builtin module `isola`, importable in every interpreter. It is assembled from parts that
// register themselves (this file's core part, channels, shared values, ...).
#pragma once

#include "python.hpp"

namespace isola::detail {

/// One part of the `isola` module: functions to add and an optional exec step (types,
/// constants). `methods` ends with a {nullptr} sentinel and must have static storage.
struct module_part {
  const char* name;
  PyMethodDef* methods;
  int (*exec)(PyObject* module);  ///< may be nullptr; returns 0, or -1 with an exception set
};

/// Registers a part; call from a static initialiser (see module_part_registrar).
void register_module_part(const module_part& part);

struct module_part_registrar {
  explicit module_part_registrar(const module_part& part) { register_module_part(part); }
};

/// Adds `isola` to the inittab; the runtime calls it before Py_InitializeFromConfig.
void add_isola_to_inittab();

}  // namespace isola::detail
