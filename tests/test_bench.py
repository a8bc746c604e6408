"""benchmarks/bench_adapt.py: the counts its table reports and the parts of --breakdown (no timings)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_adapt

pytestmark = pytest.mark.slow  # streams every row of the table: CI runs it, the development loop does not


def test_the_table_counts_each_levels_passes_per_frame(tmp_path):
    out = tmp_path / "bench.json"
    bench_adapt.main(["--frames", "3", "--repeats", "2", "--threads", "1", "--json", str(out)])
    rows = {row["row"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"levels=0", "levels=1", "levels=2", "levels=3", "experiment=boa",
                         "experiment=dynaboa", "experiment=cemr"}  # fmt: skip
    # level 0: one forward, no backward; level 1: the clone's forward, its backward, the forward after
    # the step; level 2 (no level-1 step, no teacher since session 22): the outer step's forward and
    # backward on frame t (and t-k once there is one) and the updated model's forward
    assert (rows["levels=0"]["forwards"], rows["levels=0"]["backwards"]) == (1.0, 0.0)
    assert (rows["levels=1"]["forwards"], rows["levels=1"]["backwards"]) == (2.0, 1.0)
    assert (rows["levels=2"]["forwards"], rows["levels=2"]["backwards"], rows["levels=2"]["outer_steps"]) == (
        2.0,
        1.0,
        1.0,
    )
    assert all(row["ms_per_frame"] > 0 and row["ratio"] > 0 for row in rows.values())


def test_the_breakdown_attributes_each_part_once(tmp_path):
    out = tmp_path / "breakdown.json"
    row = "adapter.levels=2 adapter.inner.steps=1 adapter.teacher.enabled=true"  # every part of level 2
    bench_adapt.main(["--frames", "3", "--threads", "1", "--breakdown", "--breakdown-row", row,
                      "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    parts = result["parts_ms"]
    assert result["row"] == row and set(parts) == {*bench_adapt.PARTS, "the rest"}
    assert all(ms >= 0 for ms in parts.values()), parts  # nested functions are not counted twice
    assert 0 < parts["  of which the trunk"] < parts["model forwards"]
    assert parts["frozen trunk stages, once per image"] > 0  # the default freezes the stem and two stages
    every_frame = ("backward passes", "optimiser steps", "MAML clone, clipping, update", "teacher EMA")
    for part in (*every_frame, "replay retrieval (search, loading the samples)"):
        assert parts[part] > 0, part  # level 2 runs each of them every frame
    assert parts["video encoder"] == 0  # level 3 only
