"""DDP on CPU (gloo), through the CLI as users launch it: Lightning re-runs the script per rank."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, tiny

pytestmark = pytest.mark.slow  # two processes per run: CI runs these, the development loop does not

# progress on: without a terminal it is plain log lines, which the first test reads
SMALL = [
    o for o in tiny(source_sequences=4, target_sequences=3) if not o.startswith("trainer.enable_progress_bar")
]
DDP = ["trainer.strategy=ddp", "trainer.devices=2"]


def cli(script: str, root, out: str, *overrides: str) -> subprocess.CompletedProcess:
    args = [f"paths.data_dir={root / 'data'}", f"paths.checkpoint_dir={root / 'ckpt'}"]
    args += [f"paths.output_dir={root / out}", *SMALL, *overrides]
    # One thread per process, as Lightning gives each of 2 ranks on 2 cores: same float sums everywhere.
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    return root, cli("train.py", root, "train", *DDP)


def test_ddp_training_saves_and_scores_once_on_rank_zero(trained):
    root, done = trained
    assert (root / "ckpt" / "hmr_small_synthetic_seed0.ckpt").is_file()
    assert (root / "ckpt" / "videomae_tiny_synthetic_seed0.ckpt").is_file()
    assert done.stdout.count("source model saved to") == 1
    assert done.stdout.count("source model on target") == 1


def test_sequences_sharded_across_two_ranks_match_one_process(trained):
    root, _ = trained
    adapter = ["adapter.reset=sequence", "adapter.checkpoint_every=4", "adapter.clip.enabled=true"]
    adapter += ["adapter.replay.enabled=true", "adapter.replay.clusters=4"]  # reseeded per sequence
    done = cli("adapt.py", root, "one", *adapter)
    # no terminal: plain progress lines, none of the known third-party noise, no layers table
    output = done.stdout + done.stderr
    assert re.search(r"adapt: (\d+)/\1 frames of the target stream", output)
    for noise in (
        "Gym has been unmaintained",
        "litlogger",
        "LeafSpec",
        "in eval mode",
        "Total params",
        "Epoch 0",
    ):
        assert noise not in output
    cli("adapt.py", root, "two", *adapter, *DDP, "keep_stream_state=true")
    one = json.loads((root / "one" / "metrics.json").read_text())
    two = json.loads((root / "two" / "metrics.json").read_text())
    assert one.keys() == two.keys()
    for key in ("frames", "outer_steps", "clip_steps", "skipped_steps", "extra_steps"):
        assert two[key] == one[key]  # counters summed over the ranks
    for key in ("mpjpe", "pa_mpjpe", "pve", "accel_error"):
        assert two[key] == pytest.approx(one[key], abs=1e-9)
    with np.load(root / "one" / "predictions.npz") as a, np.load(root / "two" / "predictions.npz") as b:
        assert np.array_equal(np.sort(a["index"]), b["index"])  # every frame once, in index order
        order = np.argsort(a["index"])
        np.testing.assert_array_equal(b["joints14"], a["joints14"][order])
    states = sorted(p.name for p in (root / "two").glob("adapt_state*.pt"))
    assert states == ["adapt_state.rank0of2.pt", "adapt_state.rank1of2.pt"]  # kept: each rank its own
    assert not list((root / "one").glob("adapt_state*.pt"))  # a finished run drops its stream state


def test_a_stream_that_never_resets_is_refused_under_ddp(trained):
    root, _ = trained
    with pytest.raises(AssertionError, match="cannot be split across devices"):
        cli("adapt.py", root, "refused", "adapter.reset=none", *DDP)
    assert not (root / "refused" / "metrics.json").exists()


def test_evaluate_cli_writes_into_the_run_dir_and_nowhere_else(trained, tmp_path):
    root, _ = trained
    cli("adapt.py", root, "to_evaluate", "adapter.levels=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(REPO / "evaluate.py"), f"run_dir={root / 'to_evaluate'}"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # no outputs/<date>/ in the working dir
    for name in ("report.md", "results.csv", "evaluate.log", "plots/errors_over_time.png"):
        assert (root / "to_evaluate" / name).is_file()
