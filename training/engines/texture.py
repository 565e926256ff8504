"""UV-textured meshes: a per-triangle texture atlas, a texture baked from a generator's super-resolved renders,
and a headless render of a textured mesh.

Atlas: the texture is a grid of square cells of `cell` texels, two triangles per cell (each a right
triangle of legs `cell - 4` texels, one in each corner of the cell, a diagonal of gutter texels between
them and a border texel on every side of the cell), so every triangle has the same texel pattern and
baking is one vectorized pass. No charts: the texture is larger than an unwrap with charts would need for
the same detail, and every face has its own three uv corners (the written mesh's vertices are split).

Baking: every texel of a triangle is a point of the mesh; the views (VIEWS: front, sides, back, top) that
see it (inside the image, not hidden by the mesh itself: a depth test against the mesh rendered from the
view) and face it (cos between the face normal and the direction to the camera > 0) give their
super-resolved image's colour there, and the one with the largest cos wins. Texels no view sees take
the mesh's vertex colours, interpolated. Gutter texels take the colour of a neighbouring triangle texel,
so that bilinear filtering at triangle edges stays in the triangle's colour.

Texture rows run top to bottom; uv has v up (OBJ / trimesh convention): texel (row i, column j) of a
T-texel texture is centred at uv ((j + 0.5) / T, 1 - (i + 0.5) / T).
"""

import math

import numpy as np
import torch

from training.data.camera_utils import camera_label, orbit_camera

MIN_CELL = 6  # smallest cell (texels) that leaves every triangle a texel inside its gutters
# Baking views: (name, yaw in radians as camera_utils.camera_yaw, orbit angle v: pi/2 level, smaller higher).
VIEWS = (
    ('front', 0.0, math.pi / 2),
    ('left', math.pi / 2, math.pi / 2),
    ('right', -math.pi / 2, math.pi / 2),
    ('back', math.pi, math.pi / 2),
    ('top', 0.0, 0.35),
)


class TextureError(ValueError):
    """A texture that cannot be made: too few texels for the triangles, or a mesh without vertices."""


def view_cameras() -> torch.Tensor:
    """Camera labels of the baking VIEWS -> c [len(VIEWS), 25]."""
    horizontal = torch.tensor([math.pi / 2 + yaw for _, yaw, _ in VIEWS])
    vertical = torch.tensor([v for _, _, v in VIEWS])
    return camera_label(orbit_camera(horizontal, vertical))


def atlas_layout(num_faces: int, resolution: int) -> dict:
    """Where each triangle lies in a `resolution`-texel square texture.

    -> dict(cell int, cells_per_side int, origin int64 [F, 2] (row, column of the triangle's cell),
    flipped bool [F] (the triangle in the cell's lower-right corner), corners float64 [2, 3, 2]
    (texel-centre (row, column) of the three corners of an upper-left and a lower-right triangle
    within a cell), texels list of 2 int64 [K, 2] (cell texels of each kind of triangle),
    barycentric list of 2 float64 [K, 3] (their barycentric coordinates)).
    Raises TextureError when the texture has too few texels.
    """
    if num_faces < 1:
        raise TextureError('the mesh has no faces to texture')
    if resolution < 1:
        raise TextureError(f'texture resolution {resolution}: expected at least 1 texel')
    cells_per_side = math.ceil(math.sqrt(math.ceil(num_faces / 2)))
    cell = resolution // cells_per_side
    if cell < MIN_CELL:
        raise TextureError(
            f'a {resolution}-texel texture is too small for {num_faces} triangles: '
            f'use at least {MIN_CELL * cells_per_side} texels (or a coarser mesh)'
        )
    leg = cell - 4
    upper_left = np.array([[1, 1], [1, 1 + leg], [1 + leg, 1]], np.float64)  # (row, column)
    lower_right = (cell - 1) - upper_left
    corners = np.stack([upper_left, lower_right])
    rows, columns = np.meshgrid(np.arange(cell), np.arange(cell), indexing='ij')
    grid = np.stack([rows.ravel(), columns.ravel()], axis=1)
    texels, barycentric = [], []
    for triangle in corners:
        weights = _barycentric(grid.astype(np.float64), triangle)
        inside = (weights >= -1e-9).all(axis=1)
        texels.append(grid[inside])
        barycentric.append(np.clip(weights[inside], 0, 1))
    index = np.arange(num_faces)
    cell_index = index // 2
    origin = np.stack([cell_index // cells_per_side, cell_index % cells_per_side], axis=1) * cell
    return dict(
        cell=cell,
        cells_per_side=cells_per_side,
        origin=origin.astype(np.int64),
        flipped=index % 2 == 1,
        corners=corners,
        texels=texels,
        barycentric=barycentric,
    )


def _barycentric(points: np.ndarray, triangle: np.ndarray) -> np.ndarray:
    """points [N, 2], triangle [3, 2] -> barycentric coordinates [N, 3]."""
    a, b, c = triangle
    matrix = np.stack([b - a, c - a], axis=1)  # [2, 2]
    weights = np.linalg.solve(matrix, (points - a).T).T  # [N, 2]
    return np.concatenate([1 - weights.sum(axis=1, keepdims=True), weights], axis=1)


def atlas_uv(layout: dict, resolution: int) -> np.ndarray:
    """uv of every face corner -> float32 [F, 3, 2], v up (see the module docstring)."""
    corners = layout['corners'][layout['flipped'].astype(np.int64)] + layout['origin'][:, None]  # [F, 3, 2]
    u = (corners[..., 1] + 0.5) / resolution
    v = 1 - (corners[..., 0] + 0.5) / resolution
    return np.stack([u, v], axis=-1).astype(np.float32)


def atlas_texels(layout: dict) -> tuple:
    """Every triangle texel of the atlas -> (face int64 [N], row int64 [N], column int64 [N], barycentric [N, 3])."""
    faces, rows, columns, weights = [], [], [], []
    for kind in (0, 1):
        chosen = np.flatnonzero(layout['flipped'] == bool(kind))
        texels = layout['texels'][kind]
        faces.append(np.repeat(chosen, len(texels)))
        rows.append((layout['origin'][chosen, None, 0] + texels[None, :, 0]).ravel())
        columns.append((layout['origin'][chosen, None, 1] + texels[None, :, 1]).ravel())
        weights.append(np.tile(layout['barycentric'][kind], (len(chosen), 1)))
    return tuple(np.concatenate(parts) for parts in (faces, rows, columns, weights))


def project(points: np.ndarray, c: np.ndarray, resolution: int) -> tuple:
    """points [N, 3] (world) seen by camera c [25] at `resolution` px -> (column x [N], row y [N] in pixel units,
    pixel centres at +0.5; camera z [N], metres)."""
    cam2world = c[:16].reshape(4, 4).astype(np.float64)
    intrinsics = c[16:25].reshape(3, 3).astype(np.float64)
    camera = (points.astype(np.float64) - cam2world[:3, 3]) @ cam2world[:3, :3]
    z = camera[:, 2]
    pixel = camera @ intrinsics.T
    return pixel[:, 0] / z * resolution, pixel[:, 1] / z * resolution, z


def sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """image [H, W, C], x, y [N] (pixel units, centres at +0.5) -> [N, C], edges clamped."""
    height, width = image.shape[:2]
    x = np.clip(x - 0.5, 0, width - 1)
    y = np.clip(y - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    vertex_colors: np.ndarray,
    views: list,
    resolution: int,
    renderer=None,
) -> dict:
    """Bake a texture of the atlas from images of the mesh.

    vertices [V, 3], faces [F, 3] (outward winding), vertex_colors [V, 3] in [0, 1] (for texels no view sees),
    views: [(c [25] camera label, image float [S, S, 3] in [0, 1]), ...], resolution: texels per side
    -> dict(texture uint8 [T, T, 3], uv float32 [F, 3, 2], source int8 [T, T] (view index of each triangle
    texel, -1 where no view sees it, -2 for gutters), layout (atlas_layout)).
    """
    from training.engines.mesh_renderer import MeshRenderer

    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    if len(vertices) == 0:
        raise TextureError('the mesh has no vertices to texture')
    layout = atlas_layout(len(faces), resolution)
    face, rows, columns, weights = atlas_texels(layout)
    corners = vertices[faces[face]]  # [N, 3, 3]
    points = np.einsum('nk,nkd->nd', weights, corners)
    normals = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    normals = normals[face]
    edge = np.linalg.norm(vertices[faces[:, 1]] - vertices[faces[:, 0]], axis=1).mean()

    renderer = renderer or MeshRenderer()
    best_cos = np.zeros(len(points))
    source = np.full(len(points), -1, np.int8)
    colors = np.einsum('nk,nkd->nd', weights, np.asarray(vertex_colors, np.float64)[faces[face]])
    for index, (c, image) in enumerate(views):
        c = np.asarray(c, np.float64).reshape(25)
        image = np.asarray(image, np.float64)
        size = image.shape[0]
        x, y, z = project(points, c, size)
        to_camera = c[[3, 7, 11]] - points
        cos = (normals * to_camera).sum(axis=1) / np.linalg.norm(to_camera, axis=1)
        depth = renderer.render(vertices, faces, c, size, lit=False)['depth']
        column, row = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        inside = (column >= 0) & (column < size) & (row >= 0) & (row < size) & (z > 0)
        surface = np.full(len(points), -np.inf)
        surface[inside] = depth[row[inside], column[inside]]
        # The mesh seen at the texel's pixel is the texel's own surface when its depth is within the depth
        # change across a pixel on a surface this oblique (plus an edge length for the facets).
        pixel = z / (c[16] * size)
        tolerance = edge + 2 * pixel / np.maximum(cos, 0.1)
        seen = inside & (cos > 0) & (z <= surface + tolerance)
        better = seen & (cos > best_cos)
        colors[better] = sample_bilinear(image, x[better], y[better])
        best_cos[better] = cos[better]
        source[better] = index

    texture = np.zeros((resolution, resolution, 3), np.float64)
    texel_source = np.full((resolution, resolution), -2, np.int8)
    texture[rows, columns] = colors
    texel_source[rows, columns] = source
    texture = _fill_gutters(texture, texel_source > -2)
    return dict(
        texture=np.round(np.clip(texture, 0, 1) * 255).astype(np.uint8),
        uv=atlas_uv(layout, resolution),
        source=texel_source,
        layout=layout,
    )


def _fill_gutters(texture: np.ndarray, filled: np.ndarray, passes: int = 3) -> np.ndarray:
    """Give unfilled texels the mean colour of their filled 4-neighbours, `passes` times.

    texture [T, T, 3], filled bool [T, T] -> [T, T, 3]
    """
    texture, filled = texture.copy(), filled.copy()
    for _ in range(passes):
        total = np.zeros_like(texture)
        count = np.zeros(filled.shape)
        for axis in (0, 1):
            for shift in (1, -1):
                total += np.roll(texture * filled[..., None], shift, axis=axis)
                count += np.roll(filled, shift, axis=axis)
        grow = ~filled & (count > 0)
        texture[grow] = total[grow] / count[grow, None]
        filled |= grow
    return texture


def bake_generator_texture(
    G: torch.nn.Module,
    ws: torch.Tensor,
    vertices: np.ndarray,
    faces: np.ndarray,
    vertex_colors: np.ndarray,
    resolution: int,
    pose: torch.Tensor | None = None,
) -> dict:
    """bake_texture from the generator's super-resolved renders of one latent at VIEWS.

    ws [1, num_ws, w_dim], vertices [V, 3] (posed by `pose` [1, 6] when given, else canonical), faces [F, 3],
    vertex_colors [V, 3] -> bake_texture's dict, plus views: [(c [25], image [S, S, 3] in [0, 1]), ...]
    """
    if len(vertices) == 0:
        raise TextureError('the mesh has no vertices to texture')
    cameras = view_cameras().to(ws.device)
    views = []
    with torch.no_grad():
        for c in cameras:
            out = G.synthesis(ws, c[None], pose_params=pose, noise_mode='const', deterministic=True)
            image = ((out['image'][0].permute(1, 2, 0).float() + 1) / 2).clamp(0, 1).cpu().numpy()
            views.append((c.cpu().numpy(), image))
    baked = bake_texture(vertices, faces, vertex_colors, views, resolution)
    baked['views'] = views
    return baked


def split_by_face(vertices: np.ndarray, faces: np.ndarray) -> tuple:
    """One vertex per face corner, for per-corner uv: vertices [V, 3], faces [F, 3] -> ([3F, 3], faces [F, 3])."""
    return np.asarray(vertices)[faces].reshape(-1, 3), np.arange(3 * len(faces)).reshape(-1, 3)


def textured_mesh(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray, name: str = 'texture'):
    """A trimesh mesh with a PBR material `name` holding `texture`: vertices [V, 3], faces [F, 3], uv [F, 3, 2],
    texture uint8 [T, T, 3] -> trimesh.Trimesh (vertices split per face corner)."""
    import PIL.Image
    import trimesh

    split_vertices, split_faces = split_by_face(vertices, faces)
    material = trimesh.visual.material.PBRMaterial(
        name=name, baseColorTexture=PIL.Image.fromarray(texture), metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=uv.reshape(-1, 2), material=material)
    return trimesh.Trimesh(vertices=split_vertices, faces=split_faces, visual=visual, process=False)


def render_textured(
    renderer, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray, c: np.ndarray, size: int
) -> dict:
    """Headless render of a textured mesh, unlit, by a mesh_renderer.MeshRenderer: vertices [V, 3], faces [F, 3],
    uv [F, 3, 2], texture uint8 [T, T, 3], c [25], size px -> dict(rgb float [S, S, 3] in [0, 1] (white where
    empty), mask bool [S, S]).

    The rasterizer interpolates each corner's uv as a colour (perspective-correct), and the texture is
    sampled bilinearly at the interpolated uv.
    """
    split_vertices, split_faces = split_by_face(vertices, faces)
    uvw = np.concatenate([uv.reshape(-1, 2), np.zeros((len(split_vertices), 1), np.float32)], axis=1)
    rendered = renderer.render(split_vertices, split_faces, c, size, vertex_colors=uvw, lit=False)
    mask = rendered['mask']
    resolution = texture.shape[0]
    u, v = rendered['rgb'][mask, 0], rendered['rgb'][mask, 1]
    rgb = np.ones((size, size, 3))
    rgb[mask] = sample_bilinear(texture.astype(np.float64) / 255, u * resolution, (1 - v) * resolution)
    return dict(rgb=rgb, mask=mask)


TEXTURED_FORMATS = ('glb', 'obj')  # what write_textured_mesh writes, told by the extension


def write_textured_mesh(
    path: str, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray
) -> list:
    """Write a textured mesh: `.glb` (texture embedded) or `.obj` with `<stem>.mtl` and `<stem>.png` beside it.

    vertices [V, 3], faces [F, 3], uv [F, 3, 2], texture uint8 [T, T, 3]; every file is written whole or not at all.
    -> the paths written
    """
    import os

    import trimesh

    from training.checkpoints.atomic_files import atomic_write

    stem, extension = os.path.splitext(path)
    mesh = textured_mesh(vertices, faces, uv, texture, name=os.path.basename(stem))
    extension = extension.lstrip('.').lower()
    if extension not in TEXTURED_FORMATS:
        raise TextureError(f'{path}: a textured mesh is written as {" or ".join(TEXTURED_FORMATS)}')
    if extension == 'glb':
        data = mesh.export(file_type='glb')
        atomic_write(path, lambda f: f.write(data))
        return [path]
    name = os.path.basename(stem)
    text, files = trimesh.exchange.obj.export_obj(mesh, return_texture=True, mtl_name=f'{name}.mtl')
    written = []
    for file_name, content in files.items():
        target = os.path.join(os.path.dirname(path), file_name)
        atomic_write(target, lambda f, content=content: f.write(content))
        written.append(target)
    atomic_write(path, lambda f: f.write(text.encode()))
    return written + [path]


def save_textured_shape(
    G: torch.nn.Module,
    ws: torch.Tensor,
    shape: dict,
    stem: str,
    mesh_format: str,
    resolution: int,
    pose: torch.Tensor | None = None,
) -> str:
    """Write `stem.mrc` and, when the shape has a surface, the mesh textured by bake_generator_texture as
    `stem.<mesh_format>` (glb or obj); returns a one-line summary.

    ws [1, num_ws, w_dim], shape: shapes.extract_shape's dict with its vertices posed by `pose` [1, 6] if given.
    """
    import os

    from training.engines.shapes import save_shape, write_mrc

    if shape['vertices'] is None:
        return save_shape(shape, stem, mesh_format)
    baked = bake_generator_texture(G, ws, shape['vertices'], shape['faces'], shape['colors'], resolution, pose)
    write_mrc(stem + '.mrc', shape['volume'], shape['side'])
    write_textured_mesh(f'{stem}.{mesh_format}', shape['vertices'], shape['faces'], baked['uv'], baked['texture'])
    triangle_texels = baked['source'] > -2
    seen = (baked['source'] >= 0).sum() / max(int(triangle_texels.sum()), 1)
    return (
        f'{os.path.basename(stem)}: {len(shape["vertices"])} vertices, {len(shape["faces"])} faces, '
        f'{resolution}x{resolution} texture ({baked["layout"]["cell"]}-texel cells), {100 * seen:.1f}% of the '
        f'triangle texels seen by a view (the rest in vertex colours)'
    )
