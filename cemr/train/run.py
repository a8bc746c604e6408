"""`run(cfg)` behind train.py: source-model training and video-encoder pretraining.

task=source: train the regressor SPIN-style on the source split with the projection head P that
level 3 aligns with the frozen video encoder (pretraining it first if missing): learned with the
model (training.align.joint_weight > 0) or fitted to its frozen features afterwards; save the source
checkpoint and print source-only errors on the source test split and the target (the domain gap).
task=videomae: self-supervised masked-autoencoder pretraining of the video encoder on source clips.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import CombinedLoader
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from cemr.data.augment import SpinAugment
from cemr.data.clips import ClipDataset
from cemr.data.prepare import prepare_assets
from cemr.evaluation.report import score_dataset, summarize_errors
from cemr.models import VideoMAEPretrainer, load_checkpoint, save_checkpoint
from cemr.models.checkpoints import CEMRCheckpoint, LoadReport
from cemr.models.foreign import build_backbone, build_video_encoder, init_from_source_model, model_config
from cemr.models.frozen import freeze
from cemr.models.prediction import predict_frames
from cemr.runtime import (
    build_body_model,
    build_body_models,
    build_datamodule,
    build_trainer,
    is_global_zero,
    save_config,
    seed_everything,
)
from cemr.train.curve import LearningCurve
from cemr.train.module import alignment_loss, clip_features, sequence_length

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    if cfg.task not in OUTPUTS:
        raise ValueError(f"task='{cfg.task}' is unknown; expected 'source' or 'videomae'")
    check_outputs(cfg)  # before any work
    seed_everything(cfg.seed)
    prepare_assets(cfg)
    save_config(cfg, cfg.paths.output_dir)
    if cfg.task == "videomae":
        train_video_encoder(cfg)
        return {}
    trained = train_source(cfg)
    if not is_global_zero():
        return {}  # under DDP, rank 0 alone scores the model
    return evaluate_source(cfg, trained.model)


# What each task writes, and the config defaults of those paths (configs/training/source.yaml): a
# checkpoint still at its default may be built on first use, one the user named must exist.
OUTPUTS = {"source": "checkpoint", "videomae": "video_encoder_checkpoint"}
DEFAULT_CHECKPOINTS = {
    "checkpoint": "${paths.checkpoint_dir}/${backbone.name}_${dataset.source_domain}_seed${seed}.ckpt",
    "video_encoder_checkpoint": (
        "${paths.checkpoint_dir}/videomae_${video_encoder.name}_${dataset.source_domain}_seed${seed}.ckpt"
    ),
}
TRAIN_COMMANDS = {
    "checkpoint": "python train.py",
    "video_encoder_checkpoint": "python train.py task=videomae",
}


def smoke_setting(cfg: DictConfig) -> str | None:
    """The trainer setting that makes this a smoke run (a few batches, not a model), or None."""
    trainer = cfg.get("trainer") or {}
    fast, limit, overfit = (
        trainer.get(k) for k in ("fast_dev_run", "limit_train_batches", "overfit_batches")
    )
    if fast:
        return f"trainer.fast_dev_run={fast}"
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):
        return f"trainer.limit_train_batches={limit}"  # an int counts batches: 1 is one batch
    if overfit:
        return f"trainer.overfit_batches={overfit}"
    return None


def check_outputs(cfg: DictConfig) -> None:
    """Say that a smoke run writes no checkpoint; refuse a real run that would replace an existing
    checkpoint (unless training.overwrite=true), or that needs a named video encoder that is missing."""
    key = OUTPUTS[cfg.task]
    path = Path(cfg.training[key])
    smoke = smoke_setting(cfg)
    if smoke:
        log.info(f"smoke run ({smoke}): no checkpoint is written; {path} is left as it is")
    elif path.is_file() and not cfg.training.get("overwrite", False):
        raise FileExistsError(
            f"{path} (training.{key}) exists and this run would replace it; pass training.overwrite=true "
            f"to replace it, or training.{key}=<new path> to save the new model elsewhere"
        )
    if cfg.task == "source":
        check_named_checkpoints(cfg, "video_encoder_checkpoint")


def is_default_checkpoint(cfg: DictConfig, key: str) -> bool:
    """Whether training.<key> is still the config's default path (derived from backbone, dataset and
    seed), not a path the user named."""
    return cfg.training._get_node(key)._value() == DEFAULT_CHECKPOINTS[key]


def check_named_checkpoints(cfg: DictConfig, *keys: str) -> None:
    """Before any work: FileNotFoundError for a checkpoint among training.<keys> that the user named
    and that is missing (a missing default one is built on first use, see `check_missing_checkpoint`)."""
    for key in keys:
        if not Path(cfg.training[key]).is_file() and not is_default_checkpoint(cfg, key):
            check_missing_checkpoint(cfg, key)


def check_missing_checkpoint(cfg: DictConfig, key: str) -> None:
    """Called when the checkpoint training.<key> is missing: a path the user named is an error
    (FileNotFoundError); the config's default one is built now, as the console says."""
    path, command = cfg.training[key], TRAIN_COMMANDS[key]
    if cfg.dataset.get("source_split") is None:
        domain = cfg.dataset.get("source_domain", cfg.dataset.name)
        raise FileNotFoundError(
            f"checkpoint {path} (training.{key}) not found, and dataset={cfg.dataset.name} has no source "
            f"split to train it on: train it on its source domain first (`{command} dataset={domain}`, "
            f"same backbone, body and seed), or name a model with training.{key}=<file>"
        )
    if not is_default_checkpoint(cfg, key):
        raise FileNotFoundError(
            f"checkpoint {path} (training.{key}) not found; check the path, or train it first with "
            f"`{command} training.{key}={path}`"
        )
    log.info(
        f"checkpoint {path} (training.{key}, the config's default) is missing: building it now on first "
        f"use, as `{command}` would (for the embedded default's source model: about 30 min on 2 CPU cores)"
    )


def train_source(cfg: DictConfig) -> CEMRCheckpoint:
    """Train the configured backbone on the source split with its projection head P (learned with it
    under training.align.joint_weight > 0, else fitted afterwards) and save both at
    training.checkpoint; returns the model as saved (loaded back).

    Under DDP every rank trains; rank 0 alone fits P (or scores the learned one) and saves, and the
    others wait for the file. A
    smoke run (`smoke_setting`) saves nothing: it returns the model and head from memory.
    """
    encoder = ensure_video_encoder(cfg)  # before the source fit, so that every DDP rank takes part in it
    # Seeded afresh: the source model must not depend on whether the video encoder was trained first,
    # nor on what ran before in the process (adapt.py builds a missing default checkpoint this way).
    seed_everything(cfg.seed)
    data = build_datamodule(cfg, batch_size=cfg.training.batch_size, augment=spin_augment(cfg.training))
    model = build_backbone(cfg.backbone)
    if cfg.backbone.get("init_from"):
        log.info(init_from_source_model(model, cfg.backbone))
    freeze(model, cfg.backbone.get("frozen") or [], "backbone.frozen")
    joint = joint_alignment(cfg, model, data.source, encoder)  # None (the default): P is fitted afterwards
    module = instantiate(cfg.training.module)(
        model, build_body_model(cfg.body), cfg.training, **({"align_head": joint[0]} if joint else {})
    )
    smoke = smoke_setting(cfg)
    callbacks = (
        [] if smoke else [ModelCheckpoint(dirpath=Path(cfg.paths.output_dir) / "checkpoints", save_last=True)]
    )
    if cfg.training.get("curve") and is_global_zero():
        callbacks.append(learning_curve(cfg, data))
    trainer = build_trainer(
        cfg,
        "source",
        callbacks=callbacks,
        max_epochs=cfg.training.max_epochs,
        gradient_clip_val=cfg.training.gradient_clip_val,
        **({"enable_checkpointing": False} if smoke else {}),
    )
    loader = source_dataloader(data, model)
    if joint is not None:
        loader = CombinedLoader({"frames": loader, "clips": joint[1]}, mode="max_size_cycle")
    trainer.fit(module, loader, ckpt_path=cfg.training.resume_from)
    path = Path(cfg.training.checkpoint)
    extra = None
    if trainer.is_global_zero:
        if joint is None:
            align_head = fit_align_head(cfg, model, data.source, load_video_encoder(cfg, encoder))
        else:
            align_head = joint[0].eval()
            features, _ = alignment_pairs(cfg, data.source, model=model)
            with torch.no_grad():
                loss = alignment_loss(align_head, features, joint[1].dataset.targets)
            log.info(
                f"projection head P (learned with the model): alignment 1 - cos = {loss.item():.4f} "
                f"on {len(features)} source clips"
            )
        extra = {"align_head": align_head.state_dict()}
        if smoke:
            log.info(f"smoke run ({smoke}): source model not saved")
        else:
            save_checkpoint(path, model, model_config(cfg.backbone), extra=extra)
            log.info(f"source model saved to {path}")
    trainer.strategy.barrier("source checkpoint saved")
    if smoke:
        config = OmegaConf.to_container(model_config(cfg.backbone), resolve=True)
        return CEMRCheckpoint(model.eval(), config, extra or {}, LoadReport("trained in this smoke run"))
    return load_checkpoint(path)


def scored_splits(cfg: DictConfig, data) -> dict:
    """The splits a source model is scored on: the held-out source split (if any), then the target."""
    splits = {"target": data.target}
    if cfg.dataset.get("source_test_split"):
        splits = {"source_test": data.split(cfg.dataset.source_test_split, "gt"), **splits}
    return splits


def learning_curve(cfg: DictConfig, data) -> LearningCurve:
    """Errors on the held-out source split and the target every `training.curve.every_n_epochs`."""
    body_models = build_body_models(cfg.body)
    splits = scored_splits(cfg, data)
    regressor = body_models["neutral"].J_regressor_h36m.double().numpy()
    return LearningCurve(splits, body_models, regressor, **cfg.training.curve)


def spin_augment(training: DictConfig) -> SpinAugment | None:
    """The source-crop augmentation of `training.augment`, None when it is off (or absent)."""
    node = training.get("augment")
    if not node or not node.enabled:
        return None
    return SpinAugment(**{k: v for k, v in node.items() if k != "enabled"})


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


def ensure_video_encoder(cfg: DictConfig) -> torch.nn.Module | None:
    """Make sure the level-3 video encoder exists: when its checkpoint is missing (and is the config's
    default, see `check_missing_checkpoint`), pretrain it first (task=videomae). Returns the encoder
    a smoke run trained (it saves nothing) or the released one of `video_encoder.weights`, else None:
    load it with `load_video_encoder`."""
    if cfg.video_encoder.get("weights"):
        return build_video_encoder(cfg.video_encoder)
    if Path(cfg.training.video_encoder_checkpoint).is_file():
        return None
    check_missing_checkpoint(cfg, "video_encoder_checkpoint")
    return train_video_encoder(cfg)


def load_video_encoder(cfg: DictConfig, trained: torch.nn.Module | None = None) -> torch.nn.Module:
    """The frozen level-3 video encoder: `trained` if given (what `ensure_video_encoder` returned),
    else its checkpoint (built first where `ensure_video_encoder` would)."""
    encoder = trained if trained is not None else ensure_video_encoder(cfg)
    if encoder is None:
        encoder = load_checkpoint(cfg.training.video_encoder_checkpoint).model
    return encoder.eval().requires_grad_(False)


def train_video_encoder(cfg: DictConfig) -> torch.nn.Module | None:
    """VideoMAE pretraining (tube masking, masked-pixel MSE) on clips of the source split, saved at
    training.video_encoder_checkpoint; a smoke run saves nothing and returns the encoder instead."""
    vm = cfg.training.videomae
    seed_everything(cfg.seed)  # the same encoder whether train.py, task=videomae or adapt.py builds it
    encoder = build_video_encoder(cfg.video_encoder)  # from released weights when named
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
    module = instantiate(vm.module)(VideoMAEPretrainer.from_encoder(encoder, mask_ratio=vm.mask_ratio))
    trainer = build_trainer(cfg, "videomae", max_epochs=vm.max_epochs, enable_checkpointing=False)
    trainer.fit(module, loader)
    smoke = smoke_setting(cfg)
    if smoke:
        log.info(f"smoke run ({smoke}): video encoder not saved")
        return encoder
    path = Path(cfg.training.video_encoder_checkpoint)
    if trainer.is_global_zero:
        save_checkpoint(path, encoder, model_config(cfg.video_encoder))
        log.info(f"video encoder saved to {path}")
    trainer.strategy.barrier("video encoder saved")
    return None


def alignment_clips(cfg: DictConfig, frames) -> ClipDataset:
    """The source clips P is learned on: video_encoder.num_frames frames, every half clip."""
    return ClipDataset(frames, cfg.video_encoder.num_frames, stride=cfg.video_encoder.num_frames // 2)


def alignment_pairs(
    cfg: DictConfig, frames, encoder: torch.nn.Module | None = None, model: torch.nn.Module | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """In one pass over the source clips (unaugmented), under no_grad: the model's per-frame trunk
    features mean-pooled over each clip (N, C) and the frozen video embeddings (N, D); None for the
    one not asked for (no model, no encoder)."""
    features, targets = [], []
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    workers = cfg.training.num_workers
    with torch.no_grad():
        for clip in DataLoader(alignment_clips(cfg, frames), batch_size=4, num_workers=workers):
            if model is not None:
                features.append(clip_features(model, clip["img"]).mean(1))
            if encoder is not None:
                targets.append(encoder(clip["img"]))
    if model is not None:
        model.train(was_training)
    return (torch.cat(features) if features else None), (torch.cat(targets) if targets else None)


def fit_align_head(
    cfg: DictConfig, model: torch.nn.Module, frames, encoder: torch.nn.Module
) -> torch.nn.Module:
    """Fit P: mean-pooled per-frame trunk features of a clip -> the frozen video embedding of the clip.

    Level 3 aligns the adapted model's P(features) with E_video(clip) by cosine, so P is trained on the
    source clips with the same cosine loss, on frozen features of the frozen `encoder`.
    """
    features, targets = alignment_pairs(cfg, frames, encoder, model)
    head = torch.nn.Linear(features.shape[1], targets.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.training.align.lr)
    for _ in range(cfg.training.align.epochs):
        loss = alignment_loss(head, features, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log.info(f"projection head P: alignment 1 - cos = {loss.item():.4f} on {len(features)} source clips")
    return head


def joint_alignment(
    cfg: DictConfig, model: torch.nn.Module, frames, encoder: torch.nn.Module | None
) -> tuple[torch.nn.Linear, DataLoader] | None:
    """With training.align.joint_weight > 0: a fresh P and a seeded, shuffled loader of
    `align.clips_per_step` source clips a batch, each with its frozen video embedding ("target"),
    computed once here; None when P is fitted after training instead."""
    align = cfg.training.align
    weight = float(align.get("joint_weight") or 0.0)
    if weight < 0:
        raise ValueError(f"training.align.joint_weight must be >= 0, got {weight}")
    if weight == 0:
        return None
    if sequence_length(model) is not None:
        raise ValueError(
            f"training.align.joint_weight={weight}: P is learned with single-frame models only; "
            f"{cfg.backbone.name} takes its trunk (and P) from its HMR (backbone.init_from)"
        )
    clips = alignment_clips(cfg, frames)
    _, targets = alignment_pairs(cfg, frames, load_video_encoder(cfg, encoder))
    log.info(f"projection head P: learned with the model on {len(clips)} source clips (weight {weight})")
    head = torch.nn.Linear(model.trunk.num_features, targets.shape[1])
    loader = DataLoader(
        EmbeddedClips(clips, targets),
        batch_size=int(align.get("clips_per_step", 1)),
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
        num_workers=cfg.training.num_workers,
    )
    return head, loader


class EmbeddedClips(torch.utils.data.Dataset):
    """Source clips (their images only) with a frozen video embedding each."""

    def __init__(self, clips: ClipDataset, targets: torch.Tensor) -> None:
        self.clips, self.targets = clips, targets

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"img": self.clips[index]["img"], "target": self.targets[index]}


def evaluate_source(cfg: DictConfig, model: torch.nn.Module) -> dict[str, float]:
    """Source-model errors (mm) on the source test split and on the target: the gap adaptation must close."""
    body_models = build_body_models(cfg.body)
    regressor = body_models["neutral"].J_regressor_h36m.double().numpy()
    data = build_datamodule(cfg)
    splits = scored_splits(cfg, data)
    metrics = {}
    for name, frames in splits.items():
        errors = score_dataset(predict_frames(model, frames), frames, body_models, regressor)
        for key, value in summarize_errors(errors).items():
            metrics[f"{name}_{key}"] = value
        log.info(
            f"source model on {name:11s}: MPJPE {metrics[f'{name}_mpjpe']:6.1f}  "
            f"PA-MPJPE {metrics[f'{name}_pa_mpjpe']:6.1f}  PVE {metrics[f'{name}_pve']:6.1f} mm"
        )
    return metrics
