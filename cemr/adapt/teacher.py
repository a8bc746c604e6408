"""The EMA mean teacher of level 2: a frozen copy of the model that trails the adapted weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen deep copy of `model` (no gradients, same mode)."""
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher = m * teacher + (1 - m) * student for parameters; buffers (e.g. BN statistics) are copied."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"teacher EMA momentum must lie in [0, 1], got {momentum}")
    mine, theirs = list(teacher.parameters()), list(student.parameters())
    if len(mine) != len(theirs):
        raise ValueError(f"teacher has {len(mine)} parameters, the student {len(theirs)}")
    # A weight the student does not train (adapter.frozen) is its own average; m w + (1 - m) w can round
    # off w, and the stream reads every net's frozen stages from the source model's (AdaptationModule).
    learning = [i for i, p in enumerate(theirs) if p.requires_grad]
    mine, theirs = [mine[i] for i in learning], [theirs[i].detach() for i in learning]
    # one foreach kernel per operation instead of a Python loop over tensors; the same arithmetic
    torch._foreach_mul_(mine, momentum)
    torch._foreach_add_(mine, theirs, alpha=1.0 - momentum)
    buffers, source = list(teacher.buffers()), list(student.buffers())
    if buffers:
        torch._foreach_copy_(buffers, source)
