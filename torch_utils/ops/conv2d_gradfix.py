"""conv2d / conv_transpose2d whose weight gradients can be switched off, with exact double backward.

Drop-in replacements for the torch.nn.functional functions. Their backward computes the input
gradient with the transposed convolution, itself differentiable to any order, and the weight
gradient with aten's convolution_backward. Inside `no_weight_gradients()` the weight gradient is
skipped: R1 and path-length regularisation take gradients with respect to images or latents
only, and the weight gradients of that first backward pass would be thrown away. The weights
still receive their gradients from the penalty's own backward pass.
"""

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

import torch

_weight_gradients_disabled = contextvars.ContextVar('conv2d_gradfix_weight_gradients_disabled', default=False)


@contextlib.contextmanager
def no_weight_gradients(*, disable: bool = False) -> Iterator[None]:
    """Skip the weight gradients of this module's convolutions in backward passes run inside the block.

    disable: True makes the block do nothing, for call sites where skipping is optional, e.g.
        `with no_weight_gradients(disable=not pl_no_weight_grad):`.
    Backward passes run on the calling thread inside the block (autograd otherwise runs CUDA
    backward on its own worker threads, which would not see this context).
    """
    if disable:
        yield
        return
    token = _weight_gradients_disabled.set(True)
    try:
        with torch.autograd.set_multithreading_enabled(False):
            yield
    finally:
        _weight_gradients_disabled.reset(token)


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Same as torch.nn.functional.conv2d (numeric padding only).

    input [N, C_in, H, W], weight [C_out, C_in / groups, kH, kW], bias [C_out] or None -> [N, C_out, H_out, W_out]
    """
    config = _config(input, weight, stride, padding, (0, 0), dilation, groups, transposed=False)
    return _Convolution.apply(input, weight, bias, config)


def conv_transpose2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Same as torch.nn.functional.conv_transpose2d.

    input [N, C_in, H, W], weight [C_in, C_out / groups, kH, kW], bias [C_out] or None -> [N, C_out, H_out, W_out]
    """
    config = _config(input, weight, stride, padding, output_padding, dilation, groups, transposed=True)
    return _Convolution.apply(input, weight, bias, config)


class _ConvConfig(NamedTuple):
    """Non-tensor arguments of one convolution, in aten.convolution's terms."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    transposed: bool
    output_padding: tuple[int, int]
    groups: int


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f'conv2d_gradfix: {name} must be an int or a pair of ints, got {value!r}')
    return pair


def _config(
    input: torch.Tensor, weight: torch.Tensor, stride, padding, output_padding, dilation, groups: int, transposed: bool
) -> _ConvConfig:
    op_name = 'conv_transpose2d' if transposed else 'conv2d'
    if isinstance(padding, str):
        raise ValueError(f'conv2d_gradfix.{op_name}: padding={padding!r} is not supported; pass numeric padding')
    if input.ndim != 4 or weight.ndim != 4:
        raise ValueError(
            f'conv2d_gradfix.{op_name}: input and weight must be 4-d, got input '
            f'{list(input.shape)} and weight {list(weight.shape)}; add a batch dimension if it is missing'
        )
    return _ConvConfig(
        _pair(stride, 'stride'),
        _pair(padding, 'padding'),
        _pair(dilation, 'dilation'),
        transposed,
        _pair(output_padding, 'output_padding'),
        int(groups),
    )


def _convolve(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: _ConvConfig
) -> torch.Tensor:
    return torch.convolution(
        input,
        weight,
        bias,
        config.stride,
        config.padding,
        config.dilation,
        config.transposed,
        config.output_padding,
        config.groups,
    )


def _input_gradient(
    grad_output: torch.Tensor, weight: torch.Tensor, config: _ConvConfig, input_shape: torch.Size
) -> torch.Tensor:
    """Adjoint of the convolution `config` with `weight`, itself a differentiable _Convolution.

    grad_output [N, C_out, H_out, W_out], weight [weight shape of config] -> [input_shape]
    """
    if config.transposed:
        # The plain convolution is the adjoint. When the output padding reaches past the stride (possible
        # with dilation), it yields extra trailing rows/columns that belong to no input pixel.
        grad_input = _Convolution.apply(
            grad_output, weight, None, config._replace(transposed=False, output_padding=(0, 0))
        )
        return grad_input[:, :, : input_shape[2], : input_shape[3]]
    # The plain convolution drops the rows/columns that no window reaches; output padding restores them.
    output_padding = tuple(
        input_shape[i + 2]
        - (
            (grad_output.shape[i + 2] - 1) * config.stride[i]
            - 2 * config.padding[i]
            + config.dilation[i] * (weight.shape[i + 2] - 1)
            + 1
        )
        for i in range(2)
    )
    return _Convolution.apply(
        grad_output, weight, None, config._replace(transposed=True, output_padding=output_padding)
    )


def _weight_gradient(
    grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, config: _ConvConfig
) -> torch.Tensor:
    """grad_output [N, C_out, H_out, W_out], input [N, C_in, H, W] -> [weight.shape]"""
    # The weight gradient of a transposed convolution is that of the plain convolution that is its
    # adjoint, with the roles of input and output gradient exchanged.
    adjoint_input, adjoint_grad = (grad_output, input) if config.transposed else (input, grad_output)
    if (
        config.stride != (1, 1)
        and config.dilation == (1, 1)
        and adjoint_input.device.type == 'cpu'
        and adjoint_input.is_contiguous(memory_format=torch.channels_last)
    ):
        return _strided_weight_gradient(adjoint_grad, adjoint_input, weight.shape, config)
    return _aten_weight_gradient(grad_output, input, weight, config)


def _aten_weight_gradient(
    grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, config: _ConvConfig
) -> torch.Tensor:
    """aten's weight gradient of the convolution `config`: as _weight_gradient.

    convolution_backward reads only the shape and memory layout of `weight` for the weight gradient.
    """
    _, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_output,
        input,
        weight,
        None,
        config.stride,
        config.padding,
        config.dilation,
        config.transposed,
        config.output_padding,
        config.groups,
        [False, True, False],
    )
    return grad_weight


def _strided_weight_gradient(
    grad_output: torch.Tensor, input: torch.Tensor, weight_shape: torch.Size, config: _ConvConfig
) -> torch.Tensor:
    """Weight gradient of a plain strided, undilated convolution as a sum over its stride phases.

    grad_output [N, C_out, H_out, W_out], input [N, C_in, H, W] -> [C_out, C_in / groups, kH, kW]
    (for a transposed convolution: its input as grad_output and its output gradient as input,
    giving its weight [C_in, C_out / groups, kH, kW]).
    Tap k of the kernel with stride s reads the padded input at s * i + k = s * (i + q) + r with
    r = k mod s: the taps of one phase r form a stride-1 convolution over the input rows r, r + s,
    r + 2s, ... For channels_last activations on the CPU, oneDNN's weight gradient of a strided
    convolution is 2-3x slower than those of the stride-1 convolutions it splits into (in NCHW it
    is not, and aten computes it directly).
    """
    kernel_h, kernel_w = weight_shape[2:]
    out_h, out_w = grad_output.shape[2:]
    pad_h, pad_w = config.padding
    padded = torch.nn.functional.pad(input, (pad_w, pad_w, pad_h, pad_h)) if (pad_h or pad_w) else input
    stride_h, stride_w = config.stride
    grad_weight = grad_output.new_zeros(weight_shape)
    phase_config = _ConvConfig((1, 1), (0, 0), (1, 1), False, (0, 0), config.groups)
    for row_phase in range(min(stride_h, kernel_h)):
        taps_h = len(range(row_phase, kernel_h, stride_h))
        for col_phase in range(min(stride_w, kernel_w)):
            taps_w = len(range(col_phase, kernel_w, stride_w))
            phase = padded[:, :, row_phase::stride_h, col_phase::stride_w]
            phase = phase[:, :, : out_h + taps_h - 1, : out_w + taps_w - 1].contiguous(
                memory_format=torch.channels_last
            )
            phase_weight = grad_output.new_empty(*weight_shape[:2], taps_h, taps_w)
            grad_weight[:, :, row_phase::stride_h, col_phase::stride_w] = _aten_weight_gradient(
                grad_output, phase, phase_weight, phase_config
            )
    return grad_weight


class _Convolution(torch.autograd.Function):
    """out = conv(input, weight) + bias, with a differentiable input gradient and an optional weight gradient."""

    @staticmethod
    def forward(
        ctx, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: _ConvConfig
    ) -> torch.Tensor:
        ctx.config = config
        ctx.input_shape = input.shape
        ctx.save_for_backward(input if weight.requires_grad else None, weight)
        return _convolve(input, weight, bias, config)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        input, weight = ctx.saved_tensors
        config = ctx.config
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = _input_gradient(grad_output, weight, config, ctx.input_shape)
        if ctx.needs_input_grad[1] and not _weight_gradients_disabled.get():
            grad_weight = _WeightGradient.apply(grad_output, input, weight, config)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum([0, 2, 3])
        return grad_input, grad_weight, grad_bias, None


class _WeightGradient(torch.autograd.Function):
    """grad_weight = d<grad_output, conv(input, W)>/dW, differentiable in grad_output and input."""

    @staticmethod
    def forward(
        ctx, grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, config: _ConvConfig
    ) -> torch.Tensor:
        ctx.config = config
        ctx.save_for_backward(grad_output, input)
        ctx.input_shape = input.shape
        # The weight only tells convolution_backward its shape; no gradient flows into it here.
        return _weight_gradient(grad_output, input, weight, config)

    @staticmethod
    def backward(ctx, grad_grad_weight: torch.Tensor):
        grad_output, input = ctx.saved_tensors
        config = ctx.config
        grad_grad_output = grad_input = None
        # grad_weight is bilinear in (grad_output, input) with the convolution as its pairing.
        if ctx.needs_input_grad[0]:
            grad_grad_output = _Convolution.apply(input, grad_grad_weight, None, config)
        if ctx.needs_input_grad[1]:
            grad_input = _input_gradient(grad_output, grad_grad_weight, config, ctx.input_shape)
        return grad_grad_output, grad_input, None, None
