"""pose_sens: how strongly the discriminator's pose prediction follows the pose a fake is rendered with.

pose_err compares D's prediction with G's pose over different fakes; a D can score below the
yardstick there without reading the body's geometry (from the camera it is given, or from
appearance that G's mapping ties to the pose). This metric changes one pose component of a fake
at a time, everything else fixed (latent, mapping, camera, noise), and measures D's response:
the mean Jacobian J[j, k] = d(D's component j) / d(rendered component k), by central differences
of +-POSE_SENS_STEP radians. A D that reads the pose from the image has J = identity:
`slope_<part>_<axis>` = J[k, k] near 1 and `leak_<part>_<axis>` (the root sum of squares of the
other components' responses to k) near 0.

It also measures how much of G's pose follows the camera, the part D can predict from the camera
it is given: G's pose branch on a grid of CAMERA_SHARE_GRID latents x as many data set cameras,
and `camera_<part>_<axis>`, the share of each component's variance over the grid that the
per-camera means explain (0: the pose does not depend on the camera; 1: only on the camera).
"""

from collections.abc import Callable

import numpy as np
import torch

from metrics import metric_utils

POSE_SENS_STEP = 0.2  # radians
CAMERA_SHARE_GRID = 64  # latents and cameras of the camera share
POSE_COMPONENTS = tuple(f'{part}_{axis}' for part in ('neck', 'head') for axis in 'xyz')


def central_difference_jacobian(predict: Callable, pose: torch.Tensor, step: float) -> torch.Tensor:
    """Per-item Jacobians of predict at pose by central differences.

    predict: pose [B, K] -> prediction [B, M]; pose [B, K] -> J [B, M, K] with
    J[i, :, k] = (predict(pose + step e_k) - predict(pose - step e_k))[i] / (2 step).
    Exact for predictions that are quadratic in the pose.
    """
    columns = []
    for k in range(pose.shape[1]):
        offset = torch.zeros_like(pose)
        offset[:, k] = step
        columns.append((predict(pose + offset) - predict(pose - offset)) / (2 * step))
    return torch.stack(columns, dim=2)


def sensitivity_results(jacobians: np.ndarray) -> dict:
    """Per-item Jacobians [N, 6, 6] -> {'slope_neck_x': J[0, 0], ..., 'leak_head_z': ...} of their mean J."""
    mean = jacobians.mean(axis=0)
    off_diagonal = mean - np.diag(np.diag(mean))
    results = {f'slope_{name}': float(mean[k, k]) for k, name in enumerate(POSE_COMPONENTS)}
    results.update(
        {f'leak_{name}': float(np.sqrt(np.square(off_diagonal[:, k]).sum())) for k, name in enumerate(POSE_COMPONENTS)}
    )
    return results


def camera_share(poses: np.ndarray) -> np.ndarray:
    """Poses on a grid [cameras, latents, K] -> [K]: the share of each component's variance explained by the camera.

    Population variances over the full grid, so variance = mean over cameras of the variance over
    latents + variance over cameras of the mean over latents, and the share is the second term's.
    """
    total = poses.reshape(-1, poses.shape[-1]).var(axis=0)
    between = poses.mean(axis=1).var(axis=0)
    return between / np.maximum(total, 1e-20)


@torch.no_grad()
def camera_share_results(opts: metric_utils.MetricOptions) -> dict:
    """{'camera_neck_x': ..., 'camera_head_z': ...}: camera_share of G's pose branch on a fixed grid."""
    grid = CAMERA_SHARE_GRID
    rng = np.random.RandomState(opts.seed)
    indices = rng.randint(len(opts.dataset()), size=grid)
    z = torch.from_numpy(rng.standard_normal([grid, opts.G.z_dim]).astype(np.float32)).to(opts.device)
    _, poses = metric_utils.sample_poses(metric_utils.with_g_poses(opts), z.repeat(grid, 1), np.repeat(indices, grid))
    share = camera_share(poses.reshape(grid, grid, -1).double().cpu().numpy())
    return {f'camera_{name}': float(value) for name, value in zip(POSE_COMPONENTS, share)}


@torch.no_grad()
def compute_pose_sens(opts: metric_utils.MetricOptions, num_gen: int) -> dict:
    """-> sensitivity_results over num_gen fakes posed by G's pose branch, and camera_share_results (docs/method.md §12.1)."""
    g_opts = metric_utils.with_g_poses(opts)
    width = len(POSE_COMPONENTS) ** 2
    per_batch = {}
    for batch in metric_utils.progress_bar(metric_utils.rank_batches(num_gen, opts), opts, 'pose responses'):
        latents = metric_utils.batch_latents(g_opts, batch)

        def predict(pose: torch.Tensor) -> torch.Tensor:
            fakes = dict(metric_utils.render_latents(g_opts, latents, pose), c=latents['c'])
            return metric_utils.discriminator_pose_on_fakes(opts, fakes)

        jacobians = central_difference_jacobian(predict, latents['pose'], POSE_SENS_STEP)
        per_batch[batch] = jacobians.reshape(len(jacobians), width).float().cpu()
    gathered = metric_utils.gather_batches(per_batch, num_gen, width, opts)
    results = sensitivity_results(gathered.reshape(num_gen, len(POSE_COMPONENTS), len(POSE_COMPONENTS)))
    return {**results, **camera_share_results(opts)}
