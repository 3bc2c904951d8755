// isola::pool: exactly-once completion under many submitters, map, exceptions, timeouts, a task
// stuck in C code, cancel, back-pressure, init code, shutdown, recycling, the Asio forms, stats,
// and interpreters running at the same time. Tasks signal and wait through OS pipes (file
// descriptors are process-wide, so Python in any interpreter can use them); waits have generous
// safety limits so a broken pool fails a check instead of hanging the run, and no check depends
// on how fast anything is.
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

using namespace isola_test;
using namespace std::chrono_literals;
using isola::value;

namespace {

#if defined(__SANITIZE_THREAD__)
constexpr bool under_tsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool under_tsan = true;
#else
constexpr bool under_tsan = false;
#endif
#else
constexpr bool under_tsan = false;
#endif

/// A pipe the tests use as a signal (a task writes, the test reads) or a gate (a task blocks
/// in os.read until the test writes a byte or closes the write end, which opens it for good).
struct os_pipe {
  int r = -1, w = -1;
  os_pipe() {
    int fds[2];
    if (::pipe(fds) != 0) throw std::runtime_error("pipe() failed");
    r = fds[0];
    w = fds[1];
  }
  ~os_pipe() {
    close_write();
    if (r >= 0) ::close(r);
  }
  os_pipe(const os_pipe&) = delete;
  os_pipe& operator=(const os_pipe&) = delete;

  void put() const {
    if (::write(w, "g", 1) != 1) throw std::runtime_error("write to pipe failed");
  }
  /// Opens a gate for every present and future reader (they read end-of-file).
  void close_write() {
    if (w >= 0) ::close(w);
    w = -1;
  }
  /// Waits for one byte. The limit is only a safety net against a hang: false means the pool
  /// never did what the test waits for.
  bool get(std::chrono::milliseconds limit = 60s) const {
    auto until = std::chrono::steady_clock::now() + limit;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      pollfd p{r, POLLIN, 0};
      int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
      if (n < 0 && errno == EINTR) continue;
      if (n != 1) return false;
      char c;
      ssize_t got = ::read(r, &c, 1);
      if (got < 0 && errno == EINTR) continue;
      return got == 1;
    }
  }
  /// A byte is there right now.
  bool ready_now() const {
    pollfd p{r, POLLIN, 0};
    int n;
    do {
      n = ::poll(&p, 1, 0);
    } while (n < 0 && errno == EINTR);
    return n == 1;
  }
};

/// Opens a gate at scope end, so that a failed check cannot leave a task blocked on it (the
/// pool's destructor waits for running tasks). Declare it after the pool it guards.
struct open_at_exit {
  os_pipe& gate;
  ~open_at_exit() { gate.close_write(); }
};

std::vector<std::int64_t> ints(const value& v) {
  std::vector<std::int64_t> out;
  for (const auto& item : v.as_list().items) out.push_back(item.as_int());
  return out;
}

std::vector<value> values(int from, int to) {
  std::vector<value> out;
  for (int i = from; i < to; ++i) out.emplace_back(i);
  return out;
}

std::optional<std::error_code> code_of(isola::task_future& f) {
  return isola_error_of([&] { f.get(); });
}

std::optional<isola::python_error> python_error_from(isola::task_future& f) {
  return python_error_of([&] { f.get(); });
}

std::int64_t whoami(isola::pool& p, int index) {
  return p.submit_to(index, "isola_test_pool:whoami").get().as_int();
}

// Imports what the stuck-task code uses, so that a slow first import (ThreadSanitizer makes
// CPython's allocations slow) cannot use up a short timeout before the task says it started.
void warm_up(isola::pool& p, int index) {
  isola::task_options o;
  o.interpreter_index = index;
  p.submit_code("import os, re, functools, time", o).get();
}

isola::task_options with_timeout(std::chrono::milliseconds t, int index = -1) {
  isola::task_options o;
  o.timeout = t;
  o.interpreter_index = index;
  return o;
}

// stats().completed is bumped just after the task's future becomes ready (interp/pool.cpp:
// `if (t->complete(...)) ++completed_;`), so a thread that has seen every future ready can still
// read it one short for a moment. Wait (bounded) for the count the test expects.
isola::pool_stats stats_when_completed(isola::pool& p, std::uint64_t completed) {
  auto until = std::chrono::steady_clock::now() + 30s;
  auto s = p.stats();
  while (s.completed < completed && std::chrono::steady_clock::now() < until) {
    std::this_thread::yield();
    s = p.stats();
  }
  return s;
}

struct totals {
  std::uint64_t done = 0, failed = 0, timed_out = 0, cancelled = 0, recycled = 0, broken = 0;
  std::chrono::nanoseconds busy{0};
};
totals sum(const isola::pool_stats& s) {
  totals t;
  for (const auto& i : s.interpreters) {
    t.done += i.tasks_done;
    t.failed += i.tasks_failed;
    t.timed_out += i.tasks_timed_out;
    t.cancelled += i.tasks_cancelled;
    t.recycled += i.recycled;
    t.broken += i.replaced_broken;
    t.busy += i.busy;
  }
  return t;
}

// Waits (bounded) until CPython no longer lists interpreter `id`: an abandoned stuck
// interpreter has returned from its C call and its thread has ended it. Asks through `in`.
bool wait_until_ended(isola::interpreter& in, std::int64_t id) {
  auto until = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < until) {
    auto ids = ints(in.call("isola_test_pool:live_interpreter_ids"));
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

std::vector<value> args_of(value v) {
  std::vector<value> out;
  out.push_back(std::move(v));
  return out;
}

long gettid_now() { return static_cast<long>(::syscall(SYS_gettid)); }

// How many stamps of `of` lie strictly between the first and last stamp of `within`.
std::size_t stamps_inside(const std::vector<std::int64_t>& of,
                          const std::vector<std::int64_t>& within) {
  auto range = std::minmax_element(within.begin(), within.end());
  auto lo = *range.first, hi = *range.second;
  return static_cast<std::size_t>(
      std::count_if(of.begin(), of.end(), [&](auto s) { return lo < s && s < hi; }));
}

// A task stuck in C code that ignores TaskTimeout and never holds the GIL: iter(callable,
// sentinel) calls os.read from C until end-of-file, so the eval loop (where an async
// exception is raised) never runs until the test closes the gate.
std::string stuck_in_c_code(const os_pipe& started, const os_pipe& gate, const os_pipe& done) {
  return "import os, functools\n"
         "os.write(" + std::to_string(started.w) + ", b's')\n"
         "try:\n"
         "    sum(map(len, iter(functools.partial(os.read, " + std::to_string(gate.r) +
         ", 1), b'')))\n"
         "finally:\n"
         "    os.write(" + std::to_string(done.w) + ", b'd')\n";
}

}  // namespace

// ---- 1. exactly once ---------------------------------------------------------------------------

TEST_CASE("100 000 tasks from 4 threads each complete exactly once", "[pool][concurrent]") {
  // Under ThreadSanitizer every queue and future operation is instrumented; fewer tasks keep
  // the run short while still exercising the same paths.
  const int total = under_tsan ? 20000 : 100000;
  constexpr int submitters = 4;
  const int per_thread = total / submitters;

  isola::pool p;  // size 0: one interpreter per core
  REQUIRE(p.size() == std::max(1u, std::thread::hardware_concurrency()));

  std::vector<std::atomic<int>> seen(static_cast<std::size_t>(total));
  std::atomic<std::int64_t> checksum{0};
  thread_failures failures;
  std::vector<std::thread> threads;
  for (int t = 0; t < submitters; ++t) {
    threads.emplace_back([&, t] {
      try {
        std::vector<std::pair<int, isola::task_future>> futures;
        futures.reserve(static_cast<std::size_t>(per_thread));
        for (int i = 0; i < per_thread; ++i) {
          int id = t * per_thread + i;
          futures.emplace_back(id, p.submit("isola_test_pool:plus_one", id));
        }
        for (auto& [id, f] : futures) {
          auto r = f.get().as_int();
          if (r < 1 || r > total) {
            failures.fail("task " + std::to_string(id) + " returned " + std::to_string(r));
            continue;
          }
          failures.check(r == id + 1,
                         "task " + std::to_string(id) + " returned " + std::to_string(r));
          ++seen[static_cast<std::size_t>(r - 1)];
          checksum += r;
        }
      } catch (const std::exception& e) {
        failures.fail(std::string("submitter threw: ") + e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  INFO(failures.first);
  REQUIRE(failures.count == 0);

  int not_once = 0;
  for (auto& s : seen) not_once += s.load() != 1 ? 1 : 0;
  CHECK(not_once == 0);
  std::int64_t n = total;
  CHECK(checksum.load() == n * (n + 1) / 2);

  auto s = stats_when_completed(p, static_cast<std::uint64_t>(total));
  CHECK(s.submitted == static_cast<std::uint64_t>(total));
  CHECK(s.completed == static_cast<std::uint64_t>(total));
  CHECK(s.queue_depth == 0);
  auto t = sum(s);
  CHECK(t.done == static_cast<std::uint64_t>(total));
  CHECK(t.failed == 0);

  // Ran exactly once, too: every interpreter counts the calls it made (its own module copy).
  std::int64_t calls = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    calls += p.submit_to(static_cast<int>(i), "isola_test_pool:call_count").get().as_int();
  }
  CHECK(calls == total);
}

// ---- 2. map ------------------------------------------------------------------------------------

TEST_CASE("map returns results in input order", "[pool]") {
  isola::pool_options o;
  o.size = 2;
  isola::pool p(o);

  auto inputs = values(0, 10);
  for (std::size_t chunk : {1u, 3u, 4u, 10u, 25u}) {
    INFO("chunk_size " << chunk);
    auto out = p.map("isola_test_pool:plus_one", inputs, chunk);
    REQUIRE(out.size() == inputs.size());
    for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i].as_int() == static_cast<int>(i) + 1);
  }
  // Many chunks spread over both interpreters still come back in order.
  auto many = p.map("isola_test_pool:plus_one", values(0, 1000), 7);
  REQUIRE(many.size() == 1000);
  bool in_order = true;
  for (std::size_t i = 0; i < many.size(); ++i) {
    in_order &= many[i].as_int() == static_cast<int>(i) + 1;
  }
  CHECK(in_order);

  CHECK(p.map("isola_test_pool:plus_one", {}).empty());
  CHECK(p.map("isola_test_pool:plus_one", {}, 5).empty());
  CHECK_THROWS_AS(p.map("isola_test_pool:plus_one", inputs, 0), std::invalid_argument);

  for (std::size_t chunk : {1u, 4u}) {
    INFO("chunk_size " << chunk);
    auto e = python_error_of(
        [&] { p.map("isola_test_pool:times_ten_unless_13", values(0, 20), chunk); });
    REQUIRE(e);
    CHECK(e->type_name() == "ValueError");
    CHECK(e->message() == "13 is not welcome here");
    CHECK_THAT(e->traceback(), Catch::Contains("times_ten_unless_13"));
  }
  auto e = python_error_of([&] { p.map("isola_test_pool:no_such_function", values(0, 3)); });
  REQUIRE(e);
  CHECK(e->type_name() == "AttributeError");

  // The pool is fine afterwards.
  CHECK(p.map("isola_test_pool:times_ten_unless_13", values(0, 5), 2) ==
        std::vector<value>{value(0), value(10), value(20), value(30), value(40)});
}

// ---- 3. exceptions -----------------------------------------------------------------------------

TEST_CASE("a Python exception fails only its task, with its traceback", "[pool]") {
  isola::pool_options o;
  o.size = 2;
  isola::pool p(o);

  for (int index = 0; index < 2; ++index) {
    INFO("interpreter " << index);
    auto id = whoami(p, index);
    auto f = p.submit_to(index, "isola_test_pool:raise_value_error", "bad input 7");
    auto e = python_error_from(f);
    REQUIRE(e);
    CHECK(e->type_name() == "ValueError");
    CHECK(e->message() == "bad input 7");
    CHECK_THAT(e->traceback(), Catch::Contains("raise_value_error"));
    CHECK_THAT(e->traceback(), Catch::Contains("isola_test_pool.py"));
    CHECK_THAT(e->traceback(), Catch::Contains("ValueError: bad input 7"));
    // The same interpreter serves the next task.
    CHECK(whoami(p, index) == id);
    CHECK(p.submit_to(index, "isola_test_pool:plus_one", 41).get().as_int() == 42);
  }

  auto f = p.submit_code("1 / 0");
  auto e = python_error_from(f);
  REQUIRE(e);
  CHECK(e->type_name() == "ZeroDivisionError");
  f = p.submit_code("def broken(:\n    pass\n");
  e = python_error_from(f);
  REQUIRE(e);
  CHECK(e->type_name() == "SyntaxError");
  f = p.submit("no_such_module_for_isola_tests:f");
  e = python_error_from(f);
  REQUIRE(e);
  CHECK(e->type_name() == "ModuleNotFoundError");
  f = p.submit("not a target");
  e = python_error_from(f);
  REQUIRE(e);
  CHECK(e->type_name() == "ValueError");
  f = p.submit_code("object()");  // a result that cannot leave the interpreter
  e = python_error_from(f);
  REQUIRE(e);
  CHECK(e->type_name() == "TypeError");

  CHECK(p.submit_code("6 * 7").get().as_int() == 42);
  CHECK(p.submit_code("x = 1").get().is_none());
  CHECK(p.submit_with("isola_test_helpers:describe", {value(1)}, {{"k", value("v")}})
            .get()
            .find("kwargs")
            ->as_dict()
            .items.size() == 1);

  CHECK_THROWS_AS(p.submit_to(2, "isola_test_pool:whoami"), std::out_of_range);
  CHECK_THROWS_AS(p.submit_to(-2, "isola_test_pool:whoami"), std::out_of_range);

  auto t = sum(stats_when_completed(p, 16));
  CHECK(t.failed == 7);
  CHECK(t.done == 9);
}

// ---- 4. timeouts -------------------------------------------------------------------------------

TEST_CASE("a timeout raises isola.TaskTimeout in the task, TimeoutError for the caller; the "
          "interpreter stays",
          "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  auto id = whoami(p, 0);

  auto check_timeout = [&](isola::task_future f, std::uint64_t count) {
    auto e = python_error_from(f);
    REQUIRE(e);
    CHECK(e->type_name() == "TimeoutError");
    CHECK_THAT(e->message(), Catch::Contains("timeout"));
    CHECK(whoami(p, 0) == id);  // same interpreter, still in service
    auto s = p.stats().interpreters.at(0);
    CHECK(s.tasks_timed_out == count);
    CHECK(s.replaced_broken == 0);
  };

  SECTION("a busy loop and a long sleep") {
    check_timeout(p.submit_code("while True:\n    pass\n", with_timeout(200ms)), 1);
    check_timeout(p.submit_code("import time\ntime.sleep(100)\n", with_timeout(200ms)), 2);
    check_timeout(p.submit_with("isola_test_pool:sleep_then", {value(100), value("late")}, {},
                                with_timeout(200ms)),
                  3);
    // A task that ends in time is untouched by its timeout.
    CHECK(p.submit_code("sum(range(10))", with_timeout(60s)).get().as_int() == 45);
    CHECK(p.submit_with("isola_test_pool:plus_one", {value(1)}, {}, with_timeout(60s))
              .get()
              .as_int() == 2);
    CHECK(p.stats().interpreters.at(0).tasks_timed_out == 3);
  }
  SECTION("Python code may catch the isola.TaskTimeout and finish") {
    auto f = p.submit_code(
        "import isola\n"
        "caught = False\n"
        "try:\n"
        "    while True:\n"
        "        pass\n"
        "except isola.TaskTimeout:\n"
        "    caught = True\n",
        with_timeout(200ms));
    CHECK_NOTHROW(f.get());
    CHECK(p.submit_code("caught").get().as_bool());
  }
  SECTION("handlers for Exception, OSError and TimeoutError do not swallow it") {
    // importlib catches OSError while it looks for modules: a TimeoutError there was taken
    // for a missing file, and the timeout was lost.
    auto f = p.submit_code(
        "import isola, time\n"
        "swallowed = []\n"
        "for kind in (Exception, OSError, TimeoutError):\n"
        "    try:\n"
        "        while True:\n"
        "            time.sleep(0.001)\n"
        "    except kind:\n"
        "        swallowed.append(kind.__name__)\n",
        with_timeout(200ms));
    auto e = python_error_from(f);
    REQUIRE(e);
    CHECK(e->type_name() == "TimeoutError");
    CHECK_THAT(e->traceback(), Catch::Contains("isola.TaskTimeout"));
    CHECK(p.submit_code("swallowed").get().as_list().items.empty());
    CHECK(p.submit_code("issubclass(isola.TaskTimeout, BaseException) and not "
                        "issubclass(isola.TaskTimeout, Exception)")
              .get()
              .as_bool());
  }
  SECTION("a timeout during an import interrupts the import") {
    // A finder that looks for the module the way importlib's path finder does: in a loop
    // whose OSErrors mean "not here". The timeout lands inside its try block.
    auto f = p.submit_code(
        "import sys\n"
        "class SlowFinder:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name != 'isola_test_slow_module':\n"
        "            return None\n"
        "        while True:\n"
        "            try:\n"
        "                for i in range(100000):\n"
        "                    i += 1\n"
        "                raise FileNotFoundError(name)\n"
        "            except OSError:\n"
        "                pass\n"
        "sys.meta_path.insert(0, SlowFinder())\n"
        "try:\n"
        "    import isola_test_slow_module\n"
        "finally:\n"
        "    del sys.meta_path[0]\n",
        with_timeout(200ms));
    auto e = python_error_from(f);
    REQUIRE(e);
    CHECK(e->type_name() == "TimeoutError");
    CHECK_THAT(e->traceback(), Catch::Contains("find_spec"));
    CHECK_FALSE(
        p.submit_code("'isola_test_slow_module' in __import__('sys').modules").get().as_bool());
  }
}

TEST_CASE("pool_options::default_timeout applies to tasks without their own",
          "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 1;
  o.default_timeout = 200ms;
  isola::pool p(o);
  auto id = whoami(p, 0);

  auto f = p.submit_code("while True:\n    pass\n");
  auto e = python_error_from(f);
  REQUIRE(e);
  CHECK(e->type_name() == "TimeoutError");
  f = p.submit("isola_test_pool:sleep_then", 100, "late");
  e = python_error_from(f);
  REQUIRE(e);
  CHECK(e->type_name() == "TimeoutError");
  CHECK(p.stats().interpreters.at(0).tasks_timed_out == 2);

  // A task's own timeout overrides the default (this sleep outlasts the default's 200 ms).
  CHECK(p.submit_with("isola_test_pool:sleep_then", {value(0.6), value("on time")}, {},
                      with_timeout(60s))
            .get()
            .as_str() == "on time");
  CHECK(whoami(p, 0) == id);
  CHECK(p.stats().interpreters.at(0).tasks_timed_out == 2);
}

// ---- 5. stuck in C code ------------------------------------------------------------------------

TEST_CASE("a task stuck in C code holding its GIL: its interpreter is replaced",
          "[pool][concurrent]") {
  // re.match('(a+)+b', 'a' * 27) backtracks catastrophically inside _sre (C, GIL held, no
  // eval loop) for seconds: far beyond the 100 ms timeout plus the 1 s grace period. The
  // TaskTimeout stays pending, so the watchdog declares the interpreter broken. The regex keeps
  // running on the abandoned thread until it finishes; the pool is kept until then so the
  // abandoned thread ends its interpreter while the pool still exists. The grace period also
  // bounds the replacement's creation, which the regex slows by taking a core: 1 s keeps a
  // loaded two-core machine from abandoning a healthy creation too.
  isola::pool_options o;
  o.size = 1;
  o.grace_period = 1000ms;
  isola::pool p(o);
  isola::interpreter observer;  // lists live interpreters
  os_pipe started, done;
  auto old_id = whoami(p, 0);
  warm_up(p, 0);

  auto f = p.submit_code("import os, re\n"
                         "os.write(" + std::to_string(started.w) + ", b's')\n"
                         "try:\n"
                         "    re.match('(a+)+b', 'a' * 27)\n"
                         "finally:\n"
                         "    os.write(" + std::to_string(done.w) + ", b'd')\n",
                         with_timeout(100ms));
  REQUIRE(started.get());
  auto code = code_of(f);
  REQUIRE(code);
  CHECK(*code == isola::errc::timeout);
  // The regex really is still running (it takes seconds; the future failed after ~1.1 s).
  CHECK_FALSE(done.ready_now());

  // The slot serves tasks with a fresh interpreter.
  auto new_id = whoami(p, 0);
  CHECK(new_id != old_id);
  auto s = p.stats().interpreters.at(0);
  CHECK(s.replaced_broken == 1);
  CHECK(s.tasks_timed_out == 1);
  CHECK(s.tasks_failed == 1);
  CHECK(s.interpreter_id == new_id);
  CHECK(p.map("isola_test_pool:plus_one", values(0, 10), 3).size() == 10);
  auto all = p.stats().submitted;
  CHECK(stats_when_completed(p, all).completed == all);

  // The abandoned thread finishes the regex, gets the TaskTimeout, and ends its interpreter.
  REQUIRE(done.get());
  CHECK(wait_until_ended(observer, old_id));
  CHECK(whoami(p, 0) == new_id);
  // Then the pool shuts down without waiting for anything stuck (the destructor joins).
}

TEST_CASE("a task stuck in C code without the GIL: replaced, and shutdown does not wait for it",
          "[pool][concurrent]") {
  // The task loops in C over os.read (GIL released, never back in the eval loop) until the test
  // closes the gate, so the test decides when the abandoned thread comes back.
  isola::pool_options o;
  o.size = 1;
  o.grace_period = 300ms;
  isola::pool p(o);
  isola::interpreter observer;
  os_pipe started, gate, done;
  open_at_exit release{gate};
  auto old_id = whoami(p, 0);
  warm_up(p, 0);

  auto f = p.submit_code(stuck_in_c_code(started, gate, done), with_timeout(100ms));
  REQUIRE(started.get());
  auto code = code_of(f);
  REQUIRE(code);
  CHECK(*code == isola::errc::timeout);
  auto new_id = whoami(p, 0);
  CHECK(new_id != old_id);
  CHECK(p.submit("isola_test_pool:plus_one", 1).get().as_int() == 2);
  auto s = p.stats().interpreters.at(0);
  CHECK(s.replaced_broken == 1);
  CHECK(s.tasks_timed_out == 1);
  CHECK(s.tasks_failed == 1);

  // Shutdown with the task still stuck returns (it leaves the stuck thread behind).
  p.shutdown();
  CHECK_FALSE(done.ready_now());
  auto shut = isola_error_of([&] { p.submit("isola_test_pool:whoami"); });
  REQUIRE(shut);
  CHECK(*shut == isola::errc::shut_down);

  // Let the stuck task return: it raises its TaskTimeout and its thread ends the interpreter.
  gate.close_write();
  REQUIRE(done.get());
  CHECK(wait_until_ended(observer, old_id));
  CHECK(p.stats().interpreters.at(0).tasks_timed_out == 1);  // not counted again on return
}

TEST_CASE("a stuck task that comes back is not counted twice", "[pool][concurrent]") {
  // declare_broken() counts the task as failed and timed out; when the abandoned worker
  // returns from the C call, the task's own completion must not count it again.
  isola::pool_options o;
  o.size = 1;
  o.grace_period = 300ms;
  isola::pool p(o);
  isola::interpreter observer;
  os_pipe started, gate, done;
  open_at_exit release{gate};
  auto old_id = whoami(p, 0);
  warm_up(p, 0);
  auto f = p.submit_code(stuck_in_c_code(started, gate, done), with_timeout(100ms));
  REQUIRE(started.get());
  REQUIRE(code_of(f) == std::optional<std::error_code>(isola::errc::timeout));
  gate.close_write();
  REQUIRE(done.get());
  REQUIRE(wait_until_ended(observer, old_id));
  auto s = p.stats().interpreters.at(0);
  CHECK(s.tasks_timed_out == 1);
  CHECK(s.tasks_failed == 1);
  CHECK(s.busy >= 400ms);  // its time until it was given up (timeout + grace) counts as busy
}

TEST_CASE("destroying a pool while a task is stuck in C code", "[pool][concurrent]") {
  // The pool's destructor leaves the stuck worker thread behind (detached); when the C call
  // returns, that thread runs the rest of its task and worker loop, so it must not touch a
  // freed pool_impl (AddressSanitizer would report a heap-use-after-free).
  isola::interpreter observer;
  os_pipe started, gate, done;
  std::int64_t old_id = 0;
  {
    isola::pool_options o;
    o.size = 1;
    o.grace_period = 300ms;
    isola::pool p(o);
    old_id = whoami(p, 0);
    warm_up(p, 0);
    auto f = p.submit_code(stuck_in_c_code(started, gate, done), with_timeout(100ms));
    REQUIRE(started.get());
    REQUIRE(code_of(f) == std::optional<std::error_code>(isola::errc::timeout));
    CHECK(whoami(p, 0) != old_id);  // the replacement is in place (see the next case)
  }  // returns although the task is stuck
  CHECK_FALSE(done.ready_now());
  gate.close_write();
  REQUIRE(done.get());
  CHECK(wait_until_ended(observer, old_id));
}

TEST_CASE("shutdown right after a task failed with errc::timeout", "[pool][concurrent]") {
  // A shutdown() that runs as soon as the stuck task's future fails (errc::timeout), on the
  // thread the future woke, must wait for the replacement worker, not for the stuck one (which
  // never returns), and must join the replacement. The test opens the gate after 10 s so that
  // the run ends; shutdown must not need it.
  isola::pool_options o;
  o.size = 1;
  o.grace_period = 300ms;
  isola::pool p(o);
  os_pipe started, gate, done;
  open_at_exit release{gate};
  warm_up(p, 0);
  auto f = p.submit_code(stuck_in_c_code(started, gate, done), with_timeout(100ms));
  REQUIRE(started.get());
  REQUIRE(code_of(f) == std::optional<std::error_code>(isola::errc::timeout));
  std::atomic<bool> shut{false}, gate_opened_first{false};
  std::thread opener([&] {
    auto until = std::chrono::steady_clock::now() + 10s;
    while (!shut && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(10ms);
    if (!shut) gate_opened_first = true;
    gate.close_write();
  });
  p.shutdown();
  shut = true;
  opener.join();
  CHECK_FALSE(gate_opened_first);
  // The gate is open now: the abandoned thread finishes its task (and writes to `done`)
  // before the pipes go away.
  CHECK(done.get());
  // (When shutdown did wait, the replacement worker it never joined aborts the process with
  // std::terminate when the pool is destroyed.)
}

// ---- 6. cancel ---------------------------------------------------------------------------------

TEST_CASE("cancel() removes a queued task and interrupts a running one", "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  os_pipe started, gate, side;
  open_at_exit release{gate};
  auto id = whoami(p, 0);

  CHECK_FALSE(isola::task_future().cancel());

  SECTION("queued: fails with cancelled and never runs") {
    auto busy = p.submit("isola_test_pool:wait_gate", started.w, gate.r, "first");
    REQUIRE(started.get());
    auto queued = p.submit("isola_test_pool:write_byte", side.w);
    CHECK(queued.cancel());
    auto code = code_of(queued);
    REQUIRE(code);
    CHECK(*code == isola::errc::cancelled);
    CHECK_FALSE(queued.cancel());  // already finished
    gate.put();
    CHECK(busy.get().as_str() == "first");
    // One interpreter, FIFO: this runs after the cancelled task's turn has passed.
    CHECK(p.submit("isola_test_pool:plus_one", 1).get().as_int() == 2);
    CHECK_FALSE(side.ready_now());  // the cancelled task never ran
    // It never ran on an interpreter: it counts as not_run, not against interpreter 0.
    auto st = p.stats();
    CHECK(st.not_run == 1);
    CHECK(st.interpreters.at(0).tasks_cancelled == 0);
    CHECK(st.queue_depth == 0);
  }
  SECTION("running: interrupted, fails with cancelled, the interpreter is reused") {
    auto f = p.submit_code("import os, time\n"
                           "os.write(" + std::to_string(started.w) + ", b's')\n"
                           "time.sleep(100)\n");
    REQUIRE(started.get());
    CHECK(f.cancel());
    auto code = code_of(f);  // returns long before the 100 s sleep would
    REQUIRE(code);
    CHECK(*code == isola::errc::cancelled);
    CHECK_FALSE(f.cancel());
    CHECK(whoami(p, 0) == id);

    // A busy loop is interrupted too.
    f = p.submit_code("import os\nos.write(" + std::to_string(started.w) + ", b's')\n"
                      "while True:\n    pass\n");
    REQUIRE(started.get());
    CHECK(f.cancel());
    code = code_of(f);
    REQUIRE(code);
    CHECK(*code == isola::errc::cancelled);
    CHECK(whoami(p, 0) == id);
    auto s = p.stats().interpreters.at(0);
    CHECK(s.tasks_cancelled == 2);
    CHECK(s.tasks_failed == 2);
    CHECK(s.replaced_broken == 0);
  }
  SECTION("finished: cancel() is false and the result stays") {
    auto f = p.submit("isola_test_pool:plus_one", 9);
    f.wait();
    CHECK_FALSE(f.cancel());
    CHECK(f.get().as_int() == 10);
  }
}

TEST_CASE("a task cancelled while queued counts as not run; the stats add up", "[pool]") {
  // A task cancelled while queued ran nowhere: it counts in not_run, not in any
  // interpreter's tasks_cancelled, so that done + failed + not_run adds up to completed.
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  os_pipe started, gate;
  open_at_exit release{gate};
  auto busy = p.submit("isola_test_pool:wait_gate", started.w, gate.r);
  REQUIRE(started.get());
  auto queued = p.submit("isola_test_pool:plus_one", 1);
  CHECK(p.stats().queue_depth == 1);
  REQUIRE(queued.cancel());
  CHECK(p.stats().queue_depth == 0);  // a cancelled task is no longer counted as waiting
  gate.put();
  busy.get();
  auto s = stats_when_completed(p, 2);
  auto t = sum(s);
  CHECK(t.cancelled == 0);
  CHECK(s.not_run == 1);
  CHECK(t.done == 1);
  CHECK(t.done + t.failed + s.not_run == s.completed);
}

// ---- 7. back-pressure --------------------------------------------------------------------------

TEST_CASE("a full queue: try_submit fails, submit waits for room", "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 1;
  o.queue_capacity = 2;
  isola::pool p(o);
  os_pipe started, gate;
  open_at_exit release{gate};

  // The only worker is busy (the task has left the queue: it said it started).
  auto busy = p.submit("isola_test_pool:wait_gate", started.w, gate.r, "busy");
  REQUIRE(started.get());
  auto a = p.try_submit_with("isola_test_pool:record", {value(1)}).value();
  auto b = p.try_submit_with("isola_test_pool:record", {value(2)}).value();
  auto full = p.try_submit_with("isola_test_pool:record", {value(3)});
  REQUIRE_FALSE(full.has_value());
  CHECK(full.error() == isola::errc::queue_full);
  CHECK(p.stats().queue_depth == 2);
  CHECK(p.stats().submitted == 3);

  std::atomic<bool> entered{false}, returned{false};
  std::atomic<std::uint64_t> done_when_returned{0};
  std::promise<isola::task_future> blocked_future;
  std::thread submitter([&] {
    entered = true;
    try {
      auto f = p.submit("isola_test_pool:record", 4);
      // Room appears only when the worker takes the next task, after finishing `busy`.
      done_when_returned = p.stats().interpreters.at(0).tasks_done;
      returned = true;
      blocked_future.set_value(std::move(f));
    } catch (...) {
      blocked_future.set_exception(std::current_exception());
    }
  });
  while (!entered) std::this_thread::yield();
  std::this_thread::sleep_for(200ms);  // give a broken submit() time to return early
  CHECK_FALSE(returned);
  CHECK(p.stats().submitted == 3);
  full = p.try_submit_with("isola_test_pool:record", {value(5)});
  REQUIRE_FALSE(full.has_value());
  CHECK(full.error() == isola::errc::queue_full);

  gate.put();  // the busy task ends; the worker takes `a`, which makes room
  auto blocked = blocked_future.get_future().get();
  submitter.join();
  CHECK(returned);
  CHECK(done_when_returned >= 1);
  CHECK(busy.get().as_str() == "busy");
  CHECK(a.get().as_int() == 1);
  CHECK(b.get().as_int() == 2);
  CHECK(blocked.get().as_int() == 4);
  // Queue order was kept, and the refused tasks never ran.
  CHECK(ints(p.submit_code("__import__('isola_test_pool').recorded").get()) ==
        std::vector<std::int64_t>{1, 2, 4});
}

// ---- 8. init code ------------------------------------------------------------------------------

TEST_CASE("init_code and init_call run in every interpreter, or the pool is not made", "[pool]") {
  auto before = rt().live_interpreters();

  SECTION("init_code raising") {
    isola::pool_options o;
    o.size = 2;
    o.init_code = "x = 1\nraise RuntimeError('init went wrong')\n";
    try {
      isola::pool p(o);
      FAIL("the pool was made");
    } catch (const isola::python_error& e) {
      CHECK(e.type_name() == "RuntimeError");
      CHECK_THAT(e.message(), Catch::Contains("pool interpreter 0"));
      CHECK_THAT(e.message(), Catch::Contains("init went wrong"));
      CHECK_THAT(e.what(), Catch::Contains("pool interpreter 0"));
      CHECK_THAT(e.traceback(), Catch::Contains("<pool init>"));
    }
    CHECK(rt().live_interpreters() == before);
  }
  SECTION("init_call of a missing function") {
    isola::pool_options o;
    o.size = 2;
    o.init_call = "isola_test_pool:no_such_function";
    auto e = python_error_of([&] { isola::pool p(o); });
    REQUIRE(e);
    CHECK(e->type_name() == "AttributeError");
    CHECK_THAT(e->message(), Catch::Contains("pool interpreter 0"));
    CHECK_THAT(e->message(), Catch::Contains("no_such_function"));
    CHECK(rt().live_interpreters() == before);
  }
  SECTION("init_call of a missing module") {
    isola::pool_options o;
    o.size = 1;
    o.init_call = "no_such_module_for_isola_tests:f";
    auto e = python_error_of([&] { isola::pool p(o); });
    REQUIRE(e);
    CHECK(e->type_name() == "ModuleNotFoundError");
    CHECK_THAT(e->message(), Catch::Contains("pool interpreter 0"));
    CHECK(rt().live_interpreters() == before);
  }
  SECTION("state made by init is per interpreter") {
    isola::pool_options o;
    o.size = 2;
    o.init_code =
        "import isola\n"
        "count = 0\n"
        "def tick():\n"
        "    global count\n"
        "    count += 1\n"
        "    return [isola.interpreter_id(), count]\n";
    o.init_call = "isola_test_pool:init_hook";
    isola::pool p(o);
    CHECK(rt().live_interpreters() == before + 2);
    for (int index = 0; index < 2; ++index) {
      INFO("interpreter " << index);
      auto id = whoami(p, index);
      CHECK(p.submit_to(index, "isola_test_pool:initialised").get().as_int() == id);
      for (int n = 1; n <= 3; ++n) {
        CHECK(ints(p.submit_to(index, "__main__:tick").get()) == std::vector<std::int64_t>{id, n});
      }
    }
    CHECK(whoami(p, 0) != whoami(p, 1));
  }
  SECTION("invalid options") {
    isola::pool_options o;
    o.size = 1;
    o.queue_capacity = 0;
    CHECK_THROWS_WITH(isola::pool(o), Catch::Contains("pool_options::queue_capacity") &&
                                          Catch::Contains("not 0"));
    o.queue_capacity = std::size_t{1} << 41;
    CHECK_THROWS_WITH(isola::pool(o), Catch::Contains("pool_options::queue_capacity"));
    o.queue_capacity = 1;
    o.interpreter.use_main_obmalloc = true;  // own GIL with the main allocator
    CHECK_THROWS_AS(isola::pool(o), std::invalid_argument);
    CHECK(rt().live_interpreters() == before);
  }
}

// ---- 9. shutdown -------------------------------------------------------------------------------

TEST_CASE("shutdown lets queued and running tasks finish", "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  os_pipe started, gate;
  open_at_exit release{gate};

  auto running = p.submit("isola_test_pool:wait_gate", started.w, gate.r, "ran");
  REQUIRE(started.get());
  std::vector<isola::task_future> queued;
  for (int i = 0; i < 5; ++i) queued.push_back(p.submit("isola_test_pool:record", i));

  auto shutting = std::async(std::launch::async, [&] { p.shutdown(); });
  // Once submit fails, the pool is stopping; anything accepted before that must still run.
  for (int i = 5;; ++i) {
    auto r = p.try_submit_with("isola_test_pool:record", {value(i)});
    if (r) {
      queued.push_back(std::move(*r));
    } else {
      if (r.error() == isola::errc::shut_down) break;
      REQUIRE(r.error() == isola::errc::queue_full);
      std::this_thread::yield();
    }
  }
  gate.close_write();
  shutting.get();
  CHECK(running.get().as_str() == "ran");
  for (std::size_t i = 0; i < queued.size(); ++i) {
    CHECK(queued[i].get().as_int() == static_cast<int>(i));
  }

  auto code = isola_error_of([&] { p.submit("isola_test_pool:whoami"); });
  REQUIRE(code);
  CHECK(*code == isola::errc::shut_down);
  CHECK_NOTHROW(p.shutdown());  // idempotent
  auto s = p.stats();
  CHECK(s.completed == s.submitted);
  CHECK(s.queue_depth == 0);
}

TEST_CASE("shutdown(true) cancels queued tasks; the running one finishes", "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  os_pipe started, gate, side;
  open_at_exit release{gate};

  auto running = p.submit("isola_test_pool:wait_gate", started.w, gate.r, "ran");
  REQUIRE(started.get());
  std::vector<isola::task_future> queued;
  for (int i = 0; i < 5; ++i) queued.push_back(p.submit("isola_test_pool:write_byte", side.w));
  queued.push_back(p.submit_to(0, "isola_test_pool:write_byte", side.w));  // pinned queue too

  auto shutting = std::async(std::launch::async, [&] { p.shutdown(true); });
  while (!isola_error_of([&] { p.submit_code("'after'").cancel(); })) std::this_thread::yield();
  gate.close_write();
  shutting.get();
  CHECK(running.get().as_str() == "ran");
  for (auto& f : queued) {
    auto code = code_of(f);
    REQUIRE(code);
    CHECK(*code == isola::errc::cancelled);
  }
  CHECK_FALSE(side.ready_now());  // none of them ran
  auto s = p.stats();
  CHECK(s.completed == s.submitted);
  CHECK(s.queue_depth == 0);
}

TEST_CASE("after shutdown every way of submitting says shut_down", "[pool]") {
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  p.shutdown();
  const std::error_code shut = isola::errc::shut_down;
  CHECK(isola_error_of([&] { p.submit("isola_test_pool:whoami"); }) == shut);
  CHECK(isola_error_of([&] { p.submit_to(0, "isola_test_pool:whoami"); }) == shut);
  CHECK(isola_error_of([&] { p.submit_code("1"); }) == shut);
  CHECK(p.try_submit_with("isola_test_pool:whoami", {}).error() == shut);
  CHECK(isola_error_of([&] { p.map("isola_test_pool:plus_one", values(0, 3)); }) == shut);
  auto f = p.async_submit("isola_test_pool:whoami", {}, boost::asio::use_future);
  CHECK(isola_error_of([&] { f.get(); }) == shut);
}

TEST_CASE("the destructor runs queued work to the end", "[pool]") {
  std::vector<isola::task_future> futures;
  {
    isola::pool_options o;
    o.size = 1;
    isola::pool p(o);
    futures.push_back(p.submit("isola_test_pool:sleep_then", 0.2, 0));
    for (int i = 1; i <= 20; ++i) futures.push_back(p.submit("isola_test_pool:plus_one", i - 1));
  }
  for (std::size_t i = 0; i < futures.size(); ++i) {
    REQUIRE(futures[i].wait_for(0s) == std::future_status::ready);
    CHECK(futures[i].get().as_int() == static_cast<int>(i));
  }
}

// ---- 10. recycling -----------------------------------------------------------------------------

TEST_CASE("max_tasks_per_interpreter replaces the interpreter after N tasks", "[pool]") {
  auto before = rt().live_interpreters();
  isola::pool_options o;
  o.size = 1;
  o.max_tasks_per_interpreter = 3;
  o.init_code =
      "import isola\n"
      "count = 0\n"
      "def tick():\n"
      "    global count\n"
      "    count += 1\n"
      "    return [isola.interpreter_id(), count]\n";
  isola::pool p(o);
  std::vector<isola::task_future> futures;
  for (int i = 0; i < 7; ++i) futures.push_back(p.submit("__main__:tick"));
  std::vector<std::int64_t> ids, counts;
  for (auto& f : futures) {
    auto r = ints(f.get());
    ids.push_back(r.at(0));
    counts.push_back(r.at(1));
  }
  // Three per interpreter, each fresh one initialised again (its own count from 0).
  CHECK(counts == std::vector<std::int64_t>{1, 2, 3, 1, 2, 3, 1});
  CHECK(ids[0] == ids[1]);
  CHECK(ids[1] == ids[2]);
  CHECK(ids[3] != ids[2]);
  CHECK(ids[3] == ids[4]);
  CHECK(ids[4] == ids[5]);
  CHECK(ids[6] != ids[5]);
  CHECK(ids[6] != ids[2]);
  auto s = p.stats().interpreters.at(0);
  CHECK(s.recycled == 2);
  CHECK(s.interpreter_id == ids[6]);
  CHECK(s.tasks_done == 7);
  CHECK(rt().live_interpreters() == before + 1);  // the replaced ones ended
}

TEST_CASE("max_tasks_jitter draws each interpreter's limit from N .. N + jitter", "[pool]") {
  isola::pool_options o;
  o.size = 1;
  o.max_tasks_per_interpreter = 2;
  o.max_tasks_jitter = 3;
  o.init_code =
      "count = 0\n"
      "def tick():\n"
      "    global count\n"
      "    count += 1\n"
      "    return count\n";
  isola::pool p(o);
  // The count an interpreter reaches before its replacement is its limit: 2 to 5.
  std::vector<std::int64_t> counts;
  for (int i = 0; i < 80; ++i) counts.push_back(p.submit("__main__:tick").get().as_int());
  std::vector<std::int64_t> limits;
  for (std::size_t i = 0; i + 1 < counts.size(); ++i) {
    if (counts[i + 1] == 1) limits.push_back(counts[i]);
  }
  REQUIRE(limits.size() >= 10);
  for (auto l : limits) {
    CHECK(l >= 2);
    CHECK(l <= 5);
  }
  // Not all the same (the chance that 10 or more draws agree is below 1e-5).
  CHECK(std::adjacent_find(limits.begin(), limits.end(), std::not_equal_to<>()) != limits.end());
  CHECK(p.stats().interpreters.at(0).recycled == limits.size());
}

TEST_CASE("a recycled interpreter whose init fails: its queued tasks fail, the pool says why", "[pool][concurrent]") {
  // When init fails in a replacement interpreter (recycling or a broken-interpreter
  // replacement), the slot is marked dead and what only it could run fails: no future is left
  // waiting for ever.
  temp_dir dir;
  isola::pool_options o;
  o.size = 1;
  o.max_tasks_per_interpreter = 1;
  o.init_code = "import os\n"
                "flag = " + value(dir.file("initialised")).repr() + "\n"
                "if os.path.exists(flag):\n"
                "    raise RuntimeError('second init fails')\n"
                "open(flag, 'w').close()\n";
  os_pipe started, gate;
  open_at_exit release{gate};
  isola::pool p(o);
  // The second task is queued while the first runs, so it is waiting when recycling fails.
  auto first = p.submit("isola_test_pool:wait_gate", started.w, gate.r, "first");
  REQUIRE(started.get());
  auto second = p.submit("isola_test_pool:plus_one", 2);
  gate.put();
  CHECK(first.get().as_str() == "first");
  REQUIRE(second.wait_for(30s) == std::future_status::ready);
  auto code = code_of(second);
  REQUIRE(code);
  CHECK(*code == isola::errc::creation_failed);
  CHECK(p.stats().interpreters.at(0).dead);
  CHECK(p.stats().not_run == 1);
  auto refused = isola_error_of([&] { p.submit("isola_test_pool:plus_one", 3); });
  REQUIRE(refused);
  CHECK(*refused == isola::errc::creation_failed);
}

// ---- 11. Asio ----------------------------------------------------------------------------------

TEST_CASE("async_submit with a callback, use_future and use_awaitable", "[pool][concurrent]") {
  // The io_context is made before the pool so that it outlives it.
  boost::asio::io_context io;
  isola::pool_options o;
  o.size = 2;
  isola::pool p(o);
  const long test_thread = gettid_now();

  SECTION("a callback bound to an io_context runs on the io_context's thread") {
    auto work = boost::asio::make_work_guard(io);
    int calls = 0;
    std::optional<value> got;
    std::optional<isola::python_error> failure;
    long ran_on = 0;
    std::int64_t worker_tid = 0;
    std::exception_ptr first_error;
    p.async_submit("isola_test_pool:native_thread_id", {},
                   boost::asio::bind_executor(io, [&](std::exception_ptr e, value v) {
                     ran_on = gettid_now();
                     first_error = e;
                     if (!e) worker_tid = v.as_int();
                     got = std::move(v);
                     if (++calls == 2) work.reset();
                   }));
    bool second_value_none = false;
    p.async_submit("isola_test_pool:raise_value_error", {value("via callback")},
                   boost::asio::bind_executor(io, [&](std::exception_ptr e, value v) {
                     failure = python_error_of([&] {
                       if (e) std::rethrow_exception(e);
                     });
                     second_value_none = v.is_none();
                     if (++calls == 2) work.reset();
                   }));
    // The handlers may complete in either order; the work guard is released by the second.
    io.run_for(60s);  // returns once both ran and the guard is released (the limit is a net)
    CHECK(calls == 2);
    CHECK_FALSE(first_error);
    CHECK(second_value_none);
    REQUIRE(got);
    CHECK(ran_on == test_thread);
    CHECK(worker_tid != test_thread);
    CHECK(worker_tid != ran_on);
    REQUIRE(failure);
    CHECK(failure->type_name() == "ValueError");
    CHECK(failure->message() == "via callback");
  }
  SECTION("use_future") {
    auto f = p.async_submit("isola_test_pool:plus_one", {value(41)}, boost::asio::use_future);
    CHECK(f.get().as_int() == 42);
    auto bad = p.async_submit("isola_test_pool:raise_value_error", {value("via future")},
                              boost::asio::use_future);
    auto e = python_error_of([&] { bad.get(); });
    REQUIRE(e);
    CHECK(e->type_name() == "ValueError");
    CHECK(e->message() == "via future");
  }
  SECTION("an unbound callback runs on the system executor, not on a worker") {
    std::promise<std::pair<long, std::int64_t>> where;
    p.async_submit("isola_test_pool:native_thread_id", {}, [&](std::exception_ptr e, value v) {
      if (e) {
        where.set_exception(e);
      } else {
        where.set_value({gettid_now(), v.as_int()});
      }
    });
    auto [handler_tid, worker_tid] = where.get_future().get();
    CHECK(handler_tid != worker_tid);
    CHECK(handler_tid != test_thread);
  }
  SECTION("a C++20 coroutine with use_awaitable") {
    std::optional<std::int64_t> sum;
    std::optional<isola::python_error> failure;
    std::vector<long> resumed_on;
    auto coro = [&]() -> boost::asio::awaitable<void> {
      auto a = co_await p.async_submit("isola_test_pool:plus_one", args_of(1),
                                       boost::asio::use_awaitable);
      resumed_on.push_back(gettid_now());
      auto b = co_await p.async_submit("isola_test_pool:plus_one", args_of(a),
                                       boost::asio::use_awaitable);
      resumed_on.push_back(gettid_now());
      sum = a.as_int() + b.as_int();
      try {
        co_await p.async_submit("isola_test_pool:raise_value_error", args_of("via coroutine"),
                                boost::asio::use_awaitable);
      } catch (const isola::python_error& e) {
        failure = e;
      }
      resumed_on.push_back(gettid_now());
    };
    auto finished = boost::asio::co_spawn(io, coro(), boost::asio::use_future);
    io.run();  // co_spawn keeps the context busy until the coroutine ends
    finished.get();
    REQUIRE(sum);
    CHECK(*sum == 2 + 3);
    REQUIRE(failure);
    CHECK(failure->type_name() == "ValueError");
    CHECK(failure->message() == "via coroutine");
    CHECK(resumed_on == std::vector<long>{test_thread, test_thread, test_thread});

    // A coroutine spawned detached, with the exception escaping into co_spawn's handler.
    std::exception_ptr escaped;
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          co_await p.async_submit("isola_test_pool:raise_value_error", args_of("escaped"),
                                  boost::asio::use_awaitable);
        },
        [&](std::exception_ptr e) { escaped = e; });
    io.restart();
    io.run();
    auto e = python_error_of([&] {
      if (escaped) std::rethrow_exception(escaped);
    });
    REQUIRE(e);
    CHECK(e->message() == "escaped");
  }
}

TEST_CASE("async_submit supports per-operation cancellation", "[pool][concurrent]") {
  // A cancellation slot bound to the handler cancels the task (any cancellation type), as
  // channels' async operations do; the handler gets errc::cancelled.
  boost::asio::io_context io;  // outlives the pool
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  os_pipe started;
  for (auto type : {boost::asio::cancellation_type::terminal,
                    boost::asio::cancellation_type::partial,
                    boost::asio::cancellation_type::total}) {
    boost::asio::cancellation_signal running_signal, queued_signal;
    std::optional<std::error_code> running_code, queued_code;
    auto code_of_error = [](std::exception_ptr e) -> std::optional<std::error_code> {
      try {
        if (e) std::rethrow_exception(e);
      } catch (const isola::error& err) {
        return err.code();
      } catch (...) {
      }
      return std::nullopt;
    };
    p.async_submit("isola_test_pool:started_then_sleep", {value(started.w), value(60)},
                   boost::asio::bind_cancellation_slot(
                       running_signal.slot(),
                       boost::asio::bind_executor(io, [&](std::exception_ptr e, value) {
                         running_code = code_of_error(e);
                       })));
    p.async_submit("isola_test_pool:plus_one", {value(1)},
                   boost::asio::bind_cancellation_slot(
                       queued_signal.slot(),
                       boost::asio::bind_executor(io, [&](std::exception_ptr e, value) {
                         queued_code = code_of_error(e);
                       })));
    REQUIRE(started.get());  // the first is running; the second waits behind it
    boost::asio::post(io, [&] {
      queued_signal.emit(type);
      running_signal.emit(type);
    });
    io.run_for(60s);  // until both handlers ran (the limit is a net)
    io.restart();
    INFO("cancellation type " << static_cast<int>(type));
    REQUIRE(running_code);
    CHECK(*running_code == isola::errc::cancelled);
    REQUIRE(queued_code);
    CHECK(*queued_code == isola::errc::cancelled);
  }
  CHECK(p.submit("isola_test_pool:plus_one", 1).get().as_int() == 2);  // still in service
}

TEST_CASE("async_submit keeps the handler's io_context busy until it runs", "[pool]") {
  // Asio's asynchronous-operation requirements: an operation keeps outstanding work on the
  // handler's associated executor until the handler is invoked, so io_context::run() with no
  // other work does not return before the handler has run.
  boost::asio::io_context io;  // outlives the pool, see above
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  bool ran = false;
  p.async_submit("isola_test_pool:sleep_then", {value(0.2), value(1)},
                 boost::asio::bind_executor(io, [&](std::exception_ptr, value) { ran = true; }));
  io.run();
  CHECK(ran);
  if (!ran) {
    io.restart();
    io.run_for(60s);  // let the handler run before `ran` goes out of scope
  }
}

// ---- 12. stats ---------------------------------------------------------------------------------

TEST_CASE("stats add up", "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 2;
  isola::pool p(o);
  auto empty = p.stats();
  REQUIRE(empty.interpreters.size() == 2);
  CHECK(empty.submitted == 0);
  CHECK(empty.completed == 0);
  CHECK(sum(empty).busy == 0ns);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(empty.interpreters[i].index == i);
    CHECK(empty.interpreters[i].interpreter_id == whoami(p, static_cast<int>(i)));
  }

  std::vector<isola::task_future> futures;
  for (int i = 0; i < 40; ++i) futures.push_back(p.submit("isola_test_pool:plus_one", i));
  for (int i = 0; i < 10; ++i) {
    futures.push_back(p.submit("isola_test_pool:raise_value_error", "x"));
  }
  futures.push_back(p.submit_code("while True:\n    pass\n", with_timeout(100ms)));
  futures.push_back(p.submit_code("while True:\n    pass\n", with_timeout(100ms, 1)));
  int ok = 0, failed = 0;
  for (auto& f : futures) {
    try {
      f.get();
      ++ok;
    } catch (const isola::python_error&) {
      ++failed;
    }
  }
  CHECK(ok == 40);
  CHECK(failed == 12);

  const std::uint64_t submitted = 2 + futures.size();  // the two whoami() calls too
  auto s = stats_when_completed(p, submitted);
  CHECK(s.submitted == submitted);
  CHECK(s.completed == submitted);
  CHECK(s.queue_depth == 0);
  auto t = sum(s);
  CHECK(t.done == 42);
  CHECK(t.failed == 12);
  CHECK(t.done + t.failed == s.submitted);
  CHECK(t.timed_out == 2);
  CHECK(s.interpreters[1].tasks_timed_out >= 1);  // the pinned one
  CHECK(t.cancelled == 0);
  CHECK(t.recycled == 0);
  CHECK(t.broken == 0);
  CHECK(t.busy > 0ns);
  for (const auto& i : s.interpreters) {
    INFO("interpreter " << i.index);
    if (i.tasks_done + i.tasks_failed > 0) CHECK(i.busy > 0ns);
  }
  CHECK(s.interpreters[1].busy >= 100ms);  // it ran a task that lasted its 100 ms timeout
}

// ---- 13. parallelism ---------------------------------------------------------------------------

TEST_CASE("two tasks on a pool of two run at the same time", "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 2;
  isola::pool p(o);
  os_pipe ready, start;
  open_at_exit release{start};
  // Both tasks say they are ready, then block in os.read (GIL released) until the bytes come,
  // so both are running before either starts its loop.
  constexpr int steps = 20000;
  auto fa = p.submit("isola_test_pool:stamp_loop_ready", ready.w, start.r, steps);
  auto fb = p.submit("isola_test_pool:stamp_loop_ready", ready.w, start.r, steps);
  REQUIRE(ready.get());
  REQUIRE(ready.get());
  start.put();
  start.put();
  auto sa = ints(fa.get());
  auto sb = ints(fb.get());
  REQUIRE(sa.size() == steps);
  REQUIRE(sb.size() == steps);
  auto a_in_b = stamps_inside(sa, sb);
  auto b_in_a = stamps_inside(sb, sa);
  INFO("A: " << sa.front() << ".." << sa.back() << ", B: " << sb.front() << ".." << sb.back()
             << "; A's stamps inside B's run: " << a_in_b << ", B's inside A's: " << b_in_a);
  CHECK(a_in_b > 0);
  CHECK(b_in_a > 0);
}

// ---- races -----------------------------------------------------------------------------------

TEST_CASE("stats().completed counts a task once its future is ready", "[pool][concurrent]") {
  // Counters are bumped before the future becomes ready (run_task, cancel, declare_broken,
  // shutdown), so a thread that has just seen the result never reads completed one short.
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  int short_reads = 0;
  for (int i = 0; i < 2000; ++i) {
    p.submit("isola_test_pool:plus_one", i).get();
    auto s = p.stats();
    if (s.completed != s.submitted) ++short_reads;
  }
  CHECK(short_reads == 0);
}


TEST_CASE("cancel() of a task that is just finishing must not hit the next task",
          "[pool][concurrent]") {
  // An interrupt runs on a helper thread that first has to attach, i.e. take the GIL; while
  // task A holds it, the helper waits. If A ends first and the worker starts B, the helper
  // gets the GIL inside B: interrupts name their task, so it must not raise KeyboardInterrupt
  // in B, which nobody cancelled.
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  os_pipe started;
  int wrong = 0, rounds = 60;
  std::string first_wrong;
  for (int i = 0; i < rounds; ++i) {
    // A: says it runs, then busy-loops ~3 ms holding the GIL. B: busy-loops ~30 ms.
    auto a = p.submit("isola_test_pool:busy", 0.003, started.w);
    auto b = p.submit("isola_test_pool:busy", 0.03);
    REQUIRE(started.get());
    a.cancel();
    try {
      a.get();
    } catch (const std::exception&) {
    }
    try {
      b.get();
    } catch (const std::exception& e) {
      if (wrong++ == 0) first_wrong = e.what();
    }
  }
  INFO("first wrong failure: " << first_wrong);
  CHECK(wrong == 0);
}

TEST_CASE("a timeout firing as its task ends must not hit the next task", "[pool][concurrent]") {
  // The same race through the watchdog: A's deadline passes while A still runs (holding the
  // GIL), the helper waits for the GIL, A ends, B starts: B must not get A's TaskTimeout.
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  int wrong = 0, rounds = 40;
  std::string first_wrong;
  for (int i = 0; i < rounds; ++i) {
    auto a = p.submit_with("isola_test_pool:busy", {value(0.022)}, {}, with_timeout(20ms));
    auto b = p.submit("isola_test_pool:busy", 0.03);
    try {
      a.get();
    } catch (const std::exception&) {
    }
    try {
      b.get();
    } catch (const std::exception& e) {
      if (wrong++ == 0) first_wrong = e.what();
    }
  }
  INFO("first wrong failure: " << first_wrong);
  CHECK(wrong == 0);
}

// ---- interrupting without cancelling; deadlines a task re-arms; bounded ends ----------------

TEST_CASE("task_future::interrupt raises in a running task and keeps what it returns",
          "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  os_pipe started;
  auto running = p.submit_code(
      "import os, time\n"
      "done = 0\n"
      "try:\n"
      "    os.write(" + std::to_string(started.w) + ", b's')\n"
      "    while True:\n"
      "        time.sleep(0.001)\n"
      "        done += 1\n"
      "except KeyboardInterrupt:\n"
      "    result = 'partial'\n");
  auto queued = p.submit_code("'never'");
  REQUIRE(started.get());
  CHECK(queued.interrupt());   // still queued: cancelled
  CHECK(running.interrupt());  // running: KeyboardInterrupt, its outcome kept
  CHECK_NOTHROW(running.get());
  CHECK(p.submit_code("result").get().as_str() == "partial");
  auto code = code_of(queued);
  REQUIRE(code);
  CHECK(*code == isola::errc::cancelled);
  CHECK_FALSE(running.interrupt());  // finished
  // Another exception type, and an uncaught one: the future gets it.
  auto f = p.submit_code(
      "import os, time\n"
      "os.write(" + std::to_string(started.w) + ", b's')\n"
      "time.sleep(60)\n");
  REQUIRE(started.get());
  CHECK(f.interrupt("SystemExit"));
  auto e = python_error_from(f);
  REQUIRE(e);
  CHECK(e->type_name() == "SystemExit");
}

TEST_CASE("isola._set_deadline re-arms a task's deadline", "[pool][concurrent]") {
  isola::pool_options o;
  o.size = 1;
  isola::pool p(o);
  SECTION("a task without a timeout can give itself one") {
    auto f = p.submit_code("import isola, time\nisola._set_deadline(0.1)\ntime.sleep(60)\n");
    auto e = python_error_from(f);
    REQUIRE(e);
    CHECK(e->type_name() == "TimeoutError");
    CHECK_THAT(e->message(), Catch::Contains("timeout of 100 ms"));
  }
  SECTION("each step of a task gets its own deadline; None lifts it") {
    auto f = p.submit_code(
        "import isola, time\n"
        "results = []\n"
        "for step in (0, 0.02, 5, 0):\n"
        "    isola._set_deadline(0.3)\n"
        "    try:\n"
        "        time.sleep(step)\n"
        "        results.append('ok')\n"
        "    except isola.TaskTimeout:\n"
        "        results.append('timed out')\n"
        "    finally:\n"
        "        isola._set_deadline(None)\n"
        "time.sleep(0.4)\n"  // no deadline now: not interrupted
        "results\n");
    CHECK_NOTHROW(f.get());
    auto r = p.submit_code("results").get();
    std::vector<std::string> got;
    for (const auto& v : r.as_list().items) got.push_back(v.as_str());
    CHECK(got == std::vector<std::string>{"ok", "ok", "timed out", "ok"});
    CHECK(p.stats().interpreters.at(0).tasks_timed_out == 0);  // the task itself ended well
  }
  SECTION("never later than the task's own timeout") {
    auto f = p.submit_code("import isola, time\nisola._set_deadline(3600)\ntime.sleep(60)\n",
                           with_timeout(200ms));
    auto e = python_error_from(f);
    REQUIRE(e);
    CHECK(e->type_name() == "TimeoutError");
    CHECK_THAT(e->message(), Catch::Contains("timeout of 200 ms"));
  }
  SECTION("only inside a pool task, with a number of seconds") {
    isola::interpreter in;
    auto e = python_error_of([&] { in.exec("import isola\nisola._set_deadline(1)\n"); });
    REQUIRE(e);
    CHECK(e->type_name() == "RuntimeError");
    for (const char* bad : {"-1", "float('nan')", "'1'"}) {
      auto f = p.submit_code(std::string("import isola\nisola._set_deadline(") + bad + ")\n");
      auto b = python_error_from(f);
      INFO(bad);
      REQUIRE(b);
      CHECK((b->type_name() == "ValueError" || b->type_name() == "TypeError"));
    }
  }
}

TEST_CASE("pool shutdown ends the threads tasks left running, within end_timeout",
          "[pool][concurrent]") {
  // Py_EndInterpreter waits for non-daemon threads for ever; shutdown must not.
  isola::pool_options o;
  o.size = 1;
  o.interpreter.end_timeout = 100ms;
  os_pipe ended;
  {
    isola::pool p(o);
    p.submit_code("import os, threading, time\n"
                  "def work():\n"
                  "    try:\n"
                  "        while True:\n"
                  "            time.sleep(0.01)\n"
                  "    finally:\n"
                  "        os.write(" + std::to_string(ended.w) + ", b'e')\n"
                  "threading.Thread(target=work).start()\n")
        .get();
    p.shutdown();
  }
  CHECK(ended.ready_now());  // SystemExit ended it before shutdown returned
  CHECK(isola::runtime::abandoned_interpreters() == 0);
}
