// Set-up applied inside each interpreter isola creates: sys.path entries, and the workarounds
// for CPython's own-GIL teardown crashes (docs/interpreters.md lists them with versions).
#pragma once

#include <string>
#include <vector>

namespace isola::detail {

/// Puts entries at the front of sys.path (in order), skipping ones already there.
void prepend_sys_path(const std::vector<std::string>& entries);

/// A C accelerator module that crashes CPython at own-GIL interpreter teardown on some
/// versions, and the pure-Python fallback the stdlib uses when it is missing.
struct module_workaround {
  const char* module;    ///< e.g. "_datetime"
  const char* fallback;  ///< e.g. "_pydatetime" (what `import datetime` then uses)
  const char* reason;
};

/// The workarounds that apply to the running CPython version.
std::vector<module_workaround> module_workarounds();

/// In an interpreter with its own object allocator, blocks each affected accelerator
/// (sys.modules[name] = None) so the stdlib falls back to its pure-Python version. Needs the
/// interpreter attached.
void apply_module_workarounds();

/// Just before an interpreter ends (GIL held): CPython 3.13.0-3.13.2's threading module
/// removes a dummy thread (what threading.current_thread() makes for a thread it did not start,
/// such as isola's worker) in a __del__ that reads the module's globals, which are None by the
/// time the thread's state is cleared: "Exception ignored in _DeleteDummyThreadOnDel.__del__:
/// TypeError" on stderr when the interpreter ends (gh-130522, fixed in 3.13.3). The __del__ is
/// replaced by one that holds what it needs. Does nothing on other versions or when threading
/// was not imported. Never raises (a failure is logged).
void apply_exit_workarounds() noexcept;

/// A CPython bug of the running version that isola cannot work around (the runtime logs it
/// as a warning at start-up), or nullptr.
const char* known_unfixed_bug();

}  // namespace isola::detail
