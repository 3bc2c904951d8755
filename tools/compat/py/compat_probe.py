# What `isola compat` runs in each own-GIL interpreter of its child process (tools/compat/
# child.cpp), as functions in __main__: import one module, then use it a little where the module
# is known. Nothing here imports a module at the top (sys is always loaded), so the module under
# test is imported by its own test first. Answers are lists of strings, which cross interpreters
# as plain values.

import sys

_before = set()


def _where(e):
    """'file:line' of the innermost frame of e's traceback, or ''."""
    tb = e.__traceback__
    if tb is None:
        return ''
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f'{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}'


def _isola_compat_import(name):
    """Imports `name`. Returns [outcome, exception type, message, extra]; outcome is 'ok',
    'refused' (CPython's own-GIL check or isola's strict extension policy; extra: the module
    refused), 'blocked' (None in sys.modules: one of isola's workarounds; extra: the module
    blocked), 'not found', or 'raised' (extra: where)."""
    global _before
    _before = set(sys.modules)
    try:
        __import__(name)
    except ImportError as e:
        message = str(e)
        # CPython's check, or isola's strict extension policy, which rewords it.
        if 'does not support loading in subinterpreters' in message or \
                'cannot be loaded in an own-GIL interpreter' in message:
            refused = e.name or (message.split()[1].strip("'") if message.startswith('module ')
                                 else name)
            return ['refused', type(e).__name__, message, refused]
        if 'halted; None in sys.modules' in message:
            return ['blocked', type(e).__name__, message, e.name or name]
        if isinstance(e, ModuleNotFoundError) and e.name is not None and (
                name == e.name or name.startswith(e.name + '.')):
            return ['not found', type(e).__name__, message, e.name]
        return ['raised', type(e).__name__, message, _where(e)]
    except BaseException as e:  # SystemExit, KeyboardInterrupt: the module's own doing
        return ['raised', type(e).__name__, str(e), _where(e)]
    module = sys.modules.get(name)
    spec = getattr(module, '__spec__', None)
    origin = getattr(spec, 'origin', None) or ''
    return ['ok', '', '', origin]


def _isola_compat_use(name, fallback):
    """Uses the module a little if it is known (after a 'blocked' import: through its
    pure-Python fallback, imported first). Returns [outcome, what was done, exception type,
    message, where]; outcome is 'ok', 'import only' or 'raised'."""
    try:
        if fallback:
            __import__(fallback)
        test = _exercises.get(name)
        if test is None:
            return ['import only', '', '', '', '']
        what = test()
        return ['ok', what, '', '', '']
    except BaseException as e:
        return ['raised', '', type(e).__name__, str(e), _where(e)]


def _isola_compat_workarounds(blocked):
    """Which of isola's workarounds this test went through: each entry of `blocked`
    ('module fallback') whose module is blocked (None in sys.modules) and whose fallback was
    imported since the import began; and 'gh-130522' on CPython 3.13.0-3.13.2 when threading
    made a dummy thread for this interpreter's worker thread, whose end isola patches."""
    used = []
    for entry in blocked:
        module, fallback = entry.split(' ')
        if sys.modules.get(module, 0) is None and fallback in sys.modules \
                and fallback not in _before:
            used.append(module)
    threading = sys.modules.get('threading')
    if threading is not None and (3, 13, 0) <= sys.version_info[:3] < (3, 13, 3) and any(
            type(t).__name__ == '_DummyThread'
            for t in list(getattr(threading, '_active', {}).values())):
        used.append('gh-130522')
    return used


# ---- the exercises: each uses its module a little, checks the result, and says what it did --

def _check(condition, what):
    if not condition:
        raise AssertionError(f'wrong result: {what}')


def _json():
    import json
    doc = {'a': [1, 2.5, None, True], 'b': {'c': 'd\u00e9'}, 'n': 10**20}
    text = json.dumps(doc)
    _check(json.loads(text) == doc, 'json.loads(json.dumps(doc)) != doc')
    return 'json dumps/loads round trip'


def _decimal():
    import decimal
    d = decimal.Decimal
    _check(d('1.1') + d('2.2') == d('3.3'), "Decimal('1.1') + Decimal('2.2')")
    _check(str(d(1) / d(7))[:8] == '0.142857', 'Decimal(1) / Decimal(7)')
    return 'decimal arithmetic'


def _sqlite3():
    import sqlite3
    con = sqlite3.connect(':memory:')
    con.execute('create table t (k integer primary key, v text)')
    con.executemany('insert into t (v) values (?)', [(str(i),) for i in range(100)])
    row = con.execute('select count(*), sum(k) from t').fetchone()
    con.close()
    _check(row == (100, 5050), f'select count(*), sum(k) gave {row}')
    return 'sqlite3 in-memory table, insert and query'


def _datetime():
    import datetime
    day = datetime.timedelta(1)
    _check(datetime.date(2024, 2, 28) + 2 * day == datetime.date(2024, 3, 1), 'date + timedelta')
    datetime.datetime.now().isoformat()
    return 'datetime arithmetic'


def _zoneinfo():
    import datetime
    import zoneinfo
    utc = zoneinfo.ZoneInfo('UTC')
    _check(datetime.datetime(2024, 1, 1, tzinfo=utc).utcoffset() == datetime.timedelta(0),
           'UTC offset')
    return "zoneinfo.ZoneInfo('UTC') offset"


_digests = {
    'md5': '900150983cd24fb0d6963f7d28e17f72',
    'sha1': 'a9993e364706816aba3e25717850c26c9cd0d89d',
    'sha256': 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    'sha3_256': '3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532',
    'blake2b': 'ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1'
               '7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923',
}


def _digest(module, function, algorithm):
    def test():
        m = __import__(module)
        got = getattr(m, function)(b'abc').hexdigest()
        _check(got == _digests[algorithm], f'{module}.{function}(b"abc") gave {got}')
        return f'{module}.{function} digest'
    return test


def _hashlib():
    import hashlib
    _check(hashlib.sha256(b'abc').hexdigest() == _digests['sha256'], 'sha256 of abc')
    _check(hashlib.md5(b'abc').hexdigest() == _digests['md5'], 'md5 of abc')
    return 'hashlib sha256 and md5 digests'


def _ctypes():
    import ctypes
    libc = ctypes.CDLL(None)
    _check(libc.strlen(b'hello') == 5, 'strlen(b"hello")')
    _check(ctypes.c_int(-5).value == -5, 'c_int')
    return 'ctypes call of libc strlen'


def _math():
    import math
    _check(math.isclose(math.sqrt(2) ** 2, 2) and math.factorial(20) == 2432902008176640000,
           'sqrt, factorial')
    return 'math sqrt, factorial'


def _cmath():
    import cmath
    _check(cmath.sqrt(-1) == 1j, 'cmath.sqrt(-1)')
    return 'cmath sqrt'


def _compress(module, label):
    def test():
        m = __import__(module)
        data = b'isola ' * 1000
        _check(m.decompress(m.compress(data)) == data, f'{module} round trip')
        return f'{label} compress/decompress'
    return test


def _binascii():
    import binascii
    _check(binascii.unhexlify(binascii.hexlify(b'\x00\xff')) == b'\x00\xff', 'hexlify')
    _check(binascii.crc32(b'abc') == 891568578, 'crc32')
    return 'binascii hexlify, crc32'


def _pickle():
    import pickle
    doc = {'a': [1, 2.5, (3, 'x')], 'b': {1, 2}, 'c': b'bytes'}
    _check(pickle.loads(pickle.dumps(doc)) == doc, 'pickle round trip')
    return 'pickle dumps/loads round trip'


def _struct():
    import struct
    _check(struct.unpack('<iqd', struct.pack('<iqd', -1, 2**40, 0.5)) == (-1, 2**40, 0.5),
           'pack/unpack')
    return 'struct pack/unpack'


def _array():
    import array
    a = array.array('i', range(100))
    b = array.array('i')
    b.frombytes(a.tobytes())
    _check(a == b and sum(b) == 4950, 'array round trip')
    return 'array tobytes/frombytes'


def _random():
    import random
    a, b = random.Random(42), random.Random(42)
    _check([a.random() for _ in range(5)] == [b.random() for _ in range(5)], 'seeded Random')
    return 'random.Random seeded sequence'


def _bisect():
    import bisect
    _check(bisect.bisect_left([1, 3, 5, 7], 5) == 2, 'bisect_left')
    return 'bisect_left'


def _heapq():
    import heapq
    h = [5, 1, 4, 2, 3]
    heapq.heapify(h)
    _check([heapq.heappop(h) for _ in range(5)] == [1, 2, 3, 4, 5], 'heappop order')
    return 'heapq heapify/heappop'


def _csv():
    import csv
    import io
    rows = list(csv.reader(['a,b', '1,"2,3"']))
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    _check(rows == [['a', 'b'], ['1', '2,3']] and '"2,3"' in out.getvalue(), 'csv rows')
    return 'csv reader/writer'


def _elementtree():
    import xml.etree.ElementTree as et
    root = et.fromstring('<a><b x="1">t</b></a>')
    _check(root.find('b').get('x') == '1' and root.find('b').text == 't', 'find')
    _check(b'<b x="1">' in et.tostring(root), 'tostring')
    return 'ElementTree fromstring/find/tostring'


def _pyexpat():
    import pyexpat
    starts = []
    p = pyexpat.ParserCreate()
    p.StartElementHandler = lambda name, attrs: starts.append(name)
    p.Parse(b'<a><b/><c/></a>', True)
    _check(starts == ['a', 'b', 'c'], 'start elements')
    return 'pyexpat parse with a handler'


def _unicodedata():
    import unicodedata
    _check(unicodedata.name('\u00e9') == 'LATIN SMALL LETTER E WITH ACUTE', 'name')
    _check(unicodedata.normalize('NFD', '\u00e9') == 'e\u0301', 'normalize')
    return 'unicodedata name, normalize'


def _socket():
    import socket
    a, b = socket.socketpair()
    a.sendall(b'ping')
    got = b.recv(4)
    a.close()
    b.close()
    _check(got == b'ping', 'socketpair send/recv')
    return 'socket socketpair send/recv'


def _select():
    import os
    import select
    r, w = os.pipe()
    os.write(w, b'x')
    ready = select.select([r], [], [], 1)[0]
    os.close(r)
    os.close(w)
    _check(ready == [r], 'select on a pipe')
    return 'select on a pipe'


def _ssl():
    import ssl
    ctx = ssl.create_default_context()
    _check(ctx.verify_mode == ssl.CERT_REQUIRED, 'default context')
    return 'ssl default context'


def _asyncio():
    import asyncio

    async def add(a, b):
        await asyncio.sleep(0)
        return a + b

    async def main():
        return sum(await asyncio.gather(add(1, 2), add(3, 4)))

    _check(asyncio.run(main()) == 10, 'asyncio.run')
    return 'asyncio.run of two tasks'


def _contextvars():
    import contextvars
    v = contextvars.ContextVar('v')
    v.set(1)
    ctx = contextvars.copy_context()
    _check(ctx.run(v.get) == 1, 'copy_context().run')
    return 'contextvars set/copy_context'


def _queue():
    import queue
    q = queue.SimpleQueue()
    q.put(1)
    q.put(2)
    _check((q.get(), q.get()) == (1, 2), 'SimpleQueue order')
    return 'queue.SimpleQueue put/get'


def _statistics():
    import statistics
    _check(abs(statistics.NormalDist(0, 1).inv_cdf(0.5)) < 1e-12, 'inv_cdf(0.5)')
    return 'statistics NormalDist.inv_cdf'


def _opcode():
    import _opcode
    import opcode
    _check(_opcode.stack_effect(opcode.opmap['POP_TOP']) == -1, 'stack_effect(POP_TOP)')
    return '_opcode stack_effect'


def _uuid():
    import _uuid
    _check(len(_uuid.generate_time_safe()[0]) == 16, 'generate_time_safe')
    return '_uuid generate_time_safe'


def _lsprof():
    import _lsprof
    p = _lsprof.Profiler()
    p.enable()
    sum(range(100))
    p.disable()
    _check(len(p.getstats()) > 0, 'profiler stats')
    return '_lsprof profile of a call'


def _codec(encoding, text):
    def test():
        _check(text.encode(encoding).decode(encoding) == text, f'{encoding} round trip')
        return f'{encoding} encode/decode'
    return test


def _mmap():
    import mmap
    m = mmap.mmap(-1, 4096)
    m.write(b'isola')
    m.seek(0)
    got = m.read(5)
    m.close()
    _check(got == b'isola', 'mmap write/read')
    return 'anonymous mmap write/read'


def _fcntl():
    import fcntl
    import os
    r, w = os.pipe()
    flags = fcntl.fcntl(w, fcntl.F_GETFL)
    os.close(r)
    os.close(w)
    _check(flags & os.O_WRONLY, 'F_GETFL of a pipe')
    return 'fcntl F_GETFL'


def _grp():
    import grp
    _check(grp.getgrgid(0).gr_gid == 0, 'getgrgid(0)')
    return 'grp getgrgid'


def _pwd():
    import pwd
    _check(pwd.getpwuid(0).pw_uid == 0, 'getpwuid(0)')
    return 'pwd getpwuid'


def _resource():
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    _check(soft > 0, 'RLIMIT_NOFILE')
    return 'resource getrlimit'


def _multiprocessing():
    import multiprocessing
    lock = multiprocessing.Lock()
    _check(lock.acquire(False), 'Lock().acquire')
    lock.release()
    return 'multiprocessing.Lock acquire/release'


def _posixshmem():
    import _posixshmem
    import os
    name = f'/isola-compat-{os.getpid()}-{id(sys.modules)}'  # one name per interpreter
    fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    _posixshmem.shm_unlink(name)
    return '_posixshmem shm_open/shm_unlink'



def _interpreters(module):
    def test():
        m = __import__(module)
        _check(len(m.list_all()) >= 2, 'list_all')
        return f'{module}.list_all'
    return test


def _crypt():
    import _crypt
    _check(_crypt.crypt('isola', 'ab') == _crypt.crypt('isola', 'ab'), 'crypt')
    return '_crypt crypt'


def _audioop():
    import audioop
    _check(audioop.add(b'\x01\x00', b'\x02\x00', 2) == b'\x03\x00', 'add')
    return 'audioop add'


def _abc():
    import abc

    class base(abc.ABC):
        @abc.abstractmethod
        def f(self):
            pass

    class impl(base):
        def f(self):
            return 1

    _check(impl().f() == 1 and issubclass(impl, base), 'ABC subclass')
    return 'abc.ABC subclass'


def _ast():
    import ast
    _check(isinstance(ast.parse('x = 1 + 2').body[0], ast.Assign), 'parse')
    return 'ast.parse'


def _codecs():
    _check('\u00e9'.encode('utf-8').decode('utf-8') == '\u00e9', 'utf-8')
    _check('\u00e9'.encode('latin-1') == b'\xe9', 'latin-1')
    return 'codecs encode/decode'


def _collections():
    import collections
    d = collections.deque([1, 2, 3], 2)
    _check(list(d) == [2, 3] and collections.Counter('aab')['a'] == 2, 'deque, Counter')
    return 'collections deque, Counter'


def _functools():
    import functools

    @functools.lru_cache
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    _check(fib(50) == 12586269025 and functools.reduce(int.__add__, range(5)) == 10, 'fib')
    return 'functools lru_cache, reduce'


def _imp():
    import _imp
    _check(_imp.is_builtin('sys'), 'is_builtin')
    return '_imp is_builtin'


def _io():
    import io
    b = io.BytesIO()
    t = io.TextIOWrapper(b, 'utf-8')
    t.write('isola\n')
    t.flush()
    _check(b.getvalue() == b'isola\n', 'TextIOWrapper over BytesIO')
    return 'io TextIOWrapper over BytesIO'


def _locale():
    import locale
    _check('decimal_point' in locale.localeconv(), 'localeconv')
    return 'locale localeconv'


def _operator():
    import operator
    _check(operator.itemgetter(1)([1, 2]) == 2 and operator.add(1, 2) == 3, 'itemgetter')
    return 'operator itemgetter, add'


def _signal():
    import signal
    _check(signal.SIGINT in signal.valid_signals(), 'valid_signals')
    _check(signal.strsignal(signal.SIGINT) is not None, 'strsignal')
    return 'signal valid_signals, strsignal'


def _termios():
    import os
    import termios
    leader, follower = os.openpty()
    try:
        attrs = termios.tcgetattr(follower)
    finally:
        os.close(leader)
        os.close(follower)
    _check(len(attrs) == 7, 'tcgetattr')
    return 'termios tcgetattr of a pty'


def _xxlimited(module):
    def test():
        m = __import__(module)
        x = m.Xxo()
        x.demo(None)
        _check(type(x).__name__ == 'Xxo', 'Xxo')
        return f'{module}.Xxo().demo'
    return test


def _xxsubtype():
    import xxsubtype
    s = xxsubtype.spamlist([1, 2])
    s.setstate(3)
    _check(s.getstate() == 3 and len(s) == 2, 'spamlist')
    return 'xxsubtype spamlist'


def _sre():
    import re
    m = re.match(r'(\w+)-(\d+)', 'isola-42')
    _check(m is not None and m.group(2) == '42', 're.match')
    return 're match'


def _stat():
    import os
    import stat
    _check(stat.S_ISDIR(os.stat('/').st_mode), 'S_ISDIR')
    return 'stat S_ISDIR'


def _string():
    import string
    _check(string.Formatter().format('{0}-{x}', 1, x=2) == '1-2', 'Formatter')
    return 'string.Formatter'


def _suggestions():
    import _suggestions
    _check(_suggestions._generate_suggestions(['isola', 'other'], 'isol') == 'isola',
           '_generate_suggestions')
    return '_suggestions'


def _symtable():
    import symtable
    _check(symtable.symtable('x = 1', '<s>', 'exec').lookup('x').is_assigned(), 'symtable')
    return 'symtable'


def _sysconfig():
    import sysconfig
    _check(sysconfig.get_config_var('prefix') is not None, 'get_config_var')
    return 'sysconfig get_config_var'


def _thread():
    import threading
    done = []
    t = threading.Thread(target=done.append, args=(1,))
    t.start()
    t.join()
    _check(done == [1], 'thread ran')
    return 'a thread started and joined'


def _tokenize():
    import io
    import tokenize
    toks = list(tokenize.generate_tokens(io.StringIO('x = 1\n').readline))
    _check(toks[0].string == 'x', 'generate_tokens')
    return 'tokenize generate_tokens'


def _tracemalloc():
    import tracemalloc
    tracemalloc.start()
    x = [bytes(1000) for _ in range(10)]
    current = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    _check(current >= 10000 and len(x) == 10, 'traced memory')
    return 'tracemalloc start/stop'


def _typing():
    import typing
    _check(typing.get_origin(typing.List[int]) is list, 'get_origin')
    return 'typing get_origin'


def _warnings():
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        warnings.warn('isola')
    _check(len(caught) == 1, 'caught warning')
    return 'warnings warn, caught'


def _weakref():
    import weakref

    class thing:
        pass

    t = thing()
    r = weakref.ref(t)
    _check(r() is t, 'ref')
    return 'weakref ref'


def _atexit():
    import atexit
    atexit.register(lambda: None)
    return 'atexit register (runs when the interpreter ends)'


def _errno():
    import errno
    _check(errno.errorcode[errno.ENOENT] == 'ENOENT', 'errorcode')
    return 'errno errorcode'


def _faulthandler():
    import faulthandler
    faulthandler.enable()
    faulthandler.disable()
    return 'faulthandler enable/disable'


def _gc():
    import gc
    gc.collect()
    return 'gc collect'


def _itertools():
    import itertools
    _check(list(itertools.islice(itertools.count(), 3)) == [0, 1, 2], 'islice(count())')
    return 'itertools islice, count'


def _marshal():
    import marshal
    doc = (1, 'x', [2.5, None])
    _check(marshal.loads(marshal.dumps(doc)) == (1, 'x', [2.5, None]), 'marshal round trip')
    return 'marshal dumps/loads'


def _posix():
    import os
    _check(os.getpid() > 0 and '.' not in os.listdir('/'), 'getpid, listdir')
    return 'os getpid, listdir'


def _sys():
    _check(sys.getrecursionlimit() > 0, 'getrecursionlimit')
    return 'sys getrecursionlimit'


def _builtins():
    _check(sum(map(abs, [-1, 2])) == 3, 'sum(map(abs))')
    return 'builtins sum, map'


def _time():
    import time
    t0 = time.monotonic()
    time.sleep(0.001)
    _check(time.monotonic() > t0, 'monotonic')
    return 'time monotonic, sleep'


_exercises = {
    'json': _json, '_json': _json,
    'decimal': _decimal, '_decimal': _decimal, '_pydecimal': _decimal,
    'sqlite3': _sqlite3, '_sqlite3': _sqlite3,
    'datetime': _datetime, '_datetime': _datetime, '_pydatetime': _datetime,
    'zoneinfo': _zoneinfo, '_zoneinfo': _zoneinfo,
    'hashlib': _hashlib, '_hashlib': _hashlib,
    '_md5': _digest('_md5', 'md5', 'md5'),
    '_sha1': _digest('_sha1', 'sha1', 'sha1'),
    '_sha2': _digest('_sha2', 'sha256', 'sha256'),
    '_sha256': _digest('_sha256', 'sha256', 'sha256'),
    '_sha3': _digest('_sha3', 'sha3_256', 'sha3_256'),
    '_blake2': _digest('_blake2', 'blake2b', 'blake2b'),
    'ctypes': _ctypes, '_ctypes': _ctypes,
    'math': _math, 'cmath': _cmath,
    'zlib': _compress('zlib', 'zlib'),
    'bz2': _compress('bz2', 'bz2'), '_bz2': _compress('bz2', 'bz2'),
    'lzma': _compress('lzma', 'lzma'), '_lzma': _compress('lzma', 'lzma'),
    'binascii': _binascii,
    'pickle': _pickle, '_pickle': _pickle,
    'struct': _struct, '_struct': _struct,
    'array': _array,
    'random': _random, '_random': _random,
    'bisect': _bisect, '_bisect': _bisect,
    'heapq': _heapq, '_heapq': _heapq,
    'csv': _csv, '_csv': _csv,
    'xml.etree.ElementTree': _elementtree, '_elementtree': _elementtree,
    'pyexpat': _pyexpat, 'xml.parsers.expat': _pyexpat,
    'unicodedata': _unicodedata,
    'socket': _socket, '_socket': _socket,
    'select': _select, 'selectors': _select,
    'ssl': _ssl, '_ssl': _ssl,
    'asyncio': _asyncio, '_asyncio': _asyncio,
    'contextvars': _contextvars, '_contextvars': _contextvars,
    'queue': _queue, '_queue': _queue,
    'statistics': _statistics, '_statistics': _statistics,
    '_opcode': _opcode, 'opcode': _opcode,
    '_uuid': _uuid,
    '_lsprof': _lsprof, 'cProfile': _lsprof,
    '_codecs_jp': _codec('shift_jis', '\u65e5\u672c'),
    '_codecs_cn': _codec('gb2312', '\u4e2d\u6587'),
    '_codecs_kr': _codec('euc_kr', '\ud55c\uad6d'),
    '_codecs_tw': _codec('big5', '\u4e2d\u6587'),
    '_codecs_hk': _codec('big5hkscs', '\u4e2d\u6587'),
    '_codecs_iso2022': _codec('iso2022_jp', '\u65e5\u672c'),
    '_multibytecodec': _codec('shift_jis', '\u65e5\u672c'),
    'mmap': _mmap,
    'fcntl': _fcntl,
    'grp': _grp, 'pwd': _pwd,
    'resource': _resource,
    'multiprocessing': _multiprocessing, '_multiprocessing': _multiprocessing,
    '_posixshmem': _posixshmem,
    '_interpreters': _interpreters('_interpreters'),
    'termios': _termios,
    'xxlimited': _xxlimited('xxlimited'), 'xxlimited_35': _xxlimited('xxlimited_35'),
    'xxsubtype': _xxsubtype,
    '_xxsubinterpreters': _interpreters('_xxsubinterpreters'),
    '_crypt': _crypt, 'crypt': _crypt,
    'audioop': _audioop,
    'abc': _abc, '_abc': _abc,
    'ast': _ast, '_ast': _ast,
    'codecs': _codecs, '_codecs': _codecs,
    'collections': _collections, '_collections': _collections,
    'functools': _functools, '_functools': _functools,
    '_imp': _imp,
    'io': _io, '_io': _io,
    'locale': _locale, '_locale': _locale,
    'operator': _operator, '_operator': _operator,
    'signal': _signal, '_signal': _signal,
    're': _sre, '_sre': _sre,
    'stat': _stat, '_stat': _stat,
    'string': _string, '_string': _string,
    '_suggestions': _suggestions,
    'symtable': _symtable, '_symtable': _symtable,
    'sysconfig': _sysconfig, '_sysconfig': _sysconfig,
    'threading': _thread, '_thread': _thread,
    'tokenize': _tokenize, '_tokenize': _tokenize,
    'tracemalloc': _tracemalloc, '_tracemalloc': _tracemalloc,
    'typing': _typing, '_typing': _typing,
    'warnings': _warnings, '_warnings': _warnings,
    'weakref': _weakref, '_weakref': _weakref,
    'atexit': _atexit,
    'errno': _errno,
    'faulthandler': _faulthandler,
    'gc': _gc,
    'itertools': _itertools,
    'marshal': _marshal,
    'os': _posix, 'posix': _posix,
    'sys': _sys,
    'builtins': _builtins,
    'time': _time,
}
