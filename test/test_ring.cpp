// lib/ring.hpp, the bounded lock-free ring under channels and the pool's queue. Its use under
// contention is tested through them (test_channel.cpp, test_pool.cpp); here, what they cannot
// reach from outside.
#include <catch2/catch.hpp>

#include "lib/ring.hpp"

#include <cstdint>
#include <stdexcept>

TEST_CASE("ring: a capacity it cannot hold is refused with the setting's name", "[ring]") {
  using ring = isola::detail::ring<int>;
  CHECK_THROWS_WITH(ring(0, "the test's queue (test_option)"),
                    "the test's queue (test_option) must be between 1 and 2^40, not 0");
  CHECK_THROWS_WITH(ring((std::size_t{1} << 40) + 1),
                    Catch::StartsWith("a channel's capacity (maxsize) must be between 1 and 2^40"));
  // Allowed by the bound, but more than this machine's memory: refused before allocating.
  CHECK_THROWS_AS(ring(std::size_t{1} << 40, "the test's queue"), std::length_error);
  CHECK_THROWS_WITH(ring(std::size_t{1} << 40, "the test's queue"),
                    Catch::Contains("room for the whole of the test's queue is allocated up "
                                    "front") && Catch::Contains("use a smaller capacity"));
  ring one(1);
  CHECK(one.capacity() == 1);
}

TEST_CASE("ring: pop_ready and push_ready look the given number of places ahead, across the wrap",
          "[ring]") {
  using isola::detail::ring_status;
  isola::detail::ring<std::int64_t> r(5);
  std::int64_t next_in = 0, next_out = 0;
  auto push = [&](int k) {
    for (int i = 0; i < k; ++i) {
      std::int64_t v = next_in++;
      REQUIRE(r.try_push(v) == ring_status::ok);
    }
  };
  auto pop = [&](int k) {
    for (int i = 0; i < k; ++i) {
      std::int64_t got = -1;
      REQUIRE(r.try_pop([&](std::int64_t&& v) noexcept { got = v; }) == ring_status::ok);
      REQUIRE(got == next_out++);
    }
  };
  // ready(k) must say: item k places after head is there / slot k places after tail is free.
  auto check = [&](int queued) {
    for (std::uint64_t k = 0; k < 5; ++k) {
      INFO("queued " << queued << ", ahead " << k);
      CHECK(r.pop_ready(k) == (k < static_cast<std::uint64_t>(queued)));
      CHECK(r.push_ready(k) == (k < static_cast<std::uint64_t>(5 - queued)));
    }
    // Beyond the capacity, both look at the last place.
    CHECK(r.pop_ready(100) == r.pop_ready(4));
    CHECK(r.push_ready(100) == r.push_ready(4));
  };
  check(0);
  push(3);
  check(3);
  pop(2);
  check(1);
  push(4);  // wraps into the next lap: full
  check(5);
  pop(3);
  check(2);
  for (int lap = 0; lap < 7; ++lap) {  // every head and tail index, several laps
    push(3);
    check(5);
    pop(4);
    check(1);
    push(1);
    check(2);
  }
  pop(2);
  check(0);
}

TEST_CASE("ring: the producers' owner seals with seal_owned; reset makes the ring as new",
          "[ring]") {
  isola::detail::ring<std::int64_t> r(8);
  auto take = [&] {
    std::int64_t got = -1;
    const auto st = r.try_pop([&](std::int64_t&& v) noexcept { got = v; });
    return std::make_pair(st, got);
  };
  CHECK_FALSE(r.seal_owned());  // nobody owns the side yet: close() is the way
  r.bias_to_me(true);
  if (isola::detail::asymmetric_fence_available()) {
    REQUIRE(r.owned_by_me(true));
    for (std::int64_t i = 0; i < 3; ++i) {
      std::int64_t v = i;
      REQUIRE(r.try_push(v) == isola::detail::ring_status::ok);
    }
    CHECK(r.seal_owned());
    CHECK(r.closed());
    CHECK_FALSE(r.close());  // already closed
    std::int64_t v = 9;
    CHECK(r.try_push(v) == isola::detail::ring_status::closed);  // the owner itself included
    for (std::int64_t i = 0; i < 3; ++i) CHECK(take() == std::make_pair(isola::detail::ring_status::ok, i));
    CHECK(take().first == isola::detail::ring_status::closed);
  } else {
    CHECK(r.close());
  }
  r.reset();
  CHECK_FALSE(r.closed());
  CHECK_FALSE(r.owned(true));
  CHECK(r.size() == 0);
  for (std::int64_t i = 0; i < 8; ++i) {
    std::int64_t v = i;
    REQUIRE(r.try_push(v) == isola::detail::ring_status::ok);
  }
  std::int64_t extra = 8;
  CHECK(r.try_push(extra) == isola::detail::ring_status::would_block);  // full at 8 again
  for (std::int64_t i = 0; i < 8; ++i) CHECK(take().second == i);
}
