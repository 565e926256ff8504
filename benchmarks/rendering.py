"""Timings of the rendering kernels on CPU: tri-grid sampling and the ray marcher.

The tri-grid sampler runs as the fused C++ gather (the default on CPU), as the same gather in
PyTorch ops (what runs where the C++ extension cannot be built) and as `F.grid_sample`; the
marcher as the fused C++ pass over a render's two sample sets (the default on CPU) and as
merging, sorting and compositing in PyTorch ops.

Run from the repository root:  python -m benchmarks.rendering [--points 400000] [--reps 3]
Each figure is the best of `--reps` runs, in milliseconds, with 2 threads.
"""

import argparse
import contextlib
import functools
import os
from unittest import mock

import torch

from benchmarks.timing import best_seconds_taking_turns
from training.volumetric_rendering import trigrid
from training.volumetric_rendering.importance import merge_samples
from training.volumetric_rendering.ray_marcher import march, march_sample_sets
from training.volumetric_rendering.trigrid import sample_trigrid

# Tri-grid samplers: name -> (fast argument of sample_trigrid, whether the C++ gather may run).
SAMPLERS = {'gather': (True, True), 'gather (PyTorch ops)': (True, False), 'grid_sample': (False, False)}


def _best_ms(functions: dict, reps: int) -> dict:
    return {name: seconds * 1000 for name, seconds in best_seconds_taking_turns(functions, reps).items()}


def time_trigrid(num_points: int, reps: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    planes = torch.randn(1, 3, 32, 3, 256, 256, generator=generator).requires_grad_(True)
    # Slightly larger than the box so that the zero-padding branch is exercised too.
    points = ((torch.rand(1, num_points, 3, generator=generator) * 2 - 1) * 0.55).requires_grad_(True)

    def sampler_context(fused):
        return contextlib.nullcontext() if fused else mock.patch.object(trigrid, '_gather_plugin', lambda: None)

    def forward(fast, fused):
        with torch.no_grad(), sampler_context(fused):
            sample_trigrid(planes, points, box_warp=1.0, fast=fast)

    def forward_backward(fast, fused):
        with sampler_context(fused):
            features = sample_trigrid(planes, points, box_warp=1.0, fast=fast)
            torch.autograd.grad(features.sum(), (planes, points))

    functions = {}
    for name, options in SAMPLERS.items():
        functions[f'tri-grid {name} fwd'] = functools.partial(forward, *options)
    for name, options in SAMPLERS.items():
        functions[f'tri-grid {name} fwd+bwd (planes, points)'] = functools.partial(forward_backward, *options)
    return _best_ms(functions, reps)


def time_marcher(reps: int) -> dict:
    """The marcher on the coarse and fine samples of 4096 rays (48 + 48): merged and sorted, then
    composited in PyTorch ops (`merge_samples` + `march`), and in one fused pass (`march_sample_sets`)."""
    generator = torch.Generator().manual_seed(0)
    rays, half, channels = 4096, 48, 32

    def sample_set(sort: bool) -> tuple:
        colors = torch.randn(1, rays, half, channels, generator=generator).requires_grad_(True)
        densities = torch.randn(1, rays, half, 1, generator=generator).requires_grad_(True)
        depths = 2.25 + 1.05 * torch.rand(1, rays, half, 1, generator=generator)
        return colors, densities, torch.sort(depths, dim=2).values if sort else depths

    coarse, fine = sample_set(True), sample_set(False)
    leaves = [*coarse[:2], *fine[:2]]

    def merged(fused: bool) -> tuple:
        if fused:
            return march_sample_sets(*coarse, fine)
        depths, colors, densities = merge_samples(coarse[2], coarse[0], coarse[1], fine[2], fine[0], fine[1])
        return march(colors, densities, depths)

    def forward(fused: bool):
        with torch.no_grad():
            merged(fused)

    def forward_backward(fused: bool):
        features, depth, _, acc = merged(fused)
        torch.autograd.grad(features.sum() + depth.sum() + acc.sum(), leaves)

    shape = f'[1, {rays}, {half} + {half}, {channels}]'
    functions = {}
    for name, fused in (('merge + march', False), ('fused', True)):
        functions[f'marcher {name} fwd {shape}'] = functools.partial(forward, fused)
        functions[f'marcher {name} fwd+bwd {shape}'] = functools.partial(forward_backward, fused)
    return _best_ms(functions, reps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--points', type=int, default=400_000, help='sample points per plane (3 planes of [32, 3, 256, 256])'
    )
    parser.add_argument('--reps', type=int, default=3, help='timed repetitions; the best is reported')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, {args.points} points, best of {args.reps}, '
        f'load average {os.getloadavg()[0]:.2f} (other processes slow every figure down)'
    )
    results = {**time_trigrid(args.points, args.reps), **time_marcher(args.reps)}
    for name, milliseconds in results.items():
        print(f'{name:<50s} {milliseconds:9.1f} ms')
    print(f'load average at the end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
