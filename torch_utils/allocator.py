"""Keep freed CPU memory in the process (glibc malloc settings made at import time).

PyTorch's CPU allocator takes every tensor from malloc. glibc serves blocks above its mmap
threshold (128 KiB at first, rising with the blocks freed, up to 32 MiB) with fresh `mmap`s and
unmaps them again on free. A training step frees and re-allocates the same large activations
every iteration, so each one above 32 MiB is page-faulted in afresh, and zeroing pages costs
more than the arithmetic that writes them: the `full-head` generator's forward + backward at
batch 1 takes about twice as long that way (benchmarks/generator.py; the small presets' tensors
stay below the threshold and gain nothing). With mmap switched off (`M_MMAP_MAX = 0`) and
trimming off (`M_TRIM_THRESHOLD = -1`), freed blocks go back to the heap and the next iteration
reuses pages that are already mapped. The price is a higher resident peak (heap fragmentation;
about +30% for that case), and memory is not handed back to the system before the process ends.

Where the environment already tunes malloc (`GLIBC_TUNABLES`, even empty, which keeps glibc's
defaults, or any `MALLOC_*_` variable), or the C library is not glibc, nothing changes.
"""

import ctypes
import ctypes.util
import os

# mallopt parameter numbers from glibc's <malloc.h>; a trim threshold of -1 switches trimming off.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def environment_tunes_malloc(environ: dict | None = None) -> bool:
    """Whether the environment sets glibc malloc parameters itself."""
    environ = os.environ if environ is None else environ
    return 'GLIBC_TUNABLES' in environ or any(name.startswith('MALLOC_') and name.endswith('_') for name in environ)


def keep_freed_memory() -> bool:
    """Switch glibc malloc to keeping freed memory (see the module docstring); True when it did."""
    if environment_tunes_malloc():
        return False
    name = ctypes.util.find_library('c')
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # present in glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
