// isola::errc's error category and python_error.
#include <isola/error.hpp>

namespace isola {
namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "isola"; }
  std::string message(int code) const override {
    switch (static_cast<errc>(code)) {
      case errc::interpreter_closing: return "interpreter is closing";
      case errc::interpreter_closed: return "interpreter is closed";
      case errc::runtime_finalizing: return "isola runtime is finalizing";
      case errc::no_runtime: return "no isola runtime is running";
      case errc::out_of_memory: return "out of memory";
      case errc::timeout: return "timed out";
      case errc::cancelled: return "cancelled";
      case errc::creation_failed: return "interpreter creation failed";
      case errc::queue_full: return "queue is full";
      case errc::shut_down: return "shut down";
      case errc::channel_closed: return "channel is closed";
      case errc::channel_empty: return "channel is empty";
      case errc::channel_full: return "channel is full";
    }
    return "unknown isola error " + std::to_string(code);
  }
};

}  // namespace

const std::error_category& error_category() noexcept {
  static const category c;
  return c;
}

std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

namespace {
std::string what_of(const std::string& type, const std::string& message,
                    const std::string& file, long line, long column) {
  std::string w = message.empty() ? type : type + ": " + message;
  if (!file.empty() || line > 0) {
    w += " (" + (file.empty() ? std::string("<unknown>") : file) + ", line " +
         std::to_string(line);
    if (column > 0) w += ", column " + std::to_string(column);
    w += ")";
  }
  return w;
}
}  // namespace

python_error::python_error(std::string type_name, std::string message, std::string traceback,
                           std::string filename, long line, long column)
    : std::runtime_error(what_of(type_name, message, filename, line, column)),
      type_name_(std::move(type_name)),
      message_(std::move(message)),
      traceback_(std::move(traceback)),
      filename_(std::move(filename)),
      line_(line),
      column_(column) {}

}  // namespace isola
