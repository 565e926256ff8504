"""SMPL linear blend skinning on plain SMPL-format arrays.

The SMPL formula (Loper et al. 2015): shape blend shapes on the template, joints regressed
from the shaped template, pose blend shapes driven by (R - I) of every non-root joint,
forward kinematics along the kinematic tree, then each vertex moved by the weighted sum of
its joints' rigid transforms. Any body model stored in SMPL format can be posed with it.

Array conventions (J joints, V vertices, K shape components):
    v_template [V, 3], shapedirs [V, 3, K], posedirs [(J-1)*9, V*3] (or SMPL's own
    [V, 3, (J-1)*9]), J_regressor [J, V], weights [V, J] (rows sum to one),
    parents: J ints, parents[0] = -1 and parents[j] < j.
"""

from collections.abc import Sequence

import torch

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
NECK_JOINT = 12
HEAD_JOINT = 15

# Below this squared angle the Rodrigues coefficients switch to their Taylor series: the
# closed forms divide by the angle, and the series are exact to float64 precision there.
_SMALL_ANGLE_SQ = 1e-6


def batch_rodrigues(rotvecs: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from axis-angle vectors (the vector's norm is the angle in radians).

    rotvecs [N, 3] -> [N, 3, 3]
    R = I + a K + b K^2, K the cross-product matrix of the vector, a = sin(t)/t,
    b = (1 - cos t)/t^2. Exact identity for a zero vector, and differentiable there.
    """
    angle_sq = (rotvecs * rotvecs).sum(dim=-1)
    small = angle_sq < _SMALL_ANGLE_SQ
    # The closed forms are evaluated on a harmless angle where the series is used, so that
    # neither branch produces NaN gradients through torch.where.
    safe_angle = torch.where(small, torch.ones_like(angle_sq), angle_sq).sqrt()
    sin_coeff = torch.where(small, 1 - angle_sq / 6 + angle_sq * angle_sq / 120, torch.sin(safe_angle) / safe_angle)
    # 2 sin^2(t/2) / t^2 instead of (1 - cos t) / t^2: no cancellation in float32.
    half_sin = torch.sin(safe_angle / 2) / safe_angle
    cos_coeff = torch.where(small, 0.5 - angle_sq / 24 + angle_sq * angle_sq / 720, 2 * half_sin * half_sin)

    x, y, z = rotvecs.unbind(dim=-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rotvecs.dtype, device=rotvecs.device)
    return eye + sin_coeff[:, None, None] * cross + cos_coeff[:, None, None] * (cross @ cross)


def forward_kinematics(
    rot_mats: torch.Tensor, joints: torch.Tensor, parents: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose a kinematic tree given each joint's rotation relative to its parent.

    rot_mats [B, J, 3, 3], joints [B, J, 3] (rest positions) -> posed joints [B, J, 3],
    relative transforms [B, J, 4, 4].
    The relative transform of joint j maps a rest-pose point rigidly attached to joint j to
    its posed position; the root rotates about its own rest position (no translation).
    """
    if len(parents) != rot_mats.shape[1] or parents[0] != -1:
        raise ValueError(f'parents must list {rot_mats.shape[1]} joints with parents[0] = -1, got {list(parents)}')
    batch_size, num_joints = rot_mats.shape[:2]
    bottom_row = rot_mats.new_tensor([0, 0, 0, 1]).expand(batch_size, num_joints, 1, 4)
    # A rotation R about the rest joint position c is x -> R x + (c - R c). Written this
    # way, the identity rotation gives exactly the identity transform (no roundoff), so a
    # zero pose leaves every vertex bit-for-bit in place.
    pivot_offsets = joints - (rot_mats @ joints[..., None])[..., 0]
    local = torch.cat([torch.cat([rot_mats, pivot_offsets[..., None]], dim=-1), bottom_row], dim=-2)

    transforms = [local[:, 0]]
    for joint in range(1, num_joints):
        parent = parents[joint]
        if not 0 <= parent < joint:
            raise ValueError(
                f'parents must be topologically ordered (0 <= parents[j] < j), got parents[{joint}] = {parent}'
            )
        transforms.append(transforms[parent] @ local[:, joint])
    relative = torch.stack(transforms, dim=1)
    posed_joints = (relative[..., :3, :3] @ joints[..., None])[..., 0] + relative[..., :3, 3]
    return posed_joints, relative


def shape_blend(betas: torch.Tensor, v_template: torch.Tensor, shapedirs: torch.Tensor) -> torch.Tensor:
    """Template plus shape blend shapes.

    betas [B, K'], v_template [V, 3], shapedirs [V, 3, K] with K' <= K -> [B, V, 3]
    Only the first K' components are used, as for SMPL's 300-component files.
    """
    num_betas = betas.shape[-1]
    if num_betas > shapedirs.shape[-1]:
        raise ValueError(f'{num_betas} betas given, the model has {shapedirs.shape[-1]} shape components')
    return v_template + torch.einsum('bk,vck->bvc', betas, shapedirs[..., :num_betas])


def pose_feature(rot_mats: torch.Tensor) -> torch.Tensor:
    """The input of the pose blend shapes: (R - I) of every non-root joint, flattened.

    rot_mats [B, J, 3, 3] -> [B, (J-1)*9]
    """
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[:, 1:] - eye).flatten(start_dim=1)


def as_pose_basis(posedirs: torch.Tensor) -> torch.Tensor:
    """Pose blend shapes as a matrix acting on `pose_feature`.

    posedirs [V, 3, P] (SMPL file layout) or [P, V*3] -> [P, V*3]
    """
    if posedirs.dim() == 3:
        return posedirs.reshape(-1, posedirs.shape[-1]).t()
    return posedirs


def skin(
    betas: torch.Tensor,
    full_pose: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor | None,
    J_regressor: torch.Tensor,
    weights: torch.Tensor,
    parents: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose and shape an SMPL-format body: the complete SMPL forward.

    betas [B, K'], full_pose [B, J, 3] axis-angle (joint 0 = global orientation),
    arrays as in the module docstring; posedirs may be None for a model without pose
    blend shapes -> vertices [B, V, 3], posed joints [B, J, 3]
    """
    batch_size, num_joints = full_pose.shape[:2]
    shaped = shape_blend(betas, v_template, shapedirs).expand(batch_size, -1, -1)
    rest_joints = torch.einsum('jv,bvc->bjc', J_regressor, shaped)
    rot_mats = batch_rodrigues(full_pose.reshape(-1, 3)).view(batch_size, num_joints, 3, 3)

    if posedirs is not None:
        offsets = pose_feature(rot_mats) @ as_pose_basis(posedirs)
        shaped = shaped + offsets.view(batch_size, -1, 3)

    posed_joints, relative = forward_kinematics(rot_mats, rest_joints, parents)
    blended = torch.einsum('vj,bjmn->bvmn', weights, relative[:, :, :3, :])
    vertices = (blended[..., :3] @ shaped[..., None])[..., 0] + blended[..., 3]
    return vertices, posed_joints
