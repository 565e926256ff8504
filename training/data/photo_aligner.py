"""Raw photos in, the published data-processing layout out: a file, a folder or a zip of photos (JPEG, PNG, WebP,
any size; EXIF orientation applied, grey, palette, CMYK and alpha converted to RGB) -> a folder

    aligned_images/<name>.png   the aligned square crops (training/data/photo_alignment.py)
    mask/<name>.png             their person masks, 0 / 255
    result.json                 {<name>.png: {"camera_pose": 4x4 cam2world, "smpl_pose": 72 zeros, "crop_box",
                                 "yaw_degrees", "pitch_degrees", "camera_method", "yaw_uncertain", "confidences",
                                 "notes"}, ..., "_report": {<source file>: one-line reason or "ok"}}

which invert.py, gen_samples.py --predict-pose and dataset_tool.py convert read. The folder appears only when
complete (training/checkpoints/atomic_files.py); a photo that cannot be aligned gets its one-line reason in the
report and the others are still aligned.
"""

import dataclasses
import io
import json
import os
import zipfile

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from training.checkpoints.atomic_files import FolderOutput
from training.data.dataset import is_image_name, stem
from training.data.landmark_models import PersonDetectors
from training.data.photo_alignment import Alignment, AlignmentError, align_photo
from training.data.photos import REPORT_KEY

ALIGNED_IMAGES, ALIGNED_MASKS, RESULT_FILE = 'aligned_images', 'mask', 'result.json'
MAX_PIXELS = 100_000_000  # larger photos are refused (decompression bombs)


class PhotoSourceError(ValueError):
    """The source as a whole cannot be read (a missing path, a damaged zip); one line."""


def decode_photo(data: bytes) -> np.ndarray:
    """The bytes of an image file -> RGB uint8 [H, W, 3], upright by its EXIF orientation; a file that is not a
    readable image raises AlignmentError with a one-line reason."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise AlignmentError(
                    f'the image is {image.width}x{image.height}, over {MAX_PIXELS // 10**6} megapixels'
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
                rgba = image.convert('RGBA')
                white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            return np.asarray(image.convert('RGB'))
    except AlignmentError:
        raise
    except Image.UnidentifiedImageError:
        raise AlignmentError('not an image file (unknown format)') from None
    except Image.DecompressionBombError:
        raise AlignmentError(f'the image is over {MAX_PIXELS // 10**6} megapixels') from None
    except Exception as error:  # PIL raises many types for damaged files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AlignmentError(f'not a readable image ({reason})') from None


@dataclasses.dataclass
class SourcePhoto:
    name: str  # relative path inside the source ('/'-separated)
    read: object  # () -> bytes


def list_photos(path: str) -> tuple:
    """A file, folder or zip of photos -> ([SourcePhoto] sorted by name, {name: reason} for what cannot be listed,
    e.g. an unreadable folder). A folder takes every file with an image extension, at any depth."""
    if not os.path.exists(path):
        raise PhotoSourceError(f'{path}: no such file or folder')
    if os.path.isdir(path):
        photos, problems = [], {}

        def unreadable(error: OSError) -> None:
            name = os.path.relpath(error.filename, path).replace(os.sep, '/')
            problems[name + '/'] = f'unreadable folder ({error.strerror})'

        for folder, _, files in os.walk(path, onerror=unreadable, followlinks=True):
            for file in files:
                full = os.path.join(folder, file)
                name = os.path.relpath(full, path).replace(os.sep, '/')
                if is_image_name(name):
                    photos.append(SourcePhoto(name, lambda full=full: open(full, 'rb').read()))
        return sorted(photos, key=lambda p: p.name), problems
    if zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
            names = sorted(n for n in archive.namelist() if not n.endswith('/') and is_image_name(n))
        except (zipfile.BadZipFile, OSError) as error:
            raise PhotoSourceError(f'{path}: unreadable zip archive ({error})') from None
        return [SourcePhoto(n, lambda n=n: archive.read(n)) for n in names], {}
    return [SourcePhoto(os.path.basename(path), lambda: open(path, 'rb').read())], {}


def _flat_name(name: str, person: int) -> str:
    base = stem(name).replace('/', '__')
    return f'{base}.png' if person == 0 else f'{base}_person{person + 1}.png'


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG', compress_level=1)
    return buffer.getvalue()


def align_photos(
    source: str,
    dest: str,
    resolution: int = 512,
    all_persons: bool = False,
    refine=None,
    detectors: PersonDetectors | None = None,
    progress: bool = True,
) -> dict:
    """Align every photo of `source` into the folder `dest` (the layout above) -> the report {source name: one-line
    reason, or 'ok' with the method}. `refine(alignment) -> alignment` (the generator's camera search) is applied
    to each aligned person when given. Raises PhotoSourceError when no photo at all could be aligned."""
    photos, report = list_photos(source)
    if not photos and not report:
        raise PhotoSourceError(f'{source}: no image files (JPEG, PNG, WebP, ...)')
    detectors = detectors or PersonDetectors()
    output = FolderOutput(dest)
    entries, used = {}, set()
    try:
        for photo in tqdm(photos, desc='aligning', unit='photo', disable=not progress):
            try:
                try:
                    data = photo.read()
                except OSError as error:
                    raise AlignmentError(f'cannot read the file ({error.strerror})') from None
                alignments = align_photo(decode_photo(data), detectors, resolution, all_persons)
            except AlignmentError as error:
                report[photo.name] = str(error)
                continue
            lines = []
            for person, alignment in enumerate(alignments):
                if refine is not None:
                    alignment = refine(alignment)
                name = _flat_name(photo.name, person)
                if name in used:
                    name = _flat_name(photo.name + f'_{len(used)}', person)
                used.add(name)
                output.add(f'{ALIGNED_IMAGES}/{name}', _png(alignment.image))
                output.add(f'{ALIGNED_MASKS}/{name}', _png(alignment.mask))
                entries[name] = alignment.to_json()
                lines.append(describe(alignment))
            report[photo.name] = 'ok: ' + ' | '.join(lines)
        if not entries:
            raise PhotoSourceError(
                f'{source}: no photo could be aligned: ' + '; '.join(f'{k}: {v}' for k, v in sorted(report.items())[:5])
            )
        entries[REPORT_KEY] = dict(sorted(report.items()))
        output.add(RESULT_FILE, json.dumps(entries, indent=1).encode('utf-8'))
        output.commit()
    except BaseException:
        output.abort()
        raise
    return dict(sorted(report.items()))


def describe(alignment: Alignment) -> str:
    """One line: the camera, its method and the notes."""
    flag = ', uncertain' if alignment.uncertain else ''
    notes = ''.join(f'; {note}' for note in alignment.notes)
    return f'yaw {alignment.yaw:.0f} deg from the {alignment.method}{flag}{notes}'


def align_in_memory(source: str, resolution: int, detectors: PersonDetectors | None = None, refine=None) -> tuple:
    """Raw photos (a file, folder or zip) aligned without writing anything, for the tools that take them directly
    -> (names, photos [N, 3, R, R] in [-1, 1], masks [N, 1, R, R] in [0, 1], cameras [N, 25], report {source name:
    line}). `refine(alignment) -> alignment` (the generator's camera search) is applied to each. Raises
    PhotoSourceError when no photo could be aligned."""
    import torch

    photos, report = list_photos(source)
    detectors = detectors or PersonDetectors()
    names, images, masks, cameras = [], [], [], []
    for photo in photos:
        try:
            try:
                data = photo.read()
            except OSError as error:
                raise AlignmentError(f'cannot read the file ({error.strerror})') from None
            alignment = align_photo(decode_photo(data), detectors, resolution)[0]
        except AlignmentError as error:
            report[photo.name] = str(error)
            continue
        if refine is not None:
            alignment = refine(alignment)
        report[photo.name] = 'aligned: ' + describe(alignment)
        names.append(_flat_name(photo.name, 0))
        images.append(torch.from_numpy(alignment.image).permute(2, 0, 1).float() / 127.5 - 1)
        masks.append(torch.from_numpy(alignment.mask)[None].float() / 255)
        cameras.append(torch.from_numpy(alignment.camera))
    if not names:
        raise PhotoSourceError(
            f'{source}: no photo could be aligned: ' + '; '.join(f'{k}: {v}' for k, v in sorted(report.items())[:5])
        )
    return names, torch.stack(images), torch.stack(masks), torch.stack(cameras), report
