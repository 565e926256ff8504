"""Training speed of a preset on this machine: seconds per thousand images and peak memory.

Runs `train.py` for a short while once per process count (one process, then several CPU
processes with gloo via --gpus), and reads the per-tick timings from the run's stats.jsonl.
The first tick is left out (it includes start-up: building the networks, the first image
snapshot, allocator warm-up); sec/kimg excludes snapshot time, as in the progress lines.
Peak memory is the largest resident set, summed over the launcher, the training processes and
their data loader workers, sampled every 0.2 s.

    python -m benchmarks.training [--cfg cpu-small] [--procs 1,2] [--kimg 0.128] [--tick 0.032]
        [--train-options "--cpu_bf16 true"]
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from training.checkpoints.atomic_files import read_lines_of_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (0 for those that just ended)."""
    total = 0
    for member in [process] + process.children(recursive=True):
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_case(procs: int, args: argparse.Namespace, outdir: str) -> dict:
    """Train `args.kimg` kimg with `procs` processes -> sec/kimg per tick (first left out) and peak memory."""
    command = [
        sys.executable,
        os.path.join(REPO, 'train.py'),
        '--cfg',
        args.cfg,
        '--gpus',
        str(procs),
        '--device',
        'cpu',
        '--kimg',
        str(args.kimg),
        '--tick',
        str(args.tick),
        '--snap',
        '0',
        '--image-snap',
        '0',
        '--workers',
        str(args.workers),
        '--outdir',
        outdir,
        '--metrics',
        'none',
    ]
    if args.batch:
        command += ['--batch', str(args.batch)]
    command += shlex.split(args.train_options)
    log_path = os.path.join(outdir, f'procs{procs}.log')
    with open(log_path, 'w') as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        watched = psutil.Process(process.pid)
        peak = 0
        start = time.time()
        while process.poll() is None:
            peak = max(peak, tree_rss(watched))
            time.sleep(0.2)
    if process.returncode != 0:
        with open(log_path) as f:
            raise RuntimeError(f'train.py with {procs} process(es) failed:\n{f.read()[-3000:]}')
    run_dirs = sorted(entry for entry in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, entry)))
    ticks = read_lines_of_json(os.path.join(outdir, run_dirs[-1], 'stats.jsonl'))
    timings = [tick['Timing/sec_per_kimg']['mean'] for tick in ticks[1:]]
    if not timings:
        raise RuntimeError(f'only {len(ticks)} tick(s): raise --kimg or lower --tick')
    return dict(
        procs=procs,
        ticks=len(timings),
        sec_per_kimg=statistics.median(timings),
        best_sec_per_kimg=min(timings),
        peak_rss_mib=peak / 2**20,
        rank0_peak_rss_mib=ticks[-1]['Resources/peak_cpu_mem_gb']['mean'] * 1024,
        wall_s=time.time() - start,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg', default='cpu-small', help='preset')
    parser.add_argument('--procs', default='1,2', help='comma list of process counts')
    parser.add_argument('--kimg', type=float, default=0.128, help='length of each run (kimg)')
    parser.add_argument('--tick', type=float, default=0.032, help='kimg per tick (one timing sample)')
    parser.add_argument('--batch', type=int, help="total batch (default: the preset's)")
    parser.add_argument('--workers', type=int, default=1, help='data loader workers per process')
    parser.add_argument('--outdir', help='keep the runs here (default: a temporary directory)')
    parser.add_argument('--train-options', default='', help='more train.py options, e.g. "--cpu_bf16 true"')
    args = parser.parse_args()

    # The synthetic set is built once, outside the timed runs.
    sys.path.insert(0, REPO)
    from training.data.synthetic import ensure_synthetic_dataset
    from training.presets import load_preset

    ensure_synthetic_dataset(
        root=os.path.join(REPO, 'datasets'), resolution=load_preset(args.cfg)['generator']['img_resolution']
    )

    with tempfile.TemporaryDirectory() as temp_dir:
        rows = []
        for procs in [int(p) for p in args.procs.split(',')]:
            outdir = os.path.join(args.outdir or temp_dir, f'procs{procs}')
            os.makedirs(outdir, exist_ok=True)
            rows.append(run_case(procs, args, outdir))
            print(json.dumps(rows[-1]), flush=True)
    options = f', {args.train_options}' if args.train_options else ''
    print(f'\n{args.cfg}{options}, {os.cpu_count()} CPU cores, {args.kimg:g} kimg per run, ticks of {args.tick:g} kimg')
    print(
        '| processes | ticks timed | sec/kimg (median) | sec/kimg (best) | peak RSS, all processes (MiB) | rank 0 peak RSS (MiB) |'
    )
    print('|---:|---:|---:|---:|---:|---:|')
    for row in rows:
        print(
            f'| {row["procs"]} | {row["ticks"]} | {row["sec_per_kimg"]:.0f} | {row["best_sec_per_kimg"]:.0f} | '
            f'{row["peak_rss_mib"]:.0f} | {row["rank0_peak_rss_mib"]:.0f} |'
        )


if __name__ == '__main__':
    main()
