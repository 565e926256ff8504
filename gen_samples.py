"""Render images of a generator from a checkpoint (or a freshly initialized preset) at chosen cameras."""

import math
import os

import click
import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

import dnnlib
from training import checkpoint
from training.camera_utils import camera_label, frontal_camera, orbit_camera
from training.images import depth_to_uint8, to_uint8
from training.presets import load_preset
from training.shapes import DEFAULT_LEVEL, extract_shape, save_shape
from training.training_loop import latest_network_snapshot
from training.triplane import build_generator

VIEWS = {'back': -math.pi / 2, 'side': 0.0, 'front': math.pi / 2}


def resolve_network(network: str) -> str:
    """A checkpoint path or URL as given; a run directory -> its latest network snapshot; a folder of run
    directories (a training --outdir) -> the latest snapshot of its newest run."""
    if not os.path.isdir(network):
        return network
    runs = [network] + sorted((os.path.join(network, name) for name in os.listdir(network)), reverse=True)
    for run_dir in runs:
        if os.path.isdir(run_dir) and (snapshot := latest_network_snapshot(run_dir)) is not None:
            return snapshot
    raise click.BadParameter(f'{network}: no network-snapshot-*.pkl in this folder or its run directories',
                             param_hint='--network')


def load_generator(network: str | None, cfg: str | None, init_seed: int, device: torch.device) -> torch.nn.Module:
    """G_ema from a checkpoint of either format, or a freshly initialized generator of a preset."""
    if (network is None) == (cfg is None):
        raise click.UsageError('give exactly one of --network (a checkpoint) or --cfg (a preset, freshly initialized)')
    if cfg is not None:
        torch.manual_seed(init_seed)
        try:
            return build_generator(load_preset(cfg)).eval().requires_grad_(False).to(device)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint='--cfg') from None
    try:
        path = dnnlib.util.open_url(resolve_network(network), return_filename=True)
        modules = checkpoint.load_any(path, device=device)
    except (OSError, checkpoint.CheckpointError) as err:
        raise click.ClickException(str(err)) from None
    generator = modules.get('G_ema', modules.get('G'))
    if generator is None:
        raise click.ClickException(f'{network}: the checkpoint holds no generator (G_ema or G)')
    return generator.eval().requires_grad_(False)


def parse_pose(text: str | None, device: torch.device) -> torch.Tensor | None:
    """'a,b,c,d,e,f' (radians) -> pose [1, 6] (neck, head axis-angle); None -> None."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError:
        values = []
    if len(values) != 6:
        raise click.BadParameter(f'{text!r}: expected six comma-separated numbers (radians)', param_hint='--pose')
    return torch.tensor([values], device=device)


def parse_seeds(text: str) -> list:
    """'0,2,5-9' -> [0, 2, 5, 6, 7, 8, 9], as a click error for anything else."""
    try:
        seeds = dnnlib.util.parse_range(text) if isinstance(text, str) else list(text)
    except ValueError:
        seeds = None
    if not seeds or any(s < 0 or s >= 2 ** 32 for s in seeds):
        raise click.BadParameter(f'{text!r}: expected seeds like 0,2,5-9 (integers in 0 .. 2^32-1)', param_hint='--seeds')
    return seeds


@click.command()
@click.option('--network', help='Checkpoint (network pickle or weights file, path or URL), or a run directory')
@click.option('--cfg', help='Preset to initialize freshly instead of loading a checkpoint (e.g. cpu-small)')
@click.option('--init-seed', type=int, default=0, show_default=True, help='Weight seed with --cfg')
@click.option('--seeds', callback=lambda ctx, param, value: parse_seeds(value), default='0-3', show_default=True, help='Latent seeds, e.g. 0,2,5-9')
@click.option('--seeds_num', 'seeds_num', type=click.IntRange(min=1), default=None,
              help='Instead of --seeds: this many random seeds, drawn reproducibly from --seeds-seed')
@click.option('--seeds-seed', type=int, default=0, show_default=True, help='Draws the seeds of --seeds_num')
@click.option('--trunc', 'truncation_psi', type=float, default=1.0, show_default=True, help='Truncation psi')
@click.option('--trunc-cutoff', 'truncation_cutoff', type=int, default=None, help='Truncate only the first N ws')
@click.option('--views', default='back,side,front', show_default=True, help=f'Comma list of {", ".join(VIEWS)}')
@click.option('--pose', default=None, help='Render posed: six comma-separated neck/head axis-angle values, radians')
@click.option('--shapes', is_flag=True, help='Also write the density volume (.mrc) and a coloured mesh (.ply)')
@click.option('--shape-res', type=click.IntRange(min=8), default=128, show_default=True, help='Shape grid size per axis')
@click.option('--shape-level', type=float, default=DEFAULT_LEVEL, show_default=True, help='Marching-cubes sigma level')
@click.option('--sample-mult', type=click.IntRange(min=1), default=2, show_default=True, help='Multiply the samples per ray')
@click.option('--outdir', type=click.Path(file_okay=False), required=True, help='Where to write the images')
@click.option('--device', default='cuda' if torch.cuda.is_available() else 'cpu', show_default=True)
def main(network, cfg, init_seed, seeds, seeds_num, seeds_seed, truncation_psi, truncation_cutoff, views, pose,
         shapes, shape_res, shape_level, sample_mult, outdir, device):
    """Write, per seed, the super-resolved, raw and depth images at the chosen cameras, side by side.

    Conditioning is the frontal camera and zero body pose; the head is rendered in canonical space,
    or posed by --pose (deformation on). With --shapes, seedNNNN.mrc and seedNNNN.ply hold the
    canonical density and its mesh (metres, y up), coloured by the first 3 decoder feature channels.
    """
    device = torch.device(device)
    if seeds_num is not None:
        # Sampling without replacement from 2**31 values would build the whole permutation: draw until unique.
        rng, drawn = np.random.RandomState(seeds_seed), set()
        while len(drawn) < seeds_num:
            drawn.update(rng.randint(0, 2 ** 31, seeds_num - len(drawn)).tolist())
        seeds = sorted(drawn)
    pose_params = parse_pose(pose, device)
    view_names = [name.strip() for name in views.split(',')]
    unknown = [name for name in view_names if name not in VIEWS]
    if unknown:
        raise click.BadParameter(f'unknown view {unknown[0]!r}', param_hint='--views')
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as err:
        raise click.ClickException(f'cannot create --outdir {outdir}: {err.strerror}') from None
    G = load_generator(network, cfg, init_seed, device)
    renderer = G.renderer
    render_kwargs = dict(depth_resolution=renderer.depth_resolution * sample_mult,
                         depth_resolution_importance=renderer.depth_resolution_importance * sample_mult,
                         noise_mode='const')
    cameras = camera_label(orbit_camera(torch.tensor([VIEWS[name] for name in view_names]), math.pi / 2, device=device))
    condition = frontal_camera(1, device=device)
    for seed in tqdm(seeds, desc='seeds', unit='seed'):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(device)
        with torch.no_grad():
            ws = G.mapping(z, condition, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
            ws = ws.expand(len(view_names), -1, -1)
            posed = dict(apply_def=True, pose_params=pose_params.expand(len(view_names), -1)) if pose_params is not None else {}
            out = G.synthesis(ws, cameras, generator=torch.Generator(device).manual_seed(seed), **posed, **render_kwargs)
        for suffix, images in [('', to_uint8(out['image'])), ('_raw', to_uint8(out['image_raw'])),
                               ('_depth', depth_to_uint8(out['image_depth']))]:
            row = np.concatenate(list(images), axis=1)
            PIL.Image.fromarray(row.squeeze(-1) if row.shape[-1] == 1 else row).save(
                os.path.join(outdir, f'seed{seed:04d}{suffix}.png'))
        if shapes:
            tqdm.write(save_shape(extract_shape(G, ws[:1], shape_res, shape_level), os.path.join(outdir, f'seed{seed:04d}')))
    print(f'wrote {len(seeds)} seeds to {outdir}')


if __name__ == '__main__':
    main()
