"""Tests for training/engines/inversion.py and invert.py: a generator's own render is recovered from the mean
latent, pivotal tuning improves on the latent alone, and bad inputs are one-line errors."""

import json
import math
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import invert
from training.checkpoints import formats, run_files
from training.checkpoints.latent_file import load_latent
from training.data.camera_utils import camera_label, frontal_camera, orbit_camera
from training.engines.inversion import (
    InversionConfig,
    optimize_latent,
    perceptual_distance,
    psnr,
    render,
    render_target,
    tune_generator,
)

POSE = torch.tensor([[0.1, 0.0, 0.0, 0.2, -0.1, 0.0]])


@pytest.fixture(scope='module')
def networks(tmp_path_factory):
    from tests.tiny_run import write_tiny_snapshot

    run_dir = write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]
    path = os.path.join(run_dir, 'network-snapshot-000000.pt')
    G, D = run_files.snapshot_networks(formats.load_any(path), path)
    return run_dir, G.eval().requires_grad_(False), D.eval().requires_grad_(False)


def _camera() -> torch.Tensor:
    return camera_label(orbit_camera(math.pi / 2 + 0.3, math.pi / 2 - 0.1, batch_size=1))


def _own_render(G) -> dict:
    """G's render of a random latent from _camera() in POSE -> G.synthesis' dict."""
    z = torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return render(G, G.mapping(z, frontal_camera(1)), _camera(), POSE)


def test_perceptual_distance_is_zero_for_equal_images_and_grows_with_the_difference(networks):
    _, G, D = networks
    out = _own_render(G)
    image = {key: out[key] for key in ('image', 'image_raw', 'image_mask')}
    assert perceptual_distance(D, image, image).abs().max() < 1e-6
    noise = torch.randn(image['image'].shape, generator=torch.Generator().manual_seed(0))
    small, large = (
        perceptual_distance(D, image, dict(image, image=image['image'] + scale * noise)).item() for scale in (0.05, 0.5)
    )
    assert 0 < small < large


def test_inverting_the_generators_own_render_recovers_it_and_tuning_improves_on_it(networks):
    # The tiny generator is untrained, so its renders are noise-like and the mean latent's render is
    # only about 3 dB from the target. In 30 steps a w+ fit gains about 10 dB on it and tuning 15 steps
    # 2.5 dB more (measured); the thresholds, 8 and 1 dB, leave room for other CPUs' rounding, and a
    # fit that does not move (or tuning that does nothing) fails them by far.
    _, G, D = networks
    out = _own_render(G)
    target = render_target(out)
    config = InversionConfig(w_steps=30, w_plus=True, w_lr=0.2, pti_steps=15, pti_lr=1e-3)
    latent = optimize_latent(G, D, target, _camera(), POSE, config, progress=False)
    with torch.no_grad():
        mean_ws = G.mapping_network.w_avg.reshape(1, 1, -1).expand(1, G.num_ws, -1)
        start = psnr(render(G, mean_ws, _camera(), POSE)['image'], out['image'])
        fitted = psnr(render(G, latent.ws, _camera(), POSE)['image'], out['image'])
    assert latent.losses[-1]['total'] < latent.losses[0]['total'] / 5
    assert fitted > start + 8
    tuned, stage = tune_generator(G, D, target, latent.ws, _camera(), POSE, config, progress=False)
    with torch.no_grad():
        tuned_psnr = psnr(render(tuned, latent.ws, _camera(), POSE)['image'], out['image'])
    assert stage.losses[-1]['total'] < stage.losses[0]['total']
    assert tuned_psnr > fitted + 1
    assert all('locality' in step for step in stage.losses)
    assert not any(p.requires_grad for p in G.parameters())


def test_a_refined_pose_moves_and_a_fixed_one_does_not(networks):
    _, G, D = networks
    target = render_target(_own_render(G))
    start = torch.zeros_like(POSE)
    fixed = optimize_latent(G, D, target, _camera(), start, InversionConfig(w_steps=3), progress=False)
    moved = optimize_latent(
        G, D, target, _camera(), start, InversionConfig(w_steps=3, refine_pose=True), progress=False
    )
    assert torch.equal(fixed.pose, start) and not torch.equal(moved.pose, start)


def _write_photo(folder, out) -> tuple:
    """A render saved as photo.png with a full mask photo_mask.png -> (image path, mask path)."""
    image_path, mask_path = os.path.join(folder, 'photo.png'), os.path.join(folder, 'photo_mask.png')
    image = ((out['image'][0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    PIL.Image.fromarray(image).save(image_path)
    PIL.Image.fromarray(np.full(image.shape[:2], 255, dtype=np.uint8)).save(mask_path)
    return image_path, mask_path


def test_invert_writes_every_output_and_they_load_in_the_other_tools(networks, tmp_path):
    run_dir, G, _ = networks
    image_path, mask_path = _write_photo(tmp_path, _own_render(G))
    camera = ','.join(f'{v:.7f}' for v in _camera()[0, :16].tolist())
    outdir = tmp_path / 'out'
    result = CliRunner().invoke(
        invert.main,
        [
            '--network',
            run_dir,
            '--image',
            image_path,
            '--mask',
            mask_path,
            '--camera',
            camera,
            '--w-steps',
            '4',
            '--pti-steps',
            '2',
            '--frames',
            '4',
            '--shape-res',
            '16',
            '--device',
            'cpu',
            '--outdir',
            str(outdir),
        ],
    )
    assert result.exit_code == 0, result.output
    folder = outdir / 'photo'
    # The untrained tiny generator's density crosses no surface level: the mesh step writes the volume only.
    assert 'mesh: the density' in result.output and 'wrote the volume only' in result.output
    assert sorted(os.listdir(folder)) == [
        'G_tuned.pt',
        'latent.npz',
        'losses.json',
        'mesh.mrc',
        'orbit.mp4',
        'reconstruction.png',
    ]
    losses = json.loads((folder / 'losses.json').read_text())
    assert len(losses['w']) == 4 and len(losses['pti']) == 2 and losses['interrupted'] is False
    assert PIL.Image.open(folder / 'reconstruction.png').size == (3 * G.img_resolution, G.img_resolution)
    # A camera given as 16 values gets the data sets' intrinsics.
    latent = load_latent(str(folder / 'latent.npz'), G, torch.device('cpu'))
    assert torch.allclose(latent['camera'], _camera(), atol=1e-5)
    tuned_path = str(folder / 'G_tuned.pt')
    tuned = run_files.snapshot_networks(formats.load_any(tuned_path), tuned_path)[0]
    assert tuned.neural_rendering_resolution == G.neural_rendering_resolution
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), G.state_dict().values()))


@pytest.mark.parametrize(
    'case, message',
    [
        ('no mask', 'a single image needs its person mask (--mask FILE) and its camera (--camera)'),
        ('no camera', 'a single image needs its person mask (--mask FILE) and its camera (--camera)'),
        ('bad camera', 'Invalid value for --camera: 3 values: expected'),
        ('not square', 'expected an aligned square crop'),
        ('not an image', 'cannot read the image'),
        ('generator only', 'needs a checkpoint with a generator and a discriminator (D_ema or D)'),
        ('no pose settings', 'carries no pose-prediction settings and there is no'),
        ('foreign checkpoint', 'not a weights file of this project'),
    ],
)
def test_bad_inputs_are_one_line_errors(networks, tmp_path, case, message):
    run_dir, G, D = networks
    image_path, mask_path = _write_photo(tmp_path, _own_render(G))
    network = run_dir
    args = ['--image', image_path, '--mask', mask_path, '--camera', 'front']
    if case == 'no mask':
        args = ['--image', image_path, '--camera', 'front']
    elif case == 'no camera':
        args = ['--image', image_path, '--mask', mask_path]
    elif case == 'bad camera':
        args[-1] = '1,2,3'
    elif case == 'not square':
        PIL.Image.new('RGB', (32, 24)).save(image_path)
    elif case == 'not an image':
        with open(image_path, 'wb') as f:
            f.write(b'not a png')
    elif case == 'generator only':
        network = str(tmp_path / 'G.pt')
        formats.save_weights(network, {'G_ema': G})
    elif case == 'foreign checkpoint':
        network = str(tmp_path / 'other.pt')
        torch.save({'state_dict': G.state_dict()}, network)
    elif case == 'no pose settings':
        network = str(tmp_path / 'snapshot.pt')
        formats.save_weights(network, {'G_ema': G, 'D': D})
    result = CliRunner().invoke(
        invert.main,
        [
            '--network',
            network,
            *args,
            '--w-steps',
            '1',
            '--no-video',
            '--no-mesh',
            '--outdir',
            str(tmp_path / 'out'),
            '--device',
            'cpu',
        ],
    )
    assert result.exit_code in (1, 2) and message in result.output, result.output
    # click's usage errors add the usage line; the error itself is one line.
    assert 'Traceback' not in result.output
    assert [line for line in result.output.splitlines() if message in line] == [result.output.strip().splitlines()[-1]]


def test_invert_reads_a_data_set_and_a_folder_of_the_published_layout(networks, tmp_path):
    import zipfile

    run_dir, G, _ = networks
    root = os.path.dirname(run_dir)
    with zipfile.ZipFile(os.path.join(root, 'data.zip')) as data:
        labels = dict(json.loads(data.read('dataset.json'))['labels'])
    common = ['--network', run_dir, '--w-steps', '1', '--no-video', '--no-mesh', '--device', 'cpu']
    result = CliRunner().invoke(
        invert.main,
        [
            *common,
            '--image',
            os.path.join(root, 'data.zip'),
            '--mask',
            os.path.join(root, 'seg.zip'),
            '--outdir',
            str(tmp_path / 'set'),
        ],
    )
    assert result.exit_code == 0, result.output
    # One folder per image, at the image's path inside the data set.
    written = sorted(
        os.path.relpath(folder, tmp_path / 'set')
        for folder, _, files in os.walk(tmp_path / 'set')
        if 'latent.npz' in files
    )
    assert written == sorted(os.path.splitext(name)[0] for name in labels)
    name = sorted(labels)[3]
    latent = load_latent(str(tmp_path / 'set' / os.path.splitext(name)[0] / 'latent.npz'), G, torch.device('cpu'))
    assert torch.equal(latent['camera'][0], torch.tensor(labels[name][:25], dtype=torch.float32))

    folder = tmp_path / 'published'
    (folder / 'aligned_images').mkdir(parents=True)
    (folder / 'mask').mkdir()
    image_path, mask_path = _write_photo(tmp_path, _own_render(G))
    os.replace(image_path, folder / 'aligned_images' / 'me.png')
    os.replace(mask_path, folder / 'mask' / 'me.png')
    cam2world = _camera()[0, :16].reshape(4, 4)
    (folder / 'result.json').write_text(json.dumps({'me.png': {'camera_pose': cam2world.tolist()}}))
    result = CliRunner().invoke(
        invert.main, [*common, '--image', str(folder), '--outdir', str(tmp_path / 'published-out')]
    )
    assert result.exit_code == 0, result.output
    latent = load_latent(str(tmp_path / 'published-out' / 'me' / 'latent.npz'), G, torch.device('cpu'))
    assert torch.allclose(latent['camera'], _camera(), atol=1e-6)


def test_ctrl_c_ends_the_stage_and_keeps_what_it_reached(networks, tmp_path, monkeypatch):
    import training.engines.inversion

    run_dir, G, _ = networks
    image_path, mask_path = _write_photo(tmp_path, _own_render(G))
    calls = []
    real_render = training.engines.inversion.render

    def render_until_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(training.engines.inversion, 'render', render_until_interrupted)
    result = CliRunner().invoke(
        invert.main,
        [
            '--network',
            run_dir,
            '--image',
            image_path,
            '--mask',
            mask_path,
            '--camera',
            'front',
            '--w-steps',
            '10',
            '--pti-steps',
            '5',
            '--device',
            'cpu',
            '--outdir',
            str(tmp_path / 'out'),
        ],
    )
    assert result.exit_code == 130 and 'interrupted' in result.output
    folder = tmp_path / 'out' / 'photo'
    losses = json.loads((folder / 'losses.json').read_text())
    assert len(losses['w']) == 2 and 'pti' not in losses and losses['interrupted'] is True
    assert sorted(os.listdir(folder)) == ['latent.npz', 'losses.json', 'reconstruction.png']
    load_latent(str(folder / 'latent.npz'), G, torch.device('cpu'))
