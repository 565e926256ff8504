"""Tests for training/checkpoints/authors.py and tools/convert_checkpoint.py: published 3DPortraitGAN
checkpoints load as this project's networks, strictly, without running anything from the file.

The published files are not reachable here, so the tests write files in their format from tiny
networks: the generator as an EG3D-layout persistent record (embedded source, `_init_args` /
`_init_kwargs`), its helper modules and the discriminator pickled by reference at the published
module paths (stand-in classes registered there while pickling), tensors under the published names.
"""

import collections
import functools
import json
import math
import os
import pickle
import re
import sys
import types

import pytest
import torch
from click.testing import CliRunner

import train
from tests.test_lbs import synthetic_smpl_arrays
from tests.test_smpl_pickle import write_smpl_pickle
from tools import convert_checkpoint
from torch_utils import persistence
from training.checkpoints import authors, formats, run_files, safe_pickle
from training.checkpoints.run_files import pose_predict_kwargs_for
from training.data.camera_utils import camera_label, orbit_camera
from training.data.synthetic import build_synthetic_dataset
from training.networks.dual_discriminator import PoseAwareDualDiscriminator
from training.networks.triplane import TriPlaneGenerator
from training.pose_prediction import load_pose_predict_kwargs
from training.presets import load_preset

S = 128  # output resolution: the smallest of the published super-resolution heads (2X, from 64 px)
R = 16  # neural rendering resolution stored in the generator

RENDERING = dict(
    image_resolution=S,
    disparity_space_sampling=False,
    clamp_mode='softplus',
    superresolution_module='training.superresolution.SuperresolutionHybrid2X',
    c_gen_conditioning_zero=False,
    gpc_reg_prob=0.7,
    decoder_activation='none',
    use_torgb_raw=True,
    use_background=True,
    triplane_depth=2,
    c_scale=1,
    superresolution_noise_mode='none',
    density_reg=0.0,
    density_reg_p_dist=0.004,
    reg_type='l1',
    decoder_lr_mul=1,
    sr_antialias=True,
    depth_resolution=4,
    depth_resolution_importance=4,
    ray_start=2.25,
    ray_end=3.3,
    box_warp=1,
)
# The published generator's constructor arguments, as its training script passes them.
PUBLISHED_G_KWARGS = dict(
    z_dim=16,
    w_dim=16,
    mapping_kwargs=dict(num_layers=2),
    channel_base=256,
    channel_max=16,
    batch_size=2,
    fused_modconv_default='inference_only',
    rendering_kwargs=RENDERING,
    num_fp16_res=0,
    conv_clamp=None,
    sr_num_fp16_res=0,
    sr_kwargs=dict(channel_base=256, channel_max=16, fused_modconv_default='inference_only'),
    thickness=0.25,
    explicitly_symmetry=True,
    c_dim=25,
    img_resolution=S,
    img_channels=3,
)
# This project's equivalent generator; tri-grid size and channels and decoder width are fixed in
# the published source (256, 32, 64 there), so a converter reads them off the tensors.
OWN_G_KWARGS = dict(
    z_dim=16,
    w_dim=16,
    c_dim=25,
    pose_dim=6,
    c_scale=1.0,
    map_depth=2,
    img_resolution=S,
    img_channels=3,
    triplane_resolution=64,
    triplane_channels=8,
    triplane_depth=2,
    channel_base=256,
    channel_max=16,
    num_fp16_res=0,
    conv_clamp=None,
    decoder_hidden=16,
    decoder_activation='none',
    decoder_lr_mul=1.0,
    use_background=True,
    background_channel_base=128,
    use_torgb_raw=True,
    sr_module='hybrid2x',
    sr_input_resolution=64,
    sr_channel_base=256,
    sr_channel_max=16,
    sr_num_fp16_res=0,
    sr_antialias=True,
    sr_noise_mode='none',
    neural_rendering_resolution=R,
    ray_start=2.25,
    ray_end=3.3,
    depth_resolution=4,
    depth_resolution_importance=4,
    box_warp=1.0,
    body_model='smpl',
    thickness=0.25,
)
OWN_D_KWARGS = dict(
    c_dim=25,
    pose_dim=6,
    img_resolution=S,
    img_channels=3,
    seg_channels=1,
    channel_base=256,
    channel_max=16,
    num_fp16_res=2,
    conv_clamp=256,
    cmap_dim=16,
    mbstd_group_size=2,
    mbstd_num_channels=1,
    mapping_layers=2,
    pose_hidden=[16, 8],
    disc_c_noise=0.0,
)

# The published names of this project's tensors (the table of the checkpoint notes).
G_PREFIXES = (
    ('mapping_network.', 'backbone.mapping.'),
    ('backbone.', 'backbone.synthesis.'),
    ('background.', 'bcg_synthesis.'),
    ('decoder.hidden.', 'decoder.net.0.'),
    ('decoder.out.', 'decoder.net.2.'),
)
BUFFERS = (
    'w_avg',
    'resample_filter',
    'noise_const',
    'shaped_smpl',
    'align_points',
    'face_mask',
    'head_face_mask',
    'smpl_joint_regressor',
)


def published_generator_name(key: str) -> str:
    for own, published in G_PREFIXES:
        if key.startswith(own):
            return published + key[len(own) :]
    return re.sub(r'^pose_branch\.mlp\.fc(\d+)\.', r'pose_branch.net.\1.', key)


def published_discriminator_name(key: str) -> str:
    return re.sub(r'^pose_branch\.fc(\d+)\.', r'pose_branch.net.\1.', key)


# ------------------------------------------------------------------------------------------------
# Writing files in the published format.


def _source(marker: str) -> str:
    """Embedded module source that, if it ever ran, would leave a marker file."""
    return f'open({marker!r}, "w").close()\nclass TriPlaneGenerator:\n    pass\n'


class _Record:
    """Pickles as an EG3D-layout persistent record: torch_utils.persistence._reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name: str, state: dict, source: str):
        self.class_name, self.state, self.source = class_name, state, source

    def __reduce__(self):
        meta = dict(type='class', version=4, module_src=self.source, class_name=self.class_name, state=self.state)
        return persistence._reconstruct_persistent_obj, (meta,)


class _Stored:
    """Base of the stand-ins pickled by reference: an object whose __dict__ is a module's state."""


def _register(monkeypatch, classes: dict, path: str) -> type:
    """A stand-in class importable as `path` while the test runs (modules created where missing)."""
    if path in classes:
        return classes[path]
    module_name, _, name = path.rpartition('.')
    cls = classes[path] = type(name, (_Stored,), {'__module__': module_name, '__qualname__': name})
    parts = module_name.split('.')
    for depth in range(1, len(parts) + 1):
        partial = '.'.join(parts[:depth])
        if partial not in sys.modules:
            try:
                __import__(partial)
            except ImportError:
                monkeypatch.setitem(sys.modules, partial, types.ModuleType(partial))
    monkeypatch.setattr(sys.modules[module_name], name, cls, raising=False)
    return cls


def _tree(tensors: dict, kinds: dict, attributes: dict, source: str, register, path: str = ''):
    """The stored object of the module at `path`.

    tensors {dotted name: tensor}; kinds {path: ('record', class name) | ('reference', 'module.Class') |
    ('torch', nn.Module class)}, a record by default; attributes {path: {name: value}}.
    """
    prefix = f'{path}.' if path else ''
    children = set()
    for key in list(tensors) + list(kinds) + list(attributes):
        if key.startswith(prefix) and key != path and not (key in tensors and '.' not in key[len(prefix) :]):
            children.add(key[len(prefix) :].split('.')[0])
    state = {
        'training': False,
        '_parameters': collections.OrderedDict(),
        '_buffers': collections.OrderedDict(),
        '_modules': collections.OrderedDict(),
        '_non_persistent_buffers_set': set(),
    }
    for key, tensor in tensors.items():
        name = key[len(prefix) :]
        if key.startswith(prefix) and '.' not in name:
            if name in BUFFERS:
                state['_buffers'][name] = tensor.detach().clone()
            else:
                state['_parameters'][name] = torch.nn.Parameter(tensor.detach().clone(), requires_grad=False)
    for name in sorted(children):
        state['_modules'][name] = _tree(tensors, kinds, attributes, source, register, prefix + name)
    state.update(attributes.get(path, {}))
    kind, what = kinds.get(path, ('record', 'Layer'))
    if kind == 'record':
        return _Record(what, state, source)
    if kind == 'torch':
        module = what()
        module.__dict__['_modules'] = state['_modules']
        return module
    cls = register(what)
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _generator_tree(tensors: dict, source: str, register, init_args=(), init_kwargs=None):
    kinds = {
        '': ('record', 'TriPlaneGenerator'),
        'backbone': ('record', 'Generator'),
        'backbone.mapping': ('record', 'MappingNetwork'),
        'backbone.synthesis': ('record', 'SynthesisNetwork'),
        'bcg_synthesis': ('record', 'SynthesisNetwork'),
        'superresolution': ('record', 'SuperresolutionHybrid2X'),
        'torgb': ('record', 'ToRGBLayer'),
        'decoder': ('reference', 'training.smpl_triplane.OSGDecoder'),
        'decoder.net': ('torch', torch.nn.Sequential),
        'decoder.net.1': ('torch', torch.nn.Softplus),
        'pose_branch': ('reference', 'training.smpl_triplane.GPoseBranch'),
        'pose_branch.net': ('torch', torch.nn.Sequential),
        'renderer': ('reference', 'training.volumetric_rendering.renderer.ImportanceRenderer'),
        'renderer.aligned_SMPL': ('reference', 'training.aligned_smpl.AlignedSMPL'),
        'renderer.aligned_SMPL.smpl_model': ('reference', 'smplx.body_models.SMPL'),
        'ray_sampler': ('reference', 'training.volumetric_rendering.ray_sampler.RaySampler'),
    }
    kwargs = dict(PUBLISHED_G_KWARGS) if init_kwargs is None else init_kwargs
    attributes = {
        '': dict(
            _init_args=tuple(init_args),
            _init_kwargs=kwargs,
            neural_rendering_resolution=R,
            rendering_kwargs=RENDERING,
            z_dim=16,
            c_dim=25,
            w_dim=16,
            img_resolution=S,
            img_channels=3,
            batch_size=2,
            explicitly_symmetry=True,
            _last_planes=None,
            avg_c=torch.zeros(1, 25),
        ),
        'ray_sampler': {},
    }
    return _tree(tensors, kinds, attributes, source, register)


def _discriminator_tree(tensors: dict, D: PoseAwareDualDiscriminator, source: str, register):
    kinds = {
        '': ('reference', authors.DISCRIMINATOR_PATH),
        'pose_branch': ('reference', 'training.dual_discriminator.DPoseBranch'),
        'pose_branch.net': ('torch', torch.nn.Sequential),
        'b4.mbstd': ('record', 'MinibatchStdLayer'),
    }
    attributes = {
        '': dict(
            camera_param_dim=25,
            c_dim=31,
            img_resolution=S,
            img_channels=7,
            disc_c_noise=0,
            explicitly_symmetry=True,
            block_resolutions=D.block_resolutions,
        ),
        'b4.mbstd': dict(group_size=D.b4.mbstd.group_size, num_channels=D.b4.mbstd.num_channels),
    }
    for res in D.block_resolutions:
        block = getattr(D, f'b{res}')
        attributes[f'b{res}'] = dict(use_fp16=block.use_fp16, resolution=res, architecture='resnet')
        attributes[f'b{res}.conv0'] = dict(conv_clamp=block.conv0.conv_clamp)
    return _tree(tensors, kinds, attributes, source, register)


def published_generator_tensors(G: TriPlaneGenerator) -> dict:
    """G's tensors under the published names, with the published extras (SMPL buffers, SR filter)."""
    tensors = {
        published_generator_name(key): value for key, value in G.state_dict().items() if not key.startswith('deformer.')
    }
    g = torch.Generator().manual_seed(5)
    tensors.update(
        {
            'superresolution.resample_filter': torch.rand(4, 4, generator=g),
            'renderer.shaped_smpl': torch.rand(2, 300, 3, generator=g),
            'renderer.align_points': torch.rand(2, 3, generator=g),
            'renderer.face_mask': torch.ones(400),
            'renderer.head_face_mask': torch.ones(400),
            'renderer.aligned_SMPL.smpl_joint_regressor': torch.rand(30, 300, generator=g),
            'renderer.aligned_SMPL.smpl_model.betas': torch.zeros(2, 10),
            'renderer.aligned_SMPL.smpl_model.body_pose': torch.zeros(2, 69),
        }
    )
    return tensors


def published_discriminator_tensors(D: PoseAwareDualDiscriminator) -> dict:
    tensors = {published_discriminator_name(key): value for key, value in D.state_dict().items()}
    tensors['resample_filter'] = torch.rand(4, 4, generator=torch.Generator().manual_seed(6))
    return tensors


def write_published_pickle(
    path: str, g_tensors: dict, D: PoseAwareDualDiscriminator, d_tensors: dict, marker: str, g_args=(), g_kwargs=None
) -> str:
    with pytest.MonkeyPatch.context() as monkeypatch:
        classes = {}
        register = functools.partial(_register, monkeypatch, classes)
        source = _source(marker)
        data = dict(
            G=_generator_tree(g_tensors, source, register, init_args=g_args, init_kwargs=g_kwargs),
            G_ema=_generator_tree(g_tensors, source, register),
            D=_discriminator_tree(d_tensors, D, source, register),
            D_ema=None,
            augment_pipe=None,
            training_set_kwargs=dict(
                class_name='training.dataset.ImageFolderDataset',
                path='portraits.zip',
                use_labels=True,
                max_size=10,
                xflip=False,
                resolution=S,
                random_seed=0,
            ),
        )
        with open(path, 'wb') as file:
            pickle.dump(data, file)
    return path


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter and w_avg off its initial value, so that a swapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and (name.endswith(('weight', 'bias', 'w_avg', 'noise_strength'))):
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=g))


@pytest.fixture(scope='module')
def release(tmp_path_factory):
    """A folder with body_models/smpl/SMPL_NEUTRAL.pkl (the default path) and a published-format checkpoint."""
    root = tmp_path_factory.mktemp('release')
    smpl_dir = root / 'body_models' / 'smpl'
    smpl_dir.mkdir(parents=True)
    write_smpl_pickle(str(smpl_dir / 'SMPL_NEUTRAL.pkl'), synthetic_smpl_arrays(num_vertices=300, seed=21))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        torch.manual_seed(0)
        G = TriPlaneGenerator(**OWN_G_KWARGS).eval().requires_grad_(False)
        _randomize(G, 1)
        torch.manual_seed(2)
        D = PoseAwareDualDiscriminator(**OWN_D_KWARGS, mirror_camera=False).eval().requires_grad_(False)
        _randomize(D, 3)
    finally:
        os.chdir(cwd)
    marker = str(root / 'marker')
    # G stores its leading arguments positionally, G_ema by keyword: both forms occur.
    positional = ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels')
    pkl = write_published_pickle(
        str(root / '3DPortraitGAN128-16.pkl'),
        published_generator_tensors(G),
        D,
        published_discriminator_tensors(D),
        marker,
        g_args=tuple(PUBLISHED_G_KWARGS[name] for name in positional),
        g_kwargs={k: v for k, v in PUBLISHED_G_KWARGS.items() if k not in positional},
    )
    return types.SimpleNamespace(root=root, pkl=pkl, G=G, D=D, marker=marker)


@pytest.fixture
def in_release(release, monkeypatch):
    monkeypatch.chdir(release.root)
    return release


def _cameras() -> torch.Tensor:
    h = torch.tensor([1.2, 1.9])  # one camera on each side of the face
    return camera_label(orbit_camera(h, torch.full_like(h, math.pi / 2 - 0.1)))


def _render(G: TriPlaneGenerator) -> dict:
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, G.z_dim, generator=g)
    pose = 0.2 * torch.randn(2, 6, generator=g)
    with torch.no_grad():
        return G(z, _cameras(), pose_params=pose, apply_def=True, deterministic=True, noise_mode='const')


def _d_inputs() -> dict:
    g = torch.Generator().manual_seed(8)
    return {
        'image': torch.rand(2, 3, S, S, generator=g) * 2 - 1,
        'image_raw': torch.rand(2, 3, R, R, generator=g) * 2 - 1,
        'image_mask': torch.rand(2, 1, R, R, generator=g),
    }


def _assert_same_outputs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------------------------


def test_the_embedded_source_would_leave_a_marker(tmp_path):
    exec(_source(str(tmp_path / 'probe')), {})  # noqa: S102 - what the file's loader would do with it
    assert (tmp_path / 'probe').exists()


def test_the_reader_sees_the_published_networks_as_data(release):
    with open(release.pkl, 'rb') as file:
        raw = safe_pickle.load(file)
    assert authors.is_release_snapshot(raw)
    assert authors.is_generator(raw['G']) and authors.is_generator(raw['G_ema'])
    assert authors.is_discriminator(raw['D'])
    assert raw['G'].layout == 'release'
    assert raw['D']._path == 'training.dual_discriminator.PoseShapeAwareDualDiscriminator'
    assert not os.path.exists(release.marker)


def test_every_tensor_maps_to_its_place_with_its_shape(release):
    with open(release.pkl, 'rb') as file:
        raw = safe_pickle.load(file)
    mapped = authors.generator_tensors(raw['G'])
    expected = {key: value for key, value in release.G.state_dict().items() if not key.startswith('deformer.')}
    assert mapped.keys() == expected.keys()
    for key, value in expected.items():
        assert mapped[key].shape == value.shape, key
        assert torch.equal(mapped[key], value), key
    mapped = authors.discriminator_tensors(raw['D'])
    expected = release.D.state_dict()
    assert mapped.keys() == expected.keys()
    for key, value in expected.items():
        assert mapped[key].shape == value.shape and torch.equal(mapped[key], value), key


def test_the_published_checkpoint_loads_as_this_projects_networks(in_release):
    data = formats.load_network_pickle(in_release.pkl)
    assert not os.path.exists(in_release.marker)
    for key in ('G', 'G_ema'):
        G = data[key]
        assert type(G) is TriPlaneGenerator and not G.training
        assert dict(G.init_kwargs) == {**OWN_G_KWARGS}, key
        _assert_same_outputs(_render(G), _render(in_release.G))
    D = data['D']
    assert type(D) is PoseAwareDualDiscriminator and D.mirror_camera is False
    assert dict(D.init_kwargs) == {**OWN_D_KWARGS, 'mirror_camera': False}
    with torch.no_grad():
        logits, pose = D(_d_inputs(), _cameras())
        expected_logits, expected_pose = in_release.D(_d_inputs(), _cameras())
    assert torch.equal(logits, expected_logits) and torch.equal(pose, expected_pose)
    assert data['D_ema'] is None and data['augment_pipe'] is None
    assert data['training_set_kwargs']['path'] == 'portraits.zip'


def _load_error(path: str) -> str:
    with pytest.raises(formats.CheckpointError) as error:
        formats.load_network_pickle(path)
    message = str(error.value)
    # One line; and no pointer to --trust-pickle, which cannot run the published code either.
    assert '\n' not in message and '--trust-pickle' not in message
    return message


def test_a_missing_tensor_is_named(in_release, tmp_path):
    g_tensors = published_generator_tensors(in_release.G)
    del g_tensors['decoder.net.2.bias']
    path = write_published_pickle(
        str(tmp_path / 'a.pkl'),
        g_tensors,
        in_release.D,
        published_discriminator_tensors(in_release.D),
        in_release.marker,
    )
    assert "'decoder.net.2.bias'" in _load_error(path)
    d_tensors = published_discriminator_tensors(in_release.D)
    del d_tensors['pose_branch.net.1.weight']
    path = write_published_pickle(
        str(tmp_path / 'b.pkl'), published_generator_tensors(in_release.G), in_release.D, d_tensors, in_release.marker
    )
    assert "'pose_branch.net.1.weight'" in _load_error(path)
    assert not os.path.exists(in_release.marker)


def test_an_unexpected_or_misshapen_tensor_is_named(in_release, tmp_path):
    g_tensors = published_generator_tensors(in_release.G)
    g_tensors['bcg_synthesis.b4.extra'] = torch.zeros(3)
    path = write_published_pickle(
        str(tmp_path / 'a.pkl'),
        g_tensors,
        in_release.D,
        published_discriminator_tensors(in_release.D),
        in_release.marker,
    )
    assert "'bcg_synthesis.b4.extra'" in _load_error(path)
    g_tensors = published_generator_tensors(in_release.G)
    g_tensors['pose_branch.net.0.bias'] = torch.zeros(7)
    path = write_published_pickle(
        str(tmp_path / 'b.pkl'),
        g_tensors,
        in_release.D,
        published_discriminator_tensors(in_release.D),
        in_release.marker,
    )
    assert "'pose_branch.net.0.bias' has shape [7]" in _load_error(path)
    d_tensors = published_discriminator_tensors(in_release.D)
    d_tensors['b4.extra'] = torch.zeros(3)
    path = write_published_pickle(
        str(tmp_path / 'c.pkl'), published_generator_tensors(in_release.G), in_release.D, d_tensors, in_release.marker
    )
    assert "'b4.extra'" in _load_error(path)
    assert not os.path.exists(in_release.marker)


def test_a_missing_smpl_model_names_the_expected_path(release, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _load_error(release.pkl)
    assert os.path.join('body_models', 'smpl', 'SMPL_NEUTRAL.pkl') in message and 'smpl.is.tue.mpg.de' in message


def test_published_settings_are_found_beside_the_checkpoint(tmp_path):
    published = pose_predict_kwargs_for(str(tmp_path / '3DPortraitGAN512-64.pkl'))
    assert published == str(tmp_path / '3DPortraitGAN512-64.json')
    assert pose_predict_kwargs_for(str(tmp_path / 'portrait.pt')) == str(tmp_path / 'portrait.json')
    assert pose_predict_kwargs_for(str(tmp_path / 'network-snapshot-000012.pt')) == str(
        tmp_path / 'pose_predict_kwargs-000012.json'
    )


def test_converter_round_trip(in_release, tmp_path, capsys):
    settings = dict(
        blur_sigma=0.0,
        neural_rendering_resolution=R,
        filter_mode='antialiased',
        resample_filter=[[0.0625, 0.1875], [0.1875, 0.5625]],
    )
    with open(pose_predict_kwargs_for(in_release.pkl), 'w') as file:
        json.dump(settings, file)
    out = str(tmp_path / 'converted.pt')
    smpl = str(in_release.root / 'body_models' / 'smpl' / 'SMPL_NEUTRAL.pkl')
    assert convert_checkpoint.main([in_release.pkl, out, '--smpl', smpl]) == 0
    assert capsys.readouterr().out.split() == [out, str(tmp_path / 'converted.json')]
    assert not os.path.exists(in_release.marker)
    payload = torch.load(out, map_location='cpu', weights_only=True)
    assert set(payload['modules']) == {'G', 'G_ema', 'D'}
    loaded = formats.load_weights(out)
    assert dict(loaded['G_ema'].init_kwargs) == {**OWN_G_KWARGS, 'body_model': smpl}
    _assert_same_outputs(_render(loaded['G_ema']), _render(in_release.G))
    assert loaded['D'].mirror_camera is False
    with torch.no_grad():
        assert torch.equal(
            loaded['D'].predict_pose(_d_inputs(), _cameras()), in_release.D.predict_pose(_d_inputs(), _cameras())
        )
    assert loaded['neural_rendering_resolution'] == R
    assert load_pose_predict_kwargs(pose_predict_kwargs_for(out)) == settings


def test_converter_reports_a_bad_input_in_one_line(in_release, tmp_path, capsys):
    path = tmp_path / 'not-a-checkpoint.pkl'
    path.write_bytes(pickle.dumps({'G': None, 'weights': [1, 2]}))
    assert convert_checkpoint.main([str(path), str(tmp_path / 'out.pt')]) == 1
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and 'not a published 3DPortraitGAN checkpoint' in error
    assert not (tmp_path / 'out.pt').exists()


def test_training_continues_from_the_published_checkpoint(release, tmp_path, monkeypatch):
    # A new stage (--resume_kimg) from a published-format file: its networks are read safely, their
    # tensors start the training, and the discriminator keeps its pose head's mirroring convention.
    # The release fixture's D has widths a training config cannot express (cmap_dim, pose_hidden,
    # mapping_layers), so this D takes the ones train.py builds from the preset below.
    torch.manual_seed(4)
    D = (
        PoseAwareDualDiscriminator(
            c_dim=25,
            pose_dim=6,
            img_resolution=S,
            channel_base=256,
            channel_max=16,
            num_fp16_res=2,
            conv_clamp=256,
            mbstd_group_size=2,
            mirror_camera=False,
        )
        .eval()
        .requires_grad_(False)
    )
    _randomize(D, 5)
    pkl = write_published_pickle(
        str(tmp_path / '3DPortraitGAN128-16.pkl'),
        published_generator_tensors(release.G),
        D,
        published_discriminator_tensors(D),
        str(tmp_path / 'marker'),
    )
    data, seg_data = str(tmp_path / 'data.zip'), str(tmp_path / 'seg.zip')
    build_synthetic_dataset(data, seg_data, num_images=4, resolution=S, workers=0, progress=False)
    preset = load_preset('cpu-small')
    preset['generator'].update(OWN_G_KWARGS)
    preset['training'].update(
        batch=2,
        batch_gpu=2,
        d_channel_base=256,
        d_channel_max=16,
        d_num_fp16_res=2,
        mbstd_group=2,
        neural_rendering_resolution_initial=R,
        tick=0.002,
        snap=1,
        image_snap=0,
        snapshot_grid=[2, 1],
    )
    preset_path = tmp_path / 'published-128.json'
    preset_path.write_text(json.dumps(preset))
    monkeypatch.chdir(release.root)  # where body_models/smpl/SMPL_NEUTRAL.pkl is
    outdir = tmp_path / 'runs'
    result = CliRunner().invoke(
        train.main,
        [
            '--cfg',
            str(preset_path),
            '--resume',
            pkl,
            '--resume_kimg',
            '100',
            '--kimg',
            '100.002',
            '--data',
            data,
            '--seg_data',
            seg_data,
            '--outdir',
            str(outdir),
            '--workers',
            '0',
        ],
    )
    assert result.exit_code == 0, result.output
    assert not os.path.exists(tmp_path / 'marker')
    (run_dir,) = outdir.iterdir()
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['d_mirror_camera'] is False and options['stage_start_kimg'] == 100
    trained = formats.load_any(run_files.latest_network_snapshot(str(run_dir)))
    assert trained['D'].mirror_camera is False and trained['D_ema'].mirror_camera is False
    # The stage started from the published weights: a few steps moved them only a little.
    start, end = dict(release.G.named_parameters()), dict(trained['G'].named_parameters())
    assert start.keys() == end.keys()
    moved = max((end[name] - start[name]).abs().max().item() for name in start)
    assert 0 < moved < 0.05
