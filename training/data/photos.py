"""Real portraits read from files: one photo, and a folder in the layout of the published
data-processing pipeline (aligned images, masks and a result.json of cameras).

Every problem with the files is a one-line ValueError naming the file.
"""

import json
import os

import numpy as np
import PIL.Image
import torch

from training.data.camera_utils import FOCAL, camera_label
from training.data.dataset import is_image_name, stem
from training.networks.d_input import resize_image

REPORT_KEY = '_report'  # result.json's per-photo report of dataset_tool.py align: not an image entry


def read_photo(path: str, mode: str, resolution: int) -> torch.Tensor:
    """A square image file -> [1, C, resolution, resolution] in [0, 1] (C = 3 for 'RGB', 1 for 'L'),
    resized bilinearly with antialiasing."""
    try:
        with PIL.Image.open(path) as image:
            array = np.asarray(image.convert(mode), dtype=np.float32)
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f'{path}: cannot read the image ({err})') from None
    if array.shape[0] != array.shape[1]:
        raise ValueError(f'{path}: the image is {array.shape[1]}x{array.shape[0]}, expected an aligned square crop')
    tensor = torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)[None] / 255
    return resize_image(tensor, resolution)


def read_pose_folder(folder: str, resolution: int) -> tuple:
    """Real portraits with known cameras (the layout of the published data-processing pipeline) -> (names, images, masks, cameras).

    folder/aligned_images/<name> (RGB), folder/mask/<same name, any image extension> (grayscale,
    255 = person) and folder/result.json = {name: {"camera_pose": 4x4 cam2world, ...}}, with the
    intrinsics fixed at focal FOCAL. Every entry of result.json needs its image and mask, and every
    image its entry. -> names: the result.json keys, sorted; images [N, 3, R, R] in [-1, 1];
    masks [N, 1, R, R] in [0, 1]; cameras [N, 25]; R = resolution.
    """
    result_path = os.path.join(folder, 'result.json')
    image_dir, mask_dir = os.path.join(folder, 'aligned_images'), os.path.join(folder, 'mask')
    for path in (image_dir, mask_dir):
        if not os.path.isdir(path):
            raise ValueError(
                f'{path}: no such folder (the layout of real portraits is aligned_images/, mask/ and result.json)'
            )
    try:
        with open(result_path) as f:
            entries = json.load(f)
    except OSError as err:
        raise ValueError(f'{result_path}: cannot read the cameras ({err.strerror})') from None
    except json.JSONDecodeError as err:
        raise ValueError(f'{result_path}: not JSON ({err.msg})') from None
    if isinstance(entries, dict):
        entries.pop(REPORT_KEY, None)
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f'{result_path}: expected {{name: {{"camera_pose": 4x4 cam2world}}}} with at least one name')
    files = sorted(name for name in os.listdir(image_dir) if is_image_name(name))
    by_key = {name: name for name in files}
    for name in files:
        by_key.setdefault(stem(name), name)
    masks = {}
    for name in sorted(os.listdir(mask_dir)):
        if is_image_name(name):
            masks[name] = name
            masks.setdefault(stem(name), name)
    unlisted = [name for name in files if name not in entries and stem(name) not in entries]
    if unlisted:
        raise ValueError(f'{os.path.join(image_dir, unlisted[0])}: no entry for it in {result_path}')
    names, photos, segs, cam2worlds = sorted(entries), [], [], []
    for name in names:
        if name not in by_key:
            raise ValueError(f'{result_path}: {name!r} has no image in {image_dir}')
        file_name = by_key[name]
        mask_name = masks.get(file_name, masks.get(stem(file_name)))
        if mask_name is None:
            raise ValueError(f'{os.path.join(image_dir, file_name)}: no mask of the same name in {mask_dir}')
        pose = entries[name].get('camera_pose') if isinstance(entries[name], dict) else None
        try:
            cam2world = np.asarray(pose, dtype=np.float32)
        except (TypeError, ValueError):
            cam2world = np.zeros(0)
        if cam2world.shape != (4, 4) or not np.isfinite(cam2world).all():
            shape = 'x'.join(map(str, cam2world.shape)) or 'no numbers'
            raise ValueError(f'{result_path}: {name!r} camera_pose is {shape}, expected a 4x4 cam2world matrix')
        photos.append(read_photo(os.path.join(image_dir, file_name), 'RGB', resolution) * 2 - 1)
        segs.append(read_photo(os.path.join(mask_dir, mask_name), 'L', resolution))
        cam2worlds.append(torch.from_numpy(cam2world))
    return names, torch.cat(photos), torch.cat(segs), camera_label(torch.stack(cam2worlds), FOCAL)
