"""Time to load a network snapshot: the safe reader (default) against trusted unpickling and the weights file.

    python -m benchmarks.checkpoint_load [--cfg full-head] [--reps 3]

Writes a snapshot of freshly initialized networks of the preset (G, D, G_ema, D_ema, as
training does) in both formats to a temporary folder, then loads each file `--reps` times in
this process and reports the best time of each path.
"""

import argparse
import copy
import os
import tempfile

import torch

from benchmarks.timing import time_calls
from training.checkpoints import formats
from training.presets import load_preset
from training.training_loop import build_networks, save_network_files


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg', default='full-head')
    parser.add_argument('--reps', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from training.config import TrainingConfig

    config = TrainingConfig.from_preset(
        load_preset(args.cfg), args.cfg, data='unused.zip', seg_data='unused-seg.zip', gpus=1
    )
    torch.manual_seed(0)
    G, D = build_networks(config, torch.device('cpu'))
    networks = dict(G=G, D=D, G_ema=copy.deepcopy(G).eval(), D_ema=copy.deepcopy(D).eval())
    with tempfile.TemporaryDirectory() as folder:
        schedule = dict(rendering_resolution=G.neural_rendering_resolution, blur_sigma=0.0)
        paths = save_network_files(folder, 0, networks, dict(path='unused.zip'), schedule)
        size = os.path.getsize(paths['pkl']) / 2**20
        rows = {
            'network pickle, safe reader (default)': time_calls(
                lambda: formats.load_any(paths['pkl']), args.reps, warmup=0
            ).best,
            'network pickle, --trust-pickle': time_calls(
                lambda: formats.load_any(paths['pkl'], trust_pickle=True), args.reps, warmup=0
            ).best,
            'weights file': time_calls(lambda: formats.load_any(paths['pt']), args.reps, warmup=0).best,
        }
    print(
        f'{args.cfg}: G {sum(p.numel() for p in G.parameters()) / 1e6:.2f} M and D '
        f'{sum(p.numel() for p in D.parameters()) / 1e6:.2f} M parameters, each twice; pickle {size:.0f} MiB; '
        f'{torch.get_num_threads()} threads, best of {args.reps}'
    )
    trusted = rows['network pickle, --trust-pickle']
    for name, seconds in rows.items():
        print(f'{name:<40s} {seconds:7.2f} s  ({seconds / trusted:.2f}x the trusted unpickling)')


if __name__ == '__main__':
    main()
