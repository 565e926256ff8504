"""Tests for training/body/nearest_face.py: the closest-point kernel against trimesh, the brute
force against an exhaustive oracle, and the accelerated searches (the C++ hierarchy 'bvh', fcpw,
the PyTorch-ops hierarchy 'lbvh' and the tree kernel 'cuda', on the CPU and on CUDA) against
the brute force. On the CPU, 'cuda' runs the kernel's walk compiled for the host."""

import numpy as np
import pytest
import torch
import trimesh

from tests.conftest import requires_cuda
from torch_utils import custom_ops
from training.body.body_model import BodyModel
from training.body.nearest_face import (
    NearestFaceSearch,
    _kernel_plugin,
    _LinearBoxTree,
    bvh_available,
    closest_point_on_faces,
    fcpw_available,
    nearest_faces,
    resolve_backend,
)

requires_fcpw = pytest.mark.skipif(not fcpw_available(), reason='fcpw is not installed (pip install fcpw==1.2.0)')
requires_bvh = pytest.mark.skipif(not bvh_available(), reason='the C++ nearest-face extension does not build here')
requires_kernel = pytest.mark.skipif(
    _kernel_plugin('cpu') is None, reason="the host build of the tree kernel ('cuda' backend) does not build here"
)
KERNEL = pytest.param('cuda', marks=requires_kernel)
ACCELERATED = [pytest.param('bvh', marks=requires_bvh), pytest.param('fcpw', marks=requires_fcpw), 'lbvh', KERNEL]
HIERARCHIES = [pytest.param('bvh', marks=requires_bvh), 'lbvh', KERNEL]

TIE = 1e-6  # squared distance within which two faces count as equally near


@pytest.fixture(scope='module')
def body():
    return BodyModel.embedded()


def bumpy_sphere(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A small closed mesh with uneven triangles: an icosphere with jittered vertices.

    -> vertices [V, 3] float64, faces [F, 3] int64 (320 faces)
    """
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    rng = np.random.default_rng(seed)
    vertices = sphere.vertices * rng.uniform(0.8, 1.2, size=(len(sphere.vertices), 1))
    return vertices, np.asarray(sphere.faces, dtype=np.int64)


def points_around(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int, spread: float) -> np.ndarray:
    """Half the points near the surface (triangle samples pushed off by up to 5 cm), half
    uniform in the bounding box widened by `spread`. -> [count, 3]"""
    rng = np.random.default_rng(seed)
    near = count // 2
    face = rng.integers(len(faces), size=near)
    bary = rng.dirichlet(np.ones(3), size=near)
    surface = np.einsum('nk,nkd->nd', bary, vertices[faces[face]])
    surface += rng.normal(scale=0.05 / np.sqrt(3), size=surface.shape)
    low, high = vertices.min(0) - spread, vertices.max(0) + spread
    return np.concatenate([surface, rng.uniform(low, high, size=(count - near, 3))])


def exhaustive_squared_distances(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Oracle: trimesh's closest point for every (point, face) pair. -> [N, F] float64"""
    triangles = np.broadcast_to(vertices[faces][None], (len(points), len(faces), 3, 3)).reshape(-1, 3, 3)
    queries = np.repeat(points, len(faces), axis=0)
    closest = trimesh.triangles.closest_point(triangles, queries)
    return ((queries - closest) ** 2).sum(-1).reshape(len(points), len(faces))


def face_squared_distance(
    points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, face_index: torch.Tensor
) -> torch.Tensor:
    """float64 squared distance of each point to the given face. -> [N]"""
    corners = vertices.double()[faces[face_index]]
    return closest_point_on_faces(points.double(), corners[:, 0], corners[:, 1], corners[:, 2])[1]


def assert_same_nearest(points, vertices, faces, max_distance, expected, actual):
    """`actual` (face_index, squared_distance) names the nearest face of `expected` or an equally near one."""
    expected_face, expected_sq = expected
    actual_face, actual_sq = actual
    assert actual_face.dtype == torch.long and actual_sq.dtype == points.dtype
    found = expected_face >= 0
    if max_distance is not None:
        # Only a point whose distance is within rounding of the cut-off may be found by one and not the other.
        boundary = (expected_sq - max_distance**2).abs() < TIE
        assert ((actual_face >= 0) == found)[~boundary].all()
        found &= actual_face >= 0
    else:
        assert found.all() and (actual_face >= 0).all()
    assert torch.isinf(actual_sq[actual_face < 0]).all()
    same = actual_face[found] == expected_face[found]
    gap = face_squared_distance(points[found], vertices, faces, actual_face[found]) - face_squared_distance(
        points[found], vertices, faces, expected_face[found]
    )
    assert (same | (gap.abs() < TIE)).all(), f'{(~same & (gap.abs() >= TIE)).sum()} different faces that are not ties'
    torch.testing.assert_close(actual_sq[found].double(), expected_sq[found].double(), atol=TIE, rtol=0)
    return same.float().mean().item()


def test_closest_point_matches_trimesh_in_every_region():
    rng = np.random.default_rng(0)
    triangles = rng.normal(size=(4000, 3, 3))
    # Points spread well beyond the triangles reach all three vertex and edge regions.
    points = triangles.mean(axis=1) + rng.normal(scale=1.5, size=(4000, 3))
    expected = trimesh.triangles.closest_point(triangles, points)
    corners = torch.from_numpy(triangles)
    closest, squared = closest_point_on_faces(torch.from_numpy(points), corners[:, 0], corners[:, 1], corners[:, 2])
    np.testing.assert_allclose(closest.numpy(), expected, atol=1e-12, rtol=0)
    np.testing.assert_allclose(squared.numpy(), ((points - expected) ** 2).sum(-1), atol=1e-12, rtol=0)

    bary = trimesh.triangles.points_to_barycentric(triangles, expected)
    zeros = (np.abs(bary) < 1e-9).sum(-1)
    assert (zeros == 0).sum() > 100 and (zeros == 1).sum() > 100 and (zeros == 2).sum() > 100


def test_closest_point_analytic_cases():
    triangle = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    points = torch.tensor(
        [
            [0.5, 0.5, 0.3],  # above the interior
            [-1.0, -1.0, 0.0],  # beyond vertex a
            [3.0, -1.0, 0.0],  # beyond vertex b
            [1.0, -2.0, 1.0],  # beyond edge ab
            [2.0, 2.0, 0.0],
        ],  # beyond edge bc
        dtype=torch.float64,
    )
    corners = triangle.expand(len(points), 3, 3)
    closest, squared = closest_point_on_faces(points, corners[:, 0], corners[:, 1], corners[:, 2])
    expected = torch.tensor(
        [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(closest, expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(
        squared, torch.tensor([0.09, 2.0, 2.0, 5.0, 2.0], dtype=torch.float64), atol=1e-15, rtol=0
    )


def test_closest_point_gradcheck():
    rng = np.random.default_rng(1)
    triangles = torch.from_numpy(rng.normal(size=(24, 3, 3)))
    points = triangles.mean(dim=1) + torch.from_numpy(rng.normal(scale=1.5, size=(24, 3)))
    inputs = [
        tensor.clone().requires_grad_(True) for tensor in (points, triangles[:, 0], triangles[:, 1], triangles[:, 2])
    ]
    assert torch.autograd.gradcheck(lambda *args: closest_point_on_faces(*args), inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize('max_distance', [None, 0.08])
def test_brute_force_matches_exhaustive_oracle(max_distance):
    vertices, faces = bumpy_sphere(seed=2)
    points = points_around(vertices, faces, 300, seed=3, spread=0.3)
    oracle = exhaustive_squared_distances(points, vertices, faces)
    nearest = oracle.min(axis=1)

    vertices_t, faces_t = torch.from_numpy(vertices), torch.from_numpy(faces)
    for chunk_size in (1, 1000, 1 << 20):
        face, squared = nearest_faces(
            torch.from_numpy(points), vertices_t, faces_t, max_distance, backend='brute', chunk_size=chunk_size
        )
        found = np.ones(len(points), bool) if max_distance is None else nearest < max_distance**2
        assert found.any() and (max_distance is None or not found.all())
        np.testing.assert_array_equal(face.numpy() >= 0, found)
        np.testing.assert_allclose(squared.numpy()[found], nearest[found], atol=1e-12, rtol=0)
        assert np.isinf(squared.numpy()[~found]).all()
        np.testing.assert_allclose(oracle[found, face.numpy()[found]], nearest[found], atol=1e-12, rtol=0)


def test_max_distance_is_a_strict_cut_off():
    # The far second triangle widens the bounding box, so the cut-off itself is tested.
    vertices = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [10.0, 10.0, 1.0], [11.0, 10.0, 1.0], [10.0, 11.0, 1.0]]
    )
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    points = torch.tensor([[0.25, 0.25, 0.25], [0.25, 0.25, 0.5], [0.25, 0.25, -0.75], [5.0, 5.0, 5.0]])
    for backend in ('brute',) + (('fcpw',) if fcpw_available() else ()) + (('bvh',) if bvh_available() else ()):
        face, squared = nearest_faces(points, vertices, faces, max_distance=0.5, backend=backend)
        assert face.tolist() == [0, -1, -1, -1]
        assert squared[0].item() == 0.0625 and torch.isinf(squared[1:]).all()


@pytest.mark.parametrize('backend', ACCELERATED)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('max_distance', [None, 0.1])
def test_accelerated_search_matches_brute_force_on_a_small_mesh(backend, dtype, max_distance):
    vertices, faces = bumpy_sphere(seed=4)
    points = torch.from_numpy(points_around(vertices, faces, 4000, seed=5, spread=0.5)).to(dtype)
    vertices_t, faces_t = torch.from_numpy(vertices).to(dtype), torch.from_numpy(faces)
    expected = nearest_faces(points, vertices_t, faces_t, max_distance, backend='brute')
    actual = nearest_faces(points, vertices_t, faces_t, max_distance, backend=backend)
    assert_same_nearest(points, vertices_t, faces_t, max_distance, expected, actual)


@pytest.mark.parametrize('backend', ACCELERATED)
@pytest.mark.parametrize('dtype, max_distance', [(torch.float32, 0.25), (torch.float64, None)])
def test_accelerated_search_matches_brute_force_on_the_posed_body(body, backend, dtype, max_distance):
    pose = 0.4 * torch.randn(1, 6, generator=torch.Generator().manual_seed(6))
    vertices = body.pose(pose)[0].to(dtype)
    faces = body.box_faces
    points = torch.from_numpy(points_around(vertices.double().numpy(), faces.numpy(), 2000, seed=7, spread=0.3)).to(
        dtype
    )
    expected = nearest_faces(points, vertices, faces, max_distance, backend='brute')
    actual = nearest_faces(points, vertices, faces, max_distance, backend=backend)
    same_fraction = assert_same_nearest(points, vertices, faces, max_distance, expected, actual)
    assert same_fraction > 0.3  # the rest are ties at shared vertices and edges
    if max_distance is not None:
        assert 0.2 < (expected[0] >= 0).float().mean() < 0.9


def test_search_structure_answers_repeated_queries(body):
    vertices = body.canonical_vertices[0]
    search = NearestFaceSearch(vertices, body.box_faces)
    points = torch.from_numpy(
        points_around(vertices.double().numpy(), body.box_faces.numpy(), 400, seed=8, spread=0.2)
    ).float()
    first = search.query(points[:200], 0.25)
    second = search.query(points[200:], 0.25)
    whole = nearest_faces(points, vertices, body.box_faces, 0.25)
    assert torch.equal(torch.cat([first[0], second[0]]), whole[0])
    assert torch.equal(torch.cat([first[1], second[1]]), whole[1])


@pytest.mark.parametrize('backend', ['brute', 'auto'])
def test_empty_inputs(backend):
    vertices = torch.rand(5, 3, dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [2, 3, 4]])
    face, squared = nearest_faces(torch.zeros(0, 3, dtype=torch.float64), vertices, faces, 0.25, backend)
    assert face.shape == (0,) and squared.shape == (0,) and squared.dtype == torch.float64
    face, squared = nearest_faces(
        torch.rand(4, 3), vertices.float(), torch.zeros(0, 3, dtype=torch.long), None, backend
    )
    assert face.tolist() == [-1] * 4 and torch.isinf(squared).all()


@pytest.mark.parametrize('backend', HIERARCHIES)
def test_hierarchies_match_brute_force_on_runs_of_ray_samples(body, backend):
    # The renderer's layout: consecutive points along rays, which the hierarchy's queries use as
    # hints for each other; rays pass through, near and beside the posed head and shoulders.
    generator = torch.Generator().manual_seed(9)
    vertices = body.pose(0.4 * torch.randn(1, 6, generator=generator))[0]
    origins = torch.tensor([0.0, 0.1, 2.7]) + 0.3 * torch.randn(64, 3, generator=generator)
    targets = 0.25 * torch.randn(64, 3, generator=generator)
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    depths = torch.linspace(2.2, 3.3, 40)
    points = (origins[:, None] + depths[None, :, None] * directions[:, None]).reshape(-1, 3)
    for max_distance in (0.25, None):
        expected = nearest_faces(points, vertices, body.box_faces, max_distance, backend='brute')
        actual = nearest_faces(points, vertices, body.box_faces, max_distance, backend=backend)
        assert_same_nearest(points, vertices, body.box_faces, max_distance, expected, actual)


def segment_squared_distances(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Oracle: squared distance of every point to every segment. points [N, 3], starts/ends [S, 3] -> [N, S]"""
    direction = ends - starts
    length = np.maximum((direction**2).sum(-1), 1e-300)
    offset = points[:, None] - starts[None]
    t = np.clip((offset * direction[None]).sum(-1) / length, 0, 1)
    return ((offset - t[..., None] * direction[None]) ** 2).sum(-1)


@pytest.mark.parametrize('backend', HIERARCHIES)
def test_hierarchies_handle_degenerate_and_coincident_triangles(backend):
    # Many copies of one triangle (identical centroids: the split falls back to a median cut),
    # zero-area triangles (a point, a segment with its third corner inside) and one far triangle.
    # Oracle: trimesh for the proper triangles, the nearest of the three edges for the flat ones.
    rng = np.random.default_rng(10)
    triangle = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]])
    point = np.array([[0.3, 0.3, 0.3]] * 3)
    segment = np.array([[-0.2, 0.0, 0.1], [0.2, 0.0, 0.1], [0.0, 0.0, 0.1]])
    corners = np.concatenate([np.repeat(triangle[None], 40, axis=0), point[None], segment[None], triangle[None] + 5.0])
    flat = [40, 41]
    vertices = torch.from_numpy(corners.reshape(-1, 3))
    faces = torch.arange(vertices.shape[0]).reshape(-1, 3)
    points = rng.uniform(-0.5, 0.8, size=(500, 3))
    oracle = exhaustive_squared_distances(points, corners.reshape(-1, 3), faces.numpy())
    for face in flat:
        edges = segment_squared_distances(points, corners[face, [0, 0, 1]], corners[face, [1, 2, 2]])
        oracle[:, face] = edges.min(axis=1)
    nearest = oracle.min(axis=1)
    for max_distance in (None, 0.2):
        face, squared = nearest_faces(torch.from_numpy(points), vertices, faces, max_distance, backend=backend)
        found = np.ones(len(points), bool) if max_distance is None else nearest < max_distance**2
        assert found.any() and (max_distance is None or not found.all())
        np.testing.assert_array_equal(face.numpy() >= 0, found)
        np.testing.assert_allclose(squared.numpy()[found], nearest[found], atol=TIE, rtol=0)
        np.testing.assert_allclose(oracle[found, face.numpy()[found]], nearest[found], atol=TIE, rtol=0)


def test_backend_resolution():
    expected_cpu = 'bvh' if bvh_available() else 'fcpw' if fcpw_available() else 'brute'
    assert resolve_backend('auto', torch.device('cpu')) == expected_cpu
    # CUDA tensors take the hierarchy in PyTorch ops.
    assert resolve_backend('auto', torch.device('cuda')) == 'lbvh'
    assert resolve_backend('brute', torch.device('cpu')) == 'brute'
    assert resolve_backend('lbvh', torch.device('cpu')) == 'lbvh'
    with pytest.raises(ValueError, match="'bvh' searches CPU tensors"):
        resolve_backend('bvh', torch.device('cuda'))
    with pytest.raises(ValueError, match='one of auto, bvh, fcpw, lbvh, cuda, brute'):
        resolve_backend('kdtree', torch.device('cpu'))


@requires_bvh
def test_bvh_of_every_width_matches_brute_force(body):
    # 'auto' builds the width this CPU runs fastest; the 4-lane form is the one for CPUs without AVX2.
    from training.body import nearest_face

    vertices = body.pose(0.3 * torch.randn(1, 6, generator=torch.Generator().manual_seed(11)))[0]
    faces = body.box_faces
    points = torch.from_numpy(
        points_around(vertices.double().numpy(), faces.numpy(), 3000, seed=12, spread=0.3)
    ).float()
    expected = nearest_faces(points, vertices, faces, 0.25, backend='brute')
    widths = [lanes for lanes in (4, 8) if lanes == 4 or {'avx2', 'fma'} <= custom_ops.cpu_flags()]
    for lanes in widths:
        plugin = nearest_face._bvh_plugin(lanes)
        assert plugin is not None, f'the {lanes}-lane extension does not build'
        face, squared = plugin.query(*plugin.build(vertices.double()[faces]), points, 0.25)
        assert_same_nearest(points, vertices, faces, 0.25, expected, (face, squared.float()))


@pytest.mark.parametrize('backend', ACCELERATED)
def test_accelerated_search_matches_brute_force_on_an_smpl_pickle_body(tmp_path, backend):
    # The second body-model source: an SMPL-format pickle read without chumpy. Its synthetic mesh
    # is a soup of long, crossing triangles, unlike the embedded body's surface.
    from tests.test_lbs import synthetic_smpl_arrays
    from tests.test_smpl_pickle import write_smpl_pickle

    path = str(tmp_path / 'SMPL_NEUTRAL.pkl')
    write_smpl_pickle(path, synthetic_smpl_arrays(num_vertices=300, seed=13))
    body = BodyModel.from_smpl_pickle(path)
    vertices = body.pose(0.5 * torch.randn(1, 6, generator=torch.Generator().manual_seed(14)))[0]
    faces = body.faces
    points = torch.from_numpy(
        points_around(vertices.double().numpy(), faces.numpy(), 3000, seed=15, spread=0.3)
    ).float()
    for max_distance in (0.25, None):
        expected = nearest_faces(points, vertices, faces, max_distance, backend='brute')
        actual = nearest_faces(points, vertices, faces, max_distance, backend=backend)
        assert_same_nearest(points, vertices, faces, max_distance, expected, actual)


def test_lbvh_on_points_exactly_on_vertices_and_edges(body):
    # Distance zero, where every face sharing the vertex or edge is a tie.
    vertices = body.pose(0.4 * torch.randn(1, 6, generator=torch.Generator().manual_seed(16)))[0]
    faces = body.box_faces
    corners = vertices[faces]
    rng = np.random.default_rng(17)
    picked = torch.from_numpy(rng.choice(len(faces), size=500, replace=False))
    t = torch.from_numpy(rng.uniform(size=(500, 1))).float()
    on_edges = corners[picked, 0] + t * (corners[picked, 1] - corners[picked, 0])
    points = torch.cat([vertices[faces[picked, 2]], on_edges])
    for max_distance in (0.25, None):
        expected = nearest_faces(points, vertices, faces, max_distance, backend='brute')
        actual = nearest_faces(points, vertices, faces, max_distance, backend='lbvh')
        assert_same_nearest(points, vertices, faces, max_distance, expected, actual)
        assert actual[1].max() < 1e-10


@pytest.mark.parametrize('leaf_size, branching', [(1, 2), (3, 5), (16, 16), (64, 2)])
def test_lbvh_of_any_shape_matches_brute_force(leaf_size, branching):
    # Deep and shallow trees, leaves and groups padded at the end, and a mesh smaller than one leaf.
    vertices, faces = bumpy_sphere(seed=18)
    vertices_t, faces_t = torch.from_numpy(vertices), torch.from_numpy(faces)
    points = torch.from_numpy(points_around(vertices, faces, 1500, seed=19, spread=0.4))
    for subset in (faces_t, faces_t[:37], faces_t[:1]):
        tree = _LinearBoxTree(vertices_t[subset], leaf_size, branching)
        for max_distance in (0.1, None):
            limit = float('inf') if max_distance is None else max_distance**2
            face = tree.nearest(points, limit)
            expected = nearest_faces(points, vertices_t, subset, max_distance, backend='brute')
            found = face >= 0
            squared = torch.full_like(points[:, 0], float('inf'))
            squared[found] = face_squared_distance(points[found], vertices_t, subset, face[found])
            if max_distance is not None:
                cut = squared >= limit
                face, squared = torch.where(cut, -1, face), torch.where(cut, float('inf'), squared)
            assert_same_nearest(points, vertices_t, subset, max_distance, expected, (face, squared))


@requires_cuda
def test_lbvh_on_cuda_matches_brute_force_on_the_cpu(body):
    vertices = body.pose(0.4 * torch.randn(1, 6, generator=torch.Generator().manual_seed(20)))[0]
    faces = body.box_faces
    points = torch.from_numpy(
        points_around(vertices.double().numpy(), faces.numpy(), 20000, seed=21, spread=0.3)
    ).float()
    assert resolve_backend('auto', torch.device('cuda')) == 'lbvh'
    for max_distance in (0.25, None):
        expected = nearest_faces(points, vertices, faces, max_distance, backend='brute')
        face, squared = nearest_faces(points.cuda(), vertices.cuda(), faces.cuda(), max_distance, backend='auto')
        assert face.is_cuda and squared.is_cuda
        assert_same_nearest(points, vertices, faces, max_distance, expected, (face.cpu(), squared.cpu()))


@pytest.mark.parametrize('backend', ['brute', 'lbvh'] + ACCELERATED[:2])
def test_non_finite_inputs_are_errors_not_crashes(body, backend):
    vertices, faces = body.canonical_vertices[0], body.box_faces
    points = torch.zeros(4, 3)
    for bad in (float('nan'), float('inf')):
        broken = vertices.clone()
        broken[faces[0, 0]] = bad
        with pytest.raises(ValueError, match='non-finite vertices'):
            nearest_faces(points, broken, faces, 0.25, backend=backend)
        with pytest.raises(ValueError, match='non-finite points'):
            nearest_faces(torch.tensor([[0.0, 0.0, 0.0], [bad, 0.0, 0.0]]), vertices, faces, 0.25, backend=backend)


@requires_bvh
def test_bvh_extension_refuses_non_finite_inputs():
    from training.body import nearest_face

    plugin = nearest_face._bvh_plugin()
    triangle = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    with pytest.raises(RuntimeError, match='non-finite vertices'):
        plugin.build(torch.where(torch.arange(9).reshape(1, 3, 3) == 4, float('nan'), triangle))
    tree = plugin.build(triangle)
    with pytest.raises(RuntimeError, match='must be finite'):
        plugin.query(*tree, torch.tensor([[0.2, 0.2, float('inf')]]), 0.25)


# ------------------------------------------------------------------------------------------------
# The tree kernel ('cuda'): its host build on the CPU, the CUDA kernel where a GPU is present.


@requires_kernel
def test_kernel_gives_non_finite_inputs_no_face_and_no_error(body):
    # The kernel reads no value on the host, so it cannot raise; NaN and inf meet no box.
    vertices, faces = body.canonical_vertices[0], body.box_faces
    points = torch.tensor([[0.0, 0.1, 0.0], [float('nan'), 0.0, 0.0], [0.0, float('inf'), 0.0]])
    face, squared = nearest_faces(points, vertices, faces, 0.25, backend='cuda')
    assert face[0] >= 0 and face[1:].tolist() == [-1, -1] and torch.isinf(squared[1:]).all()
    broken = vertices.clone()
    broken[faces[0, 0]] = float('nan')
    face, _ = nearest_faces(points[:1], broken, faces, 0.25, backend='cuda')
    assert face.shape == (1,)


@requires_kernel
@requires_bvh
def test_kernel_and_bvh_share_the_float64_distance(body):
    # Both measure the chosen face with nearest_face_math.h in float64: where they choose the
    # same face, the distances agree bit for bit.
    vertices = body.pose(0.4 * torch.randn(1, 6, generator=torch.Generator().manual_seed(30)))[0]
    points = torch.from_numpy(
        points_around(vertices.double().numpy(), body.box_faces.numpy(), 3000, seed=31, spread=0.3)
    ).float()
    kernel = nearest_faces(points, vertices, body.box_faces, None, backend='cuda')
    bvh = nearest_faces(points, vertices, body.box_faces, None, backend='bvh')
    same = kernel[0] == bvh[0]
    assert same.float().mean() > 0.5
    assert torch.equal(kernel[1][same], bvh[1][same])


@requires_kernel
def test_kernel_walks_trees_of_one_level_and_reports_a_too_deep_tree(monkeypatch):
    from training.body import nearest_face

    vertices, faces = bumpy_sphere(seed=32)
    vertices_t, faces_t = torch.from_numpy(vertices), torch.from_numpy(faces)
    points = torch.from_numpy(points_around(vertices, faces, 500, seed=33, spread=0.4))
    for subset in (faces_t[:1], faces_t[:7], faces_t[:16], faces_t[:17]):  # roots that are leaves, then one level
        expected = nearest_faces(points, vertices_t, subset, 0.1, backend='brute')
        actual = nearest_faces(points, vertices_t, subset, 0.1, backend='cuda')
        assert_same_nearest(points, vertices_t, subset, 0.1, expected, actual)
    monkeypatch.setattr(nearest_face, '_KERNEL_STACK_SIZE', 8)  # the real stack (64) holds any mesh of < 4^20 faces
    with pytest.raises(ValueError, match="too many faces for the tree kernel's stack"):
        _LinearBoxTree(vertices_t[faces_t], leaf_size=1, branching=8).flat()


@requires_kernel
def test_kernel_query_does_not_synchronize(body):
    from torch_utils.host_syncs import SyncCounter

    vertices = body.pose(0.3 * torch.randn(1, 6, generator=torch.Generator().manual_seed(34)))[0]
    points = torch.randn(1000, 3, generator=torch.Generator().manual_seed(35)) * 0.3
    with SyncCounter() as counter:
        search = NearestFaceSearch(vertices, body.box_faces, backend='cuda')
        search.query(points, 0.25)
    assert counter.syncs == []
    with SyncCounter() as counter:
        NearestFaceSearch(vertices, body.box_faces, backend='lbvh').query(points, 0.25)
    assert len(counter.syncs) > 0  # the PyTorch walk reads counts back: the counter sees it


@requires_cuda
def test_kernel_on_cuda_matches_brute_force_on_random_points():
    vertices, faces = bumpy_sphere(seed=36)
    points = torch.from_numpy(points_around(vertices, faces, 20000, seed=37, spread=0.5))
    for dtype in (torch.float32, torch.float64):
        vertices_t, faces_t, points_t = torch.from_numpy(vertices).to(dtype), torch.from_numpy(faces), points.to(dtype)
        assert resolve_backend('cuda', torch.device('cuda')) == 'cuda', 'the CUDA kernel did not build (see warning)'
        for max_distance in (0.1, None):
            expected = nearest_faces(points_t, vertices_t, faces_t, max_distance, backend='brute')
            face, squared = nearest_faces(
                points_t.cuda(), vertices_t.cuda(), faces_t.cuda(), max_distance, backend='cuda'
            )
            assert face.is_cuda and squared.is_cuda
            assert_same_nearest(points_t, vertices_t, faces_t, max_distance, expected, (face.cpu(), squared.cpu()))


@requires_cuda
@pytest.mark.parametrize('seed', [38, 39])
def test_kernel_on_cuda_matches_brute_force_on_posed_bodies(body, seed):
    generator = torch.Generator().manual_seed(seed)
    vertices = body.pose(0.4 * torch.randn(1, 6, generator=generator))[0]
    faces = body.box_faces
    points = torch.from_numpy(
        points_around(vertices.double().numpy(), faces.numpy(), 50000, seed=seed, spread=0.3)
    ).float()
    for max_distance in (0.25, None):
        expected = nearest_faces(points, vertices, faces, max_distance, backend='brute')
        face, squared = nearest_faces(points.cuda(), vertices.cuda(), faces.cuda(), max_distance, backend='cuda')
        assert_same_nearest(points, vertices, faces, max_distance, expected, (face.cpu(), squared.cpu()))
        host = nearest_faces(points, vertices, faces, max_distance, backend='cuda')  # the same walk on the host
        agree = (face.cpu() == host[0]).float().mean()
        assert agree > 0.999, f'the CUDA and the host walk disagree on {1 - agree:.2%} of the points'


def test_morton_codes_interleave_the_bits_of_x_y_z():
    from training.body.nearest_face import _morton_codes

    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    points[0], points[1] = 0.0, 1.0  # the corners of the box: codes 0 and all ones
    codes = _morton_codes(points, bits=10)
    low, high = points.min(0).values, points.max(0).values
    quantized = ((points - low) / (high - low) * 1023).round().long()
    expected = [
        sum(((int(q[axis]) >> bit) & 1) << (3 * bit + axis) for bit in range(10) for axis in range(3))
        for q in quantized
    ]
    assert codes.tolist() == expected and codes[0] == 0 and codes[1] == 2**30 - 1
