// isola_test_child: scenarios that need a process of their own, run by the suite through
// run_child(). Each prints what it observed, one "key: value" line per fact, and exits 0 unless
// something unexpected was thrown; a crash shows up as the signal that ended it.
//   lifo FILE            3 interpreters left alive; the runtime's destructor must end them
//                        newest first (their atexit handlers append their ids to FILE)
//   second-runtime       a second runtime, while one lives and after it ended
//   no-runtime           interpreters and attach without a runtime
//   finalizing-attach    attach while the runtime's destructor waits for an attached thread
//   teardown ORDER N CODE  N interpreters run CODE, then end in ORDER (creation|reverse)
//   destroy-attached FILE  an interpreter object destroyed by a thread attached to it; the
//                        runtime must end it at shutdown (its atexit handler writes FILE)
//   main-threading       another thread attaches to the main interpreter and imports threading
//                        there first; then the runtime ends (nothing may be reported at exit)
//   move-assign-attached  an interpreter move-assigned over by a thread attached to it (its
//                        close cannot wait for itself: it must be deferred, not terminate)
//   first-channel-fence  whether the asymmetric fence was checked before and after the
//                        process's first channel is made, and whether the channel works
//   no-accounting        a runtime with memory accounting off: what memory() and a limit do
//   environment DIR      a runtime with use_environment: PYTHONPATH=DIR and PYTHONMALLOC=malloc
//                        are honoured, and small objects are counted block by block
//   end KIND             what guest code leaves behind when its interpreter ends or the
//                        runtime is destroyed under it (see end_scenario below); prints the
//                        outcome of the task, whether the interpreter was abandoned, and
//                        "returned" once the C++ calls came back
#include <Python.h>

#include <isola/isola.hpp>

#include "lib/sync.hpp"  // asymmetric_fence_checked

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

namespace {

void say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

std::string code_name(const std::error_code& ec) {
  if (ec.category() != isola::error_category()) return "other:" + ec.message();
  switch (static_cast<isola::errc>(ec.value())) {
    case isola::errc::interpreter_closing: return "interpreter_closing";
    case isola::errc::interpreter_closed: return "interpreter_closed";
    case isola::errc::runtime_finalizing: return "runtime_finalizing";
    case isola::errc::no_runtime: return "no_runtime";
    default: return "errc:" + std::to_string(ec.value());
  }
}

std::string attach_outcome(const isola::interpreter_handle& h) {
  auto r = isola::attach(h);
  if (r) return "attached";
  return code_name(isola::make_error_code(r.error().code));
}

int lifo(const std::string& file) {
  // Declared before the runtime, so they outlive it: the runtime must end them itself.
  std::vector<std::unique_ptr<isola::interpreter>> interps;
  std::vector<isola::interpreter_handle> handles;
  {
    isola::runtime rt;
    std::string ids;
    for (int i = 0; i < 3; ++i) {
      auto& in = interps.emplace_back(std::make_unique<isola::interpreter>());
      in->set_global("path", file);
      in->exec(
          "import atexit, isola\n"
          "def record(path=path, id=isola.interpreter_id()):\n"
          "    with open(path, 'a') as f:\n"
          "        f.write(f'{id}\\n')\n"
          "atexit.register(record)\n");
      handles.push_back(in->handle());
      ids += (ids.empty() ? "" : " ") + std::to_string(in->id());
    }
    say("created: " + ids);
    say("live: " + std::to_string(rt.live_interpreters()));
  }  // ~runtime ends the three, then finalises CPython
  say(std::string("running: ") + (isola::runtime::running() ? "1" : "0"));
  for (std::size_t i = 0; i < interps.size(); ++i) {
    auto n = std::to_string(i);
    say("closed " + n + ": " + (interps[i]->closed() ? "1" : "0"));
    say("alive " + n + ": " + (handles[i].alive() ? "1" : "0"));
    say("attach " + n + ": " + attach_outcome(handles[i]));
    try {
      interps[i]->eval("1");
      say("eval " + n + ": ran");
    } catch (const isola::error& e) {
      say("eval " + n + ": " + code_name(e.code()));
    }
  }
  interps.clear();  // destroying interpreters that outlived the runtime is safe
  say("destroyed: 1");
  return 0;
}

int second_runtime() {
  {
    isola::runtime rt;
    try {
      isola::runtime again;
      say("while alive: constructed");
    } catch (const std::logic_error& e) {
      say(std::string("while alive: logic_error: ") + e.what());
    }
    isola::interpreter in;  // the first runtime still works
    say("first still works: " + std::to_string(in.eval("6 * 7").as_int()));
  }
  try {
    isola::runtime again;
    say("after end: constructed");
  } catch (const std::logic_error& e) {
    say(std::string("after end: logic_error: ") + e.what());
  }
  return 0;
}

int no_accounting() {
  isola::runtime_options o;
  o.memory_accounting = false;
  isola::runtime rt(o);
  say(std::string("accounting: ") + (isola::runtime::memory_accounting() ? "1" : "0"));
  isola::interpreter in;
  try {
    in.exec("import isola\nisola.memory()");
  } catch (const isola::python_error& e) {
    say("isola.memory(): " + e.type_name());
  }
  try {
    (void)in.memory();
  } catch (const std::logic_error&) {
    say("memory(): logic_error");
  }
  isola::interpreter_config c;
  c.memory_limit = 512u << 20;
  try {
    isola::interpreter limited(c);
  } catch (const std::invalid_argument&) {
    say("limit: invalid_argument");
  }
  return 0;
}

int environment(const std::string& dir) {
  setenv("PYTHONPATH", dir.c_str(), 1);
  setenv("PYTHONMALLOC", "malloc", 1);
  isola::runtime_options o;
  o.use_environment = true;
  isola::runtime rt(o);
  isola::interpreter in;
  say("on sys.path: " + std::to_string(in.eval("'" + dir + "' in __import__('sys').path").as_bool()));
  const auto before = in.memory().bytes;
  in.exec("l = [{'k': str(i)} for i in range(100000)]");
  const auto with = in.memory().bytes;
  in.exec("del l");
  const auto after = in.memory().bytes;
  // ~250 bytes of blocks per item, each with its 16-byte header.
  say("per item: " + std::to_string((with - before) / 100000));
  say("given back: " + std::to_string(before + (1u << 20) > after));
  return 0;
}

// environment's scenario ends here, after the runtime has finalized CPython: with
// PYTHONMALLOC=malloc, what CPython leaves allocated at exit (interned strings and more, kept
// inside arenas LeakSanitizer does not scan under its default allocator) is in malloc's heap,
// and an ASan build's exit-time leak check would report CPython's leaks as this test's.
[[noreturn]] void exit_without_leak_check(int status) {
  std::fflush(stdout);
  std::_Exit(status);
}

int first_channel_fence() {
  say(std::string("checked before: ") + (isola::detail::asymmetric_fence_checked() ? "1" : "0"));
  isola::channel ch(8);
  say(std::string("checked after: ") + (isola::detail::asymmetric_fence_checked() ? "1" : "0"));
  for (std::int64_t i = 0; i < 1000; ++i) {
    ch.send(isola::message(i));
    isola::message m = ch.recv();
    if (std::get<std::int64_t>(std::get<isola::value>(m.payload).data()) != i) say("recv failed");
  }
  say("moved: 1000");
  return 0;
}

int no_runtime() {
  say(std::string("running: ") + (isola::runtime::running() ? "1" : "0"));
  try {
    isola::interpreter in;
    say("interpreter: constructed");
  } catch (const isola::error& e) {
    say("interpreter: " + code_name(e.code()) + ": " + e.what());
  }
  return 0;
}

int finalizing_attach() {
  auto rt = std::make_unique<isola::runtime>();
  auto a = std::make_unique<isola::interpreter>();
  auto b = std::make_unique<isola::interpreter>();
  auto ha = a->handle(), hb = b->handle();
  auto hmain = rt->main_interpreter();

  std::atomic<bool> holding{false}, release{false};
  std::thread holder([&] {
    auto g = isola::attach(ha);
    if (!g) {
      say("holder: " + g.error().message);
      holding = true;
      return;
    }
    holding = true;
    while (!release) std::this_thread::yield();
  });  // the guard ends before the thread does
  while (!holding) std::this_thread::yield();

  // ~runtime (on this thread, which made it) ends b (newest first), then waits for the
  // holder's guard on a; meanwhile a prober tries to attach.
  std::thread prober([&] {
    while (isola::runtime::running()) std::this_thread::yield();
    say("during a: " + attach_outcome(ha));
    say("during main: " + attach_outcome(hmain));
    release = true;
  });
  rt.reset();
  prober.join();
  holder.join();
  say("after a: " + attach_outcome(ha));
  say("after b: " + attach_outcome(hb));
  say("after main: " + attach_outcome(hmain));
  a.reset();
  b.reset();
  return 0;
}

int teardown(const std::string& order, int n, const std::string& code) {
  isola::runtime rt;
  std::vector<std::unique_ptr<isola::interpreter>> interps;
  for (int i = 0; i < n; ++i) interps.push_back(std::make_unique<isola::interpreter>());
  for (auto& in : interps) {
    in->exec(code);
    say("ran in " + std::to_string(in->id()));
  }
  if (order == "reverse") std::reverse(interps.begin(), interps.end());
  for (auto& in : interps) {
    auto id = in->id();
    in.reset();
    say("ended " + std::to_string(id));
  }
  return 0;
}

int destroy_attached(const std::string& file) {
  isola::runtime rt;
  auto in = std::make_unique<isola::interpreter>();
  auto h = in->handle();
  in->set_global("path", file);
  in->exec(
      "import atexit, isola\n"
      "def record(path=path, id=isola.interpreter_id()):\n"
      "    with open(path, 'a') as f:\n"
      "        f.write(f'ended {id}\\n')\n"
      "atexit.register(record)\n");
  say("id: " + std::to_string(h.id()));
  {
    auto g = isola::attach(h).value();
    in.reset();  // cannot wait for itself: must neither throw nor hang
    say("destroyed while attached");
    say(std::string("alive inside: ") + (h.alive() ? "1" : "0"));
  }
  say(std::string("alive after: ") + (h.alive() ? "1" : "0"));
  say("live: " + std::to_string(rt.live_interpreters()));
  return 0;
}  // ~runtime ends it

}  // namespace

int main_threading() {
  isola::runtime rt;
  std::string outcome = "not run";
  std::thread other([&] {
    auto g = isola::attach(rt.main_interpreter());
    if (!g) {
      outcome = "attach failed";
      return;
    }
    const int rc = PyRun_SimpleString(
        "import sys, threading\n"
        "print('attached_is_main:', threading.main_thread() is threading.current_thread())\n"
        "print('main_thread_alive:', threading.main_thread().is_alive())\n"
        "sys.stdout.flush()\n");
    outcome = rc == 0 ? "ran" : "raised";
  });
  other.join();
  say("outcome: " + outcome);
  return 0;
}

// Code for a task that says it started (one byte on a pipe the C++ side reads), then `body`.
std::string started_then(int fd, const std::string& body) {
  return "import os\nos.write(" + std::to_string(fd) + ", b's')\n" + body;
}

// "ok", "python TYPE" or the isola::errc name of what f.get() gave (a std::future or a
// task_future).
template <typename Future>
std::string outcome_of(Future& f) {
  try {
    f.get();
    return "ok";
  } catch (const isola::python_error& e) {
    return "python " + e.type_name();
  } catch (const isola::error& e) {
    return code_name(e.code());
  }
}

// Scenarios where guest code does not stop by itself. Each must end: the ones that cannot
// be interrupted are abandoned, never waited for without bound, and nothing aborts.
//   runtime-busy        ~runtime while an interpreter runs `while True: pass`
//   runtime-stuck       ~runtime while an interpreter is stuck in C code holding its GIL
//   pool-busy           ~runtime while a pool task (no timeout) runs `while True: pass`
//   pool-stuck          ~runtime while a pool task (no timeout) is stuck in C code
//   thread-left         close() with a non-daemon thread still sleeping in a loop
//   thread-ignores      close() with a non-daemon thread that catches SystemExit
//   raw-thread          close() with a _thread.start_new_thread thread still running
//   legacy-daemon       close() of a legacy() interpreter with a daemon thread running
//   atexit-loop         close() while an atexit handler loops forever
//   fork-allowed        a legacy() interpreter forks (allowed there): CPython ends the child
//                       with a fatal error and exit(), which must not hang in isola's teardown
int end_scenario(const std::string& kind) {
  int fds[2];
  if (pipe(fds) != 0) return 3;
  // The byte comes from os.write, which releases the GIL: an interrupt could still land in
  // the bytecode right after it. Code that is meant to be stuck is given time to be inside its
  // C call (which never checks for interrupts) before the test goes on.
  const bool stuck_kind = kind.ends_with("-stuck");
  auto wait_started = [&] {
    char c = 0;
    const bool ok = read(fds[0], &c, 1) == 1;
    if (stuck_kind) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    return ok;
  };
  const std::string loop = "while True:\n    pass\n";
  const std::string stuck = "sum(range(10**13))\n";
  const std::string thread_loop =
      "import threading, time\n"
      "def work():\n"
      "    while True:\n"
      "        time.sleep(0.01)\n"
      "threading.Thread(target=work, name='left-behind').start()\n";
  isola::interpreter_config quick;
  quick.end_timeout = std::chrono::milliseconds(200);
  quick.end_grace = std::chrono::milliseconds(300);

  auto rt = std::make_unique<isola::runtime>();
  if (kind == "runtime-busy" || kind == "runtime-stuck") {
    auto in = std::make_unique<isola::interpreter>(quick);
    auto f = in->exec_async(started_then(fds[1], kind == "runtime-busy" ? loop : stuck));
    if (!wait_started()) return 3;
    rt.reset();
    say("returned");
    say("task: " + outcome_of(f));
    say("abandoned: " + std::to_string(isola::runtime::abandoned_interpreters()));
    isola::flush_logs();
    if (kind == "runtime-stuck") std::_Exit(0);  // its thread still runs CPython code
    in.reset();
    return 0;
  }
  if (kind == "pool-busy" || kind == "pool-stuck") {
    isola::pool_options o;
    o.size = 1;
    o.grace_period = std::chrono::milliseconds(300);
    o.interpreter = quick;
    auto p = std::make_unique<isola::pool>(o);
    auto f = p->submit_code(started_then(fds[1], kind == "pool-busy" ? loop : stuck));
    auto queued = p->submit_code("1");
    if (!wait_started()) return 3;
    rt.reset();
    say("returned");
    say("task: " + outcome_of(f));
    say("queued: " + outcome_of(queued));
    say("abandoned: " + std::to_string(isola::runtime::abandoned_interpreters()));
    isola::flush_logs();
    if (kind == "pool-stuck") std::_Exit(0);
    p.reset();
    return 0;
  }
  if (kind == "fork-allowed") {
    isola::interpreter in(isola::interpreter_config::legacy());
    in.exec("import os\npid = os.fork()\n");  // the child never comes back here
    const auto pid = static_cast<pid_t>(in.get_global("pid").as_int());
    say("returned");
    int status = 0;
    for (int i = 0; i < 1000; ++i) {  // 10 s at most
      if (waitpid(pid, &status, WNOHANG) == pid) {
        say("forked child exited: " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1));
        return 0;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid, SIGKILL);
    say("forked child: hung");
    return 0;
  }
  isola::interpreter_config c = kind == "legacy-daemon" ? isola::interpreter_config::legacy() : quick;
  c.end_timeout = quick.end_timeout;
  c.end_grace = quick.end_grace;
  isola::interpreter in(c);
  if (kind == "thread-left") {
    in.exec(thread_loop);
  } else if (kind == "thread-ignores") {
    in.exec("import threading, time\n"
            "def work():\n"
            "    while True:\n"
            "        try:\n"
            "            time.sleep(0.01)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "threading.Thread(target=work, name='stubborn').start()\n");
  } else if (kind == "raw-thread") {
    in.exec("import _thread, time\n_thread.start_new_thread(time.sleep, (100,))\n");
  } else if (kind == "legacy-daemon") {
    in.exec("import threading, time\n"
            "threading.Thread(target=time.sleep, args=(100,), daemon=True).start()\n");
  } else if (kind == "atexit-loop") {
    in.exec("import atexit\n"
            "def forever():\n"
            "    while True:\n"
            "        pass\n"
            "atexit.register(forever)\n");
  } else {
    return 2;
  }
  in.close();
  say("returned");
  say("abandoned: " + std::to_string(isola::runtime::abandoned_interpreters()));
  if (isola::runtime::abandoned_interpreters() > 0) {
    rt.reset();  // must not finalize under the abandoned thread
    say("runtime ended");
    isola::flush_logs();
    std::_Exit(0);
  }
  return 0;
}

int move_assign_attached() {
  isola::runtime rt;
  isola::interpreter a;
  const auto old_id = a.id();
  {
    auto g = isola::attach(a.handle()).value();
    a = isola::interpreter();  // closing the old one from inside it cannot wait
    say("assigned");
  }
  say(std::string("new one works: ") + (a.eval("1 + 1").as_int() == 2 ? "1" : "0"));
  say("old id " + std::to_string(old_id) + " differs: " + (a.id() != old_id ? "1" : "0"));
  return 0;
}  // ~runtime ends the old one

int main(int argc, char* argv[]) {
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() == 2 && args[0] == "lifo") return lifo(args[1]);
    if (args.size() == 1 && args[0] == "second-runtime") return second_runtime();
    if (args.size() == 1 && args[0] == "no-runtime") return no_runtime();
    if (args.size() == 1 && args[0] == "finalizing-attach") return finalizing_attach();
    if (args.size() == 2 && args[0] == "destroy-attached") return destroy_attached(args[1]);
    if (args.size() == 1 && args[0] == "main-threading") return main_threading();
    if (args.size() == 1 && args[0] == "no-accounting") return no_accounting();
    if (args.size() == 2 && args[0] == "environment") exit_without_leak_check(environment(args[1]));
    if (args.size() == 1 && args[0] == "first-channel-fence") return first_channel_fence();
    if (args.size() == 2 && args[0] == "end") return end_scenario(args[1]);
    if (args.size() == 1 && args[0] == "move-assign-attached") return move_assign_attached();
    if (args.size() == 4 && args[0] == "teardown") {
      return teardown(args[1], std::stoi(args[2]), args[3]);
    }
  } catch (const std::exception& e) {
    say(std::string("unexpected exception: ") + e.what());
    return 3;
  }
  say("usage: isola_test_child lifo FILE | second-runtime | no-runtime | finalizing-attach | "
      "teardown creation|reverse N CODE | destroy-attached FILE | main-threading | "
      "first-channel-fence | end KIND | move-assign-attached");
  return 2;
}
