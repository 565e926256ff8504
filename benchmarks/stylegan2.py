"""CPU timing of the StyleGAN2 synthesis network at 256 px (batch 1).

Two outputs: the ordinary 3-channel image and the tri-grid backbone's 288 channels
(channel_base 32768, channel_max 512, skip architecture, all fp32 blocks). For each, the forward
pass (inference, no autograd) and forward + backward (training mode, random noise) are timed in
fp32 and with the optional bfloat16 convolutions (`cpu_bf16=True`, which pays off only on CPUs
with AMX). Every case runs in its own process so that its peak RSS is its own. Each timed
repetition first waits (up to --idle-timeout seconds) until the machine's CPUs are less than 10 %
busy, since other processes on a 2-core machine can halve the speed; the `idle` column counts the
repetitions that started on an idle machine.

    python -m benchmarks.stylegan2 [--threads 2] [--reps 3] [--warmup 4] [--batch 1]
"""

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

from benchmarks.timing import time_calls
from training.networks.stylegan2 import SynthesisNetwork

CASES = [
    (channels, mode, precision)
    for channels in (3, 288)
    for precision in ('fp32', 'bf16')
    for mode in ('forward', 'forward+backward')
]


def run_case(
    img_channels: int,
    mode: str,
    precision: str,
    batch: int,
    reps: int,
    warmup: int,
    fused_modconv,
    idle_timeout_s: float,
) -> dict:
    """Time one case in this process. Returns best and median milliseconds, idle starts and peak RSS in MiB."""
    torch.manual_seed(0)
    net = SynthesisNetwork(
        w_dim=512,
        img_resolution=256,
        img_channels=img_channels,
        channel_base=32768,
        channel_max=512,
        num_fp16_res=0,
        fused_modconv_default='inference_only',
        cpu_bf16=(precision == 'bf16'),
    )
    ws = torch.randn(batch, net.num_ws, 512)
    training = mode == 'forward+backward'
    net.train(training)
    for p in net.parameters():
        p.requires_grad_(training)

    def step():
        if training:
            img = net(ws, noise_mode='random', fused_modconv=fused_modconv)
            img.square().mean().backward()
            net.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                net(ws, noise_mode='const', fused_modconv=fused_modconv)

    # The first few calls are several times slower (oneDNN kernel generation and weight reorders,
    # the allocator growing its heap), so warm up before timing.
    timing = time_calls(step, reps, warmup=warmup, idle_timeout_s=idle_timeout_s)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB.
    return dict(
        best_ms=timing.best * 1000,
        median_ms=timing.median * 1000,
        idle_starts=timing.idle_starts,
        peak_rss_mib=peak_mib,
    )


def cpu_has_amx() -> bool:
    try:
        with open('/proc/cpuinfo') as f:
            return 'amx_bf16' in f.read()
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
    parser.add_argument('--reps', type=int, default=3, help='timed repetitions per case')
    parser.add_argument('--warmup', type=int, default=4, help='untimed calls before the timed ones')
    parser.add_argument('--batch', type=int, default=1, help='batch size')
    parser.add_argument('--idle-timeout', type=float, default=60, help='seconds to wait for an idle machine per rep')
    parser.add_argument(
        '--fused',
        choices=['default', 'true', 'false'],
        default='default',
        help="fused_modconv for every block; 'default' = the network's 'inference_only'",
    )
    parser.add_argument('--case', help=argparse.SUPPRESS)  # Internal: run one case, print JSON.
    args = parser.parse_args()
    fused = {'default': None, 'true': True, 'false': False}[args.fused]
    torch.set_num_threads(args.threads)

    if args.case is not None:
        channels, mode, precision = args.case.split(',')
        print(
            json.dumps(
                run_case(int(channels), mode, precision, args.batch, args.reps, args.warmup, fused, args.idle_timeout)
            )
        )
        return

    print(
        f'torch {torch.__version__}, {args.threads} threads, batch {args.batch}, 256 px, '
        f'AMX {"yes" if cpu_has_amx() else "no"}, load average {os.getloadavg()[0]:.2f}'
    )
    print(
        f'{"channels":>8} {"mode":>17} {"precision":>9} {"best ms":>9} {"median ms":>10} {"idle":>5} '
        f'{"peak RSS MiB":>13}'
    )
    for channels, mode, precision in CASES:
        cmd = [
            sys.executable,
            '-m',
            'benchmarks.stylegan2',
            '--threads',
            str(args.threads),
            '--reps',
            str(args.reps),
            '--warmup',
            str(args.warmup),
            '--batch',
            str(args.batch),
            '--fused',
            args.fused,
            '--idle-timeout',
            str(args.idle_timeout),
            '--case',
            f'{channels},{mode},{precision}',
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f'{channels:>8} {mode:>17} {precision:>9} {r["best_ms"]:>9.0f} {r["median_ms"]:>10.0f} '
            f'{r["idle_starts"]:>2d}/{args.reps:<2d} {r["peak_rss_mib"]:>13.0f}',
            flush=True,
        )


if __name__ == '__main__':
    main()
