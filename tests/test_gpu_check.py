"""Tests for benchmarks/gpu_check.sh: on a machine without CUDA it exits at once, saying so."""

import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the exit path of a machine without CUDA')
def test_gpu_check_exits_at_once_without_cuda(tmp_path):
    logs = tmp_path / 'logs'
    result = subprocess.run(
        ['bash', os.path.join(REPO, 'benchmarks', 'gpu_check.sh')],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, 'PYTHON': sys.executable, 'GPU_CHECK_LOGS': str(logs)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        f'gpu_check: no CUDA device visible to the torch of {sys.executable}; nothing to check'
    ]
    assert result.stderr == '' and not logs.exists()


def test_gpu_check_refuses_an_unknown_stage_before_anything_runs(tmp_path):
    logs = tmp_path / 'logs'
    result = subprocess.run(
        ['bash', os.path.join(REPO, 'benchmarks', 'gpu_check.sh')],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, 'PYTHON': sys.executable, 'GPU_CHECK_LOGS': str(logs), 'GPU_CHECK_STAGES': 'tests trainng'},
    )
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.strip() == (
        "gpu_check: unknown stage 'trainng' in GPU_CHECK_STAGES "
        '(stages: ops tests deformation throughput generator training cpu-render)'
    )
    assert not logs.exists()


def test_compare_renders_renders_one_latent_reproducibly(tmp_path, capsys):
    # The comparison that the cpu-render stage makes between CUDA and the CPU, between two CPU renders
    # here: without sample jitter, they are the same image.
    from benchmarks.gpu_check import compare_renders
    from tests.tiny_run import write_tiny_snapshot

    run_dir = write_tiny_snapshot(str(tmp_path))[0]
    assert compare_renders(run_dir, devices=('cpu', 'cpu')) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith('SUMMARY ok: one latent of the snapshot rendered on cpu and on cpu')
    assert 'mean |cpu - cpu| 0.000 of 255 (max 0.0)' in line
