"""Summary statistics of a generator's renders: the fingerprint that a shipped model is checked against.

`render_statistics` renders fixed seeds from the back, the side and the front (canonical pose,
conditioned on the frontal camera, no sample jitter, constant noise) and summarises each view by
the mean and standard deviation of the image and the alpha coverage of the whole picture and of its
upper half (where the head is). Storing these beside a shipped snapshot and recomputing them in a
test catches any change that alters what the trained model renders.
"""

import math

import numpy as np
import torch

from training.data.camera_utils import VIEWS, camera_label, frontal_camera, orbit_camera

STATISTICS = ('image_mean', 'image_std', 'alpha_coverage', 'head_alpha_coverage')


@torch.no_grad()
def render_statistics(G: torch.nn.Module, seeds: list, views: tuple = ('back', 'side', 'front')) -> dict:
    """G and integer seeds -> {view: {statistic: float}} averaged over the seeds (STATISTICS).

    Images are in [-1, 1] ([B, 3, S, S]); alpha is the raw render's mask ([B, 1, r, r], 0..1).
    """
    device = next(G.parameters()).device
    cameras = camera_label(orbit_camera(torch.tensor([VIEWS[name] for name in views]), math.pi / 2, device=device))
    sums = {view: dict.fromkeys(STATISTICS, 0.0) for view in views}
    for seed in seeds:
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(device)
        ws = G.mapping(z, frontal_camera(1, device=device)).expand(len(views), -1, -1)
        out = G.synthesis(ws, cameras, deterministic=True, noise_mode='const')
        image, alpha = out['image'].float(), out['image_mask'].float().clamp(0, 1)
        for i, view in enumerate(views):
            sums[view]['image_mean'] += image[i].mean().item()
            sums[view]['image_std'] += image[i].std().item()
            sums[view]['alpha_coverage'] += alpha[i].mean().item()
            sums[view]['head_alpha_coverage'] += alpha[i, :, : alpha.shape[2] // 2].mean().item()
    return {view: {name: value / len(seeds) for name, value in stats.items()} for view, stats in sums.items()}
