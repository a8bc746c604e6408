"""Level 3's fixed-lag smoother of the emitted predictions (shared/DESIGN.md section 2, level 3).

Per-frame adaptation moves the weights every frame, so the emitted poses jitter around the motion.
Frame t of a track is emitted once frame t + lag has been predicted, as the minimiser over the window
[t - past, t + lag] of the track's predictions y (6D rotations and crop cameras, each coordinate apart)

    sum_s |x_s - y_s|^2 + weight * sum_s |(D^order x)_s|^2     (D: the forward difference)

whose solution is linear in y: x_t = sum_s w_ts y_s, w_t the row of (I + weight D^T D)^-1 belonging to t.
The rotations are projected back onto SO(3) (Gram-Schmidt of the 6D representation). Shape is left
as predicted. It never feeds back into the stream: the weights and every re-run of them are the same.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from cemr.geometry import axis_angle_to_rotmat, rot6d_to_rotmat, rotmat_to_axis_angle, rotmat_to_rot6d


@lru_cache(maxsize=1024)
def _window_row(size: int, at: int, weight: float, order: int) -> np.ndarray:
    difference = np.eye(size)
    for _ in range(min(order, size - 1)):
        difference = np.diff(difference, axis=0)
    system = np.eye(size) + weight * difference.T @ difference
    row = np.linalg.solve(system, np.eye(size)[:, at])  # the system is symmetric: its column is its row
    row.flags.writeable = False
    return row


def smoothing_weights(
    length: int, weight: float, order: int, past: int, lag: int
) -> list[tuple[int, np.ndarray]]:
    """For each frame t of a track of `length` frames: (first frame of its window, the window's weights)."""
    rows = []
    for t in range(length):
        start, stop = max(0, t - past), min(length, t + lag + 1)
        rows.append((start, _window_row(stop - start, t - start, float(weight), int(order))))
    return rows


def smooth_rotations(rotmat: torch.Tensor, weight: float, order: int, at: int | None = None) -> torch.Tensor:
    """A clip's (T, ..., 3, 3) rotations smoothed over the whole clip (every frame's window holds all T
    frames), in 6D and projected back onto SO(3): level 3's pseudo-labels (CycleAdapt's denoised motion).
    `at`: only frame `at`'s (1, ..., 3, 3), the clip being its window."""
    rot6d = rotmat_to_rot6d(rotmat)
    size, weight, order = len(rotmat), float(weight), int(order)
    frames = range(size) if at is None else [at]
    matrix = np.stack([_window_row(size, t, weight, order) for t in frames])  # rows cached by _window_row
    smoothed = torch.tensordot(torch.as_tensor(matrix).to(rot6d), rot6d, dims=1)
    return rot6d_to_rotmat(smoothed)


def smooth_track(values: np.ndarray, weight: float, order: int, past: int, lag: int) -> np.ndarray:
    """The smoother applied along axis 0 of one track's (T, ...) values (float64 out)."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    out = np.empty_like(flat)
    for t, (start, row) in enumerate(smoothing_weights(len(values), weight, order, past, lag)):
        out[t] = row @ flat[start : start + len(row)]
    return out.reshape(values.shape)


def smooth_pose(pose: np.ndarray, weight: float, order: int, past: int, lag: int) -> np.ndarray:
    """A track's (T, 72) axis-angle poses smoothed in the 6D rotation representation."""
    rot6d = rotmat_to_rot6d(
        axis_angle_to_rotmat(torch.from_numpy(np.asarray(pose, np.float64)).view(-1, 24, 3))
    )
    smoothed = torch.from_numpy(smooth_track(rot6d.numpy(), weight, order, past, lag))
    return rotmat_to_axis_angle(rot6d_to_rotmat(smoothed)).reshape(len(pose), -1).numpy()


def smooth_emitted(predictions: dict, tracks, smoothing) -> dict:
    """`predictions` {index, pose, cam, ...} (dataset rows in increasing order) with pose and cam of
    every track smoothed; `tracks` are the dataset's (rows start..stop in time order), `smoothing` the
    config's {weight, order, past, lag}."""
    index = np.asarray(predictions["index"])
    if np.any(np.diff(index) <= 0):
        raise ValueError("smooth_emitted needs predictions in increasing dataset-row order")
    pose = np.array(predictions["pose"], dtype=np.float64)
    cam = np.array(predictions["cam"], dtype=np.float64)
    args = (float(smoothing.weight), int(smoothing.order), int(smoothing.past), int(smoothing.lag))
    for track in tracks:
        rows = np.flatnonzero((index >= track.start) & (index < track.stop))
        if len(rows) > 1:
            pose[rows] = smooth_pose(pose[rows], *args)
            cam[rows] = smooth_track(cam[rows], *args)
    dtype = np.asarray(predictions["pose"]).dtype
    return {
        **predictions,
        "pose": pose.astype(dtype),
        "cam": cam.astype(np.asarray(predictions["cam"]).dtype),
    }
