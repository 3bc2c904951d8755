// isola serve's server: HTTP/1.1 on Boost.Beast, one coroutine per connection on Asio I/O
// threads, and the WSGI application in a pool of own-GIL interpreters (PEP 3333).
#pragma once

#include "config/serve.hpp"

namespace isola::serve {

/// Loads the application into `cfg.workers` interpreters, listens on every bind address and
/// serves until a signal: SIGTERM or SIGINT drain (no new connections; requests in flight
/// finish within graceful_timeout), SIGHUP loads the application into fresh interpreters and
/// retires the old ones once their requests are done, SIGQUIT stops at once. Returns the
/// process exit status (0 after a drain). Throws std::runtime_error (or config::config_error)
/// when the application cannot be loaded or an address cannot be bound, before serving.
int run(const config::serve_config& cfg);

}  // namespace isola::serve
