"""Pieces shared by the command-line tools."""

import math
import os
import re
import tempfile

import click
import psutil
import torch

import dnnlib
from training.checkpoints import formats, run_files
from training.checkpoints.atomic_files import WriteError
from training.checkpoints.latent_file import load_latent
from training.engines.render_check import NonFiniteRenderError
from training.networks.triplane import build_generator
from training.presets import load_preset

DEFAULT_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


class Command(click.Command):
    """A click command that takes each long option in both spellings, `--seg_data` and `--seg-data`: the
    published tools mix the two styles, and so do the commands users copy from them. Help shows the
    declared spelling. A WriteError or NonFiniteRenderError from the command is its one-line error."""

    def parse_args(self, ctx: click.Context, args: list) -> list:
        known = {name for param in self.params for name in (*param.opts, *param.secondary_opts)}
        respelled = []
        for index, arg in enumerate(args):
            if arg == '--':
                respelled.extend(args[index:])
                break
            name, equals, value = arg.partition('=')
            if name.startswith('--') and name not in known:
                for other in ('--' + name[2:].replace('-', '_'), '--' + name[2:].replace('_', '-')):
                    if other in known:
                        name = other
                        break
            respelled.append(name + equals + value)
        return super().parse_args(ctx, respelled)

    def invoke(self, ctx: click.Context):
        """Run the command; an output that cannot be written or a render that is not finite ends it with one line."""
        try:
            return super().invoke(ctx)
        except (WriteError, NonFiniteRenderError) as err:
            raise click.ClickException(str(err)) from None


class FiniteFloat(click.FloatRange):
    """A float option that must be finite (NaN and inf are refused), optionally within a range."""

    name = 'finite float'

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f'{value!r} is not a finite number', param, ctx)
        return number

    def _describe_range(self) -> str:
        return '' if self.min is None and self.max is None else super()._describe_range()


class Device(click.ParamType):
    """--device: cpu, cuda or cuda:N, as a torch.device; a CUDA device only where torch sees one."""

    name = 'device'

    def convert(self, value, param, ctx):
        if isinstance(value, torch.device):
            return value
        try:
            device = torch.device(value)
        except (RuntimeError, TypeError):
            self.fail(f'{value!r} is not a device; use cpu, cuda or cuda:N', param, ctx)
        if device.type not in ('cpu', 'cuda'):
            self.fail(f'{value!r}: the tools run on cpu or cuda', param, ctx)
        if device.type == 'cuda' and not torch.cuda.is_available():
            self.fail('no CUDA device on this machine; use --device cpu', param, ctx)
        if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
            self.fail(f'{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)', param, ctx)
        return device


# The options that every single-process tool declares alike (decorators: each use makes its own option).
device_option = click.option(
    '--device', type=Device(), default=DEFAULT_DEVICE, show_default=True, help='cpu, cuda or cuda:N'
)
trust_pickle_option = click.option('--trust-pickle', 'trust_pickle', is_flag=True, help=formats.TRUST_PICKLE_HELP)
camera_search_option = click.option(
    '--camera-search/--no-camera-search',
    default=True,
    show_default=True,
    help="A raw photo's camera, after alignment: refined by this network's camera search (analysis by synthesis, "
    "as dataset_tool.py align --network), or the detectors' alone",
)


# Rough peak memory, for refusing settings that cannot fit before anything is allocated.
BYTES_PER_RAY_SAMPLE = 1024  # features of three planes, decoder activations, weights, with headroom
BYTES_PER_VOXEL = 32  # grid point coordinates, density, the volume and its closed copy


def require_memory(needed: float, option: str, device: torch.device) -> None:
    """A click error naming `option` when `needed` bytes exceed the free memory of `device`."""
    if device.type == 'cuda':
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = psutil.virtual_memory().available
    if needed > available:
        raise click.BadParameter(
            f'needs about {needed / 2**30:,.1f} GiB of memory and {device} has '
            f'{available / 2**30:,.1f} GiB free; choose a smaller value',
            param_hint=option,
        )


def require_render_memory(G: torch.nn.Module, images: int, sample_mult: int, device: torch.device) -> None:
    """--sample-mult: the ray samples of `images` renders at once must fit."""
    renderer = G.renderer
    samples = (
        images
        * G.neural_rendering_resolution**2
        * sample_mult
        * (renderer.depth_resolution + renderer.depth_resolution_importance)
    )
    require_memory(samples * BYTES_PER_RAY_SAMPLE, '--sample-mult', device)


def require_shape_memory(resolution: int, option: str, device: torch.device) -> None:
    """--shape-res: the density volume of resolution^3 voxels must fit."""
    require_memory(float(resolution) ** 3 * BYTES_PER_VOXEL, option, device)


def make_outdir(path: str, option: str = '--outdir') -> str:
    """Create the output folder if needed and make sure files can be written into it; a click error otherwise."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise click.ClickException(
            f'cannot write into {option} {path}: {err.strerror}; choose a writable folder'
        ) from None
    return path


def load_snapshot(network: str, device: torch.device, trust_pickle: bool = False) -> tuple:
    """--network (a file, URL, run directory or training outdir: run_files.resolve_network) -> (snapshot path,
    G_ema else G, D_ema else D, dict of everything the file holds), as click errors. The networks are in eval
    mode without gradients, None where the file has none.

    trust_pickle: unpickle a network pickle by running its code (see formats.load_network_pickle)."""
    try:
        path = dnnlib.util.open_url(run_files.resolve_network(network), return_filename=True)
        contents = formats.load_any(path, device=device, trust_pickle=trust_pickle)
        networks = run_files.snapshot_networks(contents, path)
    except (OSError, ValueError, formats.CheckpointError) as err:
        raise click.ClickException(str(err)) from None
    G, D = (None if network is None else network.eval().requires_grad_(False) for network in networks)
    return path, G, D, contents


def load_generator(
    network: str | None, cfg: str | None, init_seed: int, device: torch.device, trust_pickle: bool = False
) -> torch.nn.Module:
    """G_ema from a checkpoint of either format, or a freshly initialized generator of a preset."""
    if (network is None) == (cfg is None):
        raise click.UsageError('give exactly one of --network (a checkpoint) or --cfg (a preset, freshly initialized)')
    if cfg is not None:
        torch.manual_seed(init_seed)
        try:
            return build_generator(load_preset(cfg)).eval().requires_grad_(False).to(device)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint='--cfg') from None
    generator = load_snapshot(network, device, trust_pickle)[1]
    if generator is None:
        raise click.ClickException(f'{network}: the checkpoint holds no generator (G_ema or G)')
    return generator


def load_generator_and_discriminator(network: str, device: torch.device, trust_pickle: bool, needed_for: str) -> tuple:
    """G_ema (else G) and D_ema (else D) of a checkpoint, in eval mode without gradients -> (snapshot path, G, D,
    dict of everything the file holds).

    needed_for: what the caller needs D for, named in the error when the checkpoint lacks one."""
    path, G, D, contents = load_snapshot(network, device, trust_pickle)
    if G is None or D is None:
        raise click.ClickException(
            f'{network}: {needed_for} needs a checkpoint with a generator and a discriminator (D_ema or D)'
        )
    return path, G, D, contents


def pose_predict_settings(path: str, contents: dict, given: str | None, option: str, other_way: str = '') -> dict:
    """The pose-prediction settings of a loaded snapshot (run_files.find_pose_predict_kwargs: the JSON `given`
    with `option`, else those the file carries, else the JSON beside it), as click errors naming `option`;
    other_way: another option that makes them unneeded, named in the error when there are none."""
    try:
        settings = run_files.find_pose_predict_kwargs(path, contents, given)
    except (OSError, ValueError) as err:
        raise click.BadParameter(str(err), param_hint=option) from None
    if settings is None:
        raise click.ClickException(
            f'{path} carries no pose-prediction settings and there is no {run_files.pose_predict_kwargs_for(path)} '
            f'beside it: pass {other_way}the JSON with {option}'
        )
    return settings


def parse_pose(text: str | None, device: torch.device) -> torch.Tensor | None:
    """'a,b,c,d,e,f' (radians) -> pose [1, 6] (neck, head axis-angle); None -> None."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError:
        values = []
    if len(values) != 6 or not all(math.isfinite(value) for value in values):
        raise click.BadParameter(
            f'{text!r}: expected six comma-separated finite numbers (radians)', param_hint='--pose'
        )
    return torch.tensor([values], device=device)


MAX_SEEDS = 1_000_000  # more images than any tool or metric here needs; keeps a typo from filling the memory
SEED_RANGE = click.IntRange(0, 2**32 - 1)  # what numpy's RandomState and torch's generators take


def parse_seeds(text: str) -> list:
    """'0,2,5-9' -> [0, 2, 5, 6, 7, 8, 9], as a click error for anything else. Seeds are in 0 .. 2^32-1, at
    most MAX_SEEDS of them; ranges are checked before they are expanded."""
    if not isinstance(text, str):
        text = ','.join(str(seed) for seed in text)
    bounds = []
    for part in text.split(','):
        match = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', part)
        if match is None:
            bounds = None
            break
        first = int(match.group(1))
        bounds.append((first, int(match.group(2)) if match.group(2) else first))
    if not bounds or any(last < first or last >= 2**32 for first, last in bounds):
        raise click.BadParameter(
            f'{text!r}: expected seeds like 0,2,5-9 (integers in 0 .. 2^32-1)', param_hint='--seeds'
        )
    count = sum(last - first + 1 for first, last in bounds)
    if count > MAX_SEEDS:
        raise click.BadParameter(f'{text!r} names {count} seeds; at most {MAX_SEEDS} at a time', param_hint='--seeds')
    return [seed for first, last in bounds for seed in range(first, last + 1)]


def option_given(name: str) -> bool:
    """Whether the current command's parameter `name` came from the command line or the environment, not its default."""
    source = click.get_current_context().get_parameter_source(name)
    return source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def load_latent_option(path: str, G: torch.nn.Module, device: torch.device) -> dict:
    """--latent: the latent file at `path`, checked against G (see latent_file.load_latent), as a click error if bad."""
    try:
        return load_latent(path, G, device)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--latent') from None
