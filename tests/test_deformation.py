"""Tests for training/body/deformation.py: identities, rigid head motion, the cut-off, the
per-triangle formula, gradients and the Deformer module."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tests.conftest import requires_cuda
from training.body import lbs
from training.body.body_model import BodyModel
from training.body.deformation import Deformer, PosedMeshMap, canonicalize
from training.body.nearest_face import closest_point_on_faces, nearest_faces

THICKNESS = 0.25


@pytest.fixture(scope='module')
def body():
    return BodyModel.embedded()


def joint_weight(body: BodyModel, joint: int) -> torch.Tensor:
    """Skinning weight of every vertex on `joint`. -> [V]"""
    weight = torch.zeros(body.num_vertices, dtype=body.moving_weights.dtype)
    weight[body.moving_vertex_ids] = body.moving_weights[:, body.moving_joints.index(joint)]
    return weight


def points_off_faces(vertices: torch.Tensor, faces: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Face centroids pushed along the unit face normals by `offsets`.

    vertices [V, 3], faces [F, 3], offsets [F] -> [F, 3]
    """
    corners = vertices[faces]
    normal = torch.nn.functional.normalize(
        torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1), dim=-1
    )
    return corners.mean(dim=1) + offsets[:, None] * normal


def clearly_nearest_to(
    points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, subset: torch.Tensor, margin: float = 1e-4
) -> torch.Tensor:
    """Which points are within THICKNESS of a face in `subset` and nearer to it, by `margin` in
    squared distance, than to every face outside it (no ties across the subset's border).

    points [N, 3], vertices [V, 3], faces [F, 3], subset [F] bool -> [N] bool
    """
    _, inside = nearest_faces(points, vertices, faces[subset], THICKNESS, backend='brute')
    _, outside = nearest_faces(points, vertices, faces[~subset], THICKNESS, backend='brute')
    return torch.isfinite(inside) & (outside > inside + margin)


def random_pose(seed: int, batch_size: int = 1, scale: float = 0.4, dtype=torch.float32) -> torch.Tensor:
    return scale * torch.randn(batch_size, 6, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_zero_pose_maps_every_point_to_itself(body):
    points = (torch.rand(2, 3000, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 1.2
    canonical = Deformer(body)(points, torch.zeros(2, 6))
    torch.testing.assert_close(canonical, points, atol=1e-6, rtol=0)


def test_head_rotation_is_undone_rigidly_near_the_head():
    body = BodyModel.embedded().double()
    head_pose = torch.tensor([0.35, -0.5, 0.2], dtype=torch.float64)
    pose = torch.cat([torch.zeros(3, dtype=torch.float64), head_pose])[None]
    posed = body.pose(pose)
    faces = body.box_faces
    rigid_head = (joint_weight(body, lbs.HEAD_JOINT)[faces] == 1).all(dim=1)
    rotation = torch.from_numpy(Rotation.from_rotvec(head_pose.numpy()).as_matrix())
    pivot = body.joints[0, lbs.HEAD_JOINT]
    # Precondition from the body model: these vertices turn rigidly about the head joint.
    head_vertices = faces[rigid_head].unique()
    torch.testing.assert_close(
        posed[0, head_vertices],
        (body.canonical_vertices[0, head_vertices] - pivot) @ rotation.T + pivot,
        atol=1e-12,
        rtol=0,
    )

    generator = torch.Generator().manual_seed(1)
    chosen = rigid_head.nonzero()[:, 0][torch.randperm(int(rigid_head.sum()), generator=generator)[:800]]
    offsets = torch.rand(len(chosen), generator=generator, dtype=torch.float64) * 0.3 - 0.05
    points = points_off_faces(posed[0], faces[chosen], offsets)
    points = points[clearly_nearest_to(points, posed[0], faces, rigid_head)]
    assert len(points) > 300

    canonical = canonicalize(points[None], posed, body.canonical_vertices, faces, THICKNESS)[0]
    expected = (points - pivot) @ rotation + pivot
    torch.testing.assert_close(canonical, expected, atol=1e-12, rtol=0)
    assert (canonical - points).norm(dim=-1).max() > 0.05


def test_torso_points_stay_put_under_any_pose(body):
    pose = random_pose(2, batch_size=1, scale=0.6)
    posed = body.pose(pose)
    faces = body.box_faces
    static = torch.ones(body.num_vertices, dtype=torch.bool)
    static[body.moving_vertex_ids] = False
    torso = static[faces].all(dim=1)
    generator = torch.Generator().manual_seed(3)
    chosen = torso.nonzero()[:, 0][torch.randperm(int(torso.sum()), generator=generator)[:800]]
    offsets = torch.rand(len(chosen), generator=generator) * 0.2
    points = points_off_faces(posed[0], faces[chosen], offsets)
    points = points[clearly_nearest_to(points, posed[0], faces, torso)][None]
    assert points.shape[1] > 200
    torch.testing.assert_close(
        canonicalize(points, posed, body.canonical_vertices, faces, THICKNESS), points, atol=1e-6, rtol=0
    )


def test_points_beyond_the_thickness_are_unchanged(body):
    pose = random_pose(4, batch_size=2)
    posed = body.pose(pose)
    points = (torch.rand(2, 1500, 3, generator=torch.Generator().manual_seed(5)) - 0.5) * 1.6
    canonical = canonicalize(points, posed, body.canonical_vertices, body.box_faces, THICKNESS)
    for item in range(2):
        face, _ = nearest_faces(points[item], posed[item], body.box_faces, THICKNESS, backend='brute')
        far = face < 0
        assert 0.2 < far.float().mean() < 0.95
        assert torch.equal(canonical[item, far], points[item, far])
        assert (canonical[item, ~far] != points[item, ~far]).any()


def reference_map(points: np.ndarray, posed: np.ndarray, canonical: np.ndarray, triangle: np.ndarray) -> np.ndarray:
    """The per-triangle map written out as in docs/method.md §5.4, one point at a time."""

    def frame(p0, p1, p2):
        e_x = (p1 - p0) / np.linalg.norm(p1 - p0)
        normal = np.cross(p1 - p0, p2 - p0)
        e_y = normal / np.linalg.norm(normal)
        return e_x, e_y, np.cross(e_x, e_y)

    result = []
    for x, corners in zip(points, triangle):
        posed_frame = frame(*posed[corners])
        coordinates = [np.dot(x - posed[corners[0]], axis) for axis in posed_frame]
        canonical_frame = frame(*canonical[corners])
        result.append(canonical[corners[0]] + sum(c * axis for c, axis in zip(coordinates, canonical_frame)))
    return np.array(result)


@pytest.mark.parametrize('backend', ['auto', 'lbvh', 'cuda', 'brute'])
def test_map_follows_the_nearest_triangle_formula(body, backend):
    pose = random_pose(6, batch_size=2, scale=0.5, dtype=torch.float64)
    body64 = BodyModel.embedded().double()
    posed = body64.pose(pose)
    points = (torch.rand(2, 200, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64) - 0.5) * 0.9
    canonical = canonicalize(points, posed, body64.canonical_vertices, body64.box_faces, THICKNESS, backend=backend)
    for item in range(2):
        face, _ = nearest_faces(points[item], posed[item], body64.box_faces, THICKNESS, backend=backend)
        near = face >= 0
        assert near.sum() > 40
        expected = reference_map(
            points[item, near].numpy(),
            posed[item].numpy(),
            body64.canonical_vertices[0].numpy(),
            body64.box_faces[face[near]].numpy(),
        )
        np.testing.assert_allclose(canonical[item, near].numpy(), expected, atol=1e-12, rtol=0)


def test_batch_items_are_independent(body):
    pose = random_pose(8, batch_size=3)
    posed = body.pose(pose)
    points = (torch.rand(3, 500, 3, generator=torch.Generator().manual_seed(9)) - 0.5) * 0.9
    together = canonicalize(points, posed, body.canonical_vertices, body.box_faces, THICKNESS)
    for item in range(3):
        alone = canonicalize(
            points[item : item + 1], posed[item : item + 1], body.canonical_vertices, body.box_faces, THICKNESS
        )
        assert torch.equal(together[item : item + 1], alone)


def test_mapping_all_points_equals_gathering_the_near_ones(body):
    # The fixed-shape map (CUDA's default: no host read) against the gathered one (the CPU's).
    pose = random_pose(40, batch_size=2)
    points = ((torch.rand(2, 400, 3, generator=torch.Generator().manual_seed(41)) - 0.5) * 0.9).requires_grad_(True)
    results = []
    for gather in (True, False):
        leaf = pose.clone().requires_grad_(True)
        mesh_map = PosedMeshMap(body.pose(leaf), body.canonical_vertices, body.box_faces, THICKNESS)
        faces = mesh_map.nearest_faces(points)
        assert 0 < (faces >= 0).sum() < faces.numel()
        canonical = mesh_map.apply(points, faces, gather=gather)
        results.append((canonical.detach(), *torch.autograd.grad((canonical * canonical).sum(), [leaf, points])))
    for gathered, fixed in zip(*results):
        torch.testing.assert_close(fixed, gathered, atol=1e-6, rtol=0)


def head_points(body: BodyModel, pose: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Points 1-10 cm off the centroids of head triangles of the posed body, each nearest to its
    own triangle's interior (so the nearest triangle does not change under tiny perturbations).

    pose [1, 6] -> [count, 3]
    """
    with torch.no_grad():
        posed = body.pose(pose)[0]
    faces = body.box_faces
    head = (joint_weight(body, lbs.HEAD_JOINT)[faces] > 0.5).all(dim=1).nonzero()[:, 0]
    generator = torch.Generator().manual_seed(seed)
    chosen = head[torch.randperm(len(head), generator=generator)[: 8 * count]]
    offsets = 0.01 + 0.09 * torch.rand(len(chosen), generator=generator, dtype=posed.dtype)
    points = points_off_faces(posed, faces[chosen], offsets)
    face, _ = nearest_faces(points, posed, faces, None, backend='brute')
    return points[face == chosen][:count]


@pytest.mark.parametrize('backend', ['auto', 'lbvh', 'cuda'])
def test_gradcheck_with_respect_to_the_pose_and_the_points(backend):
    body = BodyModel.embedded().double()
    pose = random_pose(10, scale=0.3, dtype=torch.float64)
    points = head_points(body, pose, count=6, seed=11)
    assert len(points) == 6

    def deform(pose, points):
        return canonicalize(
            points[None], body.pose(pose), body.canonical_vertices, body.box_faces, THICKNESS, backend=backend
        )

    inputs = (pose.clone().requires_grad_(True), points.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(deform, inputs, eps=1e-7, atol=1e-6)
    gradient = torch.autograd.grad(deform(*inputs).sum(), inputs[0])[0]
    assert gradient[0, 3:].abs().max() > 1e-3  # the head rotation moves these points


def test_lbvh_gives_the_brute_force_map_and_pose_gradient():
    # Points each nearest to one triangle's interior, so that no tie can pick another face.
    body = BodyModel.embedded().double()
    pose = random_pose(14, scale=0.4, dtype=torch.float64)
    points = head_points(body, pose, count=200, seed=15)[None]
    results = {}
    for backend in ('lbvh', 'brute'):
        leaf = pose.clone().requires_grad_(True)
        canonical = canonicalize(
            points, body.pose(leaf), body.canonical_vertices, body.box_faces, THICKNESS, backend=backend
        )
        results[backend] = canonical.detach(), torch.autograd.grad((canonical * points).sum(), leaf)[0]
    assert torch.equal(results['lbvh'][0], results['brute'][0])
    assert torch.equal(results['lbvh'][1], results['brute'][1])
    assert results['lbvh'][1].abs().max() > 1e-3


@requires_cuda
def test_posed_mesh_map_on_cuda_matches_the_cpu(body):
    # The faces found on CUDA are the CPU's or equally near ones (ties at shared edges and
    # vertices may go either way), and each point moves with its face's map as on the CPU.
    pose = random_pose(16, batch_size=2)
    points = (torch.rand(2, 4000, 3, generator=torch.Generator().manual_seed(17)) - 0.5) * 0.9
    posed = body.pose(pose)
    on_cpu = PosedMeshMap(posed, body.canonical_vertices, body.box_faces, THICKNESS)
    on_gpu = PosedMeshMap(posed.cuda(), body.canonical_vertices.cuda(), body.box_faces.cuda(), THICKNESS)
    faces_cpu = on_cpu.nearest_faces(points)
    faces_gpu = on_gpu.nearest_faces(points.cuda()).cpu()
    assert torch.equal(faces_gpu >= 0, faces_cpu >= 0) and (faces_cpu >= 0).float().mean() > 0.3
    corners = posed.double()[:, body.box_faces]  # [2, F, 3, 3]
    for item in range(2):
        near = (faces_cpu[item] >= 0).nonzero()[:, 0]
        squared = []
        for faces in (faces_cpu, faces_gpu):
            chosen = corners[item, faces[item, near]]
            squared.append(
                closest_point_on_faces(points[item, near].double(), chosen[:, 0], chosen[:, 1], chosen[:, 2])[1]
            )
        torch.testing.assert_close(squared[1], squared[0], atol=1e-6, rtol=0)
    mapped = on_gpu.apply(points.cuda(), faces_gpu.cuda()).cpu()
    torch.testing.assert_close(mapped, on_cpu.apply(points, faces_gpu), atol=1e-5, rtol=0)
    assert not torch.equal(mapped, points)


def test_deformer_poses_once_and_matches_canonicalize(body, monkeypatch):
    deformer = Deformer(body, thickness=THICKNESS)
    pose = random_pose(12, batch_size=2)
    generator = torch.Generator().manual_seed(13)
    coarse = (torch.rand(2, 700, 3, generator=generator) - 0.5) * 0.9
    fine = (torch.rand(2, 300, 3, generator=generator) - 0.5) * 0.9

    calls = []
    original_pose = body.pose
    monkeypatch.setattr(body, 'pose', lambda p: calls.append(p) or original_pose(p))
    deform = deformer.for_pose(pose)
    coarse_canonical, fine_canonical = deform(coarse), deform(fine)
    assert len(calls) == 1

    posed = original_pose(pose)
    assert torch.equal(
        coarse_canonical, canonicalize(coarse, posed, body.canonical_vertices, body.box_faces, THICKNESS)
    )
    assert torch.equal(fine_canonical, canonicalize(fine, posed, body.canonical_vertices, body.box_faces, THICKNESS))
    assert torch.equal(deformer(coarse, pose), coarse_canonical)


def test_gradients_reach_the_pose_through_the_deformer(body):
    deformer = Deformer(body)
    pose = random_pose(14, batch_size=2).requires_grad_(True)
    points = head_points(body, pose[:1].detach(), count=50, seed=15)[None].expand(2, -1, -1)
    deformer(points, pose).square().sum().backward()
    assert torch.isfinite(pose.grad).all() and (pose.grad[:, 3:].abs() > 0).all()


def test_empty_point_sets(body):
    pose = torch.zeros(2, 6)
    assert Deformer(body)(torch.zeros(2, 0, 3), pose).shape == (2, 0, 3)
    with pytest.raises(ValueError, match=r'points must be \[2, N, 3\]'):
        Deformer(body)(torch.zeros(3, 5, 3), pose)
