"""Tests for training/body/body_model.py: posing against smplx, frame, box faces, gradients."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tests.conftest import requires_cuda
from tests.test_lbs import run_oracle, smplx_oracle, synthetic_smpl_arrays
from training.body import lbs
from training.body.body_model import EMBEDDED_MODEL_PATH, BodyModel, load_npz


@pytest.fixture(scope='module')
def embedded_arrays():
    return load_npz(EMBEDDED_MODEL_PATH)


@pytest.fixture(scope='module')
def embedded_oracle(embedded_arrays):
    return smplx_oracle(embedded_arrays)


def random_pose(batch_size: int, seed: int, scale: float = 0.5) -> torch.Tensor:
    return scale * torch.randn(batch_size, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def smplx_neck_head(oracle, betas: np.ndarray, pose: torch.Tensor) -> torch.Tensor:
    """smplx vertices [B, V, 3] for neck/head poses [B, 6], every other joint at zero."""
    full_pose = torch.zeros(pose.shape[0], 24, 3, dtype=torch.float64)
    full_pose[:, lbs.NECK_JOINT] = pose[:, :3]
    full_pose[:, lbs.HEAD_JOINT] = pose[:, 3:]
    betas = torch.as_tensor(betas, dtype=torch.float64).expand(pose.shape[0], -1)
    return run_oracle(oracle, betas, full_pose)[0]


def test_embedded_npz_holds_the_documented_arrays(embedded_arrays):
    num_vertices = embedded_arrays['v_template'].shape[0]
    assert embedded_arrays['shapedirs'].shape == (num_vertices, 3, 10)
    assert embedded_arrays['J_regressor'].shape == (24, num_vertices)
    np.testing.assert_allclose(embedded_arrays['J_regressor'].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedded_arrays['weights'].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embedded_arrays['kintree_table'][0, 1:], lbs.SMPL_PARENTS[1:])
    assert 'posedirs' not in embedded_arrays
    assert embedded_arrays['ft'].shape == embedded_arrays['f'].shape
    assert embedded_arrays['face_part'].shape == (embedded_arrays['f'].shape[0],)
    assert list(embedded_arrays['keypoint_names']) == ['nose', 'reye', 'leye', 'rear', 'lear']
    # The face looks toward +z and its left side is +x: nose in front, left eye and ear at x > 0.
    keypoints = dict(
        zip(embedded_arrays['keypoint_names'], embedded_arrays['v_template'][embedded_arrays['keypoint_ids']])
    )
    assert keypoints['nose'][2] > keypoints['leye'][2] > keypoints['lear'][2]
    assert keypoints['leye'][0] > 0 > keypoints['reye'][0] and keypoints['lear'][0] > 0 > keypoints['rear'][0]


@pytest.mark.parametrize('dtype, tolerance', [(torch.float64, 1e-6), (torch.float32, 2e-6)])
def test_embedded_pose_matches_smplx(embedded_arrays, embedded_oracle, dtype, tolerance):
    betas = np.random.default_rng(7).normal(size=10)
    body = BodyModel(embedded_arrays, betas=betas).to(dtype)
    pose = random_pose(4, seed=8)
    posed = body.pose(pose.to(dtype))
    assert posed.shape == (4, embedded_arrays['v_template'].shape[0], 3) and posed.dtype == dtype
    expected = smplx_neck_head(embedded_oracle, betas, pose)
    torch.testing.assert_close(posed.double() + body.align_point.double(), expected, atol=tolerance, rtol=0)


def test_synthetic_pose_with_pose_blend_shapes_matches_smplx():
    arrays = synthetic_smpl_arrays(seed=9)
    betas = np.random.default_rng(10).normal(size=6)
    body = BodyModel(arrays, betas=betas).double()
    pose = random_pose(3, seed=11, scale=0.8)
    expected = smplx_neck_head(smplx_oracle(arrays), np.concatenate([betas, np.zeros(4)]), pose)
    torch.testing.assert_close(body.pose(pose) + body.align_point, expected, atol=1e-6, rtol=0)


def test_canonical_frame_is_centred_on_the_zero_shape_neck(embedded_arrays):
    body = BodyModel(embedded_arrays)
    v_template = embedded_arrays['v_template'].astype(np.float64)
    J_regressor = embedded_arrays['J_regressor'].astype(np.float64)
    align = J_regressor[lbs.NECK_JOINT] @ v_template
    np.testing.assert_allclose(body.align_point.numpy(), align[None], atol=1e-7)
    np.testing.assert_allclose(body.joints[0, lbs.NECK_JOINT].numpy(), 0.0, atol=1e-7)
    np.testing.assert_allclose(body.canonical_vertices[0].numpy(), v_template - align, atol=1e-7)
    assert body.canonical_vertices.shape == (1, v_template.shape[0], 3) and body.joints.shape == (1, 24, 3)

    betas = np.array([1.5, -0.5, 0.3])
    shaped = BodyModel(embedded_arrays, betas=betas)
    expected = v_template + embedded_arrays['shapedirs'][..., :3].astype(np.float64) @ betas - align
    np.testing.assert_allclose(shaped.canonical_vertices[0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(shaped.joints[0].numpy(), J_regressor @ (expected + align) - align, atol=1e-6)
    # The align point stays the zero-shape neck, whatever the shape.
    torch.testing.assert_close(shaped.align_point, body.align_point)


def test_box_faces_are_those_strictly_inside_the_box(embedded_arrays):
    body = BodyModel(embedded_arrays, box_warp=0.4)
    canonical = body.canonical_vertices[0].numpy()
    faces = embedded_arrays['f']
    inside = np.all((canonical > -0.2) & (canonical < 0.2), axis=1)
    expected = faces[inside[faces].all(axis=1)]
    assert 0 < len(expected) < len(faces)
    np.testing.assert_array_equal(body.box_faces.numpy(), expected)
    assert body.faces.dtype == body.box_faces.dtype == torch.int64
    assert BodyModel(embedded_arrays, box_warp=1.0).box_faces.shape[0] == len(faces)


@pytest.mark.parametrize('with_pose_blend_shapes', [False, True])
def test_zero_pose_returns_the_canonical_vertices_exactly(with_pose_blend_shapes):
    arrays = synthetic_smpl_arrays(seed=12)
    if not with_pose_blend_shapes:
        del arrays['posedirs']
    body = BodyModel(arrays, betas=[0.5, -1.0])
    posed = body.pose(torch.zeros(3, 6))
    assert torch.equal(posed, body.canonical_vertices.expand(3, -1, -1))


def test_only_vertices_weighted_to_neck_or_head_move(embedded_arrays):
    body = BodyModel(embedded_arrays)
    posed = body.pose(random_pose(2, seed=13).float())
    moved = (posed != body.canonical_vertices).any(dim=-1).any(dim=0).numpy()
    weighted = (embedded_arrays['weights'][:, [lbs.NECK_JOINT, lbs.HEAD_JOINT]] != 0).any(axis=1)
    assert weighted.sum() > 1000
    assert not moved[~weighted].any()
    clearly_weighted = embedded_arrays['weights'][:, [lbs.NECK_JOINT, lbs.HEAD_JOINT]].sum(axis=1) > 1e-3
    assert moved[clearly_weighted].all()


def test_head_rotation_is_rigid_about_the_head_joint(embedded_arrays):
    body = BodyModel(embedded_arrays, betas=[0.8, 0.2]).double()
    weights = embedded_arrays['weights'].astype(np.float64)
    canonical = body.canonical_vertices[0].numpy()
    joints = body.joints[0].numpy()

    head_rotvec = np.array([0.3, -0.5, 0.2])
    posed = body.pose(torch.as_tensor(np.concatenate([np.zeros(3), head_rotvec]))[None])[0].numpy()
    rigid_to_head = weights[:, lbs.HEAD_JOINT] > 1 - 1e-7
    assert rigid_to_head.sum() > 3000
    rotation = Rotation.from_rotvec(head_rotvec).as_matrix()
    expected = (canonical[rigid_to_head] - joints[lbs.HEAD_JOINT]) @ rotation.T + joints[lbs.HEAD_JOINT]
    np.testing.assert_allclose(posed[rigid_to_head], expected, atol=1e-6)

    # A neck rotation turns the neck and head together about the neck joint (the origin only
    # for the zero shape).
    neck_rotvec = np.array([-0.4, 0.1, 0.3])
    posed = body.pose(torch.as_tensor(np.concatenate([neck_rotvec, np.zeros(3)]))[None])[0].numpy()
    rigid_to_neck = weights[:, [lbs.NECK_JOINT, lbs.HEAD_JOINT]].sum(axis=1) > 1 - 1e-7
    rotation = Rotation.from_rotvec(neck_rotvec).as_matrix()
    expected = (canonical[rigid_to_neck] - joints[lbs.NECK_JOINT]) @ rotation.T + joints[lbs.NECK_JOINT]
    np.testing.assert_allclose(posed[rigid_to_neck], expected, atol=1e-6)


def test_batch_items_are_independent(embedded_arrays):
    body = BodyModel(embedded_arrays)
    pose = random_pose(3, seed=14).float()
    batched = body.pose(pose)
    for index in range(3):
        torch.testing.assert_close(body.pose(pose[index : index + 1])[0], batched[index], atol=1e-6, rtol=0)


def test_pose_gradcheck_float64():
    body = BodyModel(synthetic_smpl_arrays(num_vertices=40, seed=15), betas=[0.3]).double()
    subset = body.moving_vertex_ids[:12]
    pose = random_pose(2, seed=16).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: body.pose(p)[:, subset], (pose,))


def test_pose_gradient_reaches_every_pose_parameter(embedded_arrays):
    body = BodyModel(embedded_arrays)
    pose = torch.zeros(2, 6, requires_grad=True)
    target = torch.randn(2, body.num_vertices, 3, generator=torch.Generator().manual_seed(17))
    (body.pose(pose) * target).sum().backward()
    assert torch.isfinite(pose.grad).all() and (pose.grad.abs() > 0).all()


def test_pose_rejects_wrong_shapes(embedded_arrays):
    with pytest.raises(ValueError, match=r'\[B, 6\]'):
        BodyModel(embedded_arrays).pose(torch.zeros(2, 3))


def test_betas_are_zero_padded_and_checked(embedded_arrays):
    short = BodyModel(embedded_arrays, betas=[1.0, -1.0])
    padded = BodyModel(embedded_arrays, betas=[1.0, -1.0] + [0.0] * 8)
    assert torch.equal(short.canonical_vertices, padded.canonical_vertices)
    assert short.num_betas == 10 and short.betas.shape == (1, 10)
    with pytest.raises(ValueError, match='11 betas'):
        BodyModel(embedded_arrays, betas=np.zeros(11))


def test_constructors_and_device_moves(tmp_path, embedded_arrays):
    body = BodyModel.embedded()
    assert body.name == 'anny_upper_body'
    torch.testing.assert_close(body.canonical_vertices, BodyModel(embedded_arrays).canonical_vertices)
    np.savez(tmp_path / 'tiny.npz', **synthetic_smpl_arrays(seed=18))
    tiny = BodyModel.from_npz(str(tmp_path / 'tiny.npz'), betas=[0.1], box_warp=2.0)
    assert tiny.name == 'tiny' and tiny.box_warp == 2.0
    moved = tiny.to(torch.float64)
    assert all(buffer.dtype in (torch.float64, torch.int64) for buffer in moved.buffers())


def test_npz_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.npz'):
        BodyModel.from_npz(str(tmp_path / 'missing.npz'))
    np.savez(tmp_path / 'partial.npz', v_template=np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r'partial\.npz.*missing shapedirs, J_regressor, weights, kintree_table, f'):
        BodyModel.from_npz(str(tmp_path / 'partial.npz'))


@requires_cuda
def test_pose_on_cuda_matches_cpu(embedded_arrays):
    body = BodyModel(embedded_arrays, betas=[0.5])
    pose = random_pose(2, seed=19).float()
    on_gpu = body.to('cuda').pose(pose.to('cuda'))
    torch.testing.assert_close(on_gpu.cpu(), body.to('cpu').pose(pose), atol=1e-5, rtol=0)
