import math

import pytest
import torch

from tests.test_trigrid import linear_trigrid
from training.data import camera_utils as cu
from training.volumetric_rendering.ray_sampler import sample_rays_from_label
from training.volumetric_rendering.renderer import VolumeRenderer, stratified_depths

RADIUS = 0.3  # sphere radius in the analytic scenes
RAY_START, RAY_END, NUM_COARSE, NUM_FINE = 2.0, 3.4, 48, 48
COARSE_SPACING = (RAY_END - RAY_START) / (NUM_COARSE - 1)


def position_trigrid(box_warp: float, size: int = 8) -> torch.Tensor:
    """A tri-grid whose features are the world position (x, y, z), exact for |p| <= (1 - 1/size) box_warp/2.

    -> planes [1, 3, 3, size, size, size] (float32)
    """
    return linear_trigrid(torch.eye(3), torch.zeros(3), box_warp, size, size, size).float()


def sphere_decoder(centre=(0.0, 0.0, 0.0)):
    """Decodes position features into a hard sphere (raw density 400 inside, -100 outside) of constant colour."""
    centre = torch.tensor(centre)

    def decode(features):
        inside = (features - centre).norm(dim=-1, keepdim=True) < RADIUS
        sigma = torch.where(
            inside, torch.full_like(features[..., :1], 400.0), torch.full_like(features[..., :1], -100.0)
        )
        return {'sigma': sigma, 'rgb': torch.ones_like(features[..., :2])}

    return decode


def ray_sphere_depth(origins, directions, centre):
    """Distance along each ray to the first hit of the sphere, and the ray's closest approach.

    origins, directions [R, 3], centre [3] -> depth [R], impact parameter [R]
    """
    offset = origins - centre
    along = (offset * directions).sum(-1)
    impact = torch.sqrt((offset * offset).sum(-1) - along**2)
    depth = -along - torch.sqrt((RADIUS**2 - impact**2).clamp(min=0))
    return depth, impact


def frontal_rays(focal: float, resolution: int):
    """Rays of a camera on +z at distance 2.7 looking at the origin."""
    cam2world = cu.look_at(torch.tensor([[0.0, 0.0, 2.7]]), torch.zeros(1, 3))
    return sample_rays_from_label(cu.camera_label(cam2world, focal), resolution)


def make_renderer(box_warp=2.0, **kwargs):
    return VolumeRenderer(
        ray_start=RAY_START,
        ray_end=RAY_END,
        depth_resolution=NUM_COARSE,
        depth_resolution_importance=NUM_FINE,
        box_warp=box_warp,
        **kwargs,
    )


def test_stratified_depths():
    generator = torch.Generator().manual_seed(0)
    depths = stratified_depths(2, 3, 5, 1.0, 2.0, generator=generator)
    assert depths.shape == (2, 3, 5, 1)
    grid = torch.linspace(1.0, 2.0, 5).reshape(1, 1, 5, 1)
    jitter = (depths - grid) / 0.25
    assert (jitter >= 0).all() and (jitter < 1).all() and jitter.std() > 0.1
    torch.testing.assert_close(stratified_depths(2, 3, 5, 1.0, 2.0, deterministic=True), grid.expand(2, 3, 5, 1))


@pytest.mark.parametrize('deterministic', [True, False])
def test_sphere_opacity_and_depth(deterministic):
    origins, directions = frontal_rays(focal=3.0, resolution=12)
    renderer = make_renderer()
    features, depth, acc = renderer(
        position_trigrid(2.0),
        sphere_decoder(),
        origins,
        directions,
        deterministic=deterministic,
        generator=torch.Generator().manual_seed(0),
    )
    assert features.shape == (1, 144, 2) and depth.shape == acc.shape == (1, 144, 1)
    expected_depth, impact = ray_sphere_depth(origins[0], directions[0], torch.zeros(3))
    hits, misses = impact < 0.8 * RADIUS, impact > 1.1 * RADIUS
    assert hits.sum() >= 20 and misses.sum() >= 20
    assert (acc[0, hits, 0] > 0.99).all()
    assert (acc[0, misses, 0] < 1e-3).all()
    assert (depth[0, hits, 0] - expected_depth[hits]).abs().max() < COARSE_SPACING
    torch.testing.assert_close(features[0, :, 0], acc[0, :, 0])


def test_mirrored_camera_renders_the_width_flipped_image():
    # A scene symmetric in x (smooth blobs, colours even in x) seen from an oblique camera.
    centres = torch.tensor([[0.15, 0.05, 0.0], [-0.15, 0.05, 0.0], [0.0, -0.1, 0.12]])

    def decode(features):
        squared = ((features[..., None, :] - centres) ** 2).sum(-1)
        blobs = torch.exp(-squared / (2 * 0.08**2)).sum(-1, keepdim=True)
        colour = torch.stack([features[..., 0] ** 2, features[..., 1], features[..., 2]], dim=-1)
        return {'sigma': 60 * blobs - 10, 'rgb': colour}

    resolution = 10
    c = cu.camera_label(cu.orbit_camera(math.pi / 2 + 0.5, math.pi / 2 - 0.2), focal=3.0)
    renderer = make_renderer()
    planes = position_trigrid(2.0)
    images = []
    for camera in (c, cu.flip_camera(c)):
        origins, directions = sample_rays_from_label(camera, resolution)
        features, depth, acc = renderer(planes, decode, origins, directions, deterministic=True)
        images.append(torch.cat([features, depth, acc], dim=-1).reshape(resolution, resolution, -1))
    original, mirrored = images
    assert (original - original.flip(1)).abs().max() > 0.05  # the view itself is not symmetric
    assert original[..., -1].max() > 0.5
    torch.testing.assert_close(mirrored, original.flip(1), atol=2e-4, rtol=0)


def test_deform_applies_to_coarse_and_fine_samples():
    # canonical = posed + shift: the posed sphere sits at -shift, three coarse spacings farther away.
    shift = torch.tensor([0.0, 0.0, 3 * COARSE_SPACING])
    calls = []

    def deform(points):
        calls.append(points.shape)
        return points + shift

    resolution = 11  # odd: the central ray is exactly the optical axis
    origins, directions = frontal_rays(focal=3.0, resolution=resolution)
    renderer = make_renderer()
    planes = position_trigrid(2.0)
    _, depth, acc = renderer(planes, sphere_decoder(), origins, directions, deform=deform, deterministic=True)
    assert calls == [(1, resolution**2 * NUM_COARSE, 3), (1, resolution**2 * NUM_FINE, 3)]

    expected_depth, impact = ray_sphere_depth(origins[0], directions[0], -shift)
    hits = impact < 0.8 * RADIUS
    assert (acc[0, hits, 0] > 0.99).all()
    assert (depth[0, hits, 0] - expected_depth[hits]).abs().max() < COARSE_SPACING

    # With deterministic coarse samples only, every sample sees the value the undeformed scene
    # has three samples earlier, so the central ray's depth moves by exactly the shift. (The fine
    # samples would not shift exactly: the 0.01 floor of the pdf covers a fixed depth range.)
    centre_ray = resolution**2 // 2
    coarse_only = dict(depth_resolution_importance=0, deterministic=True)
    _, depth, _ = renderer(planes, sphere_decoder(), origins, directions, deform=deform, **coarse_only)
    _, plain_depth, _ = renderer(planes, sphere_decoder(), origins, directions, **coarse_only)
    assert depth[0, centre_ray, 0].item() - plain_depth[0, centre_ray, 0].item() == pytest.approx(
        shift[2].item(), abs=1e-5
    )


def uniform_decoder(raw_density):
    def decode(features):
        return {'sigma': torch.full_like(features[..., :1], raw_density), 'rgb': torch.ones_like(features[..., :1])}

    return decode


def test_crop_limits_density_to_the_inner_box():
    # Uniform medium, box_warp 1: only |x|, |z| <= 0.4 keeps density. The optical axis crosses
    # z = 0.4 at depth 2.3; the first hit in a medium of density s lies on average 1/s behind it.
    raw_density = 30.0
    activated = math.log1p(math.exp(raw_density - 1))
    origins, directions = frontal_rays(focal=1.0, resolution=11)
    renderer = make_renderer(box_warp=1.0)
    planes = position_trigrid(1.0)
    _, depth, acc = renderer(planes, uniform_decoder(raw_density), origins, directions, deterministic=True)
    centre_ray = 60
    assert acc[0, centre_ray, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert depth[0, centre_ray, 0].item() == pytest.approx(2.3 + 1 / activated, abs=COARSE_SPACING / 2)
    # Rays whose |x| exceeds 0.4 over the whole depth range see nothing.
    x_at_start = (origins[0, :, 0] + RAY_START * directions[0, :, 0]).abs()
    x_at_end = (origins[0, :, 0] + RAY_END * directions[0, :, 0]).abs()
    outside = torch.minimum(x_at_start, x_at_end) > 0.45
    assert outside.sum() > 0 and (acc[0, outside, 0] < 1e-6).all()

    # The crop is decided on the deformed (canonical) coordinates.
    _, _, shifted_acc = renderer(
        planes,
        uniform_decoder(raw_density),
        origins,
        directions,
        deform=lambda points: points + torch.tensor([0.5, 0.0, 0.0]),
        deterministic=True,
    )
    assert shifted_acc[0, centre_ray, 0].item() < 1e-6


def test_fast_and_reference_samplers_render_the_same():
    generator = torch.Generator().manual_seed(0)
    planes = 0.5 * torch.randn(2, 3, 8, 3, 16, 16, generator=generator)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Softplus(), torch.nn.Linear(16, 5))

    def decode(features):
        out = mlp(features)
        return {'sigma': 20 * out[..., :1], 'rgb': out[..., 1:]}

    c = cu.random_cameras(2, generator=generator)
    c[:, 16] = c[:, 20] = 1.5  # a wider field of view than the dataset's, to cover the box
    origins, directions = sample_rays_from_label(c, 6)
    outputs, gradients = [], []
    for fast in (True, False):
        renderer = VolumeRenderer(2.25, 3.3, 12, 12, box_warp=1.0, fast_sampler=fast)
        planes_leaf = planes.clone().requires_grad_(True)
        result = renderer(planes_leaf, decode, origins, directions, deterministic=True)
        (result[0].sum() + result[2].sum()).backward()
        outputs.append(result)
        gradients.append(planes_leaf.grad)
    for fast_output, reference in zip(*outputs):
        torch.testing.assert_close(fast_output, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gradients[0], gradients[1], atol=1e-5, rtol=1e-5)
    assert gradients[0].abs().sum() > 0


def test_gradcheck_through_the_deformation():
    # Coarse-only deterministic samples stay fixed, so the render is a smooth function of a
    # deformation parameter (the fine samples' positions are chosen without gradient).
    origins, directions = frontal_rays(focal=3.0, resolution=3)
    origins, directions = origins.double(), directions.double()
    planes = position_trigrid(2.0).double()
    renderer = VolumeRenderer(RAY_START, RAY_END, 16, 0, box_warp=2.0)

    def decode(features):
        return {'sigma': 30 - 200 * (features**2).sum(-1, keepdim=True), 'rgb': features}

    def render(shift):
        return renderer(planes, decode, origins, directions, deform=lambda points: points + shift, deterministic=True)

    shift = torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(render, (shift,))
    # Shifting the canonical scene by +z moves the posed scene away from the camera on +z.
    _, depth, _ = render(shift)
    (grad_shift,) = torch.autograd.grad(depth[0, 4, 0], shift)
    assert grad_shift[2] > 0.5


def test_density_noise_is_seeded_and_per_call_overrides():
    origins, directions = frontal_rays(focal=3.0, resolution=4)
    renderer = make_renderer()
    planes = position_trigrid(2.0)
    decode = sphere_decoder()
    clean = renderer(planes, decode, origins, directions, deterministic=True)
    noisy = [
        renderer(
            planes,
            uniform_decoder(-3.0),
            origins,
            directions,
            density_noise=5.0,
            deterministic=True,
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(noisy[0], noisy[1])
    assert noisy[0][2].max() > 1e-3  # -3 alone is nearly transparent; the noise adds opacity
    calls = []

    def counting_decoder(features):
        calls.append(features.shape[1])
        return decode(features)

    overridden = renderer(
        planes,
        counting_decoder,
        origins,
        directions,
        depth_resolution=10,
        depth_resolution_importance=0,
        ray_start=2.2,
        ray_end=3.2,
        deterministic=True,
    )
    assert calls == [16 * 10]
    assert overridden[1].min() >= 2.2 and overridden[1].max() <= 3.2
    assert clean[2].shape == overridden[2].shape


def test_sample_points_has_no_crop():
    renderer = make_renderer(box_warp=1.0)
    planes = linear_trigrid(torch.eye(3), torch.zeros(3), 1.0, 16, 16, 16).float()
    points = torch.tensor([[[0.45, 0.0, -0.45], [0.1, 0.2, 0.3]]])
    out = renderer.sample_points(planes, lambda f: {'sigma': f[..., :1] + 1, 'rgb': f}, points)
    torch.testing.assert_close(out['rgb'], points)
    torch.testing.assert_close(out['sigma'], points[..., :1] + 1)
