"""The training losses: non-saturating GAN loss, pose self-learning, lazy R1 and density regularization.

`PortraitGANLoss.accumulate_gradients` runs one phase (docs/method.md §7.3) on one chunk of a batch
and calls `.backward()`; the training loop owns the optimizers, decides which module takes
gradients (`requires_grad_`) and steps it. The loss never writes into G or D, and owns no schedule: the
loop computes the schedule values of the iteration (blur, density noise, GPC swap probability,
pose-prior weight, rendering resolution; `schedules.schedule_values`) and passes them in, and the
loss passes them on to the networks as arguments.

Phases:
  Gmain  softplus(-D(G(z))) + lambda(t) * pose_prior(p_G, p_coarse)      -> G
  Greg   density smoothness on random points (only when density_reg > 0) -> G
  Dmain  softplus(D(G(z))) + w_pose * ||p_D(G(z)) - p_G||^2, softplus(-D(x)) -> D
         [+ w_labelled * ||p_D(G(z, p_coarse)) - p_coarse||^2 when labelled_pose_loss_weight > 0]
  Dreg   R1 on the real image, raw image and mask                        -> D

Reported statistics (training_stats, per sample unless noted): Loss/scores/{fake,real},
Loss/signs/{fake,real}, Loss/G/loss, Loss/G/pose_prior (the weighted prior term),
Loss/G/density_reg and Loss/G/monotonic (per call), Loss/D/loss, Loss/D/pose, Loss/r1_penalty,
Loss/r1_seg_penalty, Loss/D/reg, and the pose errors (mean absolute over the 6 values)
Pose/G_vs_coarse (p_G vs. the data set pose of gen_c), Pose/G_vs_D_fake (D's prediction on fakes
vs. p_G) and Pose/D_real_error (D's prediction on reals vs. their data set pose); with the labelled
pose regression also Loss/D/labelled_pose and Pose/D_labelled_fake_error.
"""

import dataclasses

import torch
import torch.nn.functional as F

from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix
from training.config import TrainingConfig
from training.loss_options import POSE_PRIOR_MATCHES, REG_TYPES
from training.networks import stylegan2
from training.networks.d_input import FILTER_MODES, discriminator_input

PHASES = ('Gmain', 'Greg', 'Dmain', 'Dreg')
DENSITY_REG_POINTS = 1000  # random points per sample for the density regularizer


@dataclasses.dataclass
class LossConfig:
    """Every weight and schedule parameter of the losses (defaults: the published stage-1 values).

    Each field is the TrainingConfig setting (or derived value) of the same name and meaning, and
    `from_training_config` reads it by that name: a new loss setting is added to TrainingConfig
    (training/config.py) and the presets under the name it has here.
    """

    gamma: float = 1.0  # R1 weight on the image and raw image
    gamma_seg: float = 1.0  # R1 weight on the mask
    pose_loss_weight: float = 1.0  # D pose regression on fakes
    input_pose_params_reg_loss_weight: float = 0.5  # G pose prior weight ...
    input_pose_params_reg_loss_kimg: float = 200  # ... held for this many kimg ...
    input_pose_params_reg_loss_decay_kimg: float = 200  # ... then decayed to 0 over this many
    blur_init_sigma: float = 10  # blur of D's images (pixels) at image 0 ...
    effective_blur_fade_kimg: float = 200  # ... faded to 0 over this many kimg (at the run's batch)
    density_noise_fade_kimg: float = 200  # density noise std 1 faded to 0 (0: off)
    gpc_reg_prob: float = 0.7  # final GPC swap probability ...
    gpc_reg_fade_kimg: float = 1000  # ... reached from 1 after this many kimg
    bcg_reg_prob: float = 0.2  # probability of the neighbour's background
    style_mixing_prob: float = 0.0
    density_reg: float = 0.0  # density regularization weight (0: no Greg)
    density_reg_p_dist: float = 0.004  # std of the point perturbation
    reg_type: str = 'l1'  # one of REG_TYPES
    pose_prior_match: str = 'paired'  # one of POSE_PRIOR_MATCHES
    labelled_pose_loss_weight: float = 0.0  # D pose regression on fakes rendered at the labelled poses (0: off)
    neural_rendering_resolution_initial: int = 64
    neural_rendering_resolution_final: int | None = None
    neural_rendering_resolution_fade_kimg: float = 1000
    stage_start_nimg: int = 0  # image counter at the stage start (resolution fade origin)

    @classmethod
    def from_training_config(cls, config: TrainingConfig) -> 'LossConfig':
        """The loss settings of a run: every field read from the TrainingConfig attribute of the same name."""
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if not hasattr(config, name)]
        if missing:
            raise TypeError(
                f'LossConfig setting(s) {", ".join(missing)} have no TrainingConfig setting of the same '
                f'name: add them to TrainingConfig (training/config.py) and the presets'
            )
        return cls(**{name: getattr(config, name) for name in names})


def swap_with_previous(prob: float, *tensors: torch.Tensor, generator: torch.Generator | None = None) -> list:
    """Replace, per sample with probability `prob`, each tensor's row by the previous sample's row.

    tensors [B, ...] each -> list of the same shapes. One coin per sample decides for all tensors
    together, so that a swapped (camera, pose) pair stays a pair; sample 0 takes sample B-1's row.
    """
    first = tensors[0]
    swap = torch.rand([first.shape[0]], device=first.device, generator=generator) < prob
    return [torch.where(swap.reshape([-1] + [1] * (t.ndim - 1)), t.roll(1, dims=0), t) for t in tensors]


def pose_prior(p_G: torch.Tensor, coarse: torch.Tensor, match: str) -> torch.Tensor:
    """The G pose prior's squared distance per sample (before its weight).

    p_G [B, 6] (G's pose branch), coarse [B, 6] (coarse poses of the data items that gave the
    cameras) -> [B].
    paired: ||p_G[b] - coarse[b]||^2. The pose branch sees only (z, camera), so where the coarse
    pose does not depend on the camera its minimiser is the constant mean pose: the prior shrinks
    the spread of G's poses.
    marginal: each of the 6 values of p_G is sorted over the chunk and compared with the sorted
    coarse values (one-dimensional optimal transport per value); row b holds the terms of rank b.
    Its minimiser is any p_G whose values are distributed like the coarse ones, so the prior keeps
    the labelled spread and leaves which z gets which pose to the adversarial loss.
    """
    if match == 'paired':
        return (p_G - coarse).square().sum(dim=1)
    if match == 'marginal':
        return (p_G.sort(dim=0).values - coarse.sort(dim=0).values).square().sum(dim=1)
    raise ValueError(f'pose prior match {match!r}: expected one of {", ".join(POSE_PRIOR_MATCHES)}')


class PortraitGANLoss:
    """All losses of the 3D portrait GAN, one phase per `accumulate_gradients` call."""

    def __init__(
        self,
        G: torch.nn.Module,
        D: torch.nn.Module,
        config: LossConfig,
        device: torch.device | str,
        filter_mode: str = 'antialiased',  # resizing of real images to the rendering resolution: one of FILTER_MODES
        blur_raw_target: bool = True,  # blur the real raw image as well during the blur phase
    ):
        if config.reg_type not in REG_TYPES:
            raise ValueError(f'reg_type {config.reg_type!r}: expected one of {", ".join(REG_TYPES)}')
        if config.pose_prior_match not in POSE_PRIOR_MATCHES:
            raise ValueError(
                f'pose_prior_match {config.pose_prior_match!r}: expected one of {", ".join(POSE_PRIOR_MATCHES)}'
            )
        if filter_mode not in FILTER_MODES:
            raise ValueError(f'filter_mode {filter_mode!r}: expected one of {", ".join(FILTER_MODES)}')
        self.G = G
        self.D = D
        self.config = config
        self.device = torch.device(device)
        self.filter_mode = filter_mode
        self.blur_raw_target = blur_raw_target

    # ------------------------------------------------------------------------------------------
    # Networks.

    def _mapping(
        self,
        z: torch.Tensor,
        c_cond: torch.Tensor,
        pose_cond: torch.Tensor,
        c: torch.Tensor,
        pose: torch.Tensor,
        update_emas: bool,
    ) -> torch.Tensor:
        """ws of z under the (possibly swapped) condition, with optional style mixing.

        z [B, z_dim], c_cond / c [B, 25], pose_cond / pose [B, 6] -> ws [B, num_ws, w_dim]
        The mixing latent is mapped under the sample's own, unswapped condition (c, pose).
        """
        ws = self.G.mapping(z, c_cond, pose_cond, update_emas=update_emas)
        if self.config.style_mixing_prob > 0 and ws.shape[1] > 1:
            # The cut-off and the coin stay on the device (no host read): the mixing latent is
            # always mapped, and the coin decides per element whether it is used.
            cutoff = torch.randint(1, ws.shape[1], [], device=ws.device)
            mixing = torch.rand([], device=ws.device) < self.config.style_mixing_prob
            mixed = self.G.mapping(torch.randn_like(z), c, pose, update_emas=False)
            layer = torch.arange(ws.shape[1], device=ws.device)
            ws = torch.where(((layer >= cutoff) & mixing)[None, :, None], mixed, ws)
        return ws

    def run_G(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        pose: torch.Tensor,
        swapping_prob: float,
        resolution: int,
        update_emas: bool = False,
        density_noise: float = 0.0,
    ) -> dict:
        """Render z from camera c posed by its own pose, conditioned on a possibly swapped (c, pose).

        See docs/method.md §7.2.

        z [B, z_dim], c [B, 25], pose [B, 6] (the pose branch output for (z, c)) -> the dict of
        `G.synthesis` at rendering resolution `resolution`: image [B, 3, S, S], image_raw, image_mask ...
        Generator pose conditioning: with probability `swapping_prob` a sample is conditioned on the
        previous sample's (camera, pose), so that G cannot rely on the condition matching the view.
        Background swap: with probability bcg_reg_prob the background comes from the previous
        sample's ws, so that the background does not carry the identity.
        """
        c_cond, pose_cond = swap_with_previous(swapping_prob, c, pose)
        ws = self._mapping(z, c_cond, pose_cond, c, pose, update_emas)
        ws_bcg = None
        if self.config.bcg_reg_prob > 0:
            (ws_bcg,) = swap_with_previous(self.config.bcg_reg_prob, ws)
        return self.G.synthesis(
            ws,
            c,
            neural_rendering_resolution=resolution,
            pose_params=pose,
            ws_bcg=ws_bcg,
            density_noise=density_noise,
            update_emas=update_emas,
        )

    def run_D(self, d_input: dict, c: torch.Tensor, update_emas: bool = False) -> tuple:
        """D on an input built by `discriminator_input` (training/networks/d_input.py).

        d_input {'image' [B, 3, S, S], 'image_raw' [B, 3, r, r], 'image_mask' [B, 1, r, r]}, c [B, 25]
        -> (logits [B, 1], predicted pose [B, 6])
        """
        return self.D(d_input, c, update_emas=update_emas)

    # ------------------------------------------------------------------------------------------
    # Phases.

    def accumulate_gradients(
        self,
        phase: str,
        real_img: torch.Tensor,
        real_seg: torch.Tensor,
        real_c: torch.Tensor,
        real_pose: torch.Tensor,
        gen_z: torch.Tensor,
        gen_c: torch.Tensor,
        gen_pose: torch.Tensor,
        gain: float,
        schedule: dict,
    ) -> None:
        """Run one phase on one chunk and call backward on its loss times `gain`.

        real_img [B, 3, S, S] in [-1, 1], real_seg [B, 1, S, S] in [0, 1], real_c [B, 25],
        real_pose [B, 6] (the data set's coarse pose, only logged), gen_z [B, z_dim], gen_c [B, 25],
        gen_pose [B, 6] (the coarse pose of the data set item that gave gen_c: the pose-prior target);
        schedule: the schedule values of this iteration (schedules.schedule_values).
        Gradients flow into every tensor that requires them; the loop sets requires_grad on the
        module of the phase only (G phases do backpropagate through D).
        """
        if phase not in PHASES:
            raise ValueError(f'phase {phase!r}: expected one of {", ".join(PHASES)}')
        cfg = self.config
        if phase == 'Gmain':
            self._g_main(gen_z, gen_c, gen_pose, schedule, gain)
        if phase == 'Greg' and cfg.density_reg > 0:
            self._g_density_reg(gen_z, gen_c, schedule, gain)
        do_d_main = phase == 'Dmain'
        do_r1 = phase == 'Dreg' and (cfg.gamma > 0 or cfg.gamma_seg > 0)
        if do_d_main or do_r1:
            real = discriminator_input(
                {'image': real_img, 'mask': real_seg},
                schedule['blur_sigma'],
                schedule['rendering_resolution'],
                self.filter_mode,
                self.blur_raw_target,
            )
            if do_d_main:
                self._d_main(real, real_c, real_pose, gen_z, gen_c, gen_pose, schedule, gain)
            if do_r1:
                self._d_r1(real, real_c, schedule, gain)

    def _g_main(
        self, gen_z: torch.Tensor, gen_c: torch.Tensor, gen_pose: torch.Tensor, schedule: dict, gain: float
    ) -> None:
        """Non-saturating G loss through all three D inputs, plus the pose prior on the pose branch."""
        p_G = self.G.get_pose_params(gen_z, gen_c)
        gen = self.run_G(
            gen_z,
            gen_c,
            p_G,
            schedule['swap_prob'],
            schedule['rendering_resolution'],
            density_noise=schedule['density_noise'],
        )
        logits, pose_D = self.run_D(discriminator_input(gen, schedule['blur_sigma']), gen_c)
        loss_adv = F.softplus(-logits).flatten()  # [B]
        prior = pose_prior(p_G, gen_pose, self.config.pose_prior_match)  # [B]
        loss = loss_adv
        if schedule['pose_prior_weight'] > 0:
            loss = loss + schedule['pose_prior_weight'] * prior
        training_stats.report('Loss/scores/fake', logits)
        training_stats.report('Loss/signs/fake', logits.sign())
        training_stats.report('Loss/G/loss', loss)
        training_stats.report('Loss/G/pose_prior', schedule['pose_prior_weight'] * prior)
        training_stats.report('Pose/G_vs_coarse', (p_G - gen_pose).detach().abs().mean(dim=1))
        training_stats.report('Pose/G_vs_D_fake', (p_G - pose_D).detach().abs().mean(dim=1))
        (loss.mean() * gain).backward()

    def _g_density_reg(self, gen_z: torch.Tensor, gen_c: torch.Tensor, schedule: dict, gain: float) -> None:
        """Density smoothness: sigma at random points vs. at slightly perturbed copies (Greg, docs/method.md §7.3)."""
        cfg = self.config
        p_G = self.G.get_pose_params(gen_z, gen_c)
        # One batch-wide coin, unlike the per-sample swap of run_G; it stays on the device (no host read).
        swap = torch.rand([], device=self.device) < schedule['swap_prob']
        c_cond = torch.where(swap, gen_c.roll(1, dims=0), gen_c)
        pose_cond = torch.where(swap, p_G.roll(1, dims=0), p_G)
        ws = self._mapping(gen_z, c_cond, pose_cond, gen_c, p_G, update_emas=False)
        batch = ws.shape[0]
        # Points span [-1, 1]^3 while the tri-grid box is [-0.5, 0.5]^3 (the published range).
        points = torch.rand([batch, DENSITY_REG_POINTS, 3], device=ws.device) * 2 - 1
        loss = 0
        if cfg.reg_type in ('monotonic-detach', 'monotonic-fixed'):
            # Density should not decrease from a point to the one just behind it (further along -z).
            behind = points + points.new_tensor([0.0, 0.0, -1.0]) * (self.G.box_warp / 256)
            front, back = self._noisy_sigma(torch.cat([points, behind], dim=1), ws, schedule).chunk(2, dim=1)
            if cfg.reg_type == 'monotonic-detach':
                front = front.detach()
            monotonic = 10 * torch.relu(front - back).mean()
            training_stats.report('Loss/G/monotonic', monotonic)
            loss = monotonic
        perturbed = points + torch.randn_like(points) * cfg.density_reg_p_dist
        initial, moved = self._noisy_sigma(torch.cat([points, perturbed], dim=1), ws, schedule).chunk(2, dim=1)
        smoothness = F.l1_loss(initial, moved) * cfg.density_reg
        training_stats.report('Loss/G/density_reg', smoothness)
        (loss + smoothness).mul(gain).backward()

    def _noisy_sigma(self, points: torch.Tensor, ws: torch.Tensor, schedule: dict) -> torch.Tensor:
        """Raw density at canonical points with the training-time density noise, as in rendering.

        points [B, M, 3], ws [B, num_ws, w_dim] -> [B, M, 1]
        """
        sigma = self.G.sample_mixed(points, ws)['sigma']
        if schedule['density_noise'] > 0:
            sigma = sigma + torch.randn_like(sigma) * schedule['density_noise']
        return sigma

    def _d_main(
        self,
        real: dict,
        real_c: torch.Tensor,
        real_pose: torch.Tensor,
        gen_z: torch.Tensor,
        gen_c: torch.Tensor,
        gen_pose: torch.Tensor,
        schedule: dict,
        gain: float,
    ) -> None:
        """D on fakes (logit and pose regression toward p_G) and on reals (logit); with labelled_pose_loss_weight,
        also pose regression on fakes rendered at the labelled poses gen_pose [B, 6] (docs/method.md §7.6)."""
        cfg = self.config
        # G is not optimized here: fakes and the pose target carry no graph back into G.
        with torch.no_grad():
            p_G = self.G.get_pose_params(gen_z, gen_c)
            gen = self.run_G(
                gen_z,
                gen_c,
                p_G,
                schedule['swap_prob'],
                schedule['rendering_resolution'],
                update_emas=True,
                density_noise=schedule['density_noise'],
            )
        logits, pose_D = self.run_D(discriminator_input(gen, schedule['blur_sigma']), gen_c, update_emas=True)
        loss_fake = F.softplus(logits).flatten()  # [B]
        pose_loss = (pose_D - p_G).square().sum(dim=1)  # [B]
        training_stats.report('Loss/scores/fake', logits)
        training_stats.report('Loss/signs/fake', logits.sign())
        training_stats.report('Loss/D/pose', pose_loss)
        training_stats.report('Pose/G_vs_D_fake', (pose_D - p_G).detach().abs().mean(dim=1))
        ((loss_fake.mean() + cfg.pose_loss_weight * pose_loss.mean()) * gain).backward()

        logits_real, pose_real = self.run_D(real, real_c)
        loss_real = F.softplus(-logits_real).flatten()  # [B]
        training_stats.report('Loss/scores/real', logits_real)
        training_stats.report('Loss/signs/real', logits_real.sign())
        training_stats.report('Loss/D/loss', loss_fake.detach() + cfg.pose_loss_weight * pose_loss.detach() + loss_real)
        training_stats.report('Pose/D_real_error', (pose_real.detach() - real_pose).abs().mean(dim=1))
        (loss_real.mean() * gain).backward()
        if cfg.labelled_pose_loss_weight > 0:
            self._d_labelled_pose(gen_z, gen_c, gen_pose, schedule, gain)

    def _d_labelled_pose(
        self, gen_z: torch.Tensor, gen_c: torch.Tensor, gen_pose: torch.Tensor, schedule: dict, gain: float
    ) -> None:
        """D's pose regression on fakes of z posed by the labelled poses gen_pose [B, 6] instead of G's own.

        Their pose is independent of z and spread as the labels are, where G's pose branch may tie
        its poses to z or narrow them. Only D's pose prediction (trunk and pose head) learns from it.
        """
        with torch.no_grad():
            gen = self.run_G(
                gen_z,
                gen_c,
                gen_pose,
                schedule['swap_prob'],
                schedule['rendering_resolution'],
                density_noise=schedule['density_noise'],
            )
        pose_D = self.D.predict_pose(discriminator_input(gen, schedule['blur_sigma']), gen_c)
        pose_loss = (pose_D - gen_pose).square().sum(dim=1)  # [B]
        training_stats.report('Loss/D/labelled_pose', pose_loss)
        training_stats.report('Pose/D_labelled_fake_error', (pose_D - gen_pose).detach().abs().mean(dim=1))
        (self.config.labelled_pose_loss_weight * pose_loss.mean() * gain).backward()

    def _d_r1(self, real: dict, real_c: torch.Tensor, schedule: dict, gain: float) -> None:
        """R1: squared gradient norm of D's real logits w.r.t. image and raw image (gamma) and mask (gamma_seg).

        The gradient is taken w.r.t. the images D sees (`real` is D's input): during the blur phase, the blurred image.
        """
        cfg = self.config
        inputs = {key: real[key].detach().requires_grad_(True) for key in ('image', 'image_raw', 'image_mask')}
        # In full precision also with --cpu_bf16: the penalty's gradient is a second derivative,
        # which bf16 convolutions get wrong by tens of percent (tests/test_loss.py).
        with stylegan2.no_cpu_bf16():
            logits, _ = self.run_D(inputs, real_c)
        # Only the input gradients are wanted; the weights get theirs from the penalty's backward.
        with conv2d_gradfix.no_weight_gradients():
            grad_image, grad_raw, grad_mask = torch.autograd.grad(
                outputs=[logits.sum()],
                inputs=[inputs['image'], inputs['image_raw'], inputs['image_mask']],
                create_graph=True,
            )
        r1 = grad_image.square().sum(dim=[1, 2, 3]) + grad_raw.square().sum(dim=[1, 2, 3])  # [B]
        r1_seg = grad_mask.square().sum(dim=[1, 2, 3])  # [B]
        loss = r1 * (cfg.gamma / 2) + r1_seg * (cfg.gamma_seg / 2)
        training_stats.report('Loss/r1_penalty', r1)
        training_stats.report('Loss/r1_seg_penalty', r1_seg)
        training_stats.report('Loss/D/reg', loss)
        (loss.mean() * gain).backward()
