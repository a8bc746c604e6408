"""Assembling the model: every file's content in memory, the SMPL dicts of the three genders."""

from __future__ import annotations

import numpy as np
import scipy.sparse

from cemr.body.joints import SMPL_PARENTS
from cemr.body.synthetic.mesh import _build_mesh
from cemr.body.synthetic.pose import _gmm, _mean_params
from cemr.body.synthetic.rig import (
    _extra_and_h36m_targets,
    _joint_regressor,
    _skinning_weights,
    _vertex_joint_ids,
)
from cemr.body.synthetic.shape import GENDER_BETAS, _shape_vertices, _shapedirs, shaped_joints
from cemr.body.synthetic.skeleton import rest_joints
from cemr.body.synthetic.surface import _body_parts

GENDERS = ("NEUTRAL", "MALE", "FEMALE")


def _smpl_dict(verts, faces, weights, joints, vertex_ids) -> dict:
    """The SMPL pickle's dict (FORMATS 5.1) for one template and its rest joints."""
    regressor = scipy.sparse.csc_matrix(_joint_regressor(verts, joints))
    parents = np.array(SMPL_PARENTS, dtype=np.int64)
    parents[0] = 4294967295  # uint32 -1, as in the released files
    return {
        "v_template": verts,
        "shapedirs": _shapedirs(verts, joints, weights),
        "posedirs": np.zeros((len(verts), 3, 207)),
        "J_regressor": regressor,
        "J": np.asarray(regressor @ verts),
        "weights": weights,
        "kintree_table": np.stack([parents, np.arange(24, dtype=np.int64)]),
        "f": faces.astype(np.uint32),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "cemr_vertex_joint_ids": dict(vertex_ids),
    }


def build_synthetic_body_model(seed: int = 0) -> dict[str, object]:
    """Every file's content in memory: {file name: dict or array}, see `make_synthetic_body_model`."""
    parts = _body_parts()
    verts, faces = _build_mesh(parts)
    weights, owners = _skinning_weights(parts, verts, faces)
    joints = rest_joints()
    vertex_ids = _vertex_joint_ids(parts, verts, owners)
    content: dict[str, object] = {}
    for gender in GENDERS:
        betas = GENDER_BETAS[gender]
        content[f"SMPL_{gender}.pkl"] = _smpl_dict(
            _shape_vertices(verts, joints, weights, betas),
            faces,
            weights,
            shaped_joints(joints, betas),
            vertex_ids,
        )
    extra, h36m = _extra_and_h36m_targets(joints, verts)
    content["J_regressor_extra.npy"] = _joint_regressor(verts, extra)
    content["J_regressor_h36m.npy"] = _joint_regressor(verts, h36m)
    content["smpl_mean_params.npz"] = _mean_params()
    content["gmm_08.pkl"] = _gmm(seed)
    return content
