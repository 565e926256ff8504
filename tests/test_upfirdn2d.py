"""Tests for torch_utils/ops/upfirdn2d.py against scipy/numpy oracles, analytic cases and gradcheck."""

import os

import numpy as np
import pytest
import scipy.signal
import torch

from tests.conftest import requires_cuda
from tests.host_build import build_host_kernel
from torch_utils.ops import upfirdn2d as upfirdn2d_module
from torch_utils.ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

# ----------------------------------------------------------------------------------------------
# numpy / scipy oracle, written from the definition: zero insertion, pad/crop, valid convolution,
# gain, decimation.


def zero_insert(a: np.ndarray, up: int, axis: int) -> np.ndarray:
    shape = list(a.shape)
    shape[axis] *= up
    out = np.zeros(shape, dtype=a.dtype)
    index = [slice(None)] * a.ndim
    index[axis] = slice(None, None, up)
    out[tuple(index)] = a
    return out


def pad_or_crop(a: np.ndarray, axis: int, before: int, after: int) -> np.ndarray:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (max(before, 0), max(after, 0))
    a = np.pad(a, widths)
    index = [slice(None)] * a.ndim
    index[axis] = slice(max(-before, 0), a.shape[axis] - max(-after, 0))
    return a[tuple(index)]


def take_every(a: np.ndarray, axis: int, start: int, stop: int, step: int) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop, step)
    return a[tuple(index)]


def oracle_separable(x: np.ndarray, taps: np.ndarray, up, down, padding, flip_filter: bool, gain: float) -> np.ndarray:
    """x [N, C, H, W], taps [ft]: scipy.signal.upfirdn along x (axis 3) then y (axis 2)."""
    h = taps[::-1] if flip_filter else taps
    for axis, u, d, (p0, p1) in ((3, up[0], down[0], padding[:2]), (2, up[1], down[1], padding[2:])):
        padded = pad_or_crop(zero_insert(x, u, axis), axis, p0, p1)
        full = scipy.signal.upfirdn(h, padded, up=1, down=1, axis=axis)  # full convolution
        x = take_every(full, axis, len(h) - 1, padded.shape[axis], d)  # valid part, every d-th sample
    return x * gain


def oracle_2d(x: np.ndarray, f: np.ndarray, up, down, padding, flip_filter: bool, gain: float) -> np.ndarray:
    """x [N, C, H, W], f [fh, fw]: zero insertion, padding, scipy.signal.convolve2d, decimation."""
    h = f[::-1, ::-1] if flip_filter else f
    x = zero_insert(zero_insert(x, up[0], 3), up[1], 2)
    x = pad_or_crop(pad_or_crop(x, 3, *padding[:2]), 2, *padding[2:])
    out = np.stack([np.stack([scipy.signal.convolve2d(image, h, mode='valid') for image in sample]) for sample in x])
    return out[:, :, :: down[1], :: down[0]] * gain


def random_case(
    rng: np.random.Generator, min_taps: int = 1, max_taps: int = 8, max_size: int = 8, separable: bool | None = None
) -> dict:
    """A random valid upfirdn2d configuration with a small float64 input."""
    if separable is None:
        separable = bool(rng.random() < 0.5)
    if separable:
        f = rng.standard_normal(int(rng.integers(min_taps, max_taps + 1)))
        fw = fh = len(f)
    else:
        fh, fw = (int(v) for v in rng.integers(min_taps, max_taps + 1, size=2))
        f = rng.standard_normal((fh, fw))
    up = tuple(int(v) for v in rng.choice([1, 2, 4], size=2))
    down = tuple(int(v) for v in rng.choice([1, 2, 4], size=2))
    while True:
        in_h, in_w = (int(v) for v in rng.integers(1, max_size + 1, size=2))
        padding = tuple(int(v) for v in rng.integers(-4, 7, size=4))
        if in_w * up[0] + padding[0] + padding[1] >= fw and in_h * up[1] + padding[2] + padding[3] >= fh:
            break
    x = rng.standard_normal((int(rng.integers(1, 3)), int(rng.integers(1, 4)), in_h, in_w))
    return dict(
        x=x,
        f=f,
        up=up,
        down=down,
        padding=padding,
        flip_filter=bool(rng.random() < 0.5),
        gain=float(rng.uniform(0.5, 3.0)),
    )


def oracle(case: dict) -> np.ndarray:
    function = oracle_separable if case['f'].ndim == 1 else oracle_2d
    return function(case['x'], case['f'], case['up'], case['down'], case['padding'], case['flip_filter'], case['gain'])


def run_op(case: dict, impl: str = 'ref', device: str = 'cpu', dtype=torch.float64) -> torch.Tensor:
    x = torch.tensor(case['x'], dtype=dtype, device=device)
    f = torch.tensor(case['f'], dtype=torch.float32 if dtype != torch.float64 else dtype, device=device)
    return upfirdn2d(
        x,
        f,
        up=case['up'],
        down=case['down'],
        padding=case['padding'],
        flip_filter=case['flip_filter'],
        gain=case['gain'],
        impl=impl,
    )


# ----------------------------------------------------------------------------------------------
# Forward against the oracle.


def test_upfirdn2d_matches_scipy_oracle_on_random_cases():
    rng = np.random.default_rng(1234)
    seen = set()
    for _ in range(600):
        case = random_case(rng)
        expected = oracle(case)
        actual = run_op(case).numpy()
        assert actual.shape == expected.shape, case
        assert np.allclose(actual, expected, rtol=1e-10, atol=1e-10), case
        seen.add((case['f'].ndim, case['up'], case['down'], min(case['padding']) < 0, case['flip_filter']))
    # The random cases cover both filter kinds, every up/down combination, cropping and flipping.
    assert {key[0] for key in seen} == {1, 2}
    assert len({key[1] for key in seen}) == 9 and len({key[2] for key in seen}) == 9
    assert {key[3] for key in seen} == {True, False} and {key[4] for key in seen} == {True, False}


def test_long_separable_filters_match_oracle_and_autograd():
    """Filters longer than _REF_OUTER_MAX_TAPS take the two-pass reference path."""
    rng = np.random.default_rng(4321)
    for _ in range(40):
        case = random_case(
            rng, min_taps=upfirdn2d_module._REF_OUTER_MAX_TAPS + 1, max_taps=20, max_size=12, separable=True
        )
        assert np.allclose(run_op(case).numpy(), oracle(case), rtol=1e-10, atol=1e-10), case
        x = torch.tensor(case['x'], requires_grad=True)
        f = torch.tensor(case['f'])
        kwargs = {key: case[key] for key in ('up', 'down', 'padding', 'flip_filter', 'gain')}
        reference = upfirdn2d(x, f, impl='ref', **kwargs)
        cotangent = torch.tensor(rng.standard_normal(reference.shape))
        (expected,) = torch.autograd.grad(reference, x, cotangent)
        (actual,) = torch.autograd.grad(_explicit_grad_ref(x, f, **kwargs), x, cotangent)
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_integer_arguments_broadcast_to_both_axes():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((1, 2, 5, 7)))
    f = torch.tensor(rng.standard_normal((3, 4)))
    short = upfirdn2d(x, f, up=2, down=2, padding=1)
    full = upfirdn2d(x, f, up=(2, 2), down=(2, 2), padding=(1, 1, 1, 1))
    pair = upfirdn2d(x, f, up=2, down=2, padding=(1, 1))
    torch.testing.assert_close(short, full, rtol=0, atol=0)
    torch.testing.assert_close(pair, full, rtol=0, atol=0)


def test_none_filter_is_identity_with_cropping():
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(upfirdn2d(x, None), x)
    torch.testing.assert_close(upfirdn2d(x, None, padding=(-1, -2, -2, 0)), x[:, :, 2:, 1:-2])
    torch.testing.assert_close(upfirdn2d(x, None, down=(1, 2)), x[:, :, ::2, :])


def test_channels_last_input_gives_the_same_values():
    rng = np.random.default_rng(7)
    x = torch.tensor(rng.standard_normal((2, 5, 9, 8)), dtype=torch.float32)
    f = setup_filter([1, 3, 3, 1])
    x_cl = x.contiguous(memory_format=torch.channels_last)
    configs = (dict(up=2, padding=(2, 1)), dict(down=2, padding=1), dict(up=(1, 2), down=(2, 1), padding=(1, 2, -1, 3)))
    for kwargs in configs:
        torch.testing.assert_close(upfirdn2d(x_cl, f, **kwargs), upfirdn2d(x, f, **kwargs))


# ----------------------------------------------------------------------------------------------
# setup_filter and the centered helpers.


def test_setup_filter_outer_product_normalized():
    f = setup_filter([1, 3, 3, 1])
    taps = np.array([1, 3, 3, 1], dtype=np.float64)
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    np.testing.assert_allclose(f.numpy(), np.outer(taps, taps) / 64, rtol=1e-7)


def test_setup_filter_separable_default_gain_and_flip():
    assert setup_filter(np.ones(8)).shape == (8,)
    assert setup_filter(np.ones(7)).shape == (7, 7)
    assert setup_filter(None).tolist() == [[1.0]]
    assert setup_filter(2.0).tolist() == [[1.0]]
    assert setup_filter([1, 2, 3], separable=True, normalize=False, flip_filter=True).tolist() == [3, 2, 1]
    assert setup_filter([1, 3, 3, 1], gain=4).sum().item() == pytest.approx(4)
    # A separable filter carries sqrt(gain) per axis, so the two passes together give `gain`.
    assert setup_filter([1, 3, 3, 1], gain=4, separable=True).sum().item() == pytest.approx(2)


def test_setup_filter_rejects_bad_input():
    with pytest.raises(ValueError, match='sum to zero'):
        setup_filter([1, -1])
    with pytest.raises(ValueError, match='separable=True needs 1-D taps'):
        setup_filter(np.ones((2, 2)), separable=True)
    with pytest.raises(ValueError, match='shape'):
        setup_filter(np.ones((2, 2, 2)))


@pytest.mark.parametrize('taps', [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize('factor', [2, 4])
@pytest.mark.parametrize('separable', [False, True])
def test_helpers_output_sizes(taps, factor, separable):
    f = setup_filter(np.arange(1, taps + 1), separable=separable)
    x = torch.randn(1, 2, 8, 12)
    assert upsample2d(x, f, up=factor).shape == (1, 2, 8 * factor, 12 * factor)
    assert downsample2d(x, f, down=factor).shape == (1, 2, 8 // factor, 12 // factor)
    assert filter2d(x, f).shape == x.shape
    assert upsample2d(x, f, up=(factor, 1)).shape == (1, 2, 8, 12 * factor)
    assert downsample2d(x, f, down=(1, factor)).shape == (1, 2, 8 // factor, 12)
    assert filter2d(x, f, padding=(1, 2, 3, 4)).shape == (1, 2, 8 + 7, 12 + 3)


@pytest.mark.parametrize('separable', [False, True])
def test_resampling_a_constant_keeps_it_away_from_borders(separable):
    f = setup_filter([1, 3, 3, 1], separable=separable)
    x = torch.full((1, 2, 16, 16), 2.5, dtype=torch.float64)
    down = downsample2d(x, f)
    torch.testing.assert_close(down[:, :, 1:-1, 1:-1], torch.full_like(down[:, :, 1:-1, 1:-1], 2.5))
    up = upsample2d(x, f)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 2.5))
    same = filter2d(x, f)
    torch.testing.assert_close(same[:, :, 2:-2, 2:-2], torch.full_like(same[:, :, 2:-2, 2:-2], 2.5))


def test_symmetric_filter_resampling_commutes_with_mirroring():
    """Centered filters: mirroring the input mirrors the output (StyleGAN's [1,3,3,1] by 2, odd filters)."""
    x = torch.randn(1, 3, 10, 12, dtype=torch.float64)
    cases = [
        (upsample2d, setup_filter([1, 3, 3, 1]), {}),
        (downsample2d, setup_filter([1, 3, 3, 1]), {}),
        (upsample2d, setup_filter([1, 3, 3, 1], separable=True), {}),
        (filter2d, setup_filter([1, 2, 1]), {}),
        (downsample2d, setup_filter([1, 3, 3, 1], separable=True), {}),
        (filter2d, setup_filter(np.ones(9)), {}),
    ]
    for op, f, kwargs in cases:
        for dims in ([2], [3]):
            torch.testing.assert_close(op(x.flip(dims), f, **kwargs), op(x, f, **kwargs).flip(dims))


def test_bad_arguments_give_clear_errors():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match='fewer than the 4 filter taps'):
        upfirdn2d(x, setup_filter([1, 3, 3, 1]), padding=-1)
    with pytest.raises(ValueError, match=r'\[N, C, H, W\]'):
        upfirdn2d(torch.randn(4, 4), None)
    with pytest.raises(ValueError, match='up='):
        upfirdn2d(x, None, up=0)
    with pytest.raises(ValueError, match='padding='):
        upfirdn2d(x, None, padding=(1, 2, 3))
    with pytest.raises(ValueError, match='impl'):
        upfirdn2d(x, None, impl='fast')
    with pytest.raises(ValueError, match="impl='cuda' needs CUDA tensors"):
        upfirdn2d(x, None, impl='cuda')


# ----------------------------------------------------------------------------------------------
# Gradients: the reference path through autograd, and the explicit-gradient autograd.Function
# (the CUDA path's gradient formula) driven by the reference kernel.

GRAD_CONFIGS = [
    dict(up=2, padding=(2, 1)),
    dict(down=2, padding=1),
    dict(up=(2, 1), down=(1, 2), padding=(1, 0, -1, 2)),
    dict(up=4, down=2, padding=(3, 2, 0, 1), flip_filter=True),
    dict(down=(4, 1), padding=(-1, 3, 2, -2), gain=3.0),
]


def _explicit_grad_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    parse = upfirdn2d_module
    return parse._upfirdn2d_custom_grad(
        x,
        f,
        parse._parse_scaling(up, 'up'),
        parse._parse_scaling(down, 'down'),
        parse._parse_padding(padding),
        flip_filter,
        gain,
        parse._upfirdn2d_ref,
    )


@pytest.mark.parametrize('separable', [False, True])
@pytest.mark.parametrize('config', GRAD_CONFIGS)
def test_gradcheck_reference_and_explicit_gradient(config, separable):
    # Two channels, so that the reference's depthwise (grouped) convolutions and their second
    # derivatives are checked as well.
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    f = torch.randn(4, dtype=torch.float64, generator=generator)
    if not separable:
        f = torch.outer(f, torch.randn(3, dtype=torch.float64, generator=generator))
    for function in (lambda t: upfirdn2d(t, f, impl='ref', **config), lambda t: _explicit_grad_ref(t, f, **config)):
        assert torch.autograd.gradcheck(function, (x,))
        assert torch.autograd.gradgradcheck(function, (x,))


def test_reference_path_differentiates_the_filter():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    f = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: upfirdn2d(x, t, up=2, down=(1, 2), padding=1), (f,))


def test_explicit_gradient_matches_autograd_on_random_cases():
    """The adjoint padding algebra, checked against autograd of the plain reference ops."""
    rng = np.random.default_rng(99)
    for _ in range(200):
        case = random_case(rng)
        x = torch.tensor(case['x'], requires_grad=True)
        f = torch.tensor(case['f'])
        kwargs = {key: case[key] for key in ('up', 'down', 'padding', 'flip_filter', 'gain')}
        reference = upfirdn2d(x, f, impl='ref', **kwargs)
        explicit = _explicit_grad_ref(x, f, **kwargs)
        torch.testing.assert_close(explicit, reference, rtol=0, atol=0)
        cotangent = torch.tensor(rng.standard_normal(reference.shape))
        (expected,) = torch.autograd.grad(reference, x, cotangent)
        (actual,) = torch.autograd.grad(explicit, x, cotangent)
        assert actual.shape == x.shape
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10, msg=lambda message: f'{message}\n{case}')


# ----------------------------------------------------------------------------------------------
# The kernel's per-sample math (upfirdn2d.h), built for the host and run through the CUDA path's
# Python wrapper and autograd.Function in place of the plugin.

HOST_KERNEL_SOURCE = r"""
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include "upfirdn2d.h"

namespace py = pybind11;

py::array_t<double> run(py::array_t<double> x, py::array_t<double, py::array::c_style | py::array::forcecast> f,
                        int64_t out_h, int64_t out_w, int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y,
                        int64_t pad_x0, int64_t pad_y0, bool flip_filter, bool channels_last, double gain) {
    UpFirDn2dParams p;
    p.batch = x.shape(0); p.channels = x.shape(1); p.in_h = x.shape(2); p.in_w = x.shape(3);
    p.out_h = out_h; p.out_w = out_w;
    p.in_stride_n = x.strides(0) / 8; p.in_stride_c = x.strides(1) / 8;
    p.in_stride_y = x.strides(2) / 8; p.in_stride_x = x.strides(3) / 8;
    p.up_x = up_x; p.up_y = up_y; p.down_x = down_x; p.down_y = down_y; p.pad_x0 = pad_x0; p.pad_y0 = pad_y0;
    p.filter_h = f.shape(0); p.filter_w = f.shape(1);
    p.flip_filter = flip_filter; p.channels_last_output = channels_last; p.gain = gain;
    const int64_t count = p.batch * p.channels * out_h * out_w;
    py::array_t<double> y(count);
    double* out = y.mutable_data();
    for (int64_t i = 0; i < count; ++i)
        out[i] = upfirdn2d_math::output_sample<double>(p, x.data(), f.data(), upfirdn2d_math::output_coords(p, i));
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("run", &run); }
"""


class HostKernel:
    """Stands in for the CUDA plugin with the same upfirdn2d signature, on float64 CPU tensors."""

    def __init__(self, module):
        self.module = module

    def upfirdn2d(self, x, f, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, flip_filter, gain):
        assert x.dtype == f.dtype == torch.float64 and f.ndim == 2
        n, c, h, w = x.shape
        out_h = (h * up_y + pad_y0 + pad_y1 - f.shape[0]) // down_y + 1
        out_w = (w * up_x + pad_x0 + pad_x1 - f.shape[1]) // down_x + 1
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        y = torch.from_numpy(
            self.module.run(
                x.detach().numpy(),
                f.numpy(),
                out_h,
                out_w,
                up_x,
                up_y,
                down_x,
                down_y,
                pad_x0,
                pad_y0,
                flip_filter,
                channels_last,
                gain,
            )
        )
        if channels_last:
            return y.reshape(n, out_h, out_w, c).permute(0, 3, 1, 2)
        return y.reshape(n, c, out_h, out_w)


@pytest.fixture(scope='module')
def host_kernel(tmp_path_factory):
    header = os.path.join(os.path.dirname(upfirdn2d_module.__file__), 'upfirdn2d.h')
    return HostKernel(build_host_kernel(tmp_path_factory, 'upfirdn2d_host', HOST_KERNEL_SOURCE, header))


def _explicit_grad_kernel(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """upfirdn2d through the CUDA path's wrapper and autograd.Function (the plugin patched in by the caller)."""
    parse = upfirdn2d_module
    return parse._upfirdn2d_custom_grad(
        x,
        f,
        parse._parse_scaling(up, 'up'),
        parse._parse_scaling(down, 'down'),
        parse._parse_padding(padding),
        flip_filter,
        gain,
        parse._upfirdn2d_cuda_kernel,
    )


def test_kernel_math_matches_oracle_in_any_layout(host_kernel, monkeypatch):
    monkeypatch.setattr(upfirdn2d_module, '_plugin', lambda require_device=True: host_kernel)
    rng = np.random.default_rng(321)
    for index in range(300):
        case = random_case(rng)
        x = torch.tensor(case['x'])
        layout = index % 3
        if layout == 1:
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == 2:  # a strided view: every other column of a wider tensor
            wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype)
            wide[..., ::2] = x
            x = wide[..., ::2]
        kwargs = {key: case[key] for key in ('up', 'down', 'padding', 'flip_filter', 'gain')}
        actual = _explicit_grad_kernel(x, torch.tensor(case['f']), **kwargs)
        if layout == 1 and min(actual.shape[1], actual.shape[2] * actual.shape[3]) > 1:
            assert actual.is_contiguous(memory_format=torch.channels_last)
        assert np.allclose(actual.numpy(), oracle(case), rtol=1e-10, atol=1e-10), case


@pytest.mark.parametrize('config', GRAD_CONFIGS)
def test_kernel_math_gradcheck(config, host_kernel, monkeypatch):
    monkeypatch.setattr(upfirdn2d_module, '_plugin', lambda require_device=True: host_kernel)
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    for f in (
        torch.randn(4, 3, dtype=torch.float64, generator=generator),
        setup_filter([1, 3, 3, 1], separable=True).double(),
    ):
        assert torch.autograd.gradcheck(lambda t: _explicit_grad_kernel(t, f, **config), (x,))
        assert torch.autograd.gradgradcheck(lambda t: _explicit_grad_kernel(t, f, **config), (x,))


# ----------------------------------------------------------------------------------------------
# CUDA kernel against the reference.


@requires_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_cuda_matches_reference_on_random_cases(dtype):
    rng = np.random.default_rng(2024)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for _ in range(300):
        case = random_case(rng)
        case['x'] = case['x'] / 4
        expected = run_op(case, 'ref', 'cuda', torch.float32)
        actual = run_op(case, 'cuda', 'cuda', dtype)
        assert actual.dtype == dtype
        torch.testing.assert_close(actual.float(), expected, **tolerance, msg=lambda message: f'{message}\n{case}')


@requires_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('channels_last', [False, True])
def test_cuda_gradients_match_reference(dtype, channels_last):
    generator = torch.Generator().manual_seed(11)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for config in GRAD_CONFIGS:
        for f in (setup_filter([1, 3, 3, 1], device='cuda'), setup_filter(np.arange(1, 9), device='cuda')):
            x = torch.randn(2, 8, 9, 7, generator=generator).cuda().contiguous(memory_format=memory_format)
            with torch.no_grad():
                cotangent = torch.randn_like(upfirdn2d(x, f, impl='ref', **config))
            results = []
            for impl, x_dtype in (('ref', torch.float32), ('cuda', dtype)):
                xi = x.to(x_dtype).requires_grad_(True)
                ci = cotangent.to(x_dtype).requires_grad_(True)
                y = upfirdn2d(xi, f, impl=impl, **config)
                (dx,) = torch.autograd.grad(y, xi, ci, create_graph=True)
                # Differentiating the gradient w.r.t. the cotangent runs the backward's own backward.
                (ddc,) = torch.autograd.grad((dx.float() ** 2).sum(), ci)
                results.append((y.float(), dx.float(), ddc.float()))
            for expected, actual in zip(*results):
                torch.testing.assert_close(actual, expected, **tolerance)


@requires_cuda
def test_cuda_gradcheck_float64():
    f = setup_filter([1, 3, 3, 1], device='cuda').double()
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, device='cuda', requires_grad=True)
    for config in GRAD_CONFIGS:
        function = lambda t: upfirdn2d(t, f, impl='cuda', **config)  # noqa: E731
        assert torch.autograd.gradcheck(function, (x,))
        assert torch.autograd.gradgradcheck(function, (x,))
