"""Tests of tools/pose_readability.py: the head's shift when a rotation moves between the neck and
head joints against the rigid-body formula, and the supervised ceiling's loop on a tiny set."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tests.tiny_run import tiny_setup
from tools.pose_readability import fakes_at_labels, split_displacement, supervised_ceiling
from training.body import lbs
from training.data.dataset import PortraitDataset
from training.data.synthetic import PortraitPainter, sample_scene
from training.training_loop import build_networks


def test_split_displacement_follows_the_rigid_head_formulas():
    # The head's vertices are skinned almost rigidly to the head joint. Rotated by R about it, a
    # vertex v moves by (R - I)(v - head joint); rotated about the neck joint instead, the whole
    # head moves further by (I - R)(head joint - neck joint).
    painter = PortraitPainter()
    scenes = [sample_scene(0, idx) for idx in range(3)]
    moved = split_displacement(painter, scenes, 0.3, 64)
    for axis, name in enumerate(('nod', 'turn', 'tilt')):
        rotation = Rotation.from_rotvec(0.3 * np.eye(3)[axis]).as_matrix()
        split = turned = 0.0
        for scene in scenes:
            joints = painter.body(scene.betas).joints[0].numpy().astype(np.float64)
            head = painter.vertices(dataclasses.replace(scene, pose=np.zeros(6, np.float32)))[painter.is_head]
            camera = scene.camera.astype(np.float64)
            pixels_per_metre = camera[16] * 64 / np.linalg.norm(camera[[3, 7, 11]]) / len(scenes)
            offset = joints[lbs.HEAD_JOINT] - joints[lbs.NECK_JOINT]
            split += np.linalg.norm((np.eye(3) - rotation) @ offset) * pixels_per_metre
            # painter.vertices are re-centred on the neck joint.
            about_head = head.astype(np.float64) - offset
            turned += np.linalg.norm(about_head @ (rotation - np.eye(3)).T, axis=1).mean() * pixels_per_metre
        assert moved[name]['split_px'] == pytest.approx(split, rel=0.05)
        assert moved[name]['rotation_px'] == pytest.approx(turned, rel=0.05)


def test_supervised_ceiling_reports_every_epoch_on_held_out_images(tmp_path):
    _, config = tiny_setup(str(tmp_path), num_images=20)
    dataset = PortraitDataset(config.data, config.seg_data, xflip=False)
    lines = []
    history = supervised_ceiling(config, dataset, epochs=2, batch=4, lr=1e-3, seed=0, log=lines.append)
    assert [entry['epoch'] for entry in history] == [1, 2] and len(lines) == 2
    assert all(np.isfinite(value) and value >= 0 for entry in history for value in entry.values())


def test_supervised_ceiling_can_learn_from_a_generators_fakes_at_the_labels(tmp_path):
    _, config = tiny_setup(str(tmp_path), num_images=20)
    dataset = PortraitDataset(config.data, config.seg_data, xflip=False)
    torch.manual_seed(0)
    G, _ = build_networks(config, torch.device('cpu'))
    G.eval().requires_grad_(False)
    cameras = torch.from_numpy(np.stack([dataset.get_label(i) for i in range(3)]))
    poses = torch.from_numpy(np.stack([dataset.get_pose(i) for i in range(3)]))
    fakes = fakes_at_labels(G, cameras, poses, batch=2, seed=0)
    size, raw = config.generator['img_resolution'], G.neural_rendering_resolution
    assert {key: tuple(value.shape) for key, value in fakes.items()} == {
        'image': (3, 3, size, size),
        'image_raw': (3, 3, raw, raw),
        'image_mask': (3, 1, raw, raw),
    }
    on_reals = supervised_ceiling(config, dataset, epochs=1, batch=4, lr=1e-3, seed=0, log=lambda line: None)
    on_fakes = supervised_ceiling(
        config, dataset, epochs=1, batch=4, lr=1e-3, seed=0, fakes_from=G, log=lambda line: None
    )
    assert on_fakes[0]['neck_mean'] != on_reals[0]['neck_mean']
