# The runner every pool task calls: runs the file as `python script.py` would (runpy with
# run_name '__main__': __name__, __file__, sys.argv; the script's folder first on sys.path;
# source that is not valid in its encoding refused as the tokenizer refuses it; SystemExit
# with code 0 or None is success; then it waits for the non-daemon threads the script left
# running, as CPython does at exit), then flushes the interpreter's sys.stdout and
# sys.stderr so that the script's output comes before isola's report. The wait for threads
# is part of the task, so --timeout bounds it; a timeout there names the threads.

import io
import os
import runpy
import sys

import isola


def _check_source(path):
    # runpy compiles the file's bytes, which lets bytes that are not valid in the source
    # encoding through in comments; `python script.py` reads it with the tokenizer, which
    # refuses them. Do as the tokenizer does.
    if path.endswith(('.pyc', '.pyo')):
        return
    import tokenize
    with open(path, 'rb') as f:
        data = f.read()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError:
        # A first line that is not UTF-8 looks like a bad cookie to detect_encoding; an
        # unknown encoding really is one.
        encoding = 'utf-8'
        try:
            data.decode(encoding)
        except UnicodeDecodeError:
            pass
        else:
            raise
    try:
        data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b'\n', 0, e.start) + 1
        if encoding in ('utf-8', 'utf-8-sig'):
            msg = (f"Non-UTF-8 code starting with '\\x{data[e.start]:02x}' in file "
                   f"{path} on line {line}, but no encoding declared; see "
                   "https://peps.python.org/pep-0263/ for details")
        else:
            msg = f"{e.reason} for the encoding {encoding!r} in file {path} on line {line}"
        raise SyntaxError(msg, (path, line, None, None)) from None


def _describe(threads):
    frames = sys._current_frames()
    out = []
    for t in threads:
        text = repr(t.name)
        f = frames.get(t.ident)
        where = f
        while where is not None and where.f_code.co_filename.endswith('threading.py'):
            where = where.f_back
        where = where or f
        if where is not None:
            text += f' in {where.f_code.co_name} ({where.f_code.co_filename}:{where.f_lineno})'
        out.append(text)
    return ', '.join(out)


def _join_threads():
    threading = sys.modules.get('threading')
    if threading is None:
        return
    # On 3.13 threading.main_thread() is the process's main thread, which is not this
    # interpreter's to wait for; this worker thread is a dummy (daemon) thread then.
    skip = (threading.current_thread(), threading.main_thread())
    while True:
        left = [t for t in threading.enumerate() if t not in skip and not t.daemon]
        if not left:
            return
        try:
            # Short joins: a timeout or an interrupt is raised between them.
            left[0].join(0.05)
        except isola.TaskTimeout:
            raise isola.TaskTimeout('while waiting for the threads the script left running: '
                                    + _describe(left)) from None


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def run_script(path, argv, own_stdin):
    if not own_stdin:
        sys.stdin = open(os.devnull)
    _check_source(path)
    sys.argv = [path] + list(argv)
    folder = os.path.dirname(os.path.abspath(path))
    if not sys.path or sys.path[0] != folder:
        sys.path.insert(0, folder)
    join = True
    try:
        try:
            runpy.run_path(path, run_name='__main__')
        except SystemExit as e:
            # sys.exit(0) or sys.exit() is success, as for `python script.py`; the task then
            # counts as done in the pool's stats too.
            if e.code is not None and e.code != 0:
                raise
        except (KeyboardInterrupt, isola.TaskTimeout):
            join = False  # stopped: the threads get SystemExit when the interpreter ends
            raise
    finally:
        try:
            if join:
                _join_threads()
        finally:
            _flush()
