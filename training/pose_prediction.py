"""Body-pose prediction on real images with a trained discriminator, and angular pose errors.

The settings that prepare a real image for `D.predict_pose` (rendering resolution, blur) are the
ones the training loop writes beside each network snapshot as `pose_predict_kwargs-*.json`
(docs/method.md §9.4, §9.6); a published 3DPortraitGAN checkpoint carries them in the .json of its own name.
"""

import json

import torch

from training.body.lbs import batch_rodrigues
from training.d_input import discriminator_input

POSE_PREDICT_KEYS = ('blur_sigma', 'neural_rendering_resolution')


def load_pose_predict_kwargs(path: str) -> dict:
    """The JSON written beside a network snapshot -> {'blur_sigma': float, 'neural_rendering_resolution': int, ...}."""
    try:
        with open(path) as f:
            kwargs = json.load(f)
    except OSError as err:
        raise OSError(f'{path}: cannot read the pose-prediction settings ({err.strerror})') from None
    except json.JSONDecodeError as err:
        raise ValueError(f'{path}: not a pose-prediction JSON ({err.msg})') from None
    missing = [key for key in POSE_PREDICT_KEYS if key not in kwargs]
    if missing:
        raise ValueError(f'{path}: pose-prediction settings lack {", ".join(missing)}')
    return kwargs


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


def rotation_angle_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle of the relative rotation between two axis-angle rotations, in degrees.

    predicted [..., 3], target [..., 3] (axis-angle, radians) -> [...]
    """
    shape = predicted.shape[:-1]
    relative = (
        batch_rodrigues(predicted.reshape(-1, 3)).transpose(-1, -2) @ batch_rodrigues(target.reshape(-1, 3))
    ).reshape(*shape, 3, 3)
    cos = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def pose_errors(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    """Mean and median angular errors of neck and head rotations, in degrees.

    predicted [N, 6], target [N, 6] (neck axis-angle, head axis-angle) ->
      {'neck_mean', 'neck_median', 'head_mean', 'head_median'} floats
    """
    result = {}
    for name, part in (('neck', slice(0, 3)), ('head', slice(3, 6))):
        err = rotation_angle_error(predicted[:, part].double(), target[:, part].double())
        result[f'{name}_mean'] = float(err.mean())
        result[f'{name}_median'] = float(err.median())
    return result
