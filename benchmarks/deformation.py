"""Throughput of the posed-to-canonical deformation for one training render on CPU.

Run from the repository root:  python -m benchmarks.deformation [--reps 5] [--subset 4096]
The workload is one 64x64 render of the embedded body at a random pose: a frontal camera at
radius 2.7 looking at (0, 0.0649, 0), focal 6.5104166, 48 stratified samples per ray over
[2.25, 3.3] plus 48 importance samples drawn from a stand-in density around the body surface,
i.e. 393,216 points per image. Figures are points per second of the whole deformation (posing,
search structures, nearest faces, mapping), best of `--reps` (each waits until the machine is idle), with 2 threads. The brute force
runs on a random `--subset` of the same points and is scaled.
"""

import argparse
import math
import os
import time

import torch

from training import camera_utils
from training.body.body_model import BodyModel
from training.body.deformation import Deformer, PosedMeshMap
from training.body.nearest_face import fcpw_available, nearest_faces, resolve_backend
from training.volumetric_rendering.importance import importance_depths
from training.volumetric_rendering.ray_sampler import sample_rays
from training.volumetric_rendering.renderer import stratified_depths

RESOLUTION = 64
NUM_COARSE = 48
NUM_FINE = 48
RAY_START, RAY_END = 2.25, 3.3
THICKNESS = 0.25


def render_samples(body: BodyModel, pose: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse and fine sample points of one render. -> coarse [1, R*48, 3], fine [1, R*48, 3]

    The fine depths come from the importance sampler fed with weights that peak within a few
    centimetres of the posed body surface, where a trained density puts them.
    """
    cam2world = camera_utils.orbit_camera(math.pi / 2, math.pi / 2)
    intrinsics = camera_utils.intrinsics_from_focal()[None]
    origins, directions = sample_rays(cam2world, intrinsics, RESOLUTION)
    num_rays = origins.shape[1]
    coarse_depths = stratified_depths(1, num_rays, NUM_COARSE, RAY_START, RAY_END, generator=generator)
    coarse = (origins[:, :, None] + coarse_depths * directions[:, :, None]).reshape(1, -1, 3)

    _, squared = nearest_faces(coarse[0], body.pose(pose)[0], body.box_faces, THICKNESS)
    closeness = torch.exp(-squared / 0.02 ** 2).view(1, num_rays, NUM_COARSE, 1)
    weights = (closeness[:, :, 1:] + closeness[:, :, :-1]) / 2
    fine_depths = importance_depths(coarse_depths, weights, NUM_FINE, generator=generator)
    fine = (origins[:, :, None] + fine_depths * directions[:, :, None]).reshape(1, -1, 3)
    return coarse, fine


def busy_fraction(interval: float = 0.5) -> float:
    """Fraction of CPU time spent busy by all processes over `interval` seconds (Linux /proc/stat)."""
    def sample():
        with open('/proc/stat') as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    total_start, idle_start = sample()
    time.sleep(interval)
    total_end, idle_end = sample()
    return 1 - (idle_end - idle_start) / max(1, total_end - total_start)


def wait_until_idle(limit: float = 0.1, timeout: float = 60.0) -> None:
    """Other jobs on the same cores distort timings: wait (up to `timeout`) until the machine is idle."""
    if not os.path.exists('/proc/stat'):
        return
    deadline = time.monotonic() + timeout
    while busy_fraction() >= limit and time.monotonic() < deadline:
        pass


def best_seconds(function, reps: int) -> float:
    best = float('inf')
    for _ in range(reps):
        wait_until_idle()
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def time_deformation(deformer: Deformer, pose: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor,
                     reps: int) -> dict:
    """Seconds of the deformation of both sample sets: forward, and forward + backward to the pose."""
    generator = torch.Generator().manual_seed(1)
    upstream = [torch.randn(points.shape, generator=generator) for points in (coarse, fine)]

    def forward():
        with torch.no_grad():
            deform = deformer.for_pose(pose)
            deform(coarse), deform(fine)

    def forward_backward():
        leaf = pose.clone().requires_grad_(True)
        deform = deformer.for_pose(leaf)
        loss = sum((deform(points) * gradient).sum() for points, gradient in zip((coarse, fine), upstream))
        loss.backward()

    return {'forward': best_seconds(forward, reps), 'forward+backward': best_seconds(forward_backward, reps)}


def time_stages(deformer: Deformer, pose: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor, reps: int) -> dict:
    """Seconds of each stage of the accelerated forward for both sample sets: posing + search
    structures + per-face maps, nearest-face queries, and the gather-map-scatter of the points."""
    body = deformer.body_model
    with torch.no_grad():
        def setup():
            return PosedMeshMap(body.pose(pose), body.canonical_vertices, body.box_faces, THICKNESS, deformer.backend)

        mesh_map = setup()
        faces = [mesh_map.nearest_faces(points) for points in (coarse, fine)]
        return {'pose + build': best_seconds(setup, reps),
                'nearest-face queries': best_seconds(lambda: [mesh_map.nearest_faces(points) for points in (coarse, fine)], reps),
                'gather, map, scatter': best_seconds(lambda: [mesh_map.apply(points, face) for points, face in zip((coarse, fine), faces)], reps)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reps', type=int, default=5, help='timed repetitions; the best is reported')
    parser.add_argument('--subset', type=int, default=4096, help='points timed with the brute force')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    body = BodyModel.embedded()
    pose = 0.4 * torch.randn(1, 6, generator=generator)
    coarse, fine = render_samples(body, pose, generator)
    num_points = coarse.shape[1] + fine.shape[1]
    posed = body.pose(pose)[0]
    near = sum(int((nearest_faces(points[0], posed, body.box_faces, THICKNESS)[0] >= 0).sum()) for points in (coarse, fine))
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, fcpw available: {fcpw_available()}, '
          f'best of {args.reps}, load average {os.getloadavg()[0]:.2f}')
    print(f'{num_points} points ({coarse.shape[1]} coarse + {fine.shape[1]} fine), '
          f'{near / num_points:.1%} within {THICKNESS} m of the {body.box_faces.shape[0]} box faces')

    backend = resolve_backend('auto', torch.device('cpu'))
    accelerated = Deformer(body, THICKNESS, backend=backend)
    rows = {f'auto ({backend}) {name}': (num_points, seconds)
            for name, seconds in time_deformation(accelerated, pose, coarse, fine, args.reps).items()}
    if backend != 'fcpw' and fcpw_available():
        rows.update({f'fcpw {name}': (num_points, seconds) for name, seconds in
                     time_deformation(Deformer(body, THICKNESS, backend='fcpw'), pose, coarse, fine, args.reps).items()})

    subset = torch.randperm(num_points, generator=generator)[:args.subset]
    points = torch.cat([coarse, fine], dim=1)[:, subset]
    half = points.shape[1] // 2
    brute = time_deformation(Deformer(body, THICKNESS, backend='brute'), pose, points[:, :half], points[:, half:],
                             max(1, args.reps // 2))
    rows.update({f'brute {name} (subset of {points.shape[1]}, scaled)': (points.shape[1], seconds)
                 for name, seconds in brute.items()})

    for name, (count, seconds) in rows.items():
        print(f'{name:<50s} {count / seconds / 1e6:8.3f} M points/s   ({seconds * 1e3 * num_points / count:8.1f} ms per image)')
    print('accelerated forward by stage:')
    for name, seconds in time_stages(accelerated, pose, coarse, fine, args.reps).items():
        print(f'  {name:<26s} {seconds * 1e3:8.1f} ms')
    print(f'load average at the end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
