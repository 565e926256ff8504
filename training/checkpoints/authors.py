"""The published 3DPortraitGAN checkpoints, mapped onto this project's networks without running their code.

The released files (`3DPortraitGAN512-64.pkl`, ...) are EG3D network pickles: a dict with `G`,
`G_ema` (persistent records of class `TriPlaneGenerator`, in the StyleGAN2-ADA / EG3D layout,
with the module's source and the constructor arguments), `D` and `D_ema` (objects of
`training.dual_discriminator.PoseShapeAwareDualDiscriminator`, pickled by reference, with no
stored constructor arguments), `augment_pipe` and `training_set_kwargs`. `training.checkpoints.safe_pickle`
reads them as data; this module turns that data into this project's classes:

- generator -> `training.networks.triplane.TriPlaneGenerator`, built from the stored `_init_args` /
  `_init_kwargs` (resolutions, super-resolution head, channel bases, rendering settings), from
  sizes that the published source fixes (tri-grid resolution and channels, decoder width: read
  off the tensors) and from its stored rendering resolution; its body model is SMPL, read from
  the user's `SMPL_NEUTRAL.pkl` (the file's own SMPL buffers under `renderer.*` are not used).
- discriminator -> `training.networks.dual_discriminator.PoseAwareDualDiscriminator`, its arguments read
  off the tensor shapes and the stored block attributes, with `mirror_camera=False` (the
  published pose head mirrors left-side images but not their camera).
- `augment_pipe` -> None: this project trains without an augmentation pipeline.

Tensors are renamed to this project's names (`_GENERATOR_RENAMES`, `_DISCRIMINATOR_RENAMES`) and
loaded strictly: a tensor the file lacks, one this project has no place for, or one of another
shape is a `ConversionError` naming it. The published buffers without a counterpart here are
dropped by name (`_GENERATOR_DROPPED`, `_DISCRIMINATOR_DROPPED`).
"""

import re
from collections.abc import Iterable
from typing import Any

import torch

from training.body import smpl_pickle
from training.checkpoints import safe_pickle
from training.checkpoints.safe_pickle import ConversionError, InertObject, PersistentRecord
from training.networks.dual_discriminator import PoseAwareDualDiscriminator
from training.networks.triplane import TriPlaneGenerator

GENERATOR_CLASS = 'TriPlaneGenerator'
DISCRIMINATOR_PATH = 'training.dual_discriminator.PoseShapeAwareDualDiscriminator'
# Sub-modules of the published generator that an EG3D TriPlaneGenerator lacks.
_GENERATOR_TELLTALES = ('pose_branch', 'bcg_synthesis')

# (published prefix, this project's prefix); `{i}` stands for a layer index.
_GENERATOR_RENAMES = (
    ('backbone.mapping.', 'mapping_network.'),
    ('backbone.synthesis.', 'backbone.'),
    ('bcg_synthesis.', 'background.'),
    ('decoder.net.0.', 'decoder.hidden.'),
    ('decoder.net.2.', 'decoder.out.'),
    ('pose_branch.net.{i}.', 'pose_branch.mlp.fc{i}.'),
)
_DISCRIMINATOR_RENAMES = (('pose_branch.net.{i}.', 'pose_branch.fc{i}.'),)
# Published tensors with no counterpart here: the SMPL body and its caches inside the renderer
# (rebuilt from SMPL_NEUTRAL.pkl), and the up/down-sampling filters of the 2X/4X super-resolution
# heads and of the discriminator, which this project's modules do not keep.
_GENERATOR_DROPPED = ('renderer.', 'superresolution.resample_filter')
_DISCRIMINATOR_DROPPED = ('resample_filter',)
# This project's generator tensors that come from the body model rather than from the file.
_BODY_PREFIX = 'deformer.'

# Positional parameters of the published generator's constructor, in order.
_GENERATOR_PARAMETERS = (
    'z_dim',
    'c_dim',
    'w_dim',
    'img_resolution',
    'img_channels',
    'sr_num_fp16_res',
    'mapping_kwargs',
    'rendering_kwargs',
    'sr_kwargs',
    'batch_size',
    'explicitly_symmetry',
    'thickness',
)
# Published super-resolution class -> (this project's sr_module, its input resolution).
_SR_MODULES = {
    'training.superresolution.SuperresolutionHybrid2X': ('hybrid2x', 64),
    'training.superresolution.SuperresolutionHybrid4X': ('hybrid4x', 128),
    'training.superresolution.SuperresolutionHybrid8XDC': ('hybrid8xdc', 128),
}
NETWORK_KEYS = ('G', 'G_ema', 'D', 'D_ema')


# ------------------------------------------------------------------------------------------------
# Recognizing the published networks.


def is_generator(value: Any) -> bool:
    """Whether `value` (as read by safe_pickle.load) is the published generator's record."""
    if not isinstance(value, PersistentRecord) or value.layout != 'release' or value.class_name != GENERATOR_CLASS:
        return False
    modules = value.state.get('_modules')
    return isinstance(modules, dict) and all(name in modules for name in _GENERATOR_TELLTALES)


def is_discriminator(value: Any) -> bool:
    """Whether `value` (as read by safe_pickle.load) is the published discriminator."""
    return isinstance(value, InertObject) and value._path == DISCRIMINATOR_PATH


def is_release_snapshot(data: Any) -> bool:
    """Whether a network pickle read by safe_pickle.load holds a published 3DPortraitGAN network."""
    return isinstance(data, dict) and any(
        is_generator(data.get(key)) or is_discriminator(data.get(key)) for key in NETWORK_KEYS
    )


# ------------------------------------------------------------------------------------------------
# Tensors: gathering, renaming, strict loading.


def _module_state(value: Any, where: str) -> dict:
    state = value.state
    if not isinstance(state, dict) or not all(
        isinstance(state.get(key), dict) for key in ('_parameters', '_buffers', '_modules')
    ):
        raise ConversionError(f'{where}: the stored object holds no module state')
    return state


def stored_tensors(value: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict of a stored module tree (records and inert objects), under the published names.

    value: a PersistentRecord or InertObject whose state is an nn.Module's attribute dict -> {name: tensor}
    Parameters and persistent buffers, as `nn.Module.state_dict` lists them.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, prefix: str) -> None:
        state = _module_state(node, f'{where}: {prefix.rstrip(".") or "the network"}')
        skipped = state.get('_non_persistent_buffers_set') or set()
        entries = list(state['_parameters'].items()) + [
            (name, tensor) for name, tensor in state['_buffers'].items() if name not in skipped
        ]
        for name, tensor in entries:
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ConversionError(f'{where}: {prefix}{name} is a {type(tensor).__name__}, not a tensor')
            tensors[prefix + name] = tensor
        for name, child in state['_modules'].items():
            if child is None:
                continue
            if not isinstance(child, (PersistentRecord, InertObject)):
                raise ConversionError(f'{where}: the sub-module {prefix}{name} is a {type(child).__name__}')
            walk(child, f'{prefix}{name}.')

    walk(value, '')
    return tensors


def _prefix_pattern(prefix: str) -> re.Pattern:
    return re.compile('^' + re.escape(prefix).replace(re.escape('{i}'), r'(?P<i>\d+)'))


def rename(key: str, renames: Iterable[tuple[str, str]], to_published: bool = False) -> str:
    """A published tensor name -> this project's (or back, with to_published); unlisted names are kept."""
    for published, own in renames:
        source, target = (own, published) if to_published else (published, own)
        match = _prefix_pattern(source).match(key)
        if match:
            index = match.groupdict().get('i')
            return (target.replace('{i}', index) if index is not None else target) + key[match.end() :]
    return key


def renamed_tensors(
    tensors: dict[str, torch.Tensor], renames: Iterable[tuple[str, str]], dropped: Iterable[str]
) -> dict[str, torch.Tensor]:
    """{published name: tensor} -> {this project's name: tensor}, without the `dropped` names and prefixes."""
    dropped = tuple(dropped)
    return {
        rename(key, renames): tensor
        for key, tensor in tensors.items()
        if not any(key == name or (name.endswith('.') and key.startswith(name)) for name in dropped)
    }


def load_strict(
    module: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    where: str,
    renames: Iterable[tuple[str, str]],
    kept_prefix: str | None = None,
) -> None:
    """Load `tensors` (this project's names) into `module`; every name and shape must match.

    kept_prefix: names of `module` under it keep their built values (the body model's tensors).
    Raises ConversionError naming the first missing, unexpected or misshapen tensor (with its
    published name).
    """
    expected = {
        key: value
        for key, value in module.state_dict().items()
        if kept_prefix is None or not key.startswith(kept_prefix)
    }
    cls = type(module).__name__
    for key in expected:
        if key not in tensors:
            raise ConversionError(
                f'{where}: the file lacks the tensor {rename(key, renames, to_published=True)!r} '
                f"({key!r} of this project's {cls}); the file is incomplete or of another model"
            )
    for key, tensor in tensors.items():
        published = rename(key, renames, to_published=True)
        if key not in expected:
            raise ConversionError(
                f"{where}: the stored tensor {published!r} has no place in this project's {cls} "
                f'(as {key!r}); the file is not a published 3DPortraitGAN checkpoint or was '
                f'changed'
            )
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f'{where}: the stored tensor {published!r} has shape {list(tensor.shape)}, this '
                f"project's {cls} expects {list(expected[key].shape)} for {key!r}"
            )
    full = dict(module.state_dict()) if kept_prefix is not None else {}
    full.update(tensors)
    module.load_state_dict(full, strict=True)


# ------------------------------------------------------------------------------------------------
# The generator.


def _stored_arguments(record: PersistentRecord, where: str) -> dict:
    """The published constructor's arguments by name, from the record's `_init_args` and `_init_kwargs`."""
    args = record.state.get('_init_args') or ()
    kwargs = record.state.get('_init_kwargs') or {}
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise ConversionError(
            f'{where}: the generator record stores no constructor arguments (_init_args, _init_kwargs)'
        )
    if len(args) > len(_GENERATOR_PARAMETERS):
        raise ConversionError(
            f'{where}: the generator record stores {len(args)} positional arguments, the '
            f'published constructor takes at most {len(_GENERATOR_PARAMETERS)}'
        )
    named = dict(zip(_GENERATOR_PARAMETERS, args))
    named.update(kwargs)
    missing = [
        name
        for name in ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'rendering_kwargs')
        if name not in named
    ]
    if missing:
        raise ConversionError(f"{where}: the generator's stored constructor arguments lack {', '.join(missing)}")
    return named


def _layer_indices(tensors: dict[str, torch.Tensor], pattern: str) -> list:
    """Sorted integers captured by `pattern` (one group) over the tensor names."""
    compiled = re.compile(pattern)
    return sorted({int(match.group(1)) for key in tensors for match in [compiled.match(key)] if match})


def _numbered_layers(tensors: dict[str, torch.Tensor], name: str, where: str, renames) -> list:
    """The indices 0, 1, ... of the layers `name` (with `{i}`) present in `tensors`; a gap is a missing tensor."""
    indices = _layer_indices(tensors, '^' + re.escape(name).replace(re.escape('{i}'), r'(\d+)') + '$')
    for expected, index in enumerate(indices):
        if index != expected:
            missing = rename(name.replace('{i}', str(expected)), renames, to_published=True)
            raise ConversionError(f'{where}: the file lacks the tensor {missing!r}; the file is incomplete')
    return indices


def _require(tensors: dict[str, torch.Tensor], key: str, where: str, renames) -> torch.Tensor:
    if key not in tensors:
        raise ConversionError(f'{where}: the file lacks the tensor {rename(key, renames, to_published=True)!r}')
    return tensors[key]


def generator_arguments(
    record: PersistentRecord, tensors: dict[str, torch.Tensor], body_model: str, where: str = 'G'
) -> dict:
    """Keyword arguments of this project's TriPlaneGenerator equivalent to a published generator.

    record: the published generator's record; tensors: its tensors under this project's names
    (see renamed_tensors); body_model: 'smpl' or the path of an SMPL pickle.
    """
    stored = _stored_arguments(record, where)
    rendering = stored['rendering_kwargs']
    mapping_kwargs = stored.get('mapping_kwargs') or {}
    sr_kwargs = stored.get('sr_kwargs') or {}
    if not isinstance(rendering, dict) or not isinstance(mapping_kwargs, dict) or not isinstance(sr_kwargs, dict):
        raise ConversionError(f'{where}: rendering_kwargs, mapping_kwargs and sr_kwargs must be dicts')
    missing = [
        name
        for name in (
            'superresolution_module',
            'triplane_depth',
            'decoder_activation',
            'depth_resolution',
            'depth_resolution_importance',
            'ray_start',
            'ray_end',
            'box_warp',
        )
        if name not in rendering
    ]
    if missing:
        raise ConversionError(f'{where}: the stored rendering_kwargs lack {", ".join(missing)}')
    if rendering.get('c_gen_conditioning_zero', False):
        raise ConversionError(
            f'{where}: the generator ignores its conditioning (c_gen_conditioning_zero), which '
            f"this project's generator does not model"
        )
    if rendering['decoder_activation'] not in ('none', 'lrelu'):
        raise ConversionError(
            f'{where}: decoder_activation {rendering["decoder_activation"]!r}: this project maps '
            f"only the published generators with 'none' or 'lrelu'"
        )
    sr_class = rendering['superresolution_module']
    if sr_class not in _SR_MODULES:
        raise ConversionError(
            f'{where}: super-resolution module {sr_class!r}: this project maps {", ".join(sorted(_SR_MODULES))}'
        )
    sr_module, sr_input_resolution = _SR_MODULES[sr_class]

    # Sizes that the published source fixes rather than takes as arguments: read off the tensors.
    renames = _GENERATOR_RENAMES
    blocks = _layer_indices(tensors, r'^backbone\.b(\d+)\.')
    if not blocks:
        raise ConversionError(f'{where}: the file lacks the tri-grid backbone (backbone.synthesis.b*)')
    hidden = _require(tensors, 'decoder.hidden.weight', where, renames)
    pose_out = _require(tensors, 'pose_branch.mlp.fc2.weight', where, renames)
    nrr = record.state.get('neural_rendering_resolution', 64)
    if not isinstance(nrr, int) or isinstance(nrr, bool) or nrr <= 0:
        raise ConversionError(f'{where}: the stored neural_rendering_resolution is {nrr!r}, expected a positive int')
    channel_base = stored.get('channel_base', 32768)
    return dict(
        z_dim=stored['z_dim'],
        w_dim=stored['w_dim'],
        c_dim=stored['c_dim'],
        pose_dim=pose_out.shape[0],
        c_scale=float(rendering.get('c_scale', 0)),
        map_depth=mapping_kwargs.get('num_layers', 8),
        img_resolution=stored['img_resolution'],
        img_channels=stored['img_channels'],
        triplane_resolution=max(blocks),
        triplane_channels=hidden.shape[1],
        triplane_depth=rendering['triplane_depth'],
        channel_base=channel_base,
        channel_max=stored.get('channel_max', 512),
        num_fp16_res=stored.get('num_fp16_res', 4),
        conv_clamp=stored.get('conv_clamp'),
        decoder_hidden=hidden.shape[0],
        decoder_activation=rendering['decoder_activation'],
        decoder_lr_mul=float(rendering.get('decoder_lr_mul', 1)),
        use_background=bool(rendering.get('use_background', False)),
        background_channel_base=channel_base // 2,
        use_torgb_raw=bool(rendering.get('use_torgb_raw', False)),
        sr_module=sr_module,
        sr_input_resolution=sr_input_resolution,
        sr_channel_base=sr_kwargs.get('channel_base', channel_base),
        sr_channel_max=sr_kwargs.get('channel_max', stored.get('channel_max', 512)),
        sr_num_fp16_res=stored.get('sr_num_fp16_res', 0),
        sr_antialias=bool(rendering.get('sr_antialias', True)),
        sr_noise_mode=rendering.get('superresolution_noise_mode', 'none'),
        neural_rendering_resolution=nrr,
        ray_start=float(rendering['ray_start']),
        ray_end=float(rendering['ray_end']),
        depth_resolution=rendering['depth_resolution'],
        depth_resolution_importance=rendering['depth_resolution_importance'],
        box_warp=float(rendering['box_warp']),
        body_model=body_model,
        thickness=float(stored.get('thickness', 0.05)),
    )


def generator_tensors(record: PersistentRecord, where: str = 'G') -> dict[str, torch.Tensor]:
    """The published generator's tensors under this project's names, without those that have no counterpart."""
    return renamed_tensors(stored_tensors(record, where), _GENERATOR_RENAMES, _GENERATOR_DROPPED)


def build_generator(record: PersistentRecord, smpl_path: str | None = None, where: str = 'G') -> TriPlaneGenerator:
    """This project's TriPlaneGenerator with the published generator's weights; eval mode, frozen.

    smpl_path: the SMPL pickle its body model reads (None: smpl_pickle.DEFAULT_SMPL_PATH).
    """
    tensors = generator_tensors(record, where)
    kwargs = generator_arguments(record, tensors, 'smpl' if smpl_path is None else smpl_path, where)
    try:
        G = TriPlaneGenerator(**kwargs)
    except smpl_pickle.SmplFileNotFoundError as error:
        raise ConversionError(f'{where}: the published generator deforms an SMPL body: {error}') from None
    except smpl_pickle.SmplFileError as error:
        raise ConversionError(f'{where}: the published generator deforms an SMPL body, and {error}') from None
    except (ValueError, TypeError) as error:
        raise ConversionError(
            f"{where}: building this project's TriPlaneGenerator from the stored arguments failed ({error})"
        ) from None
    load_strict(G, tensors, where, _GENERATOR_RENAMES, kept_prefix=_BODY_PREFIX)
    return G.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# The discriminator.


def _child_state(value: Any, path: str) -> dict:
    """The stored attribute dict of the sub-module at dotted `path` ({} when absent)."""
    for name in path.split('.'):
        state = value.state if isinstance(value, (PersistentRecord, InertObject)) else None
        modules = state.get('_modules') if isinstance(state, dict) else None
        value = modules.get(name) if isinstance(modules, dict) else None
    state = value.state if isinstance(value, (PersistentRecord, InertObject)) else None
    return state if isinstance(state, dict) else {}


def _channel_base(channels: dict[int, int], channel_max: int, preferred: int | None) -> int | None:
    """A channel_base with min(channel_base // res, channel_max) == channels[res] at every res, `preferred` first."""
    candidates = [preferred] if preferred else []
    candidates += [width * res for res, width in channels.items() if width < channel_max]
    candidates.append(channel_max * max(channels))
    for base in candidates:
        if all(min(base // res, channel_max) == width for res, width in channels.items()):
            return base
    return None


def discriminator_arguments(
    value: InertObject, tensors: dict[str, torch.Tensor], generator_kwargs: dict | None = None, where: str = 'D'
) -> dict:
    """Keyword arguments of this project's PoseAwareDualDiscriminator equivalent to a published discriminator.

    value: the published discriminator as read by safe_pickle.load; tensors: its tensors under this
    project's names; generator_kwargs: the converted generator's arguments (image size and
    channels, camera size, channel base), when the file holds a generator.
    """
    renames = _DISCRIMINATOR_RENAMES
    state = _module_state(value, where)
    generator_kwargs = generator_kwargs or {}
    blocks = _layer_indices(tensors, r'^b(\d+)\.conv0\.weight$')
    img_resolution = generator_kwargs.get('img_resolution', state.get('img_resolution'))
    if not blocks or img_resolution != max(blocks):
        raise ConversionError(
            f"{where}: the discriminator's blocks ({', '.join(f'b{res}' for res in blocks)}) do "
            f'not start at the image resolution {img_resolution}'
        )
    channels = {res: _require(tensors, f'b{res}.conv0.weight', where, renames).shape[0] for res in blocks}
    epilogue = _require(tensors, 'b4.conv.weight', where, renames)
    channels[4] = epilogue.shape[0]
    channel_max = max(channels.values())
    channel_base = _channel_base(channels, channel_max, generator_kwargs.get('channel_base'))
    if channel_base is None:
        raise ConversionError(f"{where}: the discriminator's widths {channels} follow no channel_base")
    img_channels = generator_kwargs.get('img_channels', 3)
    input_channels = _require(tensors, f'b{img_resolution}.fromrgb.weight', where, renames).shape[1]
    pose_layers = _numbered_layers(tensors, 'pose_branch.fc{i}.weight', where, renames)
    mapping_layers = _numbered_layers(tensors, 'mapping.fc{i}.weight', where, renames)
    if not pose_layers or not mapping_layers:
        raise ConversionError(f"{where}: the file lacks the discriminator's pose head or condition mapping")
    pose_widths = [tensors[f'pose_branch.fc{index}.weight'].shape[0] for index in pose_layers]
    first_conv = _child_state(value, f'b{img_resolution}.conv0')
    mbstd = _child_state(value, 'b4.mbstd')
    return dict(
        c_dim=generator_kwargs.get('c_dim', state.get('camera_param_dim', 25)),
        pose_dim=pose_widths[-1],
        img_resolution=img_resolution,
        img_channels=img_channels,
        seg_channels=input_channels - 2 * img_channels,
        channel_base=channel_base,
        channel_max=channel_max,
        num_fp16_res=sum(bool(_child_state(value, f'b{res}').get('use_fp16')) for res in blocks),
        conv_clamp=first_conv.get('conv_clamp'),
        cmap_dim=_require(tensors, 'b4.out.weight', where, renames).shape[0],
        mbstd_group_size=mbstd.get('group_size', 4),
        mbstd_num_channels=epilogue.shape[1] - channels[4],
        mapping_layers=len(mapping_layers),
        pose_hidden=pose_widths[:-1],
        disc_c_noise=float(state.get('disc_c_noise', 0) or 0),
        mirror_camera=False,
    )


def discriminator_tensors(value: InertObject, where: str = 'D') -> dict[str, torch.Tensor]:
    """The published discriminator's tensors under this project's names, without those that have no counterpart."""
    return renamed_tensors(stored_tensors(value, where), _DISCRIMINATOR_RENAMES, _DISCRIMINATOR_DROPPED)


def build_discriminator(
    value: InertObject, generator_kwargs: dict | None = None, where: str = 'D'
) -> PoseAwareDualDiscriminator:
    """This project's PoseAwareDualDiscriminator with the published discriminator's weights; eval mode, frozen."""
    tensors = discriminator_tensors(value, where)
    kwargs = discriminator_arguments(value, tensors, generator_kwargs, where)
    try:
        D = PoseAwareDualDiscriminator(**kwargs)
    except (ValueError, TypeError, AssertionError) as error:
        raise ConversionError(
            f"{where}: building this project's PoseAwareDualDiscriminator from the stored shapes failed ({error})"
        ) from None
    load_strict(D, tensors, where, _DISCRIMINATOR_RENAMES)
    return D.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# Whole snapshots.


def convert_networks(data: dict, smpl_path: str | None = None) -> dict[str, Any]:
    """The networks of a published snapshot (read by safe_pickle.load) as this project's modules.

    -> {key: module} for the G, G_ema, D and D_ema it holds, plus augment_pipe: None. Other keys
    are left to the caller.
    """
    converted: dict[str, Any] = {}
    generator_kwargs = None
    for key in ('G_ema', 'G'):
        if is_generator(data.get(key)):
            converted[key] = build_generator(data[key], smpl_path, where=key)
            generator_kwargs = generator_kwargs or dict(converted[key].init_kwargs)
    for key in ('D', 'D_ema'):
        if is_discriminator(data.get(key)):
            converted[key] = build_discriminator(data[key], generator_kwargs, where=key)
    for key in NETWORK_KEYS:
        if data.get(key) is not None and key not in converted:
            raise ConversionError(
                f'{key}: a {getattr(data[key], "class_name", getattr(data[key], "_path", "?"))} '
                f'beside the published 3DPortraitGAN networks, which this project does not map'
            )
    if 'augment_pipe' in data:
        converted['augment_pipe'] = None
    return converted


def rebuild_release_snapshot(data: dict, smpl_path: str | None = None) -> dict[str, Any]:
    """A published snapshot as read by safe_pickle.load -> the same dict with its networks built as this
    project's modules (convert_networks) and every other value rebuilt by safe_pickle.rebuild_networks;
    the generators' body model reads the SMPL pickle at smpl_path (None: the default path)."""
    networks = convert_networks(data, smpl_path)
    return {
        key: networks[key] if key in networks else safe_pickle.rebuild_networks(value) for key, value in data.items()
    }
