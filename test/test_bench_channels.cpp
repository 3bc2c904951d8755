// `isola bench channels --quick --json`, run as a program: it succeeds and reports every figure
// as a positive number (CPython's interpreter queues only exist from 3.13 on: null on 3.12).
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <cstdlib>
#include <string>
#include <vector>


TEST_CASE("isola bench channels --quick --json reports every figure", "[bench-channels]") {
  // The bench inherits this process's CPUs, which the pinning check below reads.
  // Parsed by Python's json module, in an interpreter of this process.
  auto b = isola_test::run_bench({"channels", "--quick"});
  isola::interpreter& in = *b.in;
  in.exec(
      "import sys\n"
      "required = ['py_msgs_per_s_int', 'cpython_queue_msgs_per_s_int',\n"
      "            'mp_queue_msgs_per_s_int', 'py_batch_items_per_s', 'pingpong_rtt_us_p50',\n"
      "            'pingpong_rtt_us_p99', 'cpp_msgs_per_s', 'cpp_msgs_per_s_receiver_waits',\n"
      "            'cpp_batch_items_per_s',\n"
      "            'zero_copy_100mb_ms', 'bytes_100mb_ms', 'cpython_queue_100mb_ms',\n"
      "            'bytes_vs_cpython_queue', 'cpp_msgs_per_s_min', 'cpp_msgs_per_s_max',\n"
      "            'boost_mpmc_msgs_per_s', 'boost_spsc_msgs_per_s', 'cpp_vs_boost_mpmc',\n"
      "            'cpp_vs_boost_spsc',\n"
      "            'py_vs_cpython_queue', 'py_vs_mp_queue', 'py_send_ns_cpu', 'py_recv_ns_cpu',\n"
      "            'cpp_send_recv_ns_cpu', 'py_msgs_cores_used', 'py_vs_cpython_queue_cpu',\n"
      "            'py_no_channel_per_s_int', 'py_vs_no_channel', 'py_batch_no_channel_per_s',\n"
      "            'py_batch_vs_no_channel', 'py_c_method_send_ns_cpu', 'py_c_method_recv_ns_cpu',\n"
      "            'py_msgs_per_s_int_unbounded', 'unbounded_vs_bounded',\n"
      "            'py_paced_msgs_per_s_int_unbounded', 'paced_unbounded_vs_bounded',\n"
      "            'unbounded_burst_items', 'unbounded_burst_peak_mib', 'unbounded_first_ring_mib']\n"
      "# Memory left after the burst is drained: a number, 0 or near it (the page cache can make\n"
      "# it slightly negative).\n"
      "after = results.get('unbounded_burst_after_mib')\n"
      "optional = set()\n"
      "if sys.version_info < (3, 13):\n"
      "    # No test.support.interpreters.queues: the suite reports null for these.\n"
      "    optional = {'cpython_queue_msgs_per_s_int', 'cpython_queue_100mb_ms',\n"
      "                'py_vs_cpython_queue', 'py_vs_cpython_queue_cpu', 'bytes_vs_cpython_queue'}\n"
      "bad = [f'{k}={results.get(k)!r}' for k in required\n"
      "       if not (k in optional and k in results and results[k] is None)\n"
      "       and not (isinstance(results.get(k), (int, float)) and results[k] > 0)]\n"
      "if not isinstance(after, (int, float)):\n"
      "    bad.append(f'unbounded_burst_after_mib={after!r}')\n"
      "# Shares of the CPU time a hypervisor took: percentages, possibly 0. A run too short for\n"
      "# a clock tick (100 a second) has none: null.\n"
      "def percent(v): return isinstance(v, (int, float)) and 0 <= v <= 100\n"
      "if not percent(results.get('cpu_stolen_pct')):\n"
      "    bad.append(f\"cpu_stolen_pct={results.get('cpu_stolen_pct')!r}\")\n"
      "for k in ['py_msgs_cpu_stolen_pct', 'py_batch_cpu_stolen_pct', 'cpp_cpu_stolen_pct']:\n"
      "    if k not in results or not (results[k] is None or percent(results[k])):\n"
      "        bad.append(f'{k}={results.get(k)!r}')\n"
      "lo, mid, hi = (results.get(k) for k in\n"
      "               ('cpp_msgs_per_s_min', 'cpp_msgs_per_s', 'cpp_msgs_per_s_max'))\n"
      "if not (isinstance(lo, (int, float)) and lo <= mid <= hi):\n"
      "    bad.append(f'cpp_msgs_per_s {mid!r} outside [{lo!r}, {hi!r}]')\n"
      "# Pinned when the machine lets this process run on two CPUs or more.\n"
      "import os\n"
      "expect_pinned = 1 if len(os.sched_getaffinity(0)) >= 2 else 0\n"
      "if results.get('cpp_threads_pinned') != expect_pinned:\n"
      "    bad.append(f\"cpp_threads_pinned={results.get('cpp_threads_pinned')!r}\")\n"
      "problem = ', '.join(bad)\n");
  INFO(b.run.out);
  CHECK(in.get_global("problem").as_str() == "");
}

TEST_CASE("isola bench channels --no-pin leaves the C++ threads unpinned", "[bench-channels]") {
  auto b = isola_test::run_bench({"channels", "--quick", "--no-peers", "--no-pin"});
  isola::interpreter& in = *b.in;
  in.exec("pinned = results['cpp_threads_pinned']\n"
          "peers = [results['boost_mpmc_msgs_per_s'] > 0, results['cpp_vs_boost_spsc'] > 0]\n");
  CHECK(in.get_global("pinned").as_int() == 0);
  CHECK(in.get_global("peers").repr() == "[True, True]");
}
