"""Host synchronizations and operator launches of each phase of a training iteration, counted on the CPU.

Run from the repository root:
    python -m benchmarks.host_syncs [--cfg full-head] [--batch 4] [--backend cuda] [--phases Gmain Dmain Dreg]

Builds the preset's networks at `--batch` images per pass with the deformation's nearest-face search
`--backend`, runs each phase once on random inputs under torch_utils.host_syncs.SyncCounter, and
prints per phase the aten operators that would launch a kernel on a GPU and the calls that would
synchronize it (by kind and place). The device-dependent paths are set to their CUDA form
(`--cpu-paths` keeps the CPU's): the deformation maps every point (no gather), and the ray marcher
takes its reference path instead of the fused CPU kernel. Counts, not times: the CPU runs the phases
at their full size, which for full-head takes minutes on two cores.
"""

import argparse
import inspect
import time

import torch

from torch_utils.host_syncs import SyncCounter


def count_phases(cfg: str, batch: int, backend: str, phase_names: list[str], cuda_paths: bool) -> dict:
    """-> {phase: SyncCounter} of one run of each phase (launches, syncs)."""
    from benchmarks.training_step import random_chunk
    from training.body.deformation import PosedMeshMap
    from training.config import TrainingConfig
    from training.loss import LossConfig, PortraitGANLoss
    from training.presets import load_preset
    from training.schedules import schedule_values
    from training.training_loop import build_networks, build_phases
    from training.volumetric_rendering import ray_marcher

    if cuda_paths:
        if 'gather' in inspect.signature(PosedMeshMap.apply).parameters:
            apply = PosedMeshMap.apply
            PosedMeshMap.apply = lambda self, points, faces, gather=False: apply(self, points, faces, gather)
        ray_marcher._march_plugin = lambda: None
    preset = load_preset(cfg)
    preset['generator']['deformation_backend'] = backend
    config = TrainingConfig.from_preset(
        preset, cfg, data='unused.zip', seg_data='unused-seg.zip', gpus=1, batch=batch, batch_gpu=batch
    )
    torch.manual_seed(0)
    G, D = build_networks(config, torch.device('cpu'))
    phases, _ = build_phases(config, G, D)
    loss_config = LossConfig.from_training_config(config)
    loss = PortraitGANLoss(G, D, loss_config, 'cpu')
    schedule = schedule_values(loss_config, 1_000_000)
    chunk = random_chunk(G, batch, torch.Generator().manual_seed(1))
    counters = {}
    for phase in phases:
        if phase.name not in phase_names:
            continue
        for param in phase.params:
            param.requires_grad_(True)
        start = time.perf_counter()
        with SyncCounter() as counter:
            loss.accumulate_gradients(phase.name, *chunk, gain=phase.interval, schedule=schedule)
        for param in phase.params:
            param.requires_grad_(False)
            param.grad = None
        counters[phase.name] = counter
        print(f'{phase.name}: {time.perf_counter() - start:.0f} s', flush=True)
    return counters


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg', default='full-head')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--backend', default='cuda', help="the deformation's nearest-face search")
    parser.add_argument('--phases', nargs='+', default=['Gmain', 'Greg', 'Dmain', 'Dreg'])
    parser.add_argument('--cpu-paths', action='store_true', help='keep the CPU forms of the device-dependent paths')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counters = count_phases(args.cfg, args.batch, args.backend, args.phases, not args.cpu_paths)
    print(f'{args.cfg}, batch {args.batch}, search {args.backend!r}, {"CPU" if args.cpu_paths else "CUDA"} paths')
    print('| phase | operator launches | host syncs |')
    print('|---|---:|---:|')
    for name, counter in counters.items():
        print(f'| {name} | {counter.launches:,} | {len(counter.syncs):,} |')
    for name, counter in counters.items():
        for (kind, where), count in counter.summary().items():
            print(f'  {name}: {count} x {kind} at {where}')
        top = sorted(counter.launches_by_op.items(), key=lambda item: -item[1])[:8]
        print(f'  {name} most launched: ' + ', '.join(f'{op} {count}' for op, count in top))


if __name__ == '__main__':
    main()
