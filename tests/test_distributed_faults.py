"""Fault tolerance of multi-process training through train.py, on the tiny preset and gloo on the loopback address.

Two torchrun "nodes" on one machine make one run directory, read disjoint data and end with identical
networks; a worker killed with SIGKILL under `torchrun --max-restarts 1` is followed by a restart that
continues the same run directory from its newest resume state; an error on one rank stops every rank,
with `--gpus 2` and with torchrun, within a bounded time and with its reason on one line.

Every test runs train.py's CLI in subprocesses through DRIVER, which injects faults and records what
the ranks saw; each subprocess carries a tag in its environment, by which the test finds its processes
and kills any that are left.
"""

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import psutil
import pytest
import torch

from tests.tiny_run import BATCH, tiny_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = 'DISTRIBUTED_FAULTS_TEST_TAG'
INJECTED = 'injected failure on rank 1'

DRIVER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import train
import training.training_loop as loop
from torch_utils import distributed, misc

real_process_device = distributed.process_device
real_training_loop = loop.training_loop
real_sampler_iter = misc.InfiniteSampler.__iter__
real_accumulate_gradients = loop.PortraitGANLoss.accumulate_gradients
real_save_network_snapshot = loop._save_network_snapshot
drawn = []
gradient_calls = []


def one_thread_device(kind, rank, world_size):
    # Two torchrun "nodes" on one machine would each take all of its cores.
    device = real_process_device(kind, rank, world_size)
    torch.set_num_threads(1)
    return device


def recording_sampler_iter(self):
    for index in real_sampler_iter(self):
        drawn.append(int(index))
        yield index


def training_loop_then_dump(config, run_dir, rank=0, world_size=1, device='cpu'):
    networks = real_training_loop(config, run_dir, rank=rank, world_size=world_size, device=device)
    torch.save(
        dict(networks={name: module.state_dict() for name, module in networks.items()}, drawn=drawn),
        os.path.join(os.environ['FAULT_DUMP_DIR'], f'rank{rank}.pt'),
    )
    return networks


def failing_accumulate_gradients(self, *args, **kwargs):
    gradient_calls.append(1)
    if torch.distributed.get_rank() == 1 and len(gradient_calls) == 5:
        raise RuntimeError('injected failure on rank 1')
    return real_accumulate_gradients(self, *args, **kwargs)


def slow_save_network_snapshot(*args, **kwargs):
    real_save_network_snapshot(*args, **kwargs)
    if os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0':
        time.sleep(float(os.environ['FAULT_SNAPSHOT_PAUSE']))


distributed.process_device = one_thread_device
misc.InfiniteSampler.__iter__ = recording_sampler_iter
if 'FAULT_DUMP_DIR' in os.environ:
    loop.training_loop = training_loop_then_dump
if 'FAULT_RAISE_ON_RANK_1' in os.environ:
    loop.PortraitGANLoss.accumulate_gradients = failing_accumulate_gradients
if 'FAULT_SNAPSHOT_PAUSE' in os.environ:
    loop._save_network_snapshot = slow_save_network_snapshot
if __name__ == '__main__':
    train.main(sys.argv[2:])
"""


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """-> (preset path, TrainingConfig of one process) on a 16-image 32 px synthetic set."""
    return tiny_setup(str(tmp_path_factory.mktemp('tiny')))


@pytest.fixture
def driver(tmp_path):
    """-> (driver script path, environment with a fresh tag); kills what is left of the tagged processes."""
    script = tmp_path / 'driver.py'
    script.write_text(DRIVER)
    tag = uuid.uuid4().hex
    env = dict(os.environ, OMP_NUM_THREADS='1', GLOO_SOCKET_IFNAME='lo', PYTHONUNBUFFERED='1')
    env[TAG] = tag
    yield str(script), env
    for process in _tagged_processes(tag):
        process.kill()


def _tagged_processes(tag: str) -> list:
    """The live processes that carry `tag` in their environment (the test's subprocesses and their children)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(TAG) == tag:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _train_args(preset_path: str, config, outdir: str, kimg_batches: int) -> list:
    """train.py options of a two-process tiny run for `kimg_batches` batches of BATCH images."""
    return [
        '--cfg',
        preset_path,
        '--data',
        config.data,
        '--seg_data',
        config.seg_data,
        '--batch-gpu',
        '2',
        '--mbstd-group',
        '2',
        '--kimg',
        str(kimg_batches * BATCH / 1000),
        '--workers',
        '0',
        '--outdir',
        outdir,
    ]


def _one_node_rendezvous() -> list:
    """torchrun options of one node whose rendezvous listens on the loopback address (not --standalone's host)."""
    return ['--nnodes=1', '--rdzv-backend=c10d', f'--rdzv-endpoint=127.0.0.1:{_free_port()}']


def _torchrun(script: str, *options: str) -> list:
    return [sys.executable, '-m', 'torch.distributed.run', *options, script, REPO]


def _without_w_avg(networks: dict) -> dict:
    # The mapping's running average of w follows each rank's own latents (snapshots keep rank 0's).
    for name in ('G', 'G_ema'):
        del networks[name]['mapping_network.w_avg']
    return networks


def _assert_same_networks(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for name in a:
        assert a[name].keys() == b[name].keys(), f'{where}: {name}'
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f'{where}: {name}.{key} differs'


def _resume_state(run_dir: str) -> dict:
    from training.checkpoints.run_files import latest_resume_state, load_resume_state

    return load_resume_state(latest_resume_state(run_dir))


@pytest.mark.slow
def test_two_torchrun_nodes_make_one_run_and_stay_identical(tiny, driver, tmp_path):
    from torch_utils.misc import InfiniteSampler
    from training.data.dataset import PortraitDataset

    preset_path, config = tiny
    script, env = driver
    dump_dir, outdir = tmp_path / 'dump', str(tmp_path / 'runs')
    dump_dir.mkdir()
    env['FAULT_DUMP_DIR'] = str(dump_dir)
    batches = 2
    port = str(_free_port())
    nodes = [
        subprocess.Popen(
            _torchrun(
                script,
                '--nnodes=2',
                f'--node_rank={node}',
                '--nproc_per_node=1',
                '--master_addr=127.0.0.1',
                f'--master_port={port}',
            )
            + _train_args(preset_path, config, outdir, batches),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=env,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=180)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-4000:]

    # Rank 0 made the one run directory; the other node only learned its name.
    (run_dir,) = glob.glob(os.path.join(outdir, '*'))
    assert f'Run directory: {run_dir}' in outputs[0] and 'Run directory' not in outputs[1]

    # The ranks drew disjoint items: together, the first items of the one stream that the sampler splits.
    rank0, rank1 = (torch.load(dump_dir / f'rank{rank}.pt', weights_only=True) for rank in (0, 1))
    per_rank = batches * BATCH // 2
    assert len(rank0['drawn']) == len(rank1['drawn']) == per_rank
    assert not set(rank0['drawn']) & set(rank1['drawn'])
    dataset = PortraitDataset(config.data, config.seg_data, xflip=config.mirror)
    stream = iter(InfiniteSampler(dataset, rank=0, num_replicas=1, seed=config.seed))
    expected = [next(stream) for _ in range(2 * per_rank)]
    assert [index for pair in zip(rank0['drawn'], rank1['drawn']) for index in pair] == expected

    # The loop's consistency check passed at the final snapshot (the run ended with 0); the ranks' networks
    # are identical and are the ones rank 0 stored.
    stored = _resume_state(run_dir)
    assert stored['progress']['cur_nimg'] == batches * BATCH and len(stored['rng']) == 2
    networks0, networks1 = (_without_w_avg(ranks['networks']) for ranks in (rank0, rank1))
    _assert_same_networks(networks0, networks1, 'rank 0 vs rank 1')
    _assert_same_networks(_without_w_avg(stored['networks']), networks0, 'resume state vs rank 0')


@pytest.mark.slow
def test_torchrun_restart_continues_the_same_run_directory(tiny, driver, tmp_path):
    preset_path, config = tiny
    script, env = driver
    outdir = str(tmp_path / 'runs')
    env['FAULT_SNAPSHOT_PAUSE'] = '1'  # in the first attempt only: time to kill a worker mid-run
    batches = 5
    run_id = f'restart-{uuid.uuid4().hex[:8]}'
    torchrun = subprocess.Popen(
        _torchrun(
            script,
            *_one_node_rendezvous(),
            f'--rdzv-id={run_id}',
            '--nproc_per_node=2',
            '--max-restarts=1',
        )
        + _train_args(preset_path, config, outdir, batches),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while not glob.glob(os.path.join(outdir, '*', 'resume-state-*.pt')):
            assert torchrun.poll() is None and time.time() < deadline, 'no resume state was written'
            time.sleep(0.1)
        (worker,) = [
            process
            for process in _tagged_processes(env[TAG])
            if process.environ().get('RANK') == '1' and process.environ().get('TORCHELASTIC_RESTART_COUNT') == '0'
        ]
        worker.send_signal(signal.SIGKILL)
        output = torchrun.communicate(timeout=180)[0]
    finally:
        if torchrun.poll() is None:
            torchrun.kill()
    assert torchrun.returncode == 0, output[-4000:]

    # One run directory, continued by the restart from its newest resume state up to --kimg.
    (run_dir,) = glob.glob(os.path.join(outdir, '*'))
    restart_lines = [line for line in output.splitlines() if f'torchrun restart 1 of run {run_id}:' in line]
    assert len(restart_lines) == 1 and f'continuing {run_dir} from ' in restart_lines[0], output[-4000:]
    continued_kimg = float(re.search(r' at ([0-9.]+) kimg$', restart_lines[0]).group(1))
    with open(os.path.join(run_dir, 'log.txt')) as f:
        log = f.read()
    first_attempt, restarted = log.split('Continuing from ', 1)
    # The counter that the restart continues from is one that the first attempt reached (and snapshotted,
    # every tick), and the restart trains from there, not from 0, up to --kimg.
    first_ticks = [float(kimg) for kimg in re.findall(r'^tick \d+ +kimg ([0-9.]+)', first_attempt, re.MULTILINE)]
    assert 0 < continued_kimg < batches * BATCH / 1000 and continued_kimg in first_ticks, log
    assert float(re.search(r'^Training from ([0-9.]+) to', restarted, re.MULTILINE).group(1)) == continued_kimg
    assert _resume_state(run_dir)['progress']['cur_nimg'] == batches * BATCH
    assert not glob.glob(os.path.join(run_dir, '.*.tmp'))


@pytest.mark.slow
@pytest.mark.parametrize('launcher', ['spawn', 'torchrun'])
def test_an_error_on_one_rank_stops_every_rank(tiny, driver, tmp_path, launcher):
    preset_path, config = tiny
    script, env = driver
    env['FAULT_RAISE_ON_RANK_1'] = '1'
    args = _train_args(preset_path, config, str(tmp_path / 'runs'), 25)
    if launcher == 'spawn':
        command = [sys.executable, script, REPO, *args, '--gpus', '2']
    else:
        command = _torchrun(script, *_one_node_rendezvous(), '--nproc_per_node=2') + args
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    elapsed = time.time() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    # Far from the end of the run: rank 1 failed in its second iteration, and nobody waited for it.
    assert elapsed < 60, f'took {elapsed:.0f} s'
    reason = f'Error: training process 1 failed: RuntimeError: {INJECTED}'
    assert reason in output.splitlines(), output[-4000:]
    if launcher == 'spawn':
        # The launcher ends with the first error, not with that of the rank whose collective lost rank 1.
        assert result.stderr.splitlines()[-1] == reason
    assert _tagged_processes(env[TAG]) == []
