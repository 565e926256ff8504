"""Builds the per-element math of a CUDA kernel (its shared `.h`) as a CPU extension for the tests."""

import os
import shutil
import warnings

import pytest

from torch_utils import custom_ops


def build_host_kernel(tmp_path_factory, name: str, source: str, header: str):
    """Compile `source` (C++ that includes `header`) as plugin `name`; a failed build fails the test."""
    source_dir = tmp_path_factory.mktemp(name)
    source_path = os.path.join(str(source_dir), f'{name}.cpp')
    with open(source_path, 'w', encoding='utf-8') as f:
        f.write(source)
    with warnings.catch_warnings():
        warnings.simplefilter('error', custom_ops.PluginUnavailableWarning)
        return custom_ops.get_plugin(
            f'{name}_kernel', [source_path], headers=[header], extra_cflags=['-O1', '-std=c++17']
        )


def cpu_plugin_or_skip(load, what: str):
    """`load()`'s C++ extension; skips without a C++ compiler, fails when one is present but the build fails."""
    plugin = load()
    if plugin is None:
        if shutil.which('c++') or shutil.which('g++'):
            pytest.fail(f'{what} does not build although a C++ compiler is present')
        pytest.skip(f'no C++ compiler here: {what} is replaced by PyTorch ops')
    return plugin
