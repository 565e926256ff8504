"""Conversions of network outputs to 8-bit pictures, shared by the training snapshots and the scripts."""

import numpy as np
import torch


def to_uint8(images: torch.Tensor, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """images [N, C, H, W] in [low, high] -> uint8 [N, H, W, C]."""
    images = (images.to(torch.float32) - low) * (255 / (high - low))
    return images.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def depth_to_uint8(depth: torch.Tensor) -> np.ndarray:
    """depth [N, 1, H, W] -> uint8 [N, H, W, 1], near = bright, min-max normalized per image."""
    flat = depth.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return to_uint8((high - depth) / (high - low).clamp(min=1e-8), 0.0, 1.0)
