"""The 3D-aware portrait generator: StyleGAN2 tri-grid backbone + volume renderer + background + super-resolution."""

import torch
import torch.nn.functional as F

from torch_utils import persistence
from training.body.body_model import BodyModel
from training.body.deformation import Deformer
from training.data.camera_utils import split_label
from training.networks import superresolution
from training.networks.decoder import TriGridDecoder
from training.networks.pose_branch import GeneratorPoseBranch
from training.networks.stylegan2 import MappingNetwork, SynthesisNetwork, ToRGBLayer
from training.volumetric_rendering.ray_sampler import sample_rays
from training.volumetric_rendering.renderer import VolumeRenderer
from training.volumetric_rendering.trigrid import planes_from_backbone

_HYBRID_HEADS = {  # name -> (class, the fixed input resolution of that head)
    'hybrid2x': (superresolution.SuperresolutionHybrid2X, 64),
    'hybrid4x': (superresolution.SuperresolutionHybrid4X, 128),
    'hybrid8xdc': (superresolution.SuperresolutionHybrid8XDC, 128),
}
SR_MODULES = (*_HYBRID_HEADS, 'small')  # the sr_module names


def build_body_model(source: str, box_warp: float) -> BodyModel:
    """'embedded' (the shipped upper body), 'smpl' (the default SMPL pickle path), or a .pkl / .npz path."""
    if source == 'embedded':
        return BodyModel.embedded(box_warp=box_warp)
    if source == 'smpl':
        return BodyModel.from_smpl_pickle(box_warp=box_warp)
    if source.endswith('.pkl'):
        return BodyModel.from_smpl_pickle(source, box_warp=box_warp)
    if source.endswith('.npz'):
        return BodyModel.from_npz(source, box_warp=box_warp)
    raise ValueError(f"body_model {source!r}: expected 'embedded', 'smpl', or a path to a .pkl or .npz file")


def raw_rgb(G: torch.nn.Module, features: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    """The raw image's colour of rendered features: ToRGB styled by the last w, or the first channels.

    features [B, C, H, W] (composited along rays, or sampled at points laid out as [B, C, M, 1]),
    ws [B, num_ws, w_dim] -> [B, img_channels, H, W], about [-1, 1].
    A function of the generator's attributes rather than a method, so that generators unpickled with
    older embedded sources (and the authors' models) colour meshes the way they render.
    """
    if G.torgb is not None:
        return G.torgb(features, ws[:, -1])
    return features[:, : G.img_channels]


def _build_superresolution(
    sr_module: str,
    channels: int,
    input_resolution: int,
    img_resolution: int,
    w_dim: int,
    channel_base: int,
    channel_max: int,
    num_fp16_res: int,
    conv_clamp: float | None,
    antialias: bool,
    noise_mode: str,
    cpu_bf16: bool,
) -> torch.nn.Module:
    """The super-resolution head named by `sr_module` (docs/method.md §3.8)."""
    if sr_module == 'small':
        return superresolution.SuperresolutionSmall(
            channels=channels,
            img_resolution=img_resolution,
            input_resolution=input_resolution,
            sr_num_fp16_res=num_fp16_res,
            sr_antialias=antialias,
            channel_base=channel_base,
            channel_max=channel_max,
            noise_mode=noise_mode,
            w_dim=w_dim,
            conv_clamp=conv_clamp,
            cpu_bf16=cpu_bf16,
        )
    head, head_input = _HYBRID_HEADS[sr_module]
    if input_resolution != head_input:
        raise ValueError(f'sr_module {sr_module!r} works from {head_input} px: set sr_input_resolution={head_input}')
    return head(
        channels=channels,
        img_resolution=img_resolution,
        sr_num_fp16_res=num_fp16_res,
        sr_antialias=antialias,
        noise_mode=noise_mode,
        w_dim=w_dim,
        cpu_bf16=cpu_bf16,
    )


@persistence.persistent_class
class TriPlaneGenerator(torch.nn.Module):
    """Maps (z, camera, body pose) to a portrait image, its low-resolution render, depth and alpha mask."""

    def __init__(
        self,
        z_dim: int = 512,  # latent size
        w_dim: int = 512,  # intermediate latent size
        c_dim: int = 25,  # camera label size (cam2world + intrinsics)
        pose_dim: int = 6,  # body pose size (neck + head axis-angle)
        c_scale: float = 1.0,  # scale of (camera, pose) before the mapping network
        map_depth: int = 2,  # mapping network layers
        img_resolution: int = 512,  # output image resolution
        img_channels: int = 3,  # output image channels
        triplane_resolution: int = 256,  # tri-grid plane resolution
        triplane_channels: int = 32,  # features per plane
        triplane_depth: int = 3,  # depth slices per plane
        channel_base: int = 32768,  # backbone channels = min(channel_base / res, channel_max)
        channel_max: int = 512,
        num_fp16_res: int = 0,  # backbone blocks in fp16 (CUDA only)
        conv_clamp: float | None = None,  # backbone activation clamp
        decoder_hidden: int = 64,  # decoder hidden width
        decoder_activation: str = 'none',  # decoder feature activation
        decoder_lr_mul: float = 1.0,  # decoder learning-rate multiplier
        use_background: bool = True,  # composite a 2D background feature map behind the head
        background_channel_base: int = 16384,
        use_torgb_raw: bool = True,  # raw image = ToRGB(features) instead of the first 3 features
        sr_module: str = 'hybrid8xdc',  # super-resolution head: one of SR_MODULES
        sr_input_resolution: int = 128,  # resolution the SR head (and the background) works from
        sr_channel_base: int = 32768,
        sr_channel_max: int = 512,
        sr_num_fp16_res: int = 4,
        sr_conv_clamp: float | None = 256,  # small head's clamp (the hybrid heads clamp at 256 iff fp16)
        sr_antialias: bool = True,
        sr_noise_mode: str = 'none',
        neural_rendering_resolution: int = 64,  # default rays per side; a call may override it
        ray_start: float = 2.25,  # near bound of the ray samples (m)
        ray_end: float = 3.3,  # far bound of the ray samples (m)
        depth_resolution: int = 48,  # coarse samples per ray
        depth_resolution_importance: int = 48,  # fine samples per ray
        box_warp: float = 1.0,  # side of the tri-grid cube (m)
        body_model: str = 'embedded',  # body driving the deformation: see build_body_model
        thickness: float = 0.25,  # samples this far (m) from every body triangle are not deformed
        deformation_backend: str = 'auto',  # nearest-triangle search: see nearest_face.BACKENDS
        cpu_bf16: bool = False,  # on CPU, run the 2D convolutions under a bfloat16 autocast
        pose_branch_camera: bool = True,  # the pose branch sees the camera (False: z only)
    ):
        super().__init__()
        if sr_module not in SR_MODULES:
            raise ValueError(f'sr_module {sr_module!r}: expected one of {", ".join(SR_MODULES)}')
        self.z_dim, self.w_dim, self.c_dim, self.pose_dim = z_dim, w_dim, c_dim, pose_dim
        self.c_scale = c_scale
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.triplane_channels, self.triplane_depth = triplane_channels, triplane_depth
        self.neural_rendering_resolution = neural_rendering_resolution
        self.box_warp = box_warp

        self.backbone = SynthesisNetwork(
            w_dim=w_dim,
            img_resolution=triplane_resolution,
            img_channels=3 * triplane_channels * triplane_depth,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
            fused_modconv_default='inference_only',
            cpu_bf16=cpu_bf16,
        )
        self.num_ws = self.backbone.num_ws
        self.mapping_network = MappingNetwork(
            z_dim=z_dim, c_dim=c_dim + pose_dim, w_dim=w_dim, num_ws=self.num_ws, num_layers=map_depth
        )
        self.background = None
        if use_background:
            self.background = SynthesisNetwork(
                w_dim=w_dim,
                img_resolution=sr_input_resolution,
                img_channels=triplane_channels,
                channel_base=background_channel_base,
                channel_max=channel_max,
                num_fp16_res=num_fp16_res,
                conv_clamp=conv_clamp,
                fused_modconv_default='inference_only',
                cpu_bf16=cpu_bf16,
            )
            if self.background.num_ws > self.num_ws:
                raise ValueError(
                    f'the background net needs {self.background.num_ws} ws but the backbone has '
                    f'{self.num_ws}: lower sr_input_resolution or raise triplane_resolution'
                )
        self.decoder = TriGridDecoder(
            in_channels=triplane_channels,
            hidden_channels=decoder_hidden,
            out_channels=triplane_channels,
            activation=decoder_activation,
            lr_multiplier=decoder_lr_mul,
        )
        self.torgb = ToRGBLayer(triplane_channels, img_channels, w_dim=w_dim) if use_torgb_raw else None
        self.pose_branch = GeneratorPoseBranch(
            z_dim=z_dim, c_dim=c_dim, pose_dim=pose_dim, use_camera=pose_branch_camera
        )
        self.deformer = Deformer(
            build_body_model(body_model, box_warp), thickness=thickness, backend=deformation_backend
        )
        self.renderer = VolumeRenderer(
            ray_start=ray_start,
            ray_end=ray_end,
            depth_resolution=depth_resolution,
            depth_resolution_importance=depth_resolution_importance,
            box_warp=box_warp,
        )
        self.superresolution = _build_superresolution(
            sr_module,
            channels=triplane_channels,
            input_resolution=sr_input_resolution,
            img_resolution=img_resolution,
            w_dim=w_dim,
            channel_base=sr_channel_base,
            channel_max=sr_channel_max,
            num_fp16_res=sr_num_fp16_res,
            conv_clamp=sr_conv_clamp,
            antialias=sr_antialias,
            noise_mode=sr_noise_mode,
            cpu_bf16=cpu_bf16,
        )

    def get_pose_params(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The body pose the generator chooses for latent z seen from camera c: z [B, z_dim], c [B, 25] -> [B, 6]."""
        return self.pose_branch(z, c)

    def conditioning(self, c: torch.Tensor, pose: torch.Tensor | None) -> torch.Tensor:
        """c [B, 25], pose [B, 6] or None (zeros) -> mapping condition [B, 31]."""
        if pose is None:
            pose = c.new_zeros([c.shape[0], self.pose_dim])
        return torch.cat([c, pose], dim=1) * self.c_scale

    def mapping(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        pose: torch.Tensor | None = None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """z [B, z_dim], c [B, 25], pose [B, 6] or None -> ws [B, num_ws, w_dim]."""
        return self.mapping_network(
            z,
            self.conditioning(c, pose),
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
            update_emas=update_emas,
        )

    def planes(self, ws: torch.Tensor, update_emas: bool = False, **synthesis_kwargs) -> torch.Tensor:
        """ws [B, num_ws, w_dim] -> tri-grid [B, 3, C, D, H, W]."""
        x = self.backbone(ws, update_emas=update_emas, **synthesis_kwargs)
        return planes_from_backbone(x, channels=self.triplane_channels, depth=self.triplane_depth)

    def synthesis(
        self,
        ws: torch.Tensor,
        c: torch.Tensor,
        neural_rendering_resolution: int | None = None,
        pose_params: torch.Tensor | None = None,
        ws_bcg: torch.Tensor | None = None,
        density_noise: float = 0.0,
        depth_resolution: int | None = None,
        depth_resolution_importance: int | None = None,
        ray_start: float | None = None,
        ray_end: float | None = None,
        update_emas: bool = False,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        planes: torch.Tensor | None = None,
        background: torch.Tensor | None = None,
        superresolve: bool = True,
        **synthesis_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Render the tri-grid of `ws` from camera `c`.

        ws [B, num_ws, w_dim], c [B, 25], pose_params [B, 6], ws_bcg [B, num_ws, w_dim] or None -> dict:
          image [B, 3, S, S] (S = img_resolution), image_raw [B, 3, r, r], image_depth [B, 1, r, r],
          image_mask [B, 1, r, r] (alpha), image_background [B, 3, r, r] (only with a background).
        With `pose_params` every ray sample is carried from the space posed by them to the canonical
        space of the tri-grid (docs/method.md §5); without them (None) the canonical head is rendered.
        `deterministic` renders without sample jitter; otherwise `generator` drives the jitter.
        synthesis_kwargs (noise_mode, force_fp32) go to the backbone and background nets.
        planes [B, 3, C, D, H, W] (self.planes(ws)) and background [B, C, S', S'] (the background net's output
        for ws_bcg, else ws) may be passed in when a caller already has them for these ws (an interactive
        viewer keeps them while only the camera or the pose changes). superresolve=False returns the raw
        image as `image` too (a quick preview), without running the super-resolution head.
        """
        r = neural_rendering_resolution or self.neural_rendering_resolution
        batch = ws.shape[0]
        deform = None if pose_params is None else self.deformer.for_pose(pose_params)
        if planes is None:
            planes = self.planes(ws, update_emas=update_emas, **synthesis_kwargs)
        cam2world, intrinsics = split_label(c)
        origins, dirs = sample_rays(cam2world, intrinsics, r)
        features, depth, acc = self.renderer(
            planes,
            self.decoder,
            origins,
            dirs,
            deform=deform,
            density_noise=density_noise,
            depth_resolution=depth_resolution,
            depth_resolution_importance=depth_resolution_importance,
            ray_start=ray_start,
            ray_end=ray_end,
            deterministic=deterministic,
            generator=generator,
        )
        features = features.permute(0, 2, 1).reshape(batch, -1, r, r)
        depth = depth.permute(0, 2, 1).reshape(batch, 1, r, r)
        acc = acc.permute(0, 2, 1).reshape(batch, 1, r, r)
        out = {}
        if self.background is not None:
            if background is None:
                bg_ws = ws if ws_bcg is None else ws_bcg
                background = self.background(
                    bg_ws[:, : self.background.num_ws], update_emas=update_emas, **synthesis_kwargs
                )
            if background.shape[-1] != r:
                background = F.interpolate(
                    background, size=(r, r), mode='bilinear', align_corners=False, antialias=True
                )
            features = features + (1 - acc) * background
            if self.torgb is not None:
                out['image_background'] = self.torgb(background, ws[:, -1])
        image_raw = raw_rgb(self, features, ws)
        sr_kwargs = {k: v for k, v in synthesis_kwargs.items() if k != 'noise_mode'}
        out['image'] = self.superresolution(image_raw, features, ws, **sr_kwargs) if superresolve else image_raw
        out['image_raw'] = image_raw
        out['image_depth'] = depth
        out['image_mask'] = acc * (1 + 2e-3) - 1e-3
        return out

    def sample_mixed(self, points: torch.Tensor, ws: torch.Tensor, **synthesis_kwargs) -> dict[str, torch.Tensor]:
        """Density and features at canonical points, no deformation and no crop.

        points [B, M, 3], ws [B, num_ws, w_dim] -> {'sigma': [B, M, 1], 'rgb': [B, M, C]}.
        """
        return self.renderer.sample_points(self.planes(ws, **synthesis_kwargs), self.decoder, points)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        pose_params: torch.Tensor | None = None,
        apply_def: bool = False,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        **synthesis_kwargs,
    ) -> dict[str, torch.Tensor]:
        """z [B, z_dim], c [B, 25], pose_params [B, 6] or None -> the dict of `synthesis`.

        Conditioned on (c, pose_params); rendered posed by pose_params when `apply_def`, else canonical.
        """
        ws = self.mapping(
            z,
            c,
            pose_params,
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
            update_emas=update_emas,
        )
        return self.synthesis(
            ws, c, pose_params=pose_params if apply_def else None, update_emas=update_emas, **synthesis_kwargs
        )


def build_generator(preset: dict, **overrides) -> TriPlaneGenerator:
    """Construct the generator of a preset (see training.presets.load_preset); overrides win."""
    return TriPlaneGenerator(**{**preset['generator'], **overrides})
