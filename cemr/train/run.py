"""`run(cfg)` behind train.py: source-model training and video-encoder pretraining.

task=source: train the regressor SPIN-style on the source split, fit the projection head P that
level 3 aligns with the frozen video encoder (pretraining it first if missing), save the source
checkpoint and print source-only errors on the source test split and the target (the domain gap).
task=videomae: self-supervised masked-autoencoder pretraining of the video encoder on source clips.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from cemr.data.clips import ClipDataset
from cemr.evaluation.report import score_dataset, summarize_errors
from cemr.models import VideoMAEPretrainer, load_checkpoint, save_checkpoint
from cemr.prediction import predict_frames
from cemr.runtime import (
    build_body_model,
    build_body_models,
    build_datamodule,
    build_trainer,
    is_global_zero,
    prepare_assets,
    save_config,
    seed_everything,
)
from cemr.train.module import SourceModule, VideoMAEModule

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    seed_everything(cfg.seed)
    prepare_assets(cfg)
    save_config(cfg, cfg.paths.output_dir)
    if cfg.task == "videomae":
        train_video_encoder(cfg)
        return {}
    if cfg.task != "source":
        raise ValueError(f"task='{cfg.task}' is unknown; expected 'source' or 'videomae'")
    train_source(cfg)
    if not is_global_zero():
        return {}  # under DDP, rank 0 alone scores the saved model
    return evaluate_source(cfg)


def train_source(cfg: DictConfig) -> Path:
    """Train the configured backbone on the source split and save it with its projection head.

    Under DDP every rank trains; rank 0 alone fits P and saves, and the others wait for the file.
    """
    ensure_video_encoder(cfg)  # before the source fit, so that every DDP rank takes part in it
    data = build_datamodule(cfg, batch_size=cfg.training.batch_size)
    model = instantiate(cfg.backbone)
    module = SourceModule(
        model, build_body_model(cfg.body), cfg.training, cfg.focal_length, cfg.backbone.crop_size
    )
    checkpoints = ModelCheckpoint(dirpath=Path(cfg.paths.output_dir) / "checkpoints", save_last=True)
    trainer = build_trainer(
        cfg,
        "source",
        callbacks=[checkpoints],
        max_epochs=cfg.training.max_epochs,
        gradient_clip_val=cfg.training.gradient_clip_val,
    )
    trainer.fit(module, source_dataloader(data, model), ckpt_path=cfg.training.resume_from)
    path = Path(cfg.training.checkpoint)
    if trainer.is_global_zero:
        align_head = fit_align_head(cfg, model, data.source)
        save_checkpoint(path, model, cfg.backbone, extra={"align_head": align_head.state_dict()})
        print(f"source model saved to {path}")
    trainer.strategy.barrier("source checkpoint saved")
    return path


def sequence_length(model: torch.nn.Module) -> int | None:
    """The clip length T a sequence model declares (`seq_len`: it takes images (B, T, 3, S, S));
    None for a single-frame model (images (B, 3, S, S))."""
    return getattr(model, "seq_len", None)


def source_dataloader(data, model: torch.nn.Module) -> DataLoader:
    """Shuffled (seeded) source batches in the layout the model takes.

    A single-frame model gets the datamodule's frame batches. A sequence model gets clips of its
    `seq_len` consecutive frames of one track, every `seq_len // 2` frames; `batch_size` still counts
    frames, so a batch holds batch_size // seq_len clips (at least one).
    """
    seq_len = sequence_length(model)
    if seq_len is None:
        return data.train_dataloader()
    clips = ClipDataset(data.source, seq_len, stride=max(1, seq_len // 2))
    return DataLoader(
        clips,
        batch_size=max(1, data.batch_size // seq_len),
        shuffle=True,
        generator=torch.Generator().manual_seed(data.seed),
        num_workers=data.num_workers,
        persistent_workers=data.num_workers > 0,
    )


def clip_features(model: torch.nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """Per-frame pooled trunk features (B, T, C) of clips (B, 3, T, S, S), for either kind of model."""
    frames = clips.transpose(1, 2)  # (B, T, 3, S, S)
    if sequence_length(model) is not None:
        return model.extract_features(frames)
    return model.extract_features(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])


def ensure_video_encoder(cfg: DictConfig) -> Path:
    """The level-3 video encoder's checkpoint, pretrained first (task=videomae) when it is missing."""
    path = Path(cfg.training.video_encoder_checkpoint)
    return path if path.is_file() else train_video_encoder(cfg)


def load_video_encoder(cfg: DictConfig) -> torch.nn.Module:
    """The frozen level-3 video encoder (see `ensure_video_encoder`)."""
    encoder = load_checkpoint(ensure_video_encoder(cfg)).model
    return encoder.eval().requires_grad_(False)


def train_video_encoder(cfg: DictConfig) -> Path:
    """VideoMAE pretraining (tube masking, masked-pixel MSE) on clips of the source split."""
    vm = cfg.training.videomae
    encoder = instantiate(cfg.video_encoder)
    clips = ClipDataset(
        build_datamodule(cfg).source, cfg.video_encoder.num_frames, stride=cfg.video_encoder.num_frames // 2
    )
    loader = DataLoader(
        clips,
        batch_size=vm.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
        num_workers=cfg.training.num_workers,
    )
    module = VideoMAEModule(
        VideoMAEPretrainer.from_encoder(encoder, mask_ratio=vm.mask_ratio), vm.lr, cfg.seed
    )
    trainer = build_trainer(cfg, "videomae", max_epochs=vm.max_epochs, enable_checkpointing=False)
    trainer.fit(module, loader)
    path = Path(cfg.training.video_encoder_checkpoint)
    if trainer.is_global_zero:
        save_checkpoint(path, encoder, cfg.video_encoder)
        print(f"video encoder saved to {path}")
    trainer.strategy.barrier("video encoder saved")
    return path


def fit_align_head(cfg: DictConfig, model: torch.nn.Module, frames) -> torch.nn.Module:
    """Fit P: mean-pooled per-frame trunk features of a clip -> the frozen video embedding of the clip.

    Level 3 aligns the adapted model's P(features) with E_video(clip) by cosine, so P is trained on the
    source clips with the same cosine loss, on frozen features.
    """
    encoder = load_video_encoder(cfg)
    clips = ClipDataset(frames, cfg.video_encoder.num_frames, stride=cfg.video_encoder.num_frames // 2)
    features, targets = [], []
    model.eval()
    with torch.no_grad():
        for clip in DataLoader(clips, batch_size=4, num_workers=cfg.training.num_workers):
            features.append(clip_features(model, clip["img"]).mean(1))
            targets.append(encoder(clip["img"]))
    features, targets = torch.cat(features), torch.cat(targets)
    head = torch.nn.Linear(features.shape[1], targets.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.training.align.lr)
    for _ in range(cfg.training.align.epochs):
        loss = (1 - torch.nn.functional.cosine_similarity(head(features), targets)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"projection head P: alignment 1 - cos = {loss.item():.4f} on {len(features)} source clips")
    return head


def evaluate_source(cfg: DictConfig) -> dict[str, float]:
    """Source-model errors (mm) on the source test split and on the target: the gap adaptation must close."""
    model = load_checkpoint(cfg.training.checkpoint).model
    body_models = build_body_models(cfg.body)
    regressor = body_models["neutral"].J_regressor_h36m.double().numpy()
    data = build_datamodule(cfg)
    splits = {"target": data.target}
    if cfg.dataset.get("source_test_split"):
        splits = {"source_test": data.split(cfg.dataset.source_test_split, "gt"), **splits}
    metrics = {}
    for name, frames in splits.items():
        errors = score_dataset(predict_frames(model, frames), frames, body_models, regressor)
        for key, value in summarize_errors(errors).items():
            metrics[f"{name}_{key}"] = value
        print(
            f"source model on {name:11s}: MPJPE {metrics[f'{name}_mpjpe']:6.1f}  "
            f"PA-MPJPE {metrics[f'{name}_pa_mpjpe']:6.1f}  PVE {metrics[f'{name}_pve']:6.1f} mm"
        )
    return metrics
