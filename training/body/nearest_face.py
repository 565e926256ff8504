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
- 'lbvh': a shallow bounding-box hierarchy over runs of faces in Z-order (a linear BVH),
  built per mesh and searched breadth-first for all points at once, in PyTorch ops on the
  mesh's device: boxes prune (point, node) pairs against an upper bound of each point's
  distance, then the faces of the surviving leaves are measured exactly. The search for
  CUDA tensors (no custom kernel).
- 'cuda': the tree of 'lbvh', built the same way per mesh on its device, walked by a kernel
  with one thread per point, nearest box first (nearest_face_kernel.cu, nearest_face_math.h;
  JIT-built with ninja on first use). It reads no value back to the host, so a query does not
  synchronize a CUDA device, and it returns fixed-size outputs: a non-finite point or mesh
  gives face -1 instead of an error. The search runs in the points' dtype; the chosen face's
  distance is recomputed in float64 (the triangle code is shared with 'bvh') and decides the
  max_distance cut-off. CPU tensors run the same walk compiled for the host (how its code is
  tested without a GPU). Opt-in: it has not yet run on a GPU. Where it cannot be built, one
  warning, then 'lbvh'.
- 'brute': every point against every triangle in chunks that bound memory; pure torch on any
  device. The reference and the last fallback.
- 'auto': for CPU tensors 'bvh' when its extension builds, else 'fcpw' when it imports,
  else 'lbvh'; 'lbvh' for other devices.
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


class NonFinitePointsError(ValueError):
    """A query point is NaN or inf: whatever computed it (a pose, a ray sample from a non-finite density) overflowed."""


BACKENDS = ('auto', 'bvh', 'fcpw', 'lbvh', 'cuda', 'brute')


# Entries of the tree kernel's stack per thread (kStackSize in nearest_face_math.h).
_KERNEL_STACK_SIZE = 64

# fcpw searches in float32; widening its radius by this much keeps every face that is within
# max_distance in the input dtype, and the exact recomputed distance then decides.
_FCPW_RADIUS_MARGIN = 1e-4


def _region_coordinates(
    d1: torch.Tensor, d2: torch.Tensor, aa: torch.Tensor, ab_ac: torch.Tensor, cc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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


def closest_point_on_faces(
    points: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closest point of triangle (a[i], b[i], c[i]) to points[i], and the squared distance.

    points [N, 3], a [N, 3], b [N, 3], c [N, 3] -> closest [N, 3], squared_distance [N]
    Differentiable in the points and the vertices, with the Voronoi region held fixed.
    """
    ab = b - a
    ac = c - a
    ap = points - a
    v, w = _region_coordinates(
        (ab * ap).sum(-1), (ac * ap).sum(-1), (ab * ab).sum(-1), (ab * ac).sum(-1), (ac * ac).sum(-1)
    )
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
    return custom_ops.get_plugin(
        f'nearest_face_bvh{lanes}_plugin',
        sources=['nearest_face_bvh.cpp'],
        headers=['nearest_face_math.h'],
        source_dir=os.path.dirname(__file__),
        extra_cflags=flags,
        extra_ldflags=['-fopenmp'],
    )


def _kernel_plugin(device_type: str, require_device: bool = True) -> types.ModuleType | None:
    """The tree kernel, built on first use: with its CUDA kernel for 'cuda', the host walk alone for 'cpu'.

    require_device: as in custom_ops.get_plugin (False builds the CUDA form without a visible GPU).
    None (after one warning) when it cannot be built.
    """
    source_dir = os.path.dirname(__file__)
    headers = ['nearest_face_math.h']
    if device_type == 'cuda':
        return custom_ops.get_plugin(
            'nearest_face_kernel_cuda_plugin',
            sources=['nearest_face_kernel.cpp', 'nearest_face_kernel.cu'],
            headers=headers,
            source_dir=source_dir,
            require_device=require_device,
            extra_cflags=['-O3', '-DNEAREST_FACE_WITH_CUDA'],
            extra_cuda_cflags=['-O3'],
        )
    return custom_ops.get_plugin(
        'nearest_face_kernel_host_plugin',
        sources=['nearest_face_kernel.cpp'],
        headers=headers,
        source_dir=source_dir,
        extra_cflags=['-O3', '-fopenmp'],
        extra_ldflags=['-fopenmp'],
    )


def _plugin(require_device: bool = True) -> types.ModuleType | None:
    """The CUDA form of the tree kernel (the op-module convention of benchmarks/build_cuda_ops.sh)."""
    return _kernel_plugin('cuda', require_device)


def bvh_available() -> bool:
    """Whether the C++ hierarchy builds and loads here (the first call may compile it: ~1 min)."""
    return _bvh_plugin() is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete back-end ('bvh', 'fcpw', 'lbvh', 'cuda' or 'brute') that `backend` means for tensors on `device`.

    'cuda' becomes 'lbvh' where its kernel cannot be built (after the plugin's one-line warning).
    """
    if backend not in BACKENDS:
        raise ValueError(f'nearest-face backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
    on_cpu = torch.device(device).type == 'cpu'
    if backend == 'cuda':
        return 'cuda' if _kernel_plugin(torch.device(device).type) is not None else 'lbvh'
    if backend == 'auto':
        if not on_cpu:
            return 'lbvh'
        return 'bvh' if bvh_available() else 'fcpw' if fcpw is not None else 'lbvh'
    if backend == 'bvh' and not on_cpu:
        raise ValueError(
            f"nearest-face backend 'bvh' searches CPU tensors, got a mesh on {device}; use backend='auto' or 'lbvh'"
        )
    if backend == 'bvh' and not bvh_available():
        raise RuntimeError(
            "nearest-face backend 'bvh': its C++ extension could not be built (see the warning "
            "above); use backend='fcpw' or 'lbvh'"
        )
    if backend == 'fcpw' and fcpw is None:
        raise ImportError(
            "nearest-face backend 'fcpw': the fcpw package is not installed "
            "(pip install fcpw==1.2.0), or use backend='lbvh'"
        )
    return backend


class NearestFaceSearch:
    """The nearest-triangle search structure of one mesh, built once and queried many times.

    vertices [V, 3], faces [F, 3] (long) of any float dtype and device. The queries run under
    no_grad; `backend` as in `nearest_faces`; `chunk_size` bounds the point-triangle pairs that
    the brute force holds at once; 'lbvh' walks chunk_size / 64 points at once on the CPU and
    chunk_size / 4 on other devices (its peak is about 15 KB per point on the embedded body).
    """

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor, backend: str = 'auto', chunk_size: int = 1 << 20):
        if vertices.dim() != 2 or vertices.shape[-1] != 3 or faces.dim() != 2 or faces.shape[-1] != 3:
            raise ValueError(
                f'nearest-face search: vertices must be [V, 3] and faces [F, 3], got '
                f'{tuple(vertices.shape)} and {tuple(faces.shape)}'
            )
        self.backend = resolve_backend(backend, vertices.device)
        # The kernel reads no value on the host (a check would synchronize a CUDA device): a
        # non-finite mesh gives face -1 for every point there.
        if self.backend != 'cuda' and not torch.isfinite(vertices).all():
            raise ValueError(
                'nearest-face search: the mesh has non-finite vertices (NaN or inf); a body pose or '
                'shape with NaN or inf poses it so'
            )
        self.chunk_size = int(chunk_size)
        with torch.no_grad():
            self.vertices = vertices.detach()
            self.faces = faces.to(device=vertices.device, dtype=torch.long)
            corners = self.vertices[self.faces]  # [F, 3, 3]
        self.scene = self.tree = self.box_tree = self.flat_tree = None
        if self.backend == 'cuda':
            if self.faces.shape[0] > 0:
                self.flat_tree = _LinearBoxTree(corners).flat()
            return
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
        if self.backend == 'lbvh' and self.faces.shape[0] > 0:
            self.box_tree = _LinearBoxTree(corners)
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
        if self.backend == 'cuda':
            return self._query_kernel(points.detach().to(self.vertices.device), max_distance)
        if not torch.isfinite(points).all():
            raise NonFinitePointsError('nearest-face query: non-finite points (NaN or inf)')
        points = points.detach().to(self.vertices.device)
        if self.tree is not None:
            # The extension computes the chosen face's distance in float64 and applies the cut-off.
            face, squared = _bvh_plugin().query(
                *self.tree, points, -1.0 if max_distance is None else float(max_distance)
            )
            return face, squared.to(points.dtype)
        num_points = points.shape[0]
        face_index = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
        squared_distance = torch.full((num_points,), float('inf'), dtype=points.dtype, device=points.device)
        if num_points == 0 or self.faces.shape[0] == 0:
            return face_index, squared_distance

        # The distance to the mesh's bounding box is a lower bound of the distance to the mesh.
        candidates = None
        if max_distance is not None:
            outside = (self.box_min.to(points.dtype) - points).clamp(min=0) + (
                points - self.box_max.to(points.dtype)
            ).clamp(min=0)
            candidates = ((outside * outside).sum(-1) < max_distance * max_distance).nonzero()[:, 0]
            points = points[candidates]
            if points.shape[0] == 0:
                return face_index, squared_distance

        if self.backend == 'fcpw':
            found = self._query_fcpw(points, max_distance)
        elif self.backend == 'lbvh':
            found = self._query_lbvh(points, max_distance)
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

    def _query_kernel(self, points: torch.Tensor, max_distance: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """points [N, 3] -> face [N] (long, -1 where none is within max_distance), squared distance [N] (inf there)

        Fixed-size outputs and no host reads (see the module docstring); a non-finite point gets -1.
        """
        if self.flat_tree is None:
            return (
                torch.full((points.shape[0],), -1, dtype=torch.long, device=points.device),
                torch.full((points.shape[0],), float('inf'), dtype=points.dtype, device=points.device),
            )
        search_dtype = points.dtype if points.dtype in (torch.float32, torch.float64) else torch.float32
        tree = self.flat_tree
        face, squared = _kernel_plugin(points.device.type).query(
            tree['boxes'].to(search_dtype),
            tree['children'],
            tree['leaf_faces'],
            tree['corners'].to(search_dtype),
            tree['corners64'],
            points.to(search_dtype),
            tree['num_roots'],
            -1.0 if max_distance is None else float(max_distance),
        )
        return face, squared.to(points.dtype)

    def _query_fcpw(self, points: torch.Tensor, max_distance: float | None) -> torch.Tensor:
        """points [N, 3] -> nearest face [N] (long, -1 beyond the search radius)"""
        query = np.asfortranarray(points.cpu().numpy(), dtype=np.float32)
        if max_distance is None:
            squared_radius = np.finfo(np.float32).max
        else:
            squared_radius = (max_distance + _FCPW_RADIUS_MARGIN) ** 2
        interactions = fcpw.interaction_3D_list()
        self.scene.find_closest_points(query, np.full(query.shape[0], squared_radius, dtype=np.float32), interactions)
        # The binding returns a list of records without an array view; attrgetter reads the
        # indices without running Python code per record.
        index = np.fromiter(
            map(operator.attrgetter('primitive_index'), interactions), dtype=np.int64, count=query.shape[0]
        )
        return torch.from_numpy(index).to(points.device)

    def _query_lbvh(self, points: torch.Tensor, max_distance: float | None) -> torch.Tensor:
        """points [N, 3] -> nearest face [N] (long; -1 or a face beyond max_distance where none is within it)"""
        tree_points = points.to(self.box_tree.a.dtype)
        limit = float('inf') if max_distance is None else max_distance * max_distance
        step = max(1, self.chunk_size // (64 if points.device.type == 'cpu' else 4))
        return torch.cat(
            [
                self.box_tree.nearest(tree_points[start : start + step], limit)
                for start in range(0, points.shape[0], step)
            ]
        )

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
            chunk = points[start : start + step]
            if max_distance is None:
                chosen = None
                squared = _pairwise_squared_distance(chunk, a, ab, ac)
            else:
                gap = (face_min - chunk.max(0).values).clamp(min=0) + (chunk.min(0).values - face_max).clamp(min=0)
                chosen = ((gap * gap).sum(-1) < max_distance * max_distance).nonzero()[:, 0]
                if chosen.numel() == 0:
                    continue
                squared = _pairwise_squared_distance(chunk, a[chosen], ab[chosen], ac[chosen])
            nearest = squared.argmin(dim=1)
            result[start : start + step] = nearest if chosen is None else chosen[nearest]
        return result


class _LinearBoxTree:
    """A shallow bounding-box hierarchy over faces sorted along a Z-order curve, searched in PyTorch ops.

    The faces are ordered by the Morton code of their centroids, so that runs of consecutive
    faces are spatial neighbours; leaves are runs of `leaf_size` faces, and each level above
    groups `branching` consecutive nodes of the level below. Each node keeps its box and one
    point on the mesh (a face centroid), whose distance bounds the nearest distance from
    above. A query walks all points down the levels at once: the (point, node) pairs whose
    box is not farther than the point's best bound so far are expanded to the node's
    children, and at the leaves every face of the surviving leaves is measured exactly. The
    pruning only drops nodes that cannot hold a nearer face than one already bounded, so the
    answer is the brute force's (up to ties); the margin on the comparisons only adds pairs.

    corners [F, 3, 3] of any float dtype and device; everything stays on that device.
    """

    def __init__(self, corners: torch.Tensor, leaf_size: int = 4, branching: int = 4):
        device = corners.device
        num_faces = corners.shape[0]
        face_min, face_max = corners.min(1).values, corners.max(1).values
        centroids = corners.mean(1)
        order = torch.argsort(_morton_codes(centroids), stable=True)

        num_leaves = -(-num_faces // leaf_size)
        padding = torch.full((num_leaves * leaf_size - num_faces,), -1, dtype=torch.long, device=device)
        self.leaf_faces = torch.cat([order, padding]).view(num_leaves, leaf_size)  # [L, leaf_size], -1 = none
        filled = _filled_rows(self.leaf_faces)
        boxes = [(face_min[filled].amin(1), face_max[filled].amax(1), centroids[filled[:, leaf_size // 2]])]
        children = [None]
        while boxes[-1][0].shape[0] > branching:
            low, high, anchor = boxes[-1]
            count = low.shape[0]
            groups = -(-count // branching)
            padding = torch.full((groups * branching - count,), -1, dtype=torch.long, device=device)
            members = torch.cat([torch.arange(count, device=device), padding]).view(groups, branching)
            present = _filled_rows(members)
            boxes.append((low[present].amin(1), high[present].amax(1), anchor[present[:, branching // 2]]))
            children.append(members)
        self.boxes = boxes  # per level, leaves first: box min [M, 3], box max [M, 3], anchor [M, 3]
        self.children = children  # per level: child nodes [M, branching] of the level below, -1 = none

        slot_corners = corners[filled].reshape(-1, 3, 3)  # [L * leaf_size, 3, 3]
        self.a = slot_corners[:, 0]
        self.ab = slot_corners[:, 1] - self.a
        self.ac = slot_corners[:, 2] - self.a
        self.terms = _face_terms(self.ab, self.ac)
        # The margin of the pruning comparisons, in squared distance: a few units of rounding of
        # squared distances at the scale of the mesh, plus a relative part for large distances.
        # (A 0-d tensor: reading it on the host would synchronize a CUDA device.)
        scale = (face_max.max(0).values - face_min.min(0).values).square().sum().clamp(min=1.0)
        self.absolute_margin = 64 * torch.finfo(corners.dtype).eps * scale
        self.corners = corners
        self.relative_margin = 64 * torch.finfo(corners.dtype).eps

    def nearest(self, points: torch.Tensor, limit: float) -> torch.Tensor:
        """points [N, 3] (the tree's dtype) -> nearest face [N] (long)

        Faces at a squared distance above `limit` (inf: none) may be left out: a point whose
        nearest face is that far gets -1 or some face beyond the limit.
        """
        num_points = points.shape[0]
        device = points.device
        bound = torch.full((num_points,), float(limit), dtype=points.dtype, device=device)
        low, high, anchor = self.boxes[-1]
        point_ids = torch.arange(num_points, device=device).repeat_interleave(low.shape[0])
        nodes = torch.arange(low.shape[0], device=device).repeat(num_points)
        for level in range(len(self.boxes) - 1, -1, -1):
            if level < len(self.boxes) - 1:
                members = self.children[level + 1][nodes]  # [P, branching]
                valid = members >= 0
                point_ids = point_ids[:, None].expand_as(members)[valid]
                nodes = members[valid]
            low, high, anchor = self.boxes[level]
            queries = points[point_ids]
            gap = (low[nodes] - queries).clamp(min=0) + (queries - high[nodes]).clamp(min=0)
            lower = gap.square().sum(-1)
            bound.scatter_reduce_(0, point_ids, (queries - anchor[nodes]).square().sum(-1), 'amin')
            keep = lower <= bound[point_ids] * (1 + self.relative_margin) + self.absolute_margin
            point_ids, nodes = point_ids[keep], nodes[keep]

        # Every face of the surviving leaves, measured exactly.
        point_ids, faces, squared = self._measure_leaves(points, point_ids, nodes)

        # The nearest face of each point; on equal distances the lowest face index.
        best = torch.full((num_points,), float('inf'), dtype=points.dtype, device=device)
        best.scatter_reduce_(0, point_ids, squared, 'amin')
        chosen = torch.where((squared == best[point_ids]) & (faces >= 0), faces, torch.full_like(faces, 1 << 62))
        result = torch.full((num_points,), 1 << 62, dtype=torch.long, device=device)
        result.scatter_reduce_(0, point_ids, chosen, 'amin')
        return torch.where(result == 1 << 62, torch.full_like(result, -1), result)

    def flat(self) -> dict:
        """The tree as the arrays of the tree kernel (nearest_face_math.h, BoxTree), on the tree's device.

        -> boxes [M, 6] (low, high; the levels from the roots down, the leaves last), children
        [M, branching] (int32 node indices, -1 none; unused for leaves), leaf_faces [L, leaf_size]
        (long, -1 none), corners [F, 9] (the tree's dtype), corners64 [F, 9] (float64), num_roots (int)
        """
        levels = list(range(len(self.boxes) - 1, -1, -1))  # top level first
        offsets, total = {}, 0
        for level in levels:
            offsets[level] = total
            total += self.boxes[level][0].shape[0]
        branching = max(children.shape[1] for children in self.children[1:]) if len(self.boxes) > 1 else 1
        stack_entries = (len(self.boxes) - 1) * (branching - 1) + self.boxes[-1][0].shape[0]
        if stack_entries > _KERNEL_STACK_SIZE:
            raise ValueError(
                f"nearest-face search: the mesh has too many faces for the tree kernel's stack "
                f"({stack_entries} > {_KERNEL_STACK_SIZE} entries); use backend 'lbvh'"
            )
        boxes, children = [], []
        for level in levels:
            low, high, _ = self.boxes[level]
            boxes.append(torch.cat([low, high], dim=1))
            count = low.shape[0]
            if level == 0:
                children.append(torch.full((count, branching), -1, dtype=torch.int32, device=low.device))
            else:
                members = self.children[level]
                global_index = torch.where(members >= 0, members + offsets[level - 1], -1)
                children.append(global_index.to(torch.int32))
        return dict(
            boxes=torch.cat(boxes),
            children=torch.cat(children),
            leaf_faces=self.leaf_faces,
            corners=self.corners.reshape(-1, 9),
            corners64=self.corners.reshape(-1, 9).to(torch.float64),
            num_roots=self.boxes[-1][0].shape[0],
        )

    def _measure_leaves(
        self, points: torch.Tensor, point_ids: torch.Tensor, leaves: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exact squared distance of points to every face of given leaves.

        points [N, 3], point_ids [P], leaves [P] -> point id [P * S], face [P * S] (long, -1
        for an empty slot), squared distance [P * S] (inf for an empty slot)
        """
        leaf_size = self.leaf_faces.shape[1]
        slots = (leaves[:, None] * leaf_size + torch.arange(leaf_size, device=points.device)).reshape(-1)
        point_ids = point_ids.repeat_interleave(leaf_size)
        faces = self.leaf_faces.reshape(-1)[slots]
        offset = points[point_ids] - self.a[slots]
        terms = {name: value[slots] for name, value in self.terms.items()}
        squared = _squared_distance_from_products(
            (offset * self.ab[slots]).sum(-1),
            (offset * self.ac[slots]).sum(-1),
            (offset * terms.pop('normal')).sum(-1),
            offset.square().sum(-1),
            terms,
        )
        return point_ids, faces, torch.where(faces >= 0, squared, torch.full_like(squared, float('inf')))


def _filled_rows(slots: torch.Tensor) -> torch.Tensor:
    """Rows of indices [M, S] with -1 replaced by the row's first index (always present). -> [M, S]"""
    return torch.where(slots >= 0, slots, slots[:, :1])


def _morton_codes(points: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """Position of each point along a Z-order curve over their bounding box. points [N, 3] -> [N] (long)

    Each coordinate is quantized to `bits` bits, and the bits of x, y and z are interleaved.
    """
    low = points.min(0).values
    span = (points.max(0).values - low).clamp(min=torch.finfo(points.dtype).tiny)
    steps = (1 << bits) - 1
    quantized = torch.nan_to_num((points - low) / span * steps).round().clamp(0, steps).long()
    # All bits at once (a few operator launches instead of 4 per bit and axis): bit b of axis a goes
    # to position 3 b + a, and the positions are distinct, so the sum is the bitwise or.
    bit = torch.arange(bits, device=points.device)
    axis = torch.arange(3, device=points.device)
    spread = ((quantized[:, :, None] >> bit) & 1) << (3 * bit[None, :] + axis[:, None])  # [N, 3, bits]
    return spread.sum(dim=(1, 2))


def _pairwise_squared_distance(
    points: torch.Tensor, a: torch.Tensor, ab: torch.Tensor, ac: torch.Tensor
) -> torch.Tensor:
    """Squared distance of every point to every triangle (a, a + ab, a + ac).

    points [N, 3], a [F, 3], ab [F, 3], ac [F, 3] -> [N, F]
    The closest point is the projection onto the plane when that falls inside the triangle,
    otherwise the nearest of the three edges; the dot products with (p - a) come from matrix
    products, so the values carry cancellation error of order eps * |p - a|^2 (they only choose
    the face; the caller recomputes the chosen face's distance directly).
    """
    terms = _face_terms(ab, ac)
    directions = torch.stack([ab, ac, terms['normal']], dim=1)  # [F, 3, 3]
    products = (points @ directions.reshape(-1, 3).T).view(points.shape[0], -1, 3) - (a[:, None] * directions).sum(-1)
    d1, d2, dn = products.unbind(-1)  # (p - a).ab, (p - a).ac, (p - a).n: [N, F]
    ap_ap = (points * points).sum(-1, keepdim=True) - 2 * (points @ a.T) + (a * a).sum(-1)
    return _squared_distance_from_products(d1, d2, dn, ap_ap, terms)


def _face_terms(ab: torch.Tensor, ac: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-triangle constants of the distance formula. ab [..., 3], ac [..., 3] -> normal [..., 3],
    nn, aa, ab_ac, cc, bb [...] (|n|^2, |ab|^2, ab.ac, |ac|^2, |bc|^2)"""
    normal = torch.linalg.cross(ab, ac, dim=-1)
    bc = ac - ab
    return dict(
        normal=normal,
        nn=(normal * normal).sum(-1),
        aa=(ab * ab).sum(-1),
        ab_ac=(ab * ac).sum(-1),
        cc=(ac * ac).sum(-1),
        bb=(bc * bc).sum(-1),
    )


def _squared_distance_from_products(
    d1: torch.Tensor, d2: torch.Tensor, dn: torch.Tensor, ap_ap: torch.Tensor, terms: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Squared point-triangle distance from the point's products with the triangle's frame.

    d1 = (p - a).ab, d2 = (p - a).ac, dn = (p - a).n, ap_ap = |p - a|^2, and the `_face_terms`
    of the triangle, all broadcastable to one shape S -> [S]
    The projection onto the plane when it falls inside the triangle, otherwise the nearest of
    the three edges; a triangle of zero area (nn = 0) is measured by its edges alone.
    """
    nn, aa, ab_ac, cc, bb = terms['nn'], terms['aa'], terms['ab_ac'], terms['cc'], terms['bb']
    one = torch.ones_like(aa)

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
    edges = torch.minimum(torch.minimum(segment(d1, aa, ap_ap), segment(d2, cc, ap_ap)), segment(bp_bc, bb, bp_bp))
    return torch.where(inside, plane, edges)


def nearest_faces(
    points: torch.Tensor,
    vertices: torch.Tensor,
    faces: torch.Tensor,
    max_distance: float | None = None,
    backend: str = 'auto',
    chunk_size: int = 1 << 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest triangle of a mesh for each point (no gradients).

    points [N, 3], vertices [V, 3], faces [F, 3] -> face_index [N] (long, -1 where no face is
    closer than max_distance), squared_distance [N] (inf where face_index is -1)
    backend: 'auto', 'bvh', 'fcpw', 'lbvh' or 'brute' (see the module docstring); chunk_size
    bounds the point-triangle pairs of the brute force held at once.
    """
    return NearestFaceSearch(vertices, faces, backend, chunk_size).query(points, max_distance)
