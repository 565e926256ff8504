"""Pictures of the generation tools' outputs for README.md, made by running the tools on a snapshot.

    python tools/readme_images.py --network runs/00000-cpu-small-... --outdir docs/images

writes samples.png (gen_samples.py: a row of back, side and front views per seed), orbit.png (every
few frames of a gen_videos.py 360-degree orbit), pose.png (gen_samples.py --pose: the first seed with
its head turned, seen from the front, and its neck bent, seen from the side) and mesh.png (the first
seed's portrait from the back, side and front views above its extract_shapes.py mesh from the same
views, rendered headless with its vertex colours, then with the texture of extract_shapes.py --texture).
--pictures makes some of them only, e.g. --pictures mesh.
"""

import glob
import math
import os
import subprocess
import sys
import tempfile

import click
import imageio
import numpy as np
import PIL.Image
import torch
import trimesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from training.cli import parse_seeds  # noqa: E402
from training.data.camera_utils import VIEWS, camera_label, orbit_camera  # noqa: E402
from training.engines.mesh_renderer import MeshRenderer  # noqa: E402
from training.engines.shapes import DEFAULT_LEVEL  # noqa: E402
from training.engines.texture import render_textured  # noqa: E402

PICTURES = ('samples', 'orbit', 'pose', 'mesh')
MESH_VIEWS = ('back', 'side', 'front')  # the views of gen_samples.py's rows, left to right


def run_tool(script: str, *args: str) -> None:
    """Run one of the repository's command-line tools in a child process; fail loudly."""
    done = subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise click.ClickException(f'{script} failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}')


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """[H, W, C] uint8 -> [H * factor, W * factor, C], nearest neighbour (keeps the pixels honest)."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


# The pose sweeps of pose.png: (view, index of the swept pose value, values in radians). Pose values
# are neck x, y, z then head x, y, z axis-angles: head yaw is value 4, neck pitch value 0.
POSE_SWEEPS = (
    ('front', 4, (-0.6, -0.3, 0.0, 0.3, 0.6)),
    ('side', 0, (-0.4, -0.2, 0.0, 0.2, 0.4)),
)


def pose_sweep(network: str, seed: str, workdir: str) -> np.ndarray:
    """The seed rendered at the POSE_SWEEPS poses, one row per sweep -> [rows * R, 5 * R, 3] uint8."""
    rows = []
    for view, index, values in POSE_SWEEPS:
        row = []
        for value in values:
            pose = [0.0] * 6
            pose[index] = value
            outdir = os.path.join(workdir, f'pose-{view}-{index}-{value}')
            run_tool(
                'gen_samples.py',
                '--network',
                network,
                '--seeds',
                seed,
                '--views',
                view,
                '--pose',
                ','.join(str(v) for v in pose),
                '--outdir',
                outdir,
            )
            row.append(np.asarray(PIL.Image.open(glob.glob(os.path.join(outdir, 'seed[0-9]*.png'))[0]).convert('RGB')))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def mesh_views(mesh_path: str, resolution: int) -> np.ndarray:
    """A mesh with vertex colours (lit) or a texture (as baked, unlit) rendered from MESH_VIEWS -> [R, 3R, 3] uint8."""
    mesh = trimesh.load(mesh_path, process=False, force='mesh')
    cameras = camera_label(orbit_camera(torch.tensor([VIEWS[name] for name in MESH_VIEWS]), math.pi / 2)).numpy()
    renderer = MeshRenderer()
    if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        texture = np.asarray(mesh.visual.material.baseColorTexture.convert('RGB'))
        uv = np.asarray(mesh.visual.uv)[mesh.faces]
        views = [
            render_textured(renderer, mesh.vertices, mesh.faces, uv, texture, c, resolution)['rgb'] for c in cameras
        ]
    else:
        colors = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
        views = [
            renderer.render(mesh.vertices, mesh.faces, c, resolution, vertex_colors=colors)['rgb'] for c in cameras
        ]
    return np.round(np.concatenate(views, axis=1) * 255).astype(np.uint8)


def parse_pictures(ctx, param, value: str) -> tuple:
    names = tuple(name.strip() for name in value.split(',') if name.strip())
    unknown = [name for name in names if name not in PICTURES]
    if not names or unknown:
        raise click.BadParameter(f'{", ".join(unknown) or repr(value)}: expected a comma list of {", ".join(PICTURES)}')
    return names


def orbit_picture(network: str, seed: str, frames: int, strip: int, scale: int, work: str, outdir: str) -> None:
    """orbit.png: every few frames of a gen_videos.py 360-degree orbit of the seed."""
    run_tool(
        'gen_videos.py',
        '--network',
        network,
        '--seeds',
        seed,
        '--trajectory',
        'orbit',
        '--w-frames',
        str(frames),
        '--outdir',
        os.path.join(work, 'videos'),
    )
    video = imageio.mimread(glob.glob(os.path.join(work, 'videos', '*.mp4'))[0])
    picks = np.linspace(0, len(video), strip, endpoint=False).round().astype(int)
    orbit = np.concatenate([video[i] for i in picks], axis=1)
    PIL.Image.fromarray(upscale(orbit, scale)).save(os.path.join(outdir, 'orbit.png'))


def mesh_picture(
    network: str,
    seed: str,
    portrait: np.ndarray,
    shape_res: int,
    level: float,
    scale: int,
    texture: int,
    work: str,
    outdir: str,
) -> None:
    """mesh.png: the seed's portrait row (back, side, front; uint8 [R, 3R, 3]) above its mesh from the same views,
    with vertex colours and then textured."""
    rows = [upscale(portrait, scale)]
    for name, extra in (('colors', ['--format', 'ply']), ('textured', ['--texture', str(texture), '--format', 'glb'])):
        folder = os.path.join(work, f'shapes-{name}')
        run_tool(
            'extract_shapes.py',
            '--network',
            network,
            '--seeds',
            seed,
            '--shape-res',
            str(shape_res),
            '--level',
            str(level),
            '--outdir',
            folder,
            *extra,
        )
        meshes = glob.glob(os.path.join(folder, f'*.{extra[-1]}'))
        if not meshes:
            raise click.ClickException(f'seed {seed}: the density does not cross level {level}; try a lower --level')
        rows.append(mesh_views(meshes[0], portrait.shape[0] * scale))
    PIL.Image.fromarray(np.concatenate(rows, axis=0)).save(os.path.join(outdir, 'mesh.png'))


@click.command()
@click.option('--network', required=True, help='Network snapshot or run directory')
@click.option('--outdir', default=os.path.join(REPO, 'docs', 'images'), show_default=True)
@click.option('--seeds', default='0-3', show_default=True)
@click.option('--frames', type=click.IntRange(min=2), default=48, show_default=True, help='Frames of the orbit')
@click.option('--strip', type=click.IntRange(min=2), default=8, show_default=True, help='Orbit frames shown')
@click.option('--shape-res', type=click.IntRange(min=8), default=128, show_default=True)
@click.option('--level', type=float, default=DEFAULT_LEVEL, show_default=True, help='Marching-cubes sigma level')
@click.option(
    '--scale', type=click.IntRange(min=1), default=2, show_default=True, help='Pixel upscaling of the pictures'
)
@click.option(
    '--texture', type=click.IntRange(min=1), default=1024, show_default=True, help='Texels per side of the mesh texture'
)
@click.option(
    '--pictures', default=','.join(PICTURES), show_default=True, callback=parse_pictures, help='Which pictures to make'
)
def main(network, outdir, seeds, frames, strip, shape_res, level, scale, texture, pictures):
    os.makedirs(outdir, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as work:
        run_tool('gen_samples.py', '--network', network, '--seeds', seeds, '--outdir', os.path.join(work, 'samples'))
        rows = [
            np.asarray(PIL.Image.open(path).convert('RGB'))
            for path in sorted(glob.glob(os.path.join(work, 'samples', 'seed[0-9][0-9][0-9][0-9].png')))
        ]
        if 'samples' in pictures:
            PIL.Image.fromarray(upscale(np.concatenate(rows, axis=0), scale)).save(os.path.join(outdir, 'samples.png'))
            written.append('samples.png')
        seed = str(parse_seeds(seeds)[0])
        if 'orbit' in pictures:
            orbit_picture(network, seed, frames, strip, scale, work, outdir)
            written.append('orbit.png')
        if 'pose' in pictures:
            sweep = pose_sweep(network, seed, os.path.join(work, 'pose'))
            PIL.Image.fromarray(upscale(sweep, scale)).save(os.path.join(outdir, 'pose.png'))
            written.append('pose.png')
        if 'mesh' in pictures:
            mesh_picture(network, seed, rows[0], shape_res, level, scale, texture, work, outdir)
            written.append('mesh.png')
    print(f'wrote {", ".join(written)} to {outdir}')


if __name__ == '__main__':
    main()
