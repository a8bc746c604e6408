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
    for p_t, p_s in zip(teacher.parameters(), student.parameters(), strict=True):
        p_t.mul_(momentum).add_(p_s.detach(), alpha=1.0 - momentum)
    for b_t, b_s in zip(teacher.buffers(), student.buffers(), strict=True):
        b_t.copy_(b_s)
