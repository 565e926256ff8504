"""Volume rendering of a tri-grid: coarse stratified samples, importance samples, compositing."""

from collections.abc import Callable

import torch

from training.volumetric_rendering.importance import importance_depths
from training.volumetric_rendering.ray_marcher import march_sample_sets
from training.volumetric_rendering.trigrid import gather_layout, sample_trigrid, sample_trigrid_gather_layout

# decoder(features [B, M, C]) -> {'sigma': [B, M, 1] raw density, 'rgb': [B, M, C_out] features}
Decoder = Callable[[torch.Tensor], dict]
# deform(posed points [B, M, 3]) -> canonical points [B, M, 3]
Deform = Callable[[torch.Tensor], torch.Tensor]

CROPPED_DENSITY = -1000.0  # raw density of cropped samples: softplus(-1001) is 0 in float32


class VolumeRenderer(torch.nn.Module):
    """Renders per-ray features, depth and opacity from a tri-grid and a point decoder (no parameters)."""

    def __init__(
        self,
        ray_start: float,  # near depth of the coarse samples along each ray
        ray_end: float,  # far depth of the coarse samples
        depth_resolution: int,  # coarse samples per ray
        depth_resolution_importance: int,  # fine samples per ray (0: coarse only)
        box_warp: float,  # side of the tri-grid cube, centred at the origin
        crop_threshold: float = 0.1,  # samples with |x| or |z| > box_warp/2 - this get no density
        fast_sampler: bool = True,  # gather tri-grid sampler (False: F.grid_sample)
    ):
        super().__init__()
        self.ray_start = ray_start
        self.ray_end = ray_end
        self.depth_resolution = depth_resolution
        self.depth_resolution_importance = depth_resolution_importance
        self.box_warp = box_warp
        self.crop_threshold = crop_threshold
        self.fast_sampler = fast_sampler

    def extra_repr(self) -> str:
        return (
            f'ray_start={self.ray_start}, ray_end={self.ray_end}, depth_resolution={self.depth_resolution}, '
            f'depth_resolution_importance={self.depth_resolution_importance}, box_warp={self.box_warp}, '
            f'crop_threshold={self.crop_threshold}, fast_sampler={self.fast_sampler}'
        )

    def forward(
        self,
        planes: torch.Tensor,
        decoder: Decoder,
        ray_origins: torch.Tensor,
        ray_dirs: torch.Tensor,
        deform: Deform | None = None,
        density_noise: float = 0.0,
        depth_resolution: int | None = None,
        depth_resolution_importance: int | None = None,
        ray_start: float | None = None,
        ray_end: float | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render rays through the tri-grid.

        planes [B, 3, C, D, H, W], ray_origins [B, R, 3], ray_dirs [B, R, 3] (unit directions)
        -> features [B, R, C_out], depth [B, R, 1], acc [B, R, 1]

        Sample points live in posed space; `deform` (if given) maps them to the canonical space of
        the tri-grid, separately for the coarse and the fine samples, and the crop is applied to
        the canonical coordinates. `density_noise` is the standard deviation of Gaussian noise
        added to the raw densities. The sample counts and the ray range can be overridden per call.
        `deterministic` removes the coarse jitter and spaces the fine samples evenly in the CDF;
        otherwise `generator` drives all randomness.
        """
        num_coarse = self.depth_resolution if depth_resolution is None else depth_resolution
        num_fine = (
            self.depth_resolution_importance if depth_resolution_importance is None else depth_resolution_importance
        )
        start = self.ray_start if ray_start is None else ray_start
        end = self.ray_end if ray_end is None else ray_end
        batch, num_rays, _ = ray_origins.shape
        grid = self._grid(planes)  # converted once for the coarse and the fine samples

        coarse_depths = stratified_depths(
            batch,
            num_rays,
            num_coarse,
            start,
            end,
            deterministic,
            generator,
            dtype=ray_origins.dtype,
            device=ray_origins.device,
        )
        coarse_rgb, coarse_sigma = self._evaluate_along_rays(
            grid, decoder, ray_origins, ray_dirs, coarse_depths, deform, density_noise, generator
        )
        if num_fine == 0:
            features, depth, _, acc = march_sample_sets(coarse_rgb, coarse_sigma, coarse_depths)
        else:
            with torch.no_grad():
                _, _, coarse_weights, _ = march_sample_sets(coarse_rgb, coarse_sigma, coarse_depths)
            fine_depths = importance_depths(
                coarse_depths, coarse_weights, num_fine, generator=generator, deterministic=deterministic
            )
            fine_rgb, fine_sigma = self._evaluate_along_rays(
                grid, decoder, ray_origins, ray_dirs, fine_depths, deform, density_noise, generator
            )
            features, depth, _, acc = march_sample_sets(
                coarse_rgb, coarse_sigma, coarse_depths, (fine_rgb, fine_sigma, fine_depths)
            )
        return features, depth, acc

    def sample_points(self, planes: torch.Tensor, decoder: Decoder, points: torch.Tensor) -> dict:
        """Decode the tri-grid at canonical points: no deformation, no crop, no noise (shape extraction).

        planes [B, 3, C, D, H, W], points [B, M, 3] -> {'sigma': [B, M, 1], 'rgb': [B, M, C_out]}
        """
        return decoder(self._plane_mean(self._grid(planes), points))

    def _grid(self, planes: torch.Tensor) -> torch.Tensor:
        """The tri-grid in the sampler's layout: `gather_layout` [B, H, W, 3, D, C] for the gather
        sampler, planes [B, 3, C, D, H, W] unchanged for grid_sample."""
        return gather_layout(planes) if self.fast_sampler else planes

    def _plane_mean(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """grid (see `_grid`), points [B, M, 3] -> mean feature over the planes [B, M, C]"""
        if self.fast_sampler:
            return sample_trigrid_gather_layout(grid, points, self.box_warp).mean(dim=1)
        return sample_trigrid(grid, points, self.box_warp, fast=False).mean(dim=1)

    def _evaluate_along_rays(
        self, grid, decoder, ray_origins, ray_directions, depths, deform, density_noise, generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the samples at `depths` along the rays, sampling `grid` (see `_grid`).

        ray_origins [B, R, 3], ray_directions [B, R, 3], depths [B, R, S, 1]
        -> rgb [B, R, S, C_out], sigma [B, R, S, 1] (raw, noised and cropped)
        """
        batch, num_rays, num_samples, _ = depths.shape
        points = (ray_origins[:, :, None] + depths * ray_directions[:, :, None]).reshape(batch, -1, 3)
        if deform is not None:
            points = deform(points)
        decoded = decoder(self._plane_mean(grid, points))
        sigma, rgb = decoded['sigma'], decoded['rgb']
        if density_noise > 0:
            sigma = sigma + density_noise * torch.randn(
                sigma.shape, generator=generator, dtype=sigma.dtype, device=sigma.device
            )
        limit = self.box_warp / 2 - self.crop_threshold
        outside = (points[..., 0:1].abs() > limit) | (points[..., 2:3].abs() > limit)
        sigma = sigma.masked_fill(outside, CROPPED_DENSITY)
        return rgb.reshape(batch, num_rays, num_samples, -1), sigma.reshape(batch, num_rays, num_samples, 1)


def stratified_depths(
    batch: int,
    num_rays: int,
    num_samples: int,
    ray_start: float,
    ray_end: float,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
    device=None,
) -> torch.Tensor:
    """Coarse sample depths t_k = start + k*delta + U(0, 1)*delta, delta = (end - start)/(S - 1),
    with independent jitter per sample (the last may pass `ray_end`); U = 0 when `deterministic`.

    -> depths [batch, num_rays, num_samples, 1]
    """
    delta = (ray_end - ray_start) / (num_samples - 1)
    depths = ray_start + delta * torch.arange(num_samples, dtype=dtype, device=device).reshape(1, 1, -1, 1)
    depths = depths.expand(batch, num_rays, num_samples, 1)
    if deterministic:
        return depths.contiguous()
    return depths + delta * torch.rand(batch, num_rays, num_samples, 1, generator=generator, dtype=dtype, device=device)
