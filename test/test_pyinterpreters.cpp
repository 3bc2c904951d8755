// Interpreters from Python (isola.interpreters, CPython 3.14's names) and isola.PoolExecutor:
// exec, call, failures, closing (running, twice, the current one, the creator), handles and
// lifetimes, and the executor's results, exceptions, cancel and shutdown. Each case runs the
// Python side (test/py/isola_test_interpreters.py) in an isola interpreter.
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <isola/channel.hpp>

#include <algorithm>
#include <string>

using namespace isola_test;
using isola::value;

namespace {

constexpr const char* helpers = "isola_test_interpreters:";

value run(isola::interpreter& host, const std::string& function, std::vector<value> args = {}) {
  return host.call_with(helpers + function, std::move(args));
}

const value& at(const value& dict, const char* key) {
  const value* v = dict.find(key);
  INFO("key " << key << " in " << dict.repr());
  REQUIRE(v != nullptr);
  return *v;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

bool has_id(const value& ids, std::int64_t id) {
  const auto& items = ids.as_list().items;
  return std::any_of(items.begin(), items.end(), [&](const value& v) { return v.as_int() == id; });
}

}  // namespace

TEST_CASE("isola.interpreters: create, exec, call, prepare_main, call_in_thread, list_all",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto r = run(host, "basics").as_list().items;
  const auto child = r[0].as_int();
  CHECK(child != host.id());
  CHECK(r[1].as_str() == "Interpreter(" + std::to_string(child) + ")");
  CHECK(has_id(r[2], 0));
  CHECK(has_id(r[2], host.id()));
  // The child is an isola interpreter like any other: the C++ side sees it too.
  CHECK(rt().main_interpreter().id() == 0);
}

TEST_CASE("isola.interpreters: a closure cannot travel; the error says why",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto msg = run(host, "closure_refused").as_str();
  CHECK(contains(msg, "'closure_refused.<locals>.inner'"));
  CHECK(contains(msg, "closure"));
}

TEST_CASE("isola.interpreters: failures raise ExecutionFailed with CPython's excinfo",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto out = run(host, "failures");
  auto exec = at(out, "exec").as_list().items;
  CHECK(exec[0].as_str() == "KeyError");
  CHECK(exec[1].as_str() == "builtins");
  CHECK(exec[2].as_str() == "'k'");
  CHECK(exec[3].as_str() == "KeyError: 'k'");
  const auto& display = exec[4].as_str();
  CHECK(display.rfind("Traceback (most recent call last):", 0) == 0);
  CHECK(contains(display, "File \"<string>\", line 2, in f"));
  CHECK(!contains(display, "xi"));  // isola's helper frame is not shown
  const auto& text = exec[5].as_str();
  CHECK(text.rfind("KeyError: 'k'\n\nUncaught in the interpreter:\n\nTraceback", 0) == 0);

  auto call = at(out, "call").as_list().items;
  CHECK(call[0].as_str() == "ValueError");
  CHECK(call[1].as_str() == "bad");
  CHECK(contains(call[2].as_str(), "in fail"));
  CHECK(at(out, "syntax").as_str() == "SyntaxError");
  CHECK(contains(at(out, "type").as_str(), "not int"));
}

TEST_CASE("isola.interpreters: closing a running one, twice, the current one, main, a creator",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto out = run(host, "closing", {"pyinterp-closing"});
  auto running = at(out, "running").as_list().items;
  CHECK(running[0].as_str() == "InterpreterError");
  CHECK(running[1].as_str() == "interpreter running");
  CHECK(at(out, "exec_running").as_str() == "interpreter already running");
  CHECK(contains(at(out, "twice").as_str(), "unrecognized interpreter ID"));
  CHECK(contains(at(out, "closed_is_running").as_str(), "unrecognized interpreter ID"));
  CHECK(at(out, "current").as_str() == "cannot destroy the current interpreter");
  auto main = at(out, "main").as_list().items;
  CHECK(main[0].as_str() == "InterpreterError");
  CHECK(contains(main[1].as_str(), "unrecognized interpreter 0"));
  CHECK(contains(at(out, "main_exec").as_str(), "cannot exec code for unrecognized interpreter 0"));
  CHECK(contains(at(out, "close_creator").as_str(), "InterpreterError: cannot destroy interpreter"));
  CHECK(contains(at(out, "close_creator").as_str(), "it made the current interpreter"));
  CHECK(at(out, "grandchild_gone").as_bool());
}

TEST_CASE("isola.interpreters: the last handle in its creator closes an interpreter",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto r = run(host, "last_handle_closes").as_list().items;
  CHECK(r[0].as_bool());   // alive while the handle was
  CHECK(r[1].as_bool());   // gone after
  CHECK(!r[2].as_bool());  // Interpreter(id) then finds none
}

TEST_CASE("isola.interpreters: an interpreter's children end with it, even a running one",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto ids = run(host, "make_children", {3});
  const auto endless = run(host, "start_endless_child").as_int();
  isola::interpreter observer;
  auto before = run(observer, "live_ids");
  for (const auto& id : ids.as_list().items) CHECK(has_id(before, id.as_int()));
  CHECK(has_id(before, endless));
  // The endless child gets SystemExit when its creator ends; close() returns.
  host.close();
  auto after = run(observer, "live_ids");
  for (const auto& id : ids.as_list().items) CHECK_FALSE(has_id(after, id.as_int()));
  CHECK_FALSE(has_id(after, endless));
  CHECK(isola::runtime::abandoned_interpreters() == 0);
}

TEST_CASE("isola.PoolExecutor: results from submit and map", "[pyinterpreters]") {
  isola::interpreter host;
  auto r = run(host, "executor_results").as_list().items;
  auto results = r[0].as_list().items;
  REQUIRE(results.size() == 20);
  for (std::size_t i = 0; i < results.size(); ++i) CHECK(results[i].as_int() == int(i) + 1);
  CHECK(r[1] == value(isola::make_list(0, 2, 4, 6, 8, 10, 12, 14, 16, 18)));
  CHECK(r[2] == value(isola::make_list(0, 2, 4, 6, 8)));
  CHECK(r[3].as_int() == 15);
  CHECK(r[4].as_str() == "cannot schedule new futures after shutdown");
}

TEST_CASE("isola.PoolExecutor: a task's exception arrives as itself, ExecutionFailed as cause",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto out = run(host, "executor_exceptions");
  CHECK(at(out, "type").as_str() == "ValueError");
  CHECK(at(out, "msg").as_str() == "boom");
  CHECK(at(out, "cause").as_str() == "ExecutionFailed");
  CHECK(contains(at(out, "cause_display").as_str(), "in fail"));
  auto unpicklable = at(out, "unpicklable").as_list().items;
  CHECK(unpicklable[0].as_str() == "ExecutionFailed");
  CHECK(unpicklable[1].as_str() == "Unpicklable");
  CHECK(at(out, "closure").as_str() == "PicklingError");
  CHECK(at(out, "script").as_str() == "scripts not supported");
  CHECK(at(out, "after").as_int() == 42);
}

TEST_CASE("isola.PoolExecutor: cancel() cancels a queued task, not a running one",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto out = run(host, "executor_cancel", {"pyinterp-cancel"});
  CHECK_FALSE(at(out, "cancel_running").as_bool());
  CHECK(at(out, "cancel_queued").as_bool());
  CHECK(at(out, "queued_cancelled").as_bool());
  CHECK(at(out, "running_result").as_str() == "released");
  CHECK(at(out, "queued_done").as_bool());
}

TEST_CASE("isola.PoolExecutor: shutdown with pending work, with and without cancel_futures",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto out = run(host, "executor_shutdown_pending", {"pyinterp-shutdown"});
  CHECK(at(out, "finished") == value(isola::make_list("a", 0, 2, 4, 6, 8)));
  CHECK(at(out, "cancelled") == value(isola::make_list(true, true, true, true, true)));
  CHECK(at(out, "first").as_str() == "b");
  CHECK_FALSE(at(out, "collector_alive").as_bool());
}

TEST_CASE("isola.PoolExecutor: dropped without shutdown, its work finishes and its thread ends",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto r = run(host, "executor_dropped", {"pyinterp-dropped"}).as_list().items;
  CHECK(r[0] == value(isola::make_list("done", 8)));
  CHECK_FALSE(r[1].as_bool());  // the collector thread ended
}

TEST_CASE("isola.PoolExecutor: initializer runs in every interpreter; a failing one breaks it",
          "[pyinterpreters]") {
  isola::interpreter host;
  auto r = run(host, "executor_initializer").as_list().items;
  CHECK(r[0] == value(isola::make_list("yes")));
  CHECK(contains(r[1].as_str(), "an initializer failed"));
  CHECK(contains(r[1].as_str(), "init failed"));
}

TEST_CASE("isola.PoolExecutor: the calling interpreter ends while a task runs",
          "[pyinterpreters]") {
  isola::interpreter host;
  CHECK(run(host, "executor_left_running", {"pyinterp-left"}).as_bool());
  // Ending interrupts the running task and cancels the queued one; nothing hangs.
  host.close();
  CHECK(isola::runtime::abandoned_interpreters() == 0);
}
