"""Super-resolution heads that turn the low-resolution rendering into the output image.

Each head takes the raw RGB image and the 32-channel feature image from the volume renderer,
resizes both to its input resolution when the rendering resolution differs, and runs StyleGAN2
synthesis blocks whose skip RGB path starts from the raw image. Every layer uses the last w.

- `SuperresolutionHybrid2X`:   64 -> 128 (block at 64 without upsampling, then 128).
- `SuperresolutionHybrid4X`:  128 -> 256 (block at 128 without upsampling, then 256).
- `SuperresolutionHybrid8XDC`: 128 -> 512 (256 channels at 256, then 128 channels at 512).
- `SuperresolutionSmall`: a configurable light head for CPU presets (e.g. 32 -> 64).
"""

import numpy as np
import torch

from torch_utils import misc, persistence
from training.networks.stylegan2 import SynthesisBlock

_WS_PER_BLOCK = 3  # conv0, conv1 and torgb of one SynthesisBlock.


def _resize(x: torch.Tensor, resolution: int, antialias: bool) -> torch.Tensor:
    """x [B, C, r, r] -> [B, C, resolution, resolution] (bilinear, align_corners False); identity when r == resolution."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return torch.nn.functional.interpolate(
        x, size=(resolution, resolution), mode='bilinear', align_corners=False, antialias=antialias
    )


class _SuperresolutionBase(torch.nn.Module):
    """Shared forward of the heads: resize the inputs, then run `self.blocks` on the last w."""

    def _init_common(
        self, channels: int, img_resolution: int, input_resolution: int, w_dim: int, sr_antialias: bool, noise_mode: str
    ):
        if noise_mode not in ('random', 'const', 'none'):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        self.channels = channels
        self.img_resolution = img_resolution
        self.input_resolution = input_resolution
        self.w_dim = w_dim
        self.sr_antialias = sr_antialias
        self.noise_mode = noise_mode

    def _blocks(self) -> list:
        return [getattr(self, name) for name in self.block_names]

    def forward(
        self,
        rgb: torch.Tensor,
        x: torch.Tensor,
        ws: torch.Tensor,
        noise_mode: str | None = None,
        force_fp32: bool = False,
        fused_modconv=None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """rgb [B, 3, r, r], x [B, channels, r, r], ws [B, N, w_dim] -> image [B, 3, img_resolution, img_resolution]

        Only ws[:, -1] is used. noise_mode: None = the head's own `noise_mode`.
        """
        misc.assert_shape(rgb, [None, 3, None, None])
        misc.assert_shape(x, [rgb.shape[0], self.channels, rgb.shape[2], rgb.shape[3]])
        misc.assert_shape(ws, [rgb.shape[0], None, self.w_dim])
        noise_mode = self.noise_mode if noise_mode is None else noise_mode
        ws = ws[:, -1:, :].repeat(1, _WS_PER_BLOCK, 1)
        x = _resize(x, self.input_resolution, self.sr_antialias)
        rgb = _resize(rgb, self.input_resolution, self.sr_antialias)
        for block in self._blocks():
            x, rgb = block(
                x,
                rgb,
                ws,
                force_fp32=force_fp32,
                fused_modconv=fused_modconv,
                update_emas=update_emas,
                noise_mode=noise_mode,
            )
        return rgb


def _hybrid_block_kwargs(w_dim: int, sr_num_fp16_res: int, fused_modconv_default, cpu_bf16: bool) -> dict:
    # The published heads run every block in fp16 (clamped at 256) whenever any SR fp16 is requested.
    use_fp16 = sr_num_fp16_res > 0
    return dict(
        w_dim=w_dim,
        img_channels=3,
        use_fp16=use_fp16,
        conv_clamp=(256 if use_fp16 else None),
        fused_modconv_default=fused_modconv_default,
        cpu_bf16=cpu_bf16,
    )


class _SuperresolutionHybrid(_SuperresolutionBase):
    """EG3D head pair: 128 channels at the input resolution (no upsampling), 64 channels at twice that.

    Subclasses name their output resolution (`output_resolution`); the input is half of it.
    """

    output_resolution: int

    def __init__(
        self,
        channels: int,  # Channels of the feature image x (32).
        img_resolution: int,  # Output resolution; must be the head's output_resolution.
        sr_num_fp16_res: int = 0,  # > 0: fp16 blocks with conv clamp 256 (fp16 on CUDA only).
        sr_antialias: bool = True,  # Antialias when resizing the inputs down to the input resolution.
        fused_modconv_default='inference_only',  # See SynthesisBlock.
        noise_mode: str = 'none',  # Default noise mode of the blocks.
        w_dim: int = 512,  # Intermediate latent (w) dimensionality.
        cpu_bf16: bool = False,  # On CPU, run the convolutions in bfloat16?
    ):
        if img_resolution != self.output_resolution:
            raise ValueError(
                f'{type(self).__name__} produces {self.output_resolution}x{self.output_resolution} '
                f'images, got img_resolution={img_resolution}'
            )
        super().__init__()
        input_resolution = img_resolution // 2
        self._init_common(channels, img_resolution, input_resolution, w_dim, sr_antialias, noise_mode)
        kwargs = _hybrid_block_kwargs(w_dim, sr_num_fp16_res, fused_modconv_default, cpu_bf16)
        self.block0 = SynthesisBlock(channels, 128, resolution=input_resolution, is_last=False, up=1, **kwargs)
        self.block1 = SynthesisBlock(128, 64, resolution=img_resolution, is_last=True, **kwargs)
        self.block_names = ['block0', 'block1']


@persistence.persistent_class
class SuperresolutionHybrid2X(_SuperresolutionHybrid):
    """EG3D super-resolution head 64 -> 128: 128 channels at 64 (no upsampling), 64 channels at 128."""

    output_resolution = 128


@persistence.persistent_class
class SuperresolutionHybrid4X(_SuperresolutionHybrid):
    """EG3D super-resolution head 128 -> 256: 128 channels at 128 (no upsampling), 64 channels at 256."""

    output_resolution = 256


@persistence.persistent_class
class SuperresolutionHybrid8XDC(_SuperresolutionBase):
    """EG3D super-resolution head 128 -> 512 with doubled channels: 256 channels at 256, 128 at 512."""

    def __init__(
        self,
        channels: int,  # Channels of the feature image x (32).
        img_resolution: int,  # Output resolution; must be 512.
        sr_num_fp16_res: int = 0,  # > 0: fp16 blocks with conv clamp 256 (fp16 on CUDA only).
        sr_antialias: bool = True,  # Antialias when resizing the inputs down to 128.
        fused_modconv_default='inference_only',  # See SynthesisBlock.
        noise_mode: str = 'none',  # Default noise mode of the blocks.
        w_dim: int = 512,  # Intermediate latent (w) dimensionality.
        cpu_bf16: bool = False,  # On CPU, run the modulated convolutions in bfloat16?
    ):
        if img_resolution != 512:
            raise ValueError(f'SuperresolutionHybrid8XDC produces 512x512 images, got img_resolution={img_resolution}')
        super().__init__()
        self._init_common(channels, img_resolution, 128, w_dim, sr_antialias, noise_mode)
        kwargs = _hybrid_block_kwargs(w_dim, sr_num_fp16_res, fused_modconv_default, cpu_bf16)
        self.block0 = SynthesisBlock(channels, 256, resolution=256, is_last=False, **kwargs)
        self.block1 = SynthesisBlock(256, 128, resolution=512, is_last=True, **kwargs)
        self.block_names = ['block0', 'block1']


@persistence.persistent_class
class SuperresolutionSmall(_SuperresolutionBase):
    """Light super-resolution head for CPU presets: one 2x-upsampling SynthesisBlock per octave.

    With input_resolution == img_resolution a single block without upsampling refines the image.
    Block widths follow the synthesis rule min(channel_base // res, channel_max).
    """

    def __init__(
        self,
        channels: int,  # Channels of the feature image x.
        img_resolution: int,  # Output resolution (input_resolution times a power of two).
        input_resolution: int = 32,  # Resolution the inputs are resized to.
        sr_num_fp16_res: int = 0,  # Run the highest `sr_num_fp16_res` blocks in fp16 (CUDA only).
        sr_antialias: bool = True,  # Antialias when resizing the inputs down.
        channel_base: int = 4096,  # Block channels at resolution r: min(channel_base // r, channel_max).
        channel_max: int = 64,  # Maximum block width.
        fused_modconv_default='inference_only',  # See SynthesisBlock.
        noise_mode: str = 'none',  # Default noise mode of the blocks.
        w_dim: int = 512,  # Intermediate latent (w) dimensionality.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-conv_clamp (None = no clamp).
        cpu_bf16: bool = False,  # On CPU, run the modulated convolutions in bfloat16?
    ):
        factor = img_resolution // input_resolution
        if img_resolution % input_resolution != 0 or factor != 2 ** int(np.log2(factor)):
            raise ValueError(
                f'SuperresolutionSmall: img_resolution {img_resolution} must be input_resolution '
                f'{input_resolution} times a power of two'
            )
        super().__init__()
        self._init_common(channels, img_resolution, input_resolution, w_dim, sr_antialias, noise_mode)
        if factor == 1:
            resolutions, ups = [img_resolution], [1]
        else:
            resolutions = [input_resolution * 2 ** (i + 1) for i in range(int(np.log2(factor)))]
            ups = [2] * len(resolutions)
        self.block_names = []
        in_channels = channels
        for idx, (res, up) in enumerate(zip(resolutions, ups)):
            out_channels = min(channel_base // res, channel_max)
            block = SynthesisBlock(
                in_channels,
                out_channels,
                w_dim=w_dim,
                resolution=res,
                img_channels=3,
                is_last=(idx == len(resolutions) - 1),
                up=up,
                use_fp16=(idx >= len(resolutions) - sr_num_fp16_res),
                conv_clamp=conv_clamp,
                fused_modconv_default=fused_modconv_default,
                cpu_bf16=cpu_bf16,
            )
            setattr(self, f'block{idx}', block)
            self.block_names.append(f'block{idx}')
            in_channels = out_channels
