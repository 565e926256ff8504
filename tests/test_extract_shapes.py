"""extract_shapes.py: a volume per seed from a tiny snapshot, and meshes from a folder of .mrc files."""

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner

import extract_shapes
from training import shapes
from tests.tiny_run import write_tiny_snapshot


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


def test_network_writes_a_volume(run_dir, tmp_path):
    result = CliRunner().invoke(extract_shapes.main, ['--network', run_dir, '--seeds', '0', '--shape-res', '16',
                                                      '--outdir', str(tmp_path), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    volume, side = shapes.read_mrc(str(tmp_path / 'seed0000.mrc'))
    assert volume.shape == (16, 16, 16) and side == pytest.approx(0.8, rel=1e-4)


def test_mrc_dir_to_meshes(tmp_path):
    points = shapes.grid_points(20, 0.8).reshape(20, 20, 20, 3).numpy()
    shapes.write_mrc(str(tmp_path / 'ball.mrc'), 15 + 100 * (0.2 - np.linalg.norm(points, axis=-1)), 0.8)
    result = CliRunner().invoke(extract_shapes.main, ['--mrc-dir', str(tmp_path), '--format', 'obj',
                                                      '--outdir', str(tmp_path / 'out')])
    assert result.exit_code == 0, result.output
    mesh = trimesh.load(str(tmp_path / 'out' / 'ball.obj'))
    assert abs(np.linalg.norm(mesh.vertices, axis=1).mean() - 0.2) < 0.8 / 19
    assert 'watertight' in result.output
