"""The MiRRo plan (which levels and terms run), the level-1 inner step moving the prediction, the
level-2 terms that score the clone on other frames, level 3's emitted smoothness, and 2D pose
retrieval for replay."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cemr.adapt import levels
from cemr.adapt.plan import Plan
from cemr.data.retrieval import PoseIndex, _gt24, _normalize
from cemr.geometry import rotmat_to_axis_angle
from tests.conftest import compose_config
from tests.test_adapt_module import Stream, adapter_cfg, make_module, source_bank, stream_through


def plan_of(*overrides: str) -> Plan:
    return Plan.from_config(compose_config("adapt", list(overrides)).adapter)


def test_levels_enable_their_parts_and_nothing_above():
    none, one, two, three = (plan_of(f"adapter.levels={n}") for n in range(4))
    assert (none.inner_steps, none.outer, none.clip) == (0, False, False)
    assert (
        one.inner_steps >= 1 and not one.outer and not one.teacher and not one.motion and one.emit == "clone"
    )
    assert two.outer and two.motion and two.context and not two.clip
    assert not two.teacher  # off since session 22
    assert plan_of("adapter.levels=2", "adapter.teacher.enabled=true").teacher
    assert not two.emitted_smoothness and not two.video_align
    assert not three.emitted_smoothness  # off by default (README)
    # the clip step is off by default since session 17 (validation builds 100-107, README)
    assert not three.clip and not three.video_align and not three.clip_guard
    clip = plan_of("adapter.levels=3", "adapter.clip.enabled=true")
    assert clip.clip and clip.video_align and clip.clip_guard and clip.smoothing
    assert plan_of("adapter.levels=3", "adapter.loss_weights.emitted_smoothness=10").emitted_smoothness
    assert not plan_of("adapter.levels=2", "adapter.loss_weights.emitted_smoothness=10").emitted_smoothness
    # replay asked for at level 1 is not run: level 1 has no outer step to replay in
    assert plan_of("adapter.levels=1", "adapter.replay.enabled=true").replay is None
    assert plan_of("adapter.levels=2", "adapter.replay.enabled=true").replay == "pose"
    # the weights average: level 1 alone never moves the weights, so there is nothing to average
    assert three.average == 0.999 and plan_of("adapter.levels=1", "adapter.average=0.9").average is None
    assert plan_of("adapter.levels=2", "adapter.average=null").average is None
    # the fixed-lag smoother of the emitted predictions is level 3's
    assert three.smoothing and not two.smoothing
    assert not plan_of("adapter.levels=3", "adapter.smoothing.weight=0").smoothing
    assert not plan_of("adapter.levels=3", "adapter.clip.enabled=true", "adapter.clip.guard=false").clip_guard
    assert not plan_of("adapter.levels=2", "adapter.clip.enabled=true").clip  # level 3's
    # level 3's optional terms (off by default; README, "Tried in session 11")
    assert not (three.pseudo_labels or three.smoothed_context or three.clip_replay)
    pseudo = "adapter.loss_weights.pseudo_labels=1"
    assert plan_of("adapter.levels=3", "adapter.clip.enabled=true", pseudo).pseudo_labels
    assert not plan_of("adapter.levels=3", pseudo).pseudo_labels  # no clip step to use them in
    assert plan_of("adapter.levels=1", "adapter.loss_weights.pose_barrier=0.01").pose_barrier
    assert not plan_of("adapter.levels=0", "adapter.loss_weights.pose_barrier=0.01").pose_barrier
    assert not plan_of("adapter.levels=3").pose_barrier  # off by default
    assert plan_of("adapter.levels=3").drift_guard == 35.0  # chosen on validation (README, session 15)
    assert plan_of("adapter.levels=3", "adapter.drift_guard.max_angle=0").drift_guard == 0.0
    assert plan_of("adapter.levels=2", "adapter.drift_guard.max_angle=30").drift_guard == 30.0
    assert plan_of("adapter.levels=1", "adapter.drift_guard.max_angle=30").drift_guard == 0.0  # nothing moves
    assert plan_of("adapter.levels=3").drift_every == 4
    assert plan_of("adapter.levels=2", "adapter.drift_guard.every=7").drift_every == 7
    assert plan_of("adapter.levels=3", "adapter.drift_guard.max_angle=0").drift_every == 0  # off: no checks
    assert plan_of("adapter.levels=1").drift_every == 0
    assert not plan_of("adapter.levels=2", "adapter.loss_weights.pseudo_labels=1").pseudo_labels
    assert plan_of("adapter.levels=3", "adapter.loss_weights.smoothed_context=1").smoothed_context
    assert not plan_of(
        "adapter.levels=3", "adapter.loss_weights.smoothed_context=1", "adapter.smoothing.weight=0"
    ).smoothed_context  # the smoother's estimate needs the smoother
    clip_replay = ("adapter.levels=3", "adapter.clip.enabled=true", "adapter.clip.replay=true")
    assert plan_of(*clip_replay).clip_replay
    no_replay = plan_of(*clip_replay, "adapter.replay.enabled=false")
    assert not no_replay.clip_replay


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("adapter.smoothing.weight=-1", "weight must be >= 0"),
        ("adapter.smoothing.order=0", "order >= 1"),
        ("adapter.smoothing.lag=-2", "past, lag >= 0"),
    ],
)
def test_a_bad_smoother_is_refused(override, message):
    with pytest.raises(ValueError, match=message):
        plan_of("adapter.levels=3", override)


def test_experiments_are_their_papers_settings():
    boa = plan_of("experiment=boa")
    assert (boa.levels, boa.teacher, boa.replay, boa.replay_inner, boa.motion, boa.stopping) == (
        2,
        True,
        "random",
        True,
        False,
        False,
    )
    assert compose_config("adapt", ["experiment=boa"]).adapter.inner.first_order is False
    dyna = plan_of("experiment=dynaboa")
    assert (dyna.levels, dyna.teacher, dyna.motion, dyna.replay, dyna.stopping, dyna.context) == (
        2,
        True,
        True,
        "feature",
        True,
        False,
    )
    assert plan_of("experiment=cemr").clip
    assert boa.drift_guard == dyna.drift_guard == 0.0  # CEMR's own guard is not in the papers


def test_a_null_inner_step_count_steps_only_where_the_level_or_a_part_reads_the_clone():
    assert [plan_of(f"adapter.levels={n}").inner_steps for n in range(4)] == [0, 1, 0, 0]
    for needs_clone in (
        ["adapter.replay.retrieval=feature"],
        ["adapter.replay.inner=true"],
        ["adapter.inner.lr_rate=0.1"],
        ["adapter.emit=clone"],
    ):
        assert plan_of("adapter.levels=3", *needs_clone).inner_steps == 1, needs_clone
        assert plan_of("adapter.levels=1", *needs_clone).inner_steps == 1, needs_clone
    # replay off: nothing retrieves by feature, so nothing reads the clone
    assert plan_of("adapter.replay.enabled=false", "adapter.replay.retrieval=feature").inner_steps == 0
    assert plan_of("adapter.levels=3", "adapter.inner.steps=2").inner_steps == 2
    assert plan_of("adapter.levels=0", "adapter.inner.steps=2").inner_steps == 0


def test_the_default_is_the_config_validation_builds_100_to_107_scored_in_session_23():
    """README, "Adaptation": no level-1 step, no teacher and fused Adam tied the default of the time in
    session 21; freezing the stem and the first two stages tied that in session 23."""
    chosen = ["adapter.inner.steps=0", "adapter.teacher.enabled=false", "adapter.outer.optimizer.fused=true"]
    chosen.append("adapter.frozen=[trunk.conv1,trunk.bn1,trunk.layer1,trunk.layer2]")
    scored = compose_config("adapt", chosen)
    scored.adapter.inner.steps = None  # which a default of null resolves to (above)
    assert compose_config("adapt", []) == scored
    assert plan_of() == plan_of(*chosen)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["adapter.levels=4"], "adapter.levels must be 0, 1, 2 or 3"),
        (["adapter.levels=1", "adapter.inner.steps=0"], "must be at least 1 at adapter.levels=1"),
        (["adapter.inner.steps=-1"], "and at least 0 above"),
        (
            ["adapter.inner.steps=0", "adapter.replay.enabled=true", "adapter.replay.retrieval=feature"],
            "adapter.inner.steps=0 cannot retrieve by feature",
        ),
        (["adapter.inner.steps=0", "adapter.inner.lr_rate=0.1"], "it needs adapter.inner.steps >= 1"),
        (["adapter.emit=student"], "adapter.emit must be one of"),
        (["adapter.emit=teacher", "adapter.teacher.enabled=false"], "emit=teacher needs the mean teacher"),
        (["adapter.replay.enabled=true", "adapter.replay.retrieval=cosine"], "adapter.replay.retrieval"),
        (
            ["adapter.replay.enabled=true", "adapter.replay.retrieval=feature", "adapter.replay.inner=true"],
            "known before the inner step",
        ),
        (
            ["adapter.drift_guard.max_angle=-1"],
            r"max_angle must lie in \[0, 180\] degrees \(0: off\), got -1",
        ),
        (["adapter.drift_guard.max_angle=30", "adapter.drift_guard.every=0"], "every must be at least 1"),
        (["adapter.average=1"], r"adapter.average must be null or a decay in \(0, 1\), got 1"),
        (["adapter.average=0"], r"adapter.average must be null or a decay in \(0, 1\), got 0"),
    ],
)
def test_contradictory_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        plan_of(*overrides)


def test_the_inner_step_moves_the_prediction_towards_the_frames_keypoints(parts):
    cfg = adapter_cfg(levels=1)
    cfg.inner.lr, cfg.inner.steps, cfg.inner.max_grad_norm = 3e-4, 3, None  # the raw step (clip: below)
    module = make_module(parts, cfg)
    module.model.eval()  # as on_train_start does: no dropout
    stream = Stream([(0, 0)])
    frame = {"input": stream.img[:1], "keypoints": stream.kp[:1]}
    clone, unadapted = module._adapted_clone(frame)
    adapted = module.predict_body(clone, frame["input"])
    before = levels.losses.keypoint_2d(unadapted.keypoints_2d, frame["keypoints"])
    after = levels.losses.keypoint_2d(adapted.keypoints_2d, frame["keypoints"])
    assert after < 0.7 * before
    # the base weights never move at level 1: the stream puts them back after the frame's prediction
    module.inner.restore()
    base = module.predict_body(module.model, frame["input"])
    assert torch.allclose(base.keypoints_2d, unadapted.keypoints_2d, atol=1e-6)


def test_the_outer_step_scores_the_clone_on_frame_t_minus_k_and_level_three_on_emitted_jitter(parts):
    seen: list[dict] = []

    def capture(module):
        original = module._outer_loss

        def wrapped(clone, frame):
            total, parts_, now = original(clone, frame)
            seen.append({k: float(v) for k, v in parts_.items()})
            return total, parts_, now

        module._outer_loss = wrapped
        return module

    cfg = adapter_cfg(levels=3)
    cfg.loss_weights.emitted_smoothness = 10.0
    cfg.motion.interval = 2
    stream_through(capture(make_module(parts, cfg)), Stream([(0, 0)] * 4))
    # frame 0 has nothing before it; frame 1 has an emitted prediction (order 1) but no frame t-2
    assert [("context" in s, "motion" in s, "emitted_smoothness" in s) for s in seen] == [
        (False, False, False),
        (False, False, True),
        (True, True, True),
        (True, True, True),
    ]
    assert all(s["context"] > 0 and s["emitted_smoothness"] >= 0 for s in seen[2:])
    seen.clear()
    cfg2 = adapter_cfg(levels=2, context={"enabled": False})
    cfg2.motion.interval = 2
    stream_through(capture(make_module(parts, cfg2)), Stream([(0, 0)] * 3))
    assert "context" not in seen[-1] and "motion" in seen[-1] and "emitted_smoothness" not in seen[-1]


def test_emit_clone_records_the_clone_the_outer_step_scored(parts):
    stream = Stream([(0, 0)] * 3)
    updated = stream_through(make_module(parts, adapter_cfg(levels=2, emit="updated")), stream)
    clone = stream_through(make_module(parts, adapter_cfg(levels=2, emit="clone")), stream)
    # same weight trajectory (the emitted prediction does not feed back at level 2) ...
    assert all(
        torch.equal(a, b)
        for a, b in zip(updated.model.state_dict().values(), clone.model.state_dict().values(), strict=True)
    )
    # ... but a different record: the clone's of frame t comes before the outer step on t
    assert not torch.allclose(updated.predictions()["betas"], clone.predictions()["betas"])


def test_emit_teacher_records_the_ema_teacher_after_each_update(parts):
    stream = Stream([(0, 0)] * 3)
    runs = {}
    for emit in ("updated", "teacher"):
        cfg = adapter_cfg(levels=2, emit=emit)
        cfg.teacher.ema = 0.5
        runs[emit] = stream_through(make_module(parts, cfg), stream)
    updated, teacher = runs["updated"], runs["teacher"]
    # the base weights move as with emit=updated (the record does not feed back at level 2) ...
    base_updated, base_teacher = updated.model.state_dict(), teacher.model.state_dict()
    assert all(torch.equal(base_updated[k], base_teacher[k]) for k in base_updated)
    # ... and the last frame's record is the teacher's prediction once it trailed the last update
    with torch.no_grad():
        last = teacher.predict_body(teacher.teacher, stream[2]["img"][None])
    pose = rotmat_to_axis_angle(last.rotmat).reshape(-1, 72)
    assert torch.allclose(teacher.predictions()["pose"][-1:], pose, atol=1e-6)
    assert not torch.allclose(teacher.predictions()["pose"], updated.predictions()["pose"], atol=1e-6)


def test_pose_distance_is_invariant_to_place_and_size_in_the_crop():
    gen = torch.Generator().manual_seed(0)
    kp = torch.cat([torch.rand(3, 49, 2, generator=gen) - 0.5, torch.ones(3, 49, 1)], -1)
    moved = kp.clone()
    moved[..., :2] = kp[..., :2] * 0.4 + torch.tensor([0.3, -0.2])
    index = PoseIndex.build(kp)
    for i in range(3):
        assert index.distances(moved[i])[i].item() == pytest.approx(0.0, abs=1e-12)
    xy, conf = _gt24(kp)
    pose = _normalize(xy, conf)  # centred, unit RMS radius
    assert torch.allclose(pose.mean(1), torch.zeros(3, 2, dtype=pose.dtype), atol=1e-9)
    assert torch.allclose((pose**2).sum(-1).mean(1), torch.ones(3, dtype=pose.dtype))
    empty = kp[0].clone()
    empty[25:, 2] = 0  # no confident GT joint: matches nothing
    assert torch.isinf(index.distances(empty)).all()
    with pytest.raises(ValueError, match=r"pose retrieval: expected keypoints \(N, 49, 3\)"):
        PoseIndex.build(kp[:, :24])


def test_pose_index_retrieves_the_nearest_poses_first_whatever_their_scale():
    gen = torch.Generator().manual_seed(1)
    source = torch.cat([torch.rand(50, 49, 2, generator=gen) - 0.5, torch.ones(50, 49, 1)], -1)
    index = PoseIndex.build(source)
    query = source[17].clone()
    query[:, :2] = query[:, :2] * 2.0 + 0.1  # the same pose, bigger and elsewhere
    query[25:30, 2] = 0  # five joints missing
    near = index.retrieve(query, 3)
    assert near[0] == 17 and len(near) == 3
    dist = index.distances(query)
    assert dist[17] == pytest.approx(0.0, abs=1e-12)
    assert list(dist[near]) == sorted(dist[near].tolist())
    with pytest.raises(ValueError, match="no frames"):
        PoseIndex.build(torch.zeros(0, 49, 3))


def test_pose_distances_are_the_plain_formula_bit_for_bit():
    """The index's cached normalisation (a query covering its confidences) changes no number."""

    def plain(index, keypoints):
        xy, conf = _gt24(keypoints[None])
        weight = torch.minimum(index.conf, conf)
        index_xy, query_xy = _normalize(index.xy, weight), _normalize(xy.expand_as(index.xy), weight)
        sq = ((index_xy - query_xy) ** 2).sum(-1, keepdim=True)
        dist = (weight * sq).sum((-2, -1)) / weight.sum((-2, -1)).clamp(min=1e-12)
        return torch.where((weight[..., 0] > 0).sum(-1) >= 2, dist, torch.full_like(dist, float("inf")))

    gen = torch.Generator().manual_seed(2)
    source = torch.cat([torch.rand(300, 49, 2, generator=gen) * 200, torch.ones(300, 49, 1)], -1)
    mixed = source.clone()
    mixed[::3, 40, 2] = 0.5  # a second confidence pattern in the index
    mixed[::7, 30, 2] = 0
    query = torch.cat([torch.rand(49, 2, generator=gen) * 200, torch.ones(49, 1)], -1)
    missing = query.clone()
    missing[27:31, 2] = 0  # the query does not cover the index's confidences
    for index in (PoseIndex.build(source), PoseIndex.build(mixed)):
        for keypoints in (query, missing, source[4]):
            assert torch.equal(index.distances(keypoints), plain(index, keypoints))
    assert PoseIndex.build(source).distances(source[4])[4] == 0


def test_replayed_samples_weigh_decay_to_the_rank(parts):
    cfg = adapter_cfg(levels=2)
    cfg.replay.decay = 0.5
    module = make_module(parts, cfg)
    module.replay_weights = compose_config("adapt").training.loss_weights
    module.model.eval()
    gen = torch.Generator().manual_seed(2)
    source = {
        "img": torch.randn(2, 3, 32, 32, generator=gen),
        "keypoints": torch.cat([torch.rand(2, 49, 2, generator=gen), torch.ones(2, 49, 1)], -1),
        "pose": torch.zeros(2, 72),
        "betas": torch.zeros(2, 10),
        "joints3d": torch.zeros(2, 24, 4),
        "has_smpl": torch.ones(2),
    }
    with torch.no_grad():
        pred = module.predict_body(module.model, source["img"])
        total = module._replay_loss(pred, source)
        each = [
            levels.losses.labelled_objective(
                module.predict_body(module.model, source["img"][i : i + 1]),
                {k: v[i : i + 1] for k, v in source.items()},
                module.replay_weights,
            )[0].item()
            for i in range(2)
        ]
    assert float(total) == pytest.approx(
        cfg.loss_weights.replay * (2 / 3 * each[0] + 1 / 3 * each[1]), rel=1e-5
    )


def test_the_clip_step_replays_frame_ts_source_samples_when_asked(parts):
    bank = source_bank(5)
    runs = []
    for clip_replay in (False, True):
        cfg = adapter_cfg(levels=3, clip={"replay": clip_replay})
        cfg.replay.enabled, cfg.replay.retrieval, cfg.replay.samples = True, "random", 2
        module = make_module(parts, cfg)
        module.replay_source = (None, bank)
        module.replay_weights = compose_config("adapt").training.loss_weights
        assert module.plan.clip_replay == clip_replay
        runs.append(stream_through(module, Stream([(0, 0)] * 8)))
    plain, replayed = runs
    assert plain.counters["clip_steps"] == replayed.counters["clip_steps"] == 2
    first, second = plain.predictions()["pose"], replayed.predictions()["pose"]
    assert torch.equal(first[:3], second[:3]) and not torch.equal(first[3], second[3])  # clip step at frame 4


def test_adapter_config_keys_of_the_plan_exist():
    adapter = compose_config("adapt").adapter
    for key in (
        "emit",
        "context.enabled",
        "replay.retrieval",
        "replay.decay",
        "replay.inner",
        "loss_weights.context",
        "loss_weights.emitted_smoothness",
        "smoothing.weight",
        "smoothing.lag",
        "clip.replay",
        "loss_weights.pseudo_labels",
        "loss_weights.smoothed_context",
    ):
        assert OmegaConf.select(adapter, key) is not None, key


def test_the_inner_gradient_is_clipped_to_max_grad_norm(parts):
    cfg = adapter_cfg(levels=1)
    cfg.inner.lr, cfg.inner.steps, cfg.inner.max_grad_norm = 1e-3, 1, 1e-3
    module = make_module(parts, cfg)
    module.model.eval()
    stream = Stream([(0, 0)])
    base = [p.detach().clone() for p in module.model.parameters()]
    clone, _ = module._adapted_clone({"input": stream.img[:1], "keypoints": stream.kp[:1]})
    moved = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(clone.parameters(), base, strict=True)))
    assert float(moved) == pytest.approx(1e-3 * 1e-3, rel=2e-3)  # lr x the clipped norm (float32 weights)


def test_a_gradient_below_max_grad_norm_takes_the_raw_step_exactly(parts):
    """Below the limit the gradient is not rescaled at all: the clone equals w - lr * g bit for bit."""
    cfg = adapter_cfg(levels=1)
    cfg.inner.lr, cfg.inner.steps, cfg.inner.max_grad_norm = 1e-3, 1, 1e30
    module = make_module(parts, cfg)
    module.model.eval()
    stream = Stream([(0, 0)])
    frame = {"input": stream.img[:1], "keypoints": stream.kp[:1]}
    pred = module.predict_body(module.model, frame["input"])
    loss, _ = levels.frame_objective(pred, frame["keypoints"], module.pose_prior, cfg.loss_weights)
    params = list(module.model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    params = [p.detach().clone() for p in params]  # a first-order clone moves the model itself
    clone, _ = module._adapted_clone(frame)
    for after, before, grad in zip(clone.parameters(), params, grads, strict=True):
        expected = before if grad is None else before + (-1e-3 * grad)
        assert torch.equal(after, expected)


def test_a_clone_thrown_off_by_its_step_is_never_emitted(parts):
    cfg = adapter_cfg(levels=1)
    cfg.inner.lr, cfg.inner.max_grad_norm = 1e30, None
    module = stream_through(make_module(parts, cfg), Stream([(0, 0)] * 2))
    assert module.counters["skipped_steps"] >= 1
    assert all(torch.isfinite(v).all() for v in module.predictions().values())


def test_the_anchor_pulls_the_updated_weights_towards_the_source_model(parts):
    """After frame 1's outer step, anchor a moves every weight from where the step left it a of the way
    back to the source weights, exactly (a = 1: the source model again); level 1 has no anchor."""
    stream = Stream([(0, 0)])
    plain = stream_through(make_module(parts, adapter_cfg(levels=2)), stream)
    half = stream_through(make_module(parts, adapter_cfg(levels=2, anchor=0.5)), stream)
    full = stream_through(make_module(parts, adapter_cfg(levels=2, anchor=1.0)), stream)
    source = make_module(parts, adapter_cfg(levels=2)).model.state_dict()
    stepped, pulled = plain.model.state_dict(), half.model.state_dict()
    moved = [k for k in source if not torch.equal(stepped[k], source[k])]
    assert moved  # the step did move the weights
    for k in moved:
        assert torch.equal(pulled[k], torch.lerp(stepped[k], source[k], 0.5))
        assert torch.equal(full.model.state_dict()[k], source[k])
    assert Plan.from_config(adapter_cfg(levels=1, anchor=0.5)).anchor == 0.0
    with pytest.raises(ValueError, match=r"adapter.anchor must lie in \[0, 1\], got 1.5"):
        Plan.from_config(adapter_cfg(levels=2, anchor=1.5))


def test_replay_from_a_dataset_without_source_frames_is_refused_before_any_work(compose_cfg, tmp_path):
    from cemr.adapt.run import run

    video = ["dataset=video", "dataset.video_path=clip.mp4", "dataset.keypoints_path=clip_openpose"]
    with pytest.raises(ValueError, match=r"dataset=video has none .*pass adapter.replay.enabled=false"):
        run(compose_cfg("adapt", video))
    assert not (tmp_path / "data").exists()  # nothing prepared, no source model trained
    without = compose_cfg("adapt", [*video, "adapter.replay.enabled=false"])
    assert Plan.from_config(without.adapter).replay is None
