"""Tensor and module helpers used by the networks and the training loop.

Cached constants, shape assertions, copying parameters by name, DDP helpers, a module summary
table printed at start-up and the endless sampler that feeds the training loop.
"""

import contextlib
import re
import warnings
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

# Constants are looked up every forward pass (filters, noise shapes); creating them once per
# (value, shape, dtype, device) avoids a host-to-device copy each time.
_constant_cache: Dict[tuple, torch.Tensor] = {}


def constant(value: Any, shape: Optional[Sequence[int]] = None, dtype: Optional[torch.dtype] = None,
             device: Optional[Union[str, torch.device]] = None,
             memory_format: Optional[torch.memory_format] = None) -> torch.Tensor:
    """A cached constant tensor holding `value` (array-like), broadcast to `shape` when given.

    The result is shared between callers and must not be modified in place. `dtype` defaults to
    `torch.get_default_dtype()`, `device` to the CPU, `memory_format` to contiguous.
    """
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    device = torch.device('cpu') if device is None else torch.device(device)
    if memory_format is None:
        memory_format = torch.contiguous_format

    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor = tensor.broadcast_to(shape)
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


@contextlib.contextmanager
def suppress_tracer_warnings() -> Iterator[None]:
    """Silence `torch.jit.TracerWarning` inside the block (shape checks compare traced sizes)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        yield


def assert_shape(tensor: torch.Tensor, ref_shape: Sequence[Optional[Union[int, torch.Tensor]]]) -> None:
    """Raise AssertionError unless `tensor.shape` matches `ref_shape`; None in `ref_shape` matches any size."""
    actual = '[' + ', '.join(str(int(size)) for size in tensor.shape) + ']'
    expected = '[' + ', '.join('*' if size is None else str(int(size)) for size in ref_shape) + ']'
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'wrong number of dimensions: got shape {actual}, expected {expected}')
    for index, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(size, torch.Tensor) or isinstance(ref_size, torch.Tensor):
            # Under tracing sizes may be tensors; compare them as tensors so the check is recorded.
            with suppress_tracer_warnings():
                matches = bool(torch.as_tensor(size) == torch.as_tensor(ref_size))
        else:
            matches = size == ref_size
        if not matches:
            raise AssertionError(f'wrong size for dimension {index}: got shape {actual}, expected {expected}')


# ------------------------------------------------------------------------------------------------
# Parameters and buffers.

def params_and_buffers(module: torch.nn.Module) -> List[torch.Tensor]:
    """All parameters followed by all buffers of `module` and its children."""
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """All (qualified name, tensor) pairs of parameters followed by buffers."""
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(src_module: torch.nn.Module, dst_module: torch.nn.Module,
                            require_all: bool = False) -> List[str]:
    """Copy every parameter and buffer of `dst_module` from the tensor of the same name in `src_module`.

    Returns the names of `dst_module` tensors that `src_module` lacks (left unchanged). With
    `require_all=True` such names raise a KeyError instead. Shapes must agree; dtypes and devices
    are converted to the destination's.
    """
    if not isinstance(src_module, torch.nn.Module) or not isinstance(dst_module, torch.nn.Module):
        raise TypeError(f'copy_params_and_buffers: expected two torch.nn.Module, got {type(src_module).__name__} '
                        f'and {type(dst_module).__name__}')
    src_tensors = dict(named_params_and_buffers(src_module))
    missing = []
    for name, dst_tensor in named_params_and_buffers(dst_module):
        src_tensor = src_tensors.get(name)
        if src_tensor is None:
            missing.append(name)
            continue
        if src_tensor.shape != dst_tensor.shape:
            raise ValueError(f'copy_params_and_buffers: "{name}" has shape {list(src_tensor.shape)} in the source '
                             f'and {list(dst_tensor.shape)} in the destination; the two networks were built with different options')
        dst_tensor.copy_(src_tensor.detach())
    if require_all and missing:
        raise KeyError(f'copy_params_and_buffers: the source lacks {len(missing)} tensor(s) of the destination: '
                       f'{", ".join(missing)}')
    return missing


def nan_to_num_grads_(params: Iterable[torch.Tensor]) -> None:
    """Sanitize gradients in place: NaN -> 0, +inf -> 1e5, -inf -> -1e5 (one bad batch must not poison Adam)."""
    for param in params:
        if param.grad is not None:
            torch.nan_to_num(param.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=param.grad)


# ------------------------------------------------------------------------------------------------
# Distributed data parallel.

@contextlib.contextmanager
def ddp_sync(module: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce inside the block when `sync` is False (gradient accumulation)."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel) and not sync:
        with module.no_sync():
            yield
    else:
        yield


def check_ddp_consistency(module: torch.nn.Module, ignore_regex: Optional[str] = None) -> None:
    """Assert that every rank holds the same parameters and buffers as rank 0; a no-op without torch.distributed.

    Tensors whose qualified name (`ClassName.param.path`) matches `ignore_regex` are skipped.
    NaNs compare equal to each other.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    rank = torch.distributed.get_rank()
    mismatched = []
    for name, tensor in named_params_and_buffers(module):
        full_name = f'{type(module).__name__}.{name}'
        if ignore_regex is not None and re.fullmatch(ignore_regex, full_name):
            continue
        local = tensor.detach()
        if local.is_floating_point():
            local = torch.nan_to_num(local)
        reference = local.clone()
        torch.distributed.broadcast(tensor=reference, src=0)
        if not torch.equal(local, reference):
            mismatched.append(full_name)
    # Raise only after the loop: every rank must issue the same broadcasts or the others would hang.
    if mismatched:
        raise AssertionError(f'check_ddp_consistency: {", ".join(mismatched)} on rank {rank} differ(s) from rank 0; '
                             f'broadcast the parameters from rank 0 after construction')


# ------------------------------------------------------------------------------------------------
# Module summary.

def _flatten_tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _flatten_tensors(item)]
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in _flatten_tensors(item)]
    return []


def print_module_summary(module: torch.nn.Module, inputs: Sequence[Any], max_nesting: int = 3,
                         skip_redundant: bool = True) -> Any:
    """Run `module(*inputs)` once and print a table of its submodules; return the outputs.

    Each row lists a submodule that ran, in order of completion: its qualified name, the number
    of parameters and buffers it owns that no earlier row counted, the shapes and dtypes of its
    tensor outputs. Submodules nested deeper than `max_nesting` are folded into their ancestor.
    `skip_redundant` hides rows that add no tensors and only pass on outputs already listed.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'print_module_summary: expected a torch.nn.Module, got {type(module).__name__}')
    if isinstance(inputs, torch.Tensor):
        raise TypeError('print_module_summary: pass the inputs as a list or tuple, e.g. [z, c]')

    names = {submodule: name for name, submodule in module.named_modules()}
    calls: List[Dict[str, Any]] = []
    depth = [0]

    def pre_hook(submodule, _inputs):
        depth[0] += 1

    def post_hook(submodule, _inputs, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            calls.append(dict(module=submodule, outputs=_flatten_tensors(outputs)))

    handles = []
    for submodule in module.modules():
        handles.append(submodule.register_forward_pre_hook(pre_hook))
        handles.append(submodule.register_forward_hook(post_hook))
    try:
        outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()

    seen_tensors = set()
    seen_outputs = set()
    rows = []
    for call in calls:
        submodule = call['module']
        new_params = [t for t in submodule.parameters() if id(t) not in seen_tensors]
        new_buffers = [t for t in submodule.buffers() if id(t) not in seen_tensors]
        new_outputs = [t for t in call['outputs'] if id(t) not in seen_outputs]
        seen_tensors.update(id(t) for t in new_params + new_buffers)
        seen_outputs.update(id(t) for t in call['outputs'])
        if skip_redundant and not (new_params or new_buffers or new_outputs) and submodule is not module:
            continue
        name = '<top-level>' if submodule is module else names.get(submodule, type(submodule).__name__)
        shown_outputs = call['outputs'] if call['outputs'] else [None]
        for index, output in enumerate(shown_outputs):
            rows.append([
                name if index == 0 else f'{name}:{index}',
                str(sum(t.numel() for t in new_params)) if index == 0 else '-',
                str(sum(t.numel() for t in new_buffers)) if index == 0 else '-',
                str(list(output.shape)) if output is not None else '-',
                str(output.dtype).replace('torch.', '') if output is not None else '-',
            ])

    total_params = sum(t.numel() for t in module.parameters())
    total_buffers = sum(t.numel() for t in module.buffers())
    header = ['Module', 'Parameters', 'Buffers', 'Output shape', 'Datatype']
    footer = ['Total', str(total_params), str(total_buffers), '-', '-']
    table = [header, ['---'] * len(header)] + rows + [['---'] * len(header), footer]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    print()
    for row in table:
        print('  '.join(cell + ' ' * (width - len(cell)) for cell, width in zip(row, widths)).rstrip())
    print()
    return outputs


# ------------------------------------------------------------------------------------------------
# Sampling.

class InfiniteSampler(torch.utils.data.Sampler):
    """An endless stream of dataset indices, split between ranks by striding.

    The global stream walks repeatedly over a permutation of the indices; after each step the
    item just visited is swapped with a random earlier position of the same pass (at most
    `window_size * len(dataset)` back), so the order keeps changing slowly while every pass of
    `len(dataset)` consecutive global items still contains each index exactly once. Rank `r` of
    `num_replicas` yields global items r, r + num_replicas, r + 2 num_replicas, ...
    """

    def __init__(self, dataset: Any, rank: int = 0, num_replicas: int = 1, shuffle: bool = True, seed: int = 0,
                 window_size: float = 0.5):
        if len(dataset) == 0:
            raise ValueError('InfiniteSampler: the dataset is empty; check the dataset path and its contents')
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f'InfiniteSampler: need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}')
        if not 0 <= window_size <= 1:
            raise ValueError(f'InfiniteSampler: window_size is a fraction of the dataset in [0, 1], got {window_size}')
        super().__init__()
        self.dataset_size = len(dataset)
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self) -> Iterator[int]:
        order = np.arange(self.dataset_size)
        rng = None
        window = 0
        if self.shuffle:
            rng = np.random.RandomState(self.seed)
            rng.shuffle(order)
            window = int(np.rint(self.dataset_size * self.window_size))
        step = 0
        while True:
            position = step % self.dataset_size
            if step % self.num_replicas == self.rank:
                yield int(order[position])
            if rng is not None and window >= 2:
                other = position - rng.randint(min(window, position + 1))
                order[position], order[other] = order[other], order[position]
            step += 1
