// isola::value: accessors, repr, big_int, and every kind crossing C++ -> Python -> C++ (set_global,
// get_global, eval), plus what is refused: unsupported types, cycles, too deep, unhashable keys.
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <cmath>
#include <cstdint>
#include <limits>

using namespace isola_test;
using isola::value;

namespace {

// A value nested `depth` containers deep: [[[...]]] (depth 1 is []). Moved in, not built
// from an initializer list, which would copy the whole inner value each time.
value nested_list(int depth) {
  value v = isola::list{};
  for (int i = 1; i < depth; ++i) {
    isola::list outer;
    outer.items.push_back(std::move(v));
    v = value(std::move(outer));
  }
  return v;
}

struct roundtrip_case {
  const char* python;  // a Python expression for the same value
  value cpp;
};

}  // namespace

TEST_CASE("value accessors check the held kind", "[value]") {
  CHECK(value().is_none());
  CHECK(value(isola::none).type() == isola::kind::none);
  CHECK(value(true).as_bool());
  CHECK(value(42).as_int() == 42);
  CHECK(value(42).as_float() == 42.0);  // ints widen to float
  CHECK(value(2.5).as_float() == 2.5);
  CHECK(value("text").as_str() == "text");
  CHECK(value(std::string_view("view")).as_str() == "view");
  CHECK(value(isola::bytes{std::string("\0x", 2)}).as_bytes().data.size() == 2);
  CHECK(value(isola::make_tuple(1, "a")).as_tuple().items.size() == 2);
  CHECK(value(isola::make_list(1, 2, 3)).as_list().items.at(2) == value(3));

  CHECK_THROWS_WITH(value("x").as_int(), "isola::value holds str, not int");
  CHECK_THROWS_AS(value(1).as_bool(), std::invalid_argument);  // no int -> bool conversion
  CHECK_THROWS_AS(value(true).as_int(), std::invalid_argument);
  CHECK_THROWS_AS(value(1.5).as_int(), std::invalid_argument);
  CHECK_THROWS_AS(value().as_str(), std::invalid_argument);
  CHECK_THROWS_AS(value(isola::make_list()).as_tuple(), std::invalid_argument);
  CHECK_THROWS_AS(value(isola::make_tuple()).as_dict(), std::invalid_argument);
  CHECK_THROWS_AS(value("s").as_bytes(), std::invalid_argument);
  CHECK_THROWS_AS(value(isola::bytes{"s"}).as_list(), std::invalid_argument);
  CHECK_THROWS_AS(value(1).as_str(), std::invalid_argument);
}

TEST_CASE("integers: every C++ integral type, and big_int beyond 64 bits", "[value]") {
  CHECK(value(std::int8_t{-5}).as_int() == -5);
  CHECK(value(std::uint16_t{65535}).as_int() == 65535);
  CHECK(value(std::numeric_limits<std::int64_t>::min()).as_int() ==
        std::numeric_limits<std::int64_t>::min());
  CHECK(value(std::uint64_t{INT64_MAX}).type() == isola::kind::integer);

  value huge(std::numeric_limits<std::uint64_t>::max());
  REQUIRE(huge.type() == isola::kind::big_integer);
  CHECK(huge.is_int());
  CHECK(std::get<isola::big_int>(huge.data()).hex == "ffffffffffffffff");
  CHECK_THROWS_AS(huge.as_int(), std::out_of_range);
  CHECK_THROWS_WITH(huge.as_int(), Catch::Contains("18446744073709551615"));
  CHECK_THROWS_AS(huge.as_float(), std::invalid_argument);
}

TEST_CASE("big_int::to_decimal", "[value]") {
  CHECK(isola::big_int{""}.to_decimal() == "0");
  CHECK(isola::big_int{"1f"}.to_decimal() == "31");
  CHECK(isola::big_int{"-1f"}.to_decimal() == "-31");
  CHECK(isola::big_int{"10000000000000000"}.to_decimal() == "18446744073709551616");  // 2**64
  CHECK(isola::big_int{"-8000000000000001"}.to_decimal() == "-9223372036854775809");
  CHECK(isola::big_int{"FF"}.to_decimal() == "255");  // upper-case digits are read too
  // Limbs of nine digits: inner ones keep their leading zeros. 10**18 + 1 = 0xde0b6b3a7640001.
  CHECK(isola::big_int{"de0b6b3a7640001"}.to_decimal() == "1000000000000000001");

  // Against Python for numbers too large for any C++ type, up to far beyond the 4300-digit
  // limit on int -> str (lifted for this comparison in this interpreter only).
  isola::interpreter in;
  in.exec("import sys; sys.set_int_max_str_digits(0)");
  for (const char* expr : {"2**200 + 12345", "-(3**500)", "7**9000", "-(10**5000) + 1"}) {
    INFO(expr);
    value v = in.eval(expr);
    REQUIRE(v.type() == isola::kind::big_integer);
    CHECK(std::get<isola::big_int>(v.data()).to_decimal() ==
          in.eval(std::string("str(") + expr + ")").as_str());
  }
}

TEST_CASE("value::find looks up dict items by key", "[value]") {
  value d = isola::dict{{{value("a"), value(1)}, {value(isola::make_tuple(1, 2)), value("t")}}};
  REQUIRE(d.find("a") != nullptr);
  CHECK(*d.find("a") == value(1));
  REQUIRE(d.find(value(isola::make_tuple(1, 2))) != nullptr);
  CHECK(d.find(value(isola::make_tuple(1, 2)))->as_str() == "t");
  CHECK(d.find("b") == nullptr);
  CHECK(value(isola::make_list("a")).find("a") == nullptr);  // not a dict
}

TEST_CASE("value::repr is Python's repr", "[value]") {
  CHECK(value().repr() == "None");
  CHECK(value(true).repr() == "True");
  CHECK(value(false).repr() == "False");
  CHECK(value(-7).repr() == "-7");
  CHECK(value(1.5).repr() == "1.5");
  CHECK(value(1.0).repr() == "1.0");
  CHECK(value(std::numeric_limits<double>::infinity()).repr() == "inf");
  CHECK(value(-std::numeric_limits<double>::infinity()).repr() == "-inf");
  CHECK(value(std::nan("")).repr() == "nan");
  CHECK(value("text").repr() == "'text'");
  CHECK(value("it's").repr() == "\"it's\"");
  CHECK(value("a\nb\\").repr() == "'a\\nb\\\\'");
  CHECK(value(isola::bytes{std::string("\0\xff", 2)}).repr() == "b'\\x00\\xff'");
  CHECK(value(isola::make_tuple(1)).repr() == "(1,)");
  CHECK(value(isola::make_tuple()).repr() == "()");
  CHECK(value(isola::make_list(1, 2)).repr() == "[1, 2]");
  CHECK(value(isola::dict{{{value("a"), value(1)}}}).repr() == "{'a': 1}");
  CHECK(value(isola::big_int{"-10000000000000000"}).repr() == "-18446744073709551616");

  // The same text as repr() in an interpreter.
  isola::interpreter in;
  std::vector<value> samples = {
      value(),
      value(false),
      value(12345),
      value(0.1),
      value(-2.5e-7),
      value(1e300),
      value("h\u00e9llo \u65e5\u672c"),
      value("tab\there"),
      value("both ' and \""),
      value(isola::bytes{"abc\x01\x7f"}),
      value(isola::make_tuple("x", isola::make_list(1, 2.0), value())),
      value(isola::dict{{{value(1), value(isola::make_list())}, {value("k"), value(isola::dict{})}}}),
      value(isola::big_int{"123456789abcdef0123"}),
  };
  for (const auto& v : samples) {
    in.set_global("x", v);
    CHECK(v.repr() == in.eval("repr(x)").as_str());
  }
}

TEST_CASE("value::repr formats floats as Python does", "[value]") {
  // std::to_chars picks the shorter of fixed and scientific notation; Python's repr uses fixed
  // notation for decimal exponents -4 < decpt <= 16, and so must value::repr.
  isola::interpreter in;
  for (double d : {100000.0, 1e15, 1e16, 1e17, 0.0001, 0.00001, 123456789012345680.0, -0.0, 0.1,
                   1.5, -2.5e-7, 1e300, 5e-324, 1.7976931348623157e308, 12345.678, 3.0}) {
    in.set_global("x", d);
    CHECK(value(d).repr() == in.eval("repr(x)").as_str());
  }
}

TEST_CASE("every kind of value crosses C++ -> Python -> C++ unchanged", "[value]") {
  isola::interpreter in;
  in.exec("from isola_test_helpers import same");
  const double inf = std::numeric_limits<double>::infinity();

  // A dict whose keys are not strs.
  value odd_keys = isola::dict{{
      {value(isola::make_tuple(1, "two")), value("tuple key")},
      {value(3), value("int key")},
      {value(), value("None key")},
      {value(isola::bytes{"b"}), value("bytes key")},
      {value(1.5), value("float key")},
      {value(false), value("bool key")},
  }};
  value nested = isola::dict{{
      {value("list"), value(isola::make_list(1, isola::make_tuple(2, isola::make_list(3)), "x"))},
      {value("dict"), value(isola::dict{{{value("inner"), value(isola::dict{{{value(0), value()}}})}}})},
      {value("empty"), value(isola::make_tuple(isola::make_list(), isola::dict{}, isola::make_tuple()))},
  }};

  std::vector<roundtrip_case> cases = {
      {"None", value()},
      {"True", value(true)},
      {"False", value(false)},
      {"0", value(0)},
      {"7", value(7)},
      {"-1", value(-1)},
      {"2**63 - 1", value(std::numeric_limits<std::int64_t>::max())},
      {"-2**63", value(std::numeric_limits<std::int64_t>::min())},
      {"2**63", value(isola::big_int{"8000000000000000"})},
      {"-2**63 - 1", value(isola::big_int{"-8000000000000001"})},
      {"2**64 - 1", value(std::numeric_limits<std::uint64_t>::max())},
      {"2**64", value(isola::big_int{"10000000000000000"})},
      {"-(2**64)", value(isola::big_int{"-10000000000000000"})},
      {"2**200 + 1", value(isola::big_int{"1" + std::string(49, '0') + "1"})},
      {"0.0", value(0.0)},
      {"-0.0", value(-0.0)},
      {"1.5", value(1.5)},
      {"-1e300", value(-1e300)},
      {"5e-324", value(5e-324)},
      {"float('inf')", value(inf)},
      {"float('-inf')", value(-inf)},
      {"''", value("")},
      {"'plain ascii'", value("plain ascii")},
      {"'h\\u00e9llo w\\u00f6rld \\u2713 \\u65e5\\u672c \\U0001f389'",
       value("h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c \U0001f389")},
      {"'nul\\x00inside'", value(std::string("nul\0inside", 10))},
      {"'\\ud800'", value(std::string("\xed\xa0\x80"))},  // a lone surrogate (surrogatepass)
      {"'a\\udfffb'", value(std::string("a\xed\xbf\xbf" "b"))},
      {"b''", value(isola::bytes{})},
      {"b'\\x00\\x01\\x00\\xff'", value(isola::bytes{std::string("\0\x01\0\xff", 4)})},
      {"()", value(isola::make_tuple())},
      {"(1,)", value(isola::make_tuple(1))},
      {"('a', 2.0, None)", value(isola::make_tuple("a", 2.0, value()))},
      {"[]", value(isola::make_list())},
      {"[1, [2, [3]]]", value(isola::make_list(1, isola::make_list(2, isola::make_list(3))))},
      {"{}", value(isola::dict{})},
      {"{'a': 1, 'b': 2}", value(isola::dict{{{value("a"), value(1)}, {value("b"), value(2)}}})},
      {"{(1, 'two'): 'tuple key', 3: 'int key', None: 'None key', b'b': 'bytes key', "
       "1.5: 'float key', False: 'bool key'}",
       odd_keys},
      {"{'list': [1, (2, [3]), 'x'], 'dict': {'inner': {0: None}}, 'empty': ([], {}, ())}",
       nested},
  };

  for (const auto& c : cases) {
    INFO("Python: " << c.python << "    C++: " << c.cpp.repr());
    // Python -> C++
    value from_eval = in.eval(c.python);
    CHECK(from_eval == c.cpp);
    CHECK(from_eval.type() == c.cpp.type());
    // C++ -> Python: the same object, type for type.
    in.set_global("x", c.cpp);
    CHECK(in.eval(std::string("same(x, ") + c.python + ")").as_bool());
    // ... and back.
    CHECK(in.get_global("x") == c.cpp);
  }

  // -0.0 == 0.0 in C++; the sign must survive all the same.
  CHECK(std::signbit(in.eval("-0.0").as_float()));
  in.set_global("z", -0.0);
  CHECK(in.eval("str(z)").as_str() == "-0.0");

  // NaN never equals itself, so it has its own check.
  CHECK(std::isnan(in.eval("float('nan')").as_float()));
  in.set_global("n", std::nan(""));
  CHECK(in.eval("n != n").as_bool());
  CHECK(std::isnan(in.get_global("n").as_float()));

  // Arguments and results of call() cross the same way.
  CHECK(in.call("isola_test_helpers:describe", odd_keys, nested) ==
        value(isola::dict{{{value("args"), value(isola::make_tuple(odd_keys, nested))},
                           {value("kwargs"), value(isola::dict{})}}}));
}

TEST_CASE("an int beyond CPython's 4300-digit str limit crosses both ways", "[value]") {
  isola::interpreter in;
  value v = in.eval("10**5000");
  REQUIRE(v.type() == isola::kind::big_integer);
  CHECK(std::get<isola::big_int>(v.data()).to_decimal() == "1" + std::string(5000, '0'));
  in.set_global("y", v);
  CHECK(in.eval("y == 10**5000").as_bool());
  value neg = in.eval("-(7**6000)");
  in.set_global("y", neg);
  CHECK(in.eval("y == -(7**6000)").as_bool());
  CHECK(in.get_global("y") == neg);
}

TEST_CASE("shared (acyclic) references are fine, cycles are a ValueError", "[value]") {
  isola::interpreter in;
  in.exec("a = [1]\nshared = [a, a, (a,)]");
  CHECK(in.get_global("shared") == value(isola::make_list(isola::make_list(1), isola::make_list(1),
                                                          isola::make_tuple(isola::make_list(1)))));

  for (const char* code : {"l = []\nl.append(l)", "l = {}\nl['self'] = l",
                           "inner = []\nl = [1, (2, {'k': inner})]\ninner.append(l)"}) {
    INFO(code);
    in.exec(code);
    auto e = python_error_of([&] { in.get_global("l"); });
    REQUIRE(e);
    CHECK(e->type_name() == "ValueError");
    CHECK_THAT(e->message(), Catch::Contains("cyclic"));
    e = python_error_of([&] { in.eval("l"); });
    REQUIRE(e);
    CHECK(e->type_name() == "ValueError");
  }
  CHECK(in.eval("len(l)").as_int() == 2);  // still usable
}

TEST_CASE("structures deeper than value::max_depth are a ValueError, both ways", "[value]") {
  isola::interpreter in;
  in.exec("from isola_test_helpers import nested_list");
  constexpr int max = value::max_depth;

  // Python -> C++
  value ok = in.call("isola_test_helpers:nested_list", max);
  CHECK(ok == nested_list(max));
  for (int depth : {max + 1, 100000}) {
    INFO("depth " << depth);
    auto e = python_error_of([&] { in.call("isola_test_helpers:nested_list", depth); });
    REQUIRE(e);
    CHECK(e->type_name() == "ValueError");
    CHECK_THAT(e->message(), Catch::Contains(std::to_string(max)));
  }
  // Depth counts every container kind.
  in.exec("d = 0\nfor i in range(600):\n    d = ({'k': [d]},)");
  auto e = python_error_of([&] { in.get_global("d"); });
  REQUIRE(e);
  CHECK(e->type_name() == "ValueError");

  // C++ -> Python
  in.set_global("ok", nested_list(max));
  CHECK(in.eval("ok == nested_list(" + std::to_string(max) + ")").as_bool());
  // 2000, not more: a hand-built C++ value is destroyed recursively (value.hpp says so), and
  // 10000 levels overflowed the worker thread's stack in an unoptimised ASan build.
  for (int depth : {max + 1, 2000}) {
    INFO("depth " << depth);
    auto e2 = python_error_of([&] { in.set_global("deep", nested_list(depth)); });
    REQUIRE(e2);
    CHECK(e2->type_name() == "ValueError");
    // Through call_with and a moved vector: call()'s initializer list would copy the value
    // (recursively, which is itself deep at this depth).
    std::vector<value> args;
    args.push_back(nested_list(depth));
    e2 = python_error_of([&] { in.call_with("builtins:len", std::move(args)); });
    REQUIRE(e2);
    CHECK(e2->type_name() == "ValueError");
  }
  CHECK(in.eval("'deep' in globals()").as_bool() == false);
  CHECK(in.eval("1 + 1").as_int() == 2);
}

TEST_CASE("unsupported Python types are a TypeError naming the type", "[value]") {
  isola::interpreter in;
  in.exec("class Custom:\n    pass\n");
  struct expectation {
    const char* expr;
    const char* type;
  };
  // Plain variables, not a structured binding: clang 14 cannot capture one in a lambda.
  for (const auto& c : {expectation{"set()", "'set'"}, expectation{"object()", "'object'"},
                        expectation{"Custom()", "'__main__.Custom'"},
                        expectation{"Custom", "'type'"},
                        expectation{"bytearray(b'x')", "'bytearray'"},
                        expectation{"[1, {'k': frozenset()}]", "'frozenset'"},
                        expectation{"{(1, frozenset()): 2}", "'frozenset'"},
                        expectation{"1j", "'complex'"}, expectation{"len", "function"}}) {
    const char* expr = c.expr;
    const char* type = c.type;
    INFO(expr);
    auto e = python_error_of([&] { in.eval(expr); });
    REQUIRE(e);
    CHECK(e->type_name() == "TypeError");
    CHECK_THAT(e->message(), Catch::Contains(type));
  }
  // Setting a global worked; only reading it back is refused.
  in.exec("s = {1, 2}");
  auto e = python_error_of([&] { in.get_global("s"); });
  REQUIRE(e);
  CHECK(e->type_name() == "TypeError");
  CHECK(in.eval("sorted(s)") == value(isola::make_list(1, 2)));
}

TEST_CASE("C++ values Python cannot take are refused with a Python exception", "[value]") {
  isola::interpreter in;
  // Unhashable dict keys.
  for (value key : {value(isola::make_list(1)), value(isola::dict{}),
                    value(isola::make_tuple(isola::make_list()))}) {
    INFO(key.repr());
    value d = isola::dict{{{key, value(1)}}};
    auto e = python_error_of([&] { in.set_global("d", d); });
    REQUIRE(e);
    CHECK(e->type_name() == "TypeError");
    CHECK_THAT(e->message(), Catch::Contains("unhashable"));
  }
  // A str that is not UTF-8.
  auto e = python_error_of([&] { in.set_global("bad", value(std::string("\xff\xfe"))); });
  REQUIRE(e);
  CHECK(e->type_name() == "UnicodeDecodeError");
  CHECK(in.eval("'d' in globals() or 'bad' in globals()").as_bool() == false);
}
