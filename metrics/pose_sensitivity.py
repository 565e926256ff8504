"""pose_sens: how strongly the discriminator's pose prediction follows the pose a fake is rendered with.

pose_err compares D's prediction with G's pose over different fakes; a D can score below the
yardstick there without reading the body's geometry (from the camera it is given, or from
appearance that G's mapping ties to the pose). This metric changes one pose component of a fake
at a time, everything else fixed (latent, mapping, camera, noise), and measures D's response:
the mean Jacobian J[j, k] = d(D's component j) / d(rendered component k), by central differences
of +-POSE_SENS_STEP radians. A D that reads the pose from the image has J = identity:
`slope_<part>_<axis>` = J[k, k] near 1 and `leak_<part>_<axis>` (the root sum of squares of the
other components' responses to k) near 0.
"""

from collections.abc import Callable

import numpy as np
import torch

from metrics import metric_utils

POSE_SENS_STEP = 0.2  # radians
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


@torch.no_grad()
def compute_pose_sens(opts: metric_utils.MetricOptions, num_gen: int) -> dict:
    """-> sensitivity_results over num_gen fakes posed by G's pose branch (docs/method.md §12.1)."""
    if opts.D is None or opts.pose_predict_kwargs is None:
        raise ValueError(
            'pose_sens needs the discriminator and its pose-prediction settings (pose_predict_kwargs-*.json)'
        )
    g_opts = metric_utils.with_g_poses(opts)
    width = len(POSE_COMPONENTS) ** 2
    results = {}
    for batch in metric_utils.progress_bar(metric_utils.rank_batches(num_gen, opts), opts, 'pose responses'):
        latents = metric_utils.batch_latents(g_opts, batch)

        def predict(pose: torch.Tensor) -> torch.Tensor:
            fakes = dict(metric_utils.render_latents(g_opts, latents, pose), c=latents['c'])
            return metric_utils.discriminator_pose_on_fakes(opts, fakes)

        jacobians = central_difference_jacobian(predict, latents['pose'], POSE_SENS_STEP)
        results[batch] = jacobians.reshape(len(jacobians), width).float().cpu()
    gathered = metric_utils.gather_batches(results, num_gen, width, opts)
    return sensitivity_results(gathered.reshape(num_gen, len(POSE_COMPONENTS), len(POSE_COMPONENTS)))
