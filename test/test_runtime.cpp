// isola::runtime: one per process, the main interpreter, live-interpreter bookkeeping,
// create/destroy cycles, last-in first-out teardown (in a child process), the `isola` module.
#include "lib/python.hpp"

#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <algorithm>
#include <sstream>

using namespace isola_test;

TEST_CASE("the runtime is running and reports CPython's version", "[runtime]") {
  CHECK(isola::runtime::running());
  std::string v = isola::runtime::python_version();
  isola::interpreter in;
  auto expected = in.eval("'%d.%d.%d' % __import__('sys').version_info[:3]").as_str();
  CHECK(v == expected);
  CHECK(v.rfind("3.", 0) == 0);
}

TEST_CASE("runtime options reach the main interpreter and every interpreter", "[runtime]") {
  CHECK(rt().options().program_name == "isola_tests");
  isola::interpreter in;
  // runtime_options::sys_path is put in front of every interpreter's sys.path.
  in.set_global("wanted", py_dir());
  CHECK(in.eval("wanted in __import__('sys').path").as_bool());
  CHECK(in.eval("__import__('isola_test_helpers').add(2, 3)").as_int() == 5);

  // ...and of the main interpreter's, where runtime_options::argv is sys.argv.
  auto g = isola::attach(rt().main_interpreter());
  REQUIRE(g.has_value());
  CHECK(g->interpreter_id() == 0);
  PyObject* argv = PySys_GetObject("argv");  // borrowed
  REQUIRE(argv != nullptr);
  REQUIRE(PyList_Check(argv));
  REQUIRE(PyList_Size(argv) == 2);
  CHECK(std::string(PyUnicode_AsUTF8(PyList_GetItem(argv, 1))) == "--from-main");
  auto dir = PyUnicode_FromString(py_dir().c_str());
  CHECK(PySequence_Contains(PySys_GetObject("path"), dir) == 1);
  Py_DECREF(dir);
}

TEST_CASE("a second runtime in the same process is a std::logic_error", "[runtime]") {
  CHECK_THROWS_AS(isola::runtime(), std::logic_error);
  CHECK(isola::runtime::running());  // the failed attempt left the real one alone
  isola::interpreter in;
  CHECK(in.eval("1 + 1").as_int() == 2);
}

TEST_CASE("a second runtime is refused after the first ended too", "[runtime]") {
  auto r = run_child({"second-runtime"});
  INFO(r.describe());
  REQUIRE(r.exit_code == 0);
  CHECK(r.output.find("while alive: logic_error: ") != std::string::npos);
  CHECK(r.output.find("first still works: 42") != std::string::npos);
  CHECK(r.output.find("after end: logic_error: ") != std::string::npos);
}

TEST_CASE("without a runtime an interpreter cannot be created", "[runtime]") {
  auto r = run_child({"no-runtime"});
  INFO(r.describe());
  REQUIRE(r.exit_code == 0);
  CHECK(r.output.find("running: 0") != std::string::npos);
  CHECK(r.output.find("interpreter: no_runtime: ") != std::string::npos);
}

TEST_CASE("live_interpreters counts interpreters until they end", "[runtime]") {
  auto before = rt().live_interpreters();
  {
    isola::interpreter a, b;
    CHECK(rt().live_interpreters() == before + 2);
    a.close();
    CHECK(rt().live_interpreters() == before + 1);
  }
  CHECK(rt().live_interpreters() == before);
}

TEST_CASE("200 interpreters created and destroyed one after another", "[runtime]") {
  auto before = rt().live_interpreters();
  std::int64_t last_id = 0;
  bool ids_increase = true;
  for (int i = 0; i < 200; ++i) {
    isola::interpreter in;
    ids_increase = ids_increase && in.id() > last_id;
    last_id = in.id();
    // Catch's assertion macros are slow enough to dominate; assert only on a mismatch.
    auto v = in.eval("sum(range(10)) + " + std::to_string(i));
    if (v.as_int() != 45 + i) {
      FAIL("cycle " << i << ": eval gave " << v.repr());
    }
  }
  CHECK(ids_increase);
  CHECK(rt().live_interpreters() == before);
}

TEST_CASE("interpreters created in parallel from several threads", "[runtime]") {
  auto before = rt().live_interpreters();
  thread_failures failures;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int i = 0; i < 10; ++i) {
          isola::interpreter in;
          auto v = in.eval("__import__('isola').interpreter_id()");
          failures.check(v.as_int() == in.id(), "thread " + std::to_string(t) + ": wrong id");
        }
      } catch (const std::exception& e) {
        failures.fail(e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  INFO(failures.first);
  CHECK(failures.count == 0);
  CHECK(rt().live_interpreters() == before);
}

TEST_CASE("threading's main thread is the runtime's, whichever thread imports it first",
          "[runtime]") {
  // Python's threading module takes the thread that first imports it for the main thread. If
  // that is a thread attached to the main interpreter for a while, threading.main_thread()
  // names the wrong thread, and CPython 3.12 reports "Exception ignored in
  // threading._shutdown: assert tlock.locked()" at exit (that thread's state is gone).
  auto r = run_child({"main-threading"});
  INFO(r.describe());
  REQUIRE(r.exit_code == 0);
  CHECK(r.output.find("outcome: ran") != std::string::npos);
  CHECK(r.output.find("attached_is_main: False") != std::string::npos);
  CHECK(r.output.find("main_thread_alive: True") != std::string::npos);
  CHECK(r.output.find("Exception ignored") == std::string::npos);
  CHECK(r.output.find("Traceback") == std::string::npos);
}

TEST_CASE("the runtime ends interpreters newest first", "[runtime]") {
  temp_dir dir;
  auto file = dir.file("atexit-order");
  auto r = run_child({"lifo", file});
  INFO(r.describe());
  REQUIRE(r.exit_code == 0);

  // "created: 1 2 3" in creation order; each atexit handler appended its id as its
  // interpreter ended.
  auto at = r.output.find("created: ");
  REQUIRE(at != std::string::npos);
  std::istringstream created(r.output.substr(at + 9, r.output.find('\n', at) - at - 9));
  std::vector<long> ids;
  for (long id; created >> id;) ids.push_back(id);
  REQUIRE(ids.size() == 3);
  CHECK(std::is_sorted(ids.begin(), ids.end()));

  std::istringstream ended(read_file(file));
  std::vector<long> order;
  for (long id; ended >> id;) order.push_back(id);
  std::vector<long> newest_first(ids.rbegin(), ids.rend());
  CHECK(order == newest_first);

  // Interpreter objects that outlive the runtime are closed, refuse work, and are safe to
  // destroy.
  CHECK(r.output.find("live: 3") != std::string::npos);
  CHECK(r.output.find("running: 0") != std::string::npos);
  for (int i = 0; i < 3; ++i) {
    auto n = std::to_string(i);
    CHECK(r.output.find("closed " + n + ": 1") != std::string::npos);
    CHECK(r.output.find("alive " + n + ": 0") != std::string::npos);
    CHECK(r.output.find("attach " + n + ": no_runtime") != std::string::npos);
    CHECK(r.output.find("eval " + n + ": interpreter_closed") != std::string::npos);
  }
  CHECK(r.output.find("destroyed: 1") != std::string::npos);
}

TEST_CASE("attach during runtime shutdown reports runtime_finalizing", "[runtime]") {
  // A thread stays attached to interpreter a while the runtime's destructor runs (it waits for
  // that thread); meanwhile attaching anywhere is refused at once, not blocked.
  auto r = run_child({"finalizing-attach"});
  INFO(r.describe());
  REQUIRE(r.exit_code == 0);
  CHECK(r.output.find("during a: runtime_finalizing") != std::string::npos);
  CHECK(r.output.find("during main: runtime_finalizing") != std::string::npos);
  CHECK(r.output.find("after a: no_runtime") != std::string::npos);
  CHECK(r.output.find("after b: no_runtime") != std::string::npos);
  CHECK(r.output.find("after main: no_runtime") != std::string::npos);
}

TEST_CASE("an interpreter destroyed from a thread attached to it ends at shutdown", "[runtime]") {
  // The destructor cannot wait for its own caller's guard: it leaves the interpreter to the
  // runtime, which ends it with the others.
  temp_dir dir;
  auto file = dir.file("ended");
  auto r = run_child({"destroy-attached", file});
  INFO(r.describe());
  REQUIRE(r.exit_code == 0);
  CHECK(r.output.find("destroyed while attached") != std::string::npos);
  CHECK(r.output.find("alive inside: 1") != std::string::npos);
  CHECK(r.output.find("alive after: 1") != std::string::npos);
  CHECK(r.output.find("live: 1") != std::string::npos);
  auto at = r.output.find("id: ");
  REQUIRE(at != std::string::npos);
  auto id = r.output.substr(at + 4, r.output.find('\n', at) - at - 4);
  CHECK(read_file(file) == "ended " + id + "\n");
}

TEST_CASE("the isola module: interpreter_id, log, __version__", "[runtime]") {
  isola::interpreter in;
  CHECK(in.eval("__import__('isola').interpreter_id()").as_int() == in.id());
  CHECK(in.eval("__import__('isola').__version__").as_str() == ISOLA_VERSION);
  in.exec("import isola; isola.log('debug', 'hello from a test'); isola.log(10, 'numeric level')");

  auto e = python_error_of([&] { in.exec("isola.log('loud', 'x')"); });
  REQUIRE(e);
  CHECK(e->type_name() == "ValueError");
  e = python_error_of([&] { in.exec("isola.log('info')"); });
  REQUIRE(e);
  CHECK(e->type_name() == "TypeError");
  e = python_error_of([&] { in.exec("isola.log(None, 'x')"); });
  REQUIRE(e);
  CHECK(e->type_name() == "TypeError");
}

TEST_CASE("set_log_level accepts spdlog's names and refuses others", "[runtime]") {
  CHECK_NOTHROW(isola::set_log_level("warn"));
  CHECK_THROWS_AS(isola::set_log_level("loud"), std::invalid_argument);
  CHECK(isola::logger("isola.test")->name() == "isola.test");
  isola::set_log_level(spdlog::level::warn);
}

// ---- what guest code leaves behind when its interpreter ends -----------------------------------
// Each scenario runs in isola_test_child (see end_scenario there), with a bounded wait: a
// hang shows as `hung`, an abort as a signal.

namespace {

struct end_expectation {
  const char* kind;
  const char* task;        ///< the task's outcome, or nullptr if the scenario has no task
  int abandoned;           ///< interpreters abandoned when the C++ call returned
  const char* log;         ///< a line the scenario must log, or nullptr
};

}  // namespace

TEST_CASE("ending an interpreter never hangs or aborts on what its code left running",
          "[runtime]") {
  const end_expectation cases[] = {
      // ~runtime with a task running: SystemExit ends it, its future fails with
      // runtime_finalizing.
      {"runtime-busy", "runtime_finalizing", 0, "raising SystemExit in it"},
      // ... and a task stuck in C code is abandoned; CPython is not finalized under it.
      {"runtime-stuck", "runtime_finalizing", 1, "CPython is left initialized"},
      {"pool-busy", "runtime_finalizing", 0, "raising SystemExit in it"},
      {"pool-stuck", "runtime_finalizing", 1, "CPython is left initialized"},
      // close() with threads left running: SystemExit after end_timeout, they end.
      {"thread-left", nullptr, 0, "raising SystemExit in 1 thread(s) its code left running: "
                                  "'left-behind' in work"},
      // ... a thread that ignores it: abandoned after end_grace, named.
      {"thread-ignores", nullptr, 1, "did not stop on SystemExit within end_grace: 'stubborn'"},
      // Threads Py_EndInterpreter does not wait for make it abort ("not the last thread").
      {"raw-thread", nullptr, 0, "(not a threading.Thread)"},
      {"legacy-daemon", nullptr, 0, "(daemon)"},
      // An atexit handler that never returns: abandoned by close()'s own bound.
      {"atexit-loop", nullptr, 1, "an atexit handler or __del__ that does not return"},
  };
  for (const auto& c : cases) {
    auto r = run_child({"end", c.kind}, 60);
    INFO(c.kind << ": " << r.describe());
    REQUIRE_FALSE(r.hung);
    CHECK(r.signal == 0);
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("returned\n") != std::string::npos);
    if (c.task != nullptr) {
      CHECK(r.output.find(std::string("task: ") + c.task + "\n") != std::string::npos);
    }
    CHECK(r.output.find("abandoned: " + std::to_string(c.abandoned) + "\n") != std::string::npos);
    if (c.log != nullptr) CHECK(r.output.find(c.log) != std::string::npos);
    CHECK(r.output.find("Fatal Python error") == std::string::npos);
  }
}

TEST_CASE("a child forked where fork is allowed exits instead of hanging in isola's teardown",
          "[runtime]") {
  // CPython ends a child forked from a subinterpreter with a fatal error and exit(1); its exit
  // handlers must not wait on the log thread pool, which does not exist in the child.
  auto r = run_child({"end", "fork-allowed"}, 60);
  INFO(r.describe());
  REQUIRE_FALSE(r.hung);
  CHECK(r.exit_code == 0);
  // exit(1), or LeakSanitizer's status in a sanitizer build (the child's exit runs it).
  CHECK(r.output.find("forked child exited: ") != std::string::npos);
  CHECK(r.output.find("forked child: hung") == std::string::npos);
}

TEST_CASE("a pool's queued tasks fail with runtime_finalizing when the runtime ends", "[runtime]") {
  auto r = run_child({"end", "pool-busy"}, 60);
  INFO(r.describe());
  REQUIRE_FALSE(r.hung);
  CHECK(r.output.find("queued: runtime_finalizing\n") != std::string::npos);
}
