# isola map's helper, run in every interpreter as the module _isola_map (see cmd_map.cpp):
# parses input lines as Python literals, calls the function on each, and returns the reprs
# and the failures of a chunk.

import ast
import importlib
import os
import sys
import traceback
from time import monotonic as _monotonic

import isola

# The input is this process's stdin (or a file); the mapped code gets an empty one.
sys.stdin = open(os.devnull)

_TaskTimeout = isola.TaskTimeout
_set_deadline = isola._set_deadline

_literal_eval = ast.literal_eval
_functions = {}
_constants = {'True': True, 'False': False, 'None': None}
_number_chars = frozenset('0123456789.eE+-')


def parse(s):
    """ast.literal_eval(s). Plain ints, floats, True/False/None and quoted strings without
    escapes take fast paths that give exactly what literal_eval gives."""
    if type(s) is not str:
        s = s.decode('utf-8')  # a line that is not UTF-8 fails here, naming the bad byte
    c = s[0]
    if c in '0123456789+-.':
        body = s[1:] if c in '+-' else s
        if body.isdigit() and body.isascii():
            if body[0] != '0' or len(body) == 1:  # literal_eval refuses leading zeros
                try:
                    return int(s)
                except ValueError:  # over the int digit limit: let literal_eval say so
                    pass
        elif _number_chars.issuperset(s) and ('.' in s or 'e' in s or 'E' in s):
            try:
                return float(s)
            except ValueError:
                pass
    elif c == "'" or c == '"':
        inner = s[1:-1]
        if (len(s) >= 2 and s[-1] == c and c not in inner and '\\' not in inner
                and '\0' not in inner and '\r' not in inner):
            return inner
    else:
        v = _constants.get(s, _constants)
        if v is not _constants:
            return v
    try:
        return _literal_eval(s)
    except ValueError as e:
        if str(e).startswith('malformed node or string'):
            raise ValueError('not a Python literal (names, calls and most operators are not '
                             'allowed; quote strings)') from None
        raise


def check_lines(lines):
    """[(i, type, message)] for the lines that are not Python literals."""
    bad = []
    for i, s in enumerate(lines):
        try:
            parse(s)
        except SyntaxError as e:
            where = f' (column {e.offset})' if e.offset else ''
            bad.append((i, 'SyntaxError', f'{e.msg}{where}'))
        except Exception as e:
            bad.append((i, _type_name(e), str(e)))
    return bad


def _type_name(e):
    t = type(e)
    return t.__qualname__ if t.__module__ == 'builtins' else f'{t.__module__}.{t.__qualname__}'


def _failure(i, phase, e, with_traceback):
    tb = traceback.format_exc() if with_traceback else ''
    return (i, phase, _type_name(e), str(e), tb)


def _resolve(target):
    fn = _functions.get(target)
    if fn is None:
        module, _, attr = target.partition(':')
        fn = importlib.import_module(module)
        for part in attr.split('.'):
            fn = getattr(fn, part)
        _functions[target] = fn
    return fn


def check_target(target):
    """('ok', '', '') if target names a callable, else (problem, message, traceback)."""
    module, _, attr = target.partition(':')
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + '.')):
            return ('not_found', f'no module named {e.name!r}', '')
        return ('import_failed', f'{_type_name(e)}: {e}', traceback.format_exc())
    except BaseException as e:
        return ('import_failed', f'{_type_name(e)}: {e}', traceback.format_exc())
    for part in attr.split('.'):
        try:
            obj = getattr(obj, part)
        except Exception as e:
            return ('no_attribute', f'{_type_name(e)}: {e}', '')
    if not callable(obj):
        return ('not_callable', f'it is a {type(obj).__name__}, not a function', '')
    _functions[target] = obj
    return ('ok', '', '')


def _refused(e):
    """Whether e is isola's refusal of an extension module in an own-GIL interpreter: the chunk
    then fails as a whole, so that a pool with --extensions auto runs it again in its
    shared-GIL lane."""
    return isinstance(e, ImportError) and 'cannot be loaded in an own-GIL interpreter' in str(e)


def map_chunk(target, lines, limit):
    """Returns (reprs, failures, consumed): reprs[i] is repr(result) or None if input i failed;
    failures are (i, phase, type, message, traceback) with phase 'parse', 'call' or
    'timeout'. consumed < len(lines) when the command stopped the chunk (KeyboardInterrupt):
    the inputs from consumed on did not finish. With a limit, each input's call (and its
    repr) has its own deadline of `limit` seconds."""
    fn = _functions.get(target) or _resolve(target)
    out = []
    fails = []
    append = out.append
    try:
        if not limit:
            for i, s in enumerate(lines):
                try:
                    x = parse(s)
                except Exception as e:
                    append(None)
                    fails.append(_failure(i, 'parse', e, False))
                    continue
                try:
                    append(repr(fn(x)))
                except KeyboardInterrupt:
                    raise
                except BaseException as e:
                    if _refused(e):
                        raise
                    append(None)
                    fails.append(_failure(i, 'call', e, not fails))
            return out, fails, len(lines)

        for i, s in enumerate(lines):
            try:
                x = parse(s)
            except Exception as e:
                append(None)
                fails.append(_failure(i, 'parse', e, False))
                continue
            t1 = _monotonic()
            try:
                _set_deadline(limit)
                try:
                    r = repr(fn(x))
                finally:
                    _set_deadline(None)
            except _TaskTimeout:
                append(None)
                fails.append((i, 'timeout', 'TimeoutError',
                              f'interrupted after {_monotonic() - t1:.3g} s', ''))
                continue
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                if _refused(e):
                    raise
                append(None)
                fails.append(_failure(i, 'call', e, not fails))
                continue
            took = _monotonic() - t1
            if took > limit:
                append(None)
                fails.append((i, 'timeout', 'TimeoutError', f'took {took:.3g} s (result dropped)', ''))
            else:
                append(r)
        return out, fails, len(lines)
    except KeyboardInterrupt:
        # The command is stopping: hand back what finished. An input whose failure was not
        # recorded yet does not count as finished.
        n = len(out)
        if n and out[-1] is None and not (fails and fails[-1][0] == n - 1):
            n -= 1
            del out[n:]
        return out, fails, n


def flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
