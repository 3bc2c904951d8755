// isola::runtime: CPython's lifetime in the process. Start-up registers the `isola` module and
// initialises from an isolated PyConfig; shutdown ends interpreters LIFO, then Py_Finalize.
#include "lib/python.hpp"

#include "lib/memory.hpp"
#include "lib/module.hpp"
#include "lib/sync.hpp"
#include "lib/pyexec.hpp"
#include "lib/state.hpp"
#include "lib/workarounds.hpp"

#include <isola/log.hpp>
#include <isola/runtime.hpp>
#include <isola/version.hpp>

#include <cstdlib>
#include <stdexcept>
#include <string_view>

namespace isola {
namespace {

// Whether PYTHONMALLOC (honoured with use_environment) makes the mem and object domains call
// an allocator without pymalloc's arenas: the accounting must then wrap those domains too.
bool object_domains_bypass_arenas(bool use_environment) {
  const char* env = use_environment ? std::getenv("PYTHONMALLOC") : nullptr;
  if (env == nullptr) return false;
  const std::string_view v(env);
  return v == "malloc" || v == "malloc_debug" || v == "mimalloc" || v == "mimalloc_debug";
}

void check_status(PyStatus status, PyConfig* config, const char* what) {
  if (!PyStatus_Exception(status)) return;
  std::string msg = std::string("isola::runtime: ") + what + " failed";
  if (status.func != nullptr) msg += std::string(" in ") + status.func;
  if (status.err_msg != nullptr) msg += std::string(": ") + status.err_msg;
  if (PyStatus_IsExit(status)) msg += " (exit code " + std::to_string(status.exitcode) + ")";
  if (config != nullptr) PyConfig_Clear(config);
  throw std::runtime_error(msg);
}

}  // namespace

runtime::runtime(runtime_options options) : options_(std::move(options)) {
  auto& rt = detail::runtime();
  std::lock_guard lock(rt.mu);
  if (rt.phase.load() != detail::runtime_phase::none) {
    throw std::logic_error(
        "isola::runtime: a runtime already exists or existed in this process; CPython can be "
        "initialised only once per process, so create one isola::runtime (in main) and share it");
  }
  if (Py_IsInitialized()) {
    throw std::logic_error(
        "isola::runtime: CPython was already initialised by someone else in this process; "
        "isola must own the interpreter's lifetime, so do not call Py_Initialize yourself");
  }
  // Channels need the asymmetric fence (lib/sync.hpp). Registering it now, while the process
  // most likely has one thread, takes microseconds; once other threads exist the kernel takes
  // milliseconds (an RCU grace period).
  (void)detail::asymmetric_fence_available();
  auto log = logger("isola.runtime");

  detail::add_isola_to_inittab();

  // The allocators can only be wrapped between pre-initialisation and initialisation.
  PyPreConfig preconfig;
  PyPreConfig_InitIsolatedConfig(&preconfig);
  // CPython's isolated mode turns use_environment off: honouring the environment means
  // leaving it (and keeping what else it sets below, in the config).
  if (options_.use_environment) {
    preconfig.isolated = 0;
    preconfig.use_environment = 1;
  }
  check_status(Py_PreInitialize(&preconfig), nullptr, "Py_PreInitialize");
  if (options_.memory_accounting) {
    detail::memory::install(object_domains_bypass_arenas(options_.use_environment));
  }

  PyConfig config;
  PyConfig_InitIsolatedConfig(&config);
  if (options_.use_environment) {
    config.isolated = 0;
    config.use_environment = 1;
    config.safe_path = 1;
    config.user_site_directory = 0;
  }
  config.install_signal_handlers = options_.install_signal_handlers ? 1 : 0;
  config.parse_argv = 0;
  check_status(PyConfig_SetBytesString(&config, &config.program_name,
                                       options_.program_name.c_str()),
               &config, "setting program_name");
  if (!options_.python_home.empty()) {
    check_status(PyConfig_SetBytesString(&config, &config.home, options_.python_home.c_str()),
                 &config, "setting python_home");
  }
  std::vector<char*> argv;
  std::vector<std::string> args = options_.argv;
  if (args.empty()) args.push_back("");
  for (auto& a : args) argv.push_back(a.data());
  check_status(PyConfig_SetBytesArgv(&config, static_cast<Py_ssize_t>(argv.size()), argv.data()),
               &config, "setting argv");
  check_status(Py_InitializeFromConfig(&config), &config, "Py_InitializeFromConfig");
  PyConfig_Clear(&config);

  rt.sys_path = options_.sys_path;
  try {
    detail::with_python_errors([&] { detail::prepend_sys_path(rt.sys_path); });
  } catch (const python_error& e) {
    log->error("could not extend sys.path of the main interpreter: {}", e.what());
  }

  // CPython 3.12's threading module takes the thread that first imports it for the main
  // thread. Import it here, on the thread whose state lives until Py_FinalizeEx: otherwise a
  // thread that attaches to the main interpreter and imports it first (directly or not) is
  // threading.main_thread() from then on, and once that thread state is gone Py_FinalizeEx
  // reports "Exception ignored in threading._shutdown: assert tlock.locked()". (3.13 asks
  // the runtime for the main thread instead.)
  if constexpr (PY_VERSION_HEX < 0x030D0000) {
    if (PyObject* threading = PyImport_ImportModule("threading")) {
      Py_DECREF(threading);
    } else {
      PyErr_Clear();
      log->warn("could not import threading in the main interpreter at start-up");
    }
  }

  auto main = std::make_shared<detail::interp_state>();
  main->id = 0;
  main->is_main = true;
  main->name = "main";
  main->interp = PyInterpreterState_Main();
  if (detail::memory::enabled()) main->memory = detail::memory::main_context();
  rt.main = main;
  rt.owner_thread = std::this_thread::get_id();
  rt.main_tstate = PyEval_SaveThread();  // the main GIL is free between calls
  rt.phase = detail::runtime_phase::running;
  log->info("CPython {} initialised (isola {})", Py_GetVersion(), ISOLA_VERSION);
  if (const char* bug = detail::known_unfixed_bug()) log->warn("{}", bug);
}

runtime::~runtime() {
  auto& rt = detail::runtime();
  auto log = logger("isola.runtime");
  rt.phase = detail::runtime_phase::finalizing;

  // End every live interpreter, newest first (CPython 3.13.0 crashes in some extension
  // modules' teardown when interpreters end in creation order; see docs/interpreters.md).
  for (;;) {
    std::shared_ptr<detail::interp_state> s;
    {
      std::lock_guard lock(rt.mu);
      if (rt.live.empty()) break;
      s = rt.live.back();
    }
    log->info("[interp {}] ending at runtime shutdown", s->id);
    // The closer interrupts code that is still running (SystemExit) and abandons the
    // interpreter if it does not stop; it never waits without bound.
    try {
      if (s->closer) s->closer();
    } catch (const std::exception& e) {
      log->error("[interp {}] could not be ended at shutdown: {}", s->id, e.what());
    }
    // Off the live list, whatever happened (an abandoned one stays on the abandoned list).
    std::lock_guard lock(rt.mu);
    std::erase(rt.live, s);
  }

  {
    std::vector<std::shared_ptr<void>> deferred;
    {
      std::lock_guard lock(rt.mu);
      deferred.swap(rt.deferred);
    }
  }

  // An abandoned interpreter's thread may still be running its code (or hold its GIL):
  // Py_FinalizeEx would end it under that thread (3.13) or abort (3.12). Leave CPython as it
  // is; the process should end with std::quick_exit or _Exit (see docs/runtime.md).
  if (std::size_t n = detail::abandoned_count(); n > 0) {
    log->critical("{} abandoned interpreter{} still running code; CPython is left initialized "
                  "(not finalized): end the process with std::quick_exit() or _exit()",
                  n, n == 1 ? " is" : "s are");
    rt.phase = detail::runtime_phase::finalized;
    flush_logs();
    return;
  }

  // Threads attached to the main interpreter must leave before Py_Finalize, and its threads
  // blocked on channels would keep Py_Finalize waiting for them.
  detail::stop_waits(*rt.main);
  {
    std::unique_lock lock(rt.main->mu);
    rt.main->phase = detail::interp_phase::closing;
    detail::wait_for_guards(*rt.main, lock);
  }

  PyThreadState* ts = rt.main_tstate;
  if (std::this_thread::get_id() != rt.owner_thread) {
    // Thread states are bound to their thread: finalise through a fresh one here.
    log->warn("isola::runtime destroyed on another thread than the one that created it");
    ts = PyThreadState_New(PyInterpreterState_Main());
  }
  PyEval_RestoreThread(ts);
  detail::run_at_end(*rt.main);
  detail::apply_exit_workarounds();
  if (Py_FinalizeEx() < 0) log->error("Py_FinalizeEx reported an error while flushing buffers");
  {
    std::lock_guard lock(rt.main->mu);
    rt.main->phase = detail::interp_phase::closed;
    rt.main->interp = nullptr;
    rt.main->cv.notify_all();
  }
  rt.main_tstate = nullptr;
  rt.phase = detail::runtime_phase::finalized;
  log->info("CPython finalised");
  flush_logs();
}

bool runtime::running() noexcept {
  return detail::runtime().phase.load() == detail::runtime_phase::running;
}

interpreter_handle runtime::main_interpreter() const {
  return interpreter_handle(detail::runtime().main);
}

std::string runtime::python_version() {
  std::string v = Py_GetVersion();
  return v.substr(0, v.find(' '));
}

std::size_t runtime::abandoned_interpreters() { return detail::abandoned_count(); }

bool runtime::memory_accounting() noexcept { return detail::memory::enabled(); }

std::size_t runtime::memory_of_ended_interpreters() noexcept {
  return detail::memory::enabled() ? detail::memory::ended_bytes() : 0;
}

std::size_t runtime::live_interpreters() const {
  auto& rt = detail::runtime();
  std::lock_guard lock(rt.mu);
  return rt.live.size();
}

}  // namespace isola
