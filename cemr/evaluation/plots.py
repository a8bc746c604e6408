"""Figures of `python evaluate.py` (matplotlib, headless): a run's per-frame error over time, its error
distribution and per-sequence bars (source only vs adapted), and a sweep's configs against a metric."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on clusters or CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cemr.evaluation.summary import per_sequence  # noqa: E402

SOURCE, ADAPTED = "source only", "adapted"
LABELS = {
    "mpjpe": "MPJPE (mm)",
    "pa_mpjpe": "PA-MPJPE (mm)",
    "pve": "PVE (mm)",
    "accel_error": "accel (mm/f^2)",
}


def _series(adapted: dict[str, np.ndarray], source: dict[str, np.ndarray] | None, metric: str):
    return [(label, errors[metric]) for label, errors in _named(adapted, source)]


def errors_over_time(sequences, adapted, source, metric: str = "pa_mpjpe") -> Figure:
    """Per-frame error along the stream, one line per model; dotted lines where a sequence starts."""
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for label, values in _series(adapted, source, metric):
        ax.plot(np.arange(len(values)), values, lw=0.8, label=label)
    starts = [i for i in range(1, len(sequences)) if sequences[i] != sequences[i - 1]]
    for start in starts:
        ax.axvline(start, color="grey", ls=":", lw=0.6)
    ax.set(xlabel="scored frame (stream order)", ylabel=LABELS[metric], title=f"{LABELS[metric]} per frame")
    ax.legend()
    fig.tight_layout()
    return fig


def error_distribution(adapted, source, metric: str = "pa_mpjpe") -> Figure:
    """Histogram of per-frame errors of each model on shared bins."""
    series = _series(adapted, source, metric)
    bins = np.histogram_bin_edges(np.concatenate([v for _, v in series]), bins=40)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, values in series:
        ax.hist(values, bins=bins, alpha=0.55, label=f"{label} (mean {np.mean(values):.1f})")
    ax.set(xlabel=LABELS[metric], ylabel="frames", title=f"{LABELS[metric]} distribution")
    ax.legend()
    fig.tight_layout()
    return fig


def per_sequence_bars(sequences, adapted, source, metric: str = "pa_mpjpe") -> Figure:
    """Grouped bars: each sequence's mean error per model."""
    series = [(label, per_sequence(sequences, errors)) for label, errors in _named(adapted, source)]
    names = list(series[0][1])
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4))
    for i, (label, table) in enumerate(series):
        ax.bar(np.arange(len(names)) + i * width, [table[n][metric] for n in names], width, label=label)
    ax.set_xticks(np.arange(len(names)) + width * (len(series) - 1) / 2, names, rotation=60, ha="right")
    ax.set(ylabel=LABELS[metric], title=f"{LABELS[metric]} per sequence")
    ax.legend()
    fig.tight_layout()
    return fig


def _named(adapted, source):
    return ([(SOURCE, source)] if source is not None else []) + [(ADAPTED, adapted)]


def sweep_bars(table: dict[str, dict[str, tuple[float, float, int]]], metric: str = "pa_mpjpe") -> Figure:
    """Each config of a sweep (e.g. the level ablation): mean +- sd over builds of `metric`; when
    every label sets one numeric key (a swept value), the same as a line against that value."""
    labels = [label for label in table if metric in table[label]]
    means = [table[label][metric][0] for label in labels]
    sds = [table[label][metric][1] for label in labels]
    configs = [label for label in labels if not label.startswith(SOURCE)]
    swept = _swept_values(configs)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 4))
    if swept is not None:
        key, values = swept
        at = [labels.index(label) for label in configs]
        order = np.argsort(values)
        x, y, e = (np.asarray(v)[order] for v in (values, [means[i] for i in at], [sds[i] for i in at]))
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label="adapted")
        for label in labels:
            if label.startswith(SOURCE):
                ax.axhline(table[label][metric][0], color="grey", ls="--", label=label)
        ax.set(xlabel=key)
        ax.legend()
    else:
        ax.bar(np.arange(len(labels)), means, yerr=sds, capsize=3)
        ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right")
    ax.set(
        ylabel=f"{LABELS.get(metric, metric)}, mean +- sd over builds",
        title=f"{LABELS.get(metric, metric)} by config",
    )
    fig.tight_layout()
    return fig


def _swept_values(labels: list[str]) -> tuple[str, list[float]] | None:
    """(key, values) when every label is `key=<number>` for one key, else None."""
    parts = [label.split("=", 1) for label in labels]
    if len(parts) < 2 or any(len(p) != 2 or " " in label for p, label in zip(parts, labels, strict=True)):
        return None
    if len({key for key, _ in parts}) != 1:
        return None
    try:
        return parts[0][0], [float(v) for _, v in parts]
    except ValueError:
        return None


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
