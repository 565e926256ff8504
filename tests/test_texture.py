"""Texture atlas, baking and textured-mesh files (training/engines/texture.py): a sphere painted by a known colour
field and seen from the baking views, the tiny snapshot's generator, and extract_shapes.py --texture."""

import numpy as np
import pytest
import torch
import trimesh
from click.testing import CliRunner

import extract_shapes
from training.engines import texture
from training.engines.mesh_renderer import MeshRenderer

PIVOT = np.array([0.0, 0.0649, 0.0])


def color_field(points: np.ndarray) -> np.ndarray:
    """A smooth colour of 3-D points: [N, 3] -> [N, 3] in [0, 1]."""
    return np.clip(0.5 + 1.5 * (points - PIVOT) * np.array([1.0, -1.0, 1.0]), 0, 1)


@pytest.fixture(scope='module')
def painted_sphere():
    """A sphere round the look-at point, painted by color_field, and its renders at the baking views (64 px)."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.25)
    vertices, faces = np.asarray(sphere.vertices) + PIVOT, np.asarray(sphere.faces)
    renderer = MeshRenderer()
    views = [
        (c, renderer.render(vertices, faces, c, 64, vertex_colors=color_field(vertices), lit=False)['rgb'])
        for c in texture.view_cameras().numpy()
    ]
    return vertices, faces, views, renderer


def test_atlas_gives_every_triangle_its_own_texels_inside_the_texture():
    layout = texture.atlas_layout(1001, 512)
    face, rows, columns, weights = texture.atlas_texels(layout)
    assert layout['cell'] == 512 // 23 and len(np.unique(face)) == 1001
    assert len(set(zip(rows.tolist(), columns.tolist()))) == len(face)  # no texel shared by two triangles
    assert rows.max() < 512 and columns.max() < 512 and np.allclose(weights.sum(axis=1), 1)
    # Each texel's barycentric coordinates rebuild its centre from the triangle's uv corners.
    uv = texture.atlas_uv(layout, 512)
    rebuilt = np.einsum('nk,nkd->nd', weights, uv[face])
    np.testing.assert_allclose(rebuilt, np.stack([(columns + 0.5) / 512, 1 - (rows + 0.5) / 512], axis=1), atol=1e-6)


@pytest.mark.parametrize(
    'faces, resolution, message',
    [(1000, 64, 'use at least 138 texels'), (10, 0, 'expected at least 1 texel'), (0, 64, 'no faces')],
)
def test_atlas_errors(faces, resolution, message):
    with pytest.raises(texture.TextureError, match=message):
        texture.atlas_layout(faces, resolution)


def test_a_mesh_without_vertices_is_an_error():
    with pytest.raises(texture.TextureError, match='no vertices'):
        texture.bake_texture(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3)), [], 64)


def test_every_texel_a_view_sees_is_baked_from_a_view_in_its_colour(painted_sphere):
    vertices, faces, views, renderer = painted_sphere
    resolution = 1024
    baked = texture.bake_texture(vertices, faces, np.zeros_like(vertices), views, resolution, renderer)
    source = baked['source']
    for c, image in views:
        rendered = renderer.render(
            *texture.split_by_face(vertices, faces),
            c,
            64,
            vertex_colors=np.concatenate([baked['uv'].reshape(-1, 2), np.zeros((3 * len(faces), 1))], axis=1),
            lit=False,
        )
        uv = rendered['rgb'][rendered['mask'], :2]
        rows = np.floor((1 - uv[:, 1]) * resolution).astype(int)
        columns = np.floor(uv[:, 0] * resolution).astype(int)
        seen = source[rows, columns]
        triangle = seen > -2  # pixels whose uv falls on a gutter texel (at triangle edges) are left out
        assert triangle.mean() > 0.8
        assert (seen[triangle] >= 0).all()
    # Seen texels (all but the bottom of the sphere, which no view sees) have the colour field's colour at their
    # point, up to the images' pixel size.
    face, rows, columns, weights = texture.atlas_texels(baked['layout'])
    points = np.einsum('nk,nkd->nd', weights, vertices[faces[face]])
    chosen = source[rows, columns] >= 0
    error = np.abs(baked['texture'][rows, columns][chosen] / 255 - color_field(points[chosen]))
    assert chosen.mean() > 0.85 and error.mean() < 0.01 and np.percentile(error, 99) < 0.05, error.mean()


@pytest.mark.parametrize('mesh_format', ['glb', 'obj'])
def test_textured_mesh_loads_with_its_material_and_renders_like_the_front_view(painted_sphere, tmp_path, mesh_format):
    vertices, faces, views, renderer = painted_sphere
    baked = texture.bake_texture(vertices, faces, np.zeros_like(vertices), views, 1024, renderer)
    path = str(tmp_path / f'sphere.{mesh_format}')
    written = texture.write_textured_mesh(path, vertices, faces, baked['uv'], baked['texture'])
    assert sorted(p.split('/')[-1] for p in written) == (
        ['sphere.glb'] if mesh_format == 'glb' else ['sphere.mtl', 'sphere.obj', 'sphere.png']
    )
    mesh = trimesh.load(path, process=False, force='mesh')
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    material = mesh.visual.material
    image = material.baseColorTexture if mesh_format == 'glb' else material.image
    np.testing.assert_array_equal(np.asarray(image.convert('RGB')), baked['texture'])
    np.testing.assert_allclose(mesh.vertices, texture.split_by_face(vertices, faces)[0], atol=1e-6)
    c, front = views[0]
    loaded_faces = np.asarray(mesh.faces)
    split = texture.split_by_face(vertices, faces)[0]
    # The loaded mesh's own uv and texture, rendered from the front, against the front view.
    loaded = texture.render_textured(
        renderer,
        np.asarray(mesh.vertices),
        loaded_faces,
        np.asarray(mesh.visual.uv)[loaded_faces],
        baked['texture'],
        c,
        64,
    )
    assert np.abs(np.asarray(mesh.vertices) - split).max() < 1e-6
    mask = loaded['mask']
    assert mask.sum() > 500
    assert np.abs(loaded['rgb'][mask] - front[mask]).mean() < 0.01


def test_generator_texture_renders_like_the_generator_from_the_front(tmp_path):
    """The tiny snapshot's generator with an opaque surface (tests/test_shapes.py): its textured mesh from the front
    against its super-resolved front render, inside both masks."""
    from tests.test_shapes import sharp_tiny_generator
    from training.engines import shapes

    G, ws = sharp_tiny_generator(str(tmp_path))
    shape = shapes.extract_shape(G, ws, 40)
    baked = texture.bake_generator_texture(G, ws, shape['vertices'], shape['faces'], shape['colors'], 640)
    c, front = baked['views'][0]
    renderer = MeshRenderer()
    textured = texture.render_textured(
        renderer, shape['vertices'], shape['faces'], baked['uv'], baked['texture'], c, 32
    )
    colored = renderer.render(shape['vertices'], shape['faces'], c, 32, vertex_colors=shape['colors'], lit=False)
    with torch.no_grad():
        mask = G.synthesis(ws, torch.from_numpy(c)[None].float(), noise_mode='const', deterministic=True)['image_mask']
    inside = textured['mask'] & (torch.nn.functional.interpolate(mask, size=32)[0, 0].numpy() > 0.99)
    assert inside.sum() > 50
    # Measured (2048 texels): 0.005 for the texture, 0.13 for the vertex colours (the raw image, before super-resolution).
    textured_error = np.abs(textured['rgb'][inside] - front[inside]).mean()
    colored_error = np.abs(colored['rgb'][inside] - front[inside]).mean()
    assert textured_error < 0.03 and textured_error < colored_error / 3, (textured_error, colored_error)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    from tests.tiny_run import write_tiny_snapshot

    return write_tiny_snapshot(str(tmp_path_factory.mktemp('tiny')))[0]


def test_extract_shapes_texture_writes_a_textured_glb(run_dir, tmp_path):
    # The untrained density stays below the default level; every voxel inside the closed border is above -500.
    args = ['--network', run_dir, '--seeds', '1', '--shape-res', '10', '--level', '-500', '--device', 'cpu']
    result = CliRunner().invoke(extract_shapes.main, args + ['--texture', '256', '--outdir', str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert 'texture' in result.output and (tmp_path / 'seed0001.mrc').exists()
    mesh = trimesh.load(str(tmp_path / 'seed0001.glb'), process=False, force='mesh')
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals) and mesh.visual.material.baseColorTexture.size == (
        256,
        256,
    )


@pytest.mark.parametrize('case', ['zero', 'too-small', 'ply', 'mrc-dir'])
def test_extract_shapes_texture_errors(run_dir, tmp_path, case):
    (tmp_path / 'empty').mkdir()
    source = ['--mrc-dir', str(tmp_path / 'empty')] if case == 'mrc-dir' else ['--network', run_dir]
    extra, hint = {
        'zero': (['--texture', '0'], "Invalid value for '--texture': 0 is not in the range x>=1"),
        'too-small': (['--texture', '16'], 'seed0001: a 16-texel texture is too small for'),
        'ply': (['--texture', '64', '--format', 'ply'], '--texture writes glb or obj meshes, not ply'),
        'mrc-dir': (['--texture', '64'], '--texture needs --network'),
    }[case]
    result = CliRunner().invoke(
        extract_shapes.main,
        source
        + extra
        + [
            '--seeds',
            '1',
            '--shape-res',
            '10',
            '--level',
            '-500',
            '--outdir',
            str(tmp_path / 'out'),
            '--device',
            'cpu',
        ],
    )
    assert result.exit_code != 0 and 'Traceback' not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and hint in errors[0], result.output
