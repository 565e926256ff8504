"""The built-in synthetic 360-degree portrait data set, with exact camera and pose labels.

Each image is a one-quarter headshot of the embedded upper body (training/body) rendered by
the mesh rasterizer (training/engines/mesh_renderer.py) from a camera anywhere on the full circle of
yaw, with a random identity (shape, skin, hair cap, clothing), neck and head pose, lights and
background. The label stored for an image is exactly the camera and the pose it was rendered
with, so the set is the default training data of the small presets and the ground truth for
the pose predictors.

The model has no skin texture and no hair geometry: every colour is painted per vertex from
the body's canonical (zero-pose) coordinates, so hair, brows, lips and clothing move with the
head and neck as rigidly as the skin does. The hair is a cap on the skull, not a volume.

World frame and re-centring: the body model keeps the zero-shape neck joint at the origin, so
a body with other betas has its neck elsewhere. Each identity is translated (after posing) by
minus its own neck joint (12), which the neck and head rotations leave in place: every body
then has its neck at the world origin, where the cameras look at (0, 0.0649, 0) from 2.7 m.

Output: the PortraitDataset layout (training/data/dataset.py): an images zip with RGB PNGs named
'{idx//1000:05d}/img{idx:08d}.png' and `dataset.json` ({"labels": [[name, 25 camera + 6 pose]],
"synthetic": build parameters}), and a masks zip of 'L' 0/255 person masks under the same
names. Everything about image idx (scene, image, mask) depends only on (seed, idx), so the
output is the same for any number of workers.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import queue
import traceback
import zipfile
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from training.body import lbs
from training.body.body_model import EMBEDDED_MODEL_PATH, BodyModel, load_npz
from training.checkpoints.atomic_files import ZipOutput
from training.data import camera_utils
from training.data.dataset import LABELS_FILE
from training.engines.mesh_renderer import MeshRenderer

# Bump when a change to this file changes the images, so that ensure_synthetic_dataset
# rebuilds sets made by an older version.
SYNTHETIC_VERSION = 1
MASK_MARKER_FILE = 'synthetic.json'  # not an image, so the dataset reader skips it
MAX_RENDER_SIZE = 1024  # supersampling stops below this many rendered pixels a side

# Cameras: uniform yaw over the full circle; pitch = offset of the orbit angle v from pi/2
# (positive = camera below the pivot's level), normal, clipped. The orbit maps v to an
# elevation of arcsin(2 (pi/2 - v) / pi): at most ~15 degrees here, std ~6.5 degrees.
PITCH_STD = 0.2
PITCH_LIMIT = 0.4
# Pose: each axis-angle component normal, clipped at POSE_CLIP standard deviations. Order x
# (nod), y (turn), z (tilt), in the joints' local frames.
NECK_POSE_STD = tuple(math.radians(d) for d in (12.0, 15.0, 8.0))
HEAD_POSE_STD = tuple(math.radians(d) for d in (12.0, 20.0, 8.0))
POSE_CLIP = 2.0
# Identity: betas of the embedded model have unit standard deviation over adults.
BETA_STD = 0.8
BETA_LIMIT = 2.0

# Linear albedos, from light to dark skin; a tone is drawn along this polyline.
SKIN_TONES = np.array(
    [[0.92, 0.76, 0.65], [0.87, 0.66, 0.53], [0.74, 0.52, 0.38], [0.55, 0.36, 0.24], [0.36, 0.23, 0.16]]
)
HAIR_COLORS = np.array(
    [
        [0.05, 0.04, 0.04],
        [0.16, 0.10, 0.06],
        [0.30, 0.19, 0.11],
        [0.48, 0.33, 0.19],
        [0.72, 0.57, 0.34],
        [0.46, 0.19, 0.09],
        [0.52, 0.51, 0.50],
        [0.82, 0.80, 0.76],
    ]
)
HAIR_WEIGHTS = np.array([0.28, 0.24, 0.16, 0.1, 0.08, 0.06, 0.05, 0.03])
IRIS_COLORS = np.array([[0.12, 0.07, 0.04], [0.28, 0.16, 0.07], [0.22, 0.32, 0.45], [0.25, 0.32, 0.18]])
IRIS_WEIGHTS = np.array([0.45, 0.3, 0.15, 0.1])
SCLERA_COLOR = np.array([0.88, 0.86, 0.82])
MOUTH_COLOR = np.array([0.35, 0.12, 0.12])

# Part names of the embedded model's `face_part` labels, grouped by how they are painted.
EYE_IRIS_PARTS = ('eye_front.L', 'eye_front.R')
EYE_WHITE_PARTS = ('eye_back.L', 'eye_back.R')
MOUTH_PARTS = ('mouth_cavity', 'tongue')
HEAD_PART = 'head'
BODY_PART = 'body'

# Regions in the canonical frame of the zero-shape body, metres; a shaped body's vertices are
# placed relative to its own head or neck joint before the tests, so the regions follow it.
HAIR_FRONT_Z = 0.09  # relative to the head joint: the forehead's depth ...
HAIR_BACK_Z = -0.09  # ... and the back of the skull's
EAR_BOX = ((0.062, 0.2), (-0.005, 0.05), (-0.02, 0.05))  # |x|, y, z ranges of the ears, rel. head joint
MOUTH_CENTER = (0.0, -0.027, 0.10)  # rel. head joint
LIP_RADII = (0.027, 0.011, 0.03)
BROW_Y = (0.052, 0.062)  # rel. head joint
BROW_X = (0.012, 0.05)
BROW_MIN_Z = 0.07


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything that determines one synthetic image. Colours are RGB albedos in [0, 1], written
    to the 8-bit image as shaded (no gamma curve)."""

    camera: np.ndarray  # [25] float32 camera label (cam2world row-major + normalized K)
    pose: np.ndarray  # [6] float32 neck then head axis-angle, radians
    betas: np.ndarray  # [10] float32 shape coefficients
    skin: np.ndarray  # [3]
    lips: np.ndarray  # [3]
    hair: np.ndarray  # [3], also the brows (darkened)
    iris: np.ndarray  # [3]
    clothes: np.ndarray  # [3]
    hairline_front: float  # hair above this height at the forehead, m above the head joint
    hairline_back: float  # ... and at the back of the skull
    collar_height: float  # clothing below this height, m relative to the neck joint
    collar_radius: float  # ... and farther than this from the neck's vertical axis
    neckline_depth: float  # how far the collar dips at the front, m
    light_dirs: np.ndarray  # [L, 3] directions toward the lights in the OpenCV camera frame
    light_weights: np.ndarray  # [L] Lambert weights
    ambient: float
    background_top: np.ndarray  # [3] colour of the top image row
    background_bottom: np.ndarray  # [3] colour of the bottom row (equal to the top: plain)

    @property
    def label(self) -> np.ndarray:
        """The dataset label: camera then pose -> float32 [31]."""
        return np.concatenate([self.camera, self.pose]).astype(np.float32)


def scene_rng(seed: int, idx: int) -> np.random.Generator:
    """The random stream of image idx of the set with this seed, independent of all others."""
    if seed < 0 or idx < 0:
        raise ValueError(f'seed and image index must be non-negative, got seed={seed}, idx={idx}')
    return np.random.default_rng(np.random.SeedSequence([seed, idx]))


def _clipped_normal(rng: np.random.Generator, std, limit) -> np.ndarray:
    std = np.asarray(std, dtype=np.float64)
    return np.clip(rng.normal(size=std.shape) * std, -limit * std, limit * std)


def _color_jitter(rng: np.random.Generator, color: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(color * (1 + amount * rng.uniform(-1, 1, size=3)), 0, 1)


def _random_color(rng: np.random.Generator, saturation=(0.05, 0.8), value=(0.1, 0.95)) -> np.ndarray:
    """A colour of uniform random hue and saturation and value in the given ranges -> [3]."""
    hue = rng.uniform(0, 1)
    sat = rng.uniform(*saturation)
    val = rng.uniform(*value)
    channel = (hue * 6 + np.array([5.0, 3.0, 1.0])) % 6
    return val - val * sat * np.clip(np.minimum(channel, 4 - channel), 0, 1)


def _direction(azimuth: float, elevation: float) -> np.ndarray:
    """Direction toward a light in the OpenCV camera frame (x right, y down, z forward):
    azimuth to the right of the camera, elevation above it; (0, 0) points back at the camera."""
    return np.array(
        [math.sin(azimuth) * math.cos(elevation), -math.sin(elevation), -math.cos(azimuth) * math.cos(elevation)]
    )


def sample_scene(seed: int, idx: int) -> Scene:
    """The scene of image idx of the synthetic set with this seed (deterministic)."""
    rng = scene_rng(seed, idx)
    yaw = rng.uniform(-math.pi, math.pi)
    pitch = float(_clipped_normal(rng, PITCH_STD, PITCH_LIMIT / PITCH_STD))
    cam2world = camera_utils.orbit_camera(math.pi / 2 + yaw, math.pi / 2 + pitch)
    camera = camera_utils.camera_label(cam2world)[0].numpy().astype(np.float32)
    pose = np.concatenate(
        [_clipped_normal(rng, NECK_POSE_STD, POSE_CLIP), _clipped_normal(rng, HEAD_POSE_STD, POSE_CLIP)]
    ).astype(np.float32)
    betas = _clipped_normal(rng, [BETA_STD] * 10, BETA_LIMIT / BETA_STD).astype(np.float32)

    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    low = min(int(tone), len(SKIN_TONES) - 2)
    skin = _color_jitter(rng, SKIN_TONES[low] + (tone - low) * (SKIN_TONES[low + 1] - SKIN_TONES[low]), 0.05)
    lips = np.clip(skin * np.array([0.9, 0.62, 0.62]) * rng.uniform(0.85, 1.0), 0, 1)
    hair = _color_jitter(rng, HAIR_COLORS[rng.choice(len(HAIR_COLORS), p=HAIR_WEIGHTS)], 0.15)
    iris = _color_jitter(rng, IRIS_COLORS[rng.choice(len(IRIS_COLORS), p=IRIS_WEIGHTS)], 0.15)
    clothes = _random_color(rng)

    key_side = rng.choice([-1.0, 1.0])
    light_dirs = np.stack(
        [
            _direction(key_side * rng.uniform(0.2, 1.1), rng.uniform(0.1, 0.9)),
            _direction(-key_side * rng.uniform(0.3, 1.2), rng.uniform(-0.2, 0.4)),
        ]
    )
    # A surface facing both lights gets at most ~1.1 times its albedo: little clipping.
    light_weights = np.array([rng.uniform(0.4, 0.6), rng.uniform(0.1, 0.2)])
    ambient = rng.uniform(0.2, 0.3)
    background_top = _random_color(rng, saturation=(0.0, 0.6), value=(0.2, 0.95))
    background_bottom = (
        background_top if rng.uniform() < 0.5 else _random_color(rng, saturation=(0.0, 0.6), value=(0.2, 0.95))
    )

    return Scene(
        camera=camera,
        pose=pose,
        betas=betas,
        skin=skin,
        lips=lips,
        hair=hair,
        iris=iris,
        clothes=clothes,
        hairline_front=rng.uniform(0.085, 0.11),
        hairline_back=rng.uniform(-0.085, -0.01),
        collar_height=rng.uniform(-0.07, -0.03),
        collar_radius=rng.uniform(0.08, 0.1),
        neckline_depth=rng.uniform(0.0, 0.08),
        light_dirs=light_dirs,
        light_weights=light_weights,
        ambient=ambient,
        background_top=background_top,
        background_bottom=background_bottom,
    )


def mirror_scene(scene: Scene) -> Scene:
    """The scene mirrored in world x: mirrored camera, pose and lights (the body and its
    painting are left-right symmetric), so that it renders the width-flipped image."""
    flip_x = np.array([-1.0, 1.0, 1.0])
    camera = camera_utils.flip_camera(torch.from_numpy(scene.camera)[None])[0].numpy()
    pose = camera_utils.flip_pose(torch.from_numpy(scene.pose)[None])[0].numpy()
    return dataclasses.replace(scene, camera=camera, pose=pose, light_dirs=scene.light_dirs * flip_x)


# ------------------------------------------------------------------------------------------------
# Rendering.


def _smoothstep(x: np.ndarray, width: float) -> np.ndarray:
    """0 below -width, 1 above +width, smooth in between."""
    t = np.clip(0.5 + x / (2 * width), 0, 1)
    return t * t * (3 - 2 * t)


class PortraitPainter:
    """Poses, paints and renders scenes of the embedded body. One per process: it owns a GL
    context, created on its first render (see training/engines/mesh_renderer.py on processes)."""

    def __init__(self, model_path: str = EMBEDDED_MODEL_PATH):
        self.model_path = model_path
        self.arrays = load_npz(model_path)
        self.faces = np.asarray(self.arrays['f'], dtype=np.int64)
        part_names = [str(name) for name in self.arrays['part_names']]
        face_part = np.asarray(self.arrays['face_part'])
        num_vertices = len(self.arrays['v_template'])

        def vertices_of(names) -> np.ndarray:
            ids = [part_names.index(name) for name in names]
            used = np.zeros(num_vertices, dtype=bool)
            used[self.faces[np.isin(face_part, ids)].reshape(-1)] = True
            return used

        # Later groups win on the vertices that two parts share (the lip and eyelid rims).
        self.is_body = vertices_of([BODY_PART]) & ~vertices_of([HEAD_PART])
        self.is_head = vertices_of([HEAD_PART])
        self.is_mouth = vertices_of(MOUTH_PARTS)
        self.is_eye_white = vertices_of(EYE_WHITE_PARTS)
        self.is_iris = vertices_of(EYE_IRIS_PARTS)
        self.renderer = MeshRenderer()

    def body(self, betas: np.ndarray) -> BodyModel:
        """The embedded body with shape betas [10]."""
        return BodyModel(self.arrays, betas=betas)

    def vertices(self, scene: Scene, body: BodyModel | None = None) -> np.ndarray:
        """Posed vertices re-centred on the body's own neck joint -> float32 [V, 3]."""
        body = self.body(scene.betas) if body is None else body
        with torch.no_grad():
            posed = body.pose(torch.from_numpy(scene.pose)[None])[0]
            return (posed - body.joints[0, lbs.NECK_JOINT]).numpy()

    def vertex_colors(self, scene: Scene, body: BodyModel | None = None) -> np.ndarray:
        """Albedo of every vertex, painted on the re-centred zero-pose body -> float32 [V, 3]."""
        body = self.body(scene.betas) if body is None else body
        canonical = body.canonical_vertices[0].numpy().astype(np.float64)
        joints = body.joints[0].numpy().astype(np.float64)
        x, y, z = (canonical - joints[lbs.HEAD_JOINT]).T
        colors = np.tile(scene.skin, (len(canonical), 1))

        # Lips: an ellipsoid around the mouth opening, on the skin of the head.
        lip = (
            ((x - MOUTH_CENTER[0]) / LIP_RADII[0]) ** 2
            + ((y - MOUTH_CENTER[1]) / LIP_RADII[1]) ** 2
            + ((z - MOUTH_CENTER[2]) / LIP_RADII[2]) ** 2
        )
        lip_weight = (_smoothstep(1 - lip, 0.3) * self.is_head)[:, None]
        colors = colors + lip_weight * (scene.lips - colors)

        brows = (
            (BROW_Y[0] < y)
            & (y < BROW_Y[1])
            & (BROW_X[0] < np.abs(x))
            & (np.abs(x) < BROW_X[1])
            & (z > BROW_MIN_Z)
            & self.is_head
        )
        colors[brows] = 0.7 * scene.hair

        # Hair cap: above a hairline that slopes from the forehead down to the nape.
        t = np.clip((z - HAIR_BACK_Z) / (HAIR_FRONT_Z - HAIR_BACK_Z), 0, 1)
        hairline = scene.hairline_back + t * (scene.hairline_front - scene.hairline_back)
        (ear_x, ear_y, ear_z) = EAR_BOX
        ears = (
            (ear_x[0] < np.abs(x))
            & (np.abs(x) < ear_x[1])
            & (ear_y[0] < y)
            & (y < ear_y[1])
            & (ear_z[0] < z)
            & (z < ear_z[1])
        )
        hair_weight = (_smoothstep(y - hairline, 0.004) * (self.is_head & ~ears))[:, None]
        colors = colors + hair_weight * (scene.hair - colors)

        # Clothing: body skin below the collar or away from the neck column.
        nx, ny, nz = (canonical - joints[lbs.NECK_JOINT]).T
        radius = np.hypot(nx, nz)
        front = np.clip(nz / np.maximum(radius, 1e-9), 0, 1) ** 2
        collar = scene.collar_height - scene.neckline_depth * front
        # Soft edges: a hard per-vertex cut traces the coarse body triangles as a zigzag.
        clothed = np.maximum(_smoothstep(collar - ny, 0.005), _smoothstep(radius - scene.collar_radius, 0.005))
        clothed_weight = (clothed * self.is_body)[:, None]
        colors = colors + clothed_weight * (scene.clothes - colors)

        colors[self.is_mouth] = MOUTH_COLOR * scene.skin / scene.skin.max()
        colors[self.is_eye_white] = SCLERA_COLOR
        colors[self.is_iris] = scene.iris
        return colors.astype(np.float32)

    def render(self, scene: Scene, resolution: int, supersample: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Render a scene -> image uint8 [R, R, 3], mask uint8 [R, R] (0 or 255).

        The mesh is rasterized at `supersample` times the resolution (default: 4, less above
        MAX_RENDER_SIZE) and box-filtered down, which anti-aliases the edges as a camera would;
        a pixel is in the mask when at least half of it is covered.
        """
        if supersample is None:
            supersample = max(1, min(4, MAX_RENDER_SIZE // resolution))
        intrinsics = scene.camera[16:].astype(np.float64).reshape(3, 3)
        return self.render_frame(scene, intrinsics, (resolution, resolution), supersample)

    def render_frame(
        self, scene: Scene, intrinsics: np.ndarray, size: tuple, supersample: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Render a scene from its camera's pose through other `intrinsics` [3, 3] (normalized by the frame's
        width and height) into a (height, width) frame, rasterized at `supersample` times the size and
        box-filtered down -> image uint8 [H, W, 3], mask uint8 [H, W] (0 or 255, at least half covered)."""
        height, width = size
        body = self.body(scene.betas)
        cam2world = scene.camera[:16].astype(np.float64).reshape(4, 4)
        rendered = self.renderer.render(
            self.vertices(scene, body),
            self.faces,
            (cam2world, intrinsics),
            (height * supersample, width * supersample),
            vertex_colors=self.vertex_colors(scene, body),
            light_dirs=scene.light_dirs @ cam2world[:3, :3].T,
            light_weights=scene.light_weights,
            ambient=scene.ambient,
            background=(0.0, 0.0, 0.0),
        )
        rows = np.linspace(0, 1, height * supersample, dtype=np.float32)[:, None, None]
        background = scene.background_top + rows * (scene.background_bottom - scene.background_top)
        mask = rendered['mask'][..., None]
        rgb = np.where(mask, rendered['rgb'], background.astype(np.float32))

        def down(a: np.ndarray) -> np.ndarray:
            return a.reshape(height, supersample, width, supersample, -1).mean(axis=(1, 3))

        image = np.clip(np.rint(down(rgb) * 255), 0, 255).astype(np.uint8)
        coverage = down(mask.astype(np.float32))[..., 0]
        return image, np.where(coverage >= 0.5, 255, 0).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG')
    return buffer.getvalue()


def item_name(idx: int) -> str:
    """Relative path of image idx in both zips."""
    return f'{idx // 1000:05d}/img{idx:08d}.png'


def render_item(painter: PortraitPainter, seed: int, idx: int, resolution: int) -> tuple[list[float], bytes, bytes]:
    """Image idx of the set -> (label: 31 floats, image PNG, mask PNG)."""
    scene = sample_scene(seed, idx)
    image, mask = painter.render(scene, resolution)
    return [float(v) for v in scene.label], _png(image), _png(mask)


# ------------------------------------------------------------------------------------------------
# Parallel rendering.


@contextlib.contextmanager
def _torch_threads(count: int):
    """Run torch on `count` threads (one per worker on a shared CPU, and so that every worker
    computes the vertices with the same reductions), restoring the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _start_method() -> str:
    # A forked worker renders safely as long as llvmpipe renders in the calling thread
    # (training/engines/mesh_renderer.py); with rasterizer threads only a fresh interpreter does.
    if 'fork' in multiprocessing.get_all_start_methods() and os.environ.get('LP_NUM_THREADS', '0') == '0':
        return 'fork'
    return 'spawn'


def _worker_main(tasks, results, seed: int, resolution: int) -> None:
    """Render chunks (start, stop) from `tasks` until None; put (start, items, error) in `results`."""
    torch.set_num_threads(1)
    painter = PortraitPainter()
    for start, stop in iter(tasks.get, None):
        try:
            items = [render_item(painter, seed, idx, resolution) for idx in range(start, stop)]
        except BaseException:
            results.put((start, None, traceback.format_exc()))
            return
        results.put((start, items, None))


def _render_items(num_images: int, resolution: int, seed: int, workers: int) -> Iterator[tuple]:
    """(idx, label, image PNG, mask PNG) for idx = 0 .. num_images - 1, in order."""
    if workers <= 1:
        painter = PortraitPainter()
        with _torch_threads(1):
            for idx in range(num_images):
                yield (idx, *render_item(painter, seed, idx, resolution))
        return

    # Small enough to balance the workers and to keep each message to the parent at a few MB.
    chunk = max(1, min(64, num_images // (4 * workers), 2**22 // (resolution * resolution)))
    chunks = [(start, min(start + chunk, num_images)) for start in range(0, num_images, chunk)]
    workers = min(workers, len(chunks))
    context = multiprocessing.get_context(_start_method())
    tasks, results = context.Queue(), context.Queue()
    for task in chunks:
        tasks.put(task)
    for _ in range(workers):
        tasks.put(None)
    processes = [
        context.Process(target=_worker_main, args=(tasks, results, seed, resolution), daemon=True)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        done = {}
        for start, stop in chunks:
            while start not in done:
                try:
                    got_start, items, error = results.get(timeout=1.0)
                except queue.Empty:
                    dead = [p for p in processes if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(
                            f'synthetic data set: a rendering worker exited with code '
                            f'{dead[0].exitcode} before finishing its images'
                        ) from None
                    continue
                if error is not None:
                    raise RuntimeError(
                        f'synthetic data set: rendering images {got_start}.. failed in a worker:\n{error}'
                    )
                done[got_start] = items
            for offset, item in enumerate(done.pop(start)):
                yield (start + offset, *item)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
        tasks.close()
        results.close()


# ------------------------------------------------------------------------------------------------
# Building the data set.


def _file_sha256(path: str) -> str:
    with open(path, 'rb') as file:
        return hashlib.sha256(file.read()).hexdigest()


def build_parameters(num_images: int, resolution: int, seed: int) -> dict:
    """What determines the contents of a synthetic set; stored in it and compared on reuse."""
    parameters = dict(
        version=SYNTHETIC_VERSION,
        num_images=int(num_images),
        resolution=int(resolution),
        seed=int(seed),
        body_model=_file_sha256(EMBEDDED_MODEL_PATH),
    )
    parameters['hash'] = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]
    return parameters


def build_synthetic_dataset(
    dest_zip: str,
    seg_dest_zip: str,
    num_images: int = 2000,
    resolution: int = 64,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Render the synthetic set into an images zip (with dataset.json) and a masks zip.

    Both zips are written under temporary names and moved into place only when complete; an
    existing images zip is removed first, so an interruption never leaves an images zip that
    pairs with the wrong masks. -> the build parameters stored in dataset.json.
    """
    if os.path.abspath(dest_zip) == os.path.abspath(seg_dest_zip):
        raise ValueError(f'images and masks must go to different files, got {dest_zip} twice')
    if num_images < 1 or resolution < 1 or seed < 0 or workers < 0:
        raise ValueError(
            f'synthetic data set: need num_images >= 1, resolution >= 1, seed >= 0, workers >= 0; '
            f'got {num_images}, {resolution}, {seed}, {workers}'
        )
    parameters = build_parameters(num_images, resolution, seed)
    outputs = [ZipOutput(dest_zip), ZipOutput(seg_dest_zip)]
    images, masks = outputs
    try:
        labels = []
        bar = tqdm(total=num_images, desc='synthetic portraits', unit='img', disable=not progress)
        # Closing the generator on any error stops its worker processes right away.
        items = contextlib.closing(_render_items(num_images, resolution, seed, workers))
        with bar, items as rendered:
            for idx, label, image_png, mask_png in rendered:
                name = item_name(idx)
                images.add(name, image_png)
                masks.add(name, mask_png)
                labels.append([name, label])
                bar.update(1)
        images.add(LABELS_FILE, json.dumps({'labels': labels, 'synthetic': parameters}).encode('utf-8'))
        masks.add(MASK_MARKER_FILE, json.dumps({'synthetic': parameters}).encode('utf-8'))
        for output in outputs:
            output.finish()
        if os.path.exists(images.path):
            os.remove(images.path)
        masks.commit()
        images.commit()
    except BaseException:
        for output in outputs:
            output.abort()
        raise
    return parameters


def stored_parameters(dest_zip: str, seg_dest_zip: str) -> dict | None:
    """The build parameters of a complete synthetic set at these paths, or None when either
    zip is missing, unreadable or from another build."""
    found = []
    for path, name in ((dest_zip, LABELS_FILE), (seg_dest_zip, MASK_MARKER_FILE)):
        try:
            with zipfile.ZipFile(path) as archive:
                found.append(json.loads(archive.read(name)).get('synthetic'))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, AttributeError):
            return None
    return found[0] if found[0] is not None and found[0] == found[1] else None


def default_synthetic_paths(root: str = 'datasets', resolution: int = 64) -> tuple[str, str]:
    """Where ensure_synthetic_dataset keeps the set -> (images zip, masks zip)."""
    return (
        os.path.join(root, f'synthetic-portraits-{resolution}.zip'),
        os.path.join(root, f'synthetic-portraits-{resolution}-seg.zip'),
    )


def ensure_synthetic_dataset(
    root: str = 'datasets',
    num_images: int = 2000,
    resolution: int = 64,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> tuple[str, str]:
    """The synthetic set under `root`, built on first use or when the stored one was built with
    other parameters (or by another version of this file) -> (images zip, masks zip)."""
    dest_zip, seg_dest_zip = default_synthetic_paths(root, resolution)
    expected = build_parameters(num_images, resolution, seed)
    if stored_parameters(dest_zip, seg_dest_zip) != expected:
        if progress:
            print(
                f'building the synthetic portrait data set ({num_images} images, {resolution}x{resolution}, '
                f'seed {seed}) in {root}'
            )
        build_synthetic_dataset(
            dest_zip,
            seg_dest_zip,
            num_images=num_images,
            resolution=resolution,
            seed=seed,
            workers=workers,
            progress=progress,
        )
    return dest_zip, seg_dest_zip
