"""Body-pose prediction on real images with a trained discriminator, and angular pose errors.

The settings that prepare a real image for `D.predict_pose` (rendering resolution, blur) are the
ones of the schedules at the snapshot (docs/method.md §9.4, §9.6). The training loop stores them in
each snapshot file (key `pose_predict_kwargs`) and writes them beside it as
`pose_predict_kwargs-*.json`; a published 3DPortraitGAN checkpoint has them in the .json of its own
name (run_files.find_pose_predict_kwargs looks in that order).
"""

import json
from typing import Any

import torch
from scipy.spatial.transform import Rotation

from training.body.lbs import batch_rodrigues
from training.networks.d_input import discriminator_input

POSE_PREDICT_KEYS = ('blur_sigma', 'neural_rendering_resolution')


def check_pose_predict_kwargs(settings: Any, where: str) -> dict:
    """Pose-prediction settings read from `where` (a file, or a snapshot that carries them) -> them as a dict
    {'blur_sigma': float, 'neural_rendering_resolution': int, ...}; a ValueError naming `where` if incomplete."""
    if not isinstance(settings, dict):
        raise ValueError(f'{where}: the pose-prediction settings are not a JSON object')
    missing = [key for key in POSE_PREDICT_KEYS if key not in settings]
    if missing:
        raise ValueError(f'{where}: pose-prediction settings lack {", ".join(missing)}')
    return dict(settings)


def load_pose_predict_kwargs(path: str) -> dict:
    """The JSON written beside a network snapshot -> {'blur_sigma': float, 'neural_rendering_resolution': int, ...}."""
    try:
        with open(path) as f:
            kwargs = json.load(f)
    except OSError as err:
        raise OSError(f'{path}: cannot read the pose-prediction settings ({err.strerror})') from None
    except json.JSONDecodeError as err:
        raise ValueError(f'{path}: not a pose-prediction JSON ({err.msg})') from None
    return check_pose_predict_kwargs(kwargs, path)


@torch.no_grad()
def predict_real_poses(
    D: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    cameras: torch.Tensor,
    pose_predict_kwargs: dict,
    batch: int = 16,
) -> torch.Tensor:
    """D's body pose for each real image, prepared as in training (docs/method.md §9.6).

    images [N, 3, H, W] in [-1, 1], masks [N, 1, H, W] in [0, 1], cameras [N, 25] -> poses [N, 6]
    H = W = D's image resolution. Images are batched by `batch`; D's minibatch-std layer couples
    the samples of a group, so the group size of D must divide every batch (a last short batch is
    padded by repeating its final image).
    """
    resolution = int(pose_predict_kwargs['neural_rendering_resolution'])
    blur_sigma = float(pose_predict_kwargs['blur_sigma'])
    filter_mode = pose_predict_kwargs.get('filter_mode', 'antialiased')
    poses = []
    for start in range(0, len(images), batch):
        img, seg, c = (t[start : start + batch] for t in (images, masks, cameras))
        count = len(img)
        if count < batch and len(images) >= batch:
            pad = batch - count
            img, seg, c = (torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in (img, seg, c))
        real = discriminator_input({'image': img, 'mask': seg}, blur_sigma, resolution, filter_mode)
        poses.append(D.predict_pose(real, c)[:count])
    return torch.cat(poses)


def relative_rotation_angle(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle of the relative rotation between two rotation matrices, in degrees.

    predicted [..., 3, 3], target [..., 3, 3] -> [...]
    """
    relative = predicted.transpose(-1, -2) @ target
    cos = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def rotation_angle_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle of the relative rotation between two axis-angle rotations, in degrees.

    predicted [..., 3], target [..., 3] (axis-angle, radians) -> [...]
    """
    shape = predicted.shape[:-1]
    matrices = [batch_rodrigues(rotvecs.reshape(-1, 3)).reshape(*shape, 3, 3) for rotvecs in (predicted, target)]
    return relative_rotation_angle(*matrices)


def head_on_torso(pose: torch.Tensor) -> torch.Tensor:
    """The head's rotation relative to the torso: the neck's rotation, then the head's, composed.

    pose [N, 6] (neck axis-angle, head axis-angle) -> [N, 3, 3]
    An image shows this rotation as the head's orientation; how it is split between the two
    joints shows only as a small shift of the head (docs/method.md §12.1).
    """
    return batch_rodrigues(pose[:, :3]) @ batch_rodrigues(pose[:, 3:])


def pose_errors(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    """Mean and median angular errors of the neck, the head, and the head relative to the torso, in degrees.

    predicted [N, 6], target [N, 6] (neck axis-angle, head axis-angle) ->
      {'neck_mean', 'neck_median', 'head_mean', 'head_median', 'head_torso_mean', 'head_torso_median'} floats
    'head_torso' compares the composed rotations (head_on_torso), whatever the split between the joints.
    """
    predicted, target = predicted.double(), target.double()
    errors = {
        'neck': rotation_angle_error(predicted[:, :3], target[:, :3]),
        'head': rotation_angle_error(predicted[:, 3:], target[:, 3:]),
        'head_torso': relative_rotation_angle(head_on_torso(predicted), head_on_torso(target)),
    }
    result = {}
    for name, err in errors.items():
        result[f'{name}_mean'] = float(err.mean())
        result[f'{name}_median'] = float(err.median())
    return result


def split_unseen_poses(target: torch.Tensor, axes=(0, 1, 2)) -> torch.Tensor:
    """The poses of a reader that knows every head-on-torso rotation exactly but not how some axes' share is split.

    target [N, 6] -> [N, 6]; axes: the components (0 nod, 1 turn, 2 tilt) whose split is unknown.
    Each composed rotation (head_on_torso) is written as an axis-angle s. On the unknown axes the
    neck takes w * s, w the least-squares share of the neck in s over `target` (cov(neck, s) /
    var(s)); on the others it keeps its target value; the head is the rest of the rotation. Its
    errors (pose_errors) are about the floor of any reader of images that do not show those splits.
    """
    target = target.double()
    composed = head_on_torso(target)
    total = torch.from_numpy(Rotation.from_matrix(composed.numpy()).as_rotvec())
    centred_total = total - total.mean(dim=0)
    centred_neck = target[:, :3] - target[:, :3].mean(dim=0)
    share = (centred_total * centred_neck).sum(dim=0) / centred_total.square().sum(dim=0).clamp_min(1e-30)
    neck = target[:, :3].clone()
    neck[:, list(axes)] = (total * share)[:, list(axes)]
    head_matrix = batch_rodrigues(neck).transpose(-1, -2) @ composed
    head = torch.from_numpy(Rotation.from_matrix(head_matrix.numpy()).as_rotvec())
    return torch.cat([neck, head], dim=1)
