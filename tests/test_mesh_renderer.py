"""Tests of training/engines/mesh_renderer.py against a numpy pinhole projection, analytic ray-sphere
depths, Lambert shading and mirror symmetry."""

import math
import multiprocessing
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import trimesh

from training.body.body_model import BodyModel
from training.data import camera_utils
from training.engines.mesh_renderer import MeshRenderer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def renderer():
    return MeshRenderer()


@pytest.fixture(scope='module')
def body():
    return BodyModel.embedded()


def label(cam2world: torch.Tensor, focal: float) -> np.ndarray:
    """cam2world [4, 4] -> c [25] (float64 numpy)."""
    return camera_utils.camera_label(cam2world[None], focal)[0].double().numpy()


def to_camera(points: np.ndarray, c: np.ndarray) -> np.ndarray:
    """World points [N, 3] -> OpenCV camera coordinates [N, 3] of camera label c [25]."""
    cam2world = c[:16].reshape(4, 4)
    return (points - cam2world[:3, 3]) @ cam2world[:3, :3]


def project(points: np.ndarray, c: np.ndarray, resolution: int) -> np.ndarray:
    """World points [N, 3] -> continuous pixel coordinates (u right, v down) [N, 2], in which
    pixel (row i, column j) covers [j, j + 1] x [i, i + 1]."""
    x, y, z = to_camera(points, c).T
    K = c[16:].reshape(3, 3) * resolution
    return np.stack([K[0, 0] * x / z + K[0, 1] * y / z + K[0, 2], K[1, 1] * y / z + K[1, 2]], axis=1)


def covered_range(low: float, high: float) -> tuple:
    """First and last pixel index whose centre (index + 0.5) lies in [low, high]."""
    return math.ceil(low - 0.5), math.floor(high - 0.5)


def mask_box(mask: np.ndarray) -> tuple:
    """(first row, last row, first column, last column) of a non-empty mask [H, W]."""
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max(), cols.min(), cols.max()


def box_mesh(center, size: float) -> trimesh.Trimesh:
    return trimesh.creation.box(
        extents=(size, size, size), transform=trimesh.transformations.translation_matrix(center)
    )


# ---------------------------------------------------------------------------------------------
# Geometry: silhouette and depth against projection and ray-sphere oracles


def test_sphere_silhouette_and_depth(renderer):
    radius, center, resolution = 0.25, np.array([0.08, 0.12, -0.05]), 96
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    vertices = sphere.vertices + center
    c = label(camera_utils.orbit_camera(math.pi / 2 + 0.5, math.pi / 2 - 0.25)[0], focal=2.0)
    out = renderer.render(vertices, sphere.faces, c, resolution, background=(0.2, 0.3, 0.4))
    assert out['rgb'].shape == (resolution, resolution, 3) and out['rgb'].dtype == np.float32
    assert out['mask'].dtype == bool and out['depth'].dtype == np.float32

    uv = project(vertices, c, resolution)
    first_col, last_col = covered_range(uv[:, 0].min(), uv[:, 0].max())
    first_row, last_row = covered_range(uv[:, 1].min(), uv[:, 1].max())
    got = mask_box(out['mask'])
    assert abs(got[0] - first_row) <= 1 and abs(got[1] - last_row) <= 1
    assert abs(got[2] - first_col) <= 1 and abs(got[3] - last_col) <= 1

    # The inscribed polyhedron lies between the sphere and the ball of radius `inner` (its
    # closest face plane), so every pixel ray that hits that ball sees the mesh at a z-depth
    # between the two spheres' first intersections.
    normals = sphere.face_normals
    inner = np.abs(np.einsum('fi,fi->f', normals, sphere.vertices[sphere.faces[:, 0]])).min()
    K = c[16:].reshape(3, 3) * resolution
    cols, rows = np.meshgrid(np.arange(resolution) + 0.5, np.arange(resolution) + 0.5)
    directions = np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], np.ones_like(cols)], -1)
    center_camera = to_camera(center[None], c)[0]

    def first_hit(r):  # z-depth of the ray t * direction (direction z = 1) entering the sphere
        a = (directions**2).sum(-1)
        b = directions @ center_camera
        discriminant = b**2 - a * (center_camera @ center_camera - r**2)
        return np.where(discriminant >= 0, (b - np.sqrt(np.maximum(discriminant, 0))) / a, np.nan)

    outer_depth, inner_depth = first_hit(radius), first_hit(inner)
    hits_inner = ~np.isnan(inner_depth)
    assert hits_inner.sum() > 500
    assert out['mask'][hits_inner].all()
    depth = out['depth'].astype(np.float64)
    assert (depth[hits_inner] >= outer_depth[hits_inner] - 1e-4).all()
    assert (depth[hits_inner] <= inner_depth[hits_inner] + 1e-4).all()
    # The centre pixel, explicitly: the sphere's near side along the camera z axis.
    centre = tuple(np.floor(project(center[None], c, resolution)[0, ::-1]).astype(int))
    assert outer_depth[centre] - 1e-4 <= depth[centre] <= inner_depth[centre] + 1e-4
    assert inner_depth[centre] - outer_depth[centre] < 2e-3
    assert abs(depth[centre] - (center_camera[2] - radius)) < 0.01  # near the sphere's front pole

    assert np.isinf(out['depth'][~out['mask']]).all() and (~out['mask']).sum() > 0
    assert np.isfinite(out['depth'][out['mask']]).all()
    assert np.allclose(out['rgb'][~out['mask']], (0.2, 0.3, 0.4))


def test_principal_point_offset(renderer):
    """An off-centre principal point shifts the image by exactly that many pixels."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.2)
    c = label(camera_utils.orbit_camera(math.pi / 2 + 0.3, math.pi / 2)[0], focal=2.5)
    shifted = c.copy()
    shifted[16 + 2] += 5 / 64  # cx: +5 px
    shifted[16 + 5] -= 3 / 64  # cy: -3 px
    base = renderer.render(sphere.vertices, sphere.faces, c, 64)['mask']
    moved = renderer.render(sphere.vertices, sphere.faces, shifted, 64)['mask']
    assert base.any() and np.array_equal(moved[:-3, 5:], base[3:, :-5])


def test_orientation(renderer):
    """Frontal camera at +z looking toward -z: its x axis is world +x and its y axis world -y
    (look_at with world up +y), so u = cx + f x / z grows with world x and v = cy - f y / z
    shrinks with world y. The subject's left (+x) appears on the image's right, the head at
    the top rows."""
    parts = {(1.0, 0.0, 0.0): (0.3, 0.0, 0.0), (0.0, 0.0, 1.0): (-0.3, 0.0, 0.0), (0.0, 1.0, 0.0): (0.0, 0.3, 0.0)}
    boxes = [box_mesh(center, 0.1) for center in parts.values()]
    mesh = trimesh.util.concatenate(boxes)
    face_colors = np.concatenate([np.tile(rgb, (len(box.faces), 1)) for rgb, box in zip(parts, boxes)])
    resolution = 64
    c = camera_utils.camera_label(camera_utils.orbit_camera(math.pi / 2, math.pi / 2), focal=2.0)[0]
    assert np.allclose(c[[3, 7, 11]].numpy(), (0, 0, camera_utils.RADIUS), atol=1e-6)
    out = renderer.render(mesh.vertices, mesh.faces, c, resolution, face_colors=face_colors, lit=False)
    for rgb, box in zip(parts, boxes):
        part_mask = np.all(out['rgb'] == np.asarray(rgb, np.float32), axis=-1) & out['mask']
        uv = project(box.vertices, c.double().numpy(), resolution)
        first_col, last_col = covered_range(uv[:, 0].min(), uv[:, 0].max())
        first_row, last_row = covered_range(uv[:, 1].min(), uv[:, 1].max())
        got = mask_box(part_mask)
        assert abs(got[0] - first_row) <= 1 and abs(got[1] - last_row) <= 1
        assert abs(got[2] - first_col) <= 1 and abs(got[3] - last_col) <= 1
    red = np.all(out['rgb'] == (1, 0, 0), axis=-1)
    green = np.all(out['rgb'] == (0, 1, 0), axis=-1)
    assert np.nonzero(red)[1].min() > resolution / 2  # subject's left on the image's right
    assert np.nonzero(green)[0].max() < resolution / 2  # up at the top


def test_mirror(renderer, body):
    """The x-mirrored mesh seen by the mirrored camera is the width-flipped image."""
    pose = torch.tensor([[0.1, 0.3, -0.2, 0.2, -0.4, 0.1]])
    vertices = body.pose(pose)[0].detach().numpy()
    c = label(camera_utils.orbit_camera(math.pi / 2 + 0.6, math.pi / 2 - 0.2)[0], camera_utils.FOCAL)
    mirrored_c = camera_utils.flip_camera(torch.from_numpy(c)[None])[0]
    lights = dict(light_dirs=[[0.0, 0.5, 1.0], [0.0, 0.0, -1.0]], light_weights=[0.6, 0.3])  # x-symmetric
    out = renderer.render(vertices, body.faces, c, 64, **lights)
    mirrored = renderer.render(vertices * np.array([-1.0, 1.0, 1.0]), body.faces, mirrored_c, 64, **lights)
    assert out['mask'].sum() > 500 and not np.array_equal(out['mask'], out['mask'][:, ::-1])
    # Pixel centres on an edge may go either way (the fill rule is not mirror-symmetric).
    assert (mirrored['mask'] != out['mask'][:, ::-1]).sum() <= 3
    both = mirrored['mask'] & out['mask'][:, ::-1]
    assert np.allclose(mirrored['depth'][both], out['depth'][:, ::-1][both], atol=1e-4)
    # Face normals come from float32 screen-space differences, which lose digits on slivers.
    shade_error = np.abs(mirrored['rgb'][both] - out['rgb'][:, ::-1][both]).max(axis=-1)
    assert (shade_error > 1e-4).sum() <= 3 and shade_error.max() < 0.02


# ---------------------------------------------------------------------------------------------
# Colours and shading


def test_vertex_colors_interpolate(renderer):
    """A triangle parallel to the image plane: screen-space barycentric interpolation is exact."""
    c = camera_utils.frontal_camera()[0].double().numpy()
    cam2world = c[:16].reshape(4, 4)
    # Corners at depth 2 in front of the camera, built in camera coordinates.
    corners_camera = np.array([[-0.1, -0.08, 2.0], [0.12, -0.05, 2.0], [0.0, 0.11, 2.0]])
    vertices = corners_camera @ cam2world[:3, :3].T + cam2world[:3, 3]
    colors = np.eye(3)
    resolution = 64
    out = renderer.render(vertices, [[0, 1, 2]], c, resolution, vertex_colors=colors, lit=False)
    uv = project(vertices, c, resolution)
    rows, cols = np.nonzero(out['mask'])
    points = np.stack([cols + 0.5, rows + 0.5], -1)
    T = np.stack([uv[0] - uv[2], uv[1] - uv[2]], -1)
    lambdas = np.linalg.solve(T, (points - uv[2]).T).T
    barycentric = np.concatenate([lambdas, 1 - lambdas.sum(-1, keepdims=True)], -1)
    assert len(rows) > 200 and (barycentric > -1e-3).all()
    assert np.allclose(out['rgb'][rows, cols], barycentric @ colors, atol=2e-3)
    assert np.allclose(out['depth'][out['mask']], 2.0, atol=1e-4)


def test_lambert_shading(renderer):
    """A square facing +z under world lights: ambient + sum of weight * cos; both windings alike."""
    square = np.array([[-0.2, -0.2, 0.0], [0.2, -0.2, 0.0], [0.2, 0.2, 0.0], [-0.2, 0.2, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    c = camera_utils.frontal_camera()[0]
    color = np.array([0.9, 0.6, 0.3])
    light_dirs = [[0.0, 0.0, 1.0], [0.0, math.sin(1.0), math.cos(1.0)], [1.0, 0.0, -1.0]]
    weights = [0.3, 0.4, 0.2]
    expected = color * (0.1 + 0.3 + 0.4 * math.cos(1.0) + 0.0)  # the third light is behind
    for face_order in (faces, faces[:, ::-1]):
        out = renderer.render(
            square, face_order, c, 32, color=color, light_dirs=light_dirs, light_weights=weights, ambient=0.1
        )
        assert out['mask'].sum() > 100
        assert np.allclose(out['rgb'][out['mask']], expected, atol=1e-5)
    unlit = renderer.render(square, faces, c, 32, color=color, lit=False)
    assert np.allclose(unlit['rgb'][unlit['mask']], color, atol=1e-6)


def test_face_colors_flat(renderer):
    square = np.array([[-0.2, -0.2, 0.0], [0.2, -0.2, 0.0], [0.2, 0.2, 0.0], [-0.2, 0.2, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    c = camera_utils.frontal_camera()[0]
    out = renderer.render(square, faces, c, 32, face_colors=[[1, 0, 0], [0, 0, 1]], lit=False)
    seen = {tuple(rgb) for rgb in out['rgb'][out['mask']].tolist()}
    assert seen == {(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)}
    # Face 0 (+x, -y corner) is on the image's right, face 1 on the left.
    red_cols = np.nonzero(np.all(out['rgb'] == (1, 0, 0), -1))[1]
    blue_cols = np.nonzero(np.all(out['rgb'] == (0, 0, 1), -1))[1]
    assert red_cols.mean() > blue_cols.mean()
    with pytest.raises(ValueError, match='not both'):
        renderer.render(square, faces, c, 32, vertex_colors=np.ones((4, 3)), face_colors=np.ones((2, 3)))


# ---------------------------------------------------------------------------------------------
# The embedded body, batches, torch inputs, overlay


def test_embedded_body_frontal(renderer, body):
    resolution = 64
    vertices = body.canonical_vertices[0]
    c = camera_utils.frontal_camera()[0]
    out = renderer.render(vertices, body.faces, c, resolution)
    assert out['mask'].sum() > 100
    first_row, _, first_col, last_col = mask_box(out['mask'])
    # The body is symmetric about x = 0 and the frontal camera sits on that plane.
    assert abs((first_col + last_col) / 2 - (resolution - 1) / 2) <= 1.5
    top = vertices.numpy()[vertices[:, 1].argmax()]
    v_top = project(top[None], c.double().numpy(), resolution)[0, 1]
    assert abs(first_row - covered_range(v_top, v_top + 1)[0]) <= 1


def test_render_batch_matches_single_renders(renderer, body):
    poses = torch.tensor([[0.0] * 6, [0.2, -0.3, 0.1, 0.0, 0.4, 0.0]])
    vertices = body.pose(poses)
    c = camera_utils.camera_label(camera_utils.orbit_camera(torch.tensor([1.2, 1.9]), math.pi / 2))
    batch = renderer.render_batch(vertices, body.faces, c, 32)
    assert batch['rgb'].shape == (2, 32, 32, 3) and batch['mask'].shape == (2, 32, 32)
    for index in range(2):
        single = renderer.render(vertices[index].numpy(), body.faces.numpy(), c[index].numpy(), 32)
        for key in ('rgb', 'mask', 'depth'):
            assert np.array_equal(batch[key][index], single[key])
    # One mesh for every camera, cameras given as (cam2world, intrinsics).
    cam2world, intrinsics = camera_utils.split_label(c)
    shared = renderer.render_batch(vertices[:1].clone().requires_grad_(True), body.faces, (cam2world, intrinsics), 32)
    assert np.array_equal(shared['mask'][0], batch['mask'][0])
    assert np.array_equal(shared['mask'][1], renderer.render(vertices[0], body.faces, c[1], 32)['mask'])


def test_non_square_image(renderer):
    """Normalized intrinsics scale with each image side: a sphere stays round in pixels."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.2)
    c = camera_utils.camera_label(camera_utils.orbit_camera(math.pi / 2, math.pi / 2), focal=2.0)[0]
    c_wide = c.clone()
    c_wide[16] = 2.0 * 48 / 96  # the same pixel focal as the 48 px high image
    out = renderer.render(sphere.vertices, sphere.faces, c_wide, (48, 96))
    assert out['mask'].shape == (48, 96)
    first_row, last_row, first_col, last_col = mask_box(out['mask'])
    uv = project(sphere.vertices, c.double().numpy(), 48)
    assert abs(first_row - math.ceil(uv[:, 1].min() - 0.5)) <= 1
    assert abs((last_col - first_col) - (last_row - first_row)) <= 1
    assert abs((first_col + last_col) / 2 - 47.5) <= 1


def test_overlay(renderer, body):
    generator = np.random.default_rng(0)
    image = generator.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    vertices = body.canonical_vertices[0]
    c = camera_utils.frontal_camera()[0]
    result = renderer.overlay(image, vertices, body.faces, c, alpha=0.6, color=(0.4, 0.5, 0.9))
    assert result.shape == image.shape and result.dtype == np.uint8
    rendered = renderer.render(vertices, body.faces, c, 48, color=(0.4, 0.5, 0.9))
    mask = rendered['mask']
    assert mask.any() and (~mask).any()
    assert np.array_equal(result[~mask], image[~mask])
    expected = np.rint(0.4 * image[mask] + 0.6 * 255 * rendered['rgb'][mask])
    assert np.abs(result[mask].astype(int) - expected).max() <= 1
    assert (result[mask] != image[mask]).any(axis=-1).mean() > 0.9
    from_torch = renderer.overlay(torch.from_numpy(image), vertices, body.faces, c)
    assert np.array_equal(from_torch, result)


# ---------------------------------------------------------------------------------------------
# Processes and failures


def _render_mask_in_child(queue, renderer, mesh, c):
    queue.put(
        [
            renderer.render(mesh.vertices, mesh.faces, c, 32)['mask'],
            MeshRenderer().render(mesh.vertices, mesh.faces, c, 32)['mask'],
        ]
    )


@pytest.mark.skipif(os.environ.get('LP_NUM_THREADS', '0') != '0', reason='forking renders needs LP_NUM_THREADS=0')
def test_fork_after_render(renderer):
    """With the default single-threaded llvmpipe, a forked child renders (inherited renderer
    and a new one) instead of hanging."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    c = camera_utils.frontal_camera()[0].numpy()
    expected = renderer.render(sphere.vertices, sphere.faces, c, 32)['mask']
    assert os.environ['LP_NUM_THREADS'] == '0'
    context = multiprocessing.get_context('fork')
    queue = context.Queue()
    child = context.Process(target=_render_mask_in_child, args=(queue, renderer, sphere, c))
    child.start()
    try:
        inherited, fresh = queue.get(timeout=20)
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
    assert np.array_equal(inherited, expected) and np.array_equal(fresh, expected)


def test_threaded_context_refuses_to_render_after_fork():
    script = textwrap.dedent("""
        import multiprocessing, trimesh
        from training.data import camera_utils
        from training.engines.mesh_renderer import MeshRenderer
        sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.3)
        c = camera_utils.frontal_camera()[0]
        MeshRenderer().render(sphere.vertices, sphere.faces, c, 16)
        def child():
            try:
                MeshRenderer().render(sphere.vertices, sphere.faces, c, 16)
            except RuntimeError as error:
                print('refused:', error, flush=True)
        process = multiprocessing.get_context('fork').Process(target=child)
        process.start()
        process.join(20)
        if process.is_alive():
            process.kill()
    """)
    env = dict(os.environ, LP_NUM_THREADS='2', PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, '-c', script], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert 'refused: MeshRenderer: process' in result.stdout and 'spawn' in result.stdout, result.stderr


def test_missing_egl_names_the_packages(monkeypatch):
    import moderngl

    def no_egl(*args, **kwargs):
        raise Exception('libEGL.so not loaded')

    monkeypatch.setattr(moderngl, 'create_context', no_egl)
    with pytest.raises(RuntimeError) as error:
        MeshRenderer().render(np.zeros((3, 3)), [[0, 1, 2]], camera_utils.frontal_camera()[0], 8)
    message = str(error.value)
    assert '\n' not in message and 'libEGL.so not loaded' in message
    assert 'apt-get install libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri' in message and 'setup.sh' in message


def test_two_renderers_in_one_process_each_draw_their_own_mesh():
    """Each renderer owns a GL context: after a second renderer has drawn another mesh, the first draws its own
    mesh exactly as before (not with the other context's state)."""
    c = camera_utils.frontal_camera()[0].double().numpy()
    first, second = MeshRenderer(), MeshRenderer()
    small, large = box_mesh((0.0, 0.0, 0.0), 0.2), box_mesh((0.05, 0.0, 0.0), 0.5)
    before = first.render(small.vertices, small.faces, c, 64, color=(0.9, 0.2, 0.1))
    other = second.render(large.vertices, large.faces, c, 64, color=(0.1, 0.3, 0.9))
    after = first.render(small.vertices, small.faces, c, 64, color=(0.9, 0.2, 0.1))
    assert other['mask'].sum() > before['mask'].sum() > 50
    np.testing.assert_array_equal(after['mask'], before['mask'])
    np.testing.assert_allclose(after['rgb'], before['rgb'], atol=1e-6)
    np.testing.assert_allclose(after['depth'], before['depth'], atol=1e-6)
