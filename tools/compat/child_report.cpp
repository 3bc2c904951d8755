// See child_report.hpp.
#include "tools/compat/child_report.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <stdexcept>

#include <fcntl.h>
#include <sys/prctl.h>
#include <unistd.h>

namespace isola::cli::compat {

child_report::child_report(const std::string& path)
    : fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) {
  if (fd_ < 0) {
    throw std::runtime_error("compat: cannot open the report file '" + path +
                             "': " + std::strerror(errno));
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
}

child_report::~child_report() { ::close(fd_); }

void child_report::line(const boost::json::object& o) {
  std::string text = boost::json::serialize(o) + "\n";
  const char* p = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nothing better to do: the parent reports the step as unfinished
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

void child_report::begin(std::string_view step, boost::json::object fields) {
  fields["begin"] = step;
  line(fields);
}

void child_report::end(std::string_view step, boost::json::object fields) {
  fields["end"] = step;
  line(fields);
}

void child_report::error(std::string_view step, std::string_view what) {
  line({{"error", what}, {"step", step}});
}

}  // namespace isola::cli::compat
