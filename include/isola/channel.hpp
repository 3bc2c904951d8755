// isola::channel: a multi-producer multi-consumer queue of isola::message between threads and
// interpreters, bounded or unbounded, with blocking, non-blocking, batch and Boost.Asio
// operations.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

#include <isola/async.hpp>
#include <isola/error.hpp>
#include <isola/message.hpp>

namespace isola {

/// Tag for an unbounded channel: `isola::channel ch(isola::unbounded);`.
struct unbounded_t {
  explicit unbounded_t() = default;
};
inline constexpr unbounded_t unbounded{};

/// How long a blocking channel operation may wait. std::nullopt waits without limit; zero (or
/// less) makes one attempt. Measured on std::chrono::steady_clock.
using channel_timeout = std::optional<std::chrono::nanoseconds>;

/// What try_send_many did: the first `sent` items were accepted (moved from); `error` says why
/// it stopped before the end (errc::channel_full or errc::channel_closed) and is clear when
/// all went.
struct send_many_result {
  std::size_t sent = 0;
  boost::system::error_code error;
};

namespace detail {

struct channel_access;

/// A pending async_recv / async_send, queued in its channel until an item / room arrives.
class async_op {
 public:
  virtual ~async_op() = default;
  bool cancelled = false;  ///< written and read under the channel's async mutex
};

class async_recv_op : public async_op {
 public:
  /// Called exactly once, from any thread, with no channel lock held: posts the handler.
  virtual void complete(boost::system::error_code ec, message m) noexcept = 0;
};

class async_send_op : public async_op {
 public:
  explicit async_send_op(message m) noexcept : msg(std::move(m)) {}
  message msg;  ///< moved into the channel when accepted; destroyed with the op otherwise
  /// Called exactly once, from any thread, with no channel lock held: posts the handler.
  virtual void complete(boost::system::error_code ec) noexcept = 0;
};

void start_async_recv(const std::shared_ptr<channel_core>& core,
                      std::shared_ptr<async_recv_op> op);
void start_async_send(const std::shared_ptr<channel_core>& core,
                      std::shared_ptr<async_send_op> op);
/// Removes a still-queued op and completes it with asio::error::operation_aborted.
void cancel_async(const std::weak_ptr<channel_core>& core,
                  const std::weak_ptr<async_op>& op) noexcept;

/// Installed in a handler's cancellation slot: any cancellation type withdraws the op if the
/// channel has not completed it yet.
struct async_cancel {
  async_cancel(std::weak_ptr<channel_core> c, std::weak_ptr<async_op> o) noexcept
      : core(std::move(c)), op(std::move(o)) {}
  std::weak_ptr<channel_core> core;
  std::weak_ptr<async_op> op;
  void operator()(boost::asio::cancellation_type_t type) const noexcept {
    if (type != boost::asio::cancellation_type::none) cancel_async(core, op);
  }
};

template <typename Handler>
class recv_op final : public async_recv_op {
 public:
  explicit recv_op(Handler h) : done_(std::move(h)) {}
  void complete(boost::system::error_code ec, message m) noexcept override {
    done_.post(ec, std::move(m));
  }

 private:
  completion<Handler> done_;
};

template <typename Handler>
class send_op final : public async_send_op {
 public:
  send_op(message m, Handler h) : async_send_op(std::move(m)), done_(std::move(h)) {}
  void complete(boost::system::error_code ec) noexcept override { done_.post(ec); }

 private:
  completion<Handler> done_;
};

}  // namespace detail

/// A handle to a channel: a multi-producer multi-consumer FIFO of isola::message, bounded or
/// unbounded.
/// - Bounded (channel(capacity)): one ring of `capacity` slots, allocated whole; sends wait
///   for room when it is full.
/// - Unbounded (channel(isola::unbounded), what Python's Channel() and maxsize <= 0 make):
///   rings of 1024 slots (64 KiB) linked as the backlog grows and freed as it drains, so its
///   memory follows what is queued. Sends never wait for room; while the receivers keep up, an
///   unbounded channel moves items through one ring as a bounded one does. When the memory for
///   a new ring cannot be allocated, a send sees a full channel (waits, or channel_full)
///   rather than failing with std::bad_alloc.
/// - Copyable and cheap (a shared_ptr); every copy names the same channel. The channel lives
///   while any handle, channel_ref or queued message refers to it. Destroying the last one
///   closes it: pending async receivers get the items still queued, then channel_closed;
///   remaining items are destroyed (a channel that holds a ref to itself is never destroyed).
/// - Thread-safe: any thread may call anything at the same time, except that an empty
///   (default-constructed or moved-from) handle may only be assigned, compared or destroyed.
/// - Order: items from one producer are received in the order it sent them (sends that do not
///   overlap in time; two async_sends in flight at once may be accepted in either order).
/// - Each accepted item is received exactly once; after close() sends fail with
///   errc::channel_closed and receivers get every accepted item, then errc::channel_closed.
/// - Items are C++ objects: they stay valid after the sending interpreter has ended; their
///   destructors (a buffer_source's) never run under a channel lock.
/// - Blocking calls spin for a few microseconds, then park on a futex; a send or receive only
///   makes a system call when the other side has a thread parked.
/// - Errors (include/isola/error.hpp): blocking calls throw isola::error, or take a
///   boost::system::error_code& and set it; try_* calls return a boost::system::result; Asio
///   handlers get an error_code. Each holds an isola::errc (compare with `ec == errc::...`).
class channel {
 public:
  /// Largest capacity a channel can have.
  static constexpr std::size_t max_capacity = std::size_t{1} << 40;

  /// An empty handle (no channel).
  channel() noexcept = default;
  /// A new anonymous channel holding up to capacity items (1 .. max_capacity; else throws
  /// std::invalid_argument). Its ring is allocated whole (a cache line per item): a capacity
  /// whose ring is larger than the machine's memory, or cannot be allocated, throws
  /// std::length_error saying so.
  explicit channel(std::size_t capacity);
  /// A new anonymous unbounded channel (capacity() is 0).
  explicit channel(unbounded_t);
  /// The channel a channel_ref refers to (empty if the ref is).
  channel(channel_ref ref) noexcept : core_(std::move(ref.core)) {}

  /// The channel registered under name, created with capacity if there is none. The name
  /// stays registered while any handle to that channel exists, and is free again once the
  /// channel is destroyed (the registry holds weak references). capacity applies only when
  /// the channel is created here; an existing channel keeps its own.
  static channel open(std::string_view name, std::size_t capacity);
  /// open() creating an unbounded channel if there is none.
  static channel open(std::string_view name, unbounded_t);
  /// The channel registered under name, if one exists.
  static std::optional<channel> find(std::string_view name);
  /// The live channel whose id() is id, if one exists (every channel is findable by id while
  /// any handle, ref or queued message keeps it alive).
  static std::optional<channel> find_id(std::uint64_t id);
  /// Every live channel, in the order they were made.
  static std::vector<channel> list_all();

  /// Waits for room, then appends msg; msg is moved from only on success. Throws isola::error
  /// with errc::channel_closed, errc::timeout (after `timeout`), or errc::cancelled (once stop
  /// is requested).
  void send(message&& msg, channel_timeout timeout, std::stop_token stop = {});
  /// Waits for an item and removes it. Throws isola::error with errc::channel_closed (closed
  /// and drained), errc::timeout or errc::cancelled.
  message recv(channel_timeout timeout, std::stop_token stop = {});
  /// send and recv without a deadline or a stop token. Separate overloads rather than default
  /// arguments: a defaulted std::optional is built in the caller's frame with a one-byte store
  /// and passed in registers with an eight-byte load of the same place, a store-forwarding
  /// failure that waits for every earlier store to reach the cache, including the previous
  /// item's slot line still on its way from the other core. What it costs:
  /// docs/channels-performance.md, "Arguments that stall".
  void send(message&& msg);
  message recv();

  /// The same waits, reporting failure in `ec` instead of throwing (Asio's convention), for
  /// loops that end on a closed channel or a timeout: `ec` is cleared on success; on failure
  /// send leaves msg untouched and recv returns an empty message.
  void send(message&& msg, boost::system::error_code& ec);
  void send(message&& msg, channel_timeout timeout, std::stop_token stop,
            boost::system::error_code& ec);
  message recv(boost::system::error_code& ec);
  message recv(channel_timeout timeout, std::stop_token stop, boost::system::error_code& ec);

  /// Appends msg if there is room now; else errc::channel_full (or channel_closed), with msg
  /// untouched. Never blocks.
  boost::system::result<void> try_send(message&& msg);
  /// Removes an item if one is there now; else errc::channel_empty (or channel_closed).
  /// A call that finds nothing reads the senders' position, a line they write for every item
  /// (and try_send on a full channel the receivers'): a loop polling these is several times
  /// slower than recv(), which spins on the slot alone before it parks.
  boost::system::result<message> try_recv();

  /// Sends items in order, as many as fit at once, waiting for room for the rest; accepted
  /// items are moved from. Returns items.size(); throws isola::error, as send does, when it
  /// stops early on close, timeout (for the whole call) or stop: the items before the first
  /// one not moved from were sent.
  std::size_t send_many(std::span<message> items, channel_timeout timeout = std::nullopt,
                        std::stop_token stop = {});
  /// The same, returning how many were sent and the reason it stopped early in `ec`.
  std::size_t send_many(std::span<message> items, channel_timeout timeout, std::stop_token stop,
                        boost::system::error_code& ec);
  /// As many of items (from the front) as fit now; never blocks.
  send_many_result try_send_many(std::span<message> items);
  /// Waits for at least one item, then appends to out every item available at once, up to
  /// max_items, without waiting further. Returns how many were appended (>= 1; max_items == 0
  /// returns 0 at once); throws isola::error as recv() does.
  std::size_t recv_many(std::vector<message>& out, std::size_t max_items,
                        channel_timeout timeout = std::nullopt, std::stop_token stop = {});
  std::vector<message> recv_many(std::size_t max_items, channel_timeout timeout = std::nullopt,
                                 std::stop_token stop = {});
  /// The same, reporting failure in `ec` (0 appended, or an empty vector).
  std::size_t recv_many(std::vector<message>& out, std::size_t max_items, channel_timeout timeout,
                        std::stop_token stop, boost::system::error_code& ec);
  std::vector<message> recv_many(std::size_t max_items, channel_timeout timeout,
                                 std::stop_token stop, boost::system::error_code& ec);
  /// What is available now, up to max_items; errc::channel_empty / channel_closed if none.
  boost::system::result<std::size_t> try_recv_many(std::vector<message>& out,
                                                   std::size_t max_items);

  /// Closes the channel: sends fail from now on, blocked and pending senders fail with
  /// errc::channel_closed, receivers drain what was accepted. True if this call closed it.
  bool close() noexcept;

  /// Asio receive. Completion signature: void(boost::system::error_code, isola::message).
  /// - The handler runs on its associated executor (default asio::system_executor), never
  ///   inside the call nor on the sending thread; no thread waits on behalf of the operation.
  /// - Errors: errc::channel_closed; asio::error::operation_aborted when the handler's
  ///   cancellation slot is signalled before an item was taken.
  /// - Works with callbacks, asio::use_future, asio::use_awaitable, asio::deferred.
  template <typename CompletionToken>
  auto async_recv(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken,
                                       void(boost::system::error_code, message)>(
        [core = core_](auto handler) {
          auto slot = boost::asio::get_associated_cancellation_slot(handler);
          auto op = std::make_shared<detail::recv_op<decltype(handler)>>(std::move(handler));
          if (slot.is_connected()) slot.template emplace<detail::async_cancel>(core, op);
          detail::start_async_recv(core, std::move(op));
        },
        token);
  }

  /// Asio send. Completion signature: void(boost::system::error_code). Completes when msg
  /// has been accepted (or with errc::channel_closed / operation_aborted, msg then destroyed).
  /// Executor and cancellation as async_recv.
  template <typename CompletionToken>
  auto async_send(message msg, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code)>(
        [core = core_](auto handler, message m) {
          auto slot = boost::asio::get_associated_cancellation_slot(handler);
          auto op = std::make_shared<detail::send_op<decltype(handler)>>(std::move(m),
                                                                         std::move(handler));
          if (slot.is_connected()) slot.template emplace<detail::async_cancel>(core, op);
          detail::start_async_send(core, std::move(op));
        },
        token, std::move(msg));
  }

  /// The bound on queued items; 0 for an unbounded channel.
  std::size_t capacity() const noexcept;
  bool unbounded() const noexcept { return capacity() == 0; }
  /// Items queued; approximate while other threads use the channel.
  std::size_t size() const noexcept;
  bool closed() const noexcept;
  /// Process-unique id, never reused.
  std::uint64_t id() const noexcept;
  /// The registered name; empty for an anonymous channel.
  const std::string& name() const noexcept;

  explicit operator bool() const noexcept { return core_ != nullptr; }
  operator channel_ref() const noexcept { return channel_ref{core_}; }
  friend bool operator==(const channel& a, const channel& b) noexcept {
    return a.core_ == b.core_;
  }

 private:
  friend struct detail::channel_access;  // channels' own code (channels/channel_ext.hpp)
  /// open() with capacity 0 meaning unbounded.
  static channel open_with(std::string_view name, std::size_t capacity);
  explicit channel(std::shared_ptr<detail::channel_core> core) noexcept
      : core_(std::move(core)) {}
  std::shared_ptr<detail::channel_core> core_;
};

}  // namespace isola
