"""train.py option handling and training/config.py: resolution, validation and one-line errors."""

import dataclasses
import json
import os
import random

import click
import pytest
import torch
from click.testing import CliRunner

import train
from training.checkpoints.run_files import RESUME_FORMAT, RESUME_VERSION
from training.config import ConfigError, TrainingConfig
from training.presets import load_preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# training_options.json of a stage-2 full-head run (8 GPUs, batch 64, density regularization,
# metrics), written by train.py at commit fed11c5, before the loss settings were read from
# TrainingConfig by name: run directories and resume states of that time must keep loading.
OLD_TRAINING_OPTIONS = os.path.join(REPO, 'tests', 'fixtures', 'training_options.json')


def _invoke(*args):
    return CliRunner().invoke(train.main, list(args))


def _dry_run(*args) -> dict:
    result = _invoke('--dry-run', *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _assert_usage_error(result, fragment: str, exit_code: int = 2):
    """A click error: the expected exit code, the message, and no Python traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert fragment in result.output, result.output
    assert 'Traceback' not in result.output


def test_dry_run_prints_preset_values_and_overrides():
    preset = load_preset('cpu-small')
    resolved = _dry_run(
        '--batch',
        '16',
        '--gamma',
        '2',
        '--glr',
        '0.001',
        '--cbase',
        '2048',
        '--triplane_depth',
        '2',
        '--train_g_pose_branch',
        'false',
        '--kimg',
        '0.5',
        '--cpu_bf16',
        'true',
        '--allow-tf32',
        'true',
    )
    assert resolved['cfg'] == 'cpu-small'
    assert resolved['allow_tf32'] is True and _dry_run()['allow_tf32'] is False
    assert (resolved['batch'], resolved['gamma'], resolved['glr'], resolved['kimg']) == (16, 2.0, 0.001, 0.5)
    assert resolved['train_g_pose_branch'] is False
    # --cbase sets G's and D's channel base, as published; generator options land in the generator.
    assert resolved['generator']['channel_base'] == resolved['d_channel_base'] == 2048
    assert resolved['generator']['triplane_depth'] == 2
    assert resolved['generator']['cpu_bf16'] is True and preset['generator']['cpu_bf16'] is False
    # Everything not given keeps the preset's value.
    for key in ('batch_gpu', 'gamma_seg', 'blur_fade_kimg', 'gpc_reg_prob', 'mirror', 'tick', 'snap'):
        assert resolved[key] == preset['training'][key], key
    assert resolved['generator']['z_dim'] == preset['generator']['z_dim']
    # No data given: the built-in synthetic set at the preset's image resolution.
    assert resolved['data'].endswith('synthetic-portraits-64.zip')
    assert resolved['seg_data'].endswith('synthetic-portraits-64-seg.zip')
    assert resolved['device'] == ('cuda' if torch.cuda.is_available() else 'cpu')


def test_dry_run_of_full_head_and_metrics_none():
    resolved = _dry_run('--cfg', 'full-head', '--metrics', 'none')
    assert resolved['generator']['img_resolution'] == 512 and resolved['batch'] == 32
    assert resolved['metrics'] == []
    assert resolved['data'].endswith('synthetic-portraits-512.zip')


@pytest.mark.parametrize(
    'args, fragment',
    [
        (['--cfg', 'nosuch'], 'unknown preset'),
        (['--batch', '3', '--batch-gpu', '4'], 'must be a multiple of --batch-gpu'),
        (['--batch', '8', '--batch-gpu', '4', '--gpus', '4'], 'must be a multiple of --batch-gpu'),
        (['--batch-gpu', '6', '--mbstd-group', '4', '--batch', '12'], 'multiple of --mbstd-group'),
        (['--gamma', '-1'], "Invalid value for '--gamma'"),
        (['--gpc_reg_prob', '1.5'], "Invalid value for '--gpc_reg_prob'"),
        (['--kimg', '0'], "Invalid value for '--kimg'"),
        (['--data', '/no/such/images.zip', '--seg_data', '/no/such/masks.zip'], 'does not exist'),
        (['--data', __file__], 'give both --data and --seg_data'),
        (['--resume_kimg', '100'], '--resume_kimg needs --resume'),
        (['--resume_blur'], '--resume_blur only applies'),
        (['--device', 'tpu'], "Invalid value for '--device'"),
    ],
)
def test_bad_options_are_click_errors(args, fragment):
    _assert_usage_error(_invoke('--dry-run', *args), fragment)


def test_choices_are_built_from_the_constants():
    from metrics.names import METRIC_POSE_SAMPLE_MODES
    from training.config import DEVICES
    from training.loss_options import REG_TYPES
    from training.networks.decoder import ACTIVATIONS
    from training.networks.triplane import SR_MODULES

    choices = {
        param.name: tuple(param.type.choices) for param in train.main.params if isinstance(param.type, click.Choice)
    }
    assert choices['device'] == DEVICES and choices['reg_type'] == REG_TYPES
    assert choices['metric_pose_sample_mode'] == METRIC_POSE_SAMPLE_MODES
    assert choices['sr_module'] == SR_MODULES and choices['decoder_activation'] == ACTIVATIONS
    _assert_usage_error(_invoke('--dry-run', '--reg_type', 'total-detach'), "Invalid value for '--reg_type'")


def test_metric_names_are_checked_before_training():
    assert _dry_run('--cfg', 'full-head')['metrics'] == ['fid50k_full']
    assert _dry_run('--metrics', 'fid2k,kid2k_full,pose_err')['metrics'] == ['fid2k', 'kid2k_full', 'pose_err']
    _assert_usage_error(_invoke('--dry-run', '--metrics', 'fid2k,fid_big'), 'unknown metric fid_big')


def test_unreadable_data_set_is_a_one_line_error(tmp_path):
    images, masks = tmp_path / 'images', tmp_path / 'masks'
    images.mkdir()
    masks.mkdir()
    result = _invoke('--data', str(images), '--seg_data', str(masks), '--outdir', str(tmp_path / 'runs'))
    _assert_usage_error(result, 'Error: ', exit_code=1)
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / 'runs').exists()


def test_resume_of_a_directory_without_state(tmp_path):
    _assert_usage_error(_invoke('--dry-run', '--resume', str(tmp_path)), 'holds no resume-state')


def _fake_resume_state(run_dir, cur_nimg: int, config_json: str | None = None, **config_changes) -> str:
    """A resume state file with a stored config (by default cpu-small's) and counters (its networks are not
    needed here)."""
    if config_json is None:
        config = TrainingConfig.from_preset(
            load_preset('cpu-small'), 'cpu-small', data='d.zip', seg_data='s.zip', gpus=1
        )
        config_json = dataclasses.replace(config, **config_changes).to_json()
    path = os.path.join(run_dir, f'resume-state-{cur_nimg // 1000:06d}.pt')
    torch.save(
        dict(
            format=RESUME_FORMAT,
            version=RESUME_VERSION,
            config_json=config_json,
            progress=dict(cur_nimg=cur_nimg, cur_tick=3, tick_start_nimg=cur_nimg, batch_idx=7, data_batches=7),
            networks={},
            optimizers={},
            rng=[],
        ),
        path,
    )
    return path


def test_resume_keeps_the_stored_options_and_applies_given_ones(tmp_path):
    path = _fake_resume_state(str(tmp_path), 2000, gamma=3.0, kimg=10.0)
    resolved = _dry_run('--resume', str(tmp_path), '--kimg', '20', '--workers', '1')
    assert resolved['resume_state'] == path and resolved['resume'] is None
    assert (resolved['gamma'], resolved['kimg'], resolved['workers'], resolved['data']) == (3.0, 20.0, 1, 'd.zip')
    # The snapshot's name finds the state beside it; a snapshot without one needs --resume_kimg.
    (tmp_path / 'network-snapshot-000002.pkl').write_bytes(b'')
    assert _dry_run('--resume', str(tmp_path / 'network-snapshot-000002.pkl'))['resume_state'] == path
    (tmp_path / 'network-snapshot-000001.pkl').write_bytes(b'')
    _assert_usage_error(
        _invoke('--dry-run', '--resume', str(tmp_path / 'network-snapshot-000001.pkl')), 'add --resume_kimg'
    )


def _stale_temporary_files(run_dir: str) -> list:
    """Two temporary files as a writer killed mid-write leaves them (by the writer's own naming), and two
    hidden .tmp files of someone else -> (the stale ones, the foreign ones)."""
    from training.checkpoints.atomic_files import _temporary_file_beside

    stale = []
    for name, size in (('network-snapshot-000004.pkl', 3 * 2**20), ('resume-state-000004.pt', 2**20)):
        path = _temporary_file_beside(os.path.join(run_dir, name))
        with open(path, 'wb') as file:
            file.write(b'\0' * size)
        stale.append(path)
    foreign = [os.path.join(run_dir, name) for name in ('.notes.tmp', '.network-snapshot-000004.pkl.tmp')]
    for path in foreign:
        open(path, 'wb').close()
    return stale, foreign


def test_resume_and_torchrun_restart_remove_the_stale_temporary_files_of_the_run(tmp_path):
    run_dir = str(tmp_path / 'run')
    os.makedirs(run_dir)
    state = _fake_resume_state(run_dir, 2000, kimg=2.0)
    stale, foreign = _stale_temporary_files(run_dir)
    # A dry run changes nothing.
    _dry_run('--resume', run_dir, '--kimg', '4')
    assert all(os.path.exists(path) for path in stale + foreign)
    # --resume of the directory, or of its snapshot: one line, the writers' own temporary files gone, others kept.
    (tmp_path / 'run' / 'network-snapshot-000002.pkl').write_bytes(b'')
    for resume in (run_dir, os.path.join(run_dir, 'network-snapshot-000002.pkl')):
        if resume != run_dir:
            stale = _stale_temporary_files(run_dir)[0]
        result = _invoke('--resume', resume, '--outdir', str(tmp_path / 'runs'))  # stops: the run is at --kimg
        assert [line for line in result.output.splitlines() if 'removed' in line] == [
            f'removed 2 unfinished temporary file(s) (4.0 MB) of an interrupted write from {run_dir}: '
            f'{os.path.basename(stale[0])}, {os.path.basename(stale[1])}'
        ], result.output
        assert 'pass a larger --kimg' in result.output
        assert not any(os.path.exists(path) for path in stale) and all(os.path.exists(path) for path in foreign)
    # A torchrun restart of a run directory that holds no resume state yet.
    os.remove(state)
    stale = _stale_temporary_files(run_dir)[0]
    with open(os.path.join(run_dir, train.TORCHRUN_RUN_ID_FILE), 'w') as file:
        file.write('run-7')
    config = TrainingConfig.from_preset(load_preset('cpu-small'), 'cpu-small', data='d.zip', seg_data='s.zip', gpus=1)
    outdir = str(tmp_path)
    assert train._restarted_run(outdir, config, {}, {}, 'run-7', 1) == (run_dir, config)
    assert not any(os.path.exists(path) for path in stale) and all(os.path.exists(path) for path in foreign)


def test_resume_refuses_changes_that_do_not_fit_the_state(tmp_path):
    _fake_resume_state(str(tmp_path), 12000, kimg=12.0)
    _assert_usage_error(_invoke('--dry-run', '--resume', str(tmp_path)), 'pass a larger --kimg')
    _assert_usage_error(
        _invoke('--dry-run', '--resume', str(tmp_path), '--kimg', '20', '--cbase', '1024'),
        'cannot change the network architecture',
    )
    _assert_usage_error(
        _invoke('--dry-run', '--resume', str(tmp_path), '--kimg', '20', '--cfg', 'cpu-small'),
        '--cfg cannot be combined with --resume',
    )


def test_new_stage_from_a_snapshot(tmp_path):
    from tests.tiny_run import write_tiny_snapshot

    run_dir, config = write_tiny_snapshot(str(tmp_path / 'tiny'))
    snapshot = os.path.join(run_dir, 'network-snapshot-000000.pkl')
    stage = ('--cfg', config.cfg, '--resume', snapshot)
    resolved = _dry_run(*stage, '--resume_kimg', '6', '--kimg', '16', '--train_g_pose_branch', 'false')
    assert resolved['resume'] == snapshot and resolved['stage_start_kimg'] == 6.0
    assert resolved['resume_state'] is None
    # docs/method.md §9.5: a new stage has no EMA rampup and, without --resume_blur, no blur or GPC fade.
    assert resolved['ema_rampup'] is None
    assert resolved['blur_init_sigma'] == 0.0 and resolved['gpc_reg_fade_kimg'] == 0.0
    kept = _dry_run(*stage, '--resume_kimg', '6', '--kimg', '16', '--resume_blur')
    assert kept['blur_init_sigma'] == load_preset('cpu-small')['training']['blur_init_sigma']
    _assert_usage_error(
        _invoke('--dry-run', *stage, '--resume_kimg', '16', '--kimg', '16'), 'must be above the stage start'
    )
    state = _fake_resume_state(str(tmp_path), 6000)
    _assert_usage_error(
        _invoke('--dry-run', '--resume', state, '--resume_kimg', '6', '--kimg', '16'), 'starts from a network snapshot'
    )


def _assert_one_line_error_and_no_outdir(result, fragment: str, outdir) -> None:
    assert result.exit_code == 2 and 'Traceback' not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert fragment in lines[-1] and lines[-1].startswith('Error: '), result.output
    assert not os.path.exists(outdir)


def test_dry_run_makes_the_checks_of_the_start_of_training(tmp_path):
    """A dry run refuses what the run refuses: an unreadable or foreign --resume snapshot, networks that cannot
    be built; and it exits 0 on the same command line with good inputs."""
    from tests.tiny_run import write_tiny_snapshot

    run_dir, config = write_tiny_snapshot(str(tmp_path / 'tiny'))
    pkl = os.path.join(run_dir, 'network-snapshot-000000.pkl')
    truncated, random_bytes = tmp_path / 'truncated.pkl', tmp_path / 'random.pkl'
    truncated.write_bytes(open(pkl, 'rb').read()[:20000])
    random_bytes.write_bytes(random.Random(0).randbytes(3000))  # seeded: some random bytes unpickle to an int
    preset = json.loads(open(config.cfg).read())
    preset['generator'].update(triplane_resolution=8, sr_input_resolution=16)  # the background needs more ws
    unbuildable = tmp_path / 'unbuildable.json'
    unbuildable.write_text(json.dumps(preset))
    data = ('--data', config.data, '--seg_data', config.seg_data)
    outdir = str(tmp_path / 'runs')
    for args, fragment in (
        (('--cfg', config.cfg, '--resume', str(truncated), '--resume_kimg', '0'), 'truncated.pkl: not a readable'),
        (('--cfg', config.cfg, '--resume', str(random_bytes), '--resume_kimg', '0'), 'random.pkl: not a readable'),
        (
            ('--cfg', 'cpu-small', '--resume', pkl, '--resume_kimg', '0'),
            'built with other options than --cfg cpu-small',
        ),
        (('--cfg', str(unbuildable)), 'lower sr_input_resolution or raise triplane_resolution'),
        (('--cfg', config.cfg, '--cbase', '1'), '--cbase 1 leaves'),
    ):
        for dry in (('-n',), ()):
            result = _invoke(*dry, *args, *data, '--outdir', outdir, '--kimg', '0.004', '--workers', '0')
            _assert_one_line_error_and_no_outdir(result, fragment, outdir)
    resolved = _dry_run('--cfg', config.cfg, '--resume', pkl, '--resume_kimg', '0', *data, '--outdir', outdir)
    assert resolved['resume'] == pkl and not os.path.exists(outdir)


def test_a_channel_base_too_small_for_the_networks_names_the_option(tmp_path):
    """--cbase 1 gives every block 0 channels: one line naming --cbase, before a run directory exists."""
    from tests.tiny_run import tiny_setup

    preset, config = tiny_setup(str(tmp_path))
    outdir = str(tmp_path / 'runs')
    common = ('--cfg', preset, '--data', config.data, '--seg_data', config.seg_data, '--outdir', outdir)
    result = _invoke(*common, '--cbase', '1', '--kimg', '0.004', '--workers', '0')
    _assert_one_line_error_and_no_outdir(result, '--cbase 1 leaves the 32x32 blocks', outdir)
    assert 'use --cbase 32 or more' in result.output
    # The smallest channel base that the message names builds.
    assert _dry_run(*common, '--cbase', '32')['generator']['channel_base'] == 32


def test_a_full_disk_at_the_options_file_leaves_no_run_directory(tmp_path, monkeypatch):
    """The run directory is made, then its training_options.json cannot be written: one line naming the file, and
    the directory is gone (a run directory without its options cannot be resumed)."""
    import builtins

    from tests.test_full_disk import full_disk_open
    from tests.tiny_run import tiny_setup

    preset, config = tiny_setup(str(tmp_path))
    outdir = tmp_path / 'runs'
    monkeypatch.setattr(builtins, 'open', full_disk_open('training_options.json'))
    common = ('--cfg', preset, '--data', config.data, '--seg_data', config.seg_data, '--outdir', str(outdir))
    result = _invoke(*common, '--kimg', '0.004', '--workers', '0')
    assert result.exit_code == 1 and 'Traceback' not in result.output, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith('Error: cannot write ') and last.endswith('training_options.json: No space left on device')
    assert os.listdir(outdir) == []


# ------------------------------------------------------------------------------------------------
# TrainingConfig.


def _config(**changes) -> TrainingConfig:
    config = TrainingConfig.from_preset(load_preset('cpu-small'), 'cpu-small', data='d.zip', seg_data='s.zip', gpus=1)
    return config.replace(**changes)


def test_config_json_round_trip():
    config = _config(batch=16, neural_rendering_resolution_final=64, desc='x')
    assert TrainingConfig.from_json(config.to_json()) == config


def test_training_options_of_an_earlier_version_still_load(tmp_path):
    with open(OLD_TRAINING_OPTIONS, encoding='utf-8') as f:
        text = f.read()
    config = TrainingConfig.from_json(text, source=OLD_TRAINING_OPTIONS).validate()
    # Written back unchanged, with the settings added since at their (published) defaults.
    later_defaults = {
        'pose_prior_match': 'paired',
        'd_mirror_camera': True,
        'labelled_pose_loss_weight': 0.0,
        'allow_tf32': False,
    }
    assert json.loads(config.to_json()) == {**json.loads(text), **later_defaults}
    assert (config.cfg, config.batch, config.gamma, config.stage_start_kimg) == ('full-head', 64, 2.0, 6000.0)
    assert config.metrics == ['fid50k_full', 'pose_err'] and config.reg_type == 'monotonic-detach'
    # --resume of a run whose resume state carries those options.
    _fake_resume_state(str(tmp_path), 7_000_000, config_json=text)
    resolved = _dry_run('--resume', str(tmp_path), '--device', 'cpu')
    assert resolved == {
        **json.loads(text),
        **later_defaults,
        'device': 'cpu',
        'resume_state': resolved['resume_state'],
    }
    assert resolved['resume_state'].endswith('resume-state-007000.pt')


def test_config_derived_values():
    config = _config(batch=16, ema_kimg_per_32=10.0, blur_fade_kimg=200.0, gpus=2, batch_gpu=4)
    assert config.ema_kimg == 5.0 and config.effective_blur_fade_kimg == 100.0
    assert config.batch_per_process == 8
    assert _config(density_reg=0.0).g_reg_interval is None and _config(density_reg=0.25).g_reg_interval == 4
    assert _config(gamma=0.0, gamma_seg=0.0).r1_interval is None and _config().r1_interval == 16


def test_config_rejects_unknown_missing_and_mistyped_settings():
    values = dataclasses.asdict(_config())
    with pytest.raises(ConfigError, match='unknown setting.*batchsize'):
        TrainingConfig.from_dict({**values, 'batchsize': 4})
    with pytest.raises(ConfigError, match='missing setting.*gamma'):
        TrainingConfig.from_dict({k: v for k, v in values.items() if k != 'gamma'})
    with pytest.raises(ConfigError, match='batch: expected int'):
        TrainingConfig.from_dict({**values, 'batch': 'eight'})
    with pytest.raises(ConfigError, match='mirror: expected bool'):
        TrainingConfig.from_dict({**values, 'mirror': 1})
    with pytest.raises(ConfigError, match='generator: unknown argument.*z_size'):
        _config(generator={**values['generator'], 'z_size': 3}).validate()


def test_default_workers_fit_the_cores(monkeypatch):
    from training import config as config_module

    monkeypatch.setattr(config_module.os, 'sched_getaffinity', lambda pid: {0, 1}, raising=False)
    assert config_module.default_workers() == 1
    monkeypatch.setattr(config_module.os, 'sched_getaffinity', lambda pid: set(range(16)), raising=False)
    assert config_module.default_workers() == 3


def test_preset_with_missing_or_unknown_generator_keys_is_a_one_line_error(tmp_path):
    preset = json.loads(open(os.path.join(REPO, 'configs', 'cpu-small.json')).read())
    del preset['generator']['img_resolution']
    preset['generator']['img_resolutoin'] = 64
    path = tmp_path / 'mine.json'
    path.write_text(json.dumps(preset))
    result = CliRunner().invoke(train.main, ['--cfg', str(path), '-n'])
    assert result.exit_code == 2 and 'Traceback' not in result.output
    assert 'lacks img_resolution; has unknown img_resolutoin' in result.output.strip().splitlines()[-1]


def test_a_stage_from_a_snapshot_of_other_networks_is_a_one_line_error(tmp_path):
    from tests.tiny_run import write_tiny_snapshot

    run_dir, _ = write_tiny_snapshot(str(tmp_path / 'tiny'))
    snapshot = os.path.join(run_dir, 'network-snapshot-000000.pt')
    garbage = tmp_path / 'garbage.pkl'
    garbage.write_bytes(random.Random(1).randbytes(3000))  # seeded: some random bytes unpickle to an int
    for resume, expected in (
        (snapshot, 'its generator was built with other options than --cfg cpu-small'),
        (str(garbage), 'garbage.pkl: not a readable network pickle'),
    ):
        result = CliRunner().invoke(
            train.main,
            ['--cfg', 'cpu-small', '--resume', resume, '--resume_kimg', '0', '--outdir', str(tmp_path / 'runs')],
        )
        assert result.exit_code == 2 and 'Traceback' not in result.output, result.output
        assert expected in result.output.strip().splitlines()[-1]
        assert not (tmp_path / 'runs').exists()
