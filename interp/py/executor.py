# isola.PoolExecutor: a concurrent.futures.Executor on an isola pool, the way CPython 3.14's
# InterpreterPoolExecutor is one on interpreters. The C++ side (isola._ExecutorCore,
# interp/pyexecutor.cpp) owns the pool; a collector thread in the calling interpreter waits
# for outcomes (GIL released) and settles the futures. Made on first use of isola.PoolExecutor.
import threading
import weakref
from concurrent.futures import _base

import isola
from isola import _xi, interpreters

__all__ = ['PoolExecutor', 'BrokenInterpreterPool']


class BrokenInterpreterPool(_base.BrokenExecutor):
    """The executor's pool cannot run work: an initializer failed, or the pool or the isola
    runtime shut down under a task."""


BrokenInterpreterPool.__module__ = 'isola'  # pickled by name as isola.BrokenInterpreterPool

_OK, _RAISED, _CANCELLED, _BROKEN, _FAILED = range(5)  # see interp/pyexecutor.cpp


class _Future(_base.Future):
    """A concurrent.futures.Future whose cancel() also cancels the pool's task, and only while
    the task has not started (as for every Executor's futures)."""

    def __init__(self, core, key):
        super().__init__()
        self._isola_core = core
        self._isola_key = key

    def _note_started(self):
        # The task runs in the pool: PENDING becomes RUNNING (set_running_or_notify_cancel).
        if self._state == _base.PENDING and self._isola_core.started(self._isola_key):
            self.set_running_or_notify_cancel()

    def cancel(self):
        with self._condition:
            if self._state == _base.PENDING and not self._isola_core.cancel(self._isola_key):
                self._note_started()  # it started (or finished) already: not cancelled
            return super().cancel()

    def running(self):
        with self._condition:
            self._note_started()
            return super().running()


def _outcome(status, payload, info):
    """(result, None) or (None, exception) from a task's outcome (see interp/pyexecutor.cpp)."""
    if status == _OK:
        try:
            return _xi.loads(payload), None
        except BaseException as exc:  # the result does not unpickle here
            return None, exc
    if status == _RAISED:
        try:
            exc = _xi.loads(payload) if payload else None
        except BaseException:  # its class does not exist here, say
            exc = None
        return None, _raised(exc, info)
    if status == _CANCELLED:
        return None, _base.CancelledError()
    if status == _BROKEN:
        return None, BrokenInterpreterPool(info)
    return None, interpreters.ExecutionFailed(interpreters._excinfo(info))


def _settle(fut, status, payload, info):
    result, exc = _outcome(status, payload, info)
    with fut._condition:
        if fut._state == _base.PENDING and status == _CANCELLED:
            _base.Future.cancel(fut)
        if fut._state == _base.CANCELLED:
            # Cancelled before it ran: wait() and as_completed() learn it now, as from a
            # ThreadPoolExecutor's worker.
            fut.set_running_or_notify_cancel()
        elif fut._state in (_base.PENDING, _base.RUNNING):
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)


def _raised(exc, info):
    """The exception a task raised, with ExecutionFailed (its traceback over there) as its
    __cause__, as InterpreterPoolExecutor gives it; the ExecutionFailed alone when the
    exception does not pickle or unpickle."""
    failed = interpreters.ExecutionFailed(interpreters._excinfo(info))
    if exc is None:
        return failed
    exc.__cause__ = failed
    return exc


def _collect(core, pending, lock):
    """The collector thread: settles futures as their tasks end, until the executor is shut
    down and idle (then it shuts the pool down), or this interpreter ends (then queued tasks
    are cancelled and running ones interrupted)."""
    while True:
        items, state = core.collect()
        for key, status, payload, info in items:
            with lock:
                fut = pending.pop(key, None)
            if fut is not None:
                _settle(fut, status, payload, info)
        if state == 'closing':
            unstarted = set(core.cancel_all())
            with lock:
                left = list(pending.items())
                pending.clear()
            for key, fut in left:
                if key in unstarted:
                    _settle(fut, _CANCELLED, b'', None)
                else:
                    _settle(fut, _BROKEN, b'',
                            'the interpreter that made this executor ended while the task ran')
            core.shutdown_pool(True)
            return
        if state == 'done':
            core.shutdown_pool(False)
            return


_live = weakref.WeakSet()
_exiting = False


def _at_exit():
    # threading._shutdown (this interpreter's end) runs this before it joins threads: every
    # executor left open finishes its work, and then its collector thread ends.
    global _exiting
    _exiting = True
    for executor in list(_live):
        executor._core.request_shutdown()


threading._register_atexit(_at_exit)
_counter = iter(range(1, 1 << 62)).__next__


class PoolExecutor(_base.Executor):
    """An Executor whose workers are an isola pool of own-GIL interpreters.

    PoolExecutor(max_workers=None, thread_name_prefix='', initializer=None, initargs=())

    max_workers: the number of interpreters (None: one per core). thread_name_prefix names
    them in isola's log. initializer(*initargs) runs once in each interpreter when the pool
    starts; if it raises, the constructor raises BrokenInterpreterPool. fn, its arguments and
    results are pickled (functions pickle cannot name travel as code, see isola.interpreters).
    A task's exception arrives as itself, with interpreters.ExecutionFailed (its traceback
    there) as __cause__.
    """

    def __init__(self, max_workers=None, thread_name_prefix='', initializer=None, initargs=()):
        if max_workers is None:
            max_workers = 0
        elif max_workers <= 0:
            raise ValueError('max_workers must be greater than 0')
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        name = thread_name_prefix or f'PoolExecutor-{_counter()}'
        init_code = ''
        if initializer is not None:
            init_code = ('import isola\n'
                         f'isola._xi.run_init({_xi.dumps((initializer, tuple(initargs)))!r})\n')
        try:
            self._core = isola._ExecutorCore(max_workers, init_code, name)
        except isola._ExecutorInitError as e:
            raise BrokenInterpreterPool(
                f'an initializer failed, the pool is not usable: {e}') from None
        self._pending = {}
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._thread = threading.Thread(target=_collect, name=f'{name}-collector',
                                        args=(self._core, self._pending, self._shutdown_lock))
        self._thread.start()
        _live.add(self)
        # Dropped without shutdown(): the work already submitted finishes, then the pool ends.
        weakref.finalize(self, self._core.request_shutdown)

    @property
    def _max_workers(self):
        return self._core.size

    def submit(self, fn, /, *args, **kwargs):
        if isinstance(fn, str):
            raise TypeError('scripts not supported')
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError('cannot schedule new futures after shutdown')
            if _exiting:
                raise RuntimeError('cannot schedule new futures after interpreter shutdown')
            key = self._core.next_key()
            fut = _Future(self._core, key)
            try:
                data = _xi.dumps((fn, args, kwargs))
            except BaseException as exc:  # as CPython, the future gets it
                fut.set_exception(exc)
                return fut
            self._pending[key] = fut
            try:
                self._core.submit(key, data)  # waits for room in the queue, GIL released
            except BaseException:
                del self._pending[key]
                raise
            return fut

    submit.__doc__ = _base.Executor.submit.__doc__

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                for fut in list(self._pending.values()):
                    fut.cancel()
            self._core.request_shutdown()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    shutdown.__doc__ = _base.Executor.shutdown.__doc__


PoolExecutor.__module__ = 'isola'
