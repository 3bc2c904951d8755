// The extension policy: strict refusals that say why and what to do, unsafe loading with a
// warning, the allow-list, the shared-GIL lane, and the pool's automatic lane. The modules are
// the suite's own (test/ext): single-phase, multi-phase without the slot, multi-phase with
// Py_MOD_PER_INTERPRETER_GIL_SUPPORTED, and single-phase with a Python object in C globals.
#include "support.hpp"

#include <isola/isola.hpp>

#include <catch2/catch.hpp>

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
