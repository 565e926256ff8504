"""Tests for torch_utils/custom_ops.py: building, caching, failure reporting and stale locks."""

import os
import time
import types
import uuid
import warnings

import pytest
import torch

from torch_utils import custom_ops

# pybind11 alone keeps the compile to seconds; torch/extension.h would take a minute on 2 cores.
TINY_SOURCE = """
#include <pybind11/pybind11.h>
static int add_offset(int value) { return value + OFFSET; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("add_offset", &add_offset); }
"""
BROKEN_SOURCE = 'this is not C++;\n'


@pytest.fixture
def extensions_dir(tmp_path, monkeypatch):
    root = tmp_path / 'extensions'
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(root))
    return root


def unique_name(prefix: str) -> str:
    return f'{prefix}_{uuid.uuid4().hex[:8]}'


def write_source(folder, text: str, name: str = 'plugin.cpp') -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return str(path)


def plugin_warnings(caught) -> list:
    return [w for w in caught if issubclass(w.category, custom_ops.PluginUnavailableWarning)]


def test_builds_imports_and_caches_a_cpp_plugin(tmp_path, extensions_dir, monkeypatch):
    source = write_source(tmp_path / 'src', TINY_SOURCE.replace('OFFSET', '7'))
    name = unique_name('tiny')
    with warnings.catch_warnings():
        warnings.simplefilter('error', custom_ops.PluginUnavailableWarning)
        plugin = custom_ops.get_plugin(name, [source], extra_cflags=['-O0'])
    assert plugin is not None
    assert plugin.add_offset(5) == 12
    assert custom_ops.get_plugin(name, [source], extra_cflags=['-O0']) is plugin

    # A new process finds the library on disk and does not compile again.
    del custom_ops._plugins[name]
    monkeypatch.setattr(torch.utils.cpp_extension, 'load', lambda **kwargs: pytest.fail('rebuilt a cached plugin'))
    reloaded = custom_ops.get_plugin(name, [source], extra_cflags=['-O0'])
    assert reloaded.add_offset(-7) == 0
    assert not os.path.exists(os.path.join(os.path.dirname(reloaded.__file__), custom_ops.LOCK_FILE_NAME))


def test_truncated_library_is_rebuilt(tmp_path, extensions_dir):
    source = write_source(tmp_path / 'src', TINY_SOURCE.replace('OFFSET', '5'))
    name = unique_name('truncated')
    build_dir = custom_ops.build_directory(name, [source], [], {})
    os.makedirs(build_dir)
    with open(os.path.join(build_dir, name + '.so'), 'wb') as library:
        library.write(b'\x7fELF cut short')
    plugin = custom_ops.get_plugin(name, [source])
    assert plugin is not None and plugin.add_offset(1) == 6


def test_build_directory_follows_source_contents_and_options(tmp_path, extensions_dir):
    source = write_source(tmp_path, TINY_SOURCE.replace('OFFSET', '1'))
    first = custom_ops.build_directory('tiny', [source], [], {})
    assert custom_ops.build_directory('tiny', [source], [], {}) == first
    assert custom_ops.build_directory('tiny', [source], [], {'extra_cflags': ['-O0']}) != first
    header = write_source(tmp_path, '#define X 1\n', 'plugin.h')
    assert custom_ops.build_directory('tiny', [source], [header], {}) != first
    write_source(tmp_path, TINY_SOURCE.replace('OFFSET', '2'))
    edited = custom_ops.build_directory('tiny', [source], [], {})
    assert edited != first
    assert os.path.dirname(edited) == str(extensions_dir)


def test_broken_source_returns_none_with_one_warning(tmp_path, extensions_dir):
    source = write_source(tmp_path / 'src', BROKEN_SOURCE)
    name = unique_name('broken')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert custom_ops.get_plugin(name, [source]) is None
        assert custom_ops.get_plugin(name, [source]) is None
    reported = plugin_warnings(caught)
    assert len(reported) == 1
    message = str(reported[0].message)
    assert name in message and '\n' not in message
    log_path = message.split('compiler output in ')[1].split(';')[0]
    assert 'error' in open(log_path).read()
    assert not os.path.exists(os.path.join(os.path.dirname(log_path), custom_ops.LOCK_FILE_NAME))


def test_stale_lock_gives_up_instead_of_waiting(tmp_path, extensions_dir):
    source = write_source(tmp_path / 'src', TINY_SOURCE.replace('OFFSET', '3'))
    name = unique_name('locked')
    build_dir = custom_ops.build_directory(name, [source], [], {})
    os.makedirs(build_dir)
    lock_path = os.path.join(build_dir, custom_ops.LOCK_FILE_NAME)
    open(lock_path, 'w').close()
    an_hour_ago = time.time() - 3600
    os.utime(lock_path, (an_hour_ago, an_hour_ago))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert custom_ops.get_plugin(name, [source], lock_timeout_s=1.0) is None
    reported = plugin_warnings(caught)
    assert len(reported) == 1 and lock_path in str(reported[0].message)
    assert os.path.exists(lock_path), 'a lock that may belong to another process must not be deleted'


def test_young_lock_is_waited_for_until_its_deadline(tmp_path, extensions_dir):
    source = write_source(tmp_path / 'src', TINY_SOURCE.replace('OFFSET', '4'))
    name = unique_name('waiting')
    build_dir = custom_ops.build_directory(name, [source], [], {})
    os.makedirs(build_dir)
    open(os.path.join(build_dir, custom_ops.LOCK_FILE_NAME), 'w').close()
    with pytest.warns(custom_ops.PluginUnavailableWarning, match='older than lock_timeout_s'):
        assert custom_ops.get_plugin(name, [source], lock_timeout_s=0.5) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the fallback of a machine without CUDA')
def test_cuda_source_without_device_returns_none_quickly(tmp_path, extensions_dir):
    source = write_source(tmp_path, '__global__ void kernel() {}\n', 'kernel.cu')
    name = unique_name('cuda_only')
    with pytest.warns(custom_ops.PluginUnavailableWarning, match='no CUDA device'):
        assert custom_ops.get_plugin(name, [source]) is None
    assert not extensions_dir.exists(), 'nothing should be built or created without a device'


def test_missing_source_is_reported(tmp_path, extensions_dir):
    with pytest.warns(custom_ops.PluginUnavailableWarning, match='does not exist'):
        assert custom_ops.get_plugin(unique_name('missing'), ['nowhere.cpp'], source_dir=str(tmp_path)) is None


def test_choose_impl():
    def no_plugin():
        return None

    def must_not_load():
        pytest.fail('the plugin is not needed for CPU tensors')

    cpu = torch.zeros(1)
    assert custom_ops.choose_impl('auto', cpu, must_not_load) == 'ref'
    assert custom_ops.choose_impl('ref', cpu, must_not_load) == 'ref'
    with pytest.raises(ValueError, match='needs CUDA tensors'):
        custom_ops.choose_impl('cuda', cpu, must_not_load)
    with pytest.raises(ValueError, match="'auto', 'ref' or 'cuda'"):
        custom_ops.choose_impl('fast', cpu, must_not_load)
    # choose_impl reads only the device, so a stand-in lets the CUDA branches run on any machine.
    on_cuda = types.SimpleNamespace(device=torch.device('cuda', 0))
    assert custom_ops.choose_impl('auto', on_cuda, no_plugin) == 'ref'
    assert custom_ops.choose_impl('auto', on_cuda, lambda: types.ModuleType('plugin')) == 'cuda'
    assert custom_ops.choose_impl('cuda', on_cuda, lambda: types.ModuleType('plugin')) == 'cuda'
    with pytest.raises(RuntimeError, match='could not be built'):
        custom_ops.choose_impl('cuda', on_cuda, no_plugin)
