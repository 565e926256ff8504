"""Inversion of a real portrait: the latent (and optionally a tuned generator) that re-renders it.

Two stages, as in the projectors of StyleGAN2/EG3D and in pivotal tuning (PTI):
1. `optimize_latent`: w (one vector for every layer) or w+ (one per layer), from the mean latent
   w_avg, with Adam, a learning rate that ramps up and then down (cosine), and Gaussian noise on w
   that fades over the first 3/4 of the steps. The body pose is given (or predicted by D) and can
   be refined along with w.
2. `tune_generator`: the generator's weights around that fixed latent (the pivot), with a locality
   term that keeps the tuned generator's renders of latents near the pivot equal to the original's.

The reconstruction loss compares the render with the photo inside the person mask only: a pixel
term on the final and the raw image, a mask term (rendered alpha against the photo's mask) and a
perceptual term from the activations of the snapshot's own discriminator trunk. D's trunk is the
one image network every snapshot carries, it was trained on exactly this domain and resolution,
and it needs no weights from elsewhere (nothing is downloaded).
"""

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.data.camera_utils import frontal_camera
from training.engines.render_check import synthesis
from training.networks.d_input import resize_image


@dataclasses.dataclass
class InversionConfig:
    """Settings of both stages; the defaults follow the published projectors where they exist."""

    w_steps: int = 500  # Steps of the latent optimization.
    w_plus: bool = False  # Optimize one w per layer (w+) instead of one w for all.
    w_lr: float = 0.05  # Peak learning rate of w.
    w_noise: float = 0.05  # Initial noise on w, in units of the latent's std; fades to 0 at 3/4 of the steps.
    lr_rampup: float = 0.05  # Fraction of the steps over which the learning rate ramps up.
    lr_rampdown: float = 0.25  # Fraction of the steps over which it ramps down (cosine).
    refine_pose: bool = False  # Optimize the body pose along with w.
    pose_lr: float = 0.01  # Peak learning rate of the pose (radians).
    pti_steps: int = 0  # Steps of pivotal tuning; 0 skips it.
    pti_lr: float = 3e-4  # Learning rate of the generator's weights.
    locality_weight: float = 1.0  # Weight of PTI's locality term; 0 turns it off.
    locality_alpha: float = 30.0  # Distance from the pivot of the locality term's latents.
    pixel_weight: float = 1.0  # Masked mean squared error, final and raw image.
    mask_weight: float = 1.0  # Mean squared error of the rendered alpha against the mask.
    perceptual_weight: float = 1.0  # Masked distance of D's trunk activations.


@dataclasses.dataclass
class Target:
    """What a render is compared with, at the generator's two resolutions.

    image [1, 3, S, S] in [-1, 1], mask [1, 1, S, S] in [0, 1] (S = G.img_resolution);
    image_raw [1, 3, r, r], mask_raw [1, 1, r, r] (r = G.neural_rendering_resolution): the losses
    look inside these masks only; alpha [1, 1, r, r]: the alpha the render should have.
    """

    image: torch.Tensor
    mask: torch.Tensor
    image_raw: torch.Tensor
    mask_raw: torch.Tensor
    alpha: torch.Tensor


@dataclasses.dataclass
class StageResult:
    """What a stage ended with; `interrupted` when Ctrl-C stopped it early (the values are the last step's)."""

    ws: torch.Tensor  # [1, num_ws, w_dim]
    pose: torch.Tensor  # [1, 6]
    losses: list  # per step: {'total': float, 'pixel': ..., 'mask': ..., 'perceptual': ..., ...}
    interrupted: bool = False


def prepare_target(G: torch.nn.Module, photo: torch.Tensor, mask: torch.Tensor) -> Target:
    """photo [1, 3, H, H] in [-1, 1], mask [1, 1, H, H] in [0, 1] -> Target at G's resolutions."""
    resolution, raw = G.img_resolution, G.neural_rendering_resolution
    mask_raw = resize_image(mask, raw).clamp(0, 1)
    return Target(
        image=resize_image(photo, resolution),
        mask=resize_image(mask, resolution).clamp(0, 1),
        image_raw=resize_image(photo, raw),
        mask_raw=mask_raw,
        alpha=mask_raw,
    )


def render_target(out: dict) -> Target:
    """A render (G.synthesis' dict) as a target compared everywhere, its alpha included -> Target."""
    image, raw = out['image'].detach(), out['image_raw'].detach()
    return Target(
        image=image,
        mask=torch.ones_like(image[:, :1]),
        image_raw=raw,
        mask_raw=torch.ones_like(raw[:, :1]),
        alpha=out['image_mask'].detach(),
    )


def render(G: torch.nn.Module, ws: torch.Tensor, camera: torch.Tensor, pose: torch.Tensor) -> dict:
    """ws [1, num_ws, w_dim], camera [1, 25], pose [1, 6] -> G.synthesis' dict, posed, without noise or sample jitter."""
    return synthesis(G, ws, camera, pose_params=pose, noise_mode='const', deterministic=True)


def discriminator_activations(D: torch.nn.Module, img_dict: dict) -> list:
    """The outputs of D's trunk blocks, from the finest to 8x8.

    img_dict {'image' [B, 3, S, S], 'image_raw' [B, 3, r, r], 'image_mask' [B, 1, r, r]} -> [[B, C_k, S_k, S_k], ...]
    """
    x, img = None, D.build_input(img_dict)
    activations = []
    for resolution in D.block_resolutions:
        x, img = getattr(D, f'b{resolution}')(x, img, force_fp32=True)
        activations.append(x)
    return activations


def perceptual_distance(D: torch.nn.Module, a: dict, b: dict) -> torch.Tensor:
    """Mean over D's trunk blocks of the squared distance of channel-normalized activations (as LPIPS
    does with VGG, without learned weights). a, b: image dicts as in `discriminator_activations` -> [B]."""
    distances = []
    for x, y in zip(discriminator_activations(D, a), discriminator_activations(D, b)):
        x, y = F.normalize(x.float(), dim=1, eps=1e-8), F.normalize(y.float(), dim=1, eps=1e-8)
        distances.append((x - y).square().sum(dim=1).mean(dim=(1, 2)))
    return torch.stack(distances).mean(dim=0)


def masked_images(out: dict, target: Target) -> tuple:
    """A render and its target with everything outside the target's masks set to 0 (grey), so that only the person
    counts -> (fake, real): image dicts {'image', 'image_raw', 'image_mask'} of the render's batch and of the target."""
    fake = {
        'image': out['image'] * target.mask,
        'image_raw': out['image_raw'] * target.mask_raw,
        'image_mask': out['image_mask'],
    }
    real = {
        'image': target.image * target.mask,
        'image_raw': target.image_raw * target.mask_raw,
        'image_mask': target.alpha,
    }
    return fake, real


def masked_errors(fake: dict, real: dict) -> tuple:
    """The pixel and alpha terms per render: fake, real from masked_images -> (pixel [B], mask [B]), mean squared
    errors (pixel: the final image's plus the raw image's)."""
    pixel = (fake['image'] - real['image']).square().mean(dim=(1, 2, 3))
    pixel = pixel + (fake['image_raw'] - real['image_raw']).square().mean(dim=(1, 2, 3))
    mask = (fake['image_mask'] - real['image_mask']).square().mean(dim=(1, 2, 3))
    return pixel, mask


def reconstruction_loss(out: dict, target: Target, D: torch.nn.Module | None, config: InversionConfig) -> tuple:
    """The masked loss of one render against a target.

    out: G.synthesis' dict (image [1, 3, S, S], image_raw [1, 3, r, r], image_mask [1, 1, r, r]) ->
      (total [] with gradients, {'total', 'pixel', 'mask', 'perceptual'} as floats)
    The perceptual term needs D; without it, it is 0.
    """
    fake, real = masked_images(out, target)
    pixel, mask = (term.mean() for term in masked_errors(fake, real))
    perceptual = torch.zeros([], device=pixel.device)
    if D is not None and config.perceptual_weight > 0:
        perceptual = perceptual_distance(D, fake, real).mean()
    total = config.pixel_weight * pixel + config.mask_weight * mask + config.perceptual_weight * perceptual
    parts = {
        name: float(value.detach())
        for name, value in dict(total=total, pixel=pixel, mask=mask, perceptual=perceptual).items()
    }
    return total, parts


def _learning_rate(step: int, steps: int, peak: float, config: InversionConfig) -> float:
    """The ramped learning rate at `step` of `steps`: linear ramp-up, flat, cosine ramp-down."""
    t = step / max(steps, 1)
    ramp = min(1.0, (1.0 - t) / config.lr_rampdown) if config.lr_rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if config.lr_rampup > 0:
        ramp = ramp * min(1.0, t / config.lr_rampup)
    return peak * ramp


@torch.no_grad()
def latent_statistics(G: torch.nn.Module, num_samples: int = 1000, seed: int = 0) -> tuple:
    """The mean latent and the latent's scalar spread, both of the conditioning the tools use (frontal camera,
    zero pose) -> (w_avg [1, 1, w_dim], std: float)."""
    device = G.mapping_network.w_avg.device
    z = torch.randn([num_samples, G.z_dim], generator=torch.Generator().manual_seed(seed)).to(device)
    w = G.mapping(z, frontal_camera(num_samples, device=device))[:, :1]
    w_avg = G.mapping_network.w_avg.reshape(1, 1, -1)
    return w_avg.clone(), float(((w - w_avg).square().sum() / num_samples).sqrt())


def _run_steps(optimizer: torch.optim.Optimizer, steps: int, name: str, progress: bool, loss_at) -> tuple:
    """`steps` optimizer steps on loss_at(step) -> (total [] with gradients, parts dict), with a progress bar.

    -> (the parts of every step taken, whether Ctrl-C ended the loop early)
    """
    losses, interrupted = [], False
    bar = tqdm(range(steps), desc=name, unit='step', disable=not progress)
    try:
        for step in bar:
            total, parts = loss_at(step)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            losses.append(parts)
            bar.set_postfix(loss=f'{parts["total"]:.4f}')
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    return losses, interrupted


def optimize_latent(
    G: torch.nn.Module,
    D: torch.nn.Module | None,
    target: Target,
    camera: torch.Tensor,
    pose: torch.Tensor,
    config: InversionConfig,
    progress: bool = True,
    seed: int = 0,
) -> StageResult:
    """Stage 1: the latent (w or w+) that renders `target` from `camera` in `pose`.

    camera [1, 25], pose [1, 6] -> StageResult with ws [1, num_ws, w_dim] and the (possibly refined) pose.
    G and D are not changed. Ctrl-C ends the stage early with the current values.
    """
    w_avg, w_std = latent_statistics(G)
    w = w_avg.expand(1, G.num_ws if config.w_plus else 1, -1).clone().requires_grad_(True)
    pose = pose.detach().clone().requires_grad_(config.refine_pose)
    params = [{'params': [w], 'lr': config.w_lr}]
    if config.refine_pose:
        params.append({'params': [pose], 'lr': config.pose_lr})
    optimizer = torch.optim.Adam(params, betas=(0.9, 0.999))
    noise = torch.Generator(device='cpu').manual_seed(seed)

    def loss_at(step: int) -> tuple:
        fade = max(0.0, 1.0 - step / (0.75 * config.w_steps))
        for group, peak in zip(optimizer.param_groups, (config.w_lr, config.pose_lr)):
            group['lr'] = _learning_rate(step, config.w_steps, peak, config)
        w_noise = torch.randn(w.shape, generator=noise).to(w.device) * (w_std * config.w_noise * fade**2)
        ws = (w + w_noise).expand(1, G.num_ws, -1)
        return reconstruction_loss(render(G, ws, camera, pose), target, D, config)

    losses, interrupted = _run_steps(optimizer, config.w_steps, 'w+' if config.w_plus else 'w', progress, loss_at)
    return StageResult(
        ws=w.detach().expand(1, G.num_ws, -1).clone(), pose=pose.detach(), losses=losses, interrupted=interrupted
    )


def tune_generator(
    G: torch.nn.Module,
    D: torch.nn.Module | None,
    target: Target,
    ws: torch.Tensor,
    camera: torch.Tensor,
    pose: torch.Tensor,
    config: InversionConfig,
    progress: bool = True,
    seed: int = 0,
) -> tuple:
    """Stage 2, pivotal tuning: a copy of G whose render of the fixed latent `ws` from `camera` in `pose` matches `target`.

    ws [1, num_ws, w_dim], camera [1, 25], pose [1, 6] -> (tuned copy of G, in eval mode without gradients; StageResult)
    Locality term: per step, a latent w_r at distance `locality_alpha` from the pivot towards a random
    latent; the tuned G's render of w_r is pulled to the original G's (all terms, unmasked).
    """
    tuned = copy.deepcopy(G).train().requires_grad_(True)
    trainable = [p for name, p in tuned.named_parameters() if not name.startswith(('mapping_network.', 'pose_branch.'))]
    optimizer = torch.optim.Adam(trainable, lr=config.pti_lr)
    rng = torch.Generator().manual_seed(seed)
    device = ws.device
    condition = frontal_camera(1, device=device)

    def loss_at(step: int) -> tuple:
        total, parts = reconstruction_loss(render(tuned, ws, camera, pose), target, D, config)
        if config.locality_weight > 0:
            with torch.no_grad():
                z = torch.randn([1, G.z_dim], generator=rng).to(device)
                direction = G.mapping(z, condition) - ws
                w_near = ws + config.locality_alpha * direction / direction.norm()
                reference = render_target(render(G, w_near, camera, pose))
            locality, locality_parts = reconstruction_loss(render(tuned, w_near, camera, pose), reference, D, config)
            total = total + config.locality_weight * locality
            parts = dict(parts, total=float(total.detach()), locality=locality_parts['total'])
        return total, parts

    losses, interrupted = _run_steps(optimizer, config.pti_steps, 'pti', progress, loss_at)
    return tuned.eval().requires_grad_(False), StageResult(ws=ws, pose=pose, losses=losses, interrupted=interrupted)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of two images in [-1, 1] (peak-to-peak 2), in dB. a, b [..., H, W]."""
    mse = float((a.double() - b.double()).square().mean())
    return float('inf') if mse == 0 else 10 * math.log10(4.0 / mse)
