"""What evaluate.py writes: a run's report and per-sequence CSV (hand-computed numbers), and the plots'
data (the figure holds the very values it was given)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from cemr.evaluation import plots
from cemr.evaluation.builds import JobResult
from cemr.evaluation.run import SOURCE_LABEL, _one_source_per_build
from cemr.evaluation.summary import run_report, sequence_rows, to_csv

SEQS = np.array(["a", "a", "b"])


def errors(pa):
    pa = np.asarray(pa, dtype=float)
    return {"mpjpe": 2 * pa, "pa_mpjpe": pa, "pve": 3 * pa, "accel_error": np.array([5.0])}


SOURCE = errors([10.0, 20.0, 30.0])
ADAPTED = errors([8.0, 12.0, 33.0])


def test_sequence_rows_pair_source_and_adapted_per_sequence():
    rows = sequence_rows(SEQS, ADAPTED, SOURCE)
    assert [r["sequence"] for r in rows] == ["a", "b"] and [r["frames"] for r in rows] == [2, 1]
    assert (
        rows[0]["source_pa_mpjpe"] == 15.0
        and rows[0]["pa_mpjpe"] == 10.0
        and rows[0]["diff_pa_mpjpe"] == -5.0
    )
    assert rows[1]["diff_pa_mpjpe"] == 3.0 and rows[1]["diff_mpjpe"] == 6.0 and rows[1]["diff_pve"] == 9.0
    assert "source_pa_mpjpe" not in sequence_rows(SEQS, ADAPTED, None)[0]


def test_csv_round_trips_the_rows():
    rows = sequence_rows(SEQS, ADAPTED, SOURCE)
    back = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [r["sequence"] for r in back] == ["a", "b"]
    assert [float(r["diff_pa_mpjpe"]) for r in back] == [-5.0, 3.0]
    assert list(back[0]) == list(rows[0])


def test_run_report_tables_and_paired_differences():
    recorded = {"snapshot_pa_mpjpe": 99.0, "snapshot_mpjpe": 1.0, "average_pa_mpjpe": 88.0}
    recorded["unsmoothed_accel_error"] = 42.0
    report = run_report("run", SEQS, ADAPTED, SOURCE, recorded)
    # frame means: source 20.0 / 40.0 / 60.0, adapted 53/3 = 17.7 / 35.3 / 53.0, accel 5.0 both
    assert "| source only | 40.0 | 20.0 | 60.0 | 5.0 |" in report
    assert "| adapted | 35.3 | 17.7 | 53.0 | 5.0 |" in report
    assert "| final weights, re-run | 1.0 | 99.0 |  |  |" in report
    assert "| averaged weights, re-run |  | 88.0 |  |  |" in report
    assert "| adapted, before the smoother |  |  |  | 42.0 |" in report
    # per-sequence PA-MPJPE differences -5 and +3: mean -1.0, sd sqrt(32) = 5.7
    assert "| pa_mpjpe | -1.0 +- 5.7 | 1 / 1 of 2 |" in report
    assert "Paired" not in run_report("run", SEQS, ADAPTED, None, {})  # nothing to pair with


def test_plots_hold_the_values_they_were_given():
    fig = plots.errors_over_time(SEQS, ADAPTED, SOURCE)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines[:2]] == ["source only", "adapted"]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), ADAPTED["pa_mpjpe"])
    assert [line.get_xdata()[0] for line in ax.lines[2:]] == [2]  # sequence b starts at frame 2
    bars = plots.per_sequence_bars(SEQS, ADAPTED, SOURCE).axes[0].patches
    assert [b.get_height() for b in bars] == [15.0, 30.0, 10.0, 33.0]  # source a, b; adapted a, b
    counts = sum(p.get_height() for p in plots.error_distribution(ADAPTED, SOURCE).axes[0].patches)
    assert counts == 6  # three frames of each model


def test_sweep_plot_is_a_line_over_one_swept_number_else_bars():
    table = {
        "adapter.outer.lr=3e-4": {"pa_mpjpe": (90.0, 2.0, 3)},
        "adapter.outer.lr=1e-4": {"pa_mpjpe": (95.0, 1.0, 3)},
        SOURCE_LABEL: {"pa_mpjpe": (150.0, 5.0, 3)},
    }
    ax = plots.sweep_bars(table).axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [1e-4, 3e-4])  # sorted by the swept value
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [95.0, 90.0])
    assert ax.get_xlabel() == "adapter.outer.lr"
    levels = {
        "adapter.levels=0 adapter.emit=clone": {"pa_mpjpe": (1.0, 0.0, 1)},
        "x": {"pa_mpjpe": (2.0, 0.0, 1)},
    }
    assert [b.get_height() for b in plots.sweep_bars(levels).axes[0].patches] == [1.0, 2.0]


def test_one_source_only_result_per_build_unless_the_source_models_differ():
    same = [
        JobResult("levels=0", 0, SOURCE, SEQS),
        JobResult(SOURCE_LABEL, 0, SOURCE, SEQS),
        JobResult("levels=3", 0, ADAPTED, SEQS),
        JobResult(SOURCE_LABEL, 0, SOURCE, SEQS),
        JobResult(SOURCE_LABEL, 1, SOURCE, SEQS),
    ]
    kept = _one_source_per_build(same)
    assert [(j.label, j.build) for j in kept] == [
        ("levels=0", 0),
        (SOURCE_LABEL, 0),
        ("levels=3", 0),
        (SOURCE_LABEL, 1),
    ]
    other = [JobResult("ckpt=a", 0, ADAPTED, SEQS), JobResult(SOURCE_LABEL, 0, SOURCE, SEQS)]
    other += [JobResult("ckpt=b", 0, ADAPTED, SEQS), JobResult(SOURCE_LABEL, 0, ADAPTED, SEQS)]
    assert [j.label for j in _one_source_per_build(other)][-1] == f"{SOURCE_LABEL} (ckpt=b)"


@pytest.mark.parametrize("labels", [["a=1"], ["a=1", "b=2"], ["a=x", "a=y"], ["a=1 c=2", "a=2 c=2"]])
def test_no_line_unless_one_numeric_key_is_swept(labels):
    assert plots._swept_values(labels) is None
