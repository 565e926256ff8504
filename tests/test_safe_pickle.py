"""Tests for training/checkpoints/safe_pickle.py and its use by every tool: own snapshots load without running
code from the file and render exactly as the trusted unpickling does; a pickle that would run
code is refused by every tool (nothing runs); --trust-pickle is the explicit opt-in."""

import importlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import calc_metrics
import extract_shapes
import gen_samples
import gen_videos
from tests.tiny_run import write_tiny_snapshot
from torch_utils import persistence
from training.checkpoints import formats, run_files, safe_pickle
from training.data.camera_utils import frontal_camera

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


class _WritesMarker:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code a pickle can run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


def _hostile_pickle(directory, name='network-snapshot-000000.pkl') -> tuple:
    marker = str(directory / 'marker')
    path = directory / name
    with open(path, 'wb') as file:
        pickle.dump({'G_ema': _WritesMarker(marker), 'G': None}, file)
    return str(path), marker


def _render(G) -> torch.Tensor:
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(4)  # the stratified depths draw from the global generator
    c = frontal_camera(2)
    with torch.no_grad():
        return G(z, c, noise_mode='const')['image']


def test_own_snapshot_loads_without_its_code_and_renders_identically(run_dir):
    path = os.path.join(run_dir, 'network-snapshot-000000.pkl')
    with open(path, 'rb') as file:
        raw = safe_pickle.load(file)
    assert isinstance(raw['G_ema'], safe_pickle.PersistentRecord)
    assert raw['G_ema'].qualified_name == 'training.networks.triplane.TriPlaneGenerator'
    safe = formats.load_network_pickle(path)
    trusted = formats.load_network_pickle(path, trust_pickle=True)
    assert set(safe) == set(trusted)
    assert safe['training_set_kwargs'] == trusted['training_set_kwargs']
    for key in ('G', 'D', 'G_ema', 'D_ema'):
        assert type(safe[key]) is type(trusted[key])
        safe_state, trusted_state = safe[key].state_dict(), trusted[key].state_dict()
        assert safe_state.keys() == trusted_state.keys()
        assert all(torch.equal(safe_state[name], trusted_state[name]) for name in safe_state)
        assert safe[key].training == trusted[key].training
    assert torch.equal(_render(safe['G_ema']), _render(trusted['G_ema']))


def test_hostile_pickle_is_refused_without_running_anything(tmp_path):
    path, marker = _hostile_pickle(tmp_path)
    for loader in (formats.load_network_pickle, formats.load_any):
        with pytest.raises(formats.CheckpointError, match=r'calls io\.open.*nothing from the file was run'):
            loader(path)
    assert not os.path.exists(marker)
    with open(path, 'rb') as file:
        with pytest.raises(safe_pickle.UnsafePickleError):
            safe_pickle.load(file)
    assert not os.path.exists(marker)


@pytest.mark.parametrize(
    'tool, extra',
    [
        (gen_samples.main, ['--seeds', '0']),
        (gen_videos.main, ['--seeds', '0']),
        (extract_shapes.main, ['--seeds', '0']),
        (calc_metrics.main, ['--metrics', 'pose_err']),
    ],
)
def test_every_tool_refuses_a_hostile_pickle(tmp_path, tool, extra):
    path, marker = _hostile_pickle(tmp_path)
    result = CliRunner().invoke(
        tool,
        ['--network', path, '--device', 'cpu', '--outdir', str(tmp_path / 'out')] + extra
        if tool is not calc_metrics.main
        else ['--network', path, '--device', 'cpu'] + extra,
    )
    assert result.exit_code != 0 and not os.path.exists(marker)
    lines = result.output.strip().splitlines()
    assert 'Traceback' not in result.output and 'calls io.open' in lines[-1] and '--trust-pickle' in lines[-1]


def test_train_resume_refuses_a_hostile_pickle(tmp_path):
    path, marker = _hostile_pickle(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, 'train.py'),
            '--resume',
            path,
            '--resume_kimg',
            '0',
            '--kimg',
            '0.004',
            '--outdir',
            str(tmp_path / 'runs'),
            '--workers',
            '0',
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode != 0 and not os.path.exists(marker)
    assert 'Traceback' not in result.stderr and 'calls io.open' in result.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / 'runs')


def test_trust_pickle_loads_by_running_the_code(run_dir, tmp_path):
    # The opt-in on a benign pickle: the tool runs, through pickle.load.
    out = tmp_path / 'out'
    result = CliRunner().invoke(
        gen_samples.main,
        [
            '--network',
            os.path.join(run_dir, 'network-snapshot-000000.pkl'),
            '--seeds',
            '0',
            '--views',
            'front',
            '--device',
            'cpu',
            '--outdir',
            str(out),
            '--trust-pickle',
        ],
    )
    assert result.exit_code == 0, result.output
    assert os.path.isfile(out / 'seed0000.png')
    # On a hostile one the code runs: that is what the flag means.
    path, marker = _hostile_pickle(tmp_path)
    with pytest.raises(formats.CheckpointError):
        formats.load_network_pickle(path, trust_pickle=True)
    assert os.path.exists(marker)


def test_run_directory_resolves_to_the_weights_file(run_dir):
    assert run_files.resolve_network(run_dir) == os.path.join(run_dir, 'network-snapshot-000000.pt')


def test_a_pickle_named_pt_is_not_unpickled(tmp_path):
    path, marker = _hostile_pickle(tmp_path, name='snapshot.pt')
    with pytest.raises(formats.CheckpointError, match='named like a weights file but not one'):
        formats.load_any(path, trust_pickle=True)
    assert not os.path.exists(marker)


def test_weights_file_classes_cannot_be_reached_through_imported_modules(tmp_path):
    # training.checkpoints.formats imports torch, so 'training.checkpoints.formats.torch.nn.Linear' names torch.nn.Linear.
    path = str(tmp_path / 'weights.pt')
    payload = dict(
        format=formats.WEIGHTS_FORMAT,
        version=formats.WEIGHTS_VERSION,
        extra_json='{}',
        modules=dict(
            G={
                'class': 'training.checkpoints.formats.torch.nn.Linear',
                'init_args_json': '[2, 2]',
                'init_kwargs_json': '{}',
                'state_dict': {},
            }
        ),
    )
    torch.save(payload, path)
    with pytest.raises(
        formats.CheckpointError, match='defines no network class training.checkpoints.formats.torch.nn.Linear'
    ):
        formats.load_weights(path)


def test_allowed_containers_and_arrays_come_back_as_data():
    value = {
        'list': [1, 2.5, 'x'],
        'set': {1, 2},
        'array': np.arange(6, dtype=np.float32).reshape(2, 3),
        'scalar': np.float64(0.5),
        'tensor': torch.arange(4.0),
        'size': torch.Size([2, 3]),
        'dtype': torch.float16,
        'device': torch.device('cpu'),
    }
    import io

    loaded = safe_pickle.load(io.BytesIO(pickle.dumps(value)))
    assert loaded['list'] == value['list'] and loaded['set'] == value['set']
    np.testing.assert_array_equal(loaded['array'], value['array'])
    assert loaded['scalar'] == 0.5 and torch.equal(loaded['tensor'], value['tensor'])
    assert loaded['size'] == value['size'] and loaded['dtype'] is torch.float16 and loaded['device'] == value['device']


class _StorageRecord:
    """Pickles as torch.storage._load_from_bytes(data), the way tensors' storages are pickled by value."""

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


def test_storage_records_run_nothing_either(tmp_path):
    import io

    marker = str(tmp_path / 'marker')
    inner = io.BytesIO()
    torch.save(_WritesMarker(marker), inner, _use_new_zipfile_serialization=False)
    with pytest.raises(safe_pickle.UnsafePickleError, match='io.open'):
        safe_pickle.load(io.BytesIO(pickle.dumps({'G': _StorageRecord(inner.getvalue())})))
    assert not os.path.exists(marker)


class _OldPathPickler(pickle.Pickler):
    """Pickles persistent networks as an earlier version did: their records name the modules before the move."""

    def reducer_override(self, obj):
        if not persistence.is_persistent(type(obj)) or not isinstance(obj, torch.nn.Module):
            return NotImplemented
        function, (meta,) = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        old = {new: old for old, new in safe_pickle.MOVED_MODULES.items()}
        return function, (dict(meta, module_name=old.get(meta['module_name'], meta['module_name'])),)


def test_files_that_name_the_module_paths_before_the_move_still_load(run_dir, tmp_path, monkeypatch):
    """A pickle and a weights file written when the networks lived in training.triplane,
    training.networks_stylegan2, ... load with the default reader and render as the original."""
    original = formats.load_network_pickle(os.path.join(run_dir, 'network-snapshot-000000.pkl'))
    networks = {key: original[key] for key in ('G', 'D', 'G_ema', 'D_ema')}
    old_pickle, old_weights = str(tmp_path / 'old.pkl'), str(tmp_path / 'old.pt')
    with open(old_pickle, 'wb') as file:
        _OldPathPickler(file, protocol=pickle.HIGHEST_PROTOCOL).dump(dict(networks, training_set_kwargs={}))
    for old, new in safe_pickle.MOVED_MODULES.items():
        for cls in vars(importlib.import_module(new)).values():
            if isinstance(cls, type) and getattr(cls, '_persistent_module_name', None) == new:
                monkeypatch.setattr(cls, '_persistent_module_name', old)
    formats.save_weights(old_weights, networks)
    monkeypatch.undo()

    with open(old_pickle, 'rb') as file:
        assert safe_pickle.load(file)['G_ema'].qualified_name == 'training.triplane.TriPlaneGenerator'
    stored_class = torch.load(old_weights, weights_only=True)['modules']['G_ema']['class']
    assert stored_class == 'training.triplane.TriPlaneGenerator'
    for path in (old_pickle, old_weights):
        loaded = formats.load_any(path)
        assert type(loaded['G_ema']) is type(original['G_ema']) and type(loaded['D']) is type(original['D'])
        assert torch.equal(_render(loaded['G_ema']), _render(original['G_ema']))
