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


@pytest.mark.parametrize('case', ['missing', 'foreign', 'seeds', 'outdir', 'grid'])
def test_one_line_errors(run_dir, tmp_path, case):
    foreign = tmp_path / 'notes.txt'
    foreign.write_text('not a checkpoint')
    blocker = tmp_path / 'file'
    blocker.write_text('')
    args = dict(network=run_dir, seeds='0', outdir=tmp_path / 'out', grid='1x1')
    hint = {'missing': 'nothing.pkl', 'foreign': 'notes.txt', 'seeds': 'a-b', 'outdir': 'cannot write into --outdir', 'grid': '2x2'}[case]
    if case == 'missing':
        args['network'] = tmp_path / 'nothing.pkl'
    elif case == 'foreign':
        args['network'] = foreign
    elif case == 'seeds':
        args['seeds'] = 'a-b'
    elif case == 'outdir':
        args['outdir'] = blocker / 'sub'
    else:
        args['grid'] = '2x2'  # four cells, one seed
    result = CliRunner().invoke(gen_videos.main, ['--network', str(args['network']), '--seeds', args['seeds'],
                                                  '--grid', args['grid'], '--w-frames', '2',
                                                  '--outdir', str(args['outdir']), '--device', 'cpu'])
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and hint in errors[0], result.output
    assert isinstance(result.exception, SystemExit)
    assert not glob.glob(str(tmp_path / 'out' / '*.mp4'))
