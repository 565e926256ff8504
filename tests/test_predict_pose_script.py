"""gen_samples.py --predict-pose on synthetic portraits with exact cameras: the poses against D called
directly on independently prepared tensors, the side-by-side renders, and one-line errors."""

import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import gen_samples
from tests.tiny_run import TINY_GENERATOR, write_tiny_snapshot
from training.checkpoints import formats
from training.data.synthetic import PortraitPainter, sample_scene
from training.pose_prediction import predict_real_poses

RES = TINY_GENERATOR['img_resolution']
PHOTO_RES = 48  # not the networks' resolution, so that the script has to resize
NAMES = ['p0.png', 'p1.png', 'p2.png']


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """A real-portrait folder of synthetic portraits (docs/method.md §10.4) -> (folder, images uint8 [N, H, W, 3],
    masks uint8 [N, H, W], camera labels float32 [N, 25] as the synthetic set stores them)."""
    folder = tmp_path_factory.mktemp('photos')
    os.makedirs(folder / 'aligned_images')
    os.makedirs(folder / 'mask')
    painter = PortraitPainter()
    images, masks, cameras, result = [], [], [], {}
    for idx, name in enumerate(NAMES):
        scene = sample_scene(5, idx)
        image, mask = painter.render(scene, PHOTO_RES)
        PIL.Image.fromarray(image).save(folder / 'aligned_images' / name)
        PIL.Image.fromarray(mask).save(folder / 'mask' / name)
        result[name] = {'camera_pose': scene.camera[:16].reshape(4, 4).tolist(), 'other': 'ignored'}
        images.append(image)
        masks.append(mask)
        cameras.append(scene.camera)
    (folder / 'result.json').write_text(json.dumps(result))
    return folder, np.stack(images), np.stack(masks), np.stack(cameras)


def invoke(*args):
    return CliRunner().invoke(gen_samples.main, [str(a) for a in args] + ['--device', 'cpu'])


def resized(array: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, C, resolution, resolution] in [0, 1], bilinear with antialiasing."""
    x = torch.from_numpy(array).float().permute(0, 3, 1, 2) / 255
    return F.interpolate(x, size=(resolution, resolution), mode='bilinear', align_corners=False, antialias=True)


def test_poses_match_the_discriminator_and_renders_sit_beside_the_photos(run_dir, photos, tmp_path):
    folder, images, masks, cameras = photos
    outdir = tmp_path / 'out'
    result = invoke(
        '--network',
        os.path.join(run_dir, 'network-snapshot-000000.pkl'),
        '--predict-pose',
        folder,
        '--seeds',
        '0,1',
        '--sample-mult',
        '1',
        '--outdir',
        outdir,
    )
    assert result.exit_code == 0, result.output

    D = formats.load_any(os.path.join(run_dir, 'network-snapshot-000000.pkl'))['D_ema'].eval()
    with open(os.path.join(run_dir, 'pose_predict_kwargs-000000.json')) as f:
        kwargs = json.load(f)
    # One photo at a time, as the script promises (D's minibatch-std layer would couple a batch).
    expected = predict_real_poses(
        D, resized(images, RES) * 2 - 1, resized(masks[..., None], RES), torch.from_numpy(cameras), kwargs, batch=1
    )
    predicted = json.loads((outdir / 'predicted_poses.json').read_text())
    assert sorted(predicted) == NAMES
    got = torch.tensor([predicted[name]['neck'] + predicted[name]['head'] for name in NAMES])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    for seed in (0, 1):
        for idx, name in enumerate(NAMES):
            picture = np.asarray(PIL.Image.open(outdir / f'seed{seed:04d}_{name[:-4]}.png'))
            assert picture.shape == (RES, 2 * RES, 3)
            photo = (resized(images[idx : idx + 1], RES)[0].permute(1, 2, 0) * 255).round().numpy()
            assert np.abs(picture[:, :RES].astype(float) - photo).max() <= 1
    render = [np.asarray(PIL.Image.open(outdir / f'seed{seed:04d}_p0.png'))[:, RES:] for seed in (0, 1)]
    assert not np.array_equal(render[0], render[1])


def test_a_weights_file_copied_alone_predicts_the_same_poses(run_dir, photos, tmp_path):
    """The .pt carries its pose-prediction settings: copied without the JSON beside it, it needs no --pose-kwargs."""
    alone = tmp_path / 'alone' / 'portrait.pt'
    alone.parent.mkdir()
    shutil.copy(os.path.join(run_dir, 'network-snapshot-000000.pt'), alone)
    predicted = []
    for network, outdir in ((os.path.join(run_dir, 'network-snapshot-000000.pkl'), 'beside'), (alone, 'alone')):
        result = invoke(
            '--network', network, '--predict-pose', photos[0], '--seeds', '0', '--outdir', tmp_path / outdir
        )
        assert result.exit_code == 0, result.output
        predicted.append(json.loads((tmp_path / outdir / 'predicted_poses.json').read_text()))
    assert predicted[0] == predicted[1]


def broken_copy(photos, tmp_path, case):
    """A copy of the photo folder with one defect -> its path."""
    folder = tmp_path / 'broken'
    shutil.copytree(photos[0], folder)
    result = json.loads((folder / 'result.json').read_text())
    if case == 'no-result':
        os.remove(folder / 'result.json')
    elif case == 'no-mask':
        os.remove(folder / 'mask' / 'p1.png')
    elif case == 'no-image':
        result['p9.png'] = result['p0.png']
    elif case == 'unlisted-image':
        del result['p2.png']
    elif case == 'bad-camera':
        result['p1.png']['camera_pose'] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    (folder / 'result.json').write_text(json.dumps(result)) if case != 'no-result' else None
    return folder


@pytest.mark.parametrize(
    'case',
    [
        'no-folder',
        'no-result',
        'no-mask',
        'no-image',
        'unlisted-image',
        'bad-camera',
        'no-kwargs',
        'snapshot-without-kwargs',
        'cfg',
    ],
)
def test_one_line_errors(run_dir, photos, tmp_path, case):
    network = os.path.join(run_dir, 'network-snapshot-000000.pkl')
    folder = broken_copy(photos, tmp_path, case)
    extra = []
    if case == 'no-folder':
        folder = tmp_path / 'nothing'
    elif case == 'no-kwargs':
        extra = ['--pose-kwargs', tmp_path / 'nothing.json']
    elif case == 'snapshot-without-kwargs':
        contents = formats.load_any(network)
        network = str(tmp_path / 'network-snapshot-000000.pkl')
        formats.save_network_pickle(network, {key: contents[key] for key in ('G_ema', 'D_ema')})
    source = ['--cfg', 'cpu-small'] if case == 'cfg' else ['--network', network]
    result = invoke(*source, '--predict-pose', folder, '--seeds', '0', '--outdir', tmp_path / 'out', *extra)
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1, result.output
    assert isinstance(result.exception, SystemExit)
    hint = {
        'no-folder': 'nothing',
        'no-result': 'result.json',
        'no-mask': 'p1.png',
        'no-image': 'p9.png',
        'unlisted-image': 'p2.png',
        'bad-camera': '3x3',
        'no-kwargs': 'nothing.json',
        'snapshot-without-kwargs': 'pose_predict_kwargs-000000.json',
        'cfg': '--network',
    }[case]
    assert hint in errors[0], errors[0]
