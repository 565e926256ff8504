"""Saving and loading network snapshots, in two formats.

Network pickle (`network-snapshot-*.pkl`, as EG3D): a pickled dict with `G`, `D`, `G_ema`,
`D_ema`, `training_set_kwargs`, `augment_pipe`, ... Persistent networks carry their source
code. By default a pickle is read by `training.checkpoints.safe_pickle`, which runs nothing from the file
and rebuilds the networks from this repository's classes; `trust_pickle=True` unpickles it
with `pickle.load`, running the code it holds (only for files from sources you trust).

Weights file: `torch.save` of plain tensors, strings and dicts only, loadable with
`torch.load(weights_only=True)` and executing no pickled code:

    {'format': WEIGHTS_FORMAT, 'version': 1,
     'modules': {key: {'class': 'training.networks.triplane.TriPlaneGenerator',
                       'init_args_json': '[...]', 'init_kwargs_json': '{...}',
                       'state_dict': {name: tensor}}},
     'extra_json': '{...}'}

Modules are rebuilt by importing their class from this repository (only under `training.` or
`torch_utils.`) and calling it with the stored constructor arguments.

Both writers go through a temporary file in the target directory that is fsynced and then
renamed over the target, so a crash leaves either the previous file or the new one, never a
truncated file.
"""

import copy
import json
import os
import pickle
import zipfile
from typing import Any, BinaryIO

import torch

import dnnlib
from torch_utils import persistence
from training.checkpoints import authors, safe_pickle
from training.checkpoints.atomic_files import atomic_write

WEIGHTS_FORMAT = '3dportraitgan-weights'
TRUST_PICKLE_HELP = (
    'Load network pickles by running the code stored in them (only for files from sources you '
    'trust); by default nothing from the file runs and the networks are rebuilt from this repository'
)
WEIGHTS_VERSION = 1
NETWORK_KEYS = ('G', 'G_ema', 'D', 'D_ema')
_ZIP_MAGIC = b'PK\x03\x04'
# What unpickling a truncated, corrupt or foreign file raises (besides the safe reader's refusals).
UNREADABLE_PICKLE_ERRORS = (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    UnicodeDecodeError,
    IndexError,
    KeyError,
    TypeError,
    MemoryError,
    OverflowError,
)


class CheckpointError(Exception):
    """A snapshot file that is missing, incomplete or not a snapshot."""


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such file; pass the path of a network pickle (.pkl) or a weights file (.pt)')


def _is_zip(path: str) -> bool:
    with open(path, 'rb') as file:
        return file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC


# ------------------------------------------------------------------------------------------------
# Network pickles.


def _snapshot_module(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).eval().requires_grad_(False).cpu()


def _set_rendering_resolution(modules: dict[str, Any], resolution: int) -> None:
    """Set the default neural rendering resolution of every generator among `modules`' values."""
    for module in modules.values():
        if hasattr(module, 'neural_rendering_resolution'):
            module.neural_rendering_resolution = int(resolution)


def save_network_pickle(path: str, data: dict[str, Any], neural_rendering_resolution: int | None = None) -> None:
    """Pickle `data` to `path` atomically; nn.Module values are deep-copied, set to eval, frozen and moved to CPU.

    data: a dict with at least one of G, G_ema, D (e.g. G, D, G_ema, D_ema, training_set_kwargs,
    augment_pipe). The live modules passed in are not modified. neural_rendering_resolution: the
    rendering resolution the generators of the snapshot render at by default (their attribute of
    that name, as EG3D pickles carry it); None keeps theirs.
    """
    if not isinstance(data, dict) or not any(data.get(key) is not None for key in NETWORK_KEYS[:3]):
        raise ValueError(f'save_network_pickle: {path}: expected a dict holding at least one of G, G_ema, D')
    snapshot = {
        key: _snapshot_module(value) if isinstance(value, torch.nn.Module) else copy.deepcopy(value)
        for key, value in data.items()
    }
    if neural_rendering_resolution is not None:
        _set_rendering_resolution(snapshot, neural_rendering_resolution)
    atomic_write(path, lambda file: pickle.dump(snapshot, file, protocol=pickle.HIGHEST_PROTOCOL))


def _read_safely(file: BinaryIO) -> dict[str, Any]:
    """A network pickle read by the safe reader, its networks rebuilt from this repository's classes: this
    project's records as they are, a published 3DPortraitGAN checkpoint through its converter."""
    raw = safe_pickle.load(file)
    if authors.is_release_snapshot(raw):
        return authors.rebuild_release_snapshot(raw)
    return safe_pickle.rebuild_networks(raw)


def load_network_pickle(path: str, device: Any = 'cpu', trust_pickle: bool = False) -> dict[str, Any]:
    """Load a network pickle; nn.Module values are moved to `device`. Raises CheckpointError on a bad file.

    By default nothing from the file is executed (training.checkpoints.safe_pickle); trust_pickle=True runs
    the code stored in the file, which only a file from a trusted source may do.
    """
    _require_file(path)
    if _is_zip(path):
        raise CheckpointError(
            f'{path}: a torch zip archive (weights file), not a network pickle; load it with load_weights or load_any'
        )
    try:
        with open(path, 'rb') as file:
            data = pickle.load(file) if trust_pickle else _read_safely(file)
    except safe_pickle.ConversionError as error:
        raise CheckpointError(f'{path}: not loaded: {error}; nothing from the file was run') from None
    except safe_pickle.UnsafePickleError as error:
        raise CheckpointError(
            f'{path}: not loaded: {error}; nothing from the file was run (if you trust its source, '
            f'--trust-pickle loads it by running its code)'
        ) from None
    except (ImportError, AttributeError) as error:
        raise CheckpointError(
            f'{path}: the pickle refers to code that cannot be found ({error}); install the '
            f'missing package or use the code version the file was saved with'
        ) from None
    except UNREADABLE_PICKLE_ERRORS as error:
        raise CheckpointError(
            f'{path}: not a readable network pickle ({type(error).__name__}: {error}); the file is '
            f'truncated, corrupt or of another kind, copy or save it again'
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f'{path}: not a network snapshot: it holds a {type(data).__name__}, expected a dict with G, G_ema or D'
        )
    if not any(isinstance(data.get(key), torch.nn.Module) for key in NETWORK_KEYS[:3]):
        raise CheckpointError(
            f'{path}: not a network snapshot: none of G, G_ema, D is a network '
            f'(keys: {", ".join(map(str, data)) or "none"})'
        )
    return {key: value.to(device) if isinstance(value, torch.nn.Module) else value for key, value in data.items()}


# ------------------------------------------------------------------------------------------------
# Weights-only files.


def _to_json_value(value: Any, where: str) -> Any:
    """Convert constructor arguments to JSON types: tuples -> lists, EasyDict -> dict; refuse anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float('inf'), float('-inf')):
            raise ValueError(f'save_weights: {where} is {value}, which JSON cannot store; pass a finite number')
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json_value(item, f'{where}[{index}]') for index, item in enumerate(value)]
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(
                    f'save_weights: {where} has the key {key!r}, which is not a string; JSON needs string keys'
                )
            converted[key] = _to_json_value(item, f'{where}[{key!r}]')
        return converted
    if hasattr(value, 'item') and getattr(value, 'shape', None) == ():
        return _to_json_value(value.item(), where)
    raise ValueError(
        f'save_weights: {where} is a {type(value).__name__}, which is not JSON-serializable; '
        f'construct the module from numbers, strings, lists and dicts only'
    )


def save_weights(
    path: str,
    modules: dict[str, torch.nn.Module],
    extra: dict[str, Any] | None = None,
    parameter_dtypes: dict[str, torch.dtype] | None = None,
) -> None:
    """Write a weights-only file: per module its class, constructor arguments (JSON) and state dict.

    modules: {key: persistent nn.Module of this repository}; extra: JSON-serializable metadata
    (e.g. training_set_kwargs), returned by `load_weights` next to the modules.
    parameter_dtypes: {key: dtype} stores the floating-point parameters of those modules in that
    dtype (e.g. torch.float16, half the size); buffers keep theirs. Loading casts them back to the
    dtype the module is built with.
    """
    extra = {} if extra is None else extra
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f'save_weights: {path}: expected a non-empty dict of modules')
    unknown = sorted(set(parameter_dtypes or {}) - set(modules))
    if unknown:
        raise ValueError(f'save_weights: {path}: parameter_dtypes names {", ".join(unknown)}, which are not modules')
    clashes = sorted(set(modules) & set(extra))
    if clashes:
        raise ValueError(f'save_weights: {path}: {", ".join(clashes)} given both as module and as extra; rename one')

    entries = {}
    for key, module in modules.items():
        if not isinstance(module, torch.nn.Module):
            raise ValueError(
                f'save_weights: modules[{key!r}] is a {type(module).__name__}, not a torch.nn.Module; '
                f'pass non-module values in extra'
            )
        if not persistence.is_persistent(module) or not hasattr(module, '_init_kwargs'):
            raise ValueError(
                f'save_weights: modules[{key!r}] ({type(module).__qualname__}) is not an instance of a '
                f'@persistent_class, so its constructor arguments are unknown'
            )
        class_name = persistence.qualified_class_name(module)
        if not class_name.startswith(safe_pickle.ALLOWED_CLASS_PREFIXES):
            raise ValueError(
                f'save_weights: modules[{key!r}] is a {class_name}; only classes under '
                f'{", ".join(safe_pickle.ALLOWED_CLASS_PREFIXES)} can be rebuilt from a weights file'
            )
        parameter_names = {name for name, _ in module.named_parameters()}
        parameter_dtype = (parameter_dtypes or {}).get(key)
        state_dict = {}
        for name, tensor in module.state_dict().items():
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(
                    f'save_weights: modules[{key!r}] state entry {name!r} is a {type(tensor).__name__}; '
                    f'a weights file holds tensors only'
                )
            tensor = tensor.detach().cpu()
            if parameter_dtype is not None and name in parameter_names and tensor.is_floating_point():
                tensor = tensor.to(parameter_dtype)
            state_dict[name] = tensor
        entries[key] = {
            'class': class_name,
            'init_args_json': json.dumps(_to_json_value(module.init_args, f'{key}.init_args'), allow_nan=False),
            'init_kwargs_json': json.dumps(
                _to_json_value(dict(module.init_kwargs), f'{key}.init_kwargs'), allow_nan=False
            ),
            'state_dict': state_dict,
        }
    payload = dict(
        format=WEIGHTS_FORMAT,
        version=WEIGHTS_VERSION,
        modules=entries,
        extra_json=json.dumps(_to_json_value(extra, 'extra'), allow_nan=False),
    )
    atomic_write(path, lambda file: torch.save(payload, file))


def _import_class(path: str, key: str, class_name: str) -> type:
    if not isinstance(class_name, str):
        raise CheckpointError(f'{path}: module {key!r} names no class')
    try:
        return safe_pickle.import_network_class(class_name)
    except safe_pickle.UnsafePickleError as error:
        raise CheckpointError(
            f'{path}: module {key!r}: {error}; only networks of this repository are loaded from weights files'
        ) from None
    except ImportError as error:
        raise CheckpointError(
            f'{path}: importing the class of {key!r} failed ({error}); install the missing package'
        ) from None


def load_weights(path: str, device: Any = 'cpu') -> dict[str, Any]:
    """Load a weights file: {key: rebuilt module on `device`, eval and frozen} plus the extra metadata keys.

    Uses `torch.load(weights_only=True)`; raises CheckpointError on a bad file.
    """
    _require_file(path)
    if not _is_zip(path):
        raise CheckpointError(
            f'{path}: not a weights file (not a torch zip archive); network pickles load with '
            f'load_network_pickle or load_any'
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f'{path}: truncated or corrupt weights file (the zip archive is incomplete); copy or save it again'
        )
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f'{path}: cannot read the weights file ({message}); it is corrupt or not a weights file'
        ) from None
    if not isinstance(payload, dict) or payload.get('format') != WEIGHTS_FORMAT:
        raise CheckpointError(f'{path}: not a weights file of this project (no "{WEIGHTS_FORMAT}" marker)')
    if payload.get('version') != WEIGHTS_VERSION:
        raise CheckpointError(
            f'{path}: weights file version {payload.get("version")!r}; this code reads version '
            f'{WEIGHTS_VERSION}, update the repository'
        )

    result: dict[str, Any] = {}
    try:
        entries = payload['modules']
        extra = json.loads(payload['extra_json'], object_hook=dnnlib.EasyDict)
        for key, entry in entries.items():
            cls = _import_class(path, key, entry['class'])
            init_args = json.loads(entry['init_args_json'], object_hook=dnnlib.EasyDict)
            init_kwargs = json.loads(entry['init_kwargs_json'], object_hook=dnnlib.EasyDict)
            state_dict = entry['state_dict']
            try:
                module = cls(*init_args, **init_kwargs)
            except Exception as error:
                raise CheckpointError(
                    f'{path}: building {entry["class"]} for {key!r} from the stored arguments failed '
                    f'({type(error).__name__}: {error}); the class changed since the file was saved'
                ) from error
            incompatible = module.load_state_dict(state_dict, strict=False)
            if incompatible.missing_keys or incompatible.unexpected_keys:
                raise CheckpointError(
                    f'{path}: the weights of {key!r} do not fit {entry["class"]} '
                    f'(missing: {incompatible.missing_keys[:5]}, unexpected: {incompatible.unexpected_keys[:5]}); '
                    f'the class changed since the file was saved'
                )
            result[key] = module.eval().requires_grad_(False).to(device)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f'{path}: malformed weights file ({type(error).__name__}: {error}); save it again'
        ) from None
    except RuntimeError as error:
        raise CheckpointError(
            f'{path}: the stored weights do not fit their module ({str(error).splitlines()[0]}); '
            f'the class changed since the file was saved'
        ) from None
    # The rendering resolution at the snapshot, which the schedule may have moved from the constructor's.
    if isinstance(extra.get('neural_rendering_resolution'), int):
        _set_rendering_resolution(result, extra['neural_rendering_resolution'])
    result.update(extra)
    return result


def load_any(path: str, device: Any = 'cpu', trust_pickle: bool = False) -> dict[str, Any]:
    """Load a network pickle or a weights file, told apart by content; returns the dict of modules and metadata.

    A file named .pt must be a weights file: a pickle by that name is refused, not unpickled.
    trust_pickle: see load_network_pickle.
    """
    _require_file(path)
    if _is_zip(path):
        return load_weights(path, device)
    if path.endswith('.pt'):
        raise CheckpointError(
            f'{path}: named like a weights file but not one (not a torch zip archive); a network '
            f'pickle should be named .pkl'
        )
    return load_network_pickle(path, device, trust_pickle)
