"""The metrics by name, their computation and their report files.

Names:
  fid50k_full, kid50k_full   50,000 fakes against every real image of the mirrored data set
  fid{N}k, kid{N}k           N thousand fakes against a fixed subset of N thousand real images
  fid{N}k_full, kid{N}k_full N thousand fakes against every real image
  pose_err                   D's pose accuracy on real images and on fakes (metrics.pose_accuracy)
Results are appended as one JSON line per snapshot to `metric-{name}.jsonl` in the run directory.
"""

import json
import os
import re
import time

import numpy as np

import dnnlib
from metrics import distances, metric_utils, pose_accuracy

FEATURE_METRIC = re.compile(r'^(fid|kid)(\d+)k(_full)?$')
POSE_ERR = 'pose_err'
POSE_ERR_ITEMS = 2000  # real images and fakes of pose_err
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000


def parse_metric(name: str) -> dnnlib.EasyDict:
    """'fid2k' -> {kind: 'fid', num_gen: 2000, max_real: 2000}; 'pose_err' -> {kind: 'pose_err', ...}; else ValueError."""
    if name == POSE_ERR:
        return dnnlib.EasyDict(kind=POSE_ERR, num_gen=POSE_ERR_ITEMS, max_real=POSE_ERR_ITEMS)
    match = FEATURE_METRIC.match(name)
    if match is None or int(match.group(2)) == 0:
        raise ValueError(f'unknown metric {name!r}: expected fid50k_full, kid50k_full, fid{{N}}k, kid{{N}}k '
                         f'(optionally with _full) or {POSE_ERR}')
    num_gen = int(match.group(2)) * 1000
    return dnnlib.EasyDict(kind=match.group(1), num_gen=num_gen, max_real=None if match.group(3) else num_gen)


def is_valid_metric(name: str) -> bool:
    try:
        parse_metric(name)
    except ValueError:
        return False
    return True


def calc_metric(name: str, opts: metric_utils.MetricOptions, num_gen: int | None = None,
                max_real: int | None | str = 'default') -> dnnlib.EasyDict:
    """Compute one metric -> {results: {...}, metric, total_time, total_time_str, num_gpus, detector, ...}.

    num_gen / max_real override the counts that the name implies (for quick checks); every rank
    of a process group must call this with the same arguments.
    """
    spec = parse_metric(name)
    num_gen = spec.num_gen if num_gen is None else num_gen
    max_real = spec.max_real if max_real == 'default' else max_real
    start = time.time()
    if spec.kind == POSE_ERR:
        results = pose_accuracy.compute_pose_err(opts, max_real, num_gen)
        detector = None
    else:
        real = metric_utils.real_features(opts, max_real)
        fake = metric_utils.fake_features(opts, num_gen)
        if spec.kind == 'fid':
            value = distances.frechet_distance(*distances.feature_moments(fake), *distances.feature_moments(real))
        else:
            value = distances.kernel_distance(real, fake, num_subsets=KID_SUBSETS, max_subset_size=KID_SUBSET_SIZE)
        results = {name: value}
        detector = opts.feature_detector().name
    total_time = time.time() - start
    return dnnlib.EasyDict(results=dnnlib.EasyDict(results), metric=name, total_time=total_time,
                           total_time_str=dnnlib.util.format_time(total_time), num_gpus=opts.num_gpus,
                           num_gen=num_gen, max_real=max_real, detector=detector,
                           metric_pose_sample_mode=opts.metric_pose_sample_mode, identical_c_p=opts.identical_c_p,
                           timestamp=time.time())


def report_metric(result: dnnlib.EasyDict, run_dir: str | None, snapshot_pkl: str | None) -> str:
    """Append `result` (with the snapshot's file name) to run_dir/metric-{name}.jsonl -> the JSON line.

    Without run_dir nothing is written; the line is returned for printing.
    """
    line = json.dumps(dict(result, snapshot_pkl=os.path.basename(snapshot_pkl) if snapshot_pkl else None),
                      default=_json_default)
    if run_dir is not None:
        with open(os.path.join(run_dir, f'metric-{result.metric}.jsonl'), 'a') as f:
            f.write(line + '\n')
    return line


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f'{type(value).__name__} is not JSON serializable')


def format_results(result: dnnlib.EasyDict) -> str:
    """A result as aligned 'name  value' lines for the console."""
    width = max(len(key) for key in result.results)
    lines = [f'{key:<{width}}  {value:.4f}' for key, value in result.results.items()]
    return '\n'.join(lines + [f'({result.metric}: {result.total_time_str}, {result.num_gpus} process(es)'
                              + (f', detector {result.detector})' if result.detector else ')')])
