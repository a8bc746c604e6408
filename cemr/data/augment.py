"""SPIN's training augmentation: scale, in-plane rotation, horizontal flip and colour noise.

One draw (`SpinAugment.sample`) changes the crop (`crop_image(..., scale * s, rot=r, flip=f)`) and
every label consistently, as SPIN's base_dataset does: 2D keypoints go through the same crop affine
(the flip mirrors them about the crop centre and swaps left and right), the 3D joints and the SMPL
root orientation turn about the camera axis by the crop's rotation, and a flip mirrors the 3D
joints (x -> -x, sides swapped) and the pose (`flip_pose`). Left/right permutations are derived
from the joint names, so they cannot drift from the joint sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cemr.body.joints import J24_NAMES, JOINT_NAMES_49, SMPL_JOINT_NAMES
from cemr.geometry import axis_angle_to_rotmat, rotmat_to_axis_angle

_SIDES = (("Right", "Left"), ("OP R", "OP L"), ("right_", "left_"))


def flip_permutation(names: list[str]) -> list[int]:
    """Index of each joint's mirror image in `names` (itself for joints on the midline)."""
    position = {name: i for i, name in enumerate(names)}
    perm = []
    for name in names:
        mirrored = name
        for right, left in _SIDES:
            if right in name:
                mirrored = name.replace(right, left)
            elif left in name:
                mirrored = name.replace(left, right)
        perm.append(position[mirrored])
    return perm


J49_FLIP_PERM = flip_permutation(JOINT_NAMES_49)
J24_FLIP_PERM = flip_permutation(J24_NAMES)
SMPL_FLIP_PERM = flip_permutation(SMPL_JOINT_NAMES)


def flip_pose(pose: np.ndarray) -> np.ndarray:
    """(..., 72) SMPL axis-angle pose of the mirror-image body: sides swapped, y and z negated."""
    flipped = pose.reshape(*pose.shape[:-1], 24, 3)[..., SMPL_FLIP_PERM, :] * np.array([1.0, -1.0, -1.0])
    return flipped.reshape(pose.shape)


def flip_joints(joints: np.ndarray, perm: list[int]) -> np.ndarray:
    """(..., J, C) keypoints or 3D joints mirrored: x negated, left and right swapped."""
    flipped = joints[..., perm, :].copy()
    flipped[..., 0] = -flipped[..., 0]
    return flipped


def camera_roll(rot_deg: float) -> np.ndarray:
    """(3, 3) rotation about the camera's optical axis matching a crop rotated by `rot_deg` (SPIN's
    sense): a point's image turns the same way as the crop turns it."""
    rad = -math.radians(rot_deg)
    return np.array([[math.cos(rad), -math.sin(rad), 0.0], [math.sin(rad), math.cos(rad), 0.0], [0, 0, 1.0]])


def rotate_root(pose: np.ndarray, rot_deg: float) -> np.ndarray:
    """(72,) pose with its global orientation turned by `camera_roll(rot_deg)` (SPIN's rot_aa)."""
    root = axis_angle_to_rotmat(torch.as_tensor(pose[:3], dtype=torch.float64))
    turned = torch.as_tensor(camera_roll(rot_deg)) @ root
    out = pose.copy()
    out[:3] = rotmat_to_axis_angle(turned).numpy()
    return out


@dataclass(frozen=True)
class AugmentParams:
    """One draw: flip the crop, rotate it by `rot` degrees, scale its box by `scale`, multiply each
    RGB channel by `colour`."""

    flip: bool = False
    rot: float = 0.0
    scale: float = 1.0
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class SpinAugment:
    """SPIN's defaults: flip with p 0.5; rotation N(0, 30) deg clipped to +-60, applied with p 0.4;
    box scale N(1, 0.25) clipped to [0.75, 1.25]; per-channel colour factors U(0.6, 1.4)."""

    flip_prob: float = 0.5
    rot_factor: float = 30.0
    rot_prob: float = 0.4
    scale_factor: float = 0.25
    noise_factor: float = 0.4

    def __post_init__(self) -> None:
        for name in ("flip_prob", "rot_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], found {getattr(self, name)}")
        for name in ("rot_factor", "scale_factor", "noise_factor"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"augment.{name} must be >= 0, found {getattr(self, name)}")
        if self.scale_factor >= 1.0 or self.noise_factor >= 1.0:
            raise ValueError("augment.scale_factor and augment.noise_factor must be < 1")

    def sample(self, rng: np.random.Generator) -> AugmentParams:
        flip = bool(rng.uniform() < self.flip_prob)
        colour = tuple(float(c) for c in rng.uniform(1 - self.noise_factor, 1 + self.noise_factor, 3))
        rot = float(
            np.clip(rng.standard_normal() * self.rot_factor, -2 * self.rot_factor, 2 * self.rot_factor)
        )
        scale = float(
            np.clip(
                rng.standard_normal() * self.scale_factor + 1, 1 - self.scale_factor, 1 + self.scale_factor
            )
        )
        if rng.uniform() >= self.rot_prob:
            rot = 0.0
        return AugmentParams(flip=flip, rot=rot, scale=scale, colour=colour)


def augment_colour(crop: np.ndarray, params: AugmentParams) -> np.ndarray:
    """(H, W, 3) uint8 crop with each channel multiplied by its factor, clipped to [0, 255]."""
    if params.colour == (1.0, 1.0, 1.0):
        return crop
    return np.clip(crop * np.asarray(params.colour, dtype=np.float32), 0, 255).astype(np.uint8)


def augment_labels(params: AugmentParams, pose: np.ndarray, joints3d: np.ndarray) -> tuple[np.ndarray, ...]:
    """SMPL pose (72,) and 3D joints (24, 4) (x, y, z, conf; camera axes) under `params`.

    The 2D keypoints need no help here: they go through the crop affine with the same rot and flip.
    """
    xyz = joints3d[:, :3] @ camera_roll(params.rot).T
    joints3d = np.concatenate([xyz, joints3d[:, 3:]], axis=1)
    pose = rotate_root(pose, params.rot) if params.rot else pose
    if params.flip:
        joints3d, pose = flip_joints(joints3d, J24_FLIP_PERM), flip_pose(pose)
    return pose, joints3d


def flip_keypoints_49(keypoints: np.ndarray) -> np.ndarray:
    """Swap left and right slots of (..., 49, C) keypoints whose coordinates were already mirrored by
    the crop affine (`crop_transform_matrix(flip=True)`)."""
    return keypoints[..., J49_FLIP_PERM, :]
