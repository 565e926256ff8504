"""Invert real portraits: find the latent (and, with pivotal tuning, a tuned generator) that re-renders
each photo, then write its reconstruction, a 360-degree video and a mesh."""

import os
import sys

import click
import numpy as np
import torch

from training.checkpoints import formats
from training.checkpoints.atomic_files import write_json
from training.checkpoints.latent_file import save_latent
from training.cli import (
    SEED_RANGE,
    Command,
    FiniteFloat,
    camera_search_option,
    device_option,
    load_generator_and_discriminator,
    make_outdir,
    parse_pose,
    pose_predict_settings,
    require_shape_memory,
    trust_pickle_option,
)
from training.data.camera_utils import frontal_camera
from training.data.dataset import PortraitDataset, stem
from training.data.images import image_from_uint8, mask_from_uint8, save_png, to_uint8
from training.data.landmark_models import ModelFilesError
from training.data.photo_aligner import align_in_memory
from training.data.photos import read_photo, read_pose_folder
from training.engines.camera_search import CameraSearch
from training.engines.inversion import InversionConfig, optimize_latent, prepare_target, render, tune_generator
from training.engines.shapes import DEFAULT_LEVEL, extract_shape, pose_vertices, save_shape
from training.engines.video import write_video
from training.networks.d_input import resize_image
from training.pose_prediction import predict_real_poses


def parse_camera(text: str, device: torch.device) -> torch.Tensor:
    """'front', 16 comma-separated values (a 4x4 cam2world matrix, row-major; intrinsics of the data
    sets) or 25 (a full camera label) -> camera [1, 25]."""
    if text.strip() == 'front':
        return frontal_camera(1, device=device)
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError:
        raise click.BadParameter(
            f'{text!r}: expected "front" or 16 or 25 comma-separated numbers', param_hint='--camera'
        ) from None
    if len(values) not in (16, 25) or not np.isfinite(values).all():
        raise click.BadParameter(
            f'{len(values)} values: expected "front" or 16 (cam2world) or 25 (camera label) finite numbers',
            param_hint='--camera',
        )
    if len(values) == 16:
        values = values + frontal_camera(1)[0, 16:].tolist()
    return torch.tensor([values], dtype=torch.float32, device=device)


def read_inputs(image: str, mask: str | None, camera: str | None, resolution: int, refine=None) -> tuple:
    """The photos to invert, on the CPU -> (names, photos [N, 3, R, R] in [-1, 1], masks [N, 1, R, R] in [0, 1],
    cameras [N, 25]).

    image: one image file (with --mask FILE and --camera; without both, a raw photo aligned here, its camera then
    refined by `refine(alignment) -> alignment` where given), a folder in
    the layout of the published data-processing pipeline (aligned_images/, mask/, result.json), or a data set of
    this project (a zip or folder with dataset.json; --mask names its masks).
    """
    try:
        if os.path.isfile(image) and not image.endswith('.zip') and mask is None and camera is None:
            names, photos, masks, cameras, report = align_in_memory(image, resolution, refine=refine)
            click.echo(f'{image}: no --camera given: {report[os.path.basename(image)]} (dataset_tool.py align)')
            return names, photos, masks, cameras
        if os.path.isfile(image) and not image.endswith('.zip'):
            if mask is None or camera is None:
                raise click.UsageError('a single image needs its person mask (--mask FILE) and its camera (--camera)')
            photos = read_photo(image, 'RGB', resolution) * 2 - 1
            masks = read_photo(mask, 'L', resolution)
            return [os.path.basename(image)], photos, masks, parse_camera(camera, torch.device('cpu'))
        if camera is not None:
            raise click.UsageError(
                '--camera is for a single image: the cameras of a folder come from its result.json or dataset.json'
            )
        if os.path.isfile(os.path.join(image, 'result.json')):
            if mask is not None:
                raise click.UsageError(f'{image} holds its masks in mask/: leave out --mask')
            return read_pose_folder(image, resolution)
        if mask is None:
            raise click.UsageError(
                f'{image}: a data set with dataset.json needs its masks (--mask, a zip or folder); '
                f'a folder of the published layout needs result.json'
            )
        dataset = PortraitDataset(image, mask)
        names, photos, masks, cameras = [], [], [], []
        for idx in range(len(dataset)):
            img, seg, c, _ = dataset[idx]
            names.append(dataset.get_details(idx).image_name)
            photos.append(image_from_uint8(torch.from_numpy(img)[None]))
            masks.append(mask_from_uint8(torch.from_numpy(seg)[None]))
            cameras.append(torch.from_numpy(c)[None])
        return (
            names,
            resize_image(torch.cat(photos), resolution),
            resize_image(torch.cat(masks), resolution).clamp(0, 1),
            torch.cat(cameras),
        )
    except (OSError, ValueError, ModelFilesError) as err:
        raise click.ClickException(str(err)) from None


def _save_image(path: str, images: list) -> None:
    """Images [1, 3, S, S] in [-1, 1] -> one PNG, side by side."""
    save_png(path, np.concatenate([to_uint8(image)[0] for image in images], axis=1))


@click.command(cls=Command)
@click.option(
    '--network', required=True, help='Checkpoint with G and D (network pickle or weights file), or a run directory'
)
@click.option(
    '--image',
    'image_path',
    required=True,
    type=click.Path(exists=True),
    help='A photo (a raw photo, aligned first when no --camera is given; or an aligned square crop with --mask '
    'and --camera), a folder of the published layout (aligned_images/, mask/, result.json), or a data set with '
    'dataset.json',
)
@click.option(
    '--mask',
    'mask_path',
    type=click.Path(exists=True),
    help='Person mask of --image (file), or the masks of a data set',
)
@click.option('--camera', help='Camera of a single photo: front, 16 values (cam2world) or 25 (camera label)')
@click.option(
    '--pose', help='Body pose of every photo, six comma-separated neck/head axis-angle values [default: predicted by D]'
)
@click.option(
    '--pose-kwargs',
    type=click.Path(dir_okay=False),
    help='Pose-prediction settings [default: the pose_predict_kwargs-*.json beside the snapshot]',
)
@click.option('--refine-pose', is_flag=True, help='Optimize the body pose along with the latent')
@click.option(
    '--w-steps', type=click.IntRange(min=1), default=500, show_default=True, help='Steps of the latent optimization'
)
@click.option('--w-plus', is_flag=True, help='Optimize one w per layer (w+) instead of one w')
@click.option(
    '--w-lr',
    type=FiniteFloat(min=0, min_open=True),
    default=InversionConfig.w_lr,
    show_default=True,
    help='Peak learning rate of the latent',
)
@click.option(
    '--pti-steps',
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help='Steps of pivotal tuning of the generator (0: latent only)',
)
@click.option(
    '--pti-lr',
    type=FiniteFloat(min=0, min_open=True),
    default=InversionConfig.pti_lr,
    show_default=True,
    help='Learning rate of pivotal tuning',
)
@click.option(
    '--locality',
    type=FiniteFloat(min=0),
    default=InversionConfig.locality_weight,
    show_default=True,
    help='Weight of the locality term of pivotal tuning',
)
@click.option(
    '--video/--no-video', default=True, show_default=True, help='Write a 360-degree orbit video of each result'
)
@click.option('--frames', type=click.IntRange(min=2), default=120, show_default=True, help='Frames of the video')
@click.option('--mesh/--no-mesh', default=True, show_default=True, help='Write a posed mesh of each result')
@click.option('--shape-res', type=click.IntRange(min=8), default=128, show_default=True, help='Mesh grid size per axis')
@click.option(
    '--seed', type=SEED_RANGE, default=0, show_default=True, help='Seed of the latent noise and the locality latents'
)
@click.option('--outdir', type=click.Path(file_okay=False), required=True)
@camera_search_option
@device_option
@trust_pickle_option
def main(
    network,
    image_path,
    mask_path,
    camera,
    pose,
    pose_kwargs,
    refine_pose,
    w_steps,
    w_plus,
    w_lr,
    pti_steps,
    pti_lr,
    locality,
    video,
    frames,
    mesh,
    shape_res,
    seed,
    outdir,
    camera_search,
    device,
    trust_pickle,
):
    """Per photo, in OUTDIR/<photo name>/:

    \b
    latent.npz          the latent (ws), body pose and camera (gen_videos/extract_shapes --latent take it)
    G_tuned.pt          the tuned generator, weights only (with --pti-steps; --network of those tools)
    reconstruction.png  the photo | the latent's render | the tuned generator's render (with --pti-steps)
    orbit.mp4, mesh.ply a 360-degree video and the posed mesh of the result
    losses.json         the loss terms of every step of both stages

    The latent starts at the mean latent; the loss compares the render with the photo inside its
    person mask (pixels, alpha, and activations of the snapshot's discriminator). Ctrl-C ends the
    running stage and writes what it reached.
    """
    given_pose = parse_pose(pose, device)
    if mesh:
        require_shape_memory(shape_res, '--shape-res', device)
    path, G, D, contents = load_generator_and_discriminator(
        network, device, trust_pickle, 'inversion (D predicts the pose and gives the perceptual loss)'
    )
    refine = CameraSearch(G, device=device) if camera_search else None
    names, photos, masks, cameras = read_inputs(image_path, mask_path, camera, G.img_resolution, refine)
    photos, masks, cameras = photos.to(device), masks.to(device), cameras.to(device)
    if given_pose is not None:
        poses = given_pose.expand(len(names), -1)
    else:
        kwargs = pose_predict_settings(path, contents, pose_kwargs, '--pose-kwargs', other_way='--pose, or ')
        poses = predict_real_poses(D, photos, masks, cameras, kwargs, batch=1)
    make_outdir(outdir)
    config = InversionConfig(
        w_steps=w_steps,
        w_plus=w_plus,
        w_lr=w_lr,
        refine_pose=refine_pose,
        pti_steps=pti_steps,
        pti_lr=pti_lr,
        locality_weight=locality,
    )
    for name, photo, mask, c, p in zip(names, photos.split(1), masks.split(1), cameras.split(1), poses.split(1)):
        folder = make_outdir(os.path.join(outdir, stem(name)))
        click.echo(f'{name}:')
        target = prepare_target(G, photo, mask)
        latent = optimize_latent(G, D, target, c, p, config, seed=seed)
        save_latent(os.path.join(folder, 'latent.npz'), latent.ws, latent.pose, c)
        losses = {'w': latent.losses}
        with torch.no_grad():
            renders = [target.image, render(G, latent.ws, c, latent.pose)['image']]
        result_G, interrupted = G, latent.interrupted
        if pti_steps > 0 and not interrupted:
            result_G, tuned = tune_generator(G, D, target, latent.ws, c, latent.pose, config, seed=seed)
            losses['pti'] = tuned.losses
            interrupted = tuned.interrupted
            formats.save_weights(
                os.path.join(folder, 'G_tuned.pt'),
                {'G_ema': result_G},
                extra=dict(neural_rendering_resolution=int(G.neural_rendering_resolution)),
            )
            with torch.no_grad():
                renders.append(render(result_G, latent.ws, c, latent.pose)['image'])
        _save_image(os.path.join(folder, 'reconstruction.png'), renders)
        write_json(os.path.join(folder, 'losses.json'), dict(losses, interrupted=interrupted), indent=None)
        if interrupted:
            click.echo(f'interrupted: {folder} holds what the stage reached', err=True)
            sys.exit(130)
        with torch.no_grad():
            if video:
                write_video(
                    result_G,
                    [latent.ws.expand(frames, -1, -1)],
                    (1, 1),
                    os.path.join(folder, 'orbit.mp4'),
                    'orbit',
                    'image',
                    fps=30,
                    sample_mult=1,
                    pose_amplitude=0.0,
                    base_pose=latent.pose,
                )
            if mesh:
                shape = extract_shape(result_G, latent.ws, shape_res, DEFAULT_LEVEL)
                if shape['vertices'] is not None:
                    shape['vertices'] = pose_vertices(result_G.deformer, shape['vertices'], latent.pose)
                click.echo(save_shape(shape, os.path.join(folder, 'mesh'), 'ply'))
        final = (losses.get('pti') or losses['w'])[-1]['total']
        click.echo(f'{name}: loss {losses["w"][0]["total"]:.4f} -> {final:.4f}; wrote {folder}')


if __name__ == '__main__':
    main()
