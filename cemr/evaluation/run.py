"""`run(cfg)` behind evaluate.py: re-score a finished run (or every job of a multirun sweep) from its
predictions.npz against the dataset's ground truth, and write what can be looked at into that dir.

A run: report.md (overall and per-sequence, source only vs adapted, paired differences), results.csv
(per sequence) and plots/. A sweep: report.md (one row per job, then mean +- sd over builds and paired
differences between configs, source only included), results.csv (per job) and plots/.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cemr.atomic import write_text_atomic
from cemr.evaluation import plots
from cemr.evaluation.builds import (
    BUILD_SEED_KEY,
    SEQUENCE_METRICS,
    JobResult,
    across_builds,
    builds_report,
    label_without_build,
    shared_overrides,
)
from cemr.evaluation.report import score_dataset, summarize_errors
from cemr.evaluation.summary import (
    ALSO_SCORED,
    OVERALL_METRICS,
    UNSMOOTHED,
    overall,
    recorded_means,
    run_report,
    sequence_rows,
    to_csv,
)
from cemr.runtime import build_body_models, build_datamodule

COLUMNS = OVERALL_METRICS
SOURCE_LABEL = "source only"
BEFORE_SMOOTHER = ", before the smoother"

log = logging.getLogger(__name__)


@dataclass
class Rescored:
    """One run dir scored afresh: per-frame errors (mm) of the adapted and (when saved) source-only
    predictions and stream before level 3's smoother, the sequence of each scored frame, and what the
    run recorded in metrics.json."""

    cfg: DictConfig
    adapted: dict[str, np.ndarray]
    source: dict[str, np.ndarray] | None
    sequences: np.ndarray
    recorded: dict[str, float]
    unsmoothed: dict[str, np.ndarray] | None = None


def rescore_run(run_dir: str | Path, before_smoother: bool = False) -> Rescored:
    """before_smoother: also score the stream before level 3's smoother, where predictions.npz holds it."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "predictions.npz"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name}; is this the output dir of `python adapt.py`?")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as f:
        # runs written before predictions.npz held the source model's predictions (or, with a
        # smoother, the stream before it) have none
        adapted, source, unsmoothed = (
            {"index": f["index"], "pose": f[f"{prefix}pose"], "betas": f[f"{prefix}betas"]}
            if f"{prefix}pose" in f
            else None
            for prefix in ("", "source_", UNSMOOTHED)
        )
    body_models = build_body_models(cfg.body)
    regressor = body_models["neutral"].J_regressor_h36m.double().numpy()
    target = build_datamodule(cfg).target
    index = np.asarray(adapted["index"])
    scored = index[np.asarray(target.data["has_smpl"])[index] > 0]
    recorded_path = run_dir / "metrics.json"
    if not len(scored):  # a user's video: nothing to score
        return Rescored(cfg, {}, None, np.asarray([]), {})

    truths = {}  # the ground truth is built once for the rows every row of the table scores

    def scores(frames: dict | None) -> dict[str, np.ndarray] | None:
        return score_dataset(frames, target, body_models, regressor, truths) if frames is not None else None

    return Rescored(
        cfg=cfg,
        adapted=scores(adapted),
        source=scores(source),
        sequences=np.asarray(target.data["seq"])[scored],
        recorded=json.loads(recorded_path.read_text()) if recorded_path.is_file() else {},
        unsmoothed=scores(unsmoothed) if before_smoother else None,
    )


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


def matches_recorded(scores: dict[str, float], recorded: dict[str, float]) -> bool:
    return all(abs(recorded.get(k, np.nan) - scores[k]) < 1e-3 for k in COLUMNS if k in scores)


def run(cfg: DictConfig) -> dict[str, float]:
    run_dir = Path(cfg.run_dir)
    jobs = job_dirs(run_dir)
    if jobs != [run_dir]:
        if cfg.render:
            raise ValueError(
                f"render=true draws one run; {run_dir} is a sweep: pass one of its jobs as run_dir"
            )
        return evaluate_sweep(run_dir, jobs, before_smoother=bool(cfg.get("before_smoother", False)))
    metrics = evaluate_run(run_dir)
    if cfg.render:
        from cemr.viz.run import render_run

        log.info(f"overlay video: {render_run(run_dir, cfg.overlay)}")
    return metrics


def evaluate_run(run_dir: Path) -> dict[str, float]:
    from rich.console import Console

    scores = rescore_run(run_dir)
    if not scores.adapted:
        return report_unscored(run_dir)
    adapted = summarize_errors(scores.adapted)
    report = run_report(run_dir.name, scores.sequences, scores.adapted, scores.source, scores.recorded)
    same = matches_recorded(adapted, scores.recorded)
    report += f"\nRe-scored from predictions.npz; matches metrics.json: {'yes' if same else 'NO'}\n"
    written = [
        write_text_atomic(run_dir / "report.md", report),
        write_text_atomic(
            run_dir / "results.csv", to_csv(sequence_rows(scores.sequences, scores.adapted, scores.source))
        ),
    ]
    figures = {
        "errors_over_time": plots.errors_over_time(scores.sequences, scores.adapted, scores.source),
        "error_distribution": plots.error_distribution(scores.adapted, scores.source),
        "per_sequence": plots.per_sequence_bars(scores.sequences, scores.adapted, scores.source),
    }
    written += [plots.save(fig, run_dir / "plots" / f"{name}.png") for name, fig in figures.items()]
    console = Console()
    console.print(report)
    console.print("written: " + ", ".join(str(p.relative_to(run_dir)) for p in written) + f" in {run_dir}")
    return adapted


def report_unscored(run_dir: Path) -> dict[str, float]:
    """A run on a target without ground truth (dataset=video): what was predicted, nothing scored."""
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as f:
        frames, tracks = (
            len(f["index"]),
            len({(str(s), int(p)) for s, p in zip(f["seq"], f["person"], strict=True)}),
        )
    report = (
        f"# {run_dir.name}\n\nThe target has no SMPL ground truth: nothing to score. predictions.npz holds "
        f"{frames} frames of {tracks} track(s); `render=true` draws them over the video.\n"
    )
    write_text_atomic(run_dir / "report.md", report)
    print(report + f"written: report.md in {run_dir}")
    return {}


def before_smoother_result(job: Path, label: str, build: int, scores: Rescored) -> JobResult | None:
    """The job's stream before level 3's smoother, as a config of its own (`label` + BEFORE_SMOOTHER),
    re-scored from predictions.npz (`unsmoothed_*` arrays) like every other row, or for a run written
    before it held them, from the per-frame errors adapt.py scored into per_frame.csv; None for a run
    without a smoother. With `adapter.clip.enabled=false` it is level 2's stream, so one levels=3 run
    pairs as level 2 and level 3 without the clip step."""
    if scores.unsmoothed is not None:  # its accel error re-scored too
        return JobResult(label + BEFORE_SMOOTHER, build, scores.unsmoothed, scores.sequences)
    path = job / "per_frame.csv"
    if not path.is_file():
        return None
    columns = [f"{UNSMOOTHED}{m}" for m in SEQUENCE_METRICS]
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not set(columns) <= set(reader.fieldnames or ()):
            return None
        try:
            rows = [(r["seq"], [float(r[c]) for c in columns]) for r in reader if r[columns[0]]]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: a row of {columns} is not a number ({err})") from err
    if not rows:
        return None
    values = np.asarray([v for _, v in rows], dtype=np.float64)
    accel = recorded_means(scores.recorded, UNSMOOTHED).get("accel_error")  # per_frame.csv has none
    return JobResult(
        label + BEFORE_SMOOTHER,
        build,
        {m: values[:, i] for i, m in enumerate(SEQUENCE_METRICS)},
        np.asarray([seq for seq, _ in rows]),
        extra={} if accel is None else {"accel_error": accel},
    )


def evaluate_sweep(run_dir: Path, jobs: list[Path], before_smoother: bool = False) -> dict[str, float]:
    """before_smoother: each smoothed job's stream before the smoother joins the comparison as a config."""
    from rich.console import Console

    common = shared_overrides([overrides_list(job) for job in jobs])
    results, per_job, rows = {}, [], []
    for job in jobs:
        scores = rescore_run(job, before_smoother)
        label = label_without_build(overrides_list(job), common)
        build = int(OmegaConf.select(scores.cfg, BUILD_SEED_KEY, default=0))
        reruns = {
            f"{prefix}{m}": value
            for _, prefix in ALSO_SCORED
            for m, value in recorded_means(scores.recorded, prefix).items()
        }
        per_job.append(JobResult(label, build, scores.adapted, scores.sequences, extra=reruns))
        if scores.source is not None:
            per_job.append(JobResult(SOURCE_LABEL, build, scores.source, scores.sequences))
        unsmoothed = before_smoother_result(job, label, build, scores) if before_smoother else None
        if unsmoothed is not None:
            per_job.append(unsmoothed)
        adapted = summarize_errors(scores.adapted)
        source = overall(scores.source) if scores.source is not None else {}
        rows.append(
            {
                "job": job.name,
                "config": label,
                "build": build,
                **{m: adapted.get(m, float("nan")) for m in COLUMNS},
                **{f"source_{m}": source.get(m, float("nan")) for m in COLUMNS},
                "matches_metrics_json": "yes" if matches_recorded(adapted, scores.recorded) else "NO",
            }
        )
        results.update({f"{job.name}/{k}": v for k, v in adapted.items()})
    per_job = _one_source_per_build(per_job)
    named = OmegaConf.select(OmegaConf.load(jobs[0] / "config.yaml"), "dataset.builds", default=None)
    lines = [f"# {run_dir.name}: {len(jobs)} jobs", "", "## Jobs (mm; only the overrides that differ)", ""]
    lines += [
        "| job | config | build | " + " | ".join(COLUMNS) + " | source PA-MPJPE | matches metrics.json |"
    ]
    lines += ["|---" * (len(COLUMNS) + 5) + "|"]
    for row in rows:
        cells = [f"{row[m]:.1f}" for m in COLUMNS] + [f"{row['source_pa_mpjpe']:.1f}"]
        lines.append(
            f"| {row['job']} | {row['config']} | {row['build']} | "
            + " | ".join(cells)
            + f" | {row['matches_metrics_json']} |"
        )
    report = "\n".join(lines) + "\n\n"
    report += builds_report(per_job, named_builds=OmegaConf.to_container(named) if named else None)
    table = across_builds(per_job)
    written = [
        write_text_atomic(run_dir / "report.md", report),
        write_text_atomic(run_dir / "results.csv", to_csv(rows)),
    ]
    written += [
        plots.save(plots.sweep_bars(table, metric), run_dir / "plots" / f"sweep_{metric}.png")
        for metric in ("pa_mpjpe", "mpjpe", "accel_error")
    ]
    console = Console()
    console.print(report)
    console.print("written: " + ", ".join(str(p.relative_to(run_dir)) for p in written) + f" in {run_dir}")
    return results


def _one_source_per_build(jobs: list[JobResult]) -> list[JobResult]:
    """Keep one source-only result per build; jobs of one build whose source models differ (a sweep
    over checkpoints) keep theirs apart, labelled with their config."""
    kept, adapted_label = [], None
    first: dict[int, JobResult] = {}
    for job in jobs:
        if job.label != SOURCE_LABEL:
            adapted_label = job.label
            kept.append(job)
            continue
        seen = first.get(job.build)
        if seen is None:
            first[job.build] = job
            kept.append(job)
        elif not all(np.allclose(seen.errors[m], job.errors[m], atol=1e-6) for m in seen.errors):
            kept.append(JobResult(f"{SOURCE_LABEL} ({adapted_label})", job.build, job.errors, job.sequences))
    return kept
