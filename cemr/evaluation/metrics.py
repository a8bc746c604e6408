"""Per-frame 3D errors (shared/reference/FORMATS.md, section 9).

Every function takes numpy arrays or torch tensors of shape (N, J, 3) in any unit and returns
per-frame errors in that unit, as the same array type (torch results are differentiable).
"""

from __future__ import annotations

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def _check_pair(pred: Array, gt: Array, name: str) -> None:
    if type(pred) is not type(gt) or not isinstance(pred, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"{name}: pred and gt must both be numpy arrays or both torch tensors, "
            f"found {type(pred).__name__} and {type(gt).__name__}"
        )
    if pred.ndim != 3 or pred.shape[-1] != 3 or tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(
            f"{name}: expected pred and gt of the same shape (N, J, 3), found "
            f"{tuple(pred.shape)} and {tuple(gt.shape)}"
        )


def _point_dist(a: Array, b: Array) -> Array:
    """(..., 3) -> (...) Euclidean distance; torch's norm has a zero (not NaN) gradient at 0."""
    if isinstance(a, torch.Tensor):
        return torch.linalg.vector_norm(a - b, dim=-1)
    return np.linalg.norm(a - b, axis=-1)


def mpjpe(pred: Array, gt: Array) -> Array:
    """(N, J, 3), (N, J, 3) -> (N,) mean per-joint position error, no alignment."""
    _check_pair(pred, gt, "mpjpe")
    return _point_dist(pred, gt).mean(-1)


def pve(pred_verts: Array, gt_verts: Array) -> Array:
    """(N, V, 3), (N, V, 3) -> (N,) mean per-vertex error, no alignment or centring."""
    _check_pair(pred_verts, gt_verts, "pve")
    return _point_dist(pred_verts, gt_verts).mean(-1)


def similarity_procrustes(pred: Array, gt: Array) -> Array:
    """(N, J, 3) -> (N, J, 3) pred aligned to gt by the best similarity s R p + t, per frame.

    SPIN compute_similarity_transform, batched: K = X^T Y, (U, S, Vt) = svd(K),
    R = Vt^T diag(1, 1, d) U^T with d = -1 where det(U Vt) < 0 (no reflections),
    s = trace(R K) / |X|^2. Numpy input is computed in float64 through torch.
    """
    _check_pair(pred, gt, "similarity_procrustes")
    if isinstance(pred, np.ndarray):
        aligned = similarity_procrustes(
            torch.from_numpy(pred.astype(np.float64)), torch.from_numpy(gt.astype(np.float64))
        )
        return aligned.numpy()
    # no SVD or det in half precision, even under autocast
    dtype = torch.promote_types(pred.dtype, torch.float32)
    with torch.autocast(pred.device.type, enabled=False):
        p, g = pred.to(dtype), gt.to(dtype)
        mu_p, mu_g = p.mean(-2, keepdim=True), g.mean(-2, keepdim=True)
        x, y = p - mu_p, g - mu_g
        k = x.transpose(-1, -2) @ y  # (N, 3, 3) = sum_j x_j y_j^T
        u, _, vt = torch.linalg.svd(k)
        z = torch.ones(*k.shape[:-1], dtype=dtype, device=k.device)
        z[..., 2] = torch.where(torch.det(u @ vt) < 0, -1.0, 1.0)
        rot = vt.transpose(-1, -2) @ (z[..., None] * u.transpose(-1, -2))
        scale = (rot * k.transpose(-1, -2)).sum((-1, -2)) / (x * x).sum((-1, -2))  # trace(R K)
        aligned = scale[..., None, None] * x @ rot.transpose(-1, -2) + mu_g
    return aligned.to(pred.dtype)


def pa_mpjpe(pred: Array, gt: Array) -> Array:
    """(N, J, 3), (N, J, 3) -> (N,) MPJPE after per-frame similarity Procrustes alignment."""
    return mpjpe(similarity_procrustes(pred, gt), gt)


def accel_error(pred: Array, gt: Array, visible: Array | None = None) -> Array:
    """Acceleration error of one time-ordered sequence (VIBE compute_error_accel).

    a_t = X_{t-1} - 2 X_t + X_{t+1}; err_t = mean_j |a_t^pred - a_t^gt| for t = 1..N-2, shape
    (N-2,). With ``visible`` (N,) bool, triples touching an invisible frame are dropped, so the
    result has one entry per fully visible triple (t-1, t, t+1), in order. Call once per track.
    """
    _check_pair(pred, gt, "accel_error")
    if pred.shape[0] < 3:
        raise ValueError(f"accel_error: need at least 3 frames, found pred shape {tuple(pred.shape)}")
    accel_pred = pred[:-2] - 2 * pred[1:-1] + pred[2:]
    accel_gt = gt[:-2] - 2 * gt[1:-1] + gt[2:]
    err = _point_dist(accel_pred, accel_gt).mean(-1)
    if visible is None:
        return err
    if isinstance(err, torch.Tensor):
        vis = torch.as_tensor(visible, device=err.device).bool()
    else:
        vis = np.asarray(visible).astype(bool)
    if tuple(vis.shape) != (pred.shape[0],):
        raise ValueError(
            f"accel_error: visible must have shape ({pred.shape[0]},) to match pred "
            f"{tuple(pred.shape)}, found {tuple(vis.shape)}"
        )
    return err[vis[:-2] & vis[1:-1] & vis[2:]]
