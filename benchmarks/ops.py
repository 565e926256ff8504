"""Milliseconds per call of the ops in torch_utils/ops, forward and forward+backward.

    python -m benchmarks.ops [--filter TEXT] [--repeats N]

Every case runs on the CPU with 2 threads (the reference paths), and on the GPU as well when one
is present (the CUDA kernels next to the reference). The forward is timed without autograd, the
forward+backward with gradients for every input that takes one. Each number is the median of
`--repeats` calls after two warm-up calls.

To time another op, append a `Case` to CASES: a name with the shape, a function that makes the
inputs on a device, and the variants to compare, each a function of those inputs.
"""

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmarks.timing import time_calls
from torch_utils.ops import bias_act as bias_act_module
from torch_utils.ops import conv2d_gradfix, upfirdn2d
from torch_utils.ops.bias_act import bias_act
from torch_utils.ops.conv2d_resample import conv2d_resample
from torch_utils.ops.fma import fma


@dataclass(frozen=True)
class Case:
    """One op at one shape, timed in several variants."""

    name: str
    make_inputs: Callable[[torch.device], list[torch.Tensor]]  # requires_grad set on inputs that get gradients
    variants: dict[str, Callable[..., torch.Tensor]]  # label -> function of the inputs
    cuda_only: frozenset[str] = field(default_factory=frozenset)  # labels that need a CUDA device


def random_inputs(
    *shapes: tuple[int, ...], grad: tuple[bool, ...] | None = None
) -> Callable[[torch.device], list[torch.Tensor]]:
    """Input maker for normal random tensors of the given shapes; all take gradients unless `grad` says otherwise."""
    grad = grad or (True,) * len(shapes)

    def make(device: torch.device) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        return [torch.randn(shape, generator=generator).to(device).requires_grad_(g) for shape, g in zip(shapes, grad)]

    return make


def bias_act_case(act: str, shape: tuple[int, ...], clamp: float | None = None) -> Case:
    label = f'bias_act {act}{"" if clamp is None else f" clamp {clamp:g}"} {list(shape)}'
    return Case(
        label,
        random_inputs(shape, (shape[1],)),
        {
            'ref': lambda x, b: bias_act(x, b, act=act, clamp=clamp, impl='ref'),
            'cuda': lambda x, b: bias_act(x, b, act=act, clamp=clamp, impl='cuda'),
        },
        cuda_only=frozenset({'cuda'}),
    )


def conv2d_case(
    batch: int, channels: int, resolution: int, kernel: int = 3, stride: int = 1, channels_last: bool = False
) -> Case:
    shapes = ((batch, channels, resolution, resolution), (channels, channels, kernel, kernel))
    stride_name = f' s{stride}' if stride > 1 else ''
    return Case(
        f'conv2d {kernel}x{kernel}{stride_name} {channels}->{channels} [{batch},{channels},{resolution},{resolution}]'
        f'{" channels_last" if channels_last else ""}',
        channels_last_inputs(*shapes) if channels_last else random_inputs(*shapes),
        {
            'gradfix': lambda x, w: conv2d_gradfix.conv2d(x, w, stride=stride, padding=kernel // 2),
            'torch': lambda x, w: F.conv2d(x, w, stride=stride, padding=kernel // 2),
        },
    )


def conv_transpose2d_case(
    batch: int, in_channels: int, out_channels: int, resolution: int, channels_last: bool = False
) -> Case:
    shapes = ((batch, in_channels, resolution, resolution), (in_channels, out_channels, 3, 3))
    return Case(
        f'conv_transpose2d 3x3 s2 {in_channels}->{out_channels} [{batch},{in_channels},{resolution},{resolution}]'
        f'{" channels_last" if channels_last else ""}',
        channels_last_inputs(*shapes) if channels_last else random_inputs(*shapes),
        {
            'gradfix': lambda x, w: conv2d_gradfix.conv_transpose2d(x, w, stride=2),
            'torch': lambda x, w: F.conv_transpose2d(x, w, stride=2),
        },
    )


def channels_last_inputs(*shapes: tuple[int, ...]) -> Callable[[torch.device], list[torch.Tensor]]:
    """Like random_inputs, with every 4-d tensor in channels_last memory format."""
    make = random_inputs(*shapes)

    def make_channels_last(device: torch.device) -> list[torch.Tensor]:
        return [
            t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(t.requires_grad)
            if t.ndim == 4
            else t
            for t in make(device)
        ]

    return make_channels_last


def resample2d_case(op_name: str, shape: tuple[int, ...], channels_last: bool = False) -> Case:
    """upsample2d / downsample2d by 2 with StyleGAN's [1,3,3,1] filter."""
    op = {'upsample2d': upfirdn2d.upsample2d, 'downsample2d': upfirdn2d.downsample2d}[op_name]
    make = channels_last_inputs(shape) if channels_last else random_inputs(shape)
    return Case(
        f'{op_name} [1,3,3,1] {list(shape)}{" channels_last" if channels_last else ""}',
        make,
        {
            'ref': lambda x: op(x, upfirdn2d.setup_filter([1, 3, 3, 1], device=x.device), impl='ref'),
            'cuda': lambda x: op(x, upfirdn2d.setup_filter([1, 3, 3, 1], device=x.device), impl='cuda'),
        },
        cuda_only=frozenset({'cuda'}),
    )


def conv2d_resample_case(
    batch: int, channels: int, resolution: int, up: int = 1, down: int = 1, kernel: int = 3, channels_last: bool = False
) -> Case:
    """A StyleGAN2 synthesis (up) or discriminator (down) convolution with the [1,3,3,1] filter."""
    shapes = ((batch, channels, resolution, resolution), (channels, channels, kernel, kernel))
    make = channels_last_inputs(*shapes) if channels_last else random_inputs(*shapes)
    return Case(
        f'conv2d_resample {kernel}x{kernel} up{up} down{down} {channels}->{channels} '
        f'[{batch},{channels},{resolution},{resolution}]{" channels_last" if channels_last else ""}',
        make,
        {
            'auto': lambda x, w: conv2d_resample(
                x, w, upfirdn2d.setup_filter([1, 3, 3, 1], device=x.device), up=up, down=down, padding=kernel // 2
            ),
        },
    )


CASES: list[Case] = [
    bias_act_case('lrelu', (4, 512, 32, 32)),
    bias_act_case('lrelu', (4, 256, 64, 64), clamp=256),
    bias_act_case('linear', (4, 512)),
    bias_act_case('softplus', (65536, 64)),
    bias_act_case('swish', (4, 256, 32, 32)),
    Case(
        'fma [4,512,32,32] * [4,512,1,1] + [4,512,32,32]',
        random_inputs((4, 512, 32, 32), (4, 512, 1, 1), (4, 512, 32, 32)),
        {'ref': fma},
    ),
    conv2d_case(4, 256, 32),
    conv_transpose2d_case(4, 256, 256, 16),
    # The upsampling convolution of full-head's 256-px superresolution block and a discriminator
    # downsampling convolution, at batch 1 as the CPU trains them: their weight gradients go by stride phase.
    conv_transpose2d_case(1, 256, 128, 128, channels_last=True),
    conv2d_case(1, 128, 256, stride=2, channels_last=True),
    resample2d_case('upsample2d', (4, 256, 64, 64)),
    resample2d_case('upsample2d', (4, 256, 64, 64), channels_last=True),
    resample2d_case('downsample2d', (4, 256, 64, 64)),
    resample2d_case('downsample2d', (4, 256, 64, 64), channels_last=True),
    resample2d_case('upsample2d', (4, 128, 128, 128), channels_last=True),
    resample2d_case('downsample2d', (4, 128, 128, 128), channels_last=True),
    conv2d_resample_case(4, 256, 32, up=2),
    conv2d_resample_case(4, 256, 32, up=2, channels_last=True),
    conv2d_resample_case(4, 256, 64, down=2),
    conv2d_resample_case(4, 256, 64, down=2, channels_last=True),
    conv2d_resample_case(4, 256, 64, down=2, kernel=1, channels_last=True),
]


def time_variant(
    variant: Callable[..., torch.Tensor], inputs: list[torch.Tensor], repeats: int, device: torch.device
) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of one variant."""
    with torch.no_grad():
        output = variant(*inputs)
    upstream = torch.randn_like(output)
    trainable = [t for t in inputs if t.requires_grad]

    def forward():
        with torch.no_grad():
            variant(*inputs)

    def forward_backward():
        torch.autograd.grad(variant(*inputs), trainable, upstream)

    return tuple(
        time_calls(function, repeats, warmup=2, device=device).median * 1e3 for function in (forward, forward_backward)
    )


def run(cases: list[Case], repeats: int) -> list[tuple[str, str, str, float, float]]:
    devices = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])
    rows = []
    for case in cases:
        for device in devices:
            inputs = case.make_inputs(device)
            for label, variant in case.variants.items():
                if label in case.cuda_only and device.type != 'cuda':
                    continue
                try:
                    forward_ms, backward_ms = time_variant(variant, inputs, repeats, device)
                except RuntimeError as error:  # e.g. a CUDA plugin that failed to build
                    print(f'{case.name} {device.type} {label}: {str(error).splitlines()[0]}')
                    forward_ms = backward_ms = math.nan
                rows.append((case.name, device.type, label, forward_ms, backward_ms))
                print(f'{case.name:58s} {device.type:5s} {label:8s} {forward_ms:10.3f} {backward_ms:10.3f}', flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--filter', default='', help='time only the cases whose name contains this text')
    parser.add_argument('--repeats', type=int, default=10, help='timed calls per number (median reported)')
    args = parser.parse_args()
    torch.set_num_threads(2)
    cases = [case for case in CASES if args.filter in case.name]
    if torch.cuda.is_available():
        print(f'GPU: {torch.cuda.get_device_name()}; bias_act plugin built: {bias_act_module._plugin() is not None}')
    print(f'torch {torch.__version__}, CPU threads {torch.get_num_threads()}, median of {args.repeats} calls')
    print(f'{"case":58s} {"dev":5s} {"variant":8s} {"fwd ms":>10s} {"fwd+bwd ms":>10s}')
    run(cases, args.repeats)


if __name__ == '__main__':
    main()
