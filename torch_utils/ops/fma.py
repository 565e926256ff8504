"""Fused multiply-add a * b + c with broadcasting, as one op in the forward pass."""

import torch


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c, with a, b, c broadcast against each other.

    a, b, c [any shapes that broadcast] -> [broadcast shape]
    torch.addcmul does the whole expression in one kernel, and its autograd formula reduces each
    gradient to its input's shape and is itself differentiable, so no custom backward is needed.
    """
    return torch.addcmul(c, a, b)
