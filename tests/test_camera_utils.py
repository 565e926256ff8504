import math

import numpy as np
import pytest
import torch

from training.data import camera_utils as cu
from training.volumetric_rendering.ray_sampler import sample_rays_from_label

MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))


def test_focal_fov_exact_pinhole():
    # An image of half-width 0.5 seen at distance f subtends tan(fov/2) = 0.5 / f.
    for focal in (0.5, 1.0, cu.FOCAL):
        fov = cu.focal_to_fov(focal)
        assert math.tan(math.radians(fov) / 2) == pytest.approx(0.5 / focal, rel=1e-12)
        assert cu.fov_to_focal(fov) == pytest.approx(focal, rel=1e-12)
    assert cu.fov_to_focal(90.0) == pytest.approx(0.5, rel=1e-12)
    assert cu.focal_to_fov(cu.FOCAL) == pytest.approx(8.78, abs=0.01)


def test_intrinsics_from_focal():
    intrinsics = cu.intrinsics_from_focal(2.0)
    np.testing.assert_allclose(intrinsics.numpy(), [[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1]])


def test_look_at_is_a_right_handed_opencv_frame():
    origin = torch.tensor([[0.3, -0.2, 2.5], [-2.0, 1.0, 0.5]])
    target = torch.tensor([[0.0, 0.1, 0.0], [0.1, 0.0, -0.2]])
    cam2world = cu.look_at(origin, target)
    rotation = cam2world[:, :3, :3]
    np.testing.assert_allclose((rotation.transpose(1, 2) @ rotation).numpy(), np.eye(3)[None].repeat(2, 0), atol=1e-6)
    np.testing.assert_allclose(torch.linalg.det(rotation).numpy(), [1, 1], atol=1e-6)
    expected_forward = (target - origin) / (target - origin).norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(rotation[:, :, 2].numpy(), expected_forward.numpy(), atol=1e-6)
    # Camera x is horizontal and camera y points down (negative world-y component).
    np.testing.assert_allclose(rotation[:, 1, 0].numpy(), [0, 0], atol=1e-6)
    assert (rotation[:, 1, 1] < 0).all()
    np.testing.assert_allclose(cam2world[:, :3, 3].numpy(), origin.numpy())
    np.testing.assert_allclose(cam2world[:, 3].numpy(), [[0, 0, 0, 1]] * 2)


def test_frontal_camera_position_and_orientation():
    c = cu.frontal_camera(2)
    assert c.shape == (2, 25)
    cam2world, intrinsics = cu.split_label(c)
    np.testing.assert_allclose(cam2world[0, :3, 3].numpy(), [0, 0, cu.RADIUS], atol=1e-6)
    # Right = world +x (the subject's left appears on the image right), down = world -y.
    np.testing.assert_allclose(cam2world[0, :3, 0].numpy(), [1, 0, 0], atol=1e-6)
    forward = np.array(cu.PIVOT) - np.array([0, 0, cu.RADIUS])
    np.testing.assert_allclose(cam2world[0, :3, 2].numpy(), forward / np.linalg.norm(forward), atol=1e-6)
    np.testing.assert_allclose(intrinsics[1].numpy(), cu.intrinsics_from_focal(cu.FOCAL).numpy())


@pytest.mark.parametrize(
    'h, v, expected',
    [
        (0.0, math.pi / 2, (-1, 0, 0)),  # h = 0: camera on the -x side
        (math.pi, math.pi / 2, (1, 0, 0)),  # h = pi: +x side
        (-math.pi / 2, math.pi / 2, (0, 0, -1)),  # behind the head
        (math.pi / 2, math.pi / 4, (0, 0.5, math.sqrt(0.75))),  # v = pi/4: cos(phi) = 1 - 2v/pi = 0.5
    ],
)
def test_orbit_camera_positions(h, v, expected):
    cam2world = cu.orbit_camera(h, v, radius=2.0, pivot=(0, 0, 0))
    np.testing.assert_allclose(cam2world[0, :3, 3].numpy(), 2.0 * np.array(expected), atol=1e-5)


def test_orbit_camera_jitter_is_reproducible_and_batched():
    generator = torch.Generator().manual_seed(3)
    first = cu.orbit_camera(math.pi / 2, math.pi / 2, h_std=0.3, v_std=0.2, batch_size=5, generator=generator)
    generator.manual_seed(3)
    second = cu.orbit_camera(math.pi / 2, math.pi / 2, h_std=0.3, v_std=0.2, batch_size=5, generator=generator)
    assert first.shape == (5, 4, 4)
    torch.testing.assert_close(first, second)
    np.testing.assert_allclose(first[:, :3, 3].norm(dim=-1).numpy(), [cu.RADIUS] * 5, rtol=1e-6)
    assert first[:, 0, 3].std() > 0.1


def test_central_ray_passes_through_pivot():
    c = cu.random_cameras(6, pitch_std=0.3, generator=torch.Generator().manual_seed(0))
    # An odd resolution puts a pixel centre exactly at the principal point.
    origins, directions = sample_rays_from_label(c, 5)
    central_origin, central_direction = origins[:, 12], directions[:, 12]
    to_pivot = torch.tensor(cu.PIVOT) - central_origin
    distance_to_line = torch.linalg.cross(to_pivot, central_direction, dim=-1).norm(dim=-1)
    np.testing.assert_allclose(distance_to_line.numpy(), 0, atol=1e-5)
    assert ((to_pivot * central_direction).sum(-1) > 0).all()


def test_label_round_trip():
    cam2world = cu.orbit_camera(torch.tensor([0.1, 1.0, 2.0]), 1.4)
    c = cu.camera_label(cam2world, focal=3.0)
    assert c.shape == (3, 25)
    np.testing.assert_array_equal(c[0, :16].numpy(), cam2world[0].reshape(-1).numpy())
    assert c[0, 3] == cam2world[0, 0, 3] and c[0, 11] == cam2world[0, 2, 3]
    back, intrinsics = cu.split_label(c)
    torch.testing.assert_close(back, cam2world)
    torch.testing.assert_close(intrinsics, cu.intrinsics_from_focal(3.0).expand(3, 3, 3))


def test_flip_camera_is_mirror_conjugation_and_involution():
    c = cu.random_cameras(8, generator=torch.Generator().manual_seed(1))
    flipped = cu.flip_camera(c)
    cam2world, intrinsics = cu.split_label(c)
    flipped_cam2world, flipped_intrinsics = cu.split_label(flipped)
    torch.testing.assert_close(flipped_cam2world, MIRROR @ cam2world @ MIRROR)
    torch.testing.assert_close(flipped_intrinsics, intrinsics)
    torch.testing.assert_close(cu.flip_camera(flipped), c)
    expected = c.clone()
    expected[:, [1, 2, 3, 4, 8]] *= -1
    torch.testing.assert_close(flipped, expected)


def test_flipped_camera_is_the_mirrored_camera():
    # The x-mirror of a look-at camera is the look-at camera from the mirrored position.
    origin = torch.tensor([[0.9, 0.4, 2.4]])
    target = torch.tensor([[0.05, 0.1, -0.1]])
    mirror = torch.tensor([-1.0, 1.0, 1.0])
    flipped = cu.flip_camera(cu.camera_label(cu.look_at(origin, target)))
    torch.testing.assert_close(flipped, cu.camera_label(cu.look_at(origin * mirror, target * mirror)))


def test_flip_pose():
    pose = torch.arange(1.0, 13.0).reshape(2, 6)
    flipped = cu.flip_pose(pose)
    np.testing.assert_array_equal(flipped[0].numpy(), [1, -2, -3, 4, -5, -6])
    torch.testing.assert_close(cu.flip_pose(flipped), pose)


def test_flip_pose_matches_mirrored_rotation():
    # Mirroring a rotation: R' = S R S with S = diag(-1, 1, 1) (3-D part of the camera mirror).
    def rotation(axis_angle):
        angle = np.linalg.norm(axis_angle)
        k = axis_angle / angle
        cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross

    pose = torch.tensor([[0.3, -0.5, 0.2, -0.1, 0.4, 0.6]], dtype=torch.float64)
    flipped = cu.flip_pose(pose)[0].numpy()
    mirror = np.diag([-1.0, 1.0, 1.0])
    for joint in range(2):
        original = rotation(pose[0, 3 * joint : 3 * joint + 3].numpy())
        np.testing.assert_allclose(rotation(flipped[3 * joint : 3 * joint + 3]), mirror @ original @ mirror, atol=1e-12)


def test_yaw_and_side():
    yaws = torch.tensor([0.0, 0.5, -0.5, 2.5, -2.5, 1.5])
    c = cu.camera_label(cu.orbit_camera(math.pi / 2 + yaws, math.pi / 2, pivot=(0, 0, 0)))
    torch.testing.assert_close(cu.camera_yaw(c), yaws, atol=1e-5, rtol=0)
    torch.testing.assert_close(cu.camera_yaw(cu.flip_camera(c)), -yaws, atol=1e-5, rtol=0)
    # Positive yaw is toward +x, the subject's left.
    assert cu.is_left(c[1:]).tolist() == [True, False, True, False, True]
    assert (cu.is_left(cu.flip_camera(c[1:])) != cu.is_left(c[1:])).all()
    assert cu.is_left(c).dtype == torch.bool


def test_random_cameras_cover_full_yaw_range():
    c = cu.random_cameras(2000, generator=torch.Generator().manual_seed(0))
    yaw = cu.camera_yaw(c)
    assert yaw.min() < -3.0 and yaw.max() > 3.0
    assert 0.4 < cu.is_left(c).float().mean() < 0.6
    narrow = cu.random_cameras(100, yaw_range=(-0.2, 0.3), pitch_std=0.0, generator=torch.Generator().manual_seed(0))
    assert cu.camera_yaw(narrow).min() >= -0.2 - 1e-5 and cu.camera_yaw(narrow).max() <= 0.3 + 1e-5
    np.testing.assert_allclose(narrow[:, 7].numpy(), 0, atol=1e-5)


def test_trajectories():
    orbit = cu.orbit_trajectory(8)
    assert orbit.shape == (8, 25)
    yaw, expected = cu.camera_yaw(orbit), torch.arange(8) * 2 * math.pi / 8
    torch.testing.assert_close(torch.cos(yaw), torch.cos(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sin(yaw), torch.sin(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(orbit[:1], cu.frontal_camera(1))
    wobble = cu.wobble_trajectory(20)
    yaw = cu.camera_yaw(wobble)
    assert yaw.abs().max() == pytest.approx(0.35, abs=0.02)
    # Camera heights follow r * (1 - 2v/pi) with v = pi/2 - 0.05 + 0.25 cos(2 pi t / T).
    v = math.pi / 2 - 0.05 + 0.25 * torch.cos(2 * math.pi * torch.arange(20) / 20)
    torch.testing.assert_close(wobble[:, 7], cu.RADIUS * (1 - 2 * v / math.pi), atol=1e-5, rtol=0)
