"""Inversion measured against ground truth from novel views: held-out synthetic portraits, inverted from one view
and compared, from that view and five others, with the painter's render of the same portrait.

    python -m benchmarks.inversion --network SNAPSHOT [--num 4] [--first-index 100000] [--data-seed 0]
        [--w-steps 300] [--pti-steps 100] [--w-plus] [--given-pose] [--device cpu] [--threads N] [--json OUT.json]

Portraits first_index .. first_index + num - 1 of the synthetic set with --data-seed (training sets use
indices 0 .. N-1 with N <= 100000, so the default ones were never trained on) are rendered at the
generator's resolution. Each is inverted as a user would invert a photo: the body pose predicted by D with
the pose-prediction JSON beside the snapshot (or the true pose with --given-pose), then the latent
(`optimize_latent`), then the generator around it (`tune_generator`). The generator's renders after each
stage are compared with the painter's renders of the portrait from the input camera and from that camera
turned by +45, -45, +90, -90 and 180 degrees about the vertical axis through the look-at pivot: PSNR and
SSIM on 8-bit RGB, whole image. Printed: seconds per image of each stage, the pose error of D's
prediction and a markdown table of the means; --json writes the same numbers per portrait and as means.
"""

import argparse
import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from training.checkpoints import formats, run_files
from training.data.camera_utils import PIVOT
from training.data.images import image_from_uint8, to_uint8
from training.data.synthetic import PortraitPainter, Scene, sample_scene
from training.engines.inversion import InversionConfig, optimize_latent, prepare_target, render, tune_generator
from training.networks.d_input import resize_image
from training.pose_prediction import pose_errors, predict_real_poses

VIEWS = {
    'input': 0.0,
    '+45': 45.0,
    '-45': -45.0,
    '+90': 90.0,
    '-90': -90.0,
    '180': 180.0,
}  # name -> yaw offset, degrees
STAGES = ('w', 'w_pti')  # after the latent optimization; after pivotal tuning on top of it
METRICS = ('psnr', 'ssim', 'psnr_portrait', 'ssim_portrait')  # whole image; portrait over grey


def yaw_offset_camera(camera: torch.Tensor, degrees: float, pivot=PIVOT) -> torch.Tensor:
    """Camera labels turned by `degrees` about the vertical (world y) axis through the look-at pivot.

    camera [25] or [B, 25] -> the same shape and dtype.
    Positive degrees move the camera toward world +x, the subject's left (`camera_utils.camera_yaw` grows by
    that much); its distance to the pivot, its height and its intrinsics stay, and it still looks at the pivot.
    """
    c = camera.reshape(-1, 25).double()
    cam2world = c[:, :16].reshape(-1, 4, 4).clone()
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rotation = torch.tensor([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]], dtype=torch.float64, device=c.device)
    center = torch.tensor(pivot, dtype=torch.float64, device=c.device)
    cam2world[:, :3, 3] = (cam2world[:, :3, 3] - center) @ rotation.T + center
    cam2world[:, :3, :3] = rotation @ cam2world[:, :3, :3]
    return torch.cat([cam2world.reshape(-1, 16), c[:, 16:]], dim=1).to(camera.dtype).reshape(camera.shape)


def view_scene(scene: Scene, degrees: float) -> Scene:
    """The scene seen from its camera turned by `degrees` (`yaw_offset_camera`), its lights fixed in the world.

    The painter takes light directions in the camera's frame, so replacing the camera alone would carry the
    lights around with it and relight the portrait; a second photo of the same portrait keeps them in place.
    """
    camera = yaw_offset_camera(torch.from_numpy(scene.camera), degrees).numpy()
    before = scene.camera.astype(np.float64)[:16].reshape(4, 4)[:3, :3]
    after = camera.astype(np.float64)[:16].reshape(4, 4)[:3, :3]
    # World directions are dirs @ R.T; in the new frame they are dirs @ before.T @ after. Written as an increment
    # so that a turn by 0 leaves the scene bit for bit (before.T @ before is the identity only to float32 precision).
    light_dirs = scene.light_dirs + scene.light_dirs @ before.T @ (after - before)
    return dataclasses.replace(scene, camera=camera, light_dirs=light_dirs)


def ground_truth(painter: PortraitPainter, scene: Scene, degrees: float, resolution: int) -> tuple:
    """The painter's render of the scene from its camera turned by `degrees` -> (image uint8 [R, R, 3], mask uint8 [R, R])."""
    return painter.render(view_scene(scene, degrees), resolution)


def on_grey(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """image uint8 [R, R, 3] composited by alpha [R, R] in [0, 1] over uniform grey (128) -> uint8 [R, R, 3].

    Inversion fits the person only (its loss is masked): on a shared background, the metrics measure the
    portrait's shape and colours and not how the generator's free background differs from the photo's.
    """
    blended = image.astype(np.float64) * alpha[..., None] + 128.0 * (1 - alpha[..., None])
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def image_metrics(prediction: np.ndarray, truth: np.ndarray) -> dict:
    """prediction, truth uint8 [R, R, 3] -> {'psnr': dB, 'ssim': float}, whole image."""
    return dict(
        psnr=float(peak_signal_noise_ratio(truth, prediction, data_range=255)),
        ssim=float(structural_similarity(truth, prediction, channel_axis=-1, data_range=255)),
    )


@torch.no_grad()
def view_metrics(G: torch.nn.Module, ws: torch.Tensor, pose: torch.Tensor, camera: torch.Tensor, truths: dict) -> dict:
    """G's render of ws [1, num_ws, w_dim] in pose [1, 6] from camera [25] turned by each of VIEWS, against
    truths {view: (image uint8 [R, R, 3], mask uint8 [R, R])} -> {view: {'psnr', 'ssim', 'psnr_portrait',
    'ssim_portrait'}}: whole images, and both portraits over grey (each by its own mask or alpha)."""
    result = {}
    for name, degrees in VIEWS.items():
        turned = yaw_offset_camera(camera, degrees)[None].to(ws.device)
        out = render(G, ws, turned, pose)
        image = to_uint8(out['image'])[0]
        alpha = resize_image(out['image_mask'], G.img_resolution).clamp(0, 1)[0, 0].cpu().numpy()
        truth, mask = truths[name]
        portrait = image_metrics(on_grey(image, alpha), on_grey(truth, mask / 255.0))
        result[name] = dict(image_metrics(image, truth), psnr_portrait=portrait['psnr'], ssim_portrait=portrait['ssim'])
    return result


def photo_tensors(image: np.ndarray, mask: np.ndarray, device: torch.device) -> tuple:
    """image uint8 [R, R, 3], mask uint8 [R, R] -> (photo [1, 3, R, R] in [-1, 1], mask [1, 1, R, R] in [0, 1]),
    scaled as the data set loader scales them."""
    photo = image_from_uint8(torch.from_numpy(image).permute(2, 0, 1)[None], device)
    return photo, torch.from_numpy(mask)[None, None].float().div(255).to(device)


def benchmark_portrait(
    G: torch.nn.Module,
    D: torch.nn.Module,
    painter: PortraitPainter,
    scene: Scene,
    pose_predict_kwargs: dict | None,
    config: InversionConfig,
    device: torch.device,
) -> dict:
    """Invert one portrait from its camera and measure both stages from every view.

    pose_predict_kwargs None: the scene's true pose is used -> {'pose_true', 'pose_used': [6] lists,
    'seconds': {'w', 'pti'}, 'metrics': {stage: {view: {metric: value for metric in METRICS}}}}
    """
    resolution = G.img_resolution
    image, mask = painter.render(scene, resolution)
    photo, seg = photo_tensors(image, mask, device)
    camera = torch.from_numpy(scene.camera)
    pose_true = torch.from_numpy(scene.pose)[None].to(device)
    if pose_predict_kwargs is None:
        pose = pose_true
    else:
        # One photo at a time, as a user predicts it, so that a pose does not depend on the other portraits.
        pose = predict_real_poses(
            D,
            resize_image(photo, D.img_resolution),
            resize_image(seg, D.img_resolution),
            camera[None].to(device),
            pose_predict_kwargs,
            batch=1,
        )
    target = prepare_target(G, photo, seg)

    start = time.perf_counter()
    latent = optimize_latent(G, D, target, camera[None].to(device), pose, config, progress=False)
    w_seconds = time.perf_counter() - start
    if latent.interrupted:
        raise KeyboardInterrupt  # A stage cut short by Ctrl-C would be measured as if it had finished.
    start = time.perf_counter()
    tuned, tuning = tune_generator(
        G, D, target, latent.ws, camera[None].to(device), latent.pose, config, progress=False
    )
    pti_seconds = time.perf_counter() - start
    if tuning.interrupted:
        raise KeyboardInterrupt

    truths = {name: ground_truth(painter, scene, degrees, resolution) for name, degrees in VIEWS.items()}
    metrics = {
        'w': view_metrics(G, latent.ws, latent.pose, camera, truths),
        'w_pti': view_metrics(tuned, latent.ws, latent.pose, camera, truths),
    }
    return dict(
        pose_true=pose_true[0].tolist(),
        pose_used=latent.pose[0].tolist(),
        seconds=dict(w=w_seconds, pti=pti_seconds),
        metrics=metrics,
    )


def mean_metrics(portraits: list) -> dict:
    """The per-portrait metrics averaged -> {stage: {view: {'psnr', 'ssim', 'psnr_portrait', 'ssim_portrait'}}}."""
    return {
        stage: {
            view: {key: float(np.mean([p['metrics'][stage][view][key] for p in portraits])) for key in METRICS}
            for view in VIEWS
        }
        for stage in STAGES
    }


def markdown_table(means: dict, w_plus: bool) -> str:
    """Rows = views, columns = PSNR and SSIM after each stage, whole image and portrait over grey."""
    latent = 'W+' if w_plus else 'W'
    lines = [
        f'| view | {latent} PSNR | {latent} SSIM | {latent} + PTI PSNR | {latent} + PTI SSIM | '
        f'portrait: {latent} PSNR | {latent} SSIM | {latent} + PTI PSNR | {latent} + PTI SSIM |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for view in VIEWS:
        cells = [
            f'{means[stage][view]["psnr" + kind]:.2f} | {means[stage][view]["ssim" + kind]:.4f}'
            for kind in ('', '_portrait')
            for stage in STAGES
        ]
        lines.append(f'| {view} | {" | ".join(cells)} |')
    return '\n'.join(lines)


def load_snapshot(parser: argparse.ArgumentParser, path: str, given_pose: bool, device: torch.device) -> tuple:
    """-> (G, D, pose_predict_kwargs or None with given_pose), in eval mode; every problem a one-line parser error."""
    try:
        contents = formats.load_any(path, device=device)
        G, D = run_files.snapshot_networks(contents, path)
    except (OSError, ValueError, formats.CheckpointError) as err:
        parser.error(str(err))
    if G is None:
        parser.error(f'{path}: the snapshot holds no generator (G_ema or G)')
    if D is None:
        parser.error(
            f"{path}: the snapshot holds no discriminator (D_ema or D), which the inversion's perceptual "
            f'loss and the pose prediction need'
        )
    kwargs = None
    if not given_pose:
        try:
            kwargs = run_files.find_pose_predict_kwargs(path, contents)
        except (OSError, ValueError) as err:
            parser.error(f'{err}; D predicts the pose with these settings, or pass --given-pose')
        if kwargs is None:
            parser.error(
                f'{path} carries no pose-prediction settings and there is no {run_files.pose_predict_kwargs_for(path)}'
                f' beside it: D predicts the pose with them, or pass --given-pose'
            )
    return G.eval().requires_grad_(False), D.eval().requires_grad_(False), kwargs


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text}: expected a positive integer')
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'{text}: expected an integer >= 0')
    return value


def main(argv: list | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--network', required=True, help='network snapshot (.pkl or .pt) with G and D')
    parser.add_argument('--num', type=positive_int, default=4, help='portraits to invert')
    parser.add_argument('--first-index', type=non_negative_int, default=100000, help='index of the first portrait')
    parser.add_argument('--data-seed', type=int, default=0, help='seed of the synthetic set')
    parser.add_argument('--w-steps', type=non_negative_int, default=300, help='steps of the latent optimization')
    parser.add_argument('--pti-steps', type=non_negative_int, default=100, help='steps of pivotal tuning')
    parser.add_argument('--w-plus', action='store_true', help='optimize w+ (one w per layer) instead of w')
    parser.add_argument('--given-pose', action='store_true', help="use the true body pose instead of D's prediction")
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--threads',
        type=positive_int,
        help='CPU threads of torch (default: its own choice); on '
        'cores that other processes share, 1 can be many times faster than more',
    )
    parser.add_argument('--json', help='also write the numbers, per portrait and means, to this file')
    args = parser.parse_args(argv)
    if args.json is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f'--json {args.json}: its folder does not exist')
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    G, D, pose_predict_kwargs = load_snapshot(parser, args.network, args.given_pose, device)
    config = InversionConfig(w_steps=args.w_steps, pti_steps=args.pti_steps, w_plus=args.w_plus)
    painter = PortraitPainter()
    indices = range(args.first_index, args.first_index + args.num)
    print(
        f'{args.network}: {len(indices)} portraits ({indices[0]} .. {indices[-1]} of data seed {args.data_seed}) '
        f'at {G.img_resolution}x{G.img_resolution}; {"w+" if args.w_plus else "w"} {args.w_steps} steps, '
        f'PTI {args.pti_steps} steps; pose {"given" if args.given_pose else "predicted by D"}; {device}, '
        f'{torch.get_num_threads()} threads',
        flush=True,
    )

    portraits = []
    for idx in indices:
        result = dict(
            index=idx,
            **benchmark_portrait(G, D, painter, sample_scene(args.data_seed, idx), pose_predict_kwargs, config, device),
        )
        errors = pose_errors(torch.tensor([result['pose_used']]), torch.tensor([result['pose_true']]))
        result['pose_error'] = dict(neck=errors['neck_mean'], head=errors['head_mean'])
        portraits.append(result)
        metrics = result['metrics']
        print(
            f'portrait {idx}: W {result["seconds"]["w"]:.1f} s, PTI {result["seconds"]["pti"]:.1f} s; pose error '
            f'neck {errors["neck_mean"]:.1f}, head {errors["head_mean"]:.1f} degrees; PSNR input '
            f'{metrics["w"]["input"]["psnr"]:.2f} / {metrics["w_pti"]["input"]["psnr"]:.2f}, 180 '
            f'{metrics["w"]["180"]["psnr"]:.2f} / {metrics["w_pti"]["180"]["psnr"]:.2f} dB (W / W + PTI)',
            flush=True,
        )

    errors = pose_errors(
        torch.tensor([p['pose_used'] for p in portraits]), torch.tensor([p['pose_true'] for p in portraits])
    )
    report = dict(
        network=args.network,
        first_index=args.first_index,
        num=args.num,
        data_seed=args.data_seed,
        resolution=G.img_resolution,
        pose='given' if args.given_pose else 'predicted',
        config=dataclasses.asdict(config),
        device=str(device),
        threads=torch.get_num_threads(),
        views=VIEWS,
        seconds_per_image=dict(
            w=float(np.mean([p['seconds']['w'] for p in portraits])),
            pti=float(np.mean([p['seconds']['pti'] for p in portraits])),
        ),
        pose_error=errors,
        mean=mean_metrics(portraits),
        portraits=portraits,
    )
    print(
        f'\nseconds per image: W {report["seconds_per_image"]["w"]:.1f}, PTI {report["seconds_per_image"]["pti"]:.1f}'
    )
    print(
        f'pose error ({report["pose"]}), mean over portraits: neck {errors["neck_mean"]:.2f}, '
        f'head {errors["head_mean"]:.2f} degrees\n'
    )
    print(markdown_table(report['mean'], args.w_plus), flush=True)
    if args.json is not None:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == '__main__':
    main()
