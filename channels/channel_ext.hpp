// What the Python face needs from the channel core beyond the public API: the per-channel
// pickling switch and waiting on several channels at once (isola.select).
#pragma once

#include <isola/channel.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>

namespace isola::detail {

/// Channels' own code reaches a handle's core through this (the public class keeps it private).
struct channel_access {
  static const std::shared_ptr<channel_core>& core(const channel& ch) noexcept { return ch.core_; }
};

/// Whether a channel accepts pickled objects from Python (true unless turned off when made).
bool channel_allows_pickle(const channel& ch) noexcept;
void set_channel_pickle(const channel& ch, bool allow) noexcept;
/// The default of Python's put(..., syncobj=None) for this channel (PEP 734 as in CPython
/// 3.13: create(syncobj=...)); false unless set when it was made.
bool channel_syncobj_default(const channel& ch) noexcept;
void set_channel_syncobj_default(const channel& ch, bool on) noexcept;
/// Python's maxsize as it was given (CPython's queues report a negative one back); the
/// capacity unless set when the channel was made.
std::int64_t channel_maxsize(const channel& ch) noexcept;
void set_channel_maxsize(const channel& ch, std::int64_t maxsize) noexcept;
/// The default of Python's put(..., unbounditems=None) for this channel (channels/pyunbound.hpp
/// names the values); 0 unless set when it was made.
int channel_unbound_default(const channel& ch) noexcept;
void set_channel_unbound_default(const channel& ch, int mode) noexcept;

/// The int a message holds when it is a plain (64-bit) int, else nullptr.
inline const std::int64_t* plain_int(const message& m) noexcept {
  const value* v = m.as_value();
  return v != nullptr ? std::get_if<std::int64_t>(&v->data()) : nullptr;
}

/// Spins (pause instructions and cheap probes, no system call, no fence) for up to `rounds`
/// rounds until the channel looks ready for a recv (items) or a send (room), or closed.
/// True if it looks ready; the caller then tries for real. For a thread that would otherwise
/// pay for releasing and re-taking its GIL around a short wait.
bool spin_until_ready(const channel& ch, bool for_recv, int rounds) noexcept;

/// try_send for a caller that blocks anyway: channel_full may also mean "the slot is not free
/// yet". It does not look at the receivers' position (their hot line), which try_send does on
/// a full ring. The caller must decide with an exact call (or a blocking one) before it
/// reports full or closed.
boost::system::result<void> try_send_quick(const channel& ch, message&& msg) noexcept;

/// try_send_quick for an int, the commonest small message, without a message object in the
/// caller. True if sent; false: full, not free yet or closed (decide with a general call).
bool try_send_int_quick(const channel& ch, std::int64_t v) noexcept;

/// try_recv_many without the vector: hands each item, in order, to fn(ctx, item) while it is
/// still in its ring slot (fn must not throw and must take the item). Same outcome as
/// try_recv_many. For the Python face, which builds its list straight from the ring.
using consume_fn = void (*)(void* ctx, message&& item) noexcept;
boost::system::result<std::size_t> try_recv_each(const channel& ch, std::size_t max_items,
                                                 consume_fn fn, void* ctx) noexcept;

/// The receiving counterpart of try_send_quick, handing the item to fn(ctx, item) while it is
/// still in its ring slot (as try_recv_each; no message object on the way). True if an item
/// was taken. False may also mean "not published yet" or "closed and drained": the caller
/// decides with an exact or blocking call. The other side's position is not looked at.
bool try_take_quick(const channel& ch, consume_fn fn, void* ctx) noexcept;

/// For Python's recv(): if this thread owns the receiving side (see ring.hpp) and the next
/// item is an int, make(int) builds the Python object while the item is still in its slot; if
/// that gives one (not nullptr), the item is taken and the object returned. nullptr otherwise,
/// with nothing taken: the caller goes on with try_take_quick. (void*: the channel core does
/// not see Python.)
using make_int_fn = void* (*)(std::int64_t) noexcept;
void* try_take_int_quick(const channel& ch, make_int_fn make) noexcept;

/// try_take_int_quick for a run, for Python's recv_many: if this thread owns the receiving
/// side, takes the items from the head on while each is an int and make(int) gives its object
/// (written to out[i]), up to max_items. Returns how many were taken.
/// - other_next: it stopped at an item that is there but is not an int, or whose object
///   make() refused; that item stays in the channel for the general path.
/// - 0 with nothing taken when the side is not owned by this thread (or nothing is there):
///   the caller goes on with try_recv_each.
std::size_t try_take_ints(const channel& ch, std::size_t max_items, make_int_fn make,
                          void** out, bool& other_next) noexcept;

/// Receiver pacing (recv_pacer in channel.cpp; docs/channels-performance.md, "Receivers that
/// keep up"):
/// what one thread's last waits for items on one ring showed.
struct recv_pace {
  const void* ring = nullptr;  ///< the ring these waits were on
  bool streaming = false;      ///< the next wait probes ahead for a run of items
  unsigned quick = 0;          ///< waits in a row that found their item at once
  bool streaming_on(const void* r) const noexcept { return ring == r && streaming; }
};

/// How one wait for items ended.
struct recv_wait_outcome {
  bool moved = false;   ///< it took something (not a timeout, close or stop)
  int last_round = -1;  ///< spin round of its last probe; -1: the first attempt took it
  bool hit = false;     ///< that probe saw an item
  bool by_run = false;  ///< ... and a run of items behind it
};

/// Probes within which a wait counts as quick, and rounds after which it counts as long.
inline constexpr int pace_quick_rounds = 2;
inline constexpr int pace_long_rounds = 64;

/// The pace after a wait on `ring` that was (was_streaming) or was not paced. can_pace: the
/// ring is large enough for runs. Two quick waits in a row start streaming; a paced wait that
/// did not end with a run, a long wait and a failed one stop it.
constexpr recv_pace pace_after_wait(recv_pace p, const void* ring, bool was_streaming,
                                    bool can_pace, const recv_wait_outcome& w) noexcept {
  if (p.ring != ring) p = {ring, false, 0};
  if (!can_pace || !w.moved || w.last_round >= pace_long_rounds) return {ring, false, 0};
  if (w.last_round < 0) return p;  // the first attempt took it: no news
  if (was_streaming) return {ring, w.hit && w.by_run, 0};
  if (w.hit && w.last_round < pace_quick_rounds) {
    return p.quick + 1 >= 2 ? recv_pace{ring, true, 0} : recv_pace{ring, false, p.quick + 1};
  }
  return {ring, false, 0};
}

/// Whether this thread's next wait for items on ch is paced, and setting it (for tests).
bool receiver_streaming(const channel& ch) noexcept;
void set_receiver_streaming(const channel& ch, bool on) noexcept;
/// Whether a receiver is parked (or about to park) on ch right now (for tests).
bool receiver_parked(const channel& ch) noexcept;

/// The rings an unbounded channel holds now (lib/ring_chain.hpp: the live ones and drained ones
/// not yet freed); 1 for a bounded channel. For tests and memory figures.
std::size_t channel_rings(const channel& ch) noexcept;

/// Whether the channel's producers' (consumers') side is biased to one thread right now (see
/// ring.hpp): for tests.
bool channel_side_owned(const channel& ch, bool producers) noexcept;

/// The index of the first channel that has an item or is closed, right now.
std::optional<std::size_t> select_now(std::span<const channel> chans) noexcept;
/// Waits until select_now() gives an index, without polling: the channels ring a shared bell
/// when an item arrives or they close. errc::timeout or errc::cancelled otherwise.
boost::system::result<std::size_t> wait_select(std::span<const channel> chans,
                                               channel_timeout timeout, std::stop_token stop);

}  // namespace isola::detail
