"""Shared pytest set-up: a fixed thread count so that CPU tests behave the same everywhere."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(min(2, os.cpu_count() or 1))
# CUDA kernels are compared with reference paths in full float32: no TensorFloat-32 convolutions or matrix products.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def cuda_available() -> bool:
    return torch.cuda.is_available()


def requires_cuda(test):
    """Marks a test `cuda` (`pytest -m cuda` selects them all) and skips it where no CUDA device is visible."""
    skip = pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason='no CUDA device on this machine: CUDA kernels are checked against the reference path only where a GPU is present',
    )
    return pytest.mark.cuda(skip(test))
