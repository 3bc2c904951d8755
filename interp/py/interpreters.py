# isola.interpreters: PEP 734's interpreters with CPython 3.14's names
# (concurrent.interpreters), on isola's own-GIL interpreters. The C++ side (the isola._interp_*
# functions, interp/pyinterpreters.cpp) owns the interpreters; this module is the Python face.
# Made on first use of isola.interpreters (it imports threading and weakref).
"""Interpreters from Python, with the names of CPython 3.14's concurrent.interpreters.

create() makes an own-GIL isola interpreter; Interpreter.exec() runs source code in its
__main__, call() calls a function there and returns its result (both pickled), close() ends it.
An interpreter lives until close(), until the last handle to it in the interpreter that made it
is gone, or at the latest until that interpreter ends.
"""
import threading
import types
import weakref

import isola
from isola import _xi

__all__ = [
    'get_current', 'get_main', 'create', 'list_all',
    'Interpreter',
    'InterpreterError', 'InterpreterNotFoundError', 'ExecutionFailed',
]


def _rebuild(name, args):
    """Unpickles this module's objects (pickle finds it as isola._interp_rebuild)."""
    return globals()[name](*args)


_rebuild.__module__ = 'isola'
_rebuild.__qualname__ = _rebuild.__name__ = '_interp_rebuild'
isola._interp_rebuild = _rebuild


class InterpreterError(Exception):
    """A call about an interpreter failed (it is running, it is the current one, it was not
    made by isola.interpreters, ...)."""

    def __reduce__(self):
        return _rebuild, (type(self).__name__, self.args)


class InterpreterNotFoundError(InterpreterError):
    """No such interpreter: it was closed, or the id was never one."""


_FAILURE_TEMPLATE = '{summary}\n\nUncaught in the interpreter:\n\n{display}'


class ExecutionFailed(InterpreterError):
    """An exception was raised and not caught in the interpreter, by Interpreter.exec() or
    Interpreter.call(). `excinfo` describes it: excinfo.type (__name__, __qualname__,
    __module__), excinfo.msg, excinfo.formatted (its last line) and excinfo.errdisplay (the
    whole display with its traceback). The exception itself stays in that interpreter."""

    def __init__(self, excinfo):
        summary = excinfo.formatted
        if not summary:
            name = excinfo.type.__name__
            summary = f'{name}: {excinfo.msg}' if name and excinfo.msg else (name or excinfo.msg)
        super().__init__(summary)
        self.excinfo = excinfo

    def __str__(self):
        display = getattr(self.excinfo, 'errdisplay', None)
        if not display:
            return super().__str__()
        return _FAILURE_TEMPLATE.format(summary=super().__str__(), display=display)

    def __reduce__(self):
        return _rebuild, ('_failed_from_tuple', (_excinfo_tuple(self.excinfo),))


def _excinfo(info):
    """The namespace ExecutionFailed carries, from isola's tuple (see isola._xi.excinfo)."""
    name, qualname, module, msg, formatted, display = info
    exc_type = types.SimpleNamespace(__name__=name, __qualname__=qualname, __module__=module)
    return types.SimpleNamespace(type=exc_type, msg=msg, formatted=formatted,
                                 errdisplay=display)


def _excinfo_tuple(ns):
    t = ns.type
    return (t.__name__, t.__qualname__, t.__module__, ns.msg, ns.formatted,
            getattr(ns, 'errdisplay', ''))


def _failed_from_tuple(info):
    return ExecutionFailed(_excinfo(info))


def create():
    """A new, idle interpreter: own GIL, own allocator, isola's guards (see isola's
    docs/interpreters-from-python.md). It ends when closed, when the last handle to it in this
    interpreter is gone, or at the latest when this interpreter ends."""
    return Interpreter(isola._interp_create(), _whence=_OWN)


def list_all():
    """Every interpreter isola runs: the main one, those of isola's C++ API and pools, and
    those made by isola.interpreters."""
    return [Interpreter(id, _whence=whence) for id, whence in isola._interp_list()]


def get_current():
    """The interpreter this code runs in."""
    id, whence = isola._interp_current()
    return Interpreter(id, _whence=whence)


def get_main():
    """The main interpreter (it cannot be run, called or closed from here)."""
    return Interpreter(0, _whence='runtime init')


_OWN = 'isola.interpreters'
_known = weakref.WeakValueDictionary()


class Interpreter:
    """One interpreter, by id. There is one object per id in each interpreter.

    id: the process-wide interpreter id (isola.interpreter_id() inside it).
    whence: where it comes from: 'runtime init' (the main interpreter), 'C-API' (isola's C++
    API and pools), 'isola.interpreters' (made by create()), 'unknown'.

    Only interpreters made by create() can be run (exec, call, prepare_main) and closed.
    A handle in the interpreter that made one keeps it alive; handles elsewhere (from
    list_all(), or pickled) do not.
    """

    def __new__(cls, id, /, _whence=None):
        if not isinstance(id, int):
            raise TypeError(f'id must be an int, got {id!r}')
        id = int(id)
        try:
            return _known[id]
        except KeyError:
            pass
        if _whence is None:
            _whence = isola._interp_whence(id)  # InterpreterNotFoundError if there is none
        self = super().__new__(cls)
        self._id = id
        self._whence = _whence
        # True only here, in the interpreter that made it: then this object keeps it alive.
        self._ownsref = _whence == _OWN and isola._interp_incref(id)
        _known[id] = self
        return self

    def __repr__(self):
        return f'{type(self).__name__}({self._id})'

    def __hash__(self):
        return hash(self._id)

    def __reduce__(self):
        return _rebuild, ('Interpreter', (self._id,))

    def __del__(self, _decref=isola._interp_decref):
        if getattr(self, '_ownsref', False):
            self._ownsref = False
            _decref(self._id)  # the last handle: closes it

    @property
    def id(self):
        return self._id

    @property
    def whence(self):
        return self._whence

    def is_running(self):
        """Whether it runs code for exec(), call() or call_in_thread() now (for the current
        interpreter: True)."""
        return isola._interp_is_running(self._id)

    def close(self):
        """Ends the interpreter (bounded: threads its code left running get SystemExit after
        their grace period). InterpreterError if it is running or is the current one;
        InterpreterNotFoundError if it has ended already."""
        isola._interp_close(self._id)

    def prepare_main(self, ns=None, /, **kwargs):
        """Binds the given names in its __main__ (values are pickled)."""
        ns = dict(ns, **kwargs) if ns is not None else kwargs
        if not ns:
            raise ValueError('prepare_main() needs at least one name to bind')
        isola._interp_prepare_main(self._id, _xi.dumps(ns))

    def exec(self, code, /):
        """Runs source code (or a function taking no arguments) in its __main__; waits for it
        with this interpreter's GIL released. Raises ExecutionFailed if the code raises."""
        if isinstance(code, types.FunctionType):
            self._call(code, (), {})
            return
        if not isinstance(code, str):
            raise TypeError(f'exec() takes a str of source code or a function, not '
                            f'{type(code).__name__}')
        info = isola._interp_exec(self._id, code)
        if info is not None:
            raise ExecutionFailed(_excinfo(info))

    def _call(self, callable, args, kwargs):
        status, payload, info = isola._interp_call(self._id,
                                                   _xi.dumps((callable, args, kwargs)))
        if status == 0:
            return _xi.loads(payload)
        raise ExecutionFailed(_excinfo(info))

    def call(self, callable, /, *args, **kwargs):
        """Calls callable(*args, **kwargs) there and returns its result. The callable, the
        arguments and the result are pickled (functions pickle cannot name travel as code).
        Raises ExecutionFailed if the call raises."""
        return self._call(callable, args, kwargs)

    def call_in_thread(self, callable, /, *args, **kwargs):
        """Starts and returns a threading.Thread that calls callable there; its result and
        any exception are dropped."""
        t = threading.Thread(target=self._call, args=(callable, args, kwargs))
        t.start()
        return t
