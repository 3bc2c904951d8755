// Safe attach: plain C++ threads entering interpreters through the CPython API, nesting,
// visiting a second interpreter and coming back, and the refusals while and after an
// interpreter closes.
#include "lib/python.hpp"

#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <future>
#include <thread>

using namespace isola_test;
using isola::detail::current_tstate;

namespace {

std::int64_t current_interp_id() {
  return PyInterpreterState_GetID(PyInterpreterState_Get());
}

// Runs Python statements in the __main__ of the interpreter the thread is attached to.
bool run(const std::string& code) { return PyRun_SimpleString(code.c_str()) == 0; }

isola::errc code_of(const isola::attach_result& r) { return r.error().code; }

}  // namespace

TEST_CASE("a plain std::thread attaches and runs Python", "[attach]") {
  isola::interpreter in;
  auto h = in.handle();
  thread_failures failures;
  std::thread t([&] {
    failures.check(current_tstate() == nullptr, "thread started attached");
    {
      auto g = isola::attach(h);
      if (!g) return failures.fail("attach failed: " + g.error().message);
      failures.check(g->interpreter_id() == in.id(), "guard reports the wrong id");
      failures.check(current_tstate() != nullptr, "no thread state while attached");
      failures.check(current_interp_id() == in.id(), "attached to the wrong interpreter");
      failures.check(run("from_thread = __import__('isola').interpreter_id()"), "PyRun failed");
    }
    failures.check(current_tstate() == nullptr, "thread state left behind by the guard");
  });
  t.join();
  INFO(failures.first);
  CHECK(failures.count == 0);
  CHECK(in.get_global("from_thread").as_int() == in.id());
}

TEST_CASE("many threads attach to one interpreter at once", "[attach]") {
  isola::interpreter in;
  in.exec("count = 0");
  auto h = in.handle();
  thread_failures failures;
  std::vector<std::thread> threads;
  constexpr int n = 8, rounds = 50;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&] {
      for (int r = 0; r < rounds; ++r) {
        auto g = isola::attach(h);
        if (!g) return failures.fail(g.error().message);
        failures.check(run("count += 1"), "PyRun failed");
      }
    });
  }
  // The worker takes its share of the same GIL meanwhile.
  for (int r = 0; r < rounds; ++r) in.exec("count += 1");
  for (auto& t : threads) t.join();
  INFO(failures.first);
  CHECK(failures.count == 0);
  CHECK(in.get_global("count").as_int() == (n + 1) * rounds);
}

TEST_CASE("attach while the worker runs Python", "[attach]") {
  isola::interpreter in;
  in.exec("stop = False");
  auto loop = in.exec_async("spins = 0\nwhile not stop:\n    spins += 1\n");
  {
    auto g = isola::attach(in.handle());  // waits for the GIL like any Python thread
    REQUIRE(g.has_value());
    CHECK(run("stop = True"));
  }
  loop.get();  // ends only because the attached thread set stop
  CHECK(in.get_global("stop").as_bool());
}

TEST_CASE("nested attach to the same interpreter reuses the thread state", "[attach]") {
  isola::interpreter in;
  auto outer = isola::attach(in.handle());
  REQUIRE(outer.has_value());
  PyThreadState* ts = current_tstate();
  REQUIRE(ts != nullptr);
  {
    auto inner = isola::attach(in.handle());
    REQUIRE(inner.has_value());
    CHECK(current_tstate() == ts);
    CHECK(inner->interpreter_id() == in.id());
    CHECK(run("nested = 1"));
    {
      auto innermost = isola::attach(in.handle());
      REQUIRE(innermost.has_value());
      CHECK(current_tstate() == ts);
    }
    CHECK(current_tstate() == ts);
  }
  // The outer attach is intact.
  CHECK(current_tstate() == ts);
  CHECK(current_interp_id() == in.id());
  CHECK(run("nested += 1"));
  // Blocking calls to the interpreter this thread is attached to run inline.
  in.exec("nested += 1");
  CHECK(in.eval("nested").as_int() == 3);
  CHECK(in.get_global("nested").as_int() == 3);
}

TEST_CASE("attach to B while attached to A, and back", "[attach]") {
  isola::interpreter a, b;
  {
    auto ga = isola::attach(a.handle());
    REQUIRE(ga.has_value());
    PyThreadState* ts_a = current_tstate();
    CHECK(run("where = 'a'"));
    {
      auto gb = isola::attach(b.handle());
      REQUIRE(gb.has_value());
      CHECK(current_interp_id() == b.id());
      CHECK(current_tstate() != ts_a);
      CHECK(run("where = 'b'"));
      CHECK(b.eval("where").as_str() == "b");  // inline: this thread is attached to b
      {
        auto ga2 = isola::attach(a.handle());  // a third level: back to a, a new thread state
        REQUIRE(ga2.has_value());
        CHECK(current_interp_id() == a.id());
        CHECK(run("visits = 1"));
      }
      CHECK(current_interp_id() == b.id());
    }
    CHECK(current_tstate() == ts_a);
    CHECK(current_interp_id() == a.id());
    CHECK(run("where += '!'"));
  }
  CHECK(current_tstate() == nullptr);
  CHECK(a.get_global("where").as_str() == "a!");
  CHECK(a.get_global("visits").as_int() == 1);
  CHECK(b.get_global("where").as_str() == "b");
}

TEST_CASE("the main interpreter can be attached", "[attach]") {
  auto h = rt().main_interpreter();
  CHECK(h.id() == 0);
  CHECK(h.alive());
  isola::interpreter sub;
  thread_failures failures;
  std::thread t([&] {
    auto g = isola::attach(h);
    if (!g) return failures.fail(g.error().message);
    failures.check(g->interpreter_id() == 0, "guard id is not 0");
    failures.check(current_interp_id() == 0, "not in the main interpreter");
    failures.check(run("import isola\nmain_saw = isola.interpreter_id()"), "PyRun failed");
    failures.check(run("assert main_saw == 0"), "isola.interpreter_id() in main is not 0");
    {
      auto gs = isola::attach(sub.handle());  // main -> sub -> main
      if (!gs) return failures.fail(gs.error().message);
      failures.check(current_interp_id() == sub.id(), "not in the subinterpreter");
      failures.check(run("sub_mark = 1"), "PyRun in the subinterpreter failed");
    }
    failures.check(current_interp_id() == 0, "not back in main");
    failures.check(run("assert 'sub_mark' not in globals()"), "main sees the sub's globals");
  });
  t.join();
  INFO(failures.first);
  CHECK(failures.count == 0);
  CHECK(sub.get_global("sub_mark").as_int() == 1);
}

TEST_CASE("a guard can be moved", "[attach]") {
  isola::interpreter in;
  auto r = isola::attach(in.handle());
  REQUIRE(r.has_value());
  isola::attach_guard moved(std::move(*r));
  CHECK(moved.interpreter_id() == in.id());
  CHECK(r->interpreter_id() == -1);  // NOLINT(bugprone-use-after-move)
  CHECK(current_interp_id() == in.id());
}

TEST_CASE("attach refuses an empty handle and a closed interpreter", "[attach]") {
  auto empty = isola::attach(isola::interpreter_handle{});
  REQUIRE_FALSE(empty.has_value());
  CHECK(code_of(empty) == isola::errc::interpreter_closed);
  CHECK_THAT(empty.error().message, Catch::Contains("empty"));
  CHECK(current_tstate() == nullptr);

  isola::interpreter in;
  auto h = in.handle();
  in.close();
  auto r = isola::attach(h);
  REQUIRE_FALSE(r.has_value());
  CHECK(code_of(r) == isola::errc::interpreter_closed);
  CHECK_THAT(r.error().message, Catch::Contains(std::to_string(h.id())));
  CHECK(current_tstate() == nullptr);

  // value() on a failed attach throws isola::error carrying the code.
  try {
    auto g = isola::attach(h).value();
    FAIL("value() did not throw");
  } catch (const isola::error& e) {
    CHECK(e.code() == isola::errc::interpreter_closed);
    CHECK_THAT(e.what(), Catch::Contains("has ended"));
  }
  CHECK_THROWS_AS(isola::attach(isola::interpreter_handle{}).value(), isola::error);
}

TEST_CASE("attach while the interpreter closes, and after", "[attach]") {
  isola::interpreter in;
  auto h = in.handle();
  std::atomic<bool> holding{false}, probe{false}, probed{false}, release{false};
  std::atomic<bool> nested_ok{false};
  thread_failures failures;

  std::thread holder([&] {
    auto g = isola::attach(h);
    if (!g) {
      failures.fail("holder could not attach: " + g.error().message);
      holding = probed = true;
      return;
    }
    holding = true;
    while (!probe) std::this_thread::yield();
    {
      // Already inside: a nested attach still works while the interpreter is closing.
      auto nested = isola::attach(h);
      nested_ok = nested.has_value() && run("x = 1");
    }
    probed = true;
    while (!release) std::this_thread::yield();
  });
  while (!holding) std::this_thread::yield();

  auto closing = std::async(std::launch::async, [&] { in.close(); });
  while (h.alive()) std::this_thread::yield();  // close() has begun

  auto r = isola::attach(h);
  REQUIRE_FALSE(r.has_value());
  CHECK(code_of(r) == isola::errc::interpreter_closing);
  CHECK_THAT(r.error().message, Catch::Contains("closing"));
  auto code = isola_error_of([&] { in.eval("1"); });
  REQUIRE(code);
  CHECK(*code == isola::errc::interpreter_closing);
  CHECK_FALSE(in.closed());
  probe = true;
  while (!probed) std::this_thread::yield();
  CHECK(nested_ok);
  // close() cannot finish while the holder's guard lives.
  CHECK(closing.wait_for(std::chrono::seconds(0)) != std::future_status::ready);

  release = true;
  holder.join();
  closing.get();
  INFO(failures.first);
  CHECK(failures.count == 0);
  CHECK(in.closed());
  auto after = isola::attach(h);
  REQUIRE_FALSE(after.has_value());
  CHECK(code_of(after) == isola::errc::interpreter_closed);
}

TEST_CASE("close() from a thread attached to the interpreter is a logic_error", "[attach]") {
  isola::interpreter in;
  {
    auto g = isola::attach(in.handle());
    REQUIRE(g.has_value());
    CHECK_THROWS_AS(in.close(), std::logic_error);
  }
  CHECK_FALSE(in.closed());
  CHECK(in.eval("'still open'").as_str() == "still open");
}
