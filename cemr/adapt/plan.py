"""Which MiRRo levels and terms run, decided once from the `adapter` config (shared/DESIGN.md section 2).

The AdaptationModule and adapt/run.py ask the plan (`plan.teacher`, `plan.clip`, ...) instead of
comparing `adapter.levels` against numbers in many places; a config that asks for a term its levels
do not run (replay at level 1, say) simply does not get it, and a contradictory one is refused here.
"""

from __future__ import annotations

from dataclasses import dataclass

RETRIEVALS = ("pose", "feature", "random")
EMITTED = ("updated", "clone", "teacher")
# What a learned inner lr follows: the whole outer loss, or its terms on frames the clone did not adapt on
LR_SIGNALS = ("outer", "held_out")


@dataclass(frozen=True)
class Plan:
    levels: int
    inner_steps: int  # level 1: clone steps on L_frame (0 at levels=0, or at levels >= 2 where asked)
    lr_signal: str  # what a learned inner lr follows (LR_SIGNALS)
    pose_barrier: bool  # L_frame also penalises the pose prior's cost above a quantile of the source poses'
    outer: bool  # level 2: the clone's loss on frame t and its context updates the base weights
    teacher: bool  # EMA mean teacher
    motion: bool  # 2D displacement between t and t-k
    context: bool  # the clone adapted on t is also scored on frame t-k's own L_frame
    replay: str | None  # retrieval of labelled source samples: pose | feature | random, or None
    replay_inner: bool  # source labels in the inner step too (BOA)
    anchor: float  # after each outer step, weights <- weights + anchor * (source weights - weights); 0: off
    sequence_pull: float  # the same at the start of each sequence (reset=none), by this fraction; 0: off
    drift_guard: float  # degrees: an emitted pose further than this from the source model's (mean angle of
    # the 23 body joints) sends the weights, teacher and optimiser state back to the source's; 0: off
    drift_every: int  # frames between two drift checks of a track (its frames 1, 1 + every, ...); 0: off
    stopping: bool  # dynamic stopping: repeat the outer step while the feature moves more than tau
    clip: bool  # level 3: a bilevel step on the track's last T frames every clip.stride frames (clip.enabled)
    video_align: bool  # level 3's alignment with the frozen video encoder
    clip_guard: bool  # level 3: a clip step that does not lower the clip objective is undone
    clip_replay: bool  # level 3: the clip step is scored on the source samples frame t replayed too
    pseudo_labels: bool  # level 3: the clip's predictions, smoothed, as 3D pseudo-labels (CycleAdapt)
    smoothed_context: bool  # level 3: the smoother's estimate of frame t-k from the predictions emitted
    # up to t-1, a pseudo-label of frame t-k's rotations in the outer step
    emitted_smoothness: bool  # level 3's squared acceleration over the predictions emitted before t
    smoothing: bool  # level 3's fixed-lag smoother of the emitted predictions (cemr/adapt/smoothing.py)
    average: float | None  # EMA decay of the weights averaged after every frame, the run's adapted model
    # re-run over the target besides the last weights (None: none); level 1 alone never moves the weights
    emit: str  # the prediction recorded for frame t: `updated` base model, the `clone` adapted on t, or the
    # EMA `teacher` after the update (averaged weights: smoother output, and the run's final weights)

    @classmethod
    def from_config(cls, adapter) -> Plan:
        levels = int(adapter.levels)
        if levels not in (0, 1, 2, 3):
            raise ValueError(f"adapter.levels must be 0, 1, 2 or 3, got {adapter.levels}")
        lr_signal = adapter.inner.get("lr_signal", "outer")
        if lr_signal not in LR_SIGNALS:
            raise ValueError(f"adapter.inner.lr_signal must be one of {LR_SIGNALS}, got {lr_signal!r}")
        if adapter.emit not in EMITTED:
            raise ValueError(f"adapter.emit must be one of {EMITTED}, got {adapter.emit!r}")
        outer = levels >= 2
        replay = adapter.replay.retrieval if outer and adapter.replay.enabled else None
        if replay is not None and replay not in RETRIEVALS:
            raise ValueError(f"adapter.replay.retrieval must be one of {RETRIEVALS}, got {replay!r}")
        replay_inner = replay is not None and bool(adapter.replay.inner)
        if replay_inner and replay == "feature":
            raise ValueError(
                "adapter.replay.inner=true needs a retrieval known before the inner step "
                "(adapter.replay.retrieval=pose or random); feature retrieval uses the frame's feature"
            )
        learned_lr = float(adapter.inner.get("lr_rate", 0.0)) > 0
        inner_steps = adapter.inner.steps
        if inner_steps is None:  # as many as the rest needs: one where the level is the step or a part
            # reads the clone (feature retrieval takes the frame's feature from its forward pass), else
            # none: at the default inner lr the step moves a pose ~0.002 degrees for a fifth of a frame
            reads_clone = replay == "feature" or replay_inner or learned_lr or adapter.emit == "clone"
            inner_steps = 1 if levels == 1 or (outer and reads_clone) else 0
        inner_steps = int(inner_steps)
        if inner_steps < 0 or (inner_steps == 0 and levels == 1):
            raise ValueError(
                f"adapter.inner.steps must be at least 1 at adapter.levels=1 and at least 0 above (0: the "
                f"outer step scores the base model itself, no level-1 step), got {adapter.inner.steps}"
            )
        if inner_steps == 0 and replay == "feature":
            raise ValueError(
                "adapter.inner.steps=0 cannot retrieve by feature (adapter.replay.retrieval=feature takes "
                "the frame's feature from the inner step's forward pass): use retrieval=pose or random"
            )
        if inner_steps == 0 and learned_lr:
            raise ValueError(
                "adapter.inner.lr_rate > 0 learns the inner step's lr: it needs adapter.inner.steps >= 1"
            )
        if adapter.emit == "teacher" and outer and not adapter.teacher.enabled:
            raise ValueError("adapter.emit=teacher needs the mean teacher: set adapter.teacher.enabled=true")
        anchor = float(adapter.get("anchor", 0.0))
        if not 0.0 <= anchor <= 1.0:
            raise ValueError(f"adapter.anchor must lie in [0, 1], got {adapter.anchor}")
        sequence_pull = float(adapter.get("sequence_pull", 0.0))
        if not 0.0 <= sequence_pull <= 1.0:
            raise ValueError(f"adapter.sequence_pull must lie in [0, 1], got {adapter.sequence_pull}")
        drift = adapter.get("drift_guard")
        max_angle = float(drift.max_angle) if drift is not None else 0.0
        if not 0.0 <= max_angle <= 180.0:
            raise ValueError(
                f"adapter.drift_guard.max_angle must lie in [0, 180] degrees (0: off), got {max_angle:g}"
            )
        if max_angle and int(drift.every) < 1:
            raise ValueError(f"adapter.drift_guard.every must be at least 1 (frames), got {drift.every}")
        average = adapter.get("average")
        if average is not None and not 0.0 < float(average) < 1.0:
            raise ValueError(f"adapter.average must be null or a decay in (0, 1), got {average}")
        smoothing = adapter.get("smoothing")
        if smoothing is not None and float(smoothing.weight) < 0:
            raise ValueError(f"adapter.smoothing.weight must be >= 0 (0: off), got {smoothing.weight}")
        smooths = levels >= 3 and smoothing is not None and float(smoothing.weight) > 0
        if smooths and (int(smoothing.order) < 1 or int(smoothing.past) < 0 or int(smoothing.lag) < 0):
            raise ValueError(
                "adapter.smoothing needs order >= 1 and past, lag >= 0 (frames), got "
                f"order={smoothing.order} past={smoothing.past} lag={smoothing.lag}"
            )
        weights = adapter.loss_weights
        clip = levels >= 3 and bool(adapter.clip.get("enabled", True))
        return cls(
            levels=levels,
            inner_steps=inner_steps if levels >= 1 else 0,
            lr_signal=lr_signal,
            pose_barrier=levels >= 1 and weights.get("pose_barrier", 0.0) > 0,
            outer=outer,
            teacher=outer and bool(adapter.teacher.enabled),
            motion=outer and bool(adapter.motion.enabled),
            context=outer and bool(adapter.context.enabled),
            replay=replay,
            replay_inner=replay_inner,
            anchor=anchor if outer else 0.0,
            sequence_pull=sequence_pull if outer else 0.0,
            drift_guard=max_angle if outer else 0.0,
            drift_every=int(drift.every) if outer and max_angle else 0,
            stopping=outer and bool(adapter.stopping.enabled),
            clip=clip,
            video_align=clip and weights.video_align > 0,
            clip_guard=clip and bool(adapter.clip.get("guard", False)),
            clip_replay=clip and replay is not None and bool(adapter.clip.get("replay", False)),
            pseudo_labels=clip and weights.get("pseudo_labels", 0.0) > 0,
            smoothed_context=smooths
            and outer
            and bool(adapter.context.enabled)
            and weights.get("smoothed_context", 0.0) > 0,
            emitted_smoothness=levels >= 3 and weights.emitted_smoothness > 0,
            smoothing=smooths,
            average=float(average) if outer and average is not None else None,
            emit=adapter.emit if outer else "clone",
        )

    @property
    def uses_motion_frame(self) -> bool:
        """Whether the outer step looks at frame t-k (motion or context scoring)."""
        return self.motion or self.context
