"""Helpers for test_pyinterpreters.cpp: run inside isola interpreters. Each function checks
what it can with assert and returns what the C++ test checks further."""
import gc
import pickle
import threading

import isola
from isola import interpreters


def double(x):
    return 2 * x


def add(a, b=0, *, c=0):
    return a + b + c


def fail(message):
    raise ValueError(message)


class Unpicklable(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self):
        super().__init__('holds a lock')
        self.lock = threading.Lock()


def fail_unpicklable():
    raise Unpicklable()


def recv(name):
    """Blocks until an item arrives on the named channel; returns it."""
    return isola.channel(name).recv()


def basics():
    cur = interpreters.get_current()
    main = interpreters.get_main()
    interp = interpreters.create()
    assert interp.whence == 'isola.interpreters', interp.whence
    assert main.id == 0 and main.whence == 'runtime init', (main, main.whence)
    assert cur.id == isola.interpreter_id() and cur.whence == 'C-API', (cur, cur.whence)
    assert interpreters.Interpreter(interp.id) is interp
    ids = [i.id for i in interpreters.list_all()]
    assert 0 in ids and cur.id in ids and interp.id in ids, ids
    assert not interp.is_running()
    assert cur.is_running()
    interp.exec('x = 6 * 7')
    interp.prepare_main({'y': 1}, z=2)
    interp.exec('assert (x, y, z) == (42, 1, 2)')
    here = interp.call(isola.interpreter_id)
    assert here == interp.id, (here, interp.id)
    assert interp.call(add, 1, 2, c=3) == 6
    assert interp.call(double, [1]) == [1, 1]
    # Functions of __main__ and lambdas travel as code and run with its __main__ as globals.
    assert interp.call(lambda: x) == 42  # noqa: F821 (x is the other interpreter's)
    assert interp.call(lambda v: v + 1, 1) == 2
    t = interp.call_in_thread(interp_exec_marker, interp.id)
    assert isinstance(t, threading.Thread)
    t.join()
    interp.exec('assert marker == "set"')
    return [interp.id, repr(interp), sorted(ids)]


def interp_exec_marker(expected_id):
    import __main__
    assert isola.interpreter_id() == expected_id
    __main__.marker = 'set'


def closure_refused():
    interp = interpreters.create()
    k = 3

    def inner():
        return k

    try:
        interp.call(inner)
    except pickle.PicklingError as e:
        return str(e)
    return 'no error'


def failures():
    interp = interpreters.create()
    out = {}
    try:
        interp.exec('def f():\n    raise KeyError("k")\nf()')
    except interpreters.ExecutionFailed as e:
        info = e.excinfo
        out['exec'] = [info.type.__name__, info.type.__module__, info.msg, info.formatted,
                       info.errdisplay, str(e)]
        assert isinstance(e, interpreters.InterpreterError)
    try:
        interp.call(fail, 'bad')
    except interpreters.ExecutionFailed as e:
        out['call'] = [e.excinfo.type.__name__, e.excinfo.msg, e.excinfo.errdisplay]
    try:
        interp.exec('syntax error here')
    except interpreters.ExecutionFailed as e:
        out['syntax'] = e.excinfo.type.__name__
    try:
        interp.exec(42)
    except TypeError as e:
        out['type'] = str(e)
    # The interpreter stays usable after a failure.
    interp.exec('ok = 1')
    # ExecutionFailed pickles (it crosses interpreters and channels).
    try:
        interp.exec('1/0')
    except interpreters.ExecutionFailed as e:
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is interpreters.ExecutionFailed
        assert again.excinfo.formatted == e.excinfo.formatted
    return out


def closing(block_name):
    """close() twice, close() of a running interpreter, of the current, of main and of one
    this interpreter did not make."""
    out = {}
    block = isola.channel(block_name)  # held: a named channel lives while a handle does
    interp = interpreters.create()
    t = interp.call_in_thread(recv, block_name)
    while not interp.is_running():
        pass
    try:
        interp.close()
    except interpreters.InterpreterError as e:
        out['running'] = [type(e).__name__, str(e)]
    try:
        interp.exec('pass')
    except interpreters.InterpreterError as e:
        out['exec_running'] = str(e)
    block.send('go')
    t.join()
    assert not interp.is_running()
    interp.close()
    try:
        interp.close()
    except interpreters.InterpreterNotFoundError as e:
        out['twice'] = str(e)
    try:
        interp.is_running()
    except interpreters.InterpreterNotFoundError as e:
        out['closed_is_running'] = str(e)
    try:
        interpreters.get_current().close()
    except interpreters.InterpreterError as e:
        out['current'] = str(e)
    try:
        interpreters.get_main().close()
    except interpreters.InterpreterError as e:
        out['main'] = [type(e).__name__, str(e)]
    try:
        interpreters.get_main().exec('pass')
    except interpreters.InterpreterError as e:
        out['main_exec'] = str(e)
    # A child cannot close the interpreter that made it (nor itself).
    parent = interpreters.create()
    parent.exec('from isola import interpreters\nchild = interpreters.create()')
    child_id = parent.call(_child_id)
    parent.exec(
        'import isola_test_interpreters as h\n'
        f'me = interpreters.Interpreter({parent.id})\n'
        't = child.call_in_thread(h._try_close, me.id)\n')
    parent.exec('t.join()\nresult = child.call(h._main_value, "close_result")')
    out['close_creator'] = parent.call(_main_value, 'result')
    parent.close()
    out['grandchild_gone'] = child_id not in [i.id for i in interpreters.list_all()]
    return out


def _child_id():
    import __main__
    return __main__.child.id


def _main_value(name):
    import __main__
    return getattr(__main__, name)


def _try_close(id):
    """In a child: tries to close interpreter `id` and keeps the outcome in __main__."""
    import __main__
    try:
        interpreters.Interpreter(id).close()
        __main__.close_result = 'closed'
    except interpreters.InterpreterError as e:
        __main__.close_result = f'{type(e).__name__}: {e}'


def last_handle_closes():
    interp = interpreters.create()
    id = interp.id
    alive = id in [i.id for i in interpreters.list_all()]
    del interp
    gc.collect()
    gone = id not in [i.id for i in interpreters.list_all()]
    try:
        interpreters.Interpreter(id)
        found = True
    except interpreters.InterpreterNotFoundError:
        found = False
    return [alive, gone, found]


def make_children(count):
    """Makes interpreters this one keeps (in __main__) and returns their ids."""
    import __main__
    __main__.children = [interpreters.create() for _ in range(count)]
    return [c.id for c in __main__.children]


def start_endless_child():
    """A child that runs for ever (in a thread of this interpreter); returns its id."""
    import __main__
    __main__.endless = interpreters.create()
    __main__.endless_thread = __main__.endless.call_in_thread(_spin)
    while not __main__.endless.is_running():
        pass
    return __main__.endless.id


def _spin():
    while True:
        pass


def live_ids():
    return [i.id for i in interpreters.list_all()]


# --- PoolExecutor -----------------------------------------------------------------------

def executor_results():
    with isola.PoolExecutor(2) as ex:
        assert ex._max_workers == 2
        futs = [ex.submit(add, i, c=1) for i in range(20)]
        results = [f.result() for f in futs]
        mapped = list(ex.map(double, range(10)))
        chunked = list(ex.map(add, range(5), range(5), chunksize=2))
        ids = set(ex.map(_interp_id, range(8)))
        lam = ex.submit(lambda v: v * 3, 5).result()
    assert isola.interpreter_id() not in ids
    try:
        ex.submit(double, 1)
    except RuntimeError as e:
        after = str(e)
    return [results, mapped, chunked, lam, after]


def _interp_id(_):
    return isola.interpreter_id()


def executor_exceptions():
    from concurrent.futures import Future
    out = {}
    with isola.PoolExecutor(1) as ex:
        f = ex.submit(fail, 'boom')
        assert isinstance(f, Future)
        exc = f.exception()
        out['type'] = type(exc).__name__
        out['msg'] = str(exc)
        out['cause'] = type(exc.__cause__).__name__
        out['cause_display'] = exc.__cause__.excinfo.errdisplay
        g = ex.submit(fail_unpicklable)
        e2 = g.exception()
        out['unpicklable'] = [type(e2).__name__, e2.excinfo.type.__name__]
        h = ex.submit(_inner_closure())
        out['closure'] = type(h.exception()).__name__
        try:
            ex.submit('1 + 1')
        except TypeError as e:
            out['script'] = str(e)
        # The interpreter goes on serving after failures.
        out['after'] = ex.submit(double, 21).result()
    return out


def _inner_closure():
    k = 1

    def inner():
        return k
    return inner


def executor_cancel(block_name):
    """One interpreter: a task that blocks, one queued behind it; cancel both."""
    out = {}
    block = isola.channel(block_name)
    with isola.PoolExecutor(1) as ex:
        running = ex.submit(recv, block_name)
        queued = ex.submit(double, 1)
        while not running.running():
            pass
        out['cancel_running'] = running.cancel()
        out['cancel_queued'] = queued.cancel()
        out['queued_cancelled'] = queued.cancelled()
        block.send('released')
        out['running_result'] = running.result()
        out['queued_done'] = queued.done()
    return out


def executor_shutdown_pending(block_name):
    """shutdown(wait=True) with queued work finishes it; shutdown(cancel_futures=True)
    cancels the queued tasks and lets the running one end."""
    out = {}
    block = isola.channel(block_name)
    ex = isola.PoolExecutor(1)
    first = ex.submit(recv, block_name)
    rest = [ex.submit(double, i) for i in range(5)]
    while not first.running():
        pass
    block.send('a')
    ex.shutdown(wait=True)
    out['finished'] = [first.result()] + [f.result() for f in rest]

    ex = isola.PoolExecutor(1)
    first = ex.submit(recv, block_name)
    rest = [ex.submit(double, i) for i in range(5)]
    while not first.running():
        pass
    ex.shutdown(wait=False, cancel_futures=True)  # the first task still waits for 'b'
    out['cancelled'] = [f.cancelled() for f in rest]
    block.send('b')
    ex.shutdown(wait=True)
    out['first'] = first.result()
    out['collector_alive'] = ex._thread.is_alive()
    return out


def executor_dropped(block_name):
    """An executor dropped without shutdown: its work finishes, then its thread ends."""
    block = isola.channel(block_name)
    ex = isola.PoolExecutor(1)
    collector = ex._thread
    f = ex.submit(recv, block_name)
    g = ex.submit(double, 4)
    del ex
    gc.collect()
    block.send('done')
    results = [f.result(), g.result()]
    collector.join(60)
    return [results, collector.is_alive()]


def executor_initializer():
    def init(value):
        import __main__
        __main__.configured = value
    with isola.PoolExecutor(2, initializer=init, initargs=('yes',)) as ex:
        values = set(ex.map(_main_value, ['configured'] * 6))
    try:
        isola.PoolExecutor(1, initializer=fail, initargs=('init failed',))
    except isola.BrokenInterpreterPool as e:
        broken = str(e)
    return [sorted(values), broken]


def executor_left_running(block_name):
    """Submits a task that blocks for ever and returns; the C++ test then closes this
    interpreter."""
    import __main__
    __main__.block = isola.channel(block_name)
    __main__.ex = isola.PoolExecutor(1)
    __main__.fut = __main__.ex.submit(recv, block_name)
    while not __main__.fut.running():
        pass
    __main__.queued = __main__.ex.submit(double, 1)
    return True
