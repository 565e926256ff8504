"""The metrics by name (metrics/names.py), their computation and their report files.

Results are appended as one JSON line per snapshot to `metric-{name}.jsonl` in the run directory.
"""

import json
import os
import time

import numpy as np

import dnnlib
from metrics import distances, metric_utils, pose_accuracy, pose_sensitivity
from metrics.names import POSE_ERR, POSE_METRICS, POSE_SENS, parse_metric
from training.checkpoints.atomic_files import append_line

KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000


def calc_metric(
    name: str, opts: metric_utils.MetricOptions, num_gen: int | None = None, max_real: int | None | str = 'default'
) -> dnnlib.EasyDict:
    """Compute one metric -> {results: {...}, metric, total_time, total_time_str, num_gpus, detector, ...}.

    num_gen / max_real override the counts that the name implies (for quick checks); every rank
    of a process group must call this with the same arguments.
    """
    spec = parse_metric(name)
    num_gen = spec.num_gen if num_gen is None else num_gen
    max_real = spec.max_real if max_real == 'default' else max_real
    if spec.kind in POSE_METRICS and (opts.D is None or opts.pose_predict_kwargs is None):
        raise ValueError(
            f'{name} needs the discriminator and its pose-prediction settings (pose_predict_kwargs-*.json)'
        )
    start = time.time()
    if spec.kind == POSE_ERR:
        results = pose_accuracy.compute_pose_err(opts, max_real, num_gen)
        detector = None
    elif spec.kind == POSE_SENS:
        results = pose_sensitivity.compute_pose_sens(opts, num_gen)
        detector = None
    else:
        real = metric_utils.real_features(opts, max_real, spec.yaw_range)
        fake = metric_utils.fake_features(opts, num_gen, spec.yaw_range)
        if spec.kind == 'fid':
            value = distances.frechet_distance(*distances.feature_moments(fake), *distances.feature_moments(real))
        else:
            value = distances.kernel_distance(real, fake, num_subsets=KID_SUBSETS, max_subset_size=KID_SUBSET_SIZE)
        results = {name: value}
        detector = opts.feature_detector().name
    total_time = time.time() - start
    return dnnlib.EasyDict(
        results=dnnlib.EasyDict(results),
        metric=name,
        total_time=total_time,
        total_time_str=dnnlib.util.format_time(total_time),
        num_gpus=opts.num_gpus,
        num_gen=num_gen,
        max_real=max_real,
        detector=detector,
        metric_pose_sample_mode=opts.metric_pose_sample_mode,
        identical_c_p=opts.identical_c_p,
        timestamp=time.time(),
    )


def report_metric(result: dnnlib.EasyDict, run_dir: str | None, snapshot_pkl: str | None) -> str:
    """Append `result` (with the snapshot's file name) to run_dir/metric-{name}.jsonl -> the JSON line.

    Without run_dir nothing is written; the line is returned for printing.
    """
    line = json.dumps(
        dict(result, snapshot_pkl=os.path.basename(snapshot_pkl) if snapshot_pkl else None), default=_json_default
    )
    if run_dir is not None:
        append_line(os.path.join(run_dir, f'metric-{result.metric}.jsonl'), line)
    return line


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f'{type(value).__name__} is not JSON serializable')


def format_results(result: dnnlib.EasyDict) -> str:
    """A result as aligned 'name  value' lines for the console."""
    width = max(len(key) for key in result.results)
    lines = [f'{key:<{width}}  {value:.4f}' for key, value in result.results.items()]
    return '\n'.join(
        lines
        + [
            f'({result.metric}: {result.total_time_str}, {result.num_gpus} process(es)'
            + (f', detector {result.detector})' if result.detector else ')')
        ]
    )
