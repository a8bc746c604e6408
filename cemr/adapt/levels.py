"""The objectives of the three MiRRo levels, composed from cemr.adapt.losses.

Each function takes already-decoded BodyPredictions and the target tensors, and returns the weighted
total plus its named parts (for logging), so the module only decides *when* each level runs.
"""

from __future__ import annotations

import torch

from cemr.adapt import losses
from cemr.geometry import axis_angle_to_rotmat
from cemr.prediction import BodyPrediction


def frame_objective(
    pred: BodyPrediction, keypoints: torch.Tensor, prior: torch.nn.Module, weights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Level 1 L_frame: 2D reprojection + shape prior + GMM pose prior on (B, 49, 3) keypoints."""
    parts = {
        "keypoints_2d": weights.keypoints_2d * losses.keypoint_2d(pred.keypoints_2d, keypoints),
        "shape_prior": weights.shape_prior * losses.shape_prior(pred.betas),
        "pose_prior": weights.pose_prior * losses.pose_prior(prior, pred.rotmat),
    }
    return sum(parts.values()), parts


def labelled_objective(
    pred: BodyPrediction, batch: dict[str, torch.Tensor], weights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPIN's supervised loss (source training, and level 2's replay of source samples):
    2D keypoints + hip-centred 3D joints + SMPL pose and shape parameters."""
    gt_rotmat = axis_angle_to_rotmat(batch["pose"].reshape(-1, 24, 3))
    pose_loss, betas_loss = losses.smpl_parameters(
        pred.rotmat, pred.betas, gt_rotmat, batch["betas"], batch["has_smpl"]
    )
    parts = {
        "keypoints_2d": weights.keypoints_2d * losses.keypoint_2d(pred.keypoints_2d, batch["keypoints"]),
        "joints_3d": weights.joints_3d
        * losses.joints_3d(pred.joints[:, losses.GT_JOINTS], batch["joints3d"]),
        "pose": weights.pose * pose_loss,
        "betas": weights.betas * betas_loss,
    }
    return sum(parts.values()), parts


def clip_objective(
    pred: BodyPrediction, keypoints: torch.Tensor, weights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Level 3 on frames of one track: shape consistency, squared smoothness, 2D reprojection."""
    parts = {
        "shape_consistency": weights.shape_consistency * losses.shape_consistency(pred.betas),
        "smoothness": weights.smoothness * losses.smoothness(pred.joints[:, losses.GT_JOINTS]),
        "keypoints_2d": weights.keypoints_2d * losses.keypoint_2d(pred.keypoints_2d, keypoints),
    }
    return sum(parts.values()), parts


def video_align(
    pred: BodyPrediction, video_embedding: torch.Tensor, align_head: torch.nn.Module
) -> torch.Tensor:
    """Level 3's alignment: 1 - cos(P(mean of the T frames' features), E_video(the same T frames))."""
    return losses.video_alignment(align_head(pred.feature.mean(dim=0, keepdim=True)), video_embedding)
