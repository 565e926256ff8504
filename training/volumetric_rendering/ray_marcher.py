"""Alpha compositing of samples along rays (the mip-NeRF midpoint scheme used by EG3D)."""

import torch
import torch.nn.functional as F


def march(
    colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Composite per-sample features into per-ray features, expected depth and opacity.

    colors [B, R, S, C], densities [B, R, S, 1] (raw, before activation), depths [B, R, S, 1]
    (sorted along S) -> features [B, R, C], depth [B, R, 1], weights [B, R, S-1, 1], acc [B, R, 1]

    Each interval between neighbouring samples takes the mean colour and mean raw density of
    its two ends; the density is activated as softplus(sigma - 1), so alpha = 1 - exp(-sigma' * delta)
    and weight = alpha * prod_{j<k}(1 - alpha_j + 1e-10). `acc` is the sum of the weights and
    `depth` the weight-averaged interval midpoint; a ray with zero opacity gets the largest depth
    in the batch, and every depth is clamped to [min, max] of `depths`.
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    mid_colors = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    mid_densities = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    mid_depths = (depths[:, :, :-1] + depths[:, :, 1:]) / 2

    alpha = 1 - torch.exp(-F.softplus(mid_densities - 1) * deltas)
    # The 1e-10 keeps the transmittance (and its gradient) alive behind fully opaque samples.
    survival = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], dim=-2)
    weights = alpha * torch.cumprod(survival, dim=-2)[:, :, :-1]

    features = torch.sum(weights * mid_colors, dim=-2)
    acc = torch.sum(weights, dim=-2)
    weighted_depth = torch.sum(weights * mid_depths, dim=-2)
    # Division by a zero opacity would give NaN (and NaN gradients); such rays are sent to +inf
    # and then clamped to the farthest depth.
    has_opacity = acc > 0
    depth = torch.where(
        has_opacity,
        weighted_depth / torch.where(has_opacity, acc, torch.ones_like(acc)),
        torch.full_like(acc, float('inf')),
    )
    depth = torch.clamp(depth, depths.min(), depths.max())
    return features, depth, weights, acc
