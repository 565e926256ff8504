#!/usr/bin/env bash
# Build the CUDA kernels of torch_utils/ops with nvcc and report, per op, whether they compile.
#
# Not part of the test suite: it installs a CUDA build of torch (several GB) into its own venv.
# It works without a GPU, because each op's `_plugin(require_device=False)` builds for the
# architectures in TORCH_CUDA_ARCH_LIST instead of asking the device. The libraries land in
# torch's extension cache (or $TORCH_EXTENSIONS_DIR), where a later GPU run of the same venv
# finds them without compiling.
#
# Usage: benchmarks/build_cuda_ops.sh [op module ...]
# Environment (defaults): VENV=/tmp/cuda-ops-venv  TORCH_SPEC=torch==2.14.1  CUDA_HOME=/usr/local/cuda
#                         TORCH_CUDA_ARCH_LIST=9.0  MAX_JOBS=2  VERBOSE=0
# To build a new op, add its module below; it must expose `_plugin(require_device: bool = True)`
# (see torch_utils/custom_ops.py).
set -euo pipefail

DEFAULT_OPS=(
    torch_utils.ops.bias_act
    torch_utils.ops.upfirdn2d
    training.body.nearest_face
)
if (($#)); then OPS=("$@"); else OPS=("${DEFAULT_OPS[@]}"); fi

VENV=${VENV:-/tmp/cuda-ops-venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ ! -x "$CUDA_HOME/bin/nvcc" ]]; then
    echo "error: no nvcc at $CUDA_HOME/bin/nvcc; set CUDA_HOME to the folder that holds bin/nvcc" >&2
    exit 2
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV with $TORCH_SPEC (several GB, a few minutes)"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, ninja; assert torch.version.cuda" 2>/dev/null; then
    "$VENV/bin/pip" install --no-cache-dir "$TORCH_SPEC" ninja
fi

# ATen's CUDA headers include cuBLAS/cuSPARSE headers that a bare nvcc install may lack; the
# CUDA wheels of torch ship them.
WHEEL_CUDA_INCLUDE=$("$VENV/bin/python" -c "import glob, os, torch; print(':'.join(glob.glob(os.path.join(os.path.dirname(torch.__file__), '..', 'nvidia', 'cu*', 'include'))))")
export CPATH="${WHEEL_CUDA_INCLUDE}${CPATH:+:$CPATH}"
echo "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
cd "$REPO"
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/python" - "${OPS[@]}" <<'PYTHON'
import importlib
import os
import sys
import time
import warnings

import torch

print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), device visible: {torch.cuda.is_available()}, '
      f'arch list: {os.environ["TORCH_CUDA_ARCH_LIST"]}')
verbose = os.environ.get('VERBOSE', '0') == '1'
failures = 0
for module_name in sys.argv[1:]:
    start = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            module = importlib.import_module(module_name)
            plugin = module._plugin(require_device=False)
            status = 'ok' if plugin is not None else 'FAILED: ' + '; '.join(str(w.message) for w in caught)
        except Exception as error:  # A missing module or a Python error is reported like a failed build.
            status = f'FAILED: {type(error).__name__}: {error}'
    failures += status != 'ok'
    print(f'{module_name:32s} {time.time() - start:7.1f} s  {status}', flush=True)
    if verbose and status != 'ok':
        for warning in caught:
            log = str(warning.message).split('compiler output in ')[-1].split(';')[0]
            if os.path.isfile(log):
                print(open(log).read())
sys.exit(1 if failures else 0)
PYTHON
