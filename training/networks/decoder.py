"""The small MLP that turns averaged tri-grid features into density and a feature vector (docs/method.md §3.5)."""

import numpy as np
import torch

from torch_utils import persistence
from training.networks.stylegan2 import FullyConnectedLayer

ACTIVATIONS = ('none', 'sigmoid', 'lrelu')

# Without autograd the points go through the MLP in chunks of this many rows: the MLP is bound
# by memory traffic, and chunks keep its intermediates in cache.
INFERENCE_CHUNK = 32768


@persistence.persistent_class
class TriGridDecoder(torch.nn.Module):
    """FC -> softplus -> FC: tri-grid features [.., C] -> raw density [.., 1] and features [.., out_channels]."""

    def __init__(
        self,
        in_channels: int = 32,  # features per tri-grid plane
        hidden_channels: int = 64,  # width of the hidden layer
        out_channels: int = 32,  # feature channels handed to the volume renderer
        activation: str = 'none',  # 'none' (published), 'sigmoid' (EG3D) or 'lrelu'
        lr_multiplier: float = 1.0,  # learning-rate multiplier of both layers
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f'decoder activation {activation!r}: expected one of {", ".join(ACTIVATIONS)}')
        self.activation = activation
        self.out_channels = out_channels
        self.hidden = FullyConnectedLayer(in_channels, hidden_channels, lr_multiplier=lr_multiplier)
        self.out = FullyConnectedLayer(hidden_channels, 1 + out_channels, lr_multiplier=lr_multiplier)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features [B, M, C] -> {'sigma': [B, M, 1] raw density, 'rgb': [B, M, out_channels]}."""
        batch, num_points, channels = features.shape
        flat = features.reshape(batch * num_points, channels)
        if torch.is_grad_enabled() or flat.shape[0] <= INFERENCE_CHUNK:
            x = self._mlp(flat)
        else:
            x = torch.cat([self._mlp(chunk) for chunk in flat.split(INFERENCE_CHUNK)])
        x = x.reshape(batch, num_points, -1)
        sigma, rgb = x[..., :1], x[..., 1:]
        if self.activation == 'sigmoid':
            rgb = torch.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001
        elif self.activation == 'lrelu':
            rgb = torch.nn.functional.leaky_relu(rgb, 0.2) * np.sqrt(2)
        return {'sigma': sigma, 'rgb': rgb}

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in_channels] -> [N, 1 + out_channels]"""
        return self.out(torch.nn.functional.softplus(self.hidden(x)))
