"""Plot a training run: its losses per tick, and its metrics per snapshot, against kimg.

    python tools/plot_training.py RUN_DIR [RUN_DIR ...] [--out LAST_RUN_DIR/training.png]

Several run directories are one run and its continuations (--resume), plotted as one. Reads
each RUN_DIR/stats.jsonl (one line per tick) and every RUN_DIR/metric-*.jsonl (one line per
snapshot; the snapshot's kimg is read from its file name). The top panel holds the adversarial
and regularization losses, the middle one D's pose regression and the pose agreement of G and
D, the bottom one the metrics: FID/KID on the left axis and pose errors (degrees) on the right,
each beside its constant-mean-pose yardstick (dashed). With --table it also prints the metrics
of every snapshot as a Markdown table (medians left out) and the run's median seconds per kimg.
"""

import argparse
import glob
import os
import re
import sys

import matplotlib

matplotlib.use('Agg')  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.checkpoints.atomic_files import read_lines_of_json  # noqa: E402

LOSSES = ('Loss/G/loss', 'Loss/D/loss', 'Loss/r1_penalty', 'Loss/r1_seg_penalty')
POSES = ('Loss/D/pose', 'Pose/G_vs_D_fake', 'Pose/D_real_error', 'Pose/G_vs_coarse', 'Pose/D_labelled_fake_error')
SNAPSHOT_KIMG = re.compile(r'network-snapshot-(\d+)\.')


def tick_series(ticks: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(kimg, mean) of one statistic over the ticks that report it."""
    points = [(tick['Progress/kimg']['mean'], tick[key]['mean']) for tick in ticks if key in tick]
    return [kimg for kimg, _ in points], [value for _, value in points]


def metric_series(path: str) -> dict[str, tuple[list[float], list[float]]]:
    """{result name: (kimg, value)} of one metric-*.jsonl."""
    series = {}
    for line in read_lines_of_json(path):
        match = SNAPSHOT_KIMG.search(line.get('snapshot_pkl') or '')
        if match is None:
            continue
        for name, value in line['results'].items():
            kimgs, values = series.setdefault(name, ([], []))
            kimgs.append(int(match.group(1)))
            values.append(value)
    return series


def run_metric_series(run_dirs: list[str]) -> dict[str, tuple[list[float], list[float]]]:
    """{result name: (kimg, value)} of a run and its continuations, from every metric-*.jsonl.

    A snapshot of a continuation at or before the kimg where the runs before it ended (the
    starting snapshot of a stage started with --resume_kimg) is left out, so that each kimg has
    one value: the run's, before the stage changed anything.
    """
    series, end = {}, -1
    for run_dir in run_dirs:
        end_before = end
        for path in sorted(glob.glob(os.path.join(run_dir, 'metric-*.jsonl'))):
            for name, (kimgs, values) in metric_series(path).items():
                kept = [(kimg, value) for kimg, value in zip(kimgs, values) if kimg > end_before]
                series.setdefault(name, ([], []))[0].extend(kimg for kimg, _ in kept)
                series[name][1].extend(value for _, value in kept)
                end = max([end] + [kimg for kimg, _ in kept])
    return series


def metrics_table(run_dirs: list[str]) -> str:
    """A Markdown table of the run's metric results per snapshot kimg (no medians), and its median s/kimg."""
    by_kimg, names = {}, []
    for name, (kimgs, values) in run_metric_series(run_dirs).items():
        if 'median' in name:
            continue
        names.append(name)
        for kimg, value in zip(kimgs, values):
            by_kimg.setdefault(kimg, {})[name] = value
    lines = ['| kimg | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
    for kimg in sorted(by_kimg):
        cells = [f'{by_kimg[kimg][name]:.4g}' if name in by_kimg[kimg] else '' for name in names]
        lines.append(f'| {kimg} | ' + ' | '.join(cells) + ' |')
    seconds = sorted(
        tick['Timing/sec_per_kimg']['mean']
        for run_dir in run_dirs
        for tick in read_lines_of_json(os.path.join(run_dir, 'stats.jsonl'))
        if 'Timing/sec_per_kimg' in tick
    )
    if seconds:
        lines.append(f'\nseconds per kimg: median {seconds[len(seconds) // 2]:.0f} over {len(seconds)} ticks')
    return '\n'.join(lines)


def plot_run(run_dirs: str | list[str], out: str) -> str:
    """Draw the run (one directory, or a run and its continuations) into the PNG `out`. -> out"""
    run_dirs = [run_dirs] if isinstance(run_dirs, str) else list(run_dirs)
    ticks = []
    for run_dir in run_dirs:
        stats_path = os.path.join(run_dir, 'stats.jsonl')
        if not os.path.isfile(stats_path):
            raise FileNotFoundError(f'{run_dir}: no stats.jsonl, not a training run directory')
        ticks += read_lines_of_json(stats_path)
    figure, (losses, poses, metrics) = plt.subplots(3, 1, figsize=(9, 11), sharex=True)
    for axes, keys in ((losses, LOSSES), (poses, POSES)):
        for key in keys:
            kimgs, values = tick_series(ticks, key)
            if kimgs:  # a statistic only some runs report (a regularizer or loss that is off) gets no legend entry
                axes.plot(kimgs, values, label=key, marker='.')
    losses.set_yscale('symlog', linthresh=1.0)
    losses.set_ylabel('loss (mean per tick)')
    losses.legend(fontsize=8)
    poses.set_ylabel('pose loss / error (radians)')
    poses.legend(fontsize=8)

    degrees = metrics.twinx()
    colours = iter(plt.rcParams['axes.prop_cycle'].by_key()['color'])
    series = run_metric_series(run_dirs)
    for name, (kimgs, values) in series.items():
        if name.startswith(('fid', 'kid')):
            metrics.plot(kimgs, values, label=name, marker='o', color='black')
        elif name.endswith('_mean') and '_mean_pose_' not in name:
            # Each pose error in a solid line, its constant-mean-pose yardstick dashed in the same colour.
            colour = next(colours)
            degrees.plot(kimgs, values, label=name, marker='.', color=colour)
            yardstick = name.replace('_', '_mean_pose_', 1)
            if yardstick in series:
                degrees.plot(*series[yardstick], label=f'{yardstick} (yardstick)', linestyle='--', color=colour)
    metrics.set_ylabel('FID / KID')
    degrees.set_ylabel('pose error (degrees)')
    handles = [axis.get_legend_handles_labels() for axis in (metrics, degrees)]
    metrics.legend(handles[0][0] + handles[1][0], handles[0][1] + handles[1][1], fontsize=7, loc='upper right')
    metrics.set_xlabel('kimg')
    figure.suptitle(' + '.join(os.path.basename(os.path.normpath(run_dir)) for run_dir in run_dirs), fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run_dirs', nargs='+', metavar='RUN_DIR', help='a run, then its continuations')
    parser.add_argument('--out', help='PNG to write  [default: the last RUN_DIR/training.png]')
    parser.add_argument('--table', action='store_true', help='also print the metrics per snapshot and the s/kimg')
    args = parser.parse_args()
    try:
        print(plot_run(args.run_dirs, args.out or os.path.join(args.run_dirs[-1], 'training.png')))
        if args.table:
            print(metrics_table(args.run_dirs))
    except (OSError, ValueError, KeyError) as error:
        print(f'plot_training: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
