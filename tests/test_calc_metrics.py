"""calc_metrics.py on the tiny snapshot: one-line errors, results beside the checkpoint, and identical results
from one process and from two torchrun processes."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

import calc_metrics
from metrics import names
from tests.tiny_run import write_tiny_snapshot
from training.checkpoints import formats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


def _invoke(args: list):
    return CliRunner().invoke(calc_metrics.main, args + ['--device', 'cpu', '--quiet'])


def test_pose_mode_choice_is_built_from_the_constant():
    (choice,) = [param.type for param in calc_metrics.main.params if param.name == 'metric_pose_sample_mode']
    assert tuple(choice.choices) == names.METRIC_POSE_SAMPLE_MODES


def test_pose_err_is_appended_beside_the_snapshot_and_printed(run_dir, monkeypatch):
    monkeypatch.setattr(names, 'POSE_ERR_ITEMS', 8)
    result = _invoke(['--network', run_dir, '--metrics', 'pose_err', '--batch', '4'])
    assert result.exit_code == 0, result.output
    with open(os.path.join(run_dir, 'metric-pose_err.jsonl')) as f:
        line = json.loads(f.readlines()[-1])
    # A run directory resolves to its weights file, which loads without unpickling.
    assert line['metric'] == 'pose_err' and line['snapshot_pkl'] == 'network-snapshot-000000.pt'
    assert line['num_gen'] == 8 and line['detector'] is None  # pose_err needs no feature detector
    assert 'real_head_mean' in result.output and f'{line["results"]["real_head_mean"]:.4f}' in result.output


def test_a_weights_file_copied_alone_carries_its_pose_settings(run_dir, tmp_path, monkeypatch):
    """pose_err of a .pt copied without the JSON beside it equals pose_err of the run, and needs no option."""
    monkeypatch.setattr(names, 'POSE_ERR_ITEMS', 8)
    alone = tmp_path / 'alone' / 'portrait.pt'
    alone.parent.mkdir()
    shutil.copy(os.path.join(run_dir, 'network-snapshot-000000.pt'), alone)
    results = []
    for network in (run_dir, str(alone)):
        result = _invoke(['--network', network, '--metrics', 'pose_err', '--batch', '4'])
        assert result.exit_code == 0, result.output
        folder = network if os.path.isdir(network) else os.path.dirname(network)
        with open(os.path.join(folder, 'metric-pose_err.jsonl')) as f:
            results.append(json.loads(f.readlines()[-1])['results'])
    assert results[0] == results[1]


def test_a_result_that_cannot_be_written_is_printed_with_the_reason(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(names, 'POSE_ERR_ITEMS', 8)
    folder = tmp_path / 'copy'
    shutil.copytree(run_dir, folder)
    if (folder / 'metric-pose_err.jsonl').exists():
        os.remove(folder / 'metric-pose_err.jsonl')
    (folder / 'metric-pose_err.jsonl').mkdir()  # writing it fails as in a read-only folder
    result = _invoke(['--network', str(folder), '--metrics', 'pose_err', '--batch', '4'])
    assert result.exit_code == 1 and 'Traceback' not in result.output
    assert 'real_head_mean' in result.output
    assert 'metric-pose_err.jsonl: cannot be written (Is a directory); the results are printed above' in result.output


@pytest.mark.parametrize(
    'case',
    [
        'missing',
        'foreign',
        'metric',
        'data_alone',
        'no_pose_settings',
        'no_pose_settings_sens',
        'bad_data',
        'not_a_generator',
        'empty_yaw_range',
    ],
)
def test_one_line_errors(run_dir, tmp_path, case):
    snapshot = os.path.join(run_dir, 'network-snapshot-000000.pkl')
    foreign = tmp_path / 'notes.pkl'
    foreign.write_bytes(b'not a pickle')
    lonely = tmp_path / 'lonely'  # a snapshot that carries no pose-prediction settings, nor has them beside it
    lonely.mkdir()
    contents = formats.load_any(snapshot)
    formats.save_network_pickle(
        str(lonely / 'network-snapshot-000000.pkl'),
        {key: contents[key] for key in ('G_ema', 'D_ema', 'training_set_kwargs')},
    )
    corrupt = tmp_path / 'corrupt.zip'
    corrupt.write_bytes(b'PK not really')
    swapped = tmp_path / 'swapped.pt'  # a weights file whose G_ema is a discriminator
    discriminator = formats.load_any(os.path.join(run_dir, 'network-snapshot-000000.pt'))['D']
    formats.save_weights(str(swapped), dict(G_ema=discriminator, D=discriminator), extra=dict(training_set_kwargs={}))
    args, expected = {
        'missing': (['--network', str(tmp_path / 'absent.pkl')], 'absent.pkl'),
        'foreign': (['--network', str(foreign)], 'notes.pkl'),
        'metric': (['--network', snapshot, '--metrics', 'fid2k,is50k'], 'unknown metric is50k'),
        'data_alone': (['--network', snapshot, '--data', str(corrupt)], 'give both --data and --seg_data'),
        'no_pose_settings': (
            [
                '--network',
                str(lonely / 'network-snapshot-000000.pkl'),
                '--metrics',
                'kid2k',
                '--metric_pose_sample_mode',
                'D_predict',
            ],
            'D_predict needs the pose-prediction settings',
        ),
        'no_pose_settings_sens': (
            ['--network', str(lonely / 'network-snapshot-000000.pkl'), '--metrics', 'fid2k,pose_sens'],
            'carries none and there is no',
        ),
        'bad_data': (
            ['--network', snapshot, '--metrics', 'kid2k', '--data', str(corrupt), '--seg_data', str(corrupt)],
            'corrupt.zip',
        ),
        'not_a_generator': (['--network', str(swapped)], 'its G_ema is a PoseAwareDualDiscriminator, not a generator'),
        'empty_yaw_range': (
            ['--network', snapshot, '--metrics', 'kid2k_back'],
            'no image has a camera in the back yaw',
        ),
    }[case]
    if case == 'empty_yaw_range':
        from tests.test_metrics import write_yaw_dataset

        data = write_yaw_dataset(tmp_path / 'front-only', (0.0, 40.0, -80.0))
        args += ['--data', data['path'], '--seg_data', data['seg_path']]
    result = _invoke(args)
    assert result.exit_code != 0 and not isinstance(result.exception, (AssertionError, TypeError, KeyError))
    message = result.output.strip().splitlines()[-1]
    assert message.startswith('Error') and expected in message, result.output
    assert 'Traceback' not in result.output


TORCHRUN_WORKER = """
import json, os, sys
import torch
sys.path.insert(0, sys.argv[1])
from metrics import metric_main, metric_utils, names
from training.checkpoints import formats
from training.pose_prediction import load_pose_predict_kwargs

run_dir, out_path = sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
world_size = int(os.environ.get('WORLD_SIZE', 1))
rank = int(os.environ.get('RANK', 0))
if world_size > 1:
    torch.distributed.init_process_group('gloo')
modules = formats.load_any(os.path.join(run_dir, 'network-snapshot-000000.pkl'))
kwargs = load_pose_predict_kwargs(os.path.join(run_dir, 'pose_predict_kwargs-000000.json'))
training_set_kwargs = modules['training_set_kwargs']
names.POSE_ERR_ITEMS = 6
results = {}
for mode in ('G_predict', 'D_predict'):
    opts = metric_utils.MetricOptions(G=modules['G_ema'], D=modules['D'], dataset_kwargs=training_set_kwargs,
                                      pose_predict_kwargs=kwargs, metric_pose_sample_mode=mode, num_gpus=world_size,
                                      rank=rank, batch_size=2)
    for name in ('fid2k', 'kid2k', 'pose_err'):
        results[f'{mode}/{name}'] = dict(metric_main.calc_metric(name, opts, num_gen=6, max_real=6).results)
if rank == 0:
    with open(out_path, 'w') as f:
        json.dump(results, f)
if world_size > 1:
    # Without this, gloo's threads may outlive the interpreter and abort the process at exit.
    torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_one_process_and_two_torchrun_processes_agree(run_dir, tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(TORCHRUN_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS='1', DNNLIB_CACHE_DIR=str(tmp_path / 'cache'))
    launches = {
        'one': [sys.executable, str(script)],
        'two': [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script)],
    }
    results = {}
    for name, launch in launches.items():
        out_path = tmp_path / f'{name}.json'
        # Each launch computes its own real features: the cache is cleared between them.
        shutil.rmtree(tmp_path / 'cache', ignore_errors=True)
        done = subprocess.run(
            launch + [REPO, run_dir, str(out_path)], capture_output=True, text=True, timeout=600, cwd=REPO, env=env
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        results[name] = json.loads(out_path.read_text())
    assert results['one'].keys() == results['two'].keys()
    for key, values in results['one'].items():
        assert values == results['two'][key], key
    assert results['one']['G_predict/fid2k'] != results['one']['D_predict/fid2k']
