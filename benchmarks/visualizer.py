"""Frame times of the interactive viewer (training/engines/viewer.py) on CPU, per preset or checkpoint.

Run from the repository root:
    python -m benchmarks.visualizer [--presets cpu-small,full-head] [--networks pretrained/cpu-fast-64.pt] [--reps 3]
Presets are freshly initialized (random weights); --networks adds checkpoints. Six kinds of frame (--frames
picks some of full-new, full-same, draft-same, draft-new, drag, still), each the best of `--reps` after one
untimed frame, in milliseconds:
- full, new latent: the first frame of a latent (mapping, tri-grid, background, ray march, super-resolution);
- full, same latent: the camera or pose moved, the tri-grid comes from the cache;
- draft, same latent: while a camera or pose slider is dragged (raw image, fewer rays and samples);
- draft, new latent: while a latent slider (blend, psi) is dragged, so the tri-grid is computed every frame;
- drag latency: the viewport's camera is dragged, from its position and orientation to the picture the
  viewport receives: the camera label, a draft render, the picture shaped to a 1400 x 757 viewport and encoded
  as PNG (as viser sends it);
- still camera: the same once the camera stops, with a full render (the page waits 0.3 s before it starts).
Full frames use the generator's rays per side and samples per ray; drafts the viewer's defaults
(ViewState.draft_resolution rays per side, ViewState.draft_sample_mult of the samples).
"""

import argparse
import dataclasses
import functools
import math
import os

import imageio.v3 as iio
import torch
from scipy.spatial.transform import Rotation

from benchmarks.timing import time_calls
from training.cli import load_generator
from training.engines.viewer import DEFAULT_FOV, Viewer, ViewState, camera, fit_to_viewport, viewport_camera_label

VIEWPORT_ASPECT = 1400 / 757  # the viewport of a 1400 x 900 browser window


def dragged_viewport(yaw: float) -> tuple:
    """The viewport camera on the orbit at `yaw` degrees, 10 degrees below level, as the browser reports it:
    -> (position [3], wxyz [4])."""
    cam2world = camera(yaw, 10.0)[0, :16].reshape(4, 4).double().numpy()
    x, y, z, w = Rotation.from_matrix(cam2world[:3, :3]).as_quat()
    return cam2world[:3, 3], (w, x, y, z)


def viewport_frame(viewer: Viewer, base: ViewState, draft: bool, viewport: tuple) -> bytes:
    """What the page does for a viewport camera (position [3], wxyz [4]): its render, shaped to the viewport and
    encoded as PNG -> the bytes sent to the browser."""
    position, wxyz = viewport
    label = viewport_camera_label(position, wxyz, math.radians(DEFAULT_FOV))
    state = dataclasses.replace(base, viewport=tuple(label[0].tolist()))
    picture = viewer.render(state, draft=draft)['display']
    return iio.imwrite('<bytes>', fit_to_viewport(picture, VIEWPORT_ASPECT), extension='.png')


def frame_ms(render, states, reps: int, idle_timeout_s: float) -> float:
    """Best wall time in ms of render(state), each call taking the next of `states` (one untimed warm-up)."""
    upcoming = iter(states)
    return time_calls(lambda: render(next(upcoming)), reps, idle_timeout_s=idle_timeout_s).best * 1000


FRAMES = {  # --frames name: column title
    'full-new': 'full, new latent',
    'full-same': 'full, same latent',
    'draft-same': 'draft, same latent',
    'draft-new': 'draft, new latent',
    'drag': 'drag latency',
    'still': 'still camera',
}


def time_generator(source: str, frames: list, reps: int, idle_timeout_s: float) -> tuple:
    """source: a preset name (freshly initialized, weight seed 0) or a checkpoint path; frames: names of FRAMES
    -> ({frame: best time in ms}, (output, rays, draft rays) per side)."""
    if os.path.exists(source):
        G = load_generator(source, None, 0, torch.device('cpu'))
    else:
        G = load_generator(None, source, 0, torch.device('cpu'))
    viewer = Viewer(G, cache_size=2 * reps + 4)
    base = ViewState(pose=(0.0, 0.2, 0.0, 0.1, -0.3, 0.0))
    viewer.render(base)  # the tri-grid of the base latent, which the "same latent" frames reuse
    moved = [dataclasses.replace(base, yaw=10.0 * (index + 1)) for index in range(reps + 1)]
    new_latents = [dataclasses.replace(base, seed=100 + index) for index in range(reps + 1)]
    drafted_latents = [dataclasses.replace(base, seed=200 + index) for index in range(reps + 1)]
    draft = functools.partial(viewer.render, draft=True)
    drag = [dragged_viewport(-30.0 + 3.0 * index) for index in range(reps + 1)]
    still = [dragged_viewport(60.0 + 3.0 * index) for index in range(reps + 1)]
    calls = {
        'full-new': (viewer.render, new_latents),
        'full-same': (viewer.render, moved),
        'draft-same': (draft, moved),
        'draft-new': (draft, drafted_latents),
        'drag': (functools.partial(viewport_frame, viewer, base, True), drag),
        'still': (functools.partial(viewport_frame, viewer, base, False), still),
    }
    times = {frame: frame_ms(*calls[frame], reps, idle_timeout_s) for frame in frames}
    return times, (
        G.img_resolution,
        G.neural_rendering_resolution,
        min(base.draft_resolution, G.neural_rendering_resolution),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--presets', default='cpu-small,full-head', help='comma-separated preset names')
    parser.add_argument('--networks', default='', help='comma-separated checkpoints, timed after the presets')
    parser.add_argument('--reps', type=int, default=3, help='timed repetitions; the best is reported')
    parser.add_argument(
        '--frames', default=','.join(FRAMES), help=f'comma-separated kinds of frame to time, of {", ".join(FRAMES)}'
    )
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument(
        '--idle-timeout',
        type=float,
        default=0.0,
        help='seconds each timed frame may wait for an idle CPU (0: do not wait)',
    )
    args = parser.parse_args()
    frames = args.frames.split(',')
    unknown = sorted(set(frames) - set(FRAMES))
    if unknown:
        parser.error(f'--frames: unknown {", ".join(unknown)}; choose from {", ".join(FRAMES)}')
    torch.set_num_threads(args.threads)
    print(
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.reps}, '
        f'load average {os.getloadavg()[0]:.2f} (other processes slow every figure down)'
    )
    print('| generator | output / rays / draft rays | ' + ' | '.join(FRAMES[frame] for frame in frames) + ' |')
    print('|---|---|' + '---|' * len(frames))
    sources = [source for source in args.presets.split(',') + args.networks.split(',') if source]
    for source in sources:
        times, (output, rays, draft_rays) = time_generator(source, frames, args.reps, args.idle_timeout)
        figures = ' | '.join(f'{milliseconds:,.0f} ms' for milliseconds in times.values())
        print(f'| `{source}` | {output} px / {rays}² / {draft_rays}² | {figures} |', flush=True)
    print(f'load average at the end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
