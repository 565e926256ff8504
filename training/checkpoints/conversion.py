"""A published 3DPortraitGAN checkpoint written as this project's weights file (tools/convert_checkpoint.py).

The .pkl is read without running anything from it (training.checkpoints.safe_pickle), its networks
are rebuilt as this project's classes (training.checkpoints.authors) and saved with
formats.save_weights; the pose-prediction settings in the .json beside it are carried inside the
weights file and copied beside it.
"""

import json
import os
from typing import Any

import torch

from training.checkpoints import authors, formats, run_files, safe_pickle
from training.checkpoints.atomic_files import atomic_write
from training.checkpoints.safe_pickle import UnsafePickleError


def _read_release_pickle(path: str, smpl_path: str | None) -> dict[str, Any]:
    """A published checkpoint with its networks converted; raises CheckpointError with a one-line reason."""
    if not os.path.isfile(path):
        raise formats.CheckpointError(f'{path}: no such file; pass the path of a published 3DPortraitGAN .pkl')
    try:
        with open(path, 'rb') as file:
            raw = safe_pickle.load(file)
        if not authors.is_release_snapshot(raw):
            raise formats.CheckpointError(
                f'{path}: not a published 3DPortraitGAN checkpoint (no {authors.GENERATOR_CLASS} '
                f"record nor {authors.DISCRIMINATOR_PATH}); this project's own snapshots need "
                f'no conversion'
            )
        return authors.rebuild_release_snapshot(raw, smpl_path)
    except UnsafePickleError as error:
        raise formats.CheckpointError(f'{path}: not converted: {error}; nothing from the file was run') from None
    except (*formats.UNREADABLE_PICKLE_ERRORS, AttributeError) as error:
        raise formats.CheckpointError(
            f'{path}: not a readable network pickle ({type(error).__name__}: {error}); '
            f'the file is truncated, corrupt or of another kind'
        ) from None


def convert_checkpoint(in_path: str, out_path: str, smpl_path: str | None = None) -> tuple[str, str | None]:
    """Write a published checkpoint as this project's weights file, carrying the pose-prediction settings of
    the .json beside in_path, and write them beside out_path too.

    in_path: a published .pkl (its settings in the .json of the same stem); out_path: the weights
    file to write (see formats.save_weights). -> (out_path, the JSON written, or None when
    in_path has no JSON beside it). Raises CheckpointError with a one-line reason.
    """
    data = _read_release_pickle(in_path, smpl_path)
    modules = {key: data[key] for key in authors.NETWORK_KEYS if isinstance(data.get(key), torch.nn.Module)}
    extra: dict[str, Any] = {}
    generator = modules.get('G_ema', modules.get('G'))
    if generator is not None:
        extra['neural_rendering_resolution'] = generator.neural_rendering_resolution
    if isinstance(data.get('training_set_kwargs'), dict):
        extra['training_set_kwargs'] = dict(data['training_set_kwargs'])
    try:
        settings = run_files.find_pose_predict_kwargs(in_path, {})
    except (OSError, ValueError) as error:
        raise formats.CheckpointError(str(error)) from None
    if settings is not None:
        extra[run_files.POSE_PREDICT_KEY] = settings
    try:
        formats.save_weights(out_path, modules, extra)
    except ValueError as error:
        raise formats.CheckpointError(f'{out_path}: not written: {error}') from None
    if settings is None:
        return out_path, None
    json_path = run_files.pose_predict_kwargs_for(out_path)
    text = json.dumps(settings, indent=2) + '\n'
    atomic_write(json_path, lambda file: file.write(text.encode()))
    return out_path, json_path
