"""SourceModule: SPIN-style supervised training of the regressor on the source domain."""

from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn

from cemr.models.losses import labelled_objective
from cemr.models.prediction import decode


class SourceModule(L.LightningModule):
    """Trains `model` with 2D keypoint, 3D joint and SMPL pose/shape losses (weights from config).

    Given `align_head` (P), it learns P with the model (`training.align.joint_weight` > 0): batches
    are then {"frames": a frame batch, "clips": source clips with their frozen video embeddings
    ("target")}, and the loss adds joint_weight x (1 - cos(P(mean trunk features of a clip), its
    embedding)), so that the trunk's features learn to carry what level 3 aligns them with.
    """

    def __init__(
        self,
        model: nn.Module,
        body_model: nn.Module,
        training,
        focal_length: float,
        crop_size: int,
        align_head: nn.Module | None = None,
    ):
        super().__init__()
        self.model = model
        self.body_model = body_model.requires_grad_(False)
        self.cfg = training
        self.focal_length = focal_length
        self.crop_size = crop_size
        self.align_head = align_head

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        clips = None
        if self.align_head is not None:
            batch, clips = batch["frames"], batch["clips"]
        images, labels = _model_inputs(batch)
        pred = decode(self.model(images), self.body_model, self.focal_length, self.crop_size)
        loss, parts = labelled_objective(pred, _as_float(labels, pred.rotmat.dtype), self.cfg.loss_weights)
        if clips is not None:
            pooled = clip_features(self.model, clips["img"]).mean(1)
            parts["video_align"] = alignment_loss(self.align_head, pooled, clips["target"])
            loss = loss + self.cfg.align.joint_weight * parts["video_align"]
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def trained_parameters(self) -> list[nn.Parameter]:
        """The model's weights (less backbone.frozen) in its order, then P's when it learns P."""
        heads = [] if self.align_head is None else list(self.align_head.parameters())
        return [p for p in [*self.model.parameters(), *heads] if p.requires_grad]

    def configure_optimizers(self):
        optimizer = instantiate(self.cfg.optimizer)(self.trained_parameters())
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, self.trainer.max_epochs)
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def sequence_length(model: nn.Module) -> int | None:
    """The clip length T a sequence model declares (`seq_len`: it takes images (B, T, 3, S, S));
    None for a single-frame model (images (B, 3, S, S))."""
    return getattr(model, "seq_len", None)


def clip_features(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """Per-frame pooled trunk features (B, T, C) of clips (B, 3, T, S, S), for either kind of model."""
    frames = clips.transpose(1, 2)  # (B, T, 3, S, S)
    if sequence_length(model) is not None:
        return model.extract_features(frames)
    return model.extract_features(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])


def alignment_loss(head: nn.Module, pooled: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos(P(pooled), video embedding): `pooled` (B, C) the clips' mean per-frame trunk
    features, `targets` (B, D) their frozen video embeddings."""
    return (1 - torch.nn.functional.cosine_similarity(head(pooled), targets.to(pooled.dtype))).mean()


def _model_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images for the model and per-frame labels matching `decode`'s flattened predictions.

    A frame batch (img (B, 3, H, W)) passes through. A clip batch (ClipDataset: img (B, 3, T, H, W),
    labels (B, T, ...)) gives a sequence model images (B, T, 3, H, W) and labels flattened to (B*T, ...).
    """
    images = batch["img"]
    if images.ndim != 5:
        return images, batch
    labels = {k: v.flatten(0, 1) for k, v in batch.items() if k != "img" and torch.is_tensor(v)}
    return images.transpose(1, 2), labels


def _as_float(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


class VideoMAEModule(L.LightningModule):
    """Masked-autoencoder pretraining of the level-3 video encoder (tube masks from a seeded generator)."""

    def __init__(self, pretrainer: nn.Module, lr: float, seed: int = 0):
        super().__init__()
        self.pretrainer = pretrainer
        self.lr = lr
        self.generator = torch.Generator().manual_seed(seed)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        clip = batch["img"]
        mask = self.pretrainer.make_mask(clip.shape[0], generator=self.generator).to(clip.device)
        loss = self.pretrainer.loss(clip, mask)
        self.log("videomae/loss", loss, prog_bar=True, batch_size=clip.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.pretrainer.parameters(), lr=self.lr, betas=(0.9, 0.95), weight_decay=0.05
        )
