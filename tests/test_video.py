"""training/engines/video.py: latent interpolation, the trajectories with and without a base pose, and the frame loop."""

import types

import imageio
import numpy as np
import pytest
import torch

from training.data.camera_utils import frontal_camera
from training.engines.video import full_orbit, interpolate_ws, pose_trajectory, trajectory_frames, write_video


def test_interpolation_hits_keyframes():
    keyframes = np.random.RandomState(0).randn(3, 2, 4).astype(np.float32)
    for kind in ('linear', 'cubic'):
        ws = interpolate_ws(torch.from_numpy(keyframes), 6, kind)
        np.testing.assert_allclose(ws[::2].numpy(), keyframes, atol=1e-5)


def test_trajectories_without_base_pose_render_canonical_except_pose():
    for trajectory in ('orbit', 'wobble'):
        cameras, poses = trajectory_frames(trajectory, 5, 0.6)
        assert cameras.shape == (5, 25) and poses is None
    cameras, poses = trajectory_frames('pose', 5, 0.6)
    assert torch.equal(cameras, frontal_camera(5)) and torch.equal(poses, pose_trajectory(5, 0.6))
    with pytest.raises(ValueError, match="trajectory 'spin'"):
        trajectory_frames('spin', 5, 0.6)


def test_base_pose_poses_every_frame_and_offsets_the_pose_sweep():
    base = torch.tensor([[0.1, -0.2, 0.0, 0.3, 0.0, -0.1]])
    cameras, poses = trajectory_frames('orbit', 5, 0.6, base)
    assert torch.equal(cameras, full_orbit(5)) and torch.equal(poses, base.expand(5, -1))
    _, poses = trajectory_frames('wobble', 5, 0.6, base)
    assert torch.equal(poses, base.expand(5, -1))
    _, poses = trajectory_frames('pose', 5, 0.6, base)
    assert torch.allclose(poses, pose_trajectory(5, 0.6) + base)


class _RecordingGenerator:
    """Stands in for the generator: records each synthesis call, renders the frame index as a grey level."""

    def __init__(self, resolution: int = 8):
        self.renderer = types.SimpleNamespace(depth_resolution=3, depth_resolution_importance=2)
        self.resolution, self.calls = resolution, []

    def synthesis(self, ws, c, pose_params=None, **kwargs):
        self.calls.append(dict(ws=ws, c=c, pose_params=pose_params, **kwargs))
        batch = ws.shape[0]
        level = ws[:, 0, 0].reshape(batch, 1, 1, 1)  # each cell's own grey level
        return {'image': level.expand(batch, 3, self.resolution, self.resolution)}


@pytest.mark.parametrize('base_pose', [None, torch.tensor([[0.0, 0.5, 0.0, 0.0, -0.5, 0.0]])])
def test_write_video_renders_each_frame_of_each_cell(tmp_path, base_pose):
    G = _RecordingGenerator()
    levels = [-0.5, 0.5]  # left cell dark, right cell bright
    cell_ws = [torch.full((4, 3, 2), level) for level in levels]
    path = str(tmp_path / 'grid.mp4')
    assert write_video(G, cell_ws, (2, 1), path, 'orbit', 'image', 10, 2, 0.6, base_pose) == 4
    assert len(G.calls) == 4
    for call in G.calls:
        assert call['ws'].shape == (2, 3, 2) and call['c'].shape == (2, 25)
        assert call['depth_resolution'] == 6 and call['depth_resolution_importance'] == 4 and call['deterministic']
        if base_pose is None:
            assert call['pose_params'] is None
        else:
            assert torch.equal(call['pose_params'], base_pose.expand(2, -1))
    frames = imageio.mimread(path)
    assert len(frames) == 4 and frames[0].shape == (8, 16, 3)
    # libx264 blurs the grey levels a little; the left and right halves stay far apart.
    assert frames[0][:, :8].mean() + 100 < frames[0][:, 8:].mean()


def test_write_video_refuses_a_grid_the_cells_do_not_fill(tmp_path):
    with pytest.raises(ValueError, match='1 cells of ws for a 2x1 grid'):
        write_video(
            _RecordingGenerator(), [torch.zeros(2, 3, 2)], (2, 1), str(tmp_path / 'a.mp4'), 'orbit', 'image', 10, 1, 0.6
        )
    assert not (tmp_path / 'a.mp4').exists()
