"""StyleGAN2 building blocks: mapping, synthesis and discriminator networks.

Parameter and buffer names follow the published StyleGAN2 / EG3D networks so that official
weights convert by name. Two departures, both numerically equivalent:

- The modulated convolution computes its demodulation coefficients as
  `rsqrt(s^2 @ (sum_k w^2)^T + 1e-8)`, which never materialises the per-sample weight, and the
  default ("non-fused") path convolves `x * s` with the shared weight. The fused path modulates
  the weight of every sample instead (a grouped convolution on CUDA, one convolution per sample
  on CPU), which saves two passes over the activations; it serves inference.
- fp16 blocks run in fp16 only on CUDA; elsewhere they run in fp32 (in float64 when given float64
  inputs, so that gradients can be checked numerically). On CPU the synthesis and discriminator
  blocks keep activations channels_last (oneDNN's fast layout) and can optionally run their
  convolutions in bfloat16 (`cpu_bf16`, off by default; `no_cpu_bf16()` switches it off for the
  calls inside a block), while modulation, demodulation, the image path, bias, activation and
  noise stay in fp32, except in the fused (inference) form, whose activations stay bf16 between
  layers. Whether bf16 pays off depends on the CPU (benchmarks/generator.py measures it): with
  AMX or AVX512-BF16 it does, elsewhere oneDNN emulates it and it is slower than fp32
  (`cpu_bf16_slowdown_note`).

The discriminator epilogue is split in two (`get_flatten_x` and `forward`) so that other heads
can share the flattened trunk features.
"""

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
import torch

from torch_utils import custom_ops, misc, persistence
from torch_utils.ops import bias_act, conv2d_resample, fma, upfirdn2d

# Per-pixel noise of the synthesis layers: a fresh draw per call, the stored constant, or none.
NOISE_MODES = ('random', 'const', 'none')


def _activation_gain(activation: str) -> float:
    if activation not in bias_act.ACTIVATIONS:
        raise ValueError(f'unknown activation {activation!r}; expected one of {sorted(bias_act.ACTIVATIONS)}')
    return bias_act.ACTIVATIONS[activation].default_gain


_cpu_bf16_disabled = contextvars.ContextVar('networks_stylegan2_cpu_bf16_disabled', default=False)


@contextlib.contextmanager
def no_cpu_bf16() -> Iterator[None]:
    """Networks called inside the block run in full precision although built with `cpu_bf16`.

    The precision is chosen when a layer's forward runs, so the backward of a graph built inside
    the block (R1's double backward included) is in full precision as well.
    """
    token = _cpu_bf16_disabled.set(True)
    try:
        yield
    finally:
        _cpu_bf16_disabled.reset(token)


def use_cpu_bf16(enabled: bool, force_fp32: bool, device: torch.device) -> bool:
    """Whether a block built with `cpu_bf16=enabled` runs its convolutions in bfloat16 in this call."""
    return enabled and not force_fp32 and device.type == 'cpu' and not _cpu_bf16_disabled.get()


# CPU features with native bfloat16 arithmetic in oneDNN's convolutions; without either, bf16 is
# emulated in fp32 units and runs slower than fp32 itself.
CPU_BF16_FEATURES = frozenset({'avx512_bf16', 'amx_bf16'})


def cpu_bf16_slowdown_note() -> str | None:
    """One line saying that `cpu_bf16` would slow this CPU down, or None where it has native bf16."""
    flags = custom_ops.cpu_flags()
    if not flags or flags & CPU_BF16_FEATURES:
        return None
    return (
        'cpu_bf16: this CPU has neither AMX nor AVX512-BF16, so its bfloat16 convolutions are emulated '
        'and slower than fp32; leave --cpu_bf16 off here'
    )


def full_precision(dtype: torch.dtype) -> torch.dtype:
    """The dtype the networks compute in outside fp16 blocks: float64 for float64 inputs (gradcheck), else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` to unit mean square along `dim`: x * rsqrt(mean(x^2) + eps). Any shape -> same shape."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample, per-output-channel demodulation factors of a style-modulated weight.

    weight [O, I, kh, kw], styles [B, I] -> [B, O]
    Equals rsqrt(sum_{i,kh,kw} (weight[o,i] * styles[b,i])^2 + eps) without forming the [B,O,I,kh,kw]
    modulated weight.
    """
    dtype = torch.promote_types(torch.promote_types(weight.dtype, styles.dtype), torch.float32)
    wsq = weight.to(dtype).square().sum(dim=[2, 3])  # [O, I]
    return (styles.to(dtype).square() @ wsq.t() + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,  # Input activations [B, I, H, W].
    weight: torch.Tensor,  # Shared convolution weight [O, I, kh, kw].
    styles: torch.Tensor,  # Per-sample input-channel scales [B, I].
    noise: torch.Tensor | None = None,  # Optional additive noise, broadcastable to the output.
    up: int = 1,  # Integer upsampling factor.
    down: int = 1,  # Integer downsampling factor.
    padding: int = 0,  # Padding of the convolution, in input pixels.
    resample_filter: torch.Tensor | None = None,  # FIR filter for up/down (see upfirdn2d.setup_filter).
    demodulate: bool = True,  # Normalise each output channel of the modulated weight?
    flip_weight: bool = True,  # False = true convolution (faster with up > 1).
    fused_modconv: bool = True,  # One grouped convolution per batch instead of a shared one?
    conv_dtype: torch.dtype | None = None,  # dtype of the convolution itself (e.g. bfloat16), None = x's dtype.
    bias: torch.Tensor | None = None,  # Optional per-output-channel bias [O], added after the noise.
    gain: float = 1,  # Factor on the whole result (noise and bias included).
) -> torch.Tensor:
    """StyleGAN2 modulated convolution: gain * (conv(x, weight * styles), demodulated, + noise + bias).

    x [B, I, H, W], weight [O, I, kh, kw], styles [B, I] -> [B, O, H', W']
    (H' = H for a 3x3 kernel with padding 1 and up = down = 1; 2H with up = 2.)
    Both paths compute the same function. The non-fused one scales the activations instead of the
    weight, so one shared convolution serves the whole batch; the fused one builds the
    [B, O, I, kh, kw] weight and runs a grouped convolution (on CUDA) or one convolution per
    sample (on CPU, where the gain goes into the weight and, without resampling, the bias into
    the convolution, so no pass over the activations is left). With `conv_dtype` only the
    convolution runs in that dtype; the result comes back in x's dtype.
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(weight, [out_channels, in_channels, kh, kw])
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    misc.assert_shape(styles, [batch_size, in_channels])

    # fp16 overflows in the fused weight product for large weights/styles. Demodulation cancels
    # any per-sample style scale and any per-output-channel weight scale, so rescale both first.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)

    dcoefs = demodulation_coefficients(weight, styles) if demodulate else None  # [B, O]
    dtype = x.dtype
    conv_dtype = dtype if conv_dtype is None else conv_dtype

    if fused_modconv and x.device.type == 'cpu':
        return _modulated_conv2d_per_sample(
            x, weight, styles, dcoefs, noise, up, down, padding, resample_filter, flip_weight, conv_dtype, bias, gain
        )

    if not fused_modconv:
        x = (x * styles.to(dtype).reshape(batch_size, -1, 1, 1)).to(conv_dtype)
        x = conv2d_resample.conv2d_resample(
            x=x, w=weight.to(conv_dtype), f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight
        )
        # The factors below are in `dtype`, so the products promote a low-precision result back.
        if demodulate and noise is not None:
            x = fma.fma(x, dcoefs.to(dtype).reshape(batch_size, -1, 1, 1), noise.to(dtype))
        elif demodulate:
            x = x * dcoefs.to(dtype).reshape(batch_size, -1, 1, 1)
        elif noise is not None:
            x = x + noise.to(dtype)
        return bias_act.bias_act(x.to(dtype), None if bias is None else bias.to(dtype), gain=gain)

    w = weight.unsqueeze(0) * styles.to(weight.dtype).reshape(batch_size, 1, -1, 1, 1)  # [B, O, I, kh, kw]
    if demodulate:
        w = w * dcoefs.to(w.dtype).reshape(batch_size, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:]).to(conv_dtype)
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample.conv2d_resample(
        x=x,
        w=w.to(conv_dtype),
        f=resample_filter,
        up=up,
        down=down,
        padding=padding,
        groups=batch_size,
        flip_weight=flip_weight,
    )
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(dtype)
    return bias_act.bias_act(x.to(dtype), None if bias is None else bias.to(dtype), gain=gain)


def _modulated_conv2d_per_sample(
    x, weight, styles, dcoefs, noise, up, down, padding, resample_filter, flip_weight, conv_dtype, bias, gain
) -> torch.Tensor:
    """The fused modulated convolution on CPU: one convolution per sample with its own weight.

    x [B, I, H, W], weight [O, I, kh, kw], styles [B, I], dcoefs [B, O] or None, noise
    broadcastable to [B, O, H', W'] or None, bias [O] or None -> gain * (conv + noise + bias)
    oneDNN's grouped convolution is slow and cannot stay channels_last, so each sample gets its
    own; the gain is folded into the weight (and the noise), and without resampling the bias
    goes into the convolution too.
    """
    dtype = x.dtype
    scale = styles.to(weight.dtype)[:, None, :, None, None] * gain  # [B, 1, I, 1, 1]
    if dcoefs is not None:
        scale = scale * dcoefs.to(weight.dtype)[:, :, None, None, None]  # [B, O, I, 1, 1]
    weights = (weight.unsqueeze(0) * scale).to(conv_dtype)  # [B, O, I, kh, kw]
    plain = up == 1 and down == 1 and flip_weight and isinstance(padding, int)
    conv_bias = (bias * gain).to(conv_dtype) if (bias is not None and plain) else None
    outputs = []
    for i in range(x.shape[0]):
        sample = x[i : i + 1].to(conv_dtype)
        if plain:
            outputs.append(torch.nn.functional.conv2d(sample, weights[i], conv_bias, padding=padding))
        else:
            outputs.append(
                conv2d_resample.conv2d_resample(
                    x=sample,
                    w=weights[i],
                    f=resample_filter,
                    up=up,
                    down=down,
                    padding=padding,
                    flip_weight=flip_weight,
                )
            )
    x = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    x = x.to(dtype)
    # x is a fresh tensor that no backward needs, so the additions can be in place.
    if noise is not None:
        x = x.add_(noise.to(dtype), alpha=gain)
    if bias is not None and not plain:
        x = x.add_((bias.to(dtype) * gain).reshape(1, -1, 1, 1))
    return x


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    """Fully-connected layer with equalized learning rate and a fused bias + activation."""

    def __init__(
        self,
        in_features: int,  # Number of input features.
        out_features: int,  # Number of output features.
        bias: bool = True,  # Add a learned bias?
        activation: str = 'linear',  # Activation after the bias (see bias_act).
        lr_multiplier: float = 1,  # Learning-rate multiplier of weight and bias.
        bias_init=0,  # Initial bias: a scalar or one value per output feature.
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        # Stored weight is N(0, 1) / lr_mul and scaled by lr_mul / sqrt(in) at run time, so the
        # optimizer's step in stored units is lr_mul times smaller in effective units.
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        bias_init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features]).copy()
        self.bias = torch.nn.Parameter(torch.from_numpy(bias_init)) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] -> [..., out_features]"""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == 'linear':
            return torch.nn.functional.linear(x, w, b)
        x = torch.nn.functional.linear(x, w)
        return bias_act.bias_act(x, b, dim=x.ndim - 1, act=self.activation)

    def extra_repr(self) -> str:
        return f'in_features={self.in_features:d}, out_features={self.out_features:d}, activation={self.activation:s}'


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    """2-D convolution with equalized learning rate, optional FIR up/downsampling, bias, activation and clamp."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        kernel_size: int,  # Width and height of the kernel.
        bias: bool = True,  # Add a learned bias?
        activation: str = 'linear',  # Activation after the bias (see bias_act).
        up: int = 1,  # Integer upsampling factor.
        down: int = 1,  # Integer downsampling factor.
        resample_filter=(1, 3, 3, 1),  # 1-D taps of the FIR filter used when resampling.
        conv_clamp: float | None = None,  # Clamp the output to +-conv_clamp (None = no clamp).
        channels_last: bool = False,  # Store the weight channels_last?
        trainable: bool = True,  # False: weight and bias become buffers (frozen layers).
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))
        self.act_gain = _activation_gain(activation)

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer('weight', weight)
            self.register_buffer('bias', bias)

    def forward(self, x: torch.Tensor, gain: float = 1, conv_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x [B, in_channels, H, W] -> [B, out_channels, H * up / down, W * up / down]

        conv_dtype: dtype of the convolution itself (e.g. bfloat16; its resampling filter runs in it
        too), None = x's dtype; the result comes back in x's dtype before the bias and activation.
        """
        dtype = x.dtype
        conv_dtype = dtype if conv_dtype is None else conv_dtype
        w = self.weight * self.weight_gain
        b = self.bias.to(dtype) if self.bias is not None else None
        flip_weight = self.up == 1  # The transposed convolution used for up > 1 flips natively.
        x = conv2d_resample.conv2d_resample(
            x=x.to(conv_dtype),
            w=w.to(conv_dtype),
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=flip_weight,
        ).to(dtype)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (
            f'in_channels={self.in_channels:d}, out_channels={self.out_channels:d}, '
            f'activation={self.activation:s}, up={self.up}, down={self.down}'
        )


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    """StyleGAN2 mapping network: (z, c) -> ws, with a tracked average w for truncation."""

    def __init__(
        self,
        z_dim: int,  # Latent dimensionality, 0 = no latent.
        c_dim: int,  # Conditioning dimensionality, 0 = no conditioning.
        w_dim: int,  # Intermediate latent (w) dimensionality.
        num_ws: int | None,  # Number of ws to broadcast to, None = return a single w [B, w_dim].
        num_layers: int = 8,  # Number of mapping layers.
        embed_features: int | None = None,  # Width of the conditioning embedding, None = w_dim.
        layer_features: int | None = None,  # Width of the hidden layers, None = w_dim.
        activation: str = 'lrelu',  # Activation of the mapping layers.
        lr_multiplier: float = 0.01,  # Learning-rate multiplier of the mapping layers.
        w_avg_beta: float | None = 0.998,  # Decay of the tracked w average, None = do not track.
    ):
        super().__init__()
        if z_dim == 0 and c_dim == 0:
            raise ValueError('MappingNetwork needs z_dim > 0 or c_dim > 0')
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features_list = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features_list[idx], features_list[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f'fc{idx}', layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """z [B, z_dim], c [B, c_dim] -> ws [B, num_ws, w_dim] (or [B, w_dim] when num_ws is None).

        update_emas: move `w_avg` towards this batch's mean w (before truncation).
        truncation_psi, truncation_cutoff: ws[:, :cutoff] <- lerp(w_avg, ws, psi); cutoff None = all.
        """
        x = None
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim])
            x = normalize_2nd_moment(z.to(full_precision(z.dtype)))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            y = normalize_2nd_moment(self.embed(c.to(full_precision(c.dtype))))
            x = torch.cat([x, y], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)

        if update_emas and self.num_ws is not None and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            if self.num_ws is None or self.w_avg_beta is None:
                raise ValueError('truncation needs a tracked w_avg (num_ws and w_avg_beta must not be None)')
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f'z_dim={self.z_dim:d}, c_dim={self.c_dim:d}, w_dim={self.w_dim:d}, num_ws={self.num_ws}'


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution of the synthesis network, with per-pixel noise, bias and activation."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        w_dim: int,  # Intermediate latent (w) dimensionality.
        resolution: int,  # Output resolution.
        kernel_size: int = 3,  # Convolution kernel size.
        up: int = 1,  # Integer upsampling factor.
        use_noise: bool = True,  # Add per-pixel noise?
        activation: str = 'lrelu',  # Activation after the bias.
        resample_filter=(1, 3, 3, 1),  # 1-D taps of the FIR filter used when upsampling.
        conv_clamp: float | None = None,  # Clamp the output to +-conv_clamp (None = no clamp).
        channels_last: bool = False,  # Store the weight channels_last?
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = _activation_gain(activation)

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = 'random',
        fused_modconv: bool = True,
        gain: float = 1,
        conv_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """x [B, in_channels, res / up, res / up], w [B, w_dim] -> [B, out_channels, res, res]

        noise_mode: 'random' (fresh N(0, 1) per call), 'const' (the stored `noise_const`) or 'none'.
        conv_dtype: see modulated_conv2d.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f'noise_mode must be one of {", ".join(NOISE_MODES)}, got {noise_mode!r}')
        in_resolution = self.resolution // self.up
        misc.assert_shape(x, [None, self.in_channels, in_resolution, in_resolution])
        styles = self.affine(w.to(full_precision(w.dtype)))

        noise = None
        if self.use_noise and noise_mode == 'random':
            noise = (
                torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
            )
        if self.use_noise and noise_mode == 'const':
            noise = self.noise_const * self.noise_strength

        flip_weight = self.up == 1  # The transposed convolution used for up > 1 flips natively.
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        # On CPU the fused form takes the bias and, for a positively homogeneous activation
        # (act(g * y) = g * act(y), g > 0), the gain, which saves passes over the activations.
        fold = (
            fused_modconv and x.device.type == 'cpu' and self.activation in ('linear', 'relu', 'lrelu') and act_gain > 0
        )
        x = modulated_conv2d(
            x=x,
            weight=self.weight,
            styles=styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=flip_weight,
            fused_modconv=fused_modconv,
            conv_dtype=conv_dtype,
            bias=self.bias if fold else None,
            gain=act_gain if fold else 1,
        )
        if fold:
            return bias_act.bias_act(x, None, act=self.activation, gain=1, clamp=act_clamp, overwrite_x=True)
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (
            f'in_channels={self.in_channels:d}, out_channels={self.out_channels:d}, w_dim={self.w_dim:d}, '
            f'resolution={self.resolution:d}, up={self.up}, activation={self.activation:s}'
        )


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 convolution without demodulation that turns features into image channels."""

    def __init__(
        self,
        in_channels: int,  # Number of input feature channels.
        out_channels: int,  # Number of image channels.
        w_dim: int,  # Intermediate latent (w) dimensionality.
        kernel_size: int = 1,  # Convolution kernel size.
        conv_clamp: float | None = None,  # Clamp the output to +-conv_clamp (None = no clamp).
        channels_last: bool = False,  # Store the weight channels_last?
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        # Without demodulation nothing normalises the weight, so the equalized-LR gain goes on the styles.
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True, conv_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """x [B, in_channels, H, W], w [B, w_dim] -> [B, out_channels, H, W]  (conv_dtype: see modulated_conv2d)"""
        styles = self.affine(w.to(full_precision(w.dtype))) * self.weight_gain
        x = modulated_conv2d(
            x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv, conv_dtype=conv_dtype
        )
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels:d}, out_channels={self.out_channels:d}, w_dim={self.w_dim:d}'


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (upsample +) two modulated convs, and a ToRGB.

    The block consumes `num_conv + num_torgb` ws. With `up = 1` the block keeps the resolution of
    its input (used by the super-resolution heads).
    """

    def __init__(
        self,
        in_channels: int,  # Number of input channels, 0 = first block (learned constant input).
        out_channels: int,  # Number of output channels.
        w_dim: int,  # Intermediate latent (w) dimensionality.
        resolution: int,  # Output resolution of this block.
        img_channels: int,  # Number of output image channels.
        is_last: bool,  # Last block of the network (always has a ToRGB)?
        architecture: str = 'skip',  # 'orig', 'skip' (sum of upsampled ToRGB outputs) or 'resnet'.
        resample_filter=(1, 3, 3, 1),  # 1-D taps of the FIR filter used for upsampling.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-conv_clamp (None = no clamp).
        use_fp16: bool = False,  # Run in fp16 (on CUDA only)?
        fp16_channels_last: bool = False,  # Use channels_last with fp16 on CUDA?
        fused_modconv_default=True,  # fused_modconv when forward() gets None: True, False or 'inference_only'.
        up: int = 2,  # Upsampling factor of the input: 2, or 1 to keep the resolution.
        use_noise: bool = True,  # Add per-pixel noise in the synthesis layers?
        activation: str = 'lrelu',  # Activation of the synthesis layers.
        cpu_bf16: bool = False,  # On CPU, run the modulated convolutions in bfloat16?
    ):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        if up not in (1, 2):
            raise ValueError(f'up must be 1 or 2, got {up}')
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.up = up
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.fused_modconv_default = fused_modconv_default
        self.cpu_bf16 = cpu_bf16
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0
        layer_kwargs = dict(
            use_noise=use_noise,
            activation=activation,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
            channels_last=self.channels_last,
        )

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=up, **layer_kwargs
            )
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == 'skip':
            self.torgb = ToRGBLayer(
                out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp, channels_last=self.channels_last
            )
            self.num_torgb += 1
        if in_channels != 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(
                in_channels,
                out_channels,
                kernel_size=1,
                bias=False,
                up=up,
                resample_filter=resample_filter,
                channels_last=self.channels_last,
            )

    def _resolve_fused_modconv(self, fused_modconv) -> bool:
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == 'inference_only':
            # Modulating the weight saves two passes over the activations, but on CUDA the backward
            # of the grouped convolution is slower, so the fused form serves inference only.
            fused_modconv = not self.training
        return bool(fused_modconv)

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        force_fp32: bool = False,
        fused_modconv=None,
        update_emas: bool = False,
        noise_mode: str = 'random',
    ):
        """x [B, in_channels, res / up, res / up] (None for the first block), img [B, img_channels, res / up, res / up]
        or None, ws [B, num_conv + num_torgb, w_dim]
        -> x [B, out_channels, res, res], img [B, img_channels, res, res] (fp32; None if this block has no ToRGB
        and got no img).

        force_fp32: ignore use_fp16 and cpu_bf16. fused_modconv: see modulated_conv2d; None = the
        block's default. update_emas: accepted for a uniform call signature; nothing is tracked here.
        """
        del update_emas
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        device = ws.device
        on_cuda = device.type == 'cuda'
        fp = full_precision(ws.dtype)
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and on_cuda) else fp
        if on_cuda:
            memory_format = torch.channels_last if (self.channels_last and not force_fp32) else torch.contiguous_format
        else:
            memory_format = torch.channels_last  # oneDNN's convolutions are fastest in this layout on CPU.
        use_bf16 = use_cpu_bf16(self.cpu_bf16, force_fp32, device)
        conv_dtype = torch.bfloat16 if use_bf16 else None
        fused_modconv = self._resolve_fused_modconv(fused_modconv)
        if use_bf16 and fused_modconv:
            # The fused CPU convolution returns bf16 with its bias included, so the activations
            # stay bf16 between layers rather than round-tripping through fp32.
            dtype = torch.bfloat16
        in_resolution = self.resolution // self.up
        layer_args = dict(fused_modconv=fused_modconv, conv_dtype=conv_dtype)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.contiguous(memory_format=memory_format)
        else:
            misc.assert_shape(x, [None, self.in_channels, in_resolution, in_resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, **layer_args)
        elif self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, **layer_args)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, gain=np.sqrt(0.5), **layer_args)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, **layer_args)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, **layer_args)

        rgb = None
        if self.is_last or self.architecture == 'skip':
            rgb = self.torgb(x, next(w_iter), **layer_args)

        # The image path stays in full precision so that rounding does not accumulate over the blocks.
        # On the CPU it stays channels_last like x: the upsampling filter runs about twice as fast
        # in that layout, and adding ToRGB's output needs no layout copy.
        img_format = torch.contiguous_format if on_cuda else torch.channels_last
        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, in_resolution, in_resolution])
            img = img.to(dtype=fp, memory_format=img_format)
            if self.up > 1:
                img = upfirdn2d.upsample2d(img, self.resample_filter, up=self.up)
        if rgb is not None:
            rgb = rgb.to(dtype=fp, memory_format=img_format)
            img = img + rgb if img is not None else rgb

        assert x.dtype == dtype
        assert img is None or img.dtype == fp
        return x, img

    def extra_repr(self) -> str:
        return f'resolution={self.resolution:d}, architecture={self.architecture:s}'


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    """StyleGAN2 synthesis network: ws -> image, one SynthesisBlock per resolution from 4 upwards."""

    def __init__(
        self,
        w_dim: int,  # Intermediate latent (w) dimensionality.
        img_resolution: int,  # Output image resolution (a power of two >= 4).
        img_channels: int,  # Number of output image channels.
        channel_base: int = 32768,  # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max: int = 512,  # Maximum number of channels in any block.
        num_fp16_res: int = 4,  # Run the highest `num_fp16_res` resolutions in fp16 (CUDA only).
        architecture: str = 'skip',  # Block architecture: 'orig', 'skip' or 'resnet'.
        resample_filter=(1, 3, 3, 1),  # 1-D taps of the FIR filter used for upsampling.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-conv_clamp (None = no clamp).
        fp16_channels_last: bool = False,  # Use channels_last with fp16 on CUDA?
        fused_modconv_default=True,  # See SynthesisBlock: True, False or 'inference_only'.
        use_noise: bool = True,  # Add per-pixel noise in the synthesis layers?
        cpu_bf16: bool = False,  # On CPU, run the modulated convolutions in bfloat16?
    ):
        img_resolution_log2 = int(np.log2(img_resolution))
        if img_resolution < 4 or img_resolution != 2**img_resolution_log2:
            raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = img_resolution_log2
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2**i for i in range(2, img_resolution_log2 + 1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(
                in_channels,
                channels_dict[res],
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=is_last,
                architecture=architecture,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                use_fp16=(res >= fp16_resolution),
                fp16_channels_last=fp16_channels_last,
                fused_modconv_default=fused_modconv_default,
                use_noise=use_noise,
                cpu_bf16=cpu_bf16,
            )
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f'b{res}', block)

    def forward(
        self,
        ws: torch.Tensor,
        force_fp32: bool = False,
        fused_modconv=None,
        update_emas: bool = False,
        noise_mode: str = 'random',
    ) -> torch.Tensor:
        """ws [B, num_ws, w_dim] -> img [B, img_channels, img_resolution, img_resolution] (fp32)

        Consecutive blocks share one w: each block's ToRGB uses the w of the next block's first conv.
        """
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(full_precision(ws.dtype))
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f'b{res}')
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(
                x,
                img,
                block_ws,
                force_fp32=force_fp32,
                fused_modconv=fused_modconv,
                update_emas=update_emas,
                noise_mode=noise_mode,
            )
        return img

    def extra_repr(self) -> str:
        return (
            f'w_dim={self.w_dim:d}, num_ws={self.num_ws:d}, img_resolution={self.img_resolution:d}, '
            f'img_channels={self.img_channels:d}, num_fp16_res={self.num_fp16_res:d}'
        )


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    """One resolution of the StyleGAN2 discriminator: (fromRGB +) conv, conv with 2x downsampling, skip."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels, 0 = first block (reads the image).
        tmp_channels: int,  # Number of intermediate channels.
        out_channels: int,  # Number of output channels.
        resolution: int,  # Input resolution of this block.
        img_channels: int,  # Number of input image channels.
        first_layer_idx: int,  # Index of this block's first layer, for freeze_layers.
        architecture: str = 'resnet',  # 'orig', 'skip' or 'resnet'.
        activation: str = 'lrelu',  # Activation of the conv layers.
        resample_filter=(1, 3, 3, 1),  # 1-D taps of the FIR filter used for downsampling.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-conv_clamp (None = no clamp).
        use_fp16: bool = False,  # Run in fp16 (on CUDA only)?
        fp16_channels_last: bool = False,  # Use channels_last with fp16 on CUDA?
        freeze_layers: int = 0,  # Layers with index < freeze_layers are frozen (buffers, not parameters).
        cpu_bf16: bool = False,  # On CPU, run the convolutions in bfloat16?
    ):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.cpu_bf16 = cpu_bf16
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(list(resample_filter)))
        self.num_layers = 0

        def trainable_next() -> bool:
            trainable = (first_layer_idx + self.num_layers) >= freeze_layers
            self.num_layers += 1
            return trainable

        common = dict(activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, trainable=trainable_next(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, trainable=trainable_next(), **common)
        self.conv1 = Conv2dLayer(
            tmp_channels,
            out_channels,
            kernel_size=3,
            down=2,
            trainable=trainable_next(),
            resample_filter=resample_filter,
            **common,
        )
        if architecture == 'resnet':
            self.skip = Conv2dLayer(
                tmp_channels,
                out_channels,
                kernel_size=1,
                bias=False,
                down=2,
                trainable=trainable_next(),
                resample_filter=resample_filter,
                channels_last=self.channels_last,
            )

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, force_fp32: bool = False):
        """x [B, in_channels, res, res] (None for the first block), img [B, img_channels, res, res] or None
        -> x [B, out_channels, res / 2, res / 2], img [B, img_channels, res / 2, res / 2] ('skip') or None.
        """
        ref = x if x is not None else img
        on_cuda = ref.device.type == 'cuda'
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and on_cuda) else full_precision(ref.dtype)
        if on_cuda:
            memory_format = torch.channels_last if (self.channels_last and not force_fp32) else torch.contiguous_format
        else:
            memory_format = torch.channels_last  # oneDNN's convolutions are fastest in this layout on CPU.
        use_bf16 = use_cpu_bf16(self.cpu_bf16, force_fp32, ref.device)
        conv_args = dict(conv_dtype=torch.bfloat16 if use_bf16 else None)

        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0 or self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img, **conv_args)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == 'skip' else None

        if self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5), **conv_args)
            x = self.conv0(x, **conv_args)
            x = self.conv1(x, gain=np.sqrt(0.5), **conv_args)
            x = y + x
        else:
            x = self.conv0(x, **conv_args)
            x = self.conv1(x, **conv_args)

        assert x.dtype == dtype
        return x, img

    def extra_repr(self) -> str:
        return f'resolution={self.resolution:d}, architecture={self.architecture:s}'


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    """Appends the average standard deviation over groups of samples as extra feature maps."""

    def __init__(
        self,
        group_size: int | None,  # Samples per group (capped at the batch size), None = whole batch.
        num_channels: int = 1,  # Number of appended channels (the features are split into as many groups).
    ):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C + num_channels, H, W]

        Group g holds samples g, g + B/G, g + 2B/G, ... (G = group size); the appended channel f of
        every member is the mean over that channel slice and all pixels of the per-position standard
        deviation across the group (biased, + 1e-8 inside the sqrt).
        """
        n, c, h, w = x.shape
        with misc.suppress_tracer_warnings():  # The group size is a constant while tracing.
            g = min(self.group_size, n) if self.group_size is not None else n
        f = self.num_channels
        if n % g != 0:
            raise ValueError(f'MinibatchStdLayer: batch size {n} is not a multiple of the group size {g}')
        if c % f != 0:
            raise ValueError(f'MinibatchStdLayer: {c} channels do not split into {f} groups')
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, B/G, F, C/F, H, W]
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)  # Variance over the group.
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])  # [B/G, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [B, F, H, W]
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f'group_size={self.group_size}, num_channels={self.num_channels:d}'


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    """Last discriminator stage at 4x4, split into feature flattening and the conditional logit.

    `get_flatten_x` (minibatch-std, 3x3 conv, flatten) and `forward` (FC, output FC, projection
    onto the condition embedding) compose to the StyleGAN2 epilogue.
    """

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        cmap_dim: int,  # Dimensionality of the condition embedding, 0 = unconditional.
        resolution: int,  # Spatial resolution of the input (4).
        img_channels: int,  # Number of image channels ('skip' architecture only).
        architecture: str = 'resnet',  # 'orig', 'skip' or 'resnet'.
        mbstd_group_size: int | None = 4,  # Group size of the minibatch-std layer, None = whole batch.
        mbstd_num_channels: int = 1,  # Channels appended by the minibatch-std layer, 0 = no layer.
        activation: str = 'lrelu',  # Activation of the conv and the first FC.
        conv_clamp: float | None = None,  # Clamp the conv output to +-conv_clamp (None = no clamp).
    ):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture

        if architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp
        )
        self.fc = FullyConnectedLayer(in_channels * (resolution**2), in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def get_flatten_x(self, x: torch.Tensor, img: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, res, res], img [B, img_channels, res, res] or None -> flat [B, C * res * res] (fp32)

        img ('skip' architecture): when given, its fromRGB is added to x first; Discriminator.trunk
        has already done so and passes None.
        """
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        x = x.to(dtype=full_precision(x.dtype), memory_format=torch.contiguous_format)
        if img is not None:
            if self.architecture != 'skip':
                raise ValueError("DiscriminatorEpilogue: img is only used with the 'skip' architecture")
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            x = x + self.fromrgb(img.to(dtype=x.dtype, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        return x.flatten(1)

    def forward(self, flat: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        """flat [B, C * res * res], cmap [B, cmap_dim] (None when cmap_dim = 0) -> logits [B, 1]"""
        misc.assert_shape(flat, [None, self.in_channels * self.resolution**2])
        x = self.fc(flat)
        x = self.out(x)
        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f'resolution={self.resolution:d}, architecture={self.architecture:s}'


# ----------------------------------------------------------------------------------------------


@persistence.persistent_class
class Discriminator(torch.nn.Module):
    """StyleGAN2 conditional discriminator: blocks from img_resolution down to 8, then the 4x4 epilogue."""

    def __init__(
        self,
        c_dim: int,  # Conditioning dimensionality, 0 = unconditional.
        img_resolution: int,  # Input image resolution (a power of two >= 8).
        img_channels: int,  # Number of input image channels.
        architecture: str = 'resnet',  # 'orig', 'skip' or 'resnet'.
        channel_base: int = 32768,  # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max: int = 512,  # Maximum number of channels in any block.
        num_fp16_res: int = 4,  # Run the highest `num_fp16_res` resolutions in fp16 (CUDA only).
        conv_clamp: float | None = None,  # Clamp conv outputs to +-conv_clamp (None = no clamp).
        cmap_dim: int | None = None,  # Condition embedding dimensionality, None = channels at 4x4.
        block_kwargs: dict | None = None,  # Extra DiscriminatorBlock arguments (freeze_layers, ...).
        mapping_kwargs: dict | None = None,  # Extra MappingNetwork arguments for the condition embedding.
        epilogue_kwargs: dict | None = None,  # Extra DiscriminatorEpilogue arguments (mbstd_group_size, ...).
    ):
        img_resolution_log2 = int(np.log2(img_resolution))
        if img_resolution < 8 or img_resolution != 2**img_resolution_log2:
            raise ValueError(f'img_resolution must be a power of two >= 8, got {img_resolution}')
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = img_resolution_log2
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(img_resolution_log2, 2, -1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels_dict[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim

        common_kwargs = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res] if res < img_resolution else 0
            block = DiscriminatorBlock(
                in_channels,
                channels_dict[res],
                channels_dict[res // 2],
                resolution=res,
                first_layer_idx=cur_layer_idx,
                use_fp16=(res >= fp16_resolution),
                **(block_kwargs or {}),
                **common_kwargs,
            )
            setattr(self, f'b{res}', block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, **(mapping_kwargs or {})
            )
        self.b4 = DiscriminatorEpilogue(
            channels_dict[4], cmap_dim=cmap_dim, resolution=4, **(epilogue_kwargs or {}), **common_kwargs
        )

    def trunk(self, img: torch.Tensor, force_fp32: bool = False) -> torch.Tensor:
        """img [B, img_channels, R, R] -> x [B, C4, 4, 4] (fp32), the input of `b4.get_flatten_x`.

        With the 'skip' architecture the epilogue's fromRGB of the 4x4 image is already added here.
        """
        misc.assert_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution])
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f'b{res}')(x, img, force_fp32=force_fp32)
        x = x.to(dtype=full_precision(x.dtype), memory_format=torch.contiguous_format)
        if img is not None:
            x = x + self.b4.fromrgb(img.to(dtype=x.dtype, memory_format=torch.contiguous_format))
        return x

    def forward(
        self, img: torch.Tensor, c: torch.Tensor | None, update_emas: bool = False, force_fp32: bool = False
    ) -> torch.Tensor:
        """img [B, img_channels, R, R], c [B, c_dim] -> logits [B, 1]

        update_emas: accepted for a uniform call signature; the discriminator tracks nothing.
        """
        del update_emas
        x = self.trunk(img, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(self.b4.get_flatten_x(x), cmap)

    def extra_repr(self) -> str:
        return f'c_dim={self.c_dim:d}, img_resolution={self.img_resolution:d}, img_channels={self.img_channels:d}'
