"""The losses of the three MiRRo levels (shared/DESIGN.md section 2), as pure functions of tensors.

Keypoints are in normalised crop units [-1, 1] with a confidence column; 3D joints in metres.
Every loss is a mean over the batch, so loss weights do not depend on the batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cemr.geometry import axis_angle_to_rotmat, rotmat_to_axis_angle
from cemr.models.prediction import BodyPrediction

# The 24 "GT" joints of the 49-joint SPIN set; pelvis is the midpoint of their hips (indices 2, 3).
GT_JOINTS = slice(25, 49)


def keypoint_2d(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Confidence-weighted squared 2D error, SPIN's: mean over (B, J, 2) of conf * (pred - xy)^2.

    pred (B, J, 2), target (B, J, 3) with (x, y, conf); slots with conf 0 (missing) add nothing.
    """
    conf = target[..., 2:]
    return (conf * (pred - target[..., :2]) ** 2).mean()


def shape_prior(betas: torch.Tensor) -> torch.Tensor:
    """Squared norm of the shape coefficients, (B, 10) -> mean over the batch of sum beta^2."""
    return (betas**2).sum(-1).mean()


def prior_costs(prior: torch.nn.Module, rotmat: torch.Tensor) -> torch.Tensor:
    """GMM max-mixture prior on the 23 body joints: rotmat (B, 24, 3, 3) -> (B,) costs (the pose prior
    term is their mean)."""
    return prior(rotmat_to_axis_angle(rotmat[:, 1:]).reshape(rotmat.shape[0], 69))


def pose_barrier(costs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean over the batch of max(0, prior cost - threshold) for (B,) `prior_costs`: zero, with zero
    gradient, for every pose the prior finds at least that plausible; only implausible poses are
    pushed back."""
    return F.relu(costs - threshold).mean()


def motion_consistency(
    pred_now: torch.Tensor, pred_before: torch.Tensor, target_now: torch.Tensor, target_before: torch.Tensor
) -> torch.Tensor:
    """The predicted 2D displacement between frames t-k and t should equal the keypoints' displacement.

    pred_* (B, J, 2), target_* (B, J, 3). A joint counts with the smaller of its two confidences.
    """
    conf = torch.minimum(target_now[..., 2:], target_before[..., 2:])
    pred_motion = pred_now - pred_before
    target_motion = target_now[..., :2] - target_before[..., :2]
    return (conf * (pred_motion - target_motion) ** 2).mean()


def teacher_consistency(student, teacher) -> torch.Tensor:
    """Mean-teacher loss between BodyPredictions (teacher detached), with DynaBOA's weights:
    5 x 2D keypoints + 5 x 3D joints + 0.001 x betas + the rotation matrices of all 24 joints."""
    return (
        5.0 * F.mse_loss(student.keypoints_2d, teacher.keypoints_2d.detach())
        + 5.0 * F.mse_loss(student.joints, teacher.joints.detach())
        + 0.001 * F.mse_loss(student.betas, teacher.betas.detach())
        + F.mse_loss(student.rotmat, teacher.rotmat.detach())
    )


def centered_gt_joints(joints: torch.Tensor) -> torch.Tensor:
    """(B, 24, C) joints in the 24 GT order -> centred at the midpoint of their hips (SPIN)."""
    pelvis = (joints[:, 2, :3] + joints[:, 3, :3]) / 2
    return joints[..., :3] - pelvis[:, None]


def joints_3d(pred_gt24: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Visibility-weighted squared error of hip-centred 3D joints; pred (B, 24, 3), target (B, 24, 4)."""
    vis = target[..., 3:]
    return (vis * (centered_gt_joints(pred_gt24) - centered_gt_joints(target)) ** 2).mean()


def smpl_parameters(
    pred_rotmat: torch.Tensor,
    pred_betas: torch.Tensor,
    gt_rotmat: torch.Tensor,
    gt_betas: torch.Tensor,
    has_smpl: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPIN's parameter losses over the samples with SMPL labels: (MSE of rotation matrices, MSE of betas)."""
    mask = has_smpl.to(pred_rotmat.dtype).flatten()
    if mask.sum() == 0:
        zero = pred_rotmat.sum() * 0
        return zero, zero
    pose_err = ((pred_rotmat - gt_rotmat) ** 2).flatten(1).mean(1)
    beta_err = ((pred_betas - gt_betas) ** 2).mean(1)
    return (pose_err * mask).sum() / mask.sum(), (beta_err * mask).sum() / mask.sum()


def video_alignment(frame_embedding: torch.Tensor, video_embedding: torch.Tensor) -> torch.Tensor:
    """1 - cos(P(mean per-frame features), E_video(clip)), both (B, D); the video side is frozen."""
    return (1 - F.cosine_similarity(frame_embedding, video_embedding.detach(), dim=-1)).mean()


def shape_consistency(betas: torch.Tensor) -> torch.Tensor:
    """One person keeps one shape: variance of beta over a track's T frames, (T, 10) -> mean over dims."""
    return betas.var(dim=0, unbiased=False).mean()


def smoothness(joints: torch.Tensor) -> torch.Tensor:
    """Squared 3D joint acceleration |X[t-1] - 2 X[t] + X[t+1]|^2 over a (T, J, 3) track, summed over xyz
    and averaged over triples and joints (0 if T < 3). Squared, so a few large jumps cost the most."""
    if joints.shape[0] < 3:
        return joints.sum() * 0
    accel = joints[:-2] - 2 * joints[1:-1] + joints[2:]
    return (accel**2).sum(-1).mean()


def emitted_smoothness(
    now_gt24: torch.Tensor, emitted_gt24: list[torch.Tensor], order: int = 1
) -> torch.Tensor:
    """Level 3's sliding window: the squared finite difference of order 1 (velocity) or 2
    (acceleration) of the hip-centred joints of frame t's prediction (B, 24, 3) after the last
    `order` predictions already emitted for this track (each (B, 24, 3), oldest first, detached),
    summed over xyz, mean over joints. Those came from earlier weight states, so this is the jitter
    that gets scored. 0 until `order` predictions were emitted.

    Order 2 with a fixed past pulls X_t to the linear extrapolation 2 X_{t-1} - X_{t-2}, which lets
    an error in velocity persist; order 1 pulls it to X_{t-1}, a causal low-pass."""
    if order not in (1, 2):
        raise ValueError(f"emitted smoothness: order must be 1 or 2, got {order}")
    if len(emitted_gt24) < order:
        return now_gt24.sum() * 0
    past = [centered_gt_joints(j.detach()) for j in emitted_gt24[-order:]]
    now = centered_gt_joints(now_gt24)
    diff = now - past[-1] if order == 1 else now - 2 * past[-1] + past[-2]
    return (diff**2).sum(-1).mean()


def labelled_objective(
    pred: BodyPrediction, batch: dict[str, torch.Tensor], weights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPIN's supervised loss (source training, and level 2's replay of source samples):
    2D keypoints + hip-centred 3D joints + SMPL pose and shape parameters."""
    gt_rotmat = axis_angle_to_rotmat(batch["pose"].reshape(-1, 24, 3))
    pose_loss, betas_loss = smpl_parameters(
        pred.rotmat, pred.betas, gt_rotmat, batch["betas"], batch["has_smpl"]
    )
    parts = {
        "keypoints_2d": weights.keypoints_2d * keypoint_2d(pred.keypoints_2d, batch["keypoints"]),
        "joints_3d": weights.joints_3d * joints_3d(pred.joints[:, GT_JOINTS], batch["joints3d"]),
        "pose": weights.pose * pose_loss,
        "betas": weights.betas * betas_loss,
    }
    return sum(parts.values()), parts
