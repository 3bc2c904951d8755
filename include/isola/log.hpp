// Logging: one spdlog logger per part of isola ("isola.runtime", "isola.interp", ...).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <spdlog/logger.h>

namespace isola {

/// The logger of one part, created on first use and registered with spdlog under its name.
/// - Loggers are asynchronous with a bounded queue that drops the oldest line when full, so a
///   thread that holds a GIL never blocks on a slow sink, and logging never throws.
/// - The initial level comes from ISOLA_LOG_LEVEL (trace, debug, info, warn, error, critical,
///   off), else warn.
std::shared_ptr<spdlog::logger> logger(std::string_view part);

/// Sets the level of every isola logger, existing and future. Throws std::invalid_argument
/// naming the accepted levels for an unknown name.
void set_log_level(std::string_view level);
void set_log_level(spdlog::level::level_enum level);

/// Sends every isola logger's lines to `path` (appended) instead of stderr, from now on.
/// Throws std::runtime_error naming the file when it cannot be opened.
void log_to_file(const std::string& path);

/// Writes out every isola logger's queued lines and waits until they are written (at most 2
/// s): call it before ending the process with _exit() or std::quick_exit().
void flush_logs();

}  // namespace isola
