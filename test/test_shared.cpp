// Shared immortal values: publishing, reading from every interpreter, the read-only mapping,
// bad input, immortality (reference counts, interpreters ending in any order), and that
// readers never write to the shared objects.
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include "lib/python.hpp"

#include <isola/isola.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

using namespace isola_test;

namespace {

std::string error_type(const std::function<void()>& f) {
  auto e = python_error_of(f);
  return e ? e->type_name() : std::string("<no error>");
}

std::string fresh(const char* what) {
  static int n = 0;
  return std::string("test-shared-") + what + "-" + std::to_string(n++);
}

// The header bytes of a shared object: everything a reader could write to (its reference
// count, a str's cached hash, interned state and UTF-8 form, a bytes' cached hash, a tuple's
// item pointers). Their FNV-1a hash, over every object reachable from root, before and after
// other interpreters read the value, shows whether anything wrote to them.
std::size_t header_size(PyObject* o) {
  if (PyUnicode_CheckExact(o)) {
    return PyUnicode_IS_COMPACT_ASCII(o) ? sizeof(PyASCIIObject) : sizeof(PyCompactUnicodeObject);
  }
  if (PyBytes_CheckExact(o)) return offsetof(PyBytesObject, ob_sval);
  if (PyTuple_CheckExact(o)) {
    return offsetof(PyTupleObject, ob_item) +
           static_cast<std::size_t>(PyTuple_GET_SIZE(o)) * sizeof(PyObject*);
  }
  if (PyFloat_CheckExact(o)) return sizeof(PyFloatObject);
  if (PyComplex_CheckExact(o)) return sizeof(PyComplexObject);
  return sizeof(PyObject);  // int, the mapping: the reference count and type
}

void collect(PyObject* o, std::vector<PyObject*>& out) {
  out.push_back(o);
  if (PyTuple_CheckExact(o)) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o); ++i) collect(PyTuple_GET_ITEM(o, i), out);
    return;
  }
  if (std::strcmp(Py_TYPE(o)->tp_name, "isola.SharedMapping") == 0) {
    PyObject* items = PyObject_CallMethod(o, "items", nullptr);
    PyObject* list = items != nullptr ? PySequence_List(items) : nullptr;
    REQUIRE(list != nullptr);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {
      PyObject* kv = PyList_GET_ITEM(list, i);
      collect(PyTuple_GET_ITEM(kv, 0), out);
      collect(PyTuple_GET_ITEM(kv, 1), out);
    }
    Py_DECREF(list);
    Py_DECREF(items);
  }
}

std::uint64_t fingerprint(const std::string& name) {
  auto guard = isola::attach(rt().main_interpreter());
  REQUIRE(guard.has_value());
  PyObject* isola_mod = PyImport_ImportModule("isola");
  REQUIRE(isola_mod != nullptr);
  PyObject* root = PyObject_CallMethod(isola_mod, "shared", "s", name.c_str());
  Py_DECREF(isola_mod);
  REQUIRE(root != nullptr);
  std::vector<PyObject*> all;
  collect(root, all);
  std::uint64_t h = 1469598103934665603ull;
  for (PyObject* o : all) {
    const auto* p = reinterpret_cast<const unsigned char*>(o);
    for (std::size_t i = 0; i < header_size(o); ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  return h;
}

const char* table_code =
    "import isola\n"
    "table = {\n"
    "    'name': 'isola', 'ünï': 'çødé ✓ \\U0001f600', 'n': 2**100, 'neg': -7, 'pi': 3.25,\n"
    "    'z': 1 + 2j, 'raw': b'\\x00bytes', 'none': None, 'yes': True,\n"
    "    'nested': {'deep': (1, ('two', {'three': (3.0, b'4')}))},\n"
    "    42: 'int key', b'bk': 'bytes key', ('t', 1): 'tuple key',\n"
    "}\n";

}  // namespace

TEST_CASE("a shared value is the same objects in every interpreter, immortal", "[shared]") {
  const std::string name = fresh("basic");
  isola::interpreter a, b;
  a.exec(std::string(table_code) + "isola.share('" + name + "', table)\n");
  const std::string read = "import isola, sys\nv = isola.shared('" + name + "')\n";
  a.exec(read);
  b.exec(read);
  CHECK(a.eval("id(v)").as_int() == b.eval("id(v)").as_int());
  CHECK(a.eval("id(v['nested']['deep'][1])").as_int() ==
        b.eval("id(v['nested']['deep'][1])").as_int());
  CHECK(b.eval("v == table if 'table' in dir() else True").as_bool());
  b.exec(table_code);
  CHECK(b.eval("v == table and table == v.copy()").as_bool());
  CHECK(b.eval("type(v).__name__").as_str() == "SharedMapping");
  CHECK(b.eval("type(v) is isola.SharedMapping").as_bool());
  // Reference counts do not move, however much the value is used.
  b.exec("before = [sys.getrefcount(x) for x in (v, v['name'], v['nested'], v['n'])]\n"
         "keep = [v['name'] for _ in range(1000)] + [v for _ in range(1000)]\n"
         "after = [sys.getrefcount(x) for x in (v, v['name'], v['nested'], v['n'])]\n"
         "del keep\n");
  CHECK(b.eval("before == after").as_bool());
  CHECK(b.eval("all(c >= 2**32 - 1 for c in after)").as_bool());
  CHECK(a.eval("isola.shared_names()").repr().find("'" + name + "'") != std::string::npos);
  // The interpreter that published it ends: the value stays valid for the others.
  a.close();
  CHECK(b.eval("v['nested']['deep'][1][1]['three'] == (3.0, b'4')").as_bool());
  CHECK(b.eval("isola.shared('" + name + "')['ünï']").as_str() == "çødé ✓ \xF0\x9F\x98\x80");
}

TEST_CASE("the shared mapping reads like MappingProxyType and refuses every write",
          "[shared]") {
  const std::string name = fresh("mapping");
  isola::interpreter in;
  in.exec(std::string(table_code) + "isola.share('" + name + "', table)\n" +
          "import gc, weakref, types\n"
          "v = isola.shared('" + name + "')\n"
          "proxy = types.MappingProxyType(table)\n");
  CHECK(in.eval("v['name'] == proxy['name'] and v[42] == 'int key' and v[b'bk'] == 'bytes key' "
                "and v[('t', 1)] == 'tuple key'")
            .as_bool());
  CHECK(in.eval("[v.get('missing'), v.get('missing', 5), 'name' in v, 'nope' in v, len(v)] == "
                "[None, 5, True, False, len(table)]")
            .as_bool());
  CHECK(in.eval("list(v) == list(table) and list(v.keys()) == list(proxy.keys()) and "
                "list(v.values()) == list(proxy.values()) and "
                "list(v.items()) == list(proxy.items())")
            .as_bool());
  CHECK(in.eval("'name' in v.keys() and ('name', 'isola') in v.items() and "
                "'isola' in v.values()")
            .as_bool());
  CHECK(in.eval("v == table and not (v != table) and v != {} and v == v").as_bool());
  CHECK(error_type([&] { in.exec("v['missing']"); }) == "KeyError");
  CHECK(error_type([&] { in.exec("v[[1]]"); }) == "TypeError");  // unhashable, as a dict
  for (const char* write : {"v['name'] = 1", "del v['name']", "v.x = 1", "v.update({})",
                            "v.pop('name')", "v.setdefault('a', 1)", "v.clear()"}) {
    INFO(write);
    const std::string type = error_type([&] { in.exec(write); });
    CHECK((type == "TypeError" || type == "AttributeError"));
  }
  CHECK(error_type([&] { in.exec("v['name'] = 1"); }) == "TypeError");
  CHECK(error_type([&] { in.exec("isola.SharedMapping()"); }) == "TypeError");
  CHECK(error_type([&] { in.exec("class Sub(isola.SharedMapping): pass"); }) == "TypeError");
  CHECK(error_type([&] { in.exec("weakref.ref(v)"); }) == "TypeError");
  CHECK(error_type([&] { in.exec("isola.SharedMapping.get = None"); }) == "TypeError");
  CHECK(error_type([&] { in.exec("hash(v)"); }) == "TypeError");
  // No path through a shared value reaches a mutable object.
  CHECK(in.eval("gc.get_referents(v) == [] and not hasattr(v, '__dict__')").as_bool());
  in.exec("def walk(o, seen):\n"
          "    if isinstance(o, (list, dict, set, bytearray)):\n"
          "        return False\n"
          "    if isinstance(o, tuple):\n"
          "        return all(walk(x, seen) for x in o)\n"
          "    if type(o) is isola.SharedMapping:\n"
          "        return all(walk(k, seen) and walk(x, seen) for k, x in o.items())\n"
          "    return not gc.get_referents(o)\n");
  CHECK(in.eval("walk(v, set())").as_bool());
  CHECK(in.eval("repr(v)").as_str().starts_with("isola.SharedMapping({'name': 'isola'"));
}

TEST_CASE("every interpreter can hash, key, compare, slice, format, intern and match shared str",
          "[shared]") {
  const std::string name = fresh("strops");
  isola::interpreter publisher;
  publisher.exec("import isola\n"
                 "isola.share('" + name + "', ('alpha', 'bêta', 'γάμμα', '\U0001f600 face', "
                 "b'raw', 12345678901234567890, 2.5, (1, 2), {'k': 'v'}))\n");
  const std::string ops =
      "import isola, sys, re\n"
      "s = isola.shared('" + name + "')\n"
      "words = s[:4]\n"
      "d = {w: i for i, w in enumerate(words)}\n"
      "ok = [d['bêta'] == 1, {'alpha', 'alpha'} | set(words) == set(words),\n"
      "      hash(s[0]) == hash('alpha'), hash(s[4]) == hash(b'raw'), hash(s[7]) == hash((1, 2)),\n"
      "      words[1][1:3] == 'êt', list(words[2]) == list('γάμμα'), s[4][1:] == b'aw',\n"
      "      f'{s[0]}-{s[5]:,}-{s[6]:.1f}' == 'alpha-12,345,678,901,234,567,890-2.5',\n"
      "      sys.intern(s[0]) is s[0], sys.intern(s[1]) is s[1],\n"
      "      ', '.join(words) == 'alpha, bêta, γάμμα, \U0001f600 face',\n"
      "      re.match(r'(\\w)(\\w+)', s[2]).group(2) == 'άμμα', s[3].encode() == '\U0001f600 face'.encode(),\n"
      "      s[0] < s[1], s[0].upper() == 'ALPHA', str(s[5]) == '12345678901234567890',\n"
      "      s[8]['k'] == 'v', s < s + (1,), (s[7] == (1, 2))]\n";
  isola::interpreter a, b;
  a.exec(ops);
  b.exec(ops);
  CHECK(a.eval("all(ok)").as_bool());
  CHECK(b.eval("all(ok)").as_bool());
  CHECK(a.eval("ok").repr() == b.eval("ok").repr());
}

TEST_CASE("readers never write to shared objects", "[shared][concurrent]") {
  const std::string name = fresh("nowrite");
  isola::interpreter publisher;
  publisher.exec(std::string(table_code) +
                 "import isola\n"
                 "big = {f'key-{i}': (i, i / 3, f'välue-{i}') for i in range(2000)}\n"
                 "big['table'] = table\n"
                 "isola.share('" + name + "', big)\n");
  const std::uint64_t before = fingerprint(name);
  // Two interpreters read it at once: every key looked up, every str hashed, interned, joined,
  // formatted, encoded and matched.
  const std::string reader =
      "import isola, sys, re\n"
      "v = isola.shared('" + name + "')\n"
      "n = 0\n"
      "for rnd in range(3):\n"
      "    for k in v:\n"
      "        x = v[k]\n"
      "        sys.intern(k); hash(k); k.encode(); f'{k}{x!r}'; re.match('key', k)\n"
      "        if isinstance(x, tuple):\n"
      "            s = x[2]; sys.intern(s); s.encode(); ','.join((s, k)); n += x[0]\n"
      "    t = v['table']\n"
      "    for k, x in t.items(): hash(k); repr(x); x == x\n"
      "    sys.intern(t['ünï']); t['ünï'].encode()\n";
  isola::interpreter a, b;
  auto fa = a.exec_async(reader);
  auto fb = b.exec_async(reader);
  fa.get();
  fb.get();
  CHECK(a.eval("n").as_int() == b.eval("n").as_int());
  CHECK(fingerprint(name) == before);
}

TEST_CASE("what cannot be shared is refused with the path to it, and nothing is published",
          "[shared]") {
  isola::interpreter in;
  in.exec("import isola\n"
          "class C: pass\n"
          "selfref = {'a': 1}\n"
          "selfref['me'] = selfref\n");
  auto error_of = [&](const std::string& code) {
    auto e = python_error_of([&] { in.exec(code); });
    return e ? e->type_name() + ": " + e->message() : std::string("<no error>");
  };
  CHECK(error_of("isola.share('bad1', {'users': (1, 2, 3, [4])})") ==
        "TypeError: obj['users'][3]: list is not shareable; use a tuple");
  CHECK(error_of("isola.share('bad2', {'a': {'b': C()}})")
            .starts_with("TypeError: obj['a']['b']: C is not shareable"));
  CHECK(error_of("isola.share('bad3', selfref)")
            .starts_with("TypeError: obj['me']: contains itself (a cycle)"));
  CHECK(error_of("isola.share('bad4', frozenset({1}))")
            .starts_with("TypeError: obj: frozenset is not shareable; use a tuple"));
  CHECK(error_of("isola.share('bad5', {1, 2})").starts_with("TypeError: obj: set is not"));
  CHECK(error_of("isola.share('bad6', (True, 1.5, bytearray(b'x')))")
            .starts_with("TypeError: obj[2]: bytearray is not shareable"));
  CHECK(error_of("isola.share('bad7', 'x' * 1000, max_bytes=100)")
            .starts_with("MemoryError: the value takes more than the 100 bytes"));
  CHECK(error_of("x = ()\nfor _ in range(5000): x = (x,)\nisola.share('bad8', x)")
            .find("nested deeper than 2000 levels") != std::string::npos);
  in.exec("deep = ()\nfor _ in range(1999): deep = (deep,)\nisola.share('deep-ok', deep)\n");
  in.exec("d, levels = isola.shared('deep-ok'), 0\nwhile d: d, levels = d[0], levels + 1\n");
  CHECK(in.eval("levels").as_int() == 1999);
  CHECK(error_of("isola.share('', 1)") == "ValueError: isola.share: the name must not be empty");
  CHECK(error_of("isola.shared('never')").starts_with("KeyError"));
  CHECK(error_of("isola.shared('never')").find("never") != std::string::npos);
  CHECK(error_of("isola.shared(5)").starts_with("TypeError"));
  CHECK(in.eval("[n for n in isola.shared_names() if n.startswith('bad')]").repr() == "[]");
  // A name is taken until replaced; a replaced value stays valid for whoever holds it.
  const std::string name = fresh("replace");
  in.exec("isola.share('" + name + "', ('first',))\n"
          "held = isola.shared('" + name + "')\n");
  CHECK(error_of("isola.share('" + name + "', ('second',))").starts_with("ValueError"));
  in.exec("isola.share('" + name + "', ('second',), replace=True)\n");
  CHECK(in.eval("held[0] + ' ' + isola.shared('" + name + "')[0]").as_str() == "first second");
  // A shared mapping can be shared again, as it is.
  in.exec("isola.share('" + name + "-m', {'a': 1})\n"
          "isola.share('" + name + "-m2', (isola.shared('" + name + "-m'), 2))\n");
  CHECK(in.eval("isola.shared('" + name + "-m2')[0] is isola.shared('" + name + "-m')")
            .as_bool());
}

TEST_CASE("interpreters that read shared values end in any order", "[shared]") {
  const std::string name = fresh("order");
  {
    isola::interpreter p;
    p.exec(std::string(table_code) + "isola.share('" + name + "', table)\n");
  }  // the publisher has ended
  const std::string use = "import isola, sys\n"
                          "v = isola.shared('" + name + "')\n"
                          "keep = (v, v['nested'], sys.intern(v['name']), {k: 1 for k in v})\n";
  for (bool fifo : {true, false}) {
    INFO("fifo: " << fifo);
    std::vector<std::unique_ptr<isola::interpreter>> ins;
    for (int i = 0; i < 3; ++i) {
      ins.push_back(std::make_unique<isola::interpreter>());
      ins.back()->exec(use);
    }
    if (fifo) {
      for (auto& in : ins) in.reset();
    } else {
      while (!ins.empty()) ins.pop_back();
    }
  }
  isola::interpreter last;
  last.exec(use);
  CHECK(last.eval("v['nested']['deep'][0]").as_int() == 1);
}

TEST_CASE("C++ publishes with isola::share and reads a copy back", "[shared]") {
  const std::string name = fresh("cpp");
  isola::dict d;
  d.items.emplace_back(isola::value("words"), isola::value(isola::list{{isola::value("a"),
                                                                         isola::value("b")}}));
  d.items.emplace_back(isola::value(7), isola::value(2.5));
  isola::share(name, isola::value(d));
  CHECK(isola::is_shared(name));
  CHECK_THROWS_AS(isola::share(name, isola::value(1)), std::invalid_argument);
  CHECK_THROWS_AS(isola::share("", isola::value(1)), std::invalid_argument);
  isola::interpreter in;
  in.exec("import isola\nv = isola.shared('" + name + "')\n");
  CHECK(in.eval("v['words'] == ('a', 'b') and v[7] == 2.5").as_bool());  // a list: a tuple
  auto copy = isola::shared_copy(name);
  REQUIRE(copy);
  CHECK(copy->repr() == "{'words': ('a', 'b'), 7: 2.5}");
  CHECK_FALSE(isola::shared_copy("no such name"));
  isola::share_options replace;
  replace.replace = true;
  isola::share(name, isola::value("again"), replace);
  CHECK(in.eval("isola.shared('" + name + "')").as_str() == "again");
  isola::share_options small;
  small.max_bytes = 10;
  CHECK_THROWS_AS(isola::share(fresh("cpp-big"), isola::value(std::string(100, 'x')), small),
                  std::length_error);
}

TEST_CASE("isola bench shared --quick --json reports every figure", "[shared]") {
  auto b = run_bench({"shared", "--quick", "--keys", "20000", "-n", "2", "--lookups", "20000"});
  isola::interpreter& in = *b.in;
  in.exec("positive = ['lookups_per_s_shared', 'lookups_per_s_local', 'shared_vs_local',\n"
          "            'lookup_scaling_2', 'lookup_scaling_2_local', 'publish_s',\n"
          "            'channel_pickle_s', 'rss_mb_copied_8']\n"
          "# Memory growth of a small table can be 0 where freed memory is reused: a number.\n"
          "present = ['rss_mb_shared_8', 'rss_mb_one_copy', 'shared_vs_one_copy',\n"
          "           'copied_vs_shared']\n"
          "bad = [f'{k}={results.get(k)!r}' for k in positive\n"
          "       if not (isinstance(results.get(k), (int, float)) and results[k] > 0)]\n"
          "bad += [f'{k} missing' for k in present if k not in results]\n"
          "problem = ', '.join(bad)\n");
  CHECK(in.get_global("problem").as_str() == "");
}

TEST_CASE("C++ reads a shared value in place through shared_view", "[shared]") {
  const std::string name = fresh("view");
  isola::interpreter in;
  in.exec(std::string(table_code) +
          "table['é'] = 'latin-1 key'\n"
          "table['\U0001f600'] = 'astral key'\n"
          "table[-5] = 'negative key'\n"
          "table[True] = 'bool key'\n"
          "isola.share('" + name + "', table)\n");
  auto v = isola::shared_ref(name);
  REQUIRE(v);
  using kind = isola::shared_view::kind;
  CHECK(v->type() == kind::mapping);
  CHECK(static_cast<std::int64_t>(v->size()) == in.eval("len(table)").as_int());
  CHECK(v->find("name")->as_str() == "isola");
  CHECK(v->find("ünï")->as_str() == "çødé ✓ \xF0\x9F\x98\x80");
  CHECK(v->find("é")->as_str() == "latin-1 key");
  CHECK(v->find("\xF0\x9F\x98\x80")->as_str() == "astral key");
  CHECK(v->find(42)->as_str() == "int key");
  CHECK(v->find(-5)->as_str() == "negative key");
  CHECK(v->find(1)->as_str() == "bool key");  // True == 1, as in a dict
  CHECK_FALSE(v->find("missing"));
  CHECK_FALSE(v->find("\xff"));  // not UTF-8: no such key
  CHECK_FALSE(v->find(7));
  CHECK(v->find("neg")->as_int() == -7);
  CHECK_THROWS_AS(v->find("n")->as_int(), std::out_of_range);  // 2**100
  CHECK(v->find("pi")->as_float() == 3.25);
  CHECK(v->find("raw")->as_bytes() == std::string_view("\0bytes", 6));
  CHECK(v->find("yes")->as_bool());
  CHECK(v->find("none")->type() == kind::none);
  CHECK(v->find("z")->type() == kind::complex);
  auto deep = v->find("nested")->find("deep");
  REQUIRE(deep);
  CHECK((*deep)[0].as_int() == 1);
  CHECK((*deep)[1][1].find("three")->operator[](1).as_bytes() == "4");
  CHECK_THROWS_AS((*deep)[2], std::out_of_range);
  CHECK_THROWS_AS(v->as_str(), std::logic_error);
  CHECK_THROWS_AS((*deep)[0].find("x"), std::logic_error);
  CHECK(v->key(0).as_str() == "name");
  CHECK(v->value(0).as_str() == "isola");
  CHECK_FALSE(isola::shared_ref("no such name"));
}
