import json
import os
import subprocess
import sys

import pytest

from torch_utils import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh process: import the project, then allocate and free a 64 MiB tensor 30 times and
# count the page faults of each allocation (4 KiB pages: THP off for the count). The first few
# land in fresh heap space (small Python objects made in between keep a freed block from being
# reused whole); then the heap holds enough freed blocks and they are reused.
PROBE = """
import json, resource, torch_utils, torch
from torch_utils import allocator
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 2**20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
print(json.dumps(dict(faults=faults, tuned_by_environment=allocator.environment_tunes_malloc())))
"""


def allocation_faults(**environment) -> dict:
    env = {name: value for name, value in os.environ.items() if not name.startswith('MALLOC_')}
    env.pop('GLIBC_TUNABLES', None)
    env.update(THP_MEM_ALLOC_ENABLE='0', **environment)
    result = subprocess.run(
        [sys.executable, '-c', PROBE], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_freed_memory_is_reused_without_page_faults_unless_the_environment_tunes_malloc():
    pages = 64 * 2**20 // 4096
    kept = allocation_faults()
    assert not kept['tuned_by_environment'] and sum(kept['faults'][-10:]) < pages // 10
    # An empty GLIBC_TUNABLES keeps glibc's defaults: the project leaves malloc alone, every freed
    # block (above the largest mmap threshold) goes back to the system, and every page of the
    # next one faults in again.
    default = allocation_faults(GLIBC_TUNABLES='')
    assert default['tuned_by_environment'] and min(default['faults'][-10:]) >= pages * 0.9


def test_environment_tunes_malloc():
    assert allocator.environment_tunes_malloc({'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=0'})
    assert allocator.environment_tunes_malloc({'MALLOC_TRIM_THRESHOLD_': '0', 'PATH': '/bin'})
    assert not allocator.environment_tunes_malloc({'PATH': '/bin', 'MALLOC_CONF': 'x'})
