// Logging setup: asynchronous spdlog loggers that never block a GIL-holding thread and never
// throw; the level comes from ISOLA_LOG_LEVEL or set_log_level().
#include <isola/log.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include <unistd.h>

#include <spdlog/async.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace isola {
namespace {

std::optional<spdlog::level::level_enum> parse_level(std::string_view name) {
  if (name == "warning") return spdlog::level::warn;
  auto lvl = spdlog::level::from_str(std::string(name));
  // from_str returns off for unknown names; only accept "off" when asked for.
  if (lvl == spdlog::level::off && name != "off") return std::nullopt;
  return lvl;
}

/// A sink that only counts the flushes it has been asked for: the loggers share one
/// background thread that handles their queue in order, so once it has flushed this sink,
/// every line queued before has been written.
class barrier_sink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::uint64_t passed() {
    std::lock_guard lock(count_mu_);
    return count_;
  }
  /// Waits until more than `seen` flushes have passed; false if `limit` passed first.
  bool wait_past(std::uint64_t seen, std::chrono::milliseconds limit) {
    std::unique_lock lock(count_mu_);
    return cv_.wait_for(lock, limit, [&] { return count_ > seen; });
  }

 protected:
  void sink_it_(const spdlog::details::log_msg&) override {}
  void flush_() override {
    {
      std::lock_guard lock(count_mu_);
      ++count_;
    }
    cv_.notify_all();
  }

 private:
  std::mutex count_mu_;
  std::condition_variable cv_;
  std::uint64_t count_ = 0;
};

struct log_registry {
  std::mutex mu;
  std::shared_ptr<spdlog::details::thread_pool> pool;
  spdlog::sink_ptr sink;
  std::shared_ptr<spdlog::sinks::dist_sink_mt> dist;
  static constexpr const char* pattern = "[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] %v";
  std::unordered_map<std::string, std::shared_ptr<spdlog::logger>> loggers;
  spdlog::level::level_enum level = spdlog::level::warn;
  std::shared_ptr<barrier_sink> barrier;
  std::shared_ptr<spdlog::async_logger> barrier_logger;  ///< not registered with spdlog

  log_registry() {
    if (const char* env = std::getenv("ISOLA_LOG_LEVEL")) {
      if (auto lvl = parse_level(env)) {
        level = *lvl;
      } else {
        std::fprintf(stderr,
                     "isola: ignoring ISOLA_LOG_LEVEL=%s; use trace, debug, info, warn, error, "
                     "critical or off\n",
                     env);
      }
    }
    // 8192 queued lines, one background thread. Full queue: the oldest line is dropped rather
    // than blocking the logging thread (which may hold a GIL).
    pool = std::make_shared<spdlog::details::thread_pool>(8192, 1);
    // Every logger writes through one distributing sink, so log_to_file() can move all of
    // them at once, while they log.
    dist = std::make_shared<spdlog::sinks::dist_sink_mt>();
    auto err = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    err->set_pattern(pattern);
    dist->add_sink(err);
    sink = dist;
    barrier = std::make_shared<barrier_sink>();
    barrier_logger = std::make_shared<spdlog::async_logger>(
        "isola.log-barrier", barrier, pool, spdlog::async_overflow_policy::block);
  }
  ~log_registry() {
    if (::getpid() != owner_pid) {
      // A forked child (CPython ends one forked from a subinterpreter with exit(), which runs
      // this): the background thread does not exist here, and destroying the pool would wait
      // for it for ever. Leave it to the exiting process.
      new std::shared_ptr<spdlog::details::thread_pool>(pool);
      return;
    }
    for (auto& [name, l] : loggers) {
      l->flush();
      spdlog::drop(name);
    }
    // The background thread writes the queued lines, flushes the sinks and lets go of the
    // loggers its messages hold: join it (the pool's destructor; the loggers hold the pool
    // weakly) before the loggers and sinks are destroyed here.
    pool.reset();
    loggers.clear();
    barrier_logger.reset();
  }
  const pid_t owner_pid = ::getpid();
};

log_registry& registry() {
  static log_registry r;
  return r;
}

}  // namespace

std::shared_ptr<spdlog::logger> logger(std::string_view part) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  std::string name = part.starts_with("isola") ? std::string(part) : "isola." + std::string(part);
  if (auto it = r.loggers.find(name); it != r.loggers.end()) return it->second;
  auto l = std::make_shared<spdlog::async_logger>(name, r.sink, r.pool,
                                                  spdlog::async_overflow_policy::overrun_oldest);
  l->set_level(r.level);
  l->set_pattern(log_registry::pattern);
  l->flush_on(spdlog::level::err);
  // Another library may already have registered the name; ours stays usable either way.
  try {
    spdlog::register_logger(l);
  } catch (const spdlog::spdlog_ex&) {
  }
  r.loggers.emplace(name, l);
  return l;
}

void set_log_level(spdlog::level::level_enum level) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  r.level = level;
  for (auto& [name, l] : r.loggers) l->set_level(level);
}

void set_log_level(std::string_view level) {
  auto lvl = parse_level(level);
  if (!lvl) {
    throw std::invalid_argument("unknown log level '" + std::string(level) +
                                "'; use trace, debug, info, warn, error, critical or off");
  }
  set_log_level(*lvl);
}

void flush_logs() {
  auto& r = registry();
  std::vector<std::shared_ptr<spdlog::logger>> all;
  {
    std::lock_guard lock(r.mu);
    for (auto& [name, l] : r.loggers) all.push_back(l);
  }
  // An async logger's flush() only queues the request; the barrier's flush, queued after
  // them, passes once the background thread has written everything before it. Bounded, so
  // a wedged sink (a full pipe nobody reads) cannot hang the caller.
  const auto seen = r.barrier->passed();
  for (auto& l : all) l->flush();
  r.barrier_logger->flush();
  r.barrier->wait_past(seen, std::chrono::seconds(2));
}

void log_to_file(const std::string& path) {
  auto& r = registry();
  spdlog::sink_ptr file;
  try {
    file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path);
  } catch (const spdlog::spdlog_ex& e) {
    throw std::runtime_error("cannot open the log file '" + path + "': " + e.what() +
                             "; check that its folder exists and is writable");
  }
  file->set_pattern(log_registry::pattern);
  r.dist->set_sinks({file});
}

}  // namespace isola
