// isola::interpreter: isolation between interpreters, running at the same time, the async
// forms and many callers, run_file, interrupt(), closing, and interpreter_config.
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <thread>

using namespace isola_test;
using isola::value;

namespace {

std::vector<std::int64_t> ints(const value& v) {
  std::vector<std::int64_t> out;
  for (const auto& item : v.as_list().items) out.push_back(item.as_int());
  return out;
}

// How many stamps of `of` lie strictly between the first and last stamp of `within`.
std::size_t stamps_inside(const std::vector<std::int64_t>& of,
                          const std::vector<std::int64_t>& within) {
  // Plain variables, not a structured binding: clang 14 cannot capture one in a lambda.
  const auto bounds = std::minmax_element(within.begin(), within.end());
  const auto lo = bounds.first;
  const auto hi = bounds.second;
  return static_cast<std::size_t>(
      std::count_if(of.begin(), of.end(), [&](auto s) { return *lo < s && s < *hi; }));
}

template <typename T>
std::optional<std::error_code> closed_code(T&& f) {
  return isola_error_of(std::forward<T>(f));
}

// If a check fails while an endless task runs, end the task so the interpreter can close
// (its destructor waits for queued work) and the failure is reported instead of a hang.
template <typename T>
struct stop_endless {
  isola::interpreter& in;
  std::future<T>& task;
  ~stop_endless() {
    while (task.valid() && task.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
      in.interrupt("SystemExit");
      std::this_thread::yield();
    }
  }
};

}  // namespace

TEST_CASE("two interpreters run Python at the same time", "[interpreter]") {
  isola::interpreter a, b;
  int start[2];
  REQUIRE(pipe(start) == 0);
  // Both calls block in os.read (without their GIL) until the bytes arrive, so neither gets a
  // head start; then each records a perf_counter_ns() stamp per step of its loop.
  constexpr int steps = 20000;
  auto fa = a.call_async("isola_test_helpers:stamp_loop", start[0], steps);
  auto fb = b.call_async("isola_test_helpers:stamp_loop", start[0], steps);
  REQUIRE(write(start[1], "go", 2) == 2);
  auto sa = ints(fa.get());
  auto sb = ints(fb.get());
  close(start[0]);
  close(start[1]);
  REQUIRE(sa.size() == steps);
  REQUIRE(sb.size() == steps);
  REQUIRE(std::is_sorted(sa.begin(), sa.end()));
  REQUIRE(std::is_sorted(sb.begin(), sb.end()));

  // Progress overlapped: each made progress while the other was between its first and last
  // step. Serial runs would put all of one list before or after the other.
  auto a_in_b = stamps_inside(sa, sb);
  auto b_in_a = stamps_inside(sb, sa);
  INFO("A: " << sa.front() << ".." << sa.back() << ", B: " << sb.front() << ".." << sb.back()
             << "; A's stamps inside B's run: " << a_in_b << ", B's inside A's: " << b_in_a);
  CHECK(a_in_b > 0);
  CHECK(b_in_a > 0);
}

TEST_CASE("interpreters do not share globals, modules or module state", "[interpreter]") {
  isola::interpreter a, b;

  SECTION("ids") {
    CHECK(a.id() > 0);
    CHECK(a.id() != b.id());
    CHECK(a.eval("__import__('isola').interpreter_id()").as_int() == a.id());
    CHECK(b.eval("__import__('isola').interpreter_id()").as_int() == b.id());
    CHECK(a.handle().id() == a.id());
    CHECK(a.handle() == a.handle());
    CHECK_FALSE(a.handle() == b.handle());
  }

  SECTION("globals") {
    a.set_global("only_in_a", 1);
    a.exec("also_only_in_a = 2");
    auto e = python_error_of([&] { b.get_global("only_in_a"); });
    REQUIRE(e);
    CHECK(e->type_name() == "NameError");
    CHECK_FALSE(b.eval("'also_only_in_a' in globals()").as_bool());
    b.set_global("only_in_a", "b's own");
    CHECK(a.get_global("only_in_a").as_int() == 1);
  }

  SECTION("sys.modules") {
    // colorsys: pure Python, not imported at start-up.
    CHECK_FALSE(a.eval("'colorsys' in __import__('sys').modules").as_bool());
    CHECK_FALSE(b.eval("'colorsys' in __import__('sys').modules").as_bool());
    a.exec("import colorsys");
    CHECK(a.eval("'colorsys' in __import__('sys').modules").as_bool());
    CHECK_FALSE(b.eval("'colorsys' in __import__('sys').modules").as_bool());
  }

  SECTION("module state") {
    a.exec("import colorsys, sys, math, builtins\n"
           "colorsys.marker = 'a'\n"
           "sys.marker = 'a'\n"
           "math.marker = 'a'\n"
           "builtins.marker = 'a'\n");
    b.exec("import colorsys, sys, math, builtins");
    CHECK_FALSE(b.eval("hasattr(colorsys, 'marker')").as_bool());
    CHECK_FALSE(b.eval("hasattr(sys, 'marker')").as_bool());
    CHECK_FALSE(b.eval("hasattr(math, 'marker')").as_bool());  // a C module
    CHECK_FALSE(b.eval("hasattr(builtins, 'marker')").as_bool());
    CHECK(a.eval("marker").as_str() == "a");  // builtins reach every module of a
    a.exec("sys.path.append('/only/in/a')");
    CHECK_FALSE(b.eval("'/only/in/a' in sys.path").as_bool());
  }
}

TEST_CASE("run_file runs a script as __main__", "[interpreter]") {
  isola::interpreter in;
  temp_dir dir;

  auto e = python_error_of([&] { in.run_file(dir.file("missing.py")); });
  REQUIRE(e);
  CHECK(e->type_name() == "FileNotFoundError");
  CHECK_THAT(e->message(), Catch::Contains("missing.py"));

  write_file(dir.file("sibling_module_for_test.py"), "GREETING = 'hi from a sibling'\n");
  write_file(dir.file("script.py"),
             "import sys\n"
             "import sibling_module_for_test\n"  // the script's folder is on sys.path
             "seen_file = __file__\n"
             "seen_argv = list(sys.argv)\n"
             "seen_name = __name__\n"
             "greeting = sibling_module_for_test.GREETING\n");
  in.run_file(dir.file("script.py"), {"--flag", "value"});
  CHECK(in.get_global("seen_file").as_str() == dir.file("script.py"));
  CHECK(in.get_global("seen_argv") ==
        isola::value(isola::make_list(dir.file("script.py"), "--flag", "value")));
  CHECK(in.get_global("seen_name").as_str() == "__main__");
  CHECK(in.get_global("greeting").as_str() == "hi from a sibling");

  write_file(dir.file("broken.py"), "a = 1\nraise LookupError('from the script')\n");
  e = python_error_of([&] { in.run_file(dir.file("broken.py")); });
  REQUIRE(e);
  CHECK(e->type_name() == "LookupError");
  CHECK_THAT(e->traceback(), Catch::Contains("broken.py\", line 2"));

  write_file(dir.file("syntax.py"), "\n\nif True\n");
  e = python_error_of([&] { in.run_file(dir.file("syntax.py")); });
  REQUIRE(e);
  CHECK(e->type_name() == "SyntaxError");
  CHECK(e->filename() == dir.file("syntax.py"));
  CHECK(e->line() == 3);

  auto f = in.run_file_async(dir.file("script.py"));
  f.get();
  CHECK(in.get_global("seen_argv") == isola::value(isola::make_list(dir.file("script.py"))));
}

TEST_CASE("the async forms deliver values and exceptions through futures", "[interpreter]") {
  isola::interpreter in;
  auto set = in.set_global_async("x", 20);
  auto ex = in.exec_async("x += 1");
  auto ev = in.eval_async("x * 2");
  auto call = in.call_async("isola_test_helpers:add", 40, 2);
  auto kw = in.call_with_async("isola_test_helpers:describe", {}, {{"k", "v"}});
  auto get = in.get_global_async("x");
  set.get();
  ex.get();
  CHECK(ev.get().as_int() == 42);
  CHECK(call.get().as_int() == 42);
  CHECK(*kw.get().find("kwargs") == value(isola::dict{{{value("k"), value("v")}}}));
  CHECK(get.get().as_int() == 21);

  auto bad_exec = in.exec_async("raise ValueError('from exec_async')");
  auto bad_eval = in.eval_async("1 / 0");
  auto bad_call = in.call_async("json:no_such_function");
  auto bad_get = in.get_global_async("no_such_name");
  auto bad_set = in.set_global_async("y", isola::dict{{{value(isola::make_list()), value()}}});
  auto bad_value = in.eval_async("object()");
  auto e = python_error_of([&] { bad_exec.get(); });
  REQUIRE(e);
  CHECK(e->type_name() == "ValueError");
  CHECK(e->message() == "from exec_async");
  e = python_error_of([&] { bad_eval.get(); });
  REQUIRE(e);
  CHECK(e->type_name() == "ZeroDivisionError");
  e = python_error_of([&] { bad_call.get(); });
  REQUIRE(e);
  CHECK(e->type_name() == "AttributeError");
  e = python_error_of([&] { bad_get.get(); });
  REQUIRE(e);
  CHECK(e->type_name() == "NameError");
  e = python_error_of([&] { bad_set.get(); });
  REQUIRE(e);
  CHECK(e->type_name() == "TypeError");
  e = python_error_of([&] { bad_value.get(); });
  REQUIRE(e);
  CHECK(e->type_name() == "TypeError");
  CHECK(in.eval("x").as_int() == 21);
}

TEST_CASE("work runs one task at a time in submission order", "[interpreter]") {
  isola::interpreter in;
  in.exec("seen = []");
  std::vector<std::future<void>> futures;
  for (int i = 0; i < 200; ++i) futures.push_back(in.exec_async("seen.append(" + std::to_string(i) + ")"));
  for (auto& f : futures) f.get();
  CHECK(in.eval("seen == list(range(200))").as_bool());
}

TEST_CASE("many threads call one interpreter at once", "[interpreter]") {
  isola::interpreter in;
  in.exec("counter = 0");
  constexpr int threads = 8, calls = 50;
  thread_failures failures;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        for (int i = 0; i < calls; ++i) {
          // Tasks never overlap, so this unlocked read-modify-write never loses an update.
          in.exec("counter += 1");
          auto sum = in.call("isola_test_helpers:add", t, i);
          failures.check(sum.as_int() == t + i, "add(" + std::to_string(t) + ", " +
                                                    std::to_string(i) + ") = " + sum.repr());
          auto f = in.eval_async("'" + std::to_string(t) + "-' + str(" + std::to_string(i) + ")");
          auto text = f.get().as_str();
          failures.check(text == std::to_string(t) + "-" + std::to_string(i), "eval: " + text);
        }
      } catch (const std::exception& e) {
        failures.fail(std::string("thread threw: ") + e.what());
      }
    });
  }
  for (auto& t : pool) t.join();
  INFO(failures.first);
  CHECK(failures.count == 0);
  CHECK(in.get_global("counter").as_int() == threads * calls);
}

TEST_CASE("a blocking call from one interpreter's thread into another", "[interpreter]") {
  // While attached to a (holding a's GIL), a blocking call on b waits with a's GIL released,
  // so a's worker can run a's queued work meanwhile: here b waits for a byte that a's queued
  // task writes (were a's GIL kept, b would wait in vain; the 60 s limit only ends the test).
  isola::interpreter a, b;
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  std::future<void> queued_on_a;
  {
    auto g = isola::attach(a.handle());
    REQUIRE(g.has_value());
    queued_on_a = a.exec_async("import os\nos.write(" + std::to_string(pipe_fds[1]) + ", b'x')");
    CHECK(b.eval("__import__('isola').interpreter_id()").as_int() == b.id());
    b.set_global("fd", pipe_fds[0]);
    CHECK(b.eval("__import__('select').select([fd], [], [], 60)[0] == [fd]").as_bool());
  }
  queued_on_a.get();
  close(pipe_fds[0]);
  close(pipe_fds[1]);
}

TEST_CASE("interrupt() raises in running code", "[interpreter]") {
  isola::interpreter in;
  CHECK_FALSE(in.interrupt());  // nothing running

  SECTION("KeyboardInterrupt ends a busy loop") {
    auto f = in.exec_async("while True:\n    pass\n");
    stop_endless<void> stop{in, f};
    while (!in.interrupt("KeyboardInterrupt")) std::this_thread::yield();
    auto e = python_error_of([&] { f.get(); });
    REQUIRE(e);
    CHECK(e->type_name() == "KeyboardInterrupt");
  }
  SECTION("the default is KeyboardInterrupt; code can catch it") {
    // The loop reports through a pipe that it is inside the try, so the interrupt cannot
    // land before it.
    int ready[2];
    REQUIRE(pipe(ready) == 0);
    auto f = in.exec_async(
        "import os\n"
        "caught = False\n"
        "try:\n"
        "    os.write(" + std::to_string(ready[1]) + ", b'!')\n"
        "    while True:\n"
        "        pass\n"
        "except KeyboardInterrupt:\n"
        "    caught = True\n");
    stop_endless<void> stop{in, f};
    char byte = 0;
    REQUIRE(read(ready[0], &byte, 1) == 1);
    CHECK(in.interrupt());
    f.get();
    CHECK(in.get_global("caught").as_bool());
    close(ready[0]);
    close(ready[1]);
  }
  SECTION("another exception type") {
    auto f = in.eval_async("sum(1 for _ in iter(int, 1))");  // endless, in constant memory
    stop_endless<value> stop{in, f};
    while (!in.interrupt("TimeoutError")) std::this_thread::yield();
    auto e = python_error_of([&] { f.get(); });
    REQUIRE(e);
    CHECK(e->type_name() == "TimeoutError");
  }
  SECTION("time.sleep wakes up for it") {
    // isola's time.sleep waits where interrupt() can wake it; the kernel's would not notice.
    auto f = in.exec_async("import time\ntime.sleep(3600)\n");
    stop_endless<void> stop{in, f};
    while (!in.interrupt()) std::this_thread::yield();
    auto e = python_error_of([&] { f.get(); });
    REQUIRE(e);
    CHECK(e->type_name() == "KeyboardInterrupt");
  }
  SECTION("one of isola's exception types") {
    auto f = in.eval_async("sum(1 for _ in iter(int, 1))");
    stop_endless<value> stop{in, f};
    while (!in.interrupt("isola.TaskTimeout")) std::this_thread::yield();
    auto e = python_error_of([&] { f.get(); });
    REQUIRE(e);
    CHECK(e->type_name() == "isola.TaskTimeout");
  }
  SECTION("only exception classes") {
    CHECK_THROWS_AS(in.interrupt("NoSuchError"), std::invalid_argument);
    CHECK_THROWS_AS(in.interrupt("len"), std::invalid_argument);
    CHECK_THROWS_AS(in.interrupt("isola.interpreter_id"), std::invalid_argument);
    CHECK_THROWS_AS(in.interrupt("no_such_module.Error"), std::invalid_argument);
  }

  // Usable afterwards, and nothing left pending for the next task.
  CHECK(in.eval("sum(range(1000))").as_int() == 499500);
  in.exec("for i in range(100000): pass");
  CHECK_FALSE(in.interrupt());
}

TEST_CASE("time.sleep keeps its contract", "[interpreter]") {
  isola::interpreter in;
  in.exec("import time\nt0 = time.monotonic()\ntime.sleep(0.01)\ntime.sleep(0)\n"
          "elapsed = time.monotonic() - t0");
  CHECK(in.get_global("elapsed").as_float() >= 0.01);  // it did sleep (not a speed limit)
  // Plain variables, not a structured binding: clang 14 cannot capture one in a lambda.
  for (const auto& c : {std::pair{"-1", "ValueError"}, std::pair{"float('nan')", "ValueError"},
                        std::pair{"'1'", "TypeError"}, std::pair{"None", "TypeError"}}) {
    const char* arg = c.first;
    const char* type = c.second;
    INFO("time.sleep(" << arg << ")");
    auto e = python_error_of([&] { in.exec(std::string("time.sleep(") + arg + ")"); });
    REQUIRE(e);
    CHECK(e->type_name() == type);
  }
  // In a thread the script starts (no worker), it still sleeps.
  in.exec("import threading\ndone = []\n"
          "t = threading.Thread(target=lambda: (time.sleep(0.001), done.append(1)))\n"
          "t.start()\nt.join()");
  CHECK(in.get_global("done") == value(isola::make_list(1)));
}

TEST_CASE("isola._interrupt_thread interrupts one thread, even asleep; the others sleep on",
          "[interpreter]") {
  isola::interpreter in;
  in.exec(R"(
import isola, threading, time
outcome = {}
ready = threading.Barrier(3)
def sleeper(name, seconds):
    ready.wait()
    t0 = time.monotonic()
    try:
        time.sleep(seconds)
        outcome[name] = ('slept', time.monotonic() - t0)
    except isola.TaskTimeout:
        outcome[name] = ('interrupted', time.monotonic() - t0)
target = threading.Thread(target=sleeper, args=('target', 60))
other = threading.Thread(target=sleeper, args=('other', 0.5))
target.start(); other.start()
ready.wait()
time.sleep(0.1)
found = isola._interrupt_thread(target.ident, 'isola.TaskTimeout')
target.join(); other.join()
cleared = isola._interrupt_thread(threading.get_ident(), None)
)");
  CHECK(in.eval("found").as_bool());
  CHECK(in.eval("outcome['target'][0]").as_str() == "interrupted");
  CHECK(in.eval("outcome['target'][1] < 30").as_bool());  // woken, not after its 60 s
  // The other sleeper was woken by the same notification and went back to sleep.
  CHECK(in.eval("outcome['other'][0]").as_str() == "slept");
  CHECK(in.eval("outcome['other'][1] >= 0.5").as_bool());
  CHECK_FALSE(in.eval("isola._interrupt_thread(1, 'isola.TaskTimeout')").as_bool());
  auto e = python_error_of([&] { in.exec("isola._interrupt_thread(1, 'NoSuchError')"); });
  REQUIRE(e);
  CHECK(e->type_name() == "ValueError");
}

TEST_CASE("close() ends the interpreter; what comes after is interpreter_closed", "[interpreter]") {
  auto before = rt().live_interpreters();
  isola::interpreter in;
  auto id = in.id();
  auto h = in.handle();
  CHECK(h.alive());
  CHECK_FALSE(in.closed());
  in.close();
  CHECK(in.closed());
  CHECK_FALSE(h.alive());
  CHECK(in.id() == id);
  CHECK(rt().live_interpreters() == before);
  CHECK_NOTHROW(in.close());  // idempotent
  CHECK(in.closed());

  const auto closed = std::error_code(isola::errc::interpreter_closed);
  temp_dir dir;
  write_file(dir.file("s.py"), "x = 1\n");
  CHECK(closed_code([&] { in.exec("x = 1"); }) == closed);
  CHECK(closed_code([&] { in.eval("1"); }) == closed);
  CHECK(closed_code([&] { in.call("builtins:len", "abc"); }) == closed);
  CHECK(closed_code([&] { in.set_global("x", 1); }) == closed);
  CHECK(closed_code([&] { in.get_global("x"); }) == closed);
  CHECK(closed_code([&] { in.run_file(dir.file("s.py")); }) == closed);
  CHECK(closed_code([&] { in.exec_async("x = 1"); }) == closed);
  CHECK(closed_code([&] { in.eval_async("1"); }) == closed);
  CHECK(closed_code([&] { in.call_async("builtins:len", "abc"); }) == closed);
  CHECK(closed_code([&] { in.get_global_async("x"); }) == closed);
  CHECK_FALSE(in.interrupt());

  try {
    in.eval("1");
    FAIL("eval after close did not throw");
  } catch (const isola::error& e) {
    CHECK_THAT(e.what(), Catch::Contains("interpreter " + std::to_string(id)));
  }
}

TEST_CASE("a handle outlives its interpreter", "[interpreter]") {
  isola::interpreter_handle h;
  CHECK_FALSE(h);
  CHECK(h.id() == -1);
  CHECK_FALSE(h.alive());
  std::int64_t id = 0;
  {
    isola::interpreter_config config;
    config.name = "short-lived";
    isola::interpreter in(config);
    h = in.handle();
    id = in.id();
    CHECK(h);
    CHECK(h.alive());
  }
  CHECK(h);
  CHECK(h.id() == id);
  CHECK_FALSE(h.alive());
  auto r = isola::attach(h);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == isola::errc::interpreter_closed);
  CHECK_THAT(r.error().message, Catch::Contains("short-lived"));
}

TEST_CASE("close() lets queued work finish first", "[interpreter]") {
  isola::interpreter in;
  std::vector<std::future<value>> results;
  results.push_back(in.eval_async("sum(range(2_000_000))"));
  for (int i = 0; i < 50; ++i) results.push_back(in.eval_async(std::to_string(i) + " * 2"));
  in.close();
  CHECK(results[0].get().as_int() == 1999999000000);
  for (int i = 0; i < 50; ++i) CHECK(results[i + 1].get().as_int() == i * 2);
}

TEST_CASE("closing from another thread while a caller waits", "[interpreter]") {
  isola::interpreter in;
  auto busy = in.exec_async("import time\nt = time.monotonic()\nwhile time.monotonic() - t < 0.2: pass");
  auto closer = std::async(std::launch::async, [&] { in.close(); });
  busy.get();  // the running task completes normally
  closer.get();
  CHECK(in.closed());
  auto code = isola_error_of([&] { in.eval("1"); });
  REQUIRE(code);
  CHECK(*code == isola::errc::interpreter_closed);
}

TEST_CASE("moving an interpreter", "[interpreter]") {
  isola::interpreter a;
  a.set_global("tag", "a");
  auto id = a.id();
  isola::interpreter b(std::move(a));
  CHECK(b.id() == id);
  CHECK(b.get_global("tag").as_str() == "a");
  CHECK(a.closed());  // NOLINT(bugprone-use-after-move): moved-from is defined as closed
  CHECK(a.id() == -1);
  CHECK_FALSE(a.handle());
  CHECK_THROWS_AS(a.eval("1"), std::logic_error);
  CHECK_THROWS_AS(a.close(), std::logic_error);

  isola::interpreter c;
  auto old = c.handle();
  c = std::move(b);  // c's own interpreter ends
  CHECK_FALSE(old.alive());
  CHECK(c.get_global("tag").as_str() == "a");
}

TEST_CASE("interpreter_config::validate refuses negative end bounds", "[interpreter]") {
  auto c = isola::interpreter_config::isolated();
  c.end_grace = std::chrono::milliseconds(-1);
  CHECK_THAT(c.validate(), Catch::Contains("end_grace"));
  CHECK_THROWS_AS(isola::interpreter(c), std::invalid_argument);
}

TEST_CASE("interpreter_config::validate names the conflict", "[interpreter]") {
  CHECK(isola::interpreter_config{}.validate().empty());
  CHECK(isola::interpreter_config::isolated().validate().empty());
  CHECK(isola::interpreter_config::legacy().validate().empty());

  isola::interpreter_config own_gil_main_alloc;
  own_gil_main_alloc.use_main_obmalloc = true;
  auto why = own_gil_main_alloc.validate();
  CHECK_THAT(why, Catch::Contains("use_main_obmalloc"));
  CHECK_THAT(why, Catch::Contains("own GIL"));
  CHECK_THROWS_WITH(isola::interpreter(own_gil_main_alloc), why);
  CHECK_THROWS_AS(isola::interpreter(own_gil_main_alloc), std::invalid_argument);

  isola::interpreter_config unchecked;
  unchecked.check_multi_interp_extensions = false;
  CHECK_THAT(unchecked.validate(), Catch::Contains("check_multi_interp_extensions"));

  isola::interpreter_config daemons;
  daemons.allow_threads = false;
  daemons.allow_daemon_threads = true;
  CHECK_THAT(daemons.validate(), Catch::Contains("allow_threads"));

  auto before = rt().live_interpreters();
  CHECK_THROWS(isola::interpreter(daemons));
  CHECK(rt().live_interpreters() == before);
}

TEST_CASE("the config reaches CPython", "[interpreter]") {
  SECTION("isolated (the default)") {
    isola::interpreter in;
    CHECK(in.config().gil == isola::interpreter_config::gil_mode::own);
    // Threads yes, daemon threads and fork no.
    in.exec("import threading\nout = []\nt = threading.Thread(target=out.append, args=(1,))\n"
            "t.start()\nt.join()");
    CHECK(in.get_global("out") == value(isola::make_list(1)));
    auto e = python_error_of([&] { in.exec("threading.Thread(target=print, daemon=True).start()"); });
    REQUIRE(e);
    CHECK(e->type_name() == "RuntimeError");
    e = python_error_of([&] { in.exec("import os\nos.fork()"); });
    REQUIRE(e);
    CHECK(e->type_name() == "RuntimeError");
    // The own-GIL workarounds are in place.
    CHECK(in.eval("__import__('sys').modules.get('_datetime', 'absent')").is_none());
    // Refusing single-phase extensions: test_cpython_test_modules.cpp.
  }
  SECTION("no threads") {
    isola::interpreter_config c;
    c.allow_threads = false;
    isola::interpreter in(c);
    auto e = python_error_of([&] { in.exec("import threading\nthreading.Thread(target=print).start()"); });
    REQUIRE(e);
    CHECK(e->type_name() == "RuntimeError");
  }
  SECTION("legacy: shared GIL and allocator, any extension") {
    isola::interpreter in(isola::interpreter_config::legacy());
    CHECK(in.config().gil == isola::interpreter_config::gil_mode::shared);
    CHECK(in.eval("__import__('isola').interpreter_id()").as_int() == in.id());
    CHECK(in.eval("sum(x * x for x in range(10))").as_int() == 285);
    CHECK(in.eval("__import__('sys').modules.get('_datetime', 'absent')").as_str() == "absent");
    in.exec("import json\ndata = json.loads('{\"a\": [1, 2]}')");
    CHECK(in.get_global("data") == value(isola::dict{{{value("a"), value(isola::make_list(1, 2))}}}));
    // Loading single-phase extensions: test_cpython_test_modules.cpp.
  }
  SECTION("extra sys.path entries come first") {
    isola::interpreter_config c;
    c.sys_path = {"/isola/test/first", "/isola/test/second"};
    c.name = "with-paths";
    isola::interpreter in(c);
    CHECK(in.config().name == "with-paths");
    CHECK(in.eval("__import__('sys').path[:2]") ==
          value(isola::make_list("/isola/test/first", "/isola/test/second")));
    CHECK(in.eval("__import__('sys').path.index('/isola/test/second') < "
                  "__import__('sys').path.index('" + py_dir() + "')").as_bool());
  }
}

TEST_CASE("guest code cannot end or fork the whole process unless the config allows it",
          "[interpreter]") {
  // Each call raises instead of ending the test process: CPython's os._exit(0) ends every
  // interpreter's work at once, unreported, with a successful exit status.
  auto refused = [](isola::interpreter& in, const std::string& call, const std::string& option) {
    auto e = python_error_of([&] { in.exec("import os, posix\n" + call); });
    INFO(call);
    REQUIRE(e);
    CHECK(e->type_name() == "RuntimeError");
    CHECK_THAT(e->message(), Catch::Contains("is refused in isola's interpreter"));
    CHECK_THAT(e->message(), Catch::Contains(option));
  };
  SECTION("isolated (own GIL)") {
    isola::interpreter in;
    refused(in, "os._exit(0)", "allow_os_exit");
    refused(in, "posix._exit(3)", "allow_os_exit");
    refused(in, "os.abort()", "allow_os_exit");
    refused(in, "os.fork()", "allow_fork");
    refused(in, "os.forkpty()", "allow_fork");
    CHECK(in.eval("1 + 1").as_int() == 2);  // and it goes on
  }
  SECTION("the shared-GIL lane") {
    isola::interpreter in(isola::interpreter_config::shared_gil());
    refused(in, "os._exit(0)", "allow_os_exit");
    refused(in, "os.fork()", "allow_fork");
    auto daemon = python_error_of([&] {
      in.exec("import threading\nthreading.Thread(target=int, daemon=True).start()\n");
    });
    REQUIRE(daemon);
    CHECK_THAT(daemon->message(), Catch::Contains("daemon threads are disabled"));
  }
  SECTION("allowed: CPython's own functions stay in place") {
    auto c = isola::interpreter_config::isolated();
    c.allow_os_exit = true;
    c.allow_fork = true;
    isola::interpreter in(c);
    in.exec("import os\n"
            "ours = [f.__name__ for f in (os._exit, os.abort, os.fork)\n"
            "        if 'isola' in (f.__doc__ or '')]\n");
    CHECK(in.get_global("ours").as_list().items.empty());
    isola::interpreter legacy(isola::interpreter_config::legacy());
    legacy.exec("import os\nours = 'isola' in (os._exit.__doc__ or '')\n");
    CHECK_FALSE(legacy.get_global("ours").as_bool());
  }
}

TEST_CASE("ending an interpreter ends the threads its code left running", "[interpreter]") {
  // A non-daemon thread (Py_EndInterpreter would wait for it for ever) and a daemon thread of
  // a legacy interpreter (Py_EndInterpreter would abort: "not the last thread") both get
  // SystemExit, which wakes their time.sleep; their finally blocks show it.
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  for (bool legacy : {false, true}) {
    auto c = legacy ? isola::interpreter_config::legacy() : isola::interpreter_config::isolated();
    c.end_timeout = std::chrono::milliseconds(legacy ? 60000 : 100);  // daemons: not waited for
    isola::interpreter in(c);
    in.exec("import os, threading, time\n"
            "def work():\n"
            "    try:\n"
            "        while True:\n"
            "            time.sleep(0.01)\n"
            "    except SystemExit:\n"
            "        os.write(" + std::to_string(fds[1]) + ", b'x')\n"
            "        raise\n"
            "threading.Thread(target=work, daemon=" + (legacy ? "True" : "False") + ").start()\n");
    in.close();
    INFO("legacy: " << legacy);
    CHECK(in.closed());
    char byte = 0;
    CHECK(read(fds[0], &byte, 1) == 1);
    CHECK(byte == 'x');
    CHECK(isola::runtime::abandoned_interpreters() == 0);
  }
  close(fds[0]);
  close(fds[1]);
}

TEST_CASE("a moved-from interpreter says so; move-assignment never throws", "[interpreter]") {
  isola::interpreter a;
  isola::interpreter b(std::move(a));
  CHECK_THROWS_AS(a.config(), std::logic_error);  // NOLINT(bugprone-use-after-move)
  CHECK(b.config().gil == isola::interpreter_config::gil_mode::own);
  // Move-assigning over an interpreter from a thread attached to it: closing it there cannot
  // wait for itself, and a noexcept operator= must not throw that out (std::terminate).
  auto r = run_child({"move-assign-attached"}, 60);
  INFO(r.describe());
  REQUIRE_FALSE(r.hung);
  CHECK(r.signal == 0);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("assigned\n") != std::string::npos);
  CHECK(r.output.find("new one works: 1") != std::string::npos);
}
