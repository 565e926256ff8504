"""Statistics reported from anywhere in the training code and collected once per tick.

`report(name, value)` adds values to running moments (count, sum, sum of squares) kept per name
and per device, without synchronizing the device. A `Collector` turns the moments accumulated
since its previous `update()` into num/mean/std, summing them over all processes with
`torch.distributed.all_reduce` once `init_multiprocessing` has named a sync device.

Every rank must report the same set of names (use `report0` for rank-0-only values), because
the collector reduces one tensor per name in a fixed order.
"""

import re
import zlib

import numpy as np
import torch

import dnnlib

_MOMENTS_DTYPE = torch.float64


class _Registry:
    """Per-process state: the rank, the device used for all-reduce, and the cumulative moments.

    Reports come from deep inside the networks and losses, which have no handle to pass around,
    so the running moments live here; there is exactly one instance per process.
    """

    def __init__(self):
        self.rank = 0
        self.sync_device: torch.device | None = None
        # name -> device -> tensor [3] holding (count, sum, sum of squares) since the process started.
        self.moments: dict[str, dict[torch.device, torch.Tensor]] = {}


_registry = _Registry()


def init_multiprocessing(rank: int, sync_device: str | torch.device | None) -> None:
    """Tell the statistics which rank this process is and where to all-reduce (None: never reduce).

    Call once per process after `torch.distributed.init_process_group`; `sync_device` is
    `torch.device('cuda', rank)` with NCCL and `torch.device('cpu')` with gloo.
    """
    _registry.rank = rank
    _registry.sync_device = None if sync_device is None else torch.device(sync_device)


def report(
    name: str, value: float | int | list[float] | np.ndarray | torch.Tensor
) -> float | int | list[float] | np.ndarray | torch.Tensor:
    """Accumulate the scalar or every element of `value` under `name`; returns `value` unchanged.

    value: a number, a sequence, or a tensor of any shape (flattened). An empty value registers
    the name without adding data, which keeps the names identical across ranks.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f'training_stats.report: the name must be a non-empty string, got {name!r}')
    elements = (
        value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value, dtype=np.float64))
    )
    elements = elements.flatten().to(_MOMENTS_DTYPE)
    moments = torch.stack([elements.new_full((), elements.numel()), elements.sum(), elements.square().sum()])
    per_device = _registry.moments.setdefault(name, {})
    if elements.device not in per_device:
        per_device[elements.device] = torch.zeros_like(moments)
    per_device[elements.device].add_(moments)
    return value


def report0(
    name: str, value: float | int | list[float] | np.ndarray | torch.Tensor
) -> float | int | list[float] | np.ndarray | torch.Tensor:
    """Like `report`, but only rank 0 contributes values; other ranks register the name only."""
    report(name, value if _registry.rank == 0 else [])
    return value


class Collector:
    """Turns the reported moments into num/mean/std per name, one snapshot per `update()`.

    regex: only names fully matching it are collected.
    keep_previous: a name with no new values since the last update keeps its previous statistics
        (otherwise it reports num 0 and NaN mean/std).
    With several processes, construct and update collectors at the same points on every rank:
    both steps are collective operations.
    """

    def __init__(self, regex: str = '.*', keep_previous: bool = True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative: dict[str, torch.Tensor] = {}
        self._moments: dict[str, torch.Tensor] = {}
        self.update()
        self._moments.clear()

    def names(self) -> list[str]:
        """Names with statistics in the latest update, sorted."""
        return sorted(self._moments)

    def update(self) -> None:
        """Take the values reported since the previous update, summed over all processes."""
        names = sorted(name for name in _registry.moments if self._regex.fullmatch(name))
        sync_device = _registry.sync_device
        reduce_device = sync_device if sync_device is not None else torch.device('cpu')
        cumulative = torch.zeros(len(names), 3, dtype=_MOMENTS_DTYPE, device=reduce_device)
        for row, name in enumerate(names):
            for moments in _registry.moments[name].values():
                cumulative[row] += moments.to(reduce_device)
        if sync_device is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            _check_same_names(names, reduce_device)
            torch.distributed.all_reduce(cumulative)
        cumulative = cumulative.cpu()

        if not self._keep_previous:
            self._moments.clear()
        for name, total in zip(names, cumulative):
            delta = total - self._cumulative.get(name, torch.zeros_like(total))
            self._cumulative[name] = total
            if delta[0] > 0:
                self._moments[name] = delta
            elif not self._keep_previous:
                self._moments[name] = delta

    def num(self, name: str) -> int:
        """Number of values reported under `name` between the last two updates (0 if none)."""
        moments = self._moments.get(name)
        return 0 if moments is None else int(moments[0])

    def mean(self, name: str) -> float:
        """Mean of those values; NaN if there were none."""
        moments = self._moments.get(name)
        if moments is None or moments[0] == 0:
            return float('nan')
        return float(moments[1] / moments[0])

    def std(self, name: str) -> float:
        """Population standard deviation of those values; NaN if there were none."""
        moments = self._moments.get(name)
        if moments is None or moments[0] == 0:
            return float('nan')
        mean = moments[1] / moments[0]
        variance = moments[2] / moments[0] - mean.square()
        return float(variance.clamp(min=0).sqrt())

    def as_dict(self) -> dict[str, dnnlib.EasyDict]:
        """{name: EasyDict(num, mean, std)} for every name of the latest update."""
        return {
            name: dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name)) for name in self.names()
        }

    def __getitem__(self, name: str) -> float:
        return self.mean(name)


def _check_same_names(names: list[str], device: torch.device) -> None:
    """Fail clearly, instead of mixing up statistics, when ranks collected different names."""
    fingerprint = float(zlib.crc32('\n'.join(names).encode('utf-8')))
    local = torch.tensor([len(names), fingerprint], dtype=_MOMENTS_DTYPE, device=device)
    extremes = torch.cat([local, -local])
    torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)
    if not torch.equal(extremes, torch.cat([local, -local])):
        raise RuntimeError(
            f"training_stats: rank {_registry.rank} collected names that differ from another rank's "
            f'({len(names)} names here); report every name on all ranks, using report0 for rank-0-only values'
        )
