"""Count, on any device, the calls that would make a CUDA device wait for the host, and the operator launches.

On a GPU, the host queues kernels and runs ahead; a call that needs a tensor's value on the host
(`.item()`, `bool(t)` in an `if`, `.tolist()`, `.cpu()`, `.numpy()`) or an output whose shape
depends on the values (`nonzero`, boolean-mask indexing, `masked_select`, `unique`,
`repeat_interleave` without `output_size`) stops the host until the device has caught up. On
the CPU the same calls cost nothing, which is why they creep in unseen; `SyncCounter` records
them on the CPU as well, so a test without a GPU can hold a training step free of them.

    with SyncCounter() as counter:
        run_step()
    counter.syncs     # [SyncEvent(kind='aten.nonzero', where='training/body/deformation.py:97 apply'), ...]
    counter.launches  # operators that would launch a kernel (views and metadata excluded)

Two torch hooks, active together: a TorchFunctionMode sees the Python-level tensor methods that
copy to the host without an aten operator on a CPU tensor (`.cpu()`, `.numpy()`, `.tolist()`),
and a TorchDispatchMode sees every aten operator, also those called from C++ extensions and from
the backward pass. `bool(t)`, `int(t)`, `float(t)` and `.item()` all reach
`aten._local_scalar_dense`, so each counts once. A blind spot on the CPU: `t.to(device)` to the
host cannot be told from `t.to(t.device)` there, so only `.cpu()` counts (and, on a CUDA
device, every device-to-host copy).
"""

import contextlib
import dataclasses
import os
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# aten operators whose output shape depends on tensor values (the host must read a count back).
_DATA_DEPENDENT_OPS = {
    'aten.nonzero',
    'aten.masked_select',
    'aten.unique_dim',
    'aten._unique2',
    'aten.unique_consecutive',
    'aten.argwhere',
}
# Tensor methods that copy to host memory even where, on a CPU tensor, no aten operator runs.
_HOST_COPY_METHODS = {'cpu', 'numpy', 'tolist'}
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_THIS_FILE = os.path.abspath(__file__)
# Installed packages (torch itself) may live inside the repository, in a virtual environment there.
_INSTALLED = tuple({os.path.join(sys.prefix, ''), os.path.join(sys.base_prefix, '')})


@dataclasses.dataclass(frozen=True)
class SyncEvent:
    kind: str  # 'aten._local_scalar_dense' (item, bool, int, float), 'aten.nonzero', 'Tensor.cpu', ...
    where: str  # innermost frame of this repository: 'path/to/file.py:line function'


def _caller() -> str:
    """The innermost stack frame in this repository outside this file, as 'relative/path.py:line function'."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(_REPO_ROOT) and not path.startswith(_INSTALLED) and path != _THIS_FILE:
            return f'{os.path.relpath(path, _REPO_ROOT)}:{frame.f_lineno} {frame.f_code.co_name}'
        frame = frame.f_back
    return '(outside the repository: torch internals or the autograd engine)'


def _sync_kind(func, args: tuple, kwargs: dict) -> str | None:
    """The kind of host synchronization an aten operator call forces on a CUDA device, or None."""
    name = f'aten.{func._schema.name.split("::")[1]}'
    if name == 'aten._local_scalar_dense' or name in _DATA_DEPENDENT_OPS:
        return name
    if name == 'aten.repeat_interleave' and func._overloadname in ('Tensor', 'self_Tensor'):
        if kwargs.get('output_size') is None:
            return name
    if name in ('aten.index', 'aten._unsafe_index', 'aten.index_put', 'aten.index_put_', 'aten._index_put_impl_'):
        indices = args[1] if len(args) > 1 else kwargs.get('indices', ())
        if any(isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8) for index in indices):
            return f'{name} (boolean mask)'
    if name in ('aten._to_copy', 'aten.copy_', 'aten.to'):
        target = kwargs.get('device')
        source = args[1] if name == 'aten.copy_' else args[0]
        destination = args[0] if name == 'aten.copy_' else None
        if destination is not None and isinstance(source, torch.Tensor):
            if source.device.type == 'cuda' and destination.device.type == 'cpu':
                return 'device to host copy'
        elif target is not None and torch.device(target).type == 'cpu' and source.device.type == 'cuda':
            return 'device to host copy'
    return None


class _FunctionHook(TorchFunctionMode):
    def __init__(self, counter: 'SyncCounter'):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name in _HOST_COPY_METHODS and args and isinstance(args[0], torch.Tensor):
            self.counter._record(f'Tensor.{name}')
        return func(*args, **(kwargs or {}))


class _DispatchHook(TorchDispatchMode):
    def __init__(self, counter: 'SyncCounter'):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not func.is_view and func.overloadpacket not in _METADATA_OPS:
            self.counter.launches += 1
            self.counter.launches_by_op[func.overloadpacket.__name__] = (
                self.counter.launches_by_op.get(func.overloadpacket.__name__, 0) + 1
            )
        kind = _sync_kind(func, args, kwargs)
        if kind is not None:
            self.counter._record(kind)
        return func(*args, **kwargs)


_METADATA_OPS = {
    torch.ops.aten.detach,
    torch.ops.aten.alias,
    torch.ops.aten.lift_fresh,
    torch.ops.aten.empty,
    torch.ops.aten.empty_strided,
    torch.ops.aten.empty_like,
    torch.ops.aten.set_,
    torch.ops.aten.resize_,
    torch.ops.aten.sym_size,
    torch.ops.aten.sym_stride,
    torch.ops.aten.sym_numel,
    torch.ops.aten.sym_storage_offset,
    torch.ops.aten.is_same_size,
}


class SyncCounter:
    """Context manager recording host synchronizations and operator launches (see the module docstring).

    syncs: the SyncEvents, in call order; launches: aten operators that are neither views nor
    metadata-only (allocation without a kernel), as a count and by operator name.
    Nested uses are independent; `paused()` stops recording inside, for work that is meant to sync.
    """

    def __init__(self):
        self.syncs: list[SyncEvent] = []
        self.launches = 0
        self.launches_by_op: dict[str, int] = {}
        self._paused = 0
        self._function_hook = _FunctionHook(self)
        self._dispatch_hook = _DispatchHook(self)

    def _record(self, kind: str) -> None:
        if not self._paused:
            self.syncs.append(SyncEvent(kind, _caller()))

    def __enter__(self) -> 'SyncCounter':
        self._function_hook.__enter__()
        self._dispatch_hook.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._dispatch_hook.__exit__(*exc)
        self._function_hook.__exit__(*exc)

    @contextlib.contextmanager
    def paused(self):
        """Record nothing inside (for synchronizations that are meant, such as the tick's statistics)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def summary(self) -> dict[tuple[str, str], int]:
        """{(kind, where): count}, in order of first occurrence."""
        counts: dict[tuple[str, str], int] = {}
        for event in self.syncs:
            counts[(event.kind, event.where)] = counts.get((event.kind, event.where), 0) + 1
        return counts
