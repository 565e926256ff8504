"""2-D convolution with integrated FIR upsampling or downsampling, as in StyleGAN2's layers.

`conv2d_resample` is defined by this composition (per axis, p0/p1 the padding below):
  1. up > 1:  upfirdn2d(x, f, up=up, padding=p, gain=up**2)  (zero insertion, pad, FIR filter)
     up == 1: zero-pad x by p (negative crops)
  2. a valid convolution with w (correlation when flip_weight=True, true convolution otherwise)
  3. down > 1: a valid FIR filter with f, keeping every down-th sample
where p is the caller's padding plus the centering terms of `upsample2d` / `downsample2d`, so that a
3x3 kernel with padding=1 gives 2H x 2W with up=2 and H/2 x W/2 with down=2. It computes the same
thing faster where it can: a transposed convolution with stride `up` instead of convolving the
zero-inserted image, a strided convolution instead of computing samples that step 3 discards,
and 1x1 kernels applied at the lower of the two resolutions.
"""

from collections.abc import Sequence

import torch

from torch_utils.ops import conv2d_gradfix, upfirdn2d


def _conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    transpose: bool = False,
    flip_weight: bool = True,
) -> torch.Tensor:
    """conv2d (w [Cout, Cin/groups, kh, kw]) or conv_transpose2d (w [Cin, Cout/groups, kh, kw]).

    flip_weight=True correlates with w (torch's convention), False convolves.
    x [N, Cin, H, W] -> [N, Cout, H', W']
    """
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if transpose:
        return conv2d_gradfix.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return conv2d_gradfix.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _transpose_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """Conv weight [Cout, Cin/groups, kh, kw] -> the conv_transpose2d weight [Cin, Cout/groups, kh, kw]."""
    out_channels, in_per_group, kh, kw = w.shape
    w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
    return w.reshape(groups * in_per_group, out_channels // groups, kh, kw)


def _check_arguments(x: torch.Tensor, w: torch.Tensor, up: int, down: int, groups: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f'conv2d_resample: x must have shape [N, Cin, H, W], got {getattr(x, "shape", type(x))}')
    if not isinstance(w, torch.Tensor) or w.ndim != 4:
        raise ValueError(
            f'conv2d_resample: w must have shape [Cout, Cin/groups, kh, kw], got {getattr(w, "shape", type(w))}'
        )
    if not isinstance(groups, int) or groups < 1 or w.shape[0] % groups != 0 or w.shape[1] * groups != x.shape[1]:
        raise ValueError(
            f'conv2d_resample: w of shape {list(w.shape)} with groups={groups} does not fit x with '
            f'{x.shape[1]} channels; w needs shape [Cout, Cin/groups, kh, kw] with Cout divisible '
            'by groups'
        )
    for name, value in (('up', up), ('down', down)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'conv2d_resample: {name}={value!r} is invalid; pass an int >= 1')


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> torch.Tensor:
    """Convolve with w, with FIR upsampling by `up` before or FIR downsampling by `down` after.

    x [N, Cin, H, W], w [Cout, Cin/groups, kh, kw], f [fh, fw], separable [ft] or None (identity),
    see upfirdn2d.setup_filter
    -> [N, Cout, (H * up + py0 + py1 - kh + 1) // down, (W * up + px0 + px1 - kw + 1) // down]
    padding: int, (px, py) or (px0, px1, py0, py1), on top of the filter's centering.
    flip_weight: True correlates with w (torch.nn.functional.conv2d), False convolves (flips w).
    flip_filter: passed to upfirdn2d.
    """
    _check_arguments(x, w, up, down, groups)
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = upfirdn2d._filter_size(f)
    px0, px1, py0, py1 = upfirdn2d._parse_padding(padding)

    out_h = (x.shape[2] * up + py0 + py1 - kh + 1) // down
    out_w = (x.shape[3] * up + px0 + px1 - kw + 1) // down
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f'conv2d_resample: a {kh}x{kw} kernel on a {x.shape[2]}x{x.shape[3]} input with up={up}, '
            f'down={down}, padding={(px0, px1, py0, py1)} leaves no output; increase the padding'
        )

    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    pad = (px0, px1, py0, py1)

    # A 1x1 convolution commutes with the per-channel resampling: run it at the lower resolution.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=pad, gain=up**2, flip_filter=flip_filter)

    # The FIR filter and the convolution commute, so filter first and let the stride skip the
    # samples that the decimation would discard.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Convolving the zero-inserted, padded image equals a transposed convolution with stride `up`
    # (the zero insertion and a full convolution in one) cropped by kernel - 1 samples at the start
    # and kernel - up at the end; the FIR filter comes after and takes the remaining padding.
    if up > 1 and down == 1:
        start_x, end_x = px0 - (kw - 1), px1 - (kw - up)
        start_y, end_y = py0 - (kh - 1), py1 - (kh - up)
        crop_x = max(0, min(-start_x, -end_x))  # symmetric crops are cheaper inside the transposed conv
        crop_y = max(0, min(-start_y, -end_y))
        # conv_transpose2d convolves; correlating with w means convolving with w flipped.
        x = _conv2d(
            x,
            _transpose_weight(w, groups),
            stride=up,
            padding=(crop_y, crop_x),
            groups=groups,
            transpose=True,
            flip_weight=not flip_weight,
        )
        return upfirdn2d.upfirdn2d(
            x,
            f,
            padding=(start_x + crop_x, end_x + crop_x, start_y + crop_y, end_y + crop_y),
            gain=up**2,
            flip_filter=flip_filter,
        )

    if up == 1 and down == 1 and px0 == px1 >= 0 and py0 == py1 >= 0:
        return _conv2d(x, w, padding=(py0, px0), groups=groups, flip_weight=flip_weight)

    # Both up and down, or uneven/negative padding without resampling: the defining composition.
    x = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=pad, gain=up**2, flip_filter=flip_filter)
    x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x
