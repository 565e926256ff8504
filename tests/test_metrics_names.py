"""Tests for metrics/names.py: the metric names, their image counts, and that the module (and with it
training/config.py's check of --metrics) needs no torch and forms no import cycle."""

import os
import subprocess
import sys

import pytest

from metrics import names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter at the repository root (no module imported before it)."""
    return subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )


def test_metric_names():
    assert names.parse_metric('fid50k_full') == dict(kind='fid', num_gen=50000, max_real=None, yaw_range=None)
    assert names.parse_metric('kid2k') == dict(kind='kid', num_gen=2000, max_real=2000, yaw_range=None)
    assert names.parse_metric('fid2k_back') == dict(kind='fid', num_gen=2000, max_real=2000, yaw_range='back')
    assert names.parse_metric('kid1k_full_front') == dict(kind='kid', num_gen=1000, max_real=None, yaw_range='front')
    assert names.parse_metric('pose_err') == dict(
        kind='pose_err', num_gen=names.POSE_ERR_ITEMS, max_real=names.POSE_ERR_ITEMS
    )
    assert names.parse_metric('pose_sens') == dict(kind='pose_sens', num_gen=names.POSE_SENS_ITEMS, max_real=0)
    assert names.parse_metric('fid2k').num_gen == 2000
    for bad in ('fid', 'fid0k', 'fid2', 'is50k', 'kid2k_fully', 'none', '', 'fid2k_side', 'fid2k_front_full'):
        assert not names.is_valid_metric(bad)
    with pytest.raises(
        ValueError,
        match=r"unknown metric 'is50k': expected fid50k_full, kid50k_full, fid\{N\}k, "
        r'kid\{N\}k \(optionally with _full, then _front or _back\), pose_err or pose_sens$',
    ):
        names.parse_metric('is50k')
    assert names.expected_metrics(none=True).endswith(', pose_err, pose_sens, or none')


def test_yaw_ranges_split_at_90_degrees():
    yaws = [0.0, 90.0, -90.0, 90.01, -179.9, 180.0, 45.0]
    assert names.in_yaw_range(yaws, 'front') == [True, True, True, False, False, False, True]
    assert names.in_yaw_range(yaws, 'back') == [False, False, False, True, True, True, False]
    assert names.in_yaw_range(yaws, None) == [True] * len(yaws)
    with pytest.raises(ValueError, match="yaw range 'side': expected one of front, back"):
        names.in_yaw_range(yaws, 'side')


def test_names_import_without_torch():
    result = _python(
        "import sys; sys.modules['torch'] = None\n"
        'from metrics import names\n'
        "assert names.is_valid_metric('fid50k_full')\n"
        'import training.config\n'
        "assert 'numpy' not in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('module', ['training.config', 'metrics.metric_main', 'metrics.metric_utils'])
def test_each_side_of_the_former_cycle_imports_first(module):
    # metric_utils imported training.config, whose validate imported metric_main: both now import metrics.names.
    result = _python(f'import {module}')
    assert result.returncode == 0, result.stderr
