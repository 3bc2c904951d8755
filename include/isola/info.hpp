// What this build of isola embeds, for tools and diagnostics (`isola info`): the CPython it
// was compiled against and the one it runs with, and the workarounds for CPython bugs it
// applies. None of it needs a runtime.
#pragma once

#include <string>
#include <vector>

namespace isola {

struct python_build_info {
  std::string compiled_version;  ///< the CPython headers isola was built with, e.g. "3.13.0"
  std::string running_version;   ///< Py_GetVersion() of the libpython loaded ("3.13.0 (main...")
  bool free_threaded = false;    ///< built for a free-threaded (Py_GIL_DISABLED) CPython
};
python_build_info python_build();

/// A C accelerator module that isola blocks in interpreters with their own allocator, because
/// the running CPython crashes with it there, and the pure-Python module the stdlib then uses.
struct module_workaround_info {
  std::string module;    ///< "_datetime"
  std::string fallback;  ///< "_pydatetime"
  std::string reason;
};
/// The workarounds that apply to the running CPython (docs/interpreters.md lists them all).
std::vector<module_workaround_info> active_workarounds();

/// A bug of the running CPython that isola cannot work around (the runtime logs it at
/// start-up), or an empty string.
std::string unfixed_python_bug();

}  // namespace isola
