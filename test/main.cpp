// The suite's main: one isola::runtime for the whole run (CPython can be initialised once per
// process), then Catch's session. The helper modules in test/py are on every sys.path.
// Exits with 77 (meson's SKIP) when a case called skip() and none failed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <memory>
#include <string>

namespace {
isola::runtime* the_runtime = nullptr;
bool any_skipped = false;
}  // namespace

isola::runtime& isola_test::rt() { return *the_runtime; }

void isola_test::skip(const std::string& why) {
  any_skipped = true;
  WARN("SKIPPED: " << why);
}

bool isola_test::skipped() { return any_skipped; }

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
  if (failed == 0 && isola_test::skipped()) return 77;  // meson's "skipped"
  return failed;
}
