"""training/engines/viewer.py and visualizer.py without a browser: renders against the tools' own generator calls,
the tri-grid cache, draft renders, the render worker, the capture buttons and one-line errors."""

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

import visualizer
from tests.tiny_run import TINY_GENERATOR, write_tiny_snapshot
from training.cli import load_generator
from training.data.camera_utils import VIEWS, camera_label, frontal_camera, orbit_camera
from training.engines.viewer import (
    RenderCancelled,
    RenderWorker,
    Viewer,
    ViewState,
    samples_per_ray,
    seed_latent,
    slerp,
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


def assert_same_images(ours: dict, theirs: dict) -> None:
    for key in ('image', 'image_raw', 'image_depth', 'image_mask'):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize('view, yaw', [('front', 0.0), ('side', -90.0), ('back', -180.0)])
def test_pose_sliders_render_as_gen_samples(G, view, yaw):
    viewer = Viewer(G)
    state = ViewState(seed=5, yaw=yaw, pose=POSE, sample_mult=2)
    assert_same_images(viewer.render(state), render_like_gen_samples(G, 5, view, POSE, sample_mult=2))
    canonical = viewer.render(ViewState(seed=5, yaw=yaw, deform=False, sample_mult=2))
    assert_same_images(canonical, render_like_gen_samples(G, 5, view, None, sample_mult=2))
    assert not torch.equal(canonical['image_raw'], viewer.render(state)['image_raw'])


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
    finally:
        page.worker.stop()
        server.stop()
    assert PIL.Image.open(tmp_path / 'seed0000-image.png').size == (G.img_resolution, G.img_resolution)
    mesh = trimesh.load(tmp_path / 'seed0000.glb', force='mesh')
    assert len(mesh.vertices) > 0
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
