// The extension policy inside an interpreter isola creates (see docs/extensions.md).
#pragma once

#include "lib/python.hpp"

#include <isola/interpreter.hpp>

namespace isola::detail {

/// "strict", "shared-gil", "unsafe" or "auto".
const char* policy_name(extension_policy p) noexcept;

/// With the new interpreter attached, during its set-up: an own-GIL interpreter's extension
/// imports follow config.extensions and config.unsafe_extensions (nothing to do for a
/// shared-GIL one, which loads any module). Throws py::error_already_set.
void install_extension_policy(const interpreter_config& config);

}  // namespace isola::detail
