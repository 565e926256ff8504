"""Metric names: which exist, how many images each one uses, and the pose modes of the metrics' fakes.

Names:
  fid50k_full, kid50k_full   50,000 fakes against every real image of the mirrored data set
  fid{N}k, kid{N}k           N thousand fakes against a fixed subset of N thousand real images
  fid{N}k_full, kid{N}k_full N thousand fakes against every real image
  ..._front, ..._back        the same within a yaw range of the camera (YAW_RANGES): fakes rendered from the
                             cameras of real images in the range, against the real images in it
  pose_err                   D's pose accuracy on POSE_ERR_ITEMS real images and fakes (metrics.pose_accuracy)
  pose_sens                  D's response to the rendered pose on POSE_SENS_ITEMS fakes (metrics.pose_sensitivity)

Free of torch, so that training/config.py checks --metrics without loading the metrics, and
metrics/metric_main.py, which computes them, can import both.
"""

import re

from dnnlib.util import EasyDict

METRIC_POSE_SAMPLE_MODES = ('G_predict', 'D_predict')  # pose of the fakes: G's pose branch, or D on a real image
FEATURE_METRIC = re.compile(r'^(fid|kid)(\d+)k(_full)?(?:_(front|back))?$')
# Yaw ranges of the camera (training.data.camera_utils.camera_yaw: 0 frontal, +-pi behind the head), split
# as the 360-degree head GANs report FID: front |yaw| <= 90 degrees, back the rest.
YAW_RANGES = ('front', 'back')
FRONT_MAX_YAW_DEGREES = 90.0
POSE_ERR = 'pose_err'
POSE_ERR_ITEMS = 2000  # real images and fakes of pose_err
POSE_SENS = 'pose_sens'
POSE_SENS_ITEMS = 256  # fakes of pose_sens, each rendered 12 times
POSE_METRICS = (POSE_ERR, POSE_SENS)  # the metrics that need D and its pose-prediction settings


def expected_metrics(none: bool = False) -> str:
    """The accepted names, for error messages: '... or pose_sens', or with `none` '..., pose_sens, or none'."""
    forms = f'fid50k_full, kid50k_full, fid{{N}}k, kid{{N}}k (optionally with _full, then _front or _back), {POSE_ERR}'
    return f'{forms}, {POSE_SENS}, or none' if none else f'{forms} or {POSE_SENS}'


def parse_metric(name: str) -> EasyDict:
    """'fid2k' -> {kind: 'fid', num_gen: 2000, max_real: 2000, yaw_range: None}; 'pose_err' -> {kind: 'pose_err',
    ...}; else ValueError.

    max_real None: every real image (of the yaw range); 0 (pose_sens): none. yaw_range: one of YAW_RANGES, or None
    for every camera.
    """
    if name == POSE_ERR:
        return EasyDict(kind=POSE_ERR, num_gen=POSE_ERR_ITEMS, max_real=POSE_ERR_ITEMS)
    if name == POSE_SENS:
        return EasyDict(kind=POSE_SENS, num_gen=POSE_SENS_ITEMS, max_real=0)
    match = FEATURE_METRIC.match(name)
    if match is None or int(match.group(2)) == 0:
        raise ValueError(f'unknown metric {name!r}: expected {expected_metrics()}')
    num_gen = int(match.group(2)) * 1000
    return EasyDict(
        kind=match.group(1), num_gen=num_gen, max_real=None if match.group(3) else num_gen, yaw_range=match.group(4)
    )


def in_yaw_range(yaw_degrees, yaw_range: str | None) -> list:
    """Which camera yaws (degrees, in [-180, 180]) lie in a yaw range -> list of bool; None takes every camera."""
    if yaw_range is None:
        return [True for _ in yaw_degrees]
    if yaw_range not in YAW_RANGES:
        raise ValueError(f'yaw range {yaw_range!r}: expected one of {", ".join(YAW_RANGES)}')
    return [(abs(float(yaw)) <= FRONT_MAX_YAW_DEGREES) == (yaw_range == 'front') for yaw in yaw_degrees]


def is_valid_metric(name: str) -> bool:
    try:
        parse_metric(name)
    except ValueError:
        return False
    return True
