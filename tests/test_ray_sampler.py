import numpy as np
import pytest
import torch

from training.data import camera_utils as cu
from training.volumetric_rendering.ray_sampler import sample_rays, sample_rays_from_label


def project(points: np.ndarray, cam2world: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection written independently of the sampler: x_img = K [R|t]^-1 X.

    points [B, N, 3] -> normalized image points [B, N, 2], camera depths [B, N]
    """
    world2cam = np.linalg.inv(cam2world)
    homogeneous = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)
    camera_points = np.einsum('bij,bnj->bni', world2cam, homogeneous)[..., :3]
    projected = np.einsum('bij,bnj->bni', intrinsics, camera_points)
    return projected[..., :2] / projected[..., 2:], camera_points[..., 2]


@pytest.mark.parametrize('skew', [0.0, 0.7])
def test_pixel_rays_project_back_to_their_pixel_centres(skew):
    resolution = 7
    cam2world = cu.orbit_camera(torch.tensor([0.4, 2.0]), torch.tensor([1.3, 1.9]), pivot=(0.1, 0.0, -0.05))
    intrinsics = torch.tensor([[1.7, skew, 0.45], [0.0, 1.9, 0.55], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    origins, directions = sample_rays(cam2world, intrinsics, resolution)
    assert origins.shape == directions.shape == (2, resolution**2, 3)
    np.testing.assert_allclose(directions.norm(dim=-1).numpy(), 1, atol=1e-6)
    np.testing.assert_allclose(origins.numpy(), cam2world[:, None, :3, 3].expand(2, resolution**2, 3).numpy())

    points = (origins + 2.3 * directions).double().numpy()
    pixel, depth = project(points, cam2world.double().numpy(), intrinsics.double().numpy())
    # Ray m = i*r + j goes through the centre of row i, column j.
    rows, columns = np.meshgrid(np.arange(resolution), np.arange(resolution), indexing='ij')
    expected = np.stack([(columns.ravel() + 0.5) / resolution, (rows.ravel() + 0.5) / resolution], axis=-1)
    np.testing.assert_allclose(pixel, np.broadcast_to(expected, pixel.shape), atol=1e-5)
    assert (depth > 0).all()


def test_known_world_point_lands_on_its_pixel():
    # Put a world point on a pixel centre by construction, then find the ray of that pixel.
    resolution = 16
    c = cu.random_cameras(3, pitch_std=0.2, generator=torch.Generator().manual_seed(2))
    cam2world, intrinsics = cu.split_label(c.double())
    world_point = np.array([0.08, -0.05, 0.11])
    pixel, _ = project(np.broadcast_to(world_point, (3, 1, 3)).copy(), cam2world.numpy(), intrinsics.numpy())
    origins, directions = sample_rays(cam2world, intrinsics, resolution)
    for b in range(3):
        column, row = np.floor(pixel[b, 0] * resolution).astype(int)
        ray = row * resolution + column
        to_point = torch.from_numpy(world_point) - origins[b, ray]
        # The point lies within half a pixel (an angle of 0.5/(f*r)) of the pixel's central ray.
        angle = torch.arccos((to_point / to_point.norm() * directions[b, ray]).sum().clamp(max=1))
        assert angle <= 0.5 * np.sqrt(2) / (cu.FOCAL * resolution) + 1e-9


def test_label_wrapper_and_dtype():
    c = cu.random_cameras(2, generator=torch.Generator().manual_seed(0)).double()
    origins, directions = sample_rays_from_label(c, 4)
    reference = sample_rays(*cu.split_label(c), 4)
    torch.testing.assert_close(origins, reference[0])
    torch.testing.assert_close(directions, reference[1])
    assert directions.dtype == torch.float64
