"""Videos of a generator: camera and pose trajectories, latent interpolation, and the frame loop that writes an mp4."""

import math

import imageio_ffmpeg
import numpy as np
import torch
from tqdm import tqdm

from training.checkpoints.atomic_files import atomic_write_path
from training.data.camera_utils import camera_label, frontal_camera, orbit_camera, wobble_trajectory
from training.data.images import depth_to_uint8, to_uint8
from training.engines.render_check import synthesis

TRAJECTORIES = ('orbit', 'wobble', 'pose')
IMAGE_MODES = ('image', 'image_raw', 'image_depth')
INTERPOLATIONS = ('linear', 'cubic')  # of interpolate_ws


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
    return 0.5 * (
        2 * p1 + (p2 - p0) * frac + (2 * p0 - 5 * p1 + 4 * p2 - p3) * frac**2 + (3 * p1 - p0 - 3 * p2 + p3) * frac**3
    )


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


def trajectory_frames(
    trajectory: str, num_frames: int, pose_amplitude: float, base_pose: torch.Tensor | None = None, device=None
) -> tuple:
    """-> (cameras [num_frames, 25], poses [num_frames, 6] or None: None renders the canonical head).

    'orbit' and 'wobble' move the camera, posed throughout by base_pose [1, 6] when given; 'pose' keeps the
    frontal camera and adds pose_trajectory's oscillation to base_pose (zero when None).
    """
    if trajectory not in TRAJECTORIES:
        raise ValueError(f'trajectory {trajectory!r}: expected one of {", ".join(TRAJECTORIES)}')
    if trajectory == 'pose':
        poses = pose_trajectory(num_frames, pose_amplitude, device)
        return frontal_camera(num_frames, device=device), poses if base_pose is None else poses + base_pose
    cameras = full_orbit(num_frames, device) if trajectory == 'orbit' else wobble_trajectory(num_frames, device=device)
    return cameras, None if base_pose is None else base_pose.expand(num_frames, -1)


def _mp4_encoder(path: str, width: int, height: int, fps: int):
    """An ffmpeg process writing an mp4 (libx264, yuv420p, 10 Mbit/s) to `path`, whatever its extension: a
    generator to send() uint8 [height, width, 3] frames to, then close()."""
    encoder = imageio_ffmpeg.write_frames(
        path,
        (width, height),
        fps=fps,
        codec='libx264',
        bitrate='10M',
        quality=None,
        macro_block_size=1,
        output_params=['-f', 'mp4'],
    )
    encoder.send(None)  # starts ffmpeg
    return encoder


def write_video(
    G: torch.nn.Module,
    cell_ws: list[torch.Tensor],
    grid: tuple,
    path: str,
    trajectory: str,
    image_mode: str,
    fps: int,
    sample_mult: int,
    pose_amplitude: float,
    base_pose: torch.Tensor | None = None,
) -> int:
    """Render every frame of a grid of latents along a trajectory and write them to `path` (mp4, libx264).

    cell_ws: per grid cell, row by row, ws [num_frames, num_ws, w_dim]; grid (columns, rows);
    base_pose [1, 6] or None (see trajectory_frames). Each frame is image_mode of G.synthesis, rendered without
    sample jitter and with sample_mult times the samples per ray; the file appears only when complete
    (atomic_files.atomic_write_path). -> the number of frames written.
    """
    if len(cell_ws) != grid[0] * grid[1]:
        raise ValueError(f'write_video: {len(cell_ws)} cells of ws for a {grid[0]}x{grid[1]} grid')
    if image_mode not in IMAGE_MODES:
        raise ValueError(f'image_mode {image_mode!r}: expected one of {", ".join(IMAGE_MODES)}')
    cells, num_frames = len(cell_ws), len(cell_ws[0])
    device = cell_ws[0].device
    cameras, poses = trajectory_frames(trajectory, num_frames, pose_amplitude, base_pose, device)
    renderer = G.renderer
    render_kwargs = dict(
        depth_resolution=renderer.depth_resolution * sample_mult,
        depth_resolution_importance=renderer.depth_resolution_importance * sample_mult,
        noise_mode='const',
        deterministic=True,
    )

    def write_frames(temp_path: str) -> None:
        encoder = None
        try:
            for frame in tqdm(range(num_frames), desc='frames', unit='frame'):
                with torch.no_grad():
                    w = torch.stack([cw[frame] for cw in cell_ws])
                    pose = None if poses is None else poses[frame : frame + 1].expand(cells, -1)
                    camera = cameras[frame : frame + 1].expand(cells, -1)
                    out = synthesis(G, w, camera, pose_params=pose, **render_kwargs)
                images = (
                    depth_to_uint8(out['image_depth']) if image_mode == 'image_depth' else to_uint8(out[image_mode])
                )
                if images.shape[-1] == 1:
                    images = images.repeat(3, axis=-1)
                h, w_px = images.shape[1:3]
                canvas = (
                    images.reshape(grid[1], grid[0], h, w_px, 3)
                    .transpose(0, 2, 1, 3, 4)
                    .reshape(grid[1] * h, grid[0] * w_px, 3)
                )
                if encoder is None:
                    encoder = _mp4_encoder(temp_path, canvas.shape[1], canvas.shape[0], fps)
                encoder.send(np.ascontiguousarray(canvas))
        finally:
            if encoder is not None:
                encoder.close()

    atomic_write_path(path, write_frames)
    return num_frames
