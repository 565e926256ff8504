"""The training loop of one process: networks, data, phases, EMA, ticks and snapshots.

`train.py` calls `training_loop` once per process (rank); with several processes every rank
builds the same networks, draws its own real batch slice, latents and generator labels, and the
gradients are averaged over ranks before each optimizer step (docs/method.md §9.1, §9.3).

One iteration, top to bottom:
  1. fetch this rank's real batch and split it into `batch_gpu` chunks;
  2. for each phase that is due (Gmain every iteration, Greg every `density_reg_every` when
     density_reg > 0, Dmain every iteration, Dreg every `d_reg_interval` when an R1 weight is
     > 0): draw z and (camera, pose) labels of random data set items, let only the phase's
     module take gradients, accumulate the loss over the chunks, average the gradients over the
     ranks, replace NaN/inf, step the optimizer;
  3. move the EMA copies of G and D toward the trained networks; cur_nimg += batch.
Every `tick` kimg (and right after the first iteration): a progress line, the statistics
(`stats.jsonl`, TensorBoard), an image snapshot every `image_snap` ticks and a network snapshot
every `snap` ticks and at the end. SIGINT or SIGTERM ends the run after the current iteration
with a final snapshot.

Rank 0 writes the files of the run directory (training/checkpoints/run_files.py), each atomically.
A resume state is self-contained (one atomic file), so an interrupted write leaves the previous
state usable; continuing from it reproduces the uninterrupted run (same data order, latents,
optimizer moments and schedules).
"""

import copy
import dataclasses
import json
import os
import random
import resource
import signal
import threading
import time

import numpy as np
import psutil
import torch

import dnnlib
from torch_utils import misc, training_stats
from training.checkpoints import formats, run_files
from training.checkpoints.atomic_files import append_line, atomic_write
from training.config import TrainingConfig
from training.data.camera_utils import flip_camera, frontal_camera
from training.data.dataset import DatasetError, PortraitDataset
from training.data.images import depth_to_uint8, image_from_uint8, mask_from_uint8, save_png, to_uint8
from training.engines.mesh_renderer import MeshRenderer
from training.loss import LossConfig, PortraitGANLoss
from training.networks import stylegan2
from training.networks.dual_discriminator import PoseAwareDualDiscriminator
from training.networks.triplane import build_generator
from training.pose_prediction import predict_real_poses
from training.schedules import ema_beta, schedule_values

NETWORK_NAMES = ('G', 'D', 'G_ema', 'D_ema')
ADAM_BETAS = (0.0, 0.99)
# A bad batch gives NaN gradients once (they are zeroed); NaN gradients in every iteration of
# several ticks in a row mean the networks themselves hold NaN or inf and cannot recover.
NONFINITE_TICKS_BEFORE_STOP = 3
RESAMPLE_FILTER = [1, 3, 3, 1]  # recorded in pose_predict_kwargs for scripts that resize with it


class TrainingDivergedError(RuntimeError):
    """The gradients stayed NaN or infinite; the message names the last good snapshot."""


class TrainingDataError(RuntimeError):
    """A training image could not be read; a final snapshot was written, and the message names the file."""


def _dataset_error_line(error: Exception) -> str:
    """The message of a DatasetError, also when a DataLoader worker re-raised it with its traceback."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    return last.split('DatasetError: ', 1)[-1]


@dataclasses.dataclass
class Progress:
    """Counters that a resume state restores, so every schedule continues where it stopped."""

    cur_nimg: int = 0  # absolute image counter (includes the stage start)
    cur_tick: int = 0
    tick_start_nimg: int = 0
    batch_idx: int = 0  # iterations since the stage started: decides which lazy phases are due
    data_batches: int = 0  # real batches this rank drew from its sampler since the stage started


@dataclasses.dataclass
class Phase:
    name: str  # 'Gmain', 'Greg', 'Dmain' or 'Dreg' (PortraitGANLoss phases)
    optimizer_name: str  # 'G' or 'D': main and reg phases share one optimizer
    params: list  # the parameters this phase trains
    interval: int  # due when batch_idx % interval == 0; also the loss gain


def training_loop(
    config: TrainingConfig, run_dir: str, rank: int = 0, world_size: int = 1, device: torch.device | str = 'cpu'
) -> dict:
    """Train according to `config`, writing into `run_dir` (rank 0 only) -> {'G', 'D', 'G_ema', 'D_ema'} at the end.

    Returns when `kimg` is reached or after a stop signal.
    With world_size > 1 the default process group must already be initialized (gloo or NCCL).
    Raises TrainingDivergedError when the gradients stay non-finite.
    """
    device = torch.device(device)
    if config.gpus != world_size:
        raise ValueError(f'the config is for {config.gpus} process(es), this run has {world_size}')
    start_time = time.time()
    is_main = rank == 0
    log = print if is_main else (lambda *args, **kwargs: None)
    _seed_all(config.seed * world_size + rank)
    set_precision_flags(config)
    training_stats.init_multiprocessing(rank, device if world_size > 1 else None)

    # Data.
    dataset = PortraitDataset(
        config.data, config.seg_data, resolution=config.generator['img_resolution'], xflip=config.mirror
    )
    training_set_kwargs = dict(
        path=config.data, seg_path=config.seg_data, resolution=dataset.resolution, xflip=config.mirror
    )
    log(
        f'Data set: {config.data} ({len(dataset)} items{" with mirrors" if config.mirror else ""}, '
        f'{dataset.resolution}x{dataset.resolution})'
    )

    # Networks: rank 0's initialization or snapshot is broadcast, so all ranks start equal.
    G, D = build_networks(config, device)
    if config.generator.get('cpu_bf16', False) and device.type == 'cpu':
        note = stylegan2.cpu_bf16_slowdown_note()
        log(note or "cpu_bf16: G's and D's convolutions run in bfloat16 (R1 in fp32)")
    G_ema, D_ema = copy.deepcopy(G).eval(), copy.deepcopy(D).eval()
    networks = dict(G=G, D=D, G_ema=G_ema, D_ema=D_ema)
    progress = Progress(cur_nimg=config.stage_start_nimg)
    progress.tick_start_nimg = progress.cur_nimg
    state = None
    if config.resume_state is not None:
        log(f'Continuing from {config.resume_state}')
        state = run_files.load_resume_state(config.resume_state)
        for name, module in networks.items():
            module.load_state_dict(state['networks'][name])
        progress = Progress(**state['progress'])
    elif config.resume is not None and is_main:
        log(f'Starting a stage at {config.stage_start_kimg:g} kimg from the networks of {config.resume}')
        _load_network_snapshot(config.resume, networks, config.trust_pickle)
    if world_size > 1:
        for module in networks.values():
            for tensor in misc.params_and_buffers(module):
                torch.distributed.broadcast(tensor, src=0)
    log(
        f'G: {_count(G)} parameters, D: {_count(D)} parameters'
        + ('' if config.train_g_pose_branch else ' (G pose branch frozen)')
    )

    # Optimizers and phases (lazy regularization, docs/method.md §7.4).
    phases, optimizers = build_phases(config, G, D)
    if state is not None:
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state['optimizers'][name])
    loss_config = LossConfig.from_training_config(config)
    loss = PortraitGANLoss(G, D, loss_config, device)

    # The data iterator starts its workers before anything renders with GL (see mesh_renderer.py).
    data_iter = iter(_data_loader(dataset, config, rank, world_size, device, skip_batches=progress.data_batches))
    try:
        # Fixed inputs of the image snapshots, and the images written before training.
        grid = _SnapshotGrid(dataset, config, device) if is_main else None
        writer = None
        if is_main:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            writer = SummaryWriter(run_dir)
            grid.save_reals(run_dir, G)
            grid.save_fakes(
                run_dir,
                'fakes_init',
                writer,
                progress.cur_nimg,
                G,
                G_ema,
                D,
                schedule_values(loss_config, progress.cur_nimg),
            )
        stats_collector = training_stats.Collector(regex='.*')
        if state is not None:
            _restore_rng(
                state['rng'],
                rank,
                world_size,
                device,
                log,
                fallback_seed=np.random.SeedSequence([config.seed, world_size, rank, progress.cur_nimg]).generate_state(
                    1
                )[0],
            )
            del state

        log(f'Training from {progress.cur_nimg / 1000:g} to {config.kimg:g} kimg...')
        tick_start_time = time.time()
        maintenance_time = tick_start_time - start_time
        nonfinite_ticks = 0  # consecutive ticks in which every iteration had non-finite gradients
        data_failure = None  # the first line of a DatasetError met while reading the training data
        data_failed = False  # whether any process met one
        schedule = schedule_values(loss_config, progress.cur_nimg)  # of the newest iteration: the snapshots use it
        tick_nonfinite = torch.ones([], dtype=torch.bool, device=device)  # kept on the device: no sync per iteration
        with _StopSignals(log) as signals:
            while True:
                # 1. Real batch. A file that does not decode stops every process after a final snapshot.
                try:
                    real_img, real_seg, real_c, real_pose = next(data_iter)
                except DatasetError as error:
                    data_failure = _dataset_error_line(error)
                data_failed = _any_rank(data_failure is not None, world_size, device)
                if not data_failed:
                    progress.data_batches += 1
                    schedule, iteration_nonfinite = train_iteration(
                        (real_img, real_seg, real_c, real_pose),
                        config,
                        dataset,
                        networks,
                        phases,
                        optimizers,
                        loss,
                        progress,
                        world_size,
                        device,
                    )
                    tick_nonfinite &= iteration_nonfinite

                stop = _any_rank(signals.received is not None, world_size, device) or data_failed
                done = progress.cur_nimg >= config.kimg * 1000 or stop
                if (
                    not done
                    and progress.cur_tick != 0
                    and progress.cur_nimg < progress.tick_start_nimg + config.tick * 1000
                ):
                    continue

                # Tick: statistics and progress line. The counters move on before the snapshots, so
                # that a resume state holds the tick schedule of the iterations that follow.
                tick = progress.cur_tick
                tick_end_time = time.time()
                stats = _collect_stats(
                    stats_collector,
                    device,
                    tick=tick,
                    kimg=progress.cur_nimg / 1000,
                    total_sec=tick_end_time - start_time,
                    sec_per_tick=tick_end_time - tick_start_time,
                    tick_kimg=(progress.cur_nimg - progress.tick_start_nimg) / 1000,
                    maintenance_sec=maintenance_time,
                )
                log(_progress_line(stats, config.kimg))
                progress.cur_tick += 1
                progress.tick_start_nimg = progress.cur_nimg
                nonfinite_ticks = nonfinite_ticks + 1 if bool(tick_nonfinite) else 0
                tick_nonfinite.fill_(True)
                if nonfinite_ticks >= NONFINITE_TICKS_BEFORE_STOP:
                    latest = run_files.latest_resume_state(run_dir)
                    raise TrainingDivergedError(
                        f'the gradients have been NaN or infinite in every iteration for {nonfinite_ticks} ticks in a '
                        f'row, up to {progress.cur_nimg / 1000:g} kimg; training stopped. '
                        + (
                            f'The last good state is {latest}: lower --glr/--dlr and continue from it with --resume.'
                            if latest
                            else 'No snapshot was written; lower --glr/--dlr.'
                        )
                    )
                if is_main:
                    _write_stats(run_dir, writer, stats, progress.cur_nimg)

                # Snapshots.
                if is_main and config.image_snap > 0 and (done or tick % config.image_snap == 0):
                    grid.save_fakes(
                        run_dir,
                        f'fakes{progress.cur_nimg // 1000:06d}',
                        writer,
                        progress.cur_nimg,
                        G,
                        G_ema,
                        D,
                        schedule,
                    )
                if nonfinite_ticks > 0 and (done or (config.snap > 0 and tick % config.snap == 0)):
                    log(
                        'Network snapshot skipped: non-finite gradients throughout this tick (the previous snapshot '
                        'stays the newest)'
                    )
                elif done or (config.snap > 0 and tick % config.snap == 0):
                    if world_size > 1:
                        # Running averages (the mapping's w_avg) follow each rank's own latents and are
                        # saved from rank 0; everything else must agree exactly.
                        for module in networks.values():
                            misc.check_ddp_consistency(module, ignore_regex=r'.*\.[^.]+_(avg|ema)')
                    rng_states = _gather_rng_states(world_size, device)
                    if is_main:
                        _save_network_snapshot(
                            run_dir, config, networks, optimizers, progress, rng_states, training_set_kwargs, schedule
                        )
                    if config.metrics:
                        _run_metrics(
                            config,
                            run_dir,
                            progress.cur_nimg,
                            networks,
                            training_set_kwargs,
                            schedule,
                            rank,
                            world_size,
                            device,
                            log,
                        )
                if writer is not None:
                    writer.flush()
                tick_start_time = time.time()
                maintenance_time = tick_start_time - tick_end_time
                if done:
                    break

        if writer is not None:
            writer.close()
        if data_failed:
            raise TrainingDataError(
                f'{data_failure or "another training process could not read a training image (its message names it)"}; '
                f'training stopped at {progress.cur_nimg / 1000:g} kimg with a final snapshot: fix the data set and '
                f'continue with python train.py --resume {run_dir}'
            )
        if signals.received is not None:
            log(
                f'Stopped by {signals.received} at {progress.cur_nimg / 1000:g} kimg. Continue with: '
                f'python train.py --resume {run_dir}'
            )
        else:
            log('Done.')
        return networks
    finally:
        # Stops the DataLoader's workers now, also when a traceback keeps this frame alive: they ignore
        # SIGTERM, so a leaked one would block the interpreter's exit, which joins its child processes.
        del data_iter


def set_precision_flags(config: TrainingConfig) -> None:
    """torch's process-wide cuDNN benchmarking and TF32 switches as the config says.

    TF32 is off unless --allow-tf32 true: it changes the GAN's numerics (docs/method.md §9.1).
    """
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
    torch.backends.cudnn.allow_tf32 = config.allow_tf32


def accumulate_phase(loss: PortraitGANLoss, phase: Phase, chunks: list, schedule: dict) -> None:
    """The gradients of one phase over this process's batch, accumulated chunk by chunk into the phase's parameters.

    chunks: the batch split into chunks of batch_gpu items, each the arguments of
    `PortraitGANLoss.accumulate_gradients` (real_img, real_seg, real_c, real_pose, gen_z, gen_c, gen_pose).
    Each chunk's loss (a mean over its items) is weighted by its share of the batch, so the result is the
    gradient of the mean over the whole batch (times the phase's interval), whatever batch_gpu is. Only the
    minibatch-std groups of D and the 'marginal' pose prior see one chunk at a time.
    """
    total = sum(len(chunk[0]) for chunk in chunks)
    for param in phase.params:
        param.requires_grad_(True)
    for chunk in chunks:
        loss.accumulate_gradients(phase.name, *chunk, gain=phase.interval * len(chunk[0]) / total, schedule=schedule)
    for param in phase.params:
        param.requires_grad_(False)


def train_iteration(
    real_batch: tuple,
    config: TrainingConfig,
    dataset: PortraitDataset,
    networks: dict,
    phases: list,
    optimizers: dict,
    loss: PortraitGANLoss,
    progress: Progress,
    world_size: int,
    device: torch.device,
) -> tuple[dict, torch.Tensor]:
    """One iteration on this rank's fetched real batch: the due phases with their optimizer steps, the EMA, the counters.

    real_batch: (images uint8 [b, 3, S, S], masks uint8 [b, 1, S, S], cameras [b, 25], poses [b, 6]) as the
    data loader gives them, b = batch_per_process, split here into chunks of batch_gpu whose gradients add up.
    -> (the schedule values of the iteration, bool tensor [] on `device`: whether a phase had non-finite
    gradients). Reads no tensor value on the host (tests/test_host_syncs.py), so that a GPU is never left idle.
    """
    G, D = networks['G'], networks['D']
    real_img, real_seg, real_c, real_pose = real_batch
    real_img = image_from_uint8(real_img, device).split(config.batch_gpu)
    real_seg = mask_from_uint8(real_seg, device).split(config.batch_gpu)
    real_c = real_c.to(device).split(config.batch_gpu)
    real_pose = real_pose.to(device).split(config.batch_gpu)

    # Phases, with the schedule values of this iteration.
    schedule = schedule_values(loss.config, progress.cur_nimg)
    iteration_nonfinite = torch.zeros([], dtype=torch.bool, device=device)
    for phase in phases:
        if progress.batch_idx % phase.interval != 0:
            continue
        gen_z = torch.randn([config.batch_per_process, G.z_dim], device=device).split(config.batch_gpu)
        gen_c, gen_pose = (
            x.split(config.batch_gpu) for x in _sample_generator_labels(dataset, config.batch_per_process, device)
        )
        optimizer = optimizers[phase.optimizer_name]
        optimizer.zero_grad(set_to_none=True)
        accumulate_phase(
            loss, phase, list(zip(real_img, real_seg, real_c, real_pose, gen_z, gen_c, gen_pose)), schedule
        )
        iteration_nonfinite |= ~_average_gradients(phase.params, world_size)
        optimizer.step()

    # EMA and counters.
    beta = ema_beta(config.batch, config.ema_kimg, config.ema_rampup, progress.cur_nimg)
    _update_ema(networks['G_ema'], G, beta)
    _update_ema(networks['D_ema'], D, beta)
    progress.cur_nimg += config.batch
    progress.batch_idx += 1
    return schedule, iteration_nonfinite


# ------------------------------------------------------------------------------------------------
# Construction.


def build_networks(config: TrainingConfig, device: torch.device) -> tuple:
    """The trained G and D of the config, on `device`, in training mode, not taking gradients."""
    G = build_generator({'generator': config.generator})
    D = PoseAwareDualDiscriminator(
        c_dim=G.c_dim,
        pose_dim=G.pose_dim,
        img_resolution=G.img_resolution,
        img_channels=G.img_channels,
        channel_base=config.d_channel_base,
        channel_max=config.d_channel_max,
        num_fp16_res=config.d_num_fp16_res,
        conv_clamp=256 if config.d_num_fp16_res > 0 else None,
        mbstd_group_size=config.mbstd_group,
        freeze_layers=config.freezed,
        disc_c_noise=config.disc_c_noise,
        mirror_camera=config.d_mirror_camera,
        cpu_bf16=config.generator.get('cpu_bf16', False),
    )
    return (G.train().requires_grad_(False).to(device), D.train().requires_grad_(False).to(device))


def build_phases(config: TrainingConfig, G: torch.nn.Module, D: torch.nn.Module) -> tuple:
    """-> (phases in execution order: G's, then D's, as published; {'G': Adam, 'D': Adam}).

    A network with a lazy regularization phase every k iterations steps k + 1 times per k
    iterations, so its learning rate and betas are scaled by k / (k + 1) (docs/method.md §7.4).
    """
    g_params = [
        param
        for name, param in G.named_parameters()
        if config.train_g_pose_branch or not name.startswith('pose_branch.')
    ]
    phases, optimizers = [], {}
    for name, params, lr, reg_interval in (
        ('G', g_params, config.glr, config.g_reg_interval),
        ('D', list(D.parameters()), config.dlr, config.r1_interval),
    ):
        ratio = 1.0 if reg_interval is None else reg_interval / (reg_interval + 1)
        optimizers[name] = torch.optim.Adam(params, lr=lr * ratio, betas=tuple(b**ratio for b in ADAM_BETAS), eps=1e-8)
        phases.append(Phase(f'{name}main', name, params, 1))
        if reg_interval is not None:
            phases.append(Phase(f'{name}reg', name, params, reg_interval))
    return phases, optimizers


class _SkipSampler(torch.utils.data.Sampler):
    """The first `skip` indices of a sampler dropped, so a continued run draws the batches that come next."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int):
        super().__init__()
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        iterator = iter(self.sampler)
        for _ in range(self.skip):
            next(iterator)
        return iterator


def _ignore_stop_signals(worker_id: int) -> None:
    # Workers are stopped by their training process; a Ctrl-C that reaches the whole process
    # group must not kill them while the training process writes its final snapshot.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _data_loader(
    dataset: PortraitDataset,
    config: TrainingConfig,
    rank: int,
    world_size: int,
    device: torch.device,
    skip_batches: int,
) -> torch.utils.data.DataLoader:
    """This rank's endless stream of real batches of batch_per_process items."""
    sampler = misc.InfiniteSampler(dataset, rank=rank, num_replicas=world_size, seed=config.seed)
    return torch.utils.data.DataLoader(
        dataset,
        sampler=_SkipSampler(sampler, skip_batches * config.batch_per_process),
        batch_size=config.batch_per_process,
        num_workers=config.workers,
        pin_memory=device.type == 'cuda',
        prefetch_factor=2 if config.workers > 0 else None,
        worker_init_fn=_ignore_stop_signals,
        # Its own generator: creating the iterator must not draw from the global RNG that a
        # resume state restores.
        generator=torch.Generator().manual_seed(config.seed),
    )


# ------------------------------------------------------------------------------------------------
# One iteration.


def _sample_generator_labels(dataset: PortraitDataset, count: int, device: torch.device) -> tuple:
    """Cameras and coarse poses of random data set items (one item gives both) -> c [count, 25], pose [count, 6]."""
    indices = np.random.randint(len(dataset), size=count)
    c = np.stack([dataset.get_label(idx) for idx in indices])
    pose = np.stack([dataset.get_pose(idx) for idx in indices])
    return torch.from_numpy(c).to(device), torch.from_numpy(pose).to(device)


def _average_gradients(params: list, world_size: int) -> torch.Tensor:
    """Mean of the gradients over all ranks, then NaN -> 0 and inf -> +-1e5, in place.

    -> bool tensor [] on the gradients' device: whether the averaged gradients were all finite.
    """
    device = params[0].device
    params = [param for param in params if param.grad is not None]
    if not params:
        return torch.ones([], dtype=torch.bool, device=device)
    flat = torch.cat([param.grad.flatten() for param in params])
    if world_size > 1:
        torch.distributed.all_reduce(flat)
        flat /= world_size
    finite = flat.isfinite().all()
    torch.nan_to_num(flat, nan=0.0, posinf=1e5, neginf=-1e5, out=flat)
    for param, grad in zip(params, flat.split([param.numel() for param in params])):
        param.grad.copy_(grad.reshape(param.shape))
    return finite


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * model for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any rank (a signal may reach only one process)."""
    if world_size == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


class _StopSignals:
    """SIGINT/SIGTERM set `received` instead of ending the process; a second signal raises KeyboardInterrupt."""

    def __init__(self, log):
        self.received = None
        self._log = log
        self._previous = {}

    def __enter__(self) -> '_StopSignals':
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self._log(
            f'{self.received}: finishing this iteration, then writing a final snapshot (send it again to stop at once)'
        )

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------------
# RNG state.


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict:
    """This process's RNG states as tensors, lists and numbers (storable with weights_only)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state(device) if device.type == 'cuda' else None,
        numpy=[kind, keys.tolist(), pos, has_gauss, cached_gaussian],
        python=[version, list(internal), gauss_next],
    )


def _gather_rng_states(world_size: int, device: torch.device) -> list:
    """Every rank's RNG states, in rank order (a collective call)."""
    local = _rng_state(device)
    if world_size == 1:
        return [local]
    states = [None] * world_size
    torch.distributed.all_gather_object(states, local)
    return states


def _restore_rng(states: list, rank: int, world_size: int, device: torch.device, log, fallback_seed: int) -> None:
    """This rank's saved RNG states; `fallback_seed` when the state was saved by another number of processes."""
    if len(states) != world_size:
        log(
            f'The resume state holds the RNG states of {len(states)} processes, this run has {world_size}: '
            f'random draws are seeded afresh, so they differ from an uninterrupted run'
        )
        _seed_all(int(fallback_seed))
        return
    state = states[rank]
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and device.type == 'cuda':
        torch.cuda.set_rng_state(state['cuda'], device)
    kind, keys, pos, has_gauss, cached_gaussian = state['numpy']
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))


# ------------------------------------------------------------------------------------------------
# Snapshots and resume.


def save_network_files(run_dir: str, cur_nimg: int, networks: dict, training_set_kwargs: dict, schedule: dict) -> dict:
    """Write a network snapshot's pickle and weights file, each carrying the pose-prediction settings, and
    those settings as JSON beside them -> their paths.

    networks: {'G', 'D', 'G_ema', 'D_ema'} modules; schedule: the schedule values at `cur_nimg`
    ('rendering_resolution', 'blur_sigma').
    """
    paths = run_files.snapshot_paths(run_dir, cur_nimg)
    settings = {run_files.POSE_PREDICT_KEY: pose_predict_kwargs(schedule)}
    formats.save_network_pickle(
        paths['pkl'],
        dict(training_set_kwargs=training_set_kwargs, **networks, augment_pipe=None, **settings),
        neural_rendering_resolution=schedule['rendering_resolution'],
    )
    formats.save_weights(
        paths['pt'],
        networks,
        extra=dict(
            training_set_kwargs=training_set_kwargs,
            cur_nimg=cur_nimg,
            neural_rendering_resolution=schedule['rendering_resolution'],
            **settings,
        ),
    )
    text = json.dumps(settings[run_files.POSE_PREDICT_KEY], indent=2)
    atomic_write(paths['json'], lambda f: f.write(text.encode()))
    return paths


def pose_predict_kwargs(schedule: dict) -> dict:
    """The settings that prepare real images for D.predict_pose at this point of the schedules.

    See docs/method.md §9.4, §9.6.
    """
    filter_2d = np.outer(RESAMPLE_FILTER, RESAMPLE_FILTER) / np.sum(RESAMPLE_FILTER) ** 2
    return dict(
        blur_sigma=float(schedule['blur_sigma']),
        neural_rendering_resolution=int(schedule['rendering_resolution']),
        resample_filter=filter_2d.tolist(),
        filter_mode='antialiased',
    )


def _run_metrics(
    config: TrainingConfig,
    run_dir: str,
    cur_nimg: int,
    networks: dict,
    training_set_kwargs: dict,
    schedule: dict,
    rank: int,
    world_size: int,
    device: torch.device,
    log,
) -> None:
    """The configured metrics of a network snapshot, on every rank (docs/method.md §9.4): G_ema, and the snapshot's D.

    Results are appended to run_dir/metric-{name}.jsonl by rank 0. The random state is forked, so
    a run with metrics trains exactly as one without.
    """
    from metrics import metric_main, metric_utils

    opts = metric_utils.MetricOptions(
        G=networks['G_ema'],
        D=networks['D'],
        dataset_kwargs=training_set_kwargs,
        pose_predict_kwargs=pose_predict_kwargs(schedule),
        metric_pose_sample_mode=config.metric_pose_sample_mode,
        num_gpus=world_size,
        rank=rank,
        device=device,
    )
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        for name in config.metrics:
            result = metric_main.calc_metric(name, opts)
            if rank == 0:
                metric_main.report_metric(result, run_dir, run_files.snapshot_paths(run_dir, cur_nimg)['pkl'])
                log(metric_main.format_results(result))


def _save_network_snapshot(
    run_dir: str,
    config: TrainingConfig,
    networks: dict,
    optimizers: dict,
    progress: Progress,
    rng_states: list,
    training_set_kwargs: dict,
    schedule: dict,
) -> None:
    """Write the pickle, the weights file, the pose-prediction settings and the resume state."""
    paths = save_network_files(run_dir, progress.cur_nimg, networks, training_set_kwargs, schedule)
    # Written last: a resume state implies that its snapshot files are complete.
    state = dict(
        format=run_files.RESUME_FORMAT,
        version=run_files.RESUME_VERSION,
        config_json=config.to_json(),
        progress=dataclasses.asdict(progress),
        networks={name: module.state_dict() for name, module in networks.items()},
        optimizers={name: optimizer.state_dict() for name, optimizer in optimizers.items()},
        rng=rng_states,
    )
    atomic_write(paths['resume'], lambda f: torch.save(state, f))
    run_files.remove_older_resume_states(run_dir, keep=paths['resume'])


def _load_network_snapshot(path: str, networks: dict, trust_pickle: bool = False) -> None:
    """Copy G, D, G_ema, D_ema by parameter name from a network pickle or weights file (docs/method.md §9.5).

    A network the snapshot lacks is copied from its twin: D_ema from D (published snapshots keep no
    D average), G and D from G_ema and D_ema (a weights file made for inference keeps only those).
    """
    snapshot = formats.load_any(path, trust_pickle=trust_pickle)
    twins = {'G': 'G_ema', 'G_ema': 'G', 'D': 'D_ema', 'D_ema': 'D'}
    for name, module in networks.items():
        source = snapshot.get(name)
        if source is None:
            source = snapshot.get(twins[name])
        if source is None:
            print(f'  {path} has no {name}: it keeps its initialization')
            continue
        missing = misc.copy_params_and_buffers(source, module)
        if missing:
            print(
                f'  {name}: {len(missing)} tensor(s) not in the snapshot keep their initialization: '
                f'{", ".join(missing[:5])}{" ..." if len(missing) > 5 else ""}'
            )


# ------------------------------------------------------------------------------------------------
# Statistics and image snapshots.


def _collect_stats(
    collector: training_stats.Collector,
    device: torch.device,
    tick: int,
    kimg: float,
    total_sec: float,
    sec_per_tick: float,
    tick_kimg: float,
    maintenance_sec: float,
) -> dict:
    """Report this tick's progress, timing and memory, then collect everything reported since the last tick."""
    training_stats.report0('Progress/tick', tick)
    training_stats.report0('Progress/kimg', kimg)
    training_stats.report0('Timing/total_sec', total_sec)
    training_stats.report0('Timing/sec_per_tick', sec_per_tick)
    # A tick cut short before its first iteration (a stop) trained no images.
    training_stats.report0('Timing/sec_per_kimg', sec_per_tick / tick_kimg if tick_kimg > 0 else 0.0)
    training_stats.report0('Timing/maintenance_sec', maintenance_sec)
    training_stats.report0('Resources/cpu_mem_gb', psutil.Process().memory_info().rss / 2**30)
    training_stats.report0('Resources/peak_cpu_mem_gb', _peak_rss_bytes() / 2**30)
    if device.type == 'cuda':
        training_stats.report0('Resources/peak_gpu_mem_gb', torch.cuda.max_memory_allocated(device) / 2**30)
        torch.cuda.reset_peak_memory_stats(device)
    collector.update()
    return collector.as_dict()


def _progress_line(stats: dict, total_kimg: float) -> str:
    """'tick 3 kimg 1.500 time 10m 02s sec/kimg 600.0 eta ... maint ... cpumem ... G_loss ... D_loss ...'"""

    def mean(name):
        return stats[name].mean

    eta = (total_kimg - mean('Progress/kimg')) * mean('Timing/sec_per_kimg')
    fields = [
        f'tick {int(mean("Progress/tick")):<5d}',
        f'kimg {mean("Progress/kimg"):<9.3f}',
        f'time {dnnlib.util.format_time(mean("Timing/total_sec")):<12s}',
        f'sec/kimg {mean("Timing/sec_per_kimg"):<8.1f}',
        f'eta {dnnlib.util.format_time(eta):<12s}',
        f'maint {mean("Timing/maintenance_sec"):<6.1f}',
        f'cpumem {mean("Resources/cpu_mem_gb"):<5.2f}',
    ]
    if 'Resources/peak_gpu_mem_gb' in stats:
        fields.append(f'gpumem {mean("Resources/peak_gpu_mem_gb"):<5.2f}')
    fields += [
        f'{name.split("/")[1]}_loss {mean(name):<7.3f}' for name in ('Loss/G/loss', 'Loss/D/loss') if name in stats
    ]
    return ' '.join(fields)


def _write_stats(run_dir: str, writer, stats: dict, cur_nimg: int) -> None:
    """Append one line to stats.jsonl and the means to TensorBoard (step = images seen)."""
    record = {name: dict(value) for name, value in stats.items()}
    record['timestamp'] = time.time()
    append_line(os.path.join(run_dir, 'stats.jsonl'), json.dumps(record))
    for name, value in stats.items():
        writer.add_scalar(name, value.mean, global_step=cur_nimg)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _count(module: torch.nn.Module) -> str:
    return f'{sum(p.numel() for p in module.parameters()):,}'


def _save_grid(path: str, images: np.ndarray, cols: int, writer=None, tag: str | None = None, step: int = 0) -> None:
    """Tile uint8 [N, H, W, C] row by row, `cols` wide, into a PNG (and a TensorBoard image)."""
    count, height, width, channels = images.shape
    rows = -(-count // cols)
    canvas = np.zeros([rows * height, cols * width, channels], dtype=np.uint8)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        canvas[row * height : (row + 1) * height, col * width : (col + 1) * width] = image
    save_png(path, canvas)
    if writer is not None:
        writer.add_image(tag, canvas, global_step=step, dataformats='HWC')


class _SnapshotGrid:
    """The fixed latents, cameras and real images of the image snapshots (rank 0 only).

    Fakes come in pairs side by side: one latent seen from a data set camera and from its mirror.
    Real images are shown with the mesh posed by D's pose prediction laid over them.
    """

    def __init__(self, dataset: PortraitDataset, config: TrainingConfig, device: torch.device):
        cols, rows = config.snapshot_grid
        rng = np.random.RandomState(config.seed)  # its own RNG: snapshots must not move the training draws
        pairs = cols * rows // 2
        indices = rng.randint(len(dataset), size=pairs)
        camera = torch.from_numpy(np.stack([dataset.get_label(idx) for idx in indices]))
        self.cols = cols
        self.z = torch.from_numpy(rng.randn(pairs, config.generator['z_dim'])).to(torch.float32)
        self.z = self.z.repeat_interleave(2, dim=0).to(device)
        self.c = torch.stack([camera, flip_camera(camera)], dim=1).flatten(0, 1).to(device)
        # D's minibatch-std groups need whole chunks of batch_gpu real images.
        num_reals = max(config.batch_gpu, cols * rows // config.batch_gpu * config.batch_gpu)
        real_indices = rng.randint(len(dataset), size=num_reals)
        items = [dataset[idx] for idx in real_indices]
        self.real_img = torch.from_numpy(np.stack([item[0] for item in items])).to(device)
        self.real_seg = torch.from_numpy(np.stack([item[1] for item in items])).to(device)
        self.real_c = torch.from_numpy(np.stack([item[2] for item in items])).to(device)
        self.real_pose = torch.from_numpy(np.stack([item[3] for item in items])).to(device)
        self.chunk = config.batch_gpu
        self.device = device
        self.renderer = MeshRenderer()
        try:
            self.renderer.gl_renderer  # creates the GL context now, after the data loader's workers started
        except RuntimeError as error:  # no headless GL here: the snapshots go on without mesh overlays
            print(f'Pose overlays left out of the image snapshots: {error}')
            self.renderer = None

    def _overlay(
        self, images: torch.Tensor, poses: torch.Tensor, cameras: torch.Tensor, G: torch.nn.Module
    ) -> np.ndarray | None:
        """images uint8 [N, 3, H, W], poses [N, 6], cameras [N, 25] -> uint8 [N, H, W, 3] with the posed mesh, or None."""
        if self.renderer is None:
            return None
        body = G.deformer.body_model
        vertices = body.pose(poses.to(torch.float32)).cpu().numpy()
        faces = body.faces.cpu().numpy()
        pictures = images.permute(0, 2, 3, 1).cpu().numpy()
        return np.stack(
            [
                self.renderer.overlay(picture, v, faces, c.cpu().numpy())
                for picture, v, c in zip(pictures, vertices, cameras)
            ]
        )

    @torch.no_grad()
    def save_reals(self, run_dir: str, G: torch.nn.Module) -> None:
        """reals.png, segs.png and mesh_coarse_real_pose.png (the data set's coarse poses over the reals)."""
        _save_grid(os.path.join(run_dir, 'reals.png'), self.real_img.permute(0, 2, 3, 1).cpu().numpy(), self.cols)
        _save_grid(os.path.join(run_dir, 'segs.png'), self.real_seg.permute(0, 2, 3, 1).cpu().numpy(), self.cols)
        overlay = self._overlay(self.real_img, self.real_pose, self.real_c, G)
        if overlay is not None:
            _save_grid(os.path.join(run_dir, 'mesh_coarse_real_pose.png'), overlay, self.cols)

    @torch.no_grad()
    def save_fakes(
        self,
        run_dir: str,
        name: str,
        writer,
        step: int,
        G: torch.nn.Module,
        G_ema: torch.nn.Module,
        D: torch.nn.Module,
        schedule: dict,
    ) -> None:
        """{name}_0.png SR, _1_no_pose.png canonical SR, _2_raw.png, _3_no_pose_raw.png, _4_depth.png,
        _5_no_pose_depth.png, _6_real_pose.png (D's predicted poses over the reals).

        G_ema renders are conditioned on the frontal camera and zero pose and posed by the training
        G's pose branch (docs/method.md §9.4); no sample jitter and constant noise, so snapshots are comparable.
        """
        r = schedule['rendering_resolution']
        outputs = {key: [] for key in ('image', 'image_raw', 'image_depth', 'no_pose', 'no_pose_raw', 'no_pose_depth')}
        # The snapshot runs between iterations; forking the RNG keeps the training draws identical
        # whether or not a snapshot happened (and so a continued run equal to an uninterrupted one).
        with torch.random.fork_rng(devices=[self.device] if self.device.type == 'cuda' else []):
            for z, c in zip(self.z.split(self.chunk), self.c.split(self.chunk)):
                pose = G.get_pose_params(z, c)
                ws = G_ema.mapping(z, frontal_camera(len(z), device=self.device), torch.zeros_like(pose))
                posed = G_ema.synthesis(
                    ws, c, neural_rendering_resolution=r, pose_params=pose, noise_mode='const', deterministic=True
                )
                canonical = G_ema.synthesis(
                    ws, c, neural_rendering_resolution=r, noise_mode='const', deterministic=True
                )
                for key in ('image', 'image_raw', 'image_depth'):
                    outputs[key].append(posed[key])
                    outputs[key.replace('image', 'no_pose')].append(canonical[key])
            real_poses = predict_real_poses(
                D,
                image_from_uint8(self.real_img),
                mask_from_uint8(self.real_seg),
                self.real_c,
                pose_predict_kwargs(schedule),
                batch=self.chunk,
            )
        out = {key: torch.cat(value) for key, value in outputs.items()}
        for suffix, key in (
            ('0', 'image'),
            ('1_no_pose', 'no_pose'),
            ('2_raw', 'image_raw'),
            ('3_no_pose_raw', 'no_pose_raw'),
        ):
            _save_grid(
                os.path.join(run_dir, f'{name}_{suffix}.png'),
                to_uint8(out[key], -1, 1),
                self.cols,
                writer,
                f'Images/{suffix}',
                step,
            )
        for suffix, key in (('4_depth', 'image_depth'), ('5_no_pose_depth', 'no_pose_depth')):
            _save_grid(
                os.path.join(run_dir, f'{name}_{suffix}.png'),
                depth_to_uint8(out[key]),
                self.cols,
                writer,
                f'Images/{suffix}',
                step,
            )
        overlay = self._overlay(self.real_img, real_poses, self.real_c, G)
        if overlay is not None:
            _save_grid(
                os.path.join(run_dir, f'{name}_6_real_pose.png'), overlay, self.cols, writer, 'Images/6_real_pose', step
            )
