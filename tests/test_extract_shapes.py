"""extract_shapes.py: a volume per seed or per latent file from a tiny snapshot, and meshes from a folder of .mrc files."""

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner

import extract_shapes
from tests.tiny_run import write_tiny_snapshot
from training.checkpoints.latent_file import save_latent
from training.engines import shapes


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


def test_network_writes_a_volume(run_dir, tmp_path):
    result = CliRunner().invoke(
        extract_shapes.main,
        ['--network', run_dir, '--seeds', '0', '--shape-res', '16', '--outdir', str(tmp_path), '--device', 'cpu'],
    )
    assert result.exit_code == 0, result.output
    volume, side = shapes.read_mrc(str(tmp_path / 'seed0000.mrc'))
    assert volume.shape == (16, 16, 16) and side == pytest.approx(0.8, rel=1e-4)


def test_posed_glb_mesh_is_the_canonical_mesh_carried_by_the_body_model(run_dir, tmp_path):
    import torch

    from training.cli import load_generator

    # The untrained density stays below the default level; every voxel inside the closed border is above -500.
    common = [
        '--network',
        run_dir,
        '--seeds',
        '1',
        '--shape-res',
        '12',
        '--level',
        '-500',
        '--format',
        'glb',
        '--device',
        'cpu',
    ]
    head_pose = '0,0,0,0.2,-0.7,0.1'
    for name, extra in (('canonical', []), ('posed', ['--pose', head_pose])):
        result = CliRunner().invoke(extract_shapes.main, common + extra + ['--outdir', str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    canonical, posed = (
        trimesh.load(str(tmp_path / name / 'seed0001.glb'), process=False, force='mesh')
        for name in ('canonical', 'posed')
    )
    assert len(canonical.vertices) > 0 and canonical.visual.vertex_colors.shape == (len(canonical.vertices), 4)
    np.testing.assert_array_equal(posed.faces, canonical.faces)
    np.testing.assert_array_equal(posed.visual.vertex_colors, canonical.visual.vertex_colors)
    G = load_generator(run_dir, None, 0, torch.device('cpu'))
    pose = torch.tensor([[float(v) for v in head_pose.split(',')]])
    np.testing.assert_allclose(
        posed.vertices, shapes.pose_vertices(G.deformer, np.asarray(canonical.vertices), pose), atol=1e-6
    )
    assert np.abs(posed.vertices - canonical.vertices).max() > 0.01  # the head moved
    volumes = [shapes.read_mrc(str(tmp_path / name / 'seed0001.mrc'))[0] for name in ('canonical', 'posed')]
    np.testing.assert_array_equal(volumes[0], volumes[1])  # the volume stays canonical


def test_mrc_dir_to_meshes(tmp_path):
    points = shapes.grid_points(20, 0.8).reshape(20, 20, 20, 3).numpy()
    shapes.write_mrc(str(tmp_path / 'ball.mrc'), 15 + 100 * (0.2 - np.linalg.norm(points, axis=-1)), 0.8)
    result = CliRunner().invoke(
        extract_shapes.main, ['--mrc-dir', str(tmp_path), '--format', 'obj', '--outdir', str(tmp_path / 'out')]
    )
    assert result.exit_code == 0, result.output
    mesh = trimesh.load(str(tmp_path / 'out' / 'ball.obj'))
    assert abs(np.linalg.norm(mesh.vertices, axis=1).mean() - 0.2) < 0.8 / 19
    assert 'watertight' in result.output


@pytest.mark.parametrize('case', ['missing', 'foreign', 'seeds', 'outdir', 'empty-mrc-dir', 'both', 'pose', 'pose-mrc'])
def test_one_line_errors(run_dir, tmp_path, case):
    foreign = tmp_path / 'notes.txt'
    foreign.write_text('not a checkpoint')
    blocker = tmp_path / 'file'
    blocker.write_text('')
    (tmp_path / 'empty').mkdir()
    source = ['--network', run_dir]
    seeds, outdir = '0', tmp_path / 'out'
    hint = {
        'missing': 'nothing.pkl',
        'foreign': 'notes.txt',
        'seeds': 'a-b',
        'outdir': 'cannot write into --outdir',
        'empty-mrc-dir': 'no .mrc',
        'both': '--mrc-dir',
        'pose': 'six comma-separated',
        'pose-mrc': '--pose needs --network',
    }[case]
    pose = []
    if case == 'missing':
        source = ['--network', tmp_path / 'nothing.pkl']
    elif case == 'foreign':
        source = ['--network', foreign]
    elif case == 'seeds':
        seeds = 'a-b'
    elif case == 'outdir':
        outdir = blocker / 'sub'
    elif case == 'empty-mrc-dir':
        source = ['--mrc-dir', tmp_path / 'empty']
    elif case == 'both':
        source += ['--mrc-dir', tmp_path / 'empty']
    elif case == 'pose':
        pose = ['--pose', '0,0,1']
    else:
        source, pose = ['--mrc-dir', tmp_path / 'empty'], ['--pose', '0,0,0,0,0,0.5']
    result = CliRunner().invoke(
        extract_shapes.main,
        [str(a) for a in source + pose]
        + ['--seeds', seeds, '--shape-res', '8', '--outdir', str(outdir), '--device', 'cpu'],
    )
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and hint in errors[0], result.output
    assert isinstance(result.exception, SystemExit)


def seed_latent(run_dir: str, seed: int):
    """The ws extract_shapes maps for `seed` (frontal camera, zero pose, no truncation) -> ws [1, num_ws, w_dim]."""
    import torch

    from training.cli import load_generator
    from training.data.camera_utils import frontal_camera

    G = load_generator(run_dir, None, 0, torch.device('cpu'))
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float()
    with torch.no_grad():
        return G.mapping(z, frontal_camera(1))


def mesh(run_dir, outdir, stem, *args):
    # The untrained density stays below the default level; every voxel inside the closed border is above -500.
    result = CliRunner().invoke(
        extract_shapes.main,
        [
            '--network',
            run_dir,
            '--shape-res',
            '12',
            '--level',
            '-500',
            '--outdir',
            str(outdir),
            '--device',
            'cpu',
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (outdir / f'{stem}.mrc').exists()
    return trimesh.load(str(outdir / f'{stem}.ply'), process=False, force='mesh')


def test_latent_meshes_like_its_seed_and_takes_its_pose(run_dir, tmp_path):
    import torch

    ws = seed_latent(run_dir, 0)
    head_pose = [0.0, 0.0, 0.0, 0.2, -0.7, 0.1]
    save_latent(str(tmp_path / 'face.npz'), ws, None, None)
    save_latent(str(tmp_path / 'posed.npz'), ws, torch.tensor([head_pose]), None)
    seed = mesh(run_dir, tmp_path / 'seed', 'seed0000', '--seeds', '0')
    latent = mesh(run_dir, tmp_path / 'latent', 'face', '--latent', str(tmp_path / 'face.npz'))
    assert len(seed.vertices) > 0
    np.testing.assert_array_equal(latent.vertices, seed.vertices)
    np.testing.assert_array_equal(latent.faces, seed.faces)
    posed = mesh(run_dir, tmp_path / 'posed', 'posed', '--latent', str(tmp_path / 'posed.npz'))
    np.testing.assert_array_equal(posed.faces, seed.faces)
    assert np.abs(posed.vertices - seed.vertices).max() > 0.01  # the file's pose moved the head
    seed_posed = mesh(
        run_dir, tmp_path / 'seed-posed', 'seed0000', '--seeds', '0', '--pose', ','.join(str(v) for v in head_pose)
    )
    np.testing.assert_array_equal(posed.vertices, seed_posed.vertices)
    # --pose wins over the file's pose: zero pose gives the canonical mesh back.
    unposed = mesh(
        run_dir, tmp_path / 'unposed', 'posed', '--latent', str(tmp_path / 'posed.npz'), '--pose', '0,0,0,0,0,0'
    )
    np.testing.assert_allclose(unposed.vertices, seed.vertices, atol=1e-6)


@pytest.mark.parametrize('case', ['ws-shape', 'with-seeds', 'with-mrc-dir', 'trunc'])
def test_latent_usage_errors(run_dir, tmp_path, case):
    ws = seed_latent(run_dir, 0)
    if case == 'ws-shape':
        ws = ws[:, :, :-1]
    latent = str(tmp_path / 'face.npz')
    save_latent(latent, ws, None, None)
    (tmp_path / 'empty').mkdir()
    source, hint = {
        'ws-shape': (['--network', run_dir], f'Invalid value for --latent: {latent}: ws has shape'),
        'with-seeds': (['--network', run_dir, '--seeds', '0'], '--seeds does not apply to --latent'),
        'with-mrc-dir': (['--mrc-dir', str(tmp_path / 'empty')], '--latent needs --network'),
        'trunc': (['--network', run_dir, '--trunc-cutoff', '2'], '--trunc-cutoff does not apply'),
    }[case]
    result = CliRunner().invoke(
        extract_shapes.main,
        source + ['--latent', latent, '--shape-res', '8', '--outdir', str(tmp_path / 'out'), '--device', 'cpu'],
    )
    assert result.exit_code == 2 and 'Traceback' not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and hint in errors[0], result.output
    assert not (tmp_path / 'out' / 'face.mrc').exists()
