// What needs CPython's own test modules (_testcapi, _testsinglephase). Distributions may leave
// them out (Debian ships them in libpython3.x-testsuite): a case that cannot check calls
// skip(), and the meson test `cpython-test-modules` then reports SKIP (exit code 77) instead of
// passing without having checked.
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include "lib/python.hpp"  // the lack-of-memory case runs in the main interpreter

#include <string>

using namespace isola_test;
using isola::value;

namespace {
bool has_single_phase_module(isola::interpreter& in) {
  return in.eval("__import__('importlib.util').util.find_spec('_testsinglephase') is not None")
      .as_bool();
}
}  // namespace

TEST_CASE("an isolated interpreter refuses a single-phase extension", "[testmodules]") {
  isola::interpreter in;
  if (!has_single_phase_module(in)) {
    skip("this CPython has no _testsinglephase: refusing single-phase extensions is not tested");
    return;
  }
  // On 3.12 a refused single-phase import has already run the module's init, and importing it
  // later elsewhere crashes CPython (gh-110415): the refusal is tried on 3.13+ only.
  if (!in.eval("__import__('sys').version_info >= (3, 13)").as_bool()) {
    skip("CPython 3.12 crashes on a later import of a refused single-phase module "
         "(gh-110415): refusing single-phase extensions is not tested");
    return;
  }
  auto e = python_error_of([&] { in.exec("import _testsinglephase"); });
  REQUIRE(e);
  CHECK(e->type_name() == "ImportError");
  CHECK_THAT(e->what(), Catch::Contains("_testsinglephase"));
}

TEST_CASE("a legacy interpreter loads a single-phase extension", "[testmodules]") {
  isola::interpreter in(isola::interpreter_config::legacy());
  if (!has_single_phase_module(in)) {
    skip("this CPython has no _testsinglephase: loading single-phase extensions is not tested");
    return;
  }
  in.exec("import _testsinglephase\nok = _testsinglephase.sum(2, 3)");
  CHECK(in.get_global("ok").as_int() == 5);
}

TEST_CASE("an item that finds no memory to become an object stays for the next receive",
          "[testmodules]") {
  // _testcapi.set_nomemory() makes every allocation fail until remove_mem_hooks(): the item
  // being converted gets MemoryError and must be received again afterwards, in order, by recv
  // and by recv_many (whose list is made before anything is converted). In the main
  // interpreter: _testcapi is not made for isolated ones. Without _testcapi the case
  // is skipped.
  auto g = isola::attach(rt().main_interpreter());
  REQUIRE(g.has_value());
  PyObject* globals = PyDict_New();
  PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins());
  PyObject* r = PyRun_String(
      "import isola\n"
      "try:\n"
      "    import _testcapi\n"
      "except ImportError:\n"
      "    _testcapi = None\n"
      "def starved(call, *args):\n"
      "    _testcapi.set_nomemory(0)\n"
      "    try:\n"
      "        call(*args)\n"
      "    except MemoryError:\n"
      "        return 'MemoryError'\n"
      "    finally:\n"
      "        _testcapi.remove_mem_hooks()\n"
      "    return 'returned'\n"
      "if _testcapi is not None:\n"
      "    q = isola.Channel(16)\n"
      "    text = 'x' * 1000 + '\\u00e9'\n"
      "    q.send(text); q.send(7)\n"
      // Without the fix the item is gone: the nowait calls then fail instead of waiting.
      "    single = [starved(q.recv), q.qsize(), q.recv_nowait() == text, q.recv_nowait()]\n"
      "    q.send_many([1, text, (2, 3), 4])\n"
      "    batch = [starved(q.recv_many, 10), q.qsize()]\n"
      "    batch.append(q.recv_many(10, timeout=0) == [1, text, (2, 3), 4])\n"
      "    q.send_many([5, b'z' * 100, 6])\n"
      "    q.recv_many(1)\n"  // 5; then the bytes fail inside a later batch
      "    q.send(8)\n"
      "    later = [starved(q.recv_many, 10), q.qsize(), q.recv_many(10, timeout=0)]\n",
      Py_file_input, globals, globals);
  if (r == nullptr) PyErr_Print();
  REQUIRE(r != nullptr);
  Py_DECREF(r);
  auto get = [&](const char* name) {
    PyObject* o = PyDict_GetItemString(globals, name);
    PyObject* s = o != nullptr ? PyObject_Repr(o) : nullptr;
    std::string out = s != nullptr ? PyUnicode_AsUTF8(s) : "<missing>";
    Py_XDECREF(s);
    return out;
  };
  if (get("_testcapi") == "None") {
    skip("this CPython has no _testcapi: a channel's lack-of-memory paths are not tested");
  } else {
    CHECK(get("single") == "['MemoryError', 2, True, 7]");
    CHECK(get("batch") == "['MemoryError', 4, True]");
    CHECK(get("later") == "['MemoryError', 3, [b'" + std::string(100, 'z') + "', 6, 8]]");
  }
  Py_DECREF(globals);
}
