// What isola changes inside each interpreter it creates so that guest code cannot take the
// host down with it: os._exit/os.abort and os.fork refused unless the config allows them, and
// isola.TaskTimeout, the exception a pool timeout raises.
#pragma once

#include "lib/python.hpp"

#include <isola/interpreter.hpp>

namespace isola::detail {

/// Name of the exception a task's timeout raises in it: a BaseException subclass, so that
/// `except Exception` and `except OSError` (importlib's, for one) let it through.
inline constexpr const char* task_timeout_exception = "isola.TaskTimeout";

/// With the interpreter attached: replaces os._exit, os.abort (unless config.allow_os_exit)
/// and os.fork, os.forkpty (unless config.allow_fork) in the os and posix modules with
/// functions that raise RuntimeError naming the option that allows them. Throws
/// py::error_already_set.
void guard_process(const interpreter_config& config);

}  // namespace isola::detail
