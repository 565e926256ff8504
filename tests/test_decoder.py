"""Tests for training/networks/decoder.py: the chunked inference path against the one-pass autograd path and
against the MLP written out by hand."""

import pytest
import torch

from training.networks import decoder as decoder_module
from training.networks.decoder import TriGridDecoder


@pytest.mark.parametrize('activation', decoder_module.ACTIVATIONS)
def test_chunked_inference_equals_the_one_pass_forward(activation, monkeypatch):
    torch.manual_seed(0)
    decoder = TriGridDecoder(in_channels=8, hidden_channels=16, out_channels=5, activation=activation)
    monkeypatch.setattr(decoder_module, 'INFERENCE_CHUNK', 100)
    features = torch.randn(2, 333, 8)  # 666 rows: six full chunks and a partial one
    with torch.no_grad():
        chunked = decoder(features)
    one_pass = decoder(features)  # autograd on: one pass over all rows
    assert one_pass['sigma'].requires_grad and not chunked['sigma'].requires_grad
    assert chunked['sigma'].shape == (2, 333, 1) and chunked['rgb'].shape == (2, 333, 5)
    for key in ('sigma', 'rgb'):
        torch.testing.assert_close(chunked[key], one_pass[key].detach(), rtol=1e-6, atol=1e-6)
    # Each row depends on its own features only: a row decoded alone gives the same values.
    alone = decoder(features[1:2, 200:201])
    torch.testing.assert_close(alone['rgb'][0, 0].detach(), chunked['rgb'][1, 200], rtol=1e-6, atol=1e-6)

    # Oracle: the MLP written out from the layers' parameters (equalized-LR gains included).
    def linear(layer, x):
        return x @ (layer.weight * layer.weight_gain).t() + layer.bias * layer.bias_gain

    with torch.no_grad():
        raw = linear(decoder.out, torch.nn.functional.softplus(linear(decoder.hidden, features)))
    torch.testing.assert_close(chunked['sigma'], raw[..., :1], rtol=1e-5, atol=1e-5)
    if activation == 'none':
        torch.testing.assert_close(chunked['rgb'], raw[..., 1:], rtol=1e-5, atol=1e-5)
