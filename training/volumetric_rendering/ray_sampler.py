"""Camera rays through pixel centres."""

import torch

from training.data.camera_utils import split_label


def sample_rays(
    cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ray per pixel centre of a resolution x resolution image, rows first.

    cam2world [B, 4, 4] (OpenCV), intrinsics [B, 3, 3] (normalized by the image size, skew
    K[0, 1] allowed), resolution r -> origins [B, r*r, 3], directions [B, r*r, 3] (unit)
    Ray m = i*r + j goes through the pixel of row i and column j, i.e. through the normalized
    image point ((j + 0.5) / r, (i + 0.5) / r).
    """
    dtype, device = cam2world.dtype, cam2world.device
    centres = (torch.arange(resolution, dtype=dtype, device=device) + 0.5) / resolution
    rows, columns = torch.meshgrid(centres, centres, indexing='ij')
    image_u = columns.reshape(1, -1)
    image_v = rows.reshape(1, -1)

    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None]
    skew = intrinsics[:, 0, 1, None]
    # Inverse of u = fx*x + skew*y + cx, v = fy*y + cy at camera depth z = 1.
    camera_y = (image_v - cy) / fy
    camera_x = (image_u - cx - skew * camera_y) / fx
    camera_points = torch.stack([camera_x, camera_y, torch.ones_like(camera_x)], dim=-1)

    directions = torch.nn.functional.normalize(camera_points @ cam2world[:, :3, :3].transpose(1, 2), dim=-1)
    origins = cam2world[:, None, :3, 3].repeat(1, resolution * resolution, 1)
    return origins, directions


def sample_rays_from_label(c: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_rays` for 25-value camera labels.

    c [B, 25] -> origins [B, r*r, 3], directions [B, r*r, 3]
    """
    cam2world, intrinsics = split_label(c)
    return sample_rays(cam2world, intrinsics, resolution)
