"""Density volumes (.mrc) and meshes (.ply/.obj/.glb) of a generator's heads, canonical or posed, in metres, y up."""

import glob
import os

import click
import numpy as np
import torch
from tqdm import tqdm

from training.cli import (
    Command,
    FiniteFloat,
    device_option,
    load_generator,
    load_latent_option,
    make_outdir,
    option_given,
    parse_pose,
    parse_seeds,
    require_shape_memory,
    trust_pickle_option,
)
from training.data.camera_utils import frontal_camera
from training.engines.shapes import (
    DEFAULT_LEVEL,
    MESH_FORMATS,
    close_border,
    extract_shape,
    marching_cubes,
    pose_vertices,
    read_mrc,
    save_shape,
    write_mesh,
)
from training.engines.texture import TEXTURED_FORMATS, TextureError, save_textured_shape


def save_posed_shape(
    G: torch.nn.Module,
    ws: torch.Tensor,
    pose: torch.Tensor | None,
    stem: str,
    shape_res: int,
    level: float,
    mesh_format: str,
    texture: int | None = None,
) -> None:
    """ws [1, num_ws, w_dim], pose [1, 6] or None (canonical) -> stem.mrc and stem.<mesh_format>, a line on the
    console; with `texture` (texels per side) the mesh is textured from the generator's renders."""
    shape = extract_shape(G, ws, shape_res, level)
    if pose is not None and shape['vertices'] is not None:
        shape['vertices'] = pose_vertices(G.deformer, shape['vertices'], pose)
    if texture is None:
        tqdm.write(save_shape(shape, stem, mesh_format))
        return
    try:
        tqdm.write(save_textured_shape(G, ws, shape, stem, mesh_format, texture, pose))
    except TextureError as err:
        raise click.ClickException(f'{os.path.basename(stem)}: {err}') from None


@click.command(cls=Command)
@click.option('--network', help='Checkpoint (network pickle or weights file), a run directory or a training outdir')
@click.option(
    '--mrc-dir', type=click.Path(exists=True, file_okay=False), help='Instead of --network: mesh every .mrc here'
)
@click.option(
    '--seeds',
    callback=lambda ctx, param, value: parse_seeds(value),
    default='0',
    show_default=True,
    help='Latent seeds, e.g. 0,2,5-9',
)
@click.option(
    '--latent',
    type=click.Path(exists=True, dir_okay=False),
    help='Instead of --seeds: the ws of a latent .npz (e.g. from invert.py); the mesh takes its pose unless --pose is given',
)
@click.option(
    '--trunc', 'truncation_psi', type=FiniteFloat(), default=1.0, show_default=True, help='Truncation psi (seeds only)'
)
@click.option(
    '--trunc-cutoff',
    'truncation_cutoff',
    type=click.IntRange(min=0),
    default=None,
    help='Truncate only the first N ws (seeds only)',
)
@click.option('--shape-res', type=click.IntRange(min=8), default=128, show_default=True, help='Grid size per axis')
@click.option(
    '--level', type=FiniteFloat(), default=DEFAULT_LEVEL, show_default=True, help='Marching-cubes sigma level'
)
@click.option('--pose', default=None, help='Pose the meshes: six comma-separated neck/head axis-angle values, radians')
@click.option(
    '--format',
    'mesh_format',
    type=click.Choice(MESH_FORMATS),
    default='ply',
    show_default=True,
    help='Mesh file format (with --texture: glb, or obj)',
)
@click.option(
    '--texture',
    type=click.IntRange(min=1),
    default=None,
    metavar='TEXELS',
    help='Texture the meshes: a TEXELS x TEXELS UV texture baked from super-resolved renders at the front, '
    'side, back and top views (e.g. 2048)',
)
@click.option('--outdir', type=click.Path(file_okay=False), required=True)
@device_option
@trust_pickle_option
def main(
    network,
    mrc_dir,
    seeds,
    latent,
    truncation_psi,
    truncation_cutoff,
    shape_res,
    level,
    pose,
    mesh_format,
    texture,
    outdir,
    device,
    trust_pickle,
):
    """Per seed, seedNNNN.mrc (density on the cube of side 0.8 box_warp) and seedNNNN.<format> (marching
    cubes, vertex colours of the raw image: the decoder's features through the generator's ToRGB); with
    --latent, <stem>.mrc and <stem>.<format> of the latent file <stem>.npz; or, with --mrc-dir, a mesh per .mrc.

    The volume is always canonical; with --pose the mesh is carried into that body pose by the
    generator's own body model and deformation thickness. Without --pose a latent file's mesh takes
    the file's pose if it has one."""
    if (network is None) == (mrc_dir is None):
        raise click.UsageError('give exactly one of --network or --mrc-dir')
    if texture is not None:
        if mrc_dir is not None:
            raise click.UsageError("--texture needs --network: the texture is baked from the generator's renders")
        if not option_given('mesh_format'):
            mesh_format = 'glb'
        elif mesh_format not in TEXTURED_FORMATS:
            raise click.UsageError(f'--texture writes {" or ".join(TEXTURED_FORMATS)} meshes, not {mesh_format}')
    if pose is not None and mrc_dir is not None:
        raise click.UsageError('--pose needs --network: an .mrc file carries no body model')
    if latent is not None:
        if mrc_dir is not None:
            raise click.UsageError('--latent needs --network: give one of --latent or --mrc-dir')
        for name, option in (
            ('seeds', '--seeds'),
            ('truncation_psi', '--trunc'),
            ('truncation_cutoff', '--trunc-cutoff'),
        ):
            if option_given(name):
                raise click.UsageError(
                    f'{option} does not apply to --latent: the file holds the ws to mesh; give one of them'
                )
    make_outdir(outdir)
    if mrc_dir is not None:
        paths = sorted(glob.glob(os.path.join(mrc_dir, '*.mrc')))
        if not paths:
            raise click.ClickException(f'{mrc_dir}: no .mrc files')
        unreadable = []
        for path in tqdm(paths, desc='volumes', unit='file'):
            try:
                volume, side = read_mrc(path)
                vertices, faces = marching_cubes(close_border(volume), side, level)
            except (ValueError, OSError, EOFError) as err:
                tqdm.write(f'{os.path.basename(path)}: skipped ({err})')
                unreadable.append(f'{path} ({err})')
                continue
            stem = os.path.join(outdir, os.path.splitext(os.path.basename(path))[0])
            watertight = write_mesh(f'{stem}.{mesh_format}', vertices, faces)
            tqdm.write(
                f'{os.path.basename(stem)}: {len(vertices)} vertices, {"watertight" if watertight else "not watertight"}'
            )
        if unreadable:
            raise click.ClickException(
                f'{len(unreadable)} of {len(paths)} .mrc files gave no mesh, the first: {unreadable[0]}'
            )
        return
    pose = parse_pose(pose, device)
    require_shape_memory(shape_res, '--shape-res', device)
    G = load_generator(network, None, 0, device, trust_pickle)
    if latent is not None:
        loaded = load_latent_option(latent, G, device)
        stem = os.path.splitext(os.path.basename(latent))[0]
        save_posed_shape(
            G,
            loaded['ws'],
            pose if pose is not None else loaded['pose'],
            os.path.join(outdir, stem),
            shape_res,
            level,
            mesh_format,
            texture,
        )
        return
    condition = frontal_camera(1, device=device)
    for seed in tqdm(seeds, desc='seeds', unit='seed'):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(device)
        with torch.no_grad():
            ws = G.mapping(z, condition, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        save_posed_shape(G, ws, pose, os.path.join(outdir, f'seed{seed:04d}'), shape_res, level, mesh_format, texture)


if __name__ == '__main__':
    main()
