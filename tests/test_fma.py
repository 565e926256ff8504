"""Tests for torch_utils/ops/fma.py: values against a * b + c, gradients by gradcheck under broadcasting."""

import pytest
import torch

from torch_utils.ops.fma import fma

BROADCAST_CASES = [
    ((2, 3, 4), (2, 3, 4), (2, 3, 4)),
    ((2, 1, 4), (1, 3, 1), (4,)),
    ((3, 1), (2, 1, 5), (1,)),
    ((), (2, 3), (2, 1)),
    ((2, 3, 4), (), ()),
]


@pytest.mark.parametrize('shapes', BROADCAST_CASES)
def test_values_and_gradients(shapes):
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True) for shape in shapes)
    result = fma(a, b, c)
    torch.testing.assert_close(result, a * b + c, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(fma, (a, b, c))
    assert torch.autograd.gradgradcheck(fma, (a, b, c))


def test_gradient_shapes_are_reduced_to_inputs():
    a = torch.randn(4, 1, 3, requires_grad=True)
    b = torch.randn(5, 1, requires_grad=True)
    c = torch.randn(1, requires_grad=True)
    fma(a, b, c).sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape and c.grad.shape == c.shape
    # d(sum)/dc counts every output element; d(sum)/da sums b over the broadcast axis.
    torch.testing.assert_close(c.grad, torch.tensor([4.0 * 5 * 3]))
    torch.testing.assert_close(a.grad, b.detach().sum().expand(4, 1, 3))
