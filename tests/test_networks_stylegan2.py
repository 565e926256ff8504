"""Tests for training/networks/stylegan2.py against direct formulas and invariants."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_resample, upfirdn2d
from training.networks import stylegan2 as net


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * np.sqrt(2)


class _StyleGAN2(torch.nn.Module):
    """The plain StyleGAN2 generator, as these tests exercise its two halves: mapping then synthesis."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict,
        **synthesis_kwargs,
    ):
        super().__init__()
        self.synthesis = net.SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = net.MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor, **synthesis_kwargs) -> torch.Tensor:
        """z [B, z_dim], c [B, c_dim] -> image [B, img_channels, img_resolution, img_resolution]"""
        return self.synthesis(self.mapping(z, c), **synthesis_kwargs)


def _small_generator(**kwargs) -> _StyleGAN2:
    args = dict(
        z_dim=16,
        c_dim=3,
        w_dim=16,
        img_resolution=16,
        img_channels=3,
        channel_base=256,
        channel_max=32,
        num_fp16_res=0,
        mapping_kwargs=dict(num_layers=2),
    )
    args.update(kwargs)
    return _StyleGAN2(**args)


def _small_discriminator(**kwargs) -> net.Discriminator:
    args = dict(
        c_dim=5,
        img_resolution=16,
        img_channels=3,
        channel_base=256,
        channel_max=64,
        num_fp16_res=0,
        mapping_kwargs=dict(num_layers=2),
    )
    args.update(kwargs)
    return net.Discriminator(**args)


def _set_noise_strength(module: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(value)


def _assert_all_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f'{name} got no gradient'
        assert torch.isfinite(p.grad).all(), f'{name} has a non-finite gradient'
        assert p.grad.abs().sum() > 0, f'{name} has an all-zero gradient'


# ----------------------------------------------------------------------------------------------
# modulated_conv2d


def _direct_modconv(x, weight, styles, noise, up, down, padding, f, demodulate, flip_weight):
    """Per-sample explicit modulated (and demodulated) weight, one convolution per sample."""
    outs = []
    for b in range(x.shape[0]):
        wb = weight * styles[b].reshape(1, -1, 1, 1)
        if demodulate:
            wb = wb / torch.sqrt((wb**2).sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        xb = x[b : b + 1]
        if up == 1 and down == 1 and flip_weight:
            yb = F.conv2d(xb, wb, padding=padding)
        else:
            yb = conv2d_resample.conv2d_resample(
                xb, wb, f=f, up=up, down=down, padding=padding, flip_weight=flip_weight
            )
        outs.append(yb)
    y = torch.cat(outs)
    if noise is not None:
        y = y + noise
    return y


@pytest.mark.parametrize('demodulate', [True, False])
@pytest.mark.parametrize('up,down', [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize('with_noise', [False, True])
@pytest.mark.parametrize('bias_and_gain', [False, True])
def test_modulated_conv2d_matches_direct_formula(demodulate, up, down, with_noise, bias_and_gain):
    torch.manual_seed(0)
    b, cin, cout, h = 3, 5, 4, 8
    x = torch.randn(b, cin, h, h, dtype=torch.float64)
    weight = torch.randn(cout, cin, 3, 3, dtype=torch.float64)
    styles = torch.randn(b, cin, dtype=torch.float64) + 1
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).to(torch.float64)
    out_res = h * up // down
    noise = torch.randn(b, 1, out_res, out_res, dtype=torch.float64) if with_noise else None
    flip_weight = up == 1
    kwargs = dict(
        noise=noise, up=up, down=down, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=flip_weight
    )
    y_ref = _direct_modconv(x, weight, styles, noise, up, down, 1, f, demodulate, flip_weight)
    if bias_and_gain:
        bias, gain = torch.randn(cout, dtype=torch.float64), 1.7
        kwargs.update(bias=bias, gain=gain)
        y_ref = gain * (y_ref + bias.reshape(1, -1, 1, 1))
    y_nonfused = net.modulated_conv2d(x, weight, styles, fused_modconv=False, **kwargs)
    y_fused = net.modulated_conv2d(x, weight, styles, fused_modconv=True, **kwargs)
    assert y_nonfused.shape == (b, cout, out_res, out_res)
    torch.testing.assert_close(y_nonfused, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y_fused, y_ref, rtol=1e-10, atol=1e-10)


def test_demodulated_output_channels_have_unit_weight_norm():
    # A delta input at the centre reproduces the effective kernel: its squared sum must be 1.
    torch.manual_seed(1)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    styles = torch.rand(2, 4, dtype=torch.float64) * 3
    eff = []
    for i in range(4):
        x = torch.zeros(2, 4, 5, 5, dtype=torch.float64)
        x[:, i, 2, 2] = 1
        eff.append(net.modulated_conv2d(x, weight, styles, padding=1, fused_modconv=False)[:, :, 1:4, 1:4])
    energy = sum(e.square().sum(dim=[2, 3]) for e in eff)
    torch.testing.assert_close(energy, torch.ones(2, 6, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_modulated_conv2d_gradcheck():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    styles = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    for fused in (False, True):

        def fn(x, w, s):
            return net.modulated_conv2d(x, w, s, padding=1, fused_modconv=fused)

        assert torch.autograd.gradcheck(fn, (x, weight, styles))


# ----------------------------------------------------------------------------------------------
# Equalized-learning-rate layers


@pytest.mark.parametrize('activation', ['linear', 'lrelu'])
def test_fully_connected_layer_formula(activation):
    torch.manual_seed(3)
    lr_mul = 0.01
    layer = net.FullyConnectedLayer(7, 5, activation=activation, lr_multiplier=lr_mul, bias_init=0.5)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(5))
    assert torch.equal(net.FullyConnectedLayer(7, 5, bias_init=0.5).bias, torch.full([5], 0.5))
    x = torch.randn(4, 7)
    y = x @ (layer.weight * lr_mul / np.sqrt(7)).t() + layer.bias * lr_mul
    if activation == 'lrelu':
        y = _lrelu(y)
    torch.testing.assert_close(layer(x), y)
    # Leading dimensions beyond the batch are supported.
    torch.testing.assert_close(layer(x.reshape(2, 2, 7)), y.reshape(2, 2, 5))


def test_fully_connected_layer_per_feature_bias_init():
    layer = net.FullyConnectedLayer(3, 4, bias_init=[1, 2, 3, 4])
    torch.testing.assert_close(layer(torch.zeros(1, 3)), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))


def test_conv2d_layer_formula_with_gain_and_clamp():
    torch.manual_seed(4)
    layer = net.Conv2dLayer(3, 4, kernel_size=3, activation='lrelu', conv_clamp=0.5)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(4))
    x = torch.randn(2, 3, 6, 6)
    gain = 0.7
    y = F.conv2d(x, layer.weight / np.sqrt(3 * 9), layer.bias, padding=1)
    y = (_lrelu(y) * gain).clamp(-0.5 * gain, 0.5 * gain)
    torch.testing.assert_close(layer(x, gain=gain), y)


def test_conv2d_layer_downsample_matches_filter_then_strided_conv():
    # down=2: FIR low-pass (padding so the 3x3 conv stays centred), then the conv at stride 2.
    torch.manual_seed(5)
    layer = net.Conv2dLayer(2, 3, kernel_size=3, down=2)
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    layer = layer.double()
    f = layer.resample_filter
    y_ref = F.conv2d(upfirdn2d.upfirdn2d(x, f, padding=2), layer.weight / np.sqrt(18), layer.bias, stride=2)
    torch.testing.assert_close(layer(x), y_ref)


def test_frozen_conv_layer_has_no_parameters():
    layer = net.Conv2dLayer(2, 3, kernel_size=3, trainable=False)
    assert len(list(layer.parameters())) == 0
    assert {'weight', 'bias'} <= set(dict(layer.named_buffers()))


# ----------------------------------------------------------------------------------------------
# Mapping network


def _mapping(**kwargs) -> net.MappingNetwork:
    args = dict(z_dim=8, c_dim=3, w_dim=6, num_ws=5, num_layers=2)
    args.update(kwargs)
    return net.MappingNetwork(**args)


def test_mapping_w_avg_tracks_ema_only_when_asked():
    torch.manual_seed(6)
    m = _mapping(w_avg_beta=0.9)
    with torch.no_grad():
        m.w_avg.copy_(torch.randn(6))
    z, c = torch.randn(4, 8), torch.randn(4, 3)
    before = m.w_avg.clone()
    ws = m(z, c)
    assert torch.equal(m.w_avg, before)
    m(z, c, update_emas=True)
    expected = 0.9 * before + 0.1 * ws[:, 0].mean(dim=0)
    torch.testing.assert_close(m.w_avg, expected)


def test_mapping_truncation():
    torch.manual_seed(7)
    m = _mapping()
    with torch.no_grad():
        m.w_avg.copy_(torch.randn(6))
    z, c = torch.randn(3, 8), torch.randn(3, 3)
    ws = m(z, c)
    assert ws.shape == (3, 5, 6)
    assert torch.equal(ws[:, 0], ws[:, 4])  # One w broadcast to every layer.
    assert torch.equal(m(z, c, truncation_psi=1), ws)
    assert torch.equal(m(z, c, truncation_psi=0), m.w_avg.expand(3, 5, 6))
    cut = m(z, c, truncation_psi=0.25, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], m.w_avg + 0.25 * (ws[:, :2] - m.w_avg))
    assert torch.equal(cut[:, 2:], ws[:, 2:])


def test_mapping_input_normalization_and_dims():
    torch.manual_seed(8)
    m = _mapping()
    z, c = torch.randn(2, 8), torch.randn(2, 3)
    # z and the embedded c are normalised to unit second moment: a global rescale changes nothing.
    torch.testing.assert_close(m(3 * z, 5 * c), m(z, c))
    assert _mapping(z_dim=0)(None, c).shape == (2, 5, 6)
    assert _mapping(c_dim=0)(z, None).shape == (2, 5, 6)
    single = _mapping(num_ws=None, w_avg_beta=None)
    assert single(z, c).shape == (2, 6)
    with pytest.raises(ValueError):
        single(z, c, truncation_psi=0.5)


# ----------------------------------------------------------------------------------------------
# Synthesis layers, blocks, network


def test_synthesis_layer_const_noise_is_added_after_demodulation():
    torch.manual_seed(9)
    layer = net.SynthesisLayer(4, 3, w_dim=5, resolution=6, activation='linear')
    with torch.no_grad():
        layer.noise_strength.fill_(0.3)
    x, w = torch.randn(2, 4, 6, 6), torch.randn(2, 5)
    diff = layer(x, w, noise_mode='const', fused_modconv=False) - layer(x, w, noise_mode='none', fused_modconv=False)
    torch.testing.assert_close(diff, (0.3 * layer.noise_const).expand(2, 3, 6, 6))


def test_to_rgb_layer_formula():
    torch.manual_seed(10)
    layer = net.ToRGBLayer(6, 3, w_dim=4, conv_clamp=2.0)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(3))
    x, w = torch.randn(2, 6, 5, 5), torch.randn(2, 4)
    styles = (w @ (layer.affine.weight / np.sqrt(4)).t() + layer.affine.bias) / np.sqrt(6)
    y = torch.einsum('oi,bihw->bohw', layer.weight[:, :, 0, 0], x * styles[:, :, None, None])
    y = (y + layer.bias.reshape(1, -1, 1, 1)).clamp(-2, 2)
    for fused in (False, True):
        torch.testing.assert_close(layer(x, w, fused_modconv=fused), y)


@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_generator_shapes_and_ws_count(architecture):
    torch.manual_seed(11)
    G = _small_generator(architecture=architecture)
    assert G.num_ws == 2 * int(np.log2(16)) - 2
    z, c = torch.randn(2, 16), torch.randn(2, 3)
    img = G(z, c)
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32
    assert torch.isfinite(img).all()


def test_synthesis_noise_modes():
    torch.manual_seed(12)
    G = _small_generator()
    z, c = torch.randn(2, 16), torch.randn(2, 3)
    ws = G.mapping(z, c)
    # With noise_strength 0 (the initial value) the noise modes agree.
    torch.testing.assert_close(G.synthesis(ws, noise_mode='random'), G.synthesis(ws, noise_mode='none'))
    _set_noise_strength(G, 0.2)
    const_a = G.synthesis(ws, noise_mode='const')
    assert torch.equal(const_a, G.synthesis(ws, noise_mode='const'))
    assert not torch.allclose(G.synthesis(ws, noise_mode='random'), G.synthesis(ws, noise_mode='random'))
    assert not torch.allclose(const_a, G.synthesis(ws, noise_mode='none'))
    with pytest.raises(ValueError):
        G.synthesis(ws, noise_mode='bogus')


def test_synthesis_fused_and_non_fused_agree():
    torch.manual_seed(13)
    G = _small_generator().double()
    _set_noise_strength(G, 0.1)
    ws = G.mapping(torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64))
    a = G.synthesis(ws, noise_mode='const', fused_modconv=True)
    b = G.synthesis(ws, noise_mode='const', fused_modconv=False)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_inference_only_fuses_in_eval_mode_only():
    block = net.SynthesisBlock(
        4, 4, w_dim=4, resolution=8, img_channels=3, is_last=True, fused_modconv_default='inference_only'
    )
    assert block._resolve_fused_modconv(None) is False
    block.eval()
    assert block._resolve_fused_modconv(None) is True
    assert block._resolve_fused_modconv(False) is False
    block.train()
    assert block._resolve_fused_modconv(True) is True


def test_generator_backward_reaches_every_parameter():
    torch.manual_seed(14)
    for architecture in ('skip', 'resnet'):
        G = _small_generator(architecture=architecture)
        _set_noise_strength(G, 0.1)
        img = G(torch.randn(2, 16), torch.randn(2, 3), noise_mode='random')
        (img * torch.randn_like(img)).sum().backward()
        _assert_all_grads(G)


def test_fp16_settings_fall_back_to_fp32_on_cpu():
    torch.manual_seed(15)
    G32 = _small_generator(num_fp16_res=0)
    G16 = _small_generator(num_fp16_res=4)
    G16_cl = _small_generator(num_fp16_res=4, fp16_channels_last=True)
    G16.load_state_dict(G32.state_dict())
    G16_cl.load_state_dict(G32.state_dict())
    assert G16.synthesis.b16.use_fp16 and not G32.synthesis.b16.use_fp16
    z, c = torch.randn(2, 16), torch.randn(2, 3)
    ref = G32(z, c, noise_mode='const')
    out16 = G16(z, c, noise_mode='const')
    assert out16.dtype == torch.float32
    assert torch.equal(out16, ref)
    # channels_last weights change only the convolution's summation order.
    torch.testing.assert_close(G16_cl(z, c, noise_mode='const'), ref, rtol=1e-5, atol=1e-5)


def test_cpu_bf16_convolutions_stay_within_tolerance():
    # Stated tolerance of the bf16 option: relative RMS error of the output below 2 %.
    torch.manual_seed(16)
    G = _small_generator(img_resolution=32, channel_base=2048, channel_max=64)
    Gbf = _small_generator(img_resolution=32, channel_base=2048, channel_max=64, cpu_bf16=True)
    Gbf.load_state_dict(G.state_dict())
    _set_noise_strength(G, 0.1)
    _set_noise_strength(Gbf, 0.1)
    z, c = torch.randn(2, 16), torch.randn(2, 3)
    ref = G(z, c, noise_mode='const')
    out = Gbf(z, c, noise_mode='const')
    assert out.dtype == torch.float32
    rel = ((out - ref).square().mean() / ref.square().mean()).sqrt()
    assert 0 < rel < 0.02, f'bf16 relative RMS error {rel:.4f}'
    # force_fp32 turns the option off.
    assert torch.equal(Gbf(z, c, noise_mode='const', force_fp32=True), ref)
    # Gradients flow through the bf16 convolutions.
    out.sum().backward()
    assert all(p.grad is not None for p in Gbf.synthesis.parameters())
    # In eval mode the fused form keeps the activations in bf16 between layers: same tolerance.
    G.eval(), Gbf.eval()
    with torch.no_grad():
        ref, out = G(z, c, noise_mode='const'), Gbf(z, c, noise_mode='const')
    assert out.dtype == torch.float32
    rel = ((out - ref).square().mean() / ref.square().mean()).sqrt()
    assert 0 < rel < 0.02, f'bf16 relative RMS error in eval mode {rel:.4f}'


def test_synthesis_block_without_upsampling():
    torch.manual_seed(17)
    block = net.SynthesisBlock(5, 6, w_dim=4, resolution=8, img_channels=3, is_last=True, up=1)
    x, img = torch.randn(2, 5, 8, 8), torch.randn(2, 3, 8, 8)
    ws = torch.randn(2, 3, 4)
    x_out, img_out = block(x, img, ws)
    assert x_out.shape == (2, 6, 8, 8) and img_out.shape == (2, 3, 8, 8)
    # The incoming image is passed through unchanged and the block's ToRGB is added on top.
    _, rgb_only = block(x, None, ws)
    torch.testing.assert_close(img_out, img + rgb_only)


# ----------------------------------------------------------------------------------------------
# Discriminator


def test_minibatch_std_matches_numpy():
    torch.manual_seed(18)
    x = torch.randn(8, 6, 3, 3)
    layer = net.MinibatchStdLayer(group_size=4, num_channels=2)
    y = layer(x).numpy()
    xn = x.numpy().astype(np.float64)
    n, g, f = 8, 4, 2
    expected = np.zeros((n, f))
    for i in range(n):
        members = [j for j in range(n) if j % (n // g) == i % (n // g)]  # Group of sample i.
        for k in range(f):
            sl = xn[members][:, k * 3 : (k + 1) * 3]  # [G, C/F, H, W]
            std = np.sqrt(sl.var(axis=0) + 1e-8)
            expected[i, k] = std.mean()
    assert y.shape == (8, 8, 3, 3)
    np.testing.assert_array_equal(y[:, :6], x.numpy())
    np.testing.assert_allclose(y[:, 6:], np.broadcast_to(expected[:, :, None, None], (8, 2, 3, 3)), rtol=1e-5)
    # A group size larger than the batch uses the whole batch.
    y_all = net.MinibatchStdLayer(group_size=16)(x[:2])
    std_all = np.sqrt(xn[:2].var(axis=0) + 1e-8).mean()
    np.testing.assert_allclose(y_all[:, 6].numpy(), np.full((2, 3, 3), std_all), rtol=1e-5)


def test_epilogue_split_composes_to_the_full_epilogue():
    torch.manual_seed(19)
    ep = net.DiscriminatorEpilogue(8, cmap_dim=6, resolution=4, img_channels=3, mbstd_group_size=2)
    x = torch.randn(4, 8, 4, 4)
    cmap = torch.randn(4, 6)
    flat = ep.get_flatten_x(x)
    assert flat.shape == (4, 8 * 16)
    # Direct formula: conv over [x, mbstd] then flatten channel-major, two FCs, scaled projection.
    h = ep.conv(ep.mbstd(x))
    torch.testing.assert_close(flat, h.reshape(4, -1))
    out = ep.out(ep.fc(h.reshape(4, -1)))
    logits = ep(flat, cmap)
    assert logits.shape == (4, 1)
    torch.testing.assert_close(logits, (out * cmap).sum(dim=1, keepdim=True) / np.sqrt(6))
    uncond = net.DiscriminatorEpilogue(8, cmap_dim=0, resolution=4, img_channels=3, mbstd_group_size=2)
    torch.testing.assert_close(uncond(uncond.get_flatten_x(x), None), uncond.out(uncond.fc(uncond.get_flatten_x(x))))


@pytest.mark.parametrize('architecture', ['resnet', 'skip', 'orig'])
def test_discriminator_forward_backward(architecture):
    torch.manual_seed(20)
    D = _small_discriminator(architecture=architecture)
    img, c = torch.randn(4, 3, 16, 16), torch.randn(4, 5)
    logits = D(img, c)
    assert logits.shape == (4, 1)
    assert D.trunk(img).shape == (4, 64, 4, 4)
    torch.testing.assert_close(D.b4(D.b4.get_flatten_x(D.trunk(img)), D.mapping(None, c)), logits)
    logits.sum().backward()
    _assert_all_grads(D)


def test_discriminator_fp16_settings_fall_back_on_cpu():
    torch.manual_seed(21)
    D32 = _small_discriminator(num_fp16_res=0)
    D16 = _small_discriminator(num_fp16_res=4)
    D16_cl = _small_discriminator(num_fp16_res=4, block_kwargs=dict(fp16_channels_last=True))
    D16.load_state_dict(D32.state_dict())
    D16_cl.load_state_dict(D32.state_dict())
    img, c = torch.randn(4, 3, 16, 16), torch.randn(4, 5)
    ref = D32(img, c)
    assert torch.equal(D16(img, c), ref)
    torch.testing.assert_close(D16_cl(img, c), ref, rtol=1e-5, atol=1e-5)


def test_discriminator_freeze_layers():
    D = _small_discriminator(block_kwargs=dict(freeze_layers=2))
    assert D.b16.fromrgb.weight.requires_grad is False and 'weight' in dict(D.b16.fromrgb.named_buffers())
    assert D.b16.conv0.weight.requires_grad is False
    assert isinstance(D.b16.conv1.weight, torch.nn.Parameter)


def test_discriminator_r1_double_backward():
    torch.manual_seed(22)
    D = _small_discriminator()
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    c = torch.randn(4, 5)
    logits = D(img, c)
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    penalty = grad.square().sum(dim=[1, 2, 3]).mean()
    penalty.backward()
    assert D.b16.conv0.weight.grad is not None and D.b16.conv0.weight.grad.abs().sum() > 0
    assert D.b4.fc.weight.grad.abs().sum() > 0
    # The penalty's parameter gradient matches a central finite difference (in float64).
    D64 = copy.deepcopy(D).double()
    D64.zero_grad(set_to_none=True)
    img64, c64 = img.detach().double(), c.double()

    def penalty(model):
        x = img64.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x, c64).sum(), x, create_graph=True)
        return g.square().sum(dim=[1, 2, 3]).mean()

    penalty(D64).backward()
    name = 'b8.conv0.weight'
    p = dict(D64.named_parameters())[name]
    direction = torch.randn_like(p)
    analytic = (p.grad * direction).sum().item()
    eps = 1e-6
    values = []
    for sign in (1, -1):
        Dc = copy.deepcopy(D64)
        with torch.no_grad():
            dict(Dc.named_parameters())[name].add_(sign * eps * direction)
        values.append(penalty(Dc).item())
    numeric = (values[0] - values[1]) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-5 * max(1.0, abs(numeric))


def test_cpu_bf16_slowdown_note_names_the_missing_hardware(monkeypatch):
    from torch_utils import custom_ops

    for flags, slow in [({'avx2', 'avx512f'}, True), ({'avx512_bf16'}, False), ({'amx_bf16'}, False), (set(), False)]:
        monkeypatch.setattr(custom_ops, 'cpu_flags', lambda flags=flags: frozenset(flags))
        note = net.cpu_bf16_slowdown_note()
        assert (note is not None) == slow, flags
        assert note is None or ('AVX512-BF16' in note and '\n' not in note)
