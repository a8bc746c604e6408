"""Models CEMR adapts (HMR, VIBE), the level-3 video encoder, and checkpoint loading."""

from cemr.models.checkpoints import (
    CEMRCheckpoint,
    CheckpointError,
    LoadReport,
    load_checkpoint,
    load_dynaboa_checkpoint,
    load_spin_checkpoint,
    load_vibe_checkpoint,
    load_videomae_checkpoint,
    save_checkpoint,
)
from cemr.models.hmr import HMR, HMROutput, Regressor, load_mean_params
from cemr.models.vibe import VIBE, TemporalEncoder
from cemr.models.video_encoder import VideoEncoder, VideoMAEPretrainer, tube_mask, tube_targets

__all__ = [
    "CEMRCheckpoint",
    "CheckpointError",
    "HMR",
    "HMROutput",
    "LoadReport",
    "Regressor",
    "TemporalEncoder",
    "VIBE",
    "VideoEncoder",
    "VideoMAEPretrainer",
    "load_checkpoint",
    "load_dynaboa_checkpoint",
    "load_mean_params",
    "load_spin_checkpoint",
    "load_vibe_checkpoint",
    "load_videomae_checkpoint",
    "save_checkpoint",
    "tube_mask",
    "tube_targets",
]
