"""Tests for training/cli.py and the tools' handling of bad options: NaN and inf, devices, URLs, memory, read-only folders."""

import os

import click
import pytest
from click.testing import CliRunner

import extract_shapes
import gen_samples
import gen_videos
import train
from training.cli import FiniteFloat


def test_finite_float_refuses_nan_and_inf_and_keeps_the_range():
    assert FiniteFloat().convert('1.5', None, None) == 1.5
    assert FiniteFloat(min=0).convert('0', None, None) == 0.0
    for text in ('nan', 'inf', '-inf', 'NaN'):
        with pytest.raises(click.BadParameter, match='is not a finite number'):
            FiniteFloat().convert(text, None, None)
    with pytest.raises(click.BadParameter):
        FiniteFloat(min=0, min_open=True).convert('0', None, None)


@pytest.mark.parametrize(
    'tool, option',
    [
        (train.main, '--gamma'),
        (train.main, '--tick'),
        (train.main, '--glr'),
        (gen_samples.main, '--trunc'),
        (gen_samples.main, '--shape-level'),
        (gen_videos.main, '--pose-amplitude'),
        (gen_videos.main, '--trunc'),
        (extract_shapes.main, '--level'),
        (extract_shapes.main, '--trunc'),
    ],
)
@pytest.mark.parametrize('value', ['nan', 'inf'])
def test_tools_refuse_non_finite_numbers(tmp_path, tool, option, value):
    result = CliRunner().invoke(
        tool, [option, value, '--outdir', str(tmp_path / 'out')] + (['-n'] if tool is train.main else [])
    )
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert f"Invalid value for '{option}': '{value}' is not a finite number" in result.output
    assert not (tmp_path / 'out').exists()


def test_device_option():
    import torch

    from training.cli import Device

    assert Device().convert('cpu', None, None) == torch.device('cpu')
    for text, message in (('tpu', 'is not a device'), ('meta', 'the tools run on cpu or cuda')):
        with pytest.raises(click.BadParameter, match=message):
            Device().convert(text, None, None)
    if not torch.cuda.is_available():
        with pytest.raises(click.BadParameter, match='no CUDA device on this machine; use --device cpu'):
            Device().convert('cuda', None, None)


@pytest.mark.parametrize('tool', [gen_samples.main, gen_videos.main, extract_shapes.main])
def test_tools_refuse_unknown_devices_and_url_schemes(tmp_path, tool):
    result = CliRunner().invoke(tool, ['--network', 'x.pkl', '--device', 'tpu', '--outdir', str(tmp_path / 'out')])
    assert result.exit_code == 2 and "Invalid value for '--device': 'tpu' is not a device" in result.output
    result = CliRunner().invoke(
        tool,
        ['--network', 'ftp://host/snapshot.pkl', '--device', 'cpu', '--seeds', '0', '--outdir', str(tmp_path / 'out')],
    )
    assert result.exit_code == 1 and 'Traceback' not in result.output
    assert 'unsupported URL scheme "ftp"' in result.output.strip().splitlines()[-1]


def test_extract_shapes_fails_on_an_unreadable_volume(tmp_path):
    import numpy as np

    volumes = tmp_path / 'volumes'
    volumes.mkdir()
    (volumes / 'seed0000.mrc').write_bytes(np.random.default_rng(0).bytes(5000))
    result = CliRunner().invoke(extract_shapes.main, ['--mrc-dir', str(volumes), '--outdir', str(tmp_path / 'out')])
    assert result.exit_code == 1 and 'Traceback' not in result.output
    assert 'Error: 1 of 1 .mrc files gave no mesh, the first:' in result.output


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    from tests.tiny_run import write_tiny_snapshot

    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


@pytest.mark.parametrize(
    'tool, option, value',
    [
        (gen_samples.main, '--sample-mult', '10000000'),
        (gen_videos.main, '--sample-mult', '10000000'),
        (extract_shapes.main, '--shape-res', '20000'),
        (gen_samples.main, '--shape-res', '20000'),
    ],
)
def test_settings_that_cannot_fit_in_memory_are_refused_before_allocating(run_dir, tmp_path, tool, option, value):
    extra = ['--shapes'] if tool is gen_samples.main and option == '--shape-res' else []
    result = CliRunner().invoke(
        tool,
        ['--network', run_dir, '--seeds', '0', '--device', 'cpu', option, value, '--outdir', str(tmp_path / 'out')]
        + extra,
    )
    assert result.exit_code == 2 and 'Traceback' not in result.output
    assert f'Invalid value for {option}: needs about' in result.output and 'GiB free' in result.output


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a read-only file system (a tmpfs mounted read-only; root only)."""
    import subprocess

    folder = tmp_path / 'read-only'
    folder.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro', 'tmpfs', str(folder)], capture_output=True).returncode != 0:
        pytest.skip('cannot mount a read-only file system here (needs root)')
    yield folder
    subprocess.run(['umount', str(folder)], check=True)


def test_read_only_outdirs_are_one_line_errors(run_dir, read_only_folder, tmp_path):
    import dataset_tool
    from tests.test_dataset_tool import make_layout

    root = os.path.dirname(run_dir)
    cases = [
        (
            gen_samples.main,
            ['--network', run_dir, '--seeds', '0', '--device', 'cpu', '--outdir', str(read_only_folder)],
        ),
        (gen_videos.main, ['--network', run_dir, '--seeds', '0', '--device', 'cpu', '--outdir', str(read_only_folder)]),
        (
            extract_shapes.main,
            ['--network', run_dir, '--seeds', '0', '--device', 'cpu', '--outdir', str(read_only_folder)],
        ),
        (
            train.main,
            [
                '--cfg',
                os.path.join(root, 'tiny.json'),
                '--data',
                os.path.join(root, 'data.zip'),
                '--seg_data',
                os.path.join(root, 'seg.zip'),
                '--outdir',
                str(read_only_folder / 'runs'),
                '--kimg',
                '0.004',
                '--workers',
                '0',
            ],
        ),
    ]
    for tool, args in cases:
        result = CliRunner().invoke(tool, args)
        assert result.exit_code == 1 and 'Traceback' not in result.output, result.output
        assert 'Read-only file system' in result.output.strip().splitlines()[-1], result.output
    source, _ = make_layout(tmp_path / 'source')
    result = CliRunner().invoke(
        dataset_tool.main,
        [
            'convert',
            '--source',
            source,
            '--dest',
            str(read_only_folder / 'a.zip'),
            '--seg-dest',
            str(tmp_path / 'b.zip'),
            '--resolution',
            '8',
        ],
    )
    assert result.exit_code == 1 and 'Traceback' not in result.output
    assert 'a.zip: Read-only file system' in result.output and not (tmp_path / 'b.zip').exists()


def test_commands_take_long_options_in_both_spellings(tmp_path):
    from training.cli import Command

    @click.command(cls=Command)
    @click.option('--seg_data')
    @click.option('--batch-gpu', type=int)
    @click.option('--mirror/--no-mirror', default=True)
    @click.argument('rest', nargs=-1)
    def tool(seg_data, batch_gpu, mirror, rest):
        click.echo(f'{seg_data} {batch_gpu} {mirror} {list(rest)}')

    runner = CliRunner()
    for args in (
        ['--seg-data', 'a', '--batch_gpu', '3', '--no_mirror'],
        ['--seg_data=a', '--batch-gpu=3', '--no-mirror'],
    ):
        result = runner.invoke(tool, args)
        assert result.exit_code == 0 and result.output == 'a 3 False []\n', result.output
    # After '--' nothing is respelled; an option that exists in neither spelling is still refused.
    assert runner.invoke(tool, ['--', '--seg-data']).output == "None None True ['--seg-data']\n"
    result = runner.invoke(tool, ['--seg-date', 'a'])
    assert result.exit_code == 2 and "No such option '--seg-date'" in result.output
    assert '--seg_data' in runner.invoke(tool, ['--help']).output
    # A real tool: extract_shapes declares --mrc-dir and takes --mrc_dir.
    (tmp_path / 'volumes').mkdir()
    result = runner.invoke(
        extract_shapes.main, ['--mrc_dir', str(tmp_path / 'volumes'), '--outdir', str(tmp_path / 'out')]
    )
    assert result.exit_code == 1 and 'no .mrc files' in result.output, result.output


def test_seed_lists_are_bounded_before_they_are_expanded():
    from training.cli import MAX_SEEDS, parse_seeds

    assert parse_seeds('0,2,5-7') == [0, 2, 5, 6, 7] and parse_seeds([3, 1]) == [3, 1]
    for text in ('0-99999999999', '5-2', '1,,2', '-1', str(2**32)):
        with pytest.raises(click.BadParameter, match='expected seeds like 0,2,5-9'):
            parse_seeds(text)
    with pytest.raises(click.BadParameter, match=f'names {MAX_SEEDS + 1} seeds; at most {MAX_SEEDS}'):
        parse_seeds(f'0-{MAX_SEEDS}')


@pytest.mark.parametrize(
    'tool, args, option',
    [
        (gen_samples.main, ['--cfg', 'cpu-small', '--trunc-cutoff', '-1'], '--trunc-cutoff'),
        (gen_samples.main, ['--cfg', 'cpu-small', '--seeds_num', '2', '--seeds-seed', '-1'], '--seeds-seed'),
        (gen_samples.main, ['--cfg', 'cpu-small', '--init-seed', str(10**23)], '--init-seed'),
        (gen_samples.main, ['--cfg', 'cpu-small', '--seeds_num', '3000000000'], '--seeds_num'),
        (gen_videos.main, ['--network', 'x.pt', '--trunc-cutoff', '-1'], '--trunc-cutoff'),
        (extract_shapes.main, ['--network', 'x.pt', '--trunc-cutoff', '-1'], '--trunc-cutoff'),
    ],
)
def test_out_of_range_integers_are_usage_errors(tool, args, option, tmp_path):
    result = CliRunner().invoke(tool, [*args, '--outdir', str(tmp_path / 'out')])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output


def test_a_rendering_resolution_above_the_output_is_refused_before_training(tmp_path):
    result = CliRunner().invoke(
        train.main,
        [
            '--cfg',
            'cpu-small',
            '--neural_rendering_resolution_initial',
            '100000',
            '--outdir',
            str(tmp_path / 'runs'),
            '--dry-run',
        ],
    )
    assert result.exit_code == 2 and 'rays per image side cannot exceed the output resolution 64' in result.output


def test_a_missing_body_model_is_refused_before_the_run_directory_exists(tmp_path):
    result = CliRunner().invoke(
        train.main,
        ['--cfg', 'cpu-small', '--body_model', str(tmp_path / 'missing.pkl'), '--outdir', str(tmp_path / 'runs')],
    )
    assert result.exit_code == 2 and 'Invalid value for --body_model: SMPL model not found' in result.output
    assert not (tmp_path / 'runs').exists()


def test_an_image_too_large_to_decode_is_a_one_line_error(tmp_path, monkeypatch):
    import PIL.Image

    from training.data.photos import read_photo

    path = str(tmp_path / 'big.png')
    PIL.Image.new('RGB', (8, 8)).save(path)
    monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 10)  # 64 pixels is then a decompression bomb
    with pytest.raises(ValueError, match='big.png: cannot read the image'):
        read_photo(path, 'RGB', 8)
