"""How much of the body pose the synthetic images show, and how well the discriminator's pose head can read it.

    python tools/pose_readability.py [--epochs 30] [--fakes-from SNAPSHOT] [--out readability.json]

1. **What the split between neck and head moves.** For identities of the built-in synthetic set,
   each rotation (nod, turn, tilt by --angle rad) is applied once at the neck joint and once at
   the head joint: the head's vertices end up this far apart, in pixels of the set's images,
   beside how far the rotation itself moves them. Rotating about the lower pivot only shifts the
   head a little; that shift is all an image shows of the split.
2. **Yardsticks** of `pose_err` on the set's labels: the error of always answering the mean pose
   (the training images' mean, on the held-out ones), and, over all labels, the errors of a
   reader that knows each head-on-torso rotation exactly but not how the turn (or every
   rotation) is split between the joints (training.pose_prediction.split_unseen_poses).
3. **Supervised ceiling.** A fresh discriminator of the preset, its trunk and pose head trained
   on the first 80 % of the labelled real images to predict their true poses (squared error,
   Adam with D's betas, --lr), measured on the other 20 % after every epoch. A discriminator in
   a GAN learns the pose from fakes only, so its error on real images is not expected to beat this.
4. **From fakes** (--fakes-from SNAPSHOT): the same, but the discriminator learns from that
   snapshot's fakes rendered at the training images' cameras and poses (a fresh latent each) and
   is measured on the same held-out real images. The difference from 3. is what the gap between
   the generator's fakes and the real images costs a pose reader; what lies beyond it in a GAN's
   own discriminator comes from the poses G renders and from learning beside the adversarial loss.

Expected figures (2,000 images at 64 px, the cpu-fast discriminator; 2 CPU cores, about 10 s per
epoch and a few seconds for the rest):
    nod / turn / tilt of 0.3 rad moved from the head to the neck joint: the head moves 4.6 / 1.6 / 4.4 px
    held-out yardstick, neck / head / head on torso              17.1 / 22.0 / 28.5 deg
    the turn's split unseen, neck / head                           9.0 / 9.0 deg
    no split seen, neck / head                                    13.6 / 13.6 deg
    supervised, epochs 21-30                                      13.4-15.1 / 19.7-21.5 / 19.6-21.4 deg
With --num-images 8000 (about 35 s per epoch):
    held-out yardstick, neck / head / head on torso              18.1 / 21.4 / 28.1 deg
    the turn's split unseen / no split seen, neck and head        9.2 / 13.7 deg
    supervised, epochs 21-30                                      11.7-12.4 / 14.2-15.7 / 11.5-13.3 deg
With --num-images 8000 --fakes-from pretrained/cpu-fast-64.pt (4 min to render the fakes):
    supervised on the fakes, epochs 21-30                         13.7-14.3 / 17.7-18.7 / 17.3-18.2 deg
"""

import argparse
import dataclasses
import os
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from metrics.metric_utils import load_real_batch  # noqa: E402
from training.checkpoints import formats, run_files  # noqa: E402
from training.checkpoints.atomic_files import write_json  # noqa: E402
from training.config import TrainingConfig  # noqa: E402
from training.data.dataset import PortraitDataset  # noqa: E402
from training.data.images import image_from_uint8, mask_from_uint8  # noqa: E402
from training.data.synthetic import PortraitPainter, ensure_synthetic_dataset, sample_scene  # noqa: E402
from training.networks.d_input import discriminator_input  # noqa: E402
from training.pose_prediction import pose_errors, split_unseen_poses  # noqa: E402
from training.presets import load_preset  # noqa: E402
from training.training_loop import build_networks  # noqa: E402

AXES = ('nod', 'turn', 'tilt')


def split_displacement(painter: PortraitPainter, scenes: list, angle: float, resolution: int) -> dict:
    """How far the head moves when a rotation moves from the head joint to the neck joint.

    scenes: synthetic Scenes (their identity and camera distance are used; their pose is not) ->
      {axis: {'split_px': mean distance between the head's vertices rotated at the neck and at the
      head joint, 'rotation_px': mean distance the rotation at the head joint moves them}}, both in
      pixels of an image of `resolution` (3D distances at the subject's distance: an upper bound on
      what the image shows of them).
    """
    split, rotation = np.zeros(3), np.zeros(3)
    for scene in scenes:
        body = painter.body(scene.betas)
        camera = scene.camera.astype(np.float64)
        pixels_per_metre = camera[16] * resolution / np.linalg.norm(camera[[3, 7, 11]])

        def head_vertices(pose: np.ndarray) -> np.ndarray:
            posed = dataclasses.replace(scene, pose=pose.astype(np.float32))
            return painter.vertices(posed, body)[painter.is_head].astype(np.float64)

        still = head_vertices(np.zeros(6))
        for axis in range(3):
            at_neck, at_head = np.zeros(6), np.zeros(6)
            at_neck[axis] = at_head[3 + axis] = angle
            head_turned = head_vertices(at_head)
            split[axis] += np.linalg.norm(head_vertices(at_neck) - head_turned, axis=1).mean() * pixels_per_metre
            rotation[axis] += np.linalg.norm(head_turned - still, axis=1).mean() * pixels_per_metre
    count = len(scenes)
    return {name: {'split_px': split[i] / count, 'rotation_px': rotation[i] / count} for i, name in enumerate(AXES)}


@torch.no_grad()
def fakes_at_labels(G: torch.nn.Module, cameras: torch.Tensor, poses: torch.Tensor, batch: int, seed: int) -> dict:
    """G's fakes at given cameras and body poses, one fresh latent each, as D sees fakes (no blur).

    cameras [N, 25], poses [N, 6] -> {'image' [N, 3, S, S], 'image_raw' [N, 3, r, r], 'image_mask' [N, 1, r, r]}.
    The mapping is conditioned on the same camera and pose; truncation 1, random noise.
    """
    torch.manual_seed(seed)
    parts = []
    for first in range(0, len(cameras), batch):
        c, pose = cameras[first : first + batch], poses[first : first + batch]
        ws = G.mapping(torch.randn([len(c), G.z_dim]), c, pose)
        out = G.synthesis(ws, c, pose_params=pose, noise_mode='random')
        parts.append({key: out[key] for key in ('image', 'image_raw', 'image_mask')})
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def supervised_ceiling(
    config: TrainingConfig,
    dataset: PortraitDataset,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    fakes_from: torch.nn.Module | None = None,
    log=print,
) -> list[dict]:
    """Train a fresh D's pose prediction on the first 80 % of `dataset`'s labels -> per epoch, held-out pose_errors.

    It learns from the labelled images themselves, or, with a generator `fakes_from`, from that G's fakes
    rendered at the same cameras and poses (fakes_at_labels); it is measured on the other 20 % of the images.
    """
    torch.manual_seed(seed)
    images, masks, cameras, poses = load_real_batch(dataset, np.arange(len(dataset)))
    images, masks = image_from_uint8(images), mask_from_uint8(masks)
    split = len(dataset) * 4 // 5
    train, held_out = np.arange(split), np.arange(split, len(dataset) - (len(dataset) - split) % batch)
    resolution = config.neural_rendering_resolution_initial
    fakes = None if fakes_from is None else fakes_at_labels(fakes_from, cameras[train], poses[train], batch, seed)
    _, D = build_networks(config, torch.device('cpu'))
    D.requires_grad_(True)
    optimizer = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.99))

    def real_input(indices: np.ndarray) -> dict:
        return discriminator_input({'image': images[indices], 'mask': masks[indices]}, 0.0, resolution)

    def training_input(indices: np.ndarray) -> dict:
        if fakes is None:
            return real_input(indices)
        return {key: value[indices] for key, value in fakes.items()}  # train == arange(split): an index is its row

    history = []
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        start = time.time()
        order = rng.permutation(train)
        for first in range(0, len(order) - batch + 1, batch):
            chosen = order[first : first + batch]
            loss = (D.predict_pose(training_input(chosen), cameras[chosen]) - poses[chosen]).square().sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            chunks = [held_out[first : first + batch] for first in range(0, len(held_out), batch)]
            predicted = torch.cat([D.predict_pose(real_input(chunk), cameras[chunk]) for chunk in chunks])
        errors = pose_errors(predicted, poses[held_out])
        history.append({'epoch': epoch + 1, **errors})
        log(
            f'epoch {epoch + 1}: held-out neck {errors["neck_mean"]:.1f}, head {errors["head_mean"]:.1f}, '
            f'head on torso {errors["head_torso_mean"]:.1f} deg ({time.time() - start:.0f} s)'
        )
    return history


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg', default='cpu-fast', help='preset whose discriminator is trained  [default: cpu-fast]')
    parser.add_argument('--data-dir', default='datasets', help='where the synthetic set is kept  [default: datasets]')
    parser.add_argument('--num-images', type=int, default=2000, help='images in the synthetic set  [default: 2000]')
    parser.add_argument('--scenes', type=int, default=40, help='identities for the split displacement')
    parser.add_argument('--angle', type=float, default=0.3, help='rotation of the split displacement, rad')
    parser.add_argument('--epochs', type=int, default=30, help='epochs of the supervised ceiling (0: skip it)')
    parser.add_argument('--batch', type=int, default=16, help='batch of the supervised ceiling')
    parser.add_argument('--lr', type=float, default=1e-3, help='Adam learning rate of the supervised ceiling')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--fakes-from',
        metavar='SNAPSHOT',
        help="also train the supervised discriminator on this snapshot's fakes at the same labels, measured on the reals",
    )
    parser.add_argument('--out', help='also write the figures to this JSON file')
    args = parser.parse_args()

    preset = load_preset(args.cfg)
    resolution = preset['generator']['img_resolution']
    data, seg_data = ensure_synthetic_dataset(args.data_dir, num_images=args.num_images, resolution=resolution)
    config = TrainingConfig.from_preset(preset, args.cfg, data=data, seg_data=seg_data, gpus=1)
    dataset = PortraitDataset(data, seg_data)
    painter = PortraitPainter()
    scenes = [sample_scene(0, idx) for idx in range(args.scenes)]
    report = {'split_displacement': split_displacement(painter, scenes, args.angle, resolution)}
    for axis, moved in report['split_displacement'].items():
        print(
            f'{axis} of {args.angle:g} rad at the neck instead of the head joint: the head moves '
            f'{moved["split_px"]:.2f} px (the {axis} itself moves it {moved["rotation_px"]:.2f} px)'
        )

    labels = torch.from_numpy(np.stack([dataset.get_pose(i) for i in range(len(dataset))]).astype(np.float64))
    held_out = labels[len(labels) * 4 // 5 :]
    train_mean = labels[: len(labels) * 4 // 5].mean(dim=0, keepdim=True)
    report['held_out_yardstick'] = pose_errors(train_mean.expand_as(held_out), held_out)
    report['turn_split_unseen'] = pose_errors(split_unseen_poses(labels, axes=(1,)), labels)
    report['no_split_seen'] = pose_errors(split_unseen_poses(labels), labels)
    for name in ('held_out_yardstick', 'turn_split_unseen', 'no_split_seen'):
        figures = report[name]
        print(
            f'{name}: neck {figures["neck_mean"]:.1f}, head {figures["head_mean"]:.1f}, '
            f'head on torso {figures["head_torso_mean"]:.1f} deg'
        )
    if args.epochs > 0:
        report['supervised'] = supervised_ceiling(config, dataset, args.epochs, args.batch, args.lr, args.seed)
    if args.epochs > 0 and args.fakes_from:
        G, _ = run_files.snapshot_networks(formats.load_any(args.fakes_from), args.fakes_from)
        report['supervised_on_fakes'] = supervised_ceiling(
            config, dataset, args.epochs, args.batch, args.lr, args.seed, fakes_from=G.eval().requires_grad_(False)
        )
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
