"""Interactive rendering of one generator: the view settings, a cache of tri-grids, and a render worker.

`Viewer.render(state)` turns a `ViewState` (latent, cameras, body poses, render mode) into images with the
generator's own mapping and synthesis, called exactly as gen_samples.py calls them: the latent of a seed is
`np.random.RandomState(seed).randn(1, z_dim)`, the sample jitter is drawn from a generator seeded with the
seed, and the noise is constant by default. Two things make it interactive on a CPU:
- the tri-grid and the background of a latent are computed once and reused while only the camera, the
  body pose or the render settings change (the latent's settings are the cache key);
- a draft render (`draft=True`) skips the super-resolution head and renders fewer rays with fewer samples,
  for use while a slider or the viewport's camera is being dragged.
The viewport of the page is a camera of its own (a position and an orientation in the world of camera_utils);
`viewport_camera_label` turns it into the generator's camera label, `orbit_viewport` and `orbit_angles` go between
it and the orbit sliders, and `fit_to_viewport` shapes a square render to fill the viewport.
`RenderWorker` runs the renders on one thread and always takes the newest request: a draft first while
the settings are changing, the full render once they have been still for a moment.
"""

import collections
import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from training.data.camera_utils import (
    FOCAL,
    PIVOT,
    RADIUS,
    VIEWS,
    camera_label,
    focal_to_fov,
    fov_to_focal,
    orbit_camera,
)
from training.data.images import depth_to_uint8, to_uint8
from training.engines.render_check import synthesis

RENDER_MODES = ('image', 'image_raw', 'image_depth', 'image_mask')  # final SR image, raw render, depth, alpha
BLEND_SPACES = ('w', 'z')
DEFAULT_FOV = focal_to_fov(FOCAL)  # degrees: the field of view of the data set's cameras
NAMED_YAWS = {name: math.degrees(horizontal - math.pi / 2) for name, horizontal in VIEWS.items()}  # degrees


class RenderCancelled(Exception):
    """A full render stopped early because a newer request arrived."""


@dataclasses.dataclass(frozen=True)
class ViewState:
    """Everything a render depends on. Angles of the camera in degrees, body poses in radians (as `--pose`)."""

    seed: int = 0  # latent seed, as gen_samples.py --seeds
    seed2: int = 1  # second seed, blended in by `blend`
    blend: float = 0.0  # 0 = seed, 1 = seed2
    blend_space: str = 'w'  # 'w': lerp of the two mapped ws; 'z': slerp of the two z before mapping
    truncation_psi: float = 1.0
    truncation_cutoff: int | None = None  # truncate only the first N ws; None = all
    noise_mode: str = 'const'  # noise of the backbone and background nets: one of networks_stylegan2.NOISE_MODES
    yaw: float = 0.0  # rendering camera: 0 = front, -90 = side, +-180 = back (camera_utils.camera_yaw)
    pitch: float = 0.0  # offset of the orbit angle v from level; positive = below the pivot
    radius: float = RADIUS  # metres from the world origin
    fov: float = DEFAULT_FOV  # full field of view, degrees
    viewport: tuple | None = None  # label [25] of the viewport's camera (viewport_camera_label); None = the orbit
    condition_on_render_camera: bool = False  # map the latent with the rendering camera instead of the one below
    cond_yaw: float = 0.0  # conditioning camera (at the default radius and field of view)
    cond_pitch: float = 0.0
    deform: bool = True  # render posed (the deformation on); False renders the canonical head
    pose: tuple = (0.0,) * 6  # rendering pose: neck, head axis-angles
    use_pose_branch: bool = False  # take the rendering pose from G's pose branch instead of `pose`
    condition_on_render_pose: bool = False  # map the latent with the rendering pose instead of `cond_pose`
    cond_pose: tuple = (0.0,) * 6  # conditioning pose
    mode: str = 'image'  # what `display` shows: one of RENDER_MODES
    neural_rendering_resolution: int | None = None  # rays per side; None = the generator's default
    sample_mult: float = 1.0  # multiplies the coarse and fine samples per ray
    draft_resolution: int = 32  # rays per side of a draft render (at most the full one)
    draft_sample_mult: float = 0.5  # a draft renders sample_mult * this many times the samples per ray

    def conditioning_pose(self) -> tuple | None:
        """The six conditioning pose values; None = the rendering pose, which may come from G's pose branch."""
        return None if self.condition_on_render_pose else tuple(self.cond_pose)


def focal_of_fov(fov: float) -> float:
    """Normalized focal length of a full field of view in degrees; the data set's field of view (to 1e-9) gives
    the tools' FOCAL exactly, not a float round trip of it."""
    return FOCAL if math.isclose(fov, DEFAULT_FOV, rel_tol=1e-9) else fov_to_focal(fov)


def camera(yaw: float, pitch: float, radius: float = RADIUS, fov: float = DEFAULT_FOV, device=None) -> torch.Tensor:
    """A camera on the orbit sphere looking at the pivot; yaw, pitch and fov in degrees -> c [1, 25].

    yaw 0, pitch 0, default radius and fov is `camera_utils.frontal_camera()`.
    """
    cam2world = orbit_camera(math.pi / 2 + math.radians(yaw), math.pi / 2 + math.radians(pitch), radius, device=device)
    return camera_label(cam2world, focal_of_fov(fov))


def rotation_of_quaternion(wxyz) -> np.ndarray:
    """The rotation matrix of a quaternion (w, x, y, z), normalized first: [4] -> float64 [3, 3]."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def viewport_cam2world(position, wxyz) -> np.ndarray:
    """cam2world of a viewport camera: position [3] (world, metres) and wxyz [4], the quaternion of its
    camera-to-world rotation with OpenCV axes (x right, y down, z forward; viser's `CameraHandle.wxyz`)
    -> float64 [4, 4], the convention of camera_utils."""
    cam2world = np.eye(4)
    cam2world[:3, :3] = rotation_of_quaternion(wxyz)
    cam2world[:3, 3] = position
    return cam2world


def viewport_camera_label(position, wxyz, fov: float, device=None) -> torch.Tensor:
    """The generator's camera label of a viewport camera: position [3], wxyz [4] as in `viewport_cam2world`,
    fov = the viewport's vertical field of view in radians -> c [1, 25].

    The render is square with that field of view: it spans the viewport's height (`fit_to_viewport`)."""
    cam2world = torch.from_numpy(viewport_cam2world(position, wxyz)).float().to(device)
    return camera_label(cam2world[None], focal_of_fov(math.degrees(fov)))


def orbit_viewport(yaw: float, pitch: float, radius: float = RADIUS) -> tuple:
    """The viewport camera of the orbit sliders (degrees, metres) -> (position [3], look-at point [3]), float64;
    with the world's +y as up this is the camera of `camera(yaw, pitch, radius)`."""
    cam2world = orbit_camera(math.pi / 2 + math.radians(yaw), math.pi / 2 + math.radians(pitch), radius)
    return cam2world[0, :3, 3].double().numpy(), np.array(PIVOT, dtype=np.float64)


def orbit_angles(position) -> tuple:
    """The orbit sliders nearest a camera at `position` [3] (world, metres) -> (yaw, pitch in degrees, radius).

    Inverse of the orbit camera's position: yaw = atan2(x, z) (0 front, -90 the side at -x), pitch =
    -90 y / r (the orbit angle v is linear in the height; positive below the pivot), r = |position|."""
    x, y, z = (float(value) for value in position)
    radius = math.sqrt(x * x + y * y + z * z)
    return math.degrees(math.atan2(x, z)), -90.0 * y / radius, radius


def fit_to_viewport(picture: np.ndarray, aspect: float) -> np.ndarray:
    """A square render shaped like a viewport of width / height `aspect`: uint8 [S, S, 3] -> [S, round(S aspect), 3].

    The picture spans the full height, as its field of view is the viewport's vertical one. A wider viewport
    gets side bands that continue each row in the mean colour of the picture's outer sixteenth on that side
    (the background, mostly); a narrower one sees the middle of the picture. The browser scales the result to
    the viewport."""
    size = picture.shape[0]
    width = max(1, round(size * aspect))
    if width <= size:
        start = (size - width) // 2
        return picture[:, start : start + width]
    strip = max(1, size // 16)
    left = picture[:, :strip].mean(axis=1, keepdims=True).round().astype(np.uint8)
    right = picture[:, -strip:].mean(axis=1, keepdims=True).round().astype(np.uint8)
    start = (width - size) // 2
    canvas = np.empty([size, width, 3], np.uint8)
    canvas[:, :start], canvas[:, start : start + size], canvas[:, start + size :] = left, picture, right
    return canvas


def seed_latent(seed: int, z_dim: int, device=None) -> torch.Tensor:
    """The latent of a seed, as every tool draws it: -> z [1, z_dim]."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).float().to(device)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of latents: a [B, D], b [B, D] -> [B, D]; t = 0 gives a exactly, t = 1 gives b."""
    if t == 0:
        return a
    if t == 1:
        return b
    a_unit, b_unit = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    omega = torch.arccos((a_unit * b_unit).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


MIN_COARSE_SAMPLES = 4  # the importance sampler smooths the coarse weights over S - 3 inner intervals


def samples_per_ray(renderer: torch.nn.Module, sample_mult: float) -> dict:
    """The renderer's coarse and fine samples per ray times `sample_mult`, rounded, as G.synthesis arguments.

    An integer multiplier gives exactly what the tools' --sample-mult gives."""
    fine = round(renderer.depth_resolution_importance * sample_mult)
    coarse = max(MIN_COARSE_SAMPLES if fine > 0 else 1, round(renderer.depth_resolution * sample_mult))
    return dict(depth_resolution=coarse, depth_resolution_importance=fine)


def display_image(images: dict, mode: str) -> np.ndarray:
    """The picture of one render mode: images as returned by `Viewer.render` -> uint8 [H, W, 3]."""
    if mode == 'image_depth':
        picture = depth_to_uint8(images['image_depth'])[0]
    elif mode == 'image_mask':
        picture = to_uint8(images['image_mask'], 0.0, 1.0)[0]
    else:
        picture = to_uint8(images[mode])[0]
    return np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture


@contextlib.contextmanager
def _cancellation_points(G: torch.nn.Module, cancelled: Callable[[], bool] | None):
    """Within the block, G's ray march and super-resolution first raise RenderCancelled when `cancelled()`
    turns true (forward pre-hooks, removed on leaving)."""

    def check(*args):
        if cancelled is not None and cancelled():
            raise RenderCancelled()

    hooks = [module.register_forward_pre_hook(check) for module in (G.renderer, G.superresolution)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


class Viewer:
    """A loaded generator with a cache of the tri-grids of recent latents; renders ViewStates.

    G: a TriPlaneGenerator in eval mode (training.cli.load_generator). Every use of G goes through `lock`,
    so renders and captures from several threads take turns.
    """

    def __init__(self, G: torch.nn.Module, cache_size: int = 2):
        self.G = G
        self.device = next(G.parameters()).device
        self.lock = threading.RLock()
        self.cache_size = cache_size
        self._cache = collections.OrderedDict()  # latent key -> (ws, planes, background)
        self.last_planes_cached = False  # whether the latest render took its tri-grid from the cache

    @property
    def default_resolution(self) -> int:
        return int(self.G.neural_rendering_resolution)

    def set_generator(self, G: torch.nn.Module) -> None:
        """Swap in another generator (a reloaded snapshot); empties the cache."""
        with self.lock:
            self.G = G
            self.device = next(G.parameters()).device
            self._cache.clear()

    def conditioning(self, state: ViewState, render_pose: torch.Tensor | None) -> tuple:
        """-> (conditioning camera c [1, 25], conditioning pose [1, 6]); render_pose [1, 6] or None (zeros)."""
        if state.condition_on_render_camera:
            c = self.rendering_camera(state)
        else:
            c = camera(state.cond_yaw, state.cond_pitch, device=self.device)
        values = state.conditioning_pose()
        if values is not None:
            return c, torch.tensor([values], dtype=torch.float32, device=self.device)
        return c, render_pose if render_pose is not None else torch.zeros([1, 6], device=self.device)

    def latent_z(self, state: ViewState) -> torch.Tensor:
        """z of the state's seeds, slerped by `blend` -> [1, z_dim]."""
        z_dim = self.G.z_dim
        return slerp(
            seed_latent(state.seed, z_dim, self.device), seed_latent(state.seed2, z_dim, self.device), state.blend
        )

    def rendering_pose(self, state: ViewState, c_render: torch.Tensor) -> torch.Tensor | None:
        """The body pose the head is rendered in: [1, 6], or None for the canonical head.

        c_render [1, 25]. With `use_pose_branch`, G's own choice for the (blended) z at this camera."""
        if not state.deform:
            return None
        if state.use_pose_branch:
            return self.G.get_pose_params(self.latent_z(state), c_render)
        return torch.tensor([state.pose], dtype=torch.float32, device=self.device)

    def mapping(self, state: ViewState, c_cond: torch.Tensor, pose_cond: torch.Tensor) -> torch.Tensor:
        """ws of the state's latent: c_cond [1, 25], pose_cond [1, 6] -> [1, num_ws, w_dim].

        Blending in w maps both seeds and interpolates linearly; in z the seeds' z are slerped and mapped."""
        G, z_dim = self.G, self.G.z_dim
        truncation = dict(truncation_psi=state.truncation_psi, truncation_cutoff=state.truncation_cutoff)
        if state.blend_space == 'z' or state.blend == 0:
            return G.mapping(self.latent_z(state), c_cond, pose_cond, **truncation)
        first = G.mapping(seed_latent(state.seed, z_dim, self.device), c_cond, pose_cond, **truncation)
        second = G.mapping(seed_latent(state.seed2, z_dim, self.device), c_cond, pose_cond, **truncation)
        return torch.lerp(first, second, state.blend)

    def latent(self, state: ViewState, c_cond: torch.Tensor, pose_cond: torch.Tensor) -> tuple:
        """(ws [1, num_ws, w_dim], tri-grid [1, 3, C, D, H, W], background [1, C, S, S] or None) of the state's
        latent conditioned on c_cond [1, 25] and pose_cond [1, 6].

        Cached by the latent settings and the conditioning values, unless the noise is random (then the
        tri-grid is drawn afresh every time, as that noise mode means)."""
        key = (
            state.seed,
            state.seed2,
            state.blend,
            state.blend_space,
            state.truncation_psi,
            state.truncation_cutoff,
            state.noise_mode,
            tuple(c_cond.flatten().tolist()),
            tuple(pose_cond.flatten().tolist()),
        )
        use_cache = state.noise_mode != 'random'
        if use_cache and key in self._cache:
            self._cache.move_to_end(key)
            self.last_planes_cached = True
            return self._cache[key]
        G = self.G
        ws = self.mapping(state, c_cond, pose_cond)
        planes = G.planes(ws, noise_mode=state.noise_mode)
        background = None
        if G.background is not None:
            background = G.background(ws[:, : G.background.num_ws], noise_mode=state.noise_mode)
        entry = (ws, planes, background)
        self.last_planes_cached = False
        if use_cache:
            self._cache[key] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return entry

    def rendering_camera(self, state: ViewState) -> torch.Tensor:
        """-> c [1, 25] of the state's rendering camera: the viewport's, or else the orbit camera of the sliders."""
        if state.viewport is not None:
            return torch.tensor([state.viewport], dtype=torch.float32, device=self.device)
        return camera(state.yaw, state.pitch, state.radius, state.fov, device=self.device)

    def latent_and_pose(self, state: ViewState) -> tuple:
        """What the captures need: (ws [1, num_ws, w_dim], rendering pose [1, 6] or None), as `render` uses them."""
        with self.lock, torch.no_grad():
            pose = self.rendering_pose(state, self.rendering_camera(state))
            return self.latent(state, *self.conditioning(state, pose))[0], pose

    def render(self, state: ViewState, draft: bool = False, cancelled: Callable[[], bool] | None = None) -> dict:
        """Render a state -> dict of
          image [1, 3, S, S] in [-1, 1] (S = G.img_resolution; in a draft the raw image, S = draft resolution),
          image_raw [1, 3, r, r] in [-1, 1], image_depth [1, 1, r, r] (metres along the ray),
          image_mask [1, 1, r, r] (alpha, about [0, 1]), pose [1, 6] or None (the rendering pose),
          display uint8 [H, W, 3] (the picture of `state.mode`; a draft shows the raw image for 'image').
        r = state.neural_rendering_resolution (or G's), in a draft at most state.draft_resolution.
        `cancelled`: polled before the ray march and the super-resolution; when it returns true the render
        stops with RenderCancelled (the tri-grid is still cached).
        """
        with self.lock, torch.no_grad():
            G = self.G
            resolution = state.neural_rendering_resolution or self.default_resolution
            sample_mult = state.sample_mult
            if draft:
                resolution = min(resolution, state.draft_resolution)
                sample_mult = state.sample_mult * state.draft_sample_mult
            c_render = self.rendering_camera(state)
            pose = self.rendering_pose(state, c_render)
            ws, planes, background = self.latent(state, *self.conditioning(state, pose))
            samples = samples_per_ray(G.renderer, sample_mult)
            with _cancellation_points(G, cancelled):
                out = synthesis(
                    G,
                    ws,
                    c_render,
                    neural_rendering_resolution=resolution,
                    pose_params=pose,
                    generator=torch.Generator(self.device).manual_seed(state.seed),
                    noise_mode=state.noise_mode,
                    planes=planes,
                    background=background,
                    superresolve=not draft,
                    **samples,
                )
        images = {key: out[key] for key in ('image', 'image_raw', 'image_depth', 'image_mask')}
        images['pose'] = pose
        images['display'] = display_image(images, 'image_raw' if draft and state.mode == 'image' else state.mode)
        return images


class RenderWorker:
    """Renders on its own thread, always the newest request; a request supersedes every older one.

    render(state, draft, cancelled) -> images (Viewer.render); publish(images, state, draft, seconds) shows
    them. An interactive request (a slider or the viewport's camera moving) is rendered as a draft at once and in
    full when no newer request has come for `settle_seconds`; a full render in progress stops when a newer
    request arrives.
    A non-interactive request (a button) is rendered in full at once.
    """

    def __init__(
        self,
        render: Callable,
        publish: Callable,
        settle_seconds: float = 0.3,
        on_error: Callable[[Exception], None] | None = None,
    ):
        self._render, self._publish, self._on_error = render, publish, on_error
        self.settle_seconds = settle_seconds
        self._condition = threading.Condition()
        self._pending = None  # (state, interactive) of the newest request not yet taken
        self._generation = 0  # counts requests; a render is stale once this moved on
        self._stopped = False
        self._idle = True
        self._thread = threading.Thread(target=self._run, name='render-worker', daemon=True)
        self._thread.start()

    def request(self, state: ViewState, interactive: bool = True) -> None:
        """Ask for a render of `state`; older requests not yet rendered are dropped."""
        with self._condition:
            self._pending = (state, interactive)
            self._generation += 1
            self._idle = False
            self._condition.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until every request has been rendered in full (or dropped): -> False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: self._idle, timeout)

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        self._thread.join(timeout=10)

    def _take(self) -> tuple | None:
        with self._condition:
            while self._pending is None and not self._stopped:
                self._idle = True
                self._condition.notify_all()
                self._condition.wait()
            if self._stopped:
                return None
            state, interactive = self._pending
            self._pending = None
            return state, interactive, self._generation

    def _settled(self) -> bool:
        """Wait `settle_seconds` for a newer request -> True when none came."""
        with self._condition:
            return not self._condition.wait_for(lambda: self._pending is not None or self._stopped, self.settle_seconds)

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            state, interactive, generation = taken

            def stale(generation=generation) -> bool:
                return self._generation != generation or self._stopped

            try:
                if interactive:
                    self._timed(state, draft=True, cancelled=None)
                    if not self._settled():
                        continue
                self._timed(state, draft=False, cancelled=stale)
            except RenderCancelled:
                continue
            except Exception as err:  # a render must never kill the worker; the GUI shows the error
                if self._on_error is None:
                    raise
                self._on_error(err)

    def _timed(self, state: ViewState, draft: bool, cancelled: Callable[[], bool] | None) -> None:
        start = time.perf_counter()
        images = self._render(state, draft=draft, cancelled=cancelled)
        self._publish(images, state, draft, time.perf_counter() - start)
