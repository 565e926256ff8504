"""Distances between two sets of detector features: the Fréchet distance (FID) and the kernel distance (KID)."""

import numpy as np


def feature_moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] -> (mean [D], covariance [D, D]), in float64 (unbiased covariance, N >= 2)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f'feature moments need at least 2 feature rows, got an array of shape {list(features.shape)}')
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix [D, D]; rounding's small negative eigenvalues -> 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    mu [D], sigma [D, D] -> float. tr (S1 S2)^(1/2) is computed as the sum of the square roots of
    the eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric and stays well defined when a
    covariance is singular (fewer samples than feature dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f'frechet_distance: mismatched shapes {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}'
        )
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def kernel_distance(
    real: np.ndarray, fake: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """Kernel inception distance: the unbiased squared MMD with the kernel k(x, y) = (x.y / D + 1)^3.

    real [N, D], fake [M, D] -> float, averaged over `num_subsets` random subsets of
    m = min(N, M, max_subset_size) rows drawn without replacement from each set.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f'kernel_distance: feature arrays {list(real.shape)} and {list(fake.shape)} do not match')
    dim = real.shape[1]
    m = min(len(real), len(fake), max_subset_size)
    if m < 2:
        raise ValueError(f'kernel_distance needs at least 2 rows in each set, got {len(real)} and {len(fake)}')
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        total += within - 2 * k_xy.mean()
    return float(total / num_subsets)
