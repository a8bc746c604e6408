"""The entry points' run(cfg) functions end to end on a tiny embedded default: train -> adapt -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cemr.adapt.module import AdaptationModule
from cemr.adapt.run import run as adapt_run
from cemr.evaluation.report import summarize_errors
from cemr.evaluation.run import rescore_run
from cemr.evaluation.run import run as evaluate_run
from cemr.runtime import build_datamodule
from cemr.train.module import SourceModule
from cemr.train.run import run as train_run
from tests.conftest import REPO, TINY, compose_config

pytestmark = pytest.mark.slow  # whole train/adapt/evaluate runs: CI runs these, the development loop does not


def paths(root):
    return [f"paths.data_dir={root / 'data'}", f"paths.checkpoint_dir={root / 'checkpoints'}"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    train_cfg = compose_config("train", [*paths(root), *TINY], root / "train_out")
    metrics = train_run(train_cfg)
    return root, metrics


def test_the_source_model_does_not_depend_on_training_the_video_encoder_first(workspace):
    """The workspace's train.py built the video encoder, then the source model; with the encoder
    already there, a second run must give the very same source model (it is seeded afresh)."""
    import torch

    from cemr.models import load_checkpoint

    root, metrics = workspace
    again = compose_config(
        "train", [*paths(root), *TINY, f"training.checkpoint={root / 'again.ckpt'}"], root / "again"
    )
    assert train_run(again) == metrics
    first = load_checkpoint(root / "checkpoints" / "hmr_small_synthetic_seed0.ckpt").model.state_dict()
    second = load_checkpoint(root / "again.ckpt").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def adapt_cfg(root, name, overrides=()):
    tiny_adapter = ["adapter.replay.clusters=4", "adapter.checkpoint_every=10"]
    return compose_config("adapt", [*paths(root), *TINY, *tiny_adapter, *overrides], root / name)


def test_train_reports_the_source_model_on_source_test_and_target(workspace):
    root, metrics = workspace
    for split in ("source_test", "target"):
        for key in ("mpjpe", "pa_mpjpe", "pve"):
            assert np.isfinite(metrics[f"{split}_{key}"]) and metrics[f"{split}_{key}"] > 0
    assert (root / "train_out" / "config.yaml").is_file()


def test_adapt_writes_outputs_and_evaluate_rescores_them(workspace, capsys):
    root, _ = workspace
    metrics = adapt_run(adapt_cfg(root, "run_a"))
    out = root / "run_a"
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded == pytest.approx(metrics)
    for key in ("mpjpe", "pa_mpjpe", "pve", "accel_error", "source_mpjpe", "source_pa_mpjpe", "outer_steps"):
        assert key in recorded
    assert "snapshot_pa_mpjpe" in recorded and "final weights, re-run" in capsys.readouterr().out
    assert not (out / "adapt_state.pt").exists()  # written every 10 frames, dropped once finished
    assert recorded["frames"] == 32 and recorded["clip_steps"] == 0  # the clip step is off by default
    with np.load(out / "predictions.npz") as pred:
        assert pred["pose"].shape == (32, 72) and pred["betas"].shape == (32, 10)
        assert pred["joints14"].shape == (32, 14, 3)
        assert list(pred["frame"]) == sorted(pred["frame"])  # time order within the one track
        for key in ("cam", "source_cam"):
            assert pred[key].shape == (32, 3)
        assert pred["source_pose"].shape == (32, 72) and pred["center"].shape == (32, 2)
        assert pred["scale"].shape == (32,) and pred["crop_size"] == 112  # hmr_small's crop
        assert not np.allclose(pred["source_pose"], pred["pose"])  # adapted differs from source-only
    per_frame = np.genfromtxt(out / "per_frame.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert len(per_frame) == 32
    for prefix in ("", "source_", "snapshot_"):
        for key in ("mpjpe", "pa_mpjpe", "pve"):
            assert per_frame[prefix + key].mean() == pytest.approx(recorded[prefix + key], abs=1e-4)
    rescored = evaluate_run(compose_config("evaluate", [f"run_dir={out}"]))
    for key in ("mpjpe", "pa_mpjpe", "pve", "accel_error"):
        assert rescored[key] == pytest.approx(recorded[key], abs=1e-6)
    assert "matches metrics.json: yes" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert f"| source only | {recorded['source_mpjpe']:.1f} | {recorded['source_pa_mpjpe']:.1f} |" in report
    assert f"| adapted | {recorded['mpjpe']:.1f} | {recorded['pa_mpjpe']:.1f} |" in report
    sequences = np.genfromtxt(out / "results.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert sequences["frames"].sum() == 32
    for name in ("errors_over_time", "error_distribution", "per_sequence"):
        assert cv2.imread(str(out / "plots" / f"{name}.png")) is not None


def test_evaluate_a_sweep_reports_short_labels_and_the_source_model(workspace, capsys):
    root, _ = workspace
    sweep = root / "sweep"
    for job, levels in enumerate((0, 1)):
        overrides = [f"adapter.levels={levels}", "dataset.prepare.seed=0", f"paths.data_dir={root / 'data'}"]
        adapt_run(adapt_cfg(root, f"sweep/{job}", [overrides[0]]))
        (sweep / str(job) / ".hydra").mkdir()
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text("\n".join(f"- {o}" for o in overrides))
    evaluate_run(compose_config("evaluate", [f"run_dir={sweep}"]))
    report = (sweep / "report.md").read_text()
    assert "| 0 | adapter.levels=0 | 0 |" in report and "| 1 | adapter.levels=1 | 0 |" in report
    assert "paths.data_dir" not in report  # shared by every job: labels nothing
    assert "| source only | 1 |" in report  # one source-only row for the one build
    rows = np.genfromtxt(sweep / "results.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert list(rows["config"]) == ["adapter.levels=0", "adapter.levels=1"]
    assert rows["pa_mpjpe"][0] == pytest.approx(rows["source_pa_mpjpe"][0], abs=1e-6)
    assert cv2.imread(str(sweep / "plots" / "sweep_pa_mpjpe.png")) is not None


def test_same_config_gives_the_same_numbers(workspace):
    root, _ = workspace
    replay = ["adapter.levels=2", "adapter.replay.enabled=true"]  # replay draws source samples at random
    first = adapt_run(adapt_cfg(root, "det_a", replay))
    second = adapt_run(adapt_cfg(root, "det_b", replay))
    assert first == second


def test_bf16_mixed_precision_adapts_as_float32_does(workspace):
    root, _ = workspace
    full = adapt_run(adapt_cfg(root, "fp32", ["adapter.levels=2"]))
    mixed = adapt_run(adapt_cfg(root, "bf16", ["adapter.levels=2", "trainer.precision=bf16-mixed"]))
    assert mixed["outer_steps"] == full["outer_steps"] == 32 and mixed["skipped_steps"] == 0
    assert mixed["source_pa_mpjpe"] == full["source_pa_mpjpe"]  # the unadapted baseline runs in float32
    # bfloat16 keeps 8 bits of mantissa: the adapted numbers move, but stay close to float32's
    assert mixed["pa_mpjpe"] == pytest.approx(full["pa_mpjpe"], rel=0.1)
    assert mixed["pa_mpjpe"] != full["pa_mpjpe"]  # the precision setting really reached the stream


def test_levels_zero_is_the_source_model(workspace):
    root, _ = workspace
    metrics = adapt_run(adapt_cfg(root, "levels0", ["adapter.levels=0"]))
    for key in ("mpjpe", "pa_mpjpe", "pve"):
        assert metrics[key] == metrics[f"source_{key}"]
    assert "snapshot_pa_mpjpe" not in metrics  # nothing adapted, no final weights to re-run


def test_snapshot_rescores_the_final_weights(workspace):
    root, _ = workspace
    # learning rates 0: the base weights never move, so their re-run is the source model's
    still = ["adapter.levels=3", "adapter.outer.lr=0", "adapter.clip.lr=0", "adapter.average=0.9"]
    frozen = adapt_run(adapt_cfg(root, "lr0", still))
    for key in ("mpjpe", "pa_mpjpe", "pve", "accel_error"):
        assert frozen[f"snapshot_{key}"] == pytest.approx(frozen[f"source_{key}"], abs=1e-9)
        # 0.9 w + 0.1 w rounds to w only within float32's last bits, frame after frame
        assert frozen[f"average_{key}"] == pytest.approx(frozen[f"source_{key}"], abs=1e-3)
    moved = adapt_run(adapt_cfg(root, "lr_default", ["adapter.levels=2", "adapter.average=0.9"]))
    assert moved["snapshot_pa_mpjpe"] != moved["source_pa_mpjpe"]
    assert moved["average_pa_mpjpe"] not in (moved["snapshot_pa_mpjpe"], moved["source_pa_mpjpe"])
    assert "average_pa_mpjpe" not in adapt_run(
        adapt_cfg(root, "no_average", ["adapter.levels=2", "adapter.average=null"])
    )


def test_level_three_emits_the_smoothed_stream(workspace, capsys):
    from cemr.adapt.smoothing import smooth_emitted

    root, _ = workspace
    # learning rates 0: the stream emits the source model's predictions, so what predictions.npz holds
    # must be the smoother applied to them (the source model's own predictions sit beside them)
    still = ["adapter.levels=3", "adapter.outer.lr=0", "adapter.clip.lr=0"]
    cfg = adapt_cfg(root, "smoothed", still)
    metrics = adapt_run(cfg)
    with np.load(root / "smoothed" / "predictions.npz") as pred:
        source = {"index": pred["index"], "pose": pred["source_pose"], "cam": pred["source_cam"]}
        expected = smooth_emitted(source, build_datamodule(cfg).target.tracks, cfg.adapter.smoothing)
        for key in ("pose", "cam"):  # one frame at a time vs batches: float32 summation order differs
            np.testing.assert_allclose(pred[key], expected[key], atol=1e-4)
        np.testing.assert_allclose(pred["betas"], pred["source_betas"], atol=1e-4)
        assert not np.allclose(pred["pose"], pred["source_pose"], atol=1e-3)
        for key in ("pose", "betas", "cam"):  # the stream before the smoother is saved beside it
            np.testing.assert_allclose(pred[f"unsmoothed_{key}"], pred[f"source_{key}"], atol=1e-4)
    rescored = rescore_run(root / "smoothed", before_smoother=True)  # re-scored as adapt.py scored it
    assert rescore_run(root / "smoothed").unsmoothed is None  # only when asked
    before = summarize_errors(rescored.unsmoothed)
    for key in ("mpjpe", "pa_mpjpe", "pve", "accel_error"):
        assert before[key] == pytest.approx(metrics[f"unsmoothed_{key}"], abs=1e-3)
    assert metrics["accel_error"] < metrics["source_accel_error"]
    # the stream's own predictions are scored beside: here the source model's
    for key in ("mpjpe", "pa_mpjpe", "pve", "accel_error"):
        assert metrics[f"unsmoothed_{key}"] == pytest.approx(metrics[f"source_{key}"], abs=1e-4)
    assert "adapted, before the smoother" in capsys.readouterr().out
    # the weights are not touched: at lr 0 their re-run is the source model's
    assert metrics["snapshot_pa_mpjpe"] == pytest.approx(metrics["source_pa_mpjpe"], abs=1e-9)


def test_emit_teacher_that_never_moves_emits_and_keeps_the_source_model(workspace):
    root, _ = workspace
    # ema 1: the teacher stays the source model while the base weights adapt under it
    still = adapt_run(
        adapt_cfg(
            root,
            "teacher1",
            [
                "adapter.levels=2",
                "adapter.emit=teacher",
                "adapter.teacher.enabled=true",
                "adapter.teacher.ema=1",
            ],
        )
    )
    for key in ("mpjpe", "pa_mpjpe", "pve", "accel_error"):
        # one frame at a time vs batches of 64: the same weights, float32 summation order differs
        assert still[key] == pytest.approx(still[f"source_{key}"], abs=1e-4)
        assert still[f"snapshot_{key}"] == still[f"source_{key}"]
    assert still["outer_steps"] == 32


def test_render_draws_source_and_adapted_meshes_over_the_frames(workspace):
    root, _ = workspace
    out = root / "render"
    adapt_run(adapt_cfg(root, "render", ["adapter.levels=1", "render=true", "overlay.every=4"]))
    frames = sorted((out / "overlays").glob("frame_*.png"))
    assert len(frames) == 8  # 32 frames, every 4th
    panel = cv2.imread(str(frames[0]))
    with np.load(out / "predictions.npz") as pred:
        index = int(pred["index"][0])
    full = build_datamodule(adapt_cfg(root, "render")).target.load_image(index)
    assert panel.shape == (full.shape[0], 3 * full.shape[1], 3)  # input | source only | adapted
    video = cv2.VideoCapture(str(out / "overlays" / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    # evaluate.py redraws it from the run dir alone
    evaluate_run(compose_config("evaluate", [f"run_dir={out}", "render=true", "overlay.max_frames=2"]))
    assert int(cv2.VideoCapture(str(out / "overlays" / "overlay.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    assert len(list((out / "overlays").glob("frame_*.png"))) == 2  # the earlier drawing's frames are gone


def test_wandb_gets_the_config_final_metrics_plots_and_overlays_offline(workspace, monkeypatch):
    import wandb

    root, _ = workspace
    monkeypatch.setenv("WANDB_MODE", "offline")
    seen = {}
    finish = wandb.finish

    def keep_run_then_finish(*args, **kwargs):
        seen.update(config=dict(wandb.run.config), summary=dict(wandb.run.summary), name=wandb.run.name)
        seen["dir"] = Path(wandb.run.dir)
        return finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "finish", keep_run_then_finish)
    overrides = ["adapter.levels=2", "logger=wandb", "overlay.wandb_every=8"]
    metrics = adapt_run(adapt_cfg(root, "wandb_run", overrides))
    assert seen["config"]["adapter"]["levels"] == 2 and seen["config"]["seed"] == 0  # the resolved config
    for key in ("pa_mpjpe", "mpjpe", "pve", "source_pa_mpjpe", "snapshot_pa_mpjpe"):
        assert seen["summary"][key] == pytest.approx(metrics[key])
    assert seen["name"] == "adapt"  # outside a Hydra app there are no command-line overrides to name it by
    media = seen["dir"] / "media" / "images"
    assert len(list((media / "stream").glob("overlay_*.png"))) == 4  # 32 frames, every 8th
    assert len(list((media / "stream").glob("errors_over_time_*.png"))) == 4
    assert {p.name.split("_")[0] for p in (media / "plots").glob("*.png")} >= {"errors", "error", "per"}
    assert wandb.run is None  # closed: a sweep's next job opens its own


def test_a_video_with_openpose_keypoints_adapts_end_to_end_with_the_source_model(workspace, tmp_path):
    from cemr.data.synthetic.clip import write_clip

    root, _ = workspace
    clip = write_clip(root / "data" / "cache" / "synthetic_seed0", tmp_path / "demo")
    video = [
        "dataset=video",
        f"dataset.video_path={clip / 'clip.mp4'}",
        f"dataset.keypoints_path={clip / 'openpose'}",
        "logger=none",
        "trainer.enable_progress_bar=false",
    ]
    out = root / "video_run"
    metrics = adapt_run(
        compose_config(
            "adapt", [*paths(root), *video, "adapter.levels=1", "render=true", "overlay.every=8"], out
        )
    )
    assert "pa_mpjpe" not in metrics and not (out / "per_frame.csv").exists()  # nothing to score
    with np.load(out / "predictions.npz") as pred:
        assert pred["pose"].shape == (32, 72) and set(pred["seq"]) == {"video"}
    assert int(cv2.VideoCapture(str(out / "overlays" / "overlay.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert evaluate_run(compose_config("evaluate", [f"run_dir={out}"])) == {}
    assert "no SMPL ground truth: nothing to score" in (out / "report.md").read_text()
    # without the source model, it cannot be trained on a video: say so
    elsewhere = [f"paths.data_dir={root / 'data'}", f"paths.checkpoint_dir={tmp_path / 'none'}", *video]
    with pytest.raises(FileNotFoundError, match="dataset=video has no source split to train it on"):
        adapt_run(compose_config("adapt", [*elsewhere, "adapter.levels=1"], tmp_path / "refused"))


def test_released_weights_adapt_as_the_source_model(workspace):
    import torch

    from cemr.models import load_checkpoint
    from cemr.models.checkpoints import cemr_key_to_spin

    root, _ = workspace
    trained = load_checkpoint(root / "checkpoints" / "hmr_small_synthetic_seed0.ckpt").model.state_dict()
    released = root / "basemodel.pt"  # DynaBOA's layout: dict['model'], SPIN key names, 'module.' prefix
    torch.save({"model": {"module." + cemr_key_to_spin(k): v for k, v in trained.items()}}, released)
    ours = adapt_run(adapt_cfg(root, "own_levels0", ["adapter.levels=0"]))
    theirs = adapt_run(
        adapt_cfg(root, "released_levels0", ["adapter.levels=0", f"backbone.weights={released}"])
    )
    for key in ("mpjpe", "pa_mpjpe", "pve"):
        assert theirs[f"source_{key}"] == ours[f"source_{key}"]  # the very same weights
    adapted = adapt_run(
        adapt_cfg(root, "released_levels2", ["adapter.levels=2", f"backbone.weights={released}"])
    )
    assert adapted["outer_steps"] == 32
    clip = ["adapter.levels=3", "adapter.clip.enabled=true"]  # the clip step's video alignment needs P
    with pytest.raises(ValueError, match="has no projection head P"):
        adapt_run(adapt_cfg(root, "released_levels3", [*clip, f"backbone.weights={released}"]))


def test_evaluate_refuses_a_dir_without_predictions(tmp_path):
    with pytest.raises(FileNotFoundError, match="no predictions.npz"):
        evaluate_run(compose_config("evaluate", [f"run_dir={tmp_path}"]))


def test_a_resumed_run_dir_finishes_with_the_same_numbers(workspace, monkeypatch):
    root, _ = workspace
    full = adapt_run(adapt_cfg(root, "resume_full", ["adapter.levels=2"]))
    # kill a run at frame 25: its last stream checkpoint (every 10 frames) is at frame 20
    original = AdaptationModule.training_step

    def dies_at_25(self, batch, batch_idx):
        if self.frames_done == 25:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AdaptationModule, "training_step", dies_at_25)
    killed = adapt_cfg(root, "resume_killed", ["adapter.levels=2"])
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        adapt_run(killed)
    assert (root / "resume_killed" / "adapt_state.pt").is_file()
    monkeypatch.setattr(AdaptationModule, "training_step", original)
    assert adapt_run(killed) == full  # rerun in the same run dir: resumes from frame 20


def test_train_resumes_at_the_step_it_stopped(workspace):
    root, _ = workspace
    from cemr.safe_io import load_torch

    first = load_torch(root / "train_out" / "checkpoints" / "last.ckpt", allowed_globals=())
    cfg = compose_config(
        "train",
        [
            *paths(root),
            *TINY,
            "training.max_epochs=2",
            f"training.resume_from={root / 'train_out/checkpoints/last.ckpt'}",
            f"training.checkpoint={root / 'resumed.ckpt'}",  # the workspace's source model stays
        ],
        root / "train_resumed",
    )
    train_run(cfg)
    second = load_torch(root / "train_resumed" / "checkpoints" / "last.ckpt")
    assert (first["epoch"], second["epoch"]) == (0, 1)
    assert second["global_step"] == 2 * first["global_step"]  # one more epoch of the same length


class CountingSourceModule(SourceModule):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingSourceModule.steps += 1
        return super().training_step(batch, batch_idx)


class CountingAdaptationModule(AdaptationModule):
    frames = 0

    def training_step(self, batch, batch_idx):
        CountingAdaptationModule.frames += 1
        return super().training_step(batch, batch_idx)


def test_train_fast_dev_run_with_the_module_of_the_config(tmp_path):
    overrides = [f"paths.data_dir={tmp_path / 'data'}", f"paths.checkpoint_dir={tmp_path / 'ckpt'}", *TINY]
    swapped = f"training.module._target_={__name__}.CountingSourceModule"
    cfg = compose_config("train", [*overrides, "trainer.fast_dev_run=true", swapped], tmp_path / "out")
    metrics = train_run(cfg)
    assert not (tmp_path / "ckpt").exists()  # a smoke run writes no checkpoint
    assert np.isfinite(metrics["target_pa_mpjpe"])
    assert CountingSourceModule.steps == 1  # fast_dev_run: one batch, through training.module


def test_adapt_streams_through_the_module_of_the_config(workspace):
    root, _ = workspace
    swapped = f"adapter.module._target_={__name__}.CountingAdaptationModule"
    metrics = adapt_run(adapt_cfg(root, "swapped_module", ["adapter.levels=1", swapped]))
    assert CountingAdaptationModule.frames == metrics["frames"] == 32


def test_adapting_the_committed_source_model_lowers_its_error_on_the_wild_target(tmp_path):
    """The committed embedded-default checkpoints, adapted on one short wild sequence (default adapter)."""
    overrides = [
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.checkpoint_dir={REPO / 'checkpoints'}",
        "dataset.prepare.source_sequences=2",
        "dataset.prepare.target_sequences=1",
        "dataset.prepare.frames_per_sequence=48",
        "dataset.prepare.workers=1",
        "dataset.prepare.progress=false",
        "adapter.levels=3",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    metrics = adapt_run(compose_config("adapt", overrides, tmp_path / "out"))
    assert metrics["frames"] == 48
    # Measured (default levels=3, outer lr 1e-4, pose replay at weight 1): MPJPE 147.3 -> 119.1, PVE
    # 174.4 -> 147.1, PA-MPJPE 95.2 -> 98.2 mm (without replay: 123.0, 152.9, 101.5; at the earlier
    # outer lr 3e-4 without replay: 122.0, 153.5, 96.6). 48 frames of walking, the
    # easiest family, fix the global orientation and scale (MPJPE, PVE) but not yet the articulation;
    # the gains in PA-MPJPE come over the longer streams of the benchmark (README, issue 13 results).
    for key in ("mpjpe", "pve"):
        assert metrics[key] < 0.9 * metrics[f"source_{key}"], key
    assert metrics["pa_mpjpe"] < 1.1 * metrics["source_pa_mpjpe"]


@pytest.mark.parametrize("levels", [0, 3])
def test_vibe_small_adapts_end_to_end(workspace, levels):
    """backbone=vibe_small: its source model is built on first use from the workspace's HMR (trunk and
    regressor, trunk frozen), then adapted as a causal online model (levels 1-2 on a stream:
    tests/test_adapt_module.py)."""
    root, _ = workspace
    name = f"vibe_small_l{levels}"
    clip = ["adapter.clip.enabled=true"]  # off by default; its path with a sequence model is tested here
    metrics = adapt_run(adapt_cfg(root, name, ["backbone=vibe_small", f"adapter.levels={levels}", *clip]))
    assert (root / "checkpoints" / "vibe_small_synthetic_seed0.ckpt").is_file()
    assert metrics["frames"] == 32 and np.isfinite([metrics["pa_mpjpe"], metrics["accel_error"]]).all()
    if levels:
        assert metrics["outer_steps"] == (32 if levels >= 2 else 0)
        assert metrics["clip_steps"] == (2 if levels == 3 else 0)
        assert metrics["skipped_steps"] == 0
    else:
        assert metrics["pa_mpjpe"] == pytest.approx(metrics["source_pa_mpjpe"])
    with np.load(root / name / "predictions.npz") as pred:
        assert pred["pose"].shape == (32, 72) and np.isfinite(pred["pose"]).all()
    assert (root / name / "per_frame.csv").is_file()


def test_the_released_vibe_layout_adapts_at_level_three(workspace):
    root, _ = workspace
    small = [
        "backbone=vibe",
        "backbone.trunk=resnet18",
        "+backbone.trunk_kwargs.channels=[8,16,16,32]",
        "backbone.hidden_size=32",
        "backbone.n_layers=1",
        "adapter.levels=3",
        "adapter.clip.enabled=true",
    ]
    metrics = adapt_run(adapt_cfg(root, "vibe_l3", small))
    assert metrics["frames"] == 32 and metrics["clip_steps"] == 2 and np.isfinite(metrics["pa_mpjpe"])
    assert (root / "checkpoints" / "vibe_synthetic_seed0.ckpt").is_file()
