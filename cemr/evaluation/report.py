"""Score per-frame SMPL predictions against a prepared dataset's ground truth (3DPW protocol, FORMATS 9).

GT joints come from the gendered body model, the PVE reference from the neutral one (as DynaBOA and
VIBE), the prediction from the neutral one; all without translation.
"""

from __future__ import annotations

import numpy as np
import torch

from cemr.body import GENDER_CODES
from cemr.evaluation.metrics import accel_error
from cemr.evaluation.protocol import M_TO_MM, joints14, score_frames
from cemr.models.prediction import body_vertices


@torch.no_grad()
def score_predictions(
    pred_pose: np.ndarray,
    pred_betas: np.ndarray,
    gt_pose: np.ndarray,
    gt_betas: np.ndarray,
    gt_gender: np.ndarray,
    track: np.ndarray,
    body_models: dict[str, torch.nn.Module],
    J_regressor_h36m: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-frame errors in mm for N frames given in time order within each track.

    body_models maps "neutral", "male", "female" to body models; gt_gender holds 'm', 'f' or 'n' per
    frame. Returns {"mpjpe", "pa_mpjpe", "pve"} (N,) and "accel_error" (one value per interior frame of
    each track of >= 3 frames).
    """
    n = len(pred_pose)
    if not (len(pred_betas) == len(gt_pose) == len(gt_betas) == len(gt_gender) == len(track) == n):
        raise ValueError("score_predictions: prediction and ground-truth arrays have different lengths")
    pred_verts = body_vertices(body_models["neutral"], pred_pose, pred_betas)
    gt_neutral = body_vertices(body_models["neutral"], gt_pose, gt_betas)
    gt_verts = gt_neutral.copy()
    for code, name in GENDER_CODES.items():
        rows = np.flatnonzero(np.asarray(gt_gender) == code)
        if len(rows) and name != "neutral":
            gt_verts[rows] = body_vertices(body_models[name], gt_pose[rows], gt_betas[rows])
    errors = score_frames(pred_verts, gt_verts, J_regressor_h36m, gt_vertices_pve_m=gt_neutral)
    pred_j14, gt_j14 = joints14(pred_verts, J_regressor_h36m), joints14(gt_verts, J_regressor_h36m)
    accel = [
        accel_error(pred_j14[track == t], gt_j14[track == t])
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


def score_dataset(predictions: dict, frames, body_models: dict, J_regressor_h36m: np.ndarray) -> dict:
    """Per-frame errors of predictions {index, pose, betas} against a PreparedDataset's SMPL ground truth.

    Only rows with SMPL labels are scored; predictions must be in stream order (tracks in time order).
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
    return score_predictions(
        np.asarray(predictions["pose"])[labelled],
        np.asarray(predictions["betas"])[labelled],
        data["pose"][rows],
        data["shape"][rows],
        np.asarray(data["gender"])[rows],
        track,
        body_models,
        J_regressor_h36m,
    )
