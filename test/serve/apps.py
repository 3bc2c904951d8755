# WSGI applications for test_serve.cpp, run by `isola serve` in its interpreters. The
# well-behaved ones are wrapped in wsgiref.validate.validator, which checks every request and
# response against PEP 3333 (an AssertionError there fails the request with 500; its
# iterator checks, such as close() having been called, print "Exception ignored" to the
# server's stderr, which the tests look for). The faulty ones are not wrapped: the server
# itself must name their bugs.

import hashlib
import json
import os
import sys
import threading
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

import isola


def _q(environ):
    return {k: v[0] for k, v in parse_qs(environ.get('QUERY_STRING', '')).items()}


def _text(start_response, text, status='200 OK', extra=()):
    body = text.encode()
    start_response(status, [('Content-Type', 'text/plain'),
                            ('Content-Length', str(len(body)))] + list(extra))
    return [body]


def _rss_kb(field='VmRSS'):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    return -1


@validator
def hello(environ, start_response):
    return _text(start_response, 'Hello, World!')


@validator
def env(environ, start_response):
    keys = {k: v for k, v in environ.items() if isinstance(v, (str, bool, tuple, int))}
    keys['input_type'] = type(environ['wsgi.input']).__name__
    return _text(start_response, json.dumps(keys, sort_keys=True),
                 extra=[('Content-Type-Echo', environ.get('CONTENT_TYPE', ''))])


@validator
def echo(environ, start_response):
    """Reads the body in 64 KiB pieces; answers its length, sha256 and the server's peak RSS."""
    h = hashlib.sha256()
    n = 0
    f = environ['wsgi.input']
    while True:
        chunk = f.read(65536)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    return _text(start_response, json.dumps({'length': n, 'sha256': h.hexdigest(),
                                             'rss_kb': _rss_kb(), 'hwm_kb': _rss_kb('VmHWM'),
                                             'content_length': environ.get('CONTENT_LENGTH', '')}))


@validator
def lines(environ, start_response):
    """readline() and iteration over wsgi.input."""
    f = environ['wsgi.input']
    first = f.readline()
    rest = list(f)
    return _text(start_response, json.dumps({'first': first.decode(), 'rest': len(rest)}))


@validator
def stream(environ, start_response):
    """?chunks=N&size=S: N chunks of S bytes, no Content-Length (chunked on HTTP/1.1)."""
    q = _q(environ)
    n, size = int(q.get('chunks', 10)), int(q.get('size', 1000))
    start_response('200 OK', [('Content-Type', 'application/octet-stream')])

    def gen():
        for i in range(n):
            yield bytes([65 + i % 26]) * size
    return gen()


@validator
def file(environ, start_response):
    """?path=P: the file through wsgi.file_wrapper."""
    path = _q(environ)['path']
    f = open(path, 'rb')
    start_response('200 OK', [('Content-Type', 'application/octet-stream')])
    return environ['wsgi.file_wrapper'](f, 8192)


def file_raw(environ, start_response):
    """?path=P&skip=N: the file from byte N through wsgi.file_wrapper, not validated (the
    validator's wrapper would hide the file from the server)."""
    q = _q(environ)
    f = open(q['path'], 'rb')
    f.seek(int(q.get('skip', 0)))
    start_response('200 OK', [('Content-Type', 'application/octet-stream')])
    return environ['wsgi.file_wrapper'](f, 8192)


@validator
def write_callable(environ, start_response):
    write = start_response('200 OK', [('Content-Type', 'text/plain')])
    write(b'written ')
    return [b'and returned']


@validator
def app_error_page(environ, start_response):
    """Starts a response, fails, then replaces it with an error page (exc_info)."""
    start_response('200 OK', [('Content-Type', 'text/plain')])
    try:
        raise ValueError('inside')
    except ValueError:
        start_response('500 Internal Server Error', [('Content-Type', 'text/plain')],
                       sys.exc_info())
    return [b'custom error page']


@validator
def slow(environ, start_response):
    time.sleep(float(_q(environ).get('s', '0.5')))
    return _text(start_response, 'slept')


@validator
def whoami(environ, start_response):
    return _text(start_response, f'{isola.interpreter_id()} {os.getpid()}')


_meetings = {}
_meetings_lock = threading.Lock()


@validator
def meet(environ, start_response):
    """Waits until n requests (?n=) are here at once: only threads of one interpreter meet."""
    n = int(_q(environ)['n'])
    with _meetings_lock:
        barrier = _meetings.setdefault(n, threading.Barrier(n))
    barrier.wait(timeout=30)
    return _text(start_response, f'met {isola.interpreter_id()} {threading.get_ident()}')


def spin(environ, start_response):
    while True:
        pass


def stuck(environ, start_response):
    """Stuck in C code: the regular expression engine never checks for exceptions."""
    import re
    re.match(r'(a+)+$', 'a' * 64 + 'b')
    return _text(start_response, 'never')


def hold(environ, start_response):
    """?s=SECONDS in one C call that keeps the GIL (libc's usleep through ctypes.PyDLL): busy
    in C code, not stuck."""
    import ctypes
    ctypes.PyDLL(None).usleep(int(float(_q(environ)['s']) * 1e6))
    return _text(start_response, 'held')


def raises(environ, start_response):
    raise ValueError('boom from the app')


def non_iterable(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return 42


def twice(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'never']


def str_body(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return ['a str, not bytes']


def no_start(environ, start_response):
    return [b'body without start_response']


class Closing:
    """An iterable whose close() leaves a mark in a file (?mark=PATH), failing or not."""

    def __init__(self, path, fail):
        self.path = path
        self.fail = fail

    def __iter__(self):
        yield b'first '
        if self.fail:
            raise RuntimeError('failed while iterating')
        yield b'second'

    def close(self):
        with open(self.path, 'a') as f:
            f.write('closed\n')


def closing(environ, start_response):
    q = _q(environ)
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return Closing(q['mark'], q.get('fail') == '1')


def make_app(greeting='made by a factory'):
    @validator
    def made(environ, start_response):
        return _text(start_response, greeting)
    return made


APPS = {name: obj for name, obj in globals().items()
        if callable(obj) and not name.startswith('_') and name not in
        ('validator', 'parse_qs', 'Closing', 'make_app')}


def router(environ, start_response):
    """/NAME/...: the application NAME above (/ is hello)."""
    name = environ['PATH_INFO'].strip('/').split('/')[0] or 'hello'
    return APPS[name](environ, start_response)
