"""Tests for tools/plot_training.py: the series it reads from a run's jsonl files, and the PNG it writes."""

import json

import numpy as np
import PIL.Image

from tools.plot_training import metric_series, metrics_table, plot_run, run_metric_series, tick_series


def write_run(run_dir):
    ticks = [
        {
            'Progress/kimg': {'mean': kimg},
            'Loss/G/loss': {'mean': 2.0 - kimg},
            'Loss/D/loss': {'mean': 1.0 + kimg},
            **({'Loss/r1_penalty': {'mean': 0.5}} if kimg > 0 else {}),
        }
        for kimg in (0.0, 0.5, 1.0)
    ]
    (run_dir / 'stats.jsonl').write_text(''.join(json.dumps(tick) + '\n' for tick in ticks))
    lines = [
        {'results': {'fid1k': fid}, 'metric': 'fid1k', 'snapshot_pkl': f'network-snapshot-{kimg:06d}.pkl'}
        for kimg, fid in ((0, 260.0), (4, 180.0))
    ]
    (run_dir / 'metric-fid1k.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))
    pose = {
        'results': {'real_neck_mean': 12.0, 'real_mean_pose_neck_mean': 18.0},
        'metric': 'pose_err',
        'snapshot_pkl': 'network-snapshot-000004.pkl',
    }
    (run_dir / 'metric-pose_err.jsonl').write_text(json.dumps(pose) + '\n')


def test_series_follow_the_files(tmp_path):
    write_run(tmp_path)
    ticks = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()]
    assert tick_series(ticks, 'Loss/G/loss') == ([0.0, 0.5, 1.0], [2.0, 1.5, 1.0])
    assert tick_series(ticks, 'Loss/r1_penalty') == ([0.5, 1.0], [0.5, 0.5])
    assert metric_series(str(tmp_path / 'metric-fid1k.jsonl')) == {'fid1k': ([0, 4], [260.0, 180.0])}


def test_plot_writes_a_png(tmp_path):
    write_run(tmp_path)
    out = plot_run(str(tmp_path), str(tmp_path / 'plot.png'))
    image = np.asarray(PIL.Image.open(out).convert('L'))
    assert image.shape == (1100, 900) and image.std() > 10


def test_a_run_and_its_continuation_plot_as_one(tmp_path):
    first, second = tmp_path / 'a', tmp_path / 'b'
    first.mkdir()
    second.mkdir()
    write_run(first)
    (second / 'stats.jsonl').write_text(
        json.dumps({'Progress/kimg': {'mean': 1.5}, 'Loss/G/loss': {'mean': 0.5}}) + '\n'
    )
    out = plot_run([str(first), str(second)], str(tmp_path / 'plot.png'))
    assert np.asarray(PIL.Image.open(out).convert('L')).std() > 10


def test_metrics_table_lists_every_snapshot_and_the_median_speed(tmp_path):
    write_run(tmp_path)
    ticks = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()]
    for tick, seconds in zip(ticks, (300.0, 200.0, 250.0)):
        tick['Timing/sec_per_kimg'] = {'mean': seconds}
    (tmp_path / 'stats.jsonl').write_text(''.join(json.dumps(tick) + '\n' for tick in ticks))
    lines = metrics_table([str(tmp_path)]).splitlines()
    assert lines[0] == '| kimg | fid1k | real_neck_mean | real_mean_pose_neck_mean |'
    assert lines[2:4] == ['| 0 | 260 |  |  |', '| 4 | 180 | 12 | 18 |']
    assert lines[-1] == 'seconds per kimg: median 250 over 3 ticks'


def test_a_stage_starting_snapshot_does_not_replace_the_run_it_continues(tmp_path):
    first, stage = tmp_path / 'a', tmp_path / 'b'
    first.mkdir()
    stage.mkdir()
    write_run(first)  # fid1k at 0 and 4 kimg
    lines = [
        {'results': {'fid1k': fid}, 'snapshot_pkl': f'network-snapshot-{kimg:06d}.pkl'}
        for kimg, fid in ((4, 999.0), (6, 150.0))  # the stage starts at 4 kimg with its own snapshot
    ]
    (stage / 'metric-fid1k.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))
    series = run_metric_series([str(first), str(stage)])
    assert series['fid1k'] == ([0, 4, 6], [260.0, 180.0, 150.0])
    assert series['real_neck_mean'] == ([4], [12.0])
