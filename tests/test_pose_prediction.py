"""Tests of training/pose_prediction.py: angular pose errors against scipy, and the real-image path."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from training.pose_prediction import load_pose_predict_kwargs, pose_errors, predict_real_poses, rotation_angle_error
from training.run_files import pose_predict_kwargs_for


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
