"""The skeleton: SMPL's 24 joints in the procedural body's rest T-pose, its joint index and mirror maps."""

from __future__ import annotations

import numpy as np

from cemr.body.joints import SMPL_JOINT_NAMES

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
