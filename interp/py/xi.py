# isola._xi: how calls cross between isola's interpreters for isola.interpreters and
# isola.PoolExecutor. The callable, its arguments, the result and a raised exception travel
# pickled. A function that pickle cannot name (defined in __main__, a lambda, a nested
# function) travels as its code instead and runs with the receiving interpreter's __main__ as
# its globals, as CPython 3.14 shares "stateless" functions; a closure cannot travel.
# This module runs in the calling interpreter and in the one that runs the call.
import io
import marshal
import pickle
import sys
import types

# gh-119213 (CPython 3.12.0-3.12.3): _pickle's functions called with keyword arguments in an
# own-GIL interpreter make Py_Finalize crash; pickle's pure-Python twins do not.
if sys.version_info < (3, 12, 4):
    _Pickler, _loads = pickle._Pickler, pickle._loads
else:
    _Pickler, _loads = pickle.Pickler, pickle.loads

_PROTOCOL = 5


def _function_from_code(code, name, qualname, defaults, kwdefaults):
    """Rebuilds a function sent as its code, with this interpreter's __main__ as globals."""
    main = sys.modules['__main__']
    fn = types.FunctionType(marshal.loads(code), main.__dict__, name, defaults)
    fn.__qualname__ = qualname
    fn.__kwdefaults__ = kwdefaults
    return fn


def _sent_as_code(fn):
    # pickle names a function by module and qualified name; these names mean nothing (or
    # something else) in another interpreter.
    return fn.__module__ == '__main__' or '<' in fn.__qualname__


class _XIPickler(_Pickler):
    def reducer_override(self, obj):
        if type(obj) is types.FunctionType and _sent_as_code(obj):
            if obj.__closure__:
                raise pickle.PicklingError(
                    f'cannot send {obj.__qualname__!r} to another interpreter: it is a closure '
                    f'(it uses variables of the function that defines it); define it at the top '
                    f'level of a module, or pass those values as arguments')
            return _function_from_code, (marshal.dumps(obj.__code__), obj.__name__,
                                         obj.__qualname__, obj.__defaults__, obj.__kwdefaults__)
        return NotImplemented


def dumps(obj):
    """Pickles obj for another interpreter (protocol 5; functions as above)."""
    buf = io.BytesIO()
    _XIPickler(buf, _PROTOCOL).dump(obj)
    return buf.getvalue()


def loads(data):
    return _loads(data)


def excinfo(exc, tb):
    """What the caller learns of an exception: (type __name__, __qualname__, __module__,
    str(exc), the last line of its display, the full display with traceback tb)."""
    import traceback
    t = type(exc)
    try:
        msg = str(exc)
    except BaseException:
        msg = f'<unprintable {t.__name__}>'
    te = traceback.TracebackException(t, exc, tb)
    formatted = ''.join(te.format_exception_only()).rstrip('\n')
    display = ''.join(te.format()).rstrip('\n')
    return (t.__name__, t.__qualname__, t.__module__, msg, formatted, display)


def _failure(exc, tb):
    info = excinfo(exc, tb)
    try:
        return (1, dumps(exc), info)
    except BaseException:
        return (1, b'', info)  # the caller gets the description only


def run_pickled(token, data):
    """Runs a pickled (callable, args, kwargs) here. Returns (0, pickled result, None),
    (1, pickled exception or b'' if it does not pickle, excinfo), or (2, b'', None) when the
    task (a PoolExecutor task, token != 0) was cancelled before it could start."""
    if token and not sys.modules['isola']._task_claim(token):
        return (2, b'', None)
    try:
        fn, args, kwargs = _loads(data)
        result = fn(*args, **kwargs)
    except BaseException as exc:
        tb = exc.__traceback__
        return _failure(exc, tb.tb_next if tb is not None else None)
    try:
        return (0, dumps(result), None)
    except BaseException as exc:
        return _failure(exc, None)


def exec_main(code):
    """Runs source code in __main__; None, or the excinfo of the exception it raised."""
    ns = sys.modules['__main__'].__dict__
    try:
        exec(compile(code, '<string>', 'exec'), ns, ns)
    except BaseException as exc:
        tb = exc.__traceback__
        return excinfo(exc, tb.tb_next if tb is not None else None)
    return None


def set_main(data):
    """Binds the pickled dict's items in __main__."""
    sys.modules['__main__'].__dict__.update(_loads(data))


def run_init(data):
    """A PoolExecutor's initializer, pickled as (initializer, initargs), run once in each
    interpreter of its pool."""
    fn, args = _loads(data)
    fn(*args)
