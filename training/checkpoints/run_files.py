"""The files of a training run directory, and how every tool finds a snapshot among them.

Files of a run directory (the training loop's rank 0 writes them, each atomically):
  network-snapshot-{kimg:06d}.pkl       G, D, G_ema, D_ema, training_set_kwargs, pose_predict_kwargs
                                        (EG3D pickle layout)
  network-snapshot-{kimg:06d}.pt        the same, weights only (no pickled code)
  pose_predict_kwargs-{kimg:06d}.json   how to prepare real images for D.predict_pose (docs/method.md §9.6),
                                        also carried inside both snapshot files
  resume-state-{kimg:06d}.pt            what continuing needs: networks, optimizer states, counters
                                        and every rank's RNG states; only the newest is kept
  fakes*.png, reals.png, segs.png, mesh_coarse_real_pose.png   image snapshots
  stats.jsonl, events.out.tfevents.*, metric-*.jsonl           statistics per tick and metrics

`--network` of the tools is a file, a URL, a run directory (its newest snapshot) or a training
`--outdir` (the newest snapshot of its newest run); `resolve_network` turns it into one file.
Errors are `formats.CheckpointError`s with one line naming the path and the problem.
"""

import glob
import json
import os
import re
from typing import Any

import torch

from training import pose_prediction
from training.checkpoints import formats
from training.checkpoints.atomic_files import atomic_write
from training.checkpoints.formats import CheckpointError

SNAPSHOT_PREFIX = 'network-snapshot-'
RESUME_PREFIX = 'resume-state-'
POSE_PREDICT_PREFIX = 'pose_predict_kwargs-'
POSE_PREDICT_KEY = 'pose_predict_kwargs'  # the settings inside a snapshot file (pickle or weights file)
RESUME_FORMAT = 'portrait3d-resume-state'
RESUME_VERSION = 1


def snapshot_paths(run_dir: str, cur_nimg: int) -> dict:
    """The files of the network snapshot at `cur_nimg` images -> {'pkl', 'pt', 'json', 'resume'}: paths."""
    kimg = f'{cur_nimg // 1000:06d}'
    return dict(
        pkl=os.path.join(run_dir, f'{SNAPSHOT_PREFIX}{kimg}.pkl'),
        pt=os.path.join(run_dir, f'{SNAPSHOT_PREFIX}{kimg}.pt'),
        json=os.path.join(run_dir, f'{POSE_PREDICT_PREFIX}{kimg}.json'),
        resume=os.path.join(run_dir, f'{RESUME_PREFIX}{kimg}.pt'),
    )


def _newest(run_dir: str, prefix: str, suffix: str) -> str | None:
    """The file {prefix}{kimg}{suffix} of a run directory with the highest kimg (newest on ties), or None."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), f'{prefix}*{suffix}')):
        match = re.fullmatch(re.escape(prefix) + r'(\d+)' + re.escape(suffix), os.path.basename(path))
        if match:
            found.append((int(match.group(1)), os.path.getmtime(path), path))
    return max(found)[2] if found else None


def latest_resume_state(run_dir: str) -> str | None:
    """The newest resume state of a run directory (complete: written atomically), or None."""
    return _newest(run_dir, RESUME_PREFIX, '.pt')


def latest_network_snapshot(run_dir: str) -> str | None:
    """The newest network snapshot of a run directory, or None: its weights file where it has one
    (it loads without unpickling), else its network pickle."""
    newest = [
        path
        for path in (_newest(run_dir, SNAPSHOT_PREFIX, '.pt'), _newest(run_dir, SNAPSHOT_PREFIX, '.pkl'))
        if path is not None
    ]

    def kimg(path: str) -> int:
        return int(os.path.splitext(os.path.basename(path))[0][len(SNAPSHOT_PREFIX) :])

    return max(newest, key=kimg, default=None)  # max keeps the first of equals: the weights file


def remove_older_resume_states(run_dir: str, keep: str) -> None:
    """Delete every resume state of the run directory but `keep` (they hold the optimizer moments too,
    about three times a network snapshot)."""
    for path in glob.glob(os.path.join(glob.escape(run_dir), f'{RESUME_PREFIX}*.pt')):
        if os.path.abspath(path) != os.path.abspath(keep):
            os.remove(path)


def resolve_network(network: str) -> str:
    """`--network` -> one checkpoint path or URL: a file or URL as given; a run directory -> its newest
    network snapshot; a folder of run directories (a training --outdir) -> the newest snapshot of its
    newest run. Raises CheckpointError for a folder without snapshots."""
    if not os.path.isdir(network):
        return network
    runs = [network] + sorted((os.path.join(network, name) for name in os.listdir(network)), reverse=True)
    for run_dir in runs:
        if os.path.isdir(run_dir) and (snapshot := latest_network_snapshot(run_dir)) is not None:
            return snapshot
    raise CheckpointError(f'{network}: no {SNAPSHOT_PREFIX}*.pkl or .pt in this folder or its run directories')


def stage_start_snapshot(resume: str) -> str:
    """`--resume` of a new training stage -> the network snapshot it starts from: a run directory's newest,
    or the snapshot file named. Raises CheckpointError for a resume state or a folder without snapshots."""
    if os.path.isdir(resume):
        snapshot = latest_network_snapshot(resume)
        if snapshot is None:
            raise CheckpointError(f'{resume} holds no {SNAPSHOT_PREFIX}*.pt or .pkl')
        return snapshot
    if os.path.basename(resume).startswith(RESUME_PREFIX):
        raise CheckpointError(
            f'{resume}: a new stage starts from a network snapshot ({SNAPSHOT_PREFIX}*.pkl '
            f'or .pt), not from a resume state'
        )
    return resume


def find_resume_state(resume: str) -> str:
    """`--resume` of a continued run -> its resume state: a run directory's newest, the state itself, or the
    one beside a network snapshot. Raises CheckpointError when there is none."""
    if os.path.isdir(resume):
        path = latest_resume_state(resume)
        if path is None:
            raise CheckpointError(f'{resume} holds no {RESUME_PREFIX}*.pt (no network snapshot was completed)')
        return path
    name = os.path.basename(resume)
    if name.startswith(RESUME_PREFIX):
        return resume
    if name.startswith(SNAPSHOT_PREFIX):
        kimg = os.path.splitext(name)[0][len(SNAPSHOT_PREFIX) :]
        path = os.path.join(os.path.dirname(resume), f'{RESUME_PREFIX}{kimg}.pt')
        if os.path.isfile(path):
            return path
    raise CheckpointError(
        f'{resume} has no resume state beside it (only the newest snapshot of a run keeps '
        f'one); to start a new training stage from its networks, add --resume_kimg'
    )


def load_resume_state(path: str, mmap: bool = False) -> dict:
    """Read a resume state with torch.load(weights_only=True); raises CheckpointError on a bad file.

    mmap=True maps the tensors instead of reading them (to look at the config or counters only).
    """
    try:
        state = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f'{path}: no such resume state') from None
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f'{path}: not a readable resume state ({message})') from None
    if not isinstance(state, dict) or state.get('format') != RESUME_FORMAT:
        raise CheckpointError(f'{path}: not a resume state of this project (no "{RESUME_FORMAT}" marker)')
    if state.get('version') != RESUME_VERSION:
        raise CheckpointError(
            f'{path}: resume state version {state.get("version")!r}; this code reads version {RESUME_VERSION}'
        )
    return state


def pose_predict_kwargs_for(snapshot_path: str) -> str:
    """The pose-prediction JSON beside a snapshot.

    network-snapshot-001234.pkl (or .pt), as written by training -> pose_predict_kwargs-001234.json;
    any other name, such as the published 3DPortraitGAN512-64.pkl or a file converted from it
    -> the .json of the same stem (3DPortraitGAN512-64.json).
    """
    folder, name = os.path.split(snapshot_path)
    stem = os.path.splitext(name)[0]
    if stem.startswith(SNAPSHOT_PREFIX):
        return os.path.join(folder, f'{POSE_PREDICT_PREFIX}{stem[len(SNAPSHOT_PREFIX) :]}.json')
    return os.path.join(folder, f'{stem}.json')


def find_pose_predict_kwargs(snapshot_path: str, contents: dict, given: str | None = None) -> dict | None:
    """The pose-prediction settings of a loaded snapshot: the JSON file `given` (a tool's option), else the
    ones the snapshot carries (contents[POSE_PREDICT_KEY], in files written by this project), else the JSON
    beside it (pose_predict_kwargs_for: how the published .pkl files come with theirs); None where none is
    found. Raises OSError or ValueError (one line, naming the file) for settings that cannot be used."""
    if given is not None:
        return pose_prediction.load_pose_predict_kwargs(given)
    if contents.get(POSE_PREDICT_KEY) is not None:
        return pose_prediction.check_pose_predict_kwargs(contents[POSE_PREDICT_KEY], snapshot_path)
    beside = pose_predict_kwargs_for(snapshot_path)
    return pose_prediction.load_pose_predict_kwargs(beside) if os.path.isfile(beside) else None


def snapshot_networks(modules: dict[str, Any], path: str) -> tuple:
    """The networks to use from a loaded snapshot -> (G_ema else G, D_ema else D), each None where absent.

    Raises CheckpointError when the entry there is not this project's generator or discriminator.
    """
    from training.networks.dual_discriminator import PoseAwareDualDiscriminator
    from training.networks.triplane import TriPlaneGenerator

    picked = []
    for names, cls, role in (
        (('G_ema', 'G'), TriPlaneGenerator, 'generator'),
        (('D_ema', 'D'), PoseAwareDualDiscriminator, 'discriminator'),
    ):
        key = next((name for name in names if modules.get(name) is not None), None)
        network = None if key is None else modules[key]
        if network is not None and not isinstance(network, cls):
            raise CheckpointError(
                f'{path}: its {key} is a {type(network).__name__}, not a {role} of this project '
                f"({cls.__name__}); the file is not a snapshot of this project's networks"
            )
        picked.append(network)
    return tuple(picked)


# Metadata of a snapshot that an exported file keeps: the data set it was trained on (for the metrics),
# the rendering resolution it renders at, its image count and its pose-prediction settings.
EXPORTED_EXTRA = ('training_set_kwargs', 'neural_rendering_resolution', 'cur_nimg', POSE_PREDICT_KEY)


def export_snapshot(snapshot_path: str, out_path: str, parameter_dtypes: dict[str, torch.dtype] | None = None) -> tuple:
    """Write the inference part of a snapshot as a compact weights file -> (out_path, its pose JSON path or None).

    Keeps G_ema (else G) as 'G_ema' and D_ema (else D) as 'D_ema', and the EXPORTED_EXTRA metadata, with
    the snapshot's pose-prediction settings (find_pose_predict_kwargs) inside, so the file is
    self-contained; they are also written to the .json of out_path's stem. parameter_dtypes
    ({'G_ema' or 'D_ema': dtype}) stores those networks' parameters in that dtype. Raises CheckpointError.
    """

    if not out_path.endswith('.pt'):
        raise CheckpointError(f'{out_path}: name the weights file .pt')
    contents = formats.load_any(snapshot_path)
    G, D = snapshot_networks(contents, snapshot_path)
    if G is None:
        raise CheckpointError(f'{snapshot_path}: holds no generator to export')
    modules = {'G_ema': G} if D is None else {'G_ema': G, 'D_ema': D}
    extra = {key: contents[key] for key in EXPORTED_EXTRA if contents.get(key) is not None}
    try:
        settings = find_pose_predict_kwargs(snapshot_path, contents)
    except (OSError, ValueError) as error:
        raise CheckpointError(str(error)) from None
    if settings is not None:
        extra[POSE_PREDICT_KEY] = settings
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    dtypes = {key: dtype for key, dtype in (parameter_dtypes or {}).items() if key in modules}
    formats.save_weights(out_path, modules, extra, parameter_dtypes=dtypes)
    if settings is None:
        return out_path, None
    out_json = pose_predict_kwargs_for(out_path)
    text = json.dumps(settings, indent=2) + '\n'
    atomic_write(out_json, lambda file: file.write(text.encode()))
    return out_path, out_json
