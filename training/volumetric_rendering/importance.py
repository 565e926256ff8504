"""Importance (fine) sampling along rays from the coarse pass's compositing weights."""

import torch
import torch.nn.functional as F


def sample_pdf(
    bins: torch.Tensor,
    weights: torch.Tensor,
    num_samples: int,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw positions from the piecewise-constant density given by `weights` over `bins`.

    bins [N, K+1] (sorted interval edges), weights [N, K] (non-negative) -> samples [N, num_samples]
    Each interval k = [bins[k], bins[k+1]] gets probability (weights[k] + 1e-5) / sum, uniform
    inside. The uniforms u are random (`generator`), or evenly spaced over [0, 1] when
    `deterministic`; each sample is the inverse CDF at u.
    """
    weights = weights + 1e-5  # keeps the pdf defined for rays whose weights are all zero
    pdf = weights / torch.sum(weights, dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)

    num_rays = bins.shape[0]
    if deterministic:
        uniforms = torch.linspace(0, 1, num_samples, dtype=bins.dtype, device=bins.device).expand(num_rays, num_samples)
    else:
        uniforms = torch.rand(num_rays, num_samples, generator=generator, dtype=bins.dtype, device=bins.device)
    uniforms = uniforms.contiguous()

    above = torch.searchsorted(cdf, uniforms, right=True)
    below = torch.clamp_min(above - 1, 0)
    above = torch.clamp_max(above, cdf.shape[-1] - 1)
    cdf_below, cdf_above = torch.gather(cdf, 1, below), torch.gather(cdf, 1, above)
    bins_below, bins_above = torch.gather(bins, 1, below), torch.gather(bins, 1, above)

    denominator = cdf_above - cdf_below
    # An interval of (numerically) zero probability is never the one u falls into, except at its
    # edge; any finite fraction is then correct.
    denominator = torch.where(denominator < 1e-5, torch.ones_like(denominator), denominator)
    return bins_below + (uniforms - cdf_below) / denominator * (bins_above - bins_below)


@torch.no_grad()
def importance_depths(
    coarse_depths: torch.Tensor,
    coarse_weights: torch.Tensor,
    num_importance: int,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> torch.Tensor:
    """Fine sample depths concentrated where the coarse pass put its compositing weight.

    coarse_depths [B, R, S, 1] (sorted), coarse_weights [B, R, S-1, 1] -> fine depths
    [B, R, num_importance, 1] (unsorted, no gradient)
    The weights are smoothed (max-pool kernel 2, then average-pool kernel 2, plus 0.01 so that
    no interval is starved); the pdf uses the inner S-3 smoothed weights over the intervals
    between the first S-2 midpoints of the coarse depths. Drawn as in `sample_pdf`.
    """
    batch, num_rays, num_coarse, _ = coarse_depths.shape
    depths = coarse_depths.reshape(batch * num_rays, num_coarse)
    weights = coarse_weights.reshape(batch * num_rays, 1, num_coarse - 1)
    weights = F.avg_pool1d(F.max_pool1d(weights, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01

    midpoints = (depths[:, :-1] + depths[:, 1:]) / 2
    fine = sample_pdf(
        midpoints[:, :-1], weights[:, 1:-1], num_importance, deterministic=deterministic, generator=generator
    )
    return fine.reshape(batch, num_rays, num_importance, 1)


def merge_samples(
    depths_a: torch.Tensor,
    features_a: torch.Tensor,
    densities_a: torch.Tensor,
    depths_b: torch.Tensor,
    features_b: torch.Tensor,
    densities_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Join two sample sets of the same rays and sort them by depth, keeping each sample's values.

    depths_* [B, R, S_*, 1], features_* [B, R, S_*, C], densities_* [B, R, S_*, 1]
    -> depths [B, R, S_a+S_b, 1], features [B, R, S_a+S_b, C], densities [B, R, S_a+S_b, 1]
    """
    depths = torch.cat([depths_a, depths_b], dim=-2)
    features = torch.cat([features_a, features_b], dim=-2)
    densities = torch.cat([densities_a, densities_b], dim=-2)
    _, order = torch.sort(depths, dim=-2)
    depths = torch.gather(depths, -2, order)
    features = torch.gather(features, -2, order.expand(-1, -1, -1, features.shape[-1]))
    densities = torch.gather(densities, -2, order)
    return depths, features, densities
