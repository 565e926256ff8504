"""benchmarks/inversion.py: its ground truth is the data set's own render, its camera turns are exact, and a run
on the tiny snapshot reports every view of both stages."""

import io
import json
import math
import os

import numpy as np
import PIL.Image
import pytest
import torch

from benchmarks import inversion
from training.data.camera_utils import PIVOT, RADIUS, camera_label, camera_yaw, orbit_camera
from training.data.synthetic import PortraitPainter, render_item, sample_scene

SEED, INDEX, RES = 3, 100007, 32


def positions(c: np.ndarray) -> np.ndarray:
    """Camera positions relative to the pivot: c [B, 25] -> [B, 3]."""
    return c.reshape(-1, 25)[:, [3, 7, 11]].astype(np.float64) - np.array(PIVOT)


def test_ground_truth_at_the_input_view_is_the_stored_image():
    painter = PortraitPainter()
    _, image_png, _ = render_item(painter, SEED, INDEX, RES)
    stored = np.asarray(PIL.Image.open(io.BytesIO(image_png)))
    _, _, mask_png = render_item(painter, SEED, INDEX, RES)
    truth, mask = inversion.ground_truth(painter, sample_scene(SEED, INDEX), 0.0, RES)
    assert truth.dtype == np.uint8 and truth.shape == (RES, RES, 3)
    np.testing.assert_array_equal(truth, stored)
    np.testing.assert_array_equal(mask, np.asarray(PIL.Image.open(io.BytesIO(mask_png))))
    # A turned view is another picture of the same portrait, not the same one.
    assert not np.array_equal(inversion.ground_truth(painter, sample_scene(SEED, INDEX), 45.0, RES)[0], stored)


def test_portraits_over_grey_ignore_the_background():
    rng = np.random.default_rng(0)
    person = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    alpha = np.zeros((8, 8))
    alpha[2:6, 2:6] = 1
    other_background = np.where(alpha[..., None] > 0, person, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    np.testing.assert_array_equal(inversion.on_grey(person, alpha), inversion.on_grey(other_background, alpha))
    assert (inversion.on_grey(person, alpha)[0, 0] == 128).all()
    np.testing.assert_array_equal(
        inversion.on_grey(person, np.full((8, 8), 0.5))[0, 0],
        np.rint((person[0, 0].astype(float) + 128) / 2).astype(np.uint8),
    )


def test_view_scene_keeps_the_lights_in_the_world():
    scene = sample_scene(SEED, INDEX)
    turned = inversion.view_scene(scene, 90.0)

    def world_lights(s):
        return s.light_dirs @ s.camera.astype(np.float64)[:16].reshape(4, 4)[:3, :3].T

    np.testing.assert_allclose(world_lights(turned), world_lights(scene), atol=1e-6)
    assert not np.allclose(turned.light_dirs, scene.light_dirs)


def test_yaw_offset_camera():
    yaw = torch.tensor([0.3, -2.0, 2.9])
    cameras = camera_label(orbit_camera(math.pi / 2 + yaw, math.pi / 2 + torch.tensor([0.1, -0.2, 0.0])))
    single = torch.from_numpy(sample_scene(SEED, INDEX).camera)

    assert torch.equal(inversion.yaw_offset_camera(cameras, 0.0), cameras)
    assert torch.equal(inversion.yaw_offset_camera(single, 0.0), single)
    assert inversion.yaw_offset_camera(single, 90.0).shape == (25,)
    torch.testing.assert_close(inversion.yaw_offset_camera(cameras, 360.0), cameras, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        inversion.yaw_offset_camera(inversion.yaw_offset_camera(cameras, 90.0), -90.0), cameras, atol=1e-5, rtol=0
    )

    for degrees in (45.0, -45.0, 90.0, -90.0, 180.0):
        turned = inversion.yaw_offset_camera(cameras, degrees)
        before, after = positions(cameras.numpy()), positions(turned.numpy())
        np.testing.assert_allclose(np.linalg.norm(after, axis=1), np.linalg.norm(before, axis=1), atol=1e-5)
        np.testing.assert_allclose(after[:, 1], before[:, 1], atol=1e-6)
        horizontal_before, horizontal_after = before[:, [0, 2]], after[:, [0, 2]]
        cos = (horizontal_before * horizontal_after).sum(1) / (
            np.linalg.norm(horizontal_before, axis=1) * np.linalg.norm(horizontal_after, axis=1)
        )
        np.testing.assert_allclose(np.degrees(np.arccos(np.clip(cos, -1, 1))), abs(degrees), atol=1e-3)
        # The sense of the turn: positive toward +x, as camera_yaw counts.
        wrapped = (camera_yaw(turned.double()) - camera_yaw(cameras.double()) - math.radians(degrees) + math.pi) % (
            2 * math.pi
        ) - math.pi
        assert wrapped.abs().max() < 1e-5
        # Still an orbit camera: looking at the pivot, its x axis horizontal, intrinsics unchanged.
        cam2world = turned.double()[:, :16].reshape(-1, 4, 4)
        forward = cam2world[:, :3, 2]
        toward_pivot = torch.tensor(PIVOT, dtype=torch.float64) - cam2world[:, :3, 3]
        torch.testing.assert_close(forward, toward_pivot / toward_pivot.norm(dim=1, keepdim=True), atol=1e-5, rtol=0)
        assert cam2world[:, 1, 0].abs().max() < 1e-6
        assert torch.equal(turned[:, 16:], cameras[:, 16:])
    np.testing.assert_allclose(np.linalg.norm(positions(cameras.numpy()) + np.array(PIVOT), axis=1), RADIUS, atol=1e-5)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    from tests.tiny_run import write_tiny_snapshot

    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


def test_end_to_end_on_the_tiny_snapshot(run_dir, tmp_path, capsys):
    out = tmp_path / 'bench.json'
    threads = torch.get_num_threads()
    try:
        inversion.main(
            [
                '--network',
                os.path.join(run_dir, 'network-snapshot-000000.pt'),
                '--num',
                '1',
                '--w-steps',
                '3',
                '--pti-steps',
                '2',
                '--threads',
                '1',
                '--json',
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert set(report['seconds_per_image']) == {'w', 'pti'}
    assert all(seconds > 0 for seconds in report['seconds_per_image'].values())
    assert set(report['pose_error']) >= {'neck_mean', 'head_mean'}
    (portrait,) = report['portraits']
    assert portrait['index'] == 100000 and set(portrait['seconds']) == {'w', 'pti'}
    for metrics in (report['mean'], portrait['metrics']):
        assert set(metrics) == {'w', 'w_pti'}
        for stage in metrics.values():
            assert set(stage) == {'input', '+45', '-45', '+90', '-90', '180'}
            for values in stage.values():
                assert math.isfinite(values['psnr']) and -1 <= values['ssim'] <= 1
                assert math.isfinite(values['psnr_portrait']) and -1 <= values['ssim_portrait'] <= 1
    table = capsys.readouterr().out
    assert '| 180 |' in table and 'W + PTI PSNR' in table


def test_one_line_errors(run_dir, tmp_path, capsys):
    from training.checkpoints import formats

    contents = formats.load_any(os.path.join(run_dir, 'network-snapshot-000000.pt'))
    copied = tmp_path / 'network-snapshot-000000.pt'  # the networks without pose settings, inside or beside
    formats.save_weights(str(copied), {key: contents[key] for key in ('G_ema', 'D_ema')})
    with pytest.raises(SystemExit) as info:
        inversion.main(['--network', str(copied), '--num', '1'])
    assert info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'pose_predict_kwargs-000000.json' in message and '--given-pose' in message

    without_d = tmp_path / 'g-only.pt'
    formats.save_weights(str(without_d), dict(G_ema=contents['G_ema']))
    with pytest.raises(SystemExit) as info:
        inversion.main(['--network', str(without_d), '--num', '1', '--given-pose'])
    assert info.value.code == 2
    assert 'no discriminator' in capsys.readouterr().err.strip().splitlines()[-1]
