"""What the metrics share: their options, the data set, real-image features (cached), fake sampling and
the gathering of per-process results.

Work is split into batches of a fixed size; batch b runs on rank b % num_gpus and draws its
latents, cameras and noise from seeds derived from b alone. Every batch therefore holds the same
images whatever the number of processes, and the gathered results are identical for one process
and for several.
"""

import dataclasses
import hashlib
import json
import os
import zipfile

import numpy as np
import torch
from tqdm import tqdm

import dnnlib
from metrics.detector import DEFAULT_DETECTOR, FEATURE_DIM, FeatureDetector
from metrics.names import FRONT_MAX_YAW_DEGREES, METRIC_POSE_SAMPLE_MODES, in_yaw_range
from training.checkpoints.atomic_files import atomic_write
from training.data.camera_utils import camera_yaw
from training.data.dataset import PortraitDataset
from training.data.images import image_from_uint8, mask_from_uint8, to_uint8
from training.networks.d_input import discriminator_input
from training.pose_prediction import predict_real_poses

REAL_SUBSET_SEED = 0


@dataclasses.dataclass
class MetricOptions:
    """Everything a metric needs: networks, data, pose sampling, detector and the process layout."""

    G: torch.nn.Module  # the generator to evaluate (G_ema)
    dataset_kwargs: dict  # PortraitDataset arguments: path, seg_path, resolution
    D: torch.nn.Module | None = None  # predicts poses for D_predict and pose_err
    pose_predict_kwargs: dict | None = None  # blur_sigma, neural_rendering_resolution (docs/method.md §9.6)
    metric_pose_sample_mode: str = 'G_predict'  # pose of the fakes: G's pose branch, or D on a real image
    identical_c_p: bool = False  # condition on the rendering camera and pose (else an independent draw)
    detector: str = DEFAULT_DETECTOR  # feature detector file (metrics.detector)
    trust_pickle: bool = False  # unpickle a .pkl detector by running its code
    num_gpus: int = 1  # processes taking part (torch.distributed when > 1)
    rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device('cpu'))
    batch_size: int = 8  # images per generator / detector call
    seed: int = 0  # seeds the fake draws
    cache: bool = True  # reuse real-image features from the cache directory
    progress: bool = False  # progress bars on rank 0
    memo: dict = dataclasses.field(default_factory=dict, repr=False)  # shared by the metrics of one call

    def __post_init__(self):
        self.device = torch.device(self.device)
        if self.metric_pose_sample_mode not in METRIC_POSE_SAMPLE_MODES:
            raise ValueError(
                f'metric_pose_sample_mode {self.metric_pose_sample_mode!r}: expected one of '
                f'{", ".join(METRIC_POSE_SAMPLE_MODES)}'
            )
        if self.metric_pose_sample_mode == 'D_predict' and (self.D is None or self.pose_predict_kwargs is None):
            raise ValueError(
                'metric_pose_sample_mode D_predict needs the discriminator and its pose-prediction '
                'settings (pose_predict_kwargs-*.json)'
            )

    @property
    def rendering_resolution(self) -> int | None:
        """The neural rendering resolution of the fakes: the snapshot's, else the generator's default."""
        if self.pose_predict_kwargs is None:
            return None
        return int(self.pose_predict_kwargs['neural_rendering_resolution'])

    def dataset(self) -> PortraitDataset:
        """The mirrored data set at the generator's resolution (docs/method.md §12.1)."""
        if 'dataset' not in self.memo:
            kwargs = {
                key: value for key, value in self.dataset_kwargs.items() if key in ('path', 'seg_path', 'max_size')
            }
            self.memo['dataset'] = PortraitDataset(**kwargs, resolution=self.G.img_resolution, xflip=True)
        return self.memo['dataset']

    def feature_detector(self) -> FeatureDetector:
        if 'detector' not in self.memo:
            self.memo['detector'] = FeatureDetector(self.detector, self.device, self.trust_pickle)
        return self.memo['detector']


# ------------------------------------------------------------------------------------------------
# Processes and batches.


def rank_batches(num_items: int, opts: MetricOptions) -> list:
    """The batch indices of this rank: b = rank, rank + num_gpus, ... over ceil(num_items / batch_size) batches."""
    num_batches = -(-num_items // opts.batch_size)
    return list(range(opts.rank, num_batches, opts.num_gpus))


def gather_batches(results: dict, num_items: int, width: int, opts: MetricOptions) -> np.ndarray:
    """Put every rank's batch results together in batch order.

    results {batch index: float tensor [batch_size, width]} of this rank -> float32 [num_items, width],
    the same on every rank. Each rank fills its own rows of a zero tensor and the ranks sum them,
    which is exact.
    """
    num_batches = -(-num_items // opts.batch_size)
    table = torch.zeros(num_batches, opts.batch_size, width, dtype=torch.float32)
    for index, rows in results.items():
        table[index, : len(rows)] = rows.float().cpu()
    if opts.num_gpus > 1:
        table = table.to(opts.device)
        torch.distributed.all_reduce(table)
    return table.reshape(-1, width)[:num_items].cpu().numpy()


def progress_bar(batches: list, opts: MetricOptions, desc: str):
    return tqdm(batches, desc=desc, unit='batch', leave=False) if opts.progress and opts.rank == 0 else batches


# ------------------------------------------------------------------------------------------------
# Real images.


def yaw_range_items(opts: MetricOptions, yaw_range: str | None) -> np.ndarray:
    """Items of the mirrored data set whose labelled camera lies in a yaw range (metrics.names.YAW_RANGES) -> int64 [N].

    None: every item. The yaw is that of the camera label (camera_utils.camera_yaw), so an item and its
    mirror image fall in the same range. Raises ValueError when no item does.
    """
    dataset = opts.dataset()
    if yaw_range is None:
        return np.arange(len(dataset))
    memo_key = ('yaw_range_items', yaw_range)
    if memo_key not in opts.memo:
        cameras = torch.from_numpy(np.stack([dataset.get_label(i) for i in range(len(dataset))]).astype(np.float64))
        yaw = torch.rad2deg(camera_yaw(cameras)).numpy()
        items = np.flatnonzero(in_yaw_range(yaw, yaw_range))
        if len(items) == 0:
            bound = f'{"<=" if yaw_range == "front" else ">"} {FRONT_MAX_YAW_DEGREES:g} degrees'
            raise ValueError(
                f'{opts.dataset_kwargs["path"]}: no image has a camera in the {yaw_range} yaw range (|yaw| {bound}; '
                f'the labels span {yaw.min():.1f} .. {yaw.max():.1f} degrees); use a metric without _{yaw_range}'
            )
        opts.memo[memo_key] = items
    return opts.memo[memo_key]


def real_subset(dataset: PortraitDataset, max_items: int | None, items: np.ndarray | None = None) -> np.ndarray:
    """Item indices of the real images a metric uses: all of `items` (default: every item), or a fixed random
    subset of max_items of them -> int64 [N], sorted."""
    items = np.arange(len(dataset)) if items is None else np.asarray(items)
    if max_items is None or max_items >= len(items):
        return items
    return np.sort(items[np.random.RandomState(REAL_SUBSET_SEED).permutation(len(items))[:max_items]])


def load_real_batch(dataset: PortraitDataset, indices: np.ndarray) -> tuple:
    """Items -> images uint8 [N, 3, R, R], masks uint8 [N, 1, R, R], cameras float32 [N, 25], poses float32 [N, 6]."""
    items = [dataset[int(i)] for i in indices]
    return tuple(torch.from_numpy(np.stack([item[k] for item in items])) for k in range(4))


def _source_identity(path: str) -> list:
    """What identifies a data set file's content: a zip's member names, CRCs and sizes; a folder's files, sizes and times."""
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return sorted((info.filename, info.CRC, info.file_size) for info in archive.infolist())
    found = []
    for root, _, files in os.walk(path):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            found.append((os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def real_features_cache_path(opts: MetricOptions, max_items: int | None, yaw_range: str | None = None) -> str:
    """Cache file of the real features: named by the data set and a hash of its content, the yaw range, the subset
    and the detector."""
    dataset = opts.dataset()
    key = dict(
        images=_source_identity(opts.dataset_kwargs['path']),
        masks=_source_identity(opts.dataset_kwargs['seg_path']),
        max_size=opts.dataset_kwargs.get('max_size'),
        resolution=dataset.resolution,
        xflip=True,
        max_items=max_items,
        subset_seed=REAL_SUBSET_SEED,
        detector=opts.feature_detector().name,
    )
    split = ''
    if yaw_range is not None:  # every camera keeps the key (and the files) it had before yaw ranges existed
        key['yaw_range'] = yaw_range
        split = f'{yaw_range}-'
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return dnnlib.util.make_cache_dir_path('gan-metrics', f'{dataset.name}-{split}{max_items or "all"}-{digest}.npy')


def real_features(opts: MetricOptions, max_items: int | None, yaw_range: str | None = None) -> np.ndarray:
    """Detector features of the real images (mirrored set, docs/method.md §12.1) whose camera lies in `yaw_range`
    (None: every camera) -> float32 [N, 2048], cached."""
    memo_key = ('real_features', max_items, yaw_range)
    if memo_key in opts.memo:
        return opts.memo[memo_key]
    cache_path = real_features_cache_path(opts, max_items, yaw_range) if opts.cache else None
    cached = cache_path is not None and os.path.isfile(cache_path)
    if opts.num_gpus > 1:
        flag = torch.tensor([float(cached)], device=opts.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        cached = bool(flag.item())
    if cached:
        features = np.load(cache_path)
    else:
        dataset, detector = opts.dataset(), opts.feature_detector()
        indices = real_subset(dataset, max_items, yaw_range_items(opts, yaw_range))
        results = {}
        for batch in progress_bar(rank_batches(len(indices), opts), opts, 'real features'):
            images, *_ = load_real_batch(dataset, indices[batch * opts.batch_size : (batch + 1) * opts.batch_size])
            results[batch] = detector(images)
        features = gather_batches(results, len(indices), FEATURE_DIM, opts)
        if cache_path is not None and opts.rank == 0:
            atomic_write(cache_path, lambda f: np.save(f, features))
    opts.memo[memo_key] = features
    return features


# ------------------------------------------------------------------------------------------------
# Fakes.


def _batch_seeds(opts: MetricOptions, batch: int, stream: int) -> int:
    """A seed for one batch and purpose, independent of the process layout."""
    return int(np.random.SeedSequence([opts.seed, batch, stream]).generate_state(1)[0])


def sample_poses(opts: MetricOptions, z: torch.Tensor, indices: np.ndarray) -> tuple:
    """Cameras and body poses for latents z at data set items `indices` (docs/method.md §12.1, §13.1).

    z [B, z_dim], indices [B] -> (cameras [B, 25], poses [B, 6]) on opts.device.
    G_predict: G's pose branch on the latent's own z and the item's camera; D_predict: D's
    prediction on the item's real image and mask.
    """
    dataset = opts.dataset()
    if opts.metric_pose_sample_mode == 'G_predict':
        c = torch.from_numpy(np.stack([dataset.get_label(int(i)) for i in indices])).to(opts.device)
        return c, opts.G.get_pose_params(z, c)
    images, masks, c, _ = load_real_batch(dataset, indices)
    images, masks = image_from_uint8(images, opts.device), mask_from_uint8(masks, opts.device)
    c = c.to(opts.device)
    poses = predict_real_poses(opts.D, images, masks, c, opts.pose_predict_kwargs, batch=len(indices))
    return c, poses


def with_g_poses(opts: MetricOptions) -> MetricOptions:
    """opts with metric_pose_sample_mode G_predict (fakes posed by G's pose branch), sharing its memo."""
    return MetricOptions(**{**opts.__dict__, 'metric_pose_sample_mode': 'G_predict', 'memo': opts.memo})


@torch.no_grad()
def batch_latents(opts: MetricOptions, batch: int, yaw_range: str | None = None) -> dict:
    """What the fakes of one batch are drawn from (docs/method.md §12.1), before rendering.

    -> {'z' [B, z_dim], 'c' [B, 25] rendering cameras, 'pose' [B, 6] rendering poses, 'ws' [B, num_ws, w_dim],
    'noise_seed', 'render_seed' int}, B = batch_size. With identical_c_p the mapping is conditioned on the rendering
    camera and pose, otherwise on the camera and pose of an independent draw. With a yaw range the rendering
    cameras are those of data set items in it (yaw_range_items); the independent draw still takes any item.
    """
    G, dataset, size = opts.G, opts.dataset(), opts.batch_size
    rng = np.random.RandomState(_batch_seeds(opts, batch, 0) % 2**32)
    items = yaw_range_items(opts, yaw_range)
    indices, condition_indices = items[rng.randint(len(items), size=size)], rng.randint(len(dataset), size=size)
    z = torch.from_numpy(rng.standard_normal([size, G.z_dim]).astype(np.float32)).to(opts.device)
    c, pose = sample_poses(opts, z, indices)
    c_cond, pose_cond = (c, pose) if opts.identical_c_p else sample_poses(opts, z, condition_indices)
    ws = G.mapping(z, c_cond, pose_cond)
    return dict(
        z=z, c=c, pose=pose, ws=ws, noise_seed=_batch_seeds(opts, batch, 1), render_seed=_batch_seeds(opts, batch, 2)
    )


@torch.no_grad()
def render_latents(opts: MetricOptions, latents: dict, pose: torch.Tensor) -> dict:
    """G's render of batch_latents' draw with the body pose `pose` [B, 6]: truncation 1, deformation on.

    -> G's outputs 'image', 'image_raw', 'image_mask'. The backbone's noise maps and the renderer's
    random draws come from latents' seeds, so renders of one draw differ only by their pose.
    """
    torch.manual_seed(latents['noise_seed'])  # the backbone's random noise maps
    generator = torch.Generator(opts.device).manual_seed(latents['render_seed'])
    return opts.G.synthesis(
        latents['ws'],
        latents['c'],
        neural_rendering_resolution=opts.rendering_resolution,
        pose_params=pose,
        noise_mode='random',
        generator=generator,
    )


@torch.no_grad()
def generate_batch(opts: MetricOptions, batch: int, yaw_range: str | None = None) -> dict:
    """The fakes of one batch: batch_latents (in a yaw range, or None) rendered with their own pose.

    -> {'z' [B, z_dim], 'c' [B, 25], 'pose' [B, 6], 'images' uint8 [B, 3, S, S], and G's outputs 'image',
    'image_raw', 'image_mask'}, B = batch_size.
    """
    latents = batch_latents(opts, batch, yaw_range)
    out = render_latents(opts, latents, latents['pose'])
    images = torch.from_numpy(to_uint8(out['image'])).permute(0, 3, 1, 2)
    return dict(
        z=latents['z'],
        c=latents['c'],
        pose=latents['pose'],
        images=images,
        image=out['image'],
        image_raw=out['image_raw'],
        image_mask=out['image_mask'],
    )


def fake_features(opts: MetricOptions, num_items: int, yaw_range: str | None = None) -> np.ndarray:
    """Detector features of num_items fakes rendered from cameras in `yaw_range` (None: every camera) -> float32
    [num_items, 2048] (shared by the metrics of one call)."""
    memo_key = ('fake_features', num_items, yaw_range)
    if memo_key not in opts.memo:
        detector = opts.feature_detector()
        results = {}
        for batch in progress_bar(rank_batches(num_items, opts), opts, 'fake features'):
            results[batch] = detector(generate_batch(opts, batch, yaw_range)['images'])
        opts.memo[memo_key] = gather_batches(results, num_items, FEATURE_DIM, opts)
    return opts.memo[memo_key]


def discriminator_pose_on_fakes(opts: MetricOptions, fakes: dict) -> torch.Tensor:
    """D's pose of a batch of fakes, their image blurred as D sees fakes (docs/method.md §7.5) -> [B, 6]."""
    blur_sigma = float(opts.pose_predict_kwargs['blur_sigma'])
    return opts.D.predict_pose(discriminator_input(fakes, blur_sigma), fakes['c'])
