"""Tests for torch_utils/host_syncs.py and for the training step it guards: between the data fetch
and the optimizer step, nothing reads a tensor value on the host (which would leave a GPU idle).

The step runs on the CPU with the tiny preset and the tree kernel's host build as the deformation's
search ('cuda' backend, fixed shapes, no host reads). Two paths differ by device on purpose and
are set to their CUDA form here: the deformation gathers only the near points on the CPU (its
count is read on the host; free there), and the ray marcher's fused CPU kernel reads the depth
range. Each is listed in CPU_ONLY_SYNCS; nothing else may synchronize.
"""

import contextlib

import pytest
import torch

from benchmarks.training_step import random_chunk
from tests.tiny_run import tiny_setup
from torch_utils import training_stats
from torch_utils.host_syncs import SyncCounter
from training.body.deformation import PosedMeshMap
from training.body.nearest_face import _kernel_plugin
from training.loss import LossConfig, PortraitGANLoss
from training.schedules import schedule_values
from training.volumetric_rendering import ray_marcher

requires_kernel = pytest.mark.skipif(
    _kernel_plugin('cpu') is None, reason="the host build of the tree kernel ('cuda' backend) does not build here"
)

# Synchronizations of CPU-only paths, by (kind, file): the CUDA path of the same step has none.
CPU_ONLY_SYNCS = {
    ('aten.nonzero', 'training/body/deformation.py'): 'the CPU gathers only the near points (apply, gather=True)',
    ('aten._local_scalar_dense', 'training/volumetric_rendering/ray_marcher.py'): "the fused CPU march's depth range",
}


def test_counter_sees_every_kind_of_host_read():
    x = torch.randn(6, 3, requires_grad=True)
    with SyncCounter() as counter:
        x.sum().item()
        if x.sum() > 0:
            pass
        x.tolist()
        x.cpu()
        x.detach().numpy()
        torch.nonzero(x > 0)
        x[x[:, 0] > 0].sum().backward()  # boolean-mask indexing, and its backward
        torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]))
        torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]), output_size=6)  # the size is given: no sync
        torch.where(x > 0, x, 0).index_select(0, torch.tensor([1]))  # fixed shapes: no sync
        with counter.paused():
            x.sum().item()
    kinds = [event.kind for event in counter.syncs]
    assert kinds == [
        'aten._local_scalar_dense',
        'aten._local_scalar_dense',
        'Tensor.tolist',
        'Tensor.cpu',
        'Tensor.numpy',
        'aten.nonzero',
        'aten.index (boolean mask)',
        'aten.index_put (boolean mask)',
        'aten.repeat_interleave',
    ]
    assert all(event.where.startswith('tests/test_host_syncs.py:') for event in counter.syncs[:7])
    assert counter.launches > 10 and counter.launches_by_op['where'] == 1


@pytest.fixture(scope='module')
def step(tmp_path_factory):
    """The tiny preset's networks, loss and one chunk, with every phase due -> (loss, phases, chunk, schedule)."""
    from training.training_loop import build_networks, build_phases

    _, config = tiny_setup(str(tmp_path_factory.mktemp('syncs')))
    config.generator['deformation_backend'] = 'cuda'
    config.density_reg = 0.25  # so that Greg runs
    torch.manual_seed(0)
    G, D = build_networks(config, torch.device('cpu'))
    phases, _ = build_phases(config, G, D)
    loss_config = LossConfig.from_training_config(config)
    loss_config.style_mixing_prob = 0.5
    loss = PortraitGANLoss(G, D, loss_config, 'cpu')
    chunk = random_chunk(G, config.batch_gpu, torch.Generator().manual_seed(1))
    return loss, phases, chunk, schedule_values(loss_config, 0)


@pytest.fixture
def cuda_paths(monkeypatch):
    """The device-dependent choices of the step set as on a CUDA device (see the module docstring)."""
    apply = PosedMeshMap.apply
    monkeypatch.setattr(
        PosedMeshMap, 'apply', lambda self, points, faces, gather=False: apply(self, points, faces, gather)
    )
    monkeypatch.setattr(ray_marcher, '_march_plugin', lambda: None)


def run_phase(loss, phase, chunk, schedule) -> SyncCounter:
    for param in phase.params:
        param.requires_grad_(True)
    try:
        with SyncCounter() as counter:
            loss.accumulate_gradients(phase.name, *chunk, gain=phase.interval, schedule=schedule)
    finally:
        for param in phase.params:
            param.requires_grad_(False)
            param.grad = None
    return counter


@requires_kernel
@pytest.mark.parametrize('phase_name', ['Gmain', 'Greg', 'Dmain', 'Dreg'])
def test_no_phase_reads_the_device_on_the_host(step, cuda_paths, phase_name):
    loss, phases, chunk, schedule = step
    (phase,) = [phase for phase in phases if phase.name == phase_name]
    counter = run_phase(loss, phase, chunk, schedule)
    assert counter.syncs == [], counter.summary()
    assert counter.launches > 100


@requires_kernel
def test_the_cpu_paths_read_only_what_is_listed(step):
    loss, phases, chunk, schedule = step
    for phase in phases:
        counter = run_phase(loss, phase, chunk, schedule)
        unlisted = [event for event in counter.syncs if (event.kind, event.where.split(':')[0]) not in CPU_ONLY_SYNCS]
        assert unlisted == [], f'{phase.name}: {unlisted}'


@requires_kernel
@pytest.mark.parametrize('phase_name', ['Gmain', 'Greg', 'Dmain', 'Dreg'])
def test_a_planted_item_is_found_in_every_phase(step, cuda_paths, monkeypatch, phase_name):
    loss, phases, chunk, schedule = step
    (phase,) = [phase for phase in phases if phase.name == phase_name]
    report = training_stats.report

    def report_with_a_host_read(name, value):
        if isinstance(value, torch.Tensor):
            value.detach().float().mean().item()  # planted
        return report(name, value)

    monkeypatch.setattr(training_stats, 'report', report_with_a_host_read)
    counter = run_phase(loss, phase, chunk, schedule)
    assert counter.syncs and {event.kind for event in counter.syncs} == {'aten._local_scalar_dense'}
    assert all('report_with_a_host_read' in event.where for event in counter.syncs)


@pytest.mark.slow
@requires_kernel
def test_a_whole_loop_iteration_reads_nothing_on_the_host(tmp_path, cuda_paths, monkeypatch):
    # Two iterations of the real loop (the first runs every phase, the second the main ones), each
    # counted from the fetched batch to the EMA update after the optimizer steps. Adam's own step
    # is not counted: torch keeps its step counts on the host (state['step'] is a CPU tensor unless
    # Adam is capturable or fused), so the reads it makes of them do not synchronize a GPU; on the
    # CPU they cannot be told from device reads.
    from training import training_loop as loop

    _, config = tiny_setup(str(tmp_path))
    config.generator['deformation_backend'] = 'cuda'
    config = config.replace(density_reg=0.25, workers=0, kimg=2 * config.batch / 1000, tick=1.0, snap=0)
    counters = []
    train_iteration, adam_step = loop.train_iteration, torch.optim.Adam.step

    def counted(*args, **kwargs):
        counters.append(SyncCounter())
        with counters[-1]:
            return train_iteration(*args, **kwargs)

    def adam_step_uncounted(self, *args, **kwargs):
        with counters[-1].paused() if counters else contextlib.nullcontext():
            return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(loop, 'train_iteration', counted)
    monkeypatch.setattr(torch.optim.Adam, 'step', adam_step_uncounted)
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    loop.training_loop(config, str(run_dir))
    assert len(counters) == 2
    for counter in counters:
        assert counter.syncs == [], counter.summary()
        assert counter.launches > 1000
