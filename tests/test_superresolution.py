"""Tests for training/networks/superresolution.py: shapes, input resizing, use of the last w, gradients."""

import pytest
import torch
import torch.nn.functional as F

from training.networks import superresolution as sr

W_DIM = 16


def _inputs(r: int, channels: int = 32, batch: int = 1, num_ws: int = 4):
    return torch.randn(batch, 3, r, r), torch.randn(batch, channels, r, r), torch.randn(batch, num_ws, W_DIM)


def _assert_all_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        if name.endswith('noise_strength'):
            continue  # noise_mode 'none' (the heads' default) leaves the noise strengths out of the graph.
        assert p.grad is not None, f'{name} got no gradient'
        assert p.grad.abs().sum() > 0, f'{name} has an all-zero gradient'


@pytest.mark.parametrize(
    'cls,out_res,in_res',
    [
        (sr.SuperresolutionHybrid2X, 128, 64),
        (sr.SuperresolutionHybrid4X, 256, 128),
        (sr.SuperresolutionHybrid8XDC, 512, 128),
    ],
)
def test_hybrid_heads_shapes_and_gradients(cls, out_res, in_res):
    torch.manual_seed(0)
    head = cls(channels=32, img_resolution=out_res, sr_num_fp16_res=4, w_dim=W_DIM)
    assert head.input_resolution == in_res
    # The rendering resolution may differ from the head's input (the resolution schedule makes 65, 66, ...).
    with torch.no_grad():
        out = head(*_inputs(in_res))
    assert out.shape == (1, 3, out_res, out_res) and out.dtype == torch.float32
    out = head(*_inputs(in_res // 2 + 1))
    assert out.shape == (1, 3, out_res, out_res)
    out.square().mean().backward()
    _assert_all_grads(head)
    with pytest.raises(ValueError):
        cls(channels=32, img_resolution=out_res * 2)


def test_only_the_last_w_is_used():
    torch.manual_seed(1)
    head = sr.SuperresolutionSmall(channels=8, img_resolution=32, input_resolution=16, w_dim=W_DIM)
    rgb, x, ws = _inputs(16, channels=8, batch=2, num_ws=5)
    ws_changed = ws.clone()
    ws_changed[:, :-1] = torch.randn_like(ws_changed[:, :-1])
    torch.testing.assert_close(head(rgb, x, ws), head(rgb, x, ws_changed))
    ws_changed[:, -1] += 1
    assert not torch.allclose(head(rgb, x, ws), head(rgb, x, ws_changed))


def test_inputs_are_resized_bilinearly_with_antialias():
    torch.manual_seed(2)
    head = sr.SuperresolutionSmall(channels=8, img_resolution=32, input_resolution=16, w_dim=W_DIM)
    rgb, x, ws = _inputs(24, channels=8)

    def resize(t):
        return F.interpolate(t, size=(16, 16), mode='bilinear', align_corners=False, antialias=True)

    torch.testing.assert_close(head(rgb, x, ws), head(resize(rgb), resize(x), ws))
    head_no_aa = sr.SuperresolutionSmall(
        channels=8, img_resolution=32, input_resolution=16, w_dim=W_DIM, sr_antialias=False
    )
    head_no_aa.load_state_dict(head.state_dict())
    assert not torch.allclose(head_no_aa(rgb, x, ws), head(rgb, x, ws))


def test_raw_rgb_feeds_the_skip_path():
    # The output is upsample(rgb) + ToRGB terms that do not depend on rgb: shifting rgb by a
    # constant shifts the output by the same constant (the [1,3,3,1] upsampling preserves constants
    # away from the border).
    torch.manual_seed(3)
    head = sr.SuperresolutionSmall(channels=8, img_resolution=32, input_resolution=16, w_dim=W_DIM)
    rgb, x, ws = _inputs(16, channels=8)
    diff = head(rgb + 0.5, x, ws) - head(rgb, x, ws)
    torch.testing.assert_close(diff[..., 2:-2, 2:-2], torch.full_like(diff[..., 2:-2, 2:-2], 0.5))


@pytest.mark.parametrize('in_res,out_res,num_blocks', [(32, 64, 1), (16, 64, 2), (32, 32, 1)])
def test_small_head_shapes_and_gradients(in_res, out_res, num_blocks):
    torch.manual_seed(4)
    head = sr.SuperresolutionSmall(
        channels=8, img_resolution=out_res, input_resolution=in_res, w_dim=W_DIM, channel_base=512, channel_max=16
    )
    assert len(head.block_names) == num_blocks
    for r in (in_res, in_res + 3):
        rgb, x, ws = _inputs(r, channels=8, batch=2)
        out = head(rgb, x, ws)
        assert out.shape == (2, 3, out_res, out_res)
    out.sum().backward()
    _assert_all_grads(head)
    with pytest.raises(ValueError):
        sr.SuperresolutionSmall(channels=8, img_resolution=48, input_resolution=32)


def test_noise_mode_default_and_override():
    torch.manual_seed(5)
    head = sr.SuperresolutionSmall(channels=8, img_resolution=32, input_resolution=16, w_dim=W_DIM)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.5)
    rgb, x, ws = _inputs(16, channels=8)
    torch.testing.assert_close(head(rgb, x, ws), head(rgb, x, ws, noise_mode='none'))
    assert not torch.allclose(head(rgb, x, ws), head(rgb, x, ws, noise_mode='const'))
    with pytest.raises(ValueError):
        sr.SuperresolutionSmall(channels=8, img_resolution=32, input_resolution=16, noise_mode='sometimes')
