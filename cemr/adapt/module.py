"""AdaptationModule: MiRRo test-time adaptation while streaming target frames in time order.

Per frame t (batch of one frame of one track); what runs is decided once by `Plan` (adapt/plan.py):
  1. frame: a learn2learn MAML clone takes `inner.steps` steps on L_frame(t) (plus replayed source
     labels, BOA);
  2. temporal: the clone is scored on frame t and on frames it did not adapt on (t-k: its own L_frame
     and the motion between them; replayed source samples), against the EMA teacher, and, at level 3,
     for the smoothness of its prediction after the ones already emitted; that loss updates the base
     weights (outer step), repeated while the head feature moved more than tau (dynamic stopping);
     `anchor` then pulls the weights part of the way back to the source model's;
  3. clip: every `clip.stride` frames, a bilevel step on the track's last `clip.length` frames (with
     their predictions, smoothed over the clip, as pseudo-labels when `loss_weights.pseudo_labels`).
Then the prediction for frame t is recorded: the clone's at level 1 (which never changes the base
weights); at levels 2-3 the updated base model's (`emit: updated`, DynaBOA), the clone's that the
outer step scored (`emit: clone`, one forward less), or the EMA teacher's after the update (`emit: teacher`).
Every `drift_guard.every` frames of a track that prediction is compared with the source model's; one
further than `drift_guard.max_angle` restarts the weights from the source's and emits the source's.

A sequence model (VIBE: `seq_len`) adapts the same way, all its weights (trunk, GRU, regressor): each
frame is predicted from its causal window (models/vibe.py), whose earlier frames are the trunk
features cached when they were emitted (history entries' `feature`); only the frame itself takes a
trunk pass, under gradient. Frame t-k and the clip's frames use the windows they had when they came.

Where `adapter.frozen` holds the trunk's leading stages (HMR.frozen_stages), their feature maps of an
image are the same under every update: they run once per frame (`_inputs`), which every forward of
that frame reads, its history entry keeps for when it is frame t-k, and once per replayed source
sample (kept for the next `replay_cache_size` retrievals).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict, deque

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from cemr.adapt import levels
from cemr.adapt.inner import InnerLoop
from cemr.adapt.plan import Plan
from cemr.adapt.smoothing import smooth_rotations
from cemr.adapt.teacher import ema_update, make_teacher
from cemr.evaluation.metrics import pa_mpjpe
from cemr.evaluation.protocol import joints14
from cemr.geometry import rotation_angle, rotmat_to_axis_angle
from cemr.models.frozen import freeze
from cemr.models.prediction import BodyPrediction, decode
from cemr.models.vibe import causal_windows


class AdaptationModule(L.LightningModule):
    record_chunk = 256  # frames whose records are packed into one tensor per field (flat memory)
    replay_cache_size = 64  # replayed source samples kept read (consecutive frames retrieve the same ones)

    def __init__(
        self,
        model: nn.Module,
        body_model: nn.Module,
        pose_prior: nn.Module,
        adapter,
        focal_length: float,
        crop_size: int,
        video_encoder: nn.Module | None = None,
        align_head: nn.Module | None = None,
        replay_source=None,
        replay_weights=None,
        seed: int = 0,
        pose_barrier: float | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.body_model = body_model
        self.pose_prior = pose_prior
        self.pose_barrier = pose_barrier  # the prior cost L_frame penalises above (plan.pose_barrier)
        self.cfg = adapter
        self.focal_length = focal_length
        self.crop_size = crop_size
        self.video_encoder = video_encoder
        self.align_head = align_head
        self.plan = Plan.from_config(adapter)
        if self.plan.pose_barrier and pose_barrier is None:
            raise ValueError(
                "adapter.loss_weights.pose_barrier > 0 needs the barrier's prior cost (pose_barrier=...; "
                "adapt/run.py takes it from the source poses at adapter.pose_barrier.quantile)"
            )
        self.replay_source = replay_source  # (PoseIndex or ReplayBank, dataset) or None
        self.replay_weights = replay_weights  # the source-training loss weights
        inner = adapter.inner  # level 1
        learned_lr = {key: inner[key] for key in ("lr_rate", "lr_bounds") if key in inner}  # else InnerLoop's
        self.inner = InnerLoop(model, inner.lr, inner.first_order, inner.max_grad_norm, **learned_lr)
        self.teacher = make_teacher(model) if self.plan.teacher else None
        self.average = make_teacher(model) if self.plan.average is not None else None  # not in the loop
        # the source weights, frozen: what a reset or a pull goes back to and the drift guard compares with
        self.source_model = make_teacher(model)
        for frozen in (self.body_model, self.pose_prior, self.video_encoder, self.align_head):
            if frozen is not None:
                frozen.requires_grad_(False)
        freeze(model, adapter.get("frozen") or [], "adapter.frozen")  # kept at the source weights
        # The frozen leading trunk stages give an image the same feature maps under every update: they run
        # once per frame (and per replayed sample) and every forward of it reads them (`_inputs`).
        self.seq_len = getattr(model, "seq_len", None)  # a sequence model's causal window
        frozen_stages = getattr(model, "frozen_stages", None)
        self.stem_stages = frozen_stages() if self.seq_len is None and frozen_stages is not None else 0
        self.replay_cache: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self.seed = seed
        self.replay_generator = torch.Generator().manual_seed(seed)
        history = max(adapter.motion.interval + 1, adapter.clip.length, (self.seq_len or 1) - 1)
        if self.plan.smoothed_context:  # the smoother's window of frame t-k, up to frame t-1
            history = max(history, adapter.smoothing.past + adapter.motion.interval)
        self.history: deque[dict[str, torch.Tensor]] = deque(maxlen=history)
        self.track: tuple[int, int] | None = None
        self.frames_in_track = 0
        counted = (
            "outer_steps",
            "extra_steps",
            "clip_steps",
            "clip_steps_undone",
            "skipped_steps",
            "barrier_frames",
            "drift_resets",
        )
        self.counters = dict.fromkeys(counted, 0)
        self.records: list[dict[str, torch.Tensor]] = []  # packed chunks of frames, then single frames
        self._packed = 0  # how many leading entries of records are packed chunks
        self._frames = 0
        self._pending_optimizer_states: list[dict] | None = None
        self.frame_pa_mpjpe: list[float] = []  # each scored frame's, in stream order
        self._pa_mpjpe_sum = 0.0

    # ------------------------------------------------------------------ plumbing

    def configure_optimizers(self):
        outer = instantiate(self.cfg.outer.optimizer)(self.model.parameters())
        clip = instantiate(self.cfg.clip.optimizer)(self.model.parameters())
        return [outer, clip]

    def on_train_start(self) -> None:
        if self._pending_optimizer_states is not None:
            pairs = zip(self.optimizers(use_pl_optimizer=False), self._pending_optimizer_states, strict=True)
            for opt, state in pairs:
                opt.load_state_dict(state)
            self._pending_optimizer_states = None
        for net in (self.model, self.teacher, self.source_model):  # no dropout; BatchNorm (if any) keeps
            if net is not None:  # its source statistics
                net.eval()

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        """What `predict_body` reads of images (B, 3, S, S): the frozen trunk stages' feature maps, or the
        images where no stage is frozen. The source model's stages: every net's frozen ones equal them."""
        if not self.stem_stages:
            return images
        with torch.no_grad():  # not a decorator: bench_adapt's breakdown needs this method's callers
            return self.source_model.stem(images, self.stem_stages)

    def predict_body(
        self, net: nn.Module, inputs: torch.Tensor, pasts: list[torch.Tensor | None] | None = None
    ) -> BodyPrediction:
        """The bodies `net` predicts for `_inputs(images)` (the images themselves where no trunk stage is
        frozen). A sequence model predicts each row from its causal window: `pasts[i]` holds the cached
        features (k, C), k < seq_len, of the frames before row i in its track; rows past the list's end or
        None have no past (replayed source samples)."""
        if self.seq_len is None:
            output = net.forward_from(inputs, self.stem_stages) if self.stem_stages else net(inputs)
            return decode(output, self.body_model, self.focal_length, self.crop_size)
        current = net.extract_features(inputs[:, None])[:, 0]
        pasts = list(pasts or []) + [None] * (len(current) - len(pasts or []))
        windows = [
            causal_windows(now if past is None else torch.cat([past.to(now), now]), self.seq_len)[-1]
            for now, past in zip(current.split(1), pasts, strict=True)
        ]
        output = net.forward_windows(torch.stack(windows))
        return decode(output, self.body_model, self.focal_length, self.crop_size)

    def _past(self) -> torch.Tensor | None:
        """Cached trunk features (k, C) of this track's last k < seq_len frames; None for a
        single-frame model or at a track's start."""
        if self.seq_len is None or self.seq_len < 2 or not self.history:
            return None
        return torch.cat([f["feature"] for f in list(self.history)[1 - self.seq_len :]])

    @property
    def frames_done(self) -> int:
        """How many target frames this module has adapted (and recorded) so far."""
        return self._frames

    def _step(self, optimizer, loss: torch.Tensor, lr_signal: torch.Tensor | None = None) -> bool:
        """One optimiser step on a clone's finite loss; a non-finite loss (or gradient) is skipped and
        counted. Where the clone is the base model moved in place (first order), its weights are put
        back between the backward pass and the step, which applies the moved weights' gradient.

        A learned inner lr learns from the gradient of `lr_signal` (a part of `loss`, one backward
        pass more) where one is given, else from the whole loss's (`_lr_signal`).

        Under 16-mixed precision the gradient scaler owns non-finite gradients: they are what it sees
        when its scale is too large, so it skips that step and lowers the scale; that is counted too.
        """
        optimizer.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        params = list(self.model.parameters())
        try:
            if finite:
                signal = None
                if self.inner.lr_rate and lr_signal is not None:
                    signal = (
                        torch.autograd.grad(lr_signal, params, retain_graph=True, allow_unused=True)
                        if lr_signal.requires_grad
                        else [None] * len(params)  # nothing held out yet: every lr stays
                    )
                self.manual_backward(loss)
                if self.inner.lr_rate:
                    self.inner.learn_lrs(list(signal) if signal is not None else [p.grad for p in params])
        finally:
            self.inner.restore()
        if not finite:
            self.counters["skipped_steps"] += 1
            return False
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        grads = [p.grad for p in params if p.grad is not None]
        if scaler is None and grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            optimizer.zero_grad(set_to_none=True)
            self.counters["skipped_steps"] += 1
            return False
        scale = scaler.get_scale() if scaler is not None else None
        optimizer.step()
        if scaler is not None and scaler.get_scale() < scale:
            self.counters["skipped_steps"] += 1
            return False
        return True

    def _start_track(self, track: tuple[int, int]) -> None:
        new_sequence = self.track is None or track[0] != self.track[0]
        self.track, self.frames_in_track = track, 0
        self.history.clear()
        if new_sequence and self.cfg.reset == "sequence":
            self.reset_to_source()
        elif new_sequence and self.plan.sequence_pull:  # optimiser state and teacher kept
            self._pull_to_source(self.plan.sequence_pull)

    def reset_to_source(self) -> None:
        """Restart from the source weights, a fresh optimiser state and teacher (CycleAdapt's protocol).

        The replay sampler restarts from its seed too, so a sequence's result does not depend on the
        sequences before it: that is what lets DDP ranks adapt disjoint sequences (adapt/parallel.py).
        """
        self._restart_weights()
        self.replay_generator.manual_seed(self.seed)
        if self.average is not None:
            self.average.load_state_dict(self.source_model.state_dict())

    def _restart_weights(self) -> None:
        """The source weights, teacher and inner lrs again, and a fresh optimiser state."""
        source = self.source_model.state_dict()
        self.model.load_state_dict(source)
        self.inner.reset_lrs()
        if self.teacher is not None:
            self.teacher.load_state_dict(source)
        for opt in self.optimizers(use_pl_optimizer=False) if self._trainer else []:
            opt.state.clear()

    @torch.no_grad()
    def _guard_drift(self, inputs: torch.Tensor, past, final: BodyPrediction) -> BodyPrediction:
        """`final`, or the source model's prediction after a restart from the source weights where the
        two poses lie more than `drift_guard.max_angle` apart (the stream left what the source reads)."""
        source = self.predict_body(self.source_model, inputs, [past])
        angle = rotation_angle(final.rotmat[:, 1:].float(), source.rotmat[:, 1:].float()).mean()
        if math.degrees(angle) <= self.plan.drift_guard:  # a device sync, once every `every` frames
            return final
        self.counters["drift_resets"] += 1
        self._restart_weights()
        return source

    # ------------------------------------------------------------------ levels

    def _adapted_clone(self, frame: dict[str, torch.Tensor]):
        """Level 1: a MAML clone after `inner.steps` steps on L_frame (plus replayed source labels when
        `replay.inner`, BOA).

        Also returns the clone's prediction of frame t before its first step, which is the base
        model's: the caller reuses it instead of running the base model once more. With no inner step
        (`inner.steps=0`, levels >= 2) the clone is the base model and that prediction None.
        """
        if not self.plan.inner_steps:  # level 2 without level 1: the outer step scores the base model itself
            return self.model, None
        inputs, keypoints = frame["input"], frame["keypoints"]
        source = frame.get("source") if self.plan.replay_inner else None
        batch = inputs if source is None else torch.cat([inputs, source["input"]])
        b = inputs.shape[0]
        clone = self.inner.clone()
        unadapted = None
        for _ in range(self.plan.inner_steps):
            pred = self.predict_body(clone, batch, [frame.get("past")])
            now = _slice(pred, 0, b)
            if unadapted is None:
                unadapted = now
            loss, _ = self._frame_objective(now, keypoints)
            if source is not None:
                loss = loss + self._replay_loss(_slice(pred, b, len(batch)), source)
            if not torch.isfinite(loss):
                self.counters["skipped_steps"] += 1
                return self.inner.clone(), unadapted
            clone = self.inner.step(clone, loss)
        return clone, unadapted

    def _frame_objective(self, pred: BodyPrediction, keypoints: torch.Tensor):
        """L_frame of one prediction, with the pose barrier where the plan has one."""
        barrier = self.pose_barrier if self.plan.pose_barrier else None
        return levels.frame_objective(pred, keypoints, self.pose_prior, self.cfg.loss_weights, barrier)

    def _context_frame(self) -> dict[str, torch.Tensor] | None:
        """Frame t-k of this track, which the clone adapted on t is also scored on; None early on."""
        k = self.cfg.motion.interval
        return self.history[-k] if self.plan.uses_motion_frame and len(self.history) >= k else None

    def _outer_loss(self, clone, frame: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, BodyPrediction]:
        """Level 2: the clone scored on frame t, on frame t-k (its own L_frame and the motion between
        the two), against the teacher and on replayed source samples; at level 3 also the smoothness
        of its prediction of t after the predictions emitted for t-2 and t-1.

        Returns the loss, its parts and the clone's prediction of frame t."""
        plan, w = self.plan, self.cfg.loss_weights
        earlier = self._context_frame()
        source = frame.get("source")
        inputs = [frame["input"]] + ([earlier["input"]] if earlier is not None else [])
        inputs += [source["input"]] if source is not None else []
        pasts = [frame.get("past")] + ([earlier.get("past")] if earlier is not None else [])
        pred = self.predict_body(clone, torch.cat(inputs), pasts)
        b = frame["input"].shape[0]
        now = _slice(pred, 0, b)
        total, parts = self._frame_objective(now, frame["keypoints"])
        if self.teacher is not None:
            with torch.no_grad():
                teacher_pred = self.predict_body(self.teacher, frame["input"], [frame.get("past")])
            parts["teacher"] = w.teacher * levels.losses.teacher_consistency(now, teacher_pred)
        if earlier is not None:
            before = _slice(pred, b, 2 * b)
            if plan.context:
                context, _ = self._frame_objective(before, earlier["keypoints"])
                parts["context"] = w.context * context
            if plan.smoothed_context:
                parts["smoothed_context"] = w.smoothed_context * F.mse_loss(
                    before.rotmat, self._smoothed_context_rotations()
                )
            if plan.motion:
                parts["motion"] = w.motion * levels.losses.motion_consistency(
                    now.keypoints_2d, before.keypoints_2d, frame["keypoints"], earlier["keypoints"]
                )
        if source is not None:
            start = b * (2 if earlier is not None else 1)
            parts["replay"] = self._replay_loss(_slice(pred, start, pred.rotmat.shape[0]), source)
        order = self.cfg.clip.emitted_order
        if plan.emitted_smoothness and len(self.history) >= order:
            emitted = [f["joints"] for f in list(self.history)[-order:]]
            parts["emitted_smoothness"] = w.emitted_smoothness * levels.losses.emitted_smoothness(
                now.joints[:, levels.losses.GT_JOINTS], emitted, order
            )
        extra = ("teacher", "context", "smoothed_context", "motion", "replay", "emitted_smoothness")
        total = total + sum(v for k, v in parts.items() if k in extra)
        return total, parts, now

    def _lr_signal(self, parts: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """With `inner.lr_signal: held_out`, the outer loss's terms on frames the clone did not adapt
        on (frame t-k's L_frame, the replayed source samples), which a learned inner lr follows: the
        whole outer loss holds frame t, which the inner step has just descended, so its gradient
        nearly always agrees with the inner one and the lr only rises (docs/experiments.md, session 13). Zero
        (no lr change) before a track has a frame t-k and without replay; None: the whole loss."""
        if not self.inner.lr_rate or self.plan.lr_signal == "outer":
            return None
        held_out = [parts[k] for k in ("context", "replay") if k in parts]
        return sum(held_out) if held_out else torch.zeros(())

    def _smoothed_context_rotations(self) -> torch.Tensor:
        """The smoother's estimate of frame t-k's rotations (1, 24, 3, 3) from the predictions emitted for
        frames t-k-past .. t-1 of this track (its lag is k-1: frame t is not predicted yet)."""
        k, smoothing = self.cfg.motion.interval, self.cfg.smoothing
        window = list(self.history)[-(smoothing.past + k) :]
        rotmat = torch.cat([f["rotmat"] for f in window])
        return smooth_rotations(rotmat, smoothing.weight, smoothing.order, at=len(window) - k)

    def _replay_loss(self, pred: BodyPrediction, source: dict[str, torch.Tensor]) -> torch.Tensor:
        """The labelled source loss of the replayed samples; the i-th nearest weighs decay^i (normalised)."""
        count = pred.rotmat.shape[0]
        decay = torch.tensor([self.cfg.replay.decay**i for i in range(count)], dtype=pred.rotmat.dtype)
        decay = decay / decay.sum()
        total = 0
        for i in range(count):
            one = {k: v[i : i + 1] for k, v in source.items()}
            loss, _ = levels.losses.labelled_objective(_slice(pred, i, i + 1), one, self.replay_weights)
            total = total + decay[i] * loss
        return self.cfg.loss_weights.replay * total

    def _retrieve_source(self, frame: dict[str, torch.Tensor], feature: torch.Tensor | None):
        """The labelled source samples frame t replays (pose: nearest normalised 2D poses; feature:
        drawn from the nearest k-means cluster; random: drawn from the whole split)."""
        index, dataset = self.replay_source
        count = self.cfg.replay.samples
        if self.plan.replay == "pose":
            idx = index.retrieve(frame["keypoints"][0], count)
        elif self.plan.replay == "feature":
            idx = index.retrieve(feature[0], count, self.replay_generator)
        else:
            idx = torch.randint(len(dataset), (count,), generator=self.replay_generator).tolist()
        samples = [self._source_sample(dataset, i, frame["img"].dtype) for i in idx]
        return {k: torch.cat([sample[k] for sample in samples]) for k in samples[0]}

    def _source_sample(self, dataset, index: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Source row `index` as replay reads it (its `_inputs` and labels, a batch of one), from the last
        `replay_cache_size` read: on the benchmark 4 in 5 retrievals repeat one of the last 16."""
        key = (index, dtype)
        if key in self.replay_cache:
            self.replay_cache.move_to_end(key)
            return self.replay_cache[key]
        item = dataset[index]
        keys = ("img", "keypoints", "pose", "betas", "joints3d", "has_smpl")
        sample = {k: torch.as_tensor(item[k])[None].to(self.device, dtype) for k in keys}
        sample["input"] = self._inputs(sample.pop("img"))
        self.replay_cache[key] = sample
        if len(self.replay_cache) > self.replay_cache_size:
            self.replay_cache.popitem(last=False)
        return sample

    def _clip_step(self, source: dict[str, torch.Tensor] | None = None) -> None:
        """Level 3: adapt a clone on the first half of the clip and score it on the second half (and on
        the source samples frame t replayed, when `clip.replay`); the video alignment compares P(mean
        features of all T frames) with E_video of the same T frames."""
        frames = list(self.history)[-self.cfg.clip.length :]
        images = torch.cat([f["img"] for f in frames])
        inputs = torch.cat([f["input"] for f in frames])
        pasts = [f.get("past") for f in frames]
        keypoints = torch.cat([f["keypoints"] for f in frames])
        video_embedding = None
        if self.plan.video_align and self.video_encoder is not None and self.align_head is not None:
            with torch.no_grad():
                video_embedding = self.video_encoder(images.transpose(0, 1)[None])
        half = len(frames) // 2
        w = self.cfg.loss_weights
        guard = self._clip_guard(inputs, pasts, keypoints) if self.plan.clip_guard else None
        clone = self.inner.clone()
        inner, _ = levels.clip_objective(
            self.predict_body(clone, inputs[:half], pasts[:half]), keypoints[:half], w
        )
        if not torch.isfinite(inner):
            self.counters["skipped_steps"] += 1
            return
        clone = self.inner.step(clone, inner)
        scored = 0 if video_embedding is not None else half  # the alignment sees the whole clip
        batch = inputs[scored:] if source is None else torch.cat([inputs[scored:], source["input"]])
        pred = self.predict_body(clone, batch, pasts[scored:])
        replayed = _slice(pred, len(frames) - scored, pred.rotmat.shape[0])
        pred = _slice(pred, 0, len(frames) - scored)
        second = _slice(pred, pred.rotmat.shape[0] - (len(frames) - half), pred.rotmat.shape[0])
        outer, parts = levels.clip_objective(second, keypoints[half:], w)
        if source is not None:
            parts["replay"] = self._replay_loss(replayed, source)
            outer = outer + parts["replay"]
        if self.plan.pseudo_labels:
            pseudo = smooth_rotations(
                torch.cat([f["rotmat"] for f in frames]), self.cfg.smoothing.weight, self.cfg.smoothing.order
            )
            parts["pseudo_labels"] = w.pseudo_labels * F.mse_loss(second.rotmat, pseudo[half:])
            outer = outer + parts["pseudo_labels"]
        if video_embedding is not None:
            parts["video_align"] = w.video_align * levels.video_align(pred, video_embedding, self.align_head)
            outer = outer + parts["video_align"]
        if self._step(self.optimizers()[1], outer):
            self.counters["clip_steps"] += 1
            self._log_parts("clip", parts)
            if guard is not None:
                guard()

    def _clip_guard(self, inputs: torch.Tensor, pasts: list, keypoints: torch.Tensor):
        """`clip.guard`: the base model's clip objective on all T frames, and its weights and clip
        optimiser state, before the clip step; returns what undoes the step if that objective did not
        fall. More than half of the clip steps are undone on the benchmark (docs/experiments.md,
        session 13)."""
        optimizer = self.optimizers(use_pl_optimizer=False)[1]
        params = list(self.model.parameters())

        def clip_loss() -> torch.Tensor:
            with torch.no_grad():
                pred = self.predict_body(self.model, inputs, pasts)
                return levels.clip_objective(pred, keypoints, self.cfg.loss_weights)[0]

        before = clip_loss()
        weights = [p.detach().clone() for p in params]
        state = copy.deepcopy(optimizer.state_dict())

        def undo_unless_better() -> None:
            after = clip_loss()
            if bool(torch.isfinite(after)) and after < before:
                return
            with torch.no_grad():
                torch._foreach_copy_(params, weights)  # as InnerLoop.restore puts the base weights back
            optimizer.load_state_dict(state)
            self.counters["clip_steps_undone"] += 1

        return undo_unless_better

    # ------------------------------------------------------------------ the stream

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if "padding" in batch:  # a step a DDP rank with a shorter shard idles through (adapt/resume.py)
            return
        try:
            self._adapt_frame(batch)
        finally:  # the base weights are never left where a clone moved them (level 1 never changes them)
            self.inner.restore()

    def _adapt_frame(self, batch: dict[str, torch.Tensor]) -> None:
        track = (int(batch["seq_id"][0]), int(batch["person"][0]))
        if track != self.track:
            self._start_track(track)
        images, keypoints = batch["img"], batch["keypoints"].to(batch["img"].dtype)
        inputs = self._inputs(images)
        frame = {"img": images, "input": inputs, "keypoints": keypoints, "past": self._past()}
        if self.plan.replay in ("pose", "random") and self.replay_source is not None:
            frame["source"] = self._retrieve_source(frame, None)
        if self.plan.outer:
            final = self._temporal_steps(frame)
        else:
            clone, unadapted = self._adapted_clone(frame)
            with torch.no_grad():
                final = self._finite_or(self.predict_body(clone, inputs, [frame.get("past")]), unadapted)
        entry = {
            "img": images.detach(),
            "input": inputs,
            "keypoints": keypoints.detach(),
            "past": frame.get("past"),
        }
        if self.plan.pseudo_labels or self.plan.smoothed_context:  # as predicted before any clip step
            entry["rotmat"] = final.rotmat.detach()
        self.history.append(entry)
        self.frames_in_track += 1
        if (
            self.plan.clip
            and len(self.history) >= self.cfg.clip.length
            and self.frames_in_track % self.cfg.clip.stride == 0
        ):
            self._clip_step(frame.get("source") if self.plan.clip_replay else None)
            if self.plan.emit == "updated":
                with torch.no_grad():
                    final = self.predict_body(self.model, inputs, [frame.get("past")])
        if self.plan.drift_guard and (self.frames_in_track - 1) % self.plan.drift_every == 0:
            final = self._guard_drift(inputs, frame.get("past"), final)
        if self.average is not None:
            ema_update(self.average, self.model, self.plan.average)
        entry["joints"] = final.joints[:, levels.losses.GT_JOINTS].detach()
        entry["feature"] = final.feature.detach()  # what later frames' causal windows hold
        self._record(batch, final)

    def _temporal_steps(self, frame: dict[str, torch.Tensor]) -> BodyPrediction:
        """Outer steps with dynamic stopping; returns the prediction to emit for frame t (`emit`)."""
        max_steps = 1 + (self.cfg.stopping.max_extra_steps if self.plan.stopping else 0)
        feat_before = after = emitted = None
        for step in range(max_steps):
            clone, unadapted = self._adapted_clone(frame)
            if step == 0 and unadapted is not None:  # the base model's prediction before any step on frame t
                after = _detached(unadapted)
                feat_before = after.head_feature
                if self.plan.replay == "feature" and self.replay_source is not None:
                    frame["source"] = self._retrieve_source(frame, after.feature)
            loss, parts, clone_now = self._outer_loss(clone, frame)
            if after is None:  # no inner step: the outer step's own prediction of t is the base model's
                after = _detached(clone_now)
                feat_before = after.head_feature
            emitted = self._finite_or(_detached(clone_now), after)
            if not self._step(self.optimizers()[0], loss, self._lr_signal(parts)):
                break
            self.counters["outer_steps"] += 1
            self.counters["extra_steps"] += int(step > 0)
            if self.plan.anchor:
                self._pull_to_source(self.plan.anchor)
            if self.teacher is not None:
                ema_update(self.teacher, self.model, self.cfg.teacher.ema)
            if step == 0:
                self._log_parts("frame", parts)
                if self.plan.pose_barrier:  # frame t's pose lay beyond the barrier before this step
                    self.counters["barrier_frames"] += int(parts["pose_barrier"] > 0)
            if self.plan.emit == "clone" and not self.plan.stopping:
                return emitted
            with torch.no_grad():
                after = self.predict_body(self.model, frame["input"], [frame.get("past")])
            discrepancy = 1 - F.cosine_similarity(feat_before, after.head_feature, dim=-1).mean()
            if not self.plan.stopping or discrepancy <= self.cfg.stopping.tau:
                break
            feat_before = after.head_feature
        if self.plan.emit == "teacher":
            with torch.no_grad():
                return self.predict_body(self.teacher, frame["input"], [frame.get("past")])
        return emitted if self.plan.emit == "clone" and emitted is not None else after

    @torch.no_grad()
    def _pull_to_source(self, fraction: float) -> None:
        """weights <- weights + fraction * (source weights - weights), for every parameter."""
        torch._foreach_lerp_(list(self.model.parameters()), list(self.source_model.parameters()), fraction)

    def _finite_or(self, pred: BodyPrediction, fallback: BodyPrediction) -> BodyPrediction:
        """`pred`, or `fallback` (the base model's) where a clone's step made it non-finite (counted)."""
        if all(torch.isfinite(v).all() for v in vars(pred).values()):
            return pred
        self.counters["skipped_steps"] += 1
        return _detached(fallback)

    def _record(self, batch: dict[str, torch.Tensor], pred: BodyPrediction) -> None:
        pose = rotmat_to_axis_angle(pred.rotmat.detach()).reshape(-1, 72)
        self.records.append(
            {
                "index": batch["index"].detach().cpu(),
                "pose": pose.float().cpu(),
                "betas": pred.betas.detach().float().cpu(),
                "cam": pred.cam.detach().float().cpu(),
            }
        )
        self._frames += len(batch["index"])
        loose = self.records[self._packed :]
        if len(loose) == self.record_chunk:  # a few small tensors a frame cost KBs of overhead each
            self.records[self._packed :] = [{k: torch.cat([r[k] for r in loose]) for k in loose[0]}]
            self._packed += 1
        if bool(batch["has_smpl"].all()):
            self.frame_pa_mpjpe.append(self._pa_mpjpe_mm(batch, pred))
            self._pa_mpjpe_sum += self.frame_pa_mpjpe[-1]
            running = self._pa_mpjpe_sum / len(self.frame_pa_mpjpe)
            self.log("running_pa_mpjpe", running, on_step=True, prog_bar=True, batch_size=1)
            if self._logs_this_step():
                self.log("frame_pa_mpjpe", self.frame_pa_mpjpe[-1], on_step=True, batch_size=1)

    @torch.no_grad()
    def _pa_mpjpe_mm(self, batch: dict[str, torch.Tensor], pred: BodyPrediction) -> float:
        """PA-MPJPE of this frame against the neutral-body GT, for the progress bar only (metrics.json
        is scored afterwards with the gendered GT)."""
        gt_pose = batch["pose"].to(pred.vertices.dtype)
        gt = self.body_model(
            betas=batch["betas"].to(gt_pose.dtype), body_pose=gt_pose[:, 3:], global_orient=gt_pose[:, :3]
        )
        regressor = self.body_model.J_regressor_h36m
        errors = pa_mpjpe(joints14(pred.vertices, regressor), joints14(gt.vertices, regressor))
        return float(errors.mean()) * 1000.0

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this step's values (every trainer.log_every_n_steps): a value logged
        on another step is dropped, after costing a device sync and Lightning's bookkeeping."""
        trainer = self._trainer
        return trainer is None or trainer._logger_connector.should_update_logs

    def _log_parts(self, level: str, parts: dict[str, torch.Tensor]) -> None:
        if level == "frame" and not self._logs_this_step():  # a clip step's, rare, stays until the next write
            return
        for name, value in parts.items():
            value = float(value.detach())
            if math.isfinite(value):
                self.log(f"{level}/{name}", value, on_step=True, batch_size=1)
        for name, value in self.counters.items():
            self.log(f"count/{name}", float(value), on_step=True, batch_size=1)
        if self.inner.log_lrs is not None:
            mean = float(self.inner.log_lrs.mean()) / math.log(10)
            self.log("inner/log10_lr_mean", mean, on_step=True, batch_size=1)

    # ------------------------------------------------------------------ resume

    def resume_state(self) -> dict:
        """Everything the stream's future depends on (weights, teacher, optimisers, history, RNG, records)."""
        optimizers = [opt.state_dict() for opt in self.optimizers(use_pl_optimizer=False)]
        return {
            "model": self.model.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "average": self.average.state_dict() if self.average is not None else None,
            "optimizers": optimizers,
            "replay_generator": self.replay_generator.get_state(),
            "history": [dict(frame) for frame in self.history],
            "track": list(self.track) if self.track is not None else None,
            "frames_in_track": self.frames_in_track,
            "counters": dict(self.counters),
            "inner_log_lrs": self.inner.log_lrs,
            "records": self.records,
        }

    def load_resume_state(self, path) -> int:
        """Restore a `resume_state` file (weights_only); returns how many frames it had adapted."""
        from cemr.safe_io import load_torch

        state = load_torch(path)
        self.model.load_state_dict(state["model"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self._pending_optimizer_states = state["optimizers"]
        self.replay_generator.set_state(state["replay_generator"])
        self.history.clear()
        self.history.extend(state["history"])
        for frame in self.history:
            if "input" not in frame:  # a state written before the history held them
                frame["input"] = self._inputs(frame["img"])
        self.track = tuple(state["track"]) if state["track"] is not None else None
        self.frames_in_track = state["frames_in_track"]
        self.counters.update(state["counters"])
        self.inner.log_lrs = state.get("inner_log_lrs")
        self.records = list(state["records"])
        self._packed = sum(len(r["index"]) > 1 for r in self.records)
        self._frames = sum(len(r["index"]) for r in self.records)
        return self._frames

    def predictions(self) -> dict[str, torch.Tensor]:
        """All recorded frames in stream order: index (N,), pose (N, 72), betas (N, 10), cam (N, 3)."""
        if not self.records:
            raise RuntimeError("no frames were adapted: the target stream is empty")
        return {k: torch.cat([r[k] for r in self.records]) for k in self.records[0]}


def _detached(pred: BodyPrediction) -> BodyPrediction:
    return BodyPrediction(**{k: v.detach() for k, v in vars(pred).items()})


def _slice(pred: BodyPrediction, start: int, stop: int) -> BodyPrediction:
    return BodyPrediction(**{k: v[start:stop] for k, v in vars(pred).items()})
