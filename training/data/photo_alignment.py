"""Alignment of a raw photo (one person, any size, front, side or back) to the published data convention: a square
crop, a person mask and a camera label.

The convention (that of the published data and of training/data/synthetic.py): the camera follows the upper
torso, sits at RADIUS 2.7 m from the neck joint and looks at PIVOT (0, 0.0649, 0) with the normalized focal
FOCAL; the aligned crop is what that camera sees, i.e. a square of CROP_WIDTH_M = RADIUS / FOCAL (0.415 m) at
the subject, centred on the pivot's image. Two ways to the crop and the camera:
- body landmarks (front to side, and most backs): the upper-body points (face, ears, shoulders) and their 3D
  world positions give the photo's pixels per metre (a least-squares scale between the two), the pivot's image
  (a fixed offset above the shoulder midpoint, moved by the neck's depth as the torso turns) and the torso's yaw
  (the shoulder line's direction in the model's depth, through the model's measured response); that crop is then
  combined with the silhouette's (below), whose neck column also pulls the centre;
- silhouette (no body found, typically a back view): the head top and the head's width in the person
  mask give the crop; the yaw is then only a guess (facing away), flagged uncertain.
The constants were fitted on held-out renders of the synthetic painter (benchmarks/alignment.py measures them).
Pitch is not estimated (a level camera, pitch 0); the generator's search (training/engines/camera_search.py)
refines the yaw.
"""

import dataclasses
import math

import numpy as np
import torch
from PIL import Image, ImageFilter

from training.data import camera_utils
from training.data.landmark_models import LEFT_SHOULDER, RIGHT_SHOULDER, BodyLandmarks, PersonDetectors

CROP_WIDTH_M = camera_utils.RADIUS / camera_utils.FOCAL  # the aligned crop's width at the subject, metres
# In the landmark model's world units: the crop side per unit of fitted scale, and the pivot relative to the
# shoulder midpoint (x right, y down). Fitted on 80 held-out raw photos (median).
SIDE_PER_WORLD_UNIT = 0.459
PIVOT_FROM_SHOULDERS = (0.0, -0.134)
# The landmark model's torso yaw (read) against the true camera yaw, in degrees: the median truth of the photos
# read within 10 degrees of each knot over the front half, fitted on 419 held-out raw photos (scenes
# 10,000,000-10,000,479); the back half is left as read (the ends meet at +-180).
DEPTH_YAW_READ = (-180, -90, -75, -60, -45, -30, -15, 0, 15, 30, 45, 60, 75, 90, 180)
DEPTH_YAW_TRUE = (-180, -82.1, -82.1, -66.0, -56.9, -34.2, -16.0, 6.5, 40.4, 57.5, 62.4, 74.8, 82.6, 92.6, 180)
UPPER_BODY_POINTS = range(13)  # nose, eyes, ears, mouth, shoulders
VISIBLE = 0.5
# Silhouette: the crop side per pixel of head width, and the crop centre below the head top in crop sides; fitted
# on the back views of the same photos.
HEAD_BAND = 0.8
SIDE_PER_HEAD_WIDTH = 2.40
CENTRE_BELOW_HEAD_TOP = 0.433
# Both together (every view; the same photos): the landmarks' share of the side's geometric mean.
LANDMARK_SIDE_WEIGHT = 0.3
SIDE_PER_HEAD_WIDTH_ALL_VIEWS = 2.234
# The centre's corrections (crop sides), fitted on the 419 photos: the neck joint lies behind the shoulder line, so
# the pivot's image moves by PIVOT_SHIFT_PER_SIN_YAW * sin(yaw); the share of the silhouette's neck column; the row.
PIVOT_SHIFT_PER_SIN_YAW = 0.0240
PIVOT_SHIFT = 0.0072
NECK_COLUMN_WEIGHT = 0.25
CENTRE_ROW_SHIFT = 0.0072
MIN_PERSON_SHARE = 0.01  # a mask smaller than this share of the photo: no person
MIN_SIDE = 64
ANALYSIS_SIZE = 1024  # larger photos are detected and segmented at this size (longer side), cropped at full size
PAD_BLUR = 0.02  # Gaussian blur of the reflected padding, in crop sides
PERSON = 0.5


class AlignmentError(ValueError):
    """A photo that cannot be aligned; the message is one line that says why."""


@dataclasses.dataclass
class Alignment:
    """One aligned photo."""

    image: np.ndarray  # uint8 [R, R, 3], the aligned crop
    mask: np.ndarray  # uint8 [R, R], 0 or 255
    camera: np.ndarray  # float32 [25], the camera label of the crop
    crop_box: tuple  # (x0, y0, x1, y1) in the photo's pixels (may reach outside it)
    yaw: float  # degrees, camera_utils.camera_yaw's sign
    pitch: float  # degrees, positive: camera below the pivot's level
    method: str  # 'body landmarks' or 'silhouette'
    uncertain: bool  # the yaw is a guess (no face, or a contradiction between detectors)
    confidences: dict  # detector -> score
    notes: list  # one-line remarks (several persons, person cut off, ...)
    # float32 [h, w]: the person probability of the photo analysed (the photo, or it at ANALYSIS_SIZE)
    person_probability: np.ndarray = dataclasses.field(repr=False, default=None)

    def to_json(self) -> dict:
        """The result.json entry: the published keys (camera_pose, smpl_pose) and this tool's own."""
        return {
            'camera_pose': self.camera[:16].reshape(4, 4).astype(float).tolist(),
            'smpl_pose': [0.0] * 72,
            'crop_box': [round(float(v), 2) for v in self.crop_box],
            'yaw_degrees': round(self.yaw, 2),
            'pitch_degrees': round(self.pitch, 2),
            'camera_method': self.method,
            'yaw_uncertain': self.uncertain,
            'confidences': {name: round(float(value), 4) for name, value in self.confidences.items()},
            'notes': list(self.notes),
        }


def camera_from_angles(yaw_degrees: float, pitch_degrees: float = 0.0) -> np.ndarray:
    """The convention's camera label at this yaw (camera_utils.camera_yaw) and pitch (orbit offset, positive
    below the pivot) -> float32 [25]."""
    cam2world = camera_utils.orbit_camera(
        math.pi / 2 + math.radians(yaw_degrees), math.pi / 2 + math.radians(pitch_degrees)
    )
    return camera_utils.camera_label(cam2world)[0].numpy().astype(np.float32)


def angles_of_camera(camera: np.ndarray) -> tuple:
    """camera [25] -> (yaw, pitch) in degrees, the inverse of camera_from_angles."""
    c = torch.as_tensor(np.asarray(camera, np.float32))[None]
    yaw = math.degrees(float(camera_utils.camera_yaw(c)[0]))
    height = min(1.0, max(-1.0, float(c[0, 7]) / camera_utils.RADIUS))
    return yaw, math.degrees(-math.pi / 2 * height)


def wrap_degrees(angle):
    """-> the same angle in (-180, 180]."""
    return -((-np.asarray(angle) + 180) % 360 - 180)


def torso_yaw(landmarks: BodyLandmarks) -> float:
    """The camera's yaw around the torso from the shoulder line's direction in the landmark model's depth,
    degrees: 0 facing the camera, positive with the camera on the person's left (the left shoulder nearer). The
    model's depths flatten turns and lean to one side; its measured response (DEPTH_YAW_READ -> DEPTH_YAW_TRUE)
    is undone."""
    left, right = landmarks.world[LEFT_SHOULDER], landmarks.world[RIGHT_SHOULDER]
    depth_yaw = math.degrees(math.atan2(right[2] - left[2], left[0] - right[0]))
    return float(np.interp(depth_yaw, DEPTH_YAW_READ, DEPTH_YAW_TRUE))


def crop_from_landmarks(landmarks: BodyLandmarks) -> tuple:
    """-> (centre [2] x, y, side) in photo pixels, from the scale between the upper-body world points and their
    image."""
    points = [i for i in UPPER_BODY_POINTS if landmarks.visibility[i] > VISIBLE] or list(UPPER_BODY_POINTS)
    world, image = landmarks.world[points, :2], landmarks.points[points]
    world_centred, image_centred = world - world.mean(0), image - image.mean(0)
    scale = float((world_centred * image_centred).sum() / max((world_centred**2).sum(), 1e-12))
    shift = image.mean(0) - scale * world.mean(0)
    shoulders = (landmarks.world[LEFT_SHOULDER, :2] + landmarks.world[RIGHT_SHOULDER, :2]) / 2
    centre = scale * (shoulders + np.asarray(PIVOT_FROM_SHOULDERS)) + shift
    return centre, SIDE_PER_WORLD_UNIT * scale


def largest_component(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] -> the largest 8-connected component of it, bool [H, W]."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.reshape(-1))[1:]
    return labels == (1 + int(np.argmax(sizes)))


def silhouette_head(mask: np.ndarray) -> tuple:
    """A person mask bool [H, W] -> (head top row, head width, head centre column), pixels. The head's width is
    the widest row within HEAD_BAND head widths of the top (found by a few fixed-point steps from the top tenth
    of the person)."""
    rows = np.nonzero(mask.any(axis=1))[0]
    top, bottom = int(rows[0]), int(rows[-1])
    widths = mask.sum(axis=1)
    head_width = int(widths[top : top + max(3, (bottom - top) // 10)].max())
    for _ in range(4):
        head_width = int(widths[top : top + max(3, int(HEAD_BAND * head_width))].max())
    head = mask[top : top + max(3, int(HEAD_BAND * head_width))].sum(axis=0).astype(np.float64)
    centre_x = float((np.arange(mask.shape[1]) * head).sum() / max(head.sum(), 1))
    return top, head_width, centre_x


def crop_from_silhouette(mask: np.ndarray) -> tuple:
    """bool [H, W] -> (centre [2] x, y, side) in photo pixels."""
    top, head_width, centre_x = silhouette_head(mask)
    side = SIDE_PER_HEAD_WIDTH * head_width
    return np.array([centre_x, top + CENTRE_BELOW_HEAD_TOP * side]), side


def silhouette_neck_column(mask: np.ndarray, head: tuple, shoulder_row: float):
    """The centre column of the person mask bool [H, W] at its narrowest row between half a head width below the
    head top and the shoulder line (pixels), or None where there is no such row."""
    top, head_width, _ = head
    low, high = int(top + head_width / 2), min(int(shoulder_row), mask.shape[0] - 1)
    if high <= low:
        return None
    row = low + int(np.argmin(mask[low:high].sum(axis=1)))
    columns = np.nonzero(mask[row])[0]
    return float(columns[0] + columns[-1]) / 2 if len(columns) else None


def crop_and_yaw_from_landmarks(landmarks: BodyLandmarks, person: np.ndarray) -> tuple:
    """The landmarks and the person mask bool [H, W] together -> (centre [2] x, y, side, yaw degrees), pixels.

    Side: a weighted geometric mean of the landmarks' side and the silhouette's (their errors are nearly
    independent, and each alone is about twice as far off). Centre row: the mean of the two, slightly lowered.
    Centre column: the landmarks' pivot, moved by the neck's depth behind the shoulder line as the torso turns,
    then a quarter of the way to the silhouette's neck column."""
    (centre, landmark_side), head = crop_from_landmarks(landmarks), silhouette_head(person)
    top, head_width, _ = head
    side = landmark_side**LANDMARK_SIDE_WEIGHT * (SIDE_PER_HEAD_WIDTH_ALL_VIEWS * head_width) ** (
        1 - LANDMARK_SIDE_WEIGHT
    )
    yaw = torso_yaw(landmarks)
    column = centre[0] + side * (PIVOT_SHIFT_PER_SIN_YAW * math.sin(math.radians(yaw)) + PIVOT_SHIFT)
    shoulder_row = (landmarks.points[LEFT_SHOULDER, 1] + landmarks.points[RIGHT_SHOULDER, 1]) / 2
    neck = silhouette_neck_column(person, head, shoulder_row)
    if neck is not None:
        column = (1 - NECK_COLUMN_WEIGHT) * column + NECK_COLUMN_WEIGHT * neck
    row = (centre[1] + top + CENTRE_BELOW_HEAD_TOP * side) / 2 + CENTRE_ROW_SHIFT * side
    return np.array([column, row]), side, yaw


def crop_square(image: np.ndarray, centre, side: float, resolution: int, padding: str) -> np.ndarray:
    """The square of `side` pixels at `centre` (x, y) of image [H, W, C] or [H, W], resampled to resolution²
    (Lanczos); outside the photo the image is padded by `padding`: 'reflect and blur' (reflected, then blurred
    in proportion to the distance from the photo's edge: photos), 'reflect' or 'edge' (the edge pixels repeated:
    masks, so that a body cut off at the bottom continues and nothing is mirrored above a head)
    -> same dtype [R, R, C] or [R, R]. The neighbourhood of the square is first brought to
    about the output's scale, so that a large photo costs no more than a small one."""
    height, width = image.shape[:2]
    x0, y0 = centre[0] - side / 2, centre[1] - side / 2
    # The square and half a side around it (what a reflection usually reaches), inside the photo.
    left, top = max(0, int(math.floor(x0 - side / 2))), max(0, int(math.floor(y0 - side / 2)))
    right, bottom = min(width, int(math.ceil(x0 + 1.5 * side))), min(height, int(math.ceil(y0 + 1.5 * side)))
    if right <= left or bottom <= top:
        raise AlignmentError('the crop lies outside the photo')
    region = image[top:bottom, left:right]
    scale = min(1.0, 1.25 * resolution / side)  # a little more than the output's detail for the final resample
    if scale < 1:
        size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
        region = np.asarray(Image.fromarray(region).resize(size, Image.Resampling.LANCZOS))
        scale_x, scale_y = size[0] / (right - left), size[1] / (bottom - top)
    else:
        scale_x = scale_y = 1.0
    # The square in the region's pixels.
    bx0, by0 = (x0 - left) * scale_x, (y0 - top) * scale_y
    bx1, by1 = bx0 + side * scale_x, by0 + side * scale_y
    r_height, r_width = region.shape[:2]
    beyond = max(0.0, -bx0, -by0, bx1 - r_width, by1 - r_height)
    pad = int(math.ceil(min(beyond, 2 * max(r_height, r_width) - 1))) + 2
    pad_widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(region, pad_widths, mode='edge' if padding == 'edge' or beyond == 0 else 'symmetric')
    if padding == 'reflect and blur' and beyond > 0:
        radius = max(1.0, PAD_BLUR * side * scale_x)
        blurred = np.asarray(Image.fromarray(padded).filter(ImageFilter.GaussianBlur(radius)))
        # The distance from the photo's own edges (not the region's): 0 inside the photo, 1 from 3 radii out.
        ys = (np.arange(padded.shape[0]) - pad) / scale_y + top
        xs = (np.arange(padded.shape[1]) - pad) / scale_x + left
        dy = np.maximum(-ys, ys - (height - 1)).clip(min=0) * scale_y
        dx = np.maximum(-xs, xs - (width - 1)).clip(min=0) * scale_x
        weight = np.clip(np.maximum(dy[:, None], dx[None, :]) / (3 * radius), 0, 1)
        weight = weight[..., None] if image.ndim == 3 else weight
        padded = np.rint(padded * (1 - weight) + blurred * weight).astype(image.dtype)
    box = (bx0 + pad, by0 + pad, bx1 + pad, by1 + pad)
    return np.asarray(
        Image.fromarray(padded).resize((resolution, resolution), Image.Resampling.LANCZOS, box=box), dtype=image.dtype
    )


def _area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def _face_of(body, faces: list):
    """The face nearest to a body's box centre (the body detector's box surrounds the face), if any."""
    if not faces:
        return None
    if body is None:
        return faces[0]
    centre = (body.box[:2] + body.box[2:]) / 2
    return min(faces, key=lambda f: float(np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre)))


def _align_person(photo, image, detectors, probability, body, face, resolution, notes, confidences) -> Alignment:
    """One person of a photo: its body detection (or None: the silhouette) -> Alignment. `image` is the photo
    analysed (the photo itself, or `photo` brought down to ANALYSIS_SIZE), `photo` the one cropped."""
    height, width = image.shape[:2]
    factor = photo.shape[1] / width
    confidences = dict(confidences)
    person = largest_component(probability > PERSON)
    landmarks = None
    if body is not None:
        confidences['body'] = body.score
        landmarks = detectors.landmarks(image, body)
        confidences['body_landmarks'] = landmarks.score
    if landmarks is not None and landmarks.score >= PERSON:
        centre, side, yaw = crop_and_yaw_from_landmarks(landmarks, person)
        method = 'body landmarks'
        # Without a face the landmark model may read a back as a front (and the reverse): a guess.
        uncertain = face is None or abs(yaw) > 90
    else:
        centre, side = crop_from_silhouette(person)
        yaw, method, uncertain = 180.0, 'silhouette', True
    if side < 8:
        raise AlignmentError(f'the person is too small ({side:.0f} px crop)')
    notes = list(notes)
    rows, columns = np.nonzero(person.any(axis=1))[0], np.nonzero(person.any(axis=0))[0]
    x0, y0 = centre - side / 2
    if rows[0] <= 0 and y0 < 0:
        notes.append('the person is cut off at the top of the frame')
    if (columns[0] <= 0 and x0 < 0) or (columns[-1] >= width - 1 and x0 + side > width):
        notes.append('the person is cut off at a side of the frame')
    crop = crop_square(photo, centre * factor, side * factor, resolution, 'reflect and blur')
    mask_crop = crop_square((probability * 255).astype(np.uint8), centre, side, resolution, 'edge')
    return Alignment(
        image=crop,
        mask=np.where(mask_crop >= 128, 255, 0).astype(np.uint8),
        camera=camera_from_angles(yaw),
        crop_box=tuple(float(v) * factor for v in (x0, y0, x0 + side, y0 + side)),
        yaw=float(yaw),
        pitch=0.0,
        method=method,
        uncertain=bool(uncertain),
        confidences=confidences,
        notes=notes,
        person_probability=probability,
    )


def align_photo(
    image: np.ndarray, detectors: PersonDetectors, resolution: int = 512, all_persons: bool = False
) -> list:
    """Align the largest person (or, with `all_persons`, every detected person, largest first) of one RGB photo
    uint8 [H, W, 3] -> [Alignment]; a photo without a usable person raises AlignmentError."""
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise AlignmentError(f'the image is {width}x{height}, smaller than {MIN_SIDE} px on a side')
    photo = image
    if max(height, width) > ANALYSIS_SIZE:
        factor = ANALYSIS_SIZE / max(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        image = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    probability = detectors.person_mask(image)
    share = float((probability > PERSON).mean())
    if share < MIN_PERSON_SHARE:
        raise AlignmentError(f'no person found (the person mask covers {100 * share:.1f} % of the photo)')
    faces = sorted(detectors.faces(image), key=lambda f: -_area(f.box))
    bodies = sorted(detectors.bodies(image), key=lambda b: -_area(b.box))
    notes = []
    count = max(len(bodies), len(faces))
    if count > 1 and not all_persons:
        notes.append(f'{count} persons found: aligned the largest (--all aligns each)')
    if not bodies:
        bodies = [None]
    results = []
    for body in bodies if all_persons else bodies[:1]:
        face = _face_of(body, faces)
        confidences = {'person_mask': share} | ({'face': face.score} if face is not None else {})
        results.append(_align_person(photo, image, detectors, probability, body, face, resolution, notes, confidences))
    return results
