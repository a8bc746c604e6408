"""The shape space: betas scale each joint's local frame linearly, so the blend shapes are exact;
the gendered templates' betas."""

from __future__ import annotations

import numpy as np

from cemr.body.joints import SMPL_PARENTS
from cemr.body.synthetic.skeleton import _J, _TORSO

NUM_BETAS = 10
SHAPE_NAMES = (
    "height", "girth", "leg_length", "arm_length", "shoulder_width",
    "hip_width", "torso_length", "head_size", "belly", "limb_thickness",
)  # fmt: skip
# Betas of the gendered templates, relative to the neutral body.
GENDER_BETAS = {
    "NEUTRAL": np.zeros(NUM_BETAS),
    "MALE": np.array([0.9, 0.2, 0.2, 0.3, 1.2, -0.8, 0.2, 0.2, 0.0, 0.5]),
    "FEMALE": np.array([-1.0, -0.3, 0.0, -0.3, -1.2, 1.2, -0.2, -0.2, 0.0, -0.5]),
}


def _children(joint: int) -> list[int]:
    return [j for j, p in enumerate(SMPL_PARENTS) if p == joint]


def _bone_axes(joints: np.ndarray) -> np.ndarray:
    """(24, 3) unit direction of the bone each joint moves (torso joints: +y)."""
    axes = np.tile([0.0, 1.0, 0.0], (24, 1))
    for j in range(24):
        if j in _TORSO or j in (_J["neck"], _J["head"]):
            continue
        kids = _children(j)
        if kids:
            axes[j] = joints[kids[0]] - joints[j]
        elif j in (_J["left_foot"], _J["right_foot"]):
            axes[j] = (0.0, 0.0, 1.0)
        else:  # hands continue the forearm
            axes[j] = joints[j] - joints[SMPL_PARENTS[j]]
    return axes / np.linalg.norm(axes, axis=1, keepdims=True)


def _shape_matrices(joints: np.ndarray) -> np.ndarray:
    """(10, 24, 3, 3): joint j's local frame is scaled by I + sum_i beta_i A[i, j]."""
    axes = _bone_axes(joints)
    along = np.einsum("ja,jb->jab", axes, axes)
    across = np.eye(3) - along
    A = np.zeros((NUM_BETAS, 24, 3, 3))

    def sided(*parts: str) -> list[int]:
        return [_J[f"{side}_{part}"] for part in parts for side in ("left", "right")]

    legs, arms = sided("hip", "knee"), sided("shoulder", "elbow")
    A[0] = 0.045 * np.eye(3)  # height: every bone and girth
    for j in _TORSO:
        A[1, j] = np.diag([0.10, 0.0, 0.11])  # girth
    for j in legs + arms + [_J["neck"]] + sided("collar"):
        A[1, j] = 0.07 * across[j]
    for j in legs:
        A[2, j] = 0.05 * along[j]  # leg length
    for j in arms:
        A[3, j] = 0.05 * along[j]  # arm length
    for j in sided("wrist", "hand"):
        A[3, j] = 0.02 * np.eye(3)
    for j in sided("collar"):
        A[4, j] = 0.12 * along[j]  # shoulder width
    A[4, _J["spine3"]] = np.diag([0.05, 0.0, 0.0])
    for j in sided("shoulder"):
        A[4, j] = 0.02 * across[j]
    A[5, _J["pelvis"]] = np.diag([0.08, 0.0, 0.02])  # hip width
    for j in sided("hip"):
        A[5, j] = 0.02 * across[j]
    for j in (_J["spine1"], _J["spine2"], _J["spine3"]):
        A[6, j] = 0.06 * along[j]  # torso length
    A[6, _J["neck"]] = 0.03 * along[_J["neck"]]
    A[7, _J["head"]] = 0.06 * np.eye(3)  # head size
    A[7, _J["neck"]] = 0.03 * across[_J["neck"]]
    for j in legs + arms:
        A[9, j] = 0.07 * across[j]  # limb thickness
    for j in sided("wrist"):
        A[9, j] = 0.03 * across[j]
    return A  # beta 8 (belly) is the free-form bulge in _belly


def _belly(verts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(V, 3) displacement per unit belly beta: the front of the abdomen bulges forwards."""
    front = np.maximum(verts[:, 2], 0.0)
    around_navel = np.exp(-(((verts[:, 1] + 0.10) / 0.13) ** 2)) * weights[:, list(_TORSO)].sum(axis=1)
    return (
        0.12
        * (front * around_navel)[:, None]
        * np.stack([0.35 * verts[:, 0] / 0.15, np.zeros(len(verts)), np.ones(len(verts))], axis=1)
    )


def shaped_joints(joints: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """(24, 3) joints after the shape change `betas` (10,), each bone scaled by its parent's frame."""
    scale = np.eye(3) + np.einsum("i,ijab->jab", betas, _shape_matrices(joints))
    out = joints.copy()
    for j in range(1, 24):
        p = SMPL_PARENTS[j]
        out[j] = out[p] + scale[p] @ (joints[j] - joints[p])
    return out


def _shape_vertices(verts, joints, weights, betas) -> np.ndarray:
    """(V, 3) vertices after `betas`: skinning-weighted blend of every joint's scaled local frame."""
    scale = np.eye(3) + np.einsum("i,ijab->jab", betas, _shape_matrices(joints))
    moved = shaped_joints(joints, betas)
    local = verts[:, None, :] - joints[None]  # (V, 24, 3)
    per_joint = moved[None] + np.einsum("jab,vjb->vja", scale, local)
    return np.einsum("vj,vja->va", weights, per_joint) + betas[8] * _belly(verts, weights)


def _shapedirs(verts, joints, weights) -> np.ndarray:
    """(V, 3, 10) blend shapes; `_shape_vertices` is affine in beta, so these are exact."""
    return np.stack([_shape_vertices(verts, joints, weights, e) - verts for e in np.eye(NUM_BETAS)], axis=-1)
