"""Exact nearest triangle of a mesh for many query points, and the closest point on a given triangle.

The deformation (deformation.py) needs, for every sample point, the nearest triangle of the
posed body mesh. The search is not differentiated (the choice is piecewise constant); the
closest point on the chosen triangle is recomputed in torch by `closest_point_on_faces`, which
is differentiable in the point and the triangle's vertices.

Back-ends, all exact (point-to-triangle distance with Ericson's region test, Real-Time
Collision Detection 5.1.5) and returning the same nearest triangle up to ties; a tie is
several triangles at the minimum distance (a shared vertex or edge), or for 'bvh' and fcpw,
which search in float32, triangles within float32 rounding of it (~1e-7 in squared distance):
- 'bvh': the project's own bounding-volume hierarchy in C++ (nearest_face_bvh.cpp, built
  with ninja on first use): a 4- or 8-wide tree searched with SIMD in float32 on all torch
  threads, each query starting from the previous point's face (sample points of a ray come
  in runs); the chosen face's distance is recomputed in float64 and decides the
  max_distance cut-off. Triangles flat to rounding are measured as their three edges. The
  fastest CPU back-end (benchmarks/deformation.py).
- 'fcpw': the fcpw library's BVH (a few ms to build on a posed body, so it is rebuilt per
  mesh); searches a float32 CPU copy, then the distance of the chosen triangle is recomputed
  in the input dtype and decides the max_distance cut-off.
- 'brute': every point against every triangle in chunks that bound memory; pure torch on any
  device. This is the CUDA path (a chunked brute force on the GPU) and the last fallback.
- 'auto': for CPU tensors 'bvh' when its extension builds, else 'fcpw' when it imports,
  else 'brute'; 'brute' for other devices.
"""

import operator
import os
import types

import numpy as np
import torch

from torch_utils import custom_ops

try:
    import fcpw
except ImportError:
    fcpw = None

BACKENDS = ('auto', 'bvh', 'fcpw', 'brute')


# fcpw searches in float32; widening its radius by this much keeps every face that is within
# max_distance in the input dtype, and the exact recomputed distance then decides.
_FCPW_RADIUS_MARGIN = 1e-4


def _region_coordinates(d1: torch.Tensor, d2: torch.Tensor, aa: torch.Tensor, ab_ac: torch.Tensor,
                        cc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates (v, w) of the closest point a + v*(b - a) + w*(c - a) of a triangle.

    d1 = (b - a).(p - a), d2 = (c - a).(p - a), aa = |b - a|^2, ab_ac = (b - a).(c - a),
    cc = |c - a|^2, all broadcastable to one shape S -> v [S], w [S]
    Ericson's Voronoi-region test in his order (vertex a, b, edge ab, vertex c, edge ac, edge
    bc, interior); the remaining dot products follow from the per-triangle constants. The
    region choice is not differentiated; within a region v and w are smooth.
    """
    d3 = d1 - aa
    d4 = d2 - ab_ac
    d5 = d1 - ab_ac
    d6 = d2 - cc
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    bc_1 = d4 - d3
    bc_2 = d5 - d6
    bb = aa - 2 * ab_ac + cc

    # Denominators of regions that are not selected can vanish (degenerate triangles); a
    # harmless 1 keeps NaN out of the values and out of the gradients through torch.where.
    def safe(denominator):
        return torch.where(denominator != 0, denominator, torch.ones_like(denominator))

    area = va + vb + vc
    v = vb / safe(area)
    w = vc / safe(area)

    zero = torch.zeros_like(v)
    one = torch.ones_like(v)
    t_bc = bc_1 / safe(bb)
    in_bc = (va <= 0) & (bc_1 >= 0) & (bc_2 >= 0)
    v = torch.where(in_bc, 1 - t_bc, v)
    w = torch.where(in_bc, t_bc, w)
    in_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    v = torch.where(in_ac, zero, v)
    w = torch.where(in_ac, d2 / safe(cc), w)
    in_c = (d6 >= 0) & (d5 <= d6)
    v = torch.where(in_c, zero, v)
    w = torch.where(in_c, one, w)
    in_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    v = torch.where(in_ab, d1 / safe(aa), v)
    w = torch.where(in_ab, zero, w)
    in_b = (d3 >= 0) & (d4 <= d3)
    v = torch.where(in_b, one, v)
    w = torch.where(in_b, zero, w)
    in_a = (d1 <= 0) & (d2 <= 0)
    v = torch.where(in_a, zero, v)
    w = torch.where(in_a, zero, w)
    return v, w


def closest_point_on_faces(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                           c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closest point of triangle (a[i], b[i], c[i]) to points[i], and the squared distance.

    points [N, 3], a [N, 3], b [N, 3], c [N, 3] -> closest [N, 3], squared_distance [N]
    Differentiable in the points and the vertices, with the Voronoi region held fixed.
    """
    ab = b - a
    ac = c - a
    ap = points - a
    v, w = _region_coordinates((ab * ap).sum(-1), (ac * ap).sum(-1), (ab * ab).sum(-1),
                               (ab * ac).sum(-1), (ac * ac).sum(-1))
    closest = a + v[:, None] * ab + w[:, None] * ac
    offset = points - closest
    return closest, (offset * offset).sum(-1)


def fcpw_available() -> bool:
    """Whether the fcpw package imports."""
    return fcpw is not None


def _bvh_plugin(lanes: int | None = None) -> types.ModuleType | None:
    """The C++ hierarchy, built on first use; None (after one warning) when it cannot be built.

    lanes: 8 (AVX2 and FMA, 1.3x faster here than 4 lanes on SSE2) or 4 (the baseline
    instruction set); None picks 8 when this CPU has AVX2 and FMA. Each width is its own module
    and build folder, so machines with different CPUs never share a build.
    """
    if lanes is None:
        lanes = 8 if {'avx2', 'fma'} <= custom_ops.cpu_flags() else 4
    flags = ['-O3', '-fopenmp', f'-DNEAREST_FACE_LANES={lanes}']
    if lanes == 8:
        flags += ['-mavx2', '-mfma']
    return custom_ops.get_plugin(f'nearest_face_bvh{lanes}_plugin', sources=['nearest_face_bvh.cpp'],
                                 source_dir=os.path.dirname(__file__), extra_cflags=flags,
                                 extra_ldflags=['-fopenmp'])


def bvh_available() -> bool:
    """Whether the C++ hierarchy builds and loads here (the first call may compile it: ~1 min)."""
    return _bvh_plugin() is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete back-end ('bvh', 'fcpw' or 'brute') that `backend` means for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f'nearest-face backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
    on_cpu = torch.device(device).type == 'cpu'
    if backend == 'auto':
        if not on_cpu:
            return 'brute'
        return 'bvh' if bvh_available() else 'fcpw' if fcpw is not None else 'brute'
    if backend == 'bvh' and not on_cpu:
        raise ValueError(f"nearest-face backend 'bvh' searches CPU tensors, got a mesh on {device}; "
                         "use backend='auto' or 'brute'")
    if backend == 'bvh' and not bvh_available():
        raise RuntimeError("nearest-face backend 'bvh': its C++ extension could not be built (see the warning "
                           "above); use backend='fcpw' or 'brute'")
    if backend == 'fcpw' and fcpw is None:
        raise ImportError("nearest-face backend 'fcpw': the fcpw package is not installed "
                          "(pip install fcpw==1.2.0), or use backend='brute'")
    return backend


class NearestFaceSearch:
    """The nearest-triangle search structure of one mesh, built once and queried many times.

    vertices [V, 3], faces [F, 3] (long) of any float dtype and device. The queries run under
    no_grad; `backend` as in `nearest_faces`; `chunk_size` bounds the point-triangle pairs that
    the brute force holds at once.
    """

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor, backend: str = 'auto',
                 chunk_size: int = 1 << 20):
        if vertices.dim() != 2 or vertices.shape[-1] != 3 or faces.dim() != 2 or faces.shape[-1] != 3:
            raise ValueError(f'nearest-face search: vertices must be [V, 3] and faces [F, 3], got '
                             f'{tuple(vertices.shape)} and {tuple(faces.shape)}')
        self.backend = resolve_backend(backend, vertices.device)
        self.chunk_size = int(chunk_size)
        with torch.no_grad():
            self.vertices = vertices.detach()
            self.faces = faces.to(device=vertices.device, dtype=torch.long)
            corners = self.vertices[self.faces]  # [F, 3, 3]
        self.scene = self.tree = None
        if self.backend == 'bvh':
            if self.faces.shape[0] > 0:
                self.tree = _bvh_plugin().build(corners.to(torch.float64))
            return
        # The brute force and fcpw need the per-face terms, the recomputation and the box pre-filter.
        with torch.no_grad():
            self.corners = corners
            self.a = corners[:, 0]
            self.ab = corners[:, 1] - self.a
            self.ac = corners[:, 2] - self.a
            self.face_min = corners.min(1).values
            self.face_max = corners.max(1).values
            if self.faces.shape[0] > 0:
                self.box_min, self.box_max = self.face_min.min(0).values, self.face_max.max(0).values
        if self.backend == 'fcpw' and self.faces.shape[0] > 0:
            self.scene = fcpw.scene_3D()
            self.scene.set_object_count(1)
            self.scene.set_object_vertices(np.asfortranarray(self.vertices.cpu().numpy(), dtype=np.float32), 0)
            self.scene.set_object_triangles(np.asfortranarray(self.faces.cpu().numpy(), dtype=np.int32), 0)
            self.scene.build(fcpw.aggregate_type.bvh_surface_area, True)

    @torch.no_grad()
    def query(self, points: torch.Tensor, max_distance: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest triangle of each point.

        points [N, 3] -> face_index [N] (long), squared_distance [N] (the dtype of points)
        A face counts only if its distance is below `max_distance`; points with none get
        face_index -1 and squared_distance inf. Ties (several faces at the same distance) may
        resolve to any of them.
        """
        if points.dim() != 2 or points.shape[-1] != 3:
            raise ValueError(f'nearest-face query: points must be [N, 3], got {tuple(points.shape)}')
        points = points.detach().to(self.vertices.device)
        if self.tree is not None:
            # The extension computes the chosen face's distance in float64 and applies the cut-off.
            face, squared = _bvh_plugin().query(*self.tree, points, -1.0 if max_distance is None else float(max_distance))
            return face, squared.to(points.dtype)
        num_points = points.shape[0]
        face_index = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
        squared_distance = torch.full((num_points,), float('inf'), dtype=points.dtype, device=points.device)
        if num_points == 0 or self.faces.shape[0] == 0:
            return face_index, squared_distance

        # The distance to the mesh's bounding box is a lower bound of the distance to the mesh.
        candidates = None
        if max_distance is not None:
            outside = ((self.box_min.to(points.dtype) - points).clamp(min=0)
                       + (points - self.box_max.to(points.dtype)).clamp(min=0))
            candidates = ((outside * outside).sum(-1) < max_distance * max_distance).nonzero()[:, 0]
            points = points[candidates]
            if points.shape[0] == 0:
                return face_index, squared_distance

        if self.backend == 'fcpw':
            found = self._query_fcpw(points, max_distance)
        else:
            found = self._query_brute(points, max_distance)
        hit = (found >= 0).nonzero()[:, 0]
        face = found[hit]
        corners = self.corners.to(points.dtype)[face]
        _, squared = closest_point_on_faces(points[hit], corners[:, 0], corners[:, 1], corners[:, 2])
        if max_distance is not None:
            inside = (squared < max_distance * max_distance).nonzero()[:, 0]
            hit, face, squared = hit[inside], face[inside], squared[inside]
        if candidates is not None:
            hit = candidates[hit]
        return face_index.index_copy(0, hit, face), squared_distance.index_copy(0, hit, squared)

    def _query_fcpw(self, points: torch.Tensor, max_distance: float | None) -> torch.Tensor:
        """points [N, 3] -> nearest face [N] (long, -1 beyond the search radius)"""
        query = np.asfortranarray(points.cpu().numpy(), dtype=np.float32)
        if max_distance is None:
            squared_radius = np.finfo(np.float32).max
        else:
            squared_radius = (max_distance + _FCPW_RADIUS_MARGIN) ** 2
        interactions = fcpw.interaction_3D_list()
        self.scene.find_closest_points(query, np.full(query.shape[0], squared_radius, dtype=np.float32),
                                       interactions)
        # The binding returns a list of records without an array view; attrgetter reads the
        # indices without running Python code per record.
        index = np.fromiter(map(operator.attrgetter('primitive_index'), interactions), dtype=np.int64,
                            count=query.shape[0])
        return torch.from_numpy(index).to(points.device)

    def _query_brute(self, points: torch.Tensor, max_distance: float | None) -> torch.Tensor:
        """points [N, 3] -> nearest face [N] (long; -1 where no face is within max_distance)

        Every point against every triangle, in chunks of consecutive points. With a
        max_distance, a chunk skips the triangles whose bounding box is that far from the
        chunk's bounding box (sample points along rays come in coherent runs).
        """
        dtype = points.dtype
        a, ab, ac = self.a.to(dtype), self.ab.to(dtype), self.ac.to(dtype)
        face_min, face_max = self.face_min.to(dtype), self.face_max.to(dtype)
        num_faces = a.shape[0]
        step = max(1, self.chunk_size // num_faces)
        result = torch.full((points.shape[0],), -1, dtype=torch.long, device=points.device)
        for start in range(0, points.shape[0], step):
            chunk = points[start:start + step]
            if max_distance is None:
                chosen = None
                squared = _pairwise_squared_distance(chunk, a, ab, ac)
            else:
                gap = ((face_min - chunk.max(0).values).clamp(min=0)
                       + (chunk.min(0).values - face_max).clamp(min=0))
                chosen = ((gap * gap).sum(-1) < max_distance * max_distance).nonzero()[:, 0]
                if chosen.numel() == 0:
                    continue
                squared = _pairwise_squared_distance(chunk, a[chosen], ab[chosen], ac[chosen])
            nearest = squared.argmin(dim=1)
            result[start:start + step] = nearest if chosen is None else chosen[nearest]
        return result


def _pairwise_squared_distance(points: torch.Tensor, a: torch.Tensor, ab: torch.Tensor,
                               ac: torch.Tensor) -> torch.Tensor:
    """Squared distance of every point to every triangle (a, a + ab, a + ac).

    points [N, 3], a [F, 3], ab [F, 3], ac [F, 3] -> [N, F]
    The closest point is the projection onto the plane when that falls inside the triangle,
    otherwise the nearest of the three edges; the dot products with (p - a) come from matrix
    products, so the values carry cancellation error of order eps * |p - a|^2 (they only choose
    the face; the caller recomputes the chosen face's distance directly).
    """
    normal = torch.linalg.cross(ab, ac, dim=-1)
    nn = (normal * normal).sum(-1)
    aa = (ab * ab).sum(-1)
    ab_ac = (ab * ac).sum(-1)
    cc = (ac * ac).sum(-1)
    bc = ac - ab
    bb = (bc * bc).sum(-1)
    one = torch.ones_like(aa)

    directions = torch.stack([ab, ac, normal], dim=1)  # [F, 3, 3]
    products = (points @ directions.reshape(-1, 3).T).view(points.shape[0], -1, 3) \
        - (a[:, None] * directions).sum(-1)
    d1, d2, dn = products.unbind(-1)  # (p - a).ab, (p - a).ac, (p - a).n: [N, F]
    ap_ap = (points * points).sum(-1, keepdim=True) - 2 * (points @ a.T) + (a * a).sum(-1)

    # Barycentric coordinates of the projection, times |n|^2.
    w_b = d1 * cc - d2 * ab_ac
    w_c = d2 * aa - d1 * ab_ac
    inside = (w_b >= 0) & (w_c >= 0) & (w_b + w_c <= nn) & (nn > 0)
    plane = dn * dn / torch.where(nn > 0, nn, one)

    def segment(dot, length_sq, start_sq):
        t = (dot / torch.where(length_sq > 0, length_sq, one)).clamp(0, 1)
        return start_sq - t * (2 * dot - t * length_sq)

    # Edge bc seen from b: (p - b).(c - b) and |p - b|^2 from the same products.
    bp_bc = d2 - d1 - ab_ac + aa
    bp_bp = ap_ap - 2 * d1 + aa
    edges = torch.minimum(torch.minimum(segment(d1, aa, ap_ap), segment(d2, cc, ap_ap)),
                          segment(bp_bc, bb, bp_bp))
    return torch.where(inside, plane, edges)


def nearest_faces(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor,
                  max_distance: float | None = None, backend: str = 'auto',
                  chunk_size: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest triangle of a mesh for each point (no gradients).

    points [N, 3], vertices [V, 3], faces [F, 3] -> face_index [N] (long, -1 where no face is
    closer than max_distance), squared_distance [N] (inf where face_index is -1)
    backend: 'auto', 'fcpw' or 'brute' (see the module docstring); chunk_size bounds the
    point-triangle pairs of the brute force held at once.
    """
    return NearestFaceSearch(vertices, faces, backend, chunk_size).query(points, max_distance)
