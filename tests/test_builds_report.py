"""Results across benchmark builds: grouping, mean +- sd over builds, per-sequence paired differences."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from cemr.evaluation.builds import (
    JobResult,
    across_builds,
    builds_report,
    label_without_build,
    paired_differences,
    shared_overrides,
)

SEQS = np.array(["s0", "s0", "s1"])
# PA-MPJPE per frame of the three frames (s0, s0, s1) of each (config, build)
FRAMES = {
    ("adapter.levels=0", 0): [10.0, 20.0, 30.0],
    ("adapter.levels=0", 1): [20.0, 20.0, 20.0],
    ("adapter.levels=0", 2): [50.0, 50.0, 20.0],
    ("adapter.levels=3", 0): [8.0, 12.0, 33.0],
    ("adapter.levels=3", 1): [10.0, 20.0, 14.0],
    ("adapter.levels=3", 2): [40.0, 44.0, 20.0],
}


def jobs() -> list[JobResult]:
    out = []
    for (label, build), values in FRAMES.items():
        values = np.array(values)
        errors = {"mpjpe": 2 * values, "pa_mpjpe": values, "pve": 3 * values, "accel_error": np.array([1.0])}
        out.append(JobResult(label, build, errors, SEQS, extra={"snapshot_pa_mpjpe": 100.0 + build}))
    return out


def test_label_drops_only_the_build_seed():
    assert label_without_build(["adapter.levels=3", "dataset.prepare.seed=2"]) == "adapter.levels=3"
    assert label_without_build(["dataset.prepare.seed=1"]) == "default"
    assert label_without_build(["dataset.prepare.seed_x=1"]) == "dataset.prepare.seed_x=1"
    jobs_overrides = [["a=1", "adapter.levels=0", "dataset.prepare.seed=0"], ["a=1", "adapter.levels=3"]]
    common = shared_overrides(jobs_overrides)
    assert common == {"a=1"}
    assert [label_without_build(o, common) for o in jobs_overrides] == [
        "adapter.levels=0",
        "adapter.levels=3",
    ]


def test_mean_and_sd_over_builds_of_the_frame_means():
    table = across_builds(jobs())
    for label in ("adapter.levels=0", "adapter.levels=3"):
        per_build = [statistics.fmean(FRAMES[label, b]) for b in range(3)]
        mean, sd, n = table[label]["pa_mpjpe"]
        assert mean == pytest.approx(statistics.fmean(per_build), abs=1e-12)
        assert sd == pytest.approx(statistics.stdev(per_build), abs=1e-12)
        assert n == 3
        assert table[label]["mpjpe"][0] == pytest.approx(2 * statistics.fmean(per_build))
    assert table["adapter.levels=0"]["snapshot_pa_mpjpe"] == pytest.approx((101.0, 1.0, 3))


def test_paired_differences_per_build_and_sequence():
    paired = paired_differences(jobs(), "adapter.levels=0", "adapter.levels=3")
    expected = []
    for build in range(3):
        a, b = FRAMES["adapter.levels=0", build], FRAMES["adapter.levels=3", build]
        expected += [statistics.fmean(b[:2]) - statistics.fmean(a[:2]), b[2] - a[2]]
    np.testing.assert_allclose(paired.differences, expected)
    assert paired.pairs == ((0, "s0"), (0, "s1"), (1, "s0"), (1, "s1"), (2, "s0"), (2, "s1"))
    summary = paired.summary
    assert summary["mean"] == pytest.approx(statistics.fmean(expected))
    assert summary["sd"] == pytest.approx(statistics.stdev(expected))
    assert summary["sem"] == pytest.approx(statistics.stdev(expected) / 6**0.5)
    assert (summary["better"], summary["worse"], summary["pairs"]) == (4, 1, 6)
    gains = [statistics.fmean(expected[2 * b : 2 * b + 2]) for b in range(3)]  # each build's two sequences
    assert paired.per_build == pytest.approx(dict(enumerate(gains)))
    assert summary["build_sd"] == pytest.approx(statistics.stdev(gains))


def test_report_lists_both_tables():
    report = builds_report(jobs())
    mean0 = statistics.fmean([statistics.fmean(FRAMES["adapter.levels=0", b]) for b in range(3)])
    assert f"| adapter.levels=0 | 3 | {2 * mean0:.1f} +- " in report
    assert "| adapter.levels=3 | adapter.levels=0 | " in report and "4 / 1 of 6" in report
    paired = paired_differences(jobs(), "adapter.levels=0", "adapter.levels=3")
    gains = ", ".join(f"{b}: {g:+.1f}" for b, g in paired.per_build.items())
    assert f"| {gains} ({paired.summary['build_sd']:.1f}) |" in report


def test_a_config_twice_on_one_build_and_disjoint_configs_are_refused():
    doubled = jobs() + [jobs()[0]]
    with pytest.raises(ValueError, match="two jobs of config 'adapter.levels=0' ran on build 0"):
        across_builds(doubled)
    only_a = [j for j in jobs() if j.label == "adapter.levels=0"]
    with pytest.raises(ValueError, match="share no"):
        paired_differences(only_a, "adapter.levels=0", "adapter.levels=3")


def test_builds_are_named_from_the_config_and_a_mixed_sweep_is_flagged():
    from cemr.evaluation.builds import build_kinds

    named = {"test": [0, 1], "validation": [2]}
    assert build_kinds([2, 0, 1, 0], named) == {"test": [0, 1], "validation": [2]}
    assert build_kinds([7], named) == {"unnamed": [7]}
    report = builds_report(jobs(), named_builds=named)
    assert "builds test [0, 1], validation [2])" in report
    assert "Warning: this sweep mixes test and validation builds" in report
    only_test = [j for j in jobs() if j.build < 2]
    assert "Warning" not in builds_report(only_test, named_builds=named)


def write_per_frame(job, header: str, rows: list[str]) -> None:
    job.mkdir(parents=True, exist_ok=True)
    (job / "per_frame.csv").write_text("\n".join([header, *rows]) + "\n")


HEADER = "row,seq,frame,person,pa_mpjpe,unsmoothed_mpjpe,unsmoothed_pa_mpjpe,unsmoothed_pve"


def rescored(recorded: dict, unsmoothed: dict | None = None, sequences=()):
    from cemr.evaluation.run import Rescored

    return Rescored(None, {}, None, np.asarray(sequences), recorded, unsmoothed)


def test_the_stream_before_the_smoother_is_read_from_per_frame_csv_of_an_older_run(tmp_path):
    from cemr.evaluation.run import before_smoother_result

    rows = [
        "0,s0,0,0,1.0,20.0,10.0,30.0",
        "1,s0,1,0,1.0,40.0,20.0,60.0",
        "2,s9,0,0,,,,",
        "3,s1,0,0,1.0,8.0,4.0,12.0",
    ]
    write_per_frame(tmp_path / "job", HEADER, rows)
    result = before_smoother_result(
        tmp_path / "job", "adapter.clip.enabled=false", 2, rescored({"unsmoothed_accel_error": 7.5})
    )
    assert result.label == "adapter.clip.enabled=false, before the smoother" and result.build == 2
    assert list(result.sequences) == ["s0", "s0", "s1"]  # the unscored row (empty cells) is left out
    np.testing.assert_array_equal(result.errors["pa_mpjpe"], [10.0, 20.0, 4.0])
    np.testing.assert_array_equal(result.errors["pve"], [30.0, 60.0, 12.0])
    assert result.per_sequence("mpjpe") == {"s0": 30.0, "s1": 8.0}
    assert result.overall() == pytest.approx(
        {"mpjpe": 68 / 3, "pa_mpjpe": 34 / 3, "pve": 34.0, "accel_error": 7.5}
    )
    # it pairs with the smoothed run like any other config: per sequence, treatment - baseline
    smoothed = JobResult(
        "adapter.clip.enabled=false", 2, {"pa_mpjpe": np.array([9.0, 11.0, 5.0])}, result.sequences
    )
    paired = paired_differences([smoothed, result], result.label, smoothed.label)
    np.testing.assert_allclose(paired.differences, [10.0 - 15.0, 5.0 - 4.0])


def test_a_run_without_a_smoother_has_no_such_config_and_a_bad_cell_is_named(tmp_path):
    from cemr.evaluation.run import before_smoother_result

    assert before_smoother_result(tmp_path / "none", "x", 0, rescored({})) is None  # no per_frame.csv
    write_per_frame(tmp_path / "plain", "row,seq,frame,person,pa_mpjpe", ["0,s0,0,0,1.0"])
    assert before_smoother_result(tmp_path / "plain", "x", 0, rescored({})) is None  # smoothing off
    write_per_frame(tmp_path / "bad", HEADER, ["0,s0,0,0,1.0,20.0,ten,30.0"])
    with pytest.raises(ValueError, match=r"bad/per_frame.csv: a row of .* is not a number"):
        before_smoother_result(tmp_path / "bad", "x", 0, rescored({}))


def test_the_stream_before_the_smoother_is_taken_from_its_rescored_predictions_first(tmp_path):
    from cemr.evaluation.run import before_smoother_result

    # per_frame.csv says otherwise: the re-scored predictions.npz arrays win when the run saved them
    write_per_frame(tmp_path / "job", HEADER, ["0,s0,0,0,1.0,20.0,10.0,30.0", "1,s1,0,0,1.0,8.0,4.0,12.0"])
    errors = {"mpjpe": np.array([6.0, 2.0]), "pa_mpjpe": np.array([3.0, 1.0]), "pve": np.array([9.0, 3.0])}
    errors["accel_error"] = np.array([2.0, 3.0])  # re-scored too: metrics.json's 7.5 is not used
    scores = rescored({"unsmoothed_accel_error": 7.5, "accel_error": 1.0}, errors, ["s0", "s1"])
    result = before_smoother_result(tmp_path / "job", "levels=3", 4, scores)
    assert result.label == "levels=3, before the smoother" and result.build == 4
    assert result.per_sequence("pa_mpjpe") == {"s0": 3.0, "s1": 1.0}
    assert result.overall() == pytest.approx({"mpjpe": 4.0, "pa_mpjpe": 2.0, "pve": 6.0, "accel_error": 2.5})
