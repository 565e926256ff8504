"""Conversions between 8-bit pictures and the networks' value ranges, shared by training, metrics and the scripts."""

import io

import numpy as np
import PIL.Image
import torch

from training.checkpoints.atomic_files import atomic_write


def to_uint8(images: torch.Tensor, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """images [N, C, H, W] in [low, high] -> uint8 [N, H, W, C]."""
    images = (images.to(torch.float32) - low) * (255 / (high - low))
    return images.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def depth_to_uint8(depth: torch.Tensor) -> np.ndarray:
    """depth [N, 1, H, W] -> uint8 [N, H, W, 1], near = bright, min-max normalized per image."""
    flat = depth.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return to_uint8((high - depth) / (high - low).clamp(min=1e-8), 0.0, 1.0)


def image_from_uint8(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 images [N, C, H, W] in 0..255 -> float32 [N, C, H, W] in [-1, 1] (the generator's range), on `device`."""
    return images.to(device).to(torch.float32) / 127.5 - 1


def mask_from_uint8(masks: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 masks [N, 1, H, W] in 0..255 -> float32 [N, 1, H, W] in [0, 1], on `device`."""
    return masks.to(device).to(torch.float32) / 255


def save_png(path: str, picture: np.ndarray) -> None:
    """uint8 [H, W, 3] (RGB) or [H, W] / [H, W, 1] (grey) -> a PNG at `path`, written atomically (atomic_write)."""
    if picture.ndim == 3 and picture.shape[-1] == 1:
        picture = picture[:, :, 0]
    buffer = io.BytesIO()
    PIL.Image.fromarray(picture).save(buffer, format='PNG')
    atomic_write(path, lambda file: file.write(buffer.getvalue()))
