"""Tests for training/body/lbs.py: the project's SMPL skinning against smplx and scipy."""

import numpy as np
import pytest
import smplx
import torch
from scipy.spatial.transform import Rotation
from smplx.utils import Struct

from training.body import lbs

NUM_JOINTS = 24


def synthetic_smpl_arrays(num_vertices: int = 80, num_betas: int = 10, seed: int = 0) -> dict:
    """Random arrays with the SMPL file layout: a small body with SMPL's 24-joint tree.

    Vertices are spread around joints placed along a rough skeleton; each vertex is skinned
    to a few joints with weights summing to one, as in SMPL.
    """
    rng = np.random.default_rng(seed)
    joints = rng.normal(scale=0.3, size=(NUM_JOINTS, 3))
    owner = np.arange(num_vertices) % NUM_JOINTS
    v_template = joints[owner] + rng.normal(scale=0.05, size=(num_vertices, 3))

    weights = np.zeros((num_vertices, NUM_JOINTS))
    for vertex in range(num_vertices):
        helpers = rng.choice(NUM_JOINTS, size=2, replace=False)
        weights[vertex, owner[vertex]] += 1.0
        weights[vertex, helpers] += rng.uniform(0.0, 0.6, size=2)
    weights /= weights.sum(axis=1, keepdims=True)

    J_regressor = np.zeros((NUM_JOINTS, num_vertices))
    for joint in range(NUM_JOINTS):
        support = rng.choice(num_vertices, size=4, replace=False)
        J_regressor[joint, support] = rng.uniform(0.1, 1.0, size=4)
    J_regressor /= J_regressor.sum(axis=1, keepdims=True)

    faces = np.stack([rng.choice(num_vertices, size=3, replace=False) for _ in range(2 * num_vertices)])
    kintree_table = np.stack([np.array(lbs.SMPL_PARENTS), np.arange(NUM_JOINTS)]).astype(np.int64)
    return dict(
        v_template=v_template,
        shapedirs=rng.normal(scale=0.01, size=(num_vertices, 3, num_betas)),
        posedirs=rng.normal(scale=0.01, size=(num_vertices, 3, 9 * (NUM_JOINTS - 1))),
        J_regressor=J_regressor,
        weights=weights,
        kintree_table=kintree_table,
        f=faces.astype(np.int64),
    )


def smplx_oracle(arrays: dict) -> smplx.SMPL:
    """smplx's SMPL layer on the same arrays, in float64 (zero pose blend shapes if absent)."""
    arrays = dict(arrays)
    num_vertices = arrays['v_template'].shape[0]
    if 'posedirs' not in arrays:
        arrays['posedirs'] = np.zeros((num_vertices, 3, 9 * (NUM_JOINTS - 1)))
    return smplx.SMPL(
        model_path='',
        data_struct=Struct(**arrays),
        dtype=torch.float64,
        num_betas=arrays['shapedirs'].shape[-1],
        vertex_ids=dict(nose=0, reye=1, leye=2, rear=3, lear=4),
        use_hands=False,
        use_feet_keypoints=False,
    )


def run_oracle(model: smplx.SMPL, betas: torch.Tensor, full_pose: torch.Tensor):
    """full_pose [B, 24, 3] -> smplx vertices [B, V, 3], joints [B, 24, 3]."""
    batch_size = full_pose.shape[0]
    output = model(
        betas=betas,
        global_orient=full_pose[:, 0],
        body_pose=full_pose[:, 1:].reshape(batch_size, -1),
        transl=torch.zeros(batch_size, 3, dtype=torch.float64),
    )
    return output.vertices, output.joints[:, :NUM_JOINTS]


def as_tensors(arrays: dict) -> dict:
    return {
        key: torch.as_tensor(np.asarray(value, dtype=np.float64))
        for key, value in arrays.items()
        if key in ('v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights')
    }


def test_rodrigues_matches_scipy():
    generator = torch.Generator().manual_seed(1)
    directions = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    angles = torch.cat([torch.zeros(1), torch.logspace(-9, -2, 15), torch.linspace(0.01, 3.1, 48)]).double()
    rotvecs = directions * angles[:, None]
    expected = Rotation.from_rotvec(rotvecs.numpy()).as_matrix()
    got = lbs.batch_rodrigues(rotvecs)
    assert got.shape == (64, 3, 3)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-14, rtol=0)


def test_rodrigues_float32_is_orthonormal():
    rotvecs = torch.randn(100, 3, generator=torch.Generator().manual_seed(2)) * torch.logspace(-6, 0.5, 100)[:, None]
    rot = lbs.batch_rodrigues(rotvecs)
    eye = torch.eye(3).expand(100, 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye, atol=1e-6, rtol=0)


def test_rodrigues_zero_is_identity_with_finite_gradient():
    rotvecs = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    rot = lbs.batch_rodrigues(rotvecs)
    assert torch.equal(rot.detach(), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    # d R / d r at r = 0 is the cross-product generator: d R[1, 2] / d r_x = -1.
    (grad,) = torch.autograd.grad(rot[0, 1, 2], rotvecs)
    np.testing.assert_allclose(grad[0].numpy(), [-1.0, 0.0, 0.0], atol=1e-12)


def test_rodrigues_gradcheck_near_and_away_from_zero():
    rotvecs = torch.tensor(
        [[1e-5, -2e-5, 3e-6], [0.3, -1.2, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(lbs.batch_rodrigues, (rotvecs,))


def reference_forward_kinematics(rot_mats, joints, parents):
    """Textbook FK: world transforms G_j = G_parent [R_j | J_j - J_parent], then remove the rest pose."""
    batch_size, num_joints = rot_mats.shape[:2]
    world = []
    for joint in range(num_joints):
        local = torch.eye(4, dtype=rot_mats.dtype).repeat(batch_size, 1, 1)
        local[:, :3, :3] = rot_mats[:, joint]
        offset = joints[:, joint] - (joints[:, parents[joint]] if joint > 0 else 0)
        local[:, :3, 3] = offset
        world.append(local if joint == 0 else world[parents[joint]] @ local)
    world = torch.stack(world, dim=1)
    posed_joints = world[..., :3, 3].clone()
    relative = world.clone()
    relative[..., :3, 3] -= (world[..., :3, :3] @ joints[..., None])[..., 0]
    return posed_joints, relative


def test_forward_kinematics_matches_textbook_formulation():
    generator = torch.Generator().manual_seed(3)
    rot_mats = lbs.batch_rodrigues(torch.randn(2 * NUM_JOINTS, 3, generator=generator, dtype=torch.float64))
    rot_mats = rot_mats.view(2, NUM_JOINTS, 3, 3)
    joints = torch.randn(2, NUM_JOINTS, 3, generator=generator, dtype=torch.float64)
    posed, relative = lbs.forward_kinematics(rot_mats, joints, lbs.SMPL_PARENTS)
    expected_posed, expected_relative = reference_forward_kinematics(rot_mats, joints, lbs.SMPL_PARENTS)
    assert posed.shape == (2, NUM_JOINTS, 3) and relative.shape == (2, NUM_JOINTS, 4, 4)
    torch.testing.assert_close(posed, expected_posed, atol=1e-12, rtol=0)
    torch.testing.assert_close(relative, expected_relative, atol=1e-12, rtol=0)


def test_forward_kinematics_identity_is_exact():
    joints = torch.randn(1, NUM_JOINTS, 3)
    rot_mats = torch.eye(3).expand(1, NUM_JOINTS, 3, 3)
    posed, relative = lbs.forward_kinematics(rot_mats, joints, lbs.SMPL_PARENTS)
    assert torch.equal(posed, joints)
    assert torch.equal(relative, torch.eye(4).expand(1, NUM_JOINTS, 4, 4))


def test_forward_kinematics_rejects_unordered_parents():
    parents = list(lbs.SMPL_PARENTS)
    parents[3] = 5
    with pytest.raises(ValueError, match='topologically ordered'):
        lbs.forward_kinematics(torch.eye(3).expand(1, NUM_JOINTS, 3, 3), torch.zeros(1, NUM_JOINTS, 3), parents)


@pytest.mark.parametrize('posedirs_layout', ['smpl', 'matrix'])
def test_skin_matches_smplx_on_synthetic_model(posedirs_layout):
    arrays = synthetic_smpl_arrays()
    tensors = as_tensors(arrays)
    if posedirs_layout == 'matrix':
        tensors['posedirs'] = tensors['posedirs'].reshape(-1, 207).t().contiguous()
    generator = torch.Generator().manual_seed(4)
    betas = torch.randn(3, 10, generator=generator, dtype=torch.float64)
    full_pose = 0.6 * torch.randn(3, NUM_JOINTS, 3, generator=generator, dtype=torch.float64)

    vertices, joints = lbs.skin(
        betas,
        full_pose,
        tensors['v_template'],
        tensors['shapedirs'],
        tensors['posedirs'],
        tensors['J_regressor'],
        tensors['weights'],
        lbs.SMPL_PARENTS,
    )
    expected_vertices, expected_joints = run_oracle(smplx_oracle(arrays), betas, full_pose)
    assert vertices.shape == expected_vertices.shape == (3, 80, 3)
    torch.testing.assert_close(vertices, expected_vertices, atol=1e-6, rtol=0)
    torch.testing.assert_close(joints, expected_joints, atol=1e-6, rtol=0)


def test_skin_without_pose_blend_shapes_matches_smplx_with_zero_posedirs():
    arrays = synthetic_smpl_arrays(seed=5)
    del arrays['posedirs']
    tensors = as_tensors(arrays)
    generator = torch.Generator().manual_seed(6)
    betas = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    full_pose = 0.6 * torch.randn(2, NUM_JOINTS, 3, generator=generator, dtype=torch.float64)
    vertices, _ = lbs.skin(
        betas,
        full_pose,
        tensors['v_template'],
        tensors['shapedirs'],
        None,
        tensors['J_regressor'],
        tensors['weights'],
        lbs.SMPL_PARENTS,
    )
    padded_betas = torch.cat([betas, torch.zeros(2, 6, dtype=torch.float64)], dim=1)
    expected, _ = run_oracle(smplx_oracle(arrays), padded_betas, full_pose)
    torch.testing.assert_close(vertices, expected, atol=1e-6, rtol=0)


def test_skin_rejects_too_many_betas():
    tensors = as_tensors(synthetic_smpl_arrays())
    with pytest.raises(ValueError, match='11 betas'):
        lbs.shape_blend(torch.zeros(1, 11, dtype=torch.float64), tensors['v_template'], tensors['shapedirs'])
