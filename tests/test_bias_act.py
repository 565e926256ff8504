"""Tests for torch_utils/ops/bias_act.py against formulas written out here, and the CUDA kernel against the reference."""

import math
import os

import pytest
import torch

from tests.conftest import requires_cuda
from tests.host_build import build_host_kernel
from torch_utils.ops import bias_act as bias_act_module
from torch_utils.ops.bias_act import ACTIVATIONS, bias_act


def formula(z: torch.Tensor, act: str, alpha: float | None) -> torch.Tensor:
    """Each activation from its textbook definition, independent of the ops bias_act uses."""
    if act == 'linear':
        return z
    if act == 'relu':
        return torch.where(z > 0, z, torch.zeros_like(z))
    if act == 'lrelu':
        return torch.where(z > 0, z, alpha * z)
    if act == 'tanh':
        return 1 - 2 / (torch.exp(2 * z) + 1)
    if act == 'sigmoid':
        return 1 / (1 + torch.exp(-z))
    if act == 'elu':
        return torch.where(z > 0, z, alpha * (torch.exp(z) - 1))
    if act == 'selu':
        return 1.0507009873554804934193349852946 * torch.where(z > 0, z, alpha * (torch.exp(z) - 1))
    if act == 'softplus':
        return torch.log(1 + torch.exp(z))
    if act == 'swish':
        return z / (1 + torch.exp(-z))
    raise AssertionError(act)


EXPECTED_DEFAULTS = {  # (alpha, gain), from the method description
    'linear': (None, 1.0),
    'relu': (None, math.sqrt(2)),
    'lrelu': (0.2, math.sqrt(2)),
    'tanh': (None, 1.0),
    'sigmoid': (None, 1.0),
    'elu': (1.0, 1.0),
    'selu': (1.6732632423543772, 1.0),
    'softplus': (None, 1.0),
    'swish': (None, math.sqrt(2)),
}


def expected(x, b, dim, act, alpha=None, gain=None, clamp=None):
    default_alpha, default_gain = EXPECTED_DEFAULTS[act]
    z = x if b is None else x + b.reshape([-1 if i == dim % x.ndim else 1 for i in range(x.ndim)])
    y = formula(z, act, default_alpha if alpha is None else alpha) * (default_gain if gain is None else gain)
    if clamp is not None:
        y = torch.minimum(torch.maximum(y, torch.full_like(y, -clamp)), torch.full_like(y, clamp))
    return y


def points_away_from_kinks(shape, bias, dim, generator, margin=0.05, dtype=torch.float64):
    """x [shape] such that x + b stays at least `margin` from 0, where relu/lrelu/elu/selu bend."""
    z = torch.randn(shape, generator=generator, dtype=dtype)
    z = torch.where(z >= 0, z + margin, z - margin)
    if bias is None:
        return z
    return z - bias.reshape([-1 if i == dim % len(shape) else 1 for i in range(len(shape))])


def test_activation_table_matches_the_method():
    assert set(ACTIVATIONS) == set(EXPECTED_DEFAULTS)
    for act, (alpha, gain) in EXPECTED_DEFAULTS.items():
        assert ACTIVATIONS[act].default_gain == pytest.approx(gain, rel=1e-15)
        assert ACTIVATIONS[act].default_alpha == (None if alpha is None else pytest.approx(alpha, rel=1e-15))
        assert ACTIVATIONS[act].derivative_uses in ('x', 'y')


@pytest.mark.parametrize('act', list(ACTIVATIONS))
def test_matches_formula(act):
    generator = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(3, 5, 4, 6, dtype=torch.float64, generator=generator)
    b = torch.randn(5, dtype=torch.float64, generator=generator)
    b_last = torch.randn(6, dtype=torch.float64, generator=generator)
    custom_alpha = 0.37 if ACTIVATIONS[act].default_alpha is not None else None
    cases = [
        dict(b=b, dim=1),
        dict(b=None, dim=1),
        dict(b=b_last, dim=-1),
        dict(b=b_last, dim=3, gain=0.7, clamp=0.8),
        dict(b=b, dim=1, gain=-1.3),
        dict(b=b, dim=1, gain=2.5, alpha=custom_alpha, clamp=1.1),
        dict(b=None, dim=1, clamp=0.0),
    ]
    for case in cases:
        want = expected(x, case['b'], case['dim'], act, case.get('alpha'), case.get('gain'), case.get('clamp'))
        got = bias_act(x, act=act, impl='ref', **case)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f'{act} {case}')
        # The no-graph path works in place; the graph path must agree with it.
        with_graph = bias_act(x.clone().requires_grad_(), act=act, impl='ref', **case)
        torch.testing.assert_close(with_graph.detach(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('act', list(ACTIVATIONS))
def test_gradients_match_formula(act):
    generator = torch.Generator().manual_seed(1)
    b = torch.randn(4, dtype=torch.float64, generator=generator).requires_grad_()
    x = points_away_from_kinks((3, 4, 5), b.detach(), 1, generator).requires_grad_()
    weights = torch.randn(3, 4, 5, dtype=torch.float64, generator=generator)
    got = torch.autograd.grad((bias_act(x, b, act=act, gain=1.7, clamp=1.5) * weights).sum(), [x, b])
    want = torch.autograd.grad((expected(x, b, 1, act, gain=1.7, clamp=1.5) * weights).sum(), [x, b])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_input_is_not_modified_and_fp32_channels_last_is_kept():
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    original = x.clone()
    for act in ACTIVATIONS:
        y = bias_act(x, None, act=act, gain=2.0, clamp=1.0)
        assert y.is_contiguous(memory_format=torch.channels_last) or y.shape[1] == 1
    y = bias_act(x, torch.randn(3), act='lrelu')
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, original)


@pytest.mark.parametrize('act', ['linear', 'relu', 'lrelu', 'tanh', 'softplus'])
def test_overwrite_x_computes_in_place_only_without_a_graph(act):
    generator = torch.Generator().manual_seed(5)
    x = 2 * torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=generator)
    want = expected(x, None, 1, act, None, 1.0, 0.9)
    given = x.clone()
    got = bias_act(given, None, act=act, gain=1.0, clamp=0.9, impl='ref', overwrite_x=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if act in ('linear', 'relu', 'lrelu', 'tanh'):
        assert got.data_ptr() == given.data_ptr()  # computed in the given tensor
    leaf = x.clone().requires_grad_()
    given = leaf * 1.0
    kept = given.detach().clone()
    got = bias_act(given, None, act=act, gain=1.0, clamp=0.9, impl='ref', overwrite_x=True)
    assert torch.equal(given.detach(), kept)  # autograd needs it, so it was left alone
    torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-12)
    got.sum().backward()
    assert leaf.grad is not None


@pytest.mark.parametrize('act', list(ACTIVATIONS))
def test_gradcheck_and_gradgradcheck(act):
    generator = torch.Generator().manual_seed(2)
    b = torch.randn(3, dtype=torch.float64, generator=generator)
    x = points_away_from_kinks((2, 3, 4), b, 1, generator, margin=0.1)
    custom_alpha = 0.3 if ACTIVATIONS[act].default_alpha is not None else None

    def function(x, b):
        return bias_act(x, b, act=act, alpha=custom_alpha, gain=1.3, impl='ref')

    inputs = (x.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(function, inputs)
    assert torch.autograd.gradgradcheck(function, inputs)


def test_gradgradcheck_with_clamp_away_from_the_bound():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=generator)
    x = x[(x.abs() - 0.8).abs() > 0.05][:16].requires_grad_()  # no point within 0.05 of the clamp bound

    def function(x):
        return bias_act(x, None, act='tanh', gain=1.0, clamp=0.6, dim=0, impl='ref')

    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,))


def test_one_dimensional_input_with_bias():
    x = torch.randn(7, dtype=torch.float64)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    y = bias_act(x, b, dim=0, act='sigmoid')
    torch.testing.assert_close(y, expected(x, b, 0, 'sigmoid'))
    (grad_b,) = torch.autograd.grad(y.sum(), [b])
    s = 1 / (1 + torch.exp(-(x + b.detach())))
    torch.testing.assert_close(grad_b, s * (1 - s))


def test_bad_arguments_are_reported():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        bias_act(x, act='gelu')
    with pytest.raises(ValueError, match=r'b has shape \[4\], expected \[x.shape\[1\]\] = \[3\]'):
        bias_act(x, torch.zeros(4))
    with pytest.raises(ValueError, match='takes no alpha'):
        bias_act(x, act='relu', alpha=0.1)
    with pytest.raises(ValueError, match='clamp must be None or >= 0'):
        bias_act(x, clamp=-1)
    with pytest.raises(ValueError, match='dim=3 is out of range'):
        bias_act(x, torch.zeros(3), dim=3)
    with pytest.raises(ValueError, match='needs CUDA tensors'):
        bias_act(x, impl='cuda')


@requires_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('act', list(ACTIVATIONS))
def test_cuda_matches_reference(act, dtype):
    assert bias_act_module._plugin() is not None, 'the CUDA plugin failed to build'
    generator = torch.Generator().manual_seed(4)
    b_cpu = torch.randn(8, generator=generator)
    # float16 holds at most 65504: the bias's second derivative sums over every element of a
    # channel, so the float16 case keeps the channels small.
    shape = (4, 8, 16, 16) if dtype == torch.float32 else (2, 8, 4, 4)
    x_cpu = points_away_from_kinks(shape, b_cpu, 1, generator, margin=0.05, dtype=torch.float32)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        for clamp in (None, 0.9):
            results = {}
            for impl in ('ref', 'cuda'):
                x = x_cpu.cuda().to(dtype, memory_format=memory_format).requires_grad_()
                b = b_cpu.cuda().to(dtype).requires_grad_()
                # The reference runs in float32 so that float16 rounding inside its op chain does not count.
                y = bias_act(
                    x.float() if impl == 'ref' else x,
                    b.float() if impl == 'ref' else b,
                    act=act,
                    gain=1.3,
                    clamp=clamp,
                    impl=impl,
                )
                upstream = torch.linspace(-1, 1, y.numel(), device='cuda').reshape(y.shape)
                grad_x, grad_b = torch.autograd.grad((y.float() * upstream).sum(), [x, b], create_graph=True)
                penalty = grad_x.float().square().sum() + grad_b.float().square().sum()
                if penalty.requires_grad:
                    second_x, second_b = torch.autograd.grad(penalty, [x, b], allow_unused=True, materialize_grads=True)
                else:  # the first derivative depends on neither x nor b (linear)
                    second_x, second_b = torch.zeros_like(x), torch.zeros_like(b)
                results[impl] = [t.float() for t in (y, grad_x, grad_b, second_x, second_b)]
            for name, ref, cuda in zip(('y', 'dx', 'db', 'd2x', 'd2b'), results['ref'], results['cuda']):
                scale = max(ref.abs().max().item(), 1.0)
                torch.testing.assert_close(
                    cuda / scale,
                    ref / scale,
                    **tolerance,
                    msg=lambda m: f'{act} {dtype} {memory_format} clamp={clamp} {name}: {m}',
                )


@requires_cuda
@pytest.mark.parametrize('act', list(ACTIVATIONS))
def test_cuda_gradgradcheck(act):
    assert bias_act_module._plugin() is not None, 'the CUDA plugin failed to build'
    generator = torch.Generator().manual_seed(5)
    b = torch.randn(3, dtype=torch.float64, generator=generator)
    x = points_away_from_kinks((2, 3, 4), b, 1, generator, margin=0.1)

    def function(x, b):
        return bias_act(x, b, act=act, gain=1.3, impl='cuda')

    inputs = (x.cuda().requires_grad_(), b.cuda().requires_grad_())
    assert torch.autograd.gradcheck(function, inputs)
    assert torch.autograd.gradgradcheck(function, inputs)


# The CUDA kernel's per-element math (bias_act.h) compiled for the CPU, so that its formulas and
# the autograd wiring of the CUDA path are checked on machines without a GPU too.
HOST_KERNEL_SOURCE = """
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include "bias_act.h"

namespace py = pybind11;
using Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

template <int KIND>
void run(int mode, const double* input, const double* bias, const double* ref, double* out, py::ssize_t count,
         double alpha, double gain, double clamp) {
    for (py::ssize_t i = 0; i < count; ++i)
        out[i] = bias_act_math::element<KIND, double>(mode, input[i], bias[i], ref[i], alpha, gain, clamp);
}

Array elementwise(int kind, int mode, Array input, Array bias, Array ref, double alpha, double gain, double clamp) {
    Array out(input.size());
    auto args = std::make_tuple(mode, input.data(), bias.data(), ref.data(), out.mutable_data(), input.size(),
                                alpha, gain, clamp);
    switch (kind) {
        case kLinear: std::apply(run<kLinear>, args); break;
        case kRelu: std::apply(run<kRelu>, args); break;
        case kLrelu: std::apply(run<kLrelu>, args); break;
        case kTanh: std::apply(run<kTanh>, args); break;
        case kSigmoid: std::apply(run<kSigmoid>, args); break;
        case kElu: std::apply(run<kElu>, args); break;
        case kSelu: std::apply(run<kSelu>, args); break;
        case kSoftplus: std::apply(run<kSoftplus>, args); break;
        case kSwish: std::apply(run<kSwish>, args); break;
        default: throw std::invalid_argument("unknown kind");
    }
    return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("elementwise", &elementwise); }
"""


class HostKernel:
    """Stands in for the CUDA plugin with the same bias_act signature, on float64 CPU tensors."""

    def __init__(self, module):
        self.module = module

    def bias_act(self, input, bias, ref, kind, mode, ref_is_output, dim, alpha, gain, clamp):
        assert input.dtype == torch.float64
        input, bias, ref = input.detach(), bias.detach(), ref.detach()
        assert mode == 0 or ref_is_output == (kind != ACTIVATIONS['swish'].kernel_id)
        shape = [-1 if i == dim else 1 for i in range(input.ndim)]
        bias = bias.reshape(shape).expand_as(input) if bias.numel() else torch.zeros_like(input)
        ref = ref if ref.numel() else torch.zeros_like(input)
        out = self.module.elementwise(
            kind, mode, input.numpy(), bias.contiguous().numpy(), ref.contiguous().numpy(), alpha, gain, clamp
        )
        return torch.from_numpy(out).reshape(input.shape)


@pytest.fixture(scope='module')
def host_kernel(tmp_path_factory):
    header = os.path.join(os.path.dirname(bias_act_module.__file__), 'bias_act.h')
    return HostKernel(build_host_kernel(tmp_path_factory, 'bias_act_host', HOST_KERNEL_SOURCE, header))


def kernel_path(x, b, act, gain=None, clamp=None, dim=1):
    """bias_act through the CUDA path's autograd Functions (the plugin patched in by the caller)."""
    spec, dim, alpha, gain = bias_act_module._check_arguments(x, b, dim, act, None, gain, clamp)
    return bias_act_module._BiasActCuda.apply(x, b, bias_act_module._kernel_config(spec, dim, alpha, gain, clamp))


@pytest.mark.parametrize('act', list(ACTIVATIONS))
def test_kernel_math_matches_reference_to_second_order(act, host_kernel, monkeypatch):
    monkeypatch.setattr(bias_act_module, '_plugin', lambda require_device=True: host_kernel)
    generator = torch.Generator().manual_seed(6)
    b = torch.randn(4, dtype=torch.float64, generator=generator)
    x = points_away_from_kinks((3, 4, 5), b, 1, generator, margin=0.05)
    for gain, clamp in ((None, None), (1.7, 1.2), (-0.8, None)):
        results = []
        for function in (kernel_path, lambda *args, **kwargs: bias_act(*args, impl='ref', **kwargs)):
            xg, bg = x.clone().requires_grad_(), b.clone().requires_grad_()
            y = function(xg, bg, act=act, gain=gain, clamp=clamp)
            upstream = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
            grad_x, grad_b = torch.autograd.grad((y * upstream).sum(), [xg, bg], create_graph=True)
            penalty = grad_x.square().sum() + (grad_b * torch.arange(4.0, dtype=torch.float64)).sum()
            if penalty.requires_grad:
                second = torch.autograd.grad(penalty, [xg, bg], allow_unused=True, materialize_grads=True)
            else:  # piecewise-linear activations: the reference's gradient is a constant
                second = (torch.zeros_like(x), torch.zeros_like(b))
            results.append((y, grad_x, grad_b, *second))
        for name, kernel, reference in zip(('y', 'dx', 'db', 'd2x', 'd2b'), *results):
            torch.testing.assert_close(
                kernel, reference, rtol=1e-10, atol=1e-12, msg=lambda m: f'{act} gain={gain} clamp={clamp} {name}: {m}'
            )

    inputs = (x.clone().requires_grad_(), b.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda x, b: kernel_path(x, b, act, gain=1.3), inputs)
    assert torch.autograd.gradgradcheck(lambda x, b: kernel_path(x, b, act, gain=1.3), inputs)
