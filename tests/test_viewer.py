"""training/engines/viewer.py and visualizer.py without a browser: renders against the tools' own generator calls,
the tri-grid cache, draft renders, the render worker, the capture buttons and one-line errors."""

import contextlib
import math
import os
import socket
import threading
import time

import numpy as np
import PIL.Image
import pytest
import torch
import trimesh
from click.testing import CliRunner
from scipy.spatial.transform import Rotation

import visualizer
from tests.tiny_run import TINY_GENERATOR, write_tiny_snapshot
from training.cli import load_generator
from training.data.camera_utils import PIVOT, RADIUS, VIEWS, camera_label, frontal_camera, orbit_camera
from training.engines.viewer import (
    DEFAULT_FOV,
    RenderCancelled,
    RenderWorker,
    Viewer,
    ViewState,
    camera,
    fit_to_viewport,
    orbit_angles,
    orbit_viewport,
    samples_per_ray,
    seed_latent,
    slerp,
    viewport_cam2world,
    viewport_camera_label,
)

RAW = TINY_GENERATOR['neural_rendering_resolution']
POSE = (0.1, -0.2, 0.05, 0.3, -0.5, 0.0)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


@pytest.fixture(scope='module')
def G(run_dir):
    return load_generator(run_dir, None, 0, torch.device('cpu'))


def render_like_gen_samples(G, seed: int, view: str, pose, sample_mult: int = 1) -> dict:
    """What gen_samples.py --seeds SEED --views VIEW --pose POSE --sample-mult N computes for one view."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float()
    camera = camera_label(orbit_camera(torch.tensor([VIEWS[view]]), math.pi / 2))
    with torch.no_grad():
        ws = G.mapping(z, frontal_camera(1), truncation_psi=1.0, truncation_cutoff=None)
        posed = dict(pose_params=torch.tensor([pose])) if pose is not None else {}
        return G.synthesis(
            ws,
            camera,
            generator=torch.Generator('cpu').manual_seed(seed),
            noise_mode='const',
            depth_resolution=G.renderer.depth_resolution * sample_mult,
            depth_resolution_importance=G.renderer.depth_resolution_importance * sample_mult,
            **posed,
        )


def assert_same_images(ours: dict, theirs: dict, atol: float = 1e-5) -> None:
    for key in ('image', 'image_raw', 'image_depth', 'image_mask'):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=atol, msg=key)


@pytest.mark.parametrize('view, yaw', [('front', 0.0), ('side', -90.0), ('back', -180.0)])
def test_pose_sliders_render_as_gen_samples(G, view, yaw):
    viewer = Viewer(G)
    state = ViewState(seed=5, yaw=yaw, pose=POSE, sample_mult=2)
    assert_same_images(viewer.render(state), render_like_gen_samples(G, 5, view, POSE, sample_mult=2))
    canonical = viewer.render(ViewState(seed=5, yaw=yaw, deform=False, sample_mult=2))
    assert_same_images(canonical, render_like_gen_samples(G, 5, view, None, sample_mult=2))
    assert not torch.equal(canonical['image_raw'], viewer.render(state)['image_raw'])


def level_viewport(yaw: float) -> tuple:
    """Analytic viewport camera of a level orbit view, yaw in degrees -> (position [3], wxyz [4]).

    At (r sin yaw, 0, r cos yaw), looking at the pivot. Rotations (scipy's quaternion) applied to the identity
    camera (OpenCV: looks along +z, image down = world +y), last first: a tilt about x that raises the view to
    the pivot's height, a roll by 180 degrees about z (image down = world -y, upright), a turn by yaw + 180
    degrees about y (towards the subject)."""
    position = RADIUS * np.array([math.sin(math.radians(yaw)), 0.0, math.cos(math.radians(yaw))])
    tilt = math.atan2(PIVOT[1], RADIUS)
    x, y, z, w = Rotation.from_euler('YZX', [math.radians(yaw) + math.pi, math.pi, tilt]).as_quat()
    return position, np.array([w, x, y, z])


@pytest.mark.parametrize('yaw', [0.0, -90.0, 180.0, 35.0])
def test_viewport_camera_label_is_the_orbit_camera(yaw):
    position, wxyz = level_viewport(yaw)
    label = viewport_camera_label(position, wxyz, math.radians(DEFAULT_FOV))
    torch.testing.assert_close(label, camera(yaw, 0.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(label[0, 16:], camera(yaw, 0.0)[0, 16:], rtol=0, atol=0)  # the tools' FOCAL exactly
    assert viewport_camera_label(position, wxyz, math.radians(30.0))[0, 16].item() == pytest.approx(
        0.5 / math.tan(math.radians(15.0))
    )


def test_viewport_rotation_is_the_quaternion_and_orbit_sliders_round_trip():
    generator = np.random.default_rng(0)
    for wxyz in generator.normal(size=(5, 4)):
        expected = Rotation.from_quat(wxyz[[1, 2, 3, 0]]).as_matrix()  # scipy orders x, y, z, w; normalizes
        np.testing.assert_allclose(viewport_cam2world([1.0, 2.0, 3.0], wxyz)[:3, :3], expected, atol=1e-12)
    for yaw, pitch, radius in [(0.0, 0.0, RADIUS), (-90.0, 20.0, 2.0), (170.0, -45.0, 4.0)]:
        position, look_at = orbit_viewport(yaw, pitch, radius)
        np.testing.assert_allclose(position, camera(yaw, pitch, radius)[0, [3, 7, 11]].numpy(), atol=1e-6)
        np.testing.assert_allclose(look_at, PIVOT)
        np.testing.assert_allclose(orbit_angles(position), (yaw, pitch, radius), atol=1e-4)


def test_the_viewport_side_view_renders_the_slider_side_view(G):
    position, wxyz = level_viewport(-90.0)
    viewport = tuple(viewport_camera_label(position, wxyz, math.radians(DEFAULT_FOV))[0].tolist())
    from_viewport = Viewer(G).render(ViewState(seed=3, pose=POSE, viewport=viewport))
    from_sliders = Viewer(G).render(ViewState(seed=3, pose=POSE, yaw=-90.0))
    assert_same_images(from_viewport, from_sliders, atol=1e-2)  # cameras 1e-7 apart move the fine samples
    front = Viewer(G).render(ViewState(seed=3, pose=POSE))
    assert (from_viewport['image_raw'] - front['image_raw']).abs().max() > 0.05


def test_fit_to_viewport_spans_the_height_and_keeps_the_aspect():
    picture = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    wide = fit_to_viewport(picture, 1.5)
    assert wide.shape == (32, 48, 3)
    np.testing.assert_array_equal(wide[:, 8:40], picture)
    for band, strip in ((wide[:, :8], picture[:, :2]), (wide[:, 40:], picture[:, 30:])):  # outer sixteenths
        np.testing.assert_array_equal(band, np.broadcast_to(strip.mean(axis=1, keepdims=True).round(), band.shape))
    np.testing.assert_array_equal(fit_to_viewport(picture, 0.5), picture[:, 8:24])
    np.testing.assert_array_equal(fit_to_viewport(picture, 1.0), picture)


def test_cached_tri_grid_gives_the_uncached_pixels(G):
    viewer = Viewer(G)
    viewer.render(ViewState(seed=2, pose=POSE))
    assert not viewer.last_planes_cached
    moved = ViewState(seed=2, pose=POSE, yaw=40.0, pitch=-10.0, mode='image_depth')
    cached = viewer.render(moved)
    assert viewer.last_planes_cached
    uncached = Viewer(G).render(moved)
    assert_same_images(cached, uncached)
    np.testing.assert_array_equal(cached['display'], uncached['display'])
    viewer.render(ViewState(seed=3, pose=POSE))
    assert not viewer.last_planes_cached


def test_draft_is_the_raw_image_at_the_draft_resolution(G):
    viewer = Viewer(G)
    state = ViewState(seed=1, pose=POSE, draft_resolution=8, draft_sample_mult=0.5)
    draft = viewer.render(state, draft=True)
    assert draft['image'].shape == (1, 3, 8, 8)
    torch.testing.assert_close(draft['image'], draft['image_raw'])
    assert draft['display'].shape == (8, 8, 3)
    full = viewer.render(state)
    assert full['image'].shape == (1, 3, G.img_resolution, G.img_resolution)
    assert full['image_raw'].shape == (1, 3, RAW, RAW)
    assert samples_per_ray(G.renderer, 0.5)['depth_resolution'] >= 4  # the importance sampler's minimum


def test_blend_ends_are_the_two_seeds(G):
    viewer = Viewer(G)
    for space in ('w', 'z'):
        blended = viewer.latent_and_pose(ViewState(seed=7, seed2=8, blend=1.0, blend_space=space))[0]
        assert torch.equal(blended, viewer.latent_and_pose(ViewState(seed=8, seed2=7, blend_space=space))[0])
    a, b = seed_latent(7, G.z_dim), seed_latent(8, G.z_dim)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    halfway = slerp(a, b, 0.5)
    assert halfway.norm() == pytest.approx(0.5 * (a.norm() + b.norm()).item(), rel=0.1)


def test_conditioning_and_pose_branch(G):
    viewer = Viewer(G)
    base = viewer.render(ViewState(seed=4, yaw=30.0))['image']
    assert not torch.equal(base, viewer.render(ViewState(seed=4, yaw=30.0, condition_on_render_camera=True))['image'])
    branch = viewer.render(ViewState(seed=4, yaw=30.0, use_pose_branch=True))
    c_render = camera_label(orbit_camera(math.pi / 2 + math.radians(30.0), math.pi / 2))
    torch.testing.assert_close(branch['pose'], G.get_pose_params(seed_latent(4, G.z_dim), c_render))


def test_worker_renders_the_newest_request_and_drops_stale_ones():
    rendered, shown = [], []
    started = threading.Event()

    def render(state, draft, cancelled):
        rendered.append((state.seed, draft))
        if state.seed == 0:  # a slow full render that a newer request must cut short
            started.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if cancelled is not None and cancelled():
                    raise RenderCancelled()
                time.sleep(0.01)
        return {'seed': state.seed}

    worker = RenderWorker(
        render, lambda images, state, draft, seconds: shown.append((images['seed'], draft)), settle_seconds=0.2
    )
    try:
        worker.request(ViewState(seed=0), interactive=False)
        assert started.wait(5)
        for seed in range(1, 30):
            worker.request(ViewState(seed=seed), interactive=True)
        assert worker.wait_idle(10)
    finally:
        worker.stop()
    assert (0, False) not in shown  # cancelled, never shown
    assert shown[-1] == (29, False)  # the newest state ends in full
    assert len(rendered) < 20  # most of the 29 slider steps were skipped
    assert (29, True) in shown  # drafted first, while "dragging"


def test_captures_write_png_glb_and_mp4(G, run_dir, tmp_path):
    server = visualizer.start_server('127.0.0.1', 0)
    page = visualizer.ViewerPage(server, Viewer(G), run_dir, None, 0, torch.device('cpu'), False, str(tmp_path), 'tiny')
    try:
        page.mesh_resolution.value, page.mesh_level.value, page.mesh_posed.value = 16, -500.0, True
        page.video_frames.value = 3
        page.pose[4].value = -0.5
        state = page.state()
        assert state.pose[4] == -0.5
        for write in (page.write_image, page.write_mesh, page.write_video):
            page.capture(write)
            assert 'failed' not in page.status.content, page.status.content
        page.mesh_texture.value = 512
        page.capture(page.write_mesh)
        assert 'texture' in page.status.content and 'failed' not in page.status.content, page.status.content
    finally:
        page.worker.stop()
        server.stop()
    assert PIL.Image.open(tmp_path / 'seed0000-image.png').size == (G.img_resolution, G.img_resolution)
    mesh = trimesh.load(tmp_path / 'seed0000.glb', force='mesh')
    assert len(mesh.vertices) > 0 and mesh.visual.kind == 'vertex'
    textured = trimesh.load(tmp_path / 'seed0000-2.glb', force='mesh')
    assert textured.visual.kind == 'texture' and textured.visual.material.baseColorTexture.size == (512, 512)
    assert (tmp_path / 'seed0000-orbit-image.mp4').stat().st_size > 0


def one_line_error(result) -> str:
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith('Error'), result.output
    return lines[-1]


def test_bad_network_is_a_one_line_error(tmp_path):
    foreign = tmp_path / 'foreign.pkl'
    foreign.write_bytes(b'not a network pickle')
    for network in (tmp_path / 'missing.pkl', foreign, tmp_path):
        result = CliRunner().invoke(visualizer.main, ['--network', str(network), '--port', '0', '--device', 'cpu'])
        assert str(network) in one_line_error(result)


def test_port_in_use_is_a_one_line_error(run_dir):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(visualizer.main, ['--network', run_dir, '--port', str(port), '--device', 'cpu'])
    assert 'in use' in one_line_error(result)
    assert os.path.basename(run_dir) not in result.output


def test_reload_swaps_the_network_and_reports_bad_ones(G, run_dir, tmp_path):
    server = visualizer.start_server('127.0.0.1', 0)
    page = visualizer.ViewerPage(server, Viewer(G), run_dir, None, 0, torch.device('cpu'), False, str(tmp_path), 'tiny')
    try:
        page.network.value = str(tmp_path / 'missing.pkl')
        page.reload_network()
        assert page.loaded.content.startswith('**not loaded**') and 'missing.pkl' in page.loaded.content
        assert page.viewer.G is G
        page.network.value = run_dir
        page.reload_network()
        assert page.loaded.content.startswith('loaded:') and page.viewer.G is not G
        assert page.worker.wait_idle(30)
        assert page.frame_time.content.startswith('**full**')
    finally:
        page.worker.stop()
        server.stop()


class ReportedCamera:
    """What viser's CameraHandle reports of a browser's viewport (no browser needed)."""

    def __init__(self, yaw: float, width: int = 300, height: int = 200):
        self.position, self.wxyz = level_viewport(yaw)
        self.look_at = np.array(PIVOT)
        self.fov = math.radians(DEFAULT_FOV)
        self.image_width, self.image_height = width, height
        self.client = None


def test_page_renders_a_moved_viewport_and_ignores_the_echo_of_its_own_camera(G, run_dir, tmp_path):
    server = visualizer.start_server('127.0.0.1', 0)
    page = visualizer.ViewerPage(server, Viewer(G), run_dir, None, 0, torch.device('cpu'), False, str(tmp_path), 'tiny')
    try:
        page.request(interactive=False)
        assert page.worker.wait_idle(30)
        page.recent.clear()
        page.viewport_moved(ReportedCamera(0.0))  # the page's own front camera, as the browser reports it back
        assert page.worker.wait_idle(30) and not page.recent
        page.viewport_moved(ReportedCamera(-90.0))
        assert page.worker.wait_idle(30)
        (first, first_draft, _), (last, last_draft, images) = page.recent[0], page.recent[-1]
        assert first_draft and not last_draft and first.viewport == last.viewport
        assert page.yaw.value == -90.0 and page.pitch.value == 0.0 and page.radius.value == RADIUS
        assert_same_images(images, Viewer(G).render(ViewState(yaw=-90.0)), atol=1e-2)
        page.recent.clear()
        page.snap('front')  # the sliders take the camera back from the viewport
        assert page.worker.wait_idle(30)
        assert page.recent[-1][0].viewport is None and page.recent[-1][0].yaw == 0.0
    finally:
        page.worker.stop()
        server.stop()


class ReportingClient:
    """A browser as the page sees it: a camera it reports and sets, and viser's `atomic()` (nothing to group)."""

    def __init__(self, yaw: float):
        self.camera = ReportedCamera(yaw)
        self.camera.client = self

    def atomic(self):
        return contextlib.nullcontext()


def test_page_takes_reports_for_moves_only_once_its_own_camera_has_settled(G, run_dir, tmp_path):
    server = visualizer.start_server('127.0.0.1', 0)
    page = visualizer.ViewerPage(server, Viewer(G), run_dir, None, 0, torch.device('cpu'), False, str(tmp_path), 'tiny')
    try:
        page.request(interactive=False)
        client = ReportingClient(0.0)
        page.move_viewports([client])  # the page sets the browser's camera to its front view
        np.testing.assert_allclose(client.camera.position, orbit_viewport(0.0, 0.0)[0])
        assert page.worker.wait_idle(30)
        page.recent.clear()
        client.camera.position, client.camera.wxyz = level_viewport(-90.0)  # a report sent before the front one came
        page.viewport_moved(client.camera)
        assert page.worker.wait_idle(30) and not page.recent  # not taken for a move
        time.sleep(visualizer.ECHO_SECONDS + 0.5)  # then the page looks again at what the browser reported last
        assert page.worker.wait_idle(30)
        assert page.recent and page.recent[-1][0].viewport is not None and page.yaw.value == -90.0
    finally:
        page.worker.stop()
        server.stop()
