// Process-wide bookkeeping shared by the runtime, safe attach and the interpreters. It holds
// plain C++ data and ids only: no PyObject* lives here.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <stop_token>
#include <thread>
#include <vector>

#include <isola/memory.hpp>

struct _is;  // PyInterpreterState, without pulling <Python.h> into every includer
struct _ts;  // PyThreadState

namespace isola::detail {

namespace memory {
struct context;
}

/// running: takes work and attaches. closing: refuses new work and new attach guards, but
/// isola's own interrupts may still attach (see attach_for_interrupt). ending: no thread may
/// attach any more; the owner is ending it. closed: it has ended.
enum class interp_phase { running, closing, ending, closed };

/// Names the per-interpreter data of a part that lib keeps without knowing its type: a part
/// (channels, say) defines one static key and keeps what it needs under it, with
/// extension() and set_extension().
struct extension_key {
  const char* name;
};

/// What a handle, a guard, an interpreter object and the runtime share about one interpreter.
/// - `interp` is valid while phase != closed; it is only dereferenced by threads holding a
///   guard (guards > 0 keeps the interpreter alive) or by the worker that owns it.
/// - `closer` ends the interpreter (blocking, idempotent, bounded: code that does not stop is
///   interrupted and then abandoned); the runtime calls it at shutdown.
struct interp_state {
  std::int64_t id = -1;
  bool is_main = false;
  std::string name;
  /// Its extension policy's name ("strict", "unsafe", "shared-gil"), for isola.extension_policy().
  std::string extension_policy;

  mutable std::mutex mu;
  std::condition_variable cv;  ///< signalled when guards drop or phase changes
  interp_phase phase = interp_phase::running;
  int guards = 0;
  _is* interp = nullptr;
  std::function<void()> closer;
  /// Run once on the interpreter's own thread with its GIL held, just before it ends (for the
  /// main interpreter: before Py_Finalize), in the order added. Guarded by `mu`; add with
  /// add_at_end(). Hooks must not throw.
  std::vector<std::function<void()>> at_end;
  bool at_end_ran = false;
  /// Parts' data, by key (see extension_key); guarded by `mu`.
  std::vector<std::pair<const extension_key*, std::shared_ptr<void>>> extensions;
  /// Blocking waits in progress in this interpreter (any of its threads: channel waits), so
  /// that closing it can end them; guarded by `mu`. After stop_waits() new waits are refused.
  std::vector<std::stop_source*> waits;
  bool waits_stopped = false;
  /// isola's time.sleep on threads other than the worker waits on this (with `mu`), so that
  /// ending the interpreter can wake the threads it interrupts: wake_sleeps() bumps the count.
  std::condition_variable sleep_cv;
  std::uint64_t sleep_wakeups = 0;
  bool sleeps_interrupted = false;  ///< after wake_sleeps(): sleeps return at once
  /// Given up on: its code did not stop when interrupted (see abandon_interp).
  bool abandoned = false;
  /// Its allocator context (lib/memory.hpp) while it lives, with memory accounting on; once
  /// it has ended, what it held then is in final_memory. Guarded by `mu`.
  memory::context* memory = nullptr;
  memory_usage final_memory;

  std::string label() const;  ///< "interpreter 3" or "interpreter 3 (worker-1)"
};

enum class runtime_phase { none, running, finalizing, finalized };

/// The one runtime's bookkeeping (there is at most one runtime per process).
struct runtime_state {
  std::mutex mu;
  std::atomic<runtime_phase> phase{runtime_phase::none};
  std::thread::id owner_thread;
  _ts* main_tstate = nullptr;
  std::shared_ptr<interp_state> main;
  /// Live interpreters in creation order; ended from the back at shutdown (LIFO).
  std::vector<std::shared_ptr<interp_state>> live;
  std::vector<std::string> sys_path;
  /// Objects that could not be released where their owner ended (an interpreter destroyed
  /// from its own worker); released after the live interpreters have ended.
  std::vector<std::shared_ptr<void>> deferred;
  /// Interpreters given up on while their code still runs (abandon_interp), until they end.
  /// While any is here, the runtime does not finalize CPython: it cannot end an interpreter
  /// under a running thread.
  std::vector<std::shared_ptr<interp_state>> abandoned;
};

runtime_state& runtime() noexcept;

/// Adds to / removes from the live list (interp/ calls these around an interpreter's life).
/// unregister_interp also takes it off the abandoned list: an abandoned interpreter that
/// ends after all calls it.
void register_interp(const std::shared_ptr<interp_state>& s);
void unregister_interp(const interp_state* s);

/// Gives up on an interpreter whose code did not stop when interrupted (stuck in C code, or
/// threads that ignore SystemExit): it leaves the live list (the runtime no longer waits for
/// it) and joins the abandoned list, its threads' channel waits end and new ones are refused
/// (stop_waits), and `why` is logged at critical level. Idempotent;
/// returns false if it was already abandoned or has ended.
bool abandon_interp(const std::shared_ptr<interp_state>& s, const std::string& why);
/// Number of interpreters abandoned and not ended.
std::size_t abandoned_count();

/// Keeps p alive until the runtime has ended every interpreter.
void defer_release(std::shared_ptr<void> p);

/// Waits until no attach guard holds the interpreter, logging every `warn_every` it waits.
/// Call with `lock` held on s.mu; phase must already refuse new guards.
void wait_for_guards(interp_state& s, std::unique_lock<std::mutex>& lock,
                     std::chrono::milliseconds warn_every = std::chrono::seconds(2));

/// Adds an at-end hook; false (hook not added) if the hooks have already run.
bool add_at_end(interp_state& s, std::function<void()> hook);
/// Runs and clears the hooks (the owner calls this with the GIL held, before ending).
void run_at_end(interp_state& s) noexcept;

/// The data a part keeps under `key` for this interpreter, or nullptr; set_extension replaces
/// it. Both with s.mu held.
std::shared_ptr<void> extension(const interp_state& s, const extension_key& key);
void set_extension(interp_state& s, const extension_key& key, std::shared_ptr<void> data);

/// Registers a blocking wait of this interpreter; false if its waits have been stopped.
bool register_wait(interp_state& s, std::stop_source* stop);
void unregister_wait(interp_state& s, std::stop_source* stop) noexcept;
/// Ends every wait in progress (their stop sources are requested) and refuses new ones:
/// called when the interpreter starts closing.
void stop_waits(interp_state& s) noexcept;

/// Wakes every isola time.sleep of the interpreter's non-worker threads, and makes later ones
/// return at once: called when ending the interpreter interrupts the threads it left running.
void wake_sleeps(interp_state& s) noexcept;

/// Wakes every isola time.sleep of the interpreter's non-worker threads so that each looks
/// again: one with an exception pending (PyThreadState_SetAsyncExc) returns, the others sleep
/// on. Called after an interrupt aimed at one thread (isola._interrupt_thread).
void nudge_sleeps(interp_state& s) noexcept;

/// The state of a live (or abandoned) interpreter, or the main one, by its id; nullptr if
/// none.
std::shared_ptr<interp_state> find_interp(std::int64_t id);

/// True if the calling thread currently has a thread state of this interpreter attached.
bool attached_here(const interp_state& s) noexcept;

}  // namespace isola::detail
