// The `isola` command line, run as a program: map's output order and failure reports, usage
// errors (exit 2), run --stats and --timeout, --help of every command, bench pool's JSON.
#include <catch2/catch.hpp>

#include "support.hpp"

#include <cstdlib>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

namespace {

using isola_test::temp_dir;
using isola_test::write_file;

/// The isola executable of this build ($ISOLA_CLI overrides it).
std::string isola_path() {
  if (const char* p = std::getenv("ISOLA_CLI"); p != nullptr && *p != '\0') return p;
  return ISOLA_TEST_CLI;
}

/// Runs `isola args...` with `input` on stdin and waits for it.
isola_test::program_result run_isola(const std::vector<std::string>& args,
                                     const std::string& input = "") {
  std::vector<std::string> argv{isola_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  return isola_test::run_program(argv, input);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// stderr without the runtime's start-up warning about gh-119213, which every run on CPython
/// 3.12.0-3.12.3 prints (tests that want "nothing on stderr" mean nothing else).
std::string unexpected_stderr(const std::string& err) {
  std::string out;
  std::size_t at = 0;
  while (at < err.size()) {
    std::size_t end = err.find('\n', at);
    end = end == std::string::npos ? err.size() : end + 1;
    const std::string line = err.substr(at, end - at);
    if (!(contains(line, "[isola.runtime] [warning]") && contains(line, "gh-119213"))) out += line;
    at = end;
  }
  return out;
}

/// A folder holding the module map's tests call.
struct map_module {
  temp_dir dir;
  map_module() {
    write_file(dir.file("cli_mod.py"),
               "def twice(x):\n"
               "    return x * 2\n"
               "\n"
               "def boom(x):\n"
               "    if x == 3:\n"
               "        raise ValueError(f'bad {x}')\n"
               "    return x\n"
               "\n"
               "def record(x):\n"
               "    # Leaves a trace, so a test can tell that the function was called.\n"
               "    import os\n"
               "    open(os.path.join(os.path.dirname(__file__), 'called'), 'a').close()\n"
               "    return x\n");
  }
  std::vector<std::string> args(const std::string& target,
                                std::vector<std::string> extra = {}) const {
    std::vector<std::string> a{"map", target, "--path", dir.path()};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
};

}  // namespace

TEST_CASE("isola map prints each result's repr in input order", "[cli]") {
  map_module m;
  // Two interpreters and chunks of one, so neighbouring inputs run in different interpreters.
  auto r = run_isola(m.args("cli_mod:twice", {"-n", "2", "--chunk-size", "1"}),
                     "3\n1\n\n  2  \n'ab'\n[1, 2]\n(1,)\n-1.5\nTrue\n");
  INFO(r.describe());
  CHECK(r.exit_code == 0);
  CHECK(r.out == "6\n2\n4\n'abab'\n[1, 2, 1, 2]\n(1, 1)\n-3.0\n2\n");
  CHECK(unexpected_stderr(r.err).empty());
}

TEST_CASE("isola map keeps the order of many inputs across chunks", "[cli]") {
  map_module m;
  std::string input, expected;
  for (int i = 0; i < 500; ++i) {
    input += std::to_string(i) + "\n";
    expected += std::to_string(2 * i) + "\n";
  }
  auto r = run_isola(m.args("cli_mod:twice", {"-n", "2", "-c", "7"}), input);
  INFO(r.describe());
  CHECK(r.exit_code == 0);
  CHECK(r.out == expected);
  CHECK(unexpected_stderr(r.err).empty());  // short input, not a terminal: no progress, no summary
}

TEST_CASE("isola map names a failing input and still prints the others", "[cli]") {
  map_module m;
  auto r = run_isola(m.args("cli_mod:boom", {"-n", "2"}), "1\n2\n3\n4\n");
  INFO(r.describe());
  CHECK(r.exit_code == 1);
  CHECK(r.out == "1\n2\n4\n");  // nothing in the failed line's place
  CHECK(contains(r.err, "map: line 3: boom(3) raised ValueError: bad 3"));
  CHECK(contains(r.err, "Traceback"));
  CHECK(contains(r.err, "4 inputs, 3 ok, 1 failed (line 3)"));
}

TEST_CASE("isola map usage errors exit with 2 and say what to fix", "[cli]") {
  map_module m;
  SECTION("a target without ':'") {
    auto r = run_isola(m.args("cli_mod.twice"), "1\n");
    INFO(r.describe());
    CHECK(r.exit_code == 2);
    CHECK(contains(r.err, "bad target 'cli_mod.twice'"));
    CHECK(contains(r.err, "module:function"));
    CHECK(r.out.empty());
  }
  SECTION("an input file that does not exist") {
    auto r = run_isola(m.args("cli_mod:twice", {"--input", m.dir.file("missing.txt")}));
    INFO(r.describe());
    CHECK(r.exit_code == 2);
    CHECK(contains(r.err, "cannot open input file"));
    CHECK(contains(r.err, "missing.txt"));
  }
  SECTION("a line that is not a Python literal: nothing runs") {
    write_file(m.dir.file("in.txt"), "1\n2\n3\n4\n5\n6\nfoo(\n8\n");
    auto r = run_isola(m.args("cli_mod:record", {"--input", m.dir.file("in.txt")}));
    INFO(r.describe());
    CHECK(r.exit_code == 2);
    CHECK(contains(r.err, "line 7: cannot parse 'foo(' as a Python literal: SyntaxError"));
    CHECK(contains(r.err, "nothing was run"));
    CHECK(contains(r.err, "quote"));  // the fix: what a literal looks like
    CHECK(r.out.empty());
    CHECK_FALSE(std::filesystem::exists(m.dir.file("called")));
  }
  SECTION("a module that cannot be imported") {
    auto r = run_isola(m.args("no_such_module_xyz:f"), "1\n");
    INFO(r.describe());
    CHECK(r.exit_code == 2);
    CHECK(contains(r.err, "cannot import module 'no_such_module_xyz'"));
    CHECK(contains(r.err, "--path"));
  }
  SECTION("a function the module does not have") {
    auto r = run_isola(m.args("cli_mod:nope"), "1\n");
    INFO(r.describe());
    CHECK(r.exit_code == 2);
    CHECK(contains(r.err, "has no function 'nope'"));
  }
}

TEST_CASE("isola run --stats prints a line per interpreter", "[cli]") {
  temp_dir d;
  write_file(d.file("hello.py"), "import sys\nprint('hello', sys.argv[1:])\n");
  auto r = run_isola({"run", "-n", "2", "--stats", d.file("hello.py"), "a", "-n", "5"});
  INFO(r.describe());
  CHECK(r.exit_code == 0);
  CHECK(r.out == "hello ['a', '-n', '5']\nhello ['a', '-n', '5']\n");
  CHECK(contains(r.err, "2 interpreters, 2 ok, 0 failed"));
  CHECK(contains(r.err, "queue depth 0"));
  // Header, then one row per slot: slot, interpreter id, done, failed, timed out, busy s,
  // recycled, replaced.
  CHECK(contains(r.err, "done  failed  timed out"));
  std::regex row(R"(\n +([01]) +\d+ +1 +0 +0 +\d+\.\d+ +0 +0)");
  auto rows = std::distance(std::sregex_iterator(r.err.begin(), r.err.end(), row),
                            std::sregex_iterator());
  CHECK(rows == 2);
}

TEST_CASE("isola run --timeout stops an endless script and names its interpreter", "[cli]") {
  temp_dir d;
  write_file(d.file("spin.py"), "while True:\n    pass\n");
  auto r = run_isola({"run", "-n", "1", "--timeout", "0.5", "--stats", d.file("spin.py")});
  INFO(r.describe());
  CHECK(r.exit_code == 1);
  CHECK(std::regex_search(
      r.err, std::regex(R"(\[interp \d+\] failed in [0-9.]+ s: timed out after 0\.5 s)")));
  CHECK(contains(r.err, "TimeoutError"));
  CHECK(std::regex_search(r.err, std::regex(R"(\n +0 +\d+ +0 +1 +1 )")));  // failed 1, timed out 1
}

TEST_CASE("isola run reports a failing script and usage errors", "[cli]") {
  temp_dir d;
  write_file(d.file("fail.py"), "raise ValueError('boom')\n");
  auto r = run_isola({"run", "-n", "2", d.file("fail.py")});
  INFO(r.describe());
  CHECK(r.exit_code == 1);
  CHECK(contains(r.err, "failed in"));
  CHECK(contains(r.err, "ValueError: boom"));
  CHECK(contains(r.err, "2 interpreters, 0 ok, 2 failed"));

  auto missing = run_isola({"run", d.file("missing.py")});
  INFO(missing.describe());
  CHECK(missing.exit_code == 2);
  CHECK(contains(missing.err, "cannot open script"));

  auto none = run_isola({"run"});
  CHECK(none.exit_code == 2);
  CHECK(contains(none.err, "missing the script"));
}

TEST_CASE("every isola command has --help", "[cli]") {
  for (std::vector<std::string> cmd : {std::vector<std::string>{}, {"info"}, {"run"}, {"map"},
                                       {"bench"}, {"bench", "pool"}, {"bench", "startup"},
                                       {"bench", "channels"}}) {
    cmd.push_back("--help");
    auto r = run_isola(cmd);
    std::string line = "isola";
    for (const auto& w : cmd) line += " " + w;
    INFO(line << "\n" << r.describe());
    CHECK(r.exit_code == 0);
    CHECK(contains(r.out, "Usage"));
  }
}

TEST_CASE("isola bench pool --quick --json prints the figures and the peers'", "[cli]") {
  auto r = run_isola({"bench", "pool", "--quick", "--json", "--quiet"});
  INFO(r.describe());
  REQUIRE(r.exit_code == 0);
  // Parsed by Python's json module, in an interpreter of this process.
  isola::interpreter in;
  in.set_global("text", r.out);
  in.exec(
      "import json\n"
      "doc = json.loads(text)\n"
      "results = doc['results']\n"
      "required = ['trivial_tasks_per_s', 'processpool_trivial_tasks_per_s',\n"
      "            'threadpool_trivial_tasks_per_s', 'roundtrip_us_p50',\n"
      "            'processpool_roundtrip_us_p50', 'cpu_speedup', 'processpool_cpu_speedup',\n"
      "            'trivial_vs_processpool', 'trivial_vs_threadpool']\n"
      "bad = [k for k in required\n"
      "       if not isinstance(results.get(k), (int, float)) or not results[k] > 0]\n"
      "stolen = results.get('cpu_stolen_pct')  # a percentage, possibly 0\n"
      "if not (isinstance(stolen, (int, float)) and 0 <= stolen <= 100):\n"
      "    bad.append('cpu_stolen_pct')\n"
      "ratio = results['trivial_tasks_per_s'] / results['processpool_trivial_tasks_per_s']\n"
      // No keyword arguments to math.isclose: on CPython 3.12.0-3.12.3 that alone makes
      // Py_Finalize crash (gh-119213), and this test is not about that bug.
      "given = results['trivial_vs_processpool']\n"
      "ratio_ok = abs(ratio - given) <= 0.06 * max(abs(ratio), abs(given))\n"
      "suite = doc['suite']\n");
  INFO("bad keys: " << in.get_global("bad").repr());
  CHECK(in.get_global("bad").as_list().items.empty());
  CHECK(in.get_global("ratio_ok").as_bool());
  CHECK(in.get_global("suite").as_str() == "pool");
}
