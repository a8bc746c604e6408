"""The rig: skinning weights diffused over the mesh, the joint regressors (convex vertex
combinations) and the vertex-picked joints."""

from __future__ import annotations

import numpy as np

from cemr.body.joints import EXTRA_JOINT_NAMES, H36M17_NAMES, SMPL_JOINT_NAMES, VERTEX_JOINT_NAMES
from cemr.body.synthetic.mesh import _neighbour_matrix
from cemr.body.synthetic.skeleton import _J, _MIRROR, _mirror_x
from cemr.body.synthetic.surface import _part_distances, _project_to_surface

_TORSO_BANDS = ((-0.17, "pelvis"), (-0.03, "spine1"), (0.10, "spine2"), (np.inf, "spine3"))  # (y top, owner)


def _skinning_weights(parts, verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V, 24) LBS weights (rows sum to 1) and (V,) owner joint of each vertex's nearest part."""
    owners = np.array([owner for owner, _, _ in parts])[_part_distances(parts, verts).argmin(axis=0)]
    bands = np.array([_J[name] for _, name in _TORSO_BANDS])
    in_torso = owners == -1
    owners[in_torso] = bands[np.searchsorted([top for top, _ in _TORSO_BANDS], verts[in_torso, 1])]
    weights = np.eye(24)[owners]
    neighbours = _neighbour_matrix(len(verts), faces)
    for _ in range(25):
        weights = 0.5 * weights + 0.5 * (neighbours @ weights)
    weights[weights < 1e-4] = 0.0
    return weights / weights.sum(axis=1, keepdims=True), owners


def _convex_weights(points: np.ndarray, target: np.ndarray, prior: np.ndarray) -> np.ndarray | None:
    """w >= 0 with sum 1 and w @ points == target, close to `prior`; None when none is found."""
    w = prior / prior.sum()
    active = np.ones(len(points), dtype=bool)
    for _ in range(len(points)):
        A = np.vstack([points[active].T, np.ones(active.sum())])  # (4, m)
        b = np.r_[target, 1.0]
        if active.sum() < 4 or np.linalg.matrix_rank(A) < 4:
            return None
        sub = w[active] + A.T @ np.linalg.solve(A @ A.T, b - A @ w[active])
        if sub.min() >= 0.0:
            out = np.zeros(len(points))
            out[active] = sub
            return out
        idx = np.flatnonzero(active)
        active[idx[sub < 0.0]] = False
        w[~active] = 0.0
    return None


def _regressor_row(verts: np.ndarray, target: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(V,) convex weights over the `allowed` vertices around `target` that average to it."""
    dist = np.linalg.norm(verts - target, axis=1)
    radius = 1.3 * dist[allowed].min()
    for _ in range(12):
        near = allowed & (dist < radius)
        w = _convex_weights(verts[near], target, np.exp(-0.5 * (dist[near] / (0.5 * radius)) ** 2))
        if w is not None:
            row = np.zeros(len(verts))
            row[near] = w
            return row
        radius *= 1.25
    raise RuntimeError(f"no convex vertex combination reaches the joint at {target}")


def _same_side(verts: np.ndarray, x: float) -> np.ndarray:
    """Vertices on the side of the midline where x is (all of them for a point on the midline)."""
    return np.ones(len(verts), dtype=bool) if abs(x) < 1e-6 else np.sign(verts[:, 0]) == np.sign(x)


def _joint_regressor(verts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.stack([_regressor_row(verts, t, _same_side(verts, t[0])) for t in targets])


def _extra_and_h36m_targets(joints: np.ndarray, verts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical targets (9, 3) for J_regressor_extra and (17, 3) for J_regressor_h36m."""
    jt = {n: joints[_J[n]] for n in SMPL_JOINT_NAMES}
    crown = verts[verts[:, 1].argmax()]
    head_top = np.array([0.0, crown[1] - 0.012, crown[2]])
    lsp_hip = {
        s: jt[f"{s}_hip"] + (np.sign(jt[f"{s}_hip"][0]) * 0.015, -0.04, 0.0) for s in ("left", "right")
    }
    neck_lsp = jt["neck"] + (0.0, -0.02, 0.01)
    extra = {
        "Right Hip": lsp_hip["right"], "Left Hip": lsp_hip["left"], "Neck (LSP)": neck_lsp,
        "Top of Head (LSP)": head_top, "Pelvis (MPII)": 0.5 * (lsp_hip["left"] + lsp_hip["right"]),
        "Thorax (MPII)": jt["neck"] + (0.0, -0.05, 0.01), "Spine (H36M)": jt["spine2"] + (0.0, 0.02, 0.0),
        "Jaw (H36M)": np.array([0.0, 0.37, 0.06]), "Head (H36M)": np.array([0.0, 0.44, 0.02]),
    }  # fmt: skip
    h36m_hip = {
        s: jt[f"{s}_hip"] + (np.sign(jt[f"{s}_hip"][0]) * 0.025, 0.01, 0.0) for s in ("left", "right")
    }
    pelvis = 0.5 * (h36m_hip["left"] + h36m_hip["right"])
    thorax = np.array([0.0, 0.24, 0.0])
    h36m = {"pelvis": pelvis, "spine": 0.5 * (pelvis + thorax), "neck": thorax,
            "head": np.array([0.0, 0.43, 0.04]), "headtop": head_top}  # fmt: skip
    for s, c in (("left", "l"), ("right", "r")):
        sign = np.sign(jt[f"{s}_hip"][0])
        h36m[f"{c}hip"] = h36m_hip[s]
        h36m[f"{c}knee"] = jt[f"{s}_knee"] + (0.0, 0.01, 0.005)
        h36m[f"{c}ankle"] = jt[f"{s}_ankle"] + (0.0, -0.01, 0.0)
        h36m[f"{c}shoulder"] = jt[f"{s}_shoulder"] + (sign * 0.01, -0.01, 0.0)
        h36m[f"{c}elbow"] = jt[f"{s}_elbow"] + (0.0, -0.005, 0.0)
        h36m[f"{c}wrist"] = jt[f"{s}_wrist"] + (sign * 0.005, 0.0, 0.0)
    return np.stack([extra[n] for n in EXTRA_JOINT_NAMES]), np.stack([h36m[n] for n in H36M17_NAMES])


# Approximate surface spots of the 21 vertex-picked joints (left side; right mirrored) and the
# joint owning the part they lie on.
_VERTEX_SPOTS = {
    "nose": ("head", (0.0, 0.435, 0.16)), "leye": ("head", (0.032, 0.46, 0.103)),
    "lear": ("head", (0.095, 0.435, 0.0)), "LBigToe": ("left_foot", (0.075, -1.16, 0.20)),
    "LSmallToe": ("left_foot", (0.13, -1.16, 0.17)), "LHeel": ("left_ankle", (0.09, -1.18, -0.085)),
    "lthumb": ("left_wrist", (0.785, 0.20, 0.08)), "lindex": ("left_hand", (0.90, 0.207, 0.005)),
    "lmiddle": ("left_hand", (0.90, 0.207, -0.015)), "lring": ("left_hand", (0.90, 0.207, -0.035)),
    "lpinky": ("left_hand", (0.90, 0.207, -0.055)),
}  # fmt: skip


def _vertex_joint_ids(parts, verts: np.ndarray, owners: np.ndarray) -> dict[str, int]:
    """{name: vertex} for joints.VERTEX_JOINT_NAMES: the owner's vertex nearest to each spot."""
    spots, spot_owners = [], []
    for name in VERTEX_JOINT_NAMES:
        right_side = name[0] in "rR"  # reye, RBigToe, rthumb, ...
        owner, spot = _VERTEX_SPOTS[{"r": "l", "R": "L"}[name[0]] + name[1:] if right_side else name]
        spots.append(_mirror_x(spot) if right_side else spot)
        spot_owners.append(_MIRROR.get(_J[owner], _J[owner]) if right_side else _J[owner])
    on_surface = _project_to_surface(parts, np.array(spots, dtype=np.float64), iterations=30)
    ids = {}
    for name, spot, owner in zip(VERTEX_JOINT_NAMES, on_surface, spot_owners, strict=True):
        pool = np.flatnonzero(owners == owner)
        ids[name] = int(pool[np.linalg.norm(verts[pool] - spot, axis=1).argmin()])
    if len(set(ids.values())) != len(ids):
        raise RuntimeError(f"vertex-picked joints share vertices: {ids}")
    return ids
