"""Results over several benchmark builds: mean +- sd across builds and per-sequence paired differences.

One run on one build of the target proves little (a single sequence can decide a ranking), so a
comparison is a sweep over builds (`dataset.prepare.seed=0,1,2`) and configs (e.g.
`adapter.levels=0,3`): `python evaluate.py run_dir=<sweep>` groups its jobs by config (their
overrides less the build seed), reports each config's frame-mean errors as mean +- sd over builds,
and, for every pair of configs, the per-sequence differences (build, sequence) paired between them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

SEQUENCE_METRICS = ("mpjpe", "pa_mpjpe", "pve")
BUILD_SEED_KEY = "dataset.prepare.seed"


@dataclass
class JobResult:
    """One job of a sweep: its config label, the build it ran on, per-frame errors and their sequences."""

    label: str
    build: int
    errors: dict[str, np.ndarray]  # metric -> (N,) per frame (accel_error: per interior frame)
    sequences: np.ndarray  # (N,) sequence name of each frame of errors["mpjpe"]
    extra: dict[str, float] = field(default_factory=dict)  # other recorded scalars, e.g. snapshot scores

    def overall(self) -> dict[str, float]:
        means = {name: float(np.mean(v)) for name, v in self.errors.items() if len(v)}
        return {**means, **self.extra}

    def per_sequence(self, metric: str) -> dict[str, float]:
        values = self.errors[metric]
        return {str(s): float(values[self.sequences == s].mean()) for s in dict.fromkeys(self.sequences)}


def label_without_build(overrides: Iterable[str], common: Iterable[str] = ()) -> str:
    """The config label of a job: its overrides less the build seed (which varies inside a group) and
    less the `common` ones (that every job of the sweep shares)."""
    common = set(common)
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != BUILD_SEED_KEY and o not in common]
    return " ".join(kept) or "default"


def shared_overrides(overrides_per_job: list[list[str]]) -> set[str]:
    """The overrides every job of a sweep has (paths, display settings...): they label nothing."""
    return set.intersection(*map(set, overrides_per_job)) if overrides_per_job else set()


def mean_sd(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and count."""
    values = np.asarray(list(values), dtype=np.float64)
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), sd, len(values)


def across_builds(jobs: list[JobResult]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """label -> metric -> (mean, sd, builds) of the per-build frame means; a label given twice for
    one build is an error (the sweep mixes something the label does not show)."""
    grouped: dict[str, dict[int, JobResult]] = {}
    for job in jobs:
        builds = grouped.setdefault(job.label, {})
        if job.build in builds:
            raise ValueError(
                f"two jobs of config '{job.label}' ran on build {job.build}; cannot tell them apart"
            )
        builds[job.build] = job
    table = {}
    for label, builds in grouped.items():
        metrics = sorted(set.intersection(*(set(j.overall()) for j in builds.values())))
        table[label] = {m: mean_sd(j.overall()[m] for j in builds.values()) for m in metrics}
    return table


@dataclass(frozen=True)
class PairedDifference:
    """`treatment - baseline` per (build, sequence) present in both, for one metric."""

    baseline: str
    treatment: str
    metric: str
    differences: np.ndarray  # (P,)
    pairs: tuple[tuple[int, str], ...]

    @property
    def per_build(self) -> dict[int, float]:
        """build -> the mean of its sequences' differences (the gain on that build)."""
        builds = np.asarray([build for build, _ in self.pairs])
        return {int(b): float(self.differences[builds == b].mean()) for b in dict.fromkeys(builds.tolist())}

    @property
    def summary(self) -> dict[str, float]:
        mean, sd, n = mean_sd(self.differences)
        return {
            "mean": mean,
            "sd": sd,
            "pairs": n,
            "sem": sd / np.sqrt(n) if n else float("nan"),
            "better": int(np.sum(self.differences < 0)),
            "worse": int(np.sum(self.differences > 0)),
            "build_sd": mean_sd(self.per_build.values())[1],  # the spread of the gain between builds
        }


def paired_differences(
    jobs: list[JobResult], baseline: str, treatment: str, metric: str = "pa_mpjpe"
) -> PairedDifference:
    """Per-sequence differences of `metric` (treatment - baseline; negative = treatment better)."""
    by_key = {(j.label, j.build): j for j in jobs}
    pairs, differences = [], []
    for build in sorted({j.build for j in jobs}):
        a, b = by_key.get((baseline, build)), by_key.get((treatment, build))
        if a is None or b is None:
            continue
        base, treat = a.per_sequence(metric), b.per_sequence(metric)
        for seq in base:
            if seq in treat:
                pairs.append((build, seq))
                differences.append(treat[seq] - base[seq])
    if not pairs:
        raise ValueError(f"configs '{baseline}' and '{treatment}' share no (build, sequence) to compare")
    return PairedDifference(baseline, treatment, metric, np.asarray(differences), tuple(pairs))


def build_kinds(builds: Iterable[int], named: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """The builds grouped by the kind the dataset config names them (`test`, `validation`, ...);
    builds it does not name are 'unnamed'."""
    kinds: dict[str, list[int]] = {}
    for build in sorted(set(builds)):
        kind = next((k for k, seeds in (named or {}).items() if build in seeds), "unnamed")
        kinds.setdefault(kind, []).append(build)
    return kinds


def builds_report(
    jobs: list[JobResult], metric: str = "pa_mpjpe", named_builds: dict[str, list[int]] | None = None
) -> str:
    """Markdown: the across-builds table and the paired per-sequence differences of every config pair.

    named_builds: the dataset config's `builds` (e.g. {'test': [0, 1, 2], 'validation': [100, 101]});
    a sweep that mixes kinds is flagged, as tuning and reporting must not share builds.
    """
    table = across_builds(jobs)
    metrics = sorted({m for row in table.values() for m in row}, key=_metric_order)
    kinds = build_kinds((j.build for j in jobs), named_builds)
    lines = [
        "## Across builds (mean +- sd over builds, mm; builds "
        + ", ".join(f"{kind} {builds}" for kind, builds in kinds.items())
        + ")",
        "",
    ]
    if len(kinds) > 1:
        lines += [f"**Warning: this sweep mixes {' and '.join(kinds)} builds.**", ""]
    lines += [
        "| config | builds | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for label, row in table.items():
        n = max(v[2] for v in row.values())
        cells = [f"{row[m][0]:.1f} +- {row[m][1]:.1f}" if m in row else "" for m in metrics]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    labels = list(table)
    if len(labels) > 1:
        lines += [
            "",
            f"## Paired per-sequence differences of {metric} (row - baseline, mm; negative = row better)",
            "",
            "| config | baseline | mean +- sd | sem | sequences better / worse | per build (sd of those) |",
            "|---|---|---|---|---|---|",
        ]
        for i, baseline in enumerate(labels):
            for treatment in labels[i + 1 :]:
                paired = paired_differences(jobs, baseline, treatment, metric)
                s = paired.summary
                per_build = ", ".join(f"{build}: {gain:+.1f}" for build, gain in paired.per_build.items())
                lines.append(
                    f"| {treatment} | {baseline} | {s['mean']:+.1f} +- {s['sd']:.1f} | {s['sem']:.1f} | "
                    f"{s['better']} / {s['worse']} of {s['pairs']} | {per_build} ({s['build_sd']:.1f}) |"
                )
    return "\n".join(lines) + "\n"


def _metric_order(name: str) -> tuple[int, str]:
    order = ("mpjpe", "pa_mpjpe", "pve", "accel_error")
    return (order.index(name), name) if name in order else (len(order), name)
