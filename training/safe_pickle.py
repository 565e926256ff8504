"""Reading network pickles without running code from them.

A network pickle made by `torch_utils.persistence` stores each persistent network as a record
(module name, class name, the module's source text, the object's state) and tensors as torch
storages. `pickle.load` rebuilds such a file by executing the embedded source, and any pickle
can name any callable to run while it loads. The reader here executes nothing from the file:

- Its unpickler resolves only an allow-list of globals: tensor, parameter and storage rebuild
  functions (a storage's bytes are read with `torch.load(weights_only=True)`), numpy array and
  scalar reconstruction, `collections.OrderedDict`, `dnnlib.EasyDict`, builtin containers,
  torch dtypes, `torch.Size` and `torch.device`.
- A persistent record becomes a `PersistentRecord` holding its names and state; the embedded
  source is ignored.
- Any other class becomes an inert stand-in that only keeps the state it is given: objects
  pickled by reference (sub-modules, helper classes) are data. Calling such a global (as a
  pickle does to run a function) is refused with `UnsafePickleError`.

`rebuild_networks` then turns the records into networks of this repository: it imports the
class the record names (under `training.` or `torch_utils.` only), calls it with the stored
constructor arguments, loads the tensors of the record's state with `load_state_dict(strict)`,
and copies the plain attributes (numbers, strings, booleans, None) that the state holds, as
unpickling would have restored them.
"""

import collections
import importlib
import io
import pickle
from typing import Any, BinaryIO

import numpy as np
import torch

import dnnlib

ALLOWED_CLASS_PREFIXES = ('training.', 'torch_utils.')
_OWN_RECORD = ('torch_utils.persistence', '_reconstruct_persistent_object')
_RELEASE_RECORD = ('torch_utils.persistence', '_reconstruct_persistent_obj')
_PLAIN_TYPES = (bool, int, float, str, type(None))


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks to run code that is not on the allow-list, or names a class this repository lacks."""


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
    return type(name, (InertObject,), {'_path': f'{module}.{name}', '__module__': 'training.safe_pickle'})


def _own_record(meta: dict) -> PersistentRecord:
    if not isinstance(meta, dict) or not isinstance(meta.get('module_name'), str) or not isinstance(meta.get('class_name'), str):
        raise UnsafePickleError('a persistent record without module and class names')
    return PersistentRecord(meta['module_name'], meta['class_name'], dict(meta.get('state') or {}), 'own')


def _release_record(meta: dict) -> PersistentRecord:
    if not isinstance(meta, dict) or not isinstance(meta.get('class_name'), str):
        raise UnsafePickleError('a persistent record without a class name')
    return PersistentRecord('', meta['class_name'], dict(meta.get('state') or {}), 'release')


def _storage_from_bytes(data: bytes) -> Any:
    """A storage pickled by value: its bytes are a torch.save archive, read with weights_only."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError('a storage record without bytes')
    return torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg._reconstructor for protocol 0/1 pickles: only inert objects and allowed containers."""
    if base is not object or not isinstance(cls, type) or not issubclass(cls, (InertObject, dict, collections.OrderedDict)):
        raise UnsafePickleError(f'the pickle reconstructs {getattr(cls, "__name__", cls)!r} from {getattr(base, "__name__", base)!r}')
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
        raise UnsafePickleError('the pickle refers to external objects (persistent ids), which network pickles do not use')


def load(file: BinaryIO) -> Any:
    """Unpickle `file` with the restricted unpickler (see the module docstring); nothing from it is executed."""
    return _RestrictedUnpickler(file).load()


# ------------------------------------------------------------------------------------------------
# Turning records into this repository's networks.

def import_network_class(qualified_name: str) -> type:
    """The nn.Module class `package.module.Class` of this repository; only classes defined under
    training. or torch_utils. are accepted (a dotted path through an imported module is not)."""
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
        if (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ == module_name
                and cls.__qualname__ == '.'.join(class_path)):
            return cls
        break
    raise UnsafePickleError(f'this repository defines no network class {qualified_name}')


def record_tensors(state: dict, prefix: str = '') -> dict:
    """The parameters and persistent buffers of a module's state and of its sub-modules' states,
    by state-dict name. -> {name: tensor}"""
    tensors = {}
    for name, value in (state.get('_parameters') or {}).items():
        if value is not None:
            tensors[prefix + name] = value
    skipped = state.get('_non_persistent_buffers_set') or set()
    for name, value in (state.get('_buffers') or {}).items():
        if value is not None and name not in skipped:
            tensors[prefix + name] = value
    for name, child in (state.get('_modules') or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentRecord, InertObject)) or not isinstance(child.state, dict):
            raise UnsafePickleError(f'the sub-module {prefix + name} is stored as {type(child).__name__}, not as a module state')
        tensors.update(record_tensors(child.state, f'{prefix}{name}.'))
    return tensors


def _copy_plain_attributes(module: torch.nn.Module, state: dict) -> None:
    """Numbers, strings, booleans and None of a stored state onto the rebuilt module and its sub-modules,
    where the module has an attribute of that name holding a value of such a type."""
    for name, value in state.items():
        if isinstance(value, _PLAIN_TYPES) and not name.startswith('_') \
                and isinstance(getattr(module, name, object()), _PLAIN_TYPES):
            setattr(module, name, value)
    for name, child in (state.get('_modules') or {}).items():
        sub_module = module._modules.get(name)
        if sub_module is not None and isinstance(child, (PersistentRecord, InertObject)) and isinstance(child.state, dict):
            _copy_plain_attributes(sub_module, child.state)


def rebuild(record: PersistentRecord) -> torch.nn.Module:
    """This repository's network for a record: built from the stored constructor arguments, then
    given the stored tensors (all of them, and no others; with their requires_grad) and plain attributes."""
    if record.layout != 'own':
        raise UnsafePickleError(f'{record.class_name} is a persistent record of another code base (StyleGAN2-ADA / '
                                f'EG3D layout), which the safe reader does not map to this repository')
    cls = import_network_class(record.qualified_name)
    args, kwargs = record.state.get('_init_args', ()), record.state.get('_init_kwargs', {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise UnsafePickleError(f'{record.qualified_name}: the stored constructor arguments are not a tuple and a dict')
    try:
        module = cls(*args, **kwargs)
    except Exception as error:
        raise UnsafePickleError(f'building {record.qualified_name} from the stored arguments failed '
                                f'({type(error).__name__}: {error}); the class changed since the file was saved') from None
    tensors = record_tensors(record.state)
    incompatible = module.load_state_dict(tensors, strict=False)
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise UnsafePickleError(f'the stored tensors of {record.qualified_name} do not fit this repository\'s class '
                                f'(missing: {", ".join(incompatible.missing_keys[:5]) or "none"}; unexpected: '
                                f'{", ".join(incompatible.unexpected_keys[:5]) or "none"})')
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(bool(tensors[name].requires_grad))
    _copy_plain_attributes(module, record.state)  # the training flags among them
    return module


def rebuild_networks(data: Any) -> Any:
    """A loaded network pickle with every top-level record rebuilt (see `rebuild`)."""
    if isinstance(data, PersistentRecord):
        return rebuild(data)
    if isinstance(data, dict):
        return type(data)((key, rebuild(value) if isinstance(value, PersistentRecord) else value)
                          for key, value in data.items())
    return data
