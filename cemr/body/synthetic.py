"""A procedural humanoid written in SMPL's own file layout (shared/reference/FORMATS.md, section 5).

`make_synthetic_body_model(out_dir)` writes everything the real-SMPL code path reads, so that
`cemr.body.load_body_model` and the pose prior load it unchanged:

    SMPL_{NEUTRAL,MALE,FEMALE}.pkl   protocol-2 dicts with SMPL's keys (+ 'cemr_vertex_joint_ids')
    J_regressor_extra.npy (9, V)     J_regressor_h36m.npy (17, V)
    smpl_mean_params.npz             gmm_08.pkl (protocol 0)
    synthetic_body.json              manifest (generator version and seed), written last

How the body is made:
- Skeleton: SMPL's 24 joints in its rest T-pose (metres, +y up, facing +z, the body's left at +x,
  pelvis joint at (0, -0.225, 0.015) as in SMPL; about 1.71 m tall for the neutral body).
- Surface: the zero level set of a smooth union of ellipsoids and tapered capsules, one per body
  part, each owned by the joint whose bone it covers. The mesh is ONE closed, consistently oriented
  (outward normals), genus-0 manifold: a coarse quad cage is box-modelled by extruding faces (torso
  box; legs, arms, thumbs, feet and neck/head extruded from it), refined by two Catmull-Clark steps
  (which keep it a closed manifold) and its vertices are projected onto the level set, with
  tangential relaxation. Quads are split into triangles along their shorter diagonal.
- Skinning weights: each vertex starts one-hot on the owner of its nearest part, then the weights
  are diffused over the mesh graph, so they blend smoothly near joints (rows sum to 1).
- Shape space: beta_i scales each joint's local frame by a matrix linear in beta (bone lengths,
  girth; plus a free-form belly bulge), so vertices are *exactly* linear in beta and the blend
  shapes are that map's columns. Joints follow because J_regressor is applied to the shaped mesh.
- Regressors: each row is a convex combination of nearby surface vertices whose mean is the
  intended joint (exact in the rest template).

Only the pose prior (and nothing of the mesh) depends on `seed`. Output is byte-identical for equal
seeds, and written into a temporary directory first so an interrupted run leaves no half model.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np
import scipy.sparse
from scipy.interpolate import PchipInterpolator
from scipy.spatial.transform import Rotation

from cemr.atomic import write_npz
from cemr.body.joints import (
    EXTRA_JOINT_NAMES,
    H36M17_NAMES,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    VERTEX_JOINT_NAMES,
)

GENERATOR_VERSION = 1
MANIFEST = "synthetic_body.json"
GENDERS = ("NEUTRAL", "MALE", "FEMALE")
MODEL_FILES = (
    *(f"SMPL_{gender}.pkl" for gender in GENDERS),
    "J_regressor_extra.npy",
    "J_regressor_h36m.npy",
    "smpl_mean_params.npz",
    "gmm_08.pkl",
)
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

_J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}
_MIRROR = {_J[f"left_{part}"]: _J[f"right_{part}"] for part in
           ("hip", "knee", "ankle", "foot", "collar", "shoulder", "elbow", "wrist", "hand")}  # fmt: skip
_MIRROR.update({right: left for left, right in list(_MIRROR.items())})
_TORSO = (_J["pelvis"], _J["spine1"], _J["spine2"], _J["spine3"])

# Rest joints of the body's left half and spine (metres); the right half is the mirror image.
_LEFT_AND_SPINE_JOINTS = {
    "pelvis": (0.0, -0.225, 0.015), "left_hip": (0.070, -0.315, 0.005),
    "spine1": (0.0, -0.115, -0.005), "left_knee": (0.090, -0.700, 0.005),
    "spine2": (0.0, 0.020, 0.000), "left_ankle": (0.090, -1.090, -0.030),
    "spine3": (0.0, 0.080, 0.015), "left_foot": (0.100, -1.150, 0.090),
    "neck": (0.0, 0.290, -0.015), "left_collar": (0.075, 0.200, -0.010),
    "head": (0.0, 0.370, 0.025), "left_shoulder": (0.180, 0.225, -0.020),
    "left_elbow": (0.440, 0.215, -0.030), "left_wrist": (0.690, 0.215, -0.025),
    "left_hand": (0.775, 0.205, -0.030),
}  # fmt: skip


def _mirror_x(p) -> np.ndarray:
    return np.asarray(p, dtype=np.float64) * np.array([-1.0, 1.0, 1.0])


def rest_joints() -> np.ndarray:
    """(24, 3) designed rest joints of the neutral body, metres."""
    joints = np.zeros((24, 3))
    for name, p in _LEFT_AND_SPINE_JOINTS.items():
        joints[_J[name]] = p
        if name.startswith("left_"):
            joints[_J["right_" + name[5:]]] = _mirror_x(p)
    return joints


# ----------------------------------------------------------------------------- implicit surface

# (owner joint, kind, parameters) for the body's left half and midline; "ell" = ellipsoid
# (centre, radii), "cone" = tapered capsule (start, end, start radius, end radius), "torso" = a
# vertical tube of elliptic cross-sections (knots (y, half-width x, half-depth z, centre z),
# smoothly interpolated; rounded ends), owned by the spine joints in bands of y.
_LEFT_AND_MID_PARTS = [
    (
        "torso",
        "torso",
        (
            (-0.33, 0.15, 0.095, 0.0),
            (-0.25, 0.16, 0.105, 0.0),
            (-0.10, 0.135, 0.095, 0.01),
            (0.05, 0.15, 0.105, 0.015),
            (0.17, 0.16, 0.10, 0.0),
            (0.23, 0.15, 0.08, -0.005),
        ),
    ),
    ("left_collar", "cone", ((0.05, 0.225, -0.015), (0.19, 0.225, -0.02), 0.055, 0.055)),
    ("neck", "cone", ((0, 0.24, -0.015), (0, 0.37, 0.0), 0.052, 0.05)),
    ("head", "ell", ((0, 0.44, 0.02), (0.078, 0.098, 0.093))),
    ("head", "ell", ((0, 0.385, 0.045), (0.058, 0.05, 0.06))),  # jaw
    ("head", "ell", ((0, 0.435, 0.112), (0.014, 0.022, 0.022))),  # nose
    ("head", "ell", ((0.078, 0.435, 0.0), (0.014, 0.03, 0.02))),  # ear
    ("left_shoulder", "cone", ((0.18, 0.225, -0.02), (0.44, 0.215, -0.03), 0.052, 0.04)),
    ("left_elbow", "cone", ((0.44, 0.215, -0.03), (0.69, 0.215, -0.025), 0.04, 0.029)),
    ("left_wrist", "ell", ((0.74, 0.212, -0.022), (0.055, 0.02, 0.045))),  # palm
    ("left_wrist", "cone", ((0.715, 0.205, 0.01), (0.765, 0.2, 0.06), 0.015, 0.011)),  # thumb
    ("left_hand", "ell", ((0.82, 0.207, -0.025), (0.06, 0.015, 0.042))),  # fingers
    ("left_hip", "cone", ((0.085, -0.32, 0.005), (0.09, -0.70, 0.005), 0.075, 0.052)),
    ("left_knee", "cone", ((0.09, -0.70, 0.005), (0.09, -1.09, -0.03), 0.052, 0.033)),
    ("left_ankle", "ell", ((0.09, -1.13, -0.035), (0.037, 0.045, 0.045))),  # heel
    ("left_ankle", "ell", ((0.095, -1.14, 0.05), (0.045, 0.038, 0.10))),  # mid-foot
    ("left_foot", "ell", ((0.10, -1.153, 0.15), (0.044, 0.025, 0.045))),  # toes
]
_BLEND_M = 0.01  # smooth-union radius
_TORSO_BANDS = ((-0.17, "pelvis"), (-0.03, "spine1"), (0.10, "spine2"), (np.inf, "spine3"))  # (y top, owner)


def _body_parts() -> list[tuple[int, str, tuple]]:
    parts = []
    for name, kind, params in _LEFT_AND_MID_PARTS:
        owner = _J.get(name, -1)  # -1: owned by bands (torso)
        if kind == "torso":
            knots = np.array(params)
            parts.append((owner, kind, (knots, PchipInterpolator(knots[:, 0], knots[:, 1:]))))
            continue
        parts.append((owner, kind, params))
        if owner in _MIRROR or params[0][0] != 0:  # left-side part, or an ear
            positions = 1 if kind == "ell" else 2  # (centre, radii) or (start, end, r0, r1)
            mirrored = tuple(_mirror_x(p) for p in params[:positions]) + params[positions:]
            parts.append((_MIRROR.get(owner, owner), kind, mirrored))
    return parts


def _norm(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def _part_distances(parts, points: np.ndarray) -> np.ndarray:
    """(P, N) approximate signed distances of (N, 3) points to each part (negative inside)."""
    out = np.empty((len(parts), len(points)))
    for i, (_, kind, params) in enumerate(parts):
        if kind == "torso":
            knots, profile = params
            y = np.clip(points[:, 1], knots[0, 0], knots[-1, 0])
            rx, rz, cz = profile(y).T
            cap = np.where(points[:, 1] < knots[0, 0], knots[0, 2], knots[-1, 2])
            q = np.stack([points[:, 0] / rx, (points[:, 1] - y) / cap, (points[:, 2] - cz) / rz], axis=1)
            out[i] = (_norm(q) - 1.0) * np.minimum(rx, rz)
        elif kind == "ell":
            centre, radii = (np.asarray(x, dtype=np.float64) for x in params)
            p = points - centre
            k0 = _norm(p / radii)
            k1 = np.maximum(_norm(p / radii**2), 1e-12)
            out[i] = k0 * (k0 - 1.0) / k1
        else:
            a, b = np.asarray(params[0], dtype=np.float64), np.asarray(params[1], dtype=np.float64)
            ab = b - a
            t = np.clip((points - a) @ ab / (ab @ ab), 0.0, 1.0)
            out[i] = _norm(points - a - t[:, None] * ab) - (params[2] + t * (params[3] - params[2]))
    return out


def _field(parts, points: np.ndarray) -> np.ndarray:
    """(N,) smooth union (exponential smooth-min) of the part distances."""
    d = _part_distances(parts, points)
    low = d.min(axis=0)
    return low - _BLEND_M * np.log(np.exp(-(d - low) / _BLEND_M).sum(axis=0))


def _field_and_gradient(parts, points: np.ndarray, h: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(N,) field and (N, 3) central-difference gradient, in one batched evaluation."""
    offsets = np.concatenate([np.zeros((1, 3)), h * np.eye(3), -h * np.eye(3)])  # (7, 3)
    values = _field(parts, (points[None] + offsets[:, None]).reshape(-1, 3)).reshape(7, -1)
    return values[0], (values[1:4] - values[4:7]).T / (2 * h)


def _project_to_surface(parts, points: np.ndarray, iterations: int) -> np.ndarray:
    """Newton steps x <- x - f(x) grad f / |grad f|^2 onto the zero level set (steps <= 2 cm)."""
    x = points.copy()
    for _ in range(iterations):
        value, grad = _field_and_gradient(parts, x)
        step = (value / np.maximum((grad**2).sum(axis=1), 1e-12))[:, None] * grad
        length = np.linalg.norm(step, axis=1, keepdims=True)
        x -= step * np.minimum(1.0, 0.02 / np.maximum(length, 1e-12))
    return x


# ----------------------------------------------------------------------------- quad cage


class _Cage:
    """A closed quad mesh grown by face extrusion; faces are counter-clockwise seen from outside."""

    def __init__(self) -> None:
        self.verts: list[np.ndarray] = []
        self.faces: list[list[int]] = []

    def add(self, p) -> int:
        self.verts.append(np.asarray(p, dtype=np.float64))
        return len(self.verts) - 1

    def normal(self, face: int) -> np.ndarray:
        a, b, c, d = (self.verts[i] for i in self.faces[face])
        n = np.cross(c - a, d - b)
        return n / np.linalg.norm(n)

    def extrude(self, face: int, centre, half1: float, half2: float) -> list[int]:
        """Move `face` to a rectangle (centre, half sizes along its own two in-plane axes).

        The two axes are the world axes in the face plane, so the rectangle keeps the face's corner
        order. Returns the four new side faces; the cap keeps the index `face`.
        """
        normal = self.normal(face)
        axes = [np.eye(3)[k] for k in np.argsort(np.abs(normal))[:2]]
        old = [self.verts[i] for i in self.faces[face]]
        mid = np.mean(old, axis=0)
        new = [
            self.add(np.asarray(centre) + np.sign((p - mid) @ axes[0]) * half1 * axes[0]
                     + np.sign((p - mid) @ axes[1]) * half2 * axes[1])
            for p in old
        ]  # fmt: skip
        ring = self.faces[face]
        sides = []
        for k in range(4):
            self.faces.append([ring[k], ring[(k + 1) % 4], new[(k + 1) % 4], new[k]])
            sides.append(len(self.faces) - 1)
        self.faces[face] = new
        return sides

    def side_facing(self, faces: list[int], direction) -> int:
        return max(faces, key=lambda f: self.normal(f) @ np.asarray(direction, dtype=np.float64))


def _half_sizes(cage: _Cage, face: int, sizes: dict[int, float]) -> tuple[float, float]:
    """Order half sizes {world axis: size} like `_Cage.extrude` orders the face's two axes."""
    axes = np.argsort(np.abs(cage.normal(face)))[:2]
    return sizes[axes[0]], sizes[axes[1]]


def _build_cage() -> tuple[np.ndarray, np.ndarray]:
    """(V0, 3) vertices and (Q, 4) quads of the coarse humanoid cage (x: 0, y: 1, z: 2 below)."""
    cage = _Cage()
    # Torso: a box with 3 columns in x (right leg | crotch | left leg at the bottom,
    # right shoulder | neck | left shoulder at the top), 5 rows in y, front and back in z.
    levels = [  # y, outer half-width a, inner half-width b, half-depth d
        (-0.37, 0.15, 0.02, 0.08), (-0.27, 0.16, 0.05, 0.10), (-0.12, 0.135, 0.05, 0.095),
        (0.03, 0.145, 0.05, 0.105), (0.16, 0.16, 0.05, 0.095), (0.27, 0.17, 0.045, 0.06),
    ]  # fmt: skip
    rings = []
    for y, a, b, d in levels:
        xz = [(-a, d), (-b, d), (b, d), (a, d), (a, -d), (b, -d), (-b, -d), (-a, -d)]
        rings.append([cage.add((x, y, z)) for x, z in xz])
    side_faces = {}
    for lo, up in zip(rings[:-1], rings[1:], strict=True):
        for i in range(8):
            cage.faces.append([lo[i], lo[(i + 1) % 8], up[(i + 1) % 8], up[i]])
            side_faces[i] = len(cage.faces) - 1  # ends as the top row
    bottom, top = rings[0], rings[-1]
    cage.faces += [[bottom[5], bottom[4], bottom[3], bottom[2]], [bottom[6], bottom[5], bottom[2], bottom[1]],
                   [bottom[7], bottom[6], bottom[1], bottom[0]]]  # fmt: skip
    left_leg, right_leg = len(cage.faces) - 3, len(cage.faces) - 1
    cage.faces += [[top[2], top[3], top[4], top[5]], [top[1], top[2], top[5], top[6]]]
    neck = len(cage.faces) - 1
    cage.faces.append([top[0], top[1], top[6], top[7]])
    left_arm, right_arm = side_faces[3], side_faces[7]

    for sign, leg in ((1.0, left_leg), (-1.0, right_leg)):
        sides = []
        for y, x, z, hx, hz in [
            (-0.47, 0.085, 0.005, 0.075, 0.08), (-0.58, 0.087, 0.005, 0.068, 0.072),
            (-0.70, 0.09, 0.005, 0.052, 0.055), (-0.83, 0.09, -0.005, 0.05, 0.055),
            (-0.96, 0.09, -0.015, 0.04, 0.045), (-1.06, 0.09, -0.03, 0.035, 0.04),
            (-1.155, 0.09, -0.03, 0.038, 0.045),
        ]:  # fmt: skip
            sides = cage.extrude(leg, (sign * x, y, z), *_half_sizes(cage, leg, {0: hx, 2: hz}))
        foot = cage.side_facing(sides, (0, 0, 1))  # front of the heel block
        for z, x, y, hx, hy in [(0.08, 0.095, -1.135, 0.042, 0.028), (0.205, 0.10, -1.152, 0.04, 0.016)]:
            cage.extrude(foot, (sign * x, y, z), *_half_sizes(cage, foot, {0: hx, 1: hy}))

    for sign, arm in ((1.0, left_arm), (-1.0, right_arm)):
        hand_sides = []
        for x, y, z, hy, hz in [
            (0.24, 0.225, -0.02, 0.05, 0.05), (0.34, 0.22, -0.025, 0.045, 0.045),
            (0.44, 0.215, -0.03, 0.04, 0.04), (0.55, 0.215, -0.028, 0.035, 0.035),
            (0.64, 0.215, -0.026, 0.03, 0.03), (0.70, 0.214, -0.025, 0.022, 0.04),
            (0.76, 0.212, -0.022, 0.02, 0.045), (0.82, 0.207, -0.025, 0.016, 0.042),
            (0.895, 0.207, -0.025, 0.012, 0.035),
        ]:  # fmt: skip
            sides = cage.extrude(arm, (sign * x, y, z), *_half_sizes(cage, arm, {1: hy, 2: hz}))
            if x == 0.76:
                hand_sides = sides
        thumb = cage.side_facing(hand_sides, (0, 0, 1))
        for x, y, z, hx, hy in [(0.735, 0.205, 0.045, 0.015, 0.012), (0.785, 0.2, 0.085, 0.012, 0.01)]:
            cage.extrude(thumb, (sign * x, y, z), *_half_sizes(cage, thumb, {0: hx, 1: hy}))

    for y, z, hx, hz in [(0.33, -0.01, 0.05, 0.05), (0.38, 0.03, 0.065, 0.075), (0.45, 0.025, 0.08, 0.095),
                         (0.50, 0.02, 0.07, 0.08), (0.545, 0.015, 0.045, 0.05)]:  # fmt: skip
        cage.extrude(neck, (0.0, y, z), *_half_sizes(cage, neck, {0: hx, 2: hz}))
    return np.array(cage.verts), np.array(cage.faces, dtype=np.int64)


def _catmull_clark(verts: np.ndarray, quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Catmull-Clark step of a closed quad mesh: (V, 3), (F, 4) -> (V + E + F, 3), (4F, 4)."""
    n_verts, n_faces = len(verts), len(quads)
    face_pts = verts[quads].mean(axis=1)
    directed = np.stack([quads, np.roll(quads, -1, axis=1)], axis=-1).reshape(-1, 2)  # edge k: v_k -> v_k+1
    edges, edge_of = np.unique(np.sort(directed, axis=1), axis=0, return_inverse=True)
    edge_of = edge_of.reshape(-1)
    if np.bincount(edge_of, minlength=len(edges)).max(initial=2) != 2 or len(edge_of) != 2 * len(edges):
        raise RuntimeError("Catmull-Clark needs a closed manifold quad mesh (every edge in two faces)")
    face_sum = np.zeros((len(edges), 3))
    np.add.at(face_sum, edge_of, face_pts[np.arange(4 * n_faces) // 4])
    edge_pts = (verts[edges[:, 0]] + verts[edges[:, 1]] + face_sum) / 4.0

    valence = np.bincount(edges.reshape(-1), minlength=n_verts).astype(np.float64)[:, None]
    face_avg = np.zeros((n_verts, 3))
    np.add.at(face_avg, quads.reshape(-1), np.repeat(face_pts, 4, axis=0))
    mid_avg = np.zeros((n_verts, 3))
    mids = verts[edges].mean(axis=1)
    np.add.at(mid_avg, edges[:, 0], mids)
    np.add.at(mid_avg, edges[:, 1], mids)
    moved = (face_avg / valence + 2.0 * mid_avg / valence + (valence - 3.0) * verts) / valence

    e = n_verts + edge_of.reshape(n_faces, 4)  # e[:, k] is the edge v_k -> v_k+1
    f = n_verts + len(edges) + np.arange(n_faces)
    new_quads = np.stack(
        [np.stack([quads[:, k], e[:, k], f, e[:, (k - 1) % 4]], axis=1) for k in range(4)], axis=1
    ).reshape(-1, 4)
    return np.concatenate([moved, edge_pts, face_pts]), new_quads


def _neighbour_matrix(n_verts: int, faces: np.ndarray) -> scipy.sparse.csr_matrix:
    """(V, V) row-stochastic matrix averaging each vertex's mesh neighbours."""
    edges = np.stack([faces, np.roll(faces, -1, axis=1)], axis=-1).reshape(-1, 2)
    adj = scipy.sparse.coo_matrix(
        (np.ones(2 * len(edges)), (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
        shape=(n_verts, n_verts),
    ).tocsr()
    adj.data[:] = 1.0
    return scipy.sparse.diags(1.0 / np.asarray(adj.sum(axis=1)).ravel()) @ adj


def _triangulate(verts: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Split each quad (a, b, c, d) along its shorter diagonal, keeping the orientation."""
    a, b, c, d = quads.T
    along_ac = np.linalg.norm(verts[a] - verts[c], axis=1) <= np.linalg.norm(verts[b] - verts[d], axis=1)
    first = np.where(along_ac[:, None], np.stack([a, b, c], 1), np.stack([a, b, d], 1))
    second = np.where(along_ac[:, None], np.stack([a, c, d], 1), np.stack([b, c, d], 1))
    return np.stack([first, second], axis=1).reshape(-1, 3)


def _build_mesh(parts) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 vertices on the body surface and (F, 3) outward-oriented triangles."""
    verts, quads = _build_cage()
    for _ in range(2):
        verts, quads = _catmull_clark(verts, quads)
    verts = _project_to_surface(parts, verts, iterations=12)
    neighbours = _neighbour_matrix(len(verts), quads)
    for _ in range(3):  # even out the spacing along the surface, then project back
        normal = _field_and_gradient(parts, verts)[1]
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        delta = neighbours @ verts - verts
        verts = verts + 0.5 * (delta - (delta * normal).sum(axis=1, keepdims=True) * normal)
        verts = _project_to_surface(parts, verts, iterations=3)
    faces = _triangulate(verts, quads)
    # Every triangle must face away from the body (no fold from the projection).
    tri = verts[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if (np.einsum("ij,ij->i", normals, _field_and_gradient(parts, tri.mean(axis=1))[1]) <= 0).any():
        raise RuntimeError("procedural body mesh has inward-facing triangles")
    return verts, faces


# ----------------------------------------------------------------------------- rig and shape space


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


# ----------------------------------------------------------------------------- regressors


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


# ----------------------------------------------------------------------------- pose statistics


def _pose(**rotvecs) -> np.ndarray:
    """(69,) body pose axis-angle from {joint name: rotation vector}; other joints identity."""
    pose = np.zeros((23, 3))
    for name, aa in rotvecs.items():
        pose[_J[name] - 1] = aa
    return pose.reshape(-1)


def _relaxed(arm_down: float = 1.2, elbow: float = 0.2, **extra) -> dict:
    return {"left_shoulder": (0, 0, -arm_down), "right_shoulder": (0, 0, arm_down),
            "left_elbow": (0, -elbow, 0), "right_elbow": (0, elbow, 0), **extra}  # fmt: skip


def _mean_params() -> dict[str, np.ndarray]:
    """SPIN's smpl_mean_params.npz: root turned 180 deg about x (upright in the y-down camera)."""
    body = _pose(**_relaxed(arm_down=0.7, elbow=0.15, left_knee=(0.1, 0, 0), right_knee=(0.1, 0, 0)))
    rotvecs = np.concatenate([[np.pi, 0.0, 0.0], body]).reshape(24, 3)
    rotmats = Rotation.from_rotvec(rotvecs).as_matrix()
    rotmats[0] = np.diag([1.0, -1.0, -1.0])  # exact
    pose6d = rotmats[:, :, :2].reshape(-1).astype(np.float32)  # [R00, R01, R10, R11, R20, R21] per joint
    return {"pose": pose6d, "shape": np.zeros(NUM_BETAS), "cam": np.array([0.9, 0.0, 0.0], dtype=np.float32)}


# Per-joint standard deviations (rad) of the pose prior around each mode, about local x, y, z.
_POSE_STD = {
    "spine": (0.12, 0.08, 0.08), "neck": (0.15, 0.10, 0.10), "head": (0.15, 0.15, 0.10),
    "collar": (0.05, 0.08, 0.08), "shoulder": (0.30, 0.30, 0.30), "elbow": (0.05, 0.35, 0.05),
    "wrist": (0.25, 0.15, 0.25), "hand": (0.10, 0.10, 0.10), "hip": (0.30, 0.15, 0.15),
    "knee": (0.35, 0.04, 0.04), "ankle": (0.15, 0.08, 0.10), "foot": (0.08, 0.04, 0.04),
}  # fmt: skip


def _gmm(seed: int) -> dict[str, np.ndarray]:
    """An 8-mode Gaussian mixture over the 69-d body pose (FORMATS 5.2), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    sit = {
        "left_hip": (-1.4, 0, 0),
        "right_hip": (-1.4, 0, 0),
        "left_knee": (1.4, 0, 0),
        "right_knee": (1.4, 0, 0),
    }
    modes = [  # (weight, pose)
        (0.25, _pose(**_relaxed())),  # standing
        (0.12, _pose(**_relaxed(left_hip=(-0.4, 0, 0), right_hip=(0.3, 0, 0), left_knee=(0.2, 0, 0),
                                right_knee=(0.5, 0, 0), left_shoulder=(-0.3, 0, -1.2),
                                right_shoulder=(0.3, 0, 1.2)))),  # walking, left leg forward
        (0.12, _pose(**_relaxed(right_hip=(-0.4, 0, 0), left_hip=(0.3, 0, 0), right_knee=(0.2, 0, 0),
                                left_knee=(0.5, 0, 0), right_shoulder=(-0.3, 0, 1.2),
                                left_shoulder=(0.3, 0, -1.2)))),  # walking, right leg forward
        (0.15, _pose(**_relaxed(elbow=0.8, **sit))),  # sitting
        (0.08, _pose(**_relaxed(arm_down=-1.0, elbow=0.3))),  # arms raised
        (0.08, _pose(**_relaxed(spine1=(0.3, 0, 0), left_hip=(-1.0, 0, 0), right_hip=(-1.0, 0, 0),
                                left_knee=(1.8, 0, 0), right_knee=(1.8, 0, 0), left_ankle=(-0.3, 0, 0),
                                right_ankle=(-0.3, 0, 0)))),  # crouching
        (0.10, _pose(spine2=(0.15, 0, 0), left_shoulder=(0, -1.3, 0), right_shoulder=(0, 1.3, 0),
                     left_elbow=(0, -0.3, 0), right_elbow=(0, 0.3, 0))),  # reaching forwards
        (0.10, _pose(**_relaxed(arm_down=0.3, elbow=0.1, left_knee=(0.1, 0, 0), right_knee=(0.1, 0, 0)))),
    ]  # fmt: skip
    kinds = [name.split("_")[-1].rstrip("123") for name in SMPL_JOINT_NAMES[1:]]  # "left_knee" -> "knee"
    std = np.array([_POSE_STD[kind] for kind in kinds]).reshape(-1)  # (69,)
    means, covars, weights = [], [], []
    for weight, mean in modes:
        spread = std * rng.uniform(0.8, 1.2)
        mixing = spread[:, None] * rng.normal(size=(69, 6)) * 0.3  # correlated joints
        means.append(mean + 0.02 * std * rng.normal(size=69))
        covars.append(np.diag(spread**2) + mixing @ mixing.T)
        weights.append(weight * rng.uniform(0.9, 1.1))
    weights = np.array(weights)
    return {"means": np.array(means), "covars": np.array(covars), "weights": weights / weights.sum()}


# ----------------------------------------------------------------------------- assembling the model


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


def _write_file(path: Path, value) -> None:
    if path.suffix == ".npy":
        np.save(path, value, allow_pickle=False)
    elif path.suffix == ".npz":
        write_npz(path, value)
    else:  # SMPL files are protocol-2 pickles, the GMM a protocol-0 one (as the released files)
        with open(path, "wb") as f:
            pickle.dump(value, f, protocol=0 if path.name == "gmm_08.pkl" else 2)


def _is_cached(out_dir: Path, seed: int) -> bool:
    """True when out_dir holds this generator's complete model for `seed`.

    Raises FileExistsError where writing would clobber files that are not ours (model files but no
    manifest: someone else's, or an interrupted overwrite) or a model made with another seed.
    A model from another generator version is stale: False, so it is rebuilt.
    """
    present = [name for name in MODEL_FILES if (out_dir / name).is_file()]
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        if present:
            raise FileExistsError(
                f"{out_dir}: holds {', '.join(present)} but no {MANIFEST}, so they were not written by "
                "make_synthetic_body_model (or a write was interrupted); pass overwrite=True to replace them"
            )
        return False
    try:
        info = json.loads(manifest.read_text())
        version, found_seed = info["version"], info["seed"]
    except (ValueError, KeyError, TypeError) as err:
        raise FileExistsError(
            f"{manifest}: unreadable manifest ({err!r}); pass overwrite=True to rebuild"
        ) from err
    if version == GENERATOR_VERSION and found_seed != seed:
        raise FileExistsError(
            f"{manifest}: the model in {out_dir} was made with seed {found_seed}, expected seed {seed}; "
            "pass overwrite=True to rebuild it or use another directory"
        )
    return version == GENERATOR_VERSION and len(present) == len(MODEL_FILES)


def make_synthetic_body_model(out_dir: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the procedural body model (files listed in the module docstring) into `out_dir`.

    Returns out_dir as a Path. With overwrite=False, a complete model for this seed already there is
    returned untouched (a cache); one from an older generator version is rebuilt; model files
    without our manifest, or a manifest with another seed, raise FileExistsError.
    Files are built in a hidden temporary sibling directory that then becomes out_dir in one atomic
    rename, or, where out_dir already exists, replaces our files one by one with the manifest
    removed first and written last: an interrupted run never leaves a model that passes as complete.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"make_synthetic_body_model: seed must be a non-negative integer, found {seed!r}")
    seed = int(seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"make_synthetic_body_model: {out_dir} exists and is not a directory")
    if not overwrite and out_dir.is_dir() and _is_cached(out_dir, seed):
        return out_dir

    content = build_synthetic_body_model(seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()  # unlike tempfile.mkdtemp, honours the umask (the model is shared, not private)
    try:
        for name, value in content.items():
            _write_file(tmp / name, value)
        (tmp / MANIFEST).write_text(
            json.dumps({"generator": __name__, "version": GENERATOR_VERSION, "seed": seed})
        )
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        try:
            tmp.rename(out_dir)  # atomic when out_dir does not exist
            return out_dir
        except OSError:
            pass  # out_dir exists (maybe with other files): replace our files one by one
        (out_dir / MANIFEST).unlink(missing_ok=True)
        for name in MODEL_FILES:
            os.replace(tmp / name, out_dir / name)
        os.replace(tmp / MANIFEST, out_dir / MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
