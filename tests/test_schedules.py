"""Tests for training/schedules.py: every schedule at its end points, midpoints and around resume."""

import math

import pytest
import torch

from training import schedules


def test_blur_sigma_fades_linearly_to_zero():
    assert schedules.blur_sigma(0, 10, 200) == pytest.approx(10)
    assert schedules.blur_sigma(100_000, 10, 200) == pytest.approx(5)
    assert schedules.blur_sigma(150_000, 10, 200) == pytest.approx(2.5)
    assert schedules.blur_sigma(200_000, 10, 200) == 0
    assert schedules.blur_sigma(6_000_000, 10, 200) == 0


def test_blur_sigma_is_off_without_fade_or_initial_sigma():
    assert schedules.blur_sigma(0, 10, 0) == 0
    assert schedules.blur_sigma(50_000, 0, 200) == 0  # resumed runs set the initial sigma to 0


def test_density_noise_fades_from_one():
    assert schedules.density_noise(0, 200) == pytest.approx(1)
    assert schedules.density_noise(50_000, 200) == pytest.approx(0.75)
    assert schedules.density_noise(200_000, 200) == 0
    assert schedules.density_noise(10_000_000, 200) == 0
    assert schedules.density_noise(0, 0) == 0


def test_gpc_swap_prob_goes_from_one_to_target():
    assert schedules.gpc_swap_prob(0, 0.7, 1000) == pytest.approx(1)
    assert schedules.gpc_swap_prob(500_000, 0.7, 1000) == pytest.approx(0.85)
    assert schedules.gpc_swap_prob(1_000_000, 0.7, 1000) == pytest.approx(0.7)
    assert schedules.gpc_swap_prob(6_000_000, 0.7, 1000) == pytest.approx(0.7)
    # Resumed runs disable the fade: the target right away.
    assert schedules.gpc_swap_prob(0, 0.7, 0) == pytest.approx(0.7)
    assert schedules.gpc_swap_prob(6_000_000, 0.7, 0) == pytest.approx(0.7)


def test_pose_prior_weight_holds_then_decays():
    def w(n):
        return schedules.pose_prior_weight(n, 0.5, 200, 200)

    assert w(0) == pytest.approx(0.5)
    assert w(199_999) == pytest.approx(0.5)
    assert w(200_000) == pytest.approx(0.5)
    assert w(300_000) == pytest.approx(0.25)
    assert w(350_000) == pytest.approx(0.125)
    assert w(400_000) == 0
    assert w(6_000_000) == 0
    assert schedules.pose_prior_weight(0, 0.0, 200, 200) == 0
    assert schedules.pose_prior_weight(250_000, 1.0, 200, 0) == 0


def test_rendering_resolution_fixed_without_final():
    assert schedules.rendering_resolution(0, 0, 64, None, 1000) == 64
    assert schedules.rendering_resolution(5_000_000, 1_000_000, 64, None, 1000) == 64


def test_rendering_resolution_fades_from_the_resume_point():
    resume = 10_000_000

    def r(n):
        return schedules.rendering_resolution(n, resume, 64, 128, 1000)

    assert r(resume) == 64
    assert r(resume + 500_000) == 96
    assert r(resume + 250_000) == 80
    assert r(resume + 1_000_000) == 128
    assert r(resume + 5_000_000) == 128
    assert r(resume + 10_000) == 65  # 64.64 -> 65: non-power-of-two sizes occur
    # Without a resume offset the same counter would already be at the end of the fade.
    assert schedules.rendering_resolution(resume, 0, 64, 128, 1000) == 128


def test_rendering_resolution_rounds_half_to_even():
    # alpha = 1/2: 64.5 -> 64 and 65.5 -> 66 (numpy's rint)
    assert schedules.rendering_resolution(1000, 0, 64, 65, 2) == 64
    assert schedules.rendering_resolution(1000, 0, 65, 66, 2) == 66


def test_ema_beta_with_and_without_rampup():
    # No rampup: half-life of ema_kimg thousand images.
    assert schedules.ema_beta(32, 10, None, 0) == pytest.approx(0.5 ** (32 / 10_000))
    assert schedules.ema_beta(32, 10, None, 5_000_000) == pytest.approx(0.5 ** (32 / 10_000))
    # Rampup 0.05: half-life 0.05 n until it reaches 10k images at n = 200k.
    assert schedules.ema_beta(32, 10, 0.05, 100_000) == pytest.approx(0.5 ** (32 / 5_000))
    assert schedules.ema_beta(32, 10, 0.05, 200_000) == pytest.approx(0.5 ** (32 / 10_000))
    assert schedules.ema_beta(32, 10, 0.05, 400_000) == pytest.approx(0.5 ** (32 / 10_000))
    # At image 0 the average is replaced by the current weights.
    assert schedules.ema_beta(32, 10, 0.05, 0) == pytest.approx(0.0)


@pytest.mark.parametrize('sigma', [0.5, 1.0, 2.5, 10.0])
def test_blur_kernel_matches_formula(sigma):
    f = schedules.blur_kernel(sigma)
    half = math.floor(3 * sigma)
    assert f.shape == (2 * half + 1,)
    assert f.dtype == torch.float32
    expected = torch.tensor([2 ** (-((x / sigma) ** 2)) for x in range(-half, half + 1)], dtype=torch.float64)
    expected = expected / expected.sum()
    torch.testing.assert_close(f.double(), expected, rtol=1e-6, atol=1e-7)
    assert f.sum().item() == pytest.approx(1, abs=1e-6)
    torch.testing.assert_close(f, f.flip(0))


def test_blur_kernel_small_sigma_is_identity():
    for sigma in [0.0, 0.2]:
        assert schedules.blur_kernel(sigma).tolist() == [1.0]
