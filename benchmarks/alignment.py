"""Raw-photo alignment (dataset_tool.py align) against the synthetic painter's exact answers, per 45-degree yaw bin.

Run from the repository root:  python -m benchmarks.alignment [--num 160] [--network pretrained/cpu-fast-64.pt
[--network-num 40]]

Photos: held-out raw photos (training/data/raw_photos.py, scenes BENCHMARK_START and up; the aligner's constants
were fitted on scenes 0-479 of the same held-out range), yaws spread evenly over the full circle. Per bin of the
true camera yaw, and over the front (|yaw| <= 90) and back halves: median and 90th percentile of the yaw and
pitch errors (degrees), of the crop centre's error (% of the true side, the larger of x and y) and of the side's
error (% of the true side); the median mask IoU (in the photo frame, against the painter's mask); the share of
photos with a usable result (aligned, yaw within 30 degrees, centre within 10 %, side within 15 %); and seconds
per photo. With --network, the generator's camera
search (training/engines/camera_search.py) refines every camera and the table gives both.
"""

import argparse
import time

import numpy as np
import torch

from training.engines.camera_search import DEFAULT_STEPS

BENCHMARK_START = 1000
BIN_DEGREES = 45
USABLE = dict(yaw=30.0, centre=10.0, side=15.0)


def measure(photo, alignment) -> dict:
    """Errors of one alignment against its raw photo's truth."""
    from training.data.photo_alignment import angles_of_camera, wrap_degrees

    true_yaw, true_pitch = angles_of_camera(photo.camera)
    yaw, pitch = angles_of_camera(alignment.camera)
    x0, y0, x1, y1 = alignment.crop_box
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    predicted, truth = alignment.person_probability > 0.5, photo.mask > 0
    errors = dict(
        true_yaw=true_yaw,
        yaw=abs(float(wrap_degrees(yaw - true_yaw))),
        pitch=abs(pitch - true_pitch),
        centre=100 * float(np.abs(centre - photo.crop_centre).max()) / photo.crop_side,
        side=100 * abs((x1 - x0) / photo.crop_side - 1),
        iou=float((predicted & truth).sum() / max((predicted | truth).sum(), 1)),
    )
    errors['usable'] = all(errors[key] <= limit for key, limit in USABLE.items())
    return errors


def table(rows: list, title: str) -> str:
    """Rows of measure() -> the per-bin table as text."""
    lines = [
        title,
        f'{"true yaw":>12} {"n":>3} {"yaw med/p90":>12} {"pitch med/p90":>14} {"centre% med/p90":>16} '
        f'{"side% med/p90":>14} {"IoU med":>8} {"usable":>7} {"s/photo":>8}',
    ]
    bins = [(low, low + BIN_DEGREES) for low in range(-180, 180, BIN_DEGREES)] + [(-90, 90), 'back', (-180, 180)]
    for band in bins:
        if band == (-90, 90):
            chosen = [r for r in rows if abs(r['true_yaw']) <= 90]
        elif band == 'back':
            chosen = [r for r in rows if abs(r['true_yaw']) > 90]
        else:
            low, high = band
            chosen = [r for r in rows if low <= r['true_yaw'] < high or (high == 180 and r['true_yaw'] == 180)]
        label = {(-90, 90): '|yaw|<=90', 'back': '|yaw|>90', (-180, 180): 'all'}.get(band, f'[{band[0]},{band[1]})')
        if not chosen:
            lines.append(f'{label:>12} {0:>3}')
            continue
        aligned = [r for r in chosen if 'yaw' in r]

        def stat(key, fmt='.1f'):
            values = np.array([r[key] for r in aligned])
            if not len(values):
                return '-'
            return f'{np.median(values):{fmt}}/{np.percentile(values, 90):{fmt}}'

        iou = f'{np.median([r["iou"] for r in aligned]):.3f}' if aligned else '-'
        usable = np.mean([r.get('usable', False) for r in chosen])
        seconds = np.mean([r['seconds'] for r in chosen])
        lines.append(
            f'{label:>12} {len(chosen):>3} {stat("yaw"):>12} {stat("pitch"):>14} {stat("centre"):>16} '
            f'{stat("side"):>14} {iou:>8} {100 * usable:>6.0f}% {seconds:>8.2f}'
        )
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--num', type=int, default=160, help='raw photos, yaws evenly over 360 degrees')
    parser.add_argument('--network', default=None, help='generator snapshot for the camera search (also measured)')
    parser.add_argument('--network-num', type=int, default=None, help='photos refined by --network [default: --num]')
    parser.add_argument('--refine-steps', type=int, default=DEFAULT_STEPS, help='latent steps per candidate camera')
    parser.add_argument('--resolution', type=int, default=128, help='side of the aligned crops')
    args = parser.parse_args()
    torch.set_num_threads(2)

    from training.data.landmark_models import PersonDetectors
    from training.data.photo_alignment import AlignmentError, align_photo, angles_of_camera
    from training.data.raw_photos import raw_photo
    from training.data.synthetic import PortraitPainter

    painter, detectors = PortraitPainter(), PersonDetectors()
    search = None
    if args.network is not None:
        from training.cli import load_generator
        from training.engines.camera_search import CameraSearch

        search = CameraSearch(load_generator(args.network, None, 0, torch.device('cpu'), False), args.refine_steps)
    plain, refined = [], []
    network_num = args.num if args.network_num is None else args.network_num
    stride = max(1, args.num // max(network_num, 1))
    for index in range(args.num):
        yaw = -180 + 360 * (index + 0.5) / args.num
        photo = raw_photo(painter, BENCHMARK_START + index, yaw_degrees=yaw)
        start = time.perf_counter()
        try:
            alignment = align_photo(photo.image, detectors, args.resolution)[0]
        except AlignmentError:
            alignment = None
        seconds = time.perf_counter() - start
        true_yaw = angles_of_camera(photo.camera)[0]
        row = dict(true_yaw=true_yaw, seconds=seconds) | ({} if alignment is None else measure(photo, alignment))
        plain.append(row)
        if search is not None and alignment is not None and index % stride == 0 and len(refined) < network_num:
            start = time.perf_counter()
            better = search(alignment)
            refined.append(measure(photo, better) | dict(seconds=time.perf_counter() - start))
            print(
                f'{index}: true yaw {true_yaw:.0f}, detectors {alignment.yaw:.0f}, refined {better.yaw:.0f}', flush=True
            )
    print(table(plain, f'Detectors only: {args.num} raw photos, crops at {args.resolution} px, 2 torch threads'))
    if search is not None:
        print()
        print(
            table(
                refined,
                f'With --network {args.network} ({args.refine_steps} latent steps per candidate): {len(refined)} '
                f'photos (seconds: the search alone)',
            )
        )
        subset = [plain[i] for i in range(0, args.num, stride)][: len(refined)]
        print()
        print(table(subset, 'The same photos, detectors only'))


if __name__ == '__main__':
    main()
