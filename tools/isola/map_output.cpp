// See map_output.hpp.
#include "tools/isola/map_output.hpp"

#include <cstdio>

#include <fmt/core.h>
#include <unistd.h>

namespace isola::cli {

using clock = std::chrono::steady_clock;

progress_line::progress_line(bool enabled, bool from_start, std::size_t total)
    : enabled_(enabled),
      long_(from_start || total > progress_threshold),
      total_(total),
      tty_(isatty(STDERR_FILENO)),
      start_(clock::now()),
      last_(start_) {}

void progress_line::update(std::size_t done) {
  if (!enabled_) return;
  const auto now = clock::now();
  if (!long_ && now - start_ < progress_after) return;
  if (now - last_ < (tty_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(5000))) {
    return;
  }
  last_ = now;
  std::string text = fmt::format("mapped {}/{} ({}%)", done, total_,
                                 total_ == 0 ? 100 : done * 100 / total_);
  if (tty_) {
    fmt::print(stderr, "\r{}\033[K", text);
    on_screen_ = true;
  } else {
    fmt::print(stderr, "{}\n", text);
  }
  printed_ = true;
  std::fflush(stderr);
}

void progress_line::clear() {
  if (on_screen_) {
    fmt::print(stderr, "\r\033[K");
    on_screen_ = false;
  }
}

output::output(progress_line& progress) : progress_(progress), tty_(isatty(STDOUT_FILENO)) {}

void output::line(std::string_view s) {
  buf_.append(s);
  buf_ += '\n';
  if (buf_.size() >= (1u << 16)) flush();
}

void output::chunk_done() {
  if (tty_) flush();
}

void output::flush() {
  if (!buf_.empty()) {
    progress_.clear();
    std::fwrite(buf_.data(), 1, buf_.size(), stdout);
    buf_.clear();
  }
  std::fflush(stdout);
}

}  // namespace isola::cli
