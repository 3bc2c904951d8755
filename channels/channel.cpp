// isola::channel: the channel core (ring + waiter counters + pending Asio operations), the
// blocking protocol (spin, then park on a futex), and the process-wide registry of names.
#include <isola/channel.hpp>

#include "channels/channel_ext.hpp"
#include "lib/sync.hpp"
#include "lib/ring.hpp"
#include "lib/ring_chain.hpp"

#include <algorithm>
#include <climits>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

namespace isola {
namespace detail {

/// Messages that hold a scalar value (None, a bool, an int that fits 64 bits, a float) are
/// most of what small-message traffic carries. std::variant moves and destroys a message
/// through two jump tables (message, then value); for a scalar the ring copies it and skips
/// the destructor, which has nothing to do for these alternatives (ending an object's
/// lifetime without its destructor is allowed when nothing depends on its side effects).
/// callgrind, one thread, C++ send + recv of ints: see docs/channels-performance.md.
template <>
struct slot_ops<message> {
  /// Constructs a copy of m at storage if m holds a scalar; false otherwise.
  ISOLA_RING_INLINE static bool copy_scalar(void* storage, const message& m) noexcept {
    const value* v = std::get_if<0>(&m.payload);
    if (v == nullptr) return false;
    const value::storage& s = v->data();
    switch (s.index()) {
      case 0: new (storage) message(none); return true;
      case 1: new (storage) message(*std::get_if<1>(&s)); return true;
      case 2: new (storage) message(*std::get_if<2>(&s)); return true;
      case 4: new (storage) message(*std::get_if<4>(&s)); return true;
      default: return false;
    }
  }
  ISOLA_RING_INLINE static bool is_scalar(const message& m) noexcept {
    const value* v = std::get_if<0>(&m.payload);
    if (v == nullptr) return false;
    const std::size_t i = v->data().index();
    return i <= 2 || i == 4;
  }
  ISOLA_RING_INLINE static void put(void* storage, message& m) noexcept {
    if (!copy_scalar(storage, m)) new (storage) message(std::move(m));
  }
  ISOLA_RING_INLINE static void drop(message& m) noexcept {
    if (!is_scalar(m)) m.~message();
  }
  /// out = std::move(m), copying a scalar over a scalar in place.
  ISOLA_RING_INLINE static void assign(message& out, message& m) noexcept {
    if (is_scalar(out) && copy_scalar(&out, m)) return;
    out = std::move(m);
  }
};
static_assert(std::is_same_v<value::storage, std::variant<none_t, bool, std::int64_t, big_int,
                                                          double, std::string, isola::bytes,
                                                          isola::tuple, isola::list, isola::dict>>,
              "slot_ops<message>: the scalar alternatives' indexes");

namespace {

using clock = std::chrono::steady_clock;

/// Rounds of (pause + probe) before a blocking call parks: about 5-30 us on current x86
/// (a pause is 10-60 ns), longer than a wake-up round trip between two running threads, far
/// shorter than a futex sleep and wake.
constexpr int spin_rounds = 512;
/// While spinning, a yield every yield_every rounds from round yield_after on (see block()).
constexpr int yield_after = 16;
constexpr int yield_every = 16;

/// A sender that finds the ring full spins until this many more slots are free, not just one:
/// then it fills a run of slots while the receiver empties others, instead of both taking
/// turns on one cache line. (Before parking it takes any room there is.)
constexpr std::uint64_t room_run = 16;

/// A receiver pacing itself (see recv_pacer): the run of items it waits for (at most a
/// quarter of the ring), and how often it looks at the head slot meanwhile. Each head probe
/// reads the line the sender is filling, so it is what costs: on a machine whose pause takes
/// 10 ns, C++ single items moved 33-37 M/s with a probe every 16 rounds and 66-77 M/s every
/// 32 (items streamed in bursts of 100 arrived 0.1-0.2 us later at the median). The longer
/// run adds little by itself: the head probe catches the end of a stream.
constexpr std::uint64_t item_run = 64;
constexpr int head_probe_every = 32;

/// Waiter counters: the low half counts threads parked (or about to park) on a side, the high
/// half async operations queued on it. One load tells a producer whether to do anything.
constexpr std::uint64_t sync_one = 1;
constexpr std::uint64_t async_one = std::uint64_t{1} << 32;
constexpr std::uint64_t sync_mask = async_one - 1;

boost::system::error_code code(errc e) noexcept { return make_error_code(e); }

int wake_count(std::size_t n) noexcept {
  return n > static_cast<std::size_t>(INT_MAX) ? INT_MAX : static_cast<int>(n);
}

deadline deadline_after(const channel_timeout& timeout) noexcept {
  if (!timeout) return std::nullopt;
  if (*timeout <= std::chrono::nanoseconds::zero()) return clock::time_point::min();
  // Beyond a century is "forever" (and would overflow the clock's representation).
  if (*timeout >= std::chrono::hours(24 * 365 * 100)) return std::nullopt;
  return clock::now() + *timeout;
}

bool passed(const deadline& d) noexcept { return d && clock::now() >= *d; }

/// What a single non-blocking push's outcome means to try_send and try_send_quick.
boost::system::result<void> push_result(ring_status st) noexcept {
  switch (st) {
    case ring_status::ok: return {};
    case ring_status::would_block: return code(errc::channel_full);
    case ring_status::closed: break;
  }
  return code(errc::channel_closed);
}

}  // namespace

static thread_local recv_pace pace;  ///< this thread's (see recv_pacer)

/// The probe of a receiver waiting for items, paced by what its last waits saw.
/// - A receiver that keeps up with a sender that sends one item at a time finds the ring
///   empty after nearly every item, and then its probe of the head slot reads the very line
///   the sender is writing. The line crosses between the cores for every item and the two
///   threads run in lockstep, at about half the rate of the same pair with the ring full and
///   the sender waiting (13-16 against 27-29 M items/s measured on a 2-core x86 VM).
/// - So two waits in a row that found their item at once (pace_after_wait) mark this thread
///   as streaming on that ring. A streaming receiver's next wait probes the slot `item_run`
///   places ahead, which stays in its own cache until the sender fills it, and looks at the
///   head only every `head_probe_every` rounds: the sender fills a run of slots undisturbed,
///   and the receiver then takes the run. One quick wait is not enough: in a C++ ping-pong
///   over a channel of 4096, 2.5% of the waits are that quick, and pacing after one would
///   make the next wait up to `head_probe_every` rounds longer for its reply.
/// - Streaming lasts while each wait ends with a run there (the ahead probe, or the head
///   probe with a few items behind it). A wait that ends with a lone item (a request and its
///   reply), lasts long, parks or fails ends it, so a ping-pong or a trickle keeps the plain
///   probe of the head slot and its latency.
/// - Rings with room for fewer than 2 runs of 2 (capacity under 8) are never paced.
class recv_pacer {
 public:
  explicit recv_pacer(const ring_chain<message>& r) noexcept
      : ring_(r),
        run_(std::min<std::uint64_t>(item_run, r.claim_limit() / 4)),
        streaming_(run_ >= 2 && pace.streaming_on(&r)) {}

  /// Spinning round `round` (0, 1, ...), or -1 for a plain look: is there something to take?
  bool operator()(int round) noexcept {
    w_.last_round = round;
    w_.hit = false;
    if (!streaming_ || round < 0) return w_.hit = ring_.pop_ready();
    if (ring_.pop_ready(run_ - 1)) return w_.hit = w_.by_run = true;
    if (round % head_probe_every == head_probe_every - 1 && ring_.pop_ready()) {
      w_.by_run = ring_.pop_ready(few - 1);  // a short run still means the sender streams
      return w_.hit = true;
    }
    return false;
  }

  /// After the wait: moved says whether it took something.
  void done(bool moved) noexcept {
    w_.moved = moved;
    pace = pace_after_wait(pace, &ring_, streaming_, run_ >= 2, w_);
  }

 private:
  static constexpr std::uint64_t few = 4;
  const ring_chain<message>& ring_;
  const std::uint64_t run_;
  const bool streaming_;
  recv_wait_outcome w_;
};

/// The shared state behind every handle to one channel.
class channel_core {
 public:
  /// The waiters of one direction: receivers (waiting for items) or senders (for room).
  struct alignas(cache_line) side {
    std::atomic<std::uint64_t> waiters{0};  ///< sync_one per parking thread, async_one per op
    std::atomic<std::uint32_t> event{0};    ///< the futex word; bumped before every wake-up
    /// Parking threads that no wake-up has been sent for yet (see wake()). 64 bits: threads
    /// that leave on a timeout stay counted, and a 32-bit count could wrap round to 0.
    std::atomic<std::uint64_t> unwoken{0};
  };

  channel_core(std::size_t capacity, std::string name);
  ~channel_core();
  channel_core(const channel_core&) = delete;
  channel_core& operator=(const channel_core&) = delete;

  // Non-blocking steps; each notifies the other side when it moved something. `exact` as in
  // ring::try_push / try_pop: only exact failures may be trusted before parking or reporting.
  ring_status push_one(message& m, bool exact) noexcept {
    const ring_status st = ring_.try_push(m, exact);
    if (st == ring_status::ok) after_push(1);
    return st;
  }
  ring_status pop_one(message& out, bool exact) noexcept {
    return pop_one_with([&](message&& m) noexcept { slot_ops<message>::assign(out, m); },
                        exact);
  }
  /// pop_one handing the item to consume(message&&) in its slot (consume must not throw).
  template <typename Consume>
  ring_status pop_one_with(Consume&& consume, bool exact) noexcept {
    const ring_status st = ring_.try_pop(std::forward<Consume>(consume), exact);
    if (st == ring_status::ok) after_pop(1);
    return st;
  }
  /// pop_one_with for an item that take(message&) accepts, on the owner's inline path only
  /// (see ring::try_pop_owned_if).
  template <typename Take>
  bool pop_owned_if(Take&& take) noexcept {
    if (!ring_.try_pop_owned_if(std::forward<Take>(take))) return false;
    after_pop(1);
    return true;
  }
  /// try_pop_owned_run_if, with the other side told (see ring.hpp).
  template <typename Take>
  std::size_t pop_owned_run_if(std::size_t max_items, Take&& take) noexcept {
    const std::size_t n = ring_.try_pop_owned_run_if(max_items, std::forward<Take>(take));
    if (n > 0) after_pop(n);
    return n;
  }
  /// Pushes the longest prefix that fits now (several claims if the ring's end is crossed).
  ring_status push_available(std::span<message> items, std::size_t& sent, bool exact) noexcept;
  /// Pops what is there now, up to max_items, onto out (which must not need to grow beyond
  /// what pop_available reserves before each claim).
  ring_status pop_available(std::vector<message>& out, std::size_t max_items, std::size_t& got,
                            bool exact);

  /// Pops what is there now, up to max_items, handing each item to consume(message&&) (which
  /// must not throw); before each claim of up to `chunk` items, prepare(chunk) runs (and may
  /// throw). Several claims if the ring's end is crossed.
  template <typename Prepare, typename Consume>
  ring_status pop_each(std::size_t max_items, std::size_t& got, bool exact, Prepare&& prepare,
                       Consume&& consume) {
    got = 0;
    ring_status st = ring_status::ok;
    while (got < max_items) {
      const std::size_t chunk = std::min(max_items - got, ring_.claim_limit());
      prepare(chunk);
      std::size_t k = 0;
      // Once something moved, the call succeeds whatever follows: later claims may be quick.
      st = ring_.try_pop_n(chunk, k, consume, exact && got == 0);
      if (st != ring_status::ok) break;
      got += k;
      after_pop(k);
    }
    return got > 0 ? ring_status::ok : st;
  }

  /// Repeats attempt(exact) until it moves something, the ring is closed, the deadline passes
  /// or stop is requested: first spinning on ready(round) for rounds 0, 1, ..., then parked on
  /// s.event (ready(-1) is a plain look, not part of a spin). Quick attempts
  /// (exact == false) while spinning keep off the other side's hot line; the check before
  /// parking is exact.
  template <typename Attempt, typename Ready>
  boost::system::error_code block(side& s, Attempt&& attempt, Ready&& ready,
                                  const deadline& until, const std::stop_token& stop);
  /// block() for a receiver: probing as this thread's pace says (recv_pacer), which the wait's
  /// outcome then updates.
  template <typename Attempt>
  boost::system::error_code block_recv(Attempt&& attempt, const deadline& until,
                                       const std::stop_token& stop) {
    recv_pacer pacer(ring_);
    const auto ec = block(receivers_, std::forward<Attempt>(attempt), pacer, until, stop);
    pacer.done(!ec);
    return ec;
  }

  bool close() noexcept;
  void start(std::shared_ptr<async_recv_op> op) { enqueue(async_recv_, receivers_, std::move(op)); }
  void start(std::shared_ptr<async_send_op> op) { enqueue(async_send_, senders_, std::move(op)); }
  void cancel(async_op* op) noexcept;

  ring_chain<message> ring_;  ///< capacity 0: unbounded
  side receivers_;
  side senders_;
  const std::uint64_t id_;
  const std::string name_;

 private:
  void after_push(std::size_t n) noexcept {
    if (watchers_.load(std::memory_order_seq_cst) != 0) [[unlikely]] notify_watchers();
    const std::uint64_t w = receivers_.waiters.load(std::memory_order_seq_cst);
    if (w == 0) [[likely]] return;
    if (w & sync_mask) wake(receivers_, n);
    if (w >> 32) kick();
  }
  void after_pop(std::size_t n) noexcept {
    const std::uint64_t w = senders_.waiters.load(std::memory_order_seq_cst);
    if (w == 0) [[likely]] return;
    if (w & sync_mask) wake(senders_, n);
    if (w >> 32) kick();
  }
  /// Wakes up to n parked threads of side s that have not been sent a wake-up yet. A thread
  /// stays counted in `waiters` until it has resumed, which on a busy VM takes tens of
  /// microseconds; without `unwoken`, the other side made a futex system call for every item
  /// it moved meanwhile (measured: 112-267 thousand calls in the slow runs of 9 M Python
  /// messages, 4-26 thousand in the fast ones).
  /// - A parking thread reads the event word (its key) before it adds itself to `unwoken`;
  ///   a waker takes threads off `unwoken` before it bumps the word. So a thread taken off
  ///   was counted after it read its key, and the bump that follows wakes it or makes it not
  ///   sleep at all.
  /// - A thread that leaves without having been woken (its check found an item, a timeout)
  ///   stays in `unwoken`: later one wake-up too many, never one too few.
  static void wake(side& s, std::size_t n) noexcept {
    std::uint64_t u = s.unwoken.load(std::memory_order_seq_cst);
    std::uint64_t take = 0;
    do {
      if (u == 0) return;  // every parked thread has been sent one already
      take = std::min<std::uint64_t>(u, n);
    } while (!s.unwoken.compare_exchange_weak(u, u - take, std::memory_order_seq_cst));
    s.event.fetch_add(1, std::memory_order_seq_cst);
    unpark(s.event, wake_count(take));
  }
  /// Wakes every parked thread of side s (close, a stop request).
  static void wake_all(side& s) noexcept {
    s.unwoken.store(0, std::memory_order_seq_cst);
    s.event.fetch_add(1, std::memory_order_seq_cst);
    unpark(s.event, INT_MAX);
  }
  /// Wakes a parked thread of side s if there are any (used on the drain path, which must
  /// not kick itself).
  static void wake_parked(side& s, std::size_t n) noexcept {
    if (s.waiters.load(std::memory_order_seq_cst) & sync_mask) wake(s, n);
  }

  template <typename Op>
  using op_list = std::deque<std::shared_ptr<Op>>;

  /// Queues an async op (or completes it at once if already cancelled) and serves the lists.
  template <typename Op>
  void enqueue(op_list<Op>& list, side& s, std::shared_ptr<Op> op);
  /// Removes op from list if it is there.
  template <typename Op>
  static std::shared_ptr<Op> take(op_list<Op>& list, async_op* op) noexcept;
  /// Serves pending async ops; one thread at a time, the others just ask it to go round again.
  void kick() noexcept;
  void drain() noexcept;
  /// Serves the ops of one list in order while attempt(op) moves something; returns whether
  /// any moved. finish(op, ec) completes an op.
  template <typename Op, typename Attempt, typename Finish>
  bool serve(op_list<Op>& list, side& mine, side& other, Attempt&& attempt, Finish&& finish);

  friend boost::system::result<std::size_t> wait_select(std::span<const channel>,
                                                        channel_timeout, std::stop_token);
  friend bool channel_allows_pickle(const channel&) noexcept;
  friend boost::system::result<std::size_t> try_recv_each(const channel&, std::size_t,
                                                          consume_fn, void*) noexcept;
  friend void set_channel_pickle(const channel&, bool) noexcept;
  friend bool channel_syncobj_default(const channel&) noexcept;
  friend void set_channel_syncobj_default(const channel&, bool) noexcept;
  friend std::int64_t channel_maxsize(const channel&) noexcept;
  friend void set_channel_maxsize(const channel&, std::int64_t) noexcept;
  friend int channel_unbound_default(const channel&) noexcept;
  friend void set_channel_unbound_default(const channel&, int) noexcept;
  /// isola.select waiters: bells rung when an item arrives or the channel closes.
  void notify_watchers() noexcept {
    std::lock_guard lock(watch_mu_);
    for (auto* bell : watch_bells_) {
      bell->fetch_add(1, std::memory_order_seq_cst);
      unpark(*bell, 1);
    }
  }
  std::atomic<std::uint32_t> watchers_{0};
  std::mutex watch_mu_;
  std::vector<std::atomic<std::uint32_t>*> watch_bells_;
  std::atomic<bool> allow_pickle_{true};
  std::atomic<bool> syncobj_default_{false};  ///< Python's put(syncobj=None) default
  std::atomic<std::int64_t> maxsize_;         ///< Python's maxsize as given
  std::atomic<int> unbound_default_{0};       ///< Python's put(unbounditems=None) default

  std::mutex async_mu_;  ///< guards the two lists and async_op::cancelled; slow path only
  std::deque<std::shared_ptr<async_recv_op>> async_recv_;
  std::deque<std::shared_ptr<async_send_op>> async_send_;
  std::atomic<std::uint32_t> kicks_{0};
};

namespace {

std::atomic<std::uint64_t> next_channel_id{1};

/// Every live channel by id, and the named ones by name. Weak references: a channel is
/// findable while it is alive. Leaked on purpose, so channels destroyed during static
/// destruction can still unregister.
struct registry {
  std::mutex mu;
  struct entry {
    const channel_core* core;
    std::weak_ptr<channel_core> weak;
  };
  std::map<std::string, entry, std::less<>> names;
  std::map<std::uint64_t, std::weak_ptr<channel_core>> ids;  // ordered: ids grow with time
};

registry& the_registry() {
  static registry* r = new registry;
  return *r;
}

}  // namespace

channel_core::channel_core(std::size_t capacity, std::string name)
    : ring_(capacity),
      id_(next_channel_id.fetch_add(1)),
      name_(std::move(name)),
      maxsize_(static_cast<std::int64_t>(capacity)) {
  // Registers the asymmetric fence if nothing has yet (isola::runtime does it first thing):
  // here, not mid-stream when a side is first biased (see lib/sync.hpp).
  (void)asymmetric_fence_available();
}

channel_core::~channel_core() {
  {
    registry& r = the_registry();
    std::lock_guard lock(r.mu);
    r.ids.erase(id_);
    if (!name_.empty()) {
      auto it = r.names.find(name_);
      if (it != r.names.end() && it->second.core == this) r.names.erase(it);
    }
  }
  // No handle is left, so nothing else runs here: pending async receivers get what is queued,
  // then channel_closed; pending senders get channel_closed. The ring destroys the rest.
  ring_.close();
  drain();
}

ring_status channel_core::push_available(std::span<message> items, std::size_t& sent,
                                         bool exact) noexcept {
  sent = 0;
  ring_status st = ring_status::ok;
  while (sent < items.size()) {
    std::size_t k = 0;
    // Once something moved, the call succeeds whatever follows: later claims may be quick.
    st = ring_.try_push_n(items.data() + sent, items.size() - sent, k, exact && sent == 0);
    if (st != ring_status::ok) break;
    sent += k;
    after_push(k);
  }
  return sent > 0 ? ring_status::ok : st;
}

ring_status channel_core::pop_available(std::vector<message>& out, std::size_t max_items,
                                        std::size_t& got, bool exact) {
  return pop_each(
      max_items, got, exact,
      // Grow before claiming: consume() runs on claimed slots and must not throw.
      [&](std::size_t chunk) {
        if (out.capacity() - out.size() < chunk) {
          out.reserve(std::max(out.size() + chunk, out.capacity() * 2));
        }
      },
      [&](message&& m) noexcept { slot_ops<message>::assign(out.emplace_back(), m); });
}

template <typename Attempt, typename Ready>
boost::system::error_code channel_core::block(side& s, Attempt&& attempt, Ready&& ready,
                                              const deadline& until,
                                              const std::stop_token& stop) {
  auto outcome = [](ring_status st) {
    return st == ring_status::ok ? boost::system::error_code{} : code(errc::channel_closed);
  };
  ring_status st = attempt(false);
  if (st != ring_status::would_block) return outcome(st);
  if (passed(until)) {
    st = attempt(true);
    return st != ring_status::would_block ? outcome(st) : code(errc::timeout);
  }
  if (stop.stop_requested()) return code(errc::cancelled);

  for (int i = 0; i < spin_rounds; ++i) {
    cpu_relax();
    // ready(i) is a cheap probe; an exact attempt now and then also notices close(). After
    // the first rounds a yield every few rounds lets a thread that shares our CPU (the one we
    // wait for?) run: the scheduler often puts a woken thread on its waker's CPU, and then
    // pure spinning makes each hand-over wait for the spinner's time slice or its parking
    // (measured with both ends of a C++ ping-pong on one CPU: a round trip took 25.8 us when
    // only the second half of the spin yielded, 5.1-5.6 us with these yields; a Python one
    // 31 us and 4.4-6).
    const bool exact = i % 64 == 63;
    if (i >= yield_after && i % yield_every == yield_every - 1) std::this_thread::yield();
    if (ready(i) || exact) {
      st = attempt(exact);
      if (st != ring_status::would_block) return outcome(st);
    }
  }

  // A stop request bumps the event and wakes every parked thread of this side; each re-checks
  // its own token. Rare, so the extra wake-ups of other waiters do not matter.
  struct waker {
    side* s;
    void operator()() noexcept { wake_all(*s); }
  };
  std::optional<std::stop_callback<waker>> on_stop;
  if (stop.stop_possible()) on_stop.emplace(stop, waker{&s});

  // Leaving without having moved anything: a wake-up meant for the item (room) that is there
  // now may have come to this thread, so hand it on.
  auto give_up = [&](errc why) {
    if (ready(-1)) wake_parked(s, 1);
    return code(why);
  };
  /// Counts this thread as parked on s for its scope (also when attempt() throws), and as
  /// not yet woken (see wake()).
  struct counted {
    side& s;
    explicit counted(side& s_) noexcept : s(s_) {
      // unwoken first: a waker that sees us in `waiters` then sees us in `unwoken` too (or
      // sees that another waker has taken us off, and that one's wake-up reaches us).
      s.unwoken.fetch_add(1, std::memory_order_seq_cst);
      s.waiters.fetch_add(sync_one, std::memory_order_seq_cst);
    }
    ~counted() { s.waiters.fetch_sub(sync_one, std::memory_order_seq_cst); }
  };
  for (;;) {
    bool in_time = true;
    {
      // Count ourselves before the last check (seq_cst), so that a producer either sees us
      // in the counter or we see its item: the pairing described in ring.hpp. The key is
      // read before counting: see wake().
      const std::uint32_t key = s.event.load(std::memory_order_seq_cst);
      counted c(s);
      ring_.fence_against(&s == &receivers_);  // the side we wait for may be biased
      st = attempt(true);
      if (st == ring_status::would_block && !stop.stop_requested()) {
        in_time = park(s.event, key, until);
      }
    }
    if (st != ring_status::would_block) return outcome(st);
    if (stop.stop_requested()) return give_up(errc::cancelled);
    if (!in_time || passed(until)) {
      st = attempt(true);
      if (st != ring_status::would_block) return outcome(st);
      return give_up(errc::timeout);
    }
  }
}

bool channel_core::close() noexcept {
  if (!ring_.close()) return false;
  wake_all(receivers_);
  wake_all(senders_);
  notify_watchers();
  kick();
  return true;
}

static void complete(async_recv_op& op, boost::system::error_code ec) noexcept {
  op.complete(ec, {});
}
static void complete(async_send_op& op, boost::system::error_code ec) noexcept {
  op.complete(ec);
}

template <typename Op>
void channel_core::enqueue(op_list<Op>& list, side& s, std::shared_ptr<Op> op) {
  {
    std::lock_guard lock(async_mu_);
    if (!op->cancelled) {
      s.waiters.fetch_add(async_one, std::memory_order_seq_cst);
      list.push_back(std::move(op));
    }
  }
  if (op) {
    complete(*op, boost::asio::error::operation_aborted);
    return;
  }
  ring_.fence_against(&s == &receivers_);  // as in block(): then look at the ring
  kick();
}

template <typename Op>
std::shared_ptr<Op> channel_core::take(op_list<Op>& list, async_op* op) noexcept {
  for (auto it = list.begin(); it != list.end(); ++it) {
    if (it->get() == op) {
      auto found = std::move(*it);
      list.erase(it);
      return found;
    }
  }
  return nullptr;
}

void channel_core::cancel(async_op* op) noexcept {
  std::shared_ptr<async_recv_op> recv;
  std::shared_ptr<async_send_op> send;
  {
    std::lock_guard lock(async_mu_);
    op->cancelled = true;  // a drain holding the op sees it when it would queue it again
    if ((recv = take(async_recv_, op))) {
      receivers_.waiters.fetch_sub(async_one, std::memory_order_seq_cst);
    } else if ((send = take(async_send_, op))) {
      senders_.waiters.fetch_sub(async_one, std::memory_order_seq_cst);
    }
  }
  if (recv) complete(*recv, boost::asio::error::operation_aborted);
  if (send) complete(*send, boost::asio::error::operation_aborted);
}

void channel_core::kick() noexcept {
  if (kicks_.fetch_add(1, std::memory_order_acq_rel) != 0) return;  // the drainer goes again
  std::uint32_t seen = 1;
  for (;;) {
    drain();
    const std::uint32_t left = kicks_.fetch_sub(seen, std::memory_order_acq_rel) - seen;
    if (left == 0) return;
    seen = left;
  }
}

void channel_core::drain() noexcept {
  // Ops are taken off a list to be served without holding the mutex (completions post
  // handlers; a failed send destroys its message); one that cannot be served yet goes back to
  // the front, unless it was cancelled meanwhile. Its counter stays up all along, so a
  // producer that pushes meanwhile kicks and the drainer goes round again.
  for (bool progress = true; progress;) {
    message m;
    progress = serve(
        async_recv_, receivers_, senders_,
        [&](async_recv_op&) {
          return ring_.try_pop([&](message&& x) noexcept { m = std::move(x); });
        },
        [&](async_recv_op& op, boost::system::error_code ec) {
          op.complete(ec, ec ? message{} : std::move(m));
        });
    progress |= serve(
        async_send_, senders_, receivers_,
        [&](async_send_op& op) {
          const ring_status st = ring_.try_push(op.msg);
          // Sync receivers are woken by serve(); select() waiters need their bell too.
          if (st == ring_status::ok && watchers_.load(std::memory_order_seq_cst) != 0) {
            notify_watchers();
          }
          return st;
        },
        [&](async_send_op& op, boost::system::error_code ec) { op.complete(ec); });
  }
}

template <typename Op, typename Attempt, typename Finish>
bool channel_core::serve(op_list<Op>& list, side& mine, side& other, Attempt&& attempt,
                         Finish&& finish) {
  bool progress = false;
  for (;;) {
    std::shared_ptr<Op> op;
    {
      std::lock_guard lock(async_mu_);
      if (list.empty()) break;
      op = std::move(list.front());
      list.pop_front();
    }
    const ring_status st = attempt(*op);
    if (st == ring_status::would_block) {
      std::lock_guard lock(async_mu_);
      if (!op->cancelled) {
        list.push_front(std::move(op));
        break;
      }
    }
    mine.waiters.fetch_sub(async_one, std::memory_order_seq_cst);
    if (st == ring_status::ok) {
      progress = true;
      wake_parked(other, 1);
      finish(*op, {});
    } else {
      finish(*op, st == ring_status::closed ? code(errc::channel_closed)
                                            : boost::asio::error::operation_aborted);
    }
  }
  return progress;
}

void start_async_recv(const std::shared_ptr<channel_core>& core,
                      std::shared_ptr<async_recv_op> op) {
  core->start(std::move(op));
}

void start_async_send(const std::shared_ptr<channel_core>& core,
                      std::shared_ptr<async_send_op> op) {
  core->start(std::move(op));
}

void cancel_async(const std::weak_ptr<channel_core>& core,
                  const std::weak_ptr<async_op>& op) noexcept {
  auto c = core.lock();
  auto o = op.lock();
  if (c && o) c->cancel(o.get());
}

}  // namespace detail

using detail::ring_status;

static_assert(channel::max_capacity == detail::ring<message>::max_capacity);

namespace {
/// Refuses 0 as a bound: an unbounded channel is asked for by name (isola::unbounded), so
/// that a computed capacity of 0 is an error rather than a channel without limit.
std::size_t checked_capacity(std::size_t capacity) {
  if (capacity == 0) {
    throw std::invalid_argument(
        "a channel's capacity must be between 1 and 2^40, not 0; for a channel without a bound "
        "pass isola::unbounded");
  }
  return capacity;
}
}  // namespace

channel::channel(std::size_t capacity) : channel(std::make_shared<detail::channel_core>(
                                             checked_capacity(capacity), std::string())) {
  auto& r = detail::the_registry();
  std::lock_guard lock(r.mu);
  r.ids.emplace(core_->id_, core_);
}

channel::channel(unbounded_t)
    : core_(std::make_shared<detail::channel_core>(0, std::string())) {
  auto& r = detail::the_registry();
  std::lock_guard lock(r.mu);
  r.ids.emplace(core_->id_, core_);
}

channel channel::open(std::string_view name, unbounded_t) { return open_with(name, 0); }

channel channel::open(std::string_view name, std::size_t capacity) {
  return open_with(name, checked_capacity(capacity));
}

channel channel::open_with(std::string_view name, std::size_t capacity) {
  if (name.empty()) throw std::invalid_argument("channel::open: the name must not be empty");
  auto& r = detail::the_registry();
  // Declared before the lock, so that if registering it throws, the new channel is destroyed
  // (and its destructor takes the registry's lock) only after this call has released it.
  std::shared_ptr<detail::channel_core> core;
  std::lock_guard lock(r.mu);
  auto it = r.names.find(name);
  if (it != r.names.end()) {
    if ((core = it->second.weak.lock())) return channel(std::move(core));
  }
  core = std::make_shared<detail::channel_core>(capacity, std::string(name));
  r.ids.emplace(core->id_, core);
  if (it != r.names.end()) {
    it->second = {core.get(), core};
  } else {
    r.names.emplace(std::string(name), detail::registry::entry{core.get(), core});
  }
  return channel(std::move(core));
}

std::optional<channel> channel::find_id(std::uint64_t id) {
  auto& r = detail::the_registry();
  std::lock_guard lock(r.mu);
  auto it = r.ids.find(id);
  if (it == r.ids.end()) return std::nullopt;
  auto core = it->second.lock();  // empty while its destructor waits for the lock
  if (!core) return std::nullopt;
  return channel(std::move(core));
}

std::vector<channel> channel::list_all() {
  std::vector<channel> out;
  auto& r = detail::the_registry();
  std::lock_guard lock(r.mu);
  out.reserve(r.ids.size());
  for (auto& [id, weak] : r.ids) {
    if (auto core = weak.lock()) out.push_back(channel(std::move(core)));
  }
  return out;
}

std::optional<channel> channel::find(std::string_view name) {
  auto& r = detail::the_registry();
  std::lock_guard lock(r.mu);
  auto it = r.names.find(name);
  if (it == r.names.end()) return std::nullopt;
  auto core = it->second.weak.lock();
  if (!core) return std::nullopt;
  return channel(std::move(core));
}

namespace {

// The waiting halves of send and recv, out of line: the quick first attempt then needs no
// stack frame for them.
[[gnu::noinline]] boost::system::error_code send_wait(detail::channel_core& c, message& msg,
                                                      const channel_timeout& timeout,
                                                      const std::stop_token& stop) {
  return c.block(
      c.senders_, [&](bool exact) { return c.push_one(msg, exact); },
      [&](int round) { return c.ring_.push_ready(round >= 0 ? detail::room_run : 0); },
      detail::deadline_after(timeout), stop);
}
[[gnu::noinline]] boost::system::error_code recv_wait(detail::channel_core& c, message& out,
                                                      const channel_timeout& timeout,
                                                      const std::stop_token& stop) {
  return c.block_recv([&](bool exact) { return c.pop_one(out, exact); },
                      detail::deadline_after(timeout), stop);
}

// What a failed blocking call throws: isola::error with the code, saying what happened
// (std::system_error appends the code's own text, e.g. ": timed out").
[[noreturn, gnu::cold, gnu::noinline]] void throw_failed(boost::system::error_code ec,
                                                        const char* call, bool receiving) {
  std::string what = std::string("isola::channel::") + call + ": ";
  if (ec == errc::channel_closed) {
    what += receiving ? "the channel was closed and every item sent to it has been received"
                      : "the channel was closed, so it takes no more items";
  } else if (ec == errc::timeout) {
    what += receiving ? "no item came within the timeout given"
                      : "no room came within the timeout given";
  } else if (ec == errc::cancelled) {
    what += "its stop token was triggered";
  } else {
    what += "failed";
  }
  const std::error_code code = ec;  // the isola::errc value (boost's value() is not)
  throw error(static_cast<errc>(code.value()), what);
}

// The bodies of send and recv: one quick attempt, which needs no deadline or token, then
// wait() (send_wait / recv_wait with the caller's arguments). Inline in each public form; the
// forms without a deadline build their empty optional only inside wait(), so their quick
// attempt has nothing to wait for (see channel.hpp).
template <typename Wait>
ISOLA_RING_INLINE boost::system::error_code send_on(detail::channel_core& c, message& msg,
                                                     Wait&& wait) {
  if (c.push_one(msg, false) == ring_status::ok) [[likely]] return {};
  return wait();
}
template <typename Wait>
ISOLA_RING_INLINE boost::system::error_code recv_on(detail::channel_core& c, message& out,
                                                     Wait&& wait) {
  if (c.pop_one(out, false) == ring_status::ok) [[likely]] return {};
  return wait(out);
}

}  // namespace

void channel::send(message&& msg) {
  auto& c = *core_;
  auto ec = send_on(c, msg, [&] { return send_wait(c, msg, std::nullopt, std::stop_token()); });
  if (ec) [[unlikely]] throw_failed(ec, "send", false);
}

message channel::recv() {
  auto& c = *core_;
  message out;  // returned in place (NRVO)
  auto ec = recv_on(c, out, [&](message& m) {
    return recv_wait(c, m, std::nullopt, std::stop_token());
  });
  if (ec) [[unlikely]] throw_failed(ec, "recv", true);
  return out;
}

void channel::send(message&& msg, channel_timeout timeout, std::stop_token stop) {
  auto& c = *core_;
  auto ec = send_on(c, msg, [&] { return send_wait(c, msg, timeout, stop); });
  if (ec) [[unlikely]] throw_failed(ec, "send", false);
}

message channel::recv(channel_timeout timeout, std::stop_token stop) {
  auto& c = *core_;
  message out;
  auto ec = recv_on(c, out, [&](message& m) { return recv_wait(c, m, timeout, stop); });
  if (ec) [[unlikely]] throw_failed(ec, "recv", true);
  return out;
}

void channel::send(message&& msg, boost::system::error_code& ec) {
  auto& c = *core_;
  ec = send_on(c, msg, [&] { return send_wait(c, msg, std::nullopt, std::stop_token()); });
}

void channel::send(message&& msg, channel_timeout timeout, std::stop_token stop,
                   boost::system::error_code& ec) {
  auto& c = *core_;
  ec = send_on(c, msg, [&] { return send_wait(c, msg, timeout, stop); });
}

message channel::recv(boost::system::error_code& ec) {
  auto& c = *core_;
  message out;
  ec = recv_on(c, out, [&](message& m) {
    return recv_wait(c, m, std::nullopt, std::stop_token());
  });
  return out;
}

message channel::recv(channel_timeout timeout, std::stop_token stop,
                      boost::system::error_code& ec) {
  auto& c = *core_;
  message out;
  ec = recv_on(c, out, [&](message& m) { return recv_wait(c, m, timeout, stop); });
  return out;
}

boost::system::result<void> channel::try_send(message&& msg) {
  return detail::push_result(core_->push_one(msg, true));
}

boost::system::result<message> channel::try_recv() {
  message out;
  switch (core_->pop_one(out, true)) {
    case ring_status::ok: return out;
    case ring_status::would_block: return detail::code(errc::channel_empty);
    case ring_status::closed: break;
  }
  return detail::code(errc::channel_closed);
}

std::size_t channel::send_many(std::span<message> items, channel_timeout timeout,
                               std::stop_token stop, boost::system::error_code& ec) {
  auto& c = *core_;
  std::size_t sent = 0;
  ec = {};
  const detail::deadline until = detail::deadline_after(timeout);
  while (sent < items.size()) {
    ec = c.block(
        c.senders_,
        [&](bool exact) {
          std::size_t k = 0;
          const ring_status st = c.push_available(items.subspan(sent), k, exact);
          sent += k;
          return st;
        },
        [&](int round) { return c.ring_.push_ready(round >= 0 ? detail::room_run : 0); },
        until, stop);
    if (ec) break;
  }
  return sent;
}

std::size_t channel::send_many(std::span<message> items, channel_timeout timeout,
                               std::stop_token stop) {
  boost::system::error_code ec;
  const std::size_t sent = send_many(items, timeout, std::move(stop), ec);
  if (ec) throw_failed(ec, "send_many", false);
  return sent;
}

send_many_result channel::try_send_many(std::span<message> items) {
  send_many_result r;
  const ring_status st = core_->push_available(items, r.sent, true);
  if (r.sent < items.size()) {
    r.error = detail::code(st == ring_status::closed ? errc::channel_closed : errc::channel_full);
  }
  return r;
}

std::size_t channel::recv_many(std::vector<message>& out, std::size_t max_items,
                               channel_timeout timeout, std::stop_token stop,
                               boost::system::error_code& ec) {
  ec = {};
  if (max_items == 0) return 0;
  auto& c = *core_;
  std::size_t got = 0;
  ec = c.block_recv([&](bool exact) { return c.pop_available(out, max_items, got, exact); },
                    detail::deadline_after(timeout), stop);
  return ec ? 0 : got;
}

std::vector<message> channel::recv_many(std::size_t max_items, channel_timeout timeout,
                                        std::stop_token stop, boost::system::error_code& ec) {
  std::vector<message> out;
  recv_many(out, max_items, timeout, std::move(stop), ec);
  return out;
}

std::size_t channel::recv_many(std::vector<message>& out, std::size_t max_items,
                               channel_timeout timeout, std::stop_token stop) {
  boost::system::error_code ec;
  const std::size_t got = recv_many(out, max_items, timeout, std::move(stop), ec);
  if (ec) throw_failed(ec, "recv_many", true);
  return got;
}

std::vector<message> channel::recv_many(std::size_t max_items, channel_timeout timeout,
                                        std::stop_token stop) {
  std::vector<message> out;
  recv_many(out, max_items, timeout, std::move(stop));
  return out;
}

boost::system::result<std::size_t> channel::try_recv_many(std::vector<message>& out,
                                                          std::size_t max_items) {
  if (max_items == 0) return std::size_t{0};
  std::size_t got = 0;
  switch (core_->pop_available(out, max_items, got, true)) {
    case ring_status::ok: return got;
    case ring_status::would_block: return detail::code(errc::channel_empty);
    case ring_status::closed: break;
  }
  return detail::code(errc::channel_closed);
}

bool channel::close() noexcept { return core_->close(); }

std::size_t channel::capacity() const noexcept { return core_->ring_.capacity(); }
std::size_t channel::size() const noexcept { return core_->ring_.size(); }
bool channel::closed() const noexcept { return core_->ring_.closed(); }
std::uint64_t channel::id() const noexcept { return core_->id_; }
const std::string& channel::name() const noexcept { return core_->name_; }

namespace detail {

bool channel_allows_pickle(const channel& ch) noexcept {
  return channel_access::core(ch)->allow_pickle_.load(std::memory_order_relaxed);
}

void set_channel_pickle(const channel& ch, bool allow) noexcept {
  channel_access::core(ch)->allow_pickle_.store(allow, std::memory_order_relaxed);
}

bool channel_syncobj_default(const channel& ch) noexcept {
  return channel_access::core(ch)->syncobj_default_.load(std::memory_order_relaxed);
}

void set_channel_syncobj_default(const channel& ch, bool on) noexcept {
  channel_access::core(ch)->syncobj_default_.store(on, std::memory_order_relaxed);
}

std::size_t channel_rings(const channel& ch) noexcept {
  return channel_access::core(ch)->ring_.rings();
}

std::int64_t channel_maxsize(const channel& ch) noexcept {
  return channel_access::core(ch)->maxsize_.load(std::memory_order_relaxed);
}

void set_channel_maxsize(const channel& ch, std::int64_t maxsize) noexcept {
  channel_access::core(ch)->maxsize_.store(maxsize, std::memory_order_relaxed);
}

int channel_unbound_default(const channel& ch) noexcept {
  return channel_access::core(ch)->unbound_default_.load(std::memory_order_relaxed);
}

void set_channel_unbound_default(const channel& ch, int mode) noexcept {
  channel_access::core(ch)->unbound_default_.store(mode, std::memory_order_relaxed);
}

bool receiver_streaming(const channel& ch) noexcept {
  return pace.streaming_on(&channel_access::core(ch)->ring_);
}

void set_receiver_streaming(const channel& ch, bool on) noexcept {
  pace = {&channel_access::core(ch)->ring_, on, 0};
}

bool receiver_parked(const channel& ch) noexcept {
  return (channel_access::core(ch)->receivers_.waiters.load(std::memory_order_seq_cst) & sync_mask) != 0;
}

bool spin_until_ready(const channel& ch, bool for_recv, int rounds) noexcept {
  auto& r = channel_access::core(ch)->ring_;
  auto spin = [&](auto&& ready) {
    for (int i = 0; i < rounds; ++i) {
      cpu_relax();
      if (ready(i)) return true;
      // As in block(): let a thread that shares our CPU run.
      if (i >= yield_after / 2 && i % yield_every == yield_every - 1) std::this_thread::yield();
    }
    return false;
  };
  if (!for_recv) return spin([&](int) { return r.push_ready(room_run); }) || r.closed();
  recv_pacer pacer(r);
  const bool ready = spin(pacer);
  pacer.done(ready);
  return ready || r.closed();
}

boost::system::result<void> try_send_quick(const channel& ch, message&& msg) noexcept {
  return push_result(channel_access::core(ch)->push_one(msg, false));
}
bool try_send_int_quick(const channel& ch, std::int64_t v) noexcept {
  // The ring copies a scalar out of m, so m ends as it began: without its destructor's visits.
  union local {
    message m;
    explicit local(std::int64_t i) noexcept : m(i) {}
    ~local() { slot_ops<message>::drop(m); }
  } l(v);
  return channel_access::core(ch)->push_one(l.m, false) == ring_status::ok;
}

void* try_take_int_quick(const channel& ch, make_int_fn make) noexcept {
  void* made = nullptr;
  channel_access::core(ch)->pop_owned_if([&](const message& m) noexcept {
    const std::int64_t* i = plain_int(m);
    return i != nullptr && (made = make(*i)) != nullptr;
  });
  return made;
}

std::size_t try_take_ints(const channel& ch, std::size_t max_items, make_int_fn make,
                          void** out, bool& other_next) noexcept {
  other_next = false;
  std::size_t got = 0;
  while (got < max_items) {  // a run stops at the end of the ring's array: go on at its start
    const std::size_t k = channel_access::core(ch)->pop_owned_run_if(
        max_items - got, [&](const message& m, std::size_t i) noexcept {
          const std::int64_t* v = plain_int(m);
          if (v != nullptr && (out[got + i] = make(*v)) != nullptr) return true;
          other_next = true;
          return false;
        });
    got += k;
    if (k == 0 || other_next) break;
  }
  return got;
}

bool try_take_quick(const channel& ch, consume_fn fn, void* ctx) noexcept {
  return channel_access::core(ch)->pop_one_with([&](message&& m) noexcept { fn(ctx, std::move(m)); }, false) ==
         ring_status::ok;
}

boost::system::result<std::size_t> try_recv_each(const channel& ch, std::size_t max_items,
                                                 consume_fn fn, void* ctx) noexcept {
  if (max_items == 0) return std::size_t{0};
  std::size_t got = 0;
  const ring_status st = channel_access::core(ch)->pop_each(
      max_items, got, true, [](std::size_t) noexcept {},
      [&](message&& m) noexcept { fn(ctx, std::move(m)); });
  if (st == ring_status::ok) return got;
  return code(st == ring_status::closed ? errc::channel_closed : errc::channel_empty);
}

bool channel_side_owned(const channel& ch, bool producers) noexcept {
  return channel_access::core(ch)->ring_.owned(producers);
}

std::optional<std::size_t> select_now(std::span<const channel> chans) noexcept {
  for (std::size_t i = 0; i < chans.size(); ++i) {
    if (chans[i].size() > 0 || chans[i].closed()) return i;
  }
  return std::nullopt;
}

boost::system::result<std::size_t> wait_select(std::span<const channel> chans,
                                               channel_timeout timeout, std::stop_token stop) {
  std::atomic<std::uint32_t> bell{0};
  // Register first, then look (both seq_cst): a sender either sees our registration and rings,
  // or we see its item.
  for (const auto& ch : chans) {
    auto& core = *channel_access::core(ch);
    std::lock_guard lock(core.watch_mu_);
    core.watch_bells_.push_back(&bell);
    core.watchers_.fetch_add(1, std::memory_order_seq_cst);
  }
  for (const auto& ch : chans) channel_access::core(ch)->ring_.fence_against(true);
  std::stop_callback on_stop(stop, [&bell] {
    bell.fetch_add(1, std::memory_order_seq_cst);
    unpark(bell, 1);
  });
  const deadline until = deadline_after(timeout);
  boost::system::result<std::size_t> out = code(errc::timeout);
  for (;;) {
    const std::uint32_t key = bell.load(std::memory_order_seq_cst);
    if (auto i = select_now(chans)) {
      out = *i;
      break;
    }
    if (stop.stop_requested()) {
      out = code(errc::cancelled);
      break;
    }
    if (passed(until) || !park(bell, key, until)) {
      if (auto i = select_now(chans)) out = *i;
      break;
    }
  }
  for (const auto& ch : chans) {
    auto& core = *channel_access::core(ch);
    std::lock_guard lock(core.watch_mu_);
    auto it = std::find(core.watch_bells_.begin(), core.watch_bells_.end(), &bell);
    if (it != core.watch_bells_.end()) core.watch_bells_.erase(it);
    core.watchers_.fetch_sub(1, std::memory_order_seq_cst);
  }
  return out;
}

}  // namespace detail
}  // namespace isola
