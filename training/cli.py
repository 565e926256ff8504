"""Pieces shared by the command-line tools."""

import math

import click


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
