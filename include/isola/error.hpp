// Errors at isola's public boundary: python_error carries a Python exception out of an
// interpreter as plain strings; isola::errc codes report failures a caller must handle.
//
// The rule across isola's API: a call that waits (or may wait) throws isola::error (or
// python_error) when it fails; a try_* call, which never waits, returns a
// boost::system::result whose error is an isola::errc code. Where a failed wait is a normal
// end (a channel closed and drained, a timeout the caller chose), the waiting call also has a
// form that takes a boost::system::error_code& last and sets it instead of throwing (Asio's
// convention). Asynchronous completions get the error as their first argument (an
// std::exception_ptr for pool tasks, a boost::system::error_code for channels).
#pragma once

#include <stdexcept>
#include <string>
#include <system_error>

namespace isola {

/// Failure codes for operations that can fail without a Python exception. They travel as
/// std::error_code (category "isola"), so they work with Asio completion handlers too.
enum class errc {
  interpreter_closing = 1,  ///< the interpreter is shutting down and accepts no new work
  interpreter_closed,       ///< the interpreter has ended
  runtime_finalizing,       ///< the isola runtime is shutting CPython down
  no_runtime,               ///< no isola::runtime is alive in this process
  out_of_memory,            ///< CPython could not allocate a thread state or object
  timeout,                  ///< a deadline passed before the operation completed
  cancelled,                ///< the operation was cancelled before it completed
  creation_failed,          ///< Py_NewInterpreterFromConfig (or set-up after it) failed
  queue_full,               ///< a bounded queue had no room (try_submit)
  shut_down,                ///< the pool was shut down and takes no more work
  channel_closed,           ///< the channel is closed (and, for a receive, drained)
  channel_empty,            ///< a non-blocking receive found no item (try_recv)
  channel_full,             ///< a non-blocking send found no room (try_send)
};

/// The std::error_category of isola::errc (name "isola").
const std::error_category& error_category() noexcept;
std::error_code make_error_code(errc e) noexcept;

/// An isola failure that is not a Python exception: an errc code plus a message that says
/// what was wrong and how to fix it.
class error : public std::system_error {
 public:
  error(errc code, const std::string& what) : std::system_error(make_error_code(code), what) {}
};

/// A Python exception raised inside an interpreter, copied out as plain strings so it can be
/// carried across threads and outlive the interpreter that raised it.
/// - type_name(): qualified name ("ValueError", "json.decoder.JSONDecodeError").
/// - message(): str(exception); for SystemExit, its exit code.
/// - traceback(): the full text that traceback.format_exception() gives.
/// - For SyntaxError (and subclasses) filename(), line() and column() say where; else empty/0.
class python_error : public std::runtime_error {
 public:
  python_error(std::string type_name, std::string message, std::string traceback,
               std::string filename = {}, long line = 0, long column = 0);

  const std::string& type_name() const noexcept { return type_name_; }
  const std::string& message() const noexcept { return message_; }
  const std::string& traceback() const noexcept { return traceback_; }
  const std::string& filename() const noexcept { return filename_; }
  long line() const noexcept { return line_; }
  long column() const noexcept { return column_; }
  /// True when the exception's type is the one named ("SystemExit", "isola.TaskTimeout"):
  /// an exact match of type_name(), not of a base class (the class is gone once the
  /// exception has crossed out of its interpreter).
  bool is(std::string_view type_name) const noexcept { return type_name_ == type_name; }

 private:
  std::string type_name_;
  std::string message_;
  std::string traceback_;
  std::string filename_;
  long line_;
  long column_;
};

}  // namespace isola

template <>
struct std::is_error_code_enum<isola::errc> : std::true_type {};
