"""Learning checks of the discriminator's pose predictor (training/networks/dual_discriminator.py).

On a fixed set of rendered portraits with exact poses (the built-in synthetic set), a few hundred
steps of D's pose regression (the loss D minimizes on fakes, docs/method.md §7.3) bring the angular error of
its predictions far below that of the best constant, the set's mean pose. Gradients must reach
the pose head and the trunk through the mirror canonicalization for this to happen.

And in a short training run with the cpu-fast preset's losses and schedules (on the tests' tiny
networks and a 64-image set at 32 px, 4 kimg, about 3 minutes on 2 cores), D learns the poses that
G's pose branch renders: pose_err's error on fakes falls from above to below the error of always
answering the mean of G's poses.
"""

import json
import os

import pytest
import torch

from metrics import metric_main, metric_utils
from tests.tiny_run import TINY_GENERATOR, TINY_TRAINING, tiny_setup
from training.checkpoints import formats, run_files
from training.config import TrainingConfig
from training.data.dataset import PortraitDataset
from training.data.images import image_from_uint8
from training.data.synthetic import build_synthetic_dataset
from training.networks.d_input import discriminator_input
from training.pose_prediction import pose_errors
from training.presets import load_preset
from training.training_loop import build_networks, training_loop

NUM_IMAGES = 16
STEPS = 250


@pytest.mark.slow
def test_pose_regression_beats_the_mean_pose(tmp_path):
    _, config = tiny_setup(str(tmp_path), num_images=NUM_IMAGES)
    dataset = PortraitDataset(config.data, config.seg_data, resolution=config.generator['img_resolution'], xflip=False)
    items = [dataset[i] for i in range(len(dataset))]
    image = image_from_uint8(torch.stack([torch.from_numpy(item[0]) for item in items]))
    mask = torch.stack([torch.from_numpy(item[1]) for item in items]).float() / 255
    camera = torch.stack([torch.from_numpy(item[2]) for item in items])
    pose = torch.stack([torch.from_numpy(item[3]) for item in items])
    inputs = discriminator_input({'image': image, 'mask': mask}, 0.0, config.generator['neural_rendering_resolution'])

    torch.manual_seed(0)
    _, D = build_networks(config, torch.device('cpu'))
    D.requires_grad_(True).train()
    optimizer = torch.optim.Adam(D.parameters(), lr=0.002, betas=(0.0, 0.99))
    baseline = pose_errors(pose.mean(dim=0, keepdim=True).expand_as(pose), pose)
    with torch.no_grad():
        before = pose_errors(D.predict_pose(inputs, camera), pose)
    for _ in range(STEPS):
        loss = (D.predict_pose(inputs, camera) - pose).square().sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = pose_errors(D.predict_pose(inputs, camera), pose)

    # The synthetic poses spread 8-20 degrees per axis, so the mean pose is 15-25 degrees off.
    for part in ('neck', 'head'):
        assert baseline[f'{part}_mean'] > 10
        assert before[f'{part}_mean'] > 0.8 * baseline[f'{part}_mean'], (before, baseline)
        assert after[f'{part}_mean'] < 0.5 * baseline[f'{part}_mean'], (after, baseline)


SHORT_RUN_KIMG = 4
SHORT_RUN_IMAGES = 64


def _pose_err(G, D, training_set_kwargs: dict, pose_predict_kwargs: dict) -> dict:
    """pose_err on 128 fakes (and 64 reals) -> its results."""
    opts = metric_utils.MetricOptions(
        G=G,
        D=D,
        dataset_kwargs=training_set_kwargs,
        pose_predict_kwargs=pose_predict_kwargs,
        batch_size=8,
        cache=False,
    )
    return metric_main.calc_metric('pose_err', opts, num_gen=128, max_real=SHORT_RUN_IMAGES).results


@pytest.mark.slow
def test_a_short_run_with_cpu_fast_losses_learns_the_pose_of_its_fakes(tmp_path):
    preset = load_preset('cpu-fast')
    preset['generator'].update(TINY_GENERATOR)
    preset['training'].update(TINY_TRAINING)
    data, seg_data = str(tmp_path / 'data.zip'), str(tmp_path / 'seg.zip')
    build_synthetic_dataset(
        data,
        seg_data,
        num_images=SHORT_RUN_IMAGES,
        resolution=preset['generator']['img_resolution'],
        workers=0,
        progress=False,
    )
    config = TrainingConfig.from_preset(
        preset,
        'cpu-fast',
        data=data,
        seg_data=seg_data,
        gpus=1,
        workers=0,
        kimg=SHORT_RUN_KIMG,
        tick=SHORT_RUN_KIMG,
        snap=0,
        image_snap=0,
        metrics=[],
    ).validate()
    run_dir = str(tmp_path / 'run')
    os.makedirs(run_dir)
    training_loop(config, run_dir)
    snapshot_path = run_files.latest_network_snapshot(run_dir)
    snapshot = formats.load_any(snapshot_path)
    with open(run_files.pose_predict_kwargs_for(snapshot_path)) as f:
        pose_predict_kwargs = json.load(f)
    after = _pose_err(snapshot['G'], snapshot['D'], snapshot['training_set_kwargs'], pose_predict_kwargs)
    torch.manual_seed(config.seed)
    G, D = build_networks(config, torch.device('cpu'))
    before = _pose_err(G.eval(), D.eval(), snapshot['training_set_kwargs'], pose_predict_kwargs)
    for part in ('neck', 'head'):
        assert before[f'fake_{part}_mean'] > before[f'fake_mean_pose_{part}_mean'], before
        assert after[f'fake_{part}_mean'] < after[f'fake_mean_pose_{part}_mean'], after
