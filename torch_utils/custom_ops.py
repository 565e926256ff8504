"""Just-in-time building and loading of the C++/CUDA extensions behind `torch_utils.ops`.

Every op in `torch_utils/ops/` has a pure-PyTorch reference path and, where it pays off, a
CUDA kernel with the same signature. The kernel's sources sit beside the op's Python file and
are compiled on first use with ninja through `torch.utils.cpp_extension.load`:

- Build folders live under `$TORCH_EXTENSIONS_DIR` (or torch's default extensions folder) and
  are named by a hash of the source and header contents, the torch and CUDA versions and the
  build options, so an edited kernel is rebuilt and an unchanged one is loaded from disk.
- Concurrent processes serialise on a lock file in the build folder. A lock older than
  `lock_timeout_s` (left behind by a killed build) makes `get_plugin` give up instead of
  waiting forever; the warning names the file to delete.
- When a build is impossible (no CUDA device or toolkit, no compiler, a compile error, a stale
  lock) `get_plugin` returns None after one one-line warning per module per process, and the
  op falls back to its reference path.

Convention for op modules: each op with a kernel exposes

    def _plugin(require_device: bool = True) -> types.ModuleType | None

which calls `get_plugin` with its sources. `require_device=False` builds the CUDA kernel even
without a visible GPU (used by `benchmarks/build_cuda_ops.sh` to compile every kernel on a
machine with a CUDA toolkit but no device). Ops pick their implementation per call with
`choose_impl`.
"""

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import time
import types
import warnings
from collections.abc import Callable

import torch

LOCK_FILE_NAME = 'build.lock'
_TORCH_LOCK_FILE_NAME = 'lock'  # torch.utils.cpp_extension's own FileBaton, which waits without a deadline
_LOCK_POLL_SECONDS = 0.2

# Per-process cache: module name -> loaded module, or None once the build failed and was reported.
_plugins: dict[str, types.ModuleType | None] = {}


class PluginUnavailableWarning(UserWarning):
    """A C++/CUDA plugin could not be built or loaded; the op uses its reference path instead."""


def get_plugin(
    module_name: str,
    sources: list[str],
    headers: list[str] | None = None,
    source_dir: str | None = None,
    verbose: bool = False,
    lock_timeout_s: float = 600.0,
    require_device: bool = True,
    **build_kwargs,
) -> types.ModuleType | None:
    """JIT-build (ninja, torch.utils.cpp_extension.load) and import a C++/CUDA extension, cached per process and on disk.

    module_name: Python name of the extension (must match nothing else loaded in the process).
    sources, headers: file names, relative to `source_dir` when given. Headers are hashed and
        copied beside the sources so that `#include "x.h"` works, but not compiled.
    verbose: print the compiler output.
    lock_timeout_s: a build lock older than this is taken as stale (the building process died).
    require_device: when True (the default), CUDA sources are built only if torch sees a CUDA
        device; False builds them with any CUDA toolkit (for build scripts on GPU-less hosts).
    build_kwargs: passed to torch.utils.cpp_extension.load (extra_cflags, extra_cuda_cflags, ...).

    Returns None, after ONE one-line warning per module per process, when the build is impossible
    (no CUDA toolkit/device, no compiler, build error, or a stale build lock older than lock_timeout_s);
    callers then use their reference path.
    """
    if module_name in _plugins:
        return _plugins[module_name]
    headers = headers or []
    if source_dir is not None:
        sources = [os.path.join(source_dir, name) for name in sources]
        headers = [os.path.join(source_dir, name) for name in headers]
    try:
        module = _build_and_import(module_name, sources, headers, verbose, lock_timeout_s, require_device, build_kwargs)
    except _Unavailable as reason:
        module = None
        warnings.warn(
            f'{module_name}: {reason}; using the reference PyTorch implementation',
            PluginUnavailableWarning,
            stacklevel=2,
        )
    _plugins[module_name] = module
    return module


@functools.cache
def cpu_flags() -> frozenset[str]:
    """Instruction-set flags of this machine's CPU (Linux /proc/cpuinfo; empty elsewhere), for picking build options.

    Read once per process: the plugin loaders that pick their build options from it run on every call of their op.
    """
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('flags'):
                    return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    return frozenset()


def get_cpu_plugin(module_name: str, source: str, source_dir: str) -> types.ModuleType | None:
    """`get_plugin` for one of the project's CPU extensions (the tri-grid gather, the ray marcher).

    Built optimised, with OpenMP (at::parallel_for), AVX2 and FMA where the CPU has them, and
    without floating-point contraction, so that elementwise arithmetic rounds as PyTorch's own
    ops do. None (after one warning) when it cannot be built.
    """
    flags = ['-O3', '-ffp-contract=off', '-fopenmp']
    if {'avx2', 'fma'} <= cpu_flags():
        flags += ['-mavx2', '-mfma']
    return get_plugin(
        module_name, sources=[source], source_dir=source_dir, extra_cflags=flags, extra_ldflags=['-fopenmp']
    )


def choose_impl(impl: str, tensor: torch.Tensor, load_plugin: Callable[[], types.ModuleType | None]) -> str:
    """Resolve an op's `impl` argument for one call to 'ref' or 'cuda'.

    impl: 'auto' (the kernel for CUDA tensors when its plugin builds, else the reference),
        'ref' (always the reference) or 'cuda' (the kernel, or an error saying why not).
    tensor: the op's main input; only its device is used.
    load_plugin: the op module's `_plugin`, called only when a CUDA tensor asks for the kernel.
    """
    if impl not in ('auto', 'ref', 'cuda'):
        raise ValueError(f"impl={impl!r} is not known; use 'auto', 'ref' or 'cuda'")
    if impl == 'ref' or (impl == 'auto' and tensor.device.type != 'cuda'):
        return 'ref'
    if tensor.device.type != 'cuda':
        raise ValueError(f"impl='cuda' needs CUDA tensors, got a tensor on {tensor.device}; use impl='auto' or 'ref'")
    if load_plugin() is None:
        if impl == 'cuda':
            raise RuntimeError(
                "impl='cuda' was asked for but the CUDA plugin could not be built "
                "(see the PluginUnavailableWarning above); use impl='auto' to fall back to 'ref'"
            )
        return 'ref'
    return 'cuda'


def build_directory(module_name: str, sources: list[str], headers: list[str], build_kwargs: dict) -> str:
    """Folder for one version of a plugin: named by the contents of its files and the toolchain."""
    digest = hashlib.sha256()
    for path in [*sources, *headers]:
        digest.update(os.path.basename(path).encode())
        with open(path, 'rb') as file:
            digest.update(file.read())
    toolchain = (torch.__version__, torch.version.cuda, sys.version_info[:2], sorted(build_kwargs.items(), key=str))
    digest.update(repr(toolchain).encode())
    import torch.utils.cpp_extension as cpp_extension

    root = os.environ.get('TORCH_EXTENSIONS_DIR') or cpp_extension.get_default_build_root()
    return os.path.join(root, f'{module_name}-{digest.hexdigest()[:20]}')


class _Unavailable(Exception):
    """Reason, in one line, why a plugin cannot be used in this process."""


def _build_and_import(
    module_name: str,
    sources: list[str],
    headers: list[str],
    verbose: bool,
    lock_timeout_s: float,
    require_device: bool,
    build_kwargs: dict,
) -> types.ModuleType:
    import torch.utils.cpp_extension as cpp_extension

    uses_cuda = any(path.endswith('.cu') for path in sources)
    if uses_cuda and require_device and not (torch.cuda.is_available() and torch.version.cuda):
        raise _Unavailable('no CUDA device visible to this torch build, so the CUDA kernel is not built')
    if uses_cuda and cpp_extension.CUDA_HOME is None:
        raise _Unavailable('no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc)')
    if not cpp_extension.is_ninja_available():
        raise _Unavailable('ninja is not installed (pip install ninja)')
    missing = [path for path in [*sources, *headers] if not os.path.isfile(path)]
    if missing:
        raise _Unavailable(f'source file {missing[0]} does not exist')

    build_dir = build_directory(module_name, sources, headers, build_kwargs)
    library_path = os.path.join(build_dir, module_name + '.so')
    if os.path.isfile(library_path):
        try:
            return _import_library(module_name, library_path)
        except ImportError:
            pass  # A truncated library from an interrupted link: rebuild it below.

    os.makedirs(build_dir, exist_ok=True)
    lock_path = os.path.join(build_dir, LOCK_FILE_NAME)
    _acquire_lock(lock_path, lock_timeout_s)
    try:
        if os.path.isfile(library_path):  # Another process finished the build while we waited.
            try:
                return _import_library(module_name, library_path)
            except ImportError:
                os.remove(library_path)  # Otherwise ninja would take the broken library as up to date.
        # All builders of this folder hold our lock, so torch's own lock, if present, is a leftover.
        torch_lock = os.path.join(build_dir, _TORCH_LOCK_FILE_NAME)
        if os.path.exists(torch_lock):
            os.remove(torch_lock)
        copied_sources = []
        for path in [*sources, *headers]:
            target = os.path.join(build_dir, os.path.basename(path))
            shutil.copyfile(path, target)
            if path in sources:
                copied_sources.append(target)
        try:
            return cpp_extension.load(
                name=module_name, sources=copied_sources, build_directory=build_dir, verbose=verbose, **build_kwargs
            )
        except Exception as error:  # Compiler errors arrive as RuntimeError, missing tools as OSError.
            log_path = os.path.join(build_dir, 'build_error.log')
            with open(log_path, 'w') as log:
                log.write(str(error))
            raise _Unavailable(f'build failed ({type(error).__name__}), compiler output in {log_path}') from error
    finally:
        os.remove(lock_path)


def _acquire_lock(lock_path: str, lock_timeout_s: float) -> None:
    """Create `lock_path` exclusively; wait while another process holds it, up to the lock's age limit."""
    while True:
        try:
            os.close(os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return
        except FileExistsError:
            pass
        try:
            age_s = time.time() - os.path.getmtime(lock_path)
        except FileNotFoundError:
            continue  # Released between our two calls.
        if age_s > lock_timeout_s:
            raise _Unavailable(
                f'build lock {lock_path} is {age_s:.0f} s old, older than lock_timeout_s='
                f'{lock_timeout_s:g}; delete it if no other build is running'
            )
        time.sleep(_LOCK_POLL_SECONDS)


def _import_library(module_name: str, library_path: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, library_path)
    if spec is None or spec.loader is None:
        raise ImportError(f'cannot import {library_path}')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
