"""Run plumbing shared by the entry points: seeding, building cached assets, writing run outputs."""

from __future__ import annotations

import hashlib
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


def save_config(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Write the fully resolved config of a run as `config.yaml` in its output dir (atomically)."""
    from cemr.atomic import write_text_atomic

    return write_text_atomic(Path(out_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def write_metrics(metrics: dict[str, float], out_dir: str | Path) -> Path:
    """Write a flat dict of floats as `metrics.json` (sorted keys, stable across runs; atomically)."""
    from cemr.atomic import write_text_atomic

    text = json.dumps({k: float(v) for k, v in metrics.items()}, indent=2, sort_keys=True)
    return write_text_atomic(Path(out_dir) / "metrics.json", text)


# Settings that do not change a run's numbers: where things live, logging, progress display.
NOT_IN_DIGEST = (
    "paths",
    "logger",
    "overwrite",
    "keep_stream_state",
    "render",
    "overlay",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "dataset.prepare.progress",
    "dataset.prepare.workers",
    "dataset.num_workers",
    "training.num_workers",
)


def config_for_digest(cfg: DictConfig) -> dict:
    """The resolved config less NOT_IN_DIGEST, with paths under a `paths.*` dir written relative to it
    (`${paths.cache_dir}/synthetic_seed0`), so a run dir or data dir elsewhere gives the same digest."""
    config = OmegaConf.to_container(cfg, resolve=True)
    roots = sorted(
        ((k, str(v)) for k, v in (config.get("paths") or {}).items() if isinstance(v, str) and v),
        key=lambda item: -len(item[1]),
    )

    def relative(value):
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relative(v) for v in value]
        for key, root in roots:
            if isinstance(value, str) and (value == root or value.startswith(root.rstrip("/") + "/")):
                return f"${{paths.{key}}}{value[len(root) :]}"
        return value

    config = relative(config)
    for dotted in NOT_IN_DIGEST:
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def config_digest(cfg: DictConfig) -> str:
    """sha256 of `config_for_digest(cfg)`: equal for two configs that give the same numbers."""
    return hashlib.sha256(json.dumps(config_for_digest(cfg), sort_keys=True).encode()).hexdigest()


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(old: DictConfig, new: DictConfig, limit: int = 5) -> str:
    """The first `limit` settings that differ between two configs (as config_for_digest sees them)."""
    before, after = _flat(config_for_digest(old)), _flat(config_for_digest(new))
    keys = sorted(
        k for k in before.keys() | after.keys() if before.get(k, "<absent>") != after.get(k, "<absent>")
    )
    shown = [f"{k}: {before.get(k, '<absent>')!r} -> {after.get(k, '<absent>')!r}" for k in keys[:limit]]
    return "; ".join(shown) + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


RUN_OUTPUTS = ("config.yaml", "metrics.json", "predictions.npz", "per_frame.csv")
STREAM_STATES = "adapt_state*.pt"


def claim_run_dir(cfg: DictConfig, out_dir: str | Path) -> None:
    """Make sure `out_dir` may take this run's outputs, before any work.

    A dir without outputs, or whose `config.yaml` is this very config (a rerun, e.g. of a killed run,
    which resumes), is fine. A dir holding another run's outputs (another config, or outputs without
    a config.yaml) raises FileExistsError naming the dir and the differing settings, unless the
    config says `overwrite=true`: then the old outputs and stream states are removed first, so
    nothing of the old run is resumed or left next to the new config.
    """
    out_dir = Path(out_dir)
    found = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
    found += sorted(p.name for p in out_dir.glob(STREAM_STATES))
    if not found:
        return
    if cfg.get("overwrite"):
        if is_global_zero():
            for name in found:
                (out_dir / name).unlink(missing_ok=True)
            log.info(f"overwrite=true: removed {', '.join(found)} of an earlier run in {out_dir}")
        return
    ways_out = "choose another run dir (hydra.run.dir=...) or pass overwrite=true to replace them"
    config = out_dir / "config.yaml"
    if not config.is_file():
        raise FileExistsError(
            f"run dir {out_dir} holds {', '.join(found)} but no config.yaml, so they are not this run's "
            f"outputs; {ways_out}"
        )
    try:
        old = OmegaConf.load(config)
        differences = config_differences(old, cfg) if config_digest(old) != config_digest(cfg) else ""
    except Exception as err:  # any unreadable or foreign config.yaml
        raise FileExistsError(
            f"run dir {out_dir} holds {', '.join(found)} and a config.yaml that cannot be compared with "
            f"this run's ({err}); {ways_out}"
        ) from err
    if differences:
        raise FileExistsError(
            f"run dir {out_dir} holds the outputs of another run ({', '.join(found)}), whose {config} "
            f"differs from this run's: {differences}; rerunning there would resume or mix them: {ways_out}"
        )


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
    from cemr.body import GENDER_CODES

    return {g: build_body_model(body_cfg, g) for g in GENDER_CODES.values()}


def build_datamodule(cfg: DictConfig, **overrides):
    """The `datamodule` node instantiated (`overrides`, e.g. batch_size and augment, win). A config
    saved by a version before that node existed (an old run dir's config.yaml) is read from `dataset`."""
    if "datamodule" in cfg:
        # partial first: instantiate() would turn a dataclass override (SpinAugment) into a config
        return instantiate(cfg.datamodule, _partial_=True)(**overrides)
    from cemr.data.datamodule import CEMRDataModule

    return CEMRDataModule.from_config(cfg.dataset, **{"seed": cfg.seed, **overrides})


def build_loggers(cfg: DictConfig, phase: str) -> list:
    """Every logger of the `logger` group (csv, wandb, ...), each given the run's resolved config; none
    for `logger=none`. CSV logs of the phases (source, videomae, adapt) sit side by side under their
    names; a wandb run is named after the overrides that made it and grouped by its sweep."""
    nodes = cfg.get("logger") or {}
    loggers = []
    for key, node in nodes.items():
        if node is None or "_target_" not in node:
            continue
        identity = wandb_identity(node, phase) if key == "wandb" else {"name": phase}
        logger = instantiate(node, **identity)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        loggers.append(logger)
    return loggers


def wandb_identity(node: DictConfig, phase: str) -> dict[str, str | None]:
    """name: the command-line overrides less paths and display settings ("adapter.levels=2
    adapter.outer.lr=1e-4"; the phase when there are none) unless the config names the run; group: the
    multirun sweep dir, so a sweep's jobs sit together; job_type: the phase."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    overrides, group = [], None
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        overrides = [
            o for o in hydra.overrides.task if not o.split("=", 1)[0].lstrip("+~").startswith(NOT_IN_DIGEST)
        ]
        group = str(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None
    name = node.get("name") or " ".join(overrides) or phase
    return {"name": name, "group": group, "job_type": phase}


PHASE_UNITS = {"adapt": "frames of the target stream"}


def build_trainer(cfg: DictConfig, phase: str, **overrides) -> lightning.Trainer:
    """The configured Lightning Trainer, logging under `phase`, with progress when enabled: a Rich bar
    on a terminal, periodic log lines without one (cemr.progress)."""
    from cemr.progress import PhaseProgressBar, progress_callbacks

    callbacks = list(overrides.pop("callbacks", []))
    if cfg.trainer.get("enable_progress_bar", True):
        shown = progress_callbacks(phase, PHASE_UNITS.get(phase, "batches"))
        callbacks += shown
        # Lightning adds its own tqdm bar unless a progress bar callback is given
        overrides.setdefault("enable_progress_bar", isinstance(shown[0], PhaseProgressBar))
    return instantiate(
        cfg.trainer, logger=build_loggers(cfg, phase) or False, callbacks=callbacks, **overrides
    )
