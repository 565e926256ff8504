"""Timing of the whole tri-grid generator at the presets, with and without the body deformation.

For each preset and precision: forward (inference, no autograd) at batch 1 and 4, and forward +
backward at batch 1 (training mode, random noise, a loss on image, raw image and mask). Every
case runs in its own process so that its peak RSS is its own. Each case also counts its floating
point operations (torch.utils.flop_counter: convolutions and matrix products, forward and backward
apart) and reports the rate it reached. The closing lines compare forward+backward with forward
at batch 1 against the same ratio of FLOPs: the backward computes an input and a weight gradient
per convolution, each as many FLOPs as its forward, so at equal efficiency forward+backward takes
about 3x the forward, and the measured ratio above that is the backward's lower efficiency.

    python -m benchmarks.generator [--threads 2] [--reps 3] [--presets cpu-small,full-head]
"""

import argparse
import json
import resource
import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.timing import synchronize, time_calls


def benchmark_loss(out: dict) -> torch.Tensor:
    """A scalar on every output G trains through: image, raw image and mask."""
    return out['image'].square().mean() + out['image_raw'].square().mean() + out['image_mask'].mean()


def run_case(
    preset_name: str, mode: str, batch: int, bf16: bool, deform: bool, reps: int, device: str = 'cpu', **overrides
) -> dict:
    """Time one case in this process: best and median seconds, and the peak RSS in MiB (and, on
    CUDA, the allocator's peak in MiB). `overrides` replace generator arguments of the preset
    (for example num_fp16_res)."""
    from training.data.camera_utils import random_cameras
    from training.networks.triplane import build_generator
    from training.presets import load_preset

    device = torch.device(device)
    torch.manual_seed(0)
    G = build_generator(load_preset(preset_name), cpu_bf16=bf16, **overrides).to(device)
    training = mode == 'forward+backward'
    G.train(training).requires_grad_(training)
    z = torch.randn(batch, G.z_dim).to(device)
    c = random_cameras(batch, generator=torch.Generator().manual_seed(0)).to(device)
    pose = (0.2 * torch.randn(batch, G.pose_dim)).to(device) if deform else None

    def step():
        with torch.set_grad_enabled(training):
            out = G(z, c, pose, apply_def=deform, noise_mode='random' if training else 'const')
            if training:
                benchmark_loss(out).backward()

    step()  # warm-up: oneDNN primitive creation or cuDNN algorithm choice, allocator
    synchronize(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_calls(step, reps, warmup=0, device=device)
    result = dict(
        best_s=timing.best,
        median_s=timing.median,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    if device.type == 'cuda':
        result['peak_gpu_mib'] = torch.cuda.max_memory_allocated(device) / 2**20
    result['forward_gflop'], result['backward_gflop'] = count_gflop(G, z, c, pose, deform, training)
    return result


def count_gflop(G, z, c, pose, deform: bool, training: bool) -> tuple[float, float]:
    """FLOPs of one forward and (training) one backward of G, in GFLOP; the backward is 0 without training."""
    with torch.set_grad_enabled(training), FlopCounterMode(display=False) as forward_counter:
        out = G(z, c, pose, apply_def=deform, noise_mode='random' if training else 'const')
    if not training:
        return forward_counter.get_total_flops() / 1e9, 0.0
    loss = benchmark_loss(out)
    with FlopCounterMode(display=False) as backward_counter:
        loss.backward()
    return forward_counter.get_total_flops() / 1e9, backward_counter.get_total_flops() / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--reps', type=int, default=3)
    parser.add_argument('--presets', default='cpu-small,full-head')
    parser.add_argument('--case', help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case), reps=args.reps)))
        return
    cases = [
        dict(preset_name=preset, mode=mode, batch=batch, bf16=bf16, deform=deform)
        for preset in args.presets.split(',')
        for mode, batch in [('forward', 1), ('forward', 4), ('forward+backward', 1)]
        for bf16 in (False, True)
        for deform in (False, True)
    ]
    print(
        f'{"preset":<10} {"mode":<17} {"batch":>5} {"precision":<9} {"deform":<6} {"best s":>8} {"median s":>9} '
        f'{"s/image":>8} {"peak MiB":>9} {"GFLOP":>8} {"GFLOP/s":>8}',
        flush=True,
    )
    results = {}
    for case in cases:
        result = subprocess.run(
            [
                sys.executable,
                '-m',
                'benchmarks.generator',
                '--threads',
                str(args.threads),
                '--reps',
                str(args.reps),
                '--case',
                json.dumps(case),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(result.stdout.strip().splitlines()[-1])
        results[tuple(case.values())] = r
        gflop = r['forward_gflop'] + r['backward_gflop']
        print(
            f'{case["preset_name"]:<10} {case["mode"]:<17} {case["batch"]:>5} '
            f'{"bf16" if case["bf16"] else "fp32":<9} {"yes" if case["deform"] else "no":<6} '
            f'{r["best_s"]:>8.3f} {r["median_s"]:>9.3f} {r["best_s"] / case["batch"]:>8.3f} '
            f'{r["peak_rss_mib"]:>9.0f} {gflop:>8.1f} {gflop / r["best_s"]:>8.1f}',
            flush=True,
        )
    print('forward+backward / forward at batch 1, measured (best times) and in FLOPs:')
    for (preset, mode, batch, bf16, deform), r in results.items():
        forward = results.get((preset, 'forward', 1, bf16, deform))
        if mode == 'forward+backward' and forward is not None:
            print(
                f'  {preset:<10} {"bf16" if bf16 else "fp32"} deform {"yes" if deform else "no":<3}: '
                f'{r["best_s"] / forward["best_s"]:.2f} measured, '
                f'{(r["forward_gflop"] + r["backward_gflop"]) / r["forward_gflop"]:.2f} in FLOPs'
            )


if __name__ == '__main__':
    main()
