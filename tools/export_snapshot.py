"""Export a training snapshot for inference: a compact weights file with its pose-prediction settings.

    python tools/export_snapshot.py runs/00000-cpu-fast-.../network-snapshot-000030.pt pretrained/cpu-fast-64.pt

Keeps G_ema and D_ema (not the training G and D), the training data set's settings and the rendering
resolution, and copies the pose-prediction JSON beside the output under the output's stem. By
default D_ema's parameters are stored in float16 (D only predicts poses at inference; half the
size) and G_ema's in float32, so that renders are those of the trained snapshot; `--half G_ema`
stores G's in float16 too. Every tool loads the result like any snapshot (`--network
pretrained/cpu-fast-64.pt`); loading casts the parameters back to float32.
"""

import os
import sys

import click
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from training import run_files  # noqa: E402
from training.checkpoint import CheckpointError  # noqa: E402


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
def main(snapshot: str, out: str, half: tuple) -> None:
    """Write SNAPSHOT's G_ema and D_ema to OUT (.pt)."""
    try:
        out_path, json_path = run_files.export_snapshot(
            run_files.resolve_network(snapshot), out, parameter_dtypes={key: torch.float16 for key in half}
        )
    except (CheckpointError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f'{out_path} ({os.path.getsize(out_path) / 2**20:.1f} MiB)')
    click.echo(json_path or f'no pose-prediction settings beside {snapshot}; pose prediction on real images needs them')


if __name__ == '__main__':
    main()
