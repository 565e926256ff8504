"""Frame times of the interactive viewer (training/engines/viewer.py) on CPU, per preset, freshly initialized.

Run from the repository root:  python -m benchmarks.visualizer [--presets cpu-small,full-head] [--reps 3]
Four kinds of frame, each the best of `--reps` after one untimed frame, in milliseconds:
- full, new latent: the first frame of a latent (mapping, tri-grid, background, ray march, super-resolution);
- full, same latent: the camera or pose moved, the tri-grid comes from the cache;
- draft, same latent: while a camera or pose slider is dragged (raw image, fewer rays and samples);
- draft, new latent: while a latent slider (blend, psi) is dragged, so the tri-grid is computed every frame.
Full frames use the generator's rays per side and samples per ray; drafts the viewer's defaults
(ViewState.draft_resolution rays per side, ViewState.draft_sample_mult of the samples).
"""

import argparse
import dataclasses
import functools
import os

import torch

from benchmarks.timing import time_calls
from training.cli import load_generator
from training.engines.viewer import Viewer, ViewState


def frame_ms(render, states, reps: int, idle_timeout_s: float) -> float:
    """Best wall time in ms of render(state), each call taking the next of `states` (one untimed warm-up)."""
    upcoming = iter(states)
    return time_calls(lambda: render(next(upcoming)), reps, idle_timeout_s=idle_timeout_s).best * 1000


def time_preset(preset: str, reps: int, idle_timeout_s: float) -> dict:
    G = load_generator(None, preset, 0, torch.device('cpu'))
    viewer = Viewer(G, cache_size=2 * reps + 4)
    base = ViewState(pose=(0.0, 0.2, 0.0, 0.1, -0.3, 0.0))
    viewer.render(base)  # the tri-grid of the base latent, which the "same latent" frames reuse
    moved = [dataclasses.replace(base, yaw=10.0 * (index + 1)) for index in range(reps + 1)]
    new_latents = [dataclasses.replace(base, seed=100 + index) for index in range(reps + 1)]
    drafted_latents = [dataclasses.replace(base, seed=200 + index) for index in range(reps + 1)]
    draft = functools.partial(viewer.render, draft=True)
    return {
        'full, new latent': frame_ms(viewer.render, new_latents, reps, idle_timeout_s),
        'full, same latent': frame_ms(viewer.render, moved, reps, idle_timeout_s),
        'draft, same latent': frame_ms(draft, moved, reps, idle_timeout_s),
        'draft, new latent': frame_ms(draft, drafted_latents, reps, idle_timeout_s),
        'resolution': (
            G.img_resolution,
            G.neural_rendering_resolution,
            min(base.draft_resolution, G.neural_rendering_resolution),
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--presets', default='cpu-small,full-head', help='comma-separated preset names')
    parser.add_argument('--reps', type=int, default=3, help='timed repetitions; the best is reported')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument(
        '--idle-timeout',
        type=float,
        default=0.0,
        help='seconds each timed frame may wait for an idle CPU (0: do not wait)',
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.reps}, '
        f'load average {os.getloadavg()[0]:.2f} (other processes slow every figure down)'
    )
    print(
        '| preset | output / rays / draft rays | full, new latent | full, same latent | draft, same latent | '
        'draft, new latent |'
    )
    print('|---|---|---|---|---|---|')
    for preset in args.presets.split(','):
        result = time_preset(preset, args.reps, args.idle_timeout)
        output, rays, draft_rays = result.pop('resolution')
        figures = ' | '.join(f'{milliseconds:,.0f} ms' for milliseconds in result.values())
        print(f'| `{preset}` | {output} px / {rays}² / {draft_rays}² | {figures} |', flush=True)
    print(f'load average at the end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
