# The modules `isola compat --stdlib` and `isola compat --path DIR` check, listed in an
# interpreter of the parent process (tools/compat/compat_command.cpp). Nothing is imported from
# the folder: names come from file names, as the import system would find them.

import importlib.machinery
import os
import pkgutil
import sys


def stdlib_modules():
    """The running CPython's extension modules: those built into it (but isola's) and the .so
    files of its lib-dynload folder, sorted."""
    # isola's own modules are built in too; they are not the standard library's.
    names = {n for n in sys.builtin_module_names if n != 'isola' and not n.startswith('isola.')}
    for folder in sys.path:
        if os.path.basename(folder) != 'lib-dynload' or not os.path.isdir(folder):
            continue
        for file in os.listdir(folder):
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                if file.endswith(suffix):
                    names.add(file[:-len(suffix)])
                    break
    return sorted(names)


def stdlib_dynload():
    """The lib-dynload folder on sys.path, relative to sys.prefix when it is inside it, or
    ''."""
    for folder in sys.path:
        if os.path.basename(folder) == 'lib-dynload' and os.path.isdir(folder):
            relative = os.path.relpath(folder, sys.prefix)
            return folder if relative.startswith('..') else relative
    return ''


def path_modules(folder):
    """Every top-level module and package importable from `folder` (Python files, packages
    with an __init__, extension modules), sorted."""
    return sorted({m.name for m in pkgutil.iter_modules([folder]) if m.name != '__main__'})
