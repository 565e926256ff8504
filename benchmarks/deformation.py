"""Throughput of the posed-to-canonical deformation for one training render, on the CPU or a GPU.

Run from the repository root:  python -m benchmarks.deformation [--reps 5] [--subset 4096] [--device cpu]
The workload is one 64x64 render of the embedded body at a random pose: a frontal camera at
radius 2.7 looking at (0, 0.0649, 0), focal 6.5104166, 48 stratified samples per ray over
[2.25, 3.3] plus 48 importance samples drawn from a stand-in density around the body surface,
i.e. 393,216 points per image. Figures are points per second of the whole deformation (posing,
search structures, nearest faces, mapping), best of `--reps` (on the CPU each waits until the
machine is idle), with 2 CPU threads. The brute force runs on a random `--subset` of the same
points and is scaled. The peak memory is that of the deformation of a `full-head` training
render at batch 4 (four poses, coarse and fine samples of each, as the generator calls it):
the growth of the resident set on the CPU, the allocator's peak on CUDA. The searches timed: the
device's default ('auto'), fcpw and 'lbvh' where they are not the default, and the tree kernel
('cuda': the CUDA kernel on a GPU, its host build on the CPU).
"""

import argparse
import math
import os
import threading
import time

import psutil
import torch

from benchmarks.timing import time_calls
from training.body.body_model import BodyModel
from training.body.deformation import Deformer, PosedMeshMap
from training.body.nearest_face import fcpw_available, nearest_faces, resolve_backend
from training.data import camera_utils
from training.volumetric_rendering.importance import importance_depths
from training.volumetric_rendering.ray_sampler import sample_rays
from training.volumetric_rendering.renderer import stratified_depths

RESOLUTION = 64
NUM_COARSE = 48
NUM_FINE = 48
RAY_START, RAY_END = 2.25, 3.3
THICKNESS = 0.25


def render_samples(
    body: BodyModel, pose: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
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
    closeness = torch.exp(-squared / 0.02**2).view(1, num_rays, NUM_COARSE, 1)
    weights = (closeness[:, :, 1:] + closeness[:, :, :-1]) / 2
    fine_depths = importance_depths(coarse_depths, weights, NUM_FINE, generator=generator)
    fine = (origins[:, :, None] + fine_depths * directions[:, :, None]).reshape(1, -1, 3)
    return coarse, fine


def best_seconds(function, reps: int, device: torch.device = torch.device('cpu')) -> float:
    """Best wall-clock seconds of `function` over `reps` calls, after one untimed call; on the CPU each call
    waits (up to a minute) for an idle machine."""
    return time_calls(function, reps, device=device, idle_timeout_s=60.0 if device.type == 'cpu' else 0.0).best


def peak_memory_mib(function, device: torch.device) -> float:
    """Memory that `function` needs at its peak, in MiB: on CUDA the allocator's peak above what
    was allocated before, on the CPU the growth of this process's resident set (sampled every ms)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        function()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    process = psutil.Process()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        function()
    finally:
        done.set()
        sampler.join()
    return (peak - before) / 2**20


def time_deformation(
    deformer: Deformer, pose: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor, reps: int
) -> dict:
    """Seconds of the deformation of both sample sets: forward, and forward + backward to the pose."""
    generator = torch.Generator().manual_seed(1)
    upstream = [torch.randn(points.shape, generator=generator).to(points.device) for points in (coarse, fine)]

    def forward():
        with torch.no_grad():
            deform = deformer.for_pose(pose)
            deform(coarse), deform(fine)

    def forward_backward():
        leaf = pose.clone().requires_grad_(True)
        deform = deformer.for_pose(leaf)
        loss = sum((deform(points) * gradient).sum() for points, gradient in zip((coarse, fine), upstream))
        loss.backward()

    return {
        'forward': best_seconds(forward, reps, pose.device),
        'forward+backward': best_seconds(forward_backward, reps, pose.device),
    }


def time_stages(deformer: Deformer, pose: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor, reps: int) -> dict:
    """Seconds of each stage of the accelerated forward for both sample sets: posing + search
    structures + per-face maps, nearest-face queries, and the gather-map-scatter of the points."""
    body = deformer.body_model
    with torch.no_grad():

        def setup():
            return PosedMeshMap(body.pose(pose), body.canonical_vertices, body.box_faces, THICKNESS, deformer.backend)

        mesh_map = setup()
        faces = [mesh_map.nearest_faces(points) for points in (coarse, fine)]
        return {
            'pose + build': best_seconds(setup, reps, pose.device),
            'nearest-face queries': best_seconds(
                lambda: [mesh_map.nearest_faces(points) for points in (coarse, fine)], reps, pose.device
            ),
            'gather, map, scatter': best_seconds(
                lambda: [mesh_map.apply(points, face) for points, face in zip((coarse, fine), faces)], reps, pose.device
            ),
        }


def batch_memory_mib(deformer: Deformer, coarse: torch.Tensor, fine: torch.Tensor, batch_size: int = 4) -> float:
    """Peak memory of the deformation of a training render at `batch_size`: forward and backward to the poses."""
    device = coarse.device
    poses = 0.4 * torch.randn(batch_size, 6, generator=torch.Generator().manual_seed(2)).to(device)

    def run():
        leaf = poses.clone().requires_grad_(True)
        deform = deformer.for_pose(leaf)
        loss = sum(deform(points.expand(batch_size, -1, -1)).sum() for points in (coarse, fine))
        loss.backward()

    run()
    return peak_memory_mib(run, device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reps', type=int, default=5, help='timed repetitions; the best is reported')
    parser.add_argument('--subset', type=int, default=4096, help='points timed with the brute force')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    generator = torch.Generator().manual_seed(0)
    body = BodyModel.embedded()
    pose = 0.4 * torch.randn(1, 6, generator=generator)
    coarse, fine = render_samples(body, pose, generator)
    num_points = coarse.shape[1] + fine.shape[1]
    posed = body.pose(pose)[0]
    near = sum(
        int((nearest_faces(points[0], posed, body.box_faces, THICKNESS)[0] >= 0).sum()) for points in (coarse, fine)
    )
    print(
        f'torch {torch.__version__}, device {device}'
        f'{f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""}, '
        f'{torch.get_num_threads()} threads, fcpw available: {fcpw_available()}, '
        f'best of {args.reps}, load average {os.getloadavg()[0]:.2f}'
    )
    print(
        f'{num_points} points ({coarse.shape[1]} coarse + {fine.shape[1]} fine), '
        f'{near / num_points:.1%} within {THICKNESS} m of the {body.box_faces.shape[0]} box faces'
    )

    body = body.to(device)
    pose, coarse, fine = pose.to(device), coarse.to(device), fine.to(device)
    backend = resolve_backend('auto', device)
    searches = {f'auto ({backend})': backend}
    if device.type == 'cpu' and backend != 'fcpw' and fcpw_available():
        searches['fcpw'] = 'fcpw'
    if backend != 'lbvh':
        searches['lbvh'] = 'lbvh'
    # The tree kernel: on CUDA its kernel, on the CPU the same walk compiled for the host.
    kernel = resolve_backend('cuda', device)
    label = 'cuda kernel' if device.type == 'cuda' else 'tree kernel (host build)'
    searches[label if kernel == 'cuda' else f'{label}: not built, lbvh'] = kernel
    rows, memory = {}, {}
    for label, name in searches.items():
        deformer = Deformer(body, THICKNESS, backend=name)
        rows.update(
            {
                f'{label} {mode}': (num_points, seconds)
                for mode, seconds in time_deformation(deformer, pose, coarse, fine, args.reps).items()
            }
        )
        memory[label] = batch_memory_mib(deformer, coarse, fine)

    subset = torch.randperm(num_points, generator=generator)[: args.subset].to(device)
    points = torch.cat([coarse, fine], dim=1)[:, subset]
    half = points.shape[1] // 2
    brute = time_deformation(
        Deformer(body, THICKNESS, backend='brute'), pose, points[:, :half], points[:, half:], max(1, args.reps // 2)
    )
    rows.update(
        {
            f'brute {name} (subset of {points.shape[1]}, scaled)': (points.shape[1], seconds)
            for name, seconds in brute.items()
        }
    )

    for name, (count, seconds) in rows.items():
        print(
            f'{name:<50s} {count / seconds / 1e6:8.3f} M points/s   ({seconds * 1e3 * num_points / count:8.1f} ms per image)'
        )
    for label in searches:
        print(f'{label} accelerated forward by stage:')
        for name, seconds in time_stages(
            Deformer(body, THICKNESS, backend=searches[label]), pose, coarse, fine, args.reps
        ).items():
            print(f'  {name:<26s} {seconds * 1e3:8.1f} ms')
    for label, mib in memory.items():
        print(f"{label} peak memory of a full-head render's deformation at batch 4 (fwd+bwd): {mib:8.1f} MiB")
    print(f'load average at the end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
