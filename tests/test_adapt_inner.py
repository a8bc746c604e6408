"""Level 1's inner loop: a first-order clone moved in place gives learn2learn's clone's predictions and
weights bit for bit, and never leaves the base weights moved."""

from __future__ import annotations

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
