"""Score per-frame SMPL predictions against a prepared dataset's ground truth (3DPW protocol, FORMATS 9).

GT joints come from the gendered body model, the PVE reference from the neutral one (as DynaBOA and
VIBE), the prediction from the neutral one; all without translation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cemr.body import GENDER_CODES
from cemr.evaluation.metrics import accel_error
from cemr.evaluation.protocol import M_TO_MM, frame_errors, joints14
from cemr.models.prediction import body_vertices


@dataclass(frozen=True)
class GroundTruth:
    """The meshes and joints N labelled frames are scored against (metres): the gendered mesh and its
    14 joints, and the neutral mesh PVE compares with (DynaBOA, VIBE)."""

    vertices: np.ndarray  # (N, V, 3) from the frame's own gender's body model
    neutral: np.ndarray  # (N, V, 3) from the neutral body model
    joints14: np.ndarray  # (N, 14, 3) root-centred, from `vertices`


@torch.no_grad()
def ground_truth(
    gt_pose: np.ndarray,
    gt_betas: np.ndarray,
    gt_gender: np.ndarray,
    body_models: dict[str, torch.nn.Module],
    J_regressor_h36m: np.ndarray,
) -> GroundTruth:
    """body_models maps "neutral", "male", "female" to body models; gt_gender holds 'm', 'f' or 'n' per
    frame."""
    if not len(gt_pose) == len(gt_betas) == len(gt_gender):
        raise ValueError("ground_truth: pose, betas and gender arrays have different lengths")
    neutral = body_vertices(body_models["neutral"], gt_pose, gt_betas)
    vertices = neutral.copy()
    for code, name in GENDER_CODES.items():
        rows = np.flatnonzero(np.asarray(gt_gender) == code)
        if len(rows) and name != "neutral":
            vertices[rows] = body_vertices(body_models[name], gt_pose[rows], gt_betas[rows])
    return GroundTruth(vertices, neutral, joints14(vertices, J_regressor_h36m))


@torch.no_grad()
def score_predictions(
    pred_pose: np.ndarray,
    pred_betas: np.ndarray,
    truth: GroundTruth,
    track: np.ndarray,
    body_model: torch.nn.Module,
    J_regressor_h36m: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-frame errors in mm for N frames given in time order within each track, the prediction's
    mesh from the neutral `body_model`.

    Returns {"mpjpe", "pa_mpjpe", "pve"} (N,) and "accel_error" (one value per interior frame of
    each track of >= 3 frames).
    """
    n = len(pred_pose)
    if not (len(pred_betas) == len(truth.vertices) == len(track) == n):
        raise ValueError("score_predictions: prediction and ground-truth arrays have different lengths")
    pred_verts = body_vertices(body_model, pred_pose, pred_betas)
    pred_j14 = joints14(pred_verts, J_regressor_h36m)
    errors = frame_errors(pred_j14, truth.joints14, pred_verts, truth.neutral)
    accel = [
        accel_error(pred_j14[track == t], truth.joints14[track == t])
        for t in _ordered_unique(track)
        if np.sum(track == t) >= 3
    ]
    errors["accel_error"] = M_TO_MM * np.concatenate(accel) if accel else np.zeros(0)
    return errors


def _ordered_unique(values: np.ndarray) -> list:
    _, first = np.unique(values, return_index=True)
    return [values[i] for i in sorted(first)]


def summarize_errors(errors: dict[str, np.ndarray]) -> dict[str, float]:
    """Frame means of each per-frame error (mm), plus the number of scored frames."""
    summary = {name: float(np.mean(v)) for name, v in errors.items() if len(v)}
    summary["frames"] = float(len(errors["mpjpe"]))
    return summary


FRAME_ERRORS = ("mpjpe", "pa_mpjpe", "pve")


def errors_by_row(predictions: dict, frames, errors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`score_dataset`'s per-frame errors laid out by the dataset's rows: (len(frames),) arrays of
    MPJPE, PA-MPJPE and PVE (mm), NaN where a row was not predicted or has no SMPL ground truth."""
    index = np.asarray(predictions["index"])
    rows = index[np.asarray(frames.data["has_smpl"])[index] > 0]
    table = {}
    for name in FRAME_ERRORS:
        column = np.full(len(frames), np.nan)
        column[rows] = errors[name]
        table[name] = column
    return table


def frame_table(frames, scored: dict[str, dict[str, np.ndarray]]) -> str:
    """CSV text, one line per dataset row (seq, frame, person, then `<prefix><error>` columns in mm)
    from {prefix: errors_by_row(...)}; unscored cells are empty."""
    columns = [f"{prefix}{name}" for prefix in scored for name in FRAME_ERRORS]
    lines = [",".join(["row", "seq", "frame", "person", *columns])]
    data = frames.data
    values = np.stack([scored[p][n] for p in scored for n in FRAME_ERRORS], axis=1)
    for row in range(len(frames)):
        cells = ["" if np.isnan(v) else f"{v:.4f}" for v in values[row]]
        lines.append(
            ",".join(
                [str(row), str(data["seq"][row]), str(data["frame"][row]), str(data["person"][row]), *cells]
            )
        )
    return "\n".join(lines) + "\n"


def score_dataset(
    predictions: dict, frames, body_models: dict, J_regressor_h36m: np.ndarray, truths: dict | None = None
) -> dict:
    """Per-frame errors of predictions {index, pose, betas} against a PreparedDataset's SMPL ground truth.

    Only rows with SMPL labels are scored; predictions must be in stream order (tracks in time order).
    `truths`: a dict kept across calls on the same `frames` (several models scored on one target),
    where the ground truth of each set of rows is built once.
    """
    index = np.asarray(predictions["index"])
    data = frames.data
    labelled = np.asarray(data["has_smpl"])[index] > 0
    if not labelled.any():
        raise ValueError(
            f"{frames.path}: no row has SMPL ground truth (has_smpl), so there is nothing to score"
        )
    rows = index[labelled]
    pairs = np.stack([frames.seq_ids[rows], np.asarray(data["person"])[rows]], axis=1)
    track = np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)
    key = rows.tobytes()
    truth = (truths or {}).get(key)
    if truth is None:
        gender = np.asarray(data["gender"])[rows]
        truth = ground_truth(data["pose"][rows], data["shape"][rows], gender, body_models, J_regressor_h36m)
        if truths is not None:
            truths[key] = truth
    return score_predictions(
        np.asarray(predictions["pose"])[labelled],
        np.asarray(predictions["betas"])[labelled],
        truth,
        track,
        body_models["neutral"],
        J_regressor_h36m,
    )
