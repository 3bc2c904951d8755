// isola::message: what a channel carries. Plain values, read-only byte buffers shared without
// copying, pickle protocol 5 payloads and channels themselves; all owned by C++, so a message
// stays valid after the interpreter that sent it has ended.
#pragma once

#include <concepts>
#include <cstddef>
#include <iosfwd>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <isola/value.hpp>

namespace isola {

/// Read-only bytes shared without copying; the source keeps the memory alive.
/// - bytes() must return the same span for the whole life of the source, from any thread.
/// - The destructor runs on whichever thread drops the last shared_buffer, possibly long after
///   the interpreter that made it has ended; it may do arbitrary work (isola never runs it
///   while holding a channel lock).
class buffer_source {
 public:
  virtual ~buffer_source();
  virtual std::span<const std::byte> bytes() const noexcept = 0;
};

/// A reference to immutable bytes: cheap to copy (a shared_ptr), safe to share between threads.
/// An empty shared_buffer (no source) has no bytes.
class shared_buffer {
 public:
  shared_buffer() = default;
  explicit shared_buffer(std::shared_ptr<buffer_source> src) noexcept : src_(std::move(src)) {}

  /// A buffer that owns a heap copy of bytes.
  static shared_buffer copy_of(std::span<const std::byte> bytes);
  /// A buffer that takes ownership of the vector's memory (no copy).
  static shared_buffer adopt(std::vector<std::byte> bytes);

  std::span<const std::byte> bytes() const noexcept {
    return src_ ? src_->bytes() : std::span<const std::byte>{};
  }
  std::size_t size() const noexcept { return bytes().size(); }
  const std::byte* data() const noexcept { return bytes().data(); }
  bool empty() const noexcept { return size() == 0; }
  const std::shared_ptr<buffer_source>& source() const noexcept { return src_; }

  /// Identity, not content: two buffers are equal when they share one source.
  friend bool operator==(const shared_buffer& a, const shared_buffer& b) noexcept {
    return a.src_ == b.src_;
  }

 private:
  std::shared_ptr<buffer_source> src_;
};

/// A pickle protocol 5 payload: the pickle stream plus its out-of-band buffers
/// (pickle.PickleBuffer), in order.
struct pickled {
  shared_buffer data;
  std::vector<shared_buffer> out_of_band;
};

namespace detail {
class channel_core;
}  // namespace detail

/// A channel sent through a channel (isola::channel converts to and from it). It holds the
/// channel alive while the message exists.
struct channel_ref {
  std::shared_ptr<detail::channel_core> core;
};

/// One item of a channel.
/// - Moving a message never allocates (a message holding an int or a shared_buffer moves a
///   few words); the moved-from message is valid but unspecified.
/// - Copying copies a value deeply but shares buffers and channels.
struct message {
  std::variant<value, shared_buffer, pickled, channel_ref> payload;

  message() = default;
  message(value v) noexcept : payload(std::in_place_index<0>, std::move(v)) {}
  message(shared_buffer b) noexcept : payload(std::in_place_index<1>, std::move(b)) {}
  message(pickled p) noexcept : payload(std::in_place_index<2>, std::move(p)) {}
  message(channel_ref c) noexcept : payload(std::in_place_index<3>, std::move(c)) {}
  /// Anything an isola::value is made from: message(42), message("text"), message(1.5).
  template <typename T>
    requires(std::constructible_from<value, T> &&
             !std::same_as<std::remove_cvref_t<T>, value> &&
             !std::same_as<std::remove_cvref_t<T>, message>)
  message(T&& v) : payload(std::in_place_index<0>, std::forward<T>(v)) {}

  bool is_value() const noexcept { return payload.index() == 0; }
  bool is_buffer() const noexcept { return payload.index() == 1; }
  bool is_pickled() const noexcept { return payload.index() == 2; }
  bool is_channel() const noexcept { return payload.index() == 3; }

  /// The held alternative, or nullptr if the message holds another kind.
  const value* as_value() const noexcept { return std::get_if<0>(&payload); }
  const shared_buffer* as_buffer() const noexcept { return std::get_if<1>(&payload); }
  const pickled* as_pickled() const noexcept { return std::get_if<2>(&payload); }
  const channel_ref* as_channel() const noexcept { return std::get_if<3>(&payload); }
};

/// For logs and test output: the value's repr, or "<buffer: N bytes>", "<pickled: N bytes,
/// M buffers>", "<channel #id>".
std::ostream& operator<<(std::ostream& os, const message& m);

static_assert(std::is_nothrow_move_constructible_v<message>,
              "channels move messages into claimed slots and cannot undo a throwing move");

}  // namespace isola
