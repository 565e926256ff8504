"""FID and KID distances against direct scipy/numpy computations."""

import numpy as np
import pytest
import scipy.linalg

from metrics.distances import feature_moments, frechet_distance, kernel_distance


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(root)))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.RandomState(0)
    a = rng.randn(400, 12) @ rng.randn(12, 12)
    b = rng.randn(300, 12) @ rng.randn(12, 12) + 0.7
    value = frechet_distance(*feature_moments(a), *feature_moments(b))
    assert value == pytest.approx(_scipy_fid(a, b), rel=1e-8)
    assert value > 1


def test_frechet_distance_of_gaussians_has_the_closed_form():
    # Diagonal covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(s1) - sqrt(s2))^2.
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, -2.0, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_with_singular_covariances():
    rng = np.random.RandomState(1)
    a, b = rng.randn(10, 32), rng.randn(12, 32) + 0.1  # fewer samples than dimensions: rank-deficient
    value = frechet_distance(*feature_moments(a), *feature_moments(b))
    assert np.isfinite(value)
    assert value == pytest.approx(_scipy_fid(a, b), rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.RandomState(2).randn(50, 64)  # singular as well
    mu, sigma = feature_moments(features)
    # Zero up to the rounding of the square roots of the near-zero eigenvalues, tiny against tr(S) ~ 64.
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma) * 1e2


def _brute_force_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD with k(a, b) = (a.b / d + 1)^3, by explicit loops."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kernel_distance_equals_brute_force_mmd_on_whole_sets():
    rng = np.random.RandomState(3)
    real, fake = rng.randn(20, 5), rng.randn(20, 5) * 1.5 + 0.3
    # One subset as large as the sets is a permutation of each: the full-set unbiased MMD.
    assert kernel_distance(real, fake, num_subsets=1, max_subset_size=20) == pytest.approx(
        _brute_force_mmd(fake, real), rel=1e-10
    )


def test_kernel_distance_separates_distributions():
    rng = np.random.RandomState(4)
    same = kernel_distance(rng.randn(500, 16), rng.randn(500, 16), num_subsets=20, max_subset_size=200)
    shifted = kernel_distance(rng.randn(500, 16), rng.randn(500, 16) + 0.5, num_subsets=20, max_subset_size=200)
    assert abs(same) < 0.02 < shifted


def test_distances_reject_bad_shapes():
    with pytest.raises(ValueError, match='do not match'):
        kernel_distance(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match='at least 2'):
        feature_moments(np.zeros((1, 3)))
