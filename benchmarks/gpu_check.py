"""The stages of the prepared GPU check (benchmarks/gpu_check.sh), one subcommand each.

Each stage prints its progress and ends with lines that start with 'SUMMARY ', which the shell
script gathers into its closing summary.

    python -m benchmarks.gpu_check build-ops [op module ...]
    python -m benchmarks.gpu_check generator [--reps 5] [--batch 4]
    python -m benchmarks.gpu_check throughput [--batches 4 8 16] [--reps 2]
    python -m benchmarks.gpu_check training-summary RUN_DIR
    python -m benchmarks.gpu_check compare-renders RUN_DIR
"""

import argparse
import concurrent.futures
import importlib
import json
import multiprocessing
import os
import statistics
import sys
import time
import warnings

import numpy as np

OPS = ('torch_utils.ops.bias_act', 'torch_utils.ops.upfirdn2d', 'training.body.nearest_face')

# Generator precisions of the check: every layer in fp32, the preset's fp16 super-resolution
# blocks (as trained), and the backbone's four highest-resolution blocks in fp16 as well.
PRECISIONS = {
    'fp32': dict(num_fp16_res=0, sr_num_fp16_res=0),
    'fp16 SR (preset)': dict(num_fp16_res=0, sr_num_fp16_res=4),
    'fp16 SR + backbone': dict(num_fp16_res=4, sr_num_fp16_res=4),
}


def summary(line: str) -> None:
    print(f'SUMMARY {line}', flush=True)


def build_op(module_name: str) -> tuple[str, float, str]:
    """Build one op's CUDA plugin in this process. -> (module, seconds, 'ok' or the reason it failed)"""
    start = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            plugin = importlib.import_module(module_name)._plugin()
            status = 'ok' if plugin is not None else 'FAILED: ' + '; '.join(str(w.message) for w in caught)
        except Exception as error:  # Reported like a failed build; the summary names it.
            status = f'FAILED: {type(error).__name__}: {error}'
    return module_name, time.time() - start, status


def build_ops(modules: list[str]) -> int:
    """Build the CUDA plugins side by side (one process each). -> exit status"""
    # Spawned, not forked: a forked child cannot initialize CUDA once its parent has.
    with concurrent.futures.ProcessPoolExecutor(len(modules), mp_context=multiprocessing.get_context('spawn')) as pool:
        results = list(pool.map(build_op, modules))
    for module_name, seconds, status in results:
        summary(f'{module_name}: {status} ({seconds:.0f} s)')
    return 0 if all(status == 'ok' for _, _, status in results) else 1


def time_generator(reps: int, batch: int) -> int:
    """full-head generator at `batch`: forward and forward+backward per precision with the deformation, and in fp32 without it."""
    import torch

    from benchmarks.generator import run_case
    from training.body.nearest_face import resolve_backend

    torch.backends.cudnn.benchmark = True
    print(
        f'{torch.cuda.get_device_name()}, nearest-face search on CUDA: {resolve_backend("auto", torch.device("cuda"))}',
        flush=True,
    )
    cases = [(name, True) for name in PRECISIONS] + [('fp32', False)]
    for name, deform in cases:
        for mode in ('forward', 'forward+backward'):
            result = run_case(
                'full-head', mode, batch, bf16=False, deform=deform, reps=reps, device='cuda', **PRECISIONS[name]
            )
            summary(
                f'full-head G {mode:<16s} batch {batch}, {name:<18s} {"with" if deform else "without"} '
                f'deformation: {result["best_s"] * 1e3:7.1f} ms best, {result["median_s"] * 1e3:7.1f} ms median, '
                f'peak {result["peak_gpu_mib"]:6.0f} MiB'
            )
    return 0


def time_training_step(
    batch: int, tf32: bool, backend: str, reps: int, cfg: str = 'full-head', device: str = 'cuda'
) -> dict:
    """One training iteration of preset `cfg` at `batch` images per GPU, timed phase by phase.

    The networks, loss and optimizers of the preset (fp16 layers as the preset sets them), one
    chunk of random reals and labels, the deformation search `backend`; TF32 on or off. Each
    phase (accumulate and optimizer step) is timed after one warm-up, best of `reps`, and weighted
    by how often it is due (the lazy R1 every r1_interval iterations, Greg every g_reg_interval).
    -> {'seconds': per iteration, 'images_per_s', 's_per_kimg', 'peak_gib' (CUDA only, else nan),
    'phases': {name: seconds}}
    """
    import torch

    from training.config import TrainingConfig
    from training.data.camera_utils import random_cameras
    from training.loss import LossConfig, PortraitGANLoss
    from training.presets import load_preset
    from training.schedules import schedule_values
    from training.training_loop import accumulate_phase, build_networks, build_phases, set_precision_flags

    device = torch.device(device)
    on_cuda = device.type == 'cuda'
    preset = load_preset(cfg)
    preset['generator']['deformation_backend'] = backend
    config = TrainingConfig.from_preset(
        preset, cfg, data='unused.zip', seg_data='unused-seg.zip', gpus=1, batch=batch, batch_gpu=batch
    )
    config.allow_tf32 = tf32
    set_precision_flags(config)
    torch.manual_seed(0)
    G, D = build_networks(config, device)
    phases, optimizers = build_phases(config, G, D)
    loss_config = LossConfig.from_training_config(config)
    loss = PortraitGANLoss(G, D, loss_config, device)
    schedule = schedule_values(loss_config, 1_000_000)  # past the fades: the steady state of a run
    size = G.img_resolution
    chunk = [
        x.to(device)
        for x in (
            torch.rand([batch, 3, size, size]) * 2 - 1,
            (torch.rand([batch, 1, size, size]) > 0.5).float(),
            random_cameras(batch),
            0.2 * torch.randn([batch, G.pose_dim]),
            torch.randn([batch, G.z_dim]),
            random_cameras(batch),
            0.2 * torch.randn([batch, G.pose_dim]),
        )
    ]
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    phase_seconds = {}
    for phase in phases:
        optimizer = optimizers[phase.optimizer_name]
        best = float('inf')
        for rep in range(reps + 1):
            if on_cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            accumulate_phase(loss, phase, [chunk], schedule)
            optimizer.step()
            if on_cuda:
                torch.cuda.synchronize(device)
            if rep > 0:
                best = min(best, time.perf_counter() - start)
        phase_seconds[phase.name] = best
    seconds = sum(phase_seconds[phase.name] / phase.interval for phase in phases)
    result = dict(
        seconds=seconds,
        images_per_s=batch / seconds,
        s_per_kimg=1000 * seconds / batch,
        peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else float('nan'),
        phases=phase_seconds,
    )
    del G, D, loss, optimizers
    if on_cuda:
        torch.cuda.empty_cache()
    return result


def throughput(batches: list[int], reps: int, backends: list[str]) -> int:
    """The per-GPU throughput table: full-head training iterations at each batch per GPU, fp32 and TF32, per search."""
    import torch

    from training.body.nearest_face import resolve_backend

    torch.backends.cudnn.benchmark = True
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}', flush=True)
    summary('| search | batch/GPU | precision | s/iteration | images/s | s/kimg | peak GiB | phases (s) |')
    status = 0
    for backend in backends:
        resolved = resolve_backend(backend, torch.device('cuda'))
        label = backend if resolved == backend else f'{backend} (fell back to {resolved})'
        for batch in batches:
            for tf32 in (False, True):
                precision = 'TF32' if tf32 else 'fp32'
                try:
                    r = time_training_step(batch, tf32, resolved, reps)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    summary(f'| {label} | {batch} | {precision} | out of memory | | | | |')
                    continue
                except Exception as error:  # One failed case is reported; the table goes on.
                    summary(f'| {label} | {batch} | {precision} | FAILED: {type(error).__name__}: {error} | | | | |')
                    status = 1
                    continue
                phases = ', '.join(f'{name} {seconds:.2f}' for name, seconds in r['phases'].items())
                summary(
                    f'| {label} | {batch} | {precision} | {r["seconds"]:.2f} | {r["images_per_s"]:.2f} | '
                    f'{r["s_per_kimg"]:.0f} | {r["peak_gib"]:.1f} | {phases} |'
                )
    return status


def training_summary(run_dir: str) -> int:
    """sec/kimg (ticks after the first) and peak GPU memory of a run, from its stats.jsonl."""
    path = os.path.join(run_dir, 'stats.jsonl')
    if not os.path.isfile(path):
        summary(f'FAILED: no {path}')
        return 1
    with open(path) as file:
        ticks = [json.loads(line) for line in file]
    timed = [tick['Timing/sec_per_kimg']['mean'] for tick in ticks[1:]]
    snapshots = sorted(name for name in os.listdir(run_dir) if name.startswith('network-snapshot-'))
    peak = max(tick.get('Resources/peak_gpu_mem_gb', {}).get('mean', float('nan')) for tick in ticks)
    if not timed:
        summary(f'FAILED: {len(ticks)} tick(s), none after the first to time')
        return 1
    summary(
        f'{len(ticks)} ticks, sec/kimg median {statistics.median(timed):.1f} (best {min(timed):.1f}, first tick '
        f'{ticks[0]["Timing/sec_per_kimg"]["mean"]:.1f}), peak GPU memory {peak:.2f} GiB, snapshots: '
        f'{", ".join(snapshots) or "none"}'
    )
    return 0 if snapshots else 1


def compare_renders(run_dir: str, devices: tuple = ('cuda', 'cpu')) -> int:
    """One latent of the snapshot in `run_dir`, posed, rendered without sample jitter and with TF32 off on
    the two `devices` (CUDA and the CPU): the two images agree to rounding."""
    import torch

    from training.cli import load_generator
    from training.data.camera_utils import frontal_camera

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    images = []
    for device in map(torch.device, devices):
        G = load_generator(run_dir, None, 0, device)
        z = torch.from_numpy(np.random.RandomState(0).randn(1, G.z_dim)).float().to(device)
        pose = torch.tensor([[0.0, 0.0, 0.0, 0.3, -0.4, 0.0]], device=device)
        with torch.no_grad():
            image = G(
                z,
                frontal_camera(1, device=device),
                pose_params=pose,
                apply_def=True,
                noise_mode='const',
                deterministic=True,
            )['image']
        images.append((image[0].cpu().double().clamp(-1, 1) + 1) * 127.5)
    difference = (images[0] - images[1]).abs()
    spread = images[1].std().item()
    agree = difference.mean().item() < 1.0 and spread > 1.0
    summary(
        f'{"ok" if agree else "FAILED"}: one latent of the snapshot rendered on {devices[0]} and on {devices[1]} '
        f'({images[1].shape[2]}x{images[1].shape[1]}, no jitter, no TF32): mean |{devices[0]} - {devices[1]}| '
        f'{difference.mean().item():.3f} of 255 (max {difference.max().item():.1f}), pixel std {spread:.1f}'
    )
    return 0 if agree else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    ops = commands.add_parser('build-ops', help='build the CUDA plugins of torch_utils/ops')
    ops.add_argument('modules', nargs='*', default=list(OPS))
    generator = commands.add_parser('generator', help='time the full-head generator on CUDA')
    generator.add_argument('--reps', type=int, default=5)
    generator.add_argument('--batch', type=int, default=4)
    table = commands.add_parser('throughput', help='full-head training iterations per batch size and precision')
    table.add_argument('--batches', type=int, nargs='+', default=[4, 8, 16])
    table.add_argument('--reps', type=int, default=2)
    table.add_argument('--backends', nargs='+', default=['lbvh', 'cuda'], help='nearest-face searches to compare')
    training = commands.add_parser('training-summary', help='sec/kimg and peak memory of a training run')
    training.add_argument('run_dir')
    renders = commands.add_parser('compare-renders', help='render one latent of a snapshot on CUDA and on the CPU')
    renders.add_argument('run_dir')
    args = parser.parse_args()
    if args.command == 'build-ops':
        return build_ops(args.modules)
    if args.command == 'generator':
        return time_generator(args.reps, args.batch)
    if args.command == 'throughput':
        return throughput(args.batches, args.reps, args.backends)
    if args.command == 'training-summary':
        return training_summary(args.run_dir)
    return compare_renders(args.run_dir)


if __name__ == '__main__':
    sys.exit(main())
