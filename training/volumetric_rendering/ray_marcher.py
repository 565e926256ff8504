"""Alpha compositing of samples along rays (the mip-NeRF midpoint scheme used by EG3D).

`march` is the reference, in PyTorch ops, on samples already sorted by depth. The renderer calls
`march_sample_sets`, which composites the union of a render's coarse and fine samples: on the
CPU (float32/float64) one fused C++ pass per ray for the forward and one for the backward
(ray_marcher.cpp, built on first use), which read the samples of both sets in depth order where
they lie; elsewhere, or without a compiler, the sets are merged and sorted (`merge_samples`)
and composited by `march`. Both give the same values and gradients to float rounding.
"""

import os
import types

import torch
import torch.nn.functional as F

from torch_utils import custom_ops
from training.volumetric_rendering.importance import merge_samples


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


def _march_plugin() -> types.ModuleType | None:
    """The fused C++ marcher (ray_marcher.cpp), built on first use; None when it cannot be built."""
    return custom_ops.get_cpu_plugin('ray_marcher_plugin', 'ray_marcher.cpp', os.path.dirname(__file__))


class _FusedMarch(torch.autograd.Function):
    """`march` of two sample sets in the order `order`, as the C++ kernels compute it.

    colors_* [B, R, S_*, C], densities_* [B, R, S_*, 1], depths [B, R, S, 1] (sorted, no gradient),
    order [B, R, S] (int64; empty: the samples as given), depth_min and depth_max (the clamp of
    the depth) -> features [B, R, C], depth [B, R, 1], weights [B, R, S-1, 1] (no gradient), acc [B, R, 1]
    """

    @staticmethod
    def forward(ctx, colors_a, densities_a, colors_b, densities_b, depths, order, depth_min, depth_max, plugin):
        inputs = [tensor.contiguous() for tensor in (colors_a, densities_a, colors_b, densities_b, depths)]
        features, depth, weights, acc = plugin.march(*inputs, order, depth_min, depth_max)
        ctx.save_for_backward(*inputs, order)
        ctx.depth_range = (depth_min, depth_max)
        ctx.plugin = plugin
        ctx.mark_non_differentiable(weights)
        return features, depth, weights, acc

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_features, grad_depth, _grad_weights, grad_acc):
        grads = ctx.plugin.march_backward(*ctx.saved_tensors, *ctx.depth_range, grad_features, grad_depth, grad_acc)
        return (*grads, None, None, None, None, None)


def march_sample_sets(
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    more: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`march` of one sample set, sorted by depth, or of its union with a second set of the same rays.

    colors [B, R, S, C], densities [B, R, S, 1], depths [B, R, S, 1]; more: the second set's
    (colors [B, R, S2, C], densities [B, R, S2, 1], depths [B, R, S2, 1]) or None
    -> features [B, R, C], depth [B, R, 1], weights [B, R, S+S2-1, 1], acc [B, R, 1] (as `march`;
    on the fused path the weights take no gradient, and the depths none either)
    """
    tensors = [colors, densities, depths, *(more or ())]
    fused = (
        all(t.device.type == 'cpu' and t.dtype == colors.dtype for t in tensors)
        and colors.dtype in (torch.float32, torch.float64)
        and not (depths.requires_grad or (more is not None and more[2].requires_grad))
    )
    plugin = _march_plugin() if fused else None
    if plugin is None:
        if more is not None:
            depths, colors, densities = merge_samples(depths, colors, densities, more[2], *more[:2])
        return march(colors, densities, depths)
    if more is None:
        more_colors, more_densities = colors[:, :, :0], densities[:, :, :0]
        order = torch.empty(0, dtype=torch.long)
    else:
        more_colors, more_densities, more_depths = more
        depths, order = torch.sort(torch.cat([depths, more_depths], dim=-2), dim=-2)
        order = order[..., 0].contiguous()
    return _FusedMarch.apply(
        colors, densities, more_colors, more_densities, depths, order, float(depths.min()), float(depths.max()), plugin
    )
