"""The trained model shipped in pretrained/: compact, loadable by the tools, and rendering what it rendered in training.

pretrained/cpu-fast-64.render-stats.json holds training.engines.render_stats of the training run's own
snapshot (float32, written by tools/export_snapshot.py); the shipped file must reproduce them.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from training.checkpoints import formats, run_files
from training.engines.render_stats import STATISTICS, render_statistics
from training.networks.triplane import build_generator
from training.presets import load_preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, 'pretrained', 'cpu-fast-64.pt')
STATS = os.path.join(REPO, 'pretrained', 'cpu-fast-64.render-stats.json')
MAX_BYTES = 25_000_000
TOLERANCE = 1e-3  # float32 renders of the same weights differ by thread scheduling only


@pytest.fixture(scope='module')
def shipped():
    return formats.load_weights(SHIPPED)


@pytest.fixture(scope='module')
def reference():
    with open(STATS) as f:
        return json.load(f)


def _largest_difference(stats: dict, reference: dict) -> float:
    return max(abs(stats[view][name] - reference[view][name]) for view in reference for name in STATISTICS)


def test_shipped_model_is_compact_and_weights_only(shipped):
    assert os.path.getsize(SHIPPED) <= MAX_BYTES
    payload = torch.load(SHIPPED, map_location='cpu', weights_only=True)
    assert set(payload['modules']) == {'G_ema', 'D_ema'}
    G, D = run_files.snapshot_networks(shipped, SHIPPED)
    assert G is not None and D is not None
    assert shipped['neural_rendering_resolution'] == 32 and shipped['training_set_kwargs']['resolution'] == 64
    with open(run_files.pose_predict_kwargs_for(SHIPPED)) as f:
        beside = json.load(f)
    assert beside['neural_rendering_resolution'] == 32
    assert shipped[run_files.POSE_PREDICT_KEY] == beside  # the file alone carries them too


def test_shipped_model_renders_what_the_training_run_rendered(shipped, reference):
    stats = render_statistics(shipped['G_ema'], reference['seeds'])
    assert _largest_difference(stats, reference['statistics']) < TOLERANCE
    # The statistics tell models apart: a freshly initialized generator of the preset is far off.
    torch.manual_seed(0)
    fresh = build_generator(load_preset('cpu-fast')).eval().requires_grad_(False)
    assert _largest_difference(render_statistics(fresh, reference['seeds'][:2]), reference['statistics']) > 0.05
    # A trained portrait: a person in the middle of the picture, from every side.
    for view, values in reference['statistics'].items():
        assert 0.2 < values['alpha_coverage'] < 0.8, view


def test_tools_load_the_shipped_model(tmp_path):
    done = subprocess.run(
        [sys.executable, 'gen_samples.py', '--network', SHIPPED, '--seeds', '0', '--outdir', str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(tmp_path / 'seed0000.png')
