"""Pose MLPs and the generator's pose branch: (z, camera) -> body pose, mirror-canonicalized.

The generator does not read body poses from labels while training; it predicts the neck and
head pose of each sample from its latent and its rendering camera. Portraits are left/right
symmetric, so the branch only learns one half of the camera sphere: a camera on the subject's
left (x >= 0) is mirrored to the right before the MLP, and the predicted pose is mirrored back.
This makes the branch exactly mirror-equivariant, `branch(z, flip_camera(c)) ==
flip_pose(branch(z, c))`, for every camera off the x = 0 plane.
"""

import torch

from torch_utils import misc, persistence
from training.data.camera_utils import flip_camera, flip_pose, is_left
from training.networks.stylegan2 import FullyConnectedLayer


@persistence.persistent_class
class PoseMLP(torch.nn.Module):
    """Equalized-LR MLP: hidden FC layers with leaky ReLU, then a linear FC to the pose."""

    def __init__(
        self,
        in_features: int,  # Input width (features + camera).
        hidden=(128, 32),  # Widths of the hidden layers, in order; () = a single linear layer.
        out_features: int = 6,  # Output width (the body pose).
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        widths = [in_features, *hidden]
        self.num_layers = len(widths)
        for idx in range(len(hidden)):
            setattr(self, f'fc{idx}', FullyConnectedLayer(widths[idx], widths[idx + 1], activation='lrelu'))
        setattr(self, f'fc{len(hidden)}', FullyConnectedLayer(widths[-1], out_features, activation='linear'))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_features] -> [B, out_features]"""
        misc.assert_shape(x, [None, self.in_features])
        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)
        return x


@persistence.persistent_class
class GeneratorPoseBranch(torch.nn.Module):
    """The generator's body-pose predictor: concat(z, canonical camera) -> MLP -> pose, mirrored back.

    There is no output scale: at initialization the poses have roughly unit spread per
    component, as in the published method, and the pose prior of the first training images
    pulls them to the dataset's coarse poses.

    With use_camera=False the pose is a function of z alone: the MLP's camera inputs are zero and
    nothing is mirrored (docs/method.md §6.1). That suits data whose body poses do not depend
    on the camera, where a branch that sees the camera ties the pose to it.
    """

    def __init__(
        self,
        z_dim: int,  # Latent dimensionality.
        c_dim: int = 25,  # Camera label size (cam2world 16 + intrinsics 9).
        pose_dim: int = 6,  # Body pose size (neck and head axis-angles).
        hidden=(128, 32),  # Widths of the hidden layers.
        use_camera: bool = True,  # False: the pose depends on z only.
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.pose_dim = pose_dim
        self.use_camera = bool(use_camera)
        self.mlp = PoseMLP(z_dim + c_dim, hidden=tuple(hidden), out_features=pose_dim)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """z [B, z_dim], c [B, c_dim] (the rendering camera) -> pose [B, pose_dim]

        The MLP only sees cameras with x <= 0 (up to the rounding band of `is_left` at x = 0),
        or none without use_camera.
        """
        misc.assert_shape(z, [None, self.z_dim])
        misc.assert_shape(c, [z.shape[0], self.c_dim])
        if not self.use_camera:
            return self.mlp(torch.cat([z, torch.zeros_like(c, dtype=z.dtype)], dim=1))
        left = is_left(c).unsqueeze(1)  # [B, 1]
        canonical_c = torch.where(left, flip_camera(c), c)
        pose = self.mlp(torch.cat([z, canonical_c.to(z.dtype)], dim=1))
        return torch.where(left, flip_pose(pose), pose)

    def extra_repr(self) -> str:
        return f'z_dim={self.z_dim:d}, c_dim={self.c_dim:d}, pose_dim={self.pose_dim:d}, use_camera={self.use_camera}'
