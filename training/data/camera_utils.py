"""Cameras: the 25-value camera label, look-at and orbit construction, mirroring and samplers.

Conventions (world = body-model frame, metres, y up, the subject faces +z, +x is the subject's left):
- cam2world [4, 4] is OpenCV style: its columns 0/1/2 are the camera's +x (image right),
  +y (image down) and +z (viewing direction) in world coordinates; column 3 is the position.
- A camera label c [25] = cam2world flattened row-major (16) + normalized intrinsics flattened
  row-major (9), K = [[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]; at resolution r the pixel focal is
  f*r and the principal point r/2.
- Orbit angles follow the EG3D look-at sampler: horizontal angle h (h = pi/2 is the frontal
  camera at +z, h = 0 the camera on the -x side) and vertical angle v (v = pi/2 is level,
  smaller v is higher); the camera sits on a sphere around the world origin and looks at a pivot.
- Samplers and trajectories return labels [B, 25].
"""

import math

import torch

FOCAL = 6.5104166  # normalized focal length used by the dataset and all scripts (5000/1024/0.75)
RADIUS = 2.7  # camera distance from the world origin (the neck joint), metres
PIVOT = (0.0, 0.0649, 0.0)  # look-at point, metres


def intrinsics_from_focal(focal: float = FOCAL, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalized pinhole intrinsics with the principal point at the image centre.

    -> [3, 3]
    """
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], device=device, dtype=dtype)


def fov_to_focal(fov_degrees: float) -> float:
    """Normalized focal length of a pinhole camera with full field of view `fov_degrees`.

    Exact relation f = 0.5 / tan(fov / 2). EG3D's `FOV_to_intrinsics` divides by an extra
    sqrt(2) (a legacy factor), so the published 12.447863 degrees there means f ~= 6.485; this
    project passes focal lengths directly (FOCAL, i.e. a true field of view of ~8.78 degrees).
    """
    return 0.5 / math.tan(math.radians(fov_degrees) / 2)


def focal_to_fov(focal: float) -> float:
    """Full field of view in degrees of a normalized focal length (inverse of `fov_to_focal`)."""
    return math.degrees(2 * math.atan(0.5 / focal))


def look_at(origin: torch.Tensor, target: torch.Tensor, up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """OpenCV-style cam2world matrices of cameras at `origin` looking at `target`.

    origin [B, 3], target [B, 3] -> cam2world [B, 4, 4]
    The camera's x axis is horizontal (perpendicular to `up`) and its y axis points world-down,
    so an upright subject appears upright in the image.
    """
    forward = torch.nn.functional.normalize(target - origin, dim=-1)
    world_up = torch.as_tensor(up, dtype=origin.dtype, device=origin.device).expand_as(forward)
    right = -torch.nn.functional.normalize(torch.linalg.cross(world_up, forward, dim=-1), dim=-1)
    down = torch.nn.functional.normalize(torch.linalg.cross(forward, right, dim=-1), dim=-1)
    cam2world = torch.eye(4, dtype=origin.dtype, device=origin.device).repeat(origin.shape[0], 1, 1)
    cam2world[:, :3, :3] = torch.stack([right, down, forward], dim=-1)
    cam2world[:, :3, 3] = origin
    return cam2world


def orbit_camera(
    h,
    v,
    radius: float = RADIUS,
    pivot=PIVOT,
    h_std: float = 0.0,
    v_std: float = 0.0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    device=None,
) -> torch.Tensor:
    """Cameras on a sphere of `radius` around the world origin, looking at `pivot`.

    h (horizontal), v (vertical): floats or tensors [B], radians; optional Gaussian jitter with
    standard deviations h_std, v_std -> cam2world [B, 4, 4] (float32)
    phi = arccos(1 - 2 v / pi) with v clamped to [1e-5, pi - 1e-5]; the position is
    (r sin(phi) cos(pi - h), r cos(phi), r sin(phi) sin(pi - h)).
    """
    horizontal = torch.as_tensor(h, dtype=torch.float32, device=device).reshape(-1)
    vertical = torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1)
    if batch_size is None:
        batch_size = max(horizontal.shape[0], vertical.shape[0])
    device = horizontal.device
    horizontal = horizontal.expand(batch_size)
    vertical = vertical.expand(batch_size)
    if h_std > 0:
        horizontal = horizontal + h_std * torch.randn(batch_size, generator=generator, device=device)
    if v_std > 0:
        vertical = vertical + v_std * torch.randn(batch_size, generator=generator, device=device)
    vertical = vertical.clamp(1e-5, math.pi - 1e-5)
    phi = torch.arccos(1 - 2 * vertical / math.pi)
    origin = radius * torch.stack(
        [
            torch.sin(phi) * torch.cos(math.pi - horizontal),
            torch.cos(phi),
            torch.sin(phi) * torch.sin(math.pi - horizontal),
        ],
        dim=-1,
    )
    target = torch.as_tensor(pivot, dtype=torch.float32, device=device).expand_as(origin)
    return look_at(origin, target)


def camera_label(cam2world: torch.Tensor, focal: float = FOCAL) -> torch.Tensor:
    """Pack cam2world matrices and a shared normalized focal length into camera labels.

    cam2world [B, 4, 4] -> c [B, 25]
    """
    intrinsics = intrinsics_from_focal(focal, device=cam2world.device, dtype=cam2world.dtype)
    return torch.cat([cam2world.reshape(-1, 16), intrinsics.reshape(1, 9).expand(cam2world.shape[0], 9)], dim=1)


def split_label(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack camera labels.

    c [B, 25] -> cam2world [B, 4, 4], intrinsics [B, 3, 3]
    """
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3)


# Flattened cam2world entries (0,1), (0,2), (0,3), (1,0), (2,0): conjugating by
# S = diag(-1, 1, 1, 1) negates exactly the entries with one index equal to 0.
_MIRRORED_CAMERA_ENTRIES = [1, 2, 3, 4, 8]
# y and z components of the neck and head axis-angles (pseudo-vectors under an x mirror).
_MIRRORED_POSE_ENTRIES = [1, 2, 4, 5]


def flip_camera(c: torch.Tensor) -> torch.Tensor:
    """Camera labels of the world mirrored in x (x -> -x), equal to S * cam2world * S with
    S = diag(-1, 1, 1, 1); intrinsics unchanged. The mirrored camera sees the width-flipped image.

    c [B, 25] -> [B, 25]
    """
    sign = torch.ones(c.shape[1], dtype=c.dtype, device=c.device)
    sign[_MIRRORED_CAMERA_ENTRIES] = -1
    return c * sign


def flip_pose(pose: torch.Tensor) -> torch.Tensor:
    """Body poses (neck and head axis-angles) of the world mirrored in x.

    pose [B, 6] -> [B, 6]
    """
    sign = torch.ones(pose.shape[1], dtype=pose.dtype, device=pose.device)
    sign[_MIRRORED_POSE_ENTRIES] = -1
    return pose * sign


def is_left(c: torch.Tensor) -> torch.Tensor:
    """Whether each camera is on the subject's left side (camera x >= 0).

    c [B, 25] -> [B] bool
    Tested as -pi/2 <= atan2(z, x) <= pi/2 in float32; a frontal camera whose x is a rounding
    error away from 0 may land on either side.
    """
    angle = torch.atan2(c[:, 11].float(), c[:, 3].float())
    return (angle >= -math.pi / 2) & (angle <= math.pi / 2)


def camera_yaw(c: torch.Tensor) -> torch.Tensor:
    """Yaw of the camera position around the world y axis, in radians.

    c [B, 25] -> [B], in (-pi, pi]: 0 for a camera on +z (frontal), positive toward +x (the
    subject's left), +-pi behind the head. Mirroring the camera negates its yaw.
    """
    return torch.atan2(c[:, 3], c[:, 11])


VIEWS = {'back': -math.pi / 2, 'side': 0.0, 'front': math.pi / 2}  # named views: the orbit camera's horizontal angle


def frontal_camera(batch: int = 1, device=None, focal: float = FOCAL) -> torch.Tensor:
    """The average (frontal) conditioning camera: at (0, 0, RADIUS), looking at PIVOT.

    -> c [batch, 25]
    """
    return camera_label(orbit_camera(math.pi / 2, math.pi / 2, batch_size=batch, device=device), focal)


def random_cameras(
    batch: int,
    yaw_range=(-math.pi, math.pi),
    pitch_std: float = 0.15,
    radius: float = RADIUS,
    pivot=PIVOT,
    focal: float = FOCAL,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Cameras with uniform yaw (full 360 degrees by default) and Gaussian pitch.

    -> c [batch, 25]
    yaw as in `camera_yaw` (h = pi/2 + yaw); pitch is the offset of the orbit angle v from
    pi/2 (`orbit_camera`): v = pi/2 + N(0, pitch_std), positive below the pivot's level.
    """
    low, high = yaw_range
    yaw = low + (high - low) * torch.rand(batch, generator=generator, device=device)
    cam2world = orbit_camera(
        math.pi / 2 + yaw,
        math.pi / 2,
        radius,
        pivot,
        v_std=pitch_std,
        generator=generator,
        batch_size=batch,
        device=device,
    )
    return camera_label(cam2world, focal)


def orbit_trajectory(
    num_frames: int, radius: float = RADIUS, pivot=PIVOT, pitch: float = 0.0, focal: float = FOCAL, device=None
) -> torch.Tensor:
    """A full 360-degree orbit starting at the frontal view: h = pi/2 + 2 pi t / num_frames.

    -> c [num_frames, 25]
    `pitch` is the fixed offset of v from pi/2, as in `random_cameras` (0 = level orbit).
    """
    frames = torch.arange(num_frames, dtype=torch.float32, device=device)
    horizontal = math.pi / 2 + 2 * math.pi * frames / num_frames
    return camera_label(orbit_camera(horizontal, math.pi / 2 + pitch, radius, pivot, device=device), focal)


def wobble_trajectory(
    num_frames: int, radius: float = RADIUS, pivot=PIVOT, focal: float = FOCAL, device=None
) -> torch.Tensor:
    """The small-pose video path: one loop of h = pi/2 + 0.35 sin(2 pi t / T),
    v = pi/2 - 0.05 + 0.25 cos(2 pi t / T), T = num_frames.

    -> c [num_frames, 25]
    """
    phase = 2 * math.pi * torch.arange(num_frames, dtype=torch.float32, device=device) / num_frames
    horizontal = math.pi / 2 + 0.35 * torch.sin(phase)
    vertical = math.pi / 2 - 0.05 + 0.25 * torch.cos(phase)
    return camera_label(orbit_camera(horizontal, vertical, radius, pivot, device=device), focal)
