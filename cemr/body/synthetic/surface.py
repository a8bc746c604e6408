"""The implicit body surface: a smooth union of ellipsoids and tapered capsules, its field and the
projection of points onto its zero level set."""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

from cemr.body.synthetic.skeleton import _J, _MIRROR, _mirror_x

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
