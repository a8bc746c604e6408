"""Backbones built from the config, optionally starting from released weights (`backbone.weights`).

`backbone.weights=<file>` names a SPIN `model_checkpoint.pt`, a DynaBOA `basemodel.pt` or a VIBE
`vibe_model_*.pth.tar` (FORMATS.md 6); `backbone.weights_format` says which (`auto`: VIBE for a VIBE
backbone, else DynaBOA for GroupNorm and SPIN for BatchNorm, the norms those files were trained with).
train.py starts training from them; adapt.py adapts them as the source model.

`video_encoder.weights=<file>` names a released VideoMAE checkpoint (original pretraining or fine-tuned
layout, or HF transformers; FORMATS.md 10): the level-3 video encoder is then that file, used as it is
instead of pretraining one (train.py fits the source model's P against it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from cemr.models.checkpoints import (
    CEMRCheckpoint,
    CheckpointError,
    LoadReport,
    build_model,
    load_checkpoint,
    load_dynaboa_checkpoint,
    load_spin_checkpoint,
    load_state_dict_into,
    load_vibe_checkpoint,
    load_videomae_checkpoint,
)

# backbone keys that are not the model class's parameters: where its weights come from, how it trains
NON_MODEL_KEYS = ("weights", "weights_format", "init_from", "frozen", "source_epochs")
LOADERS = {"spin": load_spin_checkpoint, "dynaboa": load_dynaboa_checkpoint, "vibe": load_vibe_checkpoint}

log = logging.getLogger(__name__)


def model_config(backbone: DictConfig) -> DictConfig:
    """The backbone node less NON_MODEL_KEYS: what builds the model and what a CEMR checkpoint stores."""
    resolved = OmegaConf.to_container(backbone, resolve=True)
    return OmegaConf.create({k: v for k, v in resolved.items() if k not in NON_MODEL_KEYS})


def weights_format(backbone: DictConfig) -> str:
    given = backbone.get("weights_format") or "auto"
    if given == "auto":
        if "seq_len" in backbone:
            return "vibe"
        return "dynaboa" if backbone.get("norm") == "group" else "spin"
    if given not in LOADERS:
        raise ValueError(f"backbone.weights_format must be auto or one of {sorted(LOADERS)}, got {given!r}")
    return given


def build_backbone(backbone: DictConfig) -> nn.Module:
    """The configured model, with `backbone.weights` loaded into it when set (report printed)."""
    model = build_model(OmegaConf.to_container(model_config(backbone)))
    if backbone.get("weights"):
        log.info(load_foreign_weights(model, backbone))
    return model


def load_foreign_weights(model: nn.Module, backbone: DictConfig) -> LoadReport:
    """Load the file into the model; refuse one that leaves weights mis-shaped or, except VIBE's
    generator (which holds no trunk: VIBE takes SPIN's), missing."""
    path, layout = Path(backbone.weights), weights_format(backbone)
    if not path.is_file():
        raise FileNotFoundError(f"backbone.weights: {path} not found")
    report = LOADERS[layout](path, model)
    if report.mismatched or not report.loaded or (report.missing and layout != "vibe"):
        raise CheckpointError(
            f"backbone.weights={path} (format {layout}) does not fit backbone={backbone.name}:\n{report}"
        )
    return report


def init_from_source_model(model: nn.Module, backbone: DictConfig) -> LoadReport:
    """train.py: start the trunk and regressor from another CEMR source model (`backbone.init_from`),
    as VIBE starts from SPIN's; the rest (VIBE's GRU) starts fresh."""
    path = Path(backbone.init_from)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone.init_from: {path} not found; {backbone.name} starts from that source model: train "
            "it first (python train.py with its backbone), or backbone.init_from=null to train from scratch"
        )
    state = load_checkpoint(path).model.state_dict()
    report = load_state_dict_into(model, state, f"{path} (CEMR)", ("trunk.", "regressor."))
    if report.mismatched or report.missing:
        raise CheckpointError(f"backbone.init_from={path} does not fit backbone={backbone.name}:\n{report}")
    return report


def build_video_encoder(video_encoder: DictConfig) -> nn.Module:
    """The configured video encoder, with the released `video_encoder.weights` loaded when set;
    refuses a file that leaves encoder weights missing or mis-shaped."""
    encoder = build_model(OmegaConf.to_container(model_config(video_encoder)))
    if not video_encoder.get("weights"):
        return encoder
    path = Path(video_encoder.weights)
    if not path.is_file():
        raise FileNotFoundError(f"video_encoder.weights: {path} not found")
    report = load_videomae_checkpoint(path, encoder)
    if report.mismatched or report.missing or not report.loaded:
        raise CheckpointError(
            f"video_encoder.weights={path} does not fit video_encoder={video_encoder.name}:\n{report}"
        )
    log.info(report)
    return encoder


def foreign_source(backbone: DictConfig) -> CEMRCheckpoint:
    """The source model of adapt.py when `backbone.weights` names released weights: no CEMR
    checkpoint, hence no projection head P (`extra` is empty)."""
    model = build_backbone(backbone)
    config = OmegaConf.to_container(model_config(backbone), resolve=True)
    return CEMRCheckpoint(model=model, config=config, extra={}, report=None)
