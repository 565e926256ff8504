"""Fused bias + activation + gain + clamp: the nonlinearity at the end of every StyleGAN2 layer.

`bias_act` has a pure-PyTorch reference path (any device, any order of derivatives) and a
CUDA kernel (bias_act.cu) that does the whole chain in one pass over memory and keeps its first
derivative differentiable, so that R1 regularisation can backpropagate through a gradient.
"""

import math
import os
import types
from typing import NamedTuple

import torch
import torch.nn.functional as F

from torch_utils import custom_ops


class Activation(NamedTuple):
    """How `bias_act` treats one activation function."""

    default_alpha: float | None  # shape parameter; None: the activation takes none
    default_gain: float  # output scale that keeps the activations' magnitude, e.g. sqrt(2) after ReLU
    derivative_uses: str  # 'y' or 'x': what the CUDA path keeps for backward (the output or the input)
    has_second_derivative: bool  # False for piecewise-linear activations, whose curvature is zero
    kernel_id: int  # index in bias_act.h's BiasActKind


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

ACTIVATIONS: dict[str, Activation] = {
    'linear': Activation(None, 1.0, 'y', False, 0),
    'relu': Activation(None, math.sqrt(2), 'y', False, 1),
    'lrelu': Activation(0.2, math.sqrt(2), 'y', False, 2),
    'tanh': Activation(None, 1.0, 'y', True, 3),
    'sigmoid': Activation(None, 1.0, 'y', True, 4),
    'elu': Activation(1.0, 1.0, 'y', True, 5),
    'selu': Activation(SELU_ALPHA, 1.0, 'y', True, 6),
    'softplus': Activation(None, 1.0, 'y', True, 7),
    'swish': Activation(None, math.sqrt(2), 'x', True, 8),
}

# g * act(z) == act(g * z) for g > 0, so the gain can ride on the bias addition for free.
_POSITIVELY_HOMOGENEOUS = ('linear', 'relu', 'lrelu')


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = 'linear',
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str = 'auto',
    overwrite_x: bool = False,
) -> torch.Tensor:
    """y = clamp(gain * act(x + b), -clamp, clamp), with b broadcast along dimension `dim` of x.

    x [..., C (at dim), ...], b [C] or None -> y [x.shape]
    act: a key of ACTIVATIONS. alpha: its shape parameter (lrelu's negative slope, elu's and
        selu's alpha); None takes the default. gain: None takes the activation's default gain.
    clamp: None, or a bound >= 0 applied after the gain.
    impl: 'auto' (the CUDA kernel for CUDA tensors when it builds, else the reference), 'ref' or 'cuda'.
    When there is nothing to do (linear, no bias, gain 1, no clamp), x itself is returned.
    overwrite_x: the caller gives x up (a fresh tensor nothing else refers to), so the reference
        path may compute in it when autograd does not need it.
    """
    spec, dim, alpha, gain = _check_arguments(x, b, dim, act, alpha, gain, clamp)
    if custom_ops.choose_impl(impl, x, _plugin) == 'cuda':
        config = _kernel_config(spec, dim, alpha, gain, clamp)
        return _BiasActCuda.apply(x, None if b is None else b.to(x.dtype), config)
    return _bias_act_ref(x, b, dim, act, alpha, gain, clamp, overwrite_x)


def _plugin(require_device: bool = True) -> types.ModuleType | None:
    """The compiled bias_act kernel, or None where it cannot be built (see torch_utils.custom_ops)."""
    return custom_ops.get_plugin(
        'bias_act_plugin',
        sources=['bias_act.cpp', 'bias_act.cu'],
        headers=['bias_act.h'],
        source_dir=os.path.dirname(os.path.abspath(__file__)),
        require_device=require_device,
        extra_cuda_cflags=['--use_fast_math'],
    )


def _check_arguments(
    x: torch.Tensor,
    b: torch.Tensor | None,
    dim: int,
    act: str,
    alpha: float | None,
    gain: float | None,
    clamp: float | None,
) -> tuple[Activation, int, float | None, float]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'bias_act: x must be a tensor, got {type(x).__name__}')
    if act not in ACTIVATIONS:
        raise ValueError(f'bias_act: unknown activation {act!r}; use one of {", ".join(ACTIVATIONS)}')
    spec = ACTIVATIONS[act]
    if alpha is not None and spec.default_alpha is None:
        raise ValueError(f'bias_act: activation {act!r} takes no alpha; pass alpha=None')
    if clamp is not None and not clamp >= 0:
        raise ValueError(f'bias_act: clamp must be None or >= 0, got {clamp}')
    if b is not None:
        if not -x.ndim <= dim < x.ndim:
            raise ValueError(f'bias_act: dim={dim} is out of range for x of shape {list(x.shape)}')
        dim %= x.ndim
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f'bias_act: b has shape {list(b.shape)}, expected [x.shape[{dim}]] = [{x.shape[dim]}]')
    elif x.ndim > 0:
        dim %= x.ndim
    else:
        dim = 0
    alpha = spec.default_alpha if alpha is None else float(alpha)
    gain = spec.default_gain if gain is None else float(gain)
    return spec, dim, alpha, gain


def _bias_act_ref(
    x: torch.Tensor,
    b: torch.Tensor | None,
    dim: int,
    act: str,
    alpha: float | None,
    gain: float,
    clamp: float | None,
    overwrite_x: bool = False,
) -> torch.Tensor:
    """Reference path from torch ops, differentiable to any order. x [..., C, ...], b [C] or None -> [x.shape]"""
    needs_graph = torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))
    fold_gain = act in _POSITIVELY_HOMOGENEOUS and gain > 0 and gain != 1
    if b is not None:
        b = b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
        z = torch.add(b * gain, x, alpha=gain) if fold_gain else x + b
    else:
        z = x * gain if fold_gain else x
    # In-place steps are safe only on a fresh tensor that no graph will look back at.
    in_place = not needs_graph and (z is not x or overwrite_x)
    remaining_gain = 1.0 if fold_gain else gain

    if act == 'relu':
        y = F.relu_(z) if in_place else F.relu(z)
    elif act == 'lrelu':
        y = F.leaky_relu_(z, alpha) if in_place else F.leaky_relu(z, alpha)
    elif act == 'tanh':
        y = z.tanh_() if in_place else torch.tanh(z)
    elif act == 'sigmoid':
        y = z.sigmoid_() if in_place else torch.sigmoid(z)
    elif act in ('elu', 'selu'):
        # aten's elu computes scale * (z > 0 ? z : alpha * (exp(z) - 1)), so selu and the gain fold into it.
        scale = remaining_gain * (SELU_SCALE if act == 'selu' else 1.0)
        remaining_gain = 1.0
        y = torch.ops.aten.elu_(z, alpha, scale, 1.0) if in_place else torch.ops.aten.elu(z, alpha, scale, 1.0)
    elif act == 'softplus':
        y = F.softplus(z)
    elif act == 'swish':
        y = F.silu(z, inplace=in_place)
    else:
        y = z

    in_place = not needs_graph and (y is not x or overwrite_x)
    if remaining_gain != 1:
        y = y.mul_(remaining_gain) if in_place else y * remaining_gain
        in_place = not needs_graph
    if clamp is not None:
        y = y.clamp_(-clamp, clamp) if in_place else y.clamp(-clamp, clamp)
    return y


class _KernelConfig(NamedTuple):
    """Everything the CUDA kernel needs besides tensors."""

    kind: int
    ref_is_output: bool
    has_second_derivative: bool
    dim: int
    alpha: float
    gain: float
    clamp: float  # < 0: no clamp


def _kernel_config(spec: Activation, dim: int, alpha: float | None, gain: float, clamp: float | None) -> _KernelConfig:
    return _KernelConfig(
        spec.kernel_id,
        spec.derivative_uses == 'y',
        spec.has_second_derivative,
        dim,
        float(alpha or 0.0),
        float(gain),
        -1.0 if clamp is None else float(clamp),
    )


def _run_kernel(
    config: _KernelConfig, mode: int, values: torch.Tensor, bias: torch.Tensor | None, ref: torch.Tensor | None
) -> torch.Tensor:
    """One kernel launch: values [shape], bias [C] or None, ref [shape] or None -> [shape]"""
    empty = values.new_empty([0])
    return _plugin().bias_act(
        values,
        empty if bias is None else bias,
        empty if ref is None else ref,
        config.kind,
        mode,
        config.ref_is_output,
        config.dim,
        config.alpha,
        config.gain,
        config.clamp,
    )


def _sum_to_bias(grad: torch.Tensor, dim: int) -> torch.Tensor:
    """grad [..., C (at dim), ...] -> [C]"""
    other_dims = [i for i in range(grad.ndim) if i != dim]
    return grad.sum(other_dims) if other_dims else grad


class _BiasActCuda(torch.autograd.Function):
    """y = clamp(gain * act(x + b)) by the kernel; backward goes through _BiasActCudaGrad."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, b: torch.Tensor | None, config: _KernelConfig) -> torch.Tensor:
        y = _run_kernel(config, 0, x, b, None)
        ctx.config = config
        ctx.has_bias = b is not None
        # Only x-referenced derivatives (swish) need the bias later, to rebuild z = x + b.
        ctx.save_for_backward(y if config.ref_is_output else x, None if config.ref_is_output else b)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        ref, bias = ctx.saved_tensors
        dx = _BiasActCudaGrad.apply(dy, ref, bias, ctx.config)
        db = _sum_to_bias(dx, ctx.config.dim) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return dx, db, None


class _BiasActCudaGrad(torch.autograd.Function):
    """dx = dy * dy/dx by the kernel (mode 1), itself differentiable through mode 1 and mode 2."""

    @staticmethod
    def forward(
        ctx, dy: torch.Tensor, ref: torch.Tensor, bias: torch.Tensor | None, config: _KernelConfig
    ) -> torch.Tensor:
        ctx.config = config
        ctx.save_for_backward(dy, ref, bias)
        return _run_kernel(config, 1, dy, bias, ref)

    @staticmethod
    def backward(ctx, d_dx: torch.Tensor):
        dy, ref, bias = ctx.saved_tensors
        config = ctx.config
        d_dy = d_ref = d_bias = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActCudaGrad.apply(d_dx, ref, bias, config)
        if config.has_second_derivative and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d_ref = _run_kernel(config, 2, d_dx * dy, bias, ref)
            if bias is not None and ctx.needs_input_grad[2]:
                d_bias = _sum_to_bias(d_ref, config.dim)
        return d_dy, d_ref, d_bias, None
