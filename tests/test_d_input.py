"""Tests for training/networks/d_input.py: D's input for reals and fakes is bit-identical to the formula the loss,
pose prediction, metrics and snapshot grid each used before it moved here (frozen inline below), and
every one of those callers hands D exactly `discriminator_input`'s tensors."""

import types

import pytest
import torch
import torch.nn.functional as F

from metrics.metric_utils import discriminator_pose_on_fakes
from torch_utils.ops import upfirdn2d
from training import schedules
from training.loss import LossConfig, PortraitGANLoss
from training.networks.d_input import discriminator_input
from training.pose_prediction import predict_real_poses

S = 32  # image resolution
R = 16  # rendering resolution
BATCH = 4
SIGMAS = [0.0, 0.25, 1.5, 3.0]  # 0.25: a single-tap kernel (no blur) although sigma > 0
FILTER_MODES = ['antialiased', 'none']


# ----------------------------------------------------------------------------------------------
# Frozen copy of the formula before training/networks/d_input.py existed (training/loss.py prepare_real
# followed by run_D's blur of the full image). Do not update it to follow the module.


def _frozen_resize(x, resolution, filter_mode):
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(
        x, size=(resolution, resolution), mode='bilinear', align_corners=False, antialias=filter_mode == 'antialiased'
    )


def _frozen_blur(x, sigma):
    f = schedules.blur_kernel(sigma, device=x.device)
    if f.numel() == 1:
        return x
    return upfirdn2d.filter2d(x, f)


def _frozen_real(img, seg, resolution, blur_sigma, filter_mode, blur_raw):
    image_raw = _frozen_blur(_frozen_resize(img, resolution, filter_mode), blur_sigma if blur_raw else 0.0)
    image_mask = _frozen_resize(seg, resolution, filter_mode)
    image = _frozen_blur(img, blur_sigma) if blur_sigma > 0 else img
    return {'image': image, 'image_raw': image_raw, 'image_mask': image_mask}


def _frozen_fake(fake, blur_sigma):
    image = _frozen_blur(fake['image'], blur_sigma) if blur_sigma > 0 else fake['image']
    return {'image': image, 'image_raw': fake['image_raw'], 'image_mask': fake['image_mask']}


# ----------------------------------------------------------------------------------------------


def _real_batch():
    g = torch.Generator().manual_seed(11)
    return torch.rand(BATCH, 3, S, S, generator=g) * 2 - 1, torch.rand(BATCH, 1, S, S, generator=g)


def _fake():
    g = torch.Generator().manual_seed(12)
    return {
        'image': torch.rand(BATCH, 3, S, S, generator=g) * 2 - 1,
        'image_raw': torch.rand(BATCH, 3, R, R, generator=g) * 2 - 1,
        'image_mask': torch.rand(BATCH, 1, R, R, generator=g),
        'image_depth': torch.rand(BATCH, 1, R, R),
    }


def _assert_equal(got, expected):
    assert set(got) == {'image', 'image_raw', 'image_mask'}
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize('blur_raw', [True, False])
@pytest.mark.parametrize('filter_mode', FILTER_MODES)
@pytest.mark.parametrize('sigma', SIGMAS)
def test_real_batch_is_bit_identical_to_the_frozen_formula(sigma, filter_mode, blur_raw):
    img, seg = _real_batch()
    got = discriminator_input({'image': img, 'mask': seg}, sigma, R, filter_mode, blur_raw=blur_raw)
    _assert_equal(got, _frozen_real(img, seg, R, sigma, filter_mode, blur_raw))
    if sigma == 0:
        assert got['image'] is img


@pytest.mark.parametrize('sigma', SIGMAS)
def test_fake_is_bit_identical_to_the_frozen_formula(sigma):
    fake = _fake()
    got = discriminator_input(fake, sigma)
    _assert_equal(got, _frozen_fake(fake, sigma))
    assert got['image_raw'] is fake['image_raw'] and got['image_mask'] is fake['image_mask']


def test_bad_inputs_are_named():
    img, seg = _real_batch()
    with pytest.raises(ValueError, match='resolution'):
        discriminator_input({'image': img, 'mask': seg}, 0.0)
    with pytest.raises(ValueError, match='filter_mode'):
        discriminator_input({'image': img, 'mask': seg}, 0.0, R, filter_mode='classic')
    with pytest.raises(ValueError, match='mask'):
        discriminator_input({'image': img}, 0.0, R)


class _RecordingD(torch.nn.Module):
    """Records every input dict; logits 0 and pose 0."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, img_dict, c, update_emas=False):
        self.seen.append({key: img_dict[key].detach().clone() for key in ('image', 'image_raw', 'image_mask')})
        return torch.zeros(c.shape[0], 1), torch.zeros(c.shape[0], 6)

    def predict_pose(self, img_dict, c):
        return self(img_dict, c)[1]


@pytest.mark.parametrize('filter_mode', FILTER_MODES)
@pytest.mark.parametrize('sigma', [0.0, 1.5])
def test_predict_real_poses_hands_D_the_frozen_real_input(sigma, filter_mode):
    img, seg = _real_batch()
    D = _RecordingD()
    kwargs = dict(blur_sigma=sigma, neural_rendering_resolution=R, filter_mode=filter_mode)
    predict_real_poses(D, img, seg, torch.zeros(BATCH, 25), kwargs, batch=BATCH)
    _assert_equal(D.seen[0], _frozen_real(img, seg, R, sigma, filter_mode, blur_raw=True))


@pytest.mark.parametrize('sigma', [0.0, 1.5])
def test_metrics_pose_error_hands_D_the_frozen_fake_input(sigma):
    fake = _fake()
    D = _RecordingD()
    opts = types.SimpleNamespace(D=D, pose_predict_kwargs=dict(blur_sigma=sigma, neural_rendering_resolution=R))
    discriminator_pose_on_fakes(opts, {**fake, 'c': torch.zeros(BATCH, 25)})
    _assert_equal(D.seen[0], _frozen_fake(fake, sigma))


@pytest.mark.parametrize('blur_raw', [True, False])
@pytest.mark.parametrize('filter_mode', FILTER_MODES)
def test_loss_hands_D_the_frozen_real_input_in_dmain_and_dreg(filter_mode, blur_raw):
    img, seg = _real_batch()
    D = _RecordingD()
    config = LossConfig(
        blur_init_sigma=2.0, effective_blur_fade_kimg=4, neural_rendering_resolution_initial=R, gamma=1.0, gamma_seg=1.0
    )
    loss = PortraitGANLoss(None, D, config, device='cpu', filter_mode=filter_mode, blur_raw_target=blur_raw)
    schedule = schedules.schedule_values(config, 1000)
    sigma = schedule['blur_sigma']
    assert sigma == pytest.approx(1.5)
    loss._d_main = lambda real, real_c, *args: loss.run_D(real, real_c)
    loss._d_r1 = lambda real, real_c, *args: D.seen.append(real)
    for phase in ('Dmain', 'Dreg'):
        loss.accumulate_gradients(
            phase,
            img,
            seg,
            torch.zeros(BATCH, 25),
            torch.zeros(BATCH, 6),
            None,
            None,
            None,
            gain=1.0,
            schedule=schedule,
        )
    _assert_equal(D.seen[0], _frozen_real(img, seg, R, sigma, filter_mode, blur_raw))
    _assert_equal(D.seen[1], _frozen_real(img, seg, R, sigma, filter_mode, blur_raw))
