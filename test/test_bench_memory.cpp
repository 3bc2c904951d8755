// `isola bench memory --quick --json`, run as a program: its child processes (accounting off,
// on, on with a limit) all run, and it reports every figure as a plausible number. No timing
// thresholds: a test never judges speed.
#include <catch2/catch.hpp>

#include "test/support.hpp"

TEST_CASE("isola bench memory --quick --json reports every figure", "[bench-memory]") {
  // Parsed by Python's json module, in an interpreter of this process.
  auto b = isola_test::run_bench({"memory", "--quick"});
  isola::interpreter& in = *b.in;
  in.exec(
      "import math\n"
      "def number(k):\n"
      "    v = results.get(k)\n"
      "    return v if isinstance(v, (int, float)) and math.isfinite(v) else None\n"
      "bad = [f'{k}={results.get(k)!r}' for k in\n"
      "       ['overhead_accounting', 'overhead_limit', 'seconds_off', 'seconds_on',\n"
      "        'seconds_limit', 'peak_per_interp_mib']\n"
      "       if not (number(k) is not None and number(k) > 0)]\n"
      "# A fresh interpreter holds a few MiB (its object arenas, modules, thread state).\n"
      "idle = number('bytes_per_interp_idle')\n"
      "if idle is None or not (1 << 20) <= idle <= (64 << 20):\n"
      "    bad.append(f\"bytes_per_interp_idle={results.get('bytes_per_interp_idle')!r}\")\n"
      "# The workload holds more than an idle interpreter at its peak.\n"
      "peak = number('peak_per_interp_mib')\n"
      "if idle is not None and peak is not None and peak * (1 << 20) <= idle:\n"
      "    bad.append(f'peak_per_interp_mib={peak!r} not above the idle {idle!r} B')\n"
      "# Load averages (-1 where they cannot be read) and a share of CPU time in percent; a run\n"
      "# too short for a clock tick has no share: null.\n"
      "for k in ['load_avg_1m_start', 'load_avg_1m_end']:\n"
      "    if number(k) is None or number(k) < -1:\n"
      "        bad.append(f'{k}={results.get(k)!r}')\n"
      "stolen = results.get('cpu_stolen_pct', 'missing')\n"
      "if not (stolen is None or (number('cpu_stolen_pct') is not None and 0 <= stolen <= 100)):\n"
      "    bad.append(f'cpu_stolen_pct={stolen!r}')\n"
      "problem = ', '.join(bad)\n");
  INFO(b.run.out);
  CHECK(in.get_global("problem").as_str() == "");
}

TEST_CASE("isola bench memory refuses a limit it cannot read", "[bench-memory]") {
  auto r = isola_test::run_program({isola_test::isola_path(), "bench", "memory", "--quick",
                                    "--limit", "lots"});
  INFO(r.describe());
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("lots") != std::string::npos);
}
