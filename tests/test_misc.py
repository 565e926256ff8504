"""Tests for torch_utils/misc.py."""

import os
import time

import numpy as np
import pytest
import torch

from torch_utils import misc


class SmallNet(torch.nn.Module):
    """Conv + batch norm + linear: has parameters, buffers and nested children."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.BatchNorm2d(channels), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(channels * 8 * 8, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_constant_is_cached_and_correct():
    first = misc.constant([1, 3, 3, 1], dtype=torch.float32)
    again = misc.constant(np.array([1, 3, 3, 1]), dtype=torch.float32)
    assert first is again
    assert torch.equal(first, torch.tensor([1.0, 3.0, 3.0, 1.0]))
    assert misc.constant([1, 3, 3, 1], dtype=torch.float64) is not first
    broadcast = misc.constant(0.5, shape=[2, 3])
    assert broadcast.shape == (2, 3) and broadcast.dtype == torch.get_default_dtype()
    assert torch.all(broadcast == 0.5)
    assert broadcast.is_contiguous()


def test_assert_shape():
    x = torch.zeros(2, 3, 4)
    misc.assert_shape(x, [2, 3, 4])
    misc.assert_shape(x, [None, 3, None])
    with pytest.raises(AssertionError, match=r'got shape \[2, 3, 4\], expected \[2, 5, \*\]'):
        misc.assert_shape(x, [2, 5, None])
    with pytest.raises(AssertionError, match='number of dimensions'):
        misc.assert_shape(x, [2, 3])


def test_copy_params_and_buffers_gives_identical_outputs():
    torch.manual_seed(0)
    src = SmallNet()
    src.train()
    src(torch.randn(8, 3, 8, 8))  # moves the batch-norm running statistics away from their init
    src.eval()
    torch.manual_seed(1)
    dst = SmallNet().eval()
    x = torch.randn(2, 3, 8, 8)
    assert not torch.allclose(src(x), dst(x))
    missing = misc.copy_params_and_buffers(src, dst, require_all=True)
    assert missing == []
    assert torch.equal(src(x), dst(x))


def test_copy_params_and_buffers_reports_missing_and_shape_mismatch():
    src = torch.nn.Sequential(torch.nn.Linear(3, 4))
    dst = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    before = dst[1].weight.detach().clone()
    assert misc.copy_params_and_buffers(src, dst) == ['1.weight', '1.bias']
    assert torch.equal(dst[0].weight, src[0].weight)
    assert torch.equal(dst[1].weight, before)
    with pytest.raises(KeyError, match='1.weight'):
        misc.copy_params_and_buffers(src, dst, require_all=True)
    with pytest.raises(ValueError, match='0.weight'):
        misc.copy_params_and_buffers(torch.nn.Sequential(torch.nn.Linear(3, 5)), dst)


def test_params_and_buffers_lists():
    net = SmallNet()
    names = [name for name, _ in misc.named_params_and_buffers(net)]
    assert names[:2] == ['features.0.weight', 'features.0.bias']
    assert 'features.1.running_mean' in names
    assert len(misc.params_and_buffers(net)) == len(names)


def test_check_ddp_consistency_is_a_noop_without_distributed():
    misc.check_ddp_consistency(SmallNet())


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize(
    'dataset_size, num_replicas, window_size', [(10, 2, 0.5), (7, 3, 0.5), (12, 4, 1.0), (5, 1, 0.0)]
)
def test_infinite_sampler_ranks_partition_each_pass(dataset_size, num_replicas, window_size):
    dataset = list(range(dataset_size))
    passes = 4
    total = dataset_size * passes
    single = _take(iter(misc.InfiniteSampler(dataset, seed=3, window_size=window_size)), total)
    streams = [
        _take(
            iter(misc.InfiniteSampler(dataset, rank=rank, num_replicas=num_replicas, seed=3, window_size=window_size)),
            total,
        )
        for rank in range(num_replicas)
    ]
    for step in range(total):
        assert streams[step % num_replicas][step // num_replicas] == single[step]
    for start in range(0, total, dataset_size):
        assert sorted(single[start : start + dataset_size]) == dataset
    if window_size > 0:
        assert single[:dataset_size] != single[dataset_size : 2 * dataset_size]


def test_infinite_sampler_without_shuffle_is_sequential():
    stream = _take(iter(misc.InfiniteSampler(range(4), rank=1, num_replicas=2, shuffle=False)), 4)
    assert stream == [1, 3, 1, 3]


def test_infinite_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match='empty'):
        misc.InfiniteSampler([])
    with pytest.raises(ValueError, match='rank'):
        misc.InfiniteSampler([1, 2], rank=2, num_replicas=2)


def _ddp_consistency_worker(rank, init_file, result_dir):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        net = SmallNet()
        misc.check_ddp_consistency(net)
        if rank == 1:
            with torch.no_grad():
                net.features[0].bias.add_(1)
        try:
            misc.check_ddp_consistency(net, ignore_regex=r'.*\.running_.*')
            outcome = 'consistent'
        except AssertionError as error:
            outcome = str(error)
        with open(os.path.join(result_dir, f'rank{rank}.txt'), 'w') as file:
            file.write(outcome)
    finally:
        torch.distributed.destroy_process_group()


def run_two_processes(worker, *args, deadline_s=120):
    """Spawn `worker(rank, *args)` on two processes and wait, killing them if they hang."""
    context = torch.multiprocessing.spawn(worker, args=args, nprocs=2, join=False)
    start = time.monotonic()
    while not context.join(timeout=1):
        if time.monotonic() - start > deadline_s:
            for process in context.processes:
                process.kill()
            pytest.fail('the two-process test did not finish; a collective is probably waiting on one rank')


def test_check_ddp_consistency_across_two_processes(tmp_path):
    run_two_processes(_ddp_consistency_worker, str(tmp_path / 'init'), str(tmp_path))
    assert (tmp_path / 'rank0.txt').read_text() == 'consistent'
    message = (tmp_path / 'rank1.txt').read_text()
    assert 'SmallNet.features.0.bias' in message and 'rank 1' in message
