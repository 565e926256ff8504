"""Tests for training/networks/dual_discriminator.py: input assembly, heads, stop-gradient, mirroring, R1."""

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from training.data.camera_utils import camera_label, flip_camera, flip_pose, orbit_camera
from training.networks.dual_discriminator import PoseAwareDualDiscriminator, flip_image_dict

S = 32  # final image resolution
R = 16  # raw (neural rendering) resolution


def _disc(seed: int = 0, **kwargs) -> PoseAwareDualDiscriminator:
    args = dict(img_resolution=S, channel_base=512, channel_max=32, pose_hidden=(32, 16))
    args.update(kwargs)
    torch.manual_seed(seed)
    return PoseAwareDualDiscriminator(**args)


def _inputs(batch: int, seed: int = 0, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        'image': torch.randn(batch, 3, S, S, generator=g).to(dtype),
        'image_raw': torch.randn(batch, 3, R, R, generator=g).to(dtype),
        'image_mask': torch.rand(batch, 1, R, R, generator=g).to(dtype),
    }


def _cameras(horizontal_angles) -> torch.Tensor:
    """Cameras at the given horizontal angles (h < pi/2: x < 0, right side; h > pi/2: x > 0, left side)."""
    h = torch.tensor(horizontal_angles, dtype=torch.float32)
    return camera_label(orbit_camera(h, torch.full_like(h, math.pi / 2 - 0.1)))


MIXED = [0.9, 2.3, 1.2, 1.9]  # right, left, right, left


def test_cameras_sides():
    c = _cameras(MIXED)
    assert (c[:, 3] < 0).tolist() == [True, False, True, False]


def test_build_input_matches_interpolation_formula():
    disc = _disc()
    d = _inputs(2)
    x = disc.build_input(d)
    assert x.shape == (2, 7, S, S)
    resize = dict(size=(S, S), mode='bilinear', align_corners=False, antialias=True)
    torch.testing.assert_close(x[:, :3], d['image'], rtol=0, atol=0)
    torch.testing.assert_close(x[:, 3:6], F.interpolate(d['image_raw'], **resize))
    torch.testing.assert_close(x[:, 6:], 2 * F.interpolate(d['image_mask'], **resize) - 1)


def test_build_input_values_on_simple_images():
    disc = _disc()
    d = _inputs(2)
    d['image_raw'] = torch.full((2, 3, R, R), 0.25)
    d['image_mask'] = torch.cat([torch.ones(1, 1, R, R), torch.zeros(1, 1, R, R)])
    x = disc.build_input(d)
    torch.testing.assert_close(x[:, 3:6], torch.full((2, 3, S, S), 0.25))
    torch.testing.assert_close(x[0, 6], torch.ones(S, S))
    torch.testing.assert_close(x[1, 6], -torch.ones(S, S))
    # A raw image already at S passes through unchanged.
    d['image_raw'] = torch.randn(2, 3, S, S)
    torch.testing.assert_close(disc.build_input(d)[:, 3:6], d['image_raw'])


def test_output_shapes_and_head_widths():
    disc = _disc(pose_hidden=(2048, 512, 128, 32))
    logits, pose = disc(_inputs(4), _cameras(MIXED))
    assert logits.shape == (4, 1) and pose.shape == (4, 6)
    head = disc.pose_branch
    widths = [tuple(getattr(head, f'fc{i}').weight.shape) for i in range(5)]
    assert widths == [(2048, 32 * 16 + 25), (512, 2048), (128, 512), (32, 128), (6, 32)]
    assert disc.mapping.c_dim == 31 and disc.mapping.num_layers == 8
    assert disc.b32.fromrgb.weight.shape[1] == 7
    assert [r for r in (32, 16, 8) if hasattr(disc, f'b{r}')] == [32, 16, 8]


def test_logit_is_blind_to_the_pose_head_gradients():
    disc = _disc()
    d = {k: v.requires_grad_() for k, v in _inputs(4).items()}
    c = _cameras(MIXED)
    logits, pose = disc(d, c)
    head_grads = torch.autograd.grad(logits.sum(), list(disc.pose_branch.parameters()), allow_unused=True)
    assert all(g is None for g in head_grads)
    # The input gradient comes from the main trunk pass alone (the pose pass is detached).
    image_grad = torch.autograd.grad(logits.sum(), d['image'])[0]
    fixed_pose = pose.detach()
    alone = disc.b4(disc.features(d), disc.mapping(None, torch.cat([c, fixed_pose], dim=1)))
    torch.testing.assert_close(alone, logits)
    torch.testing.assert_close(torch.autograd.grad(alone.sum(), d['image'])[0], image_grad)


def test_logit_depends_on_the_predicted_pose_value():
    disc = _disc()
    d, c = _inputs(4), _cameras(MIXED)
    with torch.no_grad():
        logits, pose = disc(d, c)
        disc.pose_branch.fc2.bias.add_(1.0)
        logits2, pose2 = disc(d, c)
    assert (pose2 - pose).abs().min() > 0.5
    assert not torch.allclose(logits, logits2)


@pytest.mark.parametrize('group_size', [1, 4])
def test_predict_pose_mirror_equivariance(group_size):
    disc = _disc(mbstd_group_size=group_size)
    d, c = _inputs(4, seed=1), _cameras(MIXED)
    with torch.no_grad():
        pose = disc.predict_pose(d, c)
        mirrored = disc.predict_pose(flip_image_dict(d), flip_camera(c))
    assert torch.equal(mirrored, flip_pose(pose))


def test_left_samples_use_mirrored_inputs_and_camera():
    disc = _disc(mbstd_group_size=1)
    d, c = _inputs(4, seed=2), _cameras(MIXED)
    seen = {}
    hook = disc.pose_branch.register_forward_pre_hook(lambda m, args: seen.setdefault('head', args[0].clone()))
    with torch.no_grad():
        pose = disc.predict_pose(d, c)
    hook.remove()
    assert (seen['head'][:, -25 + 3] < 0).all()  # the head only sees right-side cameras
    with torch.no_grad():
        for i, left in enumerate([False, True, False, True]):
            di = {k: v[i : i + 1] for k, v in d.items()}
            ci = c[i : i + 1]
            if left:
                di, ci = {k: v.flip(3) for k, v in di.items()}, flip_camera(ci)
            expected = disc.pose_branch(torch.cat([disc.features(di), ci], dim=1))
            if left:
                expected = flip_pose(expected)
            torch.testing.assert_close(pose[i : i + 1], expected, rtol=1e-5, atol=1e-6)


def test_without_mirror_camera_left_samples_keep_their_camera():
    # The published discriminator's convention: left-side images are mirrored, their camera is not.
    disc = _disc(mbstd_group_size=1, mirror_camera=False)
    d, c = _inputs(4, seed=2), _cameras(MIXED)
    with torch.no_grad():
        pose = disc.predict_pose(d, c)
        for i, left in enumerate([False, True, False, True]):
            di = {k: v[i : i + 1].flip(3) if left else v[i : i + 1] for k, v in d.items()}
            expected = disc.pose_branch(torch.cat([disc.features(di), c[i : i + 1]], dim=1))
            if left:
                expected = flip_pose(expected)
            torch.testing.assert_close(pose[i : i + 1], expected, rtol=1e-5, atol=1e-6)
        default = _disc(mbstd_group_size=1)
        default.load_state_dict(disc.state_dict())
        assert not torch.allclose(default.predict_pose(d, c)[1::2], pose[1::2])
        torch.testing.assert_close(default.predict_pose(d, c)[0::2], pose[0::2], rtol=0, atol=0)
    assert disc.init_kwargs['mirror_camera'] is False
    assert pickle.loads(pickle.dumps(disc)).mirror_camera is False


def test_discriminator_pickled_before_the_option_mirrors_the_camera():
    disc = _disc(mbstd_group_size=1)
    d, c = _inputs(4, seed=2), _cameras(MIXED)
    with torch.no_grad():
        expected = disc.predict_pose(d, c)
    del disc.__dict__['mirror_camera']  # the state of a discriminator saved before the option existed
    clone = pickle.loads(pickle.dumps(disc))
    with torch.no_grad():
        assert torch.equal(clone.predict_pose(d, c), expected)


def test_pose_loss_reaches_trunk_and_head_only():
    disc = _disc()
    d, c = _inputs(4), _cameras(MIXED)
    _, pose = disc(d, c)
    (pose - torch.randn(4, 6)).square().sum().backward()
    for name, param in disc.named_parameters():
        reached = param.grad is not None and param.grad.abs().sum() > 0
        logit_only = name.startswith('mapping.') or name.startswith('b4.fc.') or name.startswith('b4.out.')
        assert reached != logit_only, name


def test_r1_double_backward():
    disc = _disc().double()
    d = {k: v.requires_grad_() for k, v in _inputs(4, dtype=torch.float64).items()}
    c = _cameras(MIXED).double()

    def r1_penalty():
        logits, _ = disc(d, c)
        grads = torch.autograd.grad(logits.sum(), [d['image'], d['image_raw'], d['image_mask']], create_graph=True)
        return sum(g.square().sum() for g in grads)

    penalty = r1_penalty()
    penalty.backward()
    reached = {name for name, p in disc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {'b32.fromrgb.weight', 'b16.conv1.weight', 'b4.conv.weight', 'b4.fc.weight', 'mapping.fc7.weight'} <= reached
    assert not any(name.startswith('pose_branch.') for name in reached)
    # Directional finite difference of the penalty along a random trunk-weight perturbation. The
    # logit's condition holds the predicted pose detached, so the difference holds it fixed too.
    with torch.no_grad():
        fixed_pose = disc.predict_pose(d, c)
    disc.predict_pose = lambda img_dict, cam: fixed_pose
    weight = disc.b16.conv0.weight
    direction = torch.randn_like(weight)
    analytic = (weight.grad * direction).sum()
    eps = 1e-5
    values = []
    for step in (eps, -2 * eps):
        with torch.no_grad():
            weight.add_(step * direction)
        values.append(r1_penalty().detach())
    plus, minus = values
    torch.testing.assert_close(analytic, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-8)


def test_camera_noise_changes_only_the_condition():
    d, c = _inputs(4), _cameras(MIXED)
    clean, noisy = _disc(), _disc(disc_c_noise=1.0)
    with torch.no_grad():
        logits, pose = clean(d, c)
        torch.manual_seed(3)
        noisy_logits, noisy_pose = noisy(d, c)
        assert torch.equal(clean(d, c)[0], logits)
    assert torch.equal(noisy_pose, pose)
    assert not torch.allclose(noisy_logits, logits)


def test_pickle_round_trip():
    disc = _disc()
    clone = pickle.loads(pickle.dumps(disc))
    d, c = _inputs(4), _cameras(MIXED)
    with torch.no_grad():
        a, b = disc(d, c), clone(d, c)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert clone.init_kwargs['img_resolution'] == S and clone.c_dim == 25
