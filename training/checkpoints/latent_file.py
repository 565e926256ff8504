"""The .npz file of one latent (an inverted photo, or any other): its ws and, optionally, the body pose and
camera it goes with. Arrays: `ws` [1, num_ws, w_dim], `pose` [1, 6] (neck, head axis-angle, radians) and
`camera` [1, 25] (cam2world 16 + intrinsics 9), all float32."""

import zipfile

import numpy as np
import torch

from training.checkpoints.atomic_files import atomic_write

_SHAPES = {'pose': (1, 6), 'camera': (1, 25)}


def _shape_text(shape: tuple) -> str:
    return '[' + ', '.join(str(n) for n in shape) + ']'


def save_latent(path: str, ws: torch.Tensor, pose: torch.Tensor | None, camera: torch.Tensor | None) -> None:
    """Write ws [1, num_ws, w_dim], pose [1, 6] or None, camera [1, 25] or None to `path` (.npz, float32).

    pose and camera are stored only when given. The file is written next to `path` and moved over it
    in one step, so an interrupted write leaves no half file.
    """
    arrays = {'ws': ws, 'pose': pose, 'camera': camera}
    expected = {'ws': (1, None, None), **_SHAPES}
    for name, value in arrays.items():
        if value is None:
            continue
        if value.ndim != len(expected[name]) or any(
            e is not None and e != n for e, n in zip(expected[name], value.shape)
        ):
            raise ValueError(
                f'save_latent: {name} has shape {_shape_text(value.shape)}, expected '
                f'{_shape_text(["N" if e is None else e for e in expected[name]])}'
            )
    arrays = {name: value.detach().cpu().float().numpy() for name, value in arrays.items() if value is not None}
    atomic_write(path, lambda file: np.savez(file, **arrays))


def _read_array(path: str, data: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    try:
        array = data[name]
    except ValueError:
        # allow_pickle=False makes numpy refuse an object array from its header, before unpickling anything.
        raise ValueError(
            f'{path}: {name} is an object array (its pickled data was not loaded) or damaged; '
            f'a latent file holds float arrays only'
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise ValueError(
            f'{path}: cannot read {name} ({type(err).__name__}); the file is damaged, write it again'
        ) from None
    if not isinstance(array, np.ndarray):  # numpy hands back the raw bytes of a member that is no .npy
        raise ValueError(f'{path}: {name} is not a .npy array; write latents with save_latent')
    if array.dtype.kind not in 'fiu':
        raise ValueError(f'{path}: {name} has dtype {array.dtype}; a latent file holds float arrays only')
    if not np.isfinite(array).all():
        raise ValueError(f'{path}: {name} holds non-finite values (NaN or inf)')
    return array.astype(np.float32)


def load_latent(path: str, G: torch.nn.Module, device: torch.device) -> dict:
    """Read a latent file written by save_latent, checked against generator G.

    -> {'ws': [1, num_ws, w_dim], 'pose': [1, 6] or None, 'camera': [1, 25] or None}, float32 tensors on `device`.
    Raises ValueError, one line naming the file and the problem, for a file that is unreadable, not an
    .npz, holds pickled data or non-finite values, lacks `ws`, or has arrays of the wrong shape for G.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except OSError as err:
        raise ValueError(
            f'{path}: cannot read ({err.strerror or type(err).__name__}); give an existing .npz file'
        ) from None
    except (ValueError, EOFError, zipfile.BadZipFile):
        raise ValueError(f'{path}: not an .npz file; write latents with save_latent') from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f'{path}: a single .npy array, not an .npz file; write latents with save_latent')
    with data:
        if 'ws' not in data.files:
            raise ValueError(
                f'{path}: no ws array (found: {", ".join(data.files) or "none"}); write latents with save_latent'
            )
        arrays = {name: _read_array(path, data, name) for name in ('ws', *_SHAPES) if name in data.files}
    expected = {'ws': (1, G.num_ws, G.w_dim), **_SHAPES}
    for name, array in arrays.items():
        if array.shape != expected[name]:
            what = ' (num_ws, w_dim of this generator); invert with the same network' if name == 'ws' else ''
            raise ValueError(
                f'{path}: {name} has shape {_shape_text(array.shape)}, expected {_shape_text(expected[name])}{what}'
            )
    return {name: torch.from_numpy(arrays[name]).to(device) if name in arrays else None for name in ('ws', *_SHAPES)}
