// Channels from Python: isola.Channel / isola.channel(name) across interpreters, the PEP 734
// queue names, timeouts, close, interruption, zero-copy buffers, pickling, channels in
// channels, and interpreters that end while they wait or while their items are queued.
#include <catch2/catch.hpp>

#include "test/support.hpp"

#include "lib/python.hpp"

#include <isola/channel.hpp>

#include <chrono>
#include <fstream>
#include <future>
#include <thread>

using namespace isola_test;
using namespace std::chrono_literals;
using isola::value;

namespace {

// Resident set size of this process in bytes.
std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

std::string error_type(const std::function<void()>& f) {
  auto e = python_error_of(f);
  return e ? e->type_name() : std::string("<no error>");
}

}  // namespace

TEST_CASE("Python channels carry every value kind in FIFO order between interpreters",
          "[pychannel]") {
  auto keep = isola::channel::open("t-fifo", 64);
  isola::interpreter a, b;
  const char* edges =
      "edges = [2**30 - 1, 2**30, -2**30, -2**30 - 1, 2**62, 2**63 - 1, -2**63, 2**63,\n"
      "         -2**63 - 1, 2**64, -1, 0]\n";
  a.exec(edges);
  b.exec(edges);
  auto sent = a.exec_async(
      "import isola\n"
      "ch = isola.channel('t-fifo')\n"
      "for i in range(2000):\n"
      "    ch.send(i)\n"
      "for v in [None, True, 1.5, 'é\\ud800', b'bytes', (1, 'a'), [1, [2]], {'k': (1,)}, 2**100, -2**70]:\n"
      "    ch.send(v)\n"
      // Ints at the edges of the fast path: compact (30-bit digits) or not, 64-bit or not.
      "for v in edges:\n"
      "    ch.send(v)\n");
  b.exec("import isola\nch = isola.channel('t-fifo')\n"
         "got = [ch.recv() for _ in range(2000)]\n"
         "rest = [ch.recv() for _ in range(10)]\n"
         "edge_got = [ch.recv() for _ in range(len(edges))]\n");
  sent.get();
  CHECK(b.eval("got == list(range(2000))").as_bool());
  CHECK(b.eval("edge_got == edges and all(type(v) is int for v in edge_got)").as_bool());
  CHECK(b.eval("rest == [None, True, 1.5, 'é\\ud800', b'bytes', (1, 'a'), [1, [2]], {'k': (1,)}, "
               "2**100, -2**70]")
            .as_bool());
  CHECK(b.eval("type(rest[5]) is tuple and type(rest[2]) is float").as_bool());
}

TEST_CASE("2 producers x 2 consumers move 1 000 000 ints across interpreters exactly once",
          "[pychannel][concurrent]") {
  constexpr std::int64_t per_producer = 500'000;
  auto ch = isola::channel::open("t-mpmc", 1024);
  isola::interpreter p1, p2, c1, c2;
  for (auto* in : {&p1, &p2, &c1, &c2}) in->exec("import sys; sys.path.insert(0, " +
                                                 value(py_dir()).repr() + ")");
  auto r1 = c1.call_async("isola_test_channel:consume", "t-mpmc", "");
  auto r2 = c2.call_async("isola_test_channel:consume", "t-mpmc", "");
  auto s1 = p1.call_async("isola_test_channel:produce", "t-mpmc", 0, per_producer);
  auto s2 = p2.call_async("isola_test_channel:produce", "t-mpmc", per_producer, per_producer);
  CHECK(s1.get().as_int() == per_producer);
  CHECK(s2.get().as_int() == per_producer);
  ch.close();  // consumers drain what was sent, then their loops end
  auto a = r1.get().as_list().items;
  auto b = r2.get().as_list().items;
  std::uint64_t mix = 0;
  std::int64_t total = 0;
  for (std::int64_t i = 0; i < 2 * per_producer; ++i) {
    total += i;
    mix ^= (static_cast<std::uint64_t>(i) * 2654435761ULL) & 0x7FFFFFFFFFFFFFFFULL;
  }
  CHECK(a[0].as_int() + b[0].as_int() == 2 * per_producer);
  CHECK(a[1].as_int() + b[1].as_int() == total);
  CHECK((static_cast<std::uint64_t>(a[2].as_int()) ^ static_cast<std::uint64_t>(b[2].as_int())) ==
        mix);
  CHECK(a[0].as_int() > 0);  // both consumers took part
  CHECK(b[0].as_int() > 0);
}

TEST_CASE("close() wakes blocked senders and receivers with ChannelClosed", "[pychannel][concurrent]") {
  auto empty = isola::channel::open("t-close-empty", 4);
  auto full = isola::channel::open("t-close-full", 1);
  REQUIRE(full.try_send(isola::message(value(1))).has_value());
  isola::interpreter r, s;
  const char* wait_code =
      "import isola, time\n"
      "def wait(fn):\n"
      "    try:\n"
      "        fn()\n"
      "    except isola.ChannelClosed:\n"
      "        return 'closed'\n"
      "    return 'returned'\n";
  r.exec(wait_code);
  s.exec(wait_code);
  auto fr = r.eval_async("wait(lambda: isola.channel('t-close-empty').recv())");
  auto fs = s.eval_async("wait(lambda: isola.channel('t-close-full').send(2))");
  std::this_thread::sleep_for(200ms);  // let both block (the outcome is the same either way)
  CHECK(fr.wait_for(0s) != std::future_status::ready);
  CHECK(fs.wait_for(0s) != std::future_status::ready);
  empty.close();
  full.close();
  CHECK(fr.get().as_str() == "closed");
  CHECK(fs.get().as_str() == "closed");
  // The item accepted before close is still delivered, then ChannelClosed.
  r.exec("ch = isola.channel('t-close-full')\nfirst = ch.recv()\n");
  CHECK(r.eval("first").as_int() == 1);
  CHECK(r.eval("wait(ch.recv)").as_str() == "closed");
  CHECK(r.eval("wait(lambda: ch.send(3))").as_str() == "closed");
  CHECK(r.eval("ch.closed").as_bool());
}

TEST_CASE("timeouts and the non-blocking forms", "[pychannel]") {
  isola::interpreter in;
  in.exec("import isola, queue, time\n"
          "ch = isola.Channel(1)\n"
          "def outcome(fn):\n"
          "    t0 = time.monotonic()\n"
          "    try:\n"
          "        fn()\n"
          "        name = 'ok'\n"
          "    except Exception as e:\n"
          "        name = type(e).__name__\n"
          "        if isinstance(e, queue.Empty): name += '<Empty'\n"
          "        if isinstance(e, queue.Full): name += '<Full'\n"
          "    return [name, time.monotonic() - t0]\n");
  auto check = [&](const std::string& call, const std::string& expected, double at_least) {
    auto r = in.eval("outcome(lambda: " + call + ")").as_list().items;
    INFO(call);
    CHECK(r[0].as_str() == expected);
    CHECK(r[1].as_float() >= at_least);
  };
  check("ch.recv(timeout=0.25)", "TimeoutError", 0.25);
  check("ch.get(timeout=0.25)", "QueueEmpty<Empty", 0.25);
  check("ch.recv_nowait()", "QueueEmpty<Empty", 0);
  check("ch.get_nowait()", "QueueEmpty<Empty", 0);
  check("ch.get(block=False)", "QueueEmpty<Empty", 0);
  check("ch.recv(timeout=0)", "TimeoutError", 0);
  check("ch.send(1)", "ok", 0);
  check("ch.send(2, timeout=0.1)", "TimeoutError", 0.1);
  check("ch.put(2, timeout=0.1)", "QueueFull<Full", 0.1);
  check("ch.put_nowait(2)", "QueueFull<Full", 0);
  check("ch.send_nowait(2)", "QueueFull<Full", 0);
  check("ch.put(2, block=False)", "QueueFull<Full", 0);
  check("ch.recv(timeout=-1)", "ValueError", 0);
  check("ch.recv(timeout='soon')", "TypeError", 0);
  CHECK(in.eval("ch.get()").as_int() == 1);
  CHECK(in.eval("isola.QueueEmpty is isola.ChannelEmpty").as_bool());
}

TEST_CASE("QueueEmpty and QueueFull are made on first use, not when an interpreter starts",
          "[pychannel]") {
  // Every interpreter imports isola when it starts; `import queue` (for the base classes)
  // would cost each one ~3 ms and 0.6 MB.
  isola::interpreter in;
  in.exec("import sys, isola\nstarted_with_queue = 'queue' in sys.modules\n");
  CHECK_FALSE(in.eval("started_with_queue").as_bool());
  CHECK_FALSE(in.eval("'QueueEmpty' in vars(isola)").as_bool());
  CHECK(in.eval("all(n in dir(isola) for n in "
                "('QueueEmpty', 'QueueFull', 'ChannelEmpty', 'ChannelFull', 'Channel'))")
            .as_bool());
  // The first one raised is the same class the module then hands out.
  in.exec("ch = isola.Channel(1)\n"
          "try:\n"
          "    ch.recv_nowait()\n"
          "except Exception as e:\n"
          "    raised = e\n"
          "import queue\n");
  CHECK(in.eval("type(raised) is isola.QueueEmpty is isola.ChannelEmpty").as_bool());
  CHECK(in.eval("isinstance(raised, queue.Empty)").as_bool());
  CHECK(in.eval("issubclass(isola.ChannelFull, queue.Full) and "
                "isola.QueueFull is isola.ChannelFull")
            .as_bool());
  CHECK(in.eval("'QueueEmpty' in vars(isola)").as_bool());
  // A name deleted from the module comes back as the same class.
  in.exec("del isola.QueueEmpty\n");
  CHECK(in.eval("isola.QueueEmpty is isola.ChannelEmpty is type(raised)").as_bool());
  in.exec("del isola.ChannelFull\n");
  CHECK(in.eval("isola.ChannelFull is isola.QueueFull").as_bool());
  auto e = python_error_of([&] { in.eval("isola.no_such_name"); });
  REQUIRE(e);
  CHECK(e->type_name() == "AttributeError");
  CHECK(e->message() == "module 'isola' has no attribute 'no_such_name'");

  // `from isola import ...` and threads that touch them first at the same time.
  isola::interpreter other;
  other.exec("import threading\n"
             "seen = []\n"
             "def look():\n"
             "    from isola import QueueFull, ChannelEmpty\n"
             "    seen.append((QueueFull, ChannelEmpty))\n"
             "threads = [threading.Thread(target=look) for _ in range(8)]\n"
             "for t in threads: t.start()\n"
             "for t in threads: t.join()\n"
             "import isola\n");
  CHECK(other.eval("len(seen) == 8 and set(seen) == {(isola.QueueFull, isola.QueueEmpty)}")
            .as_bool());

  // `from isola import *` brings them too (__all__ lists them), and only public names.
  isola::interpreter star;
  star.exec("from isola import *\nimport isola\n");
  CHECK(star.eval("QueueEmpty is isola.QueueEmpty and ChannelFull is isola.ChannelFull and "
                  "Channel is isola.Channel and callable(select)")
            .as_bool());
  CHECK(star.eval("all(not n.startswith('_') for n in isola.__all__)").as_bool());
}

TEST_CASE("the PEP 734 queue API and the rest of Channel", "[pychannel]") {
  isola::interpreter in;
  in.exec("import isola, queue\n"
          "q = isola.Channel(3)\n"
          "q.put(1); q.put(2, block=True, timeout=1); q.put_nowait(3)\n"
          "state = [q.qsize(), q.full(), q.empty(), q.maxsize]\n"
          "got = [q.get(), q.get(block=True, timeout=1), q.get_nowait()]\n"
          "after = [q.qsize(), q.full(), q.empty()]\n"
          "sent = q.send_many([4, 5, 6])\n"
          "many = q.recv_many(10)\n"
          "q.send_many(range(3)); q.close()\n"
          "drained = list(q)\n");
  CHECK(in.eval("state").repr() == "[3, True, False, 3]");
  CHECK(in.eval("got").repr() == "[1, 2, 3]");
  CHECK(in.eval("after").repr() == "[0, False, True]");
  CHECK(in.eval("sent").as_int() == 3);
  CHECK(in.eval("many").repr() == "[4, 5, 6]");
  CHECK(in.eval("drained").repr() == "[0, 1, 2]");
  CHECK(in.eval("issubclass(isola.QueueEmpty, queue.Empty) and "
                "issubclass(isola.QueueFull, queue.Full)")
            .as_bool());
  // maxsize <= 0: unbounded, as PEP 734 (and CPython's queues: maxsize reads back as given).
  in.exec("u = isola.Channel()\n"
          "for i in range(5000): u.put_nowait(i)\n"
          "u_state = [u.maxsize, u.qsize(), u.full()]\n"
          "u_got = [u.get_nowait() for _ in range(5000)]\n"
          "n = isola.Channel(-10)\n"
          "for i in range(5000): n.put_nowait(i)\n"
          "n_state = [n.maxsize, n.qsize(), n.full()]\n"
          "named = isola.channel('pychannel-unbounded')\n"
          "named.send_many(range(5000))\n"
          "named_got = []\n"
          "while len(named_got) < 5000: named_got += named.recv_many(10000)\n");
  CHECK(in.eval("u_state").repr() == "[0, 5000, False]");
  CHECK(in.eval("u_got == list(range(5000))").as_bool());
  CHECK(in.eval("n_state").repr() == "[-10, 5000, False]");
  CHECK(in.eval("named_got == list(range(5000))").as_bool());
  CHECK(in.eval("repr(isola.Channel())").as_str().find('/') == std::string::npos);
  CHECK(error_type([&] { in.exec("q.recv_many(0)"); }) == "ValueError");
  // Bad sizes and names: errors that name the call and the argument.
  auto error_of = [&](const char* code) {
    auto e = python_error_of([&] { in.exec(code); });
    return e ? e->type_name() + ": " + e->message() : std::string("<no error>");
  };
  CHECK(error_of("isola.Channel('x')") == "TypeError: Channel: maxsize must be an int, not str");
  CHECK(error_of("isola.Channel(2**70)").starts_with("OverflowError: Channel: maxsize is out of"));
  CHECK(error_of("q.recv_many(2.0)") ==
        "TypeError: recv_many: max_items must be an int, not float");
  CHECK(error_of("q.recv_many(2**70)").starts_with("OverflowError: recv_many: max_items is"));
  CHECK(error_of("isola.channel(None)") ==
        "TypeError: isola.channel: name must be a str, not NoneType");
  CHECK(error_of("isola.channel('t-named', 'x')") ==
        "TypeError: isola.channel: maxsize must be an int, not str");
  CHECK(in.eval("isola.Channel(maxsize=8).maxsize").as_int() == 8);
  CHECK(in.eval("isola.channel(b't-bytes', 8).name").as_str() == "t-bytes");
  CHECK(in.eval("isola.channel('t-named') == isola.channel('t-named')").as_bool());
  CHECK(in.eval("isola.channel('t-named').name").as_str() == "t-named");
  CHECK(in.eval("repr(isola.Channel(2))").as_str().find("isola.Channel #") != std::string::npos);
  in.exec("r = isola.channel('t-repr', 2)\nr.send(1)\nr.close()\n");
  const std::string rep = in.eval("repr(r)").as_str();
  CHECK(rep.rfind("<isola.Channel #", 0) == 0);
  CHECK(rep.ends_with(" 't-repr' 1/2 closed>"));
}

TEST_CASE("the exceptions have PEP 734's bases, the same as CPython's queues", "[pychannel]") {
  isola::interpreter in;
  in.exec("import isola, queue\n"
          "def bases(cls):\n"
          "    return [c.__name__ for c in cls.__mro__[1:] if c not in (BaseException, object)]\n"
          "mine = {n: bases(getattr(isola, n)) for n in\n"
          "        ['QueueError', 'QueueEmpty', 'QueueFull', 'QueueNotFoundError',\n"
          "         'NotShareableError', 'ChannelClosed']}\n"
          "q = isola.Channel(1)\n"
          "q.put(1)\n"
          "caught = []\n"
          "for call in (lambda: q.put_nowait(2), lambda: (q.get_nowait(), q.get_nowait())):\n"
          "    try:\n"
          "        call()\n"
          "    except isola.QueueError as e:\n"
          "        caught.append(type(e).__name__)\n"
          "q.close()\n"
          "try:\n"
          "    q.put(3)\n"
          "except RuntimeError as e:\n"
          "    caught.append(type(e).__name__)\n");
  CHECK(in.eval("mine['QueueError']").repr() == "['RuntimeError', 'Exception']");
  CHECK(in.eval("mine['QueueEmpty']").repr() ==
        "['QueueError', 'RuntimeError', 'Empty', 'Exception']");
  CHECK(in.eval("mine['QueueFull']").repr() ==
        "['QueueError', 'RuntimeError', 'Full', 'Exception']");
  CHECK(in.eval("mine['QueueNotFoundError']").repr() ==
        "['QueueError', 'RuntimeError', 'Exception']");
  CHECK(in.eval("mine['NotShareableError']").repr() == "['ValueError', 'Exception']");
  CHECK(in.eval("mine['ChannelClosed']").repr() == "['QueueError', 'RuntimeError', 'Exception']");
  CHECK(in.eval("caught").repr() == "['QueueFull', 'QueueEmpty', 'ChannelClosed']");
  // The same bases as CPython's own classes, where this CPython has them (3.13's
  // test.support.interpreters; 3.12 has no queues module).
  in.exec("try:\n"
          "    from test.support.interpreters import queues as cq\n"
          "    import _interpreters\n"
          "except ImportError:\n"
          "    theirs = None\n"
          "else:\n"
          "    theirs = {'QueueError': bases(cq.QueueError), 'QueueEmpty': bases(cq.QueueEmpty),\n"
          "              'QueueFull': bases(cq.QueueFull),\n"
          "              'QueueNotFoundError': bases(cq.QueueNotFoundError),\n"
          "              'NotShareableError': bases(_interpreters.NotShareableError)}\n"
          "same = theirs is None or all(mine[k] == v for k, v in theirs.items())\n");
  INFO(in.eval("theirs").repr());
  CHECK(in.eval("same").as_bool());
}

TEST_CASE("a channel handle pickles, attaches by id and is listed", "[pychannel]") {
  isola::interpreter a, b;
  a.exec("import isola, pickle\n"
         "q = isola.Channel(5, pickle=False)\n"
         "data = pickle.dumps(q)\n"
         "same = pickle.loads(data)\n"
         "here = [same == q, same.id == q.id, same.maxsize, same.pickle]\n"
         "q.put('from a')\n"
         "listed = q in isola.list_channels()\n");
  CHECK(a.eval("here").repr() == "[True, True, 5, False]");
  CHECK(a.eval("listed").as_bool());
  // In another interpreter: unpickled from the bytes, or attached by id, it is the same
  // channel, with its items and settings.
  b.set_global("data", a.get_global("data"));
  b.set_global("qid", a.eval("q.id"));
  b.exec("import isola, pickle\n"
         "q = pickle.loads(data)\n"
         "got = q.get_nowait()\n"
         "by_id = isola.Channel(id=qid)\n"
         "by_id.put('from b')\n"
         "there = [got, by_id == q, by_id.maxsize, by_id.pickle, q.id == qid]\n");
  CHECK(b.eval("there").repr() == "['from a', True, 5, False, True]");
  CHECK(a.eval("q.get_nowait()").as_str() == "from b");
  // Once every handle is gone, the id names nothing.
  a.exec("del q, same");
  b.exec("del q, by_id");
  auto error_of = [&](const char* code) {
    auto e = python_error_of([&] { b.exec(code); });
    return e ? e->type_name() + ": " + e->message() : std::string("<no error>");
  };
  CHECK(error_of("pickle.loads(data)").starts_with("isola.QueueNotFoundError: Channel: no "
                                                   "channel has id"));
  CHECK(error_of("isola.Channel(id=qid)").starts_with("isola.QueueNotFoundError"));
  CHECK(error_of("isola.Channel(id=-1)").starts_with("isola.QueueNotFoundError"));
  CHECK(error_of("isola.Channel(id=2**70)").starts_with("isola.QueueNotFoundError"));
  CHECK(error_of("isola.Channel(id='1')") == "TypeError: Channel: id must be an int, not str");
  CHECK(error_of("isola.Channel(3, id=1)").starts_with("TypeError: Channel: give id alone"));
  CHECK(b.eval("all(isinstance(c, isola.Channel) for c in isola.list_channels())").as_bool());
  CHECK(b.eval("qid in [c.id for c in isola.list_channels()]").as_bool() == false);

  // A channel inside a container travels pickled, and the item keeps it alive in flight: the
  // sender's only handle is gone before the receiver unpickles it.
  auto keep = isola::channel::open("t-pickled-inside", 4);
  a.exec("link = isola.channel('t-pickled-inside')\n"
         "inner = isola.Channel(2)\n"
         "inner.put('inside')\n"
         "link.put(('reply-to', inner, [inner]))\n"
         "inner_id = inner.id\n"
         "del inner\n");
  b.exec("link = isola.channel('t-pickled-inside')\n"
         "tag, reply, [again] = link.get()\n"
         "arrived = [tag, reply.get_nowait(), reply == again, reply.maxsize]\n");
  CHECK(b.eval("arrived").repr() == "['reply-to', 'inside', True, 2]");
  CHECK(b.eval("reply.id").as_int() == a.eval("inner_id").as_int());
}

TEST_CASE("syncobj=True sends only what CPython 3.13 shares, as its queues do",
          "[pychannel]") {
  isola::interpreter in;
  in.exec("import isola\n"
          "probes = [None, True, 1, 2**70, 1.5, 'x', b'x', (1, 2), memoryview(b'ab'),\n"
          "          isola.Channel(1), [1], {1: 2}, {1}, bytearray(b'a'), 1j, ..., (1, [2])]\n"
          "mine = [isola.is_shareable(o) for o in probes]\n"
          "def refused(call):\n"
          "    try:\n"
          "        call()\n"
          "    except isola.NotShareableError as e:\n"
          "        return str(e).split(' (')[0]\n"
          "    return 'sent'\n"
          "q = isola.Channel(8)\n"
          "outcomes = [refused(lambda: q.put([1, 2, 3], syncobj=True)),\n"
          "            refused(lambda: q.put_nowait((1, [2]), syncobj=True)),\n"
          "            refused(lambda: q.put((1, 'a', b'b'), syncobj=True)),\n"
          "            refused(lambda: q.put([4], syncobj=False)),\n"
          "            refused(lambda: q.put([5]))]\n"
          "got = [q.get_nowait() for _ in range(3)]\n"
          // A channel made with syncobj=True refuses by default, on every handle to it.
          "strict = isola.Channel(4, syncobj=True)\n"
          "again = isola.Channel(id=strict.id)\n"
          "defaults = [refused(lambda: again.put({'k': 1})),\n"
          "            refused(lambda: again.put_nowait({'k': 1}, syncobj=False)),\n"
          "            refused(lambda: strict.put(('ok',)))]\n");
  CHECK(in.eval("mine").repr() ==
        "[True, True, True, True, True, True, True, True, True, True, "
        "False, False, False, False, False, False, False]");
  CHECK(in.eval("outcomes").repr() ==
        "['[1, 2, 3] does not support cross-interpreter data', "
        "'[2] does not support cross-interpreter data', 'sent', 'sent', 'sent']");
  CHECK(in.eval("got").repr() == "[(1, 'a', b'b'), [4], [5]]");
  CHECK(in.eval("defaults").repr() ==
        "[\"{'k': 1} does not support cross-interpreter data\", 'sent', 'sent']");
  // CPython's own answers where this CPython has them: the same, except that 3.13 calls a
  // tuple shareable whatever it holds (its put then refuses the inner list, as here).
  in.exec("try:\n"
          "    import _interpreters\n"
          "except ImportError:\n"
          "    same = True\n"
          "else:\n"
          "    theirs = [_interpreters.is_shareable(o) for o in probes[:-1]]\n"
          "    same = theirs[:9] == mine[:9] and theirs[10:] == mine[10:-1]\n");
  CHECK(in.eval("same").as_bool());
}

TEST_CASE("send_many / recv_many keep every kind of item, in order", "[pychannel]") {
  // recv_many turns ints into Python ints straight from the ring and converts the others
  // afterwards; the list must come out in order whatever the mix.
  isola::interpreter in;
  in.exec("import isola\n"
          "class Point:\n"
          "    def __init__(self, x): self.x = x\n"
          "    def __eq__(self, o): return isinstance(o, Point) and o.x == self.x\n"
          "big = b'z' * 100_000\n"
          "items = [1, 'a', 2**70, -2**63, 2**63 - 1, None, 2.5, (1, [2]), big, Point(3),\n"
          "         {'k': -7}, True, 0]\n"
          "q = isola.Channel(64)\n"
          "q.send_many(items)\n"
          "got = q.recv_many(100)\n"
          "same = got[:8] + got[9:] == items[:8] + items[9:]\n"
          "big_ok = bytes(got[8]) == big\n"
          "types_ok = [type(x).__name__ for x in got[:3]] == ['int', 'str', 'int']\n"
          "q = isola.Channel(8192)\n"
          "q.send_many(range(5000))\n"
          "first = q.recv_many(10_000)\n"
          "rest = q.recv_many(10_000, timeout=0) if len(first) < 5000 else []\n"
          "counts = len(first) + len(rest)\n"
          "in_order = first + rest == list(range(5000))\n");
  // Ranges are read from their bounds (big bounds go the general way); a length hint that
  // lies is only a hint.
  in.exec("class Liar:\n"
          "    def __iter__(self): return iter([1, 2, 3])\n"
          "    def __length_hint__(self): return 10**15\n"
          "r = isola.Channel(64)\n"
          "ranges = [range(-5, 20, 3), range(10, -10, -7), range(0), range(2**70, 2**70 + 3),\n"
          "          range(2**63 - 3, 2**63 - 1)]\n"
          "ranges_ok = all(r.send_many(x) == len(x) and\n"
          "                (len(x) == 0 or r.recv_many(100) == list(x)) for x in ranges)\n"
          "liar_ok = r.send_many(Liar()) == 3 and r.recv_many(10) == [1, 2, 3]\n");
  CHECK(in.eval("ranges_ok").as_bool());
  CHECK(in.eval("liar_ok").as_bool());
  // Stopped early, send_many's exception says how many items went in.
  in.exec("small = isola.Channel(4)\n"
          "try:\n"
          "    small.send_many(range(10), timeout=0.05)\n"
          "except TimeoutError as e:\n"
          "    timed_out = e.sent\n"
          "small.close()\n"
          "try:\n"
          "    small.send_many([1, 2])\n"
          "except isola.ChannelClosed as e:\n"
          "    closed = e.sent\n"
          "kept = small.recv_many(10)\n");
  CHECK(in.eval("timed_out").as_int() == 4);
  CHECK(in.eval("closed").as_int() == 0);
  CHECK(in.eval("kept").repr() == "[0, 1, 2, 3]");
  CHECK(in.eval("same").as_bool());
  CHECK(in.eval("big_ok").as_bool());
  CHECK(in.eval("types_ok").as_bool());
  // max_items above what is there: everything that is there, over one or two calls.
  CHECK(in.eval("counts").as_int() == 5000);
  CHECK(in.eval("in_order").as_bool());
}

TEST_CASE("recv_many on a receiving side this thread owns: runs of ints and the rest, in order",
          "[pychannel]") {
  // After a streak of receives by one thread the receiving side is biased to it (ring.hpp),
  // and recv_many takes runs of ints in one pass over the slots; anything else in the run goes
  // the general way, in the same call.
  isola::interpreter in;
  in.exec("import isola\n"
          "q = isola.Channel(64)\n"
          "for i in range(600):\n"
          "    q.send_many([i])\n"
          "    assert q.recv_many(1) == [i]\n"
          "items = [1, 2, 3, 'a', 4, 2**70, 5, None, 6.5, -2**63, 7]\n"
          "q.send_many(items)\n"
          "mixed = q.recv_many(100)\n"
          "q.send_many(range(50))\n"  // the head is at 600 + 11 = 611, index 35: 50 wrap
          "wrapped = q.recv_many(45) + q.recv_many(45)\n"
          "q.send_many(range(-3, 3))\n"
          "q.send('end')\n"
          "tail = q.recv_many(4) + q.recv_many(100)\n");
  CHECK(in.eval("mixed == items").as_bool());
  CHECK(in.eval("[type(x).__name__ for x in mixed[:4]] == ['int', 'int', 'int', 'str']")
            .as_bool());
  CHECK(in.eval("wrapped == list(range(50))").as_bool());
  CHECK(in.eval("tail == list(range(-3, 3)) + ['end']").as_bool());
  CHECK(in.eval("q.qsize()").as_int() == 0);
}

TEST_CASE("select returns the first channel with an item", "[pychannel][concurrent]") {
  auto keep_a = isola::channel::open("t-sel-a", 4);
  auto keep_b = isola::channel::open("t-sel-b", 4);
  isola::interpreter in, other;
  in.exec("import isola, time\na = isola.channel('t-sel-a'); b = isola.channel('t-sel-b')\n");
  CHECK(in.eval("isola.select([a, b], timeout=0.1) is None").as_bool());
  auto later = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(100ms);
    other.exec("import isola\nisola.channel('t-sel-b').send('x')");
  });
  CHECK(in.eval("isola.select([a, b]) is b").as_bool());
  later.get();
  CHECK(in.eval("b.recv()").as_str() == "x");
  in.exec("a.send(1); b.send(2)");
  CHECK(in.eval("isola.select([b, a]) is b").as_bool());  // order given decides
  CHECK(error_type([&] { in.exec("isola.select([a, 5])"); }) == "TypeError");
  CHECK(error_type([&] { in.exec("isola.select([])"); }) == "ValueError");
  // A channel in place of the list is refused, not iterated, which would take its items (and
  // wait for more until it is closed: closed here, so that a regression fails, not hangs).
  in.exec("c = isola.Channel(4)\nc.send(7)\nc.close()\n");
  CHECK(error_type([&] { in.exec("isola.select(c)"); }) == "TypeError");
  CHECK(error_type([&] { in.exec("isola.select(c, timeout=0)"); }) == "TypeError");
  CHECK(in.eval("c.qsize()").as_int() == 1);
  CHECK(in.eval("c.recv()").as_int() == 7);
}

TEST_CASE("a blocked recv releases the GIL: other threads of the interpreter run",
          "[pychannel][concurrent]") {
  isola::interpreter in;
  in.exec("import isola, threading, time\n"
          "ch = isola.Channel()\n"
          "got = []\n"
          "t = threading.Thread(target=lambda: got.append(ch.recv(timeout=10)))\n"
          "t.start()\n"
          "time.sleep(0.05)\n"
          "n = 0\n"
          "deadline = time.monotonic() + 0.3\n"
          "while time.monotonic() < deadline:\n"
          "    n += 1\n"
          "ch.send('x')\n"
          "t.join()\n");
  // With the GIL held by the waiting thread, the loop could not run until recv timed out.
  CHECK(in.eval("n").as_int() > 10'000);
  CHECK(in.eval("got").repr() == "['x']");
}

TEST_CASE("a pool timeout and cancel() end a task blocked on recv", "[pychannel][concurrent]") {
  auto keep = isola::channel::open("t-pool-wait", 4);
  isola::pool_options o;
  o.size = 1;
  o.sys_path = {py_dir()};
  isola::pool p(o);
  isola::task_options t;
  t.timeout = 200ms;
  auto f = p.submit_with("isola_test_channel:recv_with_timeout", {value("t-pool-wait"), value()},
                         {}, t);
  auto e = python_error_of([&] { f.get(); });
  REQUIRE(e);
  CHECK(e->type_name() == "TimeoutError");
  // The interpreter serves the next task, and a later recv is not interrupted by a stale flag.
  REQUIRE(keep.try_send(isola::message(value(7))).has_value());
  CHECK(p.submit("isola_test_channel:recv_with_timeout", "t-pool-wait", 5.0).get().as_int() == 7);

  auto g = p.submit("isola_test_channel:recv_with_timeout", "t-pool-wait", value());
  std::this_thread::sleep_for(100ms);
  CHECK(g.cancel());
  auto code = isola_error_of([&] { g.get(); });
  REQUIRE(code);
  CHECK(*code == isola::errc::cancelled);
  CHECK(p.stats().interpreters.at(0).replaced_broken == 0);
}

TEST_CASE("KeyboardInterrupt ends a wait in the main interpreter", "[pychannel][concurrent]") {
  auto g = isola::attach(rt().main_interpreter());
  REQUIRE(g.has_value());
  PyObject* globals = PyDict_New();
  PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins());
  std::thread interrupter([] {
    std::this_thread::sleep_for(200ms);
    PyErr_SetInterrupt();  // what Ctrl-C does; needs no GIL
  });
  PyObject* r = PyRun_String(
      "import isola, signal, time\n"
      "old = signal.signal(signal.SIGINT, signal.default_int_handler)\n"
      "t0 = time.monotonic()\n"
      "try:\n"
      "    isola.Channel().recv(timeout=30)\n"
      "    outcome = 'returned'\n"
      "except KeyboardInterrupt:\n"
      "    outcome = 'interrupted'\n"
      "finally:\n"
      "    signal.signal(signal.SIGINT, old if old is not None else signal.SIG_DFL)\n"
      "elapsed = time.monotonic() - t0\n",
      Py_file_input, globals, globals);
  interrupter.join();
  if (r == nullptr) PyErr_Print();
  REQUIRE(r != nullptr);
  Py_DECREF(r);
  PyObject* outcome = PyDict_GetItemString(globals, "outcome");
  REQUIRE(outcome != nullptr);
  CHECK(std::string(PyUnicode_AsUTF8(outcome)) == "interrupted");
  CHECK(PyFloat_AsDouble(PyDict_GetItemString(globals, "elapsed")) < 10.0);
  Py_DECREF(globals);
}

TEST_CASE("an interpreter that ends while it waits on a channel", "[pychannel][concurrent]") {
  auto keep = isola::channel::open("t-end-wait", 4);
  isola::interpreter in;
  // Its worker waits, and so does one of its own Python threads (non-daemon: ending the
  // interpreter joins it).
  in.exec("import isola, threading\n"
          "ch = isola.channel('t-end-wait')\n"
          "seen = []\n"
          "def wait():\n"
          "    try:\n"
          "        ch.recv()\n"
          "    except isola.ChannelClosed as e:\n"
          "        seen.append(str(e))\n"
          "t = threading.Thread(target=wait); t.start()\n");
  auto f = in.exec_async("ch.recv()");
  std::this_thread::sleep_for(100ms);
  in.close();  // returns: both waits end
  auto e = python_error_of([&] { f.get(); });
  REQUIRE(e);
  CHECK(e->type_name() == "isola.ChannelClosed");
  CHECK(e->message().find("closing") != std::string::npos);
  CHECK_FALSE(keep.closed());  // the channel itself is fine
}

TEST_CASE("items stay valid after the interpreter that sent them has ended", "[pychannel]") {
  auto ch = isola::channel::open("t-end-items", 16);
  {
    isola::interpreter sender;
    sender.exec("import sys; sys.path.insert(0, " + value(py_dir()).repr() + ")\n"
                "import isola, isola_test_channel as h\n"
                "ch = isola.channel('t-end-items')\n"
                "big = bytes(range(256)) * 4096\n"  // 1 MiB: shared, not copied
                "ch.send(41)\n"
                "ch.send(big)\n"
                "ch.send(h.Point(1, 2))\n"
                "ch.send(big)\n"
                "del big\n");
  }  // the sender ends with its items queued
  auto first = ch.try_recv();
  REQUIRE(first.has_value());
  CHECK(first->as_value()->as_int() == 41);
  auto buf = ch.try_recv();
  REQUIRE(buf.has_value());
  REQUIRE(buf->is_buffer());
  auto bytes = buf->as_buffer()->bytes();
  REQUIRE(bytes.size() == 1u << 20);
  CHECK(std::to_integer<int>(bytes[255]) == 255);
  CHECK(std::to_integer<int>(bytes[(1u << 20) - 1]) == 255);
  CHECK(std::to_integer<int>(bytes[256]) == 0);
  auto pickled = ch.try_recv();
  REQUIRE(pickled.has_value());
  CHECK(pickled->is_pickled());
  // Another interpreter receives the second copy of the buffer after the sender has gone.
  isola::interpreter receiver;
  receiver.exec("import isola\ngot = isola.channel('t-end-items').recv()\n");
  CHECK(receiver.eval("type(got) is bytes and len(got) == 1 << 20").as_bool());
  CHECK(receiver.eval("got[:4] == bytes([0, 1, 2, 3]) and got[-1] == 255").as_bool());
  receiver.exec("del got");
}

TEST_CASE("a memoryview arrives as a memoryview of the sender's memory; bytes as bytes",
          "[pychannel]") {
  auto keep = isola::channel::open("t-zero-copy", 4);
  isola::interpreter a, b;
  a.exec("import isola\n"
         "data = b'\\x01' * (100 << 20)\n"
         "addr = isola._buffer_address(data)\n");
  auto before = rss_bytes();
  a.exec("isola.channel('t-zero-copy').send(memoryview(data))");
  b.exec("import isola\n"
         "mv = isola.channel('t-zero-copy').recv()\n"
         "last = mv[-1]\n");
  auto after = rss_bytes();
  CHECK(b.eval("isola._buffer_address(mv)").repr() == a.eval("addr").repr());
  CHECK(b.eval("type(mv) is memoryview and mv.readonly and len(mv) == 100 << 20").as_bool());
  CHECK(b.eval("last").as_int() == 1);
  CHECK(error_type([&] { b.exec("mv[0] = 2"); }) == "TypeError");
  // A copy would add 100 MB of resident memory.
  CHECK(after < before + (20u << 20));
  // A slice of a memoryview is shared too.
  a.exec("isola.channel('t-zero-copy').send(memoryview(data)[10:])");
  CHECK(b.eval("isola._buffer_address(isola.channel('t-zero-copy').recv())").repr() ==
        a.eval("addr + 10").repr());
  b.exec("del mv");

  // Bytes arrive as bytes, whatever their size (CPython's queues do the same). In flight they
  // share the sender's memory (a C++ receiver sees it); the receiver gets its own copy.
  a.exec("isola.channel('t-zero-copy').send(data)");
  auto in_flight = keep.try_recv();
  REQUIRE(in_flight.has_value());
  REQUIRE(in_flight->is_buffer());
  CHECK(reinterpret_cast<std::uintptr_t>(in_flight->as_buffer()->data()) ==
        static_cast<std::uintptr_t>(a.eval("addr").as_int()));
  a.exec("isola.channel('t-zero-copy').send(data)");
  b.exec("got = isola.channel('t-zero-copy').recv()");
  CHECK(b.eval("type(got) is bytes and len(got) == 100 << 20 and got[-1] == 1").as_bool());
  CHECK(b.eval("isola._buffer_address(got)").repr() != a.eval("addr").repr());
  b.exec("del got");
  // Received where they were sent, they are the sender's object itself (bytes are immutable).
  a.exec("isola.channel('t-zero-copy').send(data)\n"
         "same = isola.channel('t-zero-copy').recv() is data\n"
         "small = isola.channel('t-zero-copy')\n"
         "small.send(b'xy'); small_back = small.recv()\n");
  CHECK(a.eval("same").as_bool());
  CHECK(a.eval("small_back").repr() == "b'xy'");
}

TEST_CASE("an item that cannot be converted in recv_many loses nothing else", "[pychannel]") {
  // Unpickling a Boom raises. The items before it come back first, its error is raised by the
  // next receive on that handle, and the items after it follow, in order.
  isola::interpreter in;
  in.exec("import isola, threading\n"
          "def fail(msg): raise ValueError(msg)\n"
          "class Boom:\n"
          "    def __reduce__(self): return (fail, ('boom',))\n"
          "def drain(q, n):\n"
          "    out = []\n"
          "    while len(out) < n:\n"
          "        try:\n"
          "            out.extend(q.recv_many(10, timeout=5))\n"
          "        except ValueError as e:\n"
          "            out.append('error: ' + str(e))\n"
          "    return out\n"
          "q = isola.Channel(64)\n"
          "q.send_many([1, 'a', Boom(), 2, 'b', 3])\n"
          "first = q.recv_many(10)\n"
          "held = q.qsize()\n"
          "other = isola.Channel(4)\n"
          "ready = isola.select([other, q], timeout=0) is q\n"
          "rest = drain(q, 4)\n"
          "empty_after = q.empty()\n");
  CHECK(in.eval("first").repr() == "[1, 'a']");
  CHECK(in.eval("held").as_int() == 4);  // the error and three items
  CHECK(in.eval("ready").as_bool());
  CHECK(in.eval("rest").repr() == "['error: boom', 2, 'b', 3]");
  CHECK(in.eval("empty_after").as_bool());

  // The first item fails: the error now, then recv() and recv_many() get the rest.
  in.exec("q.send_many([Boom(), 5, 6, 7])\n"
          "try:\n"
          "    q.recv_many(10)\n"
          "    raised = False\n"
          "except ValueError:\n"
          "    raised = True\n"
          "after = [q.recv(), q.recv_many(1), q.recv_many(10)]\n");
  CHECK(in.eval("raised").as_bool());
  CHECK(in.eval("after").repr() == "[5, [6], [7]]");

  // The same when recv_many had to wait for the items.
  in.exec("w = isola.Channel(64)\n"
          "t = threading.Timer(0.05, lambda: w.send_many([8, Boom(), 9, 10]))\n"
          "t.start()\n"
          "waited = drain(w, 4)\n"
          "t.join()\n");
  CHECK(in.eval("waited").repr() == "[8, 'error: boom', 9, 10]");
}

TEST_CASE("other objects are pickled; a channel with pickling off refuses them",
          "[pychannel]") {
  isola::interpreter a, b;
  for (auto* in : {&a, &b}) {
    in->exec("import sys; sys.path.insert(0, " + value(py_dir()).repr() + ")\n"
             "import isola, isola_test_channel as h\n");
  }
  auto keep = isola::channel::open("t-pickle", 8);
  a.exec("ch = isola.channel('t-pickle')\n"
         "ch.send(h.Point(3, 4))\n"
         "ch.send({1, 2, 3})\n"
         "ch.send(bytearray(range(256)) * 1024)\n"  // 256 KiB: an out-of-band buffer
         "ch.send([h.Point(1, 1), 'mixed'])\n");
  b.exec("ch = isola.channel('t-pickle')\ngot = [ch.recv() for _ in range(4)]\n");
  CHECK(b.eval("got[0] == h.Point(3, 4) and type(got[0]) is h.Point").as_bool());
  CHECK(b.eval("got[1] == {1, 2, 3}").as_bool());
  CHECK(b.eval("type(got[2]) is bytearray and got[2] == bytearray(range(256)) * 1024").as_bool());
  CHECK(b.eval("got[3] == [h.Point(1, 1), 'mixed']").as_bool());

  a.exec("strict = isola.Channel(pickle=False)\n");
  CHECK_FALSE(a.eval("strict.pickle").as_bool());
  auto e = python_error_of([&] { a.exec("strict.send(h.Point(1, 2))"); });
  REQUIRE(e);
  CHECK(e->type_name() == "TypeError");
  CHECK(e->message().find("'Point'") != std::string::npos);
  e = python_error_of([&] { a.exec("strict.send({1})"); });
  REQUIRE(e);
  CHECK(e->message().find("'set'") != std::string::npos);
  a.exec("strict.send((1, 'plain values are fine'))");
  CHECK(a.eval("strict.recv()").repr() == "(1, 'plain values are fine')");
}

TEST_CASE("pickling failures keep pickle's exception and say why pickle was involved",
          "[pychannel]") {
  auto keep = isola::channel::open("t-pickle-fail", 8);
  isola::interpreter a, b;
  const std::string catcher =
      "import isola\n"
      "def failure(fn):\n"
      "    try:\n"
      "        fn()\n"
      "    except Exception as e:\n"
      "        return [type(e).__name__, ' '.join(getattr(e, '__notes__', []))]\n"
      "    return ['no error', '']\n"
      "ch = isola.channel('t-pickle-fail')\n";
  a.exec(catcher);
  b.exec(catcher);
  // Sending: a lambda cannot be pickled; pickle's own exception type is kept (_pickle raises
  // AttributeError, the pure-Python pickle used on 3.12.0-3.12.3 PicklingError).
  auto r = a.eval("failure(lambda: ch.send(lambda: 1))").as_list().items;
  CHECK((r[0].as_str() == "AttributeError" || r[0].as_str() == "PicklingError"));
  CHECK(r[1].as_str().find("type 'function'") != std::string::npos);
  CHECK(r[1].as_str().find("pickling failed") != std::string::npos);
  CHECK(a.eval("ch.qsize()").as_int() == 0);  // nothing half-sent
  // Receiving: a class that exists only in the sender's __main__.
  a.exec("class OnlyHere:\n    pass\nch.send(OnlyHere())\nch.send('next')\n");
  r = b.eval("failure(ch.recv)").as_list().items;
  CHECK(r[0].as_str() == "AttributeError");
  CHECK(r[1].as_str().find("could not be unpickled in this one") != std::string::npos);
  CHECK(r[1].as_str().find("__main__") != std::string::npos);
  CHECK(b.eval("ch.recv()").as_str() == "next");  // the channel goes on
  // A container holding something that is not plain: the note says what and where, rather
  // than calling the tuple itself "not a plain value"; a channel in it is not the culprit
  // (channels pickle).
  r = a.eval("failure(lambda: ch.send((isola.Channel(), 1, lambda: 1)))").as_list().items;
  CHECK(r[1].as_str().find("item[2] is an object of type 'function'") != std::string::npos);
  CHECK(r[1].as_str().find("type 'tuple' is not a plain value") == std::string::npos);
  r = a.eval("failure(lambda: ch.send({'k': [0, lambda: 1]}))").as_list().items;
  CHECK(r[1].as_str().find("item['k'][1] is an object of type 'function'") != std::string::npos);
}

TEST_CASE("a bound whose ring cannot be allocated is a clear MemoryError", "[pychannel]") {
  // The ring is allocated whole: Channel(maxsize=10**12) would need 64 TB; the error says so
  // rather than "std::bad_alloc".
  isola::interpreter in;
  in.exec("import isola\n"
          "def failure(make):\n"
          "    try:\n"
          "        make()\n"
          "    except Exception as e:\n"
          "        return [type(e).__name__, str(e)]\n"
          "    return ['no error', '']\n");
  for (const char* call : {"isola.Channel(maxsize=10**12)", "isola.channel('t-huge', 10**12)"}) {
    auto r = in.eval(std::string("failure(lambda: ") + call + ")").as_list().items;
    INFO(call << ": " << r[1].as_str());
    CHECK(r[0].as_str() == "MemoryError");
    CHECK(r[1].as_str().find("maxsize=1000000000000") != std::string::npos);
    CHECK(r[1].as_str().find("is allocated up front") != std::string::npos);
    CHECK(r[1].as_str().find("use a smaller capacity") != std::string::npos);
  }
  CHECK(in.eval("isola.Channel(maxsize=1000).maxsize").as_int() == 1000);
}

TEST_CASE("channels can be weakly referenced", "[pychannel]") {
  isola::interpreter in;
  in.exec("import isola, weakref, gc\n"
          "ch = isola.Channel(4)\n"
          "r = weakref.ref(ch)\n"
          "cache = weakref.WeakValueDictionary(jobs=ch)\n"
          "alive = r() is ch and cache['jobs'] is ch\n"
          "finalized = []\n"
          "weakref.finalize(ch, finalized.append, 'done')\n"
          "del ch\n"
          "gc.collect()\n");
  CHECK(in.eval("alive").as_bool());
  CHECK(in.eval("r() is None and 'jobs' not in cache and finalized == ['done']").as_bool());
}

TEST_CASE("a channel sent through a channel is the same channel", "[pychannel]") {
  auto keep = isola::channel::open("t-chan-chan", 4);
  isola::interpreter a, b;
  a.exec("import isola\n"
         "inner = isola.Channel(8, pickle=False)\n"
         "isola.channel('t-chan-chan').send(inner)\n"
         "inner.send('through')\n");
  b.exec("import isola\nc = isola.channel('t-chan-chan').recv()\n");
  CHECK(b.eval("c.recv()").as_str() == "through");
  CHECK(b.eval("c.id").repr() == a.eval("inner.id").repr());
  CHECK_FALSE(b.eval("c.pickle").as_bool());
  // And C++ sees a channel_ref.
  a.exec("isola.channel('t-chan-chan').send(inner)");
  auto m = keep.try_recv();
  REQUIRE(m.has_value());
  REQUIRE(m->is_channel());
  isola::channel inner(*m->as_channel());
  CHECK(std::to_string(inner.id()) == a.eval("inner.id").repr());
}

TEST_CASE("isola.queues has CPython 3.14's queue API on isola's channels", "[pychannel]") {
  isola::interpreter in;
  in.exec("import isola, pickle, queue\n"
          "from isola import queues\n"
          "import isola.queues as dotted\n"
          "q = queues.create()\n"
          "same = [queues.Queue(q.id) is q, dotted is queues, pickle.loads(pickle.dumps(q)) is q,\n"
          "        any(x is q for x in queues.list_all()), repr(q) == f'Queue({q.id})',\n"
          "        hash(q) == hash(q.id), q.maxsize, q.unbounditems is queues.UNBOUND]\n"
          "for i in range(5000): q.put_nowait(i)\n"
          "state = [q.qsize(), q.full(), q.empty()]\n"
          "got = [q.get() for _ in range(4999)] + [q.get_nowait()]\n"
          "b = queues.create(2, unbounditems=queues.UNBOUND_ERROR)\n"
          "b.put(1); b.put(2, timeout=0.01)\n"
          "b_state = [b.maxsize, b.full(), b.unbounditems is queues.UNBOUND_ERROR]\n"
          "n = queues.create(-10)\n"
          "bases = [issubclass(queues.QueueEmpty, (queues.QueueError, queue.Empty)),\n"
          "         issubclass(queues.QueueFull, (queues.QueueError, queue.Full)),\n"
          "         issubclass(queues.QueueError, RuntimeError),\n"
          "         issubclass(queues.QueueNotFoundError, queues.QueueError),\n"
          "         issubclass(queues.ItemInterpreterDestroyed, queues.QueueError)]\n"
          "names = sorted(queues.__all__)\n");
  CHECK(in.eval("same").repr() == "[True, True, True, True, True, True, 0, True]");
  CHECK(in.eval("state").repr() == "[5000, False, False]");
  CHECK(in.eval("got == list(range(5000))").as_bool());
  CHECK(in.eval("b_state").repr() == "[2, True, True]");
  CHECK(in.eval("n.maxsize").as_int() == -10);
  CHECK(in.eval("bases").repr() == "[True, True, True, True, True]");
  CHECK(in.eval("names").repr() ==
        "['ItemInterpreterDestroyed', 'Queue', 'QueueEmpty', 'QueueError', 'QueueFull', "
        "'QueueNotFoundError', 'UNBOUND', 'UNBOUND_ERROR', 'UNBOUND_REMOVE', 'create', "
        "'list_all']");
  CHECK(error_type([&] { in.exec("b.put_nowait(3)"); }) == "isola.QueueFull");
  CHECK(error_type([&] { in.exec("b.put(3, timeout=0.01)"); }) == "isola.QueueFull");
  CHECK(error_type([&] { in.exec("q.get_nowait()"); }) == "isola.QueueEmpty");
  CHECK(error_type([&] { in.exec("q.get(timeout=0.01)"); }) == "isola.QueueEmpty");
  CHECK(error_type([&] { in.exec("q.get(timeout=-1)"); }) == "ValueError");
  CHECK(error_type([&] { in.exec("q.put(1, timeout=-1)"); }) == "ValueError");
  CHECK(error_type([&] { in.exec("queues.Queue('1')"); }) == "TypeError");
  CHECK(error_type([&] { in.exec("queues.Queue(10**12)"); }) == "isola.QueueNotFoundError");
  CHECK(error_type([&] { in.exec("queues.create(syncobj=True)"); }) == "TypeError");
  CHECK(error_type([&] { in.exec("q.put(1, unbounditems=42)"); }) == "NotImplementedError");
  CHECK(error_type([&] { in.exec("queues.UnboundItem") ; }) == "AttributeError");
  CHECK(in.eval("repr(queues.UNBOUND)").as_str() == "isola.UNBOUND");
}

TEST_CASE("items put with unbounditems follow PEP 734 once the interpreter that put them ends",
          "[pychannel]") {
  isola::interpreter reader;
  reader.exec("import isola\n"
              "from isola import queues\n"
              "q = queues.create()\n"
              "ch = isola.Channel()\n"
              "qid, chid = q.id, ch.id\n");
  const std::int64_t qid = reader.eval("qid").as_int();
  const std::int64_t chid = reader.eval("chid").as_int();
  {
    isola::interpreter writer;
    writer.exec("import isola\n"
                "from isola import queues\n"
                "q = queues.Queue(" + std::to_string(qid) + ")\n"
                "ch = isola.Channel(id=" + std::to_string(chid) + ")\n"
                "q.put('replaced', unbounditems=queues.UNBOUND)\n"
                "q.put('error', unbounditems=queues.UNBOUND_ERROR)\n"
                "q.put('removed', unbounditems=queues.UNBOUND_REMOVE)\n"
                "q.put('default')\n"  // the queue's default: UNBOUND
                "q.put_nowait('removed too', unbounditems=queues.UNBOUND_REMOVE)\n"
                "q.put('last', unbounditems=queues.UNBOUND_REMOVE)\n"
                "ch.put('kept')\n"  // isola.Channel's default: the item outlives its interpreter
                "ch.put('kept too', unbounditems=None)\n"
                "ch.put(0, unbounditems=isola.UNBOUND_REMOVE)\n"
                "ch.put(1, unbound=isola.UNBOUND_REMOVE)\n"  // CPython 3.13's name
                "ch.put_nowait(2, syncobj=True, unbound=isola.UNBOUND_REMOVE)\n"
                "ch.put('after the removed')\n"
                "ch.put('alive', unbounditems=isola.UNBOUND_ERROR)\n");
    // While the writer lives, a bound item arrives as it was put.
    writer.exec("ch.put('seen alive', unbounditems=isola.UNBOUND_ERROR)");
    CHECK(reader.eval("ch.qsize()").as_int() == 8);
    reader.exec("first = ch.get()\n");
    CHECK(reader.eval("first").as_str() == "kept");
    writer.close();
  }
  reader.exec("got = [q.get() is queues.UNBOUND]\n"
              "try:\n"
              "    q.get()\n"
              "    got.append('no error')\n"
              "except queues.ItemInterpreterDestroyed as e:\n"
              "    got.append(str(e))\n"
              "got.append(q.get() is queues.UNBOUND)\n"  // 'removed' is skipped
              "got.append(q.qsize())\n"
              "try:\n"
              "    q.get(timeout=0.05)\n"  // 'removed too' and 'last' skipped: then empty
              "except queues.QueueEmpty:\n"
              "    got.append('empty')\n"
              "rest = ch.recv_many(100)\n"  // the removed ones are skipped
              "errors = []\n"
              "for _ in range(2):\n"
              "    try:\n"
              "        ch.get_nowait()\n"
              "    except isola.ItemInterpreterDestroyed as e:\n"
              "        errors.append(str(e))\n"
              "left = ch.qsize()\n");
  CHECK(reader.eval("got").repr() ==
        "[True, \"item's original interpreter destroyed\", True, 2, 'empty']");
  // recv_many returns what comes before the item that fails; the next receives raise.
  CHECK(reader.eval("rest").repr() == "['kept too', 'after the removed']");
  CHECK(reader.eval("errors").repr() ==
        "[\"item's original interpreter destroyed\", \"item's original interpreter destroyed\"]");
  CHECK(reader.eval("left").as_int() == 0);
  CHECK(error_type([&] { reader.exec("ch.put(1, unbounditems=None, unbound=None)"); }) ==
        "TypeError");
}

TEST_CASE("isola's Python submodules import every way, as one module each", "[pychannel]") {
  isola::interpreter in;
  in.exec("import sys\n"
          "import isola.interpreters\n"  // before any other use
          "import isola.queues\n"
          "import isola\n"
          "from isola import queues, interpreters\n"
          "same = [isola.queues is queues is sys.modules['isola.queues'],\n"
          "        isola.interpreters is interpreters is sys.modules['isola.interpreters'],\n"
          "        'queues' in dir(isola), 'interpreters' in dir(isola)]\n");
  CHECK(in.eval("same").repr() == "[True, True, True, True]");
  CHECK(error_type([&] { in.exec("import isola.nothing_here"); }) == "ModuleNotFoundError");
}
