"""Tests for training/cli.py and the numeric options of the tools: NaN and inf are click errors."""

import click
import pytest
from click.testing import CliRunner

import extract_shapes
import gen_samples
import gen_videos
import train
from training.cli import FiniteFloat


def test_finite_float_refuses_nan_and_inf_and_keeps_the_range():
    assert FiniteFloat().convert('1.5', None, None) == 1.5
    assert FiniteFloat(min=0).convert('0', None, None) == 0.0
    for text in ('nan', 'inf', '-inf', 'NaN'):
        with pytest.raises(click.BadParameter, match='is not a finite number'):
            FiniteFloat().convert(text, None, None)
    with pytest.raises(click.BadParameter):
        FiniteFloat(min=0, min_open=True).convert('0', None, None)


@pytest.mark.parametrize('tool, option', [(train.main, '--gamma'), (train.main, '--tick'), (train.main, '--glr'),
                                          (gen_samples.main, '--trunc'), (gen_samples.main, '--shape-level'),
                                          (gen_videos.main, '--pose-amplitude'), (gen_videos.main, '--trunc'),
                                          (extract_shapes.main, '--level'), (extract_shapes.main, '--trunc')])
@pytest.mark.parametrize('value', ['nan', 'inf'])
def test_tools_refuse_non_finite_numbers(tmp_path, tool, option, value):
    result = CliRunner().invoke(tool, [option, value, '--outdir', str(tmp_path / 'out')] + (['-n'] if tool is train.main else []))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert f"Invalid value for '{option}': '{value}' is not a finite number" in result.output
    assert not (tmp_path / 'out').exists()
