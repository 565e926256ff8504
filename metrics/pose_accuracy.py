"""pose_err: how well the discriminator recovers body poses, each figure beside its constant-pose yardstick.

- Real images: D's predicted neck and head rotations, and the head's rotation relative to the
  torso (the two composed), against the data set's pose labels (exact on the synthetic set), and
  the error of always answering the mean labelled pose.
- Fakes: D's prediction on a render against the pose G's pose branch chose for it (the pose D is
  trained to recover), and the error of always answering the mean of G's poses.
Errors are angles of the relative rotation in degrees, mean and median (training.pose_prediction).
"""

import numpy as np
import torch

from metrics import metric_utils
from training.data.images import image_from_uint8, mask_from_uint8
from training.pose_prediction import pose_errors, predict_real_poses

POSE_WIDTH = 12  # predicted [6] and target [6] poses, side by side


def _errors(prefix: str, predicted: np.ndarray, target: np.ndarray) -> dict:
    """predicted, target [N, 6] -> {prefix_neck_mean: ..., prefix_head_torso_median: ...} degrees, and the mean-pose yardstick."""
    predicted, target = torch.from_numpy(predicted), torch.from_numpy(target)
    constant = target.mean(dim=0, keepdim=True).expand_as(target)
    errors = {f'{prefix}_{key}': value for key, value in pose_errors(predicted, target).items()}
    errors.update({f'{prefix}_mean_pose_{key}': value for key, value in pose_errors(constant, target).items()})
    return errors


@torch.no_grad()
def real_pose_pairs(opts: metric_utils.MetricOptions, max_items: int | None) -> tuple:
    """D's poses on real images and their labels -> (predicted [N, 6], labelled [N, 6]) float32."""
    dataset = opts.dataset()
    indices = metric_utils.real_subset(dataset, max_items)
    results = {}
    for batch in metric_utils.progress_bar(metric_utils.rank_batches(len(indices), opts), opts, 'real poses'):
        chunk = indices[batch * opts.batch_size : (batch + 1) * opts.batch_size]
        images, masks, cameras, poses = metric_utils.load_real_batch(dataset, chunk)
        predicted = predict_real_poses(
            opts.D,
            image_from_uint8(images, opts.device),
            mask_from_uint8(masks, opts.device),
            cameras.to(opts.device),
            opts.pose_predict_kwargs,
            batch=opts.batch_size,
        )
        results[batch] = torch.cat([predicted.cpu(), poses], dim=1)
    table = metric_utils.gather_batches(results, len(indices), POSE_WIDTH, opts)
    return table[:, :6], table[:, 6:]


@torch.no_grad()
def fake_pose_pairs(opts: metric_utils.MetricOptions, num_items: int) -> tuple:
    """D's poses on fakes and the poses G rendered them with -> (predicted [N, 6], G's [N, 6]) float32.

    The fakes take their pose from G's pose branch, whatever metric_pose_sample_mode says.
    """
    g_opts = metric_utils.with_g_poses(opts)
    results = {}
    for batch in metric_utils.progress_bar(metric_utils.rank_batches(num_items, opts), opts, 'fake poses'):
        fakes = metric_utils.generate_batch(g_opts, batch)
        predicted = metric_utils.discriminator_pose_on_fakes(opts, fakes)
        results[batch] = torch.cat([predicted, fakes['pose']], dim=1).cpu()
    table = metric_utils.gather_batches(results, num_items, POSE_WIDTH, opts)
    return table[:, :6], table[:, 6:]


def compute_pose_err(opts: metric_utils.MetricOptions, max_real: int | None, num_gen: int) -> dict:
    """-> {'real_neck_mean', ..., 'real_mean_pose_head_median', 'fake_neck_mean', ..., 'fake_mean_pose_...'} degrees."""
    results = _errors('real', *real_pose_pairs(opts, max_real))
    results.update(_errors('fake', *fake_pose_pairs(opts, num_gen)))
    return results
