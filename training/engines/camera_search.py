"""The camera of an aligned photo refined by analysis by synthesis: the generator inverts the photo from a few
candidate cameras (a few latent steps each from the mean latent, training/engines/inversion.py) and the camera
whose reconstruction loss ends lowest wins.

Candidates: for a yaw flagged uncertain (no face in sight: backs, some profiles), the detectors' yaw, its mirror
(-yaw: a left-right swap), the front/back flips of both (180 - yaw, yaw - 180) and every 45 degrees; for a sure
one, only the detectors' yaw (searched as widely, 3 of 5 front views of the benchmark got worse). Then the best is
refined by +-STEP_DEGREES in yaw, for every view; for backs it is the only source of a yaw. The loss is the
inversion's pixel and mask terms only: the discriminator's perceptual term triples the cost of a step on a CPU.
"""

import dataclasses

import numpy as np
import torch

from training.data.photo_alignment import Alignment, camera_from_angles, wrap_degrees
from training.engines.inversion import InversionConfig, optimize_latent, prepare_target

GRID_DEGREES = 45
STEP_DEGREES = 15
SAME_DEGREES = 5  # candidates closer than this are tried once
LAST_LOSSES = 3  # the score: the mean total loss of the last steps


def candidate_yaws(yaw: float, uncertain: bool) -> list:
    """The first round's yaws, degrees in (-180, 180], without near-duplicates: a yaw the detectors are sure of
    (a face in sight) only; an uncertain one, its mirror, the front/back flips of both and every 45 degrees."""
    yaws = [yaw]
    if uncertain:
        yaws += [-yaw, 180 - yaw, yaw - 180] + list(range(-135, 181, GRID_DEGREES))
    unique = []
    for candidate in (float(wrap_degrees(y)) for y in yaws):
        if all(abs(float(wrap_degrees(candidate - u))) >= SAME_DEGREES for u in unique):
            unique.append(candidate)
    return unique


@dataclasses.dataclass
class CameraSearch:
    """A generator that refines alignments; call it on an Alignment."""

    G: torch.nn.Module
    steps: int = 2
    device: torch.device = torch.device('cpu')
    seed: int = 0

    def score(self, target, yaw: float, pitch: float) -> float:
        camera = torch.from_numpy(camera_from_angles(yaw, pitch))[None].to(self.device)
        pose = torch.zeros(1, 6, device=self.device)
        config = InversionConfig(w_steps=self.steps, perceptual_weight=0.0)
        result = optimize_latent(self.G, None, target, camera, pose, config, progress=False, seed=self.seed)
        return float(np.mean([loss['total'] for loss in result.losses[-LAST_LOSSES:]]))

    def search(self, image: np.ndarray, mask: np.ndarray, yaw: float, uncertain: bool) -> tuple:
        """image uint8 [R, R, 3], mask uint8 [R, R] (the aligned crop) -> (yaw, pitch, {(yaw, pitch): score})."""
        photo = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().to(self.device) / 127.5 - 1
        person = torch.from_numpy(mask.copy())[None, None].float().to(self.device) / 255
        target = prepare_target(self.G, photo, person)
        scores = {}
        for candidate in candidate_yaws(yaw, uncertain):
            scores[(candidate, 0.0)] = self.score(target, candidate, 0.0)
        best = min(scores, key=scores.get)
        for offset in (STEP_DEGREES, -STEP_DEGREES):
            key = (float(wrap_degrees(best[0] + offset)), 0.0)
            if key not in scores:
                scores[key] = self.score(target, *key)
        best = min(scores, key=scores.get)
        return best[0], best[1], scores

    def __call__(self, alignment: Alignment) -> Alignment:
        yaw, pitch, scores = self.search(alignment.image, alignment.mask, alignment.yaw, alignment.uncertain)
        notes = list(alignment.notes)
        notes.append(f'refined by the generator from yaw {alignment.yaw:.0f} over {len(scores)} cameras')
        return dataclasses.replace(
            alignment,
            camera=camera_from_angles(yaw, pitch),
            yaw=yaw,
            pitch=pitch,
            method=alignment.method + ' + generator',
            uncertain=False,
            notes=notes,
        )


def load_camera_search(network: str, steps: int = 2, device: str = 'cpu') -> CameraSearch:
    """A snapshot (pickle, weights file or run directory) -> CameraSearch; a bad one is a click error."""
    from training.cli import load_generator

    G = load_generator(network, None, 0, torch.device(device), False)
    return CameraSearch(G, steps=steps, device=torch.device(device))
