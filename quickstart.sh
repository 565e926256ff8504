#!/usr/bin/env bash
# The tour of the project in one command, a few minutes on 2 CPU cores: set up, train the smallest preset
# briefly on the built-in synthetic set and render its samples, a 360° video and a mesh; then the same
# with the trained model shipped in pretrained/. Outputs: runs/quickstart/ and out/.
set -euo pipefail
cd "$(dirname "$0")"
python=.venv/bin/python
shipped=pretrained/cpu-fast-64.pt

step() { echo "quickstart: $*"; }

step 'setting up .venv and the system libraries (setup.sh)'
bash setup.sh

step 'training cpu-small for 0.05 kimg on the synthetic set (built into datasets/ on first use) -> runs/quickstart/'
$python train.py --cfg cpu-small --kimg 0.05 --tick 0.025 --outdir runs/quickstart

step 'rendering seeds 0-3 of that run from the back, side and front -> out/samples/'
$python gen_samples.py --network runs/quickstart --seeds 0-3 --outdir out/samples

step 'rendering a 24-frame 360° orbit video of seed 0 -> out/videos/'
$python gen_videos.py --network runs/quickstart --seeds 0 --w-frames 24 --outdir out/videos

# A run this short has a low density yet: mesh it at level 2 (trained models use the default, 15).
step 'extracting the mesh of seed 0 at level 2 -> out/shapes/'
$python extract_shapes.py --network runs/quickstart --seeds 0 --shape-res 64 --level 2 --outdir out/shapes

step "rendering seeds 0-3 of the shipped model $shipped -> out/pretrained/samples/"
$python gen_samples.py --network $shipped --seeds 0-3 --outdir out/pretrained/samples

step 'rendering its 360° orbit video of seed 0 -> out/pretrained/videos/'
$python gen_videos.py --network $shipped --seeds 0 --trajectory orbit --outdir out/pretrained/videos

step 'extracting its mesh of seed 0 -> out/pretrained/shapes/'
$python extract_shapes.py --network $shipped --seeds 0 --shape-res 128 --outdir out/pretrained/shapes

step 'done: see runs/quickstart/ and out/'
