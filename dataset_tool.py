"""Prepare and check portrait datasets for training.

convert: turn a source collection of images, person masks and labels into the two datasets that
training reads (images + dataset.json, masks), at one square resolution, in one run:

    python dataset_tool.py convert --source ~/360PHQ --dest data/portraits-64.zip \\
        --seg-dest data/portraits-64-seg.zip --resolution 64

The source is a folder or a zip archive in one of two layouts (--layout; auto-detected):

dataset (360°PHQ, or your own photos):
    dataset.json          {"labels": [[name, [31 numbers]], ...]}, 25 camera + 6 pose values;
                          names are relative to images/ (an 'images/' prefix is accepted too).
                          EG3D-style labels of 25 camera values are taken too: their body pose
                          is set to zero (training learns the pose).
    images/...            the images, any size and format PIL reads, at any depth
    masks/... or seg/...  one person mask per image at the same relative path; only the
                          extension may differ
    (--images-dir, --masks-dir and --labels name other places; --images-dir . takes a flat
    folder of images, and --masks a separate folder or zip of masks.)

aligned (the output of the published data-processing pipeline):
    aligned_images/...    the aligned square crops
    mask/...              one mask per image, same name, any image extension
    result.json           {name: {"camera_pose": 4x4 cam2world, "smpl_pose": 72 values, ...}}; the
                          label is the cam2world, the normalized intrinsics of focal 6.5104166,
                          and the axis-angles of SMPL joints 12 (neck, smpl_pose[36:39]) and 15
                          (head, smpl_pose[45:48])

Images are written as RGB and masks as 8-bit grayscale PNG, both resized with Lanczos filtering
and named '{idx//1000:05d}/img{idx:08d}.png' in the sorted order of the source images, each
label under the new name. A destination ending in .zip is written as a zip archive, anything
else as a folder; both appear only when complete, and an existing one is replaced only with
--overwrite.

align: raw photos (a file, a folder or a zip; one person each, any size, front, side or back) -> the layout
above (aligned_images/, mask/, result.json), offline on the CPU, with each photo's crop box in the original,
the detectors' confidences, which method gave the camera and a one-line report per photo:

    python dataset_tool.py align --source ~/my-photos --dest data/my-photos-aligned [--network SNAPSHOT]

check: list every problem of a converted dataset (labels, pairing, sizes, modes, damaged files):

    python dataset_tool.py check --data data/portraits-64.zip --seg-data data/portraits-64-seg.zip
"""

import dataclasses
import io
import json
import os

import click
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from training.checkpoints.atomic_files import FolderOutput, ZipOutput
from training.cli import Command, load_generator
from training.data.camera_utils import intrinsics_from_focal
from training.data.dataset import (
    CAMERA_DIM,
    LABEL_DIM,
    LABELS_FILE,
    DatasetError,
    FileTree,
    PortraitDataset,
    check_dataset,
    is_image_name,
    label_problem,
    read_labels,
    stem,
)
from training.data.photos import REPORT_KEY
from training.engines.camera_search import DEFAULT_STEPS as DEFAULT_SEARCH_STEPS
from training.engines.camera_search import CameraSearch

MASK_DIR_DEFAULTS = ('masks', 'seg')
ALIGNED_IMAGES, ALIGNED_MASKS, ALIGNED_RESULT = 'aligned_images', 'mask', 'result.json'
NECK_POSE, HEAD_POSE = slice(36, 39), slice(45, 48)  # SMPL joints 12 and 15 in a 72-value smpl_pose
MAX_LISTED = 5
MAX_RESOLUTION = 8192  # a 8192x8192 RGB image is 200 MB; anything larger is a typo


# ------------------------------------------------------------------------------------------------
# Outputs (they appear only when complete: training/checkpoints/atomic_files.py).


def _check_destination(path: str, option: str, overwrite: bool) -> None:
    if path.lower().endswith('.zip'):
        if os.path.isdir(path):
            raise click.BadParameter(f'{path} is a folder; name a zip file or a folder without .zip', param_hint=option)
        if os.path.exists(path) and not overwrite:
            raise click.BadParameter(
                f'{path} exists; add --overwrite to replace it (once the conversion succeeds)', param_hint=option
            )
    elif os.path.exists(path) and not os.path.isdir(path):
        raise click.BadParameter(
            f'{path} is a file; choose a new name, or end it in .zip to write a zip archive', param_hint=option
        )
    elif os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise click.BadParameter(
            f'{path} is a folder that is not empty; add --overwrite to replace it (once the conversion succeeds)',
            param_hint=option,
        )


def _open_output(path: str):
    return ZipOutput(path) if path.lower().endswith('.zip') else FolderOutput(path)


# ------------------------------------------------------------------------------------------------
# Source.


@dataclasses.dataclass
class _SourceItem:
    image: str  # path inside the source
    mask: str  # path inside the masks' tree (the source, or --masks)
    label_name: str  # name as written in the source's labels
    label: list  # 31 numbers
    camera_only: bool = False  # the source gave 25 camera values: the pose is zero


def _listed(items: list[str]) -> str:
    more = f' and {len(items) - MAX_LISTED} more' if len(items) > MAX_LISTED else ''
    return ', '.join(items[:MAX_LISTED]) + more


def _prefix(folder: str) -> str:
    folder = folder.strip('/')
    return '' if folder in ('', '.') else folder + '/'


def _masks_by_stem(tree: FileTree, prefix: str) -> dict:
    """The mask files under `prefix`, by their path below it without extension -> {stem: [names]}"""
    masks = {}
    for name in tree.names:
        if name.startswith(prefix) and is_image_name(name):
            masks.setdefault(stem(name[len(prefix) :]), []).append(name)
    return masks


def _read_source(
    tree: FileTree, images_dir: str, masks_dir: str | None, labels_file: str, mask_tree: FileTree
) -> list[_SourceItem]:
    """Pair every source image with its mask and label, in sorted order; any gap is a click error.

    The masks are looked up in `mask_tree`: the source itself, or a separate tree (--masks)."""
    source = tree.path
    image_prefix = _prefix(images_dir)
    if masks_dir is None and mask_tree is not tree:
        masks_dir = ''
    if masks_dir is None:
        masks_dir = next(
            (
                folder
                for folder in MASK_DIR_DEFAULTS
                if any(name.startswith(folder + '/') and is_image_name(name) for name in tree.names)
            ),
            None,
        )
    mask_prefix = None if masks_dir is None else _prefix(masks_dir)
    # A flat folder of images (--images-dir .) may hold the masks' folder too.
    images = [
        name
        for name in tree.names
        if name.startswith(image_prefix)
        and is_image_name(name)
        and not (mask_tree is tree and mask_prefix and name.startswith(mask_prefix))
    ]
    if not images:
        raise click.ClickException(
            f"{source}: no images under '{image_prefix}'; pass --images-dir "
            f'(the folder inside the source that holds the images)'
        )
    if mask_prefix is None:
        raise click.ClickException(
            f"{source}: no masks under 'masks/' or 'seg/'; pass --masks-dir, or --masks for a separate folder of masks"
        )
    masks_by_stem = _masks_by_stem(mask_tree, mask_prefix)

    problems: list[str] = []
    labels = read_labels(tree, problems, labels_file.strip('/'), lengths=(CAMERA_DIM, LABEL_DIM))
    if labels is None or problems:
        raise click.ClickException(f'{len(problems)} label problems: ' + ' | '.join(problems[:MAX_LISTED]))
    # Names may be relative to the images folder or to the source.
    labels = {name.removeprefix(image_prefix): (name, value) for name, value in labels.items()}

    items, unlabelled, unmasked, ambiguous = [], [], [], []
    for name in images:
        relative = name[len(image_prefix) :]
        candidates = masks_by_stem.get(stem(relative), [])
        if relative not in labels:
            unlabelled.append(relative)
        elif not candidates:
            unmasked.append(relative)
        elif len(candidates) > 1:
            ambiguous.append(f'{relative} ({", ".join(candidates)})')
        else:
            label_name, value = labels[relative]
            camera_only = len(value) == CAMERA_DIM
            label = value.tolist() + [0.0] * (LABEL_DIM - len(value))
            items.append(_SourceItem(name, candidates[0], label_name, label, camera_only))
    where = tree.display(labels_file.strip('/'))
    if unlabelled:
        raise click.ClickException(
            f'{where}: {len(unlabelled)} images have no label: {_listed(unlabelled)}; '
            f'add their entries or remove the images'
        )
    if unmasked:
        raise click.ClickException(
            f"{mask_tree.path}: {len(unmasked)} images have no mask under '{mask_prefix}' "
            f'(same relative path, any image extension): {_listed(unmasked)}'
        )
    if ambiguous:
        raise click.ClickException(
            f'{source}: {len(ambiguous)} images have several masks: {_listed(ambiguous)}; keep one each'
        )
    unused = len(labels) - len(items)
    if unused:
        click.echo(
            f'note: {where}: {unused} labels name no image under {image_prefix!r}; they are not copied', err=True
        )
    return items


def _read_aligned_source(tree: FileTree) -> list[_SourceItem]:
    """The published pipeline's output (aligned_images/, mask/, result.json) -> items with 31-value labels:
    cam2world, the normalized intrinsics of focal FOCAL, the neck and head axis-angles of smpl_pose."""
    where = tree.display(ALIGNED_RESULT)
    try:
        with tree.open(ALIGNED_RESULT) as file:
            entries = json.loads(file.read().decode('utf-8'))
    except (OSError, KeyError, ValueError) as error:
        raise click.ClickException(
            f'{where}: cannot be read as JSON ({type(error).__name__}: {error}); fix the file'
        ) from None
    if isinstance(entries, dict):
        entries.pop(REPORT_KEY, None)
    if not isinstance(entries, dict) or not entries:
        raise click.ClickException(
            f'{where}: expected {{name: {{"camera_pose": 4x4, "smpl_pose": 72 values}}}} with at least one name'
        )
    image_prefix, mask_prefix = _prefix(ALIGNED_IMAGES), _prefix(ALIGNED_MASKS)
    masks_by_stem = _masks_by_stem(tree, mask_prefix)
    intrinsics = intrinsics_from_focal(dtype=torch.float64).reshape(-1).tolist()
    items, unlisted, unmasked = [], [], []
    used = set()
    for name in (name for name in tree.names if name.startswith(image_prefix) and is_image_name(name)):
        relative = name[len(image_prefix) :]
        key = relative if relative in entries else stem(relative) if stem(relative) in entries else None
        masks = masks_by_stem.get(stem(relative), [])
        if key is None:
            unlisted.append(relative)
            continue
        if len(masks) != 1:
            unmasked.append(relative)
            continue
        used.add(key)
        entry = entries[key] if isinstance(entries[key], dict) else {}
        try:
            cam2world = np.asarray(entry.get('camera_pose'), dtype=np.float64)
            smpl_pose = np.asarray(entry.get('smpl_pose'), dtype=np.float64)
        except (TypeError, ValueError):
            cam2world = smpl_pose = np.zeros(0)
        if cam2world.shape != (4, 4) or smpl_pose.shape != (72,):
            raise click.ClickException(
                f'{where}: {key!r} needs a 4x4 camera_pose and 72 smpl_pose values, got '
                f'{"x".join(map(str, cam2world.shape)) or "none"} and '
                f'{"x".join(map(str, smpl_pose.shape)) or "none"}; fix its entry'
            )
        label = (
            cam2world.reshape(-1).tolist() + intrinsics + smpl_pose[NECK_POSE].tolist() + smpl_pose[HEAD_POSE].tolist()
        )
        problem = label_problem(label)
        if problem is not None:
            raise click.ClickException(f'{where}: {key!r} {problem}; fix its entry')
        items.append(_SourceItem(name, masks[0], key, label))
    if not items and not unlisted and not unmasked:
        raise click.ClickException(f"{tree.path}: no images under '{image_prefix}'")
    if unlisted:
        raise click.ClickException(
            f'{where}: {len(unlisted)} images have no entry: {_listed(unlisted)}; add their '
            f'entries or remove the images'
        )
    if unmasked:
        raise click.ClickException(
            f"{tree.path}: {len(unmasked)} images have no single mask under '{mask_prefix}' "
            f'(same name, any image extension): {_listed(unmasked)}'
        )
    if len(used) < len(entries):
        click.echo(
            f'note: {where}: {len(entries) - len(used)} entries name no image under {image_prefix!r}; they '
            f'are not copied',
            err=True,
        )
    return items


def _detect_layout(tree: FileTree) -> str:
    aligned = ALIGNED_RESULT in tree.names and any(name.startswith(_prefix(ALIGNED_IMAGES)) for name in tree.names)
    return 'aligned' if aligned else 'dataset'


def _read_image(tree: FileTree, name: str, mode: str) -> Image.Image:
    try:
        with tree.open(name) as file, Image.open(file) as image:
            image.load()
            return image.convert(mode)
    except Exception as error:
        raise click.ClickException(
            f'{tree.display(name)}: cannot be read as an image ({type(error).__name__}: '
            f'{error}); re-export it or remove it and its label'
        ) from error


def _transform(image: Image.Image, resolution: int, transform: str, resample: int) -> Image.Image:
    """Center-crop to the largest square (or keep the whole frame), then resize to resolution²."""
    if transform == 'center-crop':
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), resample)
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG', compress_level=1)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# Commands.


@click.group()
def main():
    """Prepare (convert) and check portrait datasets: images, person masks and camera + pose labels."""


@main.command(cls=Command)
@click.option(
    '--source',
    required=True,
    type=click.Path(exists=True),
    help='Source folder or zip archive (layout: see dataset_tool.py)',
)
@click.option('--dest', required=True, type=click.Path(), help='Output images + dataset.json: NAME.zip or a new folder')
@click.option('--seg-dest', required=True, type=click.Path(), help='Output masks: NAME.zip or a new folder')
@click.option(
    '--resolution', required=True, type=click.IntRange(1, MAX_RESOLUTION), help='Output width and height in pixels'
)
@click.option(
    '--transform',
    type=click.Choice(['center-crop', 'resize']),
    default='center-crop',
    show_default=True,
    help='center-crop: crop the largest centred square, then resize; resize: squeeze the whole frame',
)
@click.option(
    '--max-images', type=click.IntRange(min=1), default=None, help='Convert only the first K images (sorted by name)'
)
@click.option('--images-dir', default='images', show_default=True, help='Folder of the images inside the source')
@click.option('--masks-dir', default=None, help="Folder of the masks inside the source  [default: 'masks', else 'seg']")
@click.option('--labels', 'labels_file', default=LABELS_FILE, show_default=True, help='Labels file inside the source')
@click.option(
    '--masks',
    'masks_path',
    type=click.Path(exists=True),
    default=None,
    help="A separate folder or zip of masks, at the images' relative paths  [default: inside the source]",
)
@click.option(
    '--layout',
    type=click.Choice(['auto', 'dataset', 'aligned']),
    default='auto',
    show_default=True,
    help='dataset: dataset.json, images/, masks/; aligned: aligned_images/, mask/, result.json',
)
@click.option('--overwrite', is_flag=True, help='Replace existing destinations (once the conversion succeeds)')
def convert(
    source: str,
    dest: str,
    seg_dest: str,
    resolution: int,
    transform: str,
    max_images: int | None,
    images_dir: str,
    masks_dir: str | None,
    labels_file: str,
    masks_path: str | None,
    layout: str,
    overwrite: bool,
):
    """Convert images, masks and labels into a training dataset at one square resolution."""
    if os.path.abspath(dest) == os.path.abspath(seg_dest):
        raise click.BadParameter(
            'must differ from --dest: images and masks go to separate datasets', param_hint='--seg-dest'
        )
    for path, option in ((dest, '--dest'), (seg_dest, '--seg-dest')):
        if os.path.abspath(path) in (os.path.abspath(source), os.path.abspath(masks_path or source)):
            raise click.BadParameter('must differ from --source and --masks', param_hint=option)
        _check_destination(path, option, overwrite)
    try:
        tree = FileTree(source)
    except DatasetError as error:
        raise click.BadParameter(str(error), param_hint='--source') from error
    try:
        mask_tree = tree if masks_path is None else FileTree(masks_path)
    except DatasetError as error:
        raise click.BadParameter(str(error), param_hint='--masks') from error

    if layout == 'auto':
        layout = _detect_layout(tree)
    if layout == 'aligned':
        if masks_path is not None:
            raise click.BadParameter(
                'the aligned layout keeps its masks in mask/ inside the source', param_hint='--masks'
            )
        items = _read_aligned_source(tree)
    else:
        items = _read_source(tree, images_dir, masks_dir, labels_file, mask_tree)
    if max_images is not None:
        items = items[:max_images]
    camera_only = sum(item.camera_only for item in items)
    if camera_only:
        click.echo(
            f'note: {camera_only} labels have {CAMERA_DIM} camera values and no body pose; their pose is '
            f'set to zero (training learns the pose)',
            err=True,
        )

    outputs = []
    try:
        for path in (dest, seg_dest):
            outputs.append(_open_output(path))
    except OSError as err:
        for output in outputs:
            output.abort()
        raise click.ClickException(f'cannot write {path}: {err.strerror}; choose a writable place for it') from None
    image_output, mask_output = outputs
    labels, source_names, not_square = [], {}, 0
    try:
        for idx, item in enumerate(tqdm(items, desc='converting', unit='img')):
            image = _read_image(tree, item.image, 'RGB')
            mask = _read_image(mask_tree, item.mask, 'L')
            if mask.size != image.size:
                raise click.ClickException(
                    f'{mask_tree.display(item.mask)}: mask is {mask.size[0]}x{mask.size[1]} but '
                    f'its image is {image.size[0]}x{image.size[1]}; resize the mask to its image'
                )
            not_square += image.size[0] != image.size[1]
            name = f'{idx // 1000:05d}/img{idx:08d}.png'
            # Images and masks alike with Lanczos filtering, as the published data tool resizes both.
            image_output.add(name, _png(_transform(image, resolution, transform, Image.Resampling.LANCZOS)))
            mask_output.add(name, _png(_transform(mask, resolution, transform, Image.Resampling.LANCZOS)))
            labels.append([name, item.label])
            source_names[name] = item.image
        document = {'labels': labels, 'source_names': source_names}
        image_output.add(LABELS_FILE, json.dumps(document).encode('utf-8'))
        for output in outputs:
            output.commit()
    except BaseException:
        for output in outputs:
            output.abort()
        raise
    click.echo(f'wrote {len(items)} images to {dest} and their masks to {seg_dest} ({resolution}x{resolution})')
    if not_square:
        click.echo(
            f'note: {not_square} source images were not square; labels are copied unchanged, so their '
            f'intrinsics must already describe the {transform} result',
            err=True,
        )


@main.command(cls=Command)
@click.option('--source', required=True, type=click.Path(), help='A photo, a folder of photos (any depth) or a zip')
@click.option('--dest', required=True, type=click.Path(), help='Output folder (aligned_images/, mask/, result.json)')
@click.option(
    '--resolution', type=click.IntRange(64, MAX_RESOLUTION), default=512, show_default=True, help='Side of the crops'
)
@click.option('--all', 'all_persons', is_flag=True, help='Align every person of a photo, not only the largest')
@click.option(
    '--network',
    default=None,
    help='Generator snapshot: refine each camera by analysis by synthesis over the whole circle of yaws (the '
    "detectors' yaw a prior where a face is in sight)",
)
@click.option(
    '--refine-steps',
    type=click.IntRange(min=1),
    default=DEFAULT_SEARCH_STEPS,
    show_default=True,
    help='Latent steps per candidate camera',
)
@click.option('--overwrite', is_flag=True, help='Replace an existing --dest (once the alignment succeeds)')
@click.option('--progress/--no-progress', default=True, show_default=True, help='Show a progress bar')
def align(
    source: str,
    dest: str,
    resolution: int,
    all_persons: bool,
    network: str | None,
    refine_steps: int,
    overwrite: bool,
    progress: bool,
):
    """Align raw photos: crop, person mask and camera, in the published data-processing layout."""
    from training.data.landmark_models import ModelFilesError, PersonDetectors
    from training.data.photo_aligner import PhotoSourceError, align_photos

    if not os.path.exists(source):
        raise click.BadParameter(f'{source}: no such file or folder', param_hint='--source')
    if os.path.abspath(dest) == os.path.abspath(source):
        raise click.BadParameter('must differ from --source', param_hint='--dest')
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise click.BadParameter(f'{dest} is a file; name a new folder', param_hint='--dest')
    if os.path.isdir(dest) and os.listdir(dest) and not overwrite:
        raise click.BadParameter(
            f'{dest} is a folder that is not empty; add --overwrite to replace it (once the alignment succeeds)',
            param_hint='--dest',
        )
    try:
        detectors = PersonDetectors()
    except ModelFilesError as error:
        raise click.ClickException(str(error)) from None
    refine = None
    if network is not None:
        refine = CameraSearch(load_generator(network, None, 0, torch.device('cpu'), False), steps=refine_steps)
    try:
        report = align_photos(source, dest, resolution, all_persons, refine, detectors, progress)
    except PhotoSourceError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f'cannot write {dest}: {error.strerror}; choose a writable place for it') from None
    failed = 0
    for name, line in report.items():
        click.echo(f'{name}: {line}')
        failed += not line.startswith('ok')
    click.echo(
        f'aligned {len(report) - failed} of {len(report)} photos into {dest} ({resolution}x{resolution}); '
        f'the report is in result.json under {REPORT_KEY!r}'
    )


@main.command(cls=Command)
@click.option('--data', required=True, type=click.Path(exists=True), help='Images + dataset.json: zip or folder')
@click.option('--seg-data', required=True, type=click.Path(exists=True), help='Masks: zip or folder')
@click.option('--progress/--no-progress', default=True, show_default=True, help='Show a progress bar')
@click.pass_context
def check(ctx: click.Context, data: str, seg_data: str, progress: bool):
    """Print every problem of a dataset (exit code 1 if any), decoding every file."""
    problems = check_dataset(data, seg_data, progress=progress)
    for problem in problems:
        click.echo(problem)
    if problems:
        click.echo(f'{len(problems)} problems found', err=True)
        ctx.exit(1)
    dataset = PortraitDataset(data, seg_data)
    resolution = dataset.resolution
    click.echo(f'{data}: OK, {len(dataset)} images {resolution}x{resolution} with labels, masks in {seg_data}')


@main.command(cls=Command)
@click.option('--dest', required=True, type=click.Path(), help='Output images + dataset.json: NAME.zip')
@click.option('--seg-dest', required=True, type=click.Path(), help='Output masks: NAME.zip')
@click.option('--num-images', type=click.IntRange(min=1), default=2000, show_default=True, help='Number of images')
@click.option(
    '--resolution',
    type=click.IntRange(1, MAX_RESOLUTION),
    default=64,
    show_default=True,
    help='Width and height in pixels',
)
@click.option(
    '--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Image idx depends only on (seed, idx)'
)
@click.option('--workers', type=click.IntRange(min=1), default=2, show_default=True, help='Rendering processes')
def synth(dest: str, seg_dest: str, num_images: int, resolution: int, seed: int, workers: int):
    """Render the built-in synthetic 360-degree portrait set (exact camera and pose labels)."""
    from training.data.synthetic import build_synthetic_dataset

    if os.path.abspath(dest) == os.path.abspath(seg_dest):
        raise click.BadParameter(
            'must differ from --dest: images and masks go to separate datasets', param_hint='--seg-dest'
        )
    for path, option in ((dest, '--dest'), (seg_dest, '--seg-dest')):
        if not path.lower().endswith('.zip') or os.path.isdir(path):
            raise click.BadParameter(f'{path}: name a zip file (NAME.zip)', param_hint=option)
    try:
        build_synthetic_dataset(
            dest, seg_dest, num_images=num_images, resolution=resolution, seed=seed, workers=workers
        )
    except OSError as err:
        raise click.ClickException(f'{err.filename or dest}: cannot write the data set ({err.strerror})') from None
    click.echo(
        f'wrote {num_images} synthetic images to {dest} and their masks to {seg_dest} ({resolution}x{resolution})'
    )


if __name__ == '__main__':
    main()
