"""Tests for training/checkpoints/formats.py."""

import os
import pickle

import pytest
import torch

import dnnlib
from torch_utils import persistence
from training.checkpoints import atomic_files, formats, safe_pickle


@persistence.persistent_class
class TinyNet(torch.nn.Module):
    """A persistent network with parameters, a buffer, nested options and a tuple argument."""

    def __init__(self, in_features, hidden=(6, 5), head_kwargs={}, scale=1.0):
        super().__init__()
        sizes = (in_features,) + tuple(hidden)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = torch.nn.Linear(sizes[-1], head_kwargs.get('out_features', 2))
        self.register_buffer('shift', torch.randn(head_kwargs.get('out_features', 2)))
        self.scale = scale

    def forward(self, x):
        """x [B, in_features] -> [B, out_features]"""
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x) * self.scale + self.shift


@pytest.fixture
def allow_test_classes(monkeypatch):
    """Let weights files and the safe pickle reader rebuild classes defined in this test module."""
    monkeypatch.setattr(safe_pickle, 'ALLOWED_CLASS_PREFIXES', safe_pickle.ALLOWED_CLASS_PREFIXES + ('tests.',))


def _make_nets():
    torch.manual_seed(0)
    G = TinyNet(4, hidden=(6, 5), head_kwargs=dnnlib.EasyDict(out_features=3), scale=0.5)
    D = TinyNet(4, hidden=[3])
    return G, D


def test_network_pickle_round_trip(tmp_path, allow_test_classes):
    G, D = _make_nets()
    G.train()
    path = str(tmp_path / 'network-snapshot-000000.pkl')
    kwargs = dnnlib.EasyDict(path='data.zip', resolution=64)
    formats.save_network_pickle(path, dict(G=G, D=D, G_ema=G, D_ema=D, training_set_kwargs=kwargs, augment_pipe=None))
    assert G.training and G.head.weight.requires_grad  # the live modules are untouched
    data = formats.load_network_pickle(path)
    assert set(data) == {'G', 'D', 'G_ema', 'D_ema', 'training_set_kwargs', 'augment_pipe'}
    assert data['training_set_kwargs'] == kwargs and data['augment_pipe'] is None
    assert not data['G'].training and not any(p.requires_grad for p in data['G'].parameters())
    x = torch.randn(7, 4)
    assert torch.equal(data['G'](x), G(x))
    assert torch.equal(data['D_ema'](x), D(x))
    assert torch.equal(formats.load_any(path)['G_ema'](x), G(x))


def test_weights_round_trip(tmp_path, allow_test_classes):
    G, D = _make_nets()
    path = str(tmp_path / 'weights.pt')
    formats.save_weights(path, dict(G=G, D=D), extra=dict(training_set_kwargs=dict(resolution=64), cur_nimg=1234))
    payload = torch.load(path, weights_only=True)
    assert payload['format'] == formats.WEIGHTS_FORMAT
    assert payload['modules']['G']['class'] == 'tests.test_checkpoint.TinyNet'

    data = formats.load_weights(path)
    assert set(data) == {'G', 'D', 'training_set_kwargs', 'cur_nimg'}
    assert data['cur_nimg'] == 1234 and data['training_set_kwargs'].resolution == 64
    assert type(data['G']) is TinyNet
    assert data['G'].init_kwargs == dict(hidden=[6, 5], head_kwargs=dict(out_features=3), scale=0.5)
    assert not data['G'].training
    x = torch.randn(7, 4)
    assert torch.equal(data['G'](x), G(x))
    assert torch.equal(data['D'](x), D(x))
    assert torch.equal(formats.load_any(path)['G'](x), G(x))


@persistence.persistent_class
class TinyRenderer(TinyNet):
    """A network with a rendering resolution that training schedules change after construction."""

    def __init__(self, in_features):
        super().__init__(in_features)
        self.neural_rendering_resolution = 64


def test_weights_restore_the_rendering_resolution_of_the_snapshot(tmp_path, allow_test_classes):
    G = TinyRenderer(4)
    path = str(tmp_path / 'weights.pt')
    formats.save_weights(path, dict(G_ema=G, D=TinyNet(4)), extra=dict(neural_rendering_resolution=128))
    data = formats.load_weights(path)
    assert data['G_ema'].neural_rendering_resolution == 128 and not hasattr(data['D'], 'neural_rendering_resolution')


def test_pickle_records_the_rendering_resolution_and_leaves_the_live_network(tmp_path, allow_test_classes):
    G = TinyRenderer(4)
    path = str(tmp_path / 'snapshot.pkl')
    formats.save_network_pickle(path, dict(G_ema=G, D=TinyNet(4)), neural_rendering_resolution=96)
    data = formats.load_network_pickle(path, trust_pickle=True)
    assert data['G_ema'].neural_rendering_resolution == 96 and G.neural_rendering_resolution == 64
    assert not hasattr(data['D'], 'neural_rendering_resolution')


def test_weights_refuse_unserializable_and_foreign_modules(tmp_path, allow_test_classes):
    path = str(tmp_path / 'weights.pt')
    with pytest.raises(ValueError, match=r"G.init_kwargs\['head_kwargs'\]\['channels'\] is a set"):
        formats.save_weights(path, dict(G=TinyNet(4, head_kwargs=dict(channels={1, 2}))))
    with pytest.raises(ValueError, match='not an instance of a @persistent_class'):
        formats.save_weights(path, dict(G=torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match='both as module and as extra'):
        formats.save_weights(path, dict(G=TinyNet(4)), extra=dict(G=1))
    assert not os.path.exists(path)


def test_weights_refuse_classes_outside_the_repository(tmp_path):
    path = str(tmp_path / 'weights.pt')
    with pytest.raises(ValueError, match='only classes under training., torch_utils.'):
        formats.save_weights(path, dict(G=TinyNet(4)))
    payload = dict(
        format=formats.WEIGHTS_FORMAT,
        version=formats.WEIGHTS_VERSION,
        extra_json='{}',
        modules=dict(
            G={
                'class': 'subprocess.Popen',
                'init_args_json': '[["touch", "x"]]',
                'init_kwargs_json': '{}',
                'state_dict': {},
            }
        ),
    )
    torch.save(payload, path)
    with pytest.raises(
        formats.CheckpointError,
        match="weights.pt: module 'G': the class subprocess.Popen is outside training., torch_utils.",
    ):
        formats.load_weights(path)


def _save_both(directory):
    G, D = _make_nets()
    pickle_path = str(directory / 'snapshot.pkl')
    weights_path = str(directory / 'weights.pt')
    formats.save_network_pickle(pickle_path, dict(G=G, D=D))
    formats.save_weights(weights_path, dict(G=G, D=D))
    return pickle_path, weights_path


@pytest.mark.parametrize('loader', [formats.load_network_pickle, formats.load_weights, formats.load_any])
def test_truncated_files_raise_checkpoint_error(tmp_path, allow_test_classes, loader):
    for path in _save_both(tmp_path):
        with open(path, 'rb') as file:
            content = file.read()
        truncated = path + '.half'
        with open(truncated, 'wb') as file:
            file.write(content[: len(content) // 2])
        with pytest.raises(formats.CheckpointError, match=os.path.basename(truncated)) as info:
            loader(truncated)
        assert '\n' not in str(info.value)


@pytest.mark.parametrize('loader', [formats.load_network_pickle, formats.load_weights, formats.load_any])
def test_foreign_and_missing_files_raise_checkpoint_error(tmp_path, loader):
    text_path = tmp_path / 'notes.txt'
    text_path.write_text('these are not network weights\n')
    list_path = tmp_path / 'list.pkl'
    list_path.write_bytes(pickle.dumps([1, 2, 3]))
    dict_path = tmp_path / 'dict.pkl'
    dict_path.write_bytes(pickle.dumps(dict(G=None, training_set_kwargs={})))
    tensors_path = tmp_path / 'tensors.pt'
    torch.save(dict(weight=torch.zeros(2)), str(tensors_path))
    for path in (text_path, list_path, dict_path, tensors_path, tmp_path / 'missing.pkl'):
        with pytest.raises(formats.CheckpointError, match=path.name) as info:
            loader(str(path))
        assert '\n' not in str(info.value)


def test_error_messages_say_what_is_wrong(tmp_path):
    list_path = tmp_path / 'list.pkl'
    list_path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(formats.CheckpointError, match='holds a list'):
        formats.load_any(str(list_path))
    with pytest.raises(formats.CheckpointError, match='no such file'):
        formats.load_any(str(tmp_path / 'missing.pkl'))
    tensors_path = tmp_path / 'tensors.pt'
    torch.save(dict(weight=torch.zeros(2)), str(tensors_path))
    with pytest.raises(formats.CheckpointError, match='not a weights file of this project'):
        formats.load_any(str(tensors_path))


def _crash_midway(obj, file, *args, **kwargs):
    """A serializer that writes part of its output, as a killed process would, then fails."""
    file.write(b'\x80\x04partial bytes')
    raise KeyboardInterrupt('simulated crash while writing')


def test_crash_while_writing_keeps_previous_file(tmp_path, monkeypatch, allow_test_classes):
    pickle_path, weights_path = _save_both(tmp_path)
    G, D = _make_nets()
    x = torch.randn(3, 4)
    before = sorted(os.listdir(tmp_path))

    with monkeypatch.context() as patch:
        patch.setattr(pickle, 'dump', _crash_midway)
        with pytest.raises(KeyboardInterrupt):
            formats.save_network_pickle(pickle_path, dict(G=TinyNet(4), D=D))
    with monkeypatch.context() as patch:
        patch.setattr(torch, 'save', _crash_midway)
        with pytest.raises(KeyboardInterrupt):
            formats.save_weights(weights_path, dict(G=TinyNet(4), D=D))

    assert sorted(os.listdir(tmp_path)) == before
    assert torch.equal(formats.load_network_pickle(pickle_path)['G'](x), G(x))
    assert torch.equal(formats.load_weights(weights_path)['G'](x), G(x))


def test_stylegan2_synthesis_round_trip_through_both_formats(tmp_path):
    from training.networks import stylegan2

    torch.manual_seed(0)
    G = stylegan2.SynthesisNetwork(w_dim=16, img_resolution=16, img_channels=3, channel_base=256, channel_max=32)
    G.eval()
    ws = torch.randn(2, G.num_ws, 16)
    expected = G(ws, noise_mode='const')
    pickle_path, weights_path = str(tmp_path / 'G.pkl'), str(tmp_path / 'G.pt')
    formats.save_network_pickle(pickle_path, dict(G_ema=G))
    formats.save_weights(weights_path, dict(G_ema=G))
    torch.load(weights_path, weights_only=True)
    for path in (pickle_path, weights_path):
        loaded = formats.load_any(path)['G_ema']
        assert type(loaded) is stylegan2.SynthesisNetwork
        assert torch.equal(loaded(ws, noise_mode='const'), expected)


def test_unfinished_writes_are_removed(tmp_path):
    # A process killed inside atomic_write leaves its temporary file beside the target.
    def interrupted(file):
        file.write(b'half')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_files.atomic_write(str(tmp_path / 'network-snapshot-000004.pkl'), interrupted)
    assert os.listdir(tmp_path) == []  # an exception cleans up; a kill -9 does not:
    stale = tmp_path / '.network-snapshot-000004.pkl.x1y2z3_q.tmp'
    stale.write_bytes(b'half')
    (tmp_path / 'network-snapshot-000000.pkl').write_bytes(b'complete')
    # Hidden .tmp files that are not named as the writers here name theirs are someone else's.
    for foreign in ('.notes.tmp', '.network-snapshot-000004.pkl.tmp', '.cache.ABCDEFGH.tmp'):
        (tmp_path / foreign).write_bytes(b'kept')
    assert atomic_files.remove_unfinished_writes(str(tmp_path)) == [(str(stale), 4)]
    assert sorted(os.listdir(tmp_path)) == sorted(
        ['network-snapshot-000000.pkl', '.notes.tmp', '.network-snapshot-000004.pkl.tmp', '.cache.ABCDEFGH.tmp']
    )


def test_weights_with_half_precision_parameters(tmp_path, allow_test_classes):
    G, D = _make_nets()
    path = str(tmp_path / 'weights.pt')
    formats.save_weights(path, dict(G=G, D=D), parameter_dtypes={'D': torch.float16})
    stored = torch.load(path, weights_only=True)['modules']
    assert stored['D']['state_dict']['head.weight'].dtype == torch.float16
    assert stored['D']['state_dict']['shift'].dtype == torch.float32  # a buffer keeps its dtype
    assert stored['G']['state_dict']['head.weight'].dtype == torch.float32
    data = formats.load_weights(path)
    assert data['D'].head.weight.dtype == torch.float32
    assert torch.equal(data['D'].head.weight, D.head.weight.half().float())
    assert torch.equal(data['D'].shift, D.shift) and torch.equal(data['G'].head.weight, G.head.weight)
    with pytest.raises(ValueError, match='parameter_dtypes names E, which are not modules'):
        formats.save_weights(path, dict(G=G, D=D), parameter_dtypes={'E': torch.float16})
