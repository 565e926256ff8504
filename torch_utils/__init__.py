"""Low-level utilities and ops shared by the networks, the training loop and the tools.

Importing the package asks PyTorch to put CPU tensors of 2 MB and more on transparent huge pages
(`THP_MEM_ALLOC_ENABLE=1`, unless the environment already sets it). The CPU allocator hands
large tensors back to the system, so every big temporary of a forward pass is page-faulted in
afresh; 2 MB pages make that, and the scattered reads of the tri-grid sampler, much cheaper
(the `full-head` forward runs about 10% faster, benchmarks/generator.py). PyTorch reads the
variable once, at the process's first allocation of that size, so the package sets it on import,
before any network exists. It also makes glibc keep freed memory in the process
(torch_utils/allocator.py), so that those temporaries reuse mapped pages from the second
iteration on.
"""

import os

from torch_utils import allocator

os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')
allocator.keep_freed_memory()
