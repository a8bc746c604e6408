"""`run(cfg)` behind evaluate.py: re-score a finished run (or every job of a multirun sweep) from its
predictions.npz against the dataset's ground truth, and tabulate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cemr.evaluation.builds import (
    BUILD_SEED_KEY,
    JobResult,
    builds_report,
    label_without_build,
    shared_overrides,
)
from cemr.evaluation.report import score_dataset, summarize_errors
from cemr.runtime import build_body_models, build_datamodule

COLUMNS = ("mpjpe", "pa_mpjpe", "pve", "accel_error")
SNAPSHOT_COUNT = "snapshot_frames"  # a count, not an error: left out of the builds report


def rescore_frames(run_dir: str | Path) -> tuple[DictConfig, dict[str, np.ndarray], np.ndarray]:
    """The run's config, its per-frame errors (mm) computed afresh from predictions.npz, and the
    sequence name of each scored frame."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "predictions.npz"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name}; is this the output dir of `python adapt.py`?")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as f:
        predictions = {k: f[k] for k in ("index", "pose", "betas")}
    body_models = build_body_models(cfg.body)
    regressor = body_models["neutral"].J_regressor_h36m.double().numpy()
    target = build_datamodule(cfg).target
    errors = score_dataset(predictions, target, body_models, regressor)
    index = np.asarray(predictions["index"])
    scored = index[np.asarray(target.data["has_smpl"])[index] > 0]
    return cfg, errors, np.asarray(target.data["seq"])[scored]


def rescore(run_dir: str | Path) -> dict[str, float]:
    """Scores of one run dir (config.yaml + predictions.npz), computed afresh (mm)."""
    return summarize_errors(rescore_frames(run_dir)[1])


def job_dirs(run_dir: Path) -> list[Path]:
    """The run dir itself, or the jobs of a multirun sweep dir (sub-dirs holding predictions.npz)."""
    if (run_dir / "predictions.npz").is_file():
        return [run_dir]
    jobs = sorted((p.parent for p in run_dir.glob("*/predictions.npz")), key=lambda p: (len(p.name), p.name))
    if not jobs:
        raise FileNotFoundError(f"{run_dir}: neither a run dir nor a sweep dir (no predictions.npz found)")
    return jobs


def overrides_list(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.is_file() else []


def overrides_of(job: Path) -> str:
    return " ".join(overrides_list(job)) or job.name


def run(cfg: DictConfig) -> dict[str, float]:
    from rich.console import Console
    from rich.table import Table

    jobs = job_dirs(Path(cfg.run_dir))
    table = Table(title=f"re-scored from predictions.npz (mm): {cfg.run_dir}")
    table.add_column("run")
    for name in COLUMNS:
        table.add_column(name.upper().replace("_", "-"), justify="right")
    table.add_column("matches metrics.json")
    results, per_job = {}, []
    common = shared_overrides([overrides_list(job) for job in jobs]) if len(jobs) > 1 else set()
    for job in jobs:
        job_cfg, errors, sequences = rescore_frames(job)
        scores = summarize_errors(errors)
        recorded_path = job / "metrics.json"
        recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else {}
        per_job.append(
            JobResult(
                label=label_without_build(overrides_list(job), common),
                build=int(OmegaConf.select(job_cfg, BUILD_SEED_KEY, default=0)),
                errors=errors,
                sequences=sequences,
                extra={
                    k: v for k, v in recorded.items() if k.startswith("snapshot_") and k != SNAPSHOT_COUNT
                },
            )
        )
        same = all(abs(recorded.get(k, np.nan) - scores[k]) < 1e-3 for k in COLUMNS if k in scores)
        table.add_row(
            overrides_of(job) if len(jobs) > 1 else job.name,
            *(f"{scores.get(k, float('nan')):.2f}" for k in COLUMNS),
            "yes" if same else "NO",
        )
        results = (
            scores if len(jobs) == 1 else {**results, **{f"{job.name}/{k}": v for k, v in scores.items()}}
        )
    console = Console()
    console.print(table)
    if len(jobs) > 1:
        named = OmegaConf.select(OmegaConf.load(jobs[0] / "config.yaml"), "dataset.builds", default=None)
        report = builds_report(per_job, named_builds=OmegaConf.to_container(named) if named else None)
        path = Path(cfg.run_dir) / "builds.md"
        path.write_text(report)
        console.print(report)
        console.print(f"written to {path}")
    return results
