// The extension policy: strict refusals that say why and what to do, unsafe loading with a
// warning, the allow-list, the shared-GIL lane, and the pool's automatic lane. The modules are
// the suite's own (test/ext): single-phase, multi-phase without the slot, multi-phase with
// Py_MOD_PER_INTERPRETER_GIL_SUPPORTED, and single-phase with a Python object in C globals.
#include "support.hpp"

#include <Python.h>

#include <isola/isola.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include <unistd.h>
#include <string>

namespace {

isola::interpreter_config with_ext(isola::interpreter_config c = {}) {
  c.sys_path.push_back(ISOLA_TEST_EXT_DIR);
  return c;
}

isola::interpreter_config unsafe(std::vector<std::string> only = {}) {
  isola::interpreter_config c;
  if (only.empty()) {
    c.extensions = isola::extension_policy::unsafe;
  } else {
    c.unsafe_extensions = std::move(only);
  }
  return with_ext(c);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Imports `module` with warnings recorded; returns "ok N" (N warnings) or the exception.
std::string import_recording(isola::interpreter& in, const std::string& module) {
  return in
      .eval("(lambda: __import__('_isola_ext_probe').probe('" + module + "'))()")
      .as_str();
}

constexpr const char* probe_module =
    "import sys, types, warnings\n"
    "m = types.ModuleType('_isola_ext_probe')\n"
    "exec('''\n"
    "import importlib, warnings\n"
    "def probe(name):\n"
    "    with warnings.catch_warnings(record=True) as seen:\n"
    "        warnings.simplefilter('always')\n"
    "        try:\n"
    "            importlib.import_module(name)\n"
    "        except ImportError as e:\n"
    "            return 'ImportError: ' + str(e)\n"
    "    return 'ok %d ' % len(seen) + ' | '.join(\n"
    "        type(w.message).__name__ + ': ' + str(w.message) for w in seen)\n"
    "''', m.__dict__)\n"
    "sys.modules['_isola_ext_probe'] = m\n";

}  // namespace

TEST_CASE("strict refuses a module without per-interpreter GIL support, saying why and what "
          "to do",
          "[extensions]") {
  isola::interpreter in(with_ext());
  in.exec(probe_module);
  CHECK(in.eval("__import__('isola').extension_policy()").as_str() == "strict");

  const auto single = import_recording(in, "isola_ext_single");
  INFO(single);
  CHECK(contains(single, "ImportError: module 'isola_ext_single'"));
  CHECK(contains(single, "cannot be loaded in an own-GIL interpreter"));
  CHECK(contains(single, "single-phase init"));
  CHECK(contains(single, "shared-GIL lane"));
  CHECK(contains(single, "'unsafe' policy"));

  const auto noslot = import_recording(in, "isola_ext_multi_noslot");
  INFO(noslot);
  CHECK(contains(noslot, "ImportError: module 'isola_ext_multi_noslot'"));
  CHECK(contains(noslot, "no Py_mod_multiple_interpreters slot"));

  CHECK(import_recording(in, "isola_ext_pergil") == "ok 0 ");
  CHECK(in.eval("__import__('isola_ext_pergil').bump()").as_int() == 1);
  // The ImportError carries the module's name and path.
  in.exec(
      "try:\n"
      "    import isola_ext_multi_noslot\n"
      "except ImportError as e:\n"
      "    refused = (e.name, e.path.endswith('isola_ext_multi_noslot.so'))\n");
  CHECK(in.eval("refused").repr() == "('isola_ext_multi_noslot', True)");
}

TEST_CASE("unsafe loads it anyway and warns once per interpreter, naming the module",
          "[extensions]") {
  isola::interpreter in(unsafe());
  in.exec(probe_module);
  CHECK(in.eval("__import__('isola').extension_policy()").as_str() == "unsafe");
  const auto r = import_recording(in, "isola_ext_multi_noslot");
  INFO(r);
  CHECK(r.starts_with("ok 1 UnsafeExtensionWarning: extension module 'isola_ext_multi_noslot'"));
  CHECK(contains(r, "no Py_mod_multiple_interpreters slot"));
  CHECK(in.eval("__import__('isola_ext_multi_noslot').answer()").as_int() == 42);
  CHECK(in.eval("issubclass(__import__('isola').UnsafeExtensionWarning, RuntimeWarning)").as_bool());
  // Loaded again (not from sys.modules): no second warning in this interpreter.
  in.exec("import sys\ndel sys.modules['isola_ext_multi_noslot']");
  CHECK(import_recording(in, "isola_ext_multi_noslot") == "ok 0 ");
  // The usual warnings filters apply to it: here, it becomes an error.
  isola::interpreter other(unsafe());
  other.exec("import warnings, isola\nwarnings.simplefilter('error', isola.UnsafeExtensionWarning)\n");
  auto e = isola_test::python_error_of([&] { other.exec("import isola_ext_multi_noslot"); });
  REQUIRE(e);
  CHECK(contains(e->type_name(), "UnsafeExtensionWarning"));
}

TEST_CASE("an allow-list makes only the listed modules unsafe", "[extensions]") {
  isola::interpreter in(unsafe({"isola_ext_single"}));
  in.exec(probe_module);
  CHECK(in.eval("__import__('isola').extension_policy()").as_str() == "strict");
  const auto single = import_recording(in, "isola_ext_single");
  INFO(single);
  CHECK(single.starts_with("ok 1 UnsafeExtensionWarning: extension module 'isola_ext_single'"));
  CHECK(contains(single, "single-phase init"));
  CHECK(in.eval("__import__('isola_ext_single').bump()").as_int() >= 1);
  CHECK(import_recording(in, "isola_ext_multi_noslot").starts_with("ImportError: "));
}

TEST_CASE("a built-in module without per-interpreter GIL support gets the same policy",
          "[extensions]") {
  // faulthandler is compiled into CPython (origin "built-in") and has no
  // Py_mod_multiple_interpreters slot in 3.12 and 3.13.
  isola::interpreter strict;
  strict.exec(probe_module);
  const auto refused = import_recording(strict, "faulthandler");
  INFO(refused);
  CHECK(contains(refused, "ImportError: module 'faulthandler' (built-in) cannot be loaded in an "
                          "own-GIL interpreter"));
  CHECK(contains(refused, "no Py_mod_multiple_interpreters slot"));
  CHECK(contains(refused, "shared-GIL lane"));

  isola::interpreter in(unsafe({"faulthandler"}));
  in.exec(probe_module);
  const auto loaded = import_recording(in, "faulthandler");
  INFO(loaded);
  CHECK(loaded.starts_with("ok 1 UnsafeExtensionWarning: extension module 'faulthandler' "
                           "(built-in)"));
  CHECK(in.eval("__import__('faulthandler').is_enabled()").as_bool() == false);
  // A name that is not built in still gets the importer's own error.
  auto e = isola_test::python_error_of([&] {
    in.exec("import importlib.machinery as m\n"
            "m.BuiltinImporter.create_module(m.ModuleSpec('no_such_builtin', None))");
  });
  REQUIRE(e);
  CHECK(contains(e->what(), "'no_such_builtin' is not a built-in module"));
}

TEST_CASE("C global state is shared between interpreters that load a module unsafely",
          "[extensions]") {
  // The danger strict prevents: one list, made by whichever interpreter loaded the module
  // first, appended to by both (one small, immortal int each, so that no block changes hands).
  isola::interpreter a(unsafe()), b(unsafe());
  a.exec("import warnings\nwarnings.simplefilter('ignore')\nimport isola_ext_global as g");
  b.exec("import warnings\nwarnings.simplefilter('ignore')\nimport isola_ext_global as g");
  CHECK(a.eval("g.note(1)").as_int() == 1);
  CHECK(b.eval("g.note(1)").as_int() == 2);  // b sees a's list
}

TEST_CASE("the shared-GIL lane loads any extension module", "[extensions]") {
  isola::interpreter in(with_ext(isola::interpreter_config::shared_gil()));
  in.exec(probe_module);
  CHECK(in.eval("__import__('isola').extension_policy()").as_str() == "shared-gil");
  CHECK(import_recording(in, "isola_ext_multi_noslot") == "ok 0 ");
  CHECK(in.eval("__import__('isola_ext_multi_noslot').answer()").as_int() == 42);
  CHECK(import_recording(in, "isola_ext_pergil") == "ok 0 ");
}

TEST_CASE("invalid policy settings are refused before CPython sees them", "[extensions]") {
  isola::interpreter_config c;
  c.extensions = isola::extension_policy::shared_gil;
  CHECK(contains(c.validate(), "shared_gil()"));
  c.extensions = isola::extension_policy::automatic;
  CHECK(contains(c.validate(), "pool_options::extensions"));
  // An own GIL with the main allocator: CPython accepts it, isola does not.
  isola::interpreter_config own_main;
  own_main.use_main_obmalloc = true;
  CHECK(contains(own_main.validate(), "own GIL needs its own object allocator"));
}

namespace {
isola::pool_options ext_pool(isola::extension_policy p) {
  isola::pool_options o;
  o.size = 1;
  o.extensions = p;
  o.sys_path.push_back(ISOLA_TEST_EXT_DIR);
  return o;
}
}  // namespace

TEST_CASE("auto re-runs a refused task in the shared-GIL lane and remembers its module",
          "[extensions][pool]") {
  isola::pool p(ext_pool(isola::extension_policy::automatic));
  REQUIRE(p.lane_size() == 1);
  CHECK(p.submit("isola_test_ext_task:policy").get().as_str() == "strict");
  if (PY_VERSION_HEX < 0x030D0000) {
    // 3.12 runs a single-phase init inside the interpreter before refusing it: no re-run,
    // only the configured list routes (below).
    auto e = isola_test::python_error_of([&] { p.submit("isola_test_ext_task:use_single").get(); });
    REQUIRE(e);
    CHECK(e->type_name() == "ImportError");
    CHECK(p.lane_modules().empty());
    return;
  }
  // Refused in the own-GIL interpreter, then run from the start in the lane.
  CHECK(p.submit("isola_test_ext_task:use_single").get().repr() == "['shared-gil', True]");
  auto modules = p.lane_modules();
  CHECK(std::find(modules.begin(), modules.end(), "isola_ext_single") != modules.end());
  CHECK(std::find(modules.begin(), modules.end(), "isola_test_ext_task") != modules.end());
  // Remembered: the next task that names the module goes to the lane directly.
  CHECK(p.submit("isola_test_ext_task:policy").get().as_str() == "shared-gil");
  const auto s = p.stats().interpreters;
  REQUIRE(s.size() == 2);
  CHECK_FALSE(s[0].shared_gil_lane);
  CHECK(s[0].rerouted == 1);
  CHECK(s[1].shared_gil_lane);
  CHECK(s[1].tasks_done == 2);
}

TEST_CASE("a pool routes the listed modules to its shared-GIL lane", "[extensions][pool]") {
  auto o = ext_pool(isola::extension_policy::strict);
  o.shared_gil_modules = {"isola_test_ext_task"};
  isola::pool p(o);
  CHECK(p.submit("isola_test_ext_task:use_single").get().repr() == "['shared-gil', True]");
  isola::task_options own;
  own.lane = isola::task_options::lane_choice::own_gil;
  CHECK(p.submit_with("isola_test_ext_task:policy", {}, {}, own).get().as_str() == "strict");
  CHECK(p.submit_code("__import__('isola').extension_policy()").get().as_str() == "strict");
  isola::task_options lane;
  lane.lane = isola::task_options::lane_choice::shared_gil;
  CHECK(p.submit_code("__import__('isola').extension_policy()", lane).get().as_str() ==
        "shared-gil");
}

TEST_CASE("a pool's policy applies to all its interpreters", "[extensions][pool]") {
  {
    isola::pool p(ext_pool(isola::extension_policy::shared_gil));
    CHECK(p.lane_size() == 0);
    CHECK(p.submit("isola_test_ext_task:use_single").get().repr() == "['shared-gil', True]");
  }
  {
    isola::pool p(ext_pool(isola::extension_policy::unsafe));
    CHECK(p.submit("isola_test_ext_task:use_single").get().repr() == "['unsafe', True]");
  }
  isola::pool strict(ext_pool(isola::extension_policy::strict));
  isola::task_options lane;
  lane.lane = isola::task_options::lane_choice::shared_gil;
  CHECK_THROWS_AS(strict.submit_code("1", lane), std::invalid_argument);
  auto e = isola_test::python_error_of([&] { strict.submit("isola_test_ext_task:use_single").get(); });
  REQUIRE(e);
  CHECK(contains(e->message(), "cannot be loaded in an own-GIL interpreter"));
}

TEST_CASE("an extension import in an own-GIL interpreter does not wait for another's work",
          "[extensions]") {
  // A spins (its own GIL, never released) until B says its import is done. On 3.13 the
  // import runs the module's init in the main interpreter: it must not need anything A holds.
  isola::interpreter a, b(with_ext());
  const std::string name = "ext-import-" + std::to_string(b.id());
  auto keep = isola::channel::open(name, 4);
  auto spinning = a.eval_async(
      "(lambda ch, time: next((True for _ in iter(int, 1) if not ch.empty()) "
      "if True else None))(__import__('isola').channel('" + name + "'), __import__('time'))");
  b.exec("import isola, isola_ext_pergil\nisola.channel('" + name + "').put_nowait(isola_ext_pergil.bump())");
  CHECK(spinning.get().as_bool());
}

TEST_CASE("CPython 3.12.0-3.12.3's crash at exit after keyword arguments (gh-119213) is "
          "named at start-up",
          "[extensions]") {
  // The script passes a keyword argument to a compiled stdlib function in an own-GIL
  // interpreter. Fixed versions exit cleanly; affected ones abort in Py_Finalize, which isola
  // cannot prevent, so it warns at start-up, naming the bug and the version that fixes it.
  const std::string script =
      (std::filesystem::temp_directory_path() / ("isola-gh119213-" + std::to_string(getpid()) + ".py"))
          .string();
  {
    std::FILE* f = std::fopen(script.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs("import _bisect\nprint(_bisect.bisect_left([1, 2, 3], 2, lo=0))\n", f);
    std::fclose(f);
  }
  auto r = isola_test::run_program({isola_test::isola_path(), "run", "-n", "1", script}, "", 120);
  std::filesystem::remove(script);
  INFO(r.describe());
  CHECK(r.out == "1\n");
  const bool affected = PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030C04F0;
  CHECK(contains(r.err, "gh-119213") == affected);
  if (affected) {
    CHECK(contains(r.err, "3.12.4"));
  } else {
    CHECK(r.exit_code == 0);
  }
}
