// What the Python faces of isola.interpreters (pyinterpreters.cpp) and isola.PoolExecutor
// (pyexecutor.cpp) share: their Python modules made from embedded source on first use, the
// excinfo of an exception that came back from another interpreter, and waiting for another
// interpreter's work from Python.
#pragma once

#include "lib/py.hpp"
#include "lib/state.hpp"

#include <isola/error.hpp>
#include <isola/value.hpp>

#include <future>
#include <memory>
#include <string>
#include <vector>

namespace isola::detail {

/// With the GIL held: imports the submodule isola.<attr> (lib/module.hpp's python_submodule)
/// and sets it as attribute `attr` of `isola_module` if it is not there yet. Returns 0, or -1
/// with the exception the submodule's code raised.
int add_submodule_attribute(PyObject* isola_module, const char* attr) noexcept;

/// The excinfo tuple isola._xi.excinfo() makes (type __name__, __qualname__, __module__, msg,
/// formatted, display), from a python_error: the exception raised outside the helpers that
/// describe exceptions themselves (the helper could not be found or ran out of memory).
value excinfo_of(const python_error& e);

/// How wait_for_work ended.
enum class wait_outcome { ready, interrupted };

/// With the GIL held: releases it and waits for `fut`. Gives up (interrupted) when the calling
/// thread is interrupted by isola: a pool timeout or cancel() raised an exception in it (its
/// worker's interrupt slot), or its interpreter is ending and raised SystemExit in it. The
/// exception is then raised when control returns to Python; the work goes on where it runs.
/// `caller` is the calling thread's interpreter (nullptr if isola does not know it).
wait_outcome wait_for_work(const std::future<value>& fut,
                           const std::shared_ptr<interp_state>& caller);

/// The interpreter of the calling thread (GIL held), or nullptr if isola does not know it.
std::shared_ptr<interp_state> current_interp_state();

/// The str entries of sys.path (GIL held), for the interpreters made from here: a module the
/// caller can import can be imported there too.
std::vector<std::string> sys_path_entries();

/// The calling thread's interpreter id (GIL held).
std::int64_t current_interp_id() noexcept;

}  // namespace isola::detail
