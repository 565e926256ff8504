"""Train a 3D portrait GAN: resolve the options into one TrainingConfig and run the training loop.

Single process (CPU, or one GPU):
    python train.py --cfg cpu-small                      # built-in synthetic data set, built on first use
    python train.py --cfg full-head --data portraits.zip --seg_data portraits-seg.zip --gpus 8 --batch 32

Several processes on one machine: `--gpus N` starts N processes (torch.multiprocessing.spawn),
one per GPU with NCCL, or N CPU processes with gloo when there is no GPU (--device cpu).

torchrun (one or several machines): each process reads RANK, WORLD_SIZE and LOCAL_RANK from the
environment and joins the process group through torchrun's rendezvous; --gpus is the world size.
    torchrun --nproc_per_node 8 train.py --cfg full-head --data ... --seg_data ... --batch 32
    # two machines, 8 GPUs each; run on both, with the first machine's address:
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
        --rdzv_id portrait3d train.py --cfg full-head --data ... --seg_data ... --batch 32
Rank 0 writes the run directory; it must be on a file system that the first machine can write.
With torchrun --max-restarts N, a restarted group continues the run directory of its first attempt
(found by torchrun's run id, --rdzv-id) from its newest resume state, in place; rank 0 of every attempt
must therefore see the same --outdir. Restarting several machines needs a fresh rendezvous store per
attempt: --rdzv-backend c10d and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment.
A process that fails stops the others within seconds, with one line `Error: training process R failed:
...`; with --gpus N the launcher ends with the line of the process that failed first.

Continuing an interrupted run (exactly: image counter, optimizer moments, EMA, schedules, data
order and RNG states; the options are those stored in the run unless given again):
    python train.py --resume runs/00003-cpu-small-synthetic-portraits-64-gpus1-batch8-gamma1
The continued run writes into a new run directory. Starting a new training stage from the
networks of a snapshot (fresh optimizers, counter set to --resume_kimg), as in the published stages:
    python train.py --cfg full-head ... --resume stage1/network-snapshot-006000.pkl --resume_kimg 6000 \
        --kimg 16000 --train_g_pose_branch false --metric_pose_sample_mode D_predict
"""

import glob
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

import click
import torch

import dnnlib
from metrics.names import METRIC_POSE_SAMPLE_MODES
from torch_utils import distributed
from training import presets
from training.checkpoints import formats, run_files
from training.checkpoints.atomic_files import WriteError, atomic_write, remove_unfinished_writes
from training.cli import Command, FiniteFloat, make_outdir
from training.config import ARCHITECTURE_FIELDS, DEVICES, ConfigError, TrainingConfig
from training.data.dataset import DatasetError, PortraitDataset
from training.data.synthetic import default_synthetic_paths, ensure_synthetic_dataset
from training.loss_options import POSE_PRIOR_MATCHES, REG_TYPES
from training.networks.decoder import ACTIVATIONS as DECODER_ACTIVATIONS
from training.networks.triplane import SR_MODULES, build_body_model

# In a run directory made under torchrun: the run id of that torchrun run (--rdzv-id), for its restarts.
TORCHRUN_RUN_ID_FILE = 'torchrun_run_id.txt'

# train.py option -> TriPlaneGenerator argument (the preset's "generator" section).
GENERATOR_OPTIONS = {
    'map_depth': 'map_depth',
    'c_scale': 'c_scale',
    'sr_noise_mode': 'sr_noise_mode',
    'sr_num_fp16_res': 'sr_num_fp16_res',
    'g_num_fp16_res': 'num_fp16_res',
    'sr_module': 'sr_module',
    'decoder_lr_mul': 'decoder_lr_mul',
    'thickness': 'thickness',
    'decoder_activation': 'decoder_activation',
    'use_torgb_raw': 'use_torgb_raw',
    'use_background': 'use_background',
    'triplane_depth': 'triplane_depth',
    'cpu_bf16': 'cpu_bf16',
    'body_model': 'body_model',
    'pose_branch_camera': 'pose_branch_camera',
}


def _parse_metrics(ctx, param, value):
    if value is None:
        return None
    names = [name.strip() for name in value.split(',') if name.strip()]
    return [] if names in ([], ['none']) else names


def _resolve_device(name: str, gpus: int) -> str:
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise click.BadParameter('no CUDA device on this machine; use --device cpu', param_hint='--device')
        if not distributed.is_torchrun() and gpus > torch.cuda.device_count():
            raise click.BadParameter(
                f'--gpus {gpus}, but this machine has {torch.cuda.device_count()} CUDA device(s)', param_hint='--gpus'
            )
    return name


def _find_resume_state(resume: str, clean: bool = True) -> str:
    """The resume state that `--resume` names: a run directory's newest, the state itself, or a snapshot's.

    clean: remove the unfinished writes of the run being continued from its directory (see _remove_unfinished_writes).
    """
    try:
        resume_state = run_files.find_resume_state(resume)
    except formats.CheckpointError as err:
        raise click.BadParameter(str(err), param_hint='--resume') from None
    if clean:
        _remove_unfinished_writes(os.path.dirname(os.path.abspath(resume_state)))
    return resume_state


def _remove_unfinished_writes(run_dir: str) -> None:
    """The run in `run_dir` is over: the temporary files that it was writing when it was killed are incomplete.
    Remove them (only names of this project's writers) and say so in one line."""
    removed = remove_unfinished_writes(run_dir)
    if removed:
        names = ', '.join(os.path.basename(path) for path, _ in removed[:3]) + (', ...' if len(removed) > 3 else '')
        megabytes = sum(size for _, size in removed) / 2**20
        print(
            f'removed {len(removed)} unfinished temporary file(s) ({megabytes:.1f} MB) of an interrupted write '
            f'from {run_dir}: {names}'
        )


def _continued_config(resume_state: str, cfg_given: bool, overrides: dict, generator: dict) -> TrainingConfig:
    """The stored options of the run being continued, with the options given on this command line."""
    if cfg_given:
        raise click.UsageError(
            '--cfg cannot be combined with --resume without --resume_kimg: a continued run '
            'keeps its preset (add --resume_kimg to start a new stage instead)'
        )
    try:
        state = run_files.load_resume_state(resume_state, mmap=True)
    except formats.CheckpointError as err:
        raise click.BadParameter(str(err), param_hint='--resume') from None
    stored = TrainingConfig.from_json(state['config_json'], source=resume_state)
    config = stored.replace(generator={**stored.generator, **generator} if generator else None, **overrides)
    changed = [name for name in ARCHITECTURE_FIELDS if getattr(config, name) != getattr(stored, name)]
    if changed:
        raise click.UsageError(
            f'a continued run cannot change the network architecture ({", ".join(changed)}); '
            f'start a new stage with --resume_kimg instead'
        )
    if state['progress']['cur_nimg'] >= config.kimg * 1000:
        raise click.UsageError(
            f'{resume_state} is at {state["progress"]["cur_nimg"] / 1000:g} kimg, the run ends at '
            f'--kimg {config.kimg:g}: pass a larger --kimg to train further'
        )
    return config.replace(resume_state=resume_state)


def _process(
    rank: int,
    world_size: int,
    config: TrainingConfig,
    run_dir: str,
    init_file: str | None,
    failure_dir: str | None = None,
) -> None:
    """One training process: join the process group, pick the device, train; errors become one line and exit 1.

    failure_dir: where spawned processes leave the line of their error for the launcher (None: torchrun, one process).
    """
    from training.training_loop import TrainingDataError, TrainingDivergedError, training_loop

    device = distributed.process_device(config.device, rank, world_size)
    distributed.join_process_group(device, rank, world_size, init_file)
    logger = dnnlib.util.Logger(os.path.join(run_dir, 'log.txt'), file_mode='a') if rank == 0 else None
    try:
        training_loop(config, run_dir, rank=rank, world_size=world_size, device=device)
    except (TrainingDivergedError, TrainingDataError, DatasetError, WriteError) as err:
        # A DatasetError here comes from the set-up, before any training; a WriteError names the file and the cause.
        _exit_with_error(str(err), rank, failure_dir)
    except Exception as err:
        # An unforeseen error: its traceback for the developer, then the one line. It is written before the
        # process group closes, so it comes before the errors of the processes left waiting in a collective.
        traceback.print_exc()
        message = str(err).splitlines()[0] if str(err) else ''
        _exit_with_error(f'training process {rank} failed: {type(err).__name__}: {message}', rank, failure_dir)
    finally:
        if logger is not None:
            logger.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if failure_dir is not None:
        # A spawned process that finished leaves at once: everything it writes is complete and closed by now,
        # and the interpreter's shutdown could abort in the destructor of a C++ thread that the process group or
        # a data loader left behind ("terminate called without an active exception"), turning success into -6.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _exit_with_error(line: str, rank: int, failure_dir: str | None) -> None:
    """Print `line` as the error of this process and exit 1; leave it, timed, in failure_dir for the launcher."""
    print(f'Error: {line}', file=sys.stderr, flush=True)
    if failure_dir is not None:
        record = f'{time.time_ns()} {line}'.encode()
        atomic_write(os.path.join(failure_dir, f'failure-{rank}.txt'), lambda file: file.write(record))
    sys.exit(1)


def _first_failure(failure_dir: str) -> str | None:
    """The error line that a spawned process left first in failure_dir, or None when none left one."""
    records = []
    for path in glob.glob(os.path.join(failure_dir, 'failure-*.txt')):
        with open(path, encoding='utf-8') as file:
            stamp, line = file.read().split(' ', 1)
        records.append((int(stamp), line))
    return min(records)[1] if records else None


def _launch(config: TrainingConfig, run_dir: str) -> None:
    """Single process, torchrun's processes, or `gpus` spawned processes.

    When a spawned process fails, the others are stopped (SIGTERM, SIGKILL after 30 s) and the launcher
    exits with the first error line that any of them wrote.
    """
    if distributed.is_torchrun() or config.gpus == 1:
        _process(int(os.environ.get('RANK', 0)), config.gpus, config, run_dir, None)
        return
    # Ctrl-C reaches every process of the terminal's group, so the ranks see it themselves; a
    # SIGTERM sent to this launcher alone is passed on to them. Either way they finish the
    # iteration and write a final snapshot.
    with tempfile.TemporaryDirectory() as temp_dir:
        context = torch.multiprocessing.spawn(
            _process,
            args=(config.gpus, config, run_dir, os.path.join(temp_dir, '.torch_distributed_init'), temp_dir),
            nprocs=config.gpus,
            join=False,
        )

        def forward_sigterm(signum, frame):
            for process in context.processes:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)

        signal.signal(signal.SIGINT, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, forward_sigterm)
        try:
            while not context.join():
                pass
        except (torch.multiprocessing.ProcessExitedException, torch.multiprocessing.ProcessRaisedException) as err:
            # join() has stopped the other processes; the first error written is the cause, the others
            # are those of processes whose collectives lost it.
            first = _first_failure(temp_dir)
            if first is None:
                exit_code = context.processes[err.error_index].exitcode
                first = f'training process {err.error_index} exited with code {exit_code} (its message is above)'
            raise click.ClickException(first) from None


def _check_body_model(config: TrainingConfig) -> None:
    """Load the body model once before anything is written, so that a missing or unreadable one is a one-line error."""
    try:
        build_body_model(config.generator['body_model'], config.generator['box_warp'])
    except (ValueError, OSError) as err:
        raise click.BadParameter(str(err).splitlines()[0], param_hint='--body_model') from None


@click.command(cls=Command, context_settings=dict(max_content_width=120))
# Run.
@click.option(
    '--outdir',
    default='runs',
    show_default=True,
    type=click.Path(file_okay=False),
    help='Where to make the run directory',
)
@click.option(
    '--cfg', help='Preset: a name in configs/ (cpu-small, full-head) or a path to a preset JSON  [default: cpu-small]'
)
@click.option(
    '--data',
    type=click.Path(exists=True),
    help='Images zip or folder with dataset.json  [default: the built-in synthetic set]',
)
@click.option(
    '--seg_data', type=click.Path(exists=True), help='Masks zip or folder  [default: the built-in synthetic set]'
)
@click.option(
    '--gpus', type=click.IntRange(min=1), help='Number of processes (GPUs, or CPU processes with gloo)  [default: 1]'
)
@click.option('--device', type=click.Choice(DEVICES), help='Device  [default: auto: CUDA when present]')
@click.option('--batch', type=click.IntRange(min=1), help='Total batch size')
@click.option(
    '--batch-gpu',
    'batch_gpu',
    type=click.IntRange(min=1),
    help="Images per forward pass per process; each process's share of --batch is accumulated over such passes",
)
@click.option('--kimg', type=FiniteFloat(min=0, min_open=True), help='Train until this many thousand images (absolute)')
@click.option('--tick', type=FiniteFloat(min=0, min_open=True), help='kimg between progress lines')
@click.option('--snap', type=click.IntRange(min=0), help='Ticks between network snapshots (0: at the end only)')
@click.option('--image-snap', 'image_snap', type=click.IntRange(min=0), help='Ticks between image snapshots')
@click.option('--seed', type=click.IntRange(min=0), help='Random seed  [default: 0]')
@click.option(
    '--workers',
    type=click.IntRange(min=0),
    help='DataLoader worker processes  [default: 3, at most the cores less one]',
)
@click.option('--nobench', is_flag=True, default=None, help='Disable cuDNN benchmarking')
@click.option(
    '--allow-tf32',
    'allow_tf32',
    type=bool,
    help='TF32 for matmuls and convolutions on Ampere and newer GPUs (faster, 10-bit mantissa)  [default: false]',
)
@click.option('--desc', help='String appended to the run directory name')
@click.option('-n', '--dry-run', 'dry_run', is_flag=True, help='Print the resolved options and exit')
# Resume.
@click.option(
    '--resume',
    type=click.Path(exists=True),
    help='Run directory or snapshot to continue (or to start a stage from, with --resume_kimg)',
)
@click.option('--resume_kimg', type=FiniteFloat(min=0), help="Start a new stage from --resume's networks at this kimg")
@click.option(
    '--resume_blur', is_flag=True, help='With --resume_kimg: keep the blur and GPC-fade schedules of the preset'
)
@click.option('--trust-pickle', 'trust_pickle', is_flag=True, default=None, help=formats.TRUST_PICKLE_HELP)
# Data and D.
@click.option('--mirror', type=bool, help='Add mirrored copies of the data set')
@click.option('--freezed', type=click.IntRange(min=0), help='Freeze the first D layers')
@click.option('--cbase', type=click.IntRange(min=1), help='G and D channel base')
@click.option('--cmax', type=click.IntRange(min=1), help='G and D maximum channels')
@click.option('--mbstd-group', 'mbstd_group', type=click.IntRange(min=1), help='Minibatch-std group size')
@click.option('--disc_c_noise', type=FiniteFloat(min=0), help="Noise on D's conditioning camera")
@click.option('--d_num_fp16_res', type=click.IntRange(min=0), help='D blocks in fp16 (CUDA)')
# Optimizers and losses.
@click.option('--gamma', type=FiniteFloat(min=0), help='R1 weight on the image and raw image')
@click.option('--gamma_seg', type=FiniteFloat(min=0), help='R1 weight on the mask')
@click.option('--glr', type=FiniteFloat(min=0, min_open=True), help='G learning rate')
@click.option('--dlr', type=FiniteFloat(min=0, min_open=True), help='D learning rate')
@click.option('--blur_fade_kimg', type=FiniteFloat(min=0), help='Blur fade of D inputs in kimg at batch 32')
@click.option('--gpc_reg_prob', type=FiniteFloat(0, 1), help='Final GPC swap probability')
@click.option('--gpc_reg_fade_kimg', type=FiniteFloat(min=0), help='GPC swap fade from 1')
@click.option('--bcg_reg_prob', type=FiniteFloat(0, 1), help='Background swap probability')
@click.option('--style_mixing_prob', type=FiniteFloat(0, 1), help='Style mixing probability')
@click.option('--density_reg', type=FiniteFloat(min=0), help='Density regularization weight (0: none)')
@click.option('--density_reg_every', type=click.IntRange(min=1), help='Density regularization interval')
@click.option('--density_reg_p_dist', type=FiniteFloat(min=0), help='Density regularization perturbation')
@click.option('--reg_type', type=click.Choice(REG_TYPES), help='Density regularization type')
@click.option('--density_noise_fade_kimg', type=FiniteFloat(min=0), help='Density noise fade (0: none)')
@click.option('--pose_loss_weight', type=FiniteFloat(min=0), help='D pose regression weight')
@click.option('--input_pose_params_reg_loss_weight', type=FiniteFloat(min=0), help='G pose prior weight')
@click.option('--input_pose_params_reg_loss_kimg', type=FiniteFloat(min=0), help='G pose prior hold (kimg)')
@click.option('--input_pose_params_reg_loss_decay_kimg', type=FiniteFloat(min=0), help='G pose prior decay (kimg)')
@click.option(
    '--pose_prior_match',
    type=click.Choice(POSE_PRIOR_MATCHES),
    help='G pose prior target: paired (coarse pose of the same item) or marginal (coarse poses matched by rank)',
)
@click.option(
    '--labelled_pose_loss_weight',
    type=FiniteFloat(min=0),
    help='D pose regression on fakes rendered at the labelled poses (0: off, as published)',
)
@click.option('--train_g_pose_branch', type=bool, help="Train G's pose branch")
@click.option('--neural_rendering_resolution_initial', type=click.IntRange(min=1), help='Rendering resolution')
@click.option(
    '--neural_rendering_resolution_final', type=click.IntRange(min=1), help='Rendering resolution after the fade'
)
@click.option(
    '--neural_rendering_resolution_fade_kimg',
    type=FiniteFloat(min=0),
    help='Rendering resolution fade (kimg from the stage start)',
)
@click.option('--metrics', callback=_parse_metrics, help='Comma list of metrics or "none"')
@click.option(
    '--metric_pose_sample_mode', type=click.Choice(METRIC_POSE_SAMPLE_MODES), help="Pose of the metrics' fakes"
)
# Generator.
@click.option('--map-depth', 'map_depth', type=click.IntRange(min=1), help='G mapping depth')
@click.option('--c-scale', 'c_scale', type=FiniteFloat(min=0), help='Scale of (camera, pose) before the mapping')
@click.option('--sr_noise_mode', type=click.Choice(['random', 'none']), help='SR noise')
@click.option('--sr_num_fp16_res', type=click.IntRange(min=0), help='SR blocks in fp16 (CUDA)')
@click.option('--g_num_fp16_res', type=click.IntRange(min=0), help='G backbone blocks in fp16 (CUDA)')
@click.option('--sr-module', 'sr_module', type=click.Choice(SR_MODULES), help='SR head')
@click.option('--decoder_lr_mul', type=FiniteFloat(min=0, min_open=True), help='Decoder learning-rate multiplier')
@click.option('--thickness', type=FiniteFloat(min=0, min_open=True), help='Deformation shell (m)')
@click.option('--decoder_activation', type=click.Choice(DECODER_ACTIVATIONS), help='Decoder feature activation')
@click.option('--use_torgb_raw', type=bool, help='Raw image from a ToRGB layer')
@click.option('--use_background', type=bool, help='2D background behind the head')
@click.option('--triplane_depth', type=click.IntRange(min=1), help='Depth slices of the tri-grid')
@click.option(
    '--body_model', help='Body driving the deformation: embedded, smpl (body_models/smpl/SMPL_NEUTRAL.pkl) or a path'
)
@click.option(
    '--cpu_bf16',
    type=bool,
    help="On the CPU, run G's and D's convolutions in bfloat16 (needs AMX or AVX512-BF16; R1 stays fp32)",
)
@click.option(
    '--pose_branch_camera',
    type=bool,
    help="G's pose branch sees the camera (false: the pose depends on z only, for poses independent of the camera)",
)
def main(outdir, cfg, gpus, dry_run, resume, resume_kimg, resume_blur, cbase, cmax, nobench, **options):
    """Train a 3D portrait GAN (3DPortraitGAN method).

    Options left out keep the preset's values (configs/<cfg>.json, "training" section), or, with
    --resume of a run, the values that run was trained with.
    """
    generator = {GENERATOR_OPTIONS[name]: options.pop(name) for name in GENERATOR_OPTIONS}
    generator = {key: value for key, value in generator.items() if value is not None}
    if cbase is not None:
        generator['channel_base'] = options['d_channel_base'] = cbase
    if cmax is not None:
        generator['channel_max'] = options['d_channel_max'] = cmax
    options['cudnn_benchmark'] = False if nobench else None
    if (options['data'] is None) != (options['seg_data'] is None):
        raise click.UsageError('give both --data and --seg_data, or neither (the built-in synthetic set)')
    if resume_kimg is not None and resume is None:
        raise click.UsageError('--resume_kimg needs --resume (the snapshot to start the stage from)')
    if resume_blur and resume_kimg is None:
        raise click.UsageError('--resume_blur only applies when starting a stage with --resume_kimg')
    if distributed.is_torchrun():
        world_size = int(os.environ['WORLD_SIZE'])
        if gpus is not None and gpus != world_size:
            raise click.BadParameter(f'--gpus {gpus}, but torchrun started {world_size} processes', param_hint='--gpus')
        gpus = world_size
    options['gpus'] = gpus

    try:
        if resume is not None and resume_kimg is None:
            config = _continued_config(
                _find_resume_state(resume, clean=not dry_run), cfg is not None, options, generator
            )
        else:
            config = _new_config(cfg or 'cpu-small', options, generator, resume, resume_kimg, resume_blur)
        config.validate()
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    config = _checked_start(config.replace(device=_resolve_device(config.device, config.gpus)))
    if dry_run:
        print(config.to_json())
        return

    if distributed.is_torchrun():
        rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        distributed.join_process_group(
            distributed.process_device(config.device, rank, world_size), rank, world_size, init_file=None
        )
    synthetic = (config.data, config.seg_data) == default_synthetic_paths(resolution=config.generator['img_resolution'])
    if synthetic and int(os.environ.get('LOCAL_RANK', 0)) == 0:
        ensure_synthetic_dataset(resolution=config.generator['img_resolution'])
    if distributed.is_torchrun():
        run_dir, config = _torchrun_run(outdir, config, options, generator)
        if run_dir is None:
            return
    else:
        run_dir = _make_run_dir(outdir, config)
    _launch(config, run_dir)


def _torchrun_run(
    outdir: str, config: TrainingConfig, options: dict, generator: dict
) -> tuple[str | None, TrainingConfig | None]:
    """Under torchrun: the run directory and config of every process, as rank 0 decides them -> (run_dir, config);
    (None, None) when a restarted run has nothing left to train.

    In torchrun's first attempt rank 0 makes a new run directory and notes torchrun's run id in it; when
    --max-restarts starts the group anew, rank 0 finds that directory and continues it from its newest
    resume state, as `--resume` would but in the same directory. A click error of rank 0 ends every process.
    """
    run_id, restart = distributed.torchrun_restart()
    shared = [None, None, None]  # run directory, config JSON (None: nothing to train), rank 0's error line
    if int(os.environ['RANK']) == 0:
        try:
            if restart > 0:
                run_dir, config = _restarted_run(outdir, config, options, generator, run_id, restart)
            else:
                run_dir = None
            if run_dir is None:
                run_dir = _make_run_dir(outdir, config, torchrun_run_id=run_id)
            shared = [run_dir, None if config is None else config.to_json(), None]
        except click.ClickException as err:
            shared[2] = err.format_message()
            if torch.distributed.is_initialized():
                torch.distributed.broadcast_object_list(shared, src=0)
            raise
    if torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(shared, src=0)  # also waits until the synthetic set exists
    run_dir, config_json, error = shared
    if error is not None:
        raise click.ClickException(error)
    return (None, None) if config_json is None else (run_dir, TrainingConfig.from_json(config_json))


def _checked_start(config: TrainingConfig) -> TrainingConfig:
    """Every check that the start of training makes, run by the run and the dry run alike before anything is
    written: the body model loads, the networks of the options can be built (on the CPU), and the snapshot or
    resume state that --resume names is readable and holds networks of the same shapes.

    -> config with the conventions of a stage's starting snapshot (d_mirror_camera: the published
    discriminators mirror only the image of left-side views, and keep doing so when trained further).
    """
    from training.training_loop import build_networks

    _check_body_model(config)
    source = config.resume_state or config.resume
    try:
        if config.resume_state is not None:
            networks = run_files.load_resume_state(config.resume_state, mmap=True).get('networks', {})
            stored = [networks.get(name) for name in ('G', 'D')]
        elif config.resume is not None:
            snapshot = formats.load_any(config.resume, trust_pickle=config.trust_pickle)
            G, D = run_files.snapshot_networks(snapshot, config.resume)
            if D is not None:
                config = config.replace(d_mirror_camera=D.mirror_camera)
            stored = [None if network is None else network.state_dict() for network in (G, D)]
        else:
            stored = [None, None]
        built = build_networks(config, torch.device('cpu'))
    except formats.CheckpointError as err:
        raise click.BadParameter(str(err), param_hint='--resume') from None
    except (ValueError, OSError) as err:
        raise click.UsageError(str(err).splitlines()[0]) from None
    for role, stored_tensors, network in zip(('generator', 'discriminator'), stored, built):
        for name, tensor in network.state_dict().items():
            if stored_tensors is not None and name in stored_tensors and stored_tensors[name].shape != tensor.shape:
                raise click.BadParameter(
                    f'{source}: its {role} was built with other options than --cfg '
                    f'{config.cfg} ({name} is {list(stored_tensors[name].shape)} there, '
                    f'{list(tensor.shape)} here); choose the preset and options it was trained '
                    f'with (--body_model, channels, resolutions)',
                    param_hint='--resume',
                )
    return config


def _new_config(
    cfg: str, options: dict, generator: dict, resume: str | None, resume_kimg: float | None, resume_blur: bool
) -> TrainingConfig:
    """A preset with the options given; with --resume_kimg, a new stage from a snapshot's networks."""
    try:
        preset = presets.load_preset(cfg)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--cfg') from None
    options = dict(options, gpus=options['gpus'] or 1)
    if options['data'] is None:
        options['data'], options['seg_data'] = default_synthetic_paths(resolution=preset['generator']['img_resolution'])
    if resume is not None:
        try:
            resume = run_files.stage_start_snapshot(resume)
        except formats.CheckpointError as err:
            raise click.BadParameter(str(err), param_hint='--resume') from None
        # A new stage: the EMA keeps its full half-life and, unless --resume_blur, the
        # early-training schedules (blur, GPC fade) stay off (docs/method.md §9.5).
        options.update(resume=resume, stage_start_kimg=resume_kimg)
        if not resume_blur:
            options.update(blur_init_sigma=0.0, gpc_reg_fade_kimg=0.0)
    config = TrainingConfig.from_preset(preset, cfg, generator=generator, **options)
    if resume is not None:
        config.ema_rampup = None  # set here: from_preset reads None as "keep the preset's value"
    return config


def _make_run_dir(outdir: str, config: TrainingConfig, torchrun_run_id: str | None = None) -> str:
    """Check the data set, create {outdir}/{id:05d}-{cfg}-{data}-gpus{G}-batch{B}-gamma{g}[-desc] and its options file.

    torchrun_run_id: noted in the directory, so that a restart of that torchrun run finds it (_restarted_run).
    """
    try:
        dataset = PortraitDataset(config.data, config.seg_data, resolution=config.generator['img_resolution'])
    except DatasetError as err:
        raise click.ClickException(str(err)) from None
    desc = f'{config.preset_name}-{dataset.name}-gpus{config.gpus}-batch{config.batch}-gamma{config.gamma:g}'
    make_outdir(outdir)
    run_dir = dnnlib.util.next_run_dir(outdir, desc + (f'-{config.desc}' if config.desc else ''))
    os.makedirs(run_dir, exist_ok=False)
    try:
        if torchrun_run_id is not None:
            atomic_write(os.path.join(run_dir, TORCHRUN_RUN_ID_FILE), lambda file: file.write(torchrun_run_id.encode()))
        atomic_write(os.path.join(run_dir, 'training_options.json'), lambda file: file.write(config.to_json().encode()))
    except WriteError as err:
        shutil.rmtree(run_dir, ignore_errors=True)  # a run directory without its options is no run
        raise click.ClickException(str(err)) from None
    print(f'Run directory: {run_dir}')
    print(
        f'Preset {config.cfg}, data {config.data} ({len(dataset)} images), {config.gpus} process(es) on '
        f'{config.device}, batch {config.batch} ({config.batch_gpu} per pass), until {config.kimg:g} kimg'
    )
    return run_dir


def _torchrun_run_dir(outdir: str, run_id: str) -> str | None:
    """The newest run directory in `outdir` that torchrun run `run_id` made, or None."""
    if not os.path.isdir(outdir):
        return None
    for name in sorted(os.listdir(outdir), reverse=True):
        path = os.path.join(outdir, name, TORCHRUN_RUN_ID_FILE)
        if os.path.isfile(path):
            with open(path, encoding='utf-8') as file:
                if file.read() == run_id:
                    return os.path.join(outdir, name)
    return None


def _restarted_run(
    outdir: str, config: TrainingConfig, options: dict, generator: dict, run_id: str, restart: int
) -> tuple[str | None, TrainingConfig | None]:
    """After torchrun restarted the group (rank 0): this torchrun run's directory and how to go on -> (run_dir,
    config continuing its newest resume state, or `config` when it has none yet); (None, config) when the
    run made no directory; (run_dir, None) when it has reached --kimg. Prints one line saying which."""
    prefix = f'torchrun restart {restart} of run {run_id}:'
    run_dir = _torchrun_run_dir(outdir, run_id)
    if run_dir is None:
        print(f'{prefix} no run directory of this run in {outdir}; starting a new one')
        return None, config
    if run_files.latest_resume_state(run_dir) is None:
        _remove_unfinished_writes(run_dir)
        print(f'{prefix} {run_dir} holds no resume state yet; training it afresh in that directory')
        return run_dir, config
    resume_state = _find_resume_state(run_dir)
    try:
        cur_nimg = run_files.load_resume_state(resume_state, mmap=True)['progress']['cur_nimg']
    except formats.CheckpointError as err:
        raise click.ClickException(str(err)) from None
    if cur_nimg >= config.kimg * 1000:
        print(f'{prefix} {run_dir} has reached {config.kimg:g} kimg already ({resume_state}); nothing left to train')
        return run_dir, None
    print(f'{prefix} continuing {run_dir} from {resume_state} at {cur_nimg / 1000:g} kimg')
    try:
        continued = _continued_config(resume_state, cfg_given=False, overrides=options, generator=generator).validate()
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    return run_dir, _checked_start(continued.replace(device=_resolve_device(continued.device, continued.gpus)))


if __name__ == '__main__':
    main()
