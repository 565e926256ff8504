"""Render images of a generator from a checkpoint (or a freshly initialized preset) at chosen cameras,
or re-render a folder of real portraits with the body poses its discriminator predicts for them."""

import math
import os

import click
import numpy as np
import torch
from tqdm import tqdm

from training.checkpoints.atomic_files import write_json
from training.cli import (
    MAX_SEEDS,
    SEED_RANGE,
    Command,
    FiniteFloat,
    camera_search_option,
    device_option,
    load_generator,
    load_generator_and_discriminator,
    make_outdir,
    parse_pose,
    parse_seeds,
    pose_predict_settings,
    require_render_memory,
    require_shape_memory,
    trust_pickle_option,
)
from training.data.camera_utils import VIEWS, camera_label, frontal_camera, orbit_camera
from training.data.dataset import stem
from training.data.images import depth_to_uint8, save_png, to_uint8
from training.data.landmark_models import ModelFilesError
from training.data.photo_aligner import align_in_memory
from training.data.photos import read_pose_folder
from training.engines.camera_search import CameraSearch
from training.engines.render_check import synthesis
from training.engines.shapes import DEFAULT_LEVEL, extract_shape, save_shape
from training.networks.d_input import resize_image
from training.pose_prediction import predict_real_poses


def predict_folder_poses(
    network: str,
    folder: str,
    pose_kwargs: str | None,
    device: torch.device,
    trust_pickle: bool = False,
    camera_search: bool = True,
) -> tuple:
    """D's body pose for every photo of such a folder, each photo on its own (batch 1, as in the
    published script, so that a pose does not depend on the other photos). Raw photos are aligned first, their
    cameras refined by G's camera search where `camera_search`.

    -> (G_ema, names, photos [N, 3, S, S] in [-1, 1], cameras [N, 25], poses [N, 6]); S = D's resolution.
    """
    path, G, D, contents = load_generator_and_discriminator(network, device, trust_pickle, '--predict-pose')
    kwargs = pose_predict_settings(path, contents, pose_kwargs, '--pose-kwargs')
    try:
        published = any(os.path.exists(os.path.join(folder, name)) for name in ('result.json', 'aligned_images'))
        if published:
            names, photos, masks, cameras = read_pose_folder(folder, D.img_resolution)
        else:
            refine = CameraSearch(G, device=device) if camera_search else None
            names, photos, masks, cameras, report = align_in_memory(folder, D.img_resolution, refine=refine)
            for name, line in report.items():
                click.echo(f'{name}: {line}')
    except (OSError, ValueError, ModelFilesError) as err:
        raise click.ClickException(str(err)) from None
    photos, masks, cameras = photos.to(device), masks.to(device), cameras.to(device)
    poses = predict_real_poses(D, photos, masks, cameras, kwargs, batch=1)
    return G, names, photos, cameras, poses


def render_photo_poses(
    G: torch.nn.Module,
    seeds: list,
    names: list,
    photos: torch.Tensor,
    cameras: torch.Tensor,
    poses: torch.Tensor,
    truncation_psi: float,
    truncation_cutoff: int | None,
    render_kwargs: dict,
    outdir: str,
    batch: int = 8,
) -> None:
    """Write outdir/seedNNNN_<stem>.png = [photo | G's image at the photo's camera and pose] per seed and photo.

    photos [N, 3, S', S'] in [-1, 1] (resized to G's output resolution S), cameras [N, 25], poses [N, 6].
    The latent is conditioned on the frontal camera and zero pose, as in every other mode.
    """
    device = cameras.device
    photos = to_uint8(resize_image(photos, G.img_resolution))
    condition = frontal_camera(1, device=device)
    for seed in tqdm(seeds, desc='seeds', unit='seed'):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(device)
        generator = torch.Generator(device).manual_seed(seed)
        with torch.no_grad():
            ws = G.mapping(z, condition, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
            renders = np.concatenate(
                [
                    to_uint8(
                        synthesis(G, ws.expand(len(c), -1, -1), c, pose_params=p, generator=generator, **render_kwargs)[
                            'image'
                        ]
                    )
                    for c, p in zip(cameras.split(batch), poses.split(batch))
                ]
            )
        for name, photo, render in zip(names, photos, renders):
            save_png(os.path.join(outdir, f'seed{seed:04d}_{stem(name)}.png'), np.concatenate([photo, render], axis=1))


@click.command(cls=Command)
@click.option('--network', help='Checkpoint (network pickle or weights file, path or URL), or a run directory')
@click.option('--cfg', help='Preset to initialize freshly instead of loading a checkpoint (e.g. cpu-small)')
@click.option('--init-seed', type=SEED_RANGE, default=0, show_default=True, help='Weight seed with --cfg')
@click.option(
    '--seeds',
    callback=lambda ctx, param, value: parse_seeds(value),
    default='0-3',
    show_default=True,
    help='Latent seeds, e.g. 0,2,5-9',
)
@click.option(
    '--seeds_num',
    'seeds_num',
    type=click.IntRange(1, MAX_SEEDS),
    default=None,
    help='Instead of --seeds: this many random seeds, drawn reproducibly from --seeds-seed',
)
@click.option('--seeds-seed', type=SEED_RANGE, default=0, show_default=True, help='Draws the seeds of --seeds_num')
@click.option('--trunc', 'truncation_psi', type=FiniteFloat(), default=1.0, show_default=True, help='Truncation psi')
@click.option(
    '--trunc-cutoff', 'truncation_cutoff', type=click.IntRange(min=0), default=None, help='Truncate only the first N ws'
)
@click.option('--views', default='back,side,front', show_default=True, help=f'Comma list of {", ".join(VIEWS)}')
@click.option('--pose', default=None, help='Render posed: six comma-separated neck/head axis-angle values, radians')
@click.option('--shapes', is_flag=True, help='Also write the density volume (.mrc) and a coloured mesh (.ply)')
@click.option(
    '--shape-res', type=click.IntRange(min=8), default=128, show_default=True, help='Shape grid size per axis'
)
@click.option(
    '--shape-level', type=FiniteFloat(), default=DEFAULT_LEVEL, show_default=True, help='Marching-cubes sigma level'
)
@click.option(
    '--sample-mult', type=click.IntRange(min=1), default=2, show_default=True, help='Multiply the samples per ray'
)
@click.option(
    '--predict-pose',
    'pose_folder',
    type=click.Path(exists=True, file_okay=False),
    help='Folder of real portraits (aligned_images/, mask/, result.json), or of raw photos (aligned first, as '
    "dataset_tool.py align): predict their body poses with D and render each seed with each photo's camera and pose",
)
@click.option(
    '--pose-kwargs',
    type=click.Path(dir_okay=False),
    help='Pose-prediction settings for --predict-pose [default: the pose_predict_kwargs-*.json beside the snapshot]',
)
@click.option('--outdir', type=click.Path(file_okay=False), required=True, help='Where to write the images')
@camera_search_option
@device_option
@trust_pickle_option
def main(
    network,
    cfg,
    init_seed,
    seeds,
    seeds_num,
    seeds_seed,
    truncation_psi,
    truncation_cutoff,
    views,
    pose,
    shapes,
    shape_res,
    shape_level,
    sample_mult,
    pose_folder,
    pose_kwargs,
    outdir,
    camera_search,
    device,
    trust_pickle,
):
    """Write, per seed, the super-resolved, raw and depth images at the chosen cameras, side by side.

    Conditioning is the frontal camera and zero body pose; the head is rendered in canonical space,
    or posed by --pose (deformation on). With --shapes, seedNNNN.mrc and seedNNNN.ply hold the
    canonical density and its mesh (metres, y up), coloured by the first 3 decoder feature channels.

    With --predict-pose DIR, the discriminator (D_ema, else D) predicts the body pose of every photo
    of DIR and the outputs are instead predicted_poses.json, {name: {"neck": [3],
    "head": [3]}} (axis-angle, radians, keyed as in DIR/result.json), and per seed and photo
    seedNNNN_<name>.png: the photo beside the generator's image from that photo's camera with its
    predicted pose (deformation on), both at the output resolution.
    """
    if seeds_num is not None:
        # Sampling without replacement from 2**31 values would build the whole permutation: draw until unique.
        rng, drawn = np.random.RandomState(seeds_seed), set()
        while len(drawn) < seeds_num:
            drawn.update(rng.randint(0, 2**31, seeds_num - len(drawn)).tolist())
        seeds = sorted(drawn)
    pose_params = parse_pose(pose, device)
    if pose_folder is not None and (network is None or cfg is not None or pose_params is not None or shapes):
        raise click.UsageError(
            '--predict-pose needs --network (its discriminator predicts the poses) and takes '
            'neither --cfg, --pose nor --shapes'
        )
    view_names = [name.strip() for name in views.split(',')]
    unknown = [name for name in view_names if name not in VIEWS]
    if unknown:
        raise click.BadParameter(f'unknown view {unknown[0]!r}', param_hint='--views')
    make_outdir(outdir)
    if pose_folder is not None:
        G, names, photos, cameras, poses = predict_folder_poses(
            network, pose_folder, pose_kwargs, device, trust_pickle, camera_search
        )
        write_json(
            os.path.join(outdir, 'predicted_poses.json'),
            {name: {'neck': p[:3], 'head': p[3:]} for name, p in zip(names, poses.tolist())},
        )
    else:
        G = load_generator(network, cfg, init_seed, device, trust_pickle)
    require_render_memory(G, len(view_names) if pose_folder is None else 1, sample_mult, device)
    if shapes:
        require_shape_memory(shape_res, '--shape-res', device)
    renderer = G.renderer
    render_kwargs = dict(
        depth_resolution=renderer.depth_resolution * sample_mult,
        depth_resolution_importance=renderer.depth_resolution_importance * sample_mult,
        noise_mode='const',
    )
    if pose_folder is not None:
        render_photo_poses(
            G, seeds, names, photos, cameras, poses, truncation_psi, truncation_cutoff, render_kwargs, outdir
        )
        print(f'wrote the poses of {len(names)} photos and {len(seeds) * len(names)} renders to {outdir}')
        return
    cameras = camera_label(orbit_camera(torch.tensor([VIEWS[name] for name in view_names]), math.pi / 2, device=device))
    condition = frontal_camera(1, device=device)
    for seed in tqdm(seeds, desc='seeds', unit='seed'):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(device)
        with torch.no_grad():
            ws = G.mapping(z, condition, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
            ws = ws.expand(len(view_names), -1, -1)
            pose = None if pose_params is None else pose_params.expand(len(view_names), -1)
            out = synthesis(
                G, ws, cameras, pose_params=pose, generator=torch.Generator(device).manual_seed(seed), **render_kwargs
            )
        for suffix, images in [
            ('', to_uint8(out['image'])),
            ('_raw', to_uint8(out['image_raw'])),
            ('_depth', depth_to_uint8(out['image_depth'])),
        ]:
            save_png(os.path.join(outdir, f'seed{seed:04d}{suffix}.png'), np.concatenate(list(images), axis=1))
        if shapes:
            tqdm.write(
                save_shape(extract_shape(G, ws[:1], shape_res, shape_level), os.path.join(outdir, f'seed{seed:04d}'))
            )
    print(f'wrote {len(seeds)} seeds to {outdir}')


if __name__ == '__main__':
    main()
