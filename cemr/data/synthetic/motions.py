"""Parametric motion families: smooth SMPL joint-angle curves within joint limits.

A joint rotation is written as angles (a, b, c) about the x, y, z axes of the joint's rest frame
(SMPL T-pose: +y up, the body faces +z, its left side is +x) and composed as
R = Rx(a) Ry(b) Rz(c), so c acts first. In that frame, for the left side:
hip x < 0 swings the thigh forward, knee x > 0 bends the knee, ankle x > 0 points the toes,
spine x > 0 bends forward, shoulder z < 0 lowers the arm from the T-pose, then shoulder x < 0
lifts the lowered arm forward, elbow y < 0 bends the forearm forward. Right joints are the mirror
image (y and z angles negated), so every table below is written once for the left side.

Each family is a table of channels (joint, axis, base angle, amplitude, waveform, phase). A
sequence draws the family's frequency and every channel's base and amplitude, adds smooth
random wobble to all joints, and clips each angle to its joint limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cemr.body.joints import SMPL_JOINT_NAMES
from cemr.geometry import axis_angle_to_rotmat, rotmat_to_axis_angle

NUM_BODY_JOINTS = len(SMPL_JOINT_NAMES) - 1  # 23, the root is separate

# (lo, hi) degrees about x, y, z (left side; the right side mirrors), see the module docstring.
JOINT_LIMITS_DEG: dict[str, tuple[tuple[float, float], ...]] = {
    "hip": ((-125, 35), (-40, 40), (-25, 50)),
    "knee": ((0, 150), (-5, 5), (-5, 5)),
    "ankle": ((-30, 45), (-15, 15), (-20, 20)),
    "foot": ((-15, 30), (-5, 5), (-5, 5)),
    "spine1": ((-25, 45), (-25, 25), (-25, 25)),
    "spine2": ((-20, 40), (-20, 20), (-20, 20)),
    "spine3": ((-20, 40), (-20, 20), (-20, 20)),
    "neck": ((-35, 45), (-50, 50), (-30, 30)),
    "head": ((-30, 30), (-30, 30), (-20, 20)),
    "collar": ((-10, 10), (-15, 15), (-10, 30)),
    "shoulder": ((-175, 60), (-100, 40), (-90, 90)),
    "elbow": ((-60, 60), (-150, 0), (-5, 5)),
    "wrist": ((-40, 40), (-30, 30), (-60, 60)),
    "hand": ((-10, 10), (-10, 10), (-15, 15)),
    "root": ((-40, 60), (-180, 180), (-25, 25)),  # pitch, yaw offset, roll of the pelvis (world)
}


def _limit_key(smpl_joint_name: str) -> tuple[str, str]:
    """'left_hip' -> ('hip', 'L'), 'spine2' -> ('spine2', '')."""
    for prefix, side in (("left_", "L"), ("right_", "R")):
        if smpl_joint_name.startswith(prefix):
            return smpl_joint_name[len(prefix) :], side
    return smpl_joint_name, ""


# body-pose slot (0..22) of each (limit key, side), and the per-slot limits in its own side's sense
BODY_SLOTS = {_limit_key(name): i for i, name in enumerate(SMPL_JOINT_NAMES[1:])}
_MIRROR = np.array([1.0, -1.0, -1.0])  # left angles -> right angles


def _slot_limits_deg() -> np.ndarray:
    """(23, 3, 2) lo/hi per body joint and axis, in that joint's own (possibly mirrored) angles."""
    limits = np.zeros((NUM_BODY_JOINTS, 3, 2))
    for (key, side), slot in BODY_SLOTS.items():
        lohi = np.array(JOINT_LIMITS_DEG[key], dtype=np.float64)
        if side == "R":
            lohi = np.sort(lohi * _MIRROR[:, None], axis=1)
        limits[slot] = lohi
    return limits


BODY_LIMITS_DEG = _slot_limits_deg()

WAVES = {
    "sin": np.sin,
    "pos": lambda x: 0.5 * (1.0 - np.cos(x)),  # 0 -> 1 -> 0, smooth
    "pos2": lambda x: (0.5 * (1.0 - np.cos(x))) ** 2,  # sharper peak at x = pi
    "const": lambda x: np.zeros_like(x),
}


@dataclass(frozen=True)
class Channel:
    """One joint angle over time: base + amp * wave(2 pi f t + phase0 + phase), in degrees.

    side (ignored for the spine, neck, head and root): 'both' (left uses `phase`, right
    `phase + right_phase`, both mirrored from the same drawn base/amp), 'one' (only the side the
    sequence draws for the family), 'other' (the opposite side to 'one').
    """

    joint: str
    axis: int
    base: tuple[float, float]
    amp: tuple[float, float] = (0.0, 0.0)
    wave: str = "const"
    phase: float = 0.0
    side: str = "both"
    right_phase: float = 0.0


@dataclass(frozen=True)
class MotionFamily:
    """A kind of motion. root: 'still' | 'circle' (walk a circle) | 'turn' | 'sway'."""

    name: str
    freq_hz: tuple[float, float]
    channels: tuple[Channel, ...]
    root: str = "still"
    wobble_deg: float = 3.0
    speed_m_s: tuple[float, float] = (0.0, 0.0)
    seated: bool = False  # a stool is placed under the pelvis at its lowest point


@dataclass
class Motion:
    """Joint rotations of one sequence, world frame (+y up).

    body_pose (T, 23, 3) axis-angle radians; root_orient (T, 3) axis-angle of the pelvis in the
    world; root_xz (T, 2) pelvis position on the ground plane, metres (its height is set later
    from ground contact).
    """

    family: str
    body_pose: np.ndarray
    root_orient: np.ndarray
    root_xz: np.ndarray


PI = math.pi
_ARMS_DOWN = (
    Channel("shoulder", 2, (-80, -68)),
    Channel("elbow", 1, (-25, -8)),
)

SOURCE_FAMILIES = (
    MotionFamily(
        "walking",
        (0.8, 1.05),
        root="circle",
        speed_m_s=(0.6, 1.0),
        channels=(
            Channel("hip", 0, (-8, -2), (18, 28), "sin", 0.0, right_phase=PI),
            Channel("knee", 0, (4, 10), (40, 60), "pos2", 0.0, right_phase=PI),
            Channel("ankle", 0, (-3, 3), (8, 14), "sin", 0.6, right_phase=PI),
            Channel("shoulder", 2, (-80, -70)),
            Channel("shoulder", 0, (-4, 4), (14, 28), "sin", PI, right_phase=PI),
            Channel("elbow", 1, (-30, -12), (6, 14), "pos", PI, right_phase=PI),
            Channel("spine2", 1, (-3, 3), (3, 7), "sin", 0.0),
        ),
    ),
    MotionFamily(
        "arm_raise",
        (0.2, 0.45),
        channels=(
            Channel("shoulder", 2, (-82, -72), (90, 150), "pos", 0.0, right_phase=0.0),
            Channel("shoulder", 0, (-30, 5), (0, 10), "sin"),
            Channel("elbow", 1, (-20, -5), (0, 15), "pos", PI / 2),
            Channel("collar", 2, (0, 5), (5, 12), "pos"),
            Channel("spine2", 0, (-5, 3)),
        ),
    ),
    MotionFamily(
        "arm_raise_front",
        (0.2, 0.45),
        channels=(
            Channel("shoulder", 2, (-84, -76)),
            Channel("shoulder", 0, (0, 5), (-150, -80), "pos", 0.0, right_phase=PI),
            Channel("elbow", 1, (-25, -5), (0, 20), "pos"),
            Channel("spine1", 0, (-8, 0)),
        ),
    ),
    MotionFamily(
        "squat",
        (0.25, 0.45),
        channels=(
            Channel("hip", 0, (-6, 0), (-95, -65), "pos"),
            Channel("hip", 2, (3, 10)),
            Channel("knee", 0, (2, 6), (85, 115), "pos"),
            Channel("ankle", 0, (-2, 2), (-28, -16), "pos"),
            Channel("spine1", 0, (0, 4), (10, 25), "pos"),
            Channel("shoulder", 2, (-82, -75)),
            Channel("shoulder", 0, (-5, 0), (-85, -55), "pos"),
            Channel("elbow", 1, (-20, -5)),
        ),
    ),
    MotionFamily(
        "turning",
        (0.6, 0.9),
        root="turn",
        channels=(
            Channel("hip", 0, (-4, 0), (6, 12), "sin", 0.0, right_phase=PI),
            Channel("knee", 0, (3, 8), (10, 25), "pos2", 0.0, right_phase=PI),
            Channel("neck", 1, (-15, 15), (5, 15), "sin", 0.5),
            *_ARMS_DOWN,
        ),
    ),
)

TARGET_FAMILIES = (
    MotionFamily(
        "sitting",
        (0.12, 0.25),
        wobble_deg=5.0,
        seated=True,
        channels=(
            Channel("hip", 0, (-8, 0), (-100, -80), "pos"),
            Channel("hip", 2, (4, 15)),
            Channel("knee", 0, (3, 10), (80, 100), "pos"),
            Channel("spine1", 0, (-5, 10), (-10, 15), "pos"),
            Channel("shoulder", 2, (-75, -55)),
            Channel("shoulder", 0, (-40, -15), (-20, 0), "pos"),
            Channel("elbow", 1, (-70, -35)),
        ),
    ),
    MotionFamily(
        "kicking",
        (0.4, 0.8),
        wobble_deg=6.0,
        channels=(
            Channel("hip", 0, (-12, 0), (-115, -70), "pos2", side="one"),
            Channel("knee", 0, (10, 25), (40, 80), "pos", -PI / 2, side="one"),
            Channel("ankle", 0, (10, 30), side="one"),
            Channel("hip", 0, (-5, 5), side="other"),
            Channel("knee", 0, (5, 15), side="other"),
            Channel("spine1", 0, (-15, 0), (-10, 0), "pos2"),
            Channel("shoulder", 2, (-45, -10)),
            Channel("shoulder", 0, (-40, 10), (-20, 20), "sin", PI / 2),
            Channel("elbow", 1, (-70, -20)),
        ),
    ),
    MotionFamily(
        "reaching",
        (0.2, 0.4),
        wobble_deg=6.0,
        channels=(
            Channel("shoulder", 2, (-84, -70), side="one"),
            Channel("shoulder", 0, (-5, 5), (-175, -120), "pos", side="one"),
            Channel("shoulder", 1, (-30, 10), side="one"),
            Channel("elbow", 1, (-15, 0), side="one"),
            Channel("shoulder", 2, (-85, -60), side="other"),
            Channel("elbow", 1, (-60, -10), side="other"),
            Channel("spine1", 1, (-25, 25)),
            Channel("spine1", 2, (-15, 15), (-10, 10), "pos"),
            Channel("spine2", 0, (-15, 5), (-10, 0), "pos"),
            Channel("ankle", 0, (0, 5), (20, 40), "pos"),
            Channel("neck", 0, (-30, -10), (-10, 0), "pos"),
        ),
    ),
    MotionFamily(
        "dancing",
        (0.4, 0.8),
        root="sway",
        wobble_deg=8.0,
        channels=(
            Channel("hip", 0, (-20, 0), (10, 35), "sin", 0.0, right_phase=PI),
            Channel("hip", 2, (0, 15), (0, 15), "sin", PI / 2, right_phase=PI),
            Channel("knee", 0, (10, 30), (10, 50), "pos", 0.0, right_phase=PI),
            Channel("spine1", 2, (-5, 5), (8, 20), "sin"),
            Channel("spine2", 1, (-10, 10), (10, 25), "sin", PI / 3),
            Channel("shoulder", 2, (-50, 20), (30, 60), "sin", 0.0, right_phase=PI),
            Channel("shoulder", 0, (-50, 0), (20, 60), "sin", PI / 2, right_phase=PI),
            Channel("elbow", 1, (-100, -40), (20, 50), "sin", 0.0, right_phase=PI / 2),
            Channel("neck", 1, (-15, 15), (10, 30), "sin", PI / 4),
        ),
    ),
    MotionFamily(
        "bending",
        (0.15, 0.3),
        wobble_deg=5.0,
        channels=(
            Channel("root", 0, (0, 5), (40, 70), "pos"),
            Channel("hip", 0, (-3, 3), (-70, -40), "pos"),
            Channel("spine1", 0, (0, 5), (10, 30), "pos"),
            Channel("spine2", 0, (0, 5), (10, 25), "pos"),
            Channel("spine3", 0, (0, 5), (5, 20), "pos"),
            Channel("neck", 0, (-5, 5), (-25, -10), "pos"),
            Channel("shoulder", 2, (-82, -72)),
            Channel("shoulder", 0, (-10, 0), (-70, -30), "pos"),
            Channel("elbow", 1, (-20, -5)),
        ),
    ),
    MotionFamily(
        "crouching",
        (0.1, 0.2),
        wobble_deg=5.0,
        channels=(
            Channel("root", 0, (0, 5), (20, 40), "pos"),
            Channel("hip", 0, (-5, 0), (-120, -95), "pos"),
            Channel("hip", 2, (5, 20)),
            Channel("knee", 0, (3, 8), (115, 145), "pos"),
            Channel("ankle", 0, (-2, 2), (-32, -22), "pos"),
            Channel("spine1", 0, (0, 5), (5, 25), "pos"),
            Channel("shoulder", 2, (-75, -55)),
            Channel("shoulder", 0, (-10, 0), (-60, -30), "pos"),
            Channel("elbow", 1, (-20, -5), (-60, -20), "pos"),
        ),
    ),
)

FAMILIES = {family.name: family for family in SOURCE_FAMILIES + TARGET_FAMILIES}


def smooth_noise(
    rng: np.random.Generator,
    times_s: np.ndarray,
    shape: tuple[int, ...],
    freq_hz: tuple[float, float],
    components: int = 3,
) -> np.ndarray:
    """(T, *shape) sum of `components` random sinusoids, unit standard deviation per entry."""
    freqs = rng.uniform(*freq_hz, size=(components, *shape))
    phases = rng.uniform(0.0, 2 * PI, size=(components, *shape))
    t = times_s.reshape(-1, *([1] * (len(shape) + 1)))
    return np.sqrt(2.0 / components) * np.sin(2 * PI * freqs * t + phases).sum(axis=1)


def euler_xyz_rotmat(angles_rad: np.ndarray) -> np.ndarray:
    """(..., 3) angles (a, b, c) -> (..., 3, 3) float64 rotation Rx(a) Ry(b) Rz(c)."""
    angles = torch.as_tensor(np.asarray(angles_rad), dtype=torch.float64)
    axes = torch.eye(3, dtype=torch.float64)
    rx, ry, rz = (axis_angle_to_rotmat(angles[..., i, None] * axes[i]) for i in range(3))
    return (rx @ ry @ rz).numpy()


def _channel_values(
    channel: Channel, base: float, amp: float, phase0: float, freq: float, times_s: np.ndarray, right: bool
) -> np.ndarray:
    phase = phase0 + channel.phase + (channel.right_phase if right else 0.0)
    return base + amp * WAVES[channel.wave](2 * PI * freq * times_s + phase)


def sample_motion(family: MotionFamily, num_frames: int, fps: float, rng: np.random.Generator) -> Motion:
    """Draw one sequence of `family`: (T,) frames at `fps`, smooth, within JOINT_LIMITS_DEG."""
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"sample_motion: need num_frames >= 1 and fps > 0, found {num_frames}, {fps}")
    times_s = np.arange(num_frames) / fps
    freq = rng.uniform(*family.freq_hz)
    phase0 = rng.uniform(0.0, 2 * PI)
    one_side = "L" if rng.random() < 0.5 else "R"
    sides_for = {"both": ("L", "R"), "one": (one_side,), "other": ("R" if one_side == "L" else "L",)}

    body_deg = np.zeros((num_frames, NUM_BODY_JOINTS, 3))
    root_deg = np.zeros((num_frames, 3))  # pitch, yaw offset, roll
    for channel in family.channels:
        base = rng.uniform(*channel.base)
        amp = rng.uniform(*channel.amp)
        centre = channel.joint == "root" or (channel.joint, "") in BODY_SLOTS
        for side in ("",) if centre else sides_for[channel.side]:
            values = _channel_values(channel, base, amp, phase0, freq, times_s, right=side == "R")
            if channel.joint == "root":
                root_deg[:, channel.axis] = values
                continue
            if (channel.joint, side) not in BODY_SLOTS:
                raise KeyError(f"motion family {family.name!r}: no joint {channel.joint!r} on side {side!r}")
            body_deg[:, BODY_SLOTS[channel.joint, side], channel.axis] = values * (
                _MIRROR[channel.axis] if side == "R" else 1.0
            )

    body_deg += family.wobble_deg * smooth_noise(rng, times_s, (NUM_BODY_JOINTS, 3), (0.1, 0.6))
    body_deg = np.clip(body_deg, BODY_LIMITS_DEG[..., 0], BODY_LIMITS_DEG[..., 1])
    root_lo, root_hi = np.array(JOINT_LIMITS_DEG["root"]).T
    root_deg = np.clip(root_deg, root_lo, root_hi)

    heading, root_xz = _root_path(family, freq, times_s, rng)
    yaw = np.radians(root_deg[:, 1]) + heading
    zeros = np.zeros_like(yaw)
    # world pelvis rotation = Ry(yaw) Rx(pitch) Rz(roll)
    root = euler_xyz_rotmat(np.stack([zeros, yaw, zeros], 1)) @ euler_xyz_rotmat(
        np.stack([np.radians(root_deg[:, 0]), zeros, np.radians(root_deg[:, 2])], 1)
    )
    body = euler_xyz_rotmat(np.radians(body_deg))
    return Motion(family.name, _axis_angle(body), _axis_angle(root), root_xz)


def _axis_angle(rotmat: np.ndarray) -> np.ndarray:
    return rotmat_to_axis_angle(torch.from_numpy(rotmat)).numpy()


def _root_path(
    family: MotionFamily, freq: float, times_s: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Heading (T,) radians about +y and pelvis ground position (T, 2) (x, z), metres."""
    heading0 = rng.uniform(-PI, PI)
    drift = 0.05 * smooth_noise(rng, times_s, (2,), (0.05, 0.3))
    if family.root == "circle":
        radius = rng.uniform(0.5, 0.8)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        angle = heading0 + direction * rng.uniform(*family.speed_m_s) * times_s / radius
        xz = radius * np.stack([np.sin(angle), np.cos(angle)], 1)
        # walking tangent to the circle: heading = angle +- 90 deg (heading 0 faces +z)
        return angle + direction * PI / 2, xz + drift
    if family.root == "turn":
        total = rng.choice([-1.0, 1.0]) * np.radians(rng.uniform(90, 270))
        progress = np.clip(times_s / max(times_s[-1], 1e-9), 0.0, 1.0)
        smooth = progress * progress * (3 - 2 * progress)  # smoothstep
        return heading0 + total * smooth, drift
    if family.root == "sway":
        sway = 0.12 * np.sin(2 * PI * freq * times_s + rng.uniform(0, 2 * PI))
        yaw = np.radians(rng.uniform(20, 45)) * np.sin(PI * freq * times_s + rng.uniform(0, 2 * PI))
        xz = np.stack([sway * np.cos(heading0), -sway * np.sin(heading0)], 1) + drift
        return heading0 + yaw, xz
    return heading0 + np.radians(5.0) * smooth_noise(rng, times_s, (), (0.05, 0.2)), drift
