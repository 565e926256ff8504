"""A tiny preset, its synthetic data set and a network snapshot of it, for tests of the training loop,
the generation scripts and the metrics.

The snapshot is written by the training loop's own snapshot writer from freshly initialized
networks, so it has the layout of a real run directory: network-snapshot-000000.pkl and .pt and
pose_predict_kwargs-000000.json.
"""

import copy
import json
import os

import torch

from training.config import TrainingConfig
from training.data.synthetic import build_synthetic_dataset
from training.presets import load_preset

BATCH = 4

# A generator small enough to train a few iterations in seconds on two cores.
TINY_GENERATOR = dict(
    img_resolution=32,
    sr_input_resolution=16,
    triplane_resolution=32,
    neural_rendering_resolution=16,
    channel_base=512,
    channel_max=32,
    background_channel_base=256,
    sr_channel_base=256,
    sr_channel_max=16,
    triplane_channels=8,
    decoder_hidden=16,
    depth_resolution=6,
    depth_resolution_importance=6,
    z_dim=32,
    w_dim=32,
)
TINY_TRAINING = dict(
    batch=BATCH,
    batch_gpu=BATCH,
    d_channel_base=256,
    d_channel_max=32,
    neural_rendering_resolution_initial=16,
    d_reg_interval=2,
    tick=BATCH / 1000,
    snap=1,
    image_snap=0,
    snapshot_grid=[2, 1],
)


def tiny_setup(root: str, num_images: int = 16) -> tuple:
    """Build the tiny synthetic set and preset under `root` -> (preset path, validated TrainingConfig)."""
    data, seg_data = os.path.join(root, 'data.zip'), os.path.join(root, 'seg.zip')
    build_synthetic_dataset(
        data, seg_data, num_images=num_images, resolution=TINY_GENERATOR['img_resolution'], workers=0, progress=False
    )
    preset = load_preset('cpu-small')
    preset['generator'].update(TINY_GENERATOR)
    preset['training'].update(TINY_TRAINING)
    preset_path = os.path.join(root, 'tiny.json')
    with open(preset_path, 'w') as f:
        json.dump(preset, f)
    config = TrainingConfig.from_preset(preset, preset_path, data=data, seg_data=seg_data, gpus=1, workers=1)
    return preset_path, config.validate()


def write_tiny_snapshot(root: str, seed: int = 0) -> tuple:
    """Tiny set, preset and a snapshot of freshly initialized networks -> (run_dir, TrainingConfig).

    The run directory is `root/run`; its snapshot is at 0 kimg.
    """
    from training.training_loop import build_networks, save_network_files

    _, config = tiny_setup(root)
    torch.manual_seed(seed)
    G, D = build_networks(config, torch.device('cpu'))
    networks = dict(G=G, D=D, G_ema=copy.deepcopy(G).eval(), D_ema=copy.deepcopy(D).eval())
    run_dir = os.path.join(root, 'run')
    os.makedirs(run_dir, exist_ok=True)
    training_set_kwargs = dict(
        path=config.data, seg_path=config.seg_data, resolution=TINY_GENERATOR['img_resolution'], xflip=config.mirror
    )
    schedule = dict(rendering_resolution=TINY_GENERATOR['neural_rendering_resolution'], blur_sigma=0.0)
    save_network_files(run_dir, 0, networks, training_set_kwargs, schedule)
    return run_dir, config
