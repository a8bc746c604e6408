"""What `python evaluate.py` writes for one run: overall and per-sequence errors of the source model and
the adapted one, and their per-sequence paired differences, as markdown (report.md) and CSV rows."""

from __future__ import annotations

import csv
import io

import numpy as np

from cemr.evaluation.builds import SEQUENCE_METRICS, mean_sd

OVERALL_METRICS = ("mpjpe", "pa_mpjpe", "pve", "accel_error")
# What a run scores besides the source model and what it emitted, by the prefix of its recorded metrics: the
# stream's predictions before level 3's smoother, and the adapted weights re-run over the whole target after
# the stream (a model that became a per-frame tracker, its state in the weights, scores far worse there).
UNSMOOTHED = "unsmoothed_"  # the metrics prefix of the stream before level 3's smoother
ALSO_SCORED = (
    ("adapted, before the smoother", UNSMOOTHED),
    ("final weights, re-run", "snapshot_"),
    ("averaged weights, re-run", "average_"),
)


def recorded_means(recorded: dict[str, float], prefix: str) -> dict[str, float]:
    """The OVERALL_METRICS a run recorded under `prefix` (e.g. source_, snapshot_), by metric."""
    return {m: recorded[f"{prefix}{m}"] for m in OVERALL_METRICS if f"{prefix}{m}" in recorded}


def per_sequence(sequences: np.ndarray, errors: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """sequence -> metric -> frame mean (mm), sequences in the order they first appear."""
    return {
        str(s): {m: float(errors[m][sequences == s].mean()) for m in SEQUENCE_METRICS}
        for s in dict.fromkeys(sequences)
    }


def overall(errors: dict[str, np.ndarray]) -> dict[str, float]:
    return {m: float(np.mean(errors[m])) for m in OVERALL_METRICS if m in errors and len(errors[m])}


def sequence_rows(
    sequences: np.ndarray, adapted: dict[str, np.ndarray], source: dict[str, np.ndarray] | None
) -> list[dict[str, object]]:
    """One row per sequence: frames, source-only and adapted means and `diff_<metric>` = adapted -
    source (mm; negative = adaptation helped); source columns only when the run has them."""
    counts = {str(s): int(np.sum(sequences == s)) for s in dict.fromkeys(sequences)}
    after = per_sequence(sequences, adapted)
    before = per_sequence(sequences, source) if source is not None else None
    rows = []
    for seq, frames in counts.items():
        row: dict[str, object] = {"sequence": seq, "frames": frames}
        for m in SEQUENCE_METRICS:
            if before is not None:
                row[f"source_{m}"] = before[seq][m]
            row[m] = after[seq][m]
            if before is not None:
                row[f"diff_{m}"] = after[seq][m] - before[seq][m]
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, object]]) -> str:
    """CSV text of rows that share their keys (floats with 4 decimals)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return out.getvalue()


def run_report(
    name: str,
    sequences: np.ndarray,
    adapted: dict[str, np.ndarray],
    source: dict[str, np.ndarray] | None,
    recorded: dict[str, float],
) -> str:
    """Markdown: overall table (source only, adapted, ALSO_SCORED), per-sequence table and
    the paired per-sequence differences adapted - source."""
    lines = [f"# {name}", "", "## Overall (mm, frame means)", ""]
    lines += ["| model | " + " | ".join(OVERALL_METRICS) + " |", "|---|" + "---|" * len(OVERALL_METRICS)]
    if source is not None:
        before = overall(source)
    else:  # a run saved without the source model's predictions: its recorded means, if any
        before = recorded_means(recorded, "source_") or None
    models = [("source only", before), ("adapted", overall(adapted))]
    for label, prefix in ALSO_SCORED:
        rerun = recorded_means(recorded, prefix)
        models += [(label, rerun)] if rerun else []
    for label, values in models:
        if values is not None:
            lines.append(f"| {label} | " + " | ".join(_cell(values.get(m)) for m in OVERALL_METRICS) + " |")
    rows = sequence_rows(sequences, adapted, source)
    lines += ["", "## Per sequence (mm)", "", "| " + " | ".join(rows[0]) + " |", "|---" * len(rows[0]) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in rows]
    if source is not None:
        lines += ["", "## Paired per-sequence differences, adapted - source only (mm; negative = better)", ""]
        lines += ["| metric | mean +- sd | sequences better / worse |", "|---|---|---|"]
        for m in SEQUENCE_METRICS:
            diffs = [float(row[f"diff_{m}"]) for row in rows]
            mean, sd, n = mean_sd(diffs)
            better, worse = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
            lines.append(f"| {m} | {mean:+.1f} +- {sd:.1f} | {better} / {worse} of {n} |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" if isinstance(value, float) else str(value)
