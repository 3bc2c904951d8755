// Errors at the boundary: the "isola" error category, python_error's fields, and how Python
// exceptions (raise, custom classes, SystemExit, SyntaxError, bad call targets) come
// out of an interpreter that stays usable afterwards.
#include <catch2/catch.hpp>

#include "test/support.hpp"


using namespace isola_test;

TEST_CASE("isola::errc travels as std::error_code of category \"isola\"", "[error]") {
  std::error_code ec = isola::errc::interpreter_closed;  // is_error_code_enum
  CHECK(ec.category() == isola::error_category());
  CHECK(std::string(isola::error_category().name()) == "isola");
  CHECK(ec.message() == "interpreter is closed");
  CHECK(isola::make_error_code(isola::errc::interpreter_closing).message() ==
        "interpreter is closing");
  CHECK(isola::make_error_code(isola::errc::creation_failed).value() ==
        static_cast<int>(isola::errc::creation_failed));
  CHECK(ec != isola::make_error_code(isola::errc::interpreter_closing));
  for (int c = 1; c <= static_cast<int>(isola::errc::creation_failed); ++c) {
    CHECK(isola::error_category().message(c).find("unknown") == std::string::npos);
  }
  CHECK(isola::error_category().message(999).find("unknown") != std::string::npos);

  isola::error e(isola::errc::timeout, "took too long");
  CHECK(e.code() == isola::errc::timeout);
  CHECK_THAT(e.what(), Catch::Contains("took too long"));
}

TEST_CASE("python_error's what() sums up type, message and location", "[error]") {
  isola::python_error plain("ValueError", "bad", "Traceback...\nValueError: bad\n");
  CHECK(std::string(plain.what()) == "ValueError: bad");
  CHECK(plain.is("ValueError"));
  CHECK_FALSE(plain.is("TypeError"));
  CHECK(plain.line() == 0);
  CHECK(plain.filename().empty());
  isola::python_error bare("StopIteration", "", "");
  CHECK(std::string(bare.what()) == "StopIteration");
  isola::python_error syntax("SyntaxError", "invalid syntax", "", "f.py", 3, 7);
  CHECK(std::string(syntax.what()) == "SyntaxError: invalid syntax (f.py, line 3, column 7)");
}

TEST_CASE("a raise in exec is a python_error with type, message and traceback", "[error]") {
  isola::interpreter in;
  auto e = python_error_of([&] {
    in.exec(
        "def innermost_function(x):\n"
        "    raise ValueError(f'bad value {x}')\n"
        "def outer_function():\n"
        "    innermost_function(42)\n"
        "outer_function()\n");
  });
  REQUIRE(e);
  CHECK(e->type_name() == "ValueError");
  CHECK(e->message() == "bad value 42");
  CHECK_THAT(e->traceback(), Catch::StartsWith("Traceback (most recent call last):"));
  CHECK_THAT(e->traceback(), Catch::Contains("outer_function"));
  CHECK_THAT(e->traceback(), Catch::Contains("innermost_function"));
  CHECK_THAT(e->traceback(), Catch::EndsWith("ValueError: bad value 42\n"));
  CHECK(std::string(e->what()) == "ValueError: bad value 42");
  CHECK(e->line() == 0);

  // The interpreter is usable afterwards, its state intact.
  CHECK(in.eval("outer_function.__name__").as_str() == "outer_function");
  in.exec("after = 1");
  CHECK(in.get_global("after").as_int() == 1);
}

TEST_CASE("exception messages and type names", "[error]") {
  isola::interpreter in;
  in.exec(
      "class MyError(Exception):\n"
      "    pass\n"
      "class Outer:\n"
      "    class Nested(LookupError):\n"
      "        pass\n");
  struct expectation {
    const char* code;
    const char* type;
    const char* message;
  };
  // Plain variables, not a structured binding: clang 14 cannot capture one in a lambda.
  for (const auto& c : {
           expectation{"raise MyError('mine')", "__main__.MyError", "mine"},
           expectation{"raise Outer.Nested('deep')", "__main__.Outer.Nested", "deep"},
           expectation{"1 / 0", "ZeroDivisionError", "division by zero"},
           expectation{"{}['k']", "KeyError", "'k'"},
           expectation{"undefined_name", "NameError", "name 'undefined_name' is not defined"},
           expectation{"import json; json.loads('{')", "json.decoder.JSONDecodeError", ""},
           expectation{"raise RuntimeError('\\u00e9t\\u00e9 \\u2603')", "RuntimeError",
                       "\u00e9t\u00e9 \u2603"},
           expectation{"raise KeyboardInterrupt", "KeyboardInterrupt", ""},
           expectation{"raise ExceptionGroup('several', [ValueError(1), TypeError(2)])",
                       "ExceptionGroup", "several (2 sub-exceptions)"},
       }) {
    const char* code = c.code;
    const char* type = c.type;
    const char* message = c.message;
    INFO(code);
    auto e = python_error_of([&] { in.exec(code); });
    REQUIRE(e);
    CHECK(e->type_name() == type);
    if (*message) CHECK(e->message() == message);
  }
  // eval and get_global raise the same way.
  auto e = python_error_of([&] { in.eval("[][1]"); });
  REQUIRE(e);
  CHECK(e->type_name() == "IndexError");
  e = python_error_of([&] { in.get_global("no_such_global"); });
  REQUIRE(e);
  CHECK(e->type_name() == "NameError");
  CHECK_THAT(e->message(), Catch::Contains("no_such_global"));
}

TEST_CASE("SystemExit ends the call, not the process", "[error]") {
  isola::interpreter in;
  auto e = python_error_of([&] { in.exec("raise SystemExit(3)"); });
  REQUIRE(e);
  CHECK(e->type_name() == "SystemExit");
  CHECK(e->is("SystemExit"));
  CHECK(e->message() == "exit code 3");

  e = python_error_of([&] { in.exec("import sys\nsys.exit()"); });
  REQUIRE(e);
  CHECK(e->type_name() == "SystemExit");
  CHECK(e->message() == "exit code None");

  e = python_error_of([&] { in.exec("import sys\nsys.exit('bye')"); });
  REQUIRE(e);
  CHECK(e->type_name() == "SystemExit");
  CHECK(e->message() == "exit code bye");

  e = python_error_of([&] { in.eval("exit(5)"); });  // site's builtin
  REQUIRE(e);
  CHECK(e->type_name() == "SystemExit");
  CHECK(e->message() == "exit code 5");
  // Still here, and so is the interpreter.
  CHECK(in.eval("40 + 2").as_int() == 42);
  e = python_error_of([&] { in.call("sys:exit", 7); });
  REQUIRE(e);
  CHECK(e->message() == "exit code 7");
  CHECK(in.eval("'still alive'").as_str() == "still alive");
}

TEST_CASE("SyntaxError reports where", "[error]") {
  isola::interpreter in;
  auto e = python_error_of([&] { in.exec("x = 1\ny = (\n"); });
  REQUIRE(e);
  CHECK(e->type_name() == "SyntaxError");
  CHECK(e->filename() == "<string>");
  CHECK(e->line() == 2);
  CHECK(e->column() > 0);
  CHECK_THAT(e->message(), Catch::Contains("never closed"));
  CHECK_THAT(e->what(), Catch::Contains("line 2"));

  e = python_error_of([&] { in.exec("ok = 1\n\nvalue = a b\n"); });
  REQUIRE(e);
  CHECK(e->type_name() == "SyntaxError");
  CHECK(e->line() == 3);
  // The column is what CPython's SyntaxError.offset says (it varies between versions).
  in.exec(
      "try:\n"
      "    compile('ok = 1\\n\\nvalue = a b\\n', '<string>', 'exec')\n"
      "except SyntaxError as exc:\n"
      "    where = [exc.lineno, exc.offset]\n");
  CHECK(in.get_global("where") == isola::value(isola::make_list(e->line(), e->column())));
  in.exec("del where");
  CHECK(in.eval("'ok' in globals()").as_bool() == false);  // nothing of it ran

  e = python_error_of([&] { in.exec("def f():\n\treturn 1\n        return 2\n"); });
  REQUIRE(e);
  CHECK(e->type_name() == "TabError");  // a SyntaxError subclass keeps the location
  CHECK(e->line() == 3);

  e = python_error_of([&] { in.eval("x = 1"); });  // a statement is not an expression
  REQUIRE(e);
  CHECK(e->type_name() == "SyntaxError");
  CHECK(e->line() == 1);

  e = python_error_of([&] { in.exec(std::string("a = 1\0b = 2", 11)); });
  REQUIRE(e);
  CHECK(e->type_name() == "ValueError");
  CHECK_THAT(e->message(), Catch::Contains("NUL"));
  CHECK(in.eval("1").as_int() == 1);
}

TEST_CASE("call() resolves its target or says why not", "[error]") {
  isola::interpreter in;
  CHECK(in.call("isola_test_helpers:add", 2, 3).as_int() == 5);
  CHECK(in.call("isola_test_helpers.add", "a", "b").as_str() == "ab");  // no colon: last dot
  CHECK(in.call("os.path:join", "a", "b").as_str() == "a/b");
  CHECK(in.call("os.path.join", "a", "b").as_str() == "a/b");
  CHECK(in.call("isola_test_helpers:Counter.bump", 5).as_int() == 5);  // dotted attribute path
  CHECK(in.call("builtins:len", isola::make_list(1, 2, 3)).as_int() == 3);
  auto d = in.call_with("isola_test_helpers:describe", {1, "two"}, {{"flag", true}, {"n", 3}});
  CHECK(d == isola::value(isola::dict{
                 {{isola::value("args"), isola::value(isola::make_tuple(1, "two"))},
                  {isola::value("kwargs"),
                   isola::value(isola::dict{{{isola::value("flag"), isola::value(true)},
                                             {isola::value("n"), isola::value(3)}}})}}}));

  struct expectation {
    const char* target;
    const char* type;
  };
  // Plain variables, not a structured binding: clang 14 cannot capture one in a lambda.
  for (const auto& c : {expectation{"no_such_module_xyz:f", "ModuleNotFoundError"},
                        expectation{"json:no_such_function", "AttributeError"},
                        expectation{"json:loads.no_such_attr", "AttributeError"},
                        expectation{"nocolon", "ValueError"},
                        expectation{":f", "ValueError"},
                        expectation{"json:", "ValueError"},
                        expectation{"", "ValueError"},
                        expectation{"json:__name__", "TypeError"}}) {  // a str, not callable
    const char* target = c.target;
    const char* type = c.type;
    INFO("target '" << target << "'");
    auto e = python_error_of([&] { in.call(target); });
    REQUIRE(e);
    CHECK(e->type_name() == type);
  }
  auto e = python_error_of([&] { in.call("isola_test_helpers:add", 1); });  // missing argument
  REQUIRE(e);
  CHECK(e->type_name() == "TypeError");
  CHECK(in.call("isola_test_helpers:add", 1, 1).as_int() == 2);
}
