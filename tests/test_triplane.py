"""Tests of training/networks/triplane.py: the tri-grid generator at the CPU preset and at the published 512 px preset."""

import pytest
import torch

from training.data.camera_utils import random_cameras
from training.networks.triplane import TriPlaneGenerator, build_generator
from training.presets import list_presets, load_preset

# Cheap rendering settings for the 512 px preset: the network is the published one, only the
# number of rays and samples per call is lowered.
CHEAP_RENDER = dict(neural_rendering_resolution=16, depth_resolution=6, depth_resolution_importance=6)


def _params_with_grad(module: torch.nn.Module) -> dict[str, bool]:
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in module.named_parameters()}


@pytest.fixture(scope='module')
def small_generator():
    torch.manual_seed(0)
    return build_generator(load_preset('cpu-small'))


def test_presets_are_listed():
    assert {'full-head', 'cpu-small'} <= set(list_presets())
    with pytest.raises(ValueError, match='unknown preset'):
        load_preset('no-such-preset')


@pytest.mark.parametrize('preset_name, render', [('cpu-small', {}), ('full-head', CHEAP_RENDER)])
def test_forward_backward_reaches_every_part(preset_name, render):
    torch.manual_seed(1)
    G = build_generator(load_preset(preset_name))
    batch = 2
    z = torch.randn(batch, G.z_dim)
    c = random_cameras(batch)
    pose = (0.2 * torch.randn(batch, G.pose_dim)).requires_grad_(True)
    out = G(z, c, pose, apply_def=True, **render)
    res = G.img_resolution
    r = render.get('neural_rendering_resolution', G.neural_rendering_resolution)
    assert out['image'].shape == (batch, 3, res, res)
    assert out['image_raw'].shape == (batch, 3, r, r)
    assert out['image_depth'].shape == (batch, 1, r, r)
    assert out['image_mask'].shape == (batch, 1, r, r)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    loss = out['image'].square().mean() + out['image_raw'].square().mean() + out['image_mask'].mean()
    loss.backward()
    assert pose.grad is not None and pose.grad.abs().sum() > 0, 'no gradient reaches the body pose'
    reached = _params_with_grad(G)
    for part in ['mapping_network', 'backbone', 'decoder', 'background', 'torgb', 'superresolution']:
        names = [name for name in reached if name.startswith(part + '.')]
        assert names, part
        assert any(reached[name] for name in names), f'no gradient reaches {part}'
    # Every weight of mapping, decoder and ToRGB takes part in every image.
    for name, ok in reached.items():
        if name.startswith(('mapping_network.', 'decoder.', 'torgb.')) and not name.endswith('noise_strength'):
            assert ok, name


def test_rendering_resolution_is_a_call_argument(small_generator):
    G = small_generator
    default = G.neural_rendering_resolution
    z = torch.randn(1, G.z_dim)
    c = random_cameras(1)
    with torch.no_grad():
        out = G(z, c, neural_rendering_resolution=16)
    assert out['image_raw'].shape[-1] == 16
    assert out['image'].shape[-1] == G.img_resolution
    assert G.neural_rendering_resolution == default


def _render(G, z, c, pose=None, **kwargs):
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return G(z, c, pose, noise_mode='const', generator=generator, **kwargs)


def test_same_inputs_same_jitter_give_the_same_image(small_generator):
    G = small_generator
    z = torch.randn(2, G.z_dim)
    c = random_cameras(2)
    a, b = _render(G, z, c), _render(G, z, c)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_zero_pose_is_the_default_condition(small_generator):
    G = small_generator
    z = torch.randn(2, G.z_dim)
    c = random_cameras(2)
    a = _render(G, z, c, None)
    b = _render(G, z, c, torch.zeros(2, G.pose_dim))
    assert torch.equal(a['image'], b['image'])


def test_truncation_to_the_average_removes_the_latent(small_generator):
    G = small_generator
    with torch.no_grad():  # give w_avg a value that differs from its initial zeros
        G.mapping(torch.randn(64, G.z_dim), random_cameras(64), update_emas=True)
    c = random_cameras(1).repeat(2, 1)
    z = torch.randn(2, G.z_dim)
    out = _render(G, z, c, truncation_psi=0, deterministic=True)
    assert torch.allclose(out['image'][0], out['image'][1], atol=1e-5)
    free = _render(G, z, c, deterministic=True)
    assert not torch.allclose(free['image'][0], free['image'][1], atol=1e-3)


def test_zero_body_pose_renders_the_canonical_head(small_generator):
    G = small_generator
    z = torch.randn(2, G.z_dim)
    c = random_cameras(2)
    ws = G.mapping(z, c)
    kwargs = dict(noise_mode='const', deterministic=True)
    with torch.no_grad():
        canonical = G.synthesis(ws, c, **kwargs)
        zero_pose = G.synthesis(ws, c, pose_params=torch.zeros(2, 6), **kwargs)
        nodding = G.synthesis(ws, c, pose_params=torch.tensor([[0.5, 0, 0, 0.3, 0, 0]] * 2), **kwargs)
    for key in ['image_raw', 'image_mask', 'image']:
        assert torch.allclose(canonical[key], zero_pose[key], atol=1e-4), key
    assert not torch.allclose(canonical['image_mask'], nodding['image_mask'], atol=1e-3)


def test_sample_mixed_matches_renderer_density_ordering(small_generator):
    G = small_generator
    z = torch.randn(1, G.z_dim)
    c = random_cameras(1)
    ws = G.mapping(z, c)
    points = torch.rand(1, 500, 3) - 0.5
    with torch.no_grad():
        out = G.sample_mixed(points, ws, noise_mode='const')
        outside = G.sample_mixed(points + 2.0, ws, noise_mode='const')
    assert out['sigma'].shape == (1, 500, 1)
    assert out['rgb'].shape == (1, 500, G.triplane_channels)
    # Outside the tri-grid box every plane feature is zero, so the decoder sees the same input everywhere.
    assert torch.allclose(outside['sigma'], outside['sigma'][:, :1].expand_as(outside['sigma']))
    assert not torch.allclose(out['sigma'], out['sigma'][:, :1].expand_as(out['sigma']))


def test_bad_superresolution_settings_are_rejected():
    with pytest.raises(ValueError, match='sr_module'):
        TriPlaneGenerator(sr_module='hybrid16x')
    with pytest.raises(ValueError, match='sr_input_resolution=128'):
        TriPlaneGenerator(sr_module='hybrid8xdc', sr_input_resolution=64)


def test_synthesis_takes_a_precomputed_tri_grid_and_background(small_generator):
    G = small_generator
    c = random_cameras(2)
    ws = G.mapping(torch.randn(2, G.z_dim), c)
    kwargs = dict(noise_mode='const', deterministic=True, pose_params=torch.zeros(2, 6))
    with torch.no_grad():
        reference = G.synthesis(ws, c, **kwargs)
        planes = G.planes(ws, noise_mode='const')
        background = G.background(ws[:, : G.background.num_ws], noise_mode='const')
        reused = G.synthesis(ws, c, planes=planes, background=background, **kwargs)
        preview = G.synthesis(ws, c, planes=planes, background=background, superresolve=False, **kwargs)
    for key in ('image', 'image_raw', 'image_depth', 'image_mask'):
        torch.testing.assert_close(reused[key], reference[key], rtol=0, atol=0)
    assert torch.equal(preview['image'], reference['image_raw']) and torch.equal(
        preview['image_raw'], reference['image_raw']
    )
