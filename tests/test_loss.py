"""Tests for training/loss.py: real-image preparation, GPC and background swaps, and every phase's
losses and gradient paths (docs/method.md §7.1-§7.7), with a tiny generator and discriminator."""

import dataclasses
import itertools
import math
import os
import typing

import pytest
import torch
import torch.nn.functional as F

from torch_utils import training_stats
from training import loss as loss_module
from training import schedules
from training.config import TrainingConfig
from training.data.camera_utils import random_cameras
from training.loss import LossConfig, PortraitGANLoss, swap_with_previous
from training.networks.d_input import blur_image, discriminator_input
from training.networks.dual_discriminator import PoseAwareDualDiscriminator
from training.networks.triplane import build_generator
from training.presets import load_preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 32  # final image resolution
R = 16  # neural rendering resolution
BATCH = 4

# Every schedule off except what a test turns on, so that values are easy to predict.
QUIET = dict(
    blur_init_sigma=0.0,
    density_noise_fade_kimg=0,
    gpc_reg_prob=0.5,
    gpc_reg_fade_kimg=0,
    bcg_reg_prob=0.0,
    neural_rendering_resolution_initial=R,
)


def _generator(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_generator(
        load_preset('cpu-small'),
        z_dim=16,
        w_dim=16,
        img_resolution=S,
        neural_rendering_resolution=R,
        sr_input_resolution=R,
        depth_resolution=4,
        depth_resolution_importance=4,
        triplane_resolution=16,
        triplane_channels=8,
        channel_base=256,
        channel_max=16,
        background_channel_base=128,
        decoder_hidden=16,
        sr_channel_base=256,
        sr_channel_max=16,
        **overrides,
    )


def _discriminator(seed: int = 1, mbstd_group_size: int = 2, **overrides):
    torch.manual_seed(seed)
    return PoseAwareDualDiscriminator(
        img_resolution=S,
        channel_base=256,
        channel_max=16,
        pose_hidden=(16, 8),
        num_fp16_res=0,
        conv_clamp=None,
        mbstd_group_size=mbstd_group_size,
        mapping_layers=2,
        **overrides,
    )


def _batch(G, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        real_img=torch.rand(BATCH, 3, S, S, generator=g) * 2 - 1,
        real_seg=(torch.rand(BATCH, 1, S, S, generator=g) > 0.5).float(),
        real_c=random_cameras(BATCH),
        real_pose=0.1 * torch.randn(BATCH, 6, generator=g),
        gen_z=torch.randn(BATCH, G.z_dim, generator=g),
        gen_c=random_cameras(BATCH),
        gen_pose=0.1 * torch.randn(BATCH, 6, generator=g),
    )


def _loss(G, D, **config):
    return PortraitGANLoss(G, D, LossConfig(**{**QUIET, **config}), device='cpu')


def _grads(module: torch.nn.Module) -> dict:
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}


def _reached(grads: dict, prefix: str) -> bool:
    """Whether any parameter under `prefix` has a nonzero gradient."""
    return any(g is not None and bool(g.abs().sum() > 0) for name, g in grads.items() if name.startswith(prefix))


def _untouched(grads: dict) -> bool:
    return all(g is None or bool(g.abs().sum() == 0) for g in grads.values())


def _blur_by_conv(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Independent blur: depthwise 2-D convolution with the outer product of the formula's taps."""
    half = math.floor(3 * sigma)
    taps = torch.tensor([2 ** (-((i / sigma) ** 2)) for i in range(-half, half + 1)])
    kernel = torch.outer(taps, taps) / taps.sum() ** 2
    channels = x.shape[1]
    return F.conv2d(x, kernel.expand(channels, 1, -1, -1), padding=half, groups=channels)


# ----------------------------------------------------------------------------------------------
# Preparation, blur, swaps.


def test_blur_image_matches_convolution():
    x = torch.randn(2, 3, 20, 20)
    for sigma in [0.5, 1.0, 2.0]:
        torch.testing.assert_close(blur_image(x, sigma), _blur_by_conv(x, sigma), rtol=1e-5, atol=1e-5)
    assert blur_image(x, 0.0) is x


def test_discriminator_input_resizes_reals_and_blurs_their_image_and_raw_image():
    g = torch.Generator().manual_seed(3)
    img = torch.rand(2, 3, S, S, generator=g) * 2 - 1
    seg = torch.rand(2, 1, S, S, generator=g)
    real = {'image': img, 'mask': seg}
    resize = dict(size=(R, R), mode='bilinear', align_corners=False, antialias=True)
    sharp = discriminator_input(real, 0.0, R)
    assert sharp['image'] is img
    torch.testing.assert_close(sharp['image_raw'], F.interpolate(img, **resize))
    torch.testing.assert_close(sharp['image_mask'], F.interpolate(seg, **resize))
    blurred = discriminator_input(real, 1.5, R)
    torch.testing.assert_close(blurred['image'], _blur_by_conv(img, 1.5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        blurred['image_raw'], _blur_by_conv(F.interpolate(img, **resize), 1.5), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(blurred['image_mask'], F.interpolate(seg, **resize))
    raw_sharp = discriminator_input(real, 1.5, R, blur_raw=False)
    torch.testing.assert_close(raw_sharp['image_raw'], F.interpolate(img, **resize))
    plain = discriminator_input(real, 0.0, R, filter_mode='none')
    torch.testing.assert_close(
        plain['image_raw'], F.interpolate(img, size=(R, R), mode='bilinear', align_corners=False)
    )
    with pytest.raises(ValueError, match='filter_mode'):
        discriminator_input(real, 0.0, R, filter_mode='classic')


def test_discriminator_input_blurs_a_fakes_image_not_its_raw_image():
    d = {'image': torch.randn(2, 3, S, S), 'image_raw': torch.randn(2, 3, R, R), 'image_mask': torch.rand(2, 1, R, R)}
    seen = discriminator_input(d, 1.0)
    torch.testing.assert_close(seen['image'], _blur_by_conv(d['image'], 1.0), rtol=1e-5, atol=1e-5)
    assert seen['image_raw'] is d['image_raw'] and seen['image_mask'] is d['image_mask']
    assert discriminator_input(d, 0.0)['image'] is d['image']


def test_swap_with_previous_statistics():
    n = 20000
    c = torch.arange(n, dtype=torch.float32)[:, None].expand(n, 25)
    p = -torch.arange(n, dtype=torch.float32)[:, None].expand(n, 6)
    g = torch.Generator().manual_seed(0)
    c_out, p_out = swap_with_previous(0.3, c, p, generator=g)
    swapped = c_out[:, 0] != c[:, 0]
    # Each swapped row is its predecessor's (row 0 takes the last one); c and pose swap together.
    torch.testing.assert_close(c_out[swapped], c.roll(1, 0)[swapped])
    torch.testing.assert_close(c_out[~swapped], c[~swapped])
    assert torch.equal(p_out[:, 0] != p[:, 0], swapped)
    assert abs(swapped.float().mean().item() - 0.3) < 0.02  # 6 standard deviations
    assert torch.equal(swap_with_previous(1.0, c)[0], c.roll(1, 0))
    assert torch.equal(swap_with_previous(0.0, c)[0], c)


# ----------------------------------------------------------------------------------------------
# Generator call.


def _capture_synthesis(G, monkeypatch) -> list:
    calls = []
    original = G.synthesis

    def recording(ws, c, **kwargs):
        calls.append(dict(ws=ws.detach().clone(), c=c, **kwargs))
        return original(ws, c, **kwargs)

    monkeypatch.setattr(G, 'synthesis', recording)
    return calls


@pytest.mark.parametrize('swap_prob', [0.0, 1.0])
def test_run_G_conditions_on_own_or_previous_pair(swap_prob, monkeypatch):
    G = _generator()
    loss = _loss(G, None, bcg_reg_prob=1.0)
    b = _batch(G)
    z, c = b['gen_z'], b['gen_c']
    pose = G.get_pose_params(z, c).detach()
    calls = _capture_synthesis(G, monkeypatch)
    with torch.no_grad():
        out = loss.run_G(z, c, pose, swapping_prob=swap_prob, resolution=R, density_noise=0.25)
        c_cond, p_cond = (c.roll(1, 0), pose.roll(1, 0)) if swap_prob == 1 else (c, pose)
        expected_ws = G.mapping(z, c_cond, p_cond)
    (call,) = calls
    torch.testing.assert_close(call['ws'], expected_ws)
    # Rendering always uses the sample's own camera and pose, with deformation on.
    assert call['c'] is c and call['pose_params'] is pose
    assert call['neural_rendering_resolution'] == R and call['density_noise'] == 0.25
    # bcg_reg_prob 1: every background comes from the previous sample's ws.
    torch.testing.assert_close(call['ws_bcg'], expected_ws.roll(1, 0))
    assert out['image'].shape == (BATCH, 3, S, S) and out['image_mask'].shape == (BATCH, 1, R, R)


@pytest.mark.parametrize('style_mixing_prob', [0.0, 1.0])
def test_style_mixing_takes_the_layers_from_the_cutoff_on_from_a_second_latent(style_mixing_prob):
    G = _generator()
    loss = _loss(G, None, style_mixing_prob=style_mixing_prob)
    b = _batch(G)
    z, c = b['gen_z'], b['gen_c']
    pose = G.get_pose_params(z, c).detach()
    torch.manual_seed(3)
    with torch.no_grad():
        ws = loss._mapping(z, c, pose, c, pose, update_emas=False)
        own = G.mapping(z, c, pose)
    # Oracle: the same draws, in the same order, taken by hand.
    torch.manual_seed(3)
    cutoff = int(torch.randint(1, own.shape[1], []))
    torch.rand([])
    with torch.no_grad():
        second = G.mapping(torch.randn_like(z), c, pose)
    if style_mixing_prob == 0:
        assert torch.equal(ws, own)
        return
    assert torch.equal(ws[:, :cutoff], own[:, :cutoff]) and torch.equal(ws[:, cutoff:], second[:, cutoff:])
    assert not torch.equal(second, own)


def test_run_G_keeps_own_background_without_bcg_swap(monkeypatch):
    G = _generator()
    loss = _loss(G, None, bcg_reg_prob=0.0)
    b = _batch(G)
    calls = _capture_synthesis(G, monkeypatch)
    with torch.no_grad():
        loss.run_G(b['gen_z'], b['gen_c'], torch.zeros(BATCH, 6), swapping_prob=0.0, resolution=R)
    assert calls[0]['ws_bcg'] is None and calls[0]['density_noise'] == 0.0


def test_schedule_values_follow_the_schedules():
    cfg = dict(
        blur_init_sigma=10,
        effective_blur_fade_kimg=200,
        density_noise_fade_kimg=200,
        gpc_reg_prob=0.7,
        gpc_reg_fade_kimg=1000,
        input_pose_params_reg_loss_weight=0.5,
        input_pose_params_reg_loss_kimg=200,
        input_pose_params_reg_loss_decay_kimg=200,
        neural_rendering_resolution_initial=64,
        neural_rendering_resolution_final=128,
        neural_rendering_resolution_fade_kimg=1000,
        stage_start_nimg=100_000,
    )
    state = schedules.schedule_values(LossConfig(**cfg), 100_000)
    assert state == pytest.approx(
        dict(blur_sigma=5.0, density_noise=0.5, swap_prob=0.97, pose_prior_weight=0.5, rendering_resolution=64)
    )
    state = schedules.schedule_values(LossConfig(**cfg), 600_000)
    assert state == pytest.approx(
        dict(blur_sigma=0.0, density_noise=0.0, swap_prob=0.82, pose_prior_weight=0.0, rendering_resolution=96)
    )
    assert isinstance(state['rendering_resolution'], int)


def test_config_and_phase_validation():
    with pytest.raises(ValueError, match='reg_type'):
        PortraitGANLoss(None, None, LossConfig(reg_type='total-variation'), device='cpu')
    with pytest.raises(ValueError, match='pose_prior_match'):
        PortraitGANLoss(None, None, LossConfig(pose_prior_match='nearest'), device='cpu')
    with pytest.raises(ValueError, match='filter_mode'):
        PortraitGANLoss(None, None, LossConfig(), device='cpu', filter_mode='classic')
    with pytest.raises(ValueError, match='phase'):
        PortraitGANLoss(None, None, LossConfig(), device='cpu').accumulate_gradients(
            'Gboth', *[None] * 7, gain=1, schedule={}
        )


def _training_config_attribute_type(name: str):
    """The type of TrainingConfig's field `name`, or the return type of its derived value (property) `name`."""
    fields = typing.get_type_hints(TrainingConfig)
    if name in fields:
        return fields[name]
    derived = getattr(TrainingConfig, name, None)
    assert isinstance(derived, property), f'LossConfig.{name}: TrainingConfig has no setting or derived value {name}'
    return typing.get_type_hints(derived.fget)['return']


def test_every_loss_setting_is_the_training_setting_of_the_same_name():
    # Each training setting that the loss reads gets a value no other one has, so that a field read
    # from the wrong setting, converted or left at its default shows.
    config = TrainingConfig.from_preset(load_preset('cpu-small'), 'cpu-small', data='d.zip', seg_data='s.zip', gpus=1)
    training_fields = {field.name: field.type for field in dataclasses.fields(TrainingConfig)}
    distinct = {}
    for index, field in enumerate(dataclasses.fields(LossConfig)):
        if field.name in training_fields and training_fields[field.name] not in (str, 'str'):
            distinct[field.name] = (1000 + index) if 'int' in str(training_fields[field.name]) else 0.125 * (index + 3)
    config = dataclasses.replace(config, reg_type='monotonic-fixed', pose_prior_match='marginal', batch=48, **distinct)
    loss_config = LossConfig.from_training_config(config)
    hints = typing.get_type_hints(LossConfig)
    for field in dataclasses.fields(LossConfig):
        assert hints[field.name] == _training_config_attribute_type(field.name), field.name
        value, expected = getattr(loss_config, field.name), getattr(config, field.name)
        assert value == expected and type(value) is type(expected), field.name
    assert loss_config.effective_blur_fade_kimg == 48 * config.blur_fade_kimg / 32
    assert loss_config.stage_start_nimg == round(config.stage_start_kimg * 1000)


def test_a_loss_setting_unknown_to_the_training_config_fails_loudly():
    @dataclasses.dataclass
    class WithANewSetting(LossConfig):
        pose_smoothness_weight: float = 1.0

    config = TrainingConfig.from_preset(load_preset('cpu-small'), 'cpu-small', data='d.zip', seg_data='s.zip', gpus=1)
    with pytest.raises(TypeError, match='pose_smoothness_weight have no TrainingConfig setting of the same name'):
        WithANewSetting.from_training_config(config)


def test_loss_settings_of_an_earlier_training_options_json():
    # The values the hand-written copy (training_loop.loss_config, fed11c5) gave for this file.
    with open(os.path.join(REPO, 'tests', 'fixtures', 'training_options.json'), encoding='utf-8') as f:
        config = TrainingConfig.from_json(f.read())
    assert LossConfig.from_training_config(config) == LossConfig(
        gamma=2.0,
        gamma_seg=0.5,
        pose_loss_weight=1.0,
        input_pose_params_reg_loss_weight=0.5,
        input_pose_params_reg_loss_kimg=200.0,
        input_pose_params_reg_loss_decay_kimg=200.0,
        blur_init_sigma=0.0,
        effective_blur_fade_kimg=400.0,
        density_noise_fade_kimg=200.0,
        gpc_reg_prob=0.7,
        gpc_reg_fade_kimg=0.0,
        bcg_reg_prob=0.2,
        style_mixing_prob=0.0,
        density_reg=0.25,
        density_reg_p_dist=0.004,
        reg_type='monotonic-detach',
        neural_rendering_resolution_initial=64,
        neural_rendering_resolution_final=128,
        neural_rendering_resolution_fade_kimg=1000.0,
        stage_start_nimg=6_000_000,
    )


# ----------------------------------------------------------------------------------------------
# Generator phases.


def _run(loss, phase, batch, gain=1.0, cur_nimg=0, seed=0):
    torch.manual_seed(seed)
    loss.accumulate_gradients(phase, **batch, gain=gain, schedule=schedules.schedule_values(loss.config, cur_nimg))


def test_gmain_gradients_reach_G_through_all_D_inputs(monkeypatch):
    G, D = _generator(), _discriminator()
    D.requires_grad_(False)  # as the loop does for G phases
    loss = _loss(
        G,
        D,
        input_pose_params_reg_loss_weight=0.0,
        bcg_reg_prob=0.2,
        blur_init_sigma=1.0,
        effective_blur_fade_kimg=10,
        density_noise_fade_kimg=10,
    )
    input_grads = {}
    original_run_D = loss.run_D

    def hooked_run_D(img_dict, c, update_emas=False):
        for key in ('image', 'image_raw', 'image_mask'):
            img_dict[key].register_hook(lambda grad, key=key: input_grads.__setitem__(key, grad))
        return original_run_D(img_dict, c, update_emas)

    monkeypatch.setattr(loss, 'run_D', hooked_run_D)
    attributes = {k: v for k, v in vars(G).items() if not isinstance(v, (torch.nn.Module, dict))}
    collector = training_stats.Collector(regex='Loss/.*')
    _run(loss, 'Gmain', _batch(G), cur_nimg=2000)
    collector.update()

    for key in ('image', 'image_raw', 'image_mask'):
        assert key in input_grads and input_grads[key].abs().sum() > 0, f'no gradient through D input {key}'
    g = _grads(G)
    for part in [
        'pose_branch.',
        'mapping_network.',
        'backbone.',
        'decoder.',
        'background.',
        'torgb.',
        'superresolution.',
    ]:
        assert _reached(g, part), f'Gmain: no gradient reaches G.{part}'
    assert all(p.grad is None for p in D.parameters())
    assert not any(p.requires_grad for p in D.parameters()), 'the loss must not toggle requires_grad'
    assert {k: v for k, v in vars(G).items() if not isinstance(v, (torch.nn.Module, dict))} == attributes
    assert collector.num('Loss/G/loss') == BATCH and math.isfinite(collector.mean('Loss/G/loss'))
    assert collector.num('Loss/scores/fake') == BATCH


def test_gmain_with_trainable_D_leaves_D_pose_head_and_flags_alone():
    G, D = _generator(), _discriminator()
    loss = _loss(G, D)
    _run(loss, 'Gmain', _batch(G))
    assert all(p.requires_grad for p in D.parameters())
    d = _grads(D)
    # D's own pose prediction only enters its condition detached: the G loss never trains the pose head.
    assert _untouched({k: v for k, v in d.items() if k.startswith('pose_branch.')})
    assert _reached(d, 'b4.')


def test_pose_prior_gradient_reaches_only_the_pose_branch():
    b = _batch(_generator())

    def grads_with(weight, gen_pose):
        G, D = _generator(), _discriminator()
        D.requires_grad_(False)
        collector = training_stats.Collector(regex='Loss/G/pose_prior')
        _run(_loss(G, D, input_pose_params_reg_loss_weight=weight), 'Gmain', {**b, 'gen_pose': gen_pose})
        collector.update()
        return _grads(G), collector.mean('Loss/G/pose_prior')

    G = _generator()
    with torch.no_grad():
        p_G = G.get_pose_params(b['gen_z'], b['gen_c'])
    offset = torch.tensor([0.1, -0.2, 0.0, 0.3, 0.0, 0.05])
    base, _ = grads_with(0.0, p_G + offset)
    with_prior, prior = grads_with(0.5, p_G + offset)
    assert prior == pytest.approx(0.5 * offset.square().sum().item(), rel=1e-4)
    for name, g in with_prior.items():
        if name.startswith('pose_branch.'):
            continue
        torch.testing.assert_close(g, base[name], msg=f'the pose prior changed the gradient of {name}')
    assert not all(torch.allclose(with_prior[n], base[n]) for n in base if n.startswith('pose_branch.'))
    # The pose branch already outputs the coarse pose: the prior is zero and changes nothing.
    matched, prior = grads_with(0.5, p_G)
    assert prior == pytest.approx(0.0, abs=1e-10)
    for name, g in matched.items():
        torch.testing.assert_close(g, base[name])


def test_marginal_pose_prior_is_the_cheapest_matching_of_each_value():
    # Oracle: for every one of the 6 values, the smallest squared distance over all pairings of the
    # chunk's G poses with its coarse poses (brute force over the 5! permutations).
    generator = torch.Generator().manual_seed(3)
    p_G = torch.randn([5, 6], generator=generator, dtype=torch.float64)
    coarse = torch.randn([5, 6], generator=generator, dtype=torch.float64)
    cheapest = sum(
        min(
            sum((p_G[i, k] - coarse[j, k]) ** 2 for i, j in enumerate(order))
            for order in itertools.permutations(range(5))
        )
        for k in range(6)
    )
    marginal = loss_module.pose_prior(p_G, coarse, 'marginal')
    assert marginal.shape == (5,)
    assert marginal.sum().item() == pytest.approx(cheapest.item(), rel=1e-12)
    paired = loss_module.pose_prior(p_G, coarse, 'paired')
    torch.testing.assert_close(paired, (p_G - coarse).square().sum(dim=1))
    assert marginal.sum() <= paired.sum()
    # Zero for any G poses whose values are the coarse ones reordered, value by value; paired is not.
    shuffled = torch.stack([coarse[torch.randperm(5, generator=generator), k] for k in range(6)], dim=1)
    assert loss_module.pose_prior(shuffled, coarse, 'marginal').abs().max().item() < 1e-12
    assert loss_module.pose_prior(shuffled, coarse, 'paired').sum().item() > 0.1


@pytest.mark.parametrize('reg_type', ['l1', 'monotonic-detach'])
def test_greg_trains_the_density_field(reg_type):
    G, D = _generator(), _discriminator()
    D.requires_grad_(False)
    collector = training_stats.Collector(regex='Loss/G/.*')
    _run(_loss(G, D, density_reg=0.25, reg_type=reg_type, density_noise_fade_kimg=10), 'Greg', _batch(G), cur_nimg=1000)
    collector.update()
    assert math.isfinite(collector.mean('Loss/G/density_reg')) and collector.mean('Loss/G/density_reg') > 0
    g = _grads(G)
    for part in ['mapping_network.', 'backbone.', 'decoder.', 'pose_branch.']:
        assert _reached(g, part), part
    # Nothing is rendered: the 2-D heads are not involved.
    assert _untouched({k: v for k, v in g.items() if k.startswith(('superresolution.', 'torgb.', 'background.'))})
    if reg_type != 'l1':
        assert collector.num('Loss/G/monotonic') == 1


def test_greg_is_skipped_without_density_reg():
    G, D = _generator(), _discriminator()
    _run(_loss(G, D, density_reg=0.0), 'Greg', _batch(G))
    assert all(p.grad is None for p in G.parameters())


# ----------------------------------------------------------------------------------------------
# Discriminator phases.


def test_dmain_trains_D_trunk_and_pose_head_only():
    G, D = _generator(), _discriminator()
    w_avg = G.mapping_network.w_avg.clone()
    b = _batch(G)
    collector = training_stats.Collector(regex='(Loss|Pose)/.*')
    _run(_loss(G, D), 'Dmain', b)
    collector.update()
    assert all(p.grad is None for p in G.parameters()), 'Dmain must not backpropagate into G'
    assert not torch.equal(G.mapping_network.w_avg, w_avg), 'the fake half updates the tracked w average'
    d = _grads(D)
    for part in ['b32.', 'b16.', 'b8.', 'b4.', 'mapping.', 'pose_branch.']:
        assert _reached(d, part), f'Dmain: no gradient reaches D.{part}'
    for name in [
        'Loss/scores/fake',
        'Loss/scores/real',
        'Loss/signs/fake',
        'Loss/signs/real',
        'Loss/D/loss',
        'Loss/D/pose',
        'Pose/D_real_error',
        'Pose/G_vs_D_fake',
    ]:
        assert collector.num(name) == BATCH and math.isfinite(collector.mean(name)), name
    # Without blur the real half sees the resized real image and mask.
    real = {
        'image': b['real_img'],
        'image_raw': F.interpolate(b['real_img'], size=(R, R), mode='bilinear', antialias=True),
        'image_mask': F.interpolate(b['real_seg'], size=(R, R), mode='bilinear', antialias=True),
    }
    with torch.no_grad():
        expected = (D.predict_pose(real, b['real_c']) - b['real_pose']).abs().mean()
    assert collector.mean('Pose/D_real_error') == pytest.approx(expected.item(), rel=1e-4)


def test_dmain_pose_head_is_trained_by_the_pose_loss_only():
    G, D = _generator(), _discriminator()
    _run(_loss(G, D, pose_loss_weight=0.0), 'Dmain', _batch(G))
    d = _grads(D)
    assert _untouched({k: v for k, v in d.items() if k.startswith('pose_branch.')})
    assert _reached(d, 'b4.')


def test_labelled_pose_regression_adds_its_gradient_from_fakes_at_the_labelled_poses(monkeypatch):
    G, D = _generator(), _discriminator()
    b, weight = _batch(G), 2.5
    published = _loss(G, D)
    _run(published, 'Dmain', b)
    d_published = _grads(D)
    D.zero_grad(set_to_none=True)

    with_labels = _loss(G, D, labelled_pose_loss_weight=weight)
    renders = []
    run_G = with_labels.run_G

    def recording_run_G(z, c, pose, *args, **kwargs):
        out = run_G(z, c, pose, *args, **kwargs)
        renders.append((pose, kwargs.get('update_emas', False), out))
        return out

    monkeypatch.setattr(with_labels, 'run_G', recording_run_G)
    collector = training_stats.Collector(regex='(Loss|Pose)/.*')
    _run(with_labels, 'Dmain', b)
    collector.update()
    d_with_labels = _grads(D)
    assert len(renders) == 2
    pose, update_emas, fakes = renders[1]
    assert torch.equal(pose, b['gen_pose']) and not update_emas

    # The extra term, computed directly on the recorded fakes; the published terms are unchanged.
    D.zero_grad(set_to_none=True)
    predicted = D.predict_pose(discriminator_input(fakes, 0.0), b['gen_c'])
    (weight * (predicted - b['gen_pose']).square().sum(dim=1).mean()).backward()
    d_term = _grads(D)
    for name, grad in d_with_labels.items():
        expected = d_published[name] if d_term[name] is None else d_published[name] + d_term[name]
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-6), name
    assert _reached(d_term, 'pose_branch.') and _reached(d_term, 'b32.')
    assert _untouched({k: v for k, v in d_term.items() if k.startswith(('b4.out.', 'mapping.'))})
    assert all(p.grad is None for p in G.parameters())
    assert collector.mean('Pose/D_labelled_fake_error') == pytest.approx(
        (predicted - b['gen_pose']).abs().mean().item(), rel=1e-4
    )


class _LinearD(torch.nn.Module):
    """logit = <a, image> + <b, raw> + <m, mask> per sample: R1 = |a|^2 + |b|^2, R1_seg = |m|^2."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.a = torch.nn.Parameter(torch.randn(3, S, S, generator=g))
        self.b = torch.nn.Parameter(torch.randn(3, R, R, generator=g))
        self.m = torch.nn.Parameter(torch.randn(1, R, R, generator=g))

    def forward(self, img_dict, c, update_emas=False):
        logit = (
            (img_dict['image'] * self.a).sum([1, 2, 3])
            + (img_dict['image_raw'] * self.b).sum([1, 2, 3])
            + (img_dict['image_mask'] * self.m).sum([1, 2, 3])
        )
        return logit[:, None], torch.zeros(c.shape[0], 6)


@pytest.mark.parametrize('blur_sigma', [0.0, 5.0])
def test_r1_analytic_on_linear_D(blur_sigma):
    # The gradient is taken w.r.t. the (blurred) images D sees, so a linear D's R1 is |a|^2 + |b|^2
    # whatever the blur; w.r.t. the unblurred input it would be |blur^T a|^2, smaller.
    D = _LinearD()
    gamma, gamma_seg, gain = 2.0, 0.5, 16.0
    config = {
        **QUIET,
        'gamma': gamma,
        'gamma_seg': gamma_seg,
        'blur_init_sigma': blur_sigma,
        'effective_blur_fade_kimg': 100,
    }
    loss = PortraitGANLoss(None, D, LossConfig(**config), 'cpu')
    b = _batch(_generator())
    collector = training_stats.Collector(regex='Loss/.*')
    _run(loss, 'Dreg', b, gain=gain)
    collector.update()
    r1 = (D.a.square().sum() + D.b.square().sum()).item()
    r1_seg = D.m.square().sum().item()
    assert collector.mean('Loss/r1_penalty') == pytest.approx(r1, rel=1e-5)
    assert collector.mean('Loss/r1_seg_penalty') == pytest.approx(r1_seg, rel=1e-5)
    assert collector.mean('Loss/D/reg') == pytest.approx(gamma / 2 * r1 + gamma_seg / 2 * r1_seg, rel=1e-5)
    # d/da of gain * (gamma/2 |a|^2) = gain * gamma * a, and likewise for b and m.
    torch.testing.assert_close(D.a.grad, gain * gamma * D.a.detach())
    torch.testing.assert_close(D.b.grad, gain * gamma * D.b.detach())
    torch.testing.assert_close(D.m.grad, gain * gamma_seg * D.m.detach())


@pytest.mark.parametrize('blur_sigma', [0.0, 3.0])
def test_r1_on_the_dual_discriminator_matches_direct_autograd(blur_sigma):
    # During the blur phase R1 on a real image equals R1 computed directly on the pre-blurred image.
    G = _generator()
    D, D_ref = _discriminator(), _discriminator()
    gamma, gamma_seg, gain = 1.0, 3.0, 4.0
    b = _batch(G)
    collector = training_stats.Collector(regex='Loss/.*')
    _run(
        _loss(G, D, gamma=gamma, gamma_seg=gamma_seg, blur_init_sigma=blur_sigma, effective_blur_fade_kimg=100),
        'Dreg',
        b,
        gain=gain,
    )
    collector.update()
    assert all(p.grad is None for p in G.parameters())

    resize = dict(size=(R, R), mode='bilinear', align_corners=False, antialias=True)
    blurred = _blur_by_conv if blur_sigma > 0 else (lambda x, sigma: x.clone())
    image = blurred(b['real_img'], blur_sigma).requires_grad_(True)
    raw = blurred(F.interpolate(b['real_img'], **resize), blur_sigma).requires_grad_(True)
    mask = F.interpolate(b['real_seg'], **resize).requires_grad_(True)
    logits, _ = D_ref({'image': image, 'image_raw': raw, 'image_mask': mask}, b['real_c'])
    gi, gr, gm = torch.autograd.grad(logits.sum(), [image, raw, mask], create_graph=True)
    r1 = gi.square().sum([1, 2, 3]) + gr.square().sum([1, 2, 3])
    r1_seg = gm.square().sum([1, 2, 3])
    assert collector.mean('Loss/r1_penalty') == pytest.approx(r1.mean().item(), rel=1e-4)
    assert collector.mean('Loss/r1_seg_penalty') == pytest.approx(r1_seg.mean().item(), rel=1e-4)
    ((r1 * gamma / 2 + r1_seg * gamma_seg / 2).mean() * gain).backward()
    reached = 0
    for (name, p), p_ref in zip(D.named_parameters(), D_ref.parameters()):
        if p_ref.grad is None:
            assert p.grad is None or p.grad.abs().sum() == 0, name
            continue
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
        reached += bool(p_ref.grad.abs().sum() > 0)
    assert reached > 0
    # R1 differentiates the logit only: the pose head takes no gradient.
    assert _untouched({k: v for k, v in _grads(D).items() if k.startswith('pose_branch.')})


@pytest.mark.parametrize('phase', ['Gmain', 'Dmain', 'Dreg'])
def test_cpu_bf16_training_gradients_stay_within_tolerance(phase):
    # Stated tolerance of the bf16 training mode (G's and D's convolutions in bfloat16): the
    # gradient of the trained network within 3 % relative L2 error of fp32 on the same inputs
    # and weights (measured 0.1 % for Gmain, 1.5 % for Dmain here). R1 runs in full precision:
    # its gradient is a second derivative, 25 % off in bf16, and identical to fp32 instead.
    gradients = []
    for bf16 in (False, True):
        G, D = _generator(cpu_bf16=bf16), _discriminator(cpu_bf16=bf16)
        trained = G if phase == 'Gmain' else D
        (D if phase == 'Gmain' else G).requires_grad_(False)
        _run(_loss(G, D, gamma=1.0, gamma_seg=1.0), phase, _batch(G))
        gradients.append(torch.cat([p.grad.flatten() for p in trained.parameters() if p.grad is not None]))
    fp32, bf16 = gradients
    relative_error = ((bf16 - fp32).norm() / fp32.norm()).item()
    if phase == 'Dreg':
        assert relative_error == 0
    else:
        assert 0 < relative_error < 0.03, relative_error


def test_dreg_is_skipped_when_both_gammas_are_zero():
    G, D = _generator(), _discriminator()
    _run(_loss(G, D, gamma=0.0, gamma_seg=0.0), 'Dreg', _batch(G))
    assert all(p.grad is None for p in D.parameters())


def test_schedule_values_reach_the_networks(monkeypatch):
    """Density noise (training G only, passed as an argument), blur and rendering resolution follow cur_nimg."""
    G, D = _generator(), _discriminator()
    D.requires_grad_(False)
    loss = _loss(
        G,
        D,
        density_noise_fade_kimg=4,
        blur_init_sigma=2.0,
        effective_blur_fade_kimg=4,
        neural_rendering_resolution_initial=R,
        neural_rendering_resolution_final=2 * R,
        neural_rendering_resolution_fade_kimg=4,
        stage_start_nimg=1000,
    )
    calls = _capture_synthesis(G, monkeypatch)
    sigmas = []
    monkeypatch.setattr(
        loss_module,
        'discriminator_input',
        lambda images, blur_sigma, *args, **kwargs: (
            sigmas.append(blur_sigma) or discriminator_input(images, blur_sigma, *args, **kwargs)
        ),
    )
    _run(loss, 'Gmain', _batch(G), cur_nimg=3000)
    assert calls[0]['density_noise'] == pytest.approx(schedules.density_noise(3000, 4)) == pytest.approx(0.25)
    assert calls[0]['neural_rendering_resolution'] == 24  # 16 -> 32 over 4 kimg from the resume point at 1 kimg
    assert sigmas == [pytest.approx(0.5)]


def test_dmain_and_dreg_report_every_discriminator_statistic():
    G, D = _generator(), _discriminator()
    collector = training_stats.Collector(regex='Loss/.*')
    loss, batch = _loss(G, D), _batch(G)
    _run(loss, 'Dmain', batch)
    _run(loss, 'Dreg', batch)
    collector.update()
    for name in ['Loss/scores/fake', 'Loss/scores/real', 'Loss/D/pose', 'Loss/r1_penalty', 'Loss/r1_seg_penalty']:
        assert collector.num(name) == BATCH and math.isfinite(collector.mean(name)), name
    assert all(p.grad is None for p in G.parameters())
