"""Tensor and module helpers used by the networks and the training loop.

Cached constants, shape assertions, copying parameters by name, a check that every process holds
the same networks, and the endless sampler that feeds the training loop.
"""

import contextlib
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

# Constants are looked up every forward pass (filters, noise shapes); creating them once per
# (value, shape, dtype, device) avoids a host-to-device copy each time.
_constant_cache: dict[tuple, torch.Tensor] = {}


def constant(
    value: Any,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
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


def assert_shape(tensor: torch.Tensor, ref_shape: Sequence[int | torch.Tensor | None]) -> None:
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


def params_and_buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    """All parameters followed by all buffers of `module` and its children."""
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """All (qualified name, tensor) pairs of parameters followed by buffers."""
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(
    src_module: torch.nn.Module, dst_module: torch.nn.Module, require_all: bool = False
) -> list[str]:
    """Copy every parameter and buffer of `dst_module` from the tensor of the same name in `src_module`.

    Returns the names of `dst_module` tensors that `src_module` lacks (left unchanged). With
    `require_all=True` such names raise a KeyError instead. Shapes must agree; dtypes and devices
    are converted to the destination's.
    """
    if not isinstance(src_module, torch.nn.Module) or not isinstance(dst_module, torch.nn.Module):
        raise TypeError(
            f'copy_params_and_buffers: expected two torch.nn.Module, got {type(src_module).__name__} '
            f'and {type(dst_module).__name__}'
        )
    src_tensors = dict(named_params_and_buffers(src_module))
    missing = []
    for name, dst_tensor in named_params_and_buffers(dst_module):
        src_tensor = src_tensors.get(name)
        if src_tensor is None:
            missing.append(name)
            continue
        if src_tensor.shape != dst_tensor.shape:
            raise ValueError(
                f'copy_params_and_buffers: "{name}" has shape {list(src_tensor.shape)} in the source '
                f'and {list(dst_tensor.shape)} in the destination; the two networks were built with different options'
            )
        dst_tensor.copy_(src_tensor.detach())
    if require_all and missing:
        raise KeyError(
            f'copy_params_and_buffers: the source lacks {len(missing)} tensor(s) of the destination: '
            f'{", ".join(missing)}'
        )
    return missing


# ------------------------------------------------------------------------------------------------
# Distributed data parallel.


def check_ddp_consistency(module: torch.nn.Module, ignore_regex: str | None = None) -> None:
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
        raise AssertionError(
            f'check_ddp_consistency: {", ".join(mismatched)} on rank {rank} differ(s) from rank 0; '
            f'broadcast the parameters from rank 0 after construction'
        )


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

    def __init__(
        self,
        dataset: Any,
        rank: int = 0,
        num_replicas: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        window_size: float = 0.5,
    ):
        if len(dataset) == 0:
            raise ValueError('InfiniteSampler: the dataset is empty; check the dataset path and its contents')
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f'InfiniteSampler: need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}'
            )
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
