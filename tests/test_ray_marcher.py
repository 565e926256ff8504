import math

import numpy as np
import pytest
import torch

from tests.host_build import cpu_plugin_or_skip
from training.volumetric_rendering import ray_marcher
from training.volumetric_rendering.importance import merge_samples
from training.volumetric_rendering.ray_marcher import march

EMPTY = -1000.0  # raw density whose activation softplus(EMPTY - 1) underflows to 0


def raw_density_for(activated: float) -> float:
    """Raw density whose activation softplus(raw - 1) equals `activated` (inverse softplus)."""
    return 1 + math.log(math.expm1(activated))


def slab_scene(sigma: float, spacing: float, first: int, last: int, num_samples: int = 64, start: float = 2.0):
    """Samples t_k = start + k*spacing on one ray; samples first..last carry activated density
    `sigma`, every other sample is empty. With midpoint averaging, an interval touching an empty
    sample averages to ~-500 (activation 0), so exactly the intervals between samples first and
    last are filled: a homogeneous slab [t_first, t_last] of length (last - first) * spacing."""
    depths = start + spacing * torch.arange(num_samples, dtype=torch.float64)
    raw = torch.full((num_samples,), EMPTY, dtype=torch.float64)
    raw[first : last + 1] = raw_density_for(sigma)
    colors = torch.zeros(num_samples, 3, dtype=torch.float64)
    colors[first : last + 1] = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    return colors[None, None], raw[None, None, :, None], depths[None, None, :, None]


@pytest.mark.parametrize('sigma, spacing', [(3.0, 0.02), (40.0, 0.01), (0.5, 0.05)])
def test_homogeneous_slab_matches_analytic_opacity_and_depth(sigma, spacing):
    first, last = 10, 40
    colors, densities, depths = slab_scene(sigma, spacing, first, last)
    features, depth, weights, acc = march(colors, densities, depths)
    assert weights.shape == (1, 1, depths.shape[2] - 1, 1)

    near, length = depths[0, 0, first, 0].item(), (last - first) * spacing
    opacity = 1 - math.exp(-sigma * length)
    # The 1e-10 in the transmittance adds at most ~S*1e-10 to the opacity.
    assert acc.item() == pytest.approx(opacity, abs=1e-8)
    np.testing.assert_allclose(features[0, 0].numpy(), opacity * np.array([0.2, 0.5, 0.9]), atol=1e-8)

    # Continuous expected depth of the first hit in [near, near + L]:
    # E[t] = near + 1/sigma - L exp(-sigma L) / (1 - exp(-sigma L)).
    continuous = near + 1 / sigma - length * math.exp(-sigma * length) / (1 - math.exp(-sigma * length))
    # Each interval's weight is exactly the continuous hit probability of that interval, but the
    # marcher puts it at the interval's midpoint instead of at its conditional mean
    # start + spacing*(1/x - 1/(e^x - 1)), x = sigma*spacing, so every hit is displaced by
    # spacing*(1/2 - 1/x + 1/(e^x - 1)) (~ sigma*spacing^2/12 for small x, at most spacing/2).
    x = sigma * spacing
    displacement = spacing * (0.5 - 1 / x + 1 / math.expm1(x))
    assert 0 < displacement <= sigma * spacing**2 / 12 + 1e-12
    assert depth.item() == pytest.approx(continuous + displacement, abs=1e-8)


def test_empty_scene_is_transparent_and_far():
    depths = torch.linspace(2.0, 3.0, 32).reshape(1, 1, 32, 1).expand(2, 5, 32, 1)
    densities = torch.full((2, 5, 32, 1), EMPTY)
    colors = torch.rand(2, 5, 32, 4)
    features, depth, weights, acc = march(colors, densities, depths)
    assert features.shape == (2, 5, 4) and depth.shape == acc.shape == (2, 5, 1)
    assert acc.abs().max() < 1e-12 and weights.abs().max() < 1e-12
    # No opacity -> infinite depth, clamped to the farthest sample.
    torch.testing.assert_close(depth, torch.full_like(depth, 3.0))


def test_empty_rays_give_finite_gradients():
    depths = torch.linspace(2.0, 3.0, 16).reshape(1, 1, 16, 1).expand(1, 2, 16, 1)
    densities = torch.full((1, 2, 16, 1), EMPTY)
    densities[0, 1, 5:9] = 20.0
    densities.requires_grad_(True)
    colors = torch.rand(1, 2, 16, 3, requires_grad=True)
    features, depth, _, acc = march(colors, densities, depths)
    (features.sum() + depth.sum() + acc.sum()).backward()
    assert torch.isfinite(densities.grad).all() and torch.isfinite(colors.grad).all()
    assert densities.grad[0, 1].abs().sum() > 0


def test_opaque_wall_puts_depth_at_the_wall():
    # A nearly opaque first interval: all weight on its midpoint.
    depths = torch.tensor([2.0, 2.1, 2.2, 2.3, 2.4], dtype=torch.float64).reshape(1, 1, 5, 1)
    densities = torch.tensor([2000.0, 2000.0, 5.0, 5.0, 5.0], dtype=torch.float64).reshape(1, 1, 5, 1)
    colors = torch.tensor([[1.0], [1.0], [0.0], [0.0], [0.0]], dtype=torch.float64)[None, None]
    features, depth, weights, acc = march(colors, densities, depths)
    assert acc.item() == pytest.approx(1.0, abs=1e-9)
    assert depth.item() == pytest.approx(2.05, abs=1e-9)
    assert features.item() == pytest.approx(1.0, abs=1e-9)


def test_gradcheck_colors_and_densities():
    generator = torch.Generator().manual_seed(0)
    depths = torch.sort(2 + torch.rand(2, 3, 7, 1, generator=generator, dtype=torch.float64), dim=2).values
    colors = torch.randn(2, 3, 7, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    densities = (3 * torch.randn(2, 3, 7, 1, generator=generator, dtype=torch.float64)).requires_grad_(True)

    def outputs(colors, densities):
        features, depth, weights, acc = march(colors, densities, depths)
        return features, depth, weights, acc

    assert torch.autograd.gradcheck(outputs, (colors, densities))


def two_sample_sets(dtype, generator, batch=2, rays=5, count_a=6, count_b=4, channels=3):
    """A coarse set (sorted depths) and a fine set (unsorted) of the same rays, with gradients wanted,
    including a ray of zero opacity and fine depths tied with coarse ones."""
    colors_a = torch.randn(batch, rays, count_a, channels, generator=generator, dtype=dtype)
    densities_a = 3 * torch.randn(batch, rays, count_a, 1, generator=generator, dtype=dtype)
    colors_b = torch.randn(batch, rays, count_b, channels, generator=generator, dtype=dtype)
    densities_b = 3 * torch.randn(batch, rays, count_b, 1, generator=generator, dtype=dtype)
    depths_a = torch.sort(2 + torch.rand(batch, rays, count_a, 1, generator=generator, dtype=dtype), dim=2)[0]
    depths_b = 2 + torch.rand(batch, rays, count_b, 1, generator=generator, dtype=dtype)
    depths_b[0, 0, 0] = depths_a[0, 0, 2]
    densities_a[1, 1], densities_b[1, 1] = EMPTY, EMPTY
    leaves = [t.requires_grad_(True) for t in (colors_a, densities_a, colors_b, densities_b)]
    return leaves, depths_a, depths_b


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_fused_march_of_two_sets_matches_merging_and_marching(dtype):
    cpu_plugin_or_skip(ray_marcher._march_plugin, 'the fused ray marcher (ray_marcher.cpp)')
    generator = torch.Generator().manual_seed(0)
    (colors_a, densities_a, colors_b, densities_b), depths_a, depths_b = two_sample_sets(dtype, generator)
    outputs = ray_marcher.march_sample_sets(colors_a, densities_a, depths_a, (colors_b, densities_b, depths_b))
    depths, colors, densities = merge_samples(depths_a, colors_a, densities_a, depths_b, colors_b, densities_b)
    expected = march(colors, densities, depths)
    tolerance = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-13, rtol=1e-12)
    for output, reference in zip(outputs, expected):
        torch.testing.assert_close(output, reference.detach(), **tolerance)
    assert outputs[3][1, 1].item() == 0 and outputs[1][1, 1].item() == depths.max().item()

    leaves = [colors_a, densities_a, colors_b, densities_b]
    upstream = [torch.randn(t.shape, generator=generator, dtype=dtype) for t in (outputs[0], outputs[1], outputs[3])]
    grads = torch.autograd.grad([outputs[0], outputs[1], outputs[3]], leaves, upstream)
    expected_grads = torch.autograd.grad([expected[0], expected[1], expected[3]], leaves, upstream)
    for grad, reference in zip(grads, expected_grads):
        torch.testing.assert_close(grad, reference, **tolerance)
    assert not outputs[2].requires_grad


def test_fused_march_gradcheck_and_one_set():
    cpu_plugin_or_skip(ray_marcher._march_plugin, 'the fused ray marcher (ray_marcher.cpp)')
    generator = torch.Generator().manual_seed(1)
    leaves, depths_a, depths_b = two_sample_sets(torch.float64, generator, rays=3)

    def composite(colors_a, densities_a, colors_b, densities_b):
        features, depth, _, acc = ray_marcher.march_sample_sets(
            colors_a, densities_a, depths_a, (colors_b, densities_b, depths_b)
        )
        return features, depth, acc

    assert torch.autograd.gradcheck(composite, leaves)
    one_set = ray_marcher.march_sample_sets(leaves[0], leaves[1], depths_a)
    for output, reference in zip(one_set, march(leaves[0], leaves[1], depths_a)):
        torch.testing.assert_close(output, reference.detach(), atol=1e-13, rtol=1e-12)


def test_march_sample_sets_without_the_fused_marcher_merges_and_marches(monkeypatch):
    monkeypatch.setattr(ray_marcher, '_march_plugin', lambda: None)
    generator = torch.Generator().manual_seed(2)
    (colors_a, densities_a, colors_b, densities_b), depths_a, depths_b = two_sample_sets(torch.float64, generator)
    outputs = ray_marcher.march_sample_sets(colors_a, densities_a, depths_a, (colors_b, densities_b, depths_b))
    depths, colors, densities = merge_samples(depths_a, colors_a, densities_a, depths_b, colors_b, densities_b)
    for output, reference in zip(outputs, march(colors, densities, depths)):
        assert torch.equal(output, reference)
    assert outputs[2].requires_grad
