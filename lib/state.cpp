// Process-wide bookkeeping: the runtime's state, the live-interpreter list, guard waiting.
#include "lib/state.hpp"

#include "lib/python.hpp"

#include <isola/error.hpp>
#include <isola/log.hpp>

#include <algorithm>

namespace isola::detail {

std::string interp_state::label() const {
  std::string l = id < 0 ? std::string("an interpreter being created") : "interpreter " + std::to_string(id);
  if (!name.empty()) l += " (" + name + ")";
  return l;
}

runtime_state& runtime() noexcept {
  static runtime_state rt;
  return rt;
}

void register_interp(const std::shared_ptr<interp_state>& s) {
  auto& rt = runtime();
  std::lock_guard lock(rt.mu);
  if (rt.phase.load() != runtime_phase::running) {
    throw isola::error(rt.phase.load() == runtime_phase::finalizing ? isola::errc::runtime_finalizing
                                                                    : isola::errc::no_runtime,
                       "cannot create an interpreter: no isola::runtime is running; create one "
                       "(isola::runtime rt;) before any interpreter");
  }
  rt.live.push_back(s);
}

void unregister_interp(const interp_state* s) {
  auto& rt = runtime();
  std::lock_guard lock(rt.mu);
  std::erase_if(rt.live, [s](const auto& p) { return p.get() == s; });
  std::erase_if(rt.abandoned, [s](const auto& p) { return p.get() == s; });
}

bool abandon_interp(const std::shared_ptr<interp_state>& s, const std::string& why) {
  {
    std::lock_guard slock(s->mu);
    if (s->abandoned || s->phase == interp_phase::closed) return false;
    s->abandoned = true;
  }
  {
    auto& rt = runtime();
    std::lock_guard lock(rt.mu);
    std::erase_if(rt.live, [&](const auto& p) { return p == s; });
    rt.abandoned.push_back(s);
  }
  // Its other threads must not take items from channels that live code shares with it: they
  // would hold them while they wait for the GIL the stuck thread keeps.
  stop_waits(*s);
  logger("isola.interp")
      ->critical("[interp {}] abandoning {}: {}; its thread is left running and ends the "
                 "interpreter if it ever returns; until then CPython cannot be finalized",
                 s->id, s->label(), why);
  return true;
}

std::size_t abandoned_count() {
  auto& rt = runtime();
  std::lock_guard lock(rt.mu);
  return rt.abandoned.size();
}

bool add_at_end(interp_state& s, std::function<void()> hook) {
  std::lock_guard lock(s.mu);
  if (s.at_end_ran) return false;
  s.at_end.push_back(std::move(hook));
  return true;
}

void run_at_end(interp_state& s) noexcept {
  for (;;) {
    std::vector<std::function<void()>> hooks;
    {
      std::lock_guard lock(s.mu);
      if (s.at_end.empty()) {
        s.at_end_ran = true;
        return;
      }
      hooks.swap(s.at_end);
    }
    for (auto& h : hooks) h();
  }
}

std::shared_ptr<void> extension(const interp_state& s, const extension_key& key) {
  for (const auto& [k, data] : s.extensions) {
    if (k == &key) return data;
  }
  return nullptr;
}

void set_extension(interp_state& s, const extension_key& key, std::shared_ptr<void> data) {
  for (auto& [k, d] : s.extensions) {
    if (k == &key) {
      d = std::move(data);
      return;
    }
  }
  s.extensions.emplace_back(&key, std::move(data));
}

bool register_wait(interp_state& s, std::stop_source* stop) {
  std::lock_guard lock(s.mu);
  if (s.waits_stopped) return false;
  s.waits.push_back(stop);
  return true;
}

void unregister_wait(interp_state& s, std::stop_source* stop) noexcept {
  std::lock_guard lock(s.mu);
  std::erase(s.waits, stop);
}

void stop_waits(interp_state& s) noexcept {
  std::lock_guard lock(s.mu);
  s.waits_stopped = true;
  for (auto* w : s.waits) w->request_stop();
}

void wake_sleeps(interp_state& s) noexcept {
  {
    std::lock_guard lock(s.mu);
    s.sleeps_interrupted = true;
    ++s.sleep_wakeups;
  }
  s.sleep_cv.notify_all();
}

void nudge_sleeps(interp_state& s) noexcept {
  {
    std::lock_guard lock(s.mu);
    ++s.sleep_wakeups;
  }
  s.sleep_cv.notify_all();
}

std::shared_ptr<interp_state> find_interp(std::int64_t id) {
  auto& rt = runtime();
  std::lock_guard lock(rt.mu);
  if (rt.main && rt.main->id == id) return rt.main;
  for (const auto& s : rt.live) {
    if (s->id == id) return s;
  }
  for (const auto& s : rt.abandoned) {  // its threads still run code (channels, sleeps)
    if (s->id == id) return s;
  }
  return nullptr;
}

void defer_release(std::shared_ptr<void> p) {
  auto& rt = runtime();
  std::lock_guard lock(rt.mu);
  rt.deferred.push_back(std::move(p));
}

void wait_for_guards(interp_state& s, std::unique_lock<std::mutex>& lock,
                     std::chrono::milliseconds warn_every) {
  auto started = std::chrono::steady_clock::now();
  while (s.guards > 0) {
    if (s.cv.wait_for(lock, warn_every, [&] { return s.guards == 0; })) break;
    auto waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - started);
    logger("isola.attach")
        ->warn("[interp {}] closing {} waits for {} attached thread(s) ({:.1f} s so far); "
               "end their isola::attach_guard scopes",
               s.id, s.label(), s.guards, waited.count());
  }
}

bool attached_here(const interp_state& s) noexcept {
  PyThreadState* cur = current_tstate();
  return cur != nullptr && PyInterpreterState_GetID(PyThreadState_GetInterpreter(cur)) == s.id;
}

}  // namespace isola::detail
