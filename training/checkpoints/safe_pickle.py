"""Reading network pickles without running code from them.

A network pickle made by `torch_utils.persistence` stores each persistent network as a record
(module name, class name, the module's source text, the object's state) and tensors as torch
storages. `pickle.load` rebuilds such a file by executing the embedded source, and any pickle
can name any callable to run while it loads. The reader here executes nothing from the file:

- Its unpickler resolves only an allow-list of globals: tensor, parameter and storage rebuild
  functions (a storage's bytes are read by torch's loader with an unpickler that resolves
  nothing but the storage types), numpy array and scalar reconstruction,
  `collections.OrderedDict`, `dnnlib.EasyDict`, builtin containers, torch dtypes, `torch.Size`
  and `torch.device`.
- A persistent record becomes a `PersistentRecord` holding its names and state; the embedded
  source is ignored.
- Any other class becomes an inert stand-in that only keeps the state it is given: objects
  pickled by reference (sub-modules, helper classes) are data. Calling such a global (as a
  pickle does to run a function) is refused with `UnsafePickleError`.

`rebuild_networks` then turns the records into networks of this repository, as unpickling
would but with this repository's code: each record becomes an object of the class it names
(a persistent class under `training.` or `torch_utils.`, defined where it is named; inert
sub-modules may also be torch.nn layers), made with `cls.__new__` and given its stored state
with `__setstate__`. No constructor runs, so loading is as fast as unpickling; a file whose
classes have changed since it was saved loads through its weights file instead.

Classes are looked up under the module paths of this version; files written before the networks,
data, checkpoints and tools' engines moved into sub-packages of `training` name the old paths,
which `current_class_path` maps (`MOVED_MODULES`).

Records of the StyleGAN2-ADA / EG3D layout are not mapped here: the published 3DPortraitGAN
checkpoints are recognised by the loader, and `training.checkpoints.authors` rebuilds their
networks as this project's classes from their stored arguments and tensors.
"""

import collections
import importlib
import io
import pickle
from typing import Any, BinaryIO

import numpy as np
import torch

import dnnlib
from torch_utils import persistence

ALLOWED_CLASS_PREFIXES = ('training.', 'torch_utils.')
# Modules of network classes that moved, old path -> new path: files written by earlier versions name the old.
MOVED_MODULES = {
    'training.networks_stylegan2': 'training.networks.stylegan2',
    'training.triplane': 'training.networks.triplane',
    'training.decoder': 'training.networks.decoder',
    'training.superresolution': 'training.networks.superresolution',
    'training.pose_branch': 'training.networks.pose_branch',
    'training.dual_discriminator': 'training.networks.dual_discriminator',
}
_OWN_RECORD = ('torch_utils.persistence', '_reconstruct_persistent_object')
_RELEASE_RECORD = ('torch_utils.persistence', '_reconstruct_persistent_obj')


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks to run code that is not on the allow-list, or names a class this repository lacks."""


class ConversionError(UnsafePickleError):
    """A published checkpoint of another code base whose networks cannot be mapped onto this project's."""


class PersistentRecord:
    """A persistent network as stored in a network pickle: its module and class names, and its state.

    state: the object's attribute dict (`_parameters`, `_buffers`, `_modules`, `_init_args`,
    `_init_kwargs`, ...). `layout` is 'own' for this project's records and 'release' for those of
    the StyleGAN2-ADA / EG3D releases, which do not store the module name.
    """

    def __init__(self, module_name: str, class_name: str, state: dict, layout: str):
        self.module_name = module_name
        self.class_name = class_name
        self.state = state
        self.layout = layout

    @property
    def qualified_name(self) -> str:
        return f'{self.module_name}.{self.class_name}'

    def __repr__(self) -> str:
        return f'PersistentRecord({self.qualified_name})'


class InertObject:
    """An object of a class outside the allow-list, kept as data: its class's path and its state."""

    _path = '?'

    def __init__(self, *args, **kwargs):
        raise UnsafePickleError(f'the pickle calls {self._path}, which is not on the allow-list of the safe reader')

    def __setstate__(self, state: Any) -> None:
        self.__dict__['_state'] = state

    @property
    def state(self) -> Any:
        return self.__dict__.get('_state')

    def __repr__(self) -> str:
        return f'InertObject({self._path})'


def _inert_class(module: str, name: str) -> type:
    return type(name, (InertObject,), {'_path': f'{module}.{name}', '__module__': 'training.checkpoints.safe_pickle'})


def _own_record(meta: dict) -> PersistentRecord:
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get('module_name'), str)
        or not isinstance(meta.get('class_name'), str)
    ):
        raise UnsafePickleError('a persistent record without module and class names')
    return PersistentRecord(meta['module_name'], meta['class_name'], dict(meta.get('state') or {}), 'own')


def _release_record(meta: dict) -> PersistentRecord:
    if not isinstance(meta, dict) or not isinstance(meta.get('class_name'), str):
        raise UnsafePickleError('a persistent record without a class name')
    return PersistentRecord('', meta['class_name'], dict(meta.get('state') or {}), 'release')


class _StorageUnpickler(pickle.Unpickler):
    """Unpickler of the small pickles inside a storage's torch.save bytes: builtin values only.

    torch's loader resolves the storage types itself (before asking find_class), so every
    other global is refused; it is the C unpickler, several times faster than weights_only's.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == 'collections' and name == 'OrderedDict':
            return collections.OrderedDict
        raise UnsafePickleError(f'a storage record refers to {module}.{name}')


class _StoragePickleModule:
    """The `pickle_module` that torch.load reads a storage record with."""

    Unpickler = _StorageUnpickler
    __name__ = 'safe_pickle storage reader'

    @staticmethod
    def load(file: BinaryIO, **kwargs) -> Any:
        return _StorageUnpickler(file, **kwargs).load()


def _storage_from_bytes(data: bytes) -> Any:
    """A storage pickled by value: its bytes are a torch.save archive of the storage alone."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError('a storage record without bytes')
    storage = torch.load(io.BytesIO(data), map_location='cpu', pickle_module=_StoragePickleModule, weights_only=False)
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f'a storage record holds a {type(storage).__name__}')
    return storage


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg._reconstructor for protocol 0/1 pickles: only inert objects and allowed containers."""
    if (
        base is not object
        or not isinstance(cls, type)
        or not issubclass(cls, (InertObject, dict, collections.OrderedDict))
    ):
        raise UnsafePickleError(
            f'the pickle reconstructs {getattr(cls, "__name__", cls)!r} from {getattr(base, "__name__", base)!r}'
        )
    return cls.__new__(cls)


def _allowed_globals() -> dict:
    allowed = {
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
        ('dnnlib', 'EasyDict'): dnnlib.EasyDict,
        ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
        ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): torch._utils._rebuild_parameter_with_state,
        ('torch.storage', '_load_from_bytes'): _storage_from_bytes,
        ('torch', 'Size'): torch.Size,
        ('torch', 'device'): torch.device,
        ('copyreg', '_reconstructor'): _reconstructor,
        _OWN_RECORD: _own_record,
        _RELEASE_RECORD: _release_record,
    }
    for name in ('set', 'frozenset', 'list', 'dict', 'tuple', 'slice', 'complex', 'bytearray', 'object'):
        allowed[('builtins', name)] = getattr(__import__('builtins'), name)
    multiarray = importlib.import_module('numpy._core.multiarray')
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed[(module, '_reconstruct')] = multiarray._reconstruct
        allowed[(module, 'scalar')] = multiarray.scalar
    allowed[('numpy', 'ndarray')] = np.ndarray
    allowed[('numpy', 'dtype')] = np.dtype
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals come from the allow-list; other classes become inert."""

    allowed = None

    def find_class(self, module: str, name: str) -> Any:
        if _RestrictedUnpickler.allowed is None:
            _RestrictedUnpickler.allowed = _allowed_globals()
        found = self.allowed.get((module, name))
        if found is not None:
            return found
        if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _inert_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            'the pickle refers to external objects (persistent ids), which network pickles do not use'
        )


def load(file: BinaryIO) -> Any:
    """Unpickle `file` with the restricted unpickler (see the module docstring); nothing from it is executed."""
    return _RestrictedUnpickler(file).load()


# ------------------------------------------------------------------------------------------------
# Turning records into this repository's networks.


def current_class_path(qualified_name: str) -> str:
    """`package.module.Class` as this version names it: a path under a module that has moved since
    (`MOVED_MODULES`) is renamed, any other is returned as it is."""
    module_name, _, class_name = qualified_name.rpartition('.')
    return f'{MOVED_MODULES.get(module_name, module_name)}.{class_name}'


def import_network_class(qualified_name: str) -> type:
    """The nn.Module class `package.module.Class` of this repository; only classes defined under
    training. or torch_utils. are accepted (a dotted path through an imported module is not). A path
    of an earlier version is first mapped to the module where the class lives now."""
    qualified_name = current_class_path(qualified_name)
    if not qualified_name.startswith(ALLOWED_CLASS_PREFIXES):
        raise UnsafePickleError(f'the class {qualified_name} is outside {", ".join(ALLOWED_CLASS_PREFIXES)}')
    parts = qualified_name.split('.')
    for split in range(len(parts) - 1, 0, -1):
        module_name, class_path = '.'.join(parts[:split]), parts[split:]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue
            raise
        cls: Any = module
        for attribute in class_path:
            cls = getattr(cls, attribute, None)
        if (
            isinstance(cls, type)
            and issubclass(cls, torch.nn.Module)
            and cls.__module__ == module_name
            and cls.__qualname__ == '.'.join(class_path)
        ):
            return cls
        break
    raise UnsafePickleError(f'this repository defines no network class {qualified_name}')


def _module_class(path: str, persistent: bool) -> type:
    """The nn.Module class a stored object names: this repository's (a persistent class for a
    persistent record), or one of torch.nn's own layers and containers."""
    if path.startswith('torch.nn.modules.') and not persistent:
        module_name, _, class_name = path.rpartition('.')
        cls = getattr(importlib.import_module(module_name), class_name, None) if module_name.count('.') == 3 else None
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ == module_name:
            return cls
        raise UnsafePickleError(f'torch defines no layer {path}')
    cls = import_network_class(path)
    if persistent != persistence.is_persistent(cls):
        raise UnsafePickleError(
            f'{path} is {"not " if persistent else ""}a persistent class in this repository, unlike in the file'
        )
    return cls


def _materialize(value: Any, memo: dict) -> Any:
    """Records and inert objects -> objects of the classes they name, with their stored state; containers
    are walked, everything else (tensors, numbers, strings, arrays) is kept. Shared objects stay shared."""
    if isinstance(value, (PersistentRecord, InertObject)):
        if id(value) in memo:
            return memo[id(value)]
        persistent = isinstance(value, PersistentRecord)
        if persistent and value.layout != 'own':
            raise UnsafePickleError(
                f'{value.class_name} is a persistent record of another code base (StyleGAN2-ADA / '
                f'EG3D layout), which the safe reader does not map to this repository (of that '
                f'layout it maps the published 3DPortraitGAN checkpoints only)'
            )
        cls = _module_class(value.qualified_name if persistent else value._path, persistent)
        state = value.state
        if not isinstance(state, dict) or not all(
            isinstance(state.get(key), dict) for key in ('_parameters', '_buffers', '_modules')
        ):
            raise UnsafePickleError(f'the stored {cls.__qualname__} has no module state')
        module = memo[id(value)] = cls.__new__(cls)
        module.__setstate__({key: _materialize(item, memo) for key, item in state.items()})
        return module
    if isinstance(value, dict):
        return type(value)((key, _materialize(item, memo)) for key, item in value.items())
    if isinstance(value, (list, tuple, set, frozenset)) and not isinstance(value, torch.Size):
        return type(value)(_materialize(item, memo) for item in value)
    return value


def rebuild_networks(data: Any) -> Any:
    """A loaded network pickle with every record and inert module turned into this repository's class
    (or torch.nn's) with the stored state, as unpickling does: objects are made with `cls.__new__` and
    `__setstate__`; no constructor and nothing from the file runs. (The published 3DPortraitGAN
    checkpoints are rebuilt by training.checkpoints.authors instead.)
    """
    return _materialize(data, {})
