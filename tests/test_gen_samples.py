"""gen_samples.py end to end on a tiny snapshot: images, shapes, posed rendering and one-line errors."""

import os

import numpy as np
import PIL.Image
import pytest
import trimesh
from click.testing import CliRunner

import gen_samples
from tests.tiny_run import TINY_GENERATOR, write_tiny_snapshot
from training.checkpoints import formats

RES = TINY_GENERATOR['img_resolution']
RAW = TINY_GENERATOR['neural_rendering_resolution']


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


def invoke(*args):
    return CliRunner().invoke(gen_samples.main, [str(a) for a in args] + ['--device', 'cpu'])


@pytest.mark.parametrize('ext', ['pkl', 'pt'])
def test_images_and_shapes(run_dir, tmp_path, ext):
    outdir = tmp_path / 'out'
    result = invoke(
        '--network',
        os.path.join(run_dir, f'network-snapshot-000000.{ext}'),
        '--seeds',
        '3',
        '--sample-mult',
        '1',
        '--shapes',
        '--shape-res',
        '24',
        '--outdir',
        outdir,
        # The untrained density stays below the default level; every interior voxel is above
        # this one (the border is -1000), so a closed mesh must come out.
        '--shape-level',
        '-500',
    )
    assert result.exit_code == 0, result.output
    assert PIL.Image.open(outdir / 'seed0003.png').size == (3 * RES, RES)
    assert PIL.Image.open(outdir / 'seed0003_raw.png').size == (3 * RAW, RAW)
    assert PIL.Image.open(outdir / 'seed0003_depth.png').size == (3 * RAW, RAW)
    assert (outdir / 'seed0003.mrc').exists()
    mesh = trimesh.load(outdir / 'seed0003.ply', process=False)
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert mesh.is_watertight


@pytest.mark.slow
def test_same_seed_same_image_and_pose_changes_it(run_dir, tmp_path):
    images = []
    for name, extra in [('a', []), ('b', []), ('c', ['--pose', '0.5,0,0,0,0.5,0'])]:
        result = invoke(
            '--network',
            run_dir,
            '--seeds',
            '1',
            '--views',
            'front',
            '--sample-mult',
            '1',
            '--outdir',
            tmp_path / name,
            *extra,
        )
        assert result.exit_code == 0, result.output
        images.append(np.asarray(PIL.Image.open(tmp_path / name / 'seed0001_raw.png')))
    np.testing.assert_array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])


def test_seeds_num_is_reproducible(run_dir, tmp_path):
    names = []
    for name in 'ab':
        result = invoke(
            '--network',
            run_dir,
            '--seeds_num',
            '2',
            '--views',
            'front',
            '--sample-mult',
            '1',
            '--outdir',
            tmp_path / name,
        )
        assert result.exit_code == 0, result.output
        names.append(sorted(p for p in os.listdir(tmp_path / name) if p.endswith('_raw.png')))
    assert len(names[0]) == 2 and names[0] == names[1]


@pytest.mark.parametrize(
    'case', ['missing', 'foreign', 'seeds', 'outdir', 'pose', 'nan_pose', 'inf_pose', 'not_a_generator']
)
def test_one_line_errors(run_dir, tmp_path, case):
    foreign = tmp_path / 'notes.txt'
    foreign.write_text('not a checkpoint')
    blocker = tmp_path / 'file'
    blocker.write_text('')
    args = dict(network=run_dir, seeds='0', outdir=tmp_path / 'out')
    extra = []
    if case == 'missing':
        args['network'] = tmp_path / 'nothing.pkl'
    elif case == 'foreign':
        args['network'] = foreign
    elif case == 'seeds':
        args['seeds'] = 'a-b'
    elif case == 'outdir':
        args['outdir'] = blocker / 'sub'
    elif case == 'not_a_generator':
        args['network'] = tmp_path / 'swapped.pt'
        discriminator = formats.load_any(os.path.join(run_dir, 'network-snapshot-000000.pt'))['D']
        formats.save_weights(str(args['network']), dict(G_ema=discriminator))
    else:
        extra = ['--pose', {'pose': '1,2', 'nan_pose': 'nan,0,0,0,0,0', 'inf_pose': '0,0,0,0,inf,0'}[case]]
    result = invoke('--network', args['network'], '--seeds', args['seeds'], '--outdir', args['outdir'], *extra)
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith('Error')]) == 1
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
