"""Timings of the headless mesh renderer on the embedded upper body (render + readback).

Run from the repository root:  python -m benchmarks.mesh_renderer [--reps 20] [--lp-threads 0]
Each figure is the best of `--reps` frames, in milliseconds per frame, with 2 torch threads.
`--lp-threads` sets LP_NUM_THREADS (llvmpipe rasterizer threads) for this run; the renderer's
default is 0 (render in the calling thread, fork-safe).
"""

import argparse
import os

import torch

from benchmarks.timing import time_calls


def best_ms(function, reps: int) -> float:
    """Best milliseconds of `function` after one untimed call (GL context, shaders, framebuffer)."""
    return time_calls(function, reps).best * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--reps', type=int, default=20)
    parser.add_argument(
        '--lp-threads',
        type=int,
        default=None,
        help='LP_NUM_THREADS for this run (default: as set, else the renderer default 0)',
    )
    args = parser.parse_args()
    if args.lp_threads is not None:
        os.environ['LP_NUM_THREADS'] = str(args.lp_threads)
    torch.set_num_threads(2)

    from training.body.body_model import BodyModel
    from training.data import camera_utils
    from training.engines.mesh_renderer import MeshRenderer

    body = BodyModel.embedded()
    faces = body.faces
    canonical = body.canonical_vertices[0]
    poses = 0.3 * torch.randn(args.reps + 1, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        posed = body.pose(poses)
    cameras = camera_utils.orbit_trajectory(args.reps + 1, pitch=-0.1)
    frontal = camera_utils.frontal_camera()[0]
    renderer = MeshRenderer()
    frame = iter(range(10**9))

    rows = []
    for resolution in (64, 256):
        rows.append(
            (
                f'{resolution:>3} px  lit, canonical, frontal',
                best_ms(lambda: renderer.render(canonical, faces, frontal, resolution), args.reps),
            )
        )
        rows.append(
            (
                f'{resolution:>3} px  unlit, canonical, frontal',
                best_ms(lambda: renderer.render(canonical, faces, frontal, resolution, lit=False), args.reps),
            )
        )

        def posed_orbit():
            index = next(frame) % len(cameras)
            renderer.render(posed[index], faces, cameras[index], resolution)

        rows.append((f'{resolution:>3} px  lit, new pose and camera each frame', best_ms(posed_orbit, args.reps)))
    image = torch.full((256, 256, 3), 128, dtype=torch.uint8)
    rows.append(
        (
            '256 px  overlay (render + blend)',
            best_ms(lambda: renderer.overlay(image, canonical, faces, frontal), args.reps),
        )
    )

    print(
        f'embedded body: {canonical.shape[0]} vertices, {faces.shape[0]} faces; '
        f'LP_NUM_THREADS={os.environ.get("LP_NUM_THREADS")}; '
        f'{renderer.gl_renderer}'
    )
    for name, ms in rows:
        print(f'{name:<45} {ms:7.2f} ms')


if __name__ == '__main__':
    main()
