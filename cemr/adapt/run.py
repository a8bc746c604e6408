"""`run(cfg)` behind adapt.py: adapt the source model on the target stream and score it.

Builds what it needs first (body model, dataset, source model and video encoder; all cached), scores
the source model without adaptation, streams the target through the AdaptationModule, and writes
`config.yaml`, `metrics.json`, `predictions.npz` and `per_frame.csv` into the run dir.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cemr.adapt.parallel import adaptation_strategy, gather_predictions
from cemr.adapt.plan import Plan
from cemr.adapt.resume import StreamCheckpoint, TargetStream, check_stream_state
from cemr.adapt.smoothing import smooth_emitted
from cemr.atomic import remove_leftovers, save_npz_atomic, write_text_atomic
from cemr.data.prepare import prepare_assets
from cemr.data.retrieval import PoseIndex, ReplayBank
from cemr.evaluation.protocol import joints14
from cemr.evaluation.report import errors_by_row, frame_table, score_dataset, summarize_errors
from cemr.evaluation.summary import ALSO_SCORED, UNSMOOTHED
from cemr.models import load_checkpoint
from cemr.models.foreign import foreign_source
from cemr.models.prediction import body_vertices, predict_frames, predict_frames_of
from cemr.runtime import (
    STREAM_STATES,
    build_body_models,
    build_datamodule,
    build_trainer,
    claim_run_dir,
    config_digest,
    is_global_zero,
    save_config,
    seed_everything,
    write_metrics,
)
from cemr.train.run import (
    check_missing_checkpoint,
    check_named_checkpoints,
    load_video_encoder,
    train_source,
)

log = logging.getLogger(__name__)

METRICS = ("mpjpe", "pa_mpjpe", "pve", "accel_error")


@dataclass
class Adapted:
    """What a stream leaves: the predictions it emitted {index, pose, betas, cam} in dataset-row order
    (None: no stream), its counters (steps taken, skipped, ...), the averaged weights' model (None
    without `adapter.average`) and a model with the source weights."""

    predictions: dict[str, np.ndarray] | None
    counters: dict[str, float]
    average: torch.nn.Module | None
    source: torch.nn.Module


def run(cfg: DictConfig) -> dict[str, float]:
    out_dir = Path(cfg.paths.output_dir)
    claim_run_dir(cfg, out_dir)  # before any work: a dir holding another run's outputs is refused
    plan = Plan.from_config(cfg.adapter)  # a contradictory adapter config is refused before any work too
    check_adaptable(cfg, plan)
    check_named_checkpoints(cfg, *checkpoints_needed(cfg, plan))
    if is_global_zero():
        remove_leftovers(out_dir)
    seed_everything(cfg.seed)
    prepare_assets(cfg)
    save_config(cfg, out_dir)
    data = build_datamodule(cfg)
    target = data.target  # read and checked before the source model, which may have to be trained first
    source = load_source(cfg)
    body_models = build_body_models(cfg.body)
    scorable = bool(np.any(target.data["has_smpl"] > 0))
    belongs_to = stream_identity(cfg, target.path)
    for state in sorted(out_dir.glob(STREAM_STATES)):
        check_stream_state(state, belongs_to)

    adapted = Adapted(None, {}, None, source.model)
    if plan.levels > 0:  # changes source.model in place
        adapted = adapt(cfg, plan, source, body_models["neutral"], data, out_dir, belongs_to)
        if adapted is None:
            return {}  # rank 0 scores and writes every rank's predictions
    # One pass over the target: the source weights' predictions and the re-runs of the adapted weights
    # (only ever scored) read each image once and share the frozen trunk stages (predict_frames_of).
    models = {"source": adapted.source}
    if scorable and plan.levels > 0:
        models["snapshot"] = source.model
    if scorable and adapted.average is not None:
        models["average"] = adapted.average
    rerun = dict(zip(models, predict_frames_of(list(models.values()), target), strict=True))
    baseline = rerun["source"]
    predictions = unsmoothed = baseline if adapted.predictions is None else adapted.predictions
    if plan.smoothing:  # as if frame t were emitted once t + lag is predicted; weights unchanged
        predictions = smooth_emitted(predictions, target.tracks, cfg.adapter.smoothing)

    # Saved before scoring: a failure in scoring must not lose the adaptation.
    regressor = body_models["neutral"].J_regressor_h36m.double().cpu().numpy()
    camera = {"focal_length": cfg.focal_length, "crop_size": cfg.backbone.crop_size}
    write_predictions(
        out_dir / "predictions.npz",
        predictions,
        target,
        body_models["neutral"],
        regressor,
        baseline,
        camera,
        unsmoothed if plan.smoothing else None,
    )
    metrics = {}
    if scorable:
        scored = {"source_": baseline, "": predictions, "snapshot_": rerun.get("snapshot")}
        scored["average_"] = rerun.get("average")
        scored[UNSMOOTHED] = unsmoothed if plan.smoothing else None
        by_row, truths = {}, {}
        for prefix, frames in scored.items():
            if frames is not None:
                errors = score_dataset(frames, target, body_models, regressor, truths)
                metrics.update({f"{prefix}{k}": v for k, v in summarize_errors(errors).items()})
                by_row[prefix] = errors_by_row(frames, target, errors)
        write_text_atomic(out_dir / "per_frame.csv", frame_table(target, by_row))
    metrics.update(adapted.counters)
    write_metrics(metrics, out_dir)
    if not cfg.get("keep_stream_state"):  # every rank has finished: gather_predictions is collective
        for state in out_dir.glob(STREAM_STATES):
            state.unlink()
    print_summary(cfg, metrics, scorable, out_dir)
    if cfg.get("render"):
        from cemr.viz.run import render_run

        log.info(f"overlay video: {render_run(out_dir, cfg.overlay)}")
    if uses_wandb(cfg):
        from cemr.evaluation.run import evaluate_run
        from cemr.evaluation.wandb_media import publish_run

        if scorable:
            evaluate_run(out_dir)  # report.md and plots/, which the dashboard shows too
        publish_run(metrics, out_dir)
    return metrics


def uses_wandb(cfg: DictConfig) -> bool:
    return (cfg.get("logger") or {}).get("wandb") is not None


def load_source(cfg: DictConfig):
    """The source checkpoint. When missing, the config's default one (training.checkpoint not set) is
    trained first, exactly as `python train.py` would; a path the user named must exist."""
    if cfg.backbone.get("weights"):
        return foreign_source(cfg.backbone)
    if not Path(cfg.training.checkpoint).is_file():
        check_missing_checkpoint(cfg, "checkpoint")
        return train_source(cfg)
    return load_checkpoint(cfg.training.checkpoint, mean_params=cfg.body.mean_params)


def checkpoints_needed(cfg: DictConfig, plan: Plan) -> list[str]:
    """The training.* checkpoints this run loads: the source model, and the video encoder where
    level 3 aligns with it or where the source model must be trained first."""
    video = plan.video_align
    own_encoder = not cfg.video_encoder.get("weights")  # else released weights are the encoder
    if cfg.backbone.get("weights"):  # released weights are the source model
        return ["video_encoder_checkpoint"] if video and own_encoder else []
    return ["checkpoint"] + (
        ["video_encoder_checkpoint"]
        if own_encoder and (video or not Path(cfg.training.checkpoint).is_file())
        else []
    )


def stream_identity(cfg: DictConfig, target_split: str | Path) -> dict[str, str]:
    """What a stream state belongs to: the config (less paths and display settings), the target
    split file and the source model file (by content)."""
    return {
        "config": config_digest(cfg)[:16],
        "target data": file_identity(target_split),
        "source model": file_identity(cfg.backbone.get("weights") or cfg.training.checkpoint),
    }


def file_identity(path: str | Path) -> str:
    """A file's name, size and sha256 (prefix); 'absent' for a missing one (a smoke run's model)."""
    path = Path(path)
    if not path.is_file():
        return "absent"
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name}, {path.stat().st_size} bytes, sha256 {digest.hexdigest()[:16]}"


def check_adaptable(cfg: DictConfig, plan: Plan) -> None:
    """Refuse, before any work, to split a stream that never resets across devices, or to replay source
    frames from a dataset that has none."""
    if plan.levels == 0:
        return
    if plan.replay is not None and cfg.dataset.get("source_split") is None:
        raise ValueError(
            f"adapter.replay.enabled=true replays labelled source frames, but dataset={cfg.dataset.name} "
            "has none (dataset.source_split is null): pass adapter.replay.enabled=false"
        )
    adaptation_strategy(cfg.trainer.get("strategy"), cfg.adapter.reset)


def projection_head(state: dict, video_encoder: torch.nn.Module, encoder_name: str) -> torch.nn.Linear:
    """The source model's P from its checkpoint, refused when it maps to another encoder's features."""
    head = torch.nn.Linear(*state["weight"].shape[::-1])
    head.load_state_dict(state)
    if head.out_features != video_encoder.embed_dim:
        raise ValueError(
            f"the source model's projection head P maps to {head.out_features}-d video features, but "
            f"video_encoder={encoder_name} gives {video_encoder.embed_dim}-d ones: P is fitted against one "
            "encoder; train a source model with this encoder (python train.py video_encoder=... "
            "training.checkpoint=<new file>) and adapt that one"
        )
    return head


def adapt(
    cfg: DictConfig, plan: Plan, source, body_model, data, out_dir: Path, belongs_to: dict | None = None
) -> Adapted | None:
    """Stream the target through the AdaptationModule; returns what it emitted, its counters and,
    under `adapter.average`, the model with the weights averaged over the stream.

    Under DDP (reset=sequence) each rank adapts its share of the sequences; rank 0 returns them all,
    the other ranks None.
    """
    ad = cfg.adapter
    video_encoder = align_head = None
    if plan.video_align:
        if "align_head" not in source.extra:
            raise ValueError(
                f"backbone.weights={cfg.backbone.weights} has no projection head P, which level 3's video "
                "alignment needs: pass adapter.loss_weights.video_align=0 (DynaBOA has none), or train a "
                "CEMR source model from these weights first (python train.py backbone.weights=...)"
            )
        video_encoder = load_video_encoder(cfg)
        align_head = projection_head(source.extra["align_head"], video_encoder, cfg.video_encoder.name)
    replay = None
    if plan.replay == "pose":
        replay = (PoseIndex.build(data.source.keypoints_px), data.source)  # pixels: normalised away
    elif plan.replay == "feature":
        replay = (replay_bank(cfg, source.model, data.source), data.source)
    elif plan.replay == "random":
        replay = (None, data.source)
    from cemr.body import MaxMixturePrior

    prior = MaxMixturePrior.from_file(cfg.body.gmm)
    module = instantiate(ad.module)(
        source.model,
        body_model,
        prior,
        ad,
        cfg.focal_length,
        cfg.backbone.crop_size,
        video_encoder=video_encoder,
        align_head=align_head,
        replay_source=replay,
        replay_weights=cfg.training.loss_weights,
        seed=cfg.seed,
        pose_barrier=pose_barrier(ad, prior, data.source) if plan.pose_barrier else None,
    )
    media = []
    if uses_wandb(cfg):
        from cemr.evaluation.wandb_media import WandbStreamOverlay

        media.append(WandbStreamOverlay(body_model, cfg.focal_length, cfg.overlay.wandb_every))
    trainer = build_trainer(
        cfg,
        "adapt",
        max_epochs=1,
        strategy=adaptation_strategy(cfg.trainer.get("strategy"), ad.reset),
        sync_batchnorm=False,
        callbacks=[StreamCheckpoint(out_dir / "adapt_state.pt", ad.checkpoint_every, belongs_to)] + media,
        use_distributed_sampler=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=TargetStream(data))
    if module.inner.lr_rate:
        lrs = np.asarray(module.inner.lrs())
        mean = np.exp(np.log(lrs).mean())
        spread = f"{lrs.min():.2e}-{lrs.max():.2e}"
        log.info(f"learned inner lr, {lrs.size} weight tensors: geometric mean {mean:.2e}, range {spread}")
    if plan.emit == "teacher":  # the weights whose predictions were emitted are the run's final ones
        source.model.load_state_dict(module.teacher.state_dict())
    local = {k: v.numpy() for k, v in module.predictions().items()} if module.frames_done else None
    counters = {k: float(v) for k, v in module.counters.items()}
    gathered = gather_predictions(local, counters, trainer.world_size)
    if gathered is None:
        return None
    return Adapted(*gathered, module.average, module.source_model)


def pose_barrier(adapter: DictConfig, prior: torch.nn.Module, source_frames) -> float:
    """The prior cost above which L_frame penalises a pose: its `adapter.pose_barrier.quantile` over the
    labelled source training poses, so no target frame sets it."""
    from cemr.body.prior import cost_quantile

    labelled = source_frames.data["has_smpl"] > 0
    if not np.any(labelled):
        raise ValueError(
            f"{source_frames.path}: no SMPL poses (has_smpl is 0 on every row), which the pose barrier "
            "(adapter.loss_weights.pose_barrier > 0) takes its threshold from; set it to 0"
        )
    quantile = float(adapter.pose_barrier.quantile)
    threshold = cost_quantile(prior, source_frames.data["pose"][labelled], quantile)
    count = int(labelled.sum())
    log.info(f"pose barrier: prior cost {threshold:.1f}, the {quantile:g} quantile of {count} source poses")
    return threshold


def replay_bank(cfg: DictConfig, model: torch.nn.Module, source_frames) -> ReplayBank:
    """k-means bank over the source model's pooled features of the source split (cached, see
    `replay_cache_path`; rebuilt when the checkpoint or the split is newer than the cache)."""
    path = replay_cache_path(cfg, source_frames.path)
    inputs = (Path(cfg.training.checkpoint), Path(source_frames.path))
    if path.is_file() and path.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        bank = ReplayBank.load(path)
        if len(bank.assignment) == len(source_frames):
            return bank
    features = predict_frames(model, source_frames, features=True)["feature"]
    bank = ReplayBank.build(torch.from_numpy(features), cfg.adapter.replay.clusters, seed=cfg.seed)
    bank.save(path)
    return bank


def replay_cache_path(cfg: DictConfig, source_split: str | Path) -> Path:
    """Where the replay bank of (checkpoint, source split file, clusters, seed) is cached: the bank
    holds row indices of that very split, so every one of the four is in the key."""
    ckpt, split = Path(cfg.training.checkpoint).resolve(), Path(source_split).resolve()
    digest = hashlib.sha1(f"{ckpt}\n{split}".encode()).hexdigest()[:12]
    name = f"{ckpt.stem}_{split.stem}_{digest}_k{cfg.adapter.replay.clusters}_seed{cfg.seed}.npz"
    return Path(cfg.paths.cache_dir) / "replay" / name


def write_predictions(
    path: Path,
    predictions: dict,
    frames,
    body_model,
    regressor: np.ndarray,
    baseline: dict,
    camera: dict,
    unsmoothed: dict | None = None,
) -> None:
    """Write predictions.npz, everything needed to redraw a run (in stream order, N frames):
    index (dataset row), seq, frame, person; pose (N, 72), betas (N, 10), cam (N, 3) weak-perspective
    crop camera, joints14 (N, 14, 3); the source model's source_pose, source_betas, source_cam of the
    same frames; the box, center (N, 2) and scale (N,) (x 200 px) of the crop; focal_length and
    crop_size of the camera model (scalars); with level 3's smoother, the stream before it as
    unsmoothed_pose, unsmoothed_betas, unsmoothed_cam (same rows)."""
    index = np.asarray(predictions["index"])
    vertices = body_vertices(body_model, predictions["pose"], predictions["betas"])
    data = frames.data
    arrays = {
        "index": index,
        "seq": np.asarray(data["seq"])[index],
        "frame": np.asarray(data["frame"])[index],
        "person": np.asarray(data["person"])[index],
        "pose": predictions["pose"].astype(np.float32),
        "betas": predictions["betas"].astype(np.float32),
        "cam": predictions["cam"].astype(np.float32),
        "joints14": joints14(vertices, regressor).astype(np.float32),
        "center": np.asarray(data["center"])[index].astype(np.float32),
        "scale": np.asarray(data["scale"])[index].astype(np.float32),
        "focal_length": np.float32(camera["focal_length"]),
        "crop_size": np.int64(camera["crop_size"]),
    }
    row = {int(r): i for i, r in enumerate(baseline["index"])}
    at = np.array([row[int(r)] for r in index])
    fields = ("pose", "betas", "cam")
    arrays.update({f"source_{k}": baseline[k][at].astype(np.float32) for k in fields})
    if unsmoothed is not None:  # the smoother keeps every frame in place: same rows as the emitted ones
        arrays.update({f"{UNSMOOTHED}{k}": unsmoothed[k].astype(np.float32) for k in fields})
    save_npz_atomic(path, arrays)


def print_summary(cfg: DictConfig, metrics: dict, scorable: bool, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not scorable:
        console.print(f"target has no ground truth: predictions written to {out_dir / 'predictions.npz'}")
        return
    table = Table(title=f"{cfg.dataset.name} target, adapter.levels={cfg.adapter.levels} (mm)")
    table.add_column("model")
    for name in METRICS:
        table.add_column(name.upper().replace("_", "-"), justify="right")
    rows = [("source only", "source_"), ("adapted", "")]
    rows += [(label, prefix) for label, prefix in ALSO_SCORED if f"{prefix}mpjpe" in metrics]
    for label, prefix in rows:
        table.add_row(label, *(f"{metrics.get(prefix + m, float('nan')):.1f}" for m in METRICS))
    console.print(table)
    console.print(f"run dir: {out_dir}")
