"""Timing of the whole tri-grid generator at the presets, with and without the body deformation.

For each preset and precision: forward (inference, no autograd) at batch 1 and 4, and forward +
backward at batch 1 (training mode, random noise, a loss on image, raw image and mask). Every
case runs in its own process so that its peak RSS is its own.

    python -m benchmarks.generator [--threads 2] [--reps 3] [--presets cpu-small,full-head]
"""

import argparse
import json
import resource
import subprocess
import sys

import torch

from benchmarks.timing import synchronize, time_calls


def run_case(
    preset_name: str, mode: str, batch: int, bf16: bool, deform: bool, reps: int, device: str = 'cpu', **overrides
) -> dict:
    """Time one case in this process: best and median seconds, and the peak RSS in MiB (and, on
    CUDA, the allocator's peak in MiB). `overrides` replace generator arguments of the preset
    (for example num_fp16_res)."""
    from training.camera_utils import random_cameras
    from training.presets import load_preset
    from training.triplane import build_generator

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
                (out['image'].square().mean() + out['image_raw'].square().mean() + out['image_mask'].mean()).backward()

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
    return result


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
        f'{"s/image":>8} {"peak MiB":>9}',
        flush=True,
    )
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
        print(
            f'{case["preset_name"]:<10} {case["mode"]:<17} {case["batch"]:>5} '
            f'{"bf16" if case["bf16"] else "fp32":<9} {"yes" if case["deform"] else "no":<6} '
            f'{r["best_s"]:>8.3f} {r["median_s"]:>9.3f} {r["best_s"] / case["batch"]:>8.3f} '
            f'{r["peak_rss_mib"]:>9.0f}',
            flush=True,
        )


if __name__ == '__main__':
    main()
