// CPython's own-GIL teardown crashes and isola's workarounds: the accelerator modules blocked
// on affected versions, and the real stdlib modules (datetime, sqlite3, ...) used in several
// interpreters that then end in creation order, the order CPython 3.13.0 handles worst. The
// crash-prone runs are repeated in isola_test_child, where a crash is reported as a signal.
#include "lib/python.hpp"
#include "lib/workarounds.hpp"

#include <catch2/catch.hpp>

#include "test/support.hpp"

#include <memory>

using namespace isola_test;
using isola::value;

namespace {

bool workaround_applies(const std::string& module) {
  for (const auto& w : isola::detail::module_workarounds()) {
    if (module == w.module) return true;
  }
  return false;
}

// n own-GIL interpreters, ended in creation order by end_in_creation_order() (or by the
// destructor, newest first, if a check threw first).
struct several {
  std::vector<std::unique_ptr<isola::interpreter>> interps;
  explicit several(int n) {
    for (int i = 0; i < n; ++i) interps.push_back(std::make_unique<isola::interpreter>());
  }
  ~several() {
    while (!interps.empty()) interps.pop_back();
  }
  void end_in_creation_order() {
    for (auto& in : interps) in.reset();
    interps.clear();
  }
};

const char* const datetime_code =
    "import datetime, sys\n"
    "now = datetime.datetime.now()\n"
    "day = datetime.timedelta(days=1)\n"
    "assert datetime.datetime(2020, 2, 28) + 2 * day == datetime.datetime(2020, 3, 1)\n"
    "assert (now + day) - now == day\n"
    "iso = datetime.datetime(2021, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc).isoformat()\n"
    "parsed = datetime.datetime.strptime('2022-03-04', '%Y-%m-%d').date().isoformat()\n"
    "impl = type(datetime.datetime(2020, 1, 1)).__module__\n";

const char* const sqlite_code =
    "import sqlite3\n"
    "con = sqlite3.connect(':memory:')\n"
    "con.execute('create table t (k integer primary key, v text)')\n"
    "con.executemany('insert into t (v) values (?)', [(str(i),) for i in range(100)])\n"
    "rows = con.execute('select count(*), sum(k) from t').fetchone()\n"
    "con.create_function('twice', 1, lambda x: 2 * x)\n"
    "twice = con.execute('select twice(21)').fetchone()[0]\n"
    "open_con = sqlite3.connect(':memory:')  # left open for teardown to close\n"
    "con.close()\n";

// Extension modules most programs meet, used lightly. CPython 3.12 refuses _ctypes and
// _elementtree in isolated interpreters, and 3.12.0-3.12.3 crash in Py_Finalize after
// keyword arguments reached hashlib/ssl/asyncio C functions there (gh-119213, nothing isola
// can do): those parts run where they work.
const char* const stdlib_code =
    "import sys\n"
    "import array, bz2, decimal, json, lzma, mmap, pickle, re, select\n"
    "import socket, sqlite3, statistics, struct, unicodedata, uuid, zlib\n"
    "import datetime, zoneinfo, _multibytecodec\n"
    "assert datetime.datetime(2020, 1, 1, tzinfo=zoneinfo.ZoneInfo('UTC')).utcoffset() == "
    "datetime.timedelta(0)\n"
    "assert str(decimal.Decimal(1) / 8) == '0.125'\n"
    "assert pickle.loads(pickle.dumps({1: (2, 3)})) == {1: (2, 3)}\n"
    "assert zlib.decompress(zlib.compress(b'abc' * 10)) == b'abc' * 10\n"
    "assert bz2.decompress(bz2.compress(b'abc')) == b'abc'\n"
    "assert lzma.decompress(lzma.compress(b'abc')) == b'abc'\n"
    "assert unicodedata.name('\\u00e9') == 'LATIN SMALL LETTER E WITH ACUTE'\n"
    "assert '\\u00e9'.encode('shift_jis', 'replace')\n"
    "uuid.uuid4()\n"
    "if sys.version_info >= (3, 13):\n"
    "    import ctypes, xml.etree.ElementTree as ET\n"
    "    assert ctypes.sizeof(ctypes.c_int32) == 4\n"
    "    assert ET.fromstring('<a><b/></a>')[0].tag == 'b'\n"
    "if sys.version_info >= (3, 12, 4):\n"
    "    import asyncio, hashlib, ssl\n"
    "    assert hashlib.sha256(b'x').hexdigest().startswith('2d7116')\n"
    "    ssl.create_default_context()\n"
    "    async def main():\n"
    "        await asyncio.sleep(0)\n"
    "        return 7\n"
    "    assert asyncio.run(main()) == 7\n";

}  // namespace

TEST_CASE("the workarounds for this CPython apply to own-allocator interpreters only",
          "[workarounds]") {
  auto list = isola::detail::module_workarounds();
  // CPython 3.12 and 3.13 crash when own-allocator interpreters that imported datetime end in
  // creation order (gh-136421); the C _zoneinfo needs the blocked C _datetime; 3.12 also
  // crashes on the second import of decimal (gh-110415).
  CHECK(workaround_applies("_datetime") == (Py_Version < 0x030E0000));
  CHECK(workaround_applies("_zoneinfo") == workaround_applies("_datetime"));
  CHECK(workaround_applies("_decimal") == (Py_Version < 0x030D0000));

  isola::interpreter own;
  isola::interpreter shared(isola::interpreter_config::legacy());  // the main allocator
  for (const auto& w : list) {
    INFO(w.module << " (" << w.reason << ")");
    std::string lookup = std::string("__import__('sys').modules.get('") + w.module + "', 'absent')";
    CHECK(own.eval(lookup).is_none());  // blocked: importing it raises ImportError
    CHECK_FALSE(shared.eval(lookup).is_none());
    auto e = python_error_of([&] { own.exec(std::string("import ") + w.module); });
    REQUIRE(e);
    CHECK(e->type_name() == "ModuleNotFoundError");
  }
}

TEST_CASE("datetime in several own-GIL interpreters, ended in creation order", "[workarounds]") {
  const bool pure_python = workaround_applies("_datetime");
  several s(4);
  for (auto& in : s.interps) {
    in->exec(datetime_code);
    CHECK(in->get_global("iso").as_str() == "2021-05-06T07:08:09+00:00");
    CHECK(in->get_global("parsed").as_str() == "2022-03-04");
    if (pure_python) {
      // The stdlib's fallback is in use, not the C accelerator.
      CHECK(in->get_global("impl").as_str() == "_pydatetime");
      CHECK(in->eval("'_pydatetime' in sys.modules").as_bool());
      CHECK(in->eval("sys.modules['_datetime'] is None").as_bool());
    } else {
      CHECK(in->get_global("impl").as_str() == "datetime");
      CHECK(in->eval("type(sys.modules['_datetime']).__name__").as_str() == "module");
    }
  }
  s.end_in_creation_order();
  CHECK(isola::runtime::running());  // and still here
}

TEST_CASE("sqlite3 in several own-GIL interpreters, ended in creation order", "[workarounds]") {
  several s(4);
  for (auto& in : s.interps) {
    in->exec(sqlite_code);
    CHECK(in->get_global("rows") == value(isola::make_tuple(100, 5050)));
    CHECK(in->get_global("twice").as_int() == 42);
    // The real C extension, not a stand-in.
    CHECK(in->eval("type(__import__('sys').modules['_sqlite3']).__name__").as_str() == "module");
    CHECK(in->eval("sqlite3.sqlite_version_info >= (3, 7)").as_bool());
  }
  s.end_in_creation_order();
  CHECK(isola::runtime::running());
}

TEST_CASE("datetime, sqlite3 and other extension modules: teardown in its own process",
          "[workarounds]") {
  struct scenario {
    const char* name;
    const char* code;
  };
  for (auto [name, code] : {scenario{"datetime", datetime_code}, scenario{"sqlite3", sqlite_code},
                            scenario{"stdlib", stdlib_code}}) {
    for (const char* order : {"creation", "reverse"}) {
      INFO(name << ", ending in " << order << " order");
      auto r = run_child({"teardown", order, "4", code});
      INFO(r.describe());
      CHECK(r.exit_code == 0);
      CHECK(r.output.find("unexpected exception") == std::string::npos);
      // All four ran the code and ended.
      std::size_t ended = 0;
      for (auto at = r.output.find("ended "); at != std::string::npos;
           at = r.output.find("ended ", at + 1)) {
        ++ended;
      }
      CHECK(ended == 4);
    }
  }
}

TEST_CASE("zoneinfo and decimal in several own-GIL interpreters, ended in creation order",
          "[workarounds]") {
  const bool pure_zoneinfo = workaround_applies("_zoneinfo");
  const bool pure_decimal = workaround_applies("_decimal");
  several s(3);
  for (auto& in : s.interps) {
    in->exec(
        "import datetime, decimal, zoneinfo\n"
        "paris = zoneinfo.ZoneInfo('Europe/Paris')\n"
        "summer = datetime.datetime(2020, 7, 1, 12, tzinfo=paris).utcoffset()\n"
        "winter = datetime.datetime(2020, 1, 1, 12, tzinfo=paris).utcoffset()\n"
        "third = str(decimal.Decimal(1) / decimal.Decimal(3))\n");
    CHECK(in->eval("summer == datetime.timedelta(hours=2)").as_bool());
    CHECK(in->eval("winter == datetime.timedelta(hours=1)").as_bool());
    CHECK(in->get_global("third").as_str() == "0." + std::string(28, '3'));
    // zoneinfo's pure-Python implementation lives in zoneinfo._zoneinfo.
    CHECK(in->eval("'zoneinfo._zoneinfo' in __import__('sys').modules").as_bool() ==
          pure_zoneinfo);
    CHECK(in->eval("'_pydecimal' in __import__('sys').modules").as_bool() == pure_decimal);
  }
  s.end_in_creation_order();
  CHECK(isola::runtime::running());
}

TEST_CASE("a thread threading did not start ends with its interpreter without a report",
          "[workarounds]") {
  // isola's worker thread is a dummy thread to threading (current_thread() makes one); after
  // a thread was started and joined, CPython 3.13.0-3.13.2 reported "Exception ignored in
  // _DeleteDummyThreadOnDel.__del__" when the interpreter ended (gh-130522).
  const std::string code =
      "import threading\n"
      "t = threading.Thread(target=lambda: None)\n"
      "t.start(); t.join()\n"
      "threading.current_thread()\n";
  auto r = run_child({"teardown", "creation", "2", code});
  INFO(r.describe());
  REQUIRE(r.exit_code == 0);
  CHECK(r.output.find("ended 2") != std::string::npos);
  CHECK(r.output.find("Exception ignored") == std::string::npos);
  CHECK(r.output.find("Traceback") == std::string::npos);
}
