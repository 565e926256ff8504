import numpy as np
import pytest
import torch

from training.volumetric_rendering.importance import importance_depths, merge_samples, sample_pdf


def smoothed_weights_numpy(weights: np.ndarray) -> np.ndarray:
    """Max over each neighbour pair (with -inf padding at both ends), then mean over neighbour pairs, + 0.01.

    weights [N, K] -> [N, K]
    """
    padded = np.pad(weights, ((0, 0), (1, 1)), constant_values=-np.inf)
    pair_max = np.maximum(padded[:, :-1], padded[:, 1:])  # K + 1 values
    return (pair_max[:, :-1] + pair_max[:, 1:]) / 2 + 0.01


def inverse_cdf_numpy(bins: np.ndarray, weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse CDF of the piecewise-constant density (weights + 1e-5) on one ray's bins."""
    probabilities = (weights + 1e-5) / np.sum(weights + 1e-5)
    cdf = np.concatenate([[0.0], np.cumsum(probabilities)])
    samples = []
    for u in uniforms:
        k = min(np.searchsorted(cdf, u, side='right') - 1, len(probabilities) - 1)
        samples.append(bins[k] + (u - cdf[k]) / probabilities[k] * (bins[k + 1] - bins[k]))
    return np.array(samples)


def test_deterministic_sample_pdf_is_the_analytic_inverse_cdf():
    bins = torch.tensor([[0.0, 1.0, 1.5, 3.0, 3.2, 4.0], [10.0, 10.1, 10.2, 10.3, 10.4, 10.5]], dtype=torch.float64)
    weights = torch.tensor([[1.0, 3.0, 0.5, 2.0, 1.5], [0.2, 0.0, 5.0, 1.0, 0.1]], dtype=torch.float64)
    samples = sample_pdf(bins, weights, 13, deterministic=True)
    uniforms = np.linspace(0, 1, 13)
    for ray in range(2):
        expected = inverse_cdf_numpy(bins[ray].numpy(), weights[ray].numpy(), uniforms)
        np.testing.assert_allclose(samples[ray].numpy(), expected, atol=1e-9)
    assert (samples[:, 1:] >= samples[:, :-1]).all()


def test_sample_pdf_histogram_matches_pdf():
    generator = torch.Generator().manual_seed(0)
    bins = torch.tensor([[0.0, 0.5, 0.7, 1.6, 2.0, 3.0]])
    weights = torch.tensor([[0.1, 2.0, 1.0, 0.0, 0.6]])
    num_samples = 40000
    samples = sample_pdf(bins, weights, num_samples, generator=generator)
    counts, _ = np.histogram(samples.numpy().ravel(), bins=bins[0].numpy())
    probabilities = (weights[0].numpy() + 1e-5) / (weights[0].numpy() + 1e-5).sum()
    expected = probabilities * num_samples
    populated = expected > 5
    chi_square = np.sum((counts[populated] - expected[populated]) ** 2 / expected[populated])
    # 99.9 % quantile of chi-square with 3 degrees of freedom is 16.3.
    assert populated.sum() == 4 and chi_square < 16.3
    assert counts[~populated].sum() <= 3
    # Uniform inside a bin: the mean of the samples in bin 2 is its centre.
    inside = samples[(samples >= 0.7) & (samples < 1.6)]
    assert inside.mean().item() == pytest.approx(1.15, abs=0.01)


def test_fine_samples_concentrate_at_a_peaked_weight():
    depths = torch.linspace(2.0, 3.0, 32).reshape(1, 1, 32, 1).expand(2, 3, 32, 1).contiguous()
    weights = torch.zeros(2, 3, 31, 1)
    peak = 17
    weights[:, :, peak] = 1.0  # interval between depths 17 and 18
    weights.requires_grad_(True)
    fine = importance_depths(depths, weights, 2048, generator=torch.Generator().manual_seed(0))
    assert fine.shape == (2, 3, 2048, 1) and not fine.requires_grad
    # Smoothing spreads the peak to its two neighbours (weights 0.5, 1, 0.5 over three
    # midpoint-to-midpoint intervals); the 0.01 floor on the other 26 draws about 11 %.
    midpoints = (depths[0, 0, :-1, 0] + depths[0, 0, 1:, 0]) / 2
    low, high = midpoints[peak - 2], midpoints[peak + 1]
    fraction = ((fine >= low) & (fine <= high)).float().mean().item()
    expected = 2.03 / (2.03 + 26 * 0.01)
    assert fraction == pytest.approx(expected, abs=0.015)


def test_importance_depths_follow_the_smoothed_pdf():
    generator = torch.Generator().manual_seed(1)
    num_coarse = 12
    depths = torch.sort(2 + torch.rand(1, 2, num_coarse, 1, generator=generator), dim=2).values
    weights = torch.rand(1, 2, num_coarse - 1, 1, generator=generator) ** 3
    deterministic = importance_depths(depths, weights, 9, deterministic=True)
    for ray in range(2):
        coarse = depths[0, ray, :, 0].double().numpy()
        midpoints = (coarse[:-1] + coarse[1:]) / 2
        smoothed = smoothed_weights_numpy(weights[0, ray, :, 0].double().numpy()[None])[0]
        expected = inverse_cdf_numpy(midpoints[:-1], smoothed[1:-1], np.linspace(0, 1, 9))
        np.testing.assert_allclose(deterministic[0, ray, :, 0].numpy(), expected, atol=1e-5)


def test_random_importance_depths_are_reproducible_and_in_range():
    depths = torch.linspace(2.0, 3.0, 16).reshape(1, 1, 16, 1).expand(1, 4, 16, 1).contiguous()
    weights = torch.rand(1, 4, 15, 1, generator=torch.Generator().manual_seed(0))
    first = importance_depths(depths, weights, 20, generator=torch.Generator().manual_seed(5))
    second = importance_depths(depths, weights, 20, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, second)
    # Only the intervals between the first S-2 midpoints are used.
    assert first.min() >= (2.0 + 1 / 30) - 1e-6 and first.max() <= 3.0 - 3 / 30 + 1e-6


def test_merge_samples_sorts_and_keeps_pairs():
    generator = torch.Generator().manual_seed(0)
    depths_a = torch.sort(torch.rand(2, 3, 5, 1, generator=generator), dim=2).values
    depths_b = torch.rand(2, 3, 4, 1, generator=generator)
    # Features and densities that are known functions of the depth reveal any mix-up.
    features_a, features_b = torch.cat([depths_a, -depths_a], -1) * 10, torch.cat([depths_b, -depths_b], -1) * 10
    densities_a, densities_b = depths_a**2, depths_b**2
    depths, features, densities = merge_samples(depths_a, features_a, densities_a, depths_b, features_b, densities_b)
    assert depths.shape == (2, 3, 9, 1) and features.shape == (2, 3, 9, 2)
    assert (depths[:, :, 1:] >= depths[:, :, :-1]).all()
    torch.testing.assert_close(features, torch.cat([depths, -depths], -1) * 10)
    torch.testing.assert_close(densities, depths**2)
    np.testing.assert_allclose(np.sort(torch.cat([depths_a, depths_b], 2).numpy(), axis=2), depths.numpy())


def test_merge_samples_passes_gradients_to_both_sets():
    features_a = torch.ones(1, 1, 2, 1, requires_grad=True)
    features_b = torch.ones(1, 1, 2, 1, requires_grad=True)
    depths_a = torch.tensor([0.1, 0.3]).reshape(1, 1, 2, 1)
    depths_b = torch.tensor([0.2, 0.4]).reshape(1, 1, 2, 1)
    _, features, _ = merge_samples(depths_a, features_a, depths_a, depths_b, features_b, depths_b)
    (features[0, 0, :, 0] * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert features_a.grad.flatten().tolist() == [1.0, 3.0]
    assert features_b.grad.flatten().tolist() == [2.0, 4.0]
