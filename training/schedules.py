"""Training schedules: small pure functions of the image counter (docs/method.md §8, §7.5).

`cur_nimg` is always the absolute image counter (resume_kimg * 1000 + images trained in this
run), so that a resumed run continues every schedule where it stopped. The one exception is the
neural-rendering resolution, whose fade is measured from the resume point (docs/method.md §8.2).
"""

import math

import torch


def _fade_out(cur_nimg: int, fade_kimg: float) -> float:
    """1 at image 0, linearly down to 0 at fade_kimg thousand images, 0 after; 0 when fade_kimg == 0."""
    if fade_kimg <= 0:
        return 0.0
    return max(1.0 - cur_nimg / (fade_kimg * 1000), 0.0)


def blur_sigma(cur_nimg: int, blur_init_sigma: float, blur_fade_kimg: float) -> float:
    """Standard deviation (pixels) of the Gaussian blur on the discriminator's images (docs/method.md §7.1, §7.5)."""
    return blur_init_sigma * _fade_out(cur_nimg, blur_fade_kimg)


def density_noise(cur_nimg: int, fade_kimg: float) -> float:
    """Standard deviation of the noise added to raw densities while training G (docs/method.md §4.3, §8.1)."""
    return _fade_out(cur_nimg, fade_kimg)


def gpc_swap_prob(cur_nimg: int, gpc_reg_prob: float, gpc_reg_fade_kimg: float) -> float:
    """Probability that a sample is conditioned on its neighbour's (camera, pose) (docs/method.md §7.2).

    Starts at 1, so that early on the conditioning never matches the rendering and G cannot tie
    the 3D shape to the camera, and fades linearly to `gpc_reg_prob`; no fade when fade_kimg == 0.
    """
    alpha = 1.0 if gpc_reg_fade_kimg <= 0 else min(cur_nimg / (gpc_reg_fade_kimg * 1000), 1.0)
    return (1 - alpha) * 1.0 + alpha * gpc_reg_prob


def pose_prior_weight(cur_nimg: int, weight: float, hold_kimg: float, decay_kimg: float) -> float:
    """Weight of the G pose prior ||p_G - p_coarse||^2 (docs/method.md §7.6).

    `weight` until hold_kimg thousand images, then linearly down to 0 over decay_kimg thousand
    images (published: 0.5, hold 200, decay 200). Zero when weight <= 0.
    """
    if weight <= 0:
        return 0.0
    hold_nimg = hold_kimg * 1000
    if cur_nimg < hold_nimg:
        return float(weight)
    return weight * _fade_out(cur_nimg - hold_nimg, decay_kimg)


def rendering_resolution(cur_nimg: int, resume_nimg: int, initial: int, final: int | None, fade_kimg: float) -> int:
    """Neural rendering resolution r (docs/method.md §8.2): `initial` if `final` is None, else faded to `final`.

    The fade starts at the resume point, not at image 0, so that a stage resumed at a high image
    count (published stage 3) still fades gradually. Intermediate sizes (65, 66, ...) do occur.
    """
    if final is None:
        return int(initial)
    if fade_kimg <= 0:
        alpha = 1.0
    else:
        alpha = min(max((cur_nimg - resume_nimg) / (fade_kimg * 1000), 0.0), 1.0)
    return int(round(initial * (1 - alpha) + final * alpha))  # round() is half-to-even like numpy's rint


def ema_beta(batch_size: int, ema_kimg: float, ema_rampup: float | None, cur_nimg: int) -> float:
    """Decay of the exponential moving average of G and D per step of `batch_size` images (docs/method.md §8.3).

    The half-life is ema_kimg thousand images; with a rampup it is at most ema_rampup * cur_nimg,
    so that the average forgets the random initialization quickly at the start of training.
    """
    ema_nimg = ema_kimg * 1000
    if ema_rampup:
        ema_nimg = min(ema_nimg, ema_rampup * cur_nimg)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def blur_kernel(sigma: float, device: torch.device | str = 'cpu') -> torch.Tensor:
    """Normalized separable Gaussian-like taps 2^(-(x/sigma)^2), x in [-floor(3 sigma), floor(3 sigma)].

    See docs/method.md §7.5.

    -> [2k + 1] float32 with k = floor(3 sigma); [1] (the identity) when sigma <= 0.
    """
    if sigma <= 0:
        return torch.ones([1], dtype=torch.float32, device=device)
    half = math.floor(sigma * 3)
    x = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    taps = torch.exp2(-(x / sigma).square())
    return taps / taps.sum()


def schedule_values(config, cur_nimg: int) -> dict:
    """Every schedule value of a training iteration at the absolute image counter `cur_nimg`.

    config: a loss.LossConfig (its blur, density-noise, GPC, pose-prior and rendering-resolution fields).
    -> {'blur_sigma', 'density_noise', 'swap_prob', 'pose_prior_weight': float, 'rendering_resolution': int}
    """
    return {
        'blur_sigma': blur_sigma(cur_nimg, config.blur_init_sigma, config.effective_blur_fade_kimg),
        'density_noise': density_noise(cur_nimg, config.density_noise_fade_kimg),
        'swap_prob': gpc_swap_prob(cur_nimg, config.gpc_reg_prob, config.gpc_reg_fade_kimg),
        'pose_prior_weight': pose_prior_weight(
            cur_nimg,
            config.input_pose_params_reg_loss_weight,
            config.input_pose_params_reg_loss_kimg,
            config.input_pose_params_reg_loss_decay_kimg,
        ),
        'rendering_resolution': rendering_resolution(
            cur_nimg,
            config.stage_start_nimg,
            config.neural_rendering_resolution_initial,
            config.neural_rendering_resolution_final,
            config.neural_rendering_resolution_fade_kimg,
        ),
    }
