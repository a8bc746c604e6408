"""Bounding boxes from 2D joints, and a detector-like corruption of exact 2D keypoints.

The detector mimic works on SPIN's 49-joint layout (cemr.body.joints.JOINT_NAMES_49) and
fills all 49 slots: jitter with a standard deviation proportional to the person's bbox side,
joints dropped at random, more often when occluded, always when outside the image (dropped
joints are (0, 0, 0), as OpenPose writes them), confidences that fall with the error, and
occasional left/right swaps of a whole arm or leg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cemr.body.joints import JOINT_NAMES_49
from cemr.geometry import BBOX_UNIT


def bbox_from_keypoints(points_px: np.ndarray, scale_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, J, 2) -> center (T, 2) = box centre of the min/max extent, scale (T,) = factor * max(w, h) / 200.

    DynaBOA's convention on all 49 projected joints (there with factor 1.0; SPIN uses 1.2 on detections).
    """
    low, high = points_px.min(axis=1), points_px.max(axis=1)
    center = (low + high) / 2.0
    scale = scale_factor * (high - low).max(axis=1) / BBOX_UNIT
    return center, scale


def _mirror_name(name: str) -> str:
    for left, right in (("OP L", "OP R"), ("Left ", "Right ")):
        if name.startswith(left):
            return right + name[len(left) :]
        if name.startswith(right):
            return left + name[len(right) :]
    return name


def limb_swap_permutation(words: tuple[str, ...]) -> np.ndarray:
    """(49,) permutation exchanging the left and right joints whose names contain any of `words`."""
    index = {name: i for i, name in enumerate(JOINT_NAMES_49)}
    perm = np.arange(len(JOINT_NAMES_49))
    for i, name in enumerate(JOINT_NAMES_49):
        mirror = _mirror_name(name)
        if mirror != name and any(word in name for word in words):
            perm[i] = index[mirror]
    return perm


LIMB_SWAPS = (
    limb_swap_permutation(("Shoulder", "Elbow", "Wrist")),
    limb_swap_permutation(("Hip", "Knee", "Ankle", "Toe", "Heel")),
)


@dataclass(frozen=True)
class KeypointNoise:
    """Detector mimic settings. jitter_frac: std of the per-axis error / bbox side (200 * scale)."""

    jitter_frac: float = 0.015
    drop_prob: float = 0.03
    occluded_drop_prob: float = 0.5
    swap_prob: float = 0.03
    conf_mean: float = 0.85
    conf_std: float = 0.08

    def __post_init__(self) -> None:
        for name in ("drop_prob", "occluded_drop_prob", "swap_prob", "conf_mean"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"KeypointNoise.{name}: expected a probability in [0, 1], found {value}")
        for name in ("jitter_frac", "conf_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"KeypointNoise.{name}: expected >= 0, found {getattr(self, name)}")


def detect_keypoints(
    points_px: np.ndarray,
    visible: np.ndarray,
    scale: np.ndarray,
    width: int,
    height: int,
    noise: KeypointNoise,
    rng: np.random.Generator,
) -> np.ndarray:
    """Exact joints (T, 49, 2) -> detector-like (T, 49, 3) (x, y, confidence), pixels.

    visible (T, 49) bool: not hidden behind a surface; scale (T,) bbox scale. Joints outside the
    (width, height) image after the noise are dropped too.
    """
    num_frames, num_joints, _ = points_px.shape
    if num_joints != len(JOINT_NAMES_49):
        raise ValueError(
            f"detect_keypoints: expected (T, {len(JOINT_NAMES_49)}, 2) joints, found {points_px.shape}"
        )
    points = points_px.copy()
    swap = rng.random(num_frames) < noise.swap_prob
    limb = rng.integers(len(LIMB_SWAPS), size=num_frames)
    for t in np.flatnonzero(swap):
        points[t] = points[t, LIMB_SWAPS[limb[t]]]
    sigma = noise.jitter_frac * BBOX_UNIT * scale[:, None, None]
    error = rng.normal(size=points.shape) * sigma
    points += error
    normalized_error = np.linalg.norm(error, axis=-1) / np.maximum(sigma[..., 0], 1e-9)
    conf = rng.normal(noise.conf_mean, noise.conf_std, (num_frames, num_joints)) - 0.05 * normalized_error
    conf = np.where(visible, conf, 0.5 * conf)
    conf = np.clip(conf, 0.05, 1.0)
    drop = rng.random((num_frames, num_joints)) < np.where(visible, noise.drop_prob, noise.occluded_drop_prob)
    inside = (
        (points[..., 0] >= 0)
        & (points[..., 0] <= width - 1)
        & (points[..., 1] >= 0)
        & (points[..., 1] <= height - 1)
    )
    keep = ~drop & inside
    return np.where(keep[..., None], np.concatenate([points, conf[..., None]], axis=-1), 0.0)
