"""The bad-input battery: over 300 bad command lines for the eight tools, each run as its own process and
classified clean (a one-line error) or not (a traceback, a crash, a hang, output written silently, code run
from a pickle).

    python -m benchmarks.bad_inputs [--quick] [--jobs N] [--keep DIR] [--timeout S] [--memory-gib G]

Every case is a tool, the arguments it adds to that tool's working command line (WORKING; click keeps the
last value of a repeated option, so a case changes one thing), and what the tool must do (Case). The inputs
the cases name ({run}, {evil_pkl}, ...) are built first in a temporary folder (build_inputs): a tiny run
directory and its synthetic data set (tests/tiny_run.py), damaged copies of them, pickles whose unpickling
would create a marker file, a read-only folder and a nearly full one (tmpfs mounts, made when running as
root; the cases that need them are skipped with a note otherwise).

A case is clean (verdict) when the tool ends on its own within the timeout, prints no Python traceback,
dies of no signal, creates no marker file, and its last output line starts with "Error" or holds the
case's `says` text; a FAIL case must also exit non-zero, while an END case may instead run normally (the
input is odd but has a meaning); and nothing matches the case's `leaves_none` patterns afterwards (a partial
output, a temporary file). One line is printed per case, then the not-clean cases again, then as the last
line "N tried, M clean". Exit code 0 when all are clean.

Every case runs with its address space limited to --memory-gib (default 8), so that a tool that tries to
allocate without bound fails in that case instead of starving the machine; the tools' own memory checks
compare with the machine's free memory, so the absurd sizes here are far beyond both.
--quick runs about 15 representative cases (the `quick` ones, one or two per tool); --match REGEX runs the
cases whose "tool args" it finds.
"""

import argparse
import concurrent.futures
import dataclasses
import glob
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAIL, END = 'fail', 'end'

# The working command line of each tool; each case's arguments follow it (or replace it, with `alone`).
WORKING = {
    'gen_samples': '--network {run} --seeds 0 --views front --sample-mult 1 --outdir {out} --device cpu',
    'gen_videos': '--network {run} --w-frames 2 --sample-mult 1 --outdir {out} --device cpu',
    'extract_shapes': '--network {run} --shape-res 8 --outdir {out} --device cpu',
    'calc_metrics': '--network {run} --metrics pose_err --device cpu --quiet',
    'invert': '--network {run} --image {photo} --mask {photo_mask} --camera front --w-steps 1 --no-video --no-mesh '
    '--outdir {out} --device cpu',
    'train': '--cfg {cfg} --data {data} --seg_data {seg} --kimg 0.004 --workers 0 --outdir {out}',
    'dataset_tool convert': '--source {layout} --dest {out}/images.zip --seg-dest {out}/masks.zip --resolution 8',
    'dataset_tool check': '--data {data} --seg-data {seg} --no-progress',
    'dataset_tool synth': '--dest {out}/synth.zip --seg-dest {out}/synth-seg.zip --num-images 2 --resolution 8 '
    '--workers 1',
    # It serves until stopped: every case of it must end in an error before the server starts.
    'visualizer': '--network {run} --port 0 --outdir {out} --device cpu',
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad command line and what the tool must do with it."""

    tool: str  # a key of WORKING: the script (and the subcommand of dataset_tool)
    args: str  # shell words; {name}: an input of build_inputs, {out}: this case's own output folder
    says: str = ''  # the last line must hold this (after {name} substitution); '' : start with "Error"
    must: str = FAIL  # FAIL: a one-line error, exit code 0 is a failure; END: that, or a normal run
    alone: bool = False  # the arguments replace the working command line instead of following it
    quick: bool = False  # in the --quick subset
    timeout: float = 0  # seconds; 0: --timeout
    leaves_none: tuple = ()  # glob patterns ({name} substituted) that must match nothing after the run

    def command(self) -> str:
        """The arguments after the script, with their {name} placeholders."""
        return self.args if self.alone else WORKING[self.tool] + ' ' + self.args

    def inputs(self) -> set:
        return set(re.findall(r'{(\w+)}', ' '.join([self.command(), *self.leaves_none])))


NOTHING_IN_OUT = ('{out}/*', '{out}/.*')  # leaves_none of a case that must write nothing, not even a temporary file
NAN_CAMERA = 'nan' + ',0' * 15  # 16 values, one NaN
INF_LABEL = ','.join(['1'] * 24 + ['inf'])  # 25 values, one inf
HUGE_SEED = '99999999999999999999999'  # beyond 64 bits

CASES = [
    # gen_samples: numbers, lists, every kind of --network, devices, outdirs, usage errors.
    Case('gen_samples', '--trunc nan', '--trunc', quick=True),
    Case('gen_samples', '--trunc inf', '--trunc'),
    Case('gen_samples', '--trunc -inf', '--trunc'),
    Case('gen_samples', '--trunc 1e400', '--trunc'),
    Case('gen_samples', '--trunc 1e30', 'is not finite', leaves_none=NOTHING_IN_OUT),
    Case('gen_samples', '--trunc-cutoff -1', '--trunc-cutoff'),
    Case('gen_samples', '--shapes --shape-level nan', '--shape-level'),
    Case('gen_samples', '--shapes --shape-level -inf', '--shape-level'),
    Case('gen_samples', '--shapes --shape-res 5000', '--shape-res'),
    Case('gen_samples', '--shapes --shape-res 7', '--shape-res'),
    Case('gen_samples', '--shapes --shape-res -8', '--shape-res'),
    Case('gen_samples', '--shape-res nan', '--shape-res'),
    Case('gen_samples', '--sample-mult 100000', '--sample-mult', quick=True),
    Case('gen_samples', '--sample-mult 0', '--sample-mult'),
    Case('gen_samples', '--sample-mult -1', '--sample-mult'),
    Case('gen_samples', '--seeds a-b', '--seeds'),
    Case('gen_samples', '--seeds 5-2', '--seeds'),
    Case('gen_samples', '--seeds -1', '--seeds'),
    Case('gen_samples', '--seeds 4294967296', '--seeds'),
    Case('gen_samples', "--seeds ''", '--seeds'),
    Case('gen_samples', '--seeds 0,,1', '--seeds'),
    Case('gen_samples', '--seeds 0-99999999999', '--seeds'),
    Case('gen_samples', '--seeds_num 0', '--seeds_num'),
    Case('gen_samples', '--seeds_num 3000000000', '--seeds_num'),
    Case('gen_samples', '--seeds_num 2 --seeds-seed -1', '--seeds-seed'),
    Case('gen_samples', f'--seeds_num 2 --seeds-seed {HUGE_SEED}', '--seeds-seed'),
    Case('gen_samples', '--pose 1,2,3,4,5', '--pose'),
    Case('gen_samples', '--pose 1,2,3,4,5,6,7', '--pose'),
    Case('gen_samples', '--pose a,b,c,d,e,f', '--pose'),
    Case('gen_samples', '--pose nan,0,0,0,0,0', '--pose'),
    Case('gen_samples', '--pose 0,0,0,0,inf,0', '--pose'),
    Case('gen_samples', '--pose 0,0,0,0,0,1e400', '--pose'),
    Case('gen_samples', '--views up', '--views'),
    Case('gen_samples', "--views ''", '--views'),
    Case('gen_samples', '--network {missing}', 'nothing.pkl'),
    Case('gen_samples', '--network {empty}', 'no network-snapshot'),
    Case('gen_samples', '--network {text}', 'notes.txt'),
    Case('gen_samples', '--network {truncated_pt}', 'truncated.pt'),
    Case('gen_samples', '--network {truncated_pkl}', 'truncated.pkl'),
    Case('gen_samples', '--network {plain_pt}', 'plain.pt'),
    Case('gen_samples', '--network {random_pkl}', 'random.pkl'),
    Case('gen_samples', '--network {empty_pkl}', 'empty.pkl'),
    Case('gen_samples', '--network {evil_pkl}', '--trust-pickle', quick=True),
    Case('gen_samples', '--network {evil_pt}', 'evil.pt'),
    Case('gen_samples', '--network {evil_run}', '--trust-pickle'),
    Case('gen_samples', '--network {swapped_pt}', 'not a generator'),
    Case('gen_samples', '--network ftp://host/snapshot.pkl', 'unsupported URL scheme "ftp"'),
    Case('gen_samples', '--network http://127.0.0.1:9/snapshot.pkl', '127.0.0.1'),
    Case('gen_samples', '--network file:///nonexistent/snapshot.pkl', 'snapshot.pkl'),
    Case('gen_samples', '--device tpu', '--device'),
    Case('gen_samples', '--device cuda', '--device'),
    Case('gen_samples', '--device meta', '--device'),
    Case('gen_samples', '--outdir {ro}', 'Read-only file system', quick=True),
    Case('gen_samples', '--outdir {blocker}/sub', 'cannot write into --outdir'),
    Case('gen_samples', '--outdir {blocker}', '--outdir'),
    Case('gen_samples', '--cfg cpu-small', 'exactly one of --network'),
    Case('gen_samples', '--cfg nosuch --seeds 0 --outdir {out} --device cpu', '--cfg', alone=True),
    Case(
        'gen_samples',
        f'--cfg cpu-small --init-seed {HUGE_SEED} --seeds 0 --views front --sample-mult 1 '
        f'--outdir {{out}} --device cpu',
        '--init-seed',
        must=END,
        alone=True,
    ),
    Case('gen_samples', '--predict-pose {empty}', 'aligned_images'),
    Case('gen_samples', '--predict-pose {photo}', '--predict-pose'),
    Case('gen_samples', '--predict-pose {aligned} --shapes', '--predict-pose needs --network'),
    Case('gen_samples', '--predict-pose {aligned} --pose-kwargs {text}', 'notes.txt'),
    Case('gen_samples', '--predict-pose {aligned_broken}', 'result.json'),
    Case('gen_samples', '--predict-pose {aligned_bomb}', 'photo.png'),
    # extract_shapes
    Case('extract_shapes', '--level nan', '--level', quick=True),
    Case('extract_shapes', '--level inf', '--level'),
    Case('extract_shapes', '--level -inf', '--level'),
    Case('extract_shapes', '--trunc nan', '--trunc'),
    Case('extract_shapes', '--trunc-cutoff -1', '--trunc-cutoff'),
    Case('extract_shapes', '--shape-res 5000', '--shape-res'),
    Case('extract_shapes', '--shape-res 7', '--shape-res'),
    Case('extract_shapes', '--shape-res 0', '--shape-res'),
    Case('extract_shapes', '--shape-res 1.5', '--shape-res'),
    Case('extract_shapes', '--pose 0,0,1', '--pose'),
    Case('extract_shapes', '--pose 1,2,3,4,5,6,7', '--pose'),
    Case('extract_shapes', '--pose nan,0,0,0,0,0', '--pose'),
    Case('extract_shapes', '--pose x,0,0,0,0,0', '--pose'),
    Case('extract_shapes', '--seeds a-b', '--seeds'),
    Case('extract_shapes', '--seeds -5', '--seeds'),
    Case('extract_shapes', '--format stl', '--format'),
    Case('extract_shapes', '--network {missing}', 'nothing.pkl'),
    Case('extract_shapes', '--network {empty}', 'no network-snapshot'),
    Case('extract_shapes', '--network {text}', 'notes.txt'),
    Case('extract_shapes', '--network {truncated_pt}', 'truncated.pt'),
    Case('extract_shapes', '--network {plain_pt}', 'plain.pt'),
    Case('extract_shapes', '--network {evil_pkl}', '--trust-pickle'),
    Case('extract_shapes', '--network ftp://host/snapshot.pkl', 'unsupported URL scheme "ftp"'),
    Case('extract_shapes', '--device tpu', '--device'),
    Case('extract_shapes', '--device cuda', '--device'),
    Case('extract_shapes', '--outdir {ro}', 'Read-only file system'),
    Case('extract_shapes', '--outdir {blocker}/sub', 'cannot write into --outdir'),
    Case('extract_shapes', '--mrc-dir {empty}', 'exactly one of --network or --mrc-dir'),
    Case('extract_shapes', '--seeds 0 --outdir {out}', 'exactly one of --network or --mrc-dir', alone=True),
    Case('extract_shapes', '--mrc-dir {empty} --outdir {out}', 'no .mrc files', alone=True),
    Case('extract_shapes', '--mrc-dir {mrc_dir} --outdir {out}', 'gave no mesh', alone=True, quick=True),
    Case('extract_shapes', '--mrc-dir {missing} --outdir {out}', '--mrc-dir', alone=True),
    Case(
        'extract_shapes',
        '--mrc-dir {mrc_dir} --pose 0,0,0,0,0,0.5 --outdir {out}',
        '--pose needs --network',
        alone=True,
    ),
    Case(
        'extract_shapes', '--mrc-dir {empty} --latent {latent} --outdir {out}', '--latent needs --network', alone=True
    ),
    Case('extract_shapes', '--latent {latent} --seeds 0', '--seeds does not apply'),
    Case('extract_shapes', '--latent {latent_shape}', 'ws has shape'),
    Case('extract_shapes', '--latent {latent_nan}', 'non-finite'),
    Case('extract_shapes', '--latent {text}', 'notes.txt'),
    Case('extract_shapes', '--latent {evil_npz}', 'object array'),
    Case('extract_shapes', '--latent {missing}', '--latent'),
    # gen_videos
    Case('gen_videos', '--trunc nan', '--trunc'),
    Case('gen_videos', '--trunc-cutoff -1', '--trunc-cutoff'),
    Case('gen_videos', '--pose-amplitude nan', '--pose-amplitude'),
    Case('gen_videos', '--pose-amplitude 1e400', '--pose-amplitude'),
    Case('gen_videos', '--trajectory pose --pose-amplitude 1e6', must=END),
    Case('gen_videos', '--grid 0x1', '--grid', quick=True),
    Case('gen_videos', '--grid 2x', '--grid'),
    Case('gen_videos', '--grid axb', '--grid'),
    Case('gen_videos', '--grid 1x1x1', '--grid'),
    Case('gen_videos', '--grid -1x1', '--grid'),
    Case('gen_videos', '--grid 2x2', '--seeds'),
    Case('gen_videos', '--grid 100000x100000', '--seeds'),
    Case('gen_videos', '--w-frames 1', '--w-frames'),
    Case('gen_videos', '--w-frames -5', '--w-frames'),
    Case('gen_videos', '--fps 0', '--fps'),
    Case('gen_videos', '--fps nan', '--fps'),
    Case('gen_videos', '--fps 1000000', must=END),
    Case('gen_videos', '--sample-mult 100000', '--sample-mult'),
    Case('gen_videos', '--sample-mult 0', '--sample-mult'),
    Case('gen_videos', '--trajectory spin', '--trajectory'),
    Case('gen_videos', '--image_mode normals', '--image_mode'),
    Case('gen_videos', '--interpolate quadratic', '--interpolate'),
    Case('gen_videos', '--interpolate linear', must=END),
    Case('gen_videos', '--seeds a-b', '--seeds'),
    Case('gen_videos', '--seeds 0-99999999999', '--seeds'),
    Case('gen_videos', '--latent {latent} --seeds 0', '--seeds does not apply'),
    Case('gen_videos', '--latent {latent} --grid 2x1', 'use --grid 1x1'),
    Case('gen_videos', '--latent {latent} --trunc 0.7', '--trunc does not apply'),
    Case('gen_videos', '--latent {latent_shape}', 'ws has shape'),
    Case('gen_videos', '--latent {latent_nan}', 'non-finite'),
    Case('gen_videos', '--latent {text}', 'notes.txt'),
    Case('gen_videos', '--latent {evil_npz}', 'object array'),
    Case('gen_videos', '--network {missing}', 'nothing.pkl'),
    Case('gen_videos', '--network {empty}', 'no network-snapshot'),
    Case('gen_videos', '--network {truncated_pkl}', 'truncated.pkl'),
    Case('gen_videos', '--network {evil_run}', '--trust-pickle'),
    Case('gen_videos', '--network ftp://host/snapshot.pkl', 'unsupported URL scheme "ftp"'),
    Case('gen_videos', '--device tpu', '--device'),
    Case('gen_videos', '--device cuda', '--device'),
    Case('gen_videos', '--outdir {ro}', 'Read-only file system'),
    Case('gen_videos', '--outdir {blocker}/sub', 'cannot write into --outdir'),
    # calc_metrics (pose_err takes minutes: every case but the read-only run directory fails before computing)
    Case('calc_metrics', '--metrics is50k', '--metrics', quick=True),
    Case('calc_metrics', "--metrics ''", '--metrics'),
    Case('calc_metrics', '--metrics fid0k', '--metrics'),
    Case('calc_metrics', '--metrics fid-1k', '--metrics'),
    Case('calc_metrics', '--metrics nank', '--metrics'),
    Case('calc_metrics', '--batch 0', '--batch'),
    Case('calc_metrics', '--batch -1', '--batch'),
    Case('calc_metrics', '--gpus 0', '--gpus'),
    Case('calc_metrics', '--device tpu', '--device'),
    Case('calc_metrics', '--device cuda', '--device'),
    Case('calc_metrics', '--metric_pose_sample_mode X', '--metric_pose_sample_mode'),
    Case('calc_metrics', '--identical_c_p maybe', '--identical_c_p'),
    Case('calc_metrics', '--data {data}', 'give both --data and --seg_data'),
    Case('calc_metrics', '--data {notzip} --seg_data {notzip}', 'notzip.zip'),
    Case('calc_metrics', '--data {data_truncated} --seg_data {seg}', 'data-truncated.zip'),
    Case('calc_metrics', '--data {data_nojson} --seg_data {seg}', 'dataset.json'),
    Case('calc_metrics', '--data {data_labels} --seg_data {seg}', 'label'),
    Case('calc_metrics', '--data {data} --seg_data {seg_missing}', 'mask'),
    Case('calc_metrics', '--data {empty} --seg_data {empty}', 'empty'),
    Case('calc_metrics', '--data {missing} --seg_data {seg}', '--data'),
    Case('calc_metrics', '--network {missing}', 'nothing.pkl'),
    Case('calc_metrics', '--network {empty}', 'no network-snapshot'),
    Case('calc_metrics', '--network {text}', 'notes.txt'),
    Case('calc_metrics', '--network {truncated_pt}', 'truncated.pt'),
    Case('calc_metrics', '--network {plain_pt}', 'plain.pt'),
    Case('calc_metrics', '--network {evil_pkl}', '--trust-pickle'),
    Case('calc_metrics', '--network {evil_pt}', 'evil.pt'),
    Case('calc_metrics', '--network {swapped_pt}', 'not a generator'),
    Case('calc_metrics', '--network {g_only_pt}', 'g-only.pt'),
    Case('calc_metrics', '--network ftp://host/snapshot.pkl', 'unsupported URL scheme "ftp"', quick=True),
    Case('calc_metrics', '--network {lonely} --metric_pose_sample_mode D_predict', '--pose_predict_kwargs'),
    Case('calc_metrics', '--pose_predict_kwargs {text}', 'notes.txt'),
    Case('calc_metrics', '--pose_predict_kwargs {missing}', 'nothing.pkl'),
    Case('calc_metrics', '--metrics kid1k --detector {text}', 'notes.txt'),
    Case('calc_metrics', '--metrics kid1k --detector {missing}', 'nothing.pkl'),
    Case('calc_metrics', '--metrics kid1k --detector ftp://host/inception.pkl', 'unsupported URL scheme "ftp"'),
    Case('calc_metrics', '--metrics kid1k --detector {evil_pkl}', 'evil.pkl'),
    Case('calc_metrics', '--network {ro_run}', 'Read-only file system', timeout=900),
    # train.py: every click range, the usage errors it defines, bad presets, data sets, resumes, outdirs.
    Case('train', '--gamma nan', '--gamma', quick=True),
    Case('train', '--gamma -1', '--gamma'),
    Case('train', '--glr inf', '--glr'),
    Case('train', '--glr 0', '--glr'),
    Case('train', '--dlr -inf', '--dlr'),
    Case('train', '--tick 0', '--tick'),
    Case('train', '--kimg 0', '--kimg'),
    Case('train', '--kimg -1', '--kimg'),
    Case('train', '--kimg nan', '--kimg'),
    Case('train', '--kimg 1e400', '--kimg'),
    Case('train', '--batch 0', '--batch'),
    Case('train', '--batch 3 --batch-gpu 4', '--batch-gpu'),
    Case('train', '--batch 12 --batch-gpu 6 --mbstd-group 4', '--mbstd-group'),
    Case('train', '--gpus 0', '--gpus'),
    Case('train', '--gpus 2 --batch 4 --batch-gpu 4', '--batch-gpu'),
    Case('train', '--device tpu', '--device'),
    Case('train', '--device cuda', '--device'),
    Case('train', '--seed -1', '--seed'),
    Case('train', '--workers -1', '--workers'),
    Case('train', '--cbase 0', '--cbase'),
    Case('train', '--cmax -1', '--cmax'),
    Case('train', '--gpc_reg_prob 1.5', '--gpc_reg_prob'),
    Case('train', '--bcg_reg_prob -0.1', '--bcg_reg_prob'),
    Case('train', '--style_mixing_prob nan', '--style_mixing_prob'),
    Case('train', '--thickness 0', '--thickness'),
    Case('train', '--c-scale inf', '--c-scale'),
    Case('train', '--decoder_lr_mul 0', '--decoder_lr_mul'),
    Case('train', '--density_reg_every 0', '--density_reg_every'),
    Case('train', '--triplane_depth 0', '--triplane_depth'),
    Case('train', '--map-depth 0', '--map-depth'),
    Case('train', '--neural_rendering_resolution_initial 0', '--neural_rendering_resolution_initial'),
    Case('train', '--neural_rendering_resolution_initial 100000', 'neural_rendering_resolution'),
    Case('train', '--sr-module huge', '--sr-module'),
    Case('train', '--reg_type foo', '--reg_type'),
    Case('train', '--mirror maybe', '--mirror'),
    Case('train', '--metrics fid_big', 'unknown metric fid_big'),
    Case('train', '--cfg nosuch', 'nosuch'),
    Case('train', '--cfg {text}', 'notes.txt'),
    Case('train', '--cfg {preset_broken}', 'broken.json'),
    Case('train', '--cfg cpu-small', 'resolution'),
    Case('train', '--data {missing} --seg_data {missing}', '--data'),
    Case(
        'train', '--cfg {cfg} --data {data} --kimg 0.004 --outdir {out}', 'give both --data and --seg_data', alone=True
    ),
    Case('train', '--data {notzip} --seg_data {notzip}', 'notzip.zip'),
    Case('train', '--data {data_truncated}', 'data-truncated.zip'),
    Case('train', '--data {data_nojson}', 'dataset.json', quick=True),
    Case('train', '--data {data_labels}', 'label'),
    Case('train', '--data {data_nan}', 'label'),
    Case('train', '--seg_data {seg_missing}', 'mask'),
    Case('train', '--data {data_corrupt}', 'img0000'),
    Case('train', '--data {empty} --seg_data {empty}', 'empty'),
    Case('train', '--resume {missing}', '--resume'),
    Case('train', '--resume {empty}', 'resume-state'),
    Case('train', '--resume {text}', 'notes.txt'),
    Case('train', '--resume {evil_pkl} --resume_kimg 0', '--trust-pickle'),
    Case('train', '--resume {truncated_pt} --resume_kimg 0', 'truncated.pt'),
    Case('train', '--resume {random_pkl} --resume_kimg 0', 'random.pkl'),
    Case('train', '--resume {pt} --resume_kimg 0 --cfg cpu-small', 'other options than --cfg cpu-small'),
    Case('train', '--resume {pt} --resume_kimg nan', '--resume_kimg'),
    Case('train', '--resume {pt} --resume_kimg 4 --kimg 4', 'must be above the stage start'),
    Case('train', '--resume_kimg 100', '--resume_kimg needs --resume'),
    Case('train', '--resume_blur', '--resume_blur only applies'),
    Case('train', '--outdir {ro}', 'Read-only file system'),
    Case('train', '--outdir {blocker}/sub', 'cannot write into --outdir'),
    Case('train', '--body_model {missing}', 'nothing.pkl'),
    Case('train', '--body_model {text}', 'notes.txt'),
    # dataset_tool convert: options, sources in both layouts with each kind of damage, destinations.
    Case('dataset_tool convert', '--resolution 0', '--resolution'),
    Case('dataset_tool convert', '--resolution -8', '--resolution'),
    Case('dataset_tool convert', '--resolution nan', '--resolution'),
    Case('dataset_tool convert', '--resolution 100000', '--resolution'),
    Case('dataset_tool convert', '--max-images 0', '--max-images'),
    Case('dataset_tool convert', '--transform stretch', '--transform'),
    Case('dataset_tool convert', '--layout foo', '--layout'),
    Case(
        'dataset_tool convert',
        '--source {layout} --dest {out}/a.zip --seg-dest {out}/b.zip',
        "Missing option '--resolution'",
        alone=True,
    ),
    Case('dataset_tool convert', '--source {missing}', '--source'),
    Case('dataset_tool convert', '--source {notzip}', 'notzip.zip'),
    Case('dataset_tool convert', '--source {text}', 'notes.txt'),
    Case('dataset_tool convert', '--source {empty}', 'empty'),
    Case('dataset_tool convert', '--source {layout_truncated}', 'layout-truncated.zip'),
    Case('dataset_tool convert', '--source {layout_nojson}', 'dataset.json', quick=True),
    Case('dataset_tool convert', '--source {layout_json_broken}', 'dataset.json'),
    Case('dataset_tool convert', '--source {layout_labels}', 'label'),
    Case('dataset_tool convert', '--source {layout_nan}', 'label'),
    Case('dataset_tool convert', '--source {layout_nomasks}', 'masks'),
    Case('dataset_tool convert', '--source {layout_mask_missing}', 'no mask'),
    Case('dataset_tool convert', '--source {layout_corrupt}', 'cannot be read as an image'),
    Case('dataset_tool convert', '--source {layout_bomb}', 'img00000001.png'),
    Case('dataset_tool convert', '--source {aligned_broken}', 'result.json'),
    Case('dataset_tool convert', '--images-dir pictures', 'pictures'),
    Case('dataset_tool convert', '--masks-dir nothing', 'nothing'),
    Case('dataset_tool convert', '--labels nothing.json', 'nothing.json'),
    Case('dataset_tool convert', '--masks {text}', 'notes.txt'),
    Case('dataset_tool convert', '--masks {missing}', '--masks'),
    Case('dataset_tool convert', '--dest {out}/same.zip --seg-dest {out}/same.zip', '--seg-dest'),
    Case('dataset_tool convert', '--dest {layout}', '--dest'),
    Case('dataset_tool convert', '--dest {text}', 'notes.txt'),
    Case('dataset_tool convert', '--dest {data}', 'add --overwrite'),
    Case('dataset_tool convert', '--dest {ro}/images.zip', 'Read-only file system'),
    Case('dataset_tool convert', '--seg-dest {ro}/masks.zip', 'Read-only file system'),
    Case('dataset_tool convert', '--dest {blocker}/sub/images.zip', 'blocker'),
    # dataset_tool check and synth
    Case('dataset_tool check', '--data {missing}', '--data'),
    Case('dataset_tool check', '--data {notzip} --seg-data {notzip}', 'problems found'),
    Case('dataset_tool check', '--data {data_truncated}', 'problems found', quick=True),
    Case('dataset_tool check', '--data {data_nojson}', 'problems found'),
    Case('dataset_tool check', '--data {data_labels}', 'problems found'),
    Case('dataset_tool check', '--data {data_nan}', 'problems found'),
    Case('dataset_tool check', '--seg-data {seg_missing}', 'problems found'),
    Case('dataset_tool check', '--data {data_corrupt}', 'problems found'),
    Case('dataset_tool check', '--data {empty} --seg-data {empty}', 'problems found'),
    Case('dataset_tool check', '--data {text} --seg-data {text}', 'problems found'),
    Case('dataset_tool synth', '--num-images 0', '--num-images'),
    Case('dataset_tool synth', '--resolution 0', '--resolution'),
    Case('dataset_tool synth', '--workers 0', '--workers'),
    Case('dataset_tool synth', '--dest {out}/synth.txt', '--dest'),
    Case('dataset_tool synth', '--dest {out}/same.zip --seg-dest {out}/same.zip', '--seg-dest'),
    Case('dataset_tool synth', '--dest {ro}/synth.zip', 'Read-only file system'),
    # invert
    Case('invert', '--camera 1,2,3', '--camera', quick=True),
    Case('invert', '--camera sideways', '--camera'),
    Case('invert', f'--camera {NAN_CAMERA}', '--camera'),
    Case('invert', f'--camera {INF_LABEL}', '--camera'),
    Case('invert', "--camera ''", '--camera'),
    Case('invert', '--pose 1,2,3,4,5', '--pose'),
    Case('invert', '--pose nan,0,0,0,0,0', '--pose'),
    Case('invert', '--pose a,b,c,d,e,f', '--pose'),
    Case('invert', '--w-steps 0', '--w-steps'),
    Case('invert', '--w-lr 0', '--w-lr'),
    Case('invert', '--w-lr nan', '--w-lr'),
    Case('invert', '--w-lr -1', '--w-lr'),
    Case('invert', '--pti-lr inf', '--pti-lr'),
    Case('invert', '--pti-steps -1', '--pti-steps'),
    Case('invert', '--locality -1', '--locality'),
    Case('invert', '--locality nan', '--locality'),
    Case('invert', '--video --frames 1', '--frames'),
    Case('invert', '--mesh --shape-res 7', '--shape-res'),
    Case('invert', '--mesh --shape-res 5000', '--shape-res'),
    Case('invert', f'--seed {HUGE_SEED}', '--seed', must=END),
    Case('invert', '--image {missing}', '--image'),
    Case('invert', '--image {corrupt_png}', 'corrupt.png', quick=True),
    Case('invert', '--image {truncated_png}', 'truncated.png'),
    Case('invert', '--image {wide_png}', 'wide.png'),
    Case('invert', '--image {bomb_png}', 'bomb.png'),
    Case('invert', '--image {text}', 'notes.txt'),
    Case('invert', '--mask {missing}', '--mask'),
    Case('invert', '--mask {corrupt_png}', 'corrupt.png'),
    Case('invert', '--image {aligned}', '--camera is for a single image'),
    Case(
        'invert',
        '--network {run} --image {empty} --w-steps 1 --no-video --no-mesh --outdir {out} --device cpu',
        'needs its masks',
        alone=True,
    ),
    Case(
        'invert',
        '--network {run} --image {data} --w-steps 1 --no-video --no-mesh --outdir {out} --device cpu',
        'needs its masks',
        alone=True,
    ),
    Case(
        'invert',
        '--network {run} --image {data} --mask {seg_missing} --w-steps 1 --no-video --no-mesh '
        '--outdir {out} --device cpu',
        'mask',
        alone=True,
    ),
    Case(
        'invert',
        '--network {run} --image {data_truncated} --mask {seg} --w-steps 1 --no-video --no-mesh '
        '--outdir {out} --device cpu',
        'data-truncated.zip',
        alone=True,
    ),
    Case(
        'invert',
        '--network {run} --image {aligned_broken} --w-steps 1 --no-video --no-mesh --outdir {out} --device cpu',
        'result.json',
        alone=True,
    ),
    Case('invert', '--network {g_only_pt}', 'a generator and a discriminator'),
    Case('invert', '--network {missing}', 'nothing.pkl'),
    Case('invert', '--network {text}', 'notes.txt'),
    Case('invert', '--network {truncated_pt}', 'truncated.pt'),
    Case('invert', '--network {evil_pkl}', '--trust-pickle'),
    Case('invert', '--network {evil_pt}', 'evil.pt'),
    Case('invert', '--network ftp://host/snapshot.pkl', 'unsupported URL scheme "ftp"'),
    Case('invert', '--pose-kwargs {text}', 'notes.txt'),
    Case('invert', '--pose-kwargs {missing}', 'nothing.pkl'),
    Case('invert', '--device tpu', '--device'),
    Case('invert', '--device cuda', '--device'),
    Case('invert', '--outdir {ro}', 'Read-only file system'),
    Case('invert', '--outdir {blocker}/sub', 'cannot write into --outdir'),
    # visualizer
    Case('visualizer', '--network {missing}', 'nothing.pkl', quick=True),
    Case('visualizer', '--network {empty}', 'no network-snapshot'),
    Case('visualizer', '--network {text}', 'notes.txt'),
    Case('visualizer', '--network {truncated_pt}', 'truncated.pt'),
    Case('visualizer', '--network {random_pkl}', 'random.pkl'),
    Case('visualizer', '--network {evil_pkl}', '--trust-pickle'),
    Case('visualizer', '--network {swapped_pt}', 'not a generator'),
    Case('visualizer', '--network ftp://host/snapshot.pkl', 'unsupported URL scheme "ftp"'),
    Case('visualizer', '--device tpu', '--device'),
    Case('visualizer', '--device cuda', '--device'),
    Case('visualizer', '--port 70000', '--port'),
    Case('visualizer', '--port -1', '--port'),
    Case('visualizer', '--host no.such.host.invalid', '--host'),
    Case('visualizer', '--cfg cpu-small', 'exactly one of --network'),
    Case('visualizer', '--cfg nosuch --port 0 --device cpu', '--cfg', alone=True),
    Case('visualizer', '--init-seed -1', '--init-seed'),
    # A dry run makes the checks of the start of training; a channel base that leaves blocks without channels.
    Case('train', '-n --resume {truncated_pkl} --resume_kimg 0', 'truncated.pkl'),
    Case('train', '-n --resume {random_pkl} --resume_kimg 0', 'random.pkl'),
    Case('train', '-n --resume {pt} --resume_kimg 0 --cfg cpu-small', 'other options than --cfg cpu-small'),
    Case('train', '-n --cfg {preset_unbuildable}', 'raise triplane_resolution'),
    Case('train', '-n --cbase 1', '--cbase 1 leaves'),
    Case('train', '--cbase 1', '--cbase 1 leaves', leaves_none=NOTHING_IN_OUT),
    Case('train', '--cbase 16', '--cbase 16 leaves', leaves_none=NOTHING_IN_OUT),
    # Label values beyond float32.
    Case('dataset_tool check', '--data {data_overflow}', 'problems found'),
    Case('train', '--data {data_overflow}', 'fx, the focal length', leaves_none=NOTHING_IN_OUT),
    Case('calc_metrics', '--data {data_overflow} --seg_data {seg}', 'fx, the focal length'),
    Case('dataset_tool convert', '--source {layout_overflow}', 'fx, the focal length', leaves_none=NOTHING_IN_OUT),
    Case(
        'invert',
        '--network {run} --image {data_overflow} --mask {seg} --w-steps 1 --no-video --no-mesh '
        '--outdir {out} --device cpu',
        'fx, the focal length',
        alone=True,
    ),
    # Renders that are not finite: latents of 1e30, a snapshot with a NaN weight.
    Case('gen_videos', '--latent {latent_huge}', 'is not finite', leaves_none=NOTHING_IN_OUT),
    Case('gen_samples', '--network {diverged_pt}', 'is not finite', leaves_none=NOTHING_IN_OUT),
    Case('gen_videos', '--network {diverged_pt}', 'is not finite', leaves_none=NOTHING_IN_OUT),
    Case('extract_shapes', '--network {diverged_pt}', 'is not finite', leaves_none=NOTHING_IN_OUT),
    Case(
        'invert', '--network {diverged_pt} --pose 0,0,0,0,0,0', 'is not finite', leaves_none=('{out}/*/*', '{out}/*/.*')
    ),
    # A disk that fills up while a tool writes (a 256 KiB tmpfs): one line, no partial file.
    Case(
        'gen_samples',
        '--shapes --shape-res 64 --outdir {full}/samples',
        'seed0000.mrc: No space left on device',
        leaves_none=('{full}/samples/*.mrc', '{full}/samples/.*.tmp'),
    ),
    Case(
        'extract_shapes',
        '--shape-res 64 --outdir {full}/shapes',
        'seed0000.mrc: No space left on device',
        leaves_none=('{full}/shapes/*', '{full}/shapes/.*'),
    ),
    Case(
        'dataset_tool synth',
        '--num-images 12 --resolution 256 --dest {full}/synth.zip --seg-dest {full}/synth-seg.zip',
        'No space left on device',
        leaves_none=('{full}/synth*', '{full}/.synth*'),
    ),
    # --resume of a run killed while writing: its temporary files go, in one line, before anything else.
    Case(
        'train',
        '--resume {stale_run} --kimg 0.004 --outdir {out}',
        'pass a larger --kimg',
        alone=True,
        leaves_none=('{stale_run}/.*.tmp',),
    ),
]


# ------------------------------------------------------------------------------------------------
# Inputs.


class _WritesMarker:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code a pickle can run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (its data is one empty row): a decompression bomb to PIL."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0')) + chunk(b'IEND', b'')


def _write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
    return path


def _write_tree(folder: str, files: dict) -> str:
    for name, data in files.items():
        _write(os.path.join(folder, *name.split('/')), data)
    return folder


def _write_zip(path: str, files: dict) -> str:
    with zipfile.ZipFile(path, 'w') as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _read_zip(path: str) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith('/')}


def _with_label(files: dict, index: int, label: list) -> dict:
    """The files with entry `index` of dataset.json given `label`."""
    document = json.loads(files['dataset.json'])
    document['labels'][index][1] = label
    return dict(files, **{'dataset.json': json.dumps(document).encode()})


def _half(path: str) -> bytes:
    with open(path, 'rb') as f:
        data = f.read()
    return data[: len(data) // 2]


def build_inputs(root: str) -> tuple:
    """Everything the cases name, under `root` -> ({name: path}, {name: marker path of a hostile input}).

    Names not created on purpose: missing. The read-only ones (ro, ro_run) are added by mount_read_only.
    """
    import PIL.Image
    import torch

    from tests.tiny_run import write_tiny_snapshot
    from training.checkpoints import formats
    from training.checkpoints.latent_file import save_latent
    from training.data.camera_utils import frontal_camera

    run, _ = write_tiny_snapshot(root)
    pt, pkl = (os.path.join(run, f'network-snapshot-000000.{ext}') for ext in ('pt', 'pkl'))
    data, seg = os.path.join(root, 'data.zip'), os.path.join(root, 'seg.zip')
    images, masks = _read_zip(data), _read_zip(seg)
    first = sorted(name for name in images if name.endswith('.png'))[0]
    p = lambda name: os.path.join(root, name)  # noqa: E731
    inputs = dict(
        run=run,
        pt=pt,
        pkl=pkl,
        data=data,
        seg=seg,
        cfg=p('tiny.json'),
        missing=p('nothing.pkl'),
        empty=p('empty'),
        text=_write(p('notes.txt'), b'not a checkpoint'),
        blocker=_write(p('blocker'), b''),
    )
    os.makedirs(inputs['empty'])

    # Checkpoints: damaged, foreign, hostile, or without the networks a tool needs.
    modules = formats.load_any(pt)
    G, D = modules['G_ema'], modules['D']
    inputs.update(
        truncated_pt=_write(p('truncated.pt'), _half(pt)),
        truncated_pkl=_write(p('truncated.pkl'), _half(pkl)),
        plain_pt=_write(p('plain.pt'), pickle.dumps({'G_ema': 'not a network'})),
        random_pkl=_write(p('random.pkl'), np.random.default_rng(0).bytes(3000)),
        empty_pkl=_write(p('empty.pkl'), b''),
        swapped_pt=p('swapped.pt'),
        g_only_pt=p('g-only.pt'),
        lonely=p('lonely'),
    )
    formats.save_weights(inputs['swapped_pt'], dict(G_ema=D, D=D), extra=dict(training_set_kwargs={}))
    formats.save_weights(inputs['g_only_pt'], dict(G_ema=G))
    os.makedirs(inputs['lonely'])  # a snapshot without pose-prediction settings, inside or beside
    formats.save_network_pickle(
        os.path.join(inputs['lonely'], os.path.basename(pkl)),
        dict(G_ema=G, D_ema=D, training_set_kwargs=modules['training_set_kwargs']),
    )
    markers = {}
    for name, path in (
        ('evil_pkl', p('evil.pkl')),
        ('evil_pt', p('evil.pt')),
        ('evil_run', p('evil-run/network-snapshot-000000.pkl')),
    ):
        markers[name] = p(f'ran-{name}')
        _write(path, pickle.dumps({'G_ema': _WritesMarker(markers[name]), 'G': None}))
        inputs[name] = os.path.dirname(path) if name == 'evil_run' else path
    markers['evil_npz'] = p('ran-evil_npz')
    inputs['evil_npz'] = p('evil.npz')
    np.savez(inputs['evil_npz'], ws=np.array([_WritesMarker(markers['evil_npz'])], dtype=object))

    # Latent files: one that works and three that do not.
    ws = torch.zeros(1, G.num_ws, G.w_dim)
    inputs.update(latent=p('latent.npz'), latent_shape=p('latent-shape.npz'), latent_nan=p('latent-nan.npz'))
    save_latent(inputs['latent'], ws, None, None)
    save_latent(inputs['latent_shape'], ws[:, :-1], None, None)
    np.savez(inputs['latent_nan'], ws=np.full((1, G.num_ws, G.w_dim), np.nan, np.float32))

    # Images: a photo and its mask, and damaged ones.
    bomb = _png_claiming(40000, 40000)
    inputs.update(
        photo=_write(p('photo.png'), images[first]),
        photo_mask=_write(p('photo_mask.png'), masks[first]),
        corrupt_png=_write(p('corrupt.png'), b'not a png'),
        truncated_png=_write(p('truncated.png'), images[first][:60]),
        bomb_png=_write(p('bomb.png'), bomb),
        wide_png=p('wide.png'),
    )
    PIL.Image.new('RGB', (32, 24)).save(inputs['wide_png'])
    cam2world = frontal_camera(1)[0, :16].reshape(4, 4).tolist()
    aligned = {
        'aligned_images/photo.png': images[first],
        'mask/photo.png': masks[first],
        'result.json': json.dumps({'photo.png': {'camera_pose': cam2world}}).encode(),
    }
    inputs['aligned'] = _write_tree(p('aligned'), aligned)
    inputs['aligned_broken'] = _write_tree(p('aligned-broken'), dict(aligned, **{'result.json': b'[1, 2]'}))
    inputs['aligned_bomb'] = _write_tree(p('aligned-bomb'), dict(aligned, **{'aligned_images/photo.png': bomb}))

    # Data sets (zips, as training reads them) with one kind of damage each.
    labels = json.loads(images['dataset.json'])['labels']
    damaged = {name: (data[:60] if name.endswith('.png') and name != first else data) for name, data in images.items()}
    inputs.update(
        notzip=_write(p('notzip.zip'), b'PK not really'),
        data_truncated=_write(p('data-truncated.zip'), _half(data)),
        data_nojson=_write_zip(p('data-nojson.zip'), {k: v for k, v in images.items() if k != 'dataset.json'}),
        data_labels=_write_zip(p('data-labels.zip'), _with_label(images, 1, labels[1][1][:30])),
        data_nan=_write_zip(p('data-nan.zip'), _with_label(images, 1, [float('nan')] + labels[1][1][1:])),
        data_corrupt=_write_zip(p('data-corrupt.zip'), damaged),
        seg_missing=_write_zip(p('seg-missing.zip'), {k: v for k, v in masks.items() if k != first}),
    )

    # dataset_tool convert sources: the data set in the documented layout, and damaged copies.
    layout = {
        'dataset.json': images['dataset.json'],
        **{'images/' + k: v for k, v in images.items() if k.endswith('.png')},
        **{'masks/' + k: v for k, v in masks.items() if k.endswith('.png')},
    }
    second = 'images/' + sorted(k for k in images if k.endswith('.png'))[1]
    inputs['layout'] = _write_tree(p('layout'), layout)
    for name, files in (
        ('nojson', {k: v for k, v in layout.items() if k != 'dataset.json'}),
        ('json_broken', dict(layout, **{'dataset.json': b'{"labels": ['})),
        ('labels', _with_label(layout, 1, labels[1][1][:30])),
        ('nan', _with_label(layout, 1, [float('nan')] + labels[1][1][1:])),
        ('nomasks', {k: v for k, v in layout.items() if not k.startswith('masks/')}),
        ('mask_missing', {k: v for k, v in layout.items() if k != 'masks/' + first}),
        ('corrupt', dict(layout, **{second: b'not a png'})),
        ('bomb', dict(layout, **{second: bomb})),
    ):
        inputs[f'layout_{name}'] = _write_tree(p(f'layout-{name}'), files)
    inputs['layout_truncated'] = _write(p('layout-truncated.zip'), _half(_write_zip(p('layout.zip'), layout)))

    inputs['preset_broken'] = _write(p('broken.json'), b'{"generator": ')
    preset = json.loads(open(inputs['cfg']).read())
    preset['generator'].update(triplane_resolution=8, sr_input_resolution=16)  # the background needs more ws
    inputs['preset_unbuildable'] = _write(p('unbuildable.json'), json.dumps(preset).encode())
    overflow = labels[1][1][:16] + [1e308] + labels[1][1][17:]  # the focal length
    inputs['data_overflow'] = _write_zip(p('data-overflow.zip'), _with_label(images, 1, overflow))
    inputs['layout_overflow'] = _write_tree(p('layout-overflow'), _with_label(layout, 1, overflow))

    # Renders that overflow: mapped ws times 1e30 (finite), and a snapshot with a NaN in G's decoder.
    with torch.no_grad():
        mapped = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), frontal_camera(1))
    inputs['latent_huge'] = p('latent-huge.npz')
    save_latent(inputs['latent_huge'], mapped * 1e30, None, None)
    diverged = formats.load_any(pt)
    with torch.no_grad():
        next(diverged['G_ema'].decoder.parameters()).view(-1)[0] = float('nan')
    inputs['diverged_pt'] = p('diverged.pt')
    formats.save_weights(inputs['diverged_pt'], dict(G_ema=diverged['G_ema'], D=diverged['D']))

    # A run directory killed while writing a snapshot: a resume state at --kimg 0.004, and two temporary files.
    inputs['stale_run'] = _fake_killed_run(p('stale-run'), inputs['cfg'], data, seg)
    inputs['mrc_dir'] = os.path.dirname(_write(p('volumes/seed0000.mrc'), np.random.default_rng(1).bytes(5000)))
    return inputs, markers


def _fake_killed_run(run_dir: str, preset: str, data: str, seg: str) -> str:
    """A run directory with a resume state at 4 images (without networks: a continuation stops at --kimg before
    reading them) and the temporary files of a snapshot being written when the run was killed."""
    import torch

    from training.checkpoints import run_files
    from training.checkpoints.atomic_files import _temporary_file_beside
    from training.config import TrainingConfig
    from training.presets import load_preset

    os.makedirs(run_dir)
    config = TrainingConfig.from_preset(load_preset(preset), preset, data=data, seg_data=seg, gpus=1, kimg=0.004)
    progress = dict(cur_nimg=4, cur_tick=1, tick_start_nimg=4, batch_idx=1, data_batches=1)
    state = dict(format=run_files.RESUME_FORMAT, version=run_files.RESUME_VERSION, config_json=config.to_json())
    torch.save(dict(state, progress=progress, networks={}, optimizers={}, rng=[]), f'{run_dir}/resume-state-000000.pt')
    for name in ('network-snapshot-000008.pkl', 'resume-state-000008.pt'):
        _write(_temporary_file_beside(os.path.join(run_dir, name)), b'\0' * 100000)
    return run_dir


READ_ONLY = ('ro', 'ro_run')
FULL = 'full'  # a tmpfs of FULL_SIZE: outputs larger than that fill it up
FULL_SIZE = '256k'
MOUNTS = (*READ_ONLY, FULL)


def mount_read_only(root: str, inputs: dict) -> None:
    """Add ro (an empty read-only folder), ro_run (a read-only copy of the run directory) and full (an empty
    folder of FULL_SIZE bytes) to `inputs`.

    chmod does not stop root, so they are tmpfs mounts made read-only; without root (or without the right to
    mount) they are left out and the cases that need them are skipped. unmount_read_only undoes this.
    """
    if os.geteuid() != 0:
        return
    for name, source in zip(READ_ONLY, (None, inputs['run'])):
        folder = os.path.join(root, name)
        os.makedirs(folder)
        if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256m', 'tmpfs', folder], capture_output=True).returncode:
            return
        if source is not None:
            shutil.copytree(source, folder, dirs_exist_ok=True)
        if subprocess.run(['mount', '-o', 'remount,ro', folder], capture_output=True).returncode:
            return
        inputs[name] = folder
    folder = os.path.join(root, FULL)
    os.makedirs(folder)
    if not subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', f'size={FULL_SIZE}', 'tmpfs', folder], capture_output=True
    ).returncode:
        inputs[FULL] = folder


def unmount_read_only(root: str) -> None:
    for name in MOUNTS:
        if os.path.ismount(os.path.join(root, name)):
            subprocess.run(['umount', os.path.join(root, name)], capture_output=True)


# ------------------------------------------------------------------------------------------------
# Running and judging.


@dataclasses.dataclass
class Outcome:
    """How one run ended."""

    returncode: int | None  # None: killed at the timeout; negative: killed by that signal
    output: str  # stdout and stderr as they came (unbuffered, so in order)
    seconds: float = 0.0
    code_ran: bool = False  # a hostile input's marker file appeared
    left: tuple = ()  # paths matching the case's leaves_none patterns after the run


def last_line(output: str) -> str:
    lines = [line.strip() for line in re.split(r'[\r\n]+', output) if line.strip()]
    return lines[-1] if lines else ''


def verdict(case: Case, outcome: Outcome, says: str | None = None) -> str:
    """'' when the case ended cleanly, else why not. says: case.says with its inputs filled in."""
    says = case.says if says is None else says
    last = last_line(outcome.output)
    if outcome.code_ran:
        return 'code from the input ran (its marker file appeared)'
    if outcome.returncode is None:
        return f'timed out after {outcome.seconds:.0f} s'
    if outcome.returncode < 0:
        return f'killed by {signal.Signals(-outcome.returncode).name}'
    for crash in ('Segmentation fault', 'Fatal Python error', 'core dumped'):
        if crash in outcome.output:
            return f'crashed ({crash})'
    if 'Traceback (most recent call last)' in outcome.output:
        return 'traceback'
    if outcome.left:
        return f'left {outcome.left[0]}' + (f' and {len(outcome.left) - 1} more' if len(outcome.left) > 1 else '')
    if outcome.returncode == 0:
        return '' if case.must == END else 'exit code 0: the bad input was accepted'
    if not last:
        return f'exit code {outcome.returncode} without a message'
    if says and says not in last:
        return f'the last line does not say {says!r}'
    if not says and not last.startswith('Error'):
        return 'the last line is not an error message'
    return ''


def run_case(case: Case, inputs: dict, markers: dict, out: str, timeout: float, memory_gib: float) -> Outcome:
    """Run the tool on the case's command line in a session of its own, killed whole at the timeout."""
    names = dict(inputs, out=out)
    script, *subcommand = case.tool.split()
    argv = [
        sys.executable,
        f'{script}.py',
        *subcommand,
        *(word.format(**names) for word in shlex.split(case.command())),
    ]
    limit = ['prlimit', f'--as={int(memory_gib * 2**30)}', '--'] if memory_gib > 0 else []  # util-linux
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', DNNLIB_CACHE_DIR=os.path.join(out, 'cache'))
    start = time.perf_counter()
    process = subprocess.Popen(
        limit + argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        returncode = None
    code_ran = any(os.path.exists(markers[name]) for name in case.inputs() if name in markers)
    left = tuple(path for pattern in case.leaves_none for path in sorted(glob.glob(pattern.format(**names))))
    return Outcome(returncode, output.decode(errors='replace'), time.perf_counter() - start, code_ran, left)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='only the representative subset (about 15 cases)')
    parser.add_argument('--match', metavar='REGEX', help='only the cases whose "tool args" this finds')
    parser.add_argument('--jobs', type=int, default=1, help='cases run in parallel')
    parser.add_argument('--keep', metavar='DIR', help='build the inputs and outputs in DIR (new) and keep them')
    parser.add_argument('--timeout', type=float, default=120, help='seconds per case (a case may set its own)')
    parser.add_argument('--memory-gib', type=float, default=8, help='address-space limit of each case (0: none)')
    args = parser.parse_args(argv)
    if args.keep and os.path.exists(args.keep):
        parser.error(f'--keep {args.keep}: exists; name a new folder')
    if args.memory_gib > 0 and shutil.which('prlimit') is None:
        parser.error('prlimit (util-linux) is missing: install it, or run without a memory limit (--memory-gib 0)')
    cases = [case for case in CASES if case.quick or not args.quick]
    if args.match:
        cases = [case for case in cases if re.search(args.match, f'{case.tool} {case.args}')]
    start = time.perf_counter()
    root = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix='bad-inputs-')
    os.makedirs(root, exist_ok=True)
    try:
        inputs, markers = build_inputs(root)
        mount_read_only(root, inputs)
        unknown = {name for case in cases for name in case.inputs()} - set(inputs) - {'out', *MOUNTS}
        if unknown:
            raise KeyError(f'cases name inputs that build_inputs does not make: {", ".join(sorted(unknown))}')
        runnable = [case for case in cases if case.inputs() <= set(inputs) | {'out'}]
        skipped = [case for case in cases if case not in runnable]
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            outcomes = pool.map(
                lambda item: run_case(
                    item[1],
                    inputs,
                    markers,
                    os.path.join(root, 'out', f'{item[0]:03d}'),
                    item[1].timeout or args.timeout,
                    args.memory_gib,
                ),
                enumerate(runnable),
            )
            failures = []
            for case, outcome in zip(runnable, outcomes):
                reason = verdict(case, outcome, case.says.format(**inputs, out=''))
                line = f'{case.tool} {case.args}'
                print(
                    f'{"NOT CLEAN" if reason else "clean":9s}  {line}  ({outcome.seconds:.0f} s)  '
                    f'{last_line(outcome.output)[:200]}' + (f'  [{reason}]' if reason else ''),
                    flush=True,
                )
                if reason:
                    failures.append(f'  {line}: {reason}; last line: {last_line(outcome.output)[:300]}')
    finally:
        unmount_read_only(root)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if skipped:
        print(
            f'skipped {len(skipped)} cases that need a read-only or small file system (mounting one needs root '
            f'and the right to mount): ' + '; '.join(f'{case.tool} {case.args}' for case in skipped)
        )
    if failures:
        print('not clean:\n' + '\n'.join(failures))
    print(f'run time {time.perf_counter() - start:.0f} s')
    print(f'{len(runnable)} tried, {len(runnable) - len(failures)} clean')
    return 0 if not failures else 1


if __name__ == '__main__':
    sys.exit(main())
