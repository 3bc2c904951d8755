// See <isola/info.hpp>.
#include "lib/python.hpp"

#include "lib/workarounds.hpp"

#include <isola/info.hpp>

namespace isola {

python_build_info python_build() {
  python_build_info i;
  i.compiled_version = PY_VERSION;
  i.running_version = Py_GetVersion();  // libpython's own string; no initialisation needed
#ifdef Py_GIL_DISABLED
  i.free_threaded = true;
#endif
  return i;
}

std::vector<module_workaround_info> active_workarounds() {
  std::vector<module_workaround_info> out;
  for (const auto& w : detail::module_workarounds()) out.push_back({w.module, w.fallback, w.reason});
  return out;
}

std::string unfixed_python_bug() {
  const char* bug = detail::known_unfixed_bug();
  return bug != nullptr ? bug : "";
}

}  // namespace isola
