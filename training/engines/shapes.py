"""Density volumes of a generator on a regular grid, and meshes from them by marching cubes.

The grid is the cube of side `0.8 * box_warp` centred at the world origin (docs/method.md §12.3), in world
coordinates (metres, y up, the subject faces +z; docs/method.md §2.1). Volumes are indexed [x][y][z] in
memory; `.mrc` files hold them in the file format's [z][y][x] order with the voxel size in
angstrom units set to the voxel size in metres, so that a volume survives a round trip.
"""

import os
from collections.abc import Callable

import numpy as np
import torch

from training.checkpoints.atomic_files import atomic_write, atomic_write_path
from training.engines.render_check import require_finite
from training.networks.triplane import raw_rgb

DEFAULT_LEVEL = 15.0  # the sigma level of the surface (docs/method.md §12.3)
CUBE_FRACTION = 0.8  # the grid covers this fraction of the tri-grid box
MESH_FORMATS = ('ply', 'obj', 'glb')  # what write_mesh writes, told by the extension


def grid_points(resolution: int, side: float, device=None) -> torch.Tensor:
    """The N^3 voxel centres of a cube of side `side` centred at the origin, corners included.

    -> points [N^3, 3], ordered so that reshaping the values to [N, N, N] indexes them [x][y][z].
    Voxel size side / (N - 1).
    """
    axis = torch.linspace(-side / 2, side / 2, resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing='ij'), dim=-1).reshape(-1, 3)


def sample_volume(
    density: Callable[[torch.Tensor], torch.Tensor],
    resolution: int,
    side: float,
    batch: int = 2**18,
    device=None,
    progress: bool = False,
) -> np.ndarray:
    """Evaluate a density on the grid of `grid_points`, in chunks of `batch` points.

    density: points [1, M, 3] -> sigma [1, M, 1] (e.g. a closure over G.sample_mixed)
    -> volume float32 [N, N, N] indexed [x][y][z]
    """
    points = grid_points(resolution, side, device=device)
    chunks = range(0, len(points), batch)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc='density', unit='chunk', leave=False)
    values = []
    with torch.no_grad():
        for start in chunks:
            values.append(density(points[None, start : start + batch]).reshape(-1).float().cpu())
    return torch.cat(values).reshape(resolution, resolution, resolution).numpy()


def generator_density(G: torch.nn.Module, ws: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The canonical density of one latent: ws [1, num_ws, w_dim] -> density(points [1, M, 3]) -> [1, M, 1].

    The tri-grid is built once; its raw sigma (before the renderer's softplus) is what level 15 refers to.
    """
    planes = G.planes(ws, noise_mode='const')
    return lambda points: G.renderer.sample_points(planes, G.decoder, points)['sigma']


def generator_raw_rgb(G: torch.nn.Module, ws: torch.Tensor, vertices: np.ndarray, batch: int = 2**18) -> np.ndarray:
    """The generator's raw RGB at points: the decoder's features there through the generator's own
    raw-image mapping (ToRGB styled by the last w, or the first channels without one;
    training.networks.triplane.raw_rgb).

    The raw image composites these features along each ray, so at an opaque surface a vertex has
    the value of the raw pixels it projects to.
    ws [1, num_ws, w_dim], vertices [V, 3] (canonical world, metres) -> float32 [V, 3], about [-1, 1], unclamped
    """
    points = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32)).to(ws.device)
    if len(points) == 0:
        return np.zeros([0, 3], np.float32)
    values = []
    with torch.no_grad():
        planes = G.planes(ws, noise_mode='const')
        for start in range(0, len(points), batch):
            features = G.renderer.sample_points(planes, G.decoder, points[None, start : start + batch])['rgb']
            rgb = raw_rgb(G, features.permute(0, 2, 1)[..., None].to(ws.dtype), ws)  # [1, 3, M, 1]
            values.append(rgb[0, :3, :, 0].t().float().cpu())
    return torch.cat(values).numpy()


def generator_colors(G: torch.nn.Module, ws: torch.Tensor, vertices: np.ndarray, batch: int = 2**18) -> np.ndarray:
    """Vertex colours of the raw image (generator_raw_rgb) mapped from [-1, 1] to [0, 1].

    A posed mesh keeps the colours of the canonical vertices it was carried from.
    ws [1, num_ws, w_dim], vertices [V, 3] (canonical world, metres) -> colours float32 [V, 3] in [0, 1]
    """
    return np.clip((generator_raw_rgb(G, ws, vertices, batch) + 1) / 2, 0, 1)


def close_border(volume: np.ndarray, value: float = -1000.0) -> np.ndarray:
    """A copy of the volume with its outermost voxel layer set to `value`, so that a surface cut by
    the grid's faces is capped there and the mesh closes. volume [N, N, N] -> [N, N, N]"""
    closed = volume.copy()
    closed[0], closed[-1] = value, value
    closed[:, 0], closed[:, -1] = value, value
    closed[:, :, 0], closed[:, :, -1] = value, value
    return closed


def marching_cubes(volume: np.ndarray, side: float, level: float = DEFAULT_LEVEL):
    """The iso-surface of a volume on the grid of `grid_points`, in world coordinates.

    volume [N, N, N] indexed [x][y][z] -> (vertices float32 [V, 3] in metres, faces int64 [F, 3]),
    faces wound so that their normals point out of the dense region. Raises ValueError when the
    volume does not cross `level`.
    """
    import skimage.measure

    if not volume.min() < level < volume.max():
        raise ValueError(f'the density ({volume.min():.4g} .. {volume.max():.4g}) does not cross level {level}')
    resolution = volume.shape[0]
    voxel = side / (resolution - 1)
    vertices, faces, _, _ = skimage.measure.marching_cubes(
        volume, level=level, spacing=(voxel, voxel, voxel), gradient_direction='ascent'
    )
    return (vertices - side / 2).astype(np.float32), faces.astype(np.int64)


def write_mrc(path: str, volume: np.ndarray, side: float) -> None:
    """volume [N, N, N] indexed [x][y][z] -> `path` (.mrc, float32, stored [z][y][x])."""
    import mrcfile

    def write(temp_path: str) -> None:
        with mrcfile.new(temp_path, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.float32))
            mrc.voxel_size = side / (volume.shape[0] - 1)

    atomic_write_path(path, write)


def read_mrc(path: str) -> tuple:
    """`path` (.mrc) -> (volume float32 [N, N, N] indexed [x][y][z], side of the cube in metres).

    A file without a voxel size (0) is read as the default grid of a unit tri-grid box.
    """
    import mrcfile

    with mrcfile.open(path, permissive=True) as mrc:
        if mrc.data is None or mrc.data.ndim != 3 or len(set(mrc.data.shape)) != 1:
            raise ValueError(
                f'{path}: expected a cubic 3-D volume, got shape {None if mrc.data is None else mrc.data.shape}'
            )
        volume = np.array(mrc.data, dtype=np.float32).transpose(2, 1, 0)
        voxel = float(mrc.voxel_size.x)
    side = voxel * (volume.shape[0] - 1) if voxel > 0 else CUBE_FRACTION
    return volume, side


def write_mesh(path: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> bool:
    """Write a mesh (.ply, .obj or .glb, told by the extension) with optional vertex colours; returns watertightness.

    vertices [V, 3], faces [F, 3], colors [V, 3] in [0, 1] or None
    """
    import trimesh

    vertex_colors = None if colors is None else np.round(np.clip(colors, 0, 1) * 255).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=vertex_colors, process=False)
    file_type = os.path.splitext(path)[1].lstrip('.').lower()
    atomic_write(path, lambda file: mesh.export(file, file_type=file_type))
    return bool(mesh.is_watertight)


def pose_vertices(deformer: torch.nn.Module, vertices: np.ndarray, pose: torch.Tensor) -> np.ndarray:
    """Carry canonical mesh vertices into the posed space of a body pose, through the same body model.

    vertices [V, 3] (canonical, metres), pose [1, 6] (neck, head axis-angle) -> posed vertices [V, 3]
    The inverse of the renderer's deformation: each vertex within the deformer's thickness of
    the canonical body takes its nearest canonical triangle and is rebuilt on that triangle of
    the posed body; farther vertices stay where they are.
    """
    from training.body.deformation import PosedMeshMap

    body = deformer.body_model
    with torch.no_grad():
        posed_body = body.pose(pose.to(body.canonical_vertices))
        forward = PosedMeshMap(
            body.canonical_vertices, posed_body, body.box_faces, deformer.thickness, deformer.backend
        )
        points = torch.from_numpy(np.ascontiguousarray(vertices)).to(posed_body)[None]
        return forward(points)[0].cpu().numpy().astype(vertices.dtype)


def shape_side(G: torch.nn.Module) -> float:
    """Side of the shape grid of a generator: 0.8 * box_warp (metres)."""
    return CUBE_FRACTION * float(G.renderer.box_warp)


def extract_shape(
    G: torch.nn.Module, ws: torch.Tensor, resolution: int, level: float = DEFAULT_LEVEL, progress: bool = False
) -> dict:
    """Density volume and coloured mesh of one latent.

    ws [1, num_ws, w_dim] -> dict(volume [N, N, N] [x][y][z], side float, vertices [V, 3], faces [F, 3],
    colors [V, 3]); vertices etc. are None when the density does not cross `level`.
    """
    side = shape_side(G)
    with torch.no_grad():
        volume = sample_volume(generator_density(G, ws), resolution, side, device=ws.device, progress=progress)
    require_finite('density volume', volume, ws)
    result = dict(volume=volume, side=side, vertices=None, faces=None, colors=None)
    try:
        vertices, faces = marching_cubes(close_border(volume), side, level)
    except ValueError:
        return result
    with torch.no_grad():
        colors = generator_colors(G, ws, vertices)
        require_finite('mesh colour', colors, ws)
        result.update(vertices=vertices, faces=faces, colors=colors)
    return result


def save_shape(shape: dict, stem: str, mesh_format: str = 'ply') -> str:
    """Write `stem.mrc` and, when the shape has a surface, `stem.<mesh_format>`; returns a one-line summary."""
    write_mrc(stem + '.mrc', shape['volume'], shape['side'])
    name = os.path.basename(stem)
    if shape['vertices'] is None:
        volume = shape['volume']
        return (
            f'{name}: the density ({volume.min():.4g} .. {volume.max():.4g}) does not cross the level; wrote the '
            f'volume only (a level inside that range meshes it)'
        )
    watertight = write_mesh(f'{stem}.{mesh_format}', shape['vertices'], shape['faces'], shape['colors'])
    return (
        f'{name}: {len(shape["vertices"])} vertices, {len(shape["faces"])} faces, '
        f'{"watertight" if watertight else "not watertight"}'
    )
