"""AdaptationModule behaviour on a tiny model and a fabricated stream: which weights each level
touches, sequence resets, NaN frames, dynamic stopping bounds and kill/resume equivalence."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset

from cemr.adapt.module import AdaptationModule
from cemr.adapt.parallel import PaddedStream, gather_predictions
from cemr.adapt.resume import StreamCheckpoint, remaining_stream
from cemr.geometry import rotmat_to_axis_angle
from cemr.models import HMR, VIBE
from tests.conftest import compose_config

CROP = 32


def adapter_cfg(**overrides):
    cfg = compose_config("adapt").adapter
    merged = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    merged.replay.enabled = False
    merged.stopping.enabled = "stopping" in overrides
    merged.inner.lr, merged.outer.lr, merged.clip.lr = 1e-4, 1e-4, 1e-4
    merged.clip.length, merged.clip.stride = 4, 4
    merged.clip.enabled = overrides.get("clip", {}).get("enabled", True)  # off by default, on here
    merged.teacher.enabled = overrides.get("teacher", {}).get("enabled", True)  # likewise
    if merged.inner.steps is None:  # a level-1 step at every level here, unless a test asks otherwise
        merged.inner.steps = 1
    merged.frozen = overrides.get("frozen", [])  # every weight adapted here, unless a test freezes some
    return merged


class Stream(Dataset):
    """Frames of (seq, person) tracks with random crops and keypoints; `nan_at` poisons one frame."""

    def __init__(self, tracks: list[tuple[int, int]], nan_at: int | None = None, seed: int = 0):
        self.tracks = tracks
        gen = torch.Generator().manual_seed(seed)
        n = len(tracks)
        self.img = torch.randn(n, 3, CROP, CROP, generator=gen)
        self.kp = torch.cat([torch.rand(n, 49, 2, generator=gen) * 1.6 - 0.8, torch.ones(n, 49, 1)], -1)
        if nan_at is not None:
            self.kp[nan_at, :, :2] = float("nan")

    def __len__(self):
        return len(self.tracks)

    def __getitem__(self, i):
        seq, person = self.tracks[i]
        return {
            "img": self.img[i],
            "keypoints": self.kp[i],
            "seq_id": torch.tensor(seq),
            "person": torch.tensor(person),
            "index": torch.tensor(i),
            "has_smpl": torch.tensor(0.0),
            "pose": torch.zeros(72),
            "betas": torch.zeros(10),
        }


def source_bank(count: int, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    """Labelled source samples with random crops and keypoints, to replay (a dataset's rows)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "img": torch.randn(3, CROP, CROP, generator=gen),
            "keypoints": torch.cat([torch.rand(49, 2, generator=gen), torch.ones(49, 1)], -1),
            "pose": torch.zeros(72),
            "betas": torch.zeros(10),
            "joints3d": torch.zeros(24, 4),
            "has_smpl": torch.tensor(1.0),
        }
        for _ in range(count)
    ]


def make_module(parts, cfg, seed=0, pose_barrier=None):
    body, prior, mean_params = parts
    torch.manual_seed(seed)
    model = HMR(
        mean_params, trunk="resnet18", trunk_kwargs={"channels": [8, 8, 16, 16]}, norm="group", crop_size=CROP
    )
    return AdaptationModule(
        model, body, prior, cfg, focal_length=5000.0, crop_size=CROP, seed=seed, pose_barrier=pose_barrier
    )


def stream_through(module, stream, callbacks=(), loader=None, plugins=None):
    trainer = L.Trainer(
        plugins=plugins,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader or DataLoader(stream, batch_size=1))
    return module


def weights(module):
    return {k: v.clone() for k, v in module.model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_level_one_adapts_a_clone_and_leaves_the_base_weights(parts):
    module = make_module(parts, adapter_cfg(levels=1))
    before = weights(module)
    stream_through(module, Stream([(0, 0)] * 3))
    assert same(before, weights(module))
    preds = module.predictions()
    # the scored prediction is the adapted clone's, not the source model's
    source = make_module(parts, adapter_cfg(levels=0))
    with torch.no_grad():
        unadapted = source.model.eval()(Stream([(0, 0)] * 3).img[:1]).betas
    assert not torch.allclose(preds["betas"][0], unadapted[0])


def test_level_two_changes_the_base_weights_and_updates_the_teacher(parts):
    module = make_module(parts, adapter_cfg(levels=2))
    before = weights(module)
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    stream_through(module, Stream([(0, 0)] * 3))
    after = weights(module)
    assert not same(before, after)
    assert module.counters["outer_steps"] >= 3
    assert not same(teacher_before, module.teacher.state_dict())
    key = "regressor.decshape.weight"
    t = module.teacher.state_dict()[key]
    assert not torch.equal(t, after[key])  # the teacher trails the student (EMA 0.1), it is not a copy


@pytest.mark.parametrize("levels", [2, 3])
def test_frozen_submodules_keep_the_source_weights_and_get_no_gradient(parts, levels):
    frozen = ["trunk.conv1", "trunk.bn1", "trunk.layer1"]
    module = make_module(parts, adapter_cfg(levels=levels, frozen=frozen))
    before = weights(module)
    stream_through(module, Stream([(0, 0)] * 5))
    after = weights(module)
    held = [k for k in before if any(k.startswith(name + ".") for name in frozen)]
    # conv1, bn1's weight and bias; layer1: 2 blocks x (2 convs, 2 norms), a projection from the 64-wide stem
    assert len(held) == 1 + 2 + 2 * 6 + 3
    assert all(torch.equal(before[k], after[k]) for k in held)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("trunk.layer2."))
    assert all(p.grad is None for p in module.model.trunk.layer1.parameters())


def crop_by_crop(stage, inputs, output):
    """A forward hook: the stage's output for each crop of the batch computed alone."""
    (x,) = inputs
    return torch.cat([stage.forward(x[i : i + 1]) for i in range(len(x))])


def test_reading_the_frozen_stages_once_per_image_streams_as_the_whole_forward_pass_bit_for_bit(parts):
    """Every level, the teacher, the drift guard and random replay read the frozen stages' maps of
    frame t, of frame t-k (kept in the history) and of cached source samples; run the whole trunk
    every time instead (stem_stages=0, no cache) and the stream is the same to the bit.

    The stream runs the frozen stages on one crop at a time; a convolution may round a crop
    differently alone and in a batch (oneDNN's do on the benchmark's maps), so the whole-trunk run
    does the same there."""
    bank = source_bank(3)
    runs = []
    for reuse in (True, False):
        cfg = adapter_cfg(levels=3, frozen=["trunk.conv1", "trunk.bn1", "trunk.layer1"])
        cfg.replay.enabled, cfg.replay.retrieval, cfg.replay.samples = True, "random", 2
        cfg.drift_guard.every = 2
        module = make_module(parts, cfg)
        module.replay_source = (None, bank)
        module.replay_weights = compose_config("adapt").training.loss_weights
        assert module.stem_stages == 5  # conv1, bn1, act1, maxpool, layer1
        if not reuse:
            module.stem_stages, module.replay_cache_size = 0, 0
            for name in ("conv1", "bn1", "act1", "maxpool", "layer1"):
                getattr(module.model.trunk, name).register_forward_hook(crop_by_crop)
        runs.append(stream_through(module, Stream([(0, 0)] * 6 + [(1, 0)] * 4)))
    reused, whole = runs
    assert reused.counters["clip_steps"] == 2 and reused.counters["outer_steps"] == 10
    assert len(reused.replay_cache) == 3 and len(whole.replay_cache) == 0  # 20 draws of 3 samples
    ours, theirs = reused.predictions(), whole.predictions()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert same(weights(reused), weights(whole))
    assert same(reused.teacher.state_dict(), whole.teacher.state_dict())


def test_the_outer_step_scores_frame_t_minus_k_on_its_own_frozen_stage_maps_and_keypoints(parts):
    cfg = adapter_cfg(levels=2, frozen=["trunk.conv1", "trunk.bn1", "trunk.layer1"])
    cfg.teacher.enabled = False
    module = make_module(parts, cfg)
    stream = Stream([(0, 0)] * 7)
    stream_through(module, stream, loader=DataLoader(Subset(stream, range(6)), batch_size=1))
    module.model.eval()  # no dropout, as in the stream
    k = cfg.motion.interval
    earlier = module.history[-k]  # frame 6 - k = 1
    with torch.no_grad():
        assert torch.equal(earlier["input"], module._inputs(stream.img[1:2]))
        frame = {"img": stream.img[6:7], "keypoints": stream.kp[6:7], "past": None}
        frame["input"] = module._inputs(frame["img"])
        _, parts_, _ = module._outer_loss(module.model, frame)
        alone = module.predict_body(module.model, earlier["input"])
        context, _ = module._frame_objective(alone, stream.kp[1:2])
    assert float(parts_["context"]) == pytest.approx(cfg.loss_weights.context * float(context), rel=1e-5)


def test_an_unknown_frozen_submodule_is_refused_with_the_ones_there_are(parts):
    with pytest.raises(ValueError, match=r"no submodule 'trunk.layer9'.*trunk.layer1"):
        make_module(parts, adapter_cfg(levels=2, frozen=["trunk.layer9"]))


def test_reset_sequence_restarts_from_the_source_weights(parts):
    tracks = [(0, 0)] * 3 + [(1, 0)] * 2
    stream = Stream(tracks)
    reset = stream_through(make_module(parts, adapter_cfg(levels=2, reset="sequence")), stream)
    # sequence 1 alone from the source weights gives the same predictions as after the reset
    alone = Stream([(1, 0)] * 2)
    alone.img, alone.kp = stream.img[3:], stream.kp[3:]
    fresh = stream_through(make_module(parts, adapter_cfg(levels=2, reset="sequence")), alone)
    assert torch.allclose(reset.predictions()["betas"][3:], fresh.predictions()["betas"], atol=1e-6)
    carried = stream_through(make_module(parts, adapter_cfg(levels=2, reset="none")), stream)
    assert not torch.allclose(carried.predictions()["betas"][3:], fresh.predictions()["betas"], atol=1e-6)


def test_sequence_pull_moves_the_weights_towards_the_source_at_each_new_sequence_only(parts):
    tracks = [(0, 0)] * 3 + [(0, 1)] * 2 + [(1, 0)] * 2  # a new person, then a new sequence
    module = make_module(parts, adapter_cfg(levels=2, sequence_pull=0.25))
    source = [p.detach().clone() for p in module.model.parameters()]
    at_start, after = [], WeightsAfterEachFrame()
    start_track = module._start_track

    def spy(track):
        start_track(track)
        at_start.append([p.detach().clone() for p in module.model.parameters()])

    module._start_track = spy
    stream_through(module, Stream(tracks), callbacks=[after])
    assert all(torch.equal(a, b) for a, b in zip(at_start[1], after.seen[2], strict=True))  # same sequence
    pulled = [w + 0.25 * (s - w) for w, s in zip(after.seen[4], source, strict=True)]
    for got, by_hand in zip(at_start[2], pulled, strict=True):
        torch.testing.assert_close(got, by_hand, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="sequence_pull must lie in"):
        make_module(parts, adapter_cfg(levels=2, sequence_pull=1.5))


def test_a_drift_guard_that_never_fires_streams_as_without(parts):
    tracks = [(0, 0)] * 5 + [(1, 0)] * 3
    plain = stream_through(make_module(parts, adapter_cfg(levels=3)), Stream(tracks))
    cfg = adapter_cfg(levels=3, drift_guard={"max_angle": 180.0, "every": 1})
    guarded = stream_through(make_module(parts, cfg), Stream(tracks))
    assert guarded.counters["drift_resets"] == 0
    assert same(weights(plain), weights(guarded))
    assert all(
        torch.equal(plain.predictions()[k], guarded.predictions()[k]) for k in ("pose", "betas", "cam")
    )


def test_the_drift_guard_restarts_from_the_source_and_emits_the_source_prediction(parts):
    # max_angle so small that any outer step trips it: frames 1, 3, 5 of the track (every 2) are checked
    cfg = adapter_cfg(levels=2, drift_guard={"max_angle": 1e-9, "every": 2})
    module, after = make_module(parts, cfg), WeightsAfterEachFrame()
    source = [p.detach().clone() for p in module.model.parameters()]
    stream = Stream([(0, 0)] * 5)
    stream_through(module, stream, callbacks=[after])
    assert module.counters["drift_resets"] == 3
    for frame, seen in enumerate(after.seen):
        at_source = all(torch.equal(w, s) for w, s in zip(seen, source, strict=True))
        assert at_source == (frame % 2 == 0), frame
    assert all(torch.equal(t, s) for t, s in zip(module.teacher.parameters(), source, strict=True))
    assert not module.optimizers(use_pl_optimizer=False)[0].state  # a fresh Adam state after the last reset
    unadapted = stream_through(make_module(parts, adapter_cfg(levels=0)), stream).predictions()
    emitted = module.predictions()
    for key in ("pose", "betas", "cam"):
        torch.testing.assert_close(emitted[key][::2], unadapted[key][::2], rtol=0, atol=1e-6)
        assert not torch.allclose(emitted[key][1], unadapted[key][1], atol=1e-6)


class WeightsAfterEachFrame(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append([p.detach().clone() for p in pl_module.model.parameters()])


@pytest.mark.parametrize("reset", ["none", "sequence"])
def test_the_averaged_weights_are_the_ema_of_the_weights_after_each_frame(parts, reset):
    tracks = [(0, 0)] * 5 + [(1, 0)] * 3  # a clip step at frame 4 of track 0
    unaveraged = make_module(parts, adapter_cfg(levels=3, reset=reset, average=None))
    plain = stream_through(unaveraged, Stream(tracks))
    after = WeightsAfterEachFrame()
    module = make_module(parts, adapter_cfg(levels=3, reset=reset, average=0.7))
    source = [p.detach().clone() for p in module.model.parameters()]
    stream_through(module, Stream(tracks), callbacks=[after])
    expected = source
    for i, weights_now in enumerate(after.seen):
        if reset == "sequence" and i == 5:  # sequence 1 starts again from the source model
            expected = source
        expected = [a * 0.7 + w * (1 - 0.7) for a, w in zip(expected, weights_now, strict=True)]
    for averaged, by_hand in zip(module.average.parameters(), expected, strict=True):
        torch.testing.assert_close(averaged, by_hand, rtol=1e-6, atol=1e-7)
    assert not same(dict(module.average.state_dict()), weights(module))
    # the average is never in the loop: the stream and its last weights are what they are without it
    for key, value in plain.predictions().items():
        assert torch.equal(value, module.predictions()[key]), key
    assert same(weights(plain), weights(module))


def test_a_nan_frame_is_skipped_and_never_poisons_the_model(parts):
    module = make_module(parts, adapter_cfg(levels=2))
    stream_through(module, Stream([(0, 0)] * 4, nan_at=2))
    assert module.counters["skipped_steps"] >= 1
    assert all(torch.isfinite(v).all() for v in module.model.state_dict().values())
    assert torch.isfinite(module.predictions()["pose"]).all()


@pytest.mark.parametrize("tau,extra_per_frame", [(-1.0, 3), (10.0, 0)])
def test_dynamic_stopping_bounds(parts, tau, extra_per_frame):
    cfg = adapter_cfg(levels=2, stopping={"tau": tau, "max_extra_steps": 3})
    module = stream_through(make_module(parts, cfg), Stream([(0, 0)] * 2))
    assert module.counters["extra_steps"] == 2 * extra_per_frame
    assert module.counters["outer_steps"] == 2 * (1 + extra_per_frame)


def test_level_three_takes_clip_steps_every_stride(parts):
    module = stream_through(make_module(parts, adapter_cfg(levels=3)), Stream([(0, 0)] * 8 + [(1, 0)] * 3))
    assert module.counters["clip_steps"] == 2  # frames 4 and 8 of track 0; track 1 is too short
    assert module.counters["skipped_steps"] == 0


def test_level_three_without_its_clip_step_streams_as_level_two(parts):
    stream = Stream([(0, 0)] * 8 + [(1, 0)] * 3)
    three = stream_through(make_module(parts, adapter_cfg(levels=3, clip={"enabled": False})), stream)
    two = stream_through(make_module(parts, adapter_cfg(levels=2)), stream)
    assert three.counters["clip_steps"] == 0
    assert same(weights(three), weights(two))
    for key, value in two.predictions().items():
        assert torch.equal(three.predictions()[key], value), key


def test_the_pose_barrier_acts_only_on_poses_less_plausible_than_its_threshold(parts):
    cfg = adapter_cfg(levels=2, loss_weights={"pose_barrier": 0.5})
    with pytest.raises(ValueError, match="needs the barrier's prior cost"):
        make_module(parts, cfg)
    stream = Stream([(0, 0)] * 4)
    plain = stream_through(make_module(parts, adapter_cfg(levels=2)), stream)
    never = stream_through(make_module(parts, cfg, pose_barrier=1e9), stream)
    assert same(weights(never), weights(plain))  # no pose above it: a zero term with a zero gradient
    assert never.counters["barrier_frames"] == 0
    for key, value in plain.predictions().items():
        assert torch.equal(never.predictions()[key], value), key
    always = stream_through(make_module(parts, cfg, pose_barrier=-1e6), stream)
    assert not same(weights(always), weights(plain))
    assert always.counters["barrier_frames"] == 4

    module = make_module(parts, cfg, pose_barrier=-1e6)
    pred = module.predict_body(module.model, stream.img[:2])
    _, terms = module._frame_objective(pred, stream.kp[:2])
    costs = parts[1](rotmat_to_axis_angle(pred.rotmat[:, 1:]).reshape(2, 69))
    assert terms["pose_barrier"].item() == pytest.approx(0.5 * (costs.mean().item() + 1e6), rel=1e-6)


def test_the_pose_barrier_threshold_is_the_quantile_of_the_labelled_source_poses(parts):
    from types import SimpleNamespace

    from cemr.adapt.run import pose_barrier
    from cemr.body.prior import cost_quantile

    prior = parts[1]
    poses = np.random.default_rng(0).normal(scale=0.3, size=(50, 72)).astype(np.float32)
    has_smpl = np.r_[np.ones(40), np.zeros(10)]
    poses[40:] = 10.0  # unlabelled rows: never counted
    source = SimpleNamespace(path="source_train.npz", data={"pose": poses, "has_smpl": has_smpl})
    adapter = OmegaConf.create({"pose_barrier": {"quantile": 0.9}})
    assert pose_barrier(adapter, prior, source) == cost_quantile(prior, poses[:40], 0.9)
    source.data["has_smpl"] = np.zeros(50)
    with pytest.raises(ValueError, match="source_train.npz: no SMPL poses"):
        pose_barrier(adapter, prior, source)


def test_a_guarded_clip_step_that_does_not_lower_the_clip_loss_is_undone(parts):
    """At clip lr 10 every clip step sends the weights off; the guard puts back the weights and the clip
    optimiser's (empty) state, so the stream is level 3 without its clip step, frame for frame."""
    stream = Stream([(0, 0)] * 8 + [(1, 0)] * 3)
    cfg = adapter_cfg(levels=3, clip={"guard": True})
    cfg.clip.lr = 10.0
    guarded = stream_through(make_module(parts, cfg), stream)
    plain = stream_through(make_module(parts, adapter_cfg(levels=3, clip={"enabled": False})), stream)
    assert guarded.counters["clip_steps"] == guarded.counters["clip_steps_undone"] == 2
    assert guarded.optimizers(use_pl_optimizer=False)[1].state_dict()["state"] == {}
    assert same(weights(guarded), weights(plain))
    for key, value in plain.predictions().items():
        assert torch.equal(guarded.predictions()[key], value), key


def test_the_clip_guard_keeps_a_step_that_lowers_the_clip_loss_and_undoes_a_non_finite_one(parts):
    from cemr.adapt import levels

    module = make_module(parts, adapter_cfg(levels=3, clip={"guard": True}))
    stream_through(module, Stream([(0, 0)] * 2))  # attaches a trainer and its optimisers
    clip = Stream([(0, 0)] * 4, seed=1)
    images, keypoints = clip.img, clip.kp
    good = [p.detach().clone() for p in module.model.parameters()]
    bad = [p + 0.5 * torch.randn_like(p) for p in good]

    def load(values):
        with torch.no_grad():
            for p, v in zip(module.model.parameters(), values, strict=True):
                p.copy_(v)

    def clip_loss():
        with torch.no_grad():
            pred = module.predict_body(module.model, images)
            return float(levels.clip_objective(pred, keypoints, module.cfg.loss_weights)[0])

    load(bad)
    worse = clip_loss()
    undo = module._clip_guard(images, [None] * 4, keypoints)
    load(good)
    assert clip_loss() < worse  # the premise: the step from `bad` to `good` lowers the clip loss
    undo()
    assert module.counters["clip_steps_undone"] == 0
    assert all(torch.equal(p, g) for p, g in zip(module.model.parameters(), good, strict=True))

    undo = module._clip_guard(images, [None] * 4, keypoints)
    load([torch.full_like(p, float("nan")) for p in good])
    undo()
    assert module.counters["clip_steps_undone"] == 1
    assert all(torch.equal(p, g) for p, g in zip(module.model.parameters(), good, strict=True))


def test_pseudo_labels_act_in_the_clip_step_only(parts):
    stream = Stream([(0, 0)] * 8)
    plain = stream_through(make_module(parts, adapter_cfg(levels=3)), stream)
    cfg = adapter_cfg(levels=3, loss_weights={"pseudo_labels": 10.0})
    pseudo = stream_through(make_module(parts, cfg), stream)
    assert pseudo.plan.pseudo_labels and not plain.plan.pseudo_labels
    assert pseudo.counters["clip_steps"] == plain.counters["clip_steps"] == 2
    first, second = plain.predictions(), pseudo.predictions()
    assert torch.equal(first["pose"][:3], second["pose"][:3])  # frame 4 (index 3) holds the first clip step
    assert not same(weights(plain), weights(pseudo))


def test_the_smoothed_context_is_the_smoother_at_frame_t_minus_k_of_the_frames_emitted_before_t(parts):
    from cemr.adapt.smoothing import smooth_pose
    from cemr.geometry import axis_angle_to_rotmat, rotmat_to_axis_angle

    cfg = adapter_cfg(levels=3, loss_weights={"smoothed_context": 10.0}, smoothing={"past": 6, "lag": 3})
    cfg.motion.interval = 2
    module = make_module(parts, cfg)
    assert module.plan.smoothed_context and module.history.maxlen == max(8, cfg.clip.length)
    pose = torch.from_numpy(np.random.default_rng(2).normal(scale=0.3, size=(11, 72)))
    for frame in pose:
        module.history.append({"rotmat": axis_angle_to_rotmat(frame.view(1, 24, 3))})
    # frames t-8 .. t-1 are the last 8 of the 11; frame t-2 is the 7th of them (its lag is 1)
    expected = smooth_pose(pose[-8:].numpy(), cfg.smoothing.weight, 1, past=6, lag=1)[-2]
    got = rotmat_to_axis_angle(module._smoothed_context_rotations()).reshape(72)
    torch.testing.assert_close(got, torch.from_numpy(expected), atol=1e-9, rtol=0)


def test_the_smoothed_context_changes_the_stream_from_the_first_context_frame_on(parts):
    stream = Stream([(0, 0)] * 8)
    plain = stream_through(make_module(parts, adapter_cfg(levels=3)), stream)
    cfg = adapter_cfg(levels=3, loss_weights={"smoothed_context": 10.0})
    pseudo = stream_through(make_module(parts, cfg), stream)
    first, second = plain.predictions()["pose"], pseudo.predictions()["pose"]
    k = cfg.motion.interval  # frame k is the first with a context frame (t - k = 0)
    assert torch.equal(first[:k], second[:k]) and not torch.equal(first[k], second[k])


class Kill(L.Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.frames_done == self.at:
            raise RuntimeError("killed")


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,tracks,every,kill_at",
    [
        ("hmr", [(0, 0)] * 4 + [(1, 0)] * 3, 2, 5),
        # VIBE, killed mid-track: the cached features of frames 2-4 must come back with the state
        ("vibe", [(0, 0)] * 6 + [(1, 0)] * 3, 5, 6),
    ],
)
def test_resume_after_a_kill_equals_an_uninterrupted_run(parts, tmp_path, model, tracks, every, kill_at):
    make = {"hmr": make_module, "vibe": make_vibe_module}[model]
    stream = Stream(tracks)
    cfg = adapter_cfg(levels=3, average=0.5)
    uninterrupted = stream_through(make(parts, cfg), stream)
    full = uninterrupted.predictions()
    state = tmp_path / "adapt_state.pt"
    with pytest.raises(RuntimeError, match="killed"):
        stream_through(make(parts, cfg), stream, callbacks=[StreamCheckpoint(state, every), Kill(kill_at)])
    resumed = make(parts, cfg)
    done = resumed.load_resume_state(state)
    assert done == (kill_at - 1) // every * every  # the last checkpoint before the kill
    loader = remaining_stream(DataLoader(stream, batch_size=1), done)
    stream_through(resumed, stream, loader=loader)
    for key, value in full.items():
        assert torch.equal(value, resumed.predictions()[key]), key
    assert same(uninterrupted.average.state_dict(), resumed.average.state_dict())


def test_checkpoint_interval_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every"):
        StreamCheckpoint(tmp_path / "s.pt", 0)


@pytest.mark.parametrize("init_scale,skipped", [(2.0**60, 3), (1.0, 0)])
def test_under_a_gradient_scaler_overflowing_steps_are_skipped_by_the_scaler(parts, init_scale, skipped):
    # 16-mixed on CPU autocasts to float16 like CUDA does; a huge loss scale overflows every gradient
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    module = make_module(parts, adapter_cfg(levels=2))
    before = weights(module)
    stream_through(module, Stream([(0, 0)] * 3), plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert module.counters["skipped_steps"] == skipped
    assert module.counters["outer_steps"] == 3 - skipped
    assert same(before, weights(module)) == (skipped == 3)
    assert scaler.get_scale() == init_scale / 2**skipped  # halved once per overflowing step
    assert torch.isfinite(module.predictions()["pose"]).all()


def test_padding_steps_adapt_nothing_and_record_nothing(parts):
    stream = Stream([(0, 0)] * 2)
    padded = PaddedStream(stream, [0, 1], 4)
    assert len(padded) == 4 and padded[3] == {"padding": torch.tensor(True)}
    module = stream_through(make_module(parts, adapter_cfg(levels=2)), stream, loader=DataLoader(padded))
    plain = stream_through(make_module(parts, adapter_cfg(levels=2)), stream)
    assert module.frames_done == 2 and module.counters == plain.counters
    assert same(weights(module), weights(plain))
    with pytest.raises(ValueError, match="length 1 < the 2 frames"):
        PaddedStream(stream, [0, 1], 1)


def test_gathering_one_process_keeps_its_predictions_and_refuses_none():
    local = {"index": np.array([2, 0]), "pose": np.zeros((2, 72)), "betas": np.zeros((2, 10))}
    predictions, counters = gather_predictions(local, {"outer_steps": 2.0}, world_size=1)
    assert predictions is local and counters == {"outer_steps": 2.0}
    with pytest.raises(RuntimeError, match="no frames were adapted"):
        gather_predictions(None, {"outer_steps": 0.0}, world_size=1)


def test_each_ddp_rank_keeps_its_own_stream_checkpoint(tmp_path):
    from types import SimpleNamespace

    callback = StreamCheckpoint(tmp_path / "adapt_state.pt", 10)
    one = SimpleNamespace(world_size=1, global_rank=0)
    assert callback.rank_path(one) == tmp_path / "adapt_state.pt"
    paths = {callback.rank_path(SimpleNamespace(world_size=4, global_rank=r)) for r in range(4)}
    assert paths == {tmp_path / f"adapt_state.rank{r}of4.pt" for r in range(4)}


SEQ_LEN = 4


def make_vibe_module(parts, cfg, seed=0):
    body, prior, mean_params = parts
    torch.manual_seed(seed)
    model = VIBE(
        mean_params,
        trunk="resnet18",
        trunk_kwargs={"channels": [8, 8, 16, 16]},
        norm="group",
        crop_size=CROP,
        seq_len=SEQ_LEN,
        n_layers=1,
        hidden_size=16,
    )
    return AdaptationModule(model, body, prior, cfg, focal_length=5000.0, crop_size=CROP, seed=seed)


def test_a_sequence_model_predicts_each_frame_from_its_causal_window_in_the_stream(parts):
    """With an inner lr of 0 the clone is the source model: each frame's prediction must be the model
    run on frames t-3..t of its track (the track's first frame before its start)."""
    cfg = adapter_cfg(levels=1)
    cfg.inner.lr = 0.0
    tracks = [(0, 0)] * 6 + [(1, 0)] * 3
    stream = Stream(tracks)
    module = make_vibe_module(parts, cfg)
    model = make_vibe_module(parts, cfg).model.eval()
    predicted = stream_through(module, stream).predictions()["betas"]
    starts = {0: 0, 1: 6}
    with torch.no_grad():
        for t, (seq, _) in enumerate(tracks):
            window = [max(starts[seq], i) for i in range(t - SEQ_LEN + 1, t + 1)]
            expected = model(stream.img[window][None]).betas[0, -1]
            assert torch.allclose(predicted[t], expected, atol=1e-5), t


@pytest.mark.parametrize("levels", [1] + [pytest.param(n, marks=pytest.mark.slow) for n in (2, 3)])
def test_a_sequence_models_prediction_never_depends_on_later_frames(parts, levels):
    tracks = [(0, 0)] * 8
    stream, changed = Stream(tracks), Stream(tracks, seed=1)
    changed.img[:5], changed.kp[:5] = stream.img[:5], stream.kp[:5]  # frames 5-7 differ
    cfg = adapter_cfg(levels=levels)
    first = stream_through(make_vibe_module(parts, cfg), stream).predictions()
    second = stream_through(make_vibe_module(parts, cfg), changed).predictions()
    for key in ("pose", "betas", "cam"):
        assert torch.equal(first[key][:5], second[key][:5]), key
        assert not torch.equal(first[key][5:], second[key][5:]), key


@pytest.mark.slow
def test_levels_two_and_three_adapt_the_trunk_gru_and_regressor_of_a_sequence_model(parts):
    module = make_vibe_module(parts, adapter_cfg(levels=3))
    before = weights(module)
    stream_through(module, Stream([(0, 0)] * 8))
    after = weights(module)
    for key in ("trunk.conv1.weight", "encoder.gru.weight_hh_l0", "regressor.decpose.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert module.counters["clip_steps"] == 2 and module.counters["skipped_steps"] == 0


def test_the_optimizers_are_built_from_the_config(parts):
    cfg = adapter_cfg(levels=3)
    cfg.outer.lr, cfg.clip.lr, cfg.outer.betas = 2e-4, 5e-5, [0.8, 0.95]
    outer, clip = make_module(parts, cfg).configure_optimizers()
    assert type(outer) is torch.optim.Adam and type(clip) is torch.optim.Adam
    assert outer.param_groups[0]["lr"] == 2e-4 and clip.param_groups[0]["lr"] == 5e-5
    assert list(outer.param_groups[0]["betas"]) == list(clip.param_groups[0]["betas"]) == [0.8, 0.95]
    cfg.outer.optimizer = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": "${..lr}", "momentum": 0.9}
    outer, _ = make_module(parts, cfg).configure_optimizers()
    assert type(outer) is torch.optim.SGD and outer.param_groups[0]["lr"] == 2e-4


class RecordingLogger(L.pytorch.loggers.Logger):
    """Keeps every (step, metrics) the trainer writes."""

    def __init__(self):
        super().__init__()
        self.records = []

    name, version = "recording", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.records.append((step, dict(metrics)))


def logged_stream(parts, monkeypatch, log_everything: bool):
    if log_everything:
        monkeypatch.setattr(AdaptationModule, "_logs_this_step", lambda self: True)
    calls, log = [], AdaptationModule.log
    monkeypatch.setattr(
        AdaptationModule, "log", lambda self, name, *a, **k: calls.append(name) or log(self, name, *a, **k)
    )
    logger = RecordingLogger()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=logger,
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(make_module(parts, adapter_cfg(levels=3)), DataLoader(Stream([(0, 0)] * 5), batch_size=1))
    monkeypatch.undo()
    return logger.records, len(calls)


def test_values_are_logged_only_on_the_steps_the_loggers_write_and_they_get_the_same(parts, monkeypatch):
    """Logging every frame's parts and counters costs a sync and Lightning's bookkeeping per value; the
    module skips the frames whose values the loggers would drop, and the loggers see the same records."""
    gated, gated_calls = logged_stream(parts, monkeypatch, log_everything=False)
    everything, all_calls = logged_stream(parts, monkeypatch, log_everything=True)
    assert gated == everything
    assert gated_calls < all_calls * 3 / 4  # 2 of 5 frames' parts and counters, and the clip step's
    written = [metrics for _, metrics in gated if "frame/keypoints_2d" in metrics]
    assert len(written) == 2 and all("count/outer_steps" in m for m in written)  # frames 2 and 4 of 5
    assert "clip/smoothness" in gated[-1][1]  # the clip step at frame 4 (stride 4) reaches the logger


def test_records_are_packed_in_chunks_and_a_resume_keeps_them(parts, tmp_path, monkeypatch):
    """Every record_chunk frames the per-frame records become one tensor per field (memory flat in the
    stream's length); the predictions are those of unpacked records, also after a kill and resume."""
    stream, cfg = Stream([(0, 0)] * 11), adapter_cfg(levels=1)
    loose = stream_through(make_module(parts, cfg), stream)
    monkeypatch.setattr(AdaptationModule, "record_chunk", 4)
    packed = stream_through(make_module(parts, cfg), stream)
    assert [len(r["index"]) for r in packed.records] == [4, 4, 1, 1, 1] and packed.frames_done == 11
    assert len(loose.records) == 11
    for key, value in loose.predictions().items():
        assert torch.equal(value, packed.predictions()[key]), key
    state = tmp_path / "adapt_state.pt"
    with pytest.raises(RuntimeError, match="killed"):
        stream_through(make_module(parts, cfg), stream, callbacks=[StreamCheckpoint(state, 9), Kill(10)])
    resumed = make_module(parts, cfg)
    assert resumed.load_resume_state(state) == 9  # two chunks and one loose frame
    stream_through(resumed, stream, loader=remaining_stream(DataLoader(stream, batch_size=1), 9))
    assert [len(r["index"]) for r in resumed.records] == [4, 4, 1, 1, 1]
    for key, value in loose.predictions().items():
        assert torch.equal(value, resumed.predictions()[key]), key
