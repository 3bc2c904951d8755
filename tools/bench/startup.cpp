// `isola bench startup`: what an isola interpreter costs against its peers in the same run.
// - creation time and memory against raw Py_NewInterpreterFromConfig on a thread of its own
//   (set up the way interp/worker.cpp does it, without isola's bookkeeping), interleaved;
// - CPU-bound parallelism: N tasks in N own-GIL interpreters, in N Python threads of one
//   interpreter, and in N shared-GIL interpreters, each against the same N tasks in series;
//   the same tasks in N python processes show the machine's own ceiling.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "tools/bench/bench.hpp"
#include "tools/build_info.hpp"
#include "tools/isola/cli.hpp"
#include "tools/bench/py/startup_cpu.py.hpp"

#include <isola/error.hpp>
#include <isola/interpreter.hpp>
#include <isola/runtime.hpp>

#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <malloc.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

namespace isola::cli {
namespace {

struct startup_options {
  unsigned repeat = 3;
  unsigned keep = 8;
  double task_ms = 400;
  unsigned tasks = cores();
};

/// CPython's own isolated settings (own GIL, own allocator, strict extension checks, threads
/// but no daemon threads, no fork or exec): what a user of the bare C API writes, and what
/// isola's interpreter_config::isolated() gives.
PyInterpreterConfig raw_isolated_config() {
  PyInterpreterConfig c = _PyInterpreterConfig_INIT;
  return c;
}

/// The calling thread's thread state, or nullptr (PyThreadState_Get() would abort).
PyThreadState* current_thread_state() {
#if PY_VERSION_HEX >= 0x030D0000
  return PyThreadState_GetUnchecked();
#else
  return _PyThreadState_UncheckedGet();
#endif
}

/// The peer isola is measured against: an interpreter made with the bare C API on a thread of
/// its own, the way interp/worker.cpp makes one (a temporary main-interpreter thread state to
/// create it from, then the new thread state), minus isola's bookkeeping, workarounds and
/// sys.path set-up. The constructor returns when it is ready; the destructor ends it with
/// Py_EndInterpreter on its thread.
class raw_interpreter {
 public:
  explicit raw_interpreter(const PyInterpreterConfig& config) {
    auto ready = ready_.get_future();
    thread_ = std::thread([this, config] { thread_main(config); });
    try {
      ready.get();
    } catch (...) {
      thread_.join();
      throw;
    }
  }
  ~raw_interpreter() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  raw_interpreter(const raw_interpreter&) = delete;
  raw_interpreter& operator=(const raw_interpreter&) = delete;

 private:
  void thread_main(PyInterpreterConfig config) {
    PyThreadState* main_ts = PyThreadState_New(PyInterpreterState_Main());
    if (main_ts == nullptr) {
      ready_.set_exception(std::make_exception_ptr(
          error(errc::out_of_memory, "raw interpreter: cannot allocate a thread state")));
      return;
    }
    PyEval_RestoreThread(main_ts);
    PyThreadState* ts = nullptr;
    PyStatus status = Py_NewInterpreterFromConfig(&ts, &config);
    if (PyStatus_Exception(status) || ts == nullptr) {
      if (current_thread_state() != main_ts) PyThreadState_Swap(main_ts);
      PyThreadState_Clear(main_ts);
      PyThreadState_DeleteCurrent();
      ready_.set_exception(std::make_exception_ptr(
          error(errc::creation_failed, std::string("raw Py_NewInterpreterFromConfig failed: ") +
                                           (status.err_msg ? status.err_msg : "unknown error"))));
      return;
    }
    PyThreadState_Swap(main_ts);
    PyThreadState_Clear(main_ts);
    PyThreadState_DeleteCurrent();
    PyEval_RestoreThread(ts);
    PyEval_SaveThread();
    ready_.set_value();

    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_; });
    }
    PyEval_RestoreThread(ts);
    Py_EndInterpreter(ts);
  }

  std::promise<void> ready_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

constexpr double mib = 1024.0 * 1024.0;

// ---- creation time ----------------------------------------------------------------------

struct creation_figures {
  double isola_ms, raw_ms;
};

double time_isola_creation(const interpreter_config& config) {
  auto t0 = clock::now();
  interpreter interp(config);
  double ms = seconds_since(t0) * 1000;
  interp.close();  // not timed
  return ms;
}

double time_raw_creation(const PyInterpreterConfig& config) {
  auto t0 = clock::now();
  raw_interpreter interp(config);
  double ms = seconds_since(t0) * 1000;
  return ms;  // ended by the destructor, not timed
}

creation_figures measure_creation(const startup_options& o, const bench_context& ctx) {
  const auto config = interpreter_config::isolated();
  const auto raw_config = raw_isolated_config();
  const unsigned pairs = 10 * o.repeat;
  ctx.progress(fmt::format("creation: {} isola/raw pairs, order alternating", pairs));
  for (int warm = 0; warm < 2; ++warm) {
    time_isola_creation(config);
    time_raw_creation(raw_config);
  }
  std::vector<double> isola_ms, raw_ms;
  for (unsigned k = 0; k < pairs; ++k) {
    if (k % 2 == 0) {
      isola_ms.push_back(time_isola_creation(config));
      raw_ms.push_back(time_raw_creation(raw_config));
    } else {
      raw_ms.push_back(time_raw_creation(raw_config));
      isola_ms.push_back(time_isola_creation(config));
    }
  }
  creation_figures f{median(isola_ms), median(raw_ms)};
  ctx.progress(
      fmt::format("creation: isola {:.2f} ms, raw {:.2f} ms (medians)", f.isola_ms, f.raw_ms));
  return f;
}

// ---- memory ------------------------------------------------------------------------------

struct memory_figures {
  double isola_mb, raw_mb;
};

/// RSS growth per interpreter with `keep` of them alive at once. Freed heap goes back to the
/// system first, so that what an earlier round freed does not hide this round's growth.
double isola_rss_per_interp(unsigned keep) {
  malloc_trim(0);
  const double before = rss_bytes();
  std::vector<interpreter> alive;
  for (unsigned k = 0; k < keep; ++k) alive.emplace_back();
  const double after = rss_bytes();
  close_newest_first(alive);
  return (after - before) / keep / mib;
}

double raw_rss_per_interp(unsigned keep, const PyInterpreterConfig& config) {
  malloc_trim(0);
  const double before = rss_bytes();
  std::vector<std::unique_ptr<raw_interpreter>> alive;
  for (unsigned k = 0; k < keep; ++k) alive.push_back(std::make_unique<raw_interpreter>(config));
  const double after = rss_bytes();
  while (!alive.empty()) alive.pop_back();  // newest first
  return (after - before) / keep / mib;
}

memory_figures measure_memory(const startup_options& o, const bench_context& ctx) {
  const auto raw_config = raw_isolated_config();
  ctx.progress(fmt::format("memory: RSS growth with {} interpreters alive, {} rounds each way",
                           o.keep, o.repeat));
  isola_rss_per_interp(o.keep);  // warm-up: thread arenas, code pages, caches
  raw_rss_per_interp(o.keep, raw_config);
  std::vector<double> isola_mb, raw_mb;
  for (unsigned r = 0; r < o.repeat; ++r) {
    if (r % 2 == 0) {
      isola_mb.push_back(isola_rss_per_interp(o.keep));
      raw_mb.push_back(raw_rss_per_interp(o.keep, raw_config));
    } else {
      raw_mb.push_back(raw_rss_per_interp(o.keep, raw_config));
      isola_mb.push_back(isola_rss_per_interp(o.keep));
    }
  }
  memory_figures f{median(isola_mb), median(raw_mb)};
  ctx.progress(fmt::format("memory: isola {:.2f} MiB, raw {:.2f} MiB per interpreter", f.isola_mb,
                           f.raw_mb));
  return f;
}

// ---- CPU-bound parallelism -----------------------------------------------------------------

struct cpu_figures {
  double task_s, serial_s, parallel_s, threads_s, shared_s;
  double proc_serial_s = 0, proc_parallel_s = 0;  ///< 0: no python executable to run
};

/// The classic alternative to subinterpreters, and the machine's ceiling for this code:
/// the same task in separate `python -I -S` processes (python = the one isola was built
/// against), run one after another or all at once. Returns the wall time from the first
/// spawn to the last exit.
double run_processes(const std::string& python, unsigned count, std::int64_t n, bool at_once) {
  const std::string code = std::string(embedded::startup_cpu) + "\nimport sys\nspin(int(sys.argv[1]))\n";
  const std::string arg = std::to_string(n);
  std::vector<std::string> args = {python, "-I", "-S", "-c", code, arg};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  auto wait_for = [&](pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
      if (errno != EINTR) throw std::runtime_error(std::string("waitpid: ") + std::strerror(errno));
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      throw std::runtime_error(
          fmt::format("the peer process '{} -c ...' failed (status {})", python, status));
    }
  };
  auto t0 = clock::now();
  std::vector<pid_t> running;
  for (unsigned k = 0; k < count; ++k) {
    pid_t pid = 0;
    if (int rc = posix_spawn(&pid, python.c_str(), nullptr, nullptr, argv.data(), environ);
        rc != 0) {
      for (pid_t p : running) wait_for(p);
      throw std::runtime_error(fmt::format("cannot start {}: {}", python, std::strerror(rc)));
    }
    if (at_once) {
      running.push_back(pid);
    } else {
      wait_for(pid);
    }
  }
  for (pid_t p : running) wait_for(p);
  return seconds_since(t0);
}

/// Runs spin(n) once in each interpreter at the same time; returns the wall time.
double run_parallel(std::vector<interpreter>& team, std::int64_t n) {
  auto t0 = clock::now();
  std::vector<std::future<value>> runs;
  for (auto& i : team) runs.push_back(i.call_async("__main__:spin", n));
  for (auto& r : runs) r.get();
  return seconds_since(t0);
}

cpu_figures measure_cpu(const startup_options& o, const bench_context& ctx) {
  const unsigned tasks = o.tasks;
  interpreter solo;  // serial runs and the threads run
  solo.exec(embedded::startup_cpu);

  // Calibrate n so that one spin(n) takes about task_ms.
  std::int64_t n = 20000;
  double took = 0;
  for (;;) {
    auto t0 = clock::now();
    solo.call("__main__:spin", n);
    took = seconds_since(t0);
    if (took >= 0.05) break;
    n *= 4;
  }
  n = static_cast<std::int64_t>(static_cast<double>(n) * (o.task_ms / 1000.0) / took);

  std::vector<interpreter> team, shared;
  for (unsigned k = 0; k < tasks; ++k) team.emplace_back();
  for (unsigned k = 0; k < tasks; ++k) shared.emplace_back(interpreter_config::legacy());
  for (auto& i : team) i.exec(embedded::startup_cpu);
  for (auto& i : shared) i.exec(embedded::startup_cpu);

  const std::string python = ISOLA_TOOLS_PYTHON_EXECUTABLE;
  const bool with_processes = access(python.c_str(), X_OK) == 0;
  if (!with_processes) {
    ctx.progress(fmt::format("cpu: {} is not executable here: no process peer", python));
  }

  ctx.progress(fmt::format(
      "cpu: {} tasks of spin({}) ~{:.0f} ms each; {} rounds of: serial in one interpreter, in "
      "{} own-GIL interpreters, {} threads of one interpreter, {} shared-GIL interpreters{}",
      tasks, n, o.task_ms, o.repeat, tasks, tasks, tasks,
      with_processes ? fmt::format(", {} python processes (serial and at once)", tasks) : ""));
  std::vector<double> serial, parallel, threads, shared_gil, proc_serial, proc_parallel;
  auto timed = [](auto&& fn) {
    auto t0 = clock::now();
    fn();
    return seconds_since(t0);
  };
  for (unsigned r = 0; r < o.repeat; ++r) {
    // Rotate the order so that no variant always runs first (or right after another).
    for (unsigned step = 0; step < 5; ++step) {
      switch ((r + step) % 5) {
        case 0:
          serial.push_back(timed([&] { solo.call("__main__:spin_serial", tasks, n); }));
          break;
        case 1:
          parallel.push_back(run_parallel(team, n));
          break;
        case 2:
          threads.push_back(timed([&] { solo.call("__main__:spin_threads", tasks, n); }));
          break;
        case 3:
          shared_gil.push_back(run_parallel(shared, n));
          break;
        case 4:
          if (with_processes) {
            proc_serial.push_back(run_processes(python, tasks, n, false));
            proc_parallel.push_back(run_processes(python, tasks, n, true));
          }
          break;
      }
    }
    ctx.progress(fmt::format(
        "cpu: round {}/{}: serial {:.2f} s, own-GIL interpreters {:.2f} s, threads {:.2f} s, "
        "shared GIL {:.2f} s{}",
        r + 1, o.repeat, serial.back(), parallel.back(), threads.back(), shared_gil.back(),
        with_processes ? fmt::format(", processes {:.2f} s -> {:.2f} s", proc_serial.back(),
                                     proc_parallel.back())
                       : ""));
  }
  close_newest_first(shared);
  close_newest_first(team);

  cpu_figures f{};
  f.serial_s = median(serial);
  f.task_s = f.serial_s / tasks;
  f.parallel_s = median(parallel);
  f.threads_s = median(threads);
  f.shared_s = median(shared_gil);
  f.proc_serial_s = median(proc_serial);
  f.proc_parallel_s = median(proc_parallel);
  return f;
}

bench_report run_startup(const startup_options& o, const bench_context& ctx) {
  runtime rt;
  bench_report r;
  r.params = {{"repeat", o.repeat}, {"keep", o.keep}, {"task_ms", o.task_ms}, {"tasks", o.tasks}};
  r.add("cores", cores(), "", 0, "logical cores (std::thread::hardware_concurrency)");

  auto c = measure_creation(o, ctx);
  r.add("create_ms_isola", c.isola_ms, "ms", 3,
        "median time to create one interpreter with isola::interpreter (until ready)");
  r.add("create_ms_raw", c.raw_ms, "ms", 3,
        "median time to create one with Py_NewInterpreterFromConfig on a new thread");
  r.add("create_ratio", c.isola_ms / c.raw_ms, "x", 3, "isola / raw creation time");

  auto m = measure_memory(o, ctx);
  r.add("rss_mb_per_interp_isola", m.isola_mb, "MiB", 3,
        fmt::format("RSS growth per interpreter, {} isola interpreters alive", o.keep));
  r.add("rss_mb_per_interp_raw", m.raw_mb, "MiB", 3,
        fmt::format("RSS growth per interpreter, {} raw interpreters alive", o.keep));
  r.add("rss_ratio", m.isola_mb / m.raw_mb, "x", 3, "isola / raw memory per interpreter");

  auto p = measure_cpu(o, ctx);
  r.add("cpu_task_s", p.task_s, "s", 3,
        "one CPU-bound task (pure-Python loop): serial time / tasks");
  r.add("cpu_serial_s", p.serial_s, "s", 3,
        fmt::format("{} tasks one after another in one interpreter", o.tasks));
  r.add("cpu_parallel_s", p.parallel_s, "s", 3,
        fmt::format("{} tasks in {} own-GIL isola interpreters at once", o.tasks, o.tasks));
  r.add(
      "cpu_threads_s", p.threads_s, "s", 3,
      fmt::format("{} tasks in {} Python threads of one interpreter (one GIL)", o.tasks, o.tasks));
  r.add("cpu_shared_gil_s", p.shared_s, "s", 3,
        fmt::format("{} tasks in {} shared-GIL (legacy) interpreters at once", o.tasks, o.tasks));
  r.add("cpu_speedup_isola", p.serial_s / p.parallel_s, "x", 2,
        "serial / own-GIL interpreters (ideal: tasks, if cores >= tasks)");
  r.add("cpu_speedup_threads", p.serial_s / p.threads_s, "x", 2,
        "serial / Python threads (the GIL serialises them: ~1)");
  r.add("cpu_speedup_shared_gil", p.serial_s / p.shared_s, "x", 2,
        "serial / shared-GIL interpreters (~1)");
  if (p.proc_parallel_s > 0) {
    r.add("cpu_speedup_processes", p.proc_serial_s / p.proc_parallel_s, "x", 2,
          fmt::format("{} python processes at once vs one after another: the machine's ceiling",
                      o.tasks));
  }
  r.chart("Creating an interpreter", "ms", false,
          {{"isola", "create_ms_isola"}, {"Py_NewInterpreterFromConfig", "create_ms_raw"}});
  r.chart("Memory per live interpreter", "MiB", false,
          {{"isola", "rss_mb_per_interp_isola"}, {"Py_NewInterpreterFromConfig", "rss_mb_per_interp_raw"}});
  r.chart("CPU-bound tasks at once: speed-up over one after another", "x", true,
          {{"own-GIL interpreters", "cpu_speedup_isola"},
           {"python processes", "cpu_speedup_processes"},
           {"threads, one interpreter", "cpu_speedup_threads"},
           {"shared-GIL interpreters", "cpu_speedup_shared_gil"}});
  return r;
}

bench_suite_registrar startup_suite({
    "startup",
    "Creation time and memory against the raw C API; CPU-bound speed-up against threads",
    [](CLI::App& app) -> bench_runner {
      auto o = std::make_shared<startup_options>();
      app.add_option("-r,--repeat", o->repeat,
                     "Repetitions; medians are reported. Creation takes 10*R samples each way, "
                     "memory R rounds each way, CPU R rounds of every variant")
          ->check(CLI::Range(1u, 1000u))
          ->capture_default_str()
          ->type_name("R");
      app.add_option("-k,--keep", o->keep, "Interpreters kept alive at once when measuring memory")
          ->check(CLI::Range(1u, 256u))
          ->capture_default_str()
          ->type_name("K");
      app.add_option("--task-ms", o->task_ms, "Length of one CPU-bound task, in milliseconds")
          ->check(CLI::Range(10.0, 60000.0))
          ->capture_default_str()
          ->type_name("MS");
      app.add_option("--tasks", o->tasks, "CPU-bound tasks run at once (default: cores)")
          ->check(CLI::Range(1u, 256u))
          ->type_name("N");
      app.footer(
          "Results (JSON keys): cores; create_ms_isola, create_ms_raw, create_ratio;\n"
          "rss_mb_per_interp_isola, rss_mb_per_interp_raw, rss_ratio; cpu_task_s, cpu_serial_s,\n"
          "cpu_parallel_s, cpu_threads_s, cpu_shared_gil_s; cpu_speedup_isola,\n"
          "cpu_speedup_threads, cpu_speedup_shared_gil, cpu_speedup_processes. Ratios are\n"
          "isola / raw; speed-ups are serial time / parallel time. cpu_speedup_processes (the\n"
          "same task in separate python processes, when the build's python is present) is what\n"
          "the machine allows: on a VM whose cores are shared it can be well below the core\n"
          "count, and no interpreter can beat it.\n"
          "Progress goes to stderr, results to stdout.");
      return [o](const bench_context& ctx) { return run_startup(*o, ctx); };
    },
});

}  // namespace
}  // namespace isola::cli
