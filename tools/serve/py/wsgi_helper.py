# The WSGI side of isola serve (PEP 3333), one copy in each interpreter: loads the application
# once, then calls it for each request the server hands over. The server parses HTTP and
# builds the request's CGI keys in C++; here they meet the application.
#
# handle(environ, body, in_id, out_id) returns (status, headers, body, streamed):
# - body is the whole response when it is small (below STREAM_AFTER bytes once the iterable is
#   exhausted); the server writes it with a Content-Length unless the app set its own.
# - otherwise the response goes through the channel out_id as ('head', status, headers), then
#   bytes chunks, then ('end',), and handle returns streamed=True. A send waits while the
#   client is slow (the channel is bounded), and fails once the server has closed the channel
#   (the client went away): the iterable is then closed and nothing more is produced.
# - a file_wrapper over a real file comes back as ('file', fd, offset, length) in place of the
#   body: the server sends it with sendfile(2) and closes the fd.
# wsgi.input reads the request body given here, or, for large and chunked bodies, the chunks
# the server sends through the channel in_id as they arrive from the client (bounded memory).
#
# With --threads above 1, serve_loop runs in each interpreter instead, for as long as the
# interpreter serves: its handler threads take requests from a channel shared by all the
# interpreters and answer each through its out channel (see serve_loop).

import io
import os
import sys
import threading
import time
import traceback

import isola

STREAM_AFTER = 256 * 1024

_app = None
_base = {}


class ErrorStream:
    """wsgi.errors: text written here goes to the server's error log, a line at a time."""

    def __init__(self):
        self._pending = ''

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f'wsgi.errors.write() takes str, not {type(s).__name__}')
        self._pending += s
        while '\n' in self._pending:
            line, self._pending = self._pending.split('\n', 1)
            isola.log('error', 'app: ' + line)
        return len(s)

    def writelines(self, seq):
        for s in seq:
            self.write(s)

    def flush(self):
        if self._pending:
            isola.log('error', 'app: ' + self._pending)
            self._pending = ''


class ChannelInput:
    """wsgi.input for a body that streams in: chunks arrive through a channel; the server
    closes it after the last one."""

    def __init__(self, channel_id):
        self._channel = isola.Channel(id=channel_id)
        self._buffer = b''
        self._done = False

    def _fill(self):
        if self._done:
            return False
        try:
            chunk = self._channel.recv()
        except isola.ChannelClosed:
            self._done = True
            return False
        self._buffer += bytes(chunk)
        return True

    def read(self, size=-1):
        if size is None or size < 0:
            parts = [self._buffer]
            self._buffer = b''
            while self._fill():
                parts.append(self._buffer)
                self._buffer = b''
            return b''.join(parts)
        while len(self._buffer) < size and self._fill():
            pass
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readline(self, size=-1):
        while True:
            end = self._buffer.find(b'\n')
            if end >= 0 or (size is not None and 0 <= size <= len(self._buffer)):
                break
            if not self._fill():
                break
        cut = end + 1 if end >= 0 else len(self._buffer)
        if size is not None and size >= 0:
            cut = min(cut, size)
        data, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return data

    def readlines(self, hint=-1):
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """wsgi.file_wrapper: iterates a file in blocks; over a real file the server uses
    sendfile(2) instead."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, 'close'):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def _resolve(module, path, spec):
    obj = module
    for part in path.split('.'):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"failed to find attribute {path!r} in {module.__name__!r} "
                              f"(application {spec!r})") from None
    return obj


def load(spec, server_software, multithread=False):
    """Imports the application named by spec ("module:app", "module:factory()" or
    "module:factory(args)", or "module", meaning module:application) once."""
    global _app
    import ast
    import importlib
    module_name, _, attr = spec.partition(':')
    attr = attr or 'application'
    module = importlib.import_module(module_name)
    if attr.endswith(')') and '(' in attr:
        name, _, arglist = attr[:-1].partition('(')
        call = ast.parse(f'f({arglist})', mode='eval').body
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except ValueError:
            raise ValueError(f'the factory arguments in {spec!r} must be Python literals') \
                from None
        app = _resolve(module, name.strip(), spec)(*args, **kwargs)
    else:
        app = _resolve(module, attr.strip(), spec)
    if not callable(app):
        raise TypeError(f'application {spec!r} is not callable: it is a {type(app).__name__}')
    _app = app
    _base.update({
        'wsgi.version': (1, 0),
        'wsgi.errors': ErrorStream(),
        'wsgi.multithread': bool(multithread),
        'wsgi.multiprocess': False,
        'wsgi.run_once': False,
        'wsgi.input_terminated': True,
        'wsgi.file_wrapper': FileWrapper,
        'SERVER_SOFTWARE': server_software,
        'SCRIPT_NAME': '',
    })


def _check_headers(headers):
    if type(headers) is not list:
        raise TypeError(f'start_response: headers must be a list, not {type(headers).__name__}')
    for h in headers:
        if type(h) is not tuple or len(h) != 2 or type(h[0]) is not str or \
                type(h[1]) is not str:
            raise TypeError(f'start_response: each header must be a (str, str) tuple, not {h!r}')
        if '\n' in h[0] or '\r' in h[0] or '\n' in h[1] or '\r' in h[1] or ':' in h[0]:
            raise ValueError(f'start_response: header {h!r} holds a line break or a colon')
        if h[0].lower() in _HOP_BY_HOP:
            raise ValueError(f'start_response: hop-by-hop header {h[0]!r} is not allowed in '
                             'WSGI (PEP 3333)')


_HOP_BY_HOP = frozenset(('connection', 'keep-alive', 'proxy-authenticate',
                         'proxy-authorization', 'te', 'trailers', 'transfer-encoding',
                         'upgrade'))


def handle(environ, body, in_id, out_id):
    environ.update(_base)
    environ['wsgi.input'] = io.BytesIO(body) if in_id < 0 else ChannelInput(in_id)
    state = [None, None, False]  # status, headers, head sent
    written = []

    def start_response(status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if state[2]:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif state[0] is not None:
            raise AssertionError('start_response was called a second time without exc_info '
                                 '(PEP 3333)')
        if type(status) is not str:
            raise TypeError(f'start_response: status must be a str, not {type(status).__name__}')
        if len(status) < 4 or not status[:3].isdigit() or status[3] != ' ':
            raise ValueError(f"start_response: status {status!r} is not '<3 digits> <reason>'")
        _check_headers(headers)
        state[0] = status
        state[1] = headers
        return written.append

    result = _app(environ, start_response)
    out = None
    try:
        if type(result) is FileWrapper and state[0] is not None and not written:
            sent = _as_file(result)
            if sent is not None:
                return (state[0], state[1], sent, False)
        try:
            iterator = iter(result)
        except TypeError:
            raise TypeError(f'the application returned a {type(result).__name__}, which is not '
                            'an iterable of bytes (PEP 3333)') from None
        chunks = written
        size = sum(len(c) for c in chunks)
        for chunk in iterator:
            if type(chunk) is not bytes:
                if isinstance(chunk, str):
                    raise TypeError('the application yielded a str; the body must be bytes '
                                    '(encode it, PEP 3333)')
                if not isinstance(chunk, bytes):
                    raise TypeError(f'the application yielded a {type(chunk).__name__}; the '
                                    'body must be bytes (PEP 3333)')
            if state[0] is None:
                raise AssertionError('the application yielded body data before calling '
                                     'start_response (PEP 3333)')
            if out is not None:
                if chunk:
                    out.send(chunk)
                continue
            chunks.append(chunk)
            size += len(chunk)
            if size > STREAM_AFTER:
                out = isola.Channel(id=out_id)
                state[2] = True
                out.send(('head', state[0], state[1]))
                for c in chunks:
                    if c:
                        out.send(c)
                chunks = None
        if state[0] is None:
            raise AssertionError('the application returned without calling start_response '
                                 '(PEP 3333)')
        if out is not None:
            out.send(('end',))
            return (state[0], state[1], b'', True)
        return (state[0], state[1], b''.join(chunks), False)
    finally:
        close = getattr(result, 'close', None)
        if close is not None:
            close()


def _as_file(wrapper):
    f = wrapper.filelike
    try:
        fd = f.fileno()
        offset = f.tell()
        st = os.fstat(fd)
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    import stat
    if not stat.S_ISREG(st.st_mode):
        return None
    return ('file', os.dup(fd), offset, max(st.st_size - offset, 0))


# ---- --threads above 1 ------------------------------------------------------------------

POLL = 0.25       # how often idle handler threads look for a stop, and the watchdog wakes


def _type_name(t):
    return t.__qualname__ if t.__module__ == 'builtins' else f'{t.__module__}.{t.__qualname__}'


class _Loop:
    def __init__(self, slot, requests_id, threads, limit, timeout, soft_limit, heartbeat):
        self.slot = slot
        self.requests = isola.Channel(id=requests_id)
        self.limit = limit
        self.timeout = timeout
        self.soft_limit = soft_limit
        self.heartbeat = heartbeat
        # Set once the watchdog has armed its first deadline. Until then no handler takes a
        # request: one stuck in C code would keep the watchdog (still starting the other
        # threads) from ever arming it, and the pool would never replace the interpreter.
        self.armed = threading.Event()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.taken = 0        # requests taken (or being waited for) by the handler threads
        self.stopping = False
        self.running = {}     # handler thread ident -> [deadline, interrupted]
        self.alive = threads

    def reserve(self):
        """A handler thread may take one more request: False once the loop stops."""
        with self.lock:
            if self.stopping or (self.limit and self.taken >= self.limit):
                return False
            self.taken += 1
            return True

    def unreserve(self):
        with self.lock:
            self.taken -= 1

    def stop(self):
        with self.lock:
            self.stopping = True
            self.changed.notify_all()

    def handler(self):
        me = threading.get_ident()
        try:
            # Timed: the watchdog sets it where isola.TaskTimeout may arrive, which could cut
            # set() short of its notify.
            while not self.armed.wait(POLL):
                pass
            while self.reserve():
                try:
                    request = self.requests.recv(timeout=POLL)
                except TimeoutError:
                    self.unreserve()
                    continue
                except isola.ChannelClosed:  # the server drains or reloads
                    self.unreserve()
                    self.stop()
                    break
                self.serve_one(me, request)
                if self.soft_limit:
                    held = isola._memory_held()
                    if held is not None and held > self.soft_limit:
                        self.stop()
        finally:
            with self.lock:
                self.alive -= 1
                self.changed.notify_all()

    def serve_one(self, me, request):
        environ, body, in_id, out_id = request
        out = isola.Channel(id=out_id)
        reply = None
        t0 = time.monotonic_ns()
        try:
            with self.lock:
                deadline = time.monotonic() + self.timeout if self.timeout else None
                self.running[me] = [deadline, False]
            try:
                result = handle(environ, body, in_id, out_id)
                reply = ('done', self.slot, time.monotonic_ns() - t0, result)
            finally:
                with self.lock:
                    self.running.pop(me, None)
                isola._interrupt_thread(me, None)  # an interrupt that came too late
        except BaseException as e:  # noqa: B902 - the request's outcome, whatever it is
            # (SystemExit too: the application's sys.exit() fails its request only. When the
            # interpreter ends, this thread's next recv fails and it stops.)
            if reply is None:
                reply = ('error', self.slot, time.monotonic_ns() - t0, _type_name(type(e)),
                         str(e), ''.join(traceback.format_exception(e)),
                         isinstance(e, isola.TaskTimeout))
        try:
            out.send(reply)
        except isola.ChannelClosed:  # the client went away
            pass

    def watch(self):
        """The pool task's own thread: interrupts requests that run past --timeout, and keeps
        re-arming this task's deadline. A handler may keep the GIL (in C code) until its
        request's deadline, and a request taken later until its own, so the deadline is the
        earliest of those plus `heartbeat`. A handler that holds the GIL past it, stuck in C
        code, stops this thread from re-arming it; the deadline passes and the pool replaces
        the interpreter, as it does for a stuck request with --threads 1."""
        while True:
            try:
                with self.lock:
                    if self.alive == 0:
                        return
                    now = time.monotonic()
                    wait = POLL
                    latest = now + self.timeout  # a request taken from now on
                    for ident, entry in self.running.items():
                        deadline, interrupted = entry
                        if deadline is None:
                            continue
                        if not interrupted and deadline <= now:
                            entry[1] = interrupted = True
                            isola._interrupt_thread(ident, 'isola.TaskTimeout')
                        if interrupted:
                            latest = now  # it should stop at once
                        else:
                            latest = min(latest, deadline)
                            wait = min(wait, deadline - now)
                    if self.timeout:
                        isola._set_deadline(latest - now + self.heartbeat)
                    self.armed.set()
                    self.changed.wait(wait)
            except isola.TaskTimeout:
                pass  # this thread waited past its deadline for the GIL, but got it: not stuck


def serve_loop(slot, requests_id, threads, limit, timeout, soft_limit, heartbeat):
    """With --threads above 1, this interpreter's part of the server (a pool task that runs
    while the interpreter serves). `threads` handler threads take requests from the channel
    requests_id, shared by every interpreter, so a request goes to an interpreter with a free
    thread. Each request is (environ, body, in_id, out_id) as for handle(), and its outcome
    goes to out_id as ('done', slot, busy_ns, result) or ('error', slot, busy_ns, type,
    message, traceback, timed_out). Returns, once its requests have finished, after `limit`
    requests (0: no limit), when the interpreter holds more than soft_limit bytes (0: no
    limit) or when the channel closes; the server then replaces the interpreter. With a
    timeout, this thread keeps the pool task's deadline `heartbeat` seconds past the earliest
    deadline of its requests (_Loop.watch); if a handler stuck in C code keeps the GIL
    longer, the deadline passes and the pool replaces the interpreter."""
    loop = _Loop(slot, requests_id, threads, limit, timeout, soft_limit, heartbeat)
    workers = [threading.Thread(target=loop.handler, name=f'isola-serve-{slot}-{i}')
               for i in range(threads)]
    started = 0
    try:
        for w in workers:
            w.start()
            started += 1
    finally:
        # loop.alive counted them all; a thread that started may have finished already.
        with loop.lock:
            loop.alive -= threads - started
    try:
        loop.watch()
    finally:  # (it returns once every handler has ended; if it fails, they must end too)
        loop.stop()
        loop.armed.set()
    for w in workers[:started]:
        w.join()
    return loop.taken
