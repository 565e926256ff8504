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
