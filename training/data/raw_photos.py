"""Synthetic "raw photos" with exact answers: a scene of the synthetic painter (training/data/synthetic.py) seen by
its own camera, but through a wider lens, with the person shifted and scaled in a photo-sized, non-square frame.

Because the camera stays where the scene puts it (radius 2.7, looking at the pivot (0, 0.0649, 0)), the aligned
crop of the photo is known exactly: the square of side focal_px / FOCAL pixels centred on the principal point.
That square, resized, is the painter's own render of the scene, and its camera label is the scene's. Scenes come
from held-out indices (HELD_OUT_START and up), which no training set of the default sizes uses.
"""

import dataclasses
import math

import numpy as np

from training.data import camera_utils
from training.data.camera_utils import FOCAL
from training.data.synthetic import PortraitPainter, Scene, sample_scene

HELD_OUT_START = 10_000_000  # scene indices of raw photos: far above any synthetic training set
PHOTO_SIZES = ((480, 640), (640, 480), (600, 800), (800, 600), (512, 512), (720, 540))  # (height, width)
CROP_FRACTION = (0.35, 0.75)  # the aligned crop's side as a share of the photo's shorter side
MAX_SHIFT = 0.6  # the crop centre's horizontal offset from the frame centre, share of the free room
# The painted body ends at the chest, about 0.75 crop sides below the crop centre: the frame's bottom edge is
# put above that, as in a portrait photo.
BOTTOM_EDGE = (0.55, 0.7)  # crop sides below the crop centre
SUPERSAMPLE = 2


@dataclasses.dataclass
class RawPhoto:
    """A rendered photo and its true alignment."""

    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # uint8 [H, W], 0 or 255
    camera: np.ndarray  # [25] the scene's camera label (the aligned crop's)
    pose: np.ndarray  # [6] neck and head axis-angles
    crop_centre: np.ndarray  # [2] x, y, photo pixels
    crop_side: float  # pixels
    scene_index: int


def photo_geometry(rng: np.random.Generator) -> tuple:
    """A random frame and the aligned crop's place in it -> ((height, width), centre [2] x, y, side)."""
    height, width = PHOTO_SIZES[rng.integers(len(PHOTO_SIZES))]
    side = rng.uniform(*CROP_FRACTION) * min(height, width)
    centre_x = width / 2 + rng.uniform(-MAX_SHIFT, MAX_SHIFT) * (width - side) / 2
    centre_y = height - rng.uniform(*BOTTOM_EDGE) * side
    centre = np.array([centre_x, centre_y])
    return (height, width), centre, side


def render_raw_photo(
    painter: PortraitPainter,
    scene: Scene,
    size: tuple,
    crop_centre: np.ndarray,
    crop_side: float,
    scene_index: int = -1,
) -> RawPhoto:
    """Render `scene` into a (height, width) photo whose aligned crop is the square of `crop_side` pixels at
    `crop_centre` (x, y)."""
    height, width = size
    focal_px = crop_side * FOCAL
    intrinsics = np.array(
        [
            [focal_px / width, 0.0, crop_centre[0] / width],
            [0.0, focal_px / height, crop_centre[1] / height],
            [0.0, 0.0, 1.0],
        ]
    )
    image, mask = painter.render_frame(scene, intrinsics, size, SUPERSAMPLE)
    return RawPhoto(
        image=image,
        mask=mask,
        camera=scene.camera.copy(),
        pose=scene.pose.copy(),
        crop_centre=np.asarray(crop_centre, np.float64),
        crop_side=float(crop_side),
        scene_index=scene_index,
    )


def raw_photo(painter: PortraitPainter, index: int, seed: int = 0, yaw_degrees: float | None = None) -> RawPhoto:
    """Held-out raw photo number `index` (scene HELD_OUT_START + index of the set with `seed`); `yaw_degrees`
    replaces the scene's camera yaw (camera_utils.camera_yaw), keeping its pitch."""
    scene_index = HELD_OUT_START + index
    scene = sample_scene(seed, scene_index)
    if yaw_degrees is not None:
        position = scene.camera[:16].reshape(4, 4)[:3, 3]
        v = math.pi / 2 * (1 - float(position[1]) / camera_utils.RADIUS)  # orbit_camera's v of this height
        cam2world = camera_utils.orbit_camera(math.pi / 2 + math.radians(yaw_degrees), v)
        scene = dataclasses.replace(scene, camera=camera_utils.camera_label(cam2world)[0].numpy().astype(np.float32))
    rng = np.random.default_rng(np.random.SeedSequence([seed, scene_index, 1]))
    size, centre, side = photo_geometry(rng)
    return render_raw_photo(painter, scene, size, centre, side, scene_index)
