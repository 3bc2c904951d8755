// isola::channel: FIFO order, full/empty, producers x consumers without loss or duplication,
// close while threads are blocked, timeouts, batches, stop_token cancellation, the Asio forms,
// named channels, and what happens to queued items when a channel is destroyed.
// Waits that a broken channel could turn into hangs have generous limits; no check depends on
// how fast anything is (timeouts are checked to last at least as long as asked, never at most).
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include "channels/channel_ext.hpp"
#include "lib/sync.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <limits>
#include <memory>
#include <numeric>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

using namespace isola_test;
using namespace std::chrono_literals;
using isola::channel;
using isola::errc;
using isola::message;

namespace {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr bool under_sanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr bool under_sanitizer = true;
#else
constexpr bool under_sanitizer = false;
#endif
#else
constexpr bool under_sanitizer = false;
#endif

std::int64_t int_of(const message& m) { return m.as_value()->as_int(); }

// The blocking calls in their error_code forms, as results, so a case can check which error a
// call ended with; the throwing forms are checked in "blocking calls throw isola::error".
boost::system::result<void> send_r(channel& ch, message&& m, isola::channel_timeout t = std::nullopt,
                                   std::stop_token st = {}) {
  boost::system::error_code ec;
  ch.send(std::move(m), t, std::move(st), ec);
  if (ec) return ec;
  return {};
}
boost::system::result<message> recv_r(channel& ch, isola::channel_timeout t = std::nullopt,
                                      std::stop_token st = {}) {
  boost::system::error_code ec;
  message m = ch.recv(t, std::move(st), ec);
  if (ec) return ec;
  return m;
}
isola::send_many_result send_many_r(channel& ch, std::span<message> items,
                                    isola::channel_timeout t = std::nullopt,
                                    std::stop_token st = {}) {
  isola::send_many_result r;
  r.sent = ch.send_many(items, t, std::move(st), r.error);
  return r;
}
boost::system::result<std::size_t> recv_many_r(channel& ch, std::vector<message>& out,
                                               std::size_t max_items,
                                               isola::channel_timeout t = std::nullopt,
                                               std::stop_token st = {}) {
  boost::system::error_code ec;
  const std::size_t n = ch.recv_many(out, max_items, t, std::move(st), ec);
  if (ec) return ec;
  return n;
}
boost::system::result<std::vector<message>> recv_many_r(channel& ch, std::size_t max_items,
                                                        isola::channel_timeout t = std::nullopt,
                                                        std::stop_token st = {}) {
  boost::system::error_code ec;
  auto v = ch.recv_many(max_items, t, std::move(st), ec);
  if (ec) return ec;
  return v;
}

/// Counts live sources; each owns `size` bytes.
struct counting_source final : isola::buffer_source {
  static inline std::atomic<int> alive{0};
  std::vector<std::byte> data;
  explicit counting_source(std::size_t size) : data(size, std::byte{7}) { ++alive; }
  ~counting_source() override { --alive; }
  std::span<const std::byte> bytes() const noexcept override { return data; }
};

isola::shared_buffer counted_buffer(std::size_t size = 16) {
  return isola::shared_buffer(std::make_shared<counting_source>(size));
}

/// Waits until pred() holds; false after a generous limit (a hang turned into a failure).
template <typename Pred>
bool eventually(Pred pred, std::chrono::seconds limit = 30s) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

/// Runs op(stop_token) on a thread, requests stop once it has had time to block, and returns
/// what op returned. If op does not return, closes ch so the thread can end, and fails.
template <typename Op>
boost::system::error_code stopped_outcome(channel& ch, Op op) {
  std::stop_source stop;
  std::promise<boost::system::error_code> result;
  std::thread t([&] { result.set_value(op(stop.get_token())); });
  std::this_thread::sleep_for(30ms);
  stop.request_stop();
  auto f = result.get_future();
  const bool returned = f.wait_for(30s) == std::future_status::ready;
  if (!returned) ch.close();
  t.join();
  CHECK(returned);
  return f.get();
}

}  // namespace

// send(msg) and recv() without a deadline must stay overloads of their own: with defaulted
// std::optional arguments, every call stalled on a store-forwarding failure
// (docs/channels-performance.md, "Arguments that stall"). These fail to compile if the
// overloads are folded back.
static_assert(std::is_same_v<decltype(static_cast<void (channel::*)(message&&)>(&channel::send)),
                             void (channel::*)(message&&)>);
static_assert(std::is_same_v<decltype(static_cast<message (channel::*)()>(&channel::recv)),
                             message (channel::*)()>);

TEST_CASE("channel: items come out in the order they went in", "[channel]") {
  channel ch(8);
  CHECK(ch.capacity() == 8);
  CHECK(ch.size() == 0);
  CHECK_FALSE(ch.closed());
  for (int i = 0; i < 8; ++i) REQUIRE(ch.try_send(message(i)));
  CHECK(ch.size() == 8);
  for (int i = 0; i < 8; ++i) {
    auto r = ch.try_recv();
    REQUIRE(r);
    CHECK(int_of(*r) == i);
  }
  // Many laps round a small ring, capacity not a power of two.
  channel small(3);
  int next_in = 0, next_out = 0;
  while (next_out < 1000) {
    while (small.try_send(message(next_in))) ++next_in;
    auto r = small.try_recv();
    REQUIRE(r);
    CHECK(int_of(*r) == next_out++);
  }
}

TEST_CASE("channel: try_send on a full channel and try_recv on an empty one", "[channel]") {
  channel ch(2);
  auto empty = ch.try_recv();
  REQUIRE_FALSE(empty);
  CHECK(empty.error() == errc::channel_empty);
  REQUIRE(ch.try_send(message("a")));
  REQUIRE(ch.try_send(message("b")));
  message third(std::string(100, 'c'));
  auto full = ch.try_send(std::move(third));
  REQUIRE_FALSE(full);
  CHECK(full.error() == errc::channel_full);
  CHECK(full.error().message() == "channel is full");
  // A refused message is left as it was.
  REQUIRE(third.as_value());
  CHECK(third.as_value()->as_str() == std::string(100, 'c'));
  CHECK(ch.try_recv()->as_value()->as_str() == "a");
  REQUIRE(ch.try_send(std::move(third)));
  CHECK(ch.try_recv()->as_value()->as_str() == "b");
  CHECK(ch.try_recv()->as_value()->as_str() == std::string(100, 'c'));
}

TEST_CASE("channel: capacity must be at least 1; no bound is asked for by name", "[channel]") {
  CHECK_THROWS_WITH(channel(0), Catch::Contains("isola::unbounded"));
  CHECK_THROWS_AS(channel(0), std::invalid_argument);
  CHECK_THROWS_AS(channel(channel::max_capacity + 1), std::invalid_argument);
  CHECK_THROWS_AS(channel::open("capacity-zero", 0), std::invalid_argument);
  channel u(isola::unbounded);
  CHECK(u.unbounded());
  CHECK(u.capacity() == 0);
  CHECK_FALSE(channel(5).unbounded());
  channel named = channel::open("unbounded-by-name", isola::unbounded);
  CHECK(named.unbounded());
  CHECK(channel::open("unbounded-by-name", 7) == named);  // an existing channel keeps its own
}

TEST_CASE("channel: an unbounded channel takes any backlog and frees its rings as it drains",
          "[channel]") {
  channel ch(isola::unbounded);
  const std::size_t ring_items = 1024;  // lib/ring_chain.hpp's segment_items
  const std::int64_t n = static_cast<std::int64_t>(ring_items) * 10 + 5;
  REQUIRE(isola::detail::channel_rings(ch) == 1);
  for (std::int64_t i = 0; i < n; ++i) REQUIRE(ch.try_send(message(i)));
  CHECK(ch.size() == static_cast<std::size_t>(n));
  CHECK(isola::detail::channel_rings(ch) == 11);
  // Half one at a time, half in batches that cross from ring to ring.
  for (std::int64_t i = 0; i < n / 2; ++i) REQUIRE(int_of(ch.recv(1s)) == i);
  std::vector<message> got;
  while (got.size() < static_cast<std::size_t>(n - n / 2)) ch.recv_many(got, 700, 1s);
  for (std::size_t k = 0; k < got.size(); ++k) REQUIRE(int_of(got[k]) == n / 2 + std::int64_t(k));
  CHECK(ch.size() == 0);
  CHECK(ch.try_recv().error() == errc::channel_empty);
  CHECK(isola::detail::channel_rings(ch) == 1);  // found empty: the drained rings are freed

  // Batches in, across rings; then close with a backlog: everything drains, then closed.
  std::vector<message> batch;
  for (std::int64_t i = 0; i < 3000; ++i) batch.emplace_back(i);
  CHECK(ch.send_many(batch, 1s) == batch.size());
  CHECK(ch.close());
  CHECK(ch.try_send(message(1)).error() == errc::channel_closed);
  std::vector<std::int64_t> drained;
  boost::system::error_code ec;
  for (;;) {
    message m = ch.recv(std::nullopt, {}, ec);
    if (ec) break;
    if (const std::int64_t* v = isola::detail::plain_int(m)) drained.push_back(*v);
  }
  CHECK(ec == errc::channel_closed);
  REQUIRE(drained.size() == 3000);
  for (std::int64_t i = 0; i < 3000; ++i) REQUIRE(drained[static_cast<std::size_t>(i)] == i);
  CHECK(isola::detail::channel_rings(ch) == 1);
}

TEST_CASE("channel: an unbounded channel's backlog under a fast sender loses and reorders nothing",
          "[channel][concurrent]") {
  // One sender outruns one receiver: the rings chain and drain while both sides are biased
  // (the bias carries from ring to ring), and a second sender joins half-way.
  channel ch(isola::unbounded);
  const std::int64_t n = under_sanitizer ? 200'000 : 2'000'000;
  thread_failures failures;
  std::atomic<std::int64_t> got_late{0};
  std::thread receiver([&] {
    std::int64_t next = 0, late_last = -1;
    for (;;) {
      auto r = recv_r(ch, 60s);
      if (!r) {
        failures.check(r.error() == errc::channel_closed, "recv: " + r.error().message());
        return;
      }
      const std::int64_t v = int_of(*r);
      if (v >= n) {  // the second sender's
        failures.check(v > late_last, "second sender's items out of order");
        late_last = v;
        ++got_late;
        continue;
      }
      failures.check(v == next, "first sender's items out of order or lost");
      next = v + 1;
    }
  });
  std::thread late;
  for (std::int64_t i = 0; i < n; ++i) {
    failures.check(bool(send_r(ch, message(i), 60s)), "send failed");
    if (i == n / 2) {
      late = std::thread([&] {
        for (std::int64_t k = 0; k < 10'000; ++k) {
          failures.check(bool(send_r(ch, message(n + k), 60s)), "late send failed");
        }
      });
    }
  }
  late.join();
  ch.close();
  receiver.join();
  REQUIRE(failures.count == 0);
  CHECK(got_late == 10'000);
  CHECK(ch.size() == 0);
  CHECK(isola::detail::channel_rings(ch) == 1);
}

TEST_CASE("channel: every kind of message goes through", "[channel]") {
  static_assert(std::is_nothrow_move_constructible_v<message>);
  channel ch(8);
  channel other(1);
  const std::byte raw[] = {std::byte{1}, std::byte{2}, std::byte{3}};
  auto buf = isola::shared_buffer::copy_of(raw);
  REQUIRE(send_r(ch, message(isola::make_list(1, "two", 3.0))));
  REQUIRE(send_r(ch, message(buf)));
  REQUIRE(send_r(ch, message(isola::pickled{buf, {buf, isola::shared_buffer::adopt({std::byte{9}})}})));
  REQUIRE(send_r(ch, message(isola::channel_ref(other))));

  CHECK(*recv_r(ch)->as_value() == isola::value(isola::make_list(1, "two", 3.0)));
  auto b = recv_r(ch);
  REQUIRE(b->as_buffer());
  CHECK(*b->as_buffer() == buf);  // shared, not copied
  CHECK(b->as_buffer()->size() == 3);
  CHECK(b->as_buffer()->data()[2] == std::byte{3});
  auto p = recv_r(ch);
  REQUIRE(p->as_pickled());
  CHECK(p->as_pickled()->out_of_band.size() == 2);
  CHECK(p->as_pickled()->out_of_band[1].bytes()[0] == std::byte{9});
  auto c = recv_r(ch);
  REQUIRE(c->as_channel());
  channel back(*c->as_channel());
  CHECK(back == other);
  CHECK(back.id() == other.id());
  CHECK_FALSE(back == ch);
}

TEST_CASE("channel: scalars and other kinds interleaved keep their values on every path",
          "[channel]") {
  // Scalars (None, bools, ints, floats) take a copying fast path in and out of ring slots;
  // everything else is moved. Interleaved, through single items (long enough for the sides to
  // be biased to this thread, then not) and batches, every item must come out equal, and
  // nothing may leak (ASan checks that no allocated kind is dropped without its destructor).
  const std::vector<isola::value> kinds = isola::make_values(
      isola::none, true, false, std::int64_t{0}, std::numeric_limits<std::int64_t>::min(),
      std::numeric_limits<std::int64_t>::max(), -0.0, 1.5e300,
      std::numeric_limits<std::uint64_t>::max(), "s", std::string(100, 'x'),
      isola::bytes{std::string("\x07\x00", 2)}, isola::make_tuple(1, "two"),
      isola::make_list(3.0, isola::none));
  auto item = [&](std::size_t i) { return kinds[i % kinds.size()]; };
  channel ch(16);
  for (std::size_t i = 0; i < 3000; ++i) {
    REQUIRE(send_r(ch, message(item(i))));
    if (i % 7 == 3) REQUIRE(send_r(ch, message(isola::shared_buffer::adopt({std::byte{1}}))));
    auto r = recv_r(ch);
    REQUIRE(r);
    REQUIRE(r->as_value());
    REQUIRE(*r->as_value() == item(i));
    if (i % 7 == 3) {
      auto b = ch.try_recv();
      REQUIRE(b);
      REQUIRE(b->as_buffer());
      CHECK(b->as_buffer()->size() == 1);
    }
  }
  if (isola::detail::asymmetric_fence_available()) {
    CHECK(isola::detail::channel_side_owned(ch, true));
    CHECK(isola::detail::channel_side_owned(ch, false));
  }
  std::size_t other_ok = 0;  // Catch's assertions are not for other threads
  std::thread([&] {  // takes both sides back: the CAS path
    for (std::size_t i = 0; i < 40; ++i) {
      if (!send_r(ch, message(item(i)))) return;
      auto r = recv_r(ch);
      if (!(r && r->as_value() && *r->as_value() == item(i))) return;
      ++other_ok;
    }
  }).join();
  REQUIRE(other_ok == 40);
  std::vector<message> batch;
  for (std::size_t i = 0; i < 3 * kinds.size(); ++i) batch.emplace_back(item(i));
  for (int round = 0; round < 3; ++round) {
    std::vector<message> copy = batch;
    auto sent = ch.try_send_many(copy);
    REQUIRE(sent.sent == 16);
    std::vector<message> got;
    REQUIRE(recv_many_r(ch, got, 100));
    REQUIRE(got.size() == 16);
    for (std::size_t i = 0; i < got.size(); ++i) {
      REQUIRE(got[i].as_value());
      CHECK(*got[i].as_value() == item(i));
    }
  }
  // Queued items of every kind are destroyed with the channel (ASan: no leak).
  for (std::size_t i = 0; i < 16; ++i) REQUIRE(ch.try_send(message(item(i + 5))));
}

namespace {
int maker_calls = 0;
std::int64_t maker_saw = 0;
int maker_token = 0;

/// A channel (capacity 64) whose receiving side this thread owns after a streak of receives
/// (where sides are biased at all), and which is empty.
channel owned_by_this_receiver() {
  channel ch(64);
  for (std::int64_t i = 0; i < 600; ++i) {
    REQUIRE(send_r(ch, message(i)));
    REQUIRE(recv_r(ch));
  }
  return ch;
}
}  // namespace

TEST_CASE("channel: try_take_int_quick takes an int only when its maker gives an object",
          "[channel]") {
  // Python's recv() makes the int object while the item is still in its slot; if that fails
  // (no memory), the item must stay in the channel.
  channel ch = owned_by_this_receiver();
  if (!isola::detail::asymmetric_fence_available()) {
    // No membarrier (ThreadSanitizer builds): sides are never biased, so it never takes.
    REQUIRE(send_r(ch, message(std::int64_t{1})));
    CHECK(isola::detail::try_take_int_quick(ch, [](std::int64_t) noexcept -> void* {
            return &maker_token;
          }) == nullptr);
    CHECK(ch.size() == 1);
    return;
  }
  REQUIRE(isola::detail::channel_side_owned(ch, false));
  auto refuse = [](std::int64_t v) noexcept -> void* {
    ++maker_calls;
    maker_saw = v;
    return nullptr;
  };
  auto accept = [](std::int64_t v) noexcept -> void* {
    ++maker_calls;
    maker_saw = v;
    return &maker_token;
  };
  maker_calls = 0;
  CHECK(isola::detail::try_take_int_quick(ch, accept) == nullptr);  // empty: not called
  CHECK(maker_calls == 0);
  REQUIRE(send_r(ch, message(std::int64_t{-42})));
  CHECK(isola::detail::try_take_int_quick(ch, refuse) == nullptr);
  CHECK(maker_calls == 1);
  CHECK(maker_saw == -42);
  CHECK(ch.size() == 1);  // still there
  CHECK(isola::detail::try_take_int_quick(ch, accept) == &maker_token);
  CHECK(maker_calls == 2);
  CHECK(maker_saw == -42);
  CHECK(ch.size() == 0);
  // Anything but an int is left for the general path, without calling the maker.
  REQUIRE(send_r(ch, message(1.5)));
  REQUIRE(send_r(ch, message("text")));
  CHECK(isola::detail::try_take_int_quick(ch, accept) == nullptr);
  CHECK(maker_calls == 2);
  auto f = recv_r(ch);
  REQUIRE((f && f->as_value() && *f->as_value() == isola::value(1.5)));
  CHECK(isola::detail::try_take_int_quick(ch, accept) == nullptr);
  auto t = recv_r(ch);
  REQUIRE((t && t->as_value() && t->as_value()->as_str() == "text"));
}

namespace {
std::int64_t run_refuse_at = -1;  ///< the maker of the next test refuses this int
}  // namespace

TEST_CASE("channel: try_take_ints takes a run of ints, stops at anything else, loses nothing",
          "[channel]") {
  // Python's recv_many makes the int objects of a run while the items are still in their
  // slots, on a receiving side this thread owns; the rest goes the general way.
  channel ch = owned_by_this_receiver();
  // The maker's "object" is the int plus one, as a pointer (never null for the ints used).
  auto make = [](std::int64_t v) noexcept -> void* {
    if (v == run_refuse_at) return nullptr;
    return reinterpret_cast<void*>(static_cast<std::intptr_t>(v + 1));
  };
  auto as_int = [](void* p) {
    return static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(p)) - 1;
  };
  std::vector<void*> out(200, nullptr);
  bool other_next = true;
  if (!isola::detail::asymmetric_fence_available()) {
    // No membarrier (ThreadSanitizer builds): sides are never biased, so it never takes.
    REQUIRE(send_r(ch, message(std::int64_t{1})));
    CHECK(isola::detail::try_take_ints(ch, 10, make, out.data(), other_next) == 0);
    CHECK_FALSE(other_next);
    CHECK(ch.size() == 1);
    return;
  }
  REQUIRE(isola::detail::channel_side_owned(ch, false));
  // Empty: nothing taken, nothing else next.
  CHECK(isola::detail::try_take_ints(ch, 10, make, out.data(), other_next) == 0);
  CHECK_FALSE(other_next);
  // A run that crosses the end of the ring's array (600 items left the head at 600 % 64 = 24;
  // 50 items wrap) comes out whole and in order; max_items is respected.
  for (std::int64_t i = 0; i < 50; ++i) REQUIRE(send_r(ch, message(1000 + i)));
  CHECK(isola::detail::try_take_ints(ch, 45, make, out.data(), other_next) == 45);
  CHECK_FALSE(other_next);
  bool in_order = true;
  for (std::int64_t i = 0; i < 45; ++i) in_order = in_order && as_int(out[i]) == 1000 + i;
  CHECK(in_order);
  CHECK(ch.size() == 5);
  CHECK(isola::detail::try_take_ints(ch, 100, make, out.data(), other_next) == 5);
  CHECK_FALSE(other_next);
  CHECK(as_int(out[4]) == 1049);
  // Ints, then something else: the run stops there and the rest stays, in order.
  REQUIRE(send_r(ch, message(std::int64_t{7})));
  REQUIRE(send_r(ch, message(std::int64_t{8})));
  REQUIRE(send_r(ch, message("text")));
  REQUIRE(send_r(ch, message(std::int64_t{9})));
  CHECK(isola::detail::try_take_ints(ch, 100, make, out.data(), other_next) == 2);
  CHECK(other_next);
  CHECK(as_int(out[0]) == 7);
  CHECK(as_int(out[1]) == 8);
  CHECK(isola::detail::try_take_ints(ch, 100, make, out.data(), other_next) == 0);
  CHECK(other_next);
  auto t = recv_r(ch);
  REQUIRE((t && t->as_value() && t->as_value()->as_str() == "text"));
  // A refused int (its object could not be made) stays in the channel, with what follows.
  REQUIRE(send_r(ch, message(std::int64_t{10})));
  run_refuse_at = 10;
  CHECK(isola::detail::try_take_ints(ch, 100, make, out.data(), other_next) == 1);  // the 9
  CHECK(other_next);
  CHECK(as_int(out[0]) == 9);
  CHECK(ch.size() == 1);
  run_refuse_at = -1;
  CHECK(isola::detail::try_take_ints(ch, 100, make, out.data(), other_next) == 1);
  CHECK_FALSE(other_next);
  CHECK(as_int(out[0]) == 10);
  CHECK(ch.size() == 0);
  // Another thread that receives takes the side back; then this thread's call takes nothing.
  REQUIRE(send_r(ch, message(std::int64_t{11})));
  bool other_got = false;
  std::thread([&] { other_got = recv_r(ch).has_value(); }).join();
  CHECK(other_got);
  CHECK_FALSE(isola::detail::channel_side_owned(ch, false));
  REQUIRE(send_r(ch, message(std::int64_t{12})));
  CHECK(isola::detail::try_take_ints(ch, 100, make, out.data(), other_next) == 0);
  CHECK(ch.size() == 1);
}

TEST_CASE("channel: producers x consumers move a million messages, none lost or doubled",
          "[channel][concurrent]") {
  const int producers = 3, consumers = 3;
  const std::int64_t per_producer = under_sanitizer ? 30'000 : 340'000;  // >= 1 000 000 in all
  const bool batched = GENERATE(false, true);
  const bool unbounded = GENERATE(false, true);
  INFO("batched: " << batched << ", unbounded: " << unbounded);
  channel ch = unbounded ? channel(isola::unbounded) : channel(256);
  thread_failures failures;
  // seen[c][p * per_producer + seq]: how often consumer c got item seq of producer p.
  std::vector<std::vector<std::uint8_t>> seen(
      consumers, std::vector<std::uint8_t>(static_cast<std::size_t>(producers * per_producer)));

  std::vector<std::thread> threads;
  for (int c = 0; c < consumers; ++c) {
    threads.emplace_back([&, c] {
      std::vector<std::int64_t> last(producers, -1);
      std::vector<message> got;
      auto take = [&](const message& m) {
        const std::int64_t v = int_of(m);
        const int p = static_cast<int>(v / per_producer);
        const std::int64_t seq = v % per_producer;
        failures.check(seq > last[p], "items of one producer out of order");
        last[p] = seq;
        ++seen[c][static_cast<std::size_t>(v)];
      };
      for (;;) {
        if (batched) {
          got.clear();
          auto r = recv_many_r(ch, got, 64, 60s);
          if (!r) {
            failures.check(r.error() == errc::channel_closed, "recv_many: " + r.error().message());
            return;
          }
          for (auto& m : got) take(m);
        } else {
          auto r = recv_r(ch, 60s);
          if (!r) {
            failures.check(r.error() == errc::channel_closed, "recv: " + r.error().message());
            return;
          }
          take(*r);
        }
      }
    });
  }
  std::vector<std::thread> senders;
  for (int p = 0; p < producers; ++p) {
    senders.emplace_back([&, p] {
      std::vector<message> batch;
      for (std::int64_t seq = 0; seq < per_producer;) {
        if (batched) {
          batch.clear();
          for (int k = 0; k < 50 && seq < per_producer; ++k, ++seq) {
            batch.emplace_back(p * per_producer + seq);
          }
          auto r = send_many_r(ch, batch, 60s);
          failures.check(!r.error && r.sent == batch.size(), "send_many stopped early");
        } else {
          failures.check(bool(send_r(ch, message(p * per_producer + seq), 60s)), "send failed");
          ++seq;
        }
      }
    });
  }
  for (auto& t : senders) t.join();
  ch.close();
  for (auto& t : threads) t.join();
  REQUIRE(failures.count == 0);
  std::size_t missing = 0, doubled = 0;
  for (std::size_t i = 0; i < seen[0].size(); ++i) {
    int n = 0;
    for (int c = 0; c < consumers; ++c) n += seen[c][i];
    if (n == 0) ++missing;
    if (n > 1) ++doubled;
  }
  CHECK(missing == 0);
  CHECK(doubled == 0);
}

TEST_CASE("channel: close wakes blocked senders and receivers; receivers drain first",
          "[channel][concurrent]") {
  channel full(1), empty(1);
  REQUIRE(full.try_send(message(1)));
  thread_failures failures;
  std::atomic<int> returned{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&] {
      auto r = send_r(full, message(2));
      failures.check(!r && r.error() == errc::channel_closed, "blocked send: not channel_closed");
      ++returned;
    });
    threads.emplace_back([&] {
      auto r = recv_r(empty);
      failures.check(!r && r.error() == errc::channel_closed, "blocked recv: not channel_closed");
      ++returned;
    });
  }
  std::this_thread::sleep_for(50ms);  // let them park (the result is the same if they have not)
  CHECK(returned == 0);
  CHECK(full.close());
  CHECK_FALSE(full.close());
  CHECK(empty.close());
  for (auto& t : threads) t.join();
  CHECK(failures.count == 0);
  CHECK(returned == 4);
  // The item accepted before close is still delivered, then channel_closed.
  auto r = recv_r(full);
  REQUIRE(r);
  CHECK(int_of(*r) == 1);
  CHECK(recv_r(full).error() == errc::channel_closed);
  CHECK(full.try_recv().error() == errc::channel_closed);
  CHECK(full.try_send(message(3)).error() == errc::channel_closed);
  CHECK(send_r(full, message(3)).error() == errc::channel_closed);
  CHECK(full.closed());
}

TEST_CASE("channel: close during traffic loses and doubles nothing", "[channel][concurrent]") {
  for (int round = 0; round < (under_sanitizer ? 5 : 30); ++round) {
    channel ch = round % 2 == 0 ? channel(16) : channel(isola::unbounded);
    std::atomic<std::int64_t> sent_sum{0}, sent_count{0}, got_sum{0}, got_count{0};
    std::vector<std::thread> threads;
    for (int p = 0; p < 2; ++p) {
      threads.emplace_back([&, p] {
        for (std::int64_t i = 1;; ++i) {
          const std::int64_t v = i * 2 + p;
          if (!send_r(ch, message(v))) return;
          sent_sum += v;
          ++sent_count;
        }
      });
      threads.emplace_back([&] {
        for (;;) {
          auto r = recv_r(ch);
          if (!r) return;
          got_sum += int_of(*r);
          ++got_count;
        }
      });
    }
    std::this_thread::sleep_for(2ms);
    ch.close();
    for (auto& t : threads) t.join();
    REQUIRE(got_count == sent_count);
    REQUIRE(got_sum == sent_sum);
  }
}

TEST_CASE("channel: a timeout waits at least as long as asked", "[channel]") {
  channel ch(1);
  auto t0 = std::chrono::steady_clock::now();
  auto r = recv_r(ch, 250ms);
  auto waited = std::chrono::steady_clock::now() - t0;
  REQUIRE_FALSE(r);
  CHECK(r.error() == errc::timeout);
  CHECK(waited >= 250ms);

  REQUIRE(send_r(ch, message(1)));
  t0 = std::chrono::steady_clock::now();
  auto s = send_r(ch, message(2), 250ms);
  waited = std::chrono::steady_clock::now() - t0;
  REQUIRE_FALSE(s);
  CHECK(s.error() == errc::timeout);
  CHECK(waited >= 250ms);

  // Zero makes one attempt.
  CHECK(send_r(ch, message(3), 0ns).error() == errc::timeout);
  CHECK(int_of(*recv_r(ch, 0ns)) == 1);
  CHECK(recv_r(ch, 0ns).error() == errc::timeout);
  CHECK(recv_r(ch, -5ms).error() == errc::timeout);
}

TEST_CASE("channel: blocking calls throw isola::error; their error_code forms set it",
          "[channel]") {
  auto code_of = [](auto&& f) { return isola_error_of(f); };
  channel ch(2);
  ch.send(message(1));
  ch.send(message(2), 1s);
  CHECK(int_of(ch.recv()) == 1);
  CHECK(int_of(ch.recv(1s)) == 2);

  // Timeouts, both directions; the message says which wait ran out.
  CHECK(code_of([&] { (void)ch.recv(0ns); }) == errc::timeout);
  CHECK_THROWS_WITH(ch.recv(1ms), "isola::channel::recv: no item came within the timeout "
                                  "given: timed out");
  ch.send(message(3));
  ch.send(message(4));
  message kept(5);
  CHECK_THROWS_WITH(ch.send(std::move(kept), 1ms),
                    "isola::channel::send: no room came within the timeout given: timed out");
  CHECK(int_of(kept) == 5);  // not moved from
  boost::system::error_code ec;
  ch.send(std::move(kept), 0ns, {}, ec);
  CHECK(ec == errc::timeout);
  CHECK(int_of(kept) == 5);

  // Cancelled by the stop token.
  std::stop_source stop;
  stop.request_stop();
  CHECK(code_of([&] { ch.send(message(6), std::nullopt, stop.get_token()); }) == errc::cancelled);
  CHECK(code_of([&] { (void)channel(1).recv(std::nullopt, stop.get_token()); }) ==
        errc::cancelled);

  // send_many throws when it stops early; its error_code form says how many went.
  std::vector<message> items;
  items.emplace_back(7);
  items.emplace_back(8);
  CHECK(code_of([&] { ch.send_many(items, 1ms); }) == errc::timeout);
  CHECK(int_of(ch.recv()) == 3);
  CHECK(ch.send_many(items, 0ns, {}, ec) == 1);
  CHECK(ec == errc::timeout);
  CHECK(int_of(items[1]) == 8);  // the one not sent is untouched

  // Closed: sends throw at once; receives drain, then throw.
  ch.close();
  CHECK_THROWS_WITH(ch.send(message(9)),
                    "isola::channel::send: the channel was closed, so it takes no more items: "
                    "channel is closed");
  std::vector<message> got;
  CHECK(ch.recv_many(got, 10) == 2);
  CHECK(int_of(got[0]) == 4);
  CHECK(int_of(got[1]) == 7);
  CHECK_THROWS_WITH(ch.recv(), "isola::channel::recv: the channel was closed and every item "
                               "sent to it has been received: channel is closed");
  CHECK(code_of([&] { (void)ch.recv_many(10); }) == errc::channel_closed);
  message none = ch.recv(ec);
  CHECK(ec == errc::channel_closed);
  CHECK(none.as_value() != nullptr);
  CHECK(none.as_value()->is_none());
  CHECK(ch.recv_many(got, 10, std::nullopt, {}, ec) == 0);
  CHECK(ec == errc::channel_closed);

  // Success clears an error_code that held one.
  channel open(1);
  open.send(message(10), ec);
  CHECK_FALSE(ec);
  ec = isola::make_error_code(errc::timeout);
  CHECK(int_of(open.recv(ec)) == 10);
  CHECK_FALSE(ec);
}

TEST_CASE("channel: a receiver that times out passes its wake-up on", "[channel][concurrent]") {
  // Two parked receivers, one item: whichever is woken and whatever happens to the other,
  // the item is received once and the other receiver times out.
  channel ch(4);
  std::atomic<int> got{0}, timed_out{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&] {
      auto r = recv_r(ch, 300ms);
      if (r) ++got;
      else if (r.error() == errc::timeout) ++timed_out;
    });
  }
  std::this_thread::sleep_for(50ms);
  REQUIRE(send_r(ch, message(1)));
  for (auto& t : threads) t.join();
  CHECK(got == 1);
  CHECK(timed_out == 1);
}

TEST_CASE("channel: with several parked receivers every item wakes one (no lost wake-up)",
          "[channel][concurrent]") {
  // A sender wakes only receivers that no wake-up has been sent to yet (wake-ups are not
  // repeated while a woken thread is still resuming), and receivers that time out leave a
  // stale count behind. Neither may strand an item: each is sent after the receivers have had
  // time to park, and a lost wake-up shows as items left while every receiver sleeps.
  constexpr int items = 300;
  channel ch(64);
  std::atomic<int> received{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, ch = ch, t]() mutable {
      // Thread 0 waits in short slices, so it often leaves on a timeout without a wake-up.
      const auto slice = t == 0 ? std::chrono::milliseconds(1) : std::chrono::milliseconds(10'000);
      while (!stop.load()) {
        auto r = recv_r(ch, slice);
        if (r) received.fetch_add(1);
        else if (r.error() == errc::channel_closed) return;
      }
    });
  }
  for (int i = 0; i < items; ++i) {
    std::this_thread::sleep_for(i % 3 == 0 ? 2ms : 300us);
    REQUIRE(send_r(ch, message(std::int64_t{i})));
  }
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (received.load() < items && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  const int got = received.load();
  stop = true;
  ch.close();
  for (auto& t : threads) t.join();
  CHECK(got == items);
}

TEST_CASE("channel: send_many and recv_many", "[channel]") {
  SECTION("try_send_many takes what fits and leaves the rest") {
    channel ch(10);
    std::vector<message> items;
    for (int i = 0; i < 15; ++i) items.emplace_back(i);
    auto r = ch.try_send_many(items);
    CHECK(r.sent == 10);
    CHECK(r.error == errc::channel_full);
    CHECK(int_of(items[10]) == 10);  // not taken, untouched
    std::vector<message> out;
    auto got = recv_many_r(ch, out, 7);
    REQUIRE(got);
    CHECK(*got == 7);
    REQUIRE(out.size() == 7);
    for (int i = 0; i < 7; ++i) CHECK(int_of(out[i]) == i);
    auto rest = recv_many_r(ch, 100);
    REQUIRE(rest.has_value());
    REQUIRE(rest->size() == 3);  // what is there, without waiting for more
    CHECK(int_of((*rest)[2]) == 9);
    CHECK(ch.try_recv_many(out, 5).error() == errc::channel_empty);
    CHECK(*recv_many_r(ch, out, 0) == 0);
  }
  SECTION("send_many waits for room for the rest") {
    channel ch(4);
    std::vector<message> items;
    for (int i = 0; i < 25; ++i) items.emplace_back(i);
    std::vector<std::int64_t> received;
    std::thread consumer([&] {
      std::vector<message> out;
      while (received.size() < 25) {
        out.clear();
        auto r = recv_many_r(ch, out, 3, 30s);
        if (!r) return;
        for (auto& m : out) received.push_back(int_of(m));
      }
    });
    auto r = send_many_r(ch, items, 30s);
    consumer.join();
    CHECK(r.sent == 25);
    CHECK_FALSE(r.error);
    std::vector<std::int64_t> expected(25);
    std::iota(expected.begin(), expected.end(), 0);
    CHECK(received == expected);
  }
  SECTION("send_many reports a partial send on timeout and on close") {
    channel ch(3);
    std::vector<message> items;
    for (int i = 0; i < 5; ++i) items.emplace_back(i);
    auto r = send_many_r(ch, items, 50ms);
    CHECK(r.sent == 3);
    CHECK(r.error == errc::timeout);
    ch.close();
    auto after = send_many_r(ch, std::span(items).subspan(3));
    CHECK(after.sent == 0);
    CHECK(after.error == errc::channel_closed);
    auto drained = recv_many_r(ch, 10);
    REQUIRE(drained.has_value());
    CHECK(drained->size() == 3);
    CHECK(recv_many_r(ch, 10).error() == errc::channel_closed);
  }
}

TEST_CASE("channel: a stop request cancels a blocked send or recv", "[channel][concurrent]") {
  channel ch(1);
  SECTION("recv") {
    auto ec = stopped_outcome(ch, [&](std::stop_token st) {
      return recv_r(ch, std::nullopt, st).error();
    });
    CHECK(ec == errc::cancelled);
  }
  SECTION("send") {
    REQUIRE(ch.try_send(message(1)));
    auto ec = stopped_outcome(ch, [&](std::stop_token st) {
      return send_r(ch, message(2), std::nullopt, st).error();
    });
    CHECK(ec == errc::cancelled);
    CHECK(int_of(*ch.try_recv()) == 1);  // the cancelled item was not sent
    CHECK(ch.try_recv().error() == errc::channel_empty);
  }
  SECTION("already requested: fails at once if it would block, succeeds if it would not") {
    std::stop_source stop;
    stop.request_stop();
    CHECK(recv_r(ch, std::nullopt, stop.get_token()).error() == errc::cancelled);
    REQUIRE(send_r(ch, message(5), std::nullopt, stop.get_token()));
    CHECK(int_of(*recv_r(ch, std::nullopt, stop.get_token())) == 5);
  }
  SECTION("other waiters are unaffected") {
    std::stop_source stop;
    std::atomic<int> got{-1};
    std::thread cancelled([&] { (void)recv_r(ch, std::nullopt, stop.get_token()); });
    std::thread waiting([&] {
      auto r = recv_r(ch, 30s);
      if (r) got = static_cast<int>(int_of(*r));
    });
    std::this_thread::sleep_for(30ms);
    stop.request_stop();
    cancelled.join();
    REQUIRE(send_r(ch, message(7)));
    waiting.join();
    CHECK(got == 7);
  }
}

TEST_CASE("channel: Asio callbacks complete on the handler's executor", "[channel]") {
  boost::asio::io_context io;
  channel ch(1);
  {
    // No associated executor: the handler runs on asio::system_executor's threads.
    std::promise<std::int64_t> first;
    ch.async_recv([&](boost::system::error_code ec, message m) {
      first.set_value(ec ? -1 : int_of(m));
    });
    REQUIRE(send_r(ch, message(41)));
    auto f = first.get_future();
    REQUIRE(f.wait_for(30s) == std::future_status::ready);
    CHECK(f.get() == 41);
  }
  std::vector<std::int64_t> got;
  boost::system::error_code last;
  std::thread::id ran_on;
  got.clear();
  ch.async_recv(boost::asio::bind_executor(io, [&](boost::system::error_code ec, message m) {
    ran_on = std::this_thread::get_id();
    if (!ec) got.push_back(int_of(m));
    last = ec;
  }));
  REQUIRE(send_r(ch, message(42)));
  io.restart();
  io.run();
  CHECK(ran_on == std::this_thread::get_id());
  REQUIRE(got.size() == 1);
  CHECK(got[0] == 42);

  // async_send on a full channel completes once there is room.
  REQUIRE(send_r(ch, message(1)));
  bool sent = false;
  ch.async_send(message(2), boost::asio::bind_executor(io, [&](boost::system::error_code ec) {
    CHECK_FALSE(ec);
    sent = true;
  }));
  io.restart();
  io.poll();
  CHECK_FALSE(sent);
  CHECK(int_of(*recv_r(ch)) == 1);
  io.restart();
  io.run();
  CHECK(sent);
  CHECK(int_of(*recv_r(ch)) == 2);

  // A pending receive completes with channel_closed on close.
  ch.async_recv(boost::asio::bind_executor(io, [&](boost::system::error_code ec, message) {
    last = ec;
  }));
  ch.close();
  io.restart();
  io.run();
  CHECK(last == errc::channel_closed);
  bool send_failed = false;
  ch.async_send(message(3), boost::asio::bind_executor(io, [&](boost::system::error_code ec) {
    send_failed = ec == errc::channel_closed;
  }));
  io.restart();
  io.run();
  CHECK(send_failed);
}

TEST_CASE("channel: Asio with use_future and use_awaitable", "[channel][concurrent]") {
  channel ch(2);
  {
    auto f = ch.async_recv(boost::asio::use_future);
    REQUIRE(send_r(ch, message(7)));
    REQUIRE(f.wait_for(30s) == std::future_status::ready);
    CHECK(int_of(f.get()) == 7);
    auto s = ch.async_send(message(8), boost::asio::use_future);
    REQUIRE(s.wait_for(30s) == std::future_status::ready);
    s.get();
    CHECK(int_of(*recv_r(ch)) == 8);
  }
  {
    // A coroutine echoes until the channel closes; the test feeds it from this thread.
    boost::asio::io_context io;
    channel in(4), out(4);
    std::int64_t echoed = 0;
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          for (;;) {
            auto [ec, m] = co_await in.async_recv(
                boost::asio::as_tuple(boost::asio::use_awaitable));
            if (ec) break;
            co_await out.async_send(std::move(m), boost::asio::use_awaitable);
            ++echoed;
          }
          out.close();
        },
        boost::asio::detached);
    std::thread runner([&] { io.run(); });
    for (int i = 0; i < 100; ++i) {
      REQUIRE(send_r(in, message(i), 30s));
      auto r = recv_r(out, 30s);
      REQUIRE(r);
      CHECK(int_of(*r) == i);
    }
    in.close();
    CHECK(recv_r(out, 30s).error() == errc::channel_closed);
    runner.join();
    CHECK(echoed == 100);
  }
}

TEST_CASE("channel: a pending Asio receive can be cancelled", "[channel]") {
  boost::asio::io_context io;
  channel ch(1);
  boost::asio::cancellation_signal signal;
  boost::system::error_code got;
  bool done = false;
  ch.async_recv(boost::asio::bind_cancellation_slot(
      signal.slot(), boost::asio::bind_executor(io, [&](boost::system::error_code ec, message) {
        got = ec;
        done = true;
      })));
  io.poll();
  CHECK_FALSE(done);
  signal.emit(boost::asio::cancellation_type::terminal);
  io.run();
  CHECK(done);
  CHECK(got == boost::asio::error::operation_aborted);
  // The withdrawn receive takes nothing: the next item goes to the next receiver.
  REQUIRE(send_r(ch, message(5)));
  CHECK(int_of(*ch.try_recv()) == 5);

  // Racing a timer with use_awaitable: the timer wins and the receive is withdrawn.
  boost::asio::steady_timer timer(io);
  bool timed_out = false;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        timer.expires_after(20ms);
        using namespace boost::asio::experimental::awaitable_operators;
        auto r = co_await (ch.async_recv(boost::asio::use_awaitable) ||
                           timer.async_wait(boost::asio::use_awaitable));
        timed_out = r.index() == 1;
      },
      boost::asio::detached);
  io.restart();
  io.run();
  CHECK(timed_out);
  REQUIRE(send_r(ch, message(6)));
  CHECK(int_of(*ch.try_recv()) == 6);
}

TEST_CASE("channel: many async receivers and senders on a thread pool", "[channel][concurrent]") {
  const int n = under_sanitizer ? 2'000 : 20'000;
  boost::asio::thread_pool pool(2);
  channel ch(8);
  std::atomic<std::int64_t> sum{0};
  std::atomic<int> received{0}, sent{0}, closed{0};
  for (int i = 0; i < n; ++i) {
    ch.async_recv(boost::asio::bind_executor(pool, [&](boost::system::error_code ec, message m) {
      if (ec) {
        ++closed;
        return;
      }
      sum += int_of(m);
      ++received;
    }));
  }
  std::thread producer([&] {
    for (int i = 0; i < n / 2; ++i) (void)send_r(ch, message(i));
  });
  for (int i = n / 2; i < n; ++i) {
    ch.async_send(message(i), boost::asio::bind_executor(pool, [&](boost::system::error_code ec) {
      if (!ec) ++sent;
    }));
  }
  producer.join();
  CHECK(eventually([&] { return received == n && sent == n / 2; }));
  std::int64_t expected = std::int64_t{n} * (n - 1) / 2;
  CHECK(sum == expected);
  ch.close();
  pool.join();
  CHECK(closed == 0);
}

TEST_CASE("channel: named channels", "[channel]") {
  CHECK_FALSE(channel::find("test.named.a"));
  {
    channel a = channel::open("test.named.a", 4);
    CHECK(a.name() == "test.named.a");
    channel again = channel::open("test.named.a", 99);  // existing: capacity ignored
    CHECK(again == a);
    CHECK(again.capacity() == 4);
    auto found = channel::find("test.named.a");
    REQUIRE(found);
    CHECK(found->id() == a.id());
    REQUIRE(send_r(a, message("hello")));
    CHECK(found->recv().as_value()->as_str() == "hello");
    CHECK(channel(4).name().empty());
    CHECK_FALSE(channel::find(""));
    CHECK_THROWS_AS(channel::open("", 1), std::invalid_argument);
  }
  // The last handle is gone: the name is free, and a new channel gets a new id.
  CHECK_FALSE(channel::find("test.named.a"));
  channel b = channel::open("test.named.a", 2);
  CHECK(b.capacity() == 2);

  // A ref inside a queued message keeps a named channel alive and findable.
  channel carrier(1);
  {
    channel inner = channel::open("test.named.inner", 1);
    REQUIRE(send_r(carrier, message(isola::channel_ref(inner))));
  }
  CHECK(channel::find("test.named.inner"));
  (void)recv_r(carrier);
  CHECK_FALSE(channel::find("test.named.inner"));
}

TEST_CASE("channel: find_id and list_all see every live channel, and only those",
          "[channel]") {
  std::uint64_t gone_id = 0;
  {
    channel gone(1);
    gone_id = gone.id();
    REQUIRE(channel::find_id(gone_id));
    CHECK(*channel::find_id(gone_id) == gone);
  }
  CHECK_FALSE(channel::find_id(gone_id));
  channel a(2);
  channel named = channel::open("test.find-id", 3);
  CHECK(channel::find_id(named.id())->name() == "test.find-id");
  auto all = channel::list_all();
  auto has = [&](const channel& c) { return std::find(all.begin(), all.end(), c) != all.end(); };
  CHECK(has(a));
  CHECK(has(named));
  CHECK(std::none_of(all.begin(), all.end(), [&](const channel& c) { return c.id() == gone_id; }));
  CHECK(std::is_sorted(all.begin(), all.end(),
                       [](const channel& x, const channel& y) { return x.id() < y.id(); }));
  CHECK_FALSE(channel::find_id(0));
}

TEST_CASE("channel: find_id and list_all while other threads make and drop channels",
          "[channel][concurrent]") {
  // A channel being destroyed must be neither returned half-dead nor block its destructor.
  std::atomic<bool> stop{false};
  thread_failures failures;
  std::vector<std::thread> makers;
  for (int t = 0; t < 2; ++t) {
    makers.emplace_back([&] {
      while (!stop.load()) {
        channel c(2);
        c.send(message(1));
        channel named = channel::open("test.find-id-churn", 1);
        failures.check(channel::find_id(c.id()).has_value(), "a live channel was not found");
      }
    });
  }
  std::uint64_t lookups = 0;
  const auto until = std::chrono::steady_clock::now() + 300ms;
  while (std::chrono::steady_clock::now() < until) {
    for (const channel& c : channel::list_all()) {
      auto again = channel::find_id(c.id());  // may be gone by now only if c was the last
      failures.check(again.has_value(), "a listed channel held by a handle was not found");
      ++lookups;
    }
  }
  stop = true;
  for (auto& m : makers) m.join();
  INFO(failures.first);
  CHECK(failures.count == 0);
  CHECK(lookups > 0);
}

TEST_CASE("channel: named open from many threads agrees on one channel", "[channel][concurrent]") {
  for (int round = 0; round < 50; ++round) {
    std::vector<std::uint64_t> ids(4);
    std::vector<channel> handles(4);
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) {
      threads.emplace_back([&, i] {
        handles[i] = channel::open("test.named.race", 1);
        ids[i] = handles[i].id();
      });
    }
    for (auto& t : threads) t.join();
    CHECK(std::all_of(ids.begin(), ids.end(), [&](auto id) { return id == ids[0]; }));
  }
}

TEST_CASE("channel: queued items are destroyed with the channel, received ones live on",
          "[channel]") {
  REQUIRE(counting_source::alive == 0);
  isola::shared_buffer kept;
  {
    channel ch(4);
    REQUIRE(send_r(ch, message(counted_buffer())));
    REQUIRE(send_r(ch, message(counted_buffer())));
    REQUIRE(send_r(ch, message(isola::pickled{counted_buffer(), {counted_buffer()}})));
    CHECK(counting_source::alive == 4);
    kept = *recv_r(ch)->as_buffer();
    CHECK(counting_source::alive == 4);
  }
  CHECK(counting_source::alive == 1);  // only the one received
  CHECK(kept.size() == 16);
  kept = {};
  CHECK(counting_source::alive == 0);

  // Pending async receivers get the queued items when the last handle goes; senders fail.
  boost::asio::io_context io;
  int delivered = 0, closed = 0;
  {
    channel ch(1);
    REQUIRE(send_r(ch, message(counted_buffer())));
    ch.async_send(message(counted_buffer()), boost::asio::bind_executor(io, [&](auto ec) {
      CHECK(ec == errc::channel_closed);
    }));
    CHECK(counting_source::alive == 2);
  }
  io.run();
  CHECK(counting_source::alive == 0);
  {
    channel ch(1);
    REQUIRE(send_r(ch, message(counted_buffer())));
    ch.async_recv(boost::asio::bind_executor(io, [&](boost::system::error_code ec, message) {
      ec ? ++closed : ++delivered;
    }));
    ch.async_recv(boost::asio::bind_executor(io, [&](boost::system::error_code ec, message) {
      ec ? ++closed : ++delivered;
    }));
  }
  io.restart();
  io.run();
  CHECK(delivered == 1);
  CHECK(closed == 1);
  CHECK(counting_source::alive == 0);
}

TEST_CASE("channel: errors compare with isola::errc and read well", "[channel]") {
  boost::system::error_code ec = errc::channel_closed;
  CHECK(ec == errc::channel_closed);
  CHECK(ec.message() == "channel is closed");
  // Boost keeps the std::error_code inside: converting back gives isola's own category.
  CHECK(std::error_code(ec).category() == isola::error_category());
  CHECK(std::error_code(ec) == errc::channel_closed);
  CHECK(isola::make_error_code(errc::channel_empty).message() == "channel is empty");
}

// ---- biased sides (ring.hpp): one thread alone on a side moves items without a CAS ----------

namespace {

/// Whether this build and kernel bias sides at all (not under ThreadSanitizer, not without
/// membarrier); the tests below then only check that nothing is lost.
bool biasing() { return isola::detail::asymmetric_fence_available(); }

/// Sends [from, to) from the calling thread; the number of sends that failed. (No Catch
/// assertions inside: several threads call it at once, and Catch's are not thread-safe.)
int send_range(channel& ch, std::int64_t from, std::int64_t to) {
  int failed = 0;
  for (std::int64_t i = from; i < to; ++i) {
    if (!send_r(ch, message(i))) ++failed;
  }
  return failed;
}

}  // namespace

TEST_CASE("channel: a lone sender and a lone receiver bias their sides; others take them back",
          "[channel][concurrent]") {
  const bool unbounded = GENERATE(false, true);
  INFO("unbounded: " << unbounded);
  channel ch = unbounded ? channel(isola::unbounded) : channel(64);
  using isola::detail::channel_side_owned;
  // One thread alone on both sides: after a streak, both sides are biased to it.
  for (std::int64_t i = 0; i < 2000; ++i) {
    REQUIRE(send_r(ch, message(i)));
    auto r = recv_r(ch);
    REQUIRE(r);
    REQUIRE(int_of(*r) == i);
  }
  if (biasing()) {
    CHECK(channel_side_owned(ch, true));
    CHECK(channel_side_owned(ch, false));
  }
  // Another thread sends and receives: it revokes both biases, and order holds throughout.
  std::thread other([&] {
    REQUIRE(send_r(ch, message(std::int64_t{-1})));
    auto r = recv_r(ch);
    REQUIRE(r);
    CHECK(int_of(*r) == -1);
  });
  other.join();
  CHECK_FALSE(channel_side_owned(ch, true));
  CHECK_FALSE(channel_side_owned(ch, false));
  // The first thread still works (through the CAS path, until it has a new streak).
  REQUIRE(send_r(ch, message(std::int64_t{7})));
  auto r = recv_r(ch);
  REQUIRE(r);
  CHECK(int_of(*r) == 7);
  if (unbounded) {
    // A backlog of several rings, then drained: the bias the thread earns on the first ring
    // carries to every ring after it, on both sides.
    for (std::int64_t i = 0; i < 5000; ++i) REQUIRE(send_r(ch, message(i)));
    if (biasing()) CHECK(channel_side_owned(ch, true));
    for (std::int64_t i = 0; i < 5000; ++i) REQUIRE(int_of(ch.recv()) == i);
    if (biasing()) CHECK(channel_side_owned(ch, false));
  }
}

TEST_CASE("channel: senders that take turns with a biased one lose and double nothing",
          "[channel][concurrent]") {
  // Phases: A alone (its side biased), then A and B together (revocations back and forth),
  // then B alone; one receiver checks every sender's order and the total.
  constexpr std::int64_t per_phase = under_sanitizer ? 20'000 : 200'000;
  channel ch(256);
  std::atomic<bool> bad_order{false};
  std::int64_t got = 0;
  std::thread receiver([&, ch = ch]() mutable {
    std::int64_t last_a = -1, last_b = -1, n = 0;
    for (;;) {
      auto r = recv_r(ch);
      if (!r) break;
      const std::int64_t v = int_of(*r);
      std::int64_t& last = v < 10 * per_phase ? last_a : last_b;
      if (v <= last) bad_order = true;
      last = v;
      ++n;
    }
    got = n;
  });
  std::atomic<int> phase{0};
  std::atomic<int> failed_sends{0};
  std::thread a([&, ch = ch]() mutable {
    failed_sends += send_range(ch, 0, per_phase);
    phase = 1;
    failed_sends += send_range(ch, per_phase, 2 * per_phase);
  });
  std::thread b([&, ch = ch]() mutable {
    while (phase.load() == 0) std::this_thread::yield();
    failed_sends += send_range(ch, 10 * per_phase, 11 * per_phase);
  });
  a.join();
  b.join();
  // This thread alone at the end.
  failed_sends += send_range(ch, 11 * per_phase, 11 * per_phase + 1000);
  ch.close();
  receiver.join();
  CHECK(failed_sends.load() == 0);
  CHECK_FALSE(bad_order.load());
  CHECK(got == 3 * per_phase + 1000);
}

TEST_CASE("channel: close() while the senders' side is biased: nothing sent after, all drained",
          "[channel][concurrent]") {
  channel ch(4096);
  REQUIRE(send_range(ch, 0, 3000) == 0);  // this thread alone: its side is biased
  if (biasing()) CHECK(isola::detail::channel_side_owned(ch, true));
  std::thread closer([&, ch = ch]() mutable { CHECK(ch.close()); });
  closer.join();
  CHECK(ch.closed());
  auto refused = send_r(ch, message(std::int64_t{-1}));
  REQUIRE_FALSE(refused);
  CHECK(refused.error() == errc::channel_closed);
  for (std::int64_t i = 0; i < 3000; ++i) {
    auto r = recv_r(ch);
    REQUIRE(r);
    REQUIRE(int_of(*r) == i);
  }
  auto end = recv_r(ch);
  REQUIRE_FALSE(end);
  CHECK(end.error() == errc::channel_closed);
}

TEST_CASE("channel: a parked receiver is woken by a biased sender (no lost wake-up)",
          "[channel][concurrent]") {
  // The sender publishes with plain stores; the receiver's fence before it sleeps must pair
  // with that. Each item is sent after the receiver has had time to park; a lost wake-up shows
  // as a receive that runs into its (long) timeout.
  constexpr int rounds = 200;
  channel ch(2048);
  REQUIRE(send_range(ch, 0, 1000) == 0);  // bias the senders' side to this thread
  for (int i = 0; i < 1000; ++i) REQUIRE(recv_r(ch));
  std::atomic<int> received{0};
  std::atomic<bool> timed_out{false};
  std::thread receiver([&, ch = ch]() mutable {
    for (int i = 0; i < rounds; ++i) {
      auto r = recv_r(ch, 10s);
      if (!r) {
        timed_out = true;
        return;
      }
      received.fetch_add(1);
    }
  });
  for (int i = 0; i < rounds && !timed_out; ++i) {
    // Long enough for the receiver to spin out and park (its spin lasts ~10-30 us).
    std::this_thread::sleep_for(i % 2 == 0 ? 300us : 2ms);
    REQUIRE(send_r(ch, message(std::int64_t{i})));
  }
  receiver.join();
  CHECK_FALSE(timed_out.load());
  CHECK(received.load() == rounds);
}

TEST_CASE("channel: a pending Asio receive completes when a biased sender sends",
          "[channel][concurrent]") {
  channel ch(2048);
  REQUIRE(send_range(ch, 0, 1000) == 0);
  for (int i = 0; i < 1000; ++i) REQUIRE(recv_r(ch));
  int completed = 0;
  for (int i = 0; i < 50; ++i) {
    std::promise<std::int64_t> got;
    // A plain callback: it completes on Asio's system executor.
    ch.async_recv([&got](boost::system::error_code ec, message m) {
      got.set_value(ec ? -1 : int_of(m));
    });
    std::this_thread::sleep_for(200us);
    REQUIRE(send_r(ch, message(std::int64_t{i})));
    auto f = got.get_future();
    REQUIRE(f.wait_for(10s) == std::future_status::ready);
    CHECK(f.get() == i);
    ++completed;
  }
  CHECK(completed == 50);
}

TEST_CASE("channel: receiver pacing starts on two quick waits and stops on a lone item, a long "
          "or a failed wait",
          "[channel]") {
  using isola::detail::pace_after_wait;
  using isola::detail::recv_pace;
  using isola::detail::recv_wait_outcome;
  int ring_a = 0, ring_b = 0;
  const void* a = &ring_a;
  const void* b = &ring_b;
  const recv_wait_outcome quick{true, 1, true, false};
  const recv_wait_outcome slow{true, 20, true, false};
  const recv_wait_outcome first_attempt{true, -1, false, false};
  const recv_wait_outcome run{true, 5, true, true};
  const recv_wait_outcome lone{true, 15, true, false};
  const recv_wait_outcome long_wait{true, isola::detail::pace_long_rounds, true, true};
  const recv_wait_outcome failed{false, 3, false, false};

  // Not streaming: one quick wait counts, the second starts streaming.
  recv_pace p = pace_after_wait({}, a, false, true, quick);
  CHECK((p.ring == a && !p.streaming && p.quick == 1));
  p = pace_after_wait(p, a, false, true, quick);
  CHECK((p.streaming && p.quick == 0));
  // A slow wait in between starts the count again; a wait the first attempt served is no news.
  p = pace_after_wait({a, false, 1}, a, false, true, slow);
  CHECK((!p.streaming && p.quick == 0));
  p = pace_after_wait({a, false, 1}, a, false, true, first_attempt);
  CHECK((!p.streaming && p.quick == 1));
  p = pace_after_wait({a, true, 0}, a, true, true, first_attempt);
  CHECK(p.streaming);
  // Streaming goes on while waits end with a run, and stops on a lone item, a long or failed
  // wait.
  CHECK(pace_after_wait({a, true, 0}, a, true, true, run).streaming);
  CHECK_FALSE(pace_after_wait({a, true, 0}, a, true, true, lone).streaming);
  CHECK_FALSE(pace_after_wait({a, true, 0}, a, true, true, long_wait).streaming);
  CHECK_FALSE(pace_after_wait({a, true, 0}, a, true, true, failed).streaming);
  CHECK(pace_after_wait({a, false, 1}, a, false, true, failed).quick == 0);
  // A probe that saw nothing (an exact attempt took the item) stops it too.
  CHECK_FALSE(pace_after_wait({a, true, 0}, a, true, true, {true, 63, false, false}).streaming);
  // Another ring starts from scratch; a ring too small for runs never streams.
  p = pace_after_wait({a, false, 1}, b, false, true, quick);
  CHECK((p.ring == b && !p.streaming && p.quick == 1));
  p = pace_after_wait({a, false, 1}, a, false, false, quick);
  CHECK((!p.streaming && p.quick == 0));
}

TEST_CASE("channel: a paced receiver loses, doubles and reorders nothing and still gets lone "
          "items",
          "[channel][concurrent]") {
  using isola::detail::set_receiver_streaming;
  const std::int64_t n = under_sanitizer ? 20'000 : 200'000;
  for (std::size_t capacity : {1u, 7u, 8u, 9u, 64u, 4096u}) {
    INFO("capacity " << capacity);
    channel ch(capacity), ack(1);
    // The sender streams, pauses now and then (so runs end early and the receiver parks),
    // and ends with lone items that each wait for an acknowledgement.
    std::thread sender([ch, ack, n]() mutable {
      for (std::int64_t i = 0; i < n; ++i) {
        if (!send_r(ch, message(i))) return;
        if (i % 5000 == 4999) std::this_thread::sleep_for(1ms);
      }
      for (std::int64_t i = 0; i < 20; ++i) {
        if (!send_r(ch, message(n + i)) || !recv_r(ack)) return;
      }
    });
    std::int64_t expect = 0;
    bool ordered = true;
    std::vector<message> batch;
    while (expect < n + 20) {
      // Every wait paced where the ring allows it: the worst case for lone items.
      set_receiver_streaming(ch, true);
      if (expect < n && expect % 3 == 0) {
        batch.clear();
        // Never past the stream: a lone item taken here would go unacknowledged.
        const auto most = static_cast<std::size_t>(std::min<std::int64_t>(50, n - expect));
        auto got = recv_many_r(ch, batch, most, 30s);
        if (!got) break;
        for (auto& m : batch) ordered = ordered && int_of(m) == expect++;
      } else {
        auto r = recv_r(ch, 30s);
        if (!r) break;
        ordered = ordered && int_of(*r) == expect++;
        if (expect > n && !send_r(ack, message(std::int64_t{0}))) break;
      }
    }
    ch.close();
    ack.close();
    sender.join();
    CHECK(ordered);
    CHECK(expect == n + 20);
    CHECK(ch.try_recv().error() == errc::channel_closed);
  }
}

TEST_CASE("channel: a paced receiver's wait for a lone item ends its pacing", "[channel]") {
  using isola::detail::receiver_parked;
  using isola::detail::receiver_streaming;
  using isola::detail::set_receiver_streaming;
  for (std::size_t capacity : {4u, 64u}) {
    INFO("capacity " << capacity);
    channel ch(capacity);
    bool was = false, after = true;
    std::int64_t got = -1;
    std::thread receiver([&] {
      set_receiver_streaming(ch, true);
      was = receiver_streaming(ch);
      auto r = recv_r(ch, 30s);  // parks: the item comes only once it has
      if (r) got = int_of(*r);
      after = receiver_streaming(ch);
    });
    const bool parked = eventually([&] { return receiver_parked(ch); });
    CHECK(parked);
    REQUIRE(send_r(ch, message(std::int64_t{42})));
    receiver.join();
    CHECK(was);
    CHECK(got == 42);
    CHECK_FALSE(after);
  }
}

TEST_CASE("the first channel of a process registers the fence when it is made, not mid-stream",
          "[channel]") {
  // Registering membarrier takes the kernel 10-15 ms; done at the operation that first biased
  // a side, it stalled a running stream that long. Only a fresh process can show it.
  auto r = isola_test::run_child({"first-channel-fence"});
  INFO(r.describe());
  REQUIRE(r.exit_code == 0);
  if (isola::detail::asymmetric_fence_available()) {  // not under ThreadSanitizer
    CHECK(r.output.find("checked before: 0") != std::string::npos);
    CHECK(r.output.find("checked after: 1") != std::string::npos);
  }
  CHECK(r.output.find("moved: 1000") != std::string::npos);
  CHECK(r.output.find("failed") == std::string::npos);
}
