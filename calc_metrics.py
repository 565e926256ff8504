"""Compute FID, KID, pose accuracy and pose sensitivity of a network snapshot; results go next to the checkpoint.

Examples:
    python calc_metrics.py --network runs/00000-cpu-small-... --metrics fid2k,kid2k,pose_err
    python calc_metrics.py --network snapshot.pkl --metrics fid50k_full --data D.zip --seg_data D-seg.zip --gpus 8
    torchrun --nproc_per_node=2 calc_metrics.py --network snapshot.pkl --metrics kid2k
"""

import os
import sys
import tempfile

import click
import torch

from metrics import metric_main, metric_utils
from metrics.detector import DEFAULT_DETECTOR, DetectorError
from metrics.names import METRIC_POSE_SAMPLE_MODES, POSE_METRICS, expected_metrics, is_valid_metric
from torch_utils import distributed
from training.checkpoints.run_files import find_pose_predict_kwargs, pose_predict_kwargs_for
from training.cli import Command, load_snapshot, trust_pickle_option
from training.config import DEVICES
from training.data.dataset import DatasetError


def _parse_metrics(ctx, param, value):
    names = [name.strip() for name in value.split(',') if name.strip()]
    unknown = [name for name in names if not is_valid_metric(name)]
    if not names or unknown:
        raise click.BadParameter(f'unknown metric {", ".join(unknown) or repr(value)}; expected {expected_metrics()}')
    return names


def _evaluate(rank: int, world_size: int, args: dict, init_file: str | None) -> None:
    """One process: join the process group, load the snapshot, compute and (rank 0) report every metric."""
    device = distributed.process_device(args['device'], rank, world_size)
    distributed.join_process_group(device, rank, world_size, init_file)
    try:
        path, G, D, contents = load_snapshot(args['network'], device, args['trust_pickle'])
        if G is None:
            raise click.ClickException(f'{args["network"]}: the checkpoint holds no generator (G_ema or G)')
        training_set_kwargs = contents.get('training_set_kwargs')
        if args['data'] is not None:
            dataset_kwargs = dict(path=args['data'], seg_path=args['seg_data'])
        elif training_set_kwargs is not None:
            dataset_kwargs = training_set_kwargs
        else:
            raise click.UsageError(f'{path} does not name its training data: give --data and --seg_data')
        pose_metrics = [name for name in args['metrics'] if name in POSE_METRICS]
        users_of_d = (['D_predict'] if args['metric_pose_sample_mode'] == 'D_predict' else []) + pose_metrics
        needs_d_what = ' and '.join(users_of_d) + (' need' if len(users_of_d) > 1 else ' needs')
        try:
            pose_predict_kwargs = find_pose_predict_kwargs(path, contents, args['pose_predict_kwargs'])
        except (OSError, ValueError) as err:
            raise click.BadParameter(str(err), param_hint='--pose_predict_kwargs') from None
        if pose_predict_kwargs is None and users_of_d:
            raise click.UsageError(
                f'{needs_d_what} the pose-prediction settings: {path} carries none and there is no '
                f'{pose_predict_kwargs_for(path)}; give --pose_predict_kwargs'
            )
        if users_of_d and D is None:
            raise click.UsageError(f'{path} holds no discriminator (D_ema or D), which {needs_d_what}')
        try:
            opts = metric_utils.MetricOptions(
                G=G,
                D=D,
                dataset_kwargs=dataset_kwargs,
                pose_predict_kwargs=pose_predict_kwargs,
                metric_pose_sample_mode=args['metric_pose_sample_mode'],
                identical_c_p=args['identical_c_p'],
                detector=args['detector'],
                trust_pickle=args['trust_pickle'],
                num_gpus=world_size,
                rank=rank,
                device=device,
                batch_size=args['batch'],
                progress=args['verbose'],
            )
            opts.dataset()
            unwritten = None
            for name in args['metrics']:
                result = metric_main.calc_metric(name, opts)
                if rank == 0:
                    print(metric_main.format_results(result), flush=True)
                    try:
                        metric_main.report_metric(result, os.path.dirname(os.path.abspath(path)), path)
                    except OSError as err:  # the result is printed above; the others are still computed
                        unwritten = (
                            unwritten
                            or f'{err.filename}: cannot be written ({err.strerror}); the results are printed above'
                        )
            if unwritten:
                raise click.ClickException(unwritten)
        except (DatasetError, DetectorError, ValueError) as err:
            raise click.ClickException(str(err)) from None
    finally:
        if world_size > 1 and init_file is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _spawned(rank: int, world_size: int, args: dict, init_file: str) -> None:
    try:
        _evaluate(rank, world_size, args, init_file)
    except click.ClickException as err:
        err.show()
        sys.exit(1)


@click.command(cls=Command, context_settings=dict(max_content_width=120))
@click.option(
    '--network', required=True, help='Network snapshot (pickle or weights file, path or URL), or a run directory'
)
@click.option(
    '--metrics',
    default='fid50k_full',
    show_default=True,
    callback=_parse_metrics,
    help='Comma list: fid50k_full, kid50k_full, fid{N}k, kid{N}k, ..._full, ..._front, ..._back, pose_err, pose_sens',
)
@click.option(
    '--data', type=click.Path(exists=True), help="Images zip or folder  [default: the snapshot's training data]"
)
@click.option('--seg_data', type=click.Path(exists=True), help='Masks zip or folder (with --data)')
@click.option(
    '--metric_pose_sample_mode',
    type=click.Choice(METRIC_POSE_SAMPLE_MODES),
    default='G_predict',
    show_default=True,
    help="Pose of the fakes: G's pose branch, or D on a random real image",
)
@click.option(
    '--identical_c_p',
    type=bool,
    default=False,
    show_default=True,
    help='Condition the fakes on their rendering camera and pose (else on an independent draw)',
)
@click.option(
    '--pose_predict_kwargs', type=click.Path(), help='Pose-prediction JSON  [default: the one beside the snapshot]'
)
@click.option(
    '--detector',
    default=DEFAULT_DETECTOR,
    show_default=True,
    help='Feature detector: the offline default, or a path/URL of inception-2015-12-05.pkl or a TorchScript Inception',
)
@click.option(
    '--gpus',
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help='Processes (GPUs, or CPU processes with gloo)',
)
@click.option(
    '--device',
    type=click.Choice(DEVICES),
    default='auto',
    show_default=True,
    help='Device kind of every process (as train.py): auto takes CUDA when present; process N uses cuda:LOCAL_RANK',
)
@click.option(
    '--batch', type=click.IntRange(min=1), default=8, show_default=True, help='Images per generator and detector call'
)
@trust_pickle_option
@click.option('--verbose/--quiet', default=True, show_default=True, help='Progress bars')
def main(**args):
    """Append each metric's result to metric-<name>.jsonl beside the snapshot and print it."""
    if args['seg_data'] is not None and args['data'] is None or args['data'] is not None and args['seg_data'] is None:
        raise click.UsageError("give both --data and --seg_data, or neither (the snapshot's training data)")
    if args['device'] == 'auto':
        args['device'] = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args['device'] == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('no CUDA device on this machine; use --device cpu', param_hint='--device')
    if distributed.is_torchrun():
        _evaluate(int(os.environ['RANK']), int(os.environ['WORLD_SIZE']), args, None)
    elif args['gpus'] == 1:
        _evaluate(0, 1, args, None)
    else:
        with tempfile.TemporaryDirectory() as temp_dir:
            try:
                torch.multiprocessing.spawn(
                    _spawned, args=(args['gpus'], args, os.path.join(temp_dir, '.init')), nprocs=args['gpus']
                )
            except torch.multiprocessing.ProcessRaisedException as err:
                raise click.ClickException(f'a metric process failed: {str(err).strip().splitlines()[-1]}') from None
            except torch.multiprocessing.ProcessExitedException as err:
                raise click.ClickException(
                    f'metric process {err.error_index} exited with code {err.exit_code} (its message is above)'
                ) from None


if __name__ == '__main__':
    main()
