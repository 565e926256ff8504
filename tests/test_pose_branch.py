"""Tests for training/networks/pose_branch.py: MLP formula, mirror canonicalization, gradients."""

import math
import pickle

import numpy as np
import torch
import torch.nn.functional as F

from training.data.camera_utils import camera_label, flip_camera, flip_pose, orbit_camera
from training.networks.pose_branch import GeneratorPoseBranch, PoseMLP


def _cameras(n: int, seed: int = 0) -> torch.Tensor:
    """n cameras all around the head (both sides, front and back), none within 0.05 rad of the x = 0 plane."""
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(n, generator=g) * 2 * math.pi
    for boundary in (0.5 * math.pi, 1.5 * math.pi):
        near = (h - boundary).abs() < 0.05
        h[near] += 0.1
    v = math.pi / 2 + 0.3 * (torch.rand(n, generator=g) - 0.5)
    return camera_label(orbit_camera(h, v))


def _branch(z_dim: int = 16, seed: int = 0, **kwargs) -> GeneratorPoseBranch:
    torch.manual_seed(seed)
    return GeneratorPoseBranch(z_dim=z_dim, **kwargs)


def test_cameras_cover_both_sides():
    c = _cameras(64)
    x = c[:, 3]
    assert (x > 0.1).sum() > 10 and (x < -0.1).sum() > 10
    assert (c[:, 11] < 0).sum() > 5  # some cameras behind the head


def test_mlp_matches_equalized_lr_formula():
    torch.manual_seed(1)
    mlp = PoseMLP(10, hidden=(7, 5), out_features=6)
    x = torch.randn(4, 10)
    ref = x
    for idx, activation in enumerate(['lrelu', 'lrelu', 'linear']):
        layer = getattr(mlp, f'fc{idx}')
        ref = F.linear(ref, layer.weight / np.sqrt(layer.weight.shape[1]), layer.bias)
        if activation == 'lrelu':
            ref = F.leaky_relu(ref, 0.2) * np.sqrt(2)
    torch.testing.assert_close(mlp(x), ref, rtol=1e-5, atol=1e-6)


def test_default_layer_widths():
    branch = _branch(z_dim=512)
    shapes = [tuple(getattr(branch.mlp, f'fc{i}').weight.shape) for i in range(3)]
    assert shapes == [(128, 537), (32, 128), (6, 32)]
    assert not hasattr(branch.mlp, 'fc3')


def test_mirror_equivariance_is_exact():
    branch = _branch()
    c = _cameras(32, seed=2)
    z = torch.randn(32, 16)
    with torch.no_grad():
        assert torch.equal(branch(z, flip_camera(c)), flip_pose(branch(z, c)))


def test_mlp_only_sees_right_side_cameras():
    branch = _branch()
    seen = []
    handle = branch.mlp.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    c = _cameras(32, seed=3)
    z = torch.randn(32, 16)
    with torch.no_grad():
        branch(z, c)
        branch(z, flip_camera(c))
    handle.remove()
    assert len(seen) == 2
    for inputs in seen:
        assert (inputs[:, 16 + 3] <= 0).all()
    # The camera the MLP sees is the input camera, mirrored exactly when it sat at x > 0.
    expected = torch.where((c[:, 3] > 0).unsqueeze(1), flip_camera(c), c)
    assert torch.equal(seen[0][:, 16:], expected)
    assert torch.equal(seen[1][:, 16:], expected)
    assert torch.equal(seen[0][:, :16], z)


def test_left_outputs_are_mirrored_predictions():
    branch = _branch()
    c = _cameras(16, seed=4)
    z = torch.randn(16, 16)
    right = c[:, 3] < 0
    with torch.no_grad():
        pose = branch(z, c)
        direct = branch.mlp(torch.cat([z, c], dim=1))
        mirrored = branch.mlp(torch.cat([z, flip_camera(c)], dim=1))
    assert right.any() and (~right).any()
    assert torch.equal(pose[right], direct[right])
    assert torch.equal(pose[~right], flip_pose(mirrored)[~right])
    # Mirrored: y and z components of both axis-angles change sign, x components do not.
    assert torch.equal(pose[~right][:, [0, 3]], mirrored[~right][:, [0, 3]])
    assert torch.equal(pose[~right][:, [1, 2, 4, 5]], -mirrored[~right][:, [1, 2, 4, 5]])


def test_gradients_reach_every_parameter_and_z():
    branch = _branch()
    c = _cameras(8, seed=5)
    z = torch.randn(8, 16, requires_grad=True)
    pose = branch(z, c)
    assert pose.shape == (8, 6)
    (pose * torch.randn_like(pose)).sum().backward()
    for name, param in branch.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert z.grad.abs().sum() > 0


def test_pickle_round_trip():
    branch = _branch(hidden=(8,))
    clone = pickle.loads(pickle.dumps(branch))
    c = _cameras(4, seed=6)
    z = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(clone(z, c), branch(z, c))
    assert clone.init_kwargs == dict(z_dim=16, hidden=(8,))


def test_a_camera_blind_branch_depends_on_z_only():
    seeing, blind = _branch(seed=4), _branch(seed=4, use_camera=False)
    assert torch.equal(seeing.mlp.fc0.weight, blind.mlp.fc0.weight)  # the same parameters, only the input differs
    z = torch.randn(32, 16)
    c = _cameras(32, seed=5)
    pose = blind(z, c)
    torch.testing.assert_close(pose, blind(z, c.flip(0)), rtol=0, atol=0)  # any camera, either side
    torch.testing.assert_close(pose, blind.mlp(torch.cat([z, torch.zeros(32, 25)], dim=1)), rtol=0, atol=0)
    assert not torch.allclose(seeing(z, c), seeing(z, c.flip(0)))
    assert 'use_camera=False' in repr(blind)
