"""End-to-end runs of training/training_loop.py on a tiny network and a 16-image synthetic set.

The strongest check: a run that stops after one iteration and is continued from its resume state
ends with exactly the networks and optimizer moments of a run that trained straight through.
Also: snapshot files load, a process killed while writing a resume state leaves the previous
one usable and continuable with train.py, two gloo processes hold identical parameters and stop
together when one of them gets SIGTERM, and persistent NaN losses stop the run.
"""

import copy
import glob
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import pytest
import torch

from benchmarks.training_step import random_chunk
from tests.tiny_run import BATCH, tiny_setup
from torch_utils import training_stats
from training.checkpoints import formats
from training.config import TrainingConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """-> (preset path, TrainingConfig of one process) on a 16-image 32 px synthetic set."""
    return tiny_setup(str(tmp_path_factory.mktemp('tiny')))


def _run(config: TrainingConfig, run_dir: str) -> dict:
    from training.training_loop import training_loop

    os.makedirs(run_dir, exist_ok=True)
    return training_loop(config, run_dir)


def _resume_state(run_dir: str) -> dict:
    from training.checkpoints.run_files import latest_resume_state, load_resume_state

    path = latest_resume_state(run_dir)
    assert path is not None, f'no resume state in {run_dir}: {os.listdir(run_dir)}'
    return load_resume_state(path)


def _stats(run_dir: str) -> list:
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return [json.loads(line) for line in f]


def _assert_same_tensors(a, b, where=''):
    """Nested dicts/lists of tensors and numbers are exactly equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f'{where}[{index}]')
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f'{where} differs: max |a - b| = {(a.double() - b.double()).abs().max()}'
    else:
        assert a == b, where


@pytest.mark.slow
def test_continued_run_equals_uninterrupted_run(tiny, tmp_path):
    _, config = tiny
    straight = str(tmp_path / 'straight')
    first, second = str(tmp_path / 'first'), str(tmp_path / 'second')
    _run(config.replace(kimg=3 * BATCH / 1000), straight)
    _run(config.replace(kimg=1 * BATCH / 1000), first)

    # The stopped run's snapshot: every file loads, and the resume state holds the counters.
    for path in ('network-snapshot-000000.pkl', 'network-snapshot-000000.pt'):
        modules = formats.load_any(os.path.join(first, path))
        assert {'G', 'D', 'G_ema', 'D_ema', 'training_set_kwargs'} <= set(modules)
        assert modules['G_ema'].img_resolution == 32
    with open(os.path.join(first, 'pose_predict_kwargs-000000.json')) as f:
        pose_kwargs = json.load(f)
    assert pose_kwargs['neural_rendering_resolution'] == 16 and pose_kwargs['filter_mode'] == 'antialiased'
    assert pose_kwargs['blur_sigma'] > 0 and len(pose_kwargs['resample_filter']) == 4
    assert glob.glob(os.path.join(first, 'fakes_init_*.png')) and os.path.isfile(os.path.join(first, 'reals.png'))
    stopped = _resume_state(first)
    assert stopped['progress']['cur_nimg'] == BATCH and stopped['progress']['batch_idx'] == 1
    losses = [line[name]['mean'] for line in _stats(first) for name in ('Loss/G/loss', 'Loss/D/loss')]
    assert losses and all(map(lambda v: v == v and abs(v) < float('inf'), losses))

    # Continue to the straight run's end. batch_idx 1 is not a Dreg iteration (interval 2): a
    # counter restarted at 0 would add an R1 step and change the networks.
    from training.checkpoints.run_files import latest_resume_state

    _run(config.replace(kimg=3 * BATCH / 1000, resume_state=latest_resume_state(first)), second)
    assert _stats(second)[0]['Progress/kimg']['mean'] == pytest.approx(2 * BATCH / 1000)
    expected, continued = _resume_state(straight), _resume_state(second)
    assert continued['progress'] == expected['progress']
    _assert_same_tensors(continued['networks'], expected['networks'], 'networks')
    _assert_same_tensors(continued['optimizers'], expected['optimizers'], 'optimizers')
    # Training moved the networks, so the equality above is not that of two untouched copies.
    assert not torch.equal(
        expected['networks']['G']['backbone.b4.const'], stopped['networks']['G']['backbone.b4.const']
    )


KILL_DURING_SECOND_RESUME_STATE = r"""
import os, signal, sys
import torch
sys.path.insert(0, sys.argv[3])
torch.set_num_threads(2)
import training.training_loop as loop
from training.checkpoints import run_files
from training.config import TrainingConfig

real_save = torch.save
written = []

def save_then_die(obj, file, *args, **kwargs):
    # The second resume state dies half written, as under SIGKILL or a power cut.
    if isinstance(obj, dict) and obj.get('format') == run_files.RESUME_FORMAT:
        written.append(obj['progress']['cur_nimg'])
        if len(written) == 2:
            file.write(b'PK\x03\x04 half of a resume state')
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, file, *args, **kwargs)

torch.save = save_then_die
with open(sys.argv[1]) as f:
    config = TrainingConfig.from_json(f.read())
loop.training_loop(config, sys.argv[2])
"""


@pytest.mark.slow
def test_kill_during_snapshot_write_leaves_previous_state(tiny, tmp_path):
    preset_path, config = tiny
    run_dir = str(tmp_path / 'killed')
    os.makedirs(run_dir)
    options = tmp_path / 'options.json'
    options.write_text(config.replace(kimg=2 * BATCH / 1000, workers=0).to_json())
    result = subprocess.run(
        [sys.executable, '-c', KILL_DURING_SECOND_RESUME_STATE, str(options), run_dir, REPO],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    # The half-written file stays under its temporary name; the state of the first tick is intact.
    assert glob.glob(os.path.join(run_dir, '.resume-state-000000.pt.*.tmp'))
    state = _resume_state(run_dir)
    assert state['progress']['cur_nimg'] == BATCH
    formats.load_any(os.path.join(run_dir, 'network-snapshot-000000.pkl'))

    # train.py continues from the run directory into a new run directory at the stored counter,
    # here with two gloo processes instead of one.
    outdir = str(tmp_path / 'runs')
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, 'train.py'),
            '--resume',
            run_dir,
            '--kimg',
            str(2 * BATCH / 1000),
            '--outdir',
            outdir,
            '--workers',
            '0',
            '--gpus',
            '2',
            '--batch-gpu',
            '2',
            '--mbstd-group',
            '2',
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (continued,) = glob.glob(os.path.join(outdir, '*'))
    assert os.path.basename(continued) == '00000-tiny-data-gpus2-batch4-gamma1'
    assert _stats(continued)[0]['Progress/kimg']['mean'] == pytest.approx(2 * BATCH / 1000)
    assert _resume_state(continued)['progress']['cur_nimg'] == 2 * BATCH
    with open(os.path.join(continued, 'log.txt')) as f:
        log = f.read()
    assert 'Continuing from' in log and 'RNG states of 1 processes, this run has 2' in log


def _rank_main(rank: int, world_size: int, config_json: str, run_dir: str, init_file: str, out_dir: str) -> None:
    """One of the test's gloo processes: train, then dump this rank's networks."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    from training.training_loop import training_loop

    networks = training_loop(TrainingConfig.from_json(config_json), run_dir, rank=rank, world_size=world_size)
    torch.save(
        {name: module.state_dict() for name, module in networks.items()}, os.path.join(out_dir, f'rank{rank}.pt')
    )
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_stay_identical_and_stop_together(tiny, tmp_path):
    _, config = tiny
    config = config.replace(gpus=2, batch_gpu=2, mbstd_group=2, workers=0, kimg=1.0, snap=100)
    run_dir, out_dir = str(tmp_path / 'run'), str(tmp_path / 'out')
    os.makedirs(run_dir)
    os.makedirs(out_dir)
    with tempfile.TemporaryDirectory() as temp_dir:
        context = torch.multiprocessing.spawn(
            _rank_main,
            args=(2, config.to_json(), run_dir, os.path.join(temp_dir, 'init'), out_dir),
            nprocs=2,
            join=False,
        )
        stats_path = os.path.join(run_dir, 'stats.jsonl')
        deadline = time.time() + 300
        while (
            not os.path.exists(stats_path) and time.time() < deadline and all(p.is_alive() for p in context.processes)
        ):
            time.sleep(0.2)
        assert os.path.exists(stats_path), 'the first tick never came'
        # A signal that reaches one rank only: both must stop after the same iteration (a rank
        # that stopped alone would leave the other waiting in its next all-reduce).
        os.kill(context.processes[1].pid, signal.SIGTERM)
        try:
            while not context.join(timeout=max(deadline - time.time(), 1)):
                assert time.time() < deadline, 'the two processes did not stop together'
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
    rank0 = torch.load(os.path.join(out_dir, 'rank0.pt'), weights_only=True)
    rank1 = torch.load(os.path.join(out_dir, 'rank1.pt'), weights_only=True)
    # The mapping's running average of w follows each rank's own latents (snapshots keep rank
    # 0's); every parameter and every other buffer is identical.
    for name in ('G', 'G_ema'):
        for networks in (rank0, rank1):
            del networks[name]['mapping_network.w_avg']
    _assert_same_tensors(rank0, rank1, 'rank 0 vs rank 1')
    state = _resume_state(run_dir)
    assert BATCH <= state['progress']['cur_nimg'] < 1000
    for name in ('G', 'G_ema'):
        del state['networks'][name]['mapping_network.w_avg']
    _assert_same_tensors(state['networks'], rank0, 'final snapshot vs rank 0')
    assert len(state['rng']) == 2 and not torch.equal(state['rng'][0]['torch'], state['rng'][1]['torch'])
    # Both ranks' losses are in the statistics: each reports its half of the batch.
    assert _stats(run_dir)[0]['Loss/G/loss']['num'] == BATCH


@pytest.mark.slow
def test_persistent_nan_gradients_stop_the_run(tiny, tmp_path, monkeypatch):
    from training import training_loop as loop

    _, config = tiny
    chunks_per_phase = config.batch // config.batch_gpu
    gmain_calls = []

    def nan_after_first_iteration(self, phase, *args, **kwargs):
        gmain_calls.extend([phase] if phase == 'Gmain' else [])
        module = self.G if phase.startswith('G') else self.D
        for param in module.parameters():
            if param.requires_grad:
                param.grad = torch.full_like(param, float('nan') if len(gmain_calls) > chunks_per_phase else 0.0)

    monkeypatch.setattr(loop.PortraitGANLoss, 'accumulate_gradients', nan_after_first_iteration)
    monkeypatch.setattr(training_stats, '_registry', training_stats._Registry())
    run_dir = str(tmp_path / 'nan')
    with pytest.raises(
        loop.TrainingDivergedError,
        match=r'NaN or infinite in every iteration for 3 ticks.*'
        r'resume-state-000000\.pt',
    ):
        _run(config.replace(kimg=1.0, snap=1, workers=0), run_dir)
    # Ticks 1-3 had NaN gradients: their snapshots were skipped, so tick 0's state stays the newest,
    # and the sanitized (zeroed) gradients left the networks finite.
    state = _resume_state(run_dir)
    assert state['progress']['cur_nimg'] == BATCH
    assert all(tensor.isfinite().all() for tensor in state['networks']['G'].values() if tensor.is_floating_point())


@pytest.mark.parametrize('stored', [('G', 'D', 'G_ema'), ('G_ema', 'D_ema')])
def test_stage_start_loads_the_snapshot_networks(tiny, tmp_path, stored):
    """docs/method.md §9.5: the networks by name; a missing one from its twin (D_ema from D as in a
    published pickle; G and D from G_ema and D_ema as in an exported weights file)."""
    from training.training_loop import _load_network_snapshot, build_networks

    _, config = tiny
    torch.manual_seed(1)
    G, D = build_networks(config, torch.device('cpu'))
    trained = dict(G=G, D=D, G_ema=G, D_ema=D)
    path = str(tmp_path / 'network-snapshot-000001.pkl')
    formats.save_network_pickle(path, {**{name: trained[name] for name in stored}, 'training_set_kwargs': {}})
    torch.manual_seed(2)
    G2, D2 = build_networks(config, torch.device('cpu'))
    networks = dict(G=G2, D=D2, G_ema=copy.deepcopy(G2), D_ema=copy.deepcopy(D2))
    assert not torch.equal(G.backbone.b4.const, G2.backbone.b4.const)
    _load_network_snapshot(path, networks)
    for name, source in trained.items():
        _assert_same_tensors(networks[name].state_dict(), source.state_dict(), name)


@pytest.mark.slow
def test_new_stage_counts_from_its_start(tiny, tmp_path):
    from training.training_loop import build_networks

    _, config = tiny
    G, D = build_networks(config, torch.device('cpu'))
    snapshot = str(tmp_path / 'network-snapshot-000006.pkl')
    formats.save_network_pickle(snapshot, dict(G=G, D=D, G_ema=G, D_ema=D, training_set_kwargs={}))
    run_dir = str(tmp_path / 'stage')
    stage = config.replace(
        resume=snapshot,
        stage_start_kimg=6.0,
        kimg=6.0 + BATCH / 1000,
        workers=0,
        neural_rendering_resolution_final=32,
        neural_rendering_resolution_fade_kimg=1.0,
    )
    _run(stage.replace(blur_init_sigma=0.0), run_dir)
    assert _stats(run_dir)[0]['Progress/kimg']['mean'] == pytest.approx(6.0 + BATCH / 1000)
    with open(os.path.join(run_dir, 'pose_predict_kwargs-000006.json')) as f:
        pose_kwargs = json.load(f)
    # Blur off; the rendering resolution fades from the stage start (16 px), not from image 0 (32 px).
    assert pose_kwargs['blur_sigma'] == 0.0 and pose_kwargs['neural_rendering_resolution'] == 16


def test_image_snapshots_without_headless_gl(tiny, tmp_path, monkeypatch):
    """Without EGL the snapshots are written without the mesh overlays instead of ending the run."""
    from training.data.dataset import PortraitDataset
    from training.engines import mesh_renderer
    from training.training_loop import _SnapshotGrid, build_networks

    def no_gl(self):
        raise RuntimeError('MeshRenderer: no headless OpenGL (EGL) context')

    monkeypatch.setattr(mesh_renderer.MeshRenderer, 'gl_renderer', property(no_gl))
    _, config = tiny
    dataset = PortraitDataset(config.data, config.seg_data, xflip=True)
    grid = _SnapshotGrid(dataset, config, torch.device('cpu'))
    G, D = build_networks(config, torch.device('cpu'))
    grid.save_reals(str(tmp_path), G)
    grid.save_fakes(
        str(tmp_path),
        'fakes_init',
        None,
        0,
        G,
        copy.deepcopy(G).eval(),
        D,
        dict(rendering_resolution=16, blur_sigma=0.0),
    )
    written = sorted(os.listdir(tmp_path))
    assert 'reals.png' in written and 'fakes_init_0.png' in written and 'fakes_init_5_no_pose_depth.png' in written
    assert 'mesh_coarse_real_pose.png' not in written and 'fakes_init_6_real_pose.png' not in written


TORCHRUN_RANK = r"""
import os, sys
import torch
sys.path.insert(0, sys.argv[1])
import train
import training.training_loop as loop
from training.checkpoints import run_files

real_training_loop = loop.training_loop

def training_loop_then_dump(config, run_dir, rank=0, world_size=1, device='cpu'):
    networks = real_training_loop(config, run_dir, rank=rank, world_size=world_size, device=device)
    torch.save({name: module.state_dict() for name, module in networks.items()},
               os.path.join(os.environ['RANK_DUMP_DIR'], f'rank{rank}.pt'))
    return networks

loop.training_loop = training_loop_then_dump
train.main(sys.argv[2:])
"""


@pytest.mark.slow
def test_torchrun_two_processes_hold_identical_parameters(tiny, tmp_path):
    preset_path, config = tiny
    script = tmp_path / 'rank.py'
    script.write_text(TORCHRUN_RANK)
    dump_dir = tmp_path / 'dump'
    dump_dir.mkdir()
    outdir = str(tmp_path / 'runs')
    env = dict(os.environ, RANK_DUMP_DIR=str(dump_dir), OMP_NUM_THREADS='1')
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'torch.distributed.run',
            '--standalone',
            '--nproc_per_node=2',
            str(script),
            REPO,
            '--cfg',
            preset_path,
            '--data',
            config.data,
            '--seg_data',
            config.seg_data,
            '--gpus',
            '2',
            '--batch-gpu',
            '2',
            '--mbstd-group',
            '2',
            '--kimg',
            str(2 * BATCH / 1000),
            '--workers',
            '0',
            '--outdir',
            outdir,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (run_dir,) = glob.glob(os.path.join(outdir, '*'))
    assert _resume_state(run_dir)['progress']['cur_nimg'] == 2 * BATCH
    rank0, rank1 = (torch.load(dump_dir / f'rank{rank}.pt', weights_only=True) for rank in (0, 1))
    stored = _resume_state(run_dir)['networks']
    # The mapping's running average of w follows each rank's own latents (snapshots keep rank 0's).
    assert not torch.equal(rank0['G']['mapping_network.w_avg'], rank1['G']['mapping_network.w_avg'])
    for networks in (rank0, rank1, stored):
        for name in ('G', 'G_ema'):
            del networks[name]['mapping_network.w_avg']
    _assert_same_tensors(rank0, rank1, 'rank 0 vs rank 1')
    # What the ranks returned are the networks that rank 0 stored at the end of the run.
    _assert_same_tensors(stored, rank0, 'resume state vs rank 0')


def test_an_image_that_does_not_decode_stops_with_a_final_snapshot(tiny, tmp_path):
    # A member of the images zip is truncated; the data loader's worker meets it during the first pass.
    from training.checkpoints.run_files import latest_network_snapshot, latest_resume_state
    from training.data.dataset import PortraitDataset
    from training.training_loop import TrainingDataError

    _, config = tiny
    # An image that the image snapshots' fixed real batch (drawn as _SnapshotGrid does) leaves out,
    # so that training meets it, not the set-up before it.
    dataset = PortraitDataset(
        config.data, config.seg_data, resolution=config.generator['img_resolution'], xflip=config.mirror
    )
    rng = np.random.RandomState(config.seed)
    cols, rows = config.snapshot_grid
    rng.randint(len(dataset), size=cols * rows // 2)
    rng.randn(cols * rows // 2, config.generator['z_dim'])
    num_reals = max(config.batch_gpu, cols * rows // config.batch_gpu * config.batch_gpu)
    shown = {dataset.get_details(int(idx)).image_name for idx in rng.randint(len(dataset), size=num_reals)}
    broken = str(tmp_path / 'data.zip')
    with zipfile.ZipFile(config.data) as source, zipfile.ZipFile(broken, 'w') as target:
        victim = next(name for name in sorted(source.namelist()) if name.endswith('.png') and name not in shown)
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[:60] if name == victim else data)
    config = config.replace(data=broken, kimg=0.2, snap=100, workers=1)
    run_dir = str(tmp_path / 'run')
    with pytest.raises(TrainingDataError) as error:
        _run(config, run_dir)
    message = str(error.value)
    assert '\n' not in message and victim in message and 'cannot be decoded' in message
    assert f'--resume {run_dir}' in message
    # Nothing trained so far is lost: the final snapshot and its resume state are there.
    state = _resume_state(run_dir)
    assert 0 < state['progress']['cur_nimg'] < 200
    assert latest_network_snapshot(run_dir) is not None and latest_resume_state(run_dir) is not None
    # Its data loader's workers (which ignore SIGTERM) are gone, while the traceback still holds the loop's
    # frame: a leftover one would hang this interpreter's exit.
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize('phase_name', ['Gmain', 'Dmain', 'Dreg'])
def test_batch_gpu_accumulation_gives_the_full_batch_gradient(tiny, monkeypatch, phase_name):
    # --batch 4 as one chunk of 4 and as two chunks of 2 (--batch-gpu 2): the accumulated
    # gradient is the full batch's. Every draw is switched off (no swaps, no jitter, constant
    # noise), and the minibatch-std groups, which see one chunk at a time, have size 1. (Greg
    # draws its random points per chunk, so its two gradients are equal only in expectation.)
    # The body deformation is off (thickness 0): a sample equidistant from two faces takes either,
    # as the last bit of the posed vertices decides, and the pose branch's output rounds
    # differently at another batch size. In float64, so that rounding stays far below the tolerance.
    import functools

    from training.loss import LossConfig, PortraitGANLoss
    from training.schedules import schedule_values
    from training.training_loop import accumulate_phase, build_networks, build_phases

    _, config = tiny
    config = config.replace(mbstd_group=1, bcg_reg_prob=0.0, disc_c_noise=0.0)
    config.pose_prior_match = 'paired'
    torch.manual_seed(0)
    G, D = (network.double() for network in build_networks(config, torch.device('cpu')))
    monkeypatch.setattr(G, 'synthesis', functools.partial(G.synthesis, deterministic=True, noise_mode='const'))
    G.deformer.thickness = 0.0
    (phase,) = [phase for phase in build_phases(config, G, D)[0] if phase.name == phase_name]
    loss_config = LossConfig.from_training_config(config)
    loss = PortraitGANLoss(G, D, loss_config, 'cpu')
    schedule = dict(schedule_values(loss_config, 0), swap_prob=0.0, density_noise=0.0)
    batch = tuple(x.double() for x in random_chunk(G, BATCH, torch.Generator().manual_seed(1)))
    gradients = {}
    for batch_gpu in (BATCH, BATCH // 2):
        for param in phase.params:
            param.grad = None
        accumulate_phase(loss, phase, list(zip(*(x.split(batch_gpu) for x in batch))), schedule)
        gradients[batch_gpu] = [param.grad.clone() for param in phase.params if param.grad is not None]
    full, chunked = gradients[BATCH], gradients[BATCH // 2]
    assert len(full) == len(chunked) > 0
    norm = torch.cat([g.flatten() for g in full]).norm()
    assert norm > 0
    for a, b in zip(full, chunked):
        torch.testing.assert_close(b, a, atol=1e-10 * norm, rtol=1e-8)
