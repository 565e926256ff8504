"""Export a training snapshot for inference: a compact weights file with its pose-prediction settings.

    python tools/export_snapshot.py runs/00000-cpu-fast-.../network-snapshot-000030.pt pretrained/cpu-fast-64.pt

Keeps G_ema and D_ema (not the training G and D), the training data set's settings and the rendering
resolution, and copies the pose-prediction JSON beside the output under the output's stem. By
default D_ema's parameters are stored in float16 (D only predicts poses at inference; half the
size) and G_ema's in float32, so that renders are those of the trained snapshot; `--half G_ema`
stores G's in float16 too. Every tool loads the result like any snapshot (`--network
pretrained/cpu-fast-64.pt`); loading casts the parameters back to float32.

It also writes OUT's stem + `.render-stats.json`: training.engines.render_stats of the *source* snapshot's
generator for the seeds of --stats-seeds, which tests/test_pretrained.py compares with renders of
the exported file.
"""

import os
import sys

import click
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from training.checkpoints import run_files  # noqa: E402
from training.checkpoints.atomic_files import write_json  # noqa: E402
from training.checkpoints.formats import CheckpointError  # noqa: E402
from training.cli import load_snapshot, parse_seeds  # noqa: E402
from training.engines.render_stats import render_statistics  # noqa: E402

RENDER_STATS_SUFFIX = '.render-stats.json'


@click.command()
@click.argument('snapshot')
@click.argument('out')
@click.option(
    '--half',
    type=click.Choice(['G_ema', 'D_ema']),
    multiple=True,
    default=['D_ema'],
    show_default=True,
    help='network whose parameters are stored in float16 (repeatable)',
)
@click.option('--stats-seeds', default='0-7', show_default=True, help='Seeds of the render statistics')
def main(snapshot: str, out: str, half: tuple, stats_seeds: str) -> None:
    """Write SNAPSHOT's G_ema and D_ema to OUT (.pt), and the render statistics of SNAPSHOT's G_ema."""
    try:
        seeds = parse_seeds(stats_seeds)
    except click.BadParameter as error:
        error.param_hint = '--stats-seeds'
        raise
    try:
        source = run_files.resolve_network(snapshot)
        out_path, json_path = run_files.export_snapshot(
            source, out, parameter_dtypes={key: torch.float16 for key in half}
        )
    except (CheckpointError, OSError) as error:
        raise click.ClickException(str(error)) from None
    _, G, _, _ = load_snapshot(source, torch.device('cpu'))
    stats_path = os.path.splitext(out_path)[0] + RENDER_STATS_SUFFIX
    write_json(stats_path, {'seeds': seeds, 'statistics': render_statistics(G, seeds)})
    click.echo(f'{out_path} ({os.path.getsize(out_path) / 2**20:.1f} MiB)')
    click.echo(json_path or f'no pose-prediction settings beside {snapshot}; pose prediction on real images needs them')
    click.echo(stats_path)


if __name__ == '__main__':
    main()
