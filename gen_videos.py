"""Videos of a generator's heads: a 360-degree orbit, a small camera wobble, or an animated body pose."""

import math
import os

import click
import imageio
import numpy as np
import torch
from tqdm import tqdm

from training import checkpoint
from training.camera_utils import camera_label, frontal_camera, orbit_camera, wobble_trajectory
from training.cli import DEFAULT_DEVICE, Device, FiniteFloat, load_generator, make_outdir, parse_seeds, require_render_memory
from training.images import depth_to_uint8, to_uint8


def interpolate_ws(keyframes: torch.Tensor, num_frames: int, kind: str) -> torch.Tensor:
    """Loop through keyframe latents: keyframes [K, num_ws, w_dim] -> ws [num_frames, num_ws, w_dim].

    Frame t sits at keyframe position K t / num_frames; 'cubic' is a Catmull-Rom spline closed over the loop.
    """
    count = len(keyframes)
    position = torch.arange(num_frames, dtype=torch.float32, device=keyframes.device) * count / num_frames
    index = position.floor().long()
    frac = (position - index).reshape(-1, 1, 1)
    p1, p2 = keyframes[index % count], keyframes[(index + 1) % count]
    if kind == 'linear':
        return p1 + (p2 - p1) * frac
    p0, p3 = keyframes[(index - 1) % count], keyframes[(index + 2) % count]
    return 0.5 * (2 * p1 + (p2 - p0) * frac + (2 * p0 - 5 * p1 + 4 * p2 - p3) * frac ** 2
                  + (3 * p1 - p0 - 3 * p2 + p3) * frac ** 3)


def full_orbit(num_frames: int, device=None) -> torch.Tensor:
    """A level 360-degree orbit from the front back to the front, both ends included: -> c [num_frames, 25]."""
    horizontal = math.pi / 2 + torch.linspace(0, 2 * math.pi, num_frames, device=device)
    return camera_label(orbit_camera(horizontal, math.pi / 2, device=device))


def pose_trajectory(num_frames: int, amplitude: float, device=None) -> torch.Tensor:
    """Neck and head turning left and right, then nodding: -> pose [num_frames, 6] (axis-angle, radians)."""
    phase = 2 * math.pi * torch.arange(num_frames, dtype=torch.float32, device=device) / num_frames
    pose = torch.zeros(num_frames, 6, device=device)
    pose[:, 1] = pose[:, 4] = amplitude * torch.sin(phase) / 2
    pose[:, 0] = pose[:, 3] = amplitude * torch.sin(2 * phase) / 4
    return pose


def parse_grid(text: str) -> tuple:
    """'3x2' -> (3, 2) (columns, rows)."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise click.BadParameter(f'{text!r}: expected WxH, e.g. 2x1', param_hint='--grid') from None
    if width < 1 or height < 1:
        raise click.BadParameter(f'{text!r}: both sides must be at least 1', param_hint='--grid')
    return width, height


@click.command()
@click.option('--network', required=True, help='Checkpoint (network pickle or weights file), a run directory or a training outdir')
@click.option('--seeds', callback=lambda ctx, param, value: parse_seeds(value), default='0', show_default=True,
              help='Latent seeds, e.g. 0,2,5-9; one per grid cell, or keyframes with --interpolate')
@click.option('--grid', callback=lambda ctx, param, value: parse_grid(value), default='1x1', show_default=True,
              help='Cells of the video, WxH')
@click.option('--trajectory', type=click.Choice(['orbit', 'wobble', 'pose']), default='orbit', show_default=True,
              help='orbit: 360 degrees of yaw; wobble: small camera loop (SPEC 10.2); pose: neck/head animated, camera fixed')
@click.option('--large_pose', is_flag=True, help='Alias of --trajectory orbit')
@click.option('--pose-amplitude', type=FiniteFloat(), default=0.6, show_default=True, help='Peak rotation of --trajectory pose, radians')
@click.option('--image_mode', type=click.Choice(['image', 'image_raw', 'image_depth']), default='image', show_default=True)
@click.option('--w-frames', type=click.IntRange(min=2), default=120, show_default=True, help='Frames per keyframe')
@click.option('--fps', type=click.IntRange(min=1), default=30, show_default=True)
@click.option('--interpolate', type=click.Choice(['none', 'linear', 'cubic']), default='none', show_default=True,
              help='Each cell loops through its consecutive seeds\' w (seeds = cells x keyframes)')
@click.option('--trunc', 'truncation_psi', type=FiniteFloat(), default=1.0, show_default=True, help='Truncation psi')
@click.option('--trunc-cutoff', 'truncation_cutoff', type=int, default=None, help='Truncate only the first N ws')
@click.option('--sample-mult', type=click.IntRange(min=1), default=2, show_default=True, help='Multiply the samples per ray')
@click.option('--outdir', type=click.Path(file_okay=False), required=True)
@click.option('--device', type=Device(), default=DEFAULT_DEVICE, show_default=True, help='cpu, cuda or cuda:N')
@click.option('--trust-pickle', 'trust_pickle', is_flag=True, help=checkpoint.TRUST_PICKLE_HELP)
def main(network, seeds, grid, trajectory, large_pose, pose_amplitude, image_mode, w_frames, fps, interpolate,
         truncation_psi, truncation_cutoff, sample_mult, outdir, device, trust_pickle):
    """Write one mp4 (libx264) of the seeds laid out in the grid, conditioned on the frontal camera and zero pose.

    Frames: w_frames per keyframe. A full orbit includes its end point, so its first and last frames are
    the same view. Without --interpolate the grid shows the first W*H seeds, each fixed.
    """
    if large_pose:
        trajectory = 'orbit'
    cells = grid[0] * grid[1]
    keyframes = len(seeds) // cells if interpolate != 'none' else 1
    if keyframes < 1 or (interpolate == 'none' and len(seeds) < cells):
        raise click.BadParameter(f'{len(seeds)} seeds do not fill a {grid[0]}x{grid[1]} grid', param_hint='--seeds')
    make_outdir(outdir)
    G = load_generator(network, None, 0, device, trust_pickle)
    num_frames = keyframes * w_frames
    condition = frontal_camera(1, device=device)
    with torch.no_grad():
        zs = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in seeds[:cells * keyframes]]))
        ws = G.mapping(zs.float().to(device), condition.expand(len(zs), -1), truncation_psi=truncation_psi,
                       truncation_cutoff=truncation_cutoff)
    ws = ws.reshape(cells, keyframes, *ws.shape[1:])
    cell_ws = [interpolate_ws(w, num_frames, interpolate) if interpolate != 'none' else w.expand(num_frames, -1, -1)
               for w in ws]
    poses = None
    if trajectory == 'orbit':
        cameras = full_orbit(num_frames, device)
    elif trajectory == 'wobble':
        cameras = wobble_trajectory(num_frames, device=device)
    else:
        cameras = frontal_camera(num_frames, device=device)
        poses = pose_trajectory(num_frames, pose_amplitude, device)
    require_render_memory(G, cells, sample_mult, device)
    renderer = G.renderer
    render_kwargs = dict(depth_resolution=renderer.depth_resolution * sample_mult,
                         depth_resolution_importance=renderer.depth_resolution_importance * sample_mult,
                         noise_mode='const', deterministic=True)
    path = os.path.join(outdir, f'seeds{"-".join(str(s) for s in seeds[:cells * keyframes])}_{trajectory}_{image_mode}.mp4')
    writer = imageio.get_writer(path, mode='I', fps=fps, codec='libx264', bitrate='10M', macro_block_size=1)
    try:
        for frame in tqdm(range(num_frames), desc='frames', unit='frame'):
            with torch.no_grad():
                w = torch.stack([cw[frame] for cw in cell_ws])
                posed = dict(apply_def=True, pose_params=poses[frame:frame + 1].expand(cells, -1)) if poses is not None else {}
                out = G.synthesis(w, cameras[frame:frame + 1].expand(cells, -1), **posed, **render_kwargs)
            images = depth_to_uint8(out['image_depth']) if image_mode == 'image_depth' else to_uint8(out[image_mode])
            if images.shape[-1] == 1:
                images = images.repeat(3, axis=-1)
            h, w_px = images.shape[1:3]
            canvas = images.reshape(grid[1], grid[0], h, w_px, 3).transpose(0, 2, 1, 3, 4).reshape(grid[1] * h, grid[0] * w_px, 3)
            writer.append_data(canvas)
    finally:
        writer.close()
    print(f'wrote {num_frames} frames to {path}')


if __name__ == '__main__':
    main()
