"""Shape grid, marching cubes and .mrc round trip (training/engines/shapes.py) on analytic densities."""

import numpy as np
import pytest
import torch
import trimesh

from training.engines import shapes


def sphere_density(radius: float, level: float = shapes.DEFAULT_LEVEL, slope: float = 100.0):
    """Stands in for G.sample: points [1, M, 3] -> sigma [1, M, 1], crossing `level` at `radius`."""
    return lambda points: level + slope * (radius - points.norm(dim=-1, keepdim=True))


def test_grid_points_index_x_y_z():
    points = shapes.grid_points(5, 2.0).reshape(5, 5, 5, 3)
    assert torch.allclose(points[4, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(points[0, 4, 0], torch.tensor([-1.0, 1.0, -1.0]))
    assert torch.allclose(points[0, 0, 4], torch.tensor([-1.0, -1.0, 1.0]))
    assert torch.allclose(points[2, 2, 2], torch.zeros(3))


@pytest.mark.parametrize('center', [(0.0, 0.0, 0.0), (0.05, 0.1, -0.08)])
def test_sphere_radius_within_a_voxel(center):
    side, resolution, radius = 0.8, 48, 0.2
    offset = torch.tensor(center)
    density = sphere_density(radius)
    volume = shapes.sample_volume(lambda p: density(p - offset), resolution, side, batch=1000)
    vertices, faces = shapes.marching_cubes(shapes.close_border(volume), side)
    voxel = side / (resolution - 1)
    distance = np.linalg.norm(vertices - np.array(center), axis=1)
    assert np.abs(distance - radius).max() < voxel
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward normals
    assert abs(mesh.volume - 4 / 3 * np.pi * radius**3) < 0.05 * 4 / 3 * np.pi * radius**3


def test_sphere_cut_by_the_grid_is_closed_by_the_border():
    side, resolution = 0.8, 24
    volume = shapes.sample_volume(sphere_density(0.5), resolution, side)
    open_vertices, open_faces = shapes.marching_cubes(volume, side)
    assert not trimesh.Trimesh(open_vertices, open_faces).is_watertight
    vertices, faces = shapes.marching_cubes(shapes.close_border(volume), side)
    assert trimesh.Trimesh(vertices, faces).is_watertight
    assert np.abs(vertices).max() <= side / 2 + 1e-6


def test_no_surface_raises():
    with pytest.raises(ValueError, match='does not cross'):
        shapes.marching_cubes(np.zeros([8, 8, 8], np.float32), 0.8)


def test_mrc_round_trip_keeps_axes_and_side(tmp_path):
    volume = np.random.RandomState(0).rand(6, 6, 6).astype(np.float32)
    path = str(tmp_path / 'v.mrc')
    shapes.write_mrc(path, volume, 0.8)
    loaded, side = shapes.read_mrc(path)
    np.testing.assert_array_equal(loaded, volume)
    assert side == pytest.approx(0.8, rel=1e-5)


def test_write_mesh_keeps_vertex_colors(tmp_path):
    volume = shapes.sample_volume(sphere_density(0.2), 16, 0.8)
    vertices, faces = shapes.marching_cubes(volume, 0.8)
    colors = np.clip(vertices / 0.4 + 0.5, 0, 1)
    path = str(tmp_path / 'm.ply')
    assert shapes.write_mesh(path, vertices, faces, colors)
    mesh = trimesh.load(path, process=False)
    np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-6)
    np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3] / 255, colors, atol=1 / 255)


def test_posed_mesh_turns_rigidly_with_the_head_and_keeps_the_rest():
    from scipy.spatial.transform import Rotation

    from tests.test_deformation import THICKNESS, clearly_nearest_to, joint_weight, points_off_faces
    from training.body import lbs
    from training.body.body_model import BodyModel
    from training.body.deformation import Deformer

    body = BodyModel.embedded().double()
    deformer = Deformer(body, thickness=THICKNESS, backend='brute')
    head_pose = np.array([-0.3, 0.6, 0.1])
    pose = torch.from_numpy(np.concatenate([np.zeros(3), head_pose]))[None]
    canonical, faces = body.canonical_vertices[0], body.box_faces
    rigid_head = (joint_weight(body, lbs.HEAD_JOINT)[faces] == 1).all(dim=1)
    generator = torch.Generator().manual_seed(3)
    chosen = rigid_head.nonzero()[:, 0][torch.randperm(int(rigid_head.sum()), generator=generator)[:600]]
    offsets = torch.rand(len(chosen), generator=generator, dtype=torch.float64) * 0.25 - 0.05
    points = points_off_faces(canonical, faces[chosen], offsets)
    points = points[clearly_nearest_to(points, canonical, faces, rigid_head)].numpy()
    assert len(points) > 200

    posed = shapes.pose_vertices(deformer, points, pose)
    pivot = body.joints[0, lbs.HEAD_JOINT].numpy()
    expected = (points - pivot) @ Rotation.from_rotvec(head_pose).as_matrix().T + pivot
    np.testing.assert_allclose(posed, expected, atol=1e-10)
    # The renderer's deformation carries the posed vertices back where they came from (those that
    # are also clearly nearest to the head in posed space).
    kept = clearly_nearest_to(torch.from_numpy(posed), body.pose(pose)[0], faces, rigid_head).numpy()
    assert kept.mean() > 0.9
    back = deformer(torch.from_numpy(posed[kept])[None], pose)[0].numpy()
    np.testing.assert_allclose(back, points[kept], atol=1e-10)

    far = np.array([[0.0, 0.0, 0.9], [0.6, 0.6, -0.6]])
    np.testing.assert_array_equal(shapes.pose_vertices(deformer, far, pose), far)
    np.testing.assert_allclose(
        shapes.pose_vertices(deformer, points, torch.zeros(1, 6, dtype=torch.float64)), points, atol=1e-12
    )


class SharpDecoder(torch.nn.Module):
    """A decoder whose raw density is the wrapped one's, shifted and scaled: its level sets become opaque surfaces."""

    def __init__(self, decoder: torch.nn.Module, gain: float, offset: float):
        super().__init__()
        self.decoder, self.gain, self.offset = decoder, gain, offset

    def forward(self, features: torch.Tensor) -> dict:
        out = self.decoder(features)
        return {'sigma': self.gain * (out['sigma'] - self.offset), 'rgb': out['rgb']}


def sharp_tiny_generator(root: str) -> tuple:
    """The tiny snapshot's G_ema (written under `root`) with an opaque surface through the middle of its density,
    and a latent -> (G, ws [1, num_ws, w_dim])."""
    import copy
    import os

    from tests.tiny_run import write_tiny_snapshot
    from training.checkpoints import formats
    from training.data.camera_utils import frontal_camera

    run_dir, _ = write_tiny_snapshot(root)
    G = copy.deepcopy(formats.load_any(os.path.join(run_dir, 'network-snapshot-000000.pkl'))['G_ema']).eval()
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), frontal_camera(1))
    volume = shapes.sample_volume(shapes.generator_density(G, ws), 16, shapes.shape_side(G))
    G.decoder = SharpDecoder(G.decoder, gain=200.0, offset=float(np.median(volume)))
    return G, ws


@pytest.fixture(scope='module')
def sharp_generator(tmp_path_factory):
    return sharp_tiny_generator(str(tmp_path_factory.mktemp('colors')))


def first_feature_colors(G, ws, vertices: np.ndarray) -> np.ndarray:
    """The former vertex colours, the first three decoder features: vertices [V, 3] -> [V, 3], about [-1, 1]."""
    with torch.no_grad():
        planes = G.planes(ws, noise_mode='const')
        return G.renderer.sample_points(planes, G.decoder, torch.from_numpy(vertices)[None])['rgb'][0, :, :3].numpy()


@pytest.mark.parametrize('case', ['torgb', 'no-torgb', 'posed'])
def test_vertex_colors_are_the_raw_image_where_they_project(sharp_generator, case):
    """Rasterized vertex colours against image_raw from three cameras, on the pixels where the volume is opaque
    and its depth is the mesh's. Measured (res 40 mesh, 32 px): mean difference 0.001-0.005 of the raw range,
    0.40-0.47 with the first three decoder features."""
    import copy
    import math

    from training.data.camera_utils import camera_label, orbit_camera
    from training.engines.mesh_renderer import MeshRenderer

    G, ws = sharp_generator
    if case == 'no-torgb':  # a generator built with use_torgb_raw=False (e.g. an EG3D-style published model)
        G = copy.deepcopy(G)
        G.torgb = None
    pose = torch.tensor([[0.0, 0.0, 0.0, 0.2, -0.5, 0.1]]) if case == 'posed' else None
    shape = shapes.extract_shape(G, ws, 40)
    vertices = shape['vertices'] if pose is None else shapes.pose_vertices(G.deformer, shape['vertices'], pose)
    raw = shapes.generator_raw_rgb(G, ws, shape['vertices'])
    old = first_feature_colors(G, ws, shape['vertices'])
    np.testing.assert_allclose(shape['colors'], np.clip((raw + 1) / 2, 0, 1), atol=1e-6)
    # The renderer clamps colours to [0, 1]: an affine map that keeps every value inside makes the
    # rasterized colours the interpolated raw values, unclamped.
    scale = 1.05 * max(np.abs(raw).max(), np.abs(old).max())
    renderer, resolution = MeshRenderer(), 32
    compared = 0
    for yaw in (0.0, 1.2, 3.0):
        c = camera_label(orbit_camera(torch.tensor([math.pi / 2 + yaw]), math.pi / 2))
        with torch.no_grad():
            out = G.synthesis(
                ws,
                c,
                neural_rendering_resolution=resolution,
                pose_params=pose,
                deterministic=True,
                depth_resolution=64,
                depth_resolution_importance=64,
                noise_mode='const',
            )
        image_raw = out['image_raw'][0].permute(1, 2, 0).numpy()
        new_view, old_view = (
            renderer.render(vertices, shape['faces'], c[0], resolution, vertex_colors=(v / scale + 1) / 2, lit=False)
            for v in (raw, old)
        )
        seen = new_view['mask'] & (out['image_mask'][0, 0].numpy() > 0.99)
        seen &= np.abs(new_view['depth'] - out['image_depth'][0, 0].numpy()) < 0.02
        assert seen.sum() > 50
        compared += seen.sum()
        new_error = np.abs((2 * new_view['rgb'] - 1) * scale - image_raw)[seen] / scale
        old_error = np.abs((2 * old_view['rgb'] - 1) * scale - image_raw)[seen] / scale
        assert new_error.mean() < 0.01 and np.percentile(new_error, 95) < 0.05, (yaw, new_error.mean())
        if G.torgb is not None:
            assert old_error.mean() > 0.1, (yaw, old_error.mean())
    assert compared > 500
    if G.torgb is None:
        np.testing.assert_array_equal(raw, old)
