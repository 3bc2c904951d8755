"""Makes Debian's pure-Python packages importable by another CPython (3.12, 3.13).

usage: debian_pure_path.py [--source DIR] [--dest DIR] [--python PY] [--no-deps] [-q] MODULE...

Debian installs gunicorn, flask and their kin for its own python3 (3.11) in
/usr/lib/python3/dist-packages, next to modules compiled for 3.11. Putting that folder on
another interpreter's path would let it find those compiled modules too. Instead this builds a
folder that mirrors only the top-level packages (or single-file modules) of the named modules
(gunicorn for gunicorn.app.wsgiapp), as real folders holding symbolic links to their files,
leaving out every compiled extension module (*.so: markupsafe's _speedups, for one; such a
package must fall back to pure Python) and every __pycache__, plus the packages' metadata
folders (*.egg-info, *.dist-info). The interpreter writes its own bytecode into the mirror,
never into dist-packages.

Unless --no-deps is given, the named modules are then imported, one by one, in a fresh
`PY -I` process with the mirror first on sys.path; a top-level module found missing that
SOURCE has is added and the check runs again, until every named module imports. Name the
submodules a program imports lazily (gunicorn.app.wsgiapp, gunicorn.workers.gthread), so that
their dependencies are found too. The folder's path is printed on stdout; what was added or
left out goes to stderr (not with -q). Exit status 1 when a package is not in SOURCE or a
module does not import with PY.

--dest DIR is made if missing; an existing one must be empty or a mirror this script made (it
is then rebuilt). Without --dest a new folder is made under the temporary directory: the
caller removes it.

Run as a file or as `python -I -c <this file's text> ARGS...`.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

MARKER = '.debian_pure_path'
DEFAULT_SOURCE = '/usr/lib/python3/dist-packages'
EXTENSION = re.compile(r'\.(so|pyd)$')

# Imports each named module in turn; prints the name of the first missing top-level module
# (or OK). The mirror comes first on sys.path so that nothing else shadows it.
CHECK = r'''
import sys
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2:]:
    try:
        __import__(name)
    except ModuleNotFoundError as e:
        if e.name is None:
            raise
        print('MISSING', e.name.partition('.')[0], 'importing', name)
        sys.exit(0)
print('OK')
'''


QUIET = False


def note(message):
    if not QUIET:
        print('debian_pure_path: ' + message, file=sys.stderr)


def fail(message):
    sys.exit('debian_pure_path: ' + message)


def normalise(name):
    return re.sub(r'[-_.]+', '_', name).lower()


def prepare_dest(dest):
    if dest is None:
        return tempfile.mkdtemp(prefix='isola-pure-')
    if os.path.isdir(dest) and os.listdir(dest):
        if not os.path.exists(os.path.join(dest, MARKER)):
            fail(f'{dest} is neither empty nor a folder this script made; give another --dest')
        shutil.rmtree(dest)
    os.makedirs(dest, exist_ok=True)
    return dest


def metadata_dirs(source, name):
    """The *.egg-info / *.dist-info folders in source that describe top-level module name."""
    found = []
    for entry in os.listdir(source):
        if not entry.endswith(('.egg-info', '.dist-info')):
            continue
        path = os.path.join(source, entry)
        top_level = os.path.join(path, 'top_level.txt')
        if os.path.isfile(top_level):
            with open(top_level, encoding='utf-8') as f:
                if name in f.read().split():
                    found.append(entry)
            continue
        project = entry.rsplit('.', 1)[0].split('-', 1)[0]
        if normalise(project) == normalise(name):
            found.append(entry)
    return found


def mirror(source, dest, name):
    """Mirrors one top-level package or module into dest; returns the extension modules left
    out. Raises FileNotFoundError when source has neither name/ nor name.py."""
    package = os.path.join(source, name)
    module = package + '.py'
    skipped = []
    if os.path.isdir(package):
        for root, dirs, files in os.walk(package):
            dirs[:] = sorted(d for d in dirs if d != '__pycache__')
            target = os.path.join(dest, os.path.relpath(root, source))
            os.makedirs(target, exist_ok=True)
            for f in sorted(files):
                if EXTENSION.search(f):
                    skipped.append(os.path.relpath(os.path.join(root, f), source))
                    continue
                os.symlink(os.path.join(root, f), os.path.join(target, f))
    elif os.path.isfile(module):
        os.symlink(module, os.path.join(dest, name + '.py'))
    else:
        raise FileNotFoundError(name)
    for meta in metadata_dirs(source, name):
        link = os.path.join(dest, meta)
        if not os.path.lexists(link):
            os.symlink(os.path.join(source, meta), link)
    return skipped


def check_imports(python, dest, names):
    """None when every name imports, else the missing top-level module's name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('PYTHON')}
    run = subprocess.run([python, '-I', '-c', CHECK, dest, *names], env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        fail(f'importing {", ".join(names)} with {python} failed:\n{run.stderr.strip()}')
    words = run.stdout.split()
    if words[:1] == ['MISSING']:
        return words[1], words[3]
    return None


def main():
    parser = argparse.ArgumentParser(
        prog='debian_pure_path.py',
        description='Mirror pure-Python packages of Debian\'s dist-packages for another CPython.')
    parser.add_argument('modules', nargs='+', metavar='MODULE',
                        help='import names: flask, gunicorn.app.wsgiapp (whose top-level '
                             'package is mirrored)')
    parser.add_argument('--source', default=DEFAULT_SOURCE,
                        help=f'where the packages are (default {DEFAULT_SOURCE})')
    parser.add_argument('--dest', help='the folder to build (default: a new temporary one)')
    parser.add_argument('--python', default=sys.executable,
                        help='the interpreter that must import them (default: this one)')
    parser.add_argument('--no-deps', action='store_true',
                        help='mirror only the named packages; do not import them')
    parser.add_argument('-q', '--quiet', action='store_true',
                        help='print only errors on stderr')
    args = parser.parse_args()
    global QUIET
    QUIET = args.quiet

    if not os.path.isdir(args.source):
        fail(f'{args.source} does not exist (Debian\'s python3 packages are not installed)')
    dest = prepare_dest(args.dest)
    try:
        build(args, dest)
    except BaseException:
        if args.dest is None:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    print(dest)


def build(args, dest):
    with open(os.path.join(dest, MARKER), 'w', encoding='utf-8') as f:
        f.write(f'made by tools/bench/py/debian_pure_path.py from {args.source}\n')

    done = set()

    def add(name, why):
        try:
            skipped = mirror(args.source, dest, name)
        except FileNotFoundError:
            if why:
                fail(f'{name}{why} is neither in the standard library of {args.python} nor '
                     f'in {args.source}')
            fail(f'{name} is not in {args.source} (apt-get install python3-{name}?)')
        done.add(name)
        for s in skipped:
            note(f'left out the compiled module {s}')

    for module in args.modules:
        name = module.partition('.')[0]
        if name not in done:
            add(name, '')
    if not args.no_deps:
        while (missing := check_imports(args.python, dest, args.modules)) is not None:
            name, importer = missing
            if name in done:
                fail(f'{name} is mirrored yet importing {importer} cannot find it')
            note(f'added {name}, which {importer} imports')
            add(name, f' (imported by {importer})')


if __name__ == '__main__':
    main()
