"""The objectives of the three MiRRo levels, composed from cemr.models.losses.

Each function takes already-decoded BodyPredictions and the target tensors, and returns the weighted
total plus its named parts (for logging), so the module only decides *when* each level runs.
"""

from __future__ import annotations

import torch

from cemr.models import losses
from cemr.models.prediction import BodyPrediction


def frame_objective(
    pred: BodyPrediction,
    keypoints: torch.Tensor,
    prior: torch.nn.Module,
    weights,
    barrier: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Level 1 L_frame: 2D reprojection + shape prior + GMM pose prior on (B, 49, 3) keypoints, and
    the pose barrier (the prior's cost above `barrier`) where a barrier is given."""
    costs = losses.prior_costs(prior, pred.rotmat)  # once for the prior and the barrier
    parts = {
        "keypoints_2d": weights.keypoints_2d * losses.keypoint_2d(pred.keypoints_2d, keypoints),
        "shape_prior": weights.shape_prior * losses.shape_prior(pred.betas),
        "pose_prior": weights.pose_prior * costs.mean(),
    }
    if barrier is not None:
        parts["pose_barrier"] = weights.pose_barrier * losses.pose_barrier(costs, barrier)
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
