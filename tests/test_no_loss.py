"""Nothing of the user's is lost (issue 11): checkpoints, data folders, run dirs, outputs on a full disk,
leftovers of killed runs and the worker processes of a killed benchmark build."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import cemr.adapt.run as adapt_module
import cemr.data.synthetic.build as build_module
from cemr import atomic
from cemr.adapt.resume import StreamStateMismatch, check_stream_state
from cemr.adapt.run import run as adapt_run
from cemr.atomic import pid_alive, remove_leftovers, save_npz_atomic
from cemr.data.prepare import main as prepare_main
from cemr.data.prepare import prepare_assets, start_or_skip
from cemr.data.synthetic import build_benchmark
from cemr.models import save_checkpoint
from cemr.models.foreign import build_backbone, model_config
from cemr.runtime import claim_run_dir, save_config
from cemr.train.run import (
    DEFAULT_CHECKPOINTS,
    check_missing_checkpoint,
    check_outputs,
    is_default_checkpoint,
    smoke_setting,
)
from cemr.train.run import run as train_run
from tests.conftest import REPO, TINY, compose_config

TINY_BENCH = dict(
    source_sequences=2, target_sequences=1, frames_per_sequence=4, source_image_size=(48, 48),
    target_image_size=(48, 64), progress=False,
)  # fmt: skip


def workspace(tmp_path: Path, name: str, config: str = "adapt", overrides=()):
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.checkpoint_dir={tmp_path / 'ckpt'}"]
    return compose_config(config, [*paths, *TINY, *overrides], tmp_path / name)


def _reaped_pid() -> int:
    """The pid of a process that has exited and been reaped: free, no process has it."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def age(path: Path, seconds: float = 3600) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


# ------------------------------------------------------------------ train.py and the checkpoints


@pytest.mark.slow
def test_a_smoke_run_writes_no_checkpoint_and_says_so(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cfg = workspace(tmp_path, "out", "train", ["trainer.fast_dev_run=true"])
    committed = Path(cfg.training.checkpoint)
    committed.parent.mkdir(parents=True)
    committed.write_bytes(b"the committed source model")
    metrics = train_run(cfg)
    assert np.isfinite(metrics["target_pa_mpjpe"])  # the smoke run trained and scored in memory
    assert committed.read_bytes() == b"the committed source model"
    assert sorted(p.name for p in committed.parent.iterdir()) == [committed.name]  # no video encoder either
    assert f"smoke run (trainer.fast_dev_run=True): no checkpoint is written; {committed}" in caplog.text


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.fast_dev_run=true", "trainer.fast_dev_run=True"),
        ("trainer.fast_dev_run=3", "trainer.fast_dev_run=3"),
        ("+trainer.limit_train_batches=1", "trainer.limit_train_batches=1"),  # an int: one batch
        ("+trainer.limit_train_batches=0.1", "trainer.limit_train_batches=0.1"),
        ("+trainer.overfit_batches=2", "trainer.overfit_batches=2"),
        ("+trainer.limit_train_batches=1.0", None),  # all batches: a real run
        ("+trainer.max_steps=100", None),  # a training length, not a smoke test
    ],
)
def test_smoke_settings(tmp_path, override, expected):
    assert smoke_setting(workspace(tmp_path, "out", "train", [override])) == expected


@pytest.mark.parametrize(
    ("task", "key"), [("source", "checkpoint"), ("videomae", "video_encoder_checkpoint")]
)
def test_a_real_run_refuses_to_replace_a_checkpoint_before_any_work(tmp_path, task, key):
    cfg = workspace(tmp_path, "out", "train", [f"task={task}"])
    existing = Path(cfg.training[key])
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"keep me")
    message = (
        f"{existing} \\(training.{key}\\) exists and this run would replace it; pass training.overwrite=true "
        f"to replace it, or training.{key}=<new path>"
    )
    with pytest.raises(FileExistsError, match=message):
        train_run(cfg)
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()  # refused before any work
    check_outputs(workspace(tmp_path, "out", "train", [f"task={task}", "training.overwrite=true"]))  # asked


def test_a_named_checkpoint_must_exist_only_the_default_is_built(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    typo = tmp_path / "ckpt" / "hmr_smal_synthetic_seed0.ckpt"
    cfg = workspace(tmp_path, "out", overrides=[f"training.checkpoint={typo}"])
    with pytest.raises(
        FileNotFoundError,
        match=f"checkpoint {typo} \\(training.checkpoint\\) not found; check the path, or train it first "
        f"with `python train.py training.checkpoint={typo}`",
    ):
        adapt_run(cfg)
    assert not (tmp_path / "data").exists() and not typo.parent.exists()  # nothing built, nothing trained

    default = workspace(tmp_path, "out")
    assert is_default_checkpoint(default, "checkpoint") and not is_default_checkpoint(cfg, "checkpoint")
    check_missing_checkpoint(default, "checkpoint")  # the default's own checkpoint: built, and said so
    assert (
        "seed0.ckpt (training.checkpoint, the config's default) is missing: building it now on first use"
        in caplog.text
    )


@pytest.mark.parametrize("config", ["adapt", "train"])
def test_a_named_video_encoder_must_exist(tmp_path, config):
    typo = tmp_path / "elsewhere" / "videomae.ckpt"
    cfg = workspace(tmp_path, "out", config, [f"training.video_encoder_checkpoint={typo}"])
    with pytest.raises(
        FileNotFoundError,
        match=f"checkpoint {typo} \\(training.video_encoder_checkpoint\\) not found; .* "
        f"`python train.py task=videomae training.video_encoder_checkpoint={typo}`",
    ):
        (adapt_run if config == "adapt" else train_run)(cfg)
    assert not (tmp_path / "data").exists()


def test_the_default_checkpoint_paths_are_those_of_the_config():
    raw = OmegaConf.load(REPO / "configs" / "training" / "source.yaml")
    for key, value in DEFAULT_CHECKPOINTS.items():
        assert raw._get_node(key)._value() == value


# ------------------------------------------------------------------------------ data folders


@pytest.mark.slow
def test_prepare_refuses_a_user_folder_that_only_looks_like_a_benchmark(tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "meta.json").write_text('{"mine": 1}')
    (mine / "thesis.txt").write_text("precious")
    argv = [
        f"paths.data_dir={tmp_path / 'data'}",
        *(f"dataset.prepare.{k}={v}" for k, v in TINY_BENCH.items()),
    ]
    argv = [a.replace("(", "[").replace(")", "]").replace(" ", "") for a in argv]
    for root in (mine, mine / "sub" / ".."):  # `..` resolved: the same folder, no hidden sibling in sub/
        with pytest.raises(Exception, match=f"{mine} exists, is not empty and has no meta.json written by"):
            prepare_main([*argv, "dataset.prepare.workers=1", f"dataset.root={root}"])
    assert (mine / "thesis.txt").read_text() == "precious" and (mine / "sub").is_dir()
    assert sorted(p.name for p in mine.iterdir()) == ["meta.json", "sub", "thesis.txt"]
    assert list((mine / "sub").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "data",
        "mine",
    ]


def test_a_benchmark_holding_the_users_files_is_not_replaced(synthetic_body_dir, tmp_path):
    bench = build_benchmark(tmp_path / "bench", synthetic_body_dir, workers=0, **TINY_BENCH)
    (bench / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"{bench} holds a synthetic benchmark but also notes.txt"):
        build_benchmark(bench, synthetic_body_dir, workers=0, **{**TINY_BENCH, "target_sequences": 2})
    assert (bench / "notes.txt").read_text() == "mine"


def test_prepared_split_files_without_a_stamp_are_not_overwritten(tmp_path):
    (tmp_path / "test.npz").write_bytes(b"someone's split")
    with pytest.raises(FileExistsError, match=f"{tmp_path} holds test.npz but no valid prepare.json"):
        start_or_skip(tmp_path, ["test"], {"a": 1})
    assert (tmp_path / "test.npz").read_bytes() == b"someone's split"
    assert start_or_skip(tmp_path, ["test"], {"a": 1}, overwrite=True) is False  # asked: rebuilt
    assert start_or_skip(tmp_path, ["test"], {"a": 1}) is False  # our interrupted build: redone


# ------------------------------------------------------------- leftovers of killed processes


def test_leftovers_of_dead_processes_are_removed_and_no_others(tmp_path):
    dead, alive = _reaped_pid(), os.getppid()
    names = {
        f".predictions.tmp{dead}.npz": True,
        f".bench.building-{dead}": True,
        f".bench.old-{dead}": True,
        f".metrics.tmp{alive}.json": False,  # a live writer
        f".metrics.tmp{os.getpid()}.json": False,  # this process
        f"predictions.tmp{dead}.npz": False,  # not hidden: not a name the writers use
        "notes.txt": False,
    }
    for name in names:
        path = tmp_path / name
        if "building" in name or "old" in name:
            path.mkdir()
        else:
            path.write_text("x")
        age(path)
    fresh = tmp_path / f".config.tmp{dead}.yaml"
    fresh.write_text("x")  # written after this process started: maybe another machine's
    assert not pid_alive(dead) and pid_alive(alive)
    removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n, gone in names.items() if gone)
    assert fresh.exists() and all((tmp_path / n).exists() for n, gone in names.items() if not gone)


def test_a_benchmark_build_removes_the_build_dirs_of_killed_builds(synthetic_body_dir, tmp_path):
    stale = tmp_path / f".bench.building-{_reaped_pid()}"
    (stale / "images").mkdir(parents=True)
    age(stale)
    other = tmp_path / f".other.building-{_reaped_pid()}"  # another dataset's: not this build's business
    other.mkdir()
    age(other)
    build_benchmark(tmp_path / "bench", synthetic_body_dir, workers=0, **TINY_BENCH)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bench", other.name])


# ------------------------------------------------------------------- worker processes


def _slow_after_first(spec, models):
    pids = Path(os.environ["CEMR_TEST_PIDS"])
    (pids / str(os.getpid())).touch()
    if not spec.name.startswith("train_000"):
        time.sleep(120)
    end = time.monotonic() + 60  # the first sequence ends once both workers run (slow on a busy machine)
    while len(list(pids.iterdir())) < 2 and time.monotonic() < end:
        time.sleep(0.05)
    return _original_generate(spec, models)


_original_generate = build_module.generate_sequence


def _pids(folder: Path) -> list[int]:
    return [int(p.name) for p in folder.iterdir()]


def _wait_all_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    end = time.monotonic() + timeout
    while (alive := [pid for pid in pids if pid_alive(pid)]) and time.monotonic() < end:
        time.sleep(0.1)
    return alive


def test_an_exception_in_the_parent_terminates_the_workers(synthetic_body_dir, tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("CEMR_TEST_PIDS", str(pids))
    monkeypatch.setattr(build_module, "generate_sequence", _slow_after_first)

    def fails(*args, **kwargs):
        raise RuntimeError("the parent fails")

    monkeypatch.setattr("rich.progress.Progress.advance", fails)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="the parent fails"):
        build_benchmark(tmp_path / "bench", synthetic_body_dir, workers=2, **TINY_BENCH)
    assert time.monotonic() - start < 30  # the workers were stopped, not waited for (120 s each)
    assert len(_pids(pids)) == 2 and _wait_all_gone(_pids(pids)) == []
    assert list(tmp_path.iterdir()) == [pids]  # no build dir left either


@pytest.mark.slow
def test_sigterm_stops_a_parallel_build_and_its_workers(synthetic_body_dir, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    script = (
        "import sys, tests.test_no_loss as t, cemr.data.synthetic.build as b\n"
        "b.generate_sequence = t._slow_after_first\n"
        "b.build_benchmark(sys.argv[1], sys.argv[2], workers=2, **t.TINY_BENCH)\n"
    )
    env = {**os.environ, "CEMR_TEST_PIDS": str(pids), "OMP_NUM_THREADS": "1"}
    build = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "bench"), str(synthetic_body_dir)], cwd=REPO, env=env
    )
    try:
        end = time.monotonic() + 120
        while len(_pids(pids)) < 2 and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(0.5)  # both workers in their slow sequence
        build.send_signal(signal.SIGTERM)
        assert build.wait(timeout=30) != 0
        assert len(_pids(pids)) == 2 and _wait_all_gone(_pids(pids)) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pids"]
    finally:
        build.kill()
        for pid in _pids(pids):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------ run dirs


@pytest.fixture
def stand_in_source(tmp_path):
    """A tiny untrained source checkpoint at the default path (adapting it runs in seconds)."""
    cfg = workspace(tmp_path, "prep")
    prepare_assets(cfg)
    model = build_backbone(cfg.backbone)
    head = torch.nn.Linear(8, 8)
    save_checkpoint(
        cfg.training.checkpoint, model, model_config(cfg.backbone), extra={"align_head": head.state_dict()}
    )
    return tmp_path


LEVEL2 = ["adapter.levels=2", "adapter.checkpoint_every=10"]


def test_a_run_dir_of_another_config_is_refused_before_any_work(tmp_path):
    old = workspace(tmp_path, "run", overrides=["adapter.levels=2"])
    save_config(old, tmp_path / "run")
    (tmp_path / "run" / "metrics.json").write_text('{"pa_mpjpe": 100.0}')
    with pytest.raises(
        FileExistsError,
        match=f"run dir {tmp_path / 'run'} holds the outputs of another run \\(config.yaml, metrics.json\\), "
        f"whose .*config.yaml differs from this run's: adapter.levels: 2 -> 3; .*overwrite=true",
    ):
        adapt_run(workspace(tmp_path, "run"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"pa_mpjpe": 100.0}
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").adapter.levels == 2  # still tells the truth
    assert not (tmp_path / "data").exists()


def test_outputs_without_a_config_are_refused_and_overwrite_clears_them(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.npz").write_bytes(b"someone's")
    (run / "adapt_state.pt").write_bytes(b"someone's")
    cfg = workspace(tmp_path, "run")
    with pytest.raises(FileExistsError, match="holds predictions.npz, adapt_state.pt but no config.yaml"):
        claim_run_dir(cfg, run)
    claim_run_dir(workspace(tmp_path, "run", overrides=["overwrite=true"]), run)
    assert list(run.iterdir()) == []


def test_the_same_config_elsewhere_is_the_same_run(tmp_path):
    save_config(workspace(tmp_path, "a", overrides=["trainer.enable_progress_bar=true"]), tmp_path / "run")
    claim_run_dir(workspace(tmp_path / "other_machine", "b"), tmp_path / "run")  # other paths, display


def test_a_stream_state_of_another_run_is_not_resumed(tmp_path):
    state = tmp_path / "adapt_state.pt"
    ours = {"config": "abc", "target data": "target_test.npz, 10 bytes, sha256 1", "source model": "m"}
    torch.save(
        {"records": [], "belongs_to": {**ours, "target data": "target_test.npz, 12 bytes, sha256 2"}}, state
    )
    with pytest.raises(
        StreamStateMismatch, match=f"stream state {state} cannot be resumed .* another target data"
    ):
        check_stream_state(state, ours)
    torch.save({"records": []}, state)  # written before states said what they belong to
    with pytest.raises(StreamStateMismatch, match="does not record which run it belongs to"):
        check_stream_state(state, ours)
    torch.save({"records": [], "belongs_to": ours}, state)
    check_stream_state(state, ours)


@pytest.mark.slow
def test_predictions_are_saved_before_scoring_and_a_changed_target_is_not_resumed(
    stand_in_source, monkeypatch
):
    root = stand_in_source
    cfg = workspace(root, "run", overrides=LEVEL2)

    def scoring_fails(*args, **kwargs):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(adapt_module, "score_dataset", scoring_fails)
    with pytest.raises(RuntimeError, match="scoring failed"):
        adapt_run(cfg)
    with np.load(root / "run" / "predictions.npz") as saved:  # the adaptation is not lost
        assert saved["pose"].shape == (32, 72)
    monkeypatch.undo()

    target = Path(cfg.dataset.root) / "target_test.npz"
    with np.load(target) as data:
        arrays = dict(data)
    arrays["center"] = arrays["center"] + 1.0  # the target data changed under the run dir
    save_npz_atomic(target, arrays)
    with pytest.raises(StreamStateMismatch, match="adapt_state.pt cannot be resumed .* another target data"):
        adapt_run(cfg)


@pytest.mark.slow
def test_a_full_disk_is_reported_with_the_path_and_leaves_no_partial_file(stand_in_source, monkeypatch):
    root = stand_in_source
    leftover = root / "run" / f".predictions.tmp{_reaped_pid()}.npz"  # of an earlier killed run
    leftover.parent.mkdir()
    leftover.write_bytes(b"half")
    age(leftover)

    def disk_full(file, arrays):
        file.write(b"PK half an archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_npz", disk_full)  # what save_npz_atomic writes through
    with pytest.raises(
        OSError, match=f"disk full: no space left to write {root / 'run' / 'predictions.npz'}"
    ) as err:
        adapt_run(workspace(root, "run", overrides=LEVEL2))
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (root / "run").iterdir()) == ["adapt_state.pt", "config.yaml"]
