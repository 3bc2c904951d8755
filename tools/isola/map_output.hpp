// How isola map shows what it does: the progress line on stderr and the results on stdout.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

namespace isola::cli {

constexpr std::size_t progress_threshold = 1000;  ///< more inputs than this show progress
constexpr auto progress_after = std::chrono::seconds(2);  ///< so does a run this long

/// Progress on stderr, "mapped 12000/50000 (24%)", once the input is long (more than
/// progress_threshold inputs) or the run has taken progress_after: on a terminal one line
/// redrawn in place (at most 5 times a second), else a new line at most every 5 seconds.
class progress_line {
 public:
  /// enabled: may print at all (not --quiet or --no-progress); from_start: --progress.
  progress_line(bool enabled, bool from_start, std::size_t total);

  /// Redraws or prints the line if it is due.
  void update(std::size_t done);
  /// Before other stderr output: clears the line being redrawn.
  void clear();
  /// Whether update() may print (the caller then polls for it while it waits).
  bool enabled() const { return enabled_; }
  /// Whether a progress line was printed: the run then ends with a summary line.
  bool printed() const { return printed_; }

 private:
  bool enabled_;
  bool long_;
  std::size_t total_;
  bool tty_;
  bool on_screen_ = false;
  bool printed_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_;
};

/// Writes results to stdout in blocks, clearing the progress line first (stdout and stderr
/// may be the same terminal). The mapper flushes it whenever it is about to wait, and after
/// every chunk when stdout is a terminal, so results appear as they complete.
class output {
 public:
  explicit output(progress_line& progress);
  void line(std::string_view s);
  /// After a chunk's results: on a terminal they show at once.
  void chunk_done();
  void flush();

 private:
  progress_line& progress_;
  bool tty_;
  std::string buf_;
};

}  // namespace isola::cli
