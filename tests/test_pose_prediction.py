"""Tests of training/pose_prediction.py: angular pose errors against scipy, and the real-image path."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from training.checkpoints.run_files import pose_predict_kwargs_for
from training.pose_prediction import (
    load_pose_predict_kwargs,
    pose_errors,
    predict_real_poses,
    rotation_angle_error,
    split_unseen_poses,
)


def test_rotation_angle_error_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 3)) * 0.6
    b = rng.normal(size=(64, 3)) * 0.6
    expected = np.degrees((Rotation.from_rotvec(a).inv() * Rotation.from_rotvec(b)).magnitude())
    got = rotation_angle_error(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_pose_errors_zero_for_perfect_and_known_offset():
    rng = np.random.default_rng(1)
    target = torch.from_numpy(rng.normal(size=(10, 6)) * 0.3)
    assert all(abs(v) < 1e-5 for v in pose_errors(target, target).values())
    # A 5 degree extra neck rotation about y composed onto every target, head untouched.
    offset = Rotation.from_rotvec([0.0, math.radians(5), 0.0])
    neck = (Rotation.from_rotvec(target[:, :3].numpy()) * offset).as_rotvec()
    predicted = torch.cat([torch.from_numpy(neck), target[:, 3:]], dim=1)
    err = pose_errors(predicted, target)
    assert err['neck_mean'] == pytest.approx(5.0, abs=1e-6)
    assert err['neck_median'] == pytest.approx(5.0, abs=1e-6)
    assert err['head_mean'] < 1e-5


def test_head_torso_error_compares_the_composed_rotations():
    rng = np.random.default_rng(2)
    predicted, target = (rng.normal(size=(33, 6)) * 0.4 for _ in range(2))  # odd: one median

    def composed(pose):
        return Rotation.from_rotvec(pose[:, :3]) * Rotation.from_rotvec(pose[:, 3:])

    expected = np.degrees((composed(predicted).inv() * composed(target)).magnitude())
    err = pose_errors(torch.from_numpy(predicted), torch.from_numpy(target))
    assert err['head_torso_mean'] == pytest.approx(expected.mean(), abs=1e-6)
    assert err['head_torso_median'] == pytest.approx(np.median(expected), abs=1e-6)
    # 10 degrees of yaw moved from the head joint to the neck joint: same head on the torso.
    shift = Rotation.from_rotvec([0.0, math.radians(10), 0.0])
    neck = (Rotation.from_rotvec(target[:, :3]) * shift).as_rotvec()
    head = (shift.inv() * Rotation.from_rotvec(target[:, 3:])).as_rotvec()
    err = pose_errors(torch.from_numpy(np.concatenate([neck, head], axis=1)), torch.from_numpy(target))
    assert err['neck_mean'] == pytest.approx(10.0, abs=1e-6)
    assert err['head_torso_mean'] < 1e-5


def test_unseen_split_keeps_the_composed_rotation_and_has_the_gaussian_residual():
    # Independent Gaussian joints: knowing s = neck + head, the neck's error has the standard
    # deviation std_neck * std_head / sqrt(std_neck^2 + std_head^2) per component. Small angles,
    # so that composing rotations is adding them up to well under the tolerance.
    rng = np.random.default_rng(3)
    std_neck, std_head = np.array([0.010, 0.015, 0.004]), np.array([0.010, 0.020, 0.012])
    target = np.concatenate([rng.normal(size=(40000, 3)) * std_neck, rng.normal(size=(40000, 3)) * std_head], axis=1)
    unseen = split_unseen_poses(torch.from_numpy(target)).numpy()
    assert pose_errors(torch.from_numpy(unseen), torch.from_numpy(target))['head_torso_mean'] < 1e-5
    expected = std_neck * std_head / np.sqrt(std_neck**2 + std_head**2)
    np.testing.assert_allclose((unseen - target)[:, :3].std(axis=0), expected, rtol=0.03)
    # Only the turn's split unknown: the other components stay (up to the rotations' non-commutation).
    turn_unseen = split_unseen_poses(torch.from_numpy(target), axes=(1,)).numpy()
    residual = (turn_unseen - target)[:, :3].std(axis=0)
    assert residual[1] == pytest.approx(expected[1], rel=0.03) and residual[[0, 2]].max() < 0.01 * expected.min()
    # Without head rotations the composed rotation is the neck's: nothing left to split.
    target[:, 3:] = 0
    np.testing.assert_allclose(split_unseen_poses(torch.from_numpy(target)).numpy(), target, atol=1e-12)


def test_pose_predict_kwargs_file(tmp_path):
    snapshot = tmp_path / 'network-snapshot-000012.pkl'
    path = pose_predict_kwargs_for(str(snapshot))
    assert path == str(tmp_path / 'pose_predict_kwargs-000012.json')
    with open(path, 'w') as f:
        json.dump({'blur_sigma': 0.5, 'neural_rendering_resolution': 32}, f)
    assert load_pose_predict_kwargs(path)['neural_rendering_resolution'] == 32
    with open(path, 'w') as f:
        json.dump({'blur_sigma': 0.5}, f)
    with pytest.raises(ValueError, match='neural_rendering_resolution'):
        load_pose_predict_kwargs(path)
    with pytest.raises(OSError, match='cannot read'):
        load_pose_predict_kwargs(str(tmp_path / 'missing.json'))


class _RecordingD(torch.nn.Module):
    """Stands in for D.predict_pose: the pose is the mean of each input, so batching is visible."""

    def predict_pose(self, img_dict, c):
        self.shapes = {key: tuple(v.shape) for key, v in img_dict.items()}
        image = img_dict['image'].mean(dim=(1, 2, 3))
        return torch.stack([image, img_dict['image_mask'].mean(dim=(1, 2, 3)), c[:, 0]] * 2, dim=1)


def test_predict_real_poses_batches_and_pads():
    images = torch.rand(7, 3, 16, 16) * 2 - 1
    masks = torch.rand(7, 1, 16, 16)
    cameras = torch.randn(7, 25)
    D = _RecordingD()
    kwargs = {'blur_sigma': 0.0, 'neural_rendering_resolution': 8}
    batched = predict_real_poses(D, images, masks, cameras, kwargs, batch=4)
    assert D.shapes == {'image': (4, 3, 16, 16), 'image_raw': (4, 3, 8, 8), 'image_mask': (4, 1, 8, 8)}
    single = torch.cat(
        [
            predict_real_poses(D, images[i : i + 1], masks[i : i + 1], cameras[i : i + 1], kwargs, batch=1)
            for i in range(7)
        ]
    )
    torch.testing.assert_close(batched, single)
    torch.testing.assert_close(batched[:, 0], images.mean(dim=(1, 2, 3)))
