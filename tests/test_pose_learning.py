"""A learning check of the discriminator's pose predictor (training/dual_discriminator.py).

On a fixed set of rendered portraits with exact poses (the built-in synthetic set), a few hundred
steps of D's pose regression (the loss D minimizes on fakes, docs/method.md §7.3) bring the angular error of
its predictions far below that of the best constant, the set's mean pose. Gradients must reach
the pose head and the trunk through the mirror canonicalization for this to happen.
"""

import pytest
import torch

from tests.tiny_run import tiny_setup
from training.d_input import discriminator_input
from training.dataset import PortraitDataset
from training.images import image_from_uint8
from training.pose_prediction import pose_errors
from training.training_loop import build_networks

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
