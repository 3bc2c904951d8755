# isola's extension policy inside one own-GIL interpreter (run by isola when it sets the
# interpreter up). CPython refuses an extension module that does not declare per-interpreter GIL
# support with "module X does not support loading in subinterpreters"; here that refusal says
# which module, why, and the ways out (strict), or the module is loaded anyway with an
# isola.UnsafeExtensionWarning (unsafe, for every module or the listed ones).

def install(policy, unsafe_modules, kind_of, warning):
    import _imp
    import warnings
    from importlib.machinery import BuiltinImporter, ExtensionFileLoader

    warned = set()

    def listed(name):
        parts = name.split('.')
        return any('.'.join(parts[:i]) in unsafe_modules for i in range(1, len(parts) + 1))

    import sys
    # CPython 3.12 runs a single-phase module's init inside this interpreter before it
    # refuses the module, and some crash there or when the interpreter ends (readline,
    # _curses, _testcapi). Loaded in the main interpreter first, the module is refused from
    # CPython's cache without its init running here. (3.13 runs every init in main itself.)
    main_first = sys.version_info < (3, 13)

    def guarded(load, spec):
        why = kind_of(spec.name, spec.origin) if main_first else None
        try:
            return load(spec)
        except ImportError as refusal:
            if 'does not support loading in subinterpreters' not in str(refusal):
                raise
            name = spec.name
            # Asked before loading it: it loads the module in the main interpreter, so that
            # CPython keeps the main interpreter's copy of a single-phase module, not one made
            # here.
            if why is None:
                why = kind_of(name, spec.origin)
            if policy == 'unsafe' or listed(name):
                previous = _imp._override_multi_interp_extensions_check(-1)
                try:
                    module = load(spec)
                finally:
                    _imp._override_multi_interp_extensions_check(previous)
                if name not in warned:
                    warned.add(name)
                    warnings.warn(
                        f"extension module {name!r} ({spec.origin}) does not support "
                        f"per-interpreter GILs ({why}) and was loaded into an "
                        f"own-GIL interpreter anyway (isola's unsafe extension policy): it may "
                        f"crash or corrupt data shared with other interpreters",
                        warning, 2)
                return module
            error = ImportError(
                f"module {name!r} ({spec.origin}) cannot be loaded in an own-GIL interpreter: "
                f"{why}. Run the code that needs it in the shared-GIL lane "
                f"(extension policy 'shared-gil' or 'auto'; isola run/map --extensions), or "
                f"load it anyway with the 'unsafe' policy (it may crash)")
            error.name = name
            error.path = spec.origin
            raise error from None

    # Extension modules from files, and the built-in ones (faulthandler, _tracemalloc, ...).
    from_file = ExtensionFileLoader.create_module

    def create_module(self, spec):
        return guarded(lambda s: from_file(self, s), spec)

    create_module.__wrapped__ = from_file
    ExtensionFileLoader.create_module = create_module

    builtin = BuiltinImporter.create_module

    def create_builtin(spec):
        if spec.name not in sys.builtin_module_names:
            return builtin(spec)
        return guarded(builtin, spec)

    create_builtin.__wrapped__ = builtin
    BuiltinImporter.create_module = staticmethod(create_builtin)
