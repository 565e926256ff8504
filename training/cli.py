"""Pieces shared by the command-line tools."""

import math
import os
import tempfile

import click
import psutil
import torch

DEFAULT_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


class FiniteFloat(click.FloatRange):
    """A float option that must be finite (NaN and inf are refused), optionally within a range."""

    name = 'finite float'

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f'{value!r} is not a finite number', param, ctx)
        return number

    def _describe_range(self) -> str:
        return '' if self.min is None and self.max is None else super()._describe_range()


class Device(click.ParamType):
    """--device: cpu, cuda or cuda:N, as a torch.device; a CUDA device only where torch sees one."""

    name = 'device'

    def convert(self, value, param, ctx):
        if isinstance(value, torch.device):
            return value
        try:
            device = torch.device(value)
        except (RuntimeError, TypeError):
            self.fail(f'{value!r} is not a device; use cpu, cuda or cuda:N', param, ctx)
        if device.type not in ('cpu', 'cuda'):
            self.fail(f'{value!r}: the tools run on cpu or cuda', param, ctx)
        if device.type == 'cuda' and not torch.cuda.is_available():
            self.fail('no CUDA device on this machine; use --device cpu', param, ctx)
        if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
            self.fail(f'{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)', param, ctx)
        return device


# Rough peak memory, for refusing settings that cannot fit before anything is allocated.
BYTES_PER_RAY_SAMPLE = 1024   # features of three planes, decoder activations, weights, with headroom
BYTES_PER_VOXEL = 32          # grid point coordinates, density, the volume and its closed copy


def require_memory(needed: float, option: str, device: torch.device) -> None:
    """A click error naming `option` when `needed` bytes exceed the free memory of `device`."""
    if device.type == 'cuda':
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = psutil.virtual_memory().available
    if needed > available:
        raise click.BadParameter(f'needs about {needed / 2 ** 30:,.1f} GiB of memory and {device} has '
                                 f'{available / 2 ** 30:,.1f} GiB free; choose a smaller value', param_hint=option)


def require_render_memory(G: torch.nn.Module, images: int, sample_mult: int, device: torch.device) -> None:
    """--sample-mult: the ray samples of `images` renders at once must fit."""
    renderer = G.renderer
    samples = (images * G.neural_rendering_resolution ** 2 * sample_mult
               * (renderer.depth_resolution + renderer.depth_resolution_importance))
    require_memory(samples * BYTES_PER_RAY_SAMPLE, '--sample-mult', device)


def require_shape_memory(resolution: int, option: str, device: torch.device) -> None:
    """--shape-res: the density volume of resolution^3 voxels must fit."""
    require_memory(float(resolution) ** 3 * BYTES_PER_VOXEL, option, device)


def make_outdir(path: str, option: str = '--outdir') -> str:
    """Create the output folder if needed and make sure files can be written into it; a click error otherwise."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise click.ClickException(f'cannot write into {option} {path}: {err.strerror}; choose a writable folder') from None
    return path
