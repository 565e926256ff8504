"""The camera of an aligned photo refined by analysis by synthesis: the generator inverts the photo from many
candidate cameras at once (a batch of latents, each optimized from the mean latent for a few steps against the
photo from its own camera), and the camera whose reconstruction ends best wins.

Candidates: the whole circle of yaws every GRID_DEGREES from the detectors' yaw, for every view, so that a back
read as a front (or as its mirror) is found. Where the detectors are sure of their yaw (a face in sight), a score
is raised by a prior, (1 + PRIOR_WEIGHT * (1 - cos(distance from their yaw))); an uncertain yaw (no face: backs,
some profiles) has no prior. A parabola through the best candidate and its neighbours places the yaw between
them. The loss is the inversion's pixel and mask terms (the discriminator's perceptual term would triple the cost
of a step on a CPU).
"""

import dataclasses

import numpy as np
import torch

from training.data.photo_alignment import Alignment, camera_from_angles, wrap_degrees
from training.engines.inversion import Target, latent_statistics, masked_errors, masked_images, prepare_target, render

GRID_DEGREES = 15
PRIOR_WEIGHT = 1.0
LEARNING_RATE = 0.05
DEFAULT_STEPS = 8  # latent steps per candidate camera
CANDIDATES_PER_BATCH = 12  # a bound on memory: larger searches run in several batches


def candidate_yaws(yaw: float) -> np.ndarray:
    """The yaws searched: the whole circle every GRID_DEGREES from `yaw`, degrees in (-180, 180] -> [N], in
    increasing order of the offset from `yaw` (neighbours are neighbours on the circle)."""
    offsets = np.arange(0, 360, GRID_DEGREES, dtype=np.float64)
    return wrap_degrees(yaw + offsets).astype(np.float64)


def prior_factor(yaws: np.ndarray, yaw: float, uncertain: bool) -> np.ndarray:
    """The factor on each candidate's score: 1 + PRIOR_WEIGHT * (1 - cos(candidate - yaw)) for a sure yaw, 1 for an
    uncertain one. yaws [N] degrees -> [N]."""
    if uncertain:
        return np.ones_like(yaws)
    return 1 + PRIOR_WEIGHT * (1 - np.cos(np.radians(yaws - yaw)))


def parabola_minimum(left: float, centre: float, right: float) -> float:
    """The minimum of the parabola through (-1, left), (0, centre), (1, right), as an offset in [-0.5, 0.5] (the
    best of three equally spaced samples, centre the lowest, lies within half a spacing of the minimum)."""
    curvature = left - 2 * centre + right
    if curvature <= 0:
        return 0.0
    return float(np.clip((left - right) / (2 * curvature), -0.5, 0.5))


@dataclasses.dataclass
class CameraSearch:
    """A generator that refines alignments; call it on an Alignment."""

    G: torch.nn.Module
    steps: int = DEFAULT_STEPS
    device: torch.device = torch.device('cpu')

    def scores(self, target: Target, yaws: np.ndarray, pitch: float = 0.0) -> np.ndarray:
        """The reconstruction loss (pixel + mask) after `steps` latent steps from the mean latent, one latent per
        camera, yaws [N] degrees at `pitch` -> [N]."""
        w_avg, _ = latent_statistics(self.G)
        losses = []
        for start in range(0, len(yaws), CANDIDATES_PER_BATCH):
            chunk = yaws[start : start + CANDIDATES_PER_BATCH]
            cameras = torch.stack([torch.from_numpy(camera_from_angles(float(y), pitch)) for y in chunk])
            cameras, poses = cameras.to(self.device), torch.zeros(len(chunk), 6, device=self.device)
            w = w_avg.to(self.device).repeat(len(chunk), 1, 1).requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=LEARNING_RATE)
            for step in range(self.steps + 1):
                pixel, mask = masked_errors(
                    *masked_images(render(self.G, w.expand(-1, self.G.num_ws, -1), cameras, poses), target)
                )
                loss = pixel + mask
                if step == self.steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                optimizer.step()
            losses.append(loss.detach().cpu().numpy())
        return np.concatenate(losses)

    def search(self, image: np.ndarray, mask: np.ndarray, yaw: float, uncertain: bool, pitch: float = 0.0) -> tuple:
        """image uint8 [R, R, 3], mask uint8 [R, R] (the aligned crop), the detectors' yaw (degrees), whether they
        are unsure of it, and the pitch kept for every candidate -> (yaw, {candidate yaw: score, the prior
        included})."""
        photo = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().to(self.device) / 127.5 - 1
        person = torch.from_numpy(mask.copy())[None, None].float().to(self.device) / 255
        target = prepare_target(self.G, photo, person)
        yaws = candidate_yaws(yaw)
        scores = self.scores(target, yaws, pitch) * prior_factor(yaws, yaw, uncertain)
        best = int(np.argmin(scores))
        left, right = scores[(best - 1) % len(yaws)], scores[(best + 1) % len(yaws)]
        refined = float(wrap_degrees(yaws[best] + GRID_DEGREES * parabola_minimum(left, scores[best], right)))
        return refined, {float(y): float(s) for y, s in zip(yaws, scores)}

    def __call__(self, alignment: Alignment) -> Alignment:
        yaw, scores = self.search(alignment.image, alignment.mask, alignment.yaw, alignment.uncertain, alignment.pitch)
        notes = list(alignment.notes)
        notes.append(f'refined by the generator from yaw {alignment.yaw:.0f} over {len(scores)} cameras')
        return dataclasses.replace(
            alignment,
            camera=camera_from_angles(yaw, alignment.pitch),
            yaw=yaw,
            method=alignment.method + ' + generator',
            uncertain=False,
            notes=notes,
        )
