"""Tests for torch_utils/ops/conv2d_resample.py against a slow numpy/scipy composition and gradcheck."""

import itertools

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from torch_utils.ops.conv2d_resample import conv2d_resample
from torch_utils.ops.upfirdn2d import downsample2d, setup_filter, upsample2d


def pad_or_crop_2d(z: np.ndarray, px0: int, px1: int, py0: int, py1: int) -> np.ndarray:
    """Zero-pad the last two axes by the positive amounts, crop by the negative ones."""
    z = np.pad(z, [(0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))])
    return z[:, :, max(-py0, 0) : z.shape[2] - max(-py1, 0), max(-px0, 0) : z.shape[3] - max(-px1, 0)]


def fir_valid(z: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.stack([np.stack([scipy.signal.convolve2d(image, h, mode='valid') for image in sample]) for sample in z])


def slow_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter) -> np.ndarray:
    """The defining composition, step by step: zero insertion, padding, FIR, convolution, FIR, decimation."""
    f2 = np.ones((1, 1)) if f is None else (np.outer(f, f) if f.ndim == 1 else f)
    h = f2[::-1, ::-1] if flip_filter else f2
    fh, fw = f2.shape
    px0, px1, py0, py1 = padding
    if up > 1:  # the centering of upsample2d
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:  # the centering of downsample2d
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    if up > 1:
        z = np.zeros((*x.shape[:2], x.shape[2] * up, x.shape[3] * up))
        z[:, :, ::up, ::up] = x
        z = fir_valid(pad_or_crop_2d(z, px0, px1, py0, py1), h) * up**2
    else:
        z = pad_or_crop_2d(x, px0, px1, py0, py1)
    kernel = w if flip_weight else w[:, :, ::-1, ::-1]
    y = F.conv2d(torch.tensor(z), torch.tensor(kernel.copy()), groups=groups).numpy()
    if down > 1:
        y = fir_valid(y, h)[:, :, ::down, ::down]
    return y


FILTERS = {
    'none': None,
    '1331': np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0,
    'separable': np.array([1.0, 2.0, 3.0, 2.0, 1.0]) / 9,
}


def test_matches_slow_composition_on_random_cases():
    rng = np.random.default_rng(77)
    paddings = [0, 1, 2, (1, 0, 2, 1), (0, 2, -1, 1)]
    combos = list(itertools.product([(1, 1), (2, 1), (1, 2), (2, 2)], [1, 3], [1, 2], list(FILTERS)))
    for (up, down), kernel, groups, filter_name in combos:
        for _ in range(3):
            padding = paddings[rng.integers(len(paddings))]
            padding = (padding,) * 4 if isinstance(padding, int) else padding
            flip_weight, flip_filter = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
            in_channels, out_channels = 2 * groups, 3 * groups
            x = rng.standard_normal((2, in_channels, int(rng.integers(6, 10)), int(rng.integers(6, 10))))
            w = rng.standard_normal((out_channels, in_channels // groups, kernel, kernel))
            f = FILTERS[filter_name]
            expected = slow_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
            actual = conv2d_resample(
                torch.tensor(x),
                torch.tensor(w),
                None if f is None else torch.tensor(f),
                up=up,
                down=down,
                padding=padding,
                groups=groups,
                flip_weight=flip_weight,
                flip_filter=flip_filter,
            ).numpy()
            description = dict(
                up=up,
                down=down,
                kernel=kernel,
                groups=groups,
                filter=filter_name,
                padding=padding,
                flip_weight=flip_weight,
                flip_filter=flip_filter,
            )
            assert actual.shape == expected.shape, description
            assert np.allclose(actual, expected, rtol=1e-10, atol=1e-10), description


@pytest.mark.parametrize('up,down', [(1, 1), (2, 1), (1, 2)])
def test_3x3_padding_1_output_sizes(up, down):
    x = torch.randn(2, 4, 8, 12)
    w = torch.randn(5, 4, 3, 3)
    y = conv2d_resample(x, w, f=setup_filter([1, 3, 3, 1]), up=up, down=down, padding=1)
    assert y.shape == (2, 5, 8 * up // down, 12 * up // down)


def test_resampling_agrees_with_separate_ops_away_from_borders():
    """Upsample-then-conv and conv-then-downsample differ from the fused op only where padding enters."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64, generator=generator)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=generator)
    f = setup_filter([1, 3, 3, 1]).double()
    fused_up = conv2d_resample(x, w, f, up=2, padding=1)
    separate_up = F.conv2d(upsample2d(x, f), w, padding=1)
    torch.testing.assert_close(fused_up[:, :, 3:-3, 3:-3], separate_up[:, :, 3:-3, 3:-3])
    fused_down = conv2d_resample(x, w, f, down=2, padding=1)
    separate_down = downsample2d(F.conv2d(x, w, padding=1), f)
    torch.testing.assert_close(fused_down[:, :, 1:-1, 1:-1], separate_down[:, :, 1:-1, 1:-1])


def test_flip_weight_false_is_true_convolution():
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(
        conv2d_resample(x, w, padding=1, flip_weight=False), F.conv2d(x, w.flip([2, 3]), padding=1)
    )
    torch.testing.assert_close(conv2d_resample(x, w, padding=1), F.conv2d(x, w, padding=1))


def test_channels_last_input_gives_the_same_values():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(6, 4, 3, 3)
    f = setup_filter([1, 3, 3, 1])
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for up, down in ((1, 1), (2, 1), (1, 2)):
        torch.testing.assert_close(
            conv2d_resample(x_cl, w, f, up=up, down=down, padding=1),
            conv2d_resample(x, w, f, up=up, down=down, padding=1),
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.parametrize(
    'up,down,kernel,groups', [(2, 1, 3, 1), (1, 2, 3, 2), (2, 1, 1, 1), (1, 2, 1, 2), (2, 2, 3, 1)]
)
def test_gradcheck_and_gradgradcheck(up, down, kernel, groups):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2 * groups, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.randn(groups, 2, kernel, kernel, dtype=torch.float64, generator=generator, requires_grad=True)
    f = setup_filter([1, 3, 3, 1]).double()

    def function(x, w):
        return conv2d_resample(x, w, f, up=up, down=down, padding=kernel // 2, groups=groups, flip_weight=False)

    assert torch.autograd.gradcheck(function, (x, w))
    assert torch.autograd.gradgradcheck(function, (x, w))


def test_bad_arguments_give_clear_errors():
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match='does not fit x'):
        conv2d_resample(x, torch.randn(3, 3, 3, 3))
    with pytest.raises(ValueError, match='groups=2'):
        conv2d_resample(x, torch.randn(3, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match='up=0'):
        conv2d_resample(x, torch.randn(3, 4, 3, 3), up=0)
    with pytest.raises(ValueError, match='leaves no output'):
        conv2d_resample(x, torch.randn(3, 4, 3, 3), padding=-4)
