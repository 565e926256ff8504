"""training/checkpoints/latent_file.py: a latent .npz round trip, and one-line errors for every bad file, pickles unopened."""

import os
import pickle
import types

import numpy as np
import pytest
import torch

from training.checkpoints.latent_file import load_latent, save_latent

G = types.SimpleNamespace(num_ws=4, w_dim=8)  # load_latent reads only the latent shape of the generator
CPU = torch.device('cpu')


class _Hostile:
    """Unpickling this creates the file `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


def _latent(seed: int = 0) -> dict:
    rng = torch.Generator().manual_seed(seed)
    return dict(
        ws=torch.randn(1, G.num_ws, G.w_dim, generator=rng),
        pose=torch.randn(1, 6, generator=rng),
        camera=torch.randn(1, 25, generator=rng),
    )


@pytest.mark.parametrize('given', [('ws',), ('ws', 'pose'), ('ws', 'camera'), ('ws', 'pose', 'camera')])
def test_round_trip(tmp_path, given):
    latent = _latent()
    path = str(tmp_path / 'face.npz')
    save_latent(path, *(latent[name] if name in given else None for name in ('ws', 'pose', 'camera')))
    assert sorted(np.load(path).files) == sorted(given)
    loaded = load_latent(path, G, CPU)
    for name in ('ws', 'pose', 'camera'):
        if name in given:
            assert loaded[name].dtype == torch.float32 and loaded[name].device == CPU
            assert torch.equal(loaded[name], latent[name])
        else:
            assert loaded[name] is None
    assert os.listdir(tmp_path) == ['face.npz']  # no temporary file left behind


def test_save_overwrites_and_refuses_wrong_shapes(tmp_path):
    path = str(tmp_path / 'face.npz')
    save_latent(path, _latent(0)['ws'], None, None)
    save_latent(path, _latent(1)['ws'], None, None)
    assert torch.equal(load_latent(path, G, CPU)['ws'], _latent(1)['ws'])
    with pytest.raises(ValueError, match=r'pose has shape \[6\], expected \[1, 6\]'):
        save_latent(str(tmp_path / 'bad.npz'), _latent()['ws'], torch.zeros(6), None)
    assert not os.path.exists(tmp_path / 'bad.npz')


def _write_bad(tmp_path, case: str) -> tuple:
    """A bad latent file -> (path, a piece of the expected message)."""
    path = str(tmp_path / f'{case}.npz')
    ws = np.zeros((1, G.num_ws, G.w_dim), np.float32)
    if case == 'missing-file':
        return path, 'cannot read'
    if case == 'text':
        with open(path, 'w') as f:
            f.write('not a latent\nsecond line\n')
        return path, 'not an .npz file'
    if case == 'empty':
        open(path, 'wb').close()
        return path, 'not an .npz file'
    if case == 'npy':
        with open(path, 'wb') as f:
            np.save(f, ws)
        return path, 'single .npy array'
    if case == 'no-ws':
        np.savez(path, w=ws)
        return path, 'no ws array (found: w)'
    if case == 'ws-shape':
        np.savez(path, ws=np.zeros((1, G.num_ws + 1, G.w_dim), np.float32))
        return path, f'ws has shape [1, {G.num_ws + 1}, {G.w_dim}], expected [1, {G.num_ws}, {G.w_dim}]'
    if case == 'ws-2d':
        np.savez(path, ws=ws[0])
        return path, f'ws has shape [{G.num_ws}, {G.w_dim}], expected [1, {G.num_ws}, {G.w_dim}]'
    if case == 'nan':
        np.savez(path, ws=np.where(np.arange(G.w_dim) == 3, np.nan, ws))
        return path, 'ws holds non-finite values'
    if case == 'inf-pose':
        np.savez(path, ws=ws, pose=np.array([[0, 0, 0, np.inf, 0, 0]], np.float32))
        return path, 'pose holds non-finite values'
    if case == 'pose-shape':
        np.savez(path, ws=ws, pose=np.zeros((1, 31), np.float32))
        return path, 'pose has shape [1, 31], expected [1, 6]'
    if case == 'camera-shape':
        np.savez(path, ws=ws, camera=np.zeros((25,), np.float32))
        return path, 'camera has shape [25], expected [1, 25]'
    if case == 'strings':
        np.savez(path, ws=np.array(['a', 'b']))
        return path, 'dtype <U1'
    raise AssertionError(case)


@pytest.mark.parametrize(
    'case',
    [
        'missing-file',
        'text',
        'empty',
        'npy',
        'no-ws',
        'ws-shape',
        'ws-2d',
        'nan',
        'inf-pose',
        'pose-shape',
        'camera-shape',
        'strings',
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, case):
    path, message = _write_bad(tmp_path, case)
    with pytest.raises(ValueError) as info:
        load_latent(path, G, CPU)
    text = str(info.value)
    assert '\n' not in text and text.startswith(f'{path}: ') and message in text, text


@pytest.mark.parametrize('where', ['object-array', 'plain-pickle'])
def test_pickled_data_is_refused_unopened(tmp_path, where):
    marker = str(tmp_path / 'unpickled')
    path = str(tmp_path / 'hostile.npz')
    if where == 'object-array':  # np.savez pickles object arrays into the .npy member
        np.savez(path, ws=np.array([_Hostile(marker)], dtype=object))
    else:
        with open(path, 'wb') as f:
            pickle.dump({'ws': _Hostile(marker)}, f)
    with pytest.raises(ValueError) as info:
        load_latent(path, G, CPU)
    text = str(info.value)
    assert '\n' not in text and text.startswith(f'{path}: '), text
    assert ('object array' if where == 'object-array' else 'not an .npz file') in text
    assert not os.path.exists(marker)
