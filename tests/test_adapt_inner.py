"""Level 1's inner loop: a first-order clone moved in place gives learn2learn's clone's predictions and
weights bit for bit, and never leaves the base weights moved."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cemr.adapt.inner import InnerLoop
from tests.test_adapt_module import Stream, adapter_cfg, make_module, stream_through


def stream_both_ways(parts, cfg, stream):
    modules = []
    for in_place in (False, True):
        module = make_module(parts, cfg)
        module.inner = InnerLoop(
            module.model, cfg.inner.lr, cfg.inner.first_order, cfg.inner.max_grad_norm, in_place=in_place
        )
        modules.append(stream_through(module, stream))
    return modules


@pytest.mark.parametrize(
    "levels,emit,steps,max_grad_norm",
    [(1, "clone", 3, None), (2, "updated", 2, 1e-3), (3, "clone", 1, 20.0)],
)
def test_a_clone_moved_in_place_equals_learn2learns_clone(parts, levels, emit, steps, max_grad_norm):
    """At an inner lr that moves the prediction (3e-3, several steps, clipped or not), over a stream
    with a track change and level 3's clip steps: the same records and the same final weights."""
    cfg = adapter_cfg(levels=levels, emit=emit)
    cfg.inner.lr, cfg.inner.steps, cfg.inner.max_grad_norm = 3e-3, steps, max_grad_norm
    stream = Stream([(0, 0)] * 5 + [(1, 0)] * 4)
    copied, moved = stream_both_ways(parts, cfg, stream)
    for key, value in copied.predictions().items():
        assert torch.equal(value, moved.predictions()[key]), key
    assert copied.counters == moved.counters
    if levels >= 3:
        assert moved.counters["clip_steps"] >= 2
    final = moved.model.state_dict()
    for name, value in copied.model.state_dict().items():
        assert torch.equal(value, final[name]), name
    source = make_module(parts, cfg).model.state_dict()
    changed = any(not torch.equal(a, source[k]) for k, a in moved.model.state_dict().items())
    assert changed == (levels >= 2)  # level 1 never changes the base weights, moved in place or not


def test_restore_puts_the_exact_base_weights_back_and_a_new_clone_starts_from_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    base = [p.detach().clone() for p in model.parameters()]
    inner = InnerLoop(model, lr=0.5, first_order=True, max_grad_norm=None)
    x = torch.randn(8, 3)
    clone = inner.clone()
    assert clone is model
    loss = clone(x).pow(2).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    inner.step(clone, clone(x).pow(2).mean())
    for p, b, g in zip(model.parameters(), base, grads, strict=True):
        assert torch.equal(p, b + (-0.5 * g))  # learn2learn's maml_update: p + (-lr * g)
    inner.clone()  # a second clone starts from the base weights, not from the moved ones
    for p, b in zip(model.parameters(), base, strict=True):
        assert torch.equal(p, b)
    inner.step(model, model(x).pow(2).mean())
    inner.restore()
    inner.restore()  # twice is harmless
    for p, b in zip(model.parameters(), base, strict=True):
        assert torch.equal(p, b)


def test_a_second_order_step_cannot_be_taken_in_place():
    with pytest.raises(ValueError, match="second-order inner step needs learn2learn's clone"):
        InnerLoop(nn.Linear(2, 2), lr=0.1, first_order=False, max_grad_norm=None, in_place=True)
    assert not InnerLoop(nn.Linear(2, 2), lr=0.1, first_order=False, max_grad_norm=None).in_place


def test_a_failure_after_the_inner_step_leaves_the_base_weights_where_they_were(parts):
    cfg = adapter_cfg(levels=2)
    cfg.inner.lr = 1e-2
    module = make_module(parts, cfg)
    base = {k: v.clone() for k, v in module.model.state_dict().items()}

    def broken(clone, frame):
        raise RuntimeError("outer loss failed")

    module._outer_loss = broken
    with pytest.raises(RuntimeError, match="outer loss failed"):
        stream_through(module, Stream([(0, 0)]))
    assert not module.inner._moved
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, base[key]), key


def _learned_step(lr, rate, bounds=(1e-7, 1e-3), steps=1):
    """One in-place clone, `steps` inner steps on a quadratic, then the outer gradient at the moved
    weights handed to learn_lrs; returns the loop and, per tensor, the cosine computed independently."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    inner = InnerLoop(model, lr=lr, first_order=True, max_grad_norm=None, lr_rate=rate, lr_bounds=bounds)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    base = [p.detach().clone() for p in model.parameters()]
    clone = inner.clone()
    moved_by = [torch.zeros_like(p) for p in base]
    for _ in range(steps):
        grads = torch.autograd.grad((clone(x) - y).pow(2).mean(), list(model.parameters()))
        moved_by = [m + g for m, g in zip(moved_by, grads, strict=True)]
        inner.step(clone, (clone(x) - y).pow(2).mean())
    for p, b, m in zip(model.parameters(), base, moved_by, strict=True):
        assert torch.allclose(p, b - lr * m, atol=1e-7)  # each tensor moved by its own lr (all = lr here)
    outer = torch.autograd.grad((model(x) - y).pow(2).mean(), list(model.parameters()))
    inner.learn_lrs(list(outer))
    inner.restore()
    cosines = [float((m * o).sum() / (m.norm() * o.norm())) for m, o in zip(moved_by, outer, strict=True)]
    return inner, cosines


@pytest.mark.parametrize("steps", [1, 3])
def test_a_learned_inner_lr_rises_where_the_step_helped_the_outer_loss(steps):
    """A small step down a quadratic: the outer gradient at the moved weights still points along the
    inner one, so each tensor's log lr rises by rate x their cosine (computed here by hand)."""
    inner, cosines = _learned_step(lr=1e-3, rate=0.1, bounds=(1e-7, 1.0), steps=steps)
    assert all(c > 0.9 for c in cosines)
    expected = [math.log(1e-3) + 0.1 * c for c in cosines]
    assert inner.log_lrs.tolist() == pytest.approx(expected, abs=1e-6)
    assert inner.lrs() == pytest.approx([math.exp(e) for e in expected], rel=1e-6)
    inner.learn_lrs([None] * len(cosines))  # no clone stepped since: nothing to learn from
    assert inner.log_lrs.tolist() == pytest.approx(expected, abs=1e-6)


def test_a_learned_inner_lr_falls_where_the_step_overshot_and_stays_in_its_bounds():
    inner, cosines = _learned_step(lr=5.0, rate=0.1, bounds=(1e-7, 10.0))
    assert min(cosines) < 0
    expected = [math.log(5.0) + 0.1 * c for c in cosines]
    assert inner.log_lrs.tolist() == pytest.approx(expected, abs=1e-6)
    capped, _ = _learned_step(lr=1e-3, rate=5.0, bounds=(1e-7, 1e-3))
    assert capped.lrs() == pytest.approx([1e-3] * 4, rel=1e-9)  # the rises stop at the upper bound


def test_a_learned_inner_lr_needs_a_first_order_step_and_an_lr_within_its_bounds():
    with pytest.raises(ValueError, match="needs a first-order inner step"):
        InnerLoop(nn.Linear(2, 2), lr=1e-4, first_order=False, max_grad_norm=None, lr_rate=0.1)
    with pytest.raises(ValueError, match="lr_bounds"):
        InnerLoop(nn.Linear(2, 2), lr=1e-2, first_order=True, max_grad_norm=None, lr_rate=0.1)
    assert InnerLoop(nn.Linear(2, 2), lr=1e-2, first_order=True, max_grad_norm=None).lrs() is None


def test_the_learned_inner_lrs_move_in_the_stream_restart_with_a_sequence_and_resume(parts, tmp_path):
    cfg = adapter_cfg(levels=2, reset="sequence")
    cfg.inner.lr, cfg.inner.lr_rate = 1e-4, 0.5
    stream = Stream([(0, 0)] * 4)
    module = stream_through(make_module(parts, cfg), stream)
    learned = module.inner.log_lrs.clone()
    assert not torch.allclose(learned, torch.full_like(learned, math.log(1e-4)))
    assert ((learned >= math.log(1e-7) - 1e-9) & (learned <= math.log(1e-3) + 1e-9)).all()
    torch.save(module.resume_state(), tmp_path / "state.pt")
    resumed = make_module(parts, cfg)
    resumed.load_resume_state(tmp_path / "state.pt")
    assert torch.equal(resumed.inner.log_lrs, learned)
    module.reset_to_source()
    assert torch.equal(module.inner.log_lrs, torch.full_like(learned, math.log(1e-4)))


def test_a_held_out_lr_signal_is_the_outer_loss_on_the_frames_the_clone_did_not_adapt_on(parts):
    cfg = adapter_cfg(levels=2)
    cfg.inner.lr, cfg.inner.lr_rate, cfg.inner.lr_signal = 1e-4, 0.5, "held_out"
    module = make_module(parts, cfg)
    t, context, replay, teacher = (torch.tensor(v, requires_grad=True) for v in (1.0, 2.0, 3.0, 4.0))
    signal = module._lr_signal({"keypoints_2d": t, "context": context, "replay": replay, "teacher": teacher})
    assert signal.item() == 5.0
    assert torch.autograd.grad(signal, [t, context, replay, teacher], allow_unused=True)[0] is None
    nothing = module._lr_signal({"keypoints_2d": t, "teacher": teacher})
    assert nothing.item() == 0.0 and not nothing.requires_grad
    cfg.inner.lr_signal = "outer"
    assert make_module(parts, cfg)._lr_signal({"context": context}) is None


def test_a_held_out_lr_signal_moves_the_lrs_only_once_a_frame_is_held_out(parts):
    cfg = adapter_cfg(levels=2)
    cfg.inner.lr, cfg.inner.lr_rate, cfg.inner.lr_signal = 1e-4, 0.5, "held_out"
    start = math.log(1e-4)
    short = stream_through(make_module(parts, cfg), Stream([(0, 0)] * 4))  # t-5 never exists, no replay
    assert torch.equal(short.inner.log_lrs, torch.full_like(short.inner.log_lrs, start))
    cfg.motion.interval = 2
    held_out = stream_through(make_module(parts, cfg), Stream([(0, 0)] * 6))
    cfg.inner.lr_signal = "outer"
    whole = stream_through(make_module(parts, cfg), Stream([(0, 0)] * 6))
    assert not torch.allclose(held_out.inner.log_lrs, torch.full_like(held_out.inner.log_lrs, start))
    assert not torch.allclose(held_out.inner.log_lrs, whole.inner.log_lrs)
    cfg.inner.lr_signal = "frame"
    with pytest.raises(ValueError, match="lr_signal must be one of"):
        make_module(parts, cfg)


@pytest.mark.parametrize("levels", [2, 3])
def test_no_inner_step_streams_as_an_inner_step_of_lr_zero(parts, levels):
    """inner.steps=0 (levels >= 2) scores the base model itself in the outer step: the records, counters
    and final weights of a step of lr 0 (which moves no weight), bit for bit, without its passes."""
    stream = Stream([(0, 0)] * 6 + [(1, 0)] * 5)
    cfg = adapter_cfg(levels=levels)
    cfg.inner.lr = 0.0
    stepped = stream_through(make_module(parts, cfg), stream)
    cfg.inner.steps = 0
    skipped = stream_through(make_module(parts, cfg), stream)
    for key, value in stepped.predictions().items():
        assert torch.equal(value, skipped.predictions()[key]), key
    assert stepped.counters == skipped.counters and skipped.counters["outer_steps"] == len(stream)
    final = skipped.model.state_dict()
    for name, value in stepped.model.state_dict().items():
        assert torch.equal(value, final[name]), name
    assert any(not torch.equal(v, make_module(parts, cfg).model.state_dict()[k]) for k, v in final.items())
