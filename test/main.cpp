// The suite's main: one isola::runtime for the whole run (CPython can be initialised once per
// process), then Catch's session. The helper modules in test/py are on every sys.path.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <memory>

namespace {
isola::runtime* the_runtime = nullptr;
}

isola::runtime& isola_test::rt() { return *the_runtime; }

int main(int argc, char* argv[]) {
  isola::runtime_options options;
  options.program_name = "isola_tests";
  options.sys_path = {isola_test::py_dir()};
  options.argv = {"isola_tests", "--from-main"};
  auto runtime = std::make_unique<isola::runtime>(options);
  the_runtime = runtime.get();
  int failed = Catch::Session().run(argc, argv);
  the_runtime = nullptr;
  runtime.reset();  // ends every interpreter a test left alive, then finalises CPython
  return failed;
}
