#!/usr/bin/env bash
# The prepared check of the CUDA paths on a machine with one GPU: under 8 minutes, a short summary at the end.
#
#   bash benchmarks/gpu_check.sh
#
# Stages, each in its own time limit within an overall budget (a stage that does not fit is skipped):
#   ops          build the CUDA kernels of torch_utils/ops (nvcc, side by side)
#   tests        the tests marked `cuda` (the kernels and the nearest-face search against their references)
#   deformation  benchmarks/deformation.py on the GPU: the 'lbvh' search and the tree kernel ('cuda')
#                against the brute force, points/s and peak memory
#   throughput   the per-GPU throughput table: full-head training iterations at batch 4, 8 and 16 per GPU,
#                fp32 and TF32, with the 'lbvh' search and with the tree kernel: images/s, s/kimg, peak memory
#   generator    full-head G with the deformation at batch 4: forward and forward+backward, fp32 and fp16 layers
#   training     a short full-head training on one GPU through torchrun (one process, NCCL): sec/kimg, peak memory
#   cpu-render   the snapshot trained on CUDA: gen_samples on a CPU-only process, and one latent rendered
#                without sample jitter on CUDA and on the CPU: they agree
# On a machine without a CUDA device it says so in one line and exits 0.
#
# Environment: PYTHON (default: .venv/bin/python where it exists, else python3), GPU_CHECK_LOGS (a folder
# for the stage logs; default: a new temporary folder), GPU_CHECK_BUDGET (seconds, default 470),
# GPU_CHECK_STAGES (the stages to run, space-separated; default all, in the order above), GPU_CHECK_DATA (a
# folder holding synthetic-portraits-512.zip and its -seg.zip for the training stage, for machines without
# headless OpenGL to render them; default: rendered into a temporary folder).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STAGES=${GPU_CHECK_STAGES:-ops tests deformation throughput generator training cpu-render}
for name in $STAGES; do
    case $name in
        ops | tests | deformation | throughput | generator | training | cpu-render) ;;
        *) echo "gpu_check: unknown stage '$name' in GPU_CHECK_STAGES (stages: ops tests deformation throughput generator training cpu-render)" >&2; exit 2 ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to the torch of $PYTHON; nothing to check"
    exit 0
fi

LOGS=${GPU_CHECK_LOGS:-$(mktemp -d)}
WORK=$(mktemp -d)
mkdir -p "$LOGS"
BUDGET=${GPU_CHECK_BUDGET:-470}
START=$(date +%s)
SUMMARY=()
FAILED=0
export PYTHONUNBUFFERED=1

# stage NAME LIMIT_S COMMAND...: run COMMAND (a program or an exported function) with its output in
# $LOGS/NAME.log, within LIMIT_S and the budget left.
stage() {
    local name=$1 limit=$2
    shift 2
    [[ " $STAGES " == *" $name "* ]] || return 0
    local left=$((BUDGET - ($(date +%s) - START)))
    if ((left < 20)); then
        SUMMARY+=("$name: skipped, the budget of ${BUDGET} s is spent")
        FAILED=1
        return 1
    fi
    ((limit > left)) && limit=$left
    local begin=$(date +%s)
    echo "== $name (limit ${limit} s)"
    timeout --kill-after 10 "$limit" bash -c '"$@"' "stage-$name" "$@" > "$LOGS/$name.log" 2>&1
    local status=$?
    local seconds=$(($(date +%s) - begin))
    local verdict="ok"
    if ((status == 124 || status == 137)); then verdict="TIMED OUT after ${limit} s"; elif ((status != 0)); then verdict="FAILED (exit $status)"; fi
    ((status != 0)) && FAILED=1
    SUMMARY+=("$name: $verdict in ${seconds} s")
    while IFS= read -r line; do SUMMARY+=("    ${line#SUMMARY }"); done < <(grep '^SUMMARY ' "$LOGS/$name.log")
    if ((status != 0)); then
        while IFS= read -r line; do SUMMARY+=("    | $line"); done < <(grep -v '^SUMMARY ' "$LOGS/$name.log" | tail -n 6)
    fi
    return $status
}

training() {
    local data=${GPU_CHECK_DATA:-$WORK/data}
    "$PYTHON" -c "from training.data.synthetic import ensure_synthetic_dataset as build; build(root='$data', num_images=64, resolution=512, workers=8, progress=False)" || return
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 train.py --cfg full-head \
        --data "$data/synthetic-portraits-512.zip" --seg_data "$data/synthetic-portraits-512-seg.zip" \
        --gpus 1 --batch 4 --batch-gpu 4 --kimg 0.08 --tick 0.02 --snap 0 --image-snap 0 --workers 4 \
        --metrics none --outdir "$WORK/runs" || return
    "$PYTHON" -m benchmarks.gpu_check training-summary "$(ls -d "$WORK"/runs/*/ | head -n 1)"
}

cpu_render() {
    local run
    run=$(ls -d "$WORK"/runs/*/ 2>/dev/null | head -n 1)
    if [[ -z "$run" ]]; then echo "SUMMARY FAILED: no training run to render"; return 1; fi
    CUDA_VISIBLE_DEVICES= "$PYTHON" gen_samples.py --network "$run" --seeds 0 --views front --pose 0,0,0,0.3,-0.4,0 \
        --device cpu --outdir "$WORK/render-cpu" || return
    "$PYTHON" -m benchmarks.gpu_check compare-renders "$run"
}

export -f training cpu_render
export PYTHON WORK

stage ops 180 "$PYTHON" -m benchmarks.gpu_check build-ops
stage tests 120 "$PYTHON" -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m cuda \
    $(grep -l 'requires_cuda' tests/test_*.py)
stage deformation 60 "$PYTHON" -m benchmarks.deformation --device cuda --reps 5 --subset 65536
stage throughput 150 "$PYTHON" -m benchmarks.gpu_check throughput --batches 4 8 16 --reps 2
stage generator 100 "$PYTHON" -m benchmarks.gpu_check generator --reps 5 --batch 4
stage training 200 training
stage cpu-render 90 cpu_render

echo
echo "gpu_check summary ($(($(date +%s) - START)) s; logs in $LOGS):"
"$PYTHON" -c "import torch; print(f'  torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}')"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "  deformation figures:"
grep -E 'M points/s|peak memory|queries' "$LOGS/deformation.log" 2>/dev/null | sed 's/^/    /'
echo "  tests: $(tail -n 1 "$LOGS/tests.log" 2>/dev/null)"
rm -rf "$WORK"
exit $FAILED
