"""Pieces shared by the command-line tools."""

import math

import click
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
