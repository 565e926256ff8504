"""Network classes whose pickles carry their own source code.

Decorating a class with `@persistent_class` makes each instance remember its constructor
arguments (`init_args`, `init_kwargs`) and makes its pickle embed the complete source of the
module that defines the class. Loading such a pickle rebuilds that module from the embedded
source, so a snapshot keeps working after the repository's code has changed or moved:

    @persistent_class
    class Generator(torch.nn.Module):
        ...

    pickle.dump(G, file)         # stores the state and the source of G's module
    G2 = pickle.load(file)       # rebuilds G's module from that source, then G2 from the state

When the embedded source equals the source of a module already loaded in this process, the
loaded module's classes are reused, so `isinstance` against the repository classes holds and
`copy.deepcopy` keeps the class. Otherwise the source runs in a private module registered in
`sys.modules` under a name derived from its hash; its own imports (`from torch_utils import
misc`, relative imports) resolve against the current repository, and `__file__` points at the
module's current location when it still exists, for finding data files next to it.

Pickles written by the public StyleGAN2-ADA / StyleGAN3 / EG3D releases use the same idea with
another metadata layout, unpickled through `_reconstruct_persistent_obj`; they load here too,
as long as the embedded sources find what they import in this repository. Their original module
name is not stored, so their classes report the module name `embedded_module`; an import hook
can set the right one.

Objects of other classes inside a persistent object (torch layers, helper classes) are
pickled by reference as usual, so their classes must be importable when loading: classes
defined next to a persistent network should be persistent too.
"""

import copy
import functools
import hashlib
import importlib.util
import inspect
import linecache
import sys
import types
from collections.abc import Callable
from typing import Any

import dnnlib

_FORMAT = 'torch_utils.persistence.persistent_object'
_FORMAT_VERSION = 1
# The metadata layout of pickles written by the public StyleGAN2-ADA / StyleGAN3 / EG3D code.
_RELEASE_LAYOUT_VERSION = 4
_RELEASE_MODULE_NAME = 'embedded_module'

# Per-process caches. Modules by a hash of (module name, source): lets a pickle reuse a module
# that is already loaded instead of executing the same source twice.
_module_by_source_key: dict[str, types.ModuleType] = {}
# Source of every private module built from an embedded source, by module name: pickling an
# object of such a module again must embed the same source, and there is no file to read.
_embedded_sources: dict[str, str] = {}
# Functions that may rewrite the metadata of each persistent object while it is unpickled.
_import_hooks: list[Callable[[dict[str, Any]], dict[str, Any]]] = []


def persistent_class(cls: type) -> type:
    """Class decorator: record constructor arguments and embed the module source in pickles.

    The class is modified in place and returned. Instances gain the read-only properties
    `init_args` (tuple) and `init_kwargs` (EasyDict), deep copies of the arguments taken before
    the constructor ran. A subclass of a persistent class must itself be decorated to be pickled
    with its source; an undecorated subclass is pickled by reference.
    """
    if not isinstance(cls, type):
        raise TypeError(f'persistent_class: expected a class, got {type(cls).__name__}')
    if '_persistent_source' in cls.__dict__:
        return cls
    if '<locals>' in cls.__qualname__:
        raise TypeError(
            f'persistent_class: {cls.__qualname__} is defined inside a function; define it at module '
            f'level so that it can be found again when loading'
        )
    for reserved in ('init_args', 'init_kwargs'):
        if reserved in cls.__dict__:
            raise TypeError(
                f'persistent_class: {cls.__qualname__} defines "{reserved}" itself; rename it, the '
                f'decorator provides that property'
            )

    module = sys.modules[cls.__module__]
    module_name = getattr(module, '_persistent_original_name', module.__name__)
    source = _module_source(module, cls)
    _remember_module(module_name, source, module)

    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        records_arguments = type(self) is cls
        if records_arguments:
            # Copied before the constructor runs, which may consume or mutate its arguments.
            args_copy, kwargs_copy = copy.deepcopy(args), copy.deepcopy(kwargs)
        original_init(self, *args, **kwargs)
        if records_arguments:
            self._init_args = args_copy
            self._init_kwargs = kwargs_copy

    def __reduce_ex__(self, protocol):
        if type(self) is not cls:
            return super(cls, self).__reduce_ex__(protocol)
        state = self.__getstate__()
        meta = dict(
            format=_FORMAT,
            version=_FORMAT_VERSION,
            module_name=module_name,
            module_source=source,
            class_name=cls.__qualname__,
            state=dict(state) if state is not None else {},
        )
        return _reconstruct_persistent_object, (meta,)

    def init_args(self) -> tuple:
        """Positional constructor arguments (a deep copy)."""
        return copy.deepcopy(self._init_args)

    def init_kwargs(self) -> dnnlib.EasyDict:
        """Keyword constructor arguments (a deep copy)."""
        return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

    cls.__init__ = __init__
    cls.__reduce_ex__ = __reduce_ex__
    cls.init_args = property(init_args)
    cls.init_kwargs = property(init_kwargs)
    cls._persistent_module_name = module_name
    cls._persistent_source = source
    return cls


def is_persistent(obj: Any) -> bool:
    """Whether `obj` is a class decorated with `persistent_class`, or an instance of one."""
    cls = obj if isinstance(obj, type) else type(obj)
    return '_persistent_source' in cls.__dict__


def qualified_class_name(obj: Any) -> str:
    """'package.module.ClassName' of a persistent class or instance, naming the original module.

    Classes rebuilt from an embedded source report the module the source came from, not the
    private module that holds them.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    if not is_persistent(cls):
        raise TypeError(f'qualified_class_name: {cls.__qualname__} is not decorated with @persistent_class')
    return f'{cls._persistent_module_name}.{cls.__qualname__}'


def import_hook(hook: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Register `hook(meta) -> meta`, called on every persistent object while it is unpickled.

    `meta` is a dict with keys format, version, module_name, module_source, class_name and state;
    a hook may rewrite any of them (for example patch an old source) and returns the dict to use.
    Hooks run in registration order. Returns `hook`, so this also works as a decorator.
    """
    if not callable(hook):
        raise TypeError(f'import_hook: expected a callable, got {type(hook).__name__}')
    _import_hooks.append(hook)
    return hook


# ------------------------------------------------------------------------------------------------


def _source_key(module_name: str, source: str) -> str:
    return hashlib.md5(f'{module_name}\0{source}'.encode()).hexdigest()


def _module_source(module: types.ModuleType, cls: type) -> str:
    if module.__name__ in _embedded_sources:
        return _embedded_sources[module.__name__]
    try:
        return inspect.getsource(module)
    except (OSError, TypeError) as error:
        raise TypeError(
            f'persistent_class: cannot read the source of module "{module.__name__}" defining '
            f'{cls.__qualname__} ({error}); define persistent classes in a .py file'
        ) from None


def _remember_module(module_name: str, source: str, module: types.ModuleType) -> None:
    key = _source_key(module_name, source)
    # A reloaded module object must not stay registered under the hash of its previous source.
    for stale_key in [k for k, m in _module_by_source_key.items() if m is module and k != key]:
        del _module_by_source_key[stale_key]
    _module_by_source_key[key] = module


def _current_module_file(module_name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError, AttributeError):
        return None
    return None if spec is None else spec.origin


def _module_from_source(module_name: str, source: str) -> types.ModuleType:
    """The module holding the classes built from `source` (originally named `module_name`)."""
    key = _source_key(module_name, source)
    module = _module_by_source_key.get(key)
    if module is not None:
        return module

    private_name = f'_persistent_{module_name.replace(".", "_")}_{key[:16]}'
    code_filename = f'<persistent source of {module_name} {key[:8]}>'
    module = types.ModuleType(private_name)
    module.__package__ = module_name.rpartition('.')[0]
    module.__file__ = _current_module_file(module_name) or code_filename
    module._persistent_original_name = module_name
    # Tracebacks and inspect read the embedded lines rather than the (possibly changed) file.
    linecache.cache[code_filename] = (len(source), None, source.splitlines(True), code_filename)
    _embedded_sources[private_name] = source
    sys.modules[private_name] = module
    _module_by_source_key[key] = module
    try:
        exec(compile(source, code_filename, 'exec'), module.__dict__)
    except BaseException:
        del sys.modules[private_name]
        del _embedded_sources[private_name]
        _module_by_source_key.pop(key, None)
        raise
    return module


def _reconstruct_persistent_object(meta: dict[str, Any]) -> Any:
    """Unpickling entry point: rebuild one persistent object from its metadata."""
    meta = dict(meta)
    for hook in _import_hooks:
        meta = hook(meta)
        if not isinstance(meta, dict):
            raise TypeError(
                f'persistence: import hook {getattr(hook, "__name__", hook)} returned '
                f'{type(meta).__name__}; a hook must return the metadata dict'
            )
    if meta.get('format') != _FORMAT or meta.get('version') != _FORMAT_VERSION:
        raise ValueError(
            f'persistence: unsupported persistent object format {meta.get("format")!r} version '
            f'{meta.get("version")!r}; this code reads version {_FORMAT_VERSION}, update the repository'
        )

    module = _module_from_source(meta['module_name'], meta['module_source'])
    cls: Any = module
    for part in meta['class_name'].split('.'):
        cls = getattr(cls, part, None)
        if cls is None:
            raise AttributeError(
                f'persistence: the embedded source of {meta["module_name"]} defines no class '
                f'{meta["class_name"]}; the pickle is inconsistent'
            )
    obj = cls.__new__(cls)
    state = meta['state']
    if hasattr(obj, '__setstate__'):
        obj.__setstate__(state)
    else:
        obj.__dict__.update(state)
    return obj


def _reconstruct_persistent_obj(meta: dict[str, Any]) -> Any:
    """Unpickling entry point of the public StyleGAN2-ADA / StyleGAN3 / EG3D pickles.

    Their metadata {type: 'class', version: 4, module_src, class_name, state} is translated to
    this module's layout, then handled like any other persistent object (import hooks included).
    """
    if meta.get('type') != 'class' or meta.get('version') != _RELEASE_LAYOUT_VERSION:
        raise ValueError(
            f'persistence: unsupported persistent object of type {meta.get("type")!r} version '
            f"{meta.get('version')!r}; expected type 'class' version {_RELEASE_LAYOUT_VERSION}"
        )
    return _reconstruct_persistent_object(
        dict(
            format=_FORMAT,
            version=_FORMAT_VERSION,
            module_name=_RELEASE_MODULE_NAME,
            module_source=meta['module_src'],
            class_name=meta['class_name'],
            state=meta['state'] if meta['state'] is not None else {},
        )
    )
