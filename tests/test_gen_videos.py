"""gen_videos.py end to end on a tiny snapshot: frame count, size, and a closed 360-degree orbit."""

import glob

import imageio
import numpy as np
import pytest
from click.testing import CliRunner

import gen_videos
from tests.tiny_run import TINY_GENERATOR, write_tiny_snapshot


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


def test_orbit_video_frames_and_closure(run_dir, tmp_path):
    result = CliRunner().invoke(gen_videos.main, ['--network', run_dir, '--seeds', '0,1', '--grid', '2x1',
                                                  '--w-frames', '5', '--sample-mult', '1', '--outdir', str(tmp_path),
                                                  '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    frames = imageio.mimread(glob.glob(str(tmp_path / '*.mp4'))[0])
    res = TINY_GENERATOR['img_resolution']
    assert len(frames) == 5 and frames[0].shape == (res, 2 * res, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).max() <= 8


def test_interpolation_hits_keyframes():
    keyframes = np.random.RandomState(0).randn(3, 2, 4).astype(np.float32)
    import torch
    for kind in ('linear', 'cubic'):
        ws = gen_videos.interpolate_ws(torch.from_numpy(keyframes), 6, kind)
        np.testing.assert_allclose(ws[::2].numpy(), keyframes, atol=1e-5)
