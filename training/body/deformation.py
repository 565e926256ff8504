"""Posed space to canonical space: each sample point follows its nearest triangle of the posed body.

A point x within `thickness` of the posed mesh takes its nearest posed triangle (P0, P1, P2),
writes itself in that triangle's frame e_x = (P1 - P0)/|.|, e_y = normal, e_z = e_x x e_y as
lambda = ((x - P0).e_x, (x - P0).e_y, (x - P0).e_z), and is rebuilt from the same triangle of
the canonical mesh: x_can = C0 + sum_i lambda_i e'_i. Farther points stay where they are.
The triangle choice is not differentiated; the frames and P0 are, so the result is
differentiable in the posed vertices (hence the body pose) and in the points.
"""

from collections.abc import Callable

import torch

from training.body.body_model import BodyModel
from training.body.nearest_face import NearestFaceSearch


def face_frames(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Orthonormal frame of every triangle, as the columns (e_x, e_y, e_z) of a rotation.

    vertices [B, V, 3], faces [F, 3] -> [B, F, 3, 3]
    e_x along the first edge, e_y the unit normal (P1 - P0) x (P2 - P0), e_z = e_x x e_y.
    """
    p0, p1, p2 = vertices[:, faces].unbind(dim=2)
    edge = p1 - p0
    e_x = torch.nn.functional.normalize(edge, dim=-1)
    e_y = torch.nn.functional.normalize(torch.linalg.cross(edge, p2 - p0, dim=-1), dim=-1)
    e_z = torch.linalg.cross(e_x, e_y, dim=-1)
    return torch.stack([e_x, e_y, e_z], dim=-1)


class PosedMeshMap:
    """The posed-to-canonical map of a batch of posed meshes, set up once for many point sets.

    posed [B, V, 3], canonical [1, V, 3] (or [B, V, 3]), faces [F, 3]; the per-triangle rigid
    maps keep their autograd graph to `posed`, and one nearest-face search per batch item is
    built here, so the coarse and the fine samples of a render share them.
    """

    def __init__(
        self,
        posed: torch.Tensor,
        canonical: torch.Tensor,
        faces: torch.Tensor,
        thickness: float,
        backend: str = 'auto',
        chunk_size: int = 1 << 20,
    ):
        if posed.dim() != 3 or posed.shape[-1] != 3 or canonical.dim() != 3 or canonical.shape[1:] != posed.shape[1:]:
            raise ValueError(
                f'canonicalize: posed must be [B, V, 3] and canonical [1, V, 3], got '
                f'{tuple(posed.shape)} and {tuple(canonical.shape)}'
            )
        self.batch_size, self.num_faces = posed.shape[0], faces.shape[0]
        self.thickness = float(thickness)
        self.searches = [NearestFaceSearch(vertices, faces, backend, chunk_size) for vertices in posed.detach()]

        # x_can = C0 + R_can R_posed^T (x - P0), applied as x + shift + (rotation - I)(x - P0):
        # for a triangle that did not move, shift is exactly zero and rotation - I is at the
        # rounding level, so its points stay put to within rounding times |x - P0|.
        canonical = canonical.to(posed.dtype)
        rotation = face_frames(canonical, faces) @ face_frames(posed, faces).transpose(-1, -2)
        eye = torch.eye(3, dtype=posed.dtype, device=posed.device)
        origin = posed[:, faces[:, 0]]
        self.origin = origin.reshape(-1, 3)  # [B*F, 3]
        self.shift = (canonical[:, faces[:, 0]] - origin).reshape(-1, 3)
        self.turn = (rotation - eye).reshape(-1, 3, 3)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """points [B, N, 3] -> canonical points [B, N, 3]"""
        return self.apply(points, self.nearest_faces(points))

    @torch.no_grad()
    def nearest_faces(self, points: torch.Tensor) -> torch.Tensor:
        """Nearest face of every point, -1 where none is within the thickness.

        points [B, N, 3] -> face_index [B, N] (long)
        """
        if points.dim() != 3 or points.shape[0] != self.batch_size or points.shape[-1] != 3:
            raise ValueError(f'canonicalize: points must be [{self.batch_size}, N, 3], got {tuple(points.shape)}')
        if points.shape[0] == 0 or points.shape[1] == 0:
            return torch.full(points.shape[:2], -1, dtype=torch.long, device=points.device)
        return torch.stack(
            [search.query(item, self.thickness)[0] for search, item in zip(self.searches, points.detach())]
        )

    def apply(self, points: torch.Tensor, face_index: torch.Tensor, gather: bool | None = None) -> torch.Tensor:
        """Move each point with the rigid map of its face; face -1 leaves it unchanged.

        points [B, N, 3], face_index [B, N] (long) -> canonical points [B, N, 3]
        gather: map only the points with a face, gathered and scattered back (their count is read
        on the host, which synchronizes a CUDA device), or, when False, map every point and keep
        the result where it has a face (fixed shapes, no host read). Both give the same values and
        gradients; None: gather on the CPU, where reading the count costs nothing.
        """
        batch_size, num_points, _ = points.shape
        if gather is None:
            gather = points.device.type == 'cpu'
        with torch.no_grad():
            item = torch.arange(batch_size, device=points.device)[:, None] * self.num_faces
            if gather:
                near = (face_index >= 0).reshape(-1).nonzero()[:, 0]
                mapped_face = (face_index + item).reshape(-1)[near]
            else:
                mapped_face = (face_index.clamp(min=0) + item).reshape(-1)
        flat = points.reshape(-1, 3)
        x = flat[near] if gather else flat
        relative = x - self.origin[mapped_face].to(points.dtype)
        moved = (
            x
            + self.shift[mapped_face].to(points.dtype)
            + (self.turn[mapped_face].to(points.dtype) @ relative[:, :, None])[:, :, 0]
        )
        if gather:
            return flat.index_copy(0, near, moved).view(batch_size, num_points, 3)
        return torch.where((face_index >= 0).reshape(-1, 1), moved, flat).view(batch_size, num_points, 3)


def canonicalize(
    points: torch.Tensor,
    posed: torch.Tensor,
    canonical: torch.Tensor,
    faces: torch.Tensor,
    thickness: float,
    backend: str = 'auto',
    chunk_size: int = 1 << 20,
) -> torch.Tensor:
    """Map posed-space samples to canonical space through their nearest posed triangle.

    points [B, N, 3], posed [B, V, 3], canonical [1, V, 3], faces [F, 3] -> [B, N, 3]
    Points at or farther than `thickness` from every triangle are returned unchanged.
    backend: nearest-face search, 'auto', 'bvh', 'fcpw', 'lbvh' or 'brute' (see nearest_face.py); chunk_size
    bounds the point-triangle pairs the brute force holds at once.
    """
    return PosedMeshMap(posed, canonical, faces, thickness, backend, chunk_size)(points)


class Deformer(torch.nn.Module):
    """Maps posed-space sample points to the canonical space of a body model's zero pose."""

    def __init__(
        self,
        body_model: BodyModel,  # Supplies the canonical mesh, the box faces and pose().
        thickness: float = 0.25,  # Points this far from every box face stay put, metres.
        backend: str = 'auto',  # Nearest-face search: see nearest_face.BACKENDS.
    ):
        super().__init__()
        self.body_model = body_model
        self.thickness = float(thickness)
        self.backend = backend

    def for_pose(self, pose: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Pose the body once and return the map for sample points of that pose.

        pose [B, 6] -> deform(points [B, M, 3]) -> canonical points [B, M, 3]
        The returned callable is the volume renderer's `deform`; it can be called for the
        coarse and the fine samples alike.
        """
        body = self.body_model
        return PosedMeshMap(body.pose(pose), body.canonical_vertices, body.box_faces, self.thickness, self.backend)

    def forward(self, points: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """points [B, N, 3], pose [B, 6] -> canonical points [B, N, 3]"""
        return self.for_pose(pose)(points)

    def extra_repr(self) -> str:
        return f'thickness={self.thickness}, backend={self.backend!r}'
