"""Tests of training/data/images.py against hand-computed values."""

import numpy as np
import torch

from training.data.images import depth_to_uint8, image_from_uint8, mask_from_uint8, to_uint8


def test_to_uint8_maps_the_range_ends_and_layout():
    images = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = to_uint8(images)
    assert out.shape == (1, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, :, :, 0].tolist() == [[0, 128], [255, 255]]


def test_depth_to_uint8_makes_the_nearest_pixel_white():
    depth = torch.tensor([2.0, 3.0, 4.0, 2.5]).view(1, 1, 2, 2)
    out = depth_to_uint8(depth)[0, :, :, 0]
    assert out.tolist() == [[255, 128], [0, 191]]


def test_uint8_pictures_round_trip_through_the_network_ranges():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    image = image_from_uint8(levels.expand(1, 3, 16, 16))
    assert image.dtype == torch.float32 and image.min() == -1 and image.max() == 1
    assert np.array_equal(to_uint8(image)[..., 0], levels[:, 0].numpy())
    mask = mask_from_uint8(levels)
    assert mask.min() == 0 and mask.max() == 1
    assert np.array_equal(to_uint8(mask, 0.0, 1.0)[..., 0], levels[:, 0].numpy())
