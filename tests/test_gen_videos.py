"""gen_videos.py end to end on a tiny snapshot: frame count, size, a closed 360-degree orbit, and --latent."""

import glob

import imageio
import numpy as np
import pytest
from click.testing import CliRunner

import gen_videos
from tests.tiny_run import TINY_GENERATOR, write_tiny_snapshot
from training.checkpoints.latent_file import save_latent


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


def test_orbit_video_frames_and_closure(run_dir, tmp_path):
    result = CliRunner().invoke(
        gen_videos.main,
        [
            '--network',
            run_dir,
            '--seeds',
            '0,1',
            '--grid',
            '2x1',
            '--w-frames',
            '5',
            '--sample-mult',
            '1',
            '--outdir',
            str(tmp_path),
            '--device',
            'cpu',
        ],
    )
    assert result.exit_code == 0, result.output
    frames = imageio.mimread(glob.glob(str(tmp_path / '*.mp4'))[0])
    res = TINY_GENERATOR['img_resolution']
    assert len(frames) == 5 and frames[0].shape == (res, 2 * res, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).max() <= 8


@pytest.mark.parametrize(
    'spelling, trajectory',
    [('--large_pose', 'orbit'), ('--large_pose=True', 'orbit'), ('--large_pose=False', 'wobble')],
)
def test_large_pose_takes_the_published_spellings(run_dir, tmp_path, spelling, trajectory):
    result = CliRunner().invoke(
        gen_videos.main,
        [
            '--network',
            run_dir,
            '--seeds',
            '0',
            '--trajectory',
            'wobble',
            spelling,
            '--w-frames',
            '2',
            '--sample-mult',
            '1',
            '--outdir',
            str(tmp_path),
            '--device',
            'cpu',
        ],
    )
    assert result.exit_code == 0, result.output
    assert [path.name for path in tmp_path.glob('*.mp4')] == [f'seeds0_{trajectory}_image.mp4']


@pytest.mark.parametrize('case', ['missing', 'foreign', 'seeds', 'outdir', 'grid'])
def test_one_line_errors(run_dir, tmp_path, case):
    foreign = tmp_path / 'notes.txt'
    foreign.write_text('not a checkpoint')
    blocker = tmp_path / 'file'
    blocker.write_text('')
    args = dict(network=run_dir, seeds='0', outdir=tmp_path / 'out', grid='1x1')
    hint = {
        'missing': 'nothing.pkl',
        'foreign': 'notes.txt',
        'seeds': 'a-b',
        'outdir': 'cannot write into --outdir',
        'grid': '2x2',
    }[case]
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
    result = CliRunner().invoke(
        gen_videos.main,
        [
            '--network',
            str(args['network']),
            '--seeds',
            args['seeds'],
            '--grid',
            args['grid'],
            '--w-frames',
            '2',
            '--outdir',
            str(args['outdir']),
            '--device',
            'cpu',
        ],
    )
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and hint in errors[0], result.output
    assert isinstance(result.exception, SystemExit)
    assert not glob.glob(str(tmp_path / 'out' / '*.mp4'))


def seed_latent(run_dir: str, seed: int = 0):
    """The ws gen_videos maps for `seed` (frontal camera, zero pose, no truncation) -> ws [1, num_ws, w_dim]."""
    import torch

    from training.cli import load_generator
    from training.data.camera_utils import frontal_camera

    G = load_generator(run_dir, None, 0, torch.device('cpu'))
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float()
    with torch.no_grad():
        return G.mapping(z, frontal_camera(1))


def render(run_dir, outdir, *args) -> list:
    result = CliRunner().invoke(
        gen_videos.main,
        [
            '--network',
            run_dir,
            '--w-frames',
            '2',
            '--sample-mult',
            '1',
            '--outdir',
            str(outdir),
            '--device',
            'cpu',
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    paths = glob.glob(str(outdir / '*.mp4'))
    assert len(paths) == 1
    return paths[0], imageio.mimread(paths[0])


def test_latent_renders_the_video_of_its_seed(run_dir, tmp_path):
    save_latent(str(tmp_path / 'face.npz'), seed_latent(run_dir), None, None)
    seed_path, seed_frames = render(run_dir, tmp_path / 'seeds', '--seeds', '0')
    latent_path, latent_frames = render(run_dir, tmp_path / 'latent', '--latent', str(tmp_path / 'face.npz'))
    assert seed_path.endswith('seeds0_orbit_image.mp4') and latent_path.endswith('face_orbit_image.mp4')
    # The same ws render the same frames, and libx264 encodes the same frames to the same stream: exact.
    assert len(latent_frames) == len(seed_frames) == 2
    for latent_frame, seed_frame in zip(latent_frames, seed_frames):
        np.testing.assert_array_equal(latent_frame, seed_frame)


def test_latent_with_a_pose_renders_posed(run_dir, tmp_path):
    import torch

    ws = seed_latent(run_dir)
    save_latent(str(tmp_path / 'canonical.npz'), ws, None, None)
    save_latent(str(tmp_path / 'posed.npz'), ws, torch.tensor([[0.0, 0.0, 0.0, 0.3, -0.8, 0.2]]), None)
    (_, canonical), (_, posed) = (
        render(run_dir, tmp_path / name, '--latent', str(tmp_path / f'{name}.npz'), '--image_mode', 'image_raw')
        for name in ('canonical', 'posed')
    )
    # libx264 turns equal frames into equal frames (test_latent_renders_the_video_of_its_seed), so any change
    # comes from the render; the untrained tiny head is faint, so the change is small.
    assert not np.array_equal(canonical[0], posed[0])


@pytest.mark.parametrize('case', ['ws-shape', 'with-seeds', 'grid', 'interpolate', 'trunc'])
def test_latent_usage_errors(run_dir, tmp_path, case):
    ws = seed_latent(run_dir)
    if case == 'ws-shape':
        ws = ws[:, :-1]
    save_latent(str(tmp_path / 'face.npz'), ws, None, None)
    extra, hint = {
        'ws-shape': ([], f'Invalid value for --latent: {tmp_path / "face.npz"}: ws has shape'),
        'with-seeds': (['--seeds', '0'], '--seeds does not apply to --latent'),
        'grid': (['--grid', '2x1'], 'use --grid 1x1'),
        'interpolate': (['--interpolate', 'linear'], 'and --interpolate none'),
        'trunc': (['--trunc', '0.7'], '--trunc does not apply to --latent'),
    }[case]
    result = CliRunner().invoke(
        gen_videos.main,
        [
            '--network',
            run_dir,
            '--latent',
            str(tmp_path / 'face.npz'),
            '--w-frames',
            '2',
            '--outdir',
            str(tmp_path / 'out'),
            '--device',
            'cpu',
            *extra,
        ],
    )
    assert result.exit_code == 2 and 'Traceback' not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and hint in errors[0], result.output
    assert not glob.glob(str(tmp_path / 'out' / '*.mp4'))
