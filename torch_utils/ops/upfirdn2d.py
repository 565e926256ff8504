"""Upsample, FIR-filter and downsample 2-D images (`upfirdn2d`), the resampling op of StyleGAN2.

One call does, per channel and independently along x and y:
  1. upsample by inserting `up - 1` zeros after every input sample,
  2. zero-pad (negative padding crops),
  3. convolve with the FIR filter `f` (a true convolution; `flip_filter=True` makes it a correlation),
  4. multiply by `gain`,
  5. keep every `down`-th sample, starting with the first.
Output size along x: (W * up_x + pad_x0 + pad_x1 - filter_w) // down_x + 1, likewise along y.

Two implementations with the same signature:
  'ref'  pure PyTorch (depthwise conv2d / conv_transpose2d of conv2d_gradfix), runs anywhere, any
         order of derivatives; conv2d_gradfix's second derivative is again one grouped convolution,
         where aten's convolution double backward runs one convolution per channel (R1 through a
         [1,128,256,256] downsampling: 64 -> 20 ms);
  'cuda' a custom kernel (`upfirdn2d.cu`) wrapped in an autograd.Function whose backward is again
         `upfirdn2d`, so second derivatives work too. The filter gets no gradient on this path.
`impl='auto'` picks 'cuda' for CUDA tensors when the extension builds, 'ref' otherwise.
"""

import os
import types
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import custom_ops
from torch_utils.ops import conv2d_gradfix

Pair = tuple[int, int]
Padding4 = tuple[int, int, int, int]

_CUDA_MAX_TAPS = 4096  # the kernel keeps the whole filter in shared memory
# On the CPU a depthwise convolution is bound by memory traffic, not by taps: one pass with the
# outer-product filter beat two 1-D passes (and their intermediate image) up to 12 taps per axis.
_REF_OUTER_MAX_TAPS = 12


def _plugin(require_device: bool = True) -> types.ModuleType | None:
    """The compiled upfirdn2d kernel, or None where it cannot be built (see torch_utils.custom_ops).

    require_device=False builds it even without a visible GPU (for benchmarks/build_cuda_ops.sh).
    """
    return custom_ops.get_plugin(
        'upfirdn2d_plugin',
        sources=['upfirdn2d.cpp', 'upfirdn2d.cu'],
        headers=['upfirdn2d.h'],
        source_dir=os.path.dirname(os.path.abspath(__file__)),
        require_device=require_device,
    )


# ----------------------------------------------------------------------------------------------
# Argument parsing.


def _parse_scaling(value: int | Sequence[int], name: str) -> Pair:
    """An int or an (x, y) pair of ints >= 1 -> (x, y)."""
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f'upfirdn2d: {name}={value} is invalid; pass an int >= 1 or an (x, y) pair of them')
    return value


def _parse_padding(padding: int | Sequence[int]) -> Padding4:
    """An int, (px, py) or (px0, px1, py0, py1) -> (px0, px1, py0, py1)."""
    if isinstance(padding, (int, np.integer)):
        return (int(padding),) * 4
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) == 4:
        return padding
    raise ValueError(f'upfirdn2d: padding={padding} is invalid; pass an int, (px, py) or (px0, px1, py0, py1)')


def _filter_size(f: torch.Tensor | None) -> Pair:
    """Filter [fh, fw], separable [ft] or None -> (fw, fh)."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[1], f.shape[0]


def _check_filter(f: torch.Tensor) -> None:
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2) or f.numel() == 0:
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(
            f'upfirdn2d: filter of shape {shape} is invalid; pass a [fh, fw] or separable [ft] '
            f'tensor, e.g. from setup_filter()'
        )
    if not f.is_floating_point():
        raise ValueError(f'upfirdn2d: filter dtype {f.dtype} is not floating point; build it with setup_filter()')


def _output_size(in_size: int, up: int, down: int, pad0: int, pad1: int, taps: int, axis: str) -> int:
    padded = in_size * up + pad0 + pad1
    if padded < taps:
        raise ValueError(
            f'upfirdn2d: along {axis} the upsampled, padded input has {padded} samples, fewer than '
            f'the {taps} filter taps; increase the padding or the input size'
        )
    return (padded - taps) // down + 1


# ----------------------------------------------------------------------------------------------
# Filters.


def setup_filter(
    f,
    device: torch.device = torch.device('cpu'),
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """Turn filter taps into the float32 tensor that `upfirdn2d` expects.

    f: None (identity), a scalar, 1-D taps [ft] or a 2-D filter [fh, fw] (list, array or tensor).
    separable: keep 1-D taps as a separable [ft] filter; None keeps them separable from 8 taps up
        and otherwise expands them to the 2-D outer product [ft, ft] (the StyleGAN convention, so
        that buffers in existing checkpoints keep their [4, 4] shape).
    normalize: divide by the sum so that a constant image keeps its value (before `gain`).
    flip_filter: flip the taps (turns the convolution into a correlation).
    gain: overall amplification; a separable filter gets sqrt(gain) per axis.
    Returns [fh, fw] or separable [ft], float32, on `device`.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f.reshape(1)
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f'setup_filter: filter of shape {tuple(f.shape)} is invalid; pass 1-D taps or a 2-D filter')
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if separable and f.ndim != 1:
        raise ValueError('setup_filter: separable=True needs 1-D taps; pass [ft] taps or separable=False')
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        total = f.sum()
        if total == 0:
            raise ValueError('setup_filter: the filter taps sum to zero and cannot be normalized; pass normalize=False')
        f = f / total
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ----------------------------------------------------------------------------------------------
# Reference implementation.


def _pad_or_crop(x: torch.Tensor, padding: Padding4) -> torch.Tensor:
    """Zero-pad the last two dims by the positive entries of (x0, x1, y0, y1), crop by the negative ones.

    x [..., H, W] -> [..., H + y0 + y1, W + x0 + x1]
    Padding first lets a crop on one side reach into the padding added on the other.
    """
    if any(p > 0 for p in padding):
        x = F.pad(x, [max(p, 0) for p in padding])
    crop_x0, crop_x1, crop_y0, crop_y1 = (max(-p, 0) for p in padding)
    return x[..., crop_y0 : x.shape[-2] - crop_y1, crop_x0 : x.shape[-1] - crop_x1]


def _ref_pass(
    x: torch.Tensor, f: torch.Tensor, up: Pair, down: Pair, padding: Padding4, flip_filter: bool, gain: float
) -> torch.Tensor:
    """One 2-D filtering pass in plain PyTorch.

    x [N, C, H, W], f [fh, fw] -> [N, C, out_h, out_w]
    """
    (up_x, up_y), (down_x, down_y) = up, down
    pad_x0, pad_x1, pad_y0, pad_y1 = padding
    channels = x.shape[1]
    fh, fw = f.shape
    conv_taps = f.to(device=x.device, dtype=x.dtype) * gain  # taps of the true convolution
    if flip_filter:
        conv_taps = conv_taps.flip([0, 1])

    if up_x == 1 and up_y == 1:
        weight = conv_taps.flip([0, 1])[None, None].expand(channels, 1, fh, fw).contiguous()
        if pad_x0 == pad_x1 >= 0 and pad_y0 == pad_y1 >= 0:
            return conv2d_gradfix.conv2d(x, weight, stride=(down_y, down_x), padding=(pad_y0, pad_x0), groups=channels)
        x = _pad_or_crop(x, padding)
        return conv2d_gradfix.conv2d(x, weight, stride=(down_y, down_x), groups=channels)

    # conv_transpose2d fuses the zero insertion with a full convolution; its result, of length
    # (H - 1) * up + fh, starts fh - 1 samples before the padded signal's first output.
    start_x, end_x = pad_x0 - (fw - 1), pad_x1 - (fw - up_x)
    start_y, end_y = pad_y0 - (fh - 1), pad_y1 - (fh - up_y)
    crop_x = max(0, min(-start_x, -end_x))  # symmetric crops are cheaper inside conv_transpose2d
    crop_y = max(0, min(-start_y, -end_y))
    weight = conv_taps[None, None].expand(channels, 1, fh, fw).contiguous()
    x = conv2d_gradfix.conv_transpose2d(x, weight, stride=(up_y, up_x), padding=(crop_y, crop_x), groups=channels)
    x = _pad_or_crop(x, (start_x + crop_x, end_x + crop_x, start_y + crop_y, end_y + crop_y))
    if down_x > 1 or down_y > 1:
        x = x[:, :, ::down_y, ::down_x]
    return x


def _upfirdn2d_ref(
    x: torch.Tensor, f: torch.Tensor, up: Pair, down: Pair, padding: Padding4, flip_filter: bool, gain: float
) -> torch.Tensor:
    """Reference upfirdn2d; a long separable filter runs as an x pass then a y pass.

    x [N, C, H, W], f [fh, fw] or [ft] -> [N, C, out_h, out_w]
    """
    if f.ndim == 2:
        return _ref_pass(x, f, up, down, padding, flip_filter, gain)
    if f.shape[0] <= _REF_OUTER_MAX_TAPS:
        return _ref_pass(x, torch.outer(f, f), up, down, padding, flip_filter, gain)
    axis_gain = gain**0.5
    x = _ref_pass(x, f[None, :], (up[0], 1), (down[0], 1), (padding[0], padding[1], 0, 0), flip_filter, axis_gain)
    return _ref_pass(x, f[:, None], (1, up[1]), (1, down[1]), (0, 0, padding[2], padding[3]), flip_filter, axis_gain)


# ----------------------------------------------------------------------------------------------
# CUDA implementation.


def _upfirdn2d_cuda_kernel(
    x: torch.Tensor, f: torch.Tensor, up: Pair, down: Pair, padding: Padding4, flip_filter: bool, gain: float
) -> torch.Tensor:
    """The raw CUDA kernel (no autograd); a separable filter runs as two launches.

    x [N, C, H, W] on CUDA, f [fh, fw] or [ft] -> [N, C, out_h, out_w]
    """
    plugin = _plugin()
    f = f.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    if f.ndim == 2:
        return plugin.upfirdn2d(x, f, *up, *down, *padding, flip_filter, gain)
    axis_gain = gain**0.5
    x = plugin.upfirdn2d(x, f[None, :], up[0], 1, down[0], 1, padding[0], padding[1], 0, 0, flip_filter, axis_gain)
    return plugin.upfirdn2d(x, f[:, None], 1, up[1], 1, down[1], 0, 0, padding[2], padding[3], flip_filter, axis_gain)


Kernel = Callable[[torch.Tensor, torch.Tensor, Pair, Pair, Padding4, bool, float], torch.Tensor]


def _gradient_padding(in_size: int, out_size: int, up: int, down: int, pad0: int, taps: int) -> tuple[int, int]:
    """Padding of the adjoint upfirdn (up and down swapped, filter flipped) along one axis.

    The adjoint of "keep every down-th sample" is zero insertion, that of a valid convolution is a
    full convolution with the flipped filter (taps - 1 zeros each side), and that of padding is
    cropping. The end padding is trimmed by up - 1 because the final decimation by `up` discards
    those trailing samples anyway.
    """
    return taps - 1 - pad0, in_size * up - out_size * down + pad0 - up + 1


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d with an explicit gradient (itself with flipped filter and swapped up/down).

    Generic over the forward kernel, so the same gradient formula runs on the CUDA kernel and,
    in the tests, on the reference one. The filter is treated as a constant.
    """

    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip_filter, gain, kernel):
        y = kernel(x, f, up, down, padding, flip_filter, gain)
        ctx.save_for_backward(f)
        ctx.config = (up, down, padding, flip_filter, gain, kernel)
        ctx.sizes = (x.shape[3], x.shape[2], y.shape[3], y.shape[2])
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        (up_x, up_y), (down_x, down_y), (pad_x0, _, pad_y0, _), flip_filter, gain, kernel = ctx.config
        in_w, in_h, out_w, out_h = ctx.sizes
        fw, fh = _filter_size(f)
        dx = None
        if ctx.needs_input_grad[0]:
            grad_padding = (
                *_gradient_padding(in_w, out_w, up_x, down_x, pad_x0, fw),
                *_gradient_padding(in_h, out_h, up_y, down_y, pad_y0, fh),
            )
            dx = _UpFirDn2d.apply(dy, f, (down_x, down_y), (up_x, up_y), grad_padding, not flip_filter, gain, kernel)
        return dx, None, None, None, None, None, None, None


def _upfirdn2d_custom_grad(
    x: torch.Tensor,
    f: torch.Tensor,
    up: Pair,
    down: Pair,
    padding: Padding4,
    flip_filter: bool,
    gain: float,
    kernel: Kernel,
) -> torch.Tensor:
    """`kernel` wrapped in the explicit-gradient autograd.Function. x [N, C, H, W] -> [N, C, out_h, out_w]"""
    return _UpFirDn2d.apply(x, f, up, down, padding, flip_filter, gain, kernel)


# ----------------------------------------------------------------------------------------------
# Public API.


def _kernel_unsupported(x: torch.Tensor, f: torch.Tensor) -> str | None:
    """Why the CUDA kernel cannot run this call, or None when it can."""
    if f.requires_grad:
        return 'the filter requires a gradient, which only the reference path computes'
    if f.numel() > _CUDA_MAX_TAPS:
        return f'the filter has {f.numel()} taps, more than the {_CUDA_MAX_TAPS} that the kernel holds'
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f'dtype {x.dtype} is not supported by the kernel'
    return None


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = 'auto',
) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter, scale by `gain` and downsample.

    x [N, C, H, W]; f [fh, fw], separable [ft] (x pass then y pass) or None (identity)
    -> [N, C, (H * up_y + py0 + py1 - fh) // down_y + 1, (W * up_x + px0 + px1 - fw) // down_x + 1]
    up, down: int or (x, y); padding: int, (px, py) or (px0, px1, py0, py1), negative crops.
    For upsampling with a normalized filter pass gain=up_x * up_y to keep the signal level.
    impl: 'auto', 'ref' (pure PyTorch) or 'cuda' (custom kernel; the filter gets no gradient).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f'upfirdn2d: x of shape {shape} is invalid; pass a [N, C, H, W] tensor')
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    _check_filter(f)
    up, down, padding = _parse_scaling(up, 'up'), _parse_scaling(down, 'down'), _parse_padding(padding)
    fw, fh = _filter_size(f)
    _output_size(x.shape[3], up[0], down[0], padding[0], padding[1], fw, 'x')
    _output_size(x.shape[2], up[1], down[1], padding[2], padding[3], fh, 'y')

    if custom_ops.choose_impl(impl, x, _plugin) == 'cuda':
        reason = _kernel_unsupported(x, f)
        if reason is None:
            return _upfirdn2d_custom_grad(x, f, up, down, padding, flip_filter, gain, _upfirdn2d_cuda_kernel)
        if impl == 'cuda':
            raise ValueError(f"upfirdn2d: impl='cuda' cannot run this call: {reason}; use impl='auto' or 'ref'")
    return _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain)


def filter2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = 'auto',
) -> torch.Tensor:
    """Filter with a centered FIR filter; the output keeps the input size (plus `padding`).

    x [N, C, H, W] -> [N, C, H + py0 + py1, W + px0 + px1]
    """
    pad_x0, pad_x1, pad_y0, pad_y1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    padding = (pad_x0 + fw // 2, pad_x1 + (fw - 1) // 2, pad_y0 + fh // 2, pad_y1 + (fh - 1) // 2)
    return upfirdn2d(x, f, padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | Sequence[int] = 2,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = 'auto',
) -> torch.Tensor:
    """Upsample by zero insertion and a centered FIR filter, with gain up_x * up_y on top of `gain`.

    x [N, C, H, W] -> [N, C, H * up_y + py0 + py1, W * up_x + px0 + px1]
    """
    up_x, up_y = _parse_scaling(up, 'up')
    pad_x0, pad_x1, pad_y0, pad_y1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    padding = (
        pad_x0 + (fw + up_x - 1) // 2,
        pad_x1 + (fw - up_x) // 2,
        pad_y0 + (fh + up_y - 1) // 2,
        pad_y1 + (fh - up_y) // 2,
    )
    return upfirdn2d(
        x, f, up=(up_x, up_y), padding=padding, flip_filter=flip_filter, gain=gain * up_x * up_y, impl=impl
    )


def downsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    down: int | Sequence[int] = 2,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = 'auto',
) -> torch.Tensor:
    """Apply a centered FIR filter, then keep every down-th sample.

    x [N, C, H, W] -> [N, C, (H + py0 + py1) // down_y, (W + px0 + px1) // down_x]
    """
    down_x, down_y = _parse_scaling(down, 'down')
    pad_x0, pad_x1, pad_y0, pad_y1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    padding = (
        pad_x0 + (fw - down_x + 1) // 2,
        pad_x1 + (fw - down_x) // 2,
        pad_y0 + (fh - down_y + 1) // 2,
        pad_y1 + (fh - down_y) // 2,
    )
    return upfirdn2d(x, f, down=(down_x, down_y), padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)
