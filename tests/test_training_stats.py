"""Tests for torch_utils/training_stats.py."""

import json
import math
import os

import numpy as np
import torch

from tests.test_misc import run_two_processes
from torch_utils import training_stats


def test_mean_and_std_match_numpy():
    collector = training_stats.Collector(regex=r'MomentsTest/.*')
    rng = np.random.default_rng(0)
    first, second = rng.normal(3.0, 2.0, size=17), rng.normal(-1.0, 0.5, size=(4, 5))
    training_stats.report('MomentsTest/a', torch.tensor(first[:10]))
    training_stats.report('MomentsTest/a', list(first[10:]))
    training_stats.report('MomentsTest/b', torch.tensor(second, dtype=torch.float32))
    training_stats.report('MomentsTest/b', 7.5)
    collector.update()
    assert collector.names() == ['MomentsTest/a', 'MomentsTest/b']
    assert collector.num('MomentsTest/a') == 17
    assert math.isclose(collector.mean('MomentsTest/a'), first.mean(), rel_tol=1e-12)
    assert math.isclose(collector.std('MomentsTest/a'), first.std(), rel_tol=1e-9)
    b_values = np.concatenate([second.astype(np.float32).astype(np.float64).ravel(), [7.5]])
    stats = collector.as_dict()['MomentsTest/b']
    assert stats.num == 21
    assert math.isclose(stats.mean, b_values.mean(), rel_tol=1e-12)
    assert math.isclose(stats.std, b_values.std(), rel_tol=1e-9)
    assert collector['MomentsTest/b'] == stats.mean


def test_update_takes_only_new_values_and_keeps_previous():
    keeping = training_stats.Collector(regex=r'DeltaTest/.*', keep_previous=True)
    forgetting = training_stats.Collector(regex=r'DeltaTest/.*', keep_previous=False)
    training_stats.report('DeltaTest/x', [1.0, 2.0, 3.0])
    keeping.update()
    forgetting.update()
    assert keeping.mean('DeltaTest/x') == forgetting.mean('DeltaTest/x') == 2.0
    training_stats.report('DeltaTest/x', [10.0])
    keeping.update()
    forgetting.update()
    assert keeping.num('DeltaTest/x') == forgetting.num('DeltaTest/x') == 1
    assert keeping.mean('DeltaTest/x') == forgetting.mean('DeltaTest/x') == 10.0
    keeping.update()
    forgetting.update()
    assert keeping.mean('DeltaTest/x') == 10.0
    assert forgetting.num('DeltaTest/x') == 0 and math.isnan(forgetting.mean('DeltaTest/x'))


def test_values_reported_before_the_collector_are_ignored():
    training_stats.report('EarlyTest/x', [100.0])
    collector = training_stats.Collector(regex=r'EarlyTest/.*')
    training_stats.report('EarlyTest/x', [1.0, 3.0])
    collector.update()
    assert collector.num('EarlyTest/x') == 2 and collector.mean('EarlyTest/x') == 2.0


def test_regex_filtering():
    collector = training_stats.Collector(regex=r'RegexTest/Loss/.*')
    training_stats.report('RegexTest/Loss/G', 1.0)
    training_stats.report('RegexTest/Loss/D', 2.0)
    training_stats.report('RegexTest/Timing/tick', 3.0)
    training_stats.report('Prefix/RegexTest/Loss/G', 4.0)
    collector.update()
    assert collector.names() == ['RegexTest/Loss/D', 'RegexTest/Loss/G']
    assert collector.num('RegexTest/Timing/tick') == 0
    assert math.isnan(collector.mean('RegexTest/Timing/tick'))


def test_empty_report_registers_name_without_data():
    collector = training_stats.Collector(regex=r'EmptyTest/.*')
    assert training_stats.report('EmptyTest/x', []) == []
    collector.update()
    assert collector.names() == []


def _two_rank_worker(rank, init_file, result_dir):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        training_stats.init_multiprocessing(rank=rank, sync_device=torch.device('cpu'))
        collector = training_stats.Collector(regex=r'Pair/.*')
        values = [1.0, 2.0, 3.0] if rank == 0 else [10.0, 20.0]
        training_stats.report('Pair/values', torch.tensor(values))
        training_stats.report0('Pair/only_rank0', 5.0 if rank == 0 else 1000.0)
        collector.update()
        result = dict(stats=collector.as_dict())
        if rank == 1:
            training_stats.report('Pair/rank1_only', 1.0)
        try:
            collector.update()
            result['mismatch_error'] = None
        except RuntimeError as error:
            result['mismatch_error'] = str(error)
        with open(os.path.join(result_dir, f'rank{rank}.json'), 'w') as file:
            json.dump(result, file)
    finally:
        torch.distributed.destroy_process_group()


def test_collector_reduces_over_two_processes(tmp_path):
    run_two_processes(_two_rank_worker, str(tmp_path / 'init'), str(tmp_path))
    all_values = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    for rank in range(2):
        result = json.loads((tmp_path / f'rank{rank}.json').read_text())
        stats = result['stats']
        assert stats['Pair/values']['num'] == 5
        assert math.isclose(stats['Pair/values']['mean'], all_values.mean(), rel_tol=1e-12)
        assert math.isclose(stats['Pair/values']['std'], all_values.std(), rel_tol=1e-9)
        assert stats['Pair/only_rank0'] == {'num': 1, 'mean': 5.0, 'std': 0.0}
        assert 'report every name on all ranks' in result['mismatch_error']
