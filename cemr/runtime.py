"""Run plumbing shared by the entry points: seeding, building cached assets, writing run outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all ranks) so the same config gives the same numbers on CPU."""
    lightning.seed_everything(seed, workers=True, verbose=False)


def is_global_zero() -> bool:
    """Whether this process is rank 0 (always, without DDP): the one that scores and writes results."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def prepare(node: DictConfig | None) -> Path | None:
    """Build a cached asset (body model, prepared dataset) from its config's `prepare` node.

    The node's `_target_` is idempotent: it returns at once when its outputs already exist and
    fails with a clear message when the raw inputs it needs are absent.
    """
    if node is None:
        return None
    return instantiate(node)


def check_body_matches_dataset(cfg: DictConfig) -> None:
    """A dataset whose ground truth is defined in one body model must be scored with that model."""
    needed = cfg.dataset.get("body") if "dataset" in cfg else None
    if needed and "body" in cfg and cfg.body.name != needed:
        raise ValueError(
            f"dataset={cfg.dataset.name} has its ground truth in the '{needed}' body model, but body="
            f"{cfg.body.name} is configured; add body={needed} to the command line"
        )


def prepare_assets(cfg: DictConfig) -> None:
    """Build everything the configured body model and dataset need, in dependency order."""
    check_body_matches_dataset(cfg)
    for group in ("body", "dataset"):
        if group in cfg:
            prepare(cfg[group].get("prepare"))


def save_config(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Write the fully resolved config of a run as `config.yaml` in its output dir."""
    path = Path(out_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def write_metrics(metrics: dict[str, float], out_dir: str | Path) -> Path:
    """Write a flat dict of floats as `metrics.json` (sorted keys, stable across runs)."""
    path = Path(out_dir) / "metrics.json"
    path.write_text(json.dumps({k: float(v) for k, v in metrics.items()}, indent=2, sort_keys=True))
    return path


def build_body_model(body_cfg: DictConfig, gender: str | None = None):
    """The configured body model (real SMPL or the procedural one: the same loader)."""
    from cemr.body import load_body_model

    return load_body_model(
        body_cfg.model_dir,
        gender or body_cfg.gender,
        regressor_extra=body_cfg.regressor_extra,
        regressor_h36m=body_cfg.regressor_h36m,
    )


def build_body_models(body_cfg: DictConfig) -> dict:
    """Neutral, male and female body models, as the 3DPW protocol scores with all three."""
    return {g: build_body_model(body_cfg, g) for g in ("neutral", "male", "female")}


def build_datamodule(cfg: DictConfig, **overrides):
    from cemr.data.datamodule import CEMRDataModule

    return CEMRDataModule.from_config(cfg.dataset, **{"seed": cfg.seed, **overrides})


def build_loggers(cfg: DictConfig, phase: str) -> list:
    """Every logger of the `logger` group (csv, wandb, ...), named after the phase (source, videomae,
    adapt) so phases of one run log side by side; none for `logger=none`."""
    nodes = cfg.get("logger") or {}
    return [
        instantiate(node, name=phase) for node in nodes.values() if node is not None and "_target_" in node
    ]


def build_trainer(cfg: DictConfig, phase: str, **overrides) -> lightning.Trainer:
    """The configured Lightning Trainer, logging under `phase`, with a Rich progress bar when enabled."""
    from lightning.pytorch.callbacks import RichProgressBar

    callbacks = list(overrides.pop("callbacks", []))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar(leave=True))
    return instantiate(
        cfg.trainer, logger=build_loggers(cfg, phase) or False, callbacks=callbacks, **overrides
    )
