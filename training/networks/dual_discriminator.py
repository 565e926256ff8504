"""The pose-aware dual discriminator: a 7-channel StyleGAN2 discriminator with a body-pose head.

D sees the final image, the raw neural rendering and its alpha mask together (all at the final
resolution), so it can judge the super-resolved image against the 3D rendering it came from.
Its conv trunk also feeds a pose head that regresses the generator's body pose from fake
images; D is conditioned on the camera and on its own pose prediction, detached, so that the
adversarial loss never trains the pose head.

The pose head canonicalizes like the generator's pose branch: inputs seen from the subject's
left (camera x >= 0) are mirrored, together with their camera, before the trunk and the head,
and the predicted pose is mirrored back. Mirroring the camera as well as the image is this
project's choice (`mirror_camera=True`); the published method passes the unmirrored camera
(`mirror_camera=False`, the setting of discriminators converted from its checkpoints).
"""

import torch
import torch.nn.functional as F

from torch_utils import misc, persistence
from training.data.camera_utils import flip_camera, flip_pose, is_left
from training.networks.pose_branch import PoseMLP
from training.networks.stylegan2 import Discriminator


def flip_image_dict(img_dict: dict) -> dict:
    """Mirror every image of a discriminator input dict along its width.

    {'image' [B, C, S, S], 'image_raw' [B, C, r, r], 'image_mask' [B, 1, r, r]} -> same shapes
    """
    return {key: value.flip(-1) for key, value in img_dict.items()}


@persistence.persistent_class
class PoseAwareDualDiscriminator(Discriminator):
    """StyleGAN2 resnet discriminator on image ⊕ raw image ⊕ mask, conditioned on (camera, own pose).

    The inherited trunk (`b{res}` blocks, `b4`) reads the 7-channel input, so `img_channels`
    here counts the trunk's input channels; `mapping` embeds the 31-value (camera, pose)
    condition; `pose_branch` is the pose head.
    """

    # Discriminators pickled before the option existed are restored without running __init__.
    mirror_camera = True

    def __init__(
        self,
        *,
        c_dim: int = 25,  # Camera label size.
        pose_dim: int = 6,  # Body pose size (neck and head axis-angles).
        img_resolution: int,  # Resolution of the final image (a power of two >= 8).
        img_channels: int = 3,  # Channels of the final image and of the raw image.
        seg_channels: int = 1,  # Channels of the alpha mask.
        channel_base: int = 32768,  # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max: int = 512,  # Maximum number of channels in any block.
        num_fp16_res: int = 4,  # Run the highest `num_fp16_res` resolutions in fp16 (CUDA only).
        conv_clamp: float | None = 256,  # Clamp conv outputs to +-conv_clamp (None = no clamp).
        cmap_dim: int | None = None,  # Condition embedding size, None = channels at 4x4.
        mbstd_group_size: int | None = 4,  # Group size of the minibatch-std layer, None = whole batch.
        mbstd_num_channels: int = 1,  # Channels appended by the minibatch-std layer.
        mapping_layers: int = 8,  # Depth of the condition mapping network.
        pose_hidden=(2048, 512, 128, 32),  # Widths of the pose head's hidden layers.
        disc_c_noise: float = 0.0,  # Noise on the conditioning camera, in units of its batch std.
        freeze_layers: int = 0,  # Freeze this many trunk layers, counted from the input.
        mirror_camera: bool = True,  # Pose head: mirror the camera of left-side views along with the image.
        cpu_bf16: bool = False,  # On CPU, run the trunk's convolutions in bfloat16?
    ):
        super().__init__(
            c_dim=c_dim + pose_dim,
            img_resolution=img_resolution,
            img_channels=2 * img_channels + seg_channels,
            architecture='resnet',
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
            cmap_dim=cmap_dim,
            block_kwargs=dict(freeze_layers=freeze_layers, cpu_bf16=cpu_bf16),
            mapping_kwargs=dict(num_layers=mapping_layers),
            epilogue_kwargs=dict(mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels),
        )
        self.c_dim = c_dim
        self.pose_dim = pose_dim
        self.rgb_channels = img_channels
        self.seg_channels = seg_channels
        self.disc_c_noise = disc_c_noise
        self.mirror_camera = bool(mirror_camera)
        flat_features = self.b4.in_channels * self.b4.resolution**2
        self.pose_branch = PoseMLP(flat_features + c_dim, hidden=tuple(pose_hidden), out_features=pose_dim)

    def build_input(self, img_dict: dict) -> torch.Tensor:
        """The trunk input: image ⊕ raw image upsampled ⊕ mask upsampled and mapped to [-1, 1].

        {'image' [B, 3, S, S], 'image_raw' [B, 3, r, r], 'image_mask' [B, 1, r, r] in [0, 1]}
        -> [B, 7, S, S]
        """
        image, raw, mask = img_dict['image'], img_dict['image_raw'], img_dict['image_mask']
        size = self.img_resolution
        batch_size = image.shape[0]
        misc.assert_shape(image, [None, self.rgb_channels, size, size])
        misc.assert_shape(raw, [batch_size, self.rgb_channels, None, None])
        misc.assert_shape(mask, [batch_size, self.seg_channels, None, None])
        resize = dict(size=(size, size), mode='bilinear', align_corners=False, antialias=True)
        raw = F.interpolate(raw, **resize)
        seg = 2 * F.interpolate(mask, **resize) - 1
        return torch.cat([image, raw.to(image.dtype), seg.to(image.dtype)], dim=1)

    def features(self, img_dict: dict) -> torch.Tensor:
        """Trunk and epilogue features shared by the logit and the pose head.

        img_dict as in `build_input` -> flat [B, C4 * 16] (fp32)
        The minibatch-std layer couples samples within each group, so a sample's features depend
        on the others in its group.
        """
        return self.b4.get_flatten_x(self.trunk(self.build_input(img_dict)))

    def predict_pose(self, img_dict: dict, c: torch.Tensor) -> torch.Tensor:
        """Body pose of the subject in each image, mirror-canonicalized.

        img_dict as in `build_input`, c [B, 25] -> pose [B, 6]
        Samples seen from the left (is_left(c)) are mirrored, predicted from the right, and their
        pose mirrored back; their camera is mirrored too when `mirror_camera`, else the head reads
        it as given.
        """
        misc.assert_shape(c, [img_dict['image'].shape[0], self.c_dim])
        left = is_left(c)
        flipped = flip_image_dict(img_dict)
        canonical = {key: torch.where(left.reshape(-1, 1, 1, 1), flipped[key], img_dict[key]) for key in img_dict}
        canonical_c = torch.where(left.unsqueeze(1), flip_camera(c), c) if self.mirror_camera else c
        flat = self.features(canonical)
        pose = self.pose_branch(torch.cat([flat, canonical_c.to(flat.dtype)], dim=1))
        return torch.where(left.unsqueeze(1), flip_pose(pose), pose)

    def forward(self, img_dict: dict, c: torch.Tensor, update_emas: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """img_dict as in `build_input`, c [B, 25] -> (logits [B, 1], predicted pose [B, 6])

        The trunk runs twice: once on the canonicalized inputs for the pose, once on the inputs
        as given for the logit. The logit sees the pose only through the detached condition, so
        its gradients reach neither the pose head nor the first trunk pass.
        update_emas: accepted for a uniform call signature; the discriminator tracks nothing.
        """
        del update_emas
        pose = self.predict_pose(img_dict, c)
        flat = self.features(img_dict)
        if self.disc_c_noise > 0:
            c = c + torch.randn_like(c) * c.std(dim=0) * self.disc_c_noise
        cmap = self.mapping(None, torch.cat([c.to(flat.dtype), pose.detach()], dim=1))
        return self.b4(flat, cmap), pose

    def extra_repr(self) -> str:
        return (
            f'c_dim={self.c_dim:d}, pose_dim={self.pose_dim:d}, img_resolution={self.img_resolution:d}, '
            f'input_channels={self.img_channels:d}, mirror_camera={self.mirror_camera}'
        )
