"""Videos of a generator's heads: a 360-degree orbit, a small camera wobble, or an animated body pose."""

import os

import click
import numpy as np
import torch

from training.cli import (
    Command,
    FiniteFloat,
    device_option,
    load_generator,
    load_latent_option,
    make_outdir,
    option_given,
    parse_seeds,
    require_render_memory,
    trust_pickle_option,
)
from training.data.camera_utils import frontal_camera
from training.engines.video import IMAGE_MODES, INTERPOLATIONS, TRAJECTORIES, interpolate_ws, write_video


def parse_grid(text: str) -> tuple:
    """'3x2' -> (3, 2) (columns, rows)."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise click.BadParameter(f'{text!r}: expected WxH, e.g. 2x1', param_hint='--grid') from None
    if width < 1 or height < 1:
        raise click.BadParameter(f'{text!r}: both sides must be at least 1', param_hint='--grid')
    return width, height


@click.command(cls=Command)
@click.option(
    '--network', required=True, help='Checkpoint (network pickle or weights file), a run directory or a training outdir'
)
@click.option(
    '--seeds',
    callback=lambda ctx, param, value: parse_seeds(value),
    default='0',
    show_default=True,
    help='Latent seeds, e.g. 0,2,5-9; one per grid cell, or keyframes with --interpolate',
)
@click.option(
    '--latent',
    type=click.Path(exists=True, dir_okay=False),
    help='Instead of --seeds: the ws of a latent .npz (e.g. from invert.py), posed by its pose if it has one; 1x1 grid',
)
@click.option(
    '--grid',
    callback=lambda ctx, param, value: parse_grid(value),
    default='1x1',
    show_default=True,
    help='Cells of the video, WxH',
)
@click.option(
    '--trajectory',
    type=click.Choice(TRAJECTORIES),
    default='orbit',
    show_default=True,
    help='orbit: 360 degrees of yaw; wobble: small camera loop; pose: neck/head animated, camera fixed',
)
@click.option(
    '--large_pose',
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=False,
    help='--large_pose or --large_pose=True (the published spelling): --trajectory orbit',
)
@click.option(
    '--pose-amplitude',
    type=FiniteFloat(),
    default=0.6,
    show_default=True,
    help='Peak rotation of --trajectory pose, radians',
)
@click.option('--image_mode', type=click.Choice(IMAGE_MODES), default='image', show_default=True)
@click.option('--w-frames', type=click.IntRange(min=2), default=120, show_default=True, help='Frames per keyframe')
@click.option('--fps', type=click.IntRange(min=1), default=30, show_default=True)
@click.option(
    '--interpolate',
    type=click.Choice(('none', *INTERPOLATIONS)),
    default='none',
    show_default=True,
    help="Each cell loops through its consecutive seeds' w (seeds = cells x keyframes)",
)
@click.option(
    '--trunc', 'truncation_psi', type=FiniteFloat(), default=1.0, show_default=True, help='Truncation psi (seeds only)'
)
@click.option(
    '--trunc-cutoff',
    'truncation_cutoff',
    type=click.IntRange(min=0),
    default=None,
    help='Truncate only the first N ws (seeds only)',
)
@click.option(
    '--sample-mult', type=click.IntRange(min=1), default=2, show_default=True, help='Multiply the samples per ray'
)
@click.option('--outdir', type=click.Path(file_okay=False), required=True)
@device_option
@trust_pickle_option
def main(
    network,
    seeds,
    latent,
    grid,
    trajectory,
    large_pose,
    pose_amplitude,
    image_mode,
    w_frames,
    fps,
    interpolate,
    truncation_psi,
    truncation_cutoff,
    sample_mult,
    outdir,
    device,
    trust_pickle,
):
    """Write one mp4 (libx264) of the seeds laid out in the grid, conditioned on the frontal camera and zero pose;
    or, with --latent, of the latent in that file.

    Frames: w_frames per keyframe. A full orbit includes its end point, so its first and last frames are
    the same view. Without --interpolate the grid shows the first W*H seeds, each fixed. A latent file's
    ws are rendered as saved; when the file has a pose, every frame is posed by it (--trajectory pose
    animates around it). Output: seeds<list>_<trajectory>_<image_mode>.mp4, or <latent file stem>_... .
    """
    if large_pose:
        trajectory = 'orbit'
    if latent is not None:
        for name, option in (
            ('seeds', '--seeds'),
            ('truncation_psi', '--trunc'),
            ('truncation_cutoff', '--trunc-cutoff'),
        ):
            if option_given(name):
                raise click.UsageError(
                    f'{option} does not apply to --latent: the file holds the ws to render; give one of them'
                )
        if grid != (1, 1) or interpolate != 'none':
            raise click.UsageError('--latent renders one latent: use --grid 1x1 and --interpolate none')
    cells = grid[0] * grid[1]
    keyframes = len(seeds) // cells if interpolate != 'none' else 1
    if latent is None and (keyframes < 1 or (interpolate == 'none' and len(seeds) < cells)):
        raise click.BadParameter(f'{len(seeds)} seeds do not fill a {grid[0]}x{grid[1]} grid', param_hint='--seeds')
    make_outdir(outdir)
    G = load_generator(network, None, 0, device, trust_pickle)
    num_frames = keyframes * w_frames
    base_pose = None
    if latent is not None:
        loaded = load_latent_option(latent, G, device)
        cell_ws, base_pose = [loaded['ws'].expand(num_frames, -1, -1)], loaded['pose']
        name = os.path.splitext(os.path.basename(latent))[0]
    else:
        condition = frontal_camera(1, device=device)
        with torch.no_grad():
            zs = torch.from_numpy(
                np.stack([np.random.RandomState(s).randn(G.z_dim) for s in seeds[: cells * keyframes]])
            )
            ws = G.mapping(
                zs.float().to(device),
                condition.expand(len(zs), -1),
                truncation_psi=truncation_psi,
                truncation_cutoff=truncation_cutoff,
            )
        ws = ws.reshape(cells, keyframes, *ws.shape[1:])
        cell_ws = [
            interpolate_ws(w, num_frames, interpolate) if interpolate != 'none' else w.expand(num_frames, -1, -1)
            for w in ws
        ]
        name = f'seeds{"-".join(str(s) for s in seeds[: cells * keyframes])}'
    require_render_memory(G, cells, sample_mult, device)
    path = os.path.join(outdir, f'{name}_{trajectory}_{image_mode}.mp4')
    frames = write_video(G, cell_ws, grid, path, trajectory, image_mode, fps, sample_mult, pose_amplitude, base_pose)
    print(f'wrote {frames} frames to {path}')


if __name__ == '__main__':
    main()
