"""Tests for torch_utils/ops/bias_act.py against formulas written out here, and the CUDA kernel against the reference."""

import math

import pytest
import torch

from tests.conftest import requires_cuda
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
    'linear': (None, 1.0), 'relu': (None, math.sqrt(2)), 'lrelu': (0.2, math.sqrt(2)), 'tanh': (None, 1.0),
    'sigmoid': (None, 1.0), 'elu': (1.0, 1.0), 'selu': (1.6732632423543772, 1.0), 'softplus': (None, 1.0),
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
    x_cpu = points_away_from_kinks((4, 8, 16, 16), b_cpu, 1, generator, margin=0.05, dtype=torch.float32)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        for clamp in (None, 0.9):
            results = {}
            for impl in ('ref', 'cuda'):
                x = x_cpu.cuda().to(dtype, memory_format=memory_format).requires_grad_()
                b = b_cpu.cuda().to(dtype).requires_grad_()
                # The reference runs in float32 so that float16 rounding inside its op chain does not count.
                y = bias_act(x.float() if impl == 'ref' else x, b.float() if impl == 'ref' else b,
                             act=act, gain=1.3, clamp=clamp, impl=impl)
                upstream = torch.linspace(-1, 1, y.numel(), device='cuda').reshape(y.shape)
                grad_x, grad_b = torch.autograd.grad((y.float() * upstream).sum(), [x, b], create_graph=True)
                penalty = grad_x.float().square().sum() + grad_b.float().square().sum()
                second_x, second_b = torch.autograd.grad(penalty, [x, b])
                results[impl] = [t.float() for t in (y, grad_x, grad_b, second_x, second_b)]
            for name, ref, cuda in zip(('y', 'dx', 'db', 'd2x', 'd2b'), results['ref'], results['cuda']):
                scale = max(ref.abs().max().item(), 1.0)
                torch.testing.assert_close(cuda / scale, ref / scale, **tolerance,
                                           msg=lambda m: f'{act} {dtype} {memory_format} clamp={clamp} {name}: {m}')


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
