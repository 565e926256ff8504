"""Tests of training/data/synthetic.py: labels round-trip through PortraitDataset, masks match the
body projected with a numpy pinhole, determinism over workers, mirror symmetry, atomic builds,
and the `dataset_tool.py synth` command."""

import dataclasses
import math
import os
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import ndimage

import dataset_tool
from training.body.body_model import BodyModel
from training.data import camera_utils, synthetic
from training.data.dataset import PortraitDataset, check_dataset

NUM = 12
RES = 32
PIVOT = np.array([0.0, 0.0649, 0.0])


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """The tiny set rendered in this process: (images zip, masks zip)."""
    root = tmp_path_factory.mktemp('synthetic')
    images, masks = str(root / 'images.zip'), str(root / 'masks.zip')
    synthetic.build_synthetic_dataset(images, masks, num_images=NUM, resolution=RES, seed=0, workers=1, progress=False)
    return images, masks


@pytest.fixture(scope='module')
def painter():
    return synthetic.PortraitPainter()


def zip_contents(path: str) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def recentred_vertices(betas: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """The body of a scene posed and moved so that its own neck joint is at the origin -> [V, 3]."""
    body = BodyModel.embedded(betas=betas)
    with torch.no_grad():
        posed = body.pose(torch.as_tensor(pose, dtype=torch.float32)[None])[0]
    return (posed - body.joints[0, 12]).double().numpy()


def project(points: np.ndarray, c: np.ndarray, resolution: int) -> np.ndarray:
    """World points [N, 3] through camera label c [25] -> pixel coordinates (u right, v down) [N, 2];
    pixel (row i, column j) covers [j, j + 1] x [i, i + 1]."""
    c = c.astype(np.float64)
    cam2world = c[:16].reshape(4, 4)
    x, y, z = ((points - cam2world[:3, 3]) @ cam2world[:3, :3]).T
    fx, cx, fy, cy = c[16] * resolution, c[18] * resolution, c[20] * resolution, c[21] * resolution
    return np.stack([fx * x / z + cx, fy * y / z + cy], axis=1)


def differing_pixels(a: np.ndarray, b: np.ndarray, tolerance: int = 8) -> int:
    difference = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return int((difference.reshape(*a.shape[:2], -1).max(axis=-1) > tolerance).sum())


# ------------------------------------------------------------------------------------------------
# Scene sampling.


def test_scene_distribution_covers_the_circle_within_limits():
    scenes = [synthetic.sample_scene(3, idx) for idx in range(300)]
    cameras = np.stack([scene.camera for scene in scenes]).astype(np.float64)
    positions = cameras[:, [3, 7, 11]]
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1), 2.7, rtol=1e-5)
    forward = cameras[:, [2, 6, 10]]
    towards_pivot = PIVOT - positions
    towards_pivot /= np.linalg.norm(towards_pivot, axis=1, keepdims=True)
    np.testing.assert_allclose(forward, towards_pivot, atol=1e-5)
    intrinsics = cameras[:, 16:].reshape(-1, 3, 3)
    np.testing.assert_allclose(
        intrinsics, np.broadcast_to([[6.5104166, 0, 0.5], [0, 6.5104166, 0.5], [0, 0, 1]], intrinsics.shape), atol=1e-6
    )

    yaw = np.arctan2(positions[:, 0], positions[:, 2])
    counts = np.histogram(yaw, bins=8, range=(-math.pi, math.pi))[0]
    assert counts.min() >= 20, counts  # uniform: about 37 per octant
    elevation = np.arcsin(positions[:, 1] / 2.7)
    max_elevation = math.asin(2 * synthetic.PITCH_LIMIT / math.pi)
    assert np.abs(elevation).max() <= max_elevation + 1e-6 and elevation.std() > 0.08
    assert (elevation > 0).mean() > 0.35 and (elevation < 0).mean() > 0.35

    poses = np.stack([scene.pose for scene in scenes])
    limits = synthetic.POSE_CLIP * np.array(synthetic.NECK_POSE_STD + synthetic.HEAD_POSE_STD)
    assert (np.abs(poses) <= limits + 1e-6).all()
    assert (poses.std(axis=0) > 0.5 * limits / synthetic.POSE_CLIP).all()
    betas = np.stack([scene.betas for scene in scenes])
    assert np.abs(betas).max() <= synthetic.BETA_LIMIT + 1e-6 and 0.6 < betas.std() < 0.9


def test_scene_is_a_function_of_seed_and_index():
    a, b = synthetic.sample_scene(5, 17), synthetic.sample_scene(5, 17)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.skin, b.skin)
    assert not np.array_equal(a.label, synthetic.sample_scene(5, 18).label)
    assert not np.array_equal(a.label, synthetic.sample_scene(6, 17).label)


# ------------------------------------------------------------------------------------------------
# The built set.


def test_round_trip_through_portrait_dataset(built):
    images, masks = built
    assert check_dataset(images, masks) == []
    dataset = PortraitDataset(images, masks)
    assert len(dataset) == NUM and dataset.resolution == RES
    for idx in range(NUM):
        image, mask, camera, pose = dataset[idx]
        assert dataset.get_details(idx).image_name == synthetic.item_name(idx)
        assert image.shape == (3, RES, RES) and image.dtype == np.uint8
        assert mask.shape == (1, RES, RES) and set(np.unique(mask)) <= {0, 255}
        expected = synthetic.sample_scene(0, idx)
        np.testing.assert_array_equal(camera, expected.camera)
        np.testing.assert_array_equal(pose, expected.pose)
    assert synthetic.stored_parameters(images, masks) == synthetic.build_parameters(NUM, RES, 0)


def test_mask_matches_projected_body(built):
    images, masks = built
    dataset = PortraitDataset(images, masks)
    for idx in range(NUM):
        _, mask, camera, pose = dataset[idx]
        scene = synthetic.sample_scene(0, idx)
        points = project(recentred_vertices(scene.betas, pose), camera, RES)
        inside = ((points >= 0) & (points < RES)).all(axis=1)
        columns, rows = np.floor(points[inside]).astype(int).T
        person = mask[0] > 0
        dilated = ndimage.binary_dilation(person, structure=np.ones((3, 3), bool))
        assert dilated[rows, columns].mean() >= 0.99, idx
        mask_rows, mask_columns = np.nonzero(person)
        box = np.array([mask_rows.min(), mask_rows.max(), mask_columns.min(), mask_columns.max()])
        projected_box = np.array([rows.min(), rows.max(), columns.min(), columns.max()])
        assert np.abs(box - projected_box).max() <= 2, (idx, box, projected_box)
        # The person fills a good part of a quarter headshot but not all of it.
        assert 0.15 < person.mean() < 0.9, idx


def test_same_images_for_any_number_of_workers_and_new_ones_for_another_seed(built, tmp_path):
    images, masks = built
    parallel = str(tmp_path / 'parallel.zip'), str(tmp_path / 'parallel-seg.zip')
    synthetic.build_synthetic_dataset(*parallel, num_images=NUM, resolution=RES, seed=0, workers=2, progress=False)
    assert zip_contents(parallel[0]) == zip_contents(images)
    assert zip_contents(parallel[1]) == zip_contents(masks)

    other = str(tmp_path / 'other.zip'), str(tmp_path / 'other-seg.zip')
    synthetic.build_synthetic_dataset(*other, num_images=4, resolution=RES, seed=1, workers=1, progress=False)
    first, second = zip_contents(images), zip_contents(other[0])
    for idx in range(4):
        name = synthetic.item_name(idx)
        assert first[name] != second[name]


# ------------------------------------------------------------------------------------------------
# Mirroring.


def test_flipped_camera_renders_the_flipped_image_of_a_symmetric_scene(painter):
    scene = synthetic.sample_scene(0, 2)
    # Zero pose and shape, one light straight above the camera: left and right alike.
    symmetric = dataclasses.replace(
        scene,
        pose=np.zeros(6, np.float32),
        betas=np.zeros(10, np.float32),
        light_dirs=np.array([[0.0, -0.5, -1.0]]),
        light_weights=np.array([0.7]),
    )
    flipped_camera = camera_utils.flip_camera(torch.from_numpy(symmetric.camera)[None])[0].numpy()
    image, mask = painter.render(symmetric, 64)
    mirrored_image, mirrored_mask = painter.render(dataclasses.replace(symmetric, camera=flipped_camera), 64)
    assert 0.1 < (mask > 0).mean() < 0.9
    assert differing_pixels(mirrored_image, image[:, ::-1]) <= 8  # of 4096
    assert differing_pixels(mirrored_mask[..., None], mask[:, ::-1, None]) <= 4


def test_mirrored_scene_renders_the_flipped_image(painter):
    # Posed and shaped: the mirrored pose must turn the head the mirrored way.
    scene = synthetic.sample_scene(0, 5)
    assert np.abs(scene.pose).max() > 0.1
    image, mask = painter.render(scene, 64)
    mirrored_image, mirrored_mask = painter.render(synthetic.mirror_scene(scene), 64)
    assert differing_pixels(mirrored_image, image[:, ::-1]) <= 8
    assert differing_pixels(mirrored_mask[..., None], mask[:, ::-1, None]) <= 4
    # Without mirroring the pose the image is not mirrored.
    camera_only = dataclasses.replace(synthetic.mirror_scene(scene), pose=scene.pose)
    assert differing_pixels(painter.render(camera_only, 64)[0], image[:, ::-1]) > 200


def test_xflip_items_negate_the_camera_yaw(built):
    dataset = PortraitDataset(*built, xflip=True)
    assert len(dataset) == 2 * NUM
    for idx in range(NUM):
        image, mask, camera, pose = dataset[idx]
        flipped_image, flipped_mask, flipped_camera, flipped_pose = dataset[NUM + idx]
        yaw = camera_utils.camera_yaw(torch.from_numpy(camera)[None])
        flipped_yaw = camera_utils.camera_yaw(torch.from_numpy(flipped_camera)[None])
        torch.testing.assert_close(flipped_yaw, -yaw)
        np.testing.assert_array_equal(flipped_pose, pose * np.array([1, -1, -1, 1, -1, -1], np.float32))
        np.testing.assert_array_equal(flipped_image, image[:, :, ::-1])
        np.testing.assert_array_equal(flipped_mask, mask[:, :, ::-1])


# ------------------------------------------------------------------------------------------------
# Building, reuse and the command line.


@pytest.mark.parametrize('workers', [1, 2])
def test_interrupted_build_leaves_no_zip(tmp_path, monkeypatch, workers):
    if workers > 1 and synthetic._start_method() != 'fork':
        pytest.skip('workers see the patched function only when forked')
    render_item = synthetic.render_item

    def failing(painter, seed, idx, resolution):
        if idx == 3:
            raise RuntimeError('interrupted')
        return render_item(painter, seed, idx, resolution)

    monkeypatch.setattr(synthetic, 'render_item', failing)
    images, masks = str(tmp_path / 'images.zip'), str(tmp_path / 'masks.zip')
    with pytest.raises(RuntimeError, match='interrupted'):
        synthetic.build_synthetic_dataset(images, masks, num_images=6, resolution=16, workers=workers, progress=False)
    assert os.listdir(tmp_path) == []


def test_ensure_builds_once_and_rebuilds_for_other_parameters(tmp_path, monkeypatch):
    root = str(tmp_path / 'datasets')
    paths = synthetic.ensure_synthetic_dataset(root, num_images=3, resolution=16, workers=1, progress=False)
    assert paths == synthetic.default_synthetic_paths(root, 16)
    assert synthetic.stored_parameters(*paths)['num_images'] == 3
    before = zip_contents(paths[0])

    def no_build(*args, **kwargs):
        raise AssertionError('rebuilt a set that matches')

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, 'build_synthetic_dataset', no_build)
        assert synthetic.ensure_synthetic_dataset(root, num_images=3, resolution=16, progress=False) == paths

    synthetic.ensure_synthetic_dataset(root, num_images=4, resolution=16, workers=1, progress=False)
    assert synthetic.stored_parameters(*paths)['num_images'] == 4
    assert len(PortraitDataset(*paths)) == 4
    after = zip_contents(paths[0])
    assert after[synthetic.item_name(2)] == before[synthetic.item_name(2)]

    # A masks zip from another build does not pass for this one.
    os.replace(paths[1], paths[1] + '.old')
    synthetic.build_synthetic_dataset(
        str(tmp_path / 'x.zip'), paths[1], num_images=2, resolution=16, workers=1, progress=False
    )
    assert synthetic.stored_parameters(*paths) is None


def test_synth_command_writes_a_checked_dataset(tmp_path):
    images, masks = str(tmp_path / 'synth.zip'), str(tmp_path / 'synth-seg.zip')
    result = CliRunner().invoke(
        dataset_tool.main,
        [
            'synth',
            '--dest',
            images,
            '--seg-dest',
            masks,
            '--num-images',
            '3',
            '--resolution',
            '16',
            '--seed',
            '2',
            '--workers',
            '1',
        ],
    )
    assert result.exit_code == 0, result.output
    dataset = PortraitDataset(images, masks)
    assert len(dataset) == 3 and dataset.resolution == 16
    np.testing.assert_array_equal(dataset.get_pose(1), synthetic.sample_scene(2, 1).pose)
    result = CliRunner().invoke(dataset_tool.main, ['check', '--data', images, '--seg-data', masks, '--no-progress'])
    assert result.exit_code == 0, result.output
