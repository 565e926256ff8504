"""Portrait dataset: RGB images, person masks paired by file name, and 31-value labels.

Two sources, each a zip archive or a folder:
- images: square RGB images, all of one size, at any depth, plus `dataset.json` at the top:
  {"labels": [[relative_path, [31 numbers]], ...]}: 25 camera values (cam2world row-major and
  normalized intrinsics, see training/data/camera_utils.py) followed by 6 coarse body-pose values (neck
  and head axis-angles). Every image has exactly one label and every label an image.
- masks: one single-channel ('L') person mask per image, at the same relative path; only the
  extension may differ ('00000/img00000001.png' <-> '00000/img00000001.jpg'). Masks without an
  image are ignored.

Items are numpy arrays, which the DataLoader's default collation turns into tensors:
image uint8 [3, H, W], mask uint8 [1, H, W], camera float32 [25], pose float32 [6].

Everything that can be checked cheaply (names, labels, sizes and modes from the file headers) is
checked when the dataset is constructed, which raises a one-line `DatasetError` naming the file
and the fix; `check_dataset` lists every problem and also decodes every file.
`python dataset_tool.py convert` writes datasets in this layout, `... check` runs `check_dataset`.
"""

import collections
import dataclasses
import json
import math
import os
import zipfile
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import dnnlib
from training.data.camera_utils import flip_camera, flip_pose

try:
    import pyspng
except ImportError:
    pyspng = None

LABELS_FILE = 'dataset.json'
CAMERA_DIM = 25
POSE_DIM = 6
LABEL_DIM = CAMERA_DIM + POSE_DIM
RIGID_TOLERANCE = 1e-3
IMAGE_MODE = 'RGB'
MASK_MODES = ('L', '1')  # '1' (bilevel) is read as 0/255
MAX_REPORTED_PROBLEMS = 3
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


class DatasetError(ValueError):
    """A dataset that cannot be used as it is; the message names the file and the fix."""


def _one_line(error: BaseException) -> str:
    text = ' '.join(str(error).split())
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def is_image_name(name: str) -> bool:
    """Whether a relative path names an image file (by extension), skipping hidden files and
    the metadata folders that some zip tools add."""
    base = name.rsplit('/', 1)[-1]
    if base.startswith('.') or name.startswith('__MACOSX/'):
        return False
    return os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def stem(name: str) -> str:
    """A relative path without its extension: the key that pairs masks with images."""
    return os.path.splitext(name)[0]


def check_command(path: str, seg_path: str) -> str:
    return f'python dataset_tool.py check --data {path} --seg-data {seg_path}'


# ------------------------------------------------------------------------------------------------
# Files of a folder or a zip archive.


class FileTree:
    """Read-only files of a folder or a zip archive, addressed by relative '/'-separated paths.

    A zip is opened lazily in each process (checked by pid) and its handle is dropped when the
    tree is pickled, so DataLoader workers, forked or spawned, each read through their own handle.
    """

    def __init__(self, path: str):
        self.path = path
        self.is_zip = False
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        if os.path.isdir(path):
            self.names = sorted(self._walk(path))
            return
        if not os.path.exists(path):
            raise DatasetError(f'{path}: no such file or folder; pass an existing zip archive or folder')
        if not zipfile.is_zipfile(path):
            raise DatasetError(
                f'{path}: not a zip archive (damaged, truncated or another format); '
                f'pass a folder or a valid zip archive (python dataset_tool.py convert writes one)'
            )
        self.is_zip = True
        try:
            self.names = sorted(name for name in self._archive().namelist() if not name.endswith('/'))
        except (zipfile.BadZipFile, OSError) as error:
            raise DatasetError(
                f'{path}: unreadable zip archive ({_one_line(error)}); pass a folder or a valid zip archive'
            ) from error

    @staticmethod
    def _walk(root: str) -> list[str]:
        names = []
        for folder, _, files in os.walk(root, followlinks=True):
            relative = os.path.relpath(folder, root)
            for file in files:
                name = file if relative == '.' else os.path.join(relative, file)
                names.append(name.replace(os.sep, '/'))
        return names

    def _archive(self) -> zipfile.ZipFile:
        # A handle inherited through fork shares its file offset with the parent's; reopen.
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def open(self, name: str) -> BinaryIO:
        if self.is_zip:
            return self._archive().open(name)
        return open(os.path.join(self.path, *name.split('/')), 'rb')

    def display(self, name: str) -> str:
        """Where `name` lives, for messages: 'data.zip/00000/img00000000.png'."""
        return os.path.join(self.path, name)

    def close(self) -> None:
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip = None
        self._zip_pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state['_zip'] = None
        state['_zip_pid'] = None
        return state


# ------------------------------------------------------------------------------------------------
# Labels.


def _rigid_problem(cam2world: np.ndarray) -> str | None:
    """Why a [4, 4] matrix is not a rigid transform within RIGID_TOLERANCE, or None."""
    last_row = cam2world[3]
    if np.abs(last_row - [0, 0, 0, 1]).max() > RIGID_TOLERANCE:
        return f'its last row is {np.round(last_row, 4).tolist()}, expected [0, 0, 0, 1]'
    rotation = cam2world[:3, :3]
    error = np.abs(rotation @ rotation.T - np.eye(3)).max()
    if error > RIGID_TOLERANCE:
        return f'its rotation part is not orthonormal (max |R R^T - I| = {error:.4g})'
    determinant = np.linalg.det(rotation)
    if abs(determinant - 1) > RIGID_TOLERANCE:
        return f'its rotation part has determinant {determinant:.4g}, expected +1 (a mirror, not a rotation)'
    return None


# The named entries of the normalized intrinsics K (label values 16-24, row-major), and the pose's joints.
INTRINSICS_NAMES = {
    0: 'fx, the focal length',
    2: 'cx, the principal point',
    4: 'fy, the focal length',
    5: 'cy, the principal point',
}
POSE_JOINTS = ('neck', 'head')


def label_field(position: int) -> str:
    """The field of label value `position` (0-30): 'cam2world[1][3]', 'intrinsics[0][0] (fx, the focal length)',
    'pose neck[2]' (axis-angle component)."""
    if position < 16:
        return f'cam2world[{position // 4}][{position % 4}]'
    if position < CAMERA_DIM:
        index = position - 16
        name = INTRINSICS_NAMES.get(index)
        return f'intrinsics[{index // 3}][{index % 3}]' + (f' ({name})' if name else '')
    joint, axis = divmod(position - CAMERA_DIM, 3)
    return f'pose {POSE_JOINTS[joint]}[{axis}]'


def _to_float(value: int | float) -> float:
    """A JSON number as a float; an integer beyond the float range (JSON allows any length) -> inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def label_problem(values, lengths: tuple = (LABEL_DIM,)) -> str | None:
    """Why `values` is not a valid label (31 finite numbers, a rigid cam2world first), or None.

    lengths: the accepted numbers of values (dataset_tool convert also takes 25 camera values).
    The answer completes a sentence that starts with the image's name.
    """
    if not isinstance(values, (list, tuple)):
        return f'has a label of type {type(values).__name__}, expected a list of {LABEL_DIM} numbers'
    if len(values) not in lengths:
        return f'has {len(values)} label values, expected {LABEL_DIM} ({CAMERA_DIM} camera + {POSE_DIM} pose)'
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return f'has non-numeric label values, expected {LABEL_DIM} numbers'
    label = np.array([_to_float(value) for value in values])
    with np.errstate(over='ignore'):
        bad = np.flatnonzero(~np.isfinite(label.astype(np.float32)))  # as the loader reads them
    if len(bad):
        fields = ', '.join(f'{label_field(position)} = {values[position]!r}' for position in bad[:3])
        return (
            f"has non-finite label values (NaN, inf, or beyond float32's ±3.4e38) at positions {bad.tolist()}: "
            f'{fields}{", ..." if len(bad) > 3 else ""}'
        )
    why = _rigid_problem(label[:16].reshape(4, 4))
    if why is not None:
        return f'has a cam2world (label values 0-15, row-major) that is not a rigid transform: {why}'
    return None


def read_labels(
    tree: FileTree, problems: list[str], file_name: str = LABELS_FILE, lengths: tuple = (LABEL_DIM,)
) -> dict[str, np.ndarray | None] | None:
    """The labels of a `dataset.json` in `tree`, float64 [31] (or another of `lengths`) by normalized
    image name ('\\' -> '/', no leading './'), or None when the file is missing or unusable.

    Appends a problem per bad entry; a bad entry's label is None, so that its image does not
    also count as unlabelled.
    """
    where = tree.display(file_name)
    if file_name not in tree.names:
        problems.append(
            f'{tree.path}: {file_name} is missing; add {{"labels": [[relative_path, '
            f'[{LABEL_DIM} numbers]], ...]}} at the top of the dataset (python dataset_tool.py '
            f'convert writes it)'
        )
        return None
    try:
        with tree.open(file_name) as file:
            document = json.loads(file.read().decode('utf-8'))
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        problems.append(f'{where}: not readable as JSON ({_one_line(error)}); fix the file')
        return None
    entries = document.get('labels') if isinstance(document, dict) else None
    if not isinstance(entries, list):
        problems.append(
            f'{where}: no "labels" list; the file must hold {{"labels": [[relative_path, [{LABEL_DIM} numbers]], ...]}}'
        )
        return None
    labels: dict[str, np.ndarray] = {}
    first_entry: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            problems.append(f'{where}: entry {index} is not [relative_path, [{LABEL_DIM} numbers]]; fix that entry')
            continue
        name = entry[0].replace('\\', '/').removeprefix('./')
        if name in first_entry:
            problems.append(
                f"{where}: image '{name}' is labelled twice (entries {first_entry[name]} and {index}); keep one entry"
            )
            continue
        first_entry[name] = index
        problem = label_problem(entry[1], lengths)
        if problem is not None:
            problems.append(f"{where}: image '{name}' {problem}; fix its entry")
            labels[name] = None
            continue
        labels[name] = np.asarray(entry[1], dtype=np.float64)
    return labels


# ------------------------------------------------------------------------------------------------
# Validation.


@dataclasses.dataclass
class _Scan:
    images: FileTree
    masks: FileTree
    image_names: list[str]  # sorted
    mask_names: list[str]  # the mask of each image
    mask_modes: list[str]
    labels: np.ndarray | None  # [N, 31] float64, None without labels
    resolution: int


def _scan(
    path: str, seg_path: str, use_labels: bool, decode: bool, progress: bool = False
) -> tuple[list[str], _Scan | None]:
    """Every problem found in the dataset, and its index when there is none.

    Reads names, labels and image headers; with `decode` also decodes every image and mask.
    """
    problems: list[str] = []
    trees = []
    for tree_path in (path, seg_path):
        try:
            trees.append(FileTree(tree_path))
        except DatasetError as error:
            problems.append(str(error))
            trees.append(None)
    images, masks = trees
    if images is None:
        return problems, None

    image_names = [name for name in images.names if is_image_name(name)]
    if not image_names:
        problems.append(
            f'{path}: no images found (files with an image extension such as .png or .jpg); the dataset is empty'
        )
        return problems, None

    labels = read_labels(images, problems) if use_labels else None
    if labels is not None:
        where = images.display(LABELS_FILE)
        present = set(image_names)
        for name in image_names:
            if name not in labels:
                problems.append(f"{where}: image '{name}' has no label; add an entry for it or remove the image")
        for name in labels:
            if name not in present:
                problems.append(
                    f"{where}: label for '{name}' has no image file in {path}; remove the entry or add the image"
                )

    image_stems = collections.Counter(stem(name) for name in image_names)
    for key, count in image_stems.items():
        if count > 1:
            clashing = ', '.join(name for name in image_names if stem(name) == key)
            problems.append(
                f'{path}: images {clashing} differ only in their extension, so their masks cannot '
                f'be told apart; keep one'
            )

    mask_candidates: dict[str, list[str]] = collections.defaultdict(list)
    if masks is not None:
        for name in masks.names:
            if is_image_name(name):
                mask_candidates[stem(name)].append(name)

    names = tqdm(image_names, desc='checking', unit='img') if progress else image_names
    sizes: dict[str, tuple[int, int]] = {}
    mask_names: list[str] = []
    mask_modes: list[str] = []
    for name in names:
        info = _inspect(images, name, decode, problems)
        if info is not None:
            size, mode = info
            if mode != IMAGE_MODE:
                problems.append(
                    f"{images.display(name)}: image mode '{mode}', expected '{IMAGE_MODE}'; "
                    f'convert it with python dataset_tool.py convert'
                )
            elif size[0] != size[1]:
                problems.append(
                    f'{images.display(name)}: image is {size[0]}x{size[1]}, expected a square '
                    f'image; crop it (python dataset_tool.py convert --transform center-crop)'
                )
            else:
                sizes[name] = size
        if masks is None:
            continue
        candidates = mask_candidates.get(stem(name), [])
        if not candidates:
            problems.append(
                f"{seg_path}: no mask for image '{name}' (looked for '{stem(name)}' with any image "
                f'extension; masks are paired with images by relative path); add the mask or '
                f'remove the image and its label'
            )
            continue
        if len(candidates) > 1:
            problems.append(f"{seg_path}: image '{name}' has several masks ({', '.join(candidates)}); keep one")
            continue
        mask_info = _inspect(masks, candidates[0], decode, problems)
        if mask_info is None:
            continue
        mask_size, mask_mode = mask_info
        if mask_mode not in MASK_MODES:
            problems.append(
                f"{masks.display(candidates[0])}: mask mode '{mask_mode}', expected single-channel "
                f"'L'; save the mask as 8-bit grayscale"
            )
        elif info is not None and mask_size != info[0]:
            problems.append(
                f'{masks.display(candidates[0])}: mask is {mask_size[0]}x{mask_size[1]} but its '
                f"image '{name}' is {info[0][0]}x{info[0][1]}; resize the mask to its image's size"
            )
        mask_names.append(candidates[0])
        mask_modes.append(mask_mode)

    resolution = 0
    if sizes:
        ((common, count),) = collections.Counter(sizes.values()).most_common(1)
        resolution = common[0]
        for name, size in sizes.items():
            if size != common:
                problems.append(
                    f'{images.display(name)}: image is {size[0]}x{size[1]}, but {count} other images '
                    f'are {resolution}x{resolution}; resize it (python dataset_tool.py convert '
                    f'--resolution {resolution})'
                )
    if problems:
        return problems, None
    label_array = np.stack([labels[name] for name in image_names]) if labels is not None else None
    return problems, _Scan(images, masks, image_names, mask_names, mask_modes, label_array, resolution)


def _inspect(tree: FileTree, name: str, decode: bool, problems: list[str]) -> tuple[tuple[int, int], str] | None:
    """(width, height) and PIL mode of one file from its header, fully decoded with `decode`;
    None, with a problem appended, when it cannot be read."""
    try:
        with tree.open(name) as file, Image.open(file) as image:
            size, mode = image.size, image.mode
            if decode:
                try:
                    image.load()
                except Exception as error:
                    problems.append(
                        f'{tree.display(name)}: cannot be decoded, the file is damaged or truncated '
                        f'({_one_line(error)}); re-export it'
                    )
                    return None
    except Exception as error:
        problems.append(
            f'{tree.display(name)}: cannot be read as an image ({_one_line(error)}); '
            f're-export it, or remove it and its label'
        )
        return None
    return size, mode


def check_dataset(path: str, seg_path: str, use_labels: bool = True, progress: bool = False) -> list[str]:
    """Every problem of a dataset (one line each, naming the file and the fix); empty when the
    dataset is usable. Unlike construction, this decodes every image and mask fully."""
    problems, _ = _scan(path, seg_path, use_labels=use_labels, decode=True, progress=progress)
    return problems


# ------------------------------------------------------------------------------------------------
# The dataset.


class PortraitDataset(torch.utils.data.Dataset):
    """Images, person masks and labels, with optional horizontal mirroring.

    Item i -> (image uint8 [3, R, R], mask uint8 [1, R, R], camera float32 [25], pose float32 [6]),
    numpy arrays. With `xflip`, items N..2N-1 repeat items 0..N-1 mirrored: image and mask
    flipped along the width, camera and pose mirrored in world x (camera_utils.flip_camera/flip_pose).
    """

    def __init__(
        self,
        path: str,  # images and dataset.json: a zip or a folder
        seg_path: str,  # masks paired by relative path: a zip or a folder
        resolution: int | None = None,  # expected image size; None accepts any
        max_size: int | None = None,  # at most this many images (before mirroring)
        xflip: bool = False,  # append a mirrored copy of every item
        random_seed: int = 0,  # picks the subset when max_size is smaller
        use_labels: bool = True,  # False: dataset.json optional, labels are zeros
    ):
        problems, scan = _scan(path, seg_path, use_labels=use_labels, decode=False)
        if problems:
            if len(problems) == 1:
                raise DatasetError(problems[0])
            shown = ' | '.join(problems[:MAX_REPORTED_PROBLEMS])
            more = (
                f' | ... {len(problems) - MAX_REPORTED_PROBLEMS} more' if len(problems) > MAX_REPORTED_PROBLEMS else ''
            )
            raise DatasetError(
                f'{len(problems)} problems in dataset {path} (masks {seg_path}): {shown}{more}; '
                f'run `{check_command(path, seg_path)}` for the full list'
            )
        if resolution is not None and resolution != scan.resolution:
            raise DatasetError(
                f'{path}: images are {scan.resolution}x{scan.resolution}, but resolution '
                f'{resolution} was asked for; convert the dataset with python dataset_tool.py '
                f'convert --resolution {resolution}, or ask for {scan.resolution}'
            )
        if max_size is not None and max_size < 1:
            raise DatasetError(f'{path}: max_size must be at least 1, got {max_size}')

        self._path = path
        self._seg_path = seg_path
        self._images = scan.images
        self._masks = scan.masks
        self._image_names = scan.image_names
        self._mask_names = scan.mask_names
        self._mask_modes = scan.mask_modes
        self._resolution = scan.resolution
        self._use_labels = use_labels

        count = len(scan.image_names)
        if scan.labels is None:
            labels = torch.zeros(count, LABEL_DIM)
        else:
            labels = torch.from_numpy(scan.labels.astype(np.float32))
        self._cameras = labels[:, :CAMERA_DIM].numpy()
        self._poses = labels[:, CAMERA_DIM:].numpy()
        self._mirrored_cameras = flip_camera(labels[:, :CAMERA_DIM]).numpy()
        self._mirrored_poses = flip_pose(labels[:, CAMERA_DIM:]).numpy()

        raw_idx = np.arange(count, dtype=np.int64)
        if max_size is not None and max_size < count:
            raw_idx = np.sort(np.random.RandomState(random_seed).permutation(count)[:max_size])
        self._raw_idx = raw_idx
        self._xflip = np.zeros(len(raw_idx), dtype=bool)
        if xflip:
            self._raw_idx = np.concatenate([raw_idx, raw_idx])
            self._xflip = np.concatenate([self._xflip, np.ones(len(raw_idx), dtype=bool)])

    # Shapes and names.

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(os.path.normpath(self._path)))[0]

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def num_channels(self) -> int:
        return 3

    @property
    def image_shape(self) -> list[int]:
        return [3, self._resolution, self._resolution]

    @property
    def mask_shape(self) -> list[int]:
        return [1, self._resolution, self._resolution]

    @property
    def label_shape(self) -> list[int]:
        return [CAMERA_DIM]

    @property
    def label_dim(self) -> int:
        return CAMERA_DIM

    @property
    def pose_shape(self) -> list[int]:
        return [POSE_DIM]

    @property
    def pose_dim(self) -> int:
        return POSE_DIM

    @property
    def has_labels(self) -> bool:
        return self._use_labels

    def __len__(self) -> int:
        return len(self._raw_idx)

    # Items.

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> image uint8 [3, R, R], mask uint8 [1, R, R], camera float32 [25], pose float32 [6]"""
        raw = int(self._raw_idx[idx])
        image = self._load(self._images, self._image_names[raw], IMAGE_MODE, 3)
        mask = self._load(self._masks, self._mask_names[raw], self._mask_modes[raw], 1)
        if self._xflip[idx]:
            image = image[:, :, ::-1]
            mask = mask[:, :, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(mask), self.get_label(idx), self.get_pose(idx)

    def _load(self, tree: FileTree, name: str, mode: str, channels: int) -> np.ndarray:
        """One image file as uint8 [channels, R, R]; a DatasetError names the file if it fails."""
        try:
            with tree.open(name) as file:
                if pyspng is not None and mode != '1' and name.lower().endswith('.png'):
                    array = pyspng.load(file.read())
                else:
                    with Image.open(file) as image:
                        array = np.array(
                            image.convert('L') if mode == '1' else image
                        )  # writable: DataLoader collation wraps it
        except Exception as error:
            raise DatasetError(
                f'{tree.display(name)}: cannot be decoded, the file is damaged or truncated '
                f'({_one_line(error)}); re-export it (`{check_command(self._path, self._seg_path)}` '
                f'lists every such file)'
            ) from error
        if array.ndim == 2:
            array = array[:, :, np.newaxis]
        expected = (self._resolution, self._resolution, channels)
        if array.shape != expected or array.dtype != np.uint8:
            raise DatasetError(
                f'{tree.display(name)}: decoded to {array.dtype} {list(array.shape)}, expected uint8 '
                f'{list(expected)} (height, width, channels); re-export it as 8 bits per channel'
            )
        return array.transpose(2, 0, 1)

    def get_label(self, idx: int) -> np.ndarray:
        """Camera label of item idx (mirrored for mirrored items) -> float32 [25]"""
        cameras = self._mirrored_cameras if self._xflip[idx] else self._cameras
        return cameras[self._raw_idx[idx]].copy()

    def get_pose(self, idx: int) -> np.ndarray:
        """Coarse body pose of item idx (mirrored for mirrored items) -> float32 [6]"""
        poses = self._mirrored_poses if self._xflip[idx] else self._poses
        return poses[self._raw_idx[idx]].copy()

    def get_details(self, idx: int) -> dnnlib.EasyDict:
        """Where item idx comes from: raw_idx (position among the sorted images), xflip, file names."""
        raw = int(self._raw_idx[idx])
        return dnnlib.EasyDict(
            raw_idx=raw,
            xflip=bool(self._xflip[idx]),
            image_name=self._image_names[raw],
            mask_name=self._mask_names[raw],
        )

    # Label statistics over the items (mirrored ones included).

    def _item_labels(self, plain: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
        return np.where(self._xflip[:, np.newaxis], mirrored[self._raw_idx], plain[self._raw_idx])

    def label_mean(self) -> np.ndarray:
        """-> float32 [25]"""
        return self._item_labels(self._cameras, self._mirrored_cameras).mean(axis=0)

    def label_std(self) -> np.ndarray:
        """Per-value standard deviation of the camera labels -> float32 [25]"""
        return self._item_labels(self._cameras, self._mirrored_cameras).std(axis=0)

    def pose_mean(self) -> np.ndarray:
        """-> float32 [6]"""
        return self._item_labels(self._poses, self._mirrored_poses).mean(axis=0)

    def pose_std(self) -> np.ndarray:
        """-> float32 [6]"""
        return self._item_labels(self._poses, self._mirrored_poses).std(axis=0)

    # Resources.

    def close(self) -> None:
        self._images.close()
        self._masks.close()

    def __del__(self):
        # Construction may have failed before the trees existed.
        if '_images' in self.__dict__:
            self.close()
