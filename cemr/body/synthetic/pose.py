"""Pose statistics: the 8-mode GMM pose prior (gmm_08.pkl) and SPIN's mean parameters."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from cemr.body.joints import SMPL_JOINT_NAMES
from cemr.body.synthetic.shape import NUM_BETAS
from cemr.body.synthetic.skeleton import _J


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
