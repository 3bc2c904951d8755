// `isola compat`, run as a program: known modules are ok, a missing one is reported, and a
// module that exits, aborts, crashes or hangs at import (or crashes at teardown) is a row of
// the result while the run goes on; --path on a folder and on a file; --json and --markdown.
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace {

using isola_test::temp_dir;
using isola_test::write_file;

isola_test::program_result run_compat(const std::vector<std::string>& args) {
  std::vector<std::string> argv{isola_test::isola_path(), "compat"};
  argv.insert(argv.end(), args.begin(), args.end());
  return isola_test::run_program(argv);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// The rows of `isola compat ... --json` as {module: (label, details)}, in an interpreter of
/// this process; the JSON is parsed by Python's json module.
struct json_rows {
  isola::interpreter in;
  explicit json_rows(const std::string& text) {
    in.set_global("text", text);
    in.exec(
        "import json\n"
        "doc = json.loads(text)\n"
        "rows = {m['module']: (m['label'], m['details']) for m in doc['modules']}\n");
  }
  std::string label(const std::string& module) {
    in.set_global("name", module);
    return in.eval("rows[name][0] if name in rows else 'missing'").as_str();
  }
  std::string details(const std::string& module) {
    in.set_global("name", module);
    return in.eval("rows[name][1] if name in rows else 'missing'").as_str();
  }
  std::int64_t count() { return in.eval("len(rows)").as_int(); }
};

/// A folder of modules that misbehave at import or teardown, and two that do not.
struct bad_modules {
  temp_dir dir;
  bad_modules() {
    write_file(dir.file("calls_exit.py"), "import os\nos._exit(3)\n");
    write_file(dir.file("calls_abort.py"), "import os\nos.abort()\n");
    write_file(dir.file("segfaults.py"),
               "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n");
    write_file(dir.file("sleeps.py"), "import time\nwhile True:\n    time.sleep(0.1)\n");
    write_file(dir.file("segfaults_at_end.py"),
               "import atexit, os, signal\n"
               "atexit.register(lambda: os.kill(os.getpid(), signal.SIGSEGV))\n");
    write_file(dir.file("plain.py"), "VALUE = 1\n");
    std::filesystem::create_directories(dir.file("pkg"));
    write_file(dir.file("pkg/__init__.py"), "from . import sub\n");
    write_file(dir.file("pkg/sub.py"), "VALUE = 2\n");
  }
};

}  // namespace

TEST_CASE("isola compat: json and math are ok, used in two interpreters", "[compat]") {
  auto r = run_compat({"json", "math"});
  INFO(r.describe());
  CHECK(r.exit_code == 0);
  CHECK(contains(r.out, "json"));
  CHECK(contains(r.out, "used: json dumps/loads round trip"));
  CHECK(contains(r.out, "used: math"));
  CHECK(contains(r.out, "2 modules: 2 ok"));
  CHECK(contains(r.err, "[compat] "));  // progress on stderr

  auto j = run_compat({"--json", "-q", "json", "math"});
  INFO(j.describe());
  REQUIRE(j.exit_code == 0);
  CHECK(j.err.find("[compat]") == std::string::npos);  // --quiet
  json_rows rows(j.out);
  CHECK(rows.count() == 2);
  CHECK(rows.label("json") == "ok");
  CHECK(rows.label("math") == "ok");
}

TEST_CASE("isola compat: a module that does not exist is its row, and the run fails",
          "[compat]") {
  auto r = run_compat({"--json", "no_such_module_for_isola", "json"});
  INFO(r.describe());
  CHECK(r.exit_code == 1);
  json_rows rows(r.out);
  CHECK(rows.label("no_such_module_for_isola") == "not found");
  CHECK(contains(rows.details("no_such_module_for_isola"), "No module named"));
  CHECK(rows.label("json") == "ok");
}

TEST_CASE("isola compat --path: exits, aborts, crashes and hangs are rows; the run goes on",
          "[compat]") {
  bad_modules m;
  auto r = run_compat({"--path", m.dir.path(), "--timeout", "2", "--json"});
  INFO(r.describe());
  CHECK(r.exit_code == 1);
  json_rows rows(r.out);
  CHECK(rows.count() == 7);  // every module in the folder, the package too
  // os._exit and os.abort are refused in isola's interpreters: the import raises.
  CHECK(rows.label("calls_exit") == "fails at import");
  CHECK(contains(rows.details("calls_exit"), "os._exit(3) is refused"));
  CHECK(rows.label("calls_abort") == "fails at import");
  CHECK(contains(rows.details("calls_abort"), "os.abort() is refused"));
  // AddressSanitizer catches a segfault itself: it reports "SEGV" and aborts (abort_on_error),
  // or exits with status 1 when it faults again while reporting.
  auto segv = [](const std::string& details) {
#if defined(__SANITIZE_ADDRESS__)
    return contains(details, "SIGSEGV") || contains(details, "SIGABRT") ||
           contains(details, "AddressSanitizer: SEGV");
#else
    return contains(details, "SIGSEGV");
#endif
  };
  CHECK(rows.label("segfaults") == "crashes at import");
  CHECK(segv(rows.details("segfaults")));
  CHECK(rows.label("segfaults_at_end") == "crashes at teardown");
  CHECK(segv(rows.details("segfaults_at_end")));
  CHECK(rows.label("sleeps") == "hangs at import");
  CHECK(contains(rows.details("sleeps"), "killed"));
  CHECK(rows.label("plain") == "ok");
  CHECK(rows.label("pkg") == "ok");

  // Named modules, found in the folder.
  auto named = run_compat({"--path", m.dir.path(), "plain", "pkg.sub"});
  INFO(named.describe());
  CHECK(named.exit_code == 0);
  CHECK(contains(named.out, "2 modules: 2 ok"));
}

TEST_CASE("isola compat: usage errors exit 2 and say what was wrong", "[compat]") {
  temp_dir d;
  write_file(d.file("module.py"), "X = 1\n");
  auto file = run_compat({"--path", d.file("module.py")});
  INFO(file.describe());
  CHECK(file.exit_code == 2);
  CHECK(contains(file.err, "is not a folder"));
  CHECK(file.out.empty());

  auto missing = run_compat({"--path", d.file("nothing-here")});
  INFO(missing.describe());
  CHECK(missing.exit_code == 2);
  CHECK(contains(missing.err, "does not exist"));

  auto none = run_compat({});
  INFO(none.describe());
  CHECK(none.exit_code == 2);
  CHECK(contains(none.err, "which modules?"));

  auto both = run_compat({"--stdlib", "json"});
  INFO(both.describe());
  CHECK(both.exit_code == 2);

  auto formats = run_compat({"--json", "--markdown", "json"});
  INFO(formats.describe());
  CHECK(formats.exit_code == 2);

  auto help = run_compat({"--help"});
  INFO(help.describe());
  CHECK(help.exit_code == 0);
  CHECK(contains(help.out, "Examples:"));
  CHECK_FALSE(contains(help.out, "--child"));  // the child modes are hidden
}

TEST_CASE("isola compat --markdown prints a table with a header", "[compat]") {
  auto r = run_compat({"--markdown", "-q", "json"});
  INFO(r.describe());
  CHECK(r.exit_code == 0);
  CHECK(contains(r.out, "# Module compatibility"));
  CHECK(contains(r.out, "| module | outcome | details |\n|---|---|---|\n"));
  CHECK(contains(r.out, "| `json` | ok |"));
}
