# Describes threads by ident (GIL held): name and daemon flag from threading, if imported (a
# thread it does not know, started with _thread or by C code, counts as a daemon, as CPython
# does not wait for it either), and the innermost frame outside threading.py.
# `frames` maps idents to their current frames: the C++ side takes them from this interpreter's
# own thread states, because sys._current_frames() also makes frame objects for the threads of
# every other interpreter, with this interpreter's allocator (CPython 3.12/3.13), and freeing
# one of those in the wrong interpreter crashes the process.

def describe(idents, frames):
    import sys
    threading = sys.modules.get('threading')
    active = getattr(threading, '_active', None) or {}
    out = []
    for ident in idents:
        t = active.get(ident)
        if t is None:
            name, daemon = f'thread {ident} (not a threading.Thread)', True
        else:
            name, daemon = repr(t.name) + (' (daemon)' if t.daemon else ''), t.daemon
        f = frames.get(ident)
        where = f
        while where is not None and where.f_code.co_filename.endswith('threading.py'):
            where = where.f_back
        where = where or f
        if where is not None:
            code = where.f_code
            name += f' in {code.co_name} ({code.co_filename}:{where.f_lineno})'
        out.append((ident, daemon, name))
    return out
