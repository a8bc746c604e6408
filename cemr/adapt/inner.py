"""Level 1's inner loop: a clone of the network that takes SGD steps on one frame's loss (or a clip's
first half) and is then scored by the outer step, whose gradient updates the base weights.

A second-order step needs learn2learn's MAML clone, a differentiable copy of every weight. A
first-order step does not: its outer gradient is the plain gradient at the moved weights
theta' = theta - lr * g. There the network itself is moved in place, with the arithmetic of
learn2learn's `maml_update` (theta + (-lr * g)), and put back by `restore` once the outer loss has
been back-propagated: the same predictions and gradients, bit for bit (tests/test_adapt_inner.py),
without copying the network and routing every gradient through the copy on each frame.

`lr_rate` > 0 learns the inner lr online, one per weight tensor (Meta-SGD's per-parameter lr, per
tensor): the outer loss at theta' = theta - lr * g changes with lr_i by -<g_i, grad_i L_outer(theta')>,
so log lr_i rises by lr_rate x the cosine of g_i and that outer gradient (scale-free: a 2D loss in
pixels and a prior do not set the pace) and stays within `lr_bounds`. A first-order step needs only
the outer gradient that the outer step computes anyway.
"""

from __future__ import annotations

import math

import learn2learn as l2l
import torch
import torch.nn.functional as F
from learn2learn.algorithms.maml import maml_update
from torch import nn


class InnerLoop:
    def __init__(
        self,
        model: nn.Module,
        lr: float,
        first_order: bool,
        max_grad_norm: float | None,
        in_place: bool | None = None,
        lr_rate: float = 0.0,
        lr_bounds: tuple[float, float] = (1e-7, 1e-3),
    ):
        self.model = model
        self.lr = lr
        self.lr_rate = float(lr_rate)
        self.lr_bounds = (float(lr_bounds[0]), float(lr_bounds[1]))
        if self.lr_rate < 0 or (self.lr_rate and not 0 < self.lr_bounds[0] <= lr <= self.lr_bounds[1]):
            raise ValueError(
                f"the inner lr needs lr_rate >= 0 and 0 < lr_bounds[0] <= lr <= lr_bounds[1]; got lr {lr}, "
                f"lr_rate {lr_rate}, lr_bounds {list(lr_bounds)}"
            )
        self.first_order = first_order
        self.max_grad_norm = max_grad_norm
        self.in_place = first_order if in_place is None else in_place  # False: learn2learn's clone always
        if self.in_place and not first_order:
            raise ValueError("a second-order inner step needs learn2learn's clone (in_place=False)")
        if self.lr_rate and not self.in_place:
            raise ValueError("a learned inner lr (adapter.inner.lr_rate > 0) needs a first-order inner step")
        self.learner = None  # learn2learn's MAML wrapper, where the clone is a copy
        if not self.in_place:
            self.learner = l2l.algorithms.MAML(
                model, lr=lr, first_order=first_order, allow_unused=True, allow_nograd=True
            )
        self._saved: list[torch.Tensor] | None = None  # the base weights while the model is moved in place
        self._moved = False
        self.log_lrs: torch.Tensor | None = None  # float64 (n_tensors,) on the CPU, when lr_rate > 0
        self._moved_by: list[torch.Tensor] | None = None  # the clipped inner gradients summed over steps

    def lrs(self) -> list[float] | None:
        """Each weight tensor's learned inner lr (None where the lr is not learned)."""
        if not self.lr_rate:
            return None
        if self.log_lrs is None:
            self.reset_lrs()
        return self.log_lrs.exp().tolist()

    def reset_lrs(self) -> None:
        if self.lr_rate:
            count = len(list(self.model.parameters()))
            self.log_lrs = torch.full((count,), math.log(self.lr), dtype=torch.float64)

    def learn_lrs(self, outer_grads: list[torch.Tensor | None]) -> None:
        """Move each log lr by lr_rate x cos(its inner gradient, its outer gradient at the moved weights);
        a no-op unless the lr is learned and a clone was stepped since the last call."""
        if not self.lr_rate or self._moved_by is None:
            return
        cosines = [
            g.new_zeros(()) if o is None else F.cosine_similarity(g.flatten(), o.flatten(), dim=0)
            for g, o in zip(self._moved_by, outer_grads, strict=True)
        ]
        moved = self.log_lrs + self.lr_rate * torch.stack(cosines).double().cpu()
        self.log_lrs = moved.clamp(math.log(self.lr_bounds[0]), math.log(self.lr_bounds[1]))
        self._moved_by = None

    def clone(self) -> nn.Module:
        """A network to adapt, equal to the base model: learn2learn's clone, or the model itself (its
        weights saved, and put back first if an earlier clone had moved them)."""
        self._moved_by = None
        if not self.in_place:
            return self.learner.clone()
        self.restore()
        params = [p.detach() for p in self.model.parameters()]
        kept = self._saved or []
        same = len(kept) == len(params) and all(
            k.device == p.device and k.dtype == p.dtype for k, p in zip(kept, params, strict=True)
        )
        if not same:  # the first clone, or the model moved to another device or precision
            self._saved = [p.clone() for p in params]
        else:
            torch._foreach_copy_(self._saved, params)
        return self.model

    def step(self, clone: nn.Module, loss: torch.Tensor) -> nn.Module:
        """One SGD step of the clone on `loss`, the gradient's norm clipped to max_grad_norm: at an lr
        that moves the prediction, a frame with a large loss would otherwise throw the clone far off
        (and a first-order outer step with it). Returns the stepped clone."""
        module = clone if self.in_place else clone.module
        params = list(module.parameters())
        trained = [p for p in params if p.requires_grad]
        second_order = not self.first_order
        found = torch.autograd.grad(
            loss, trained, retain_graph=second_order, create_graph=second_order, allow_unused=True
        )
        by_param = {id(p): g for p, g in zip(trained, found, strict=True)}
        grads = [by_param.get(id(p)) for p in params]
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
        if self.max_grad_norm:
            squares = torch._foreach_pow([g.detach().float() for g in grads], 2)
            norm = torch.sqrt(sum(s.sum() for s in squares))
            scale = (self.max_grad_norm / (norm + 1e-12)).clamp(max=1.0)
            if scale < 1.0:  # else g * 1 == g: a pass over every weight saved (and a zero gradient)
                grads = torch._foreach_mul(grads, scale.to(grads[0].dtype))
        if not self.in_place:
            clone.module = maml_update(clone.module, clone.lr, grads)
            return clone
        lrs = self.lrs()
        if lrs is not None:
            grads = [g.detach() for g in grads]
            self._moved_by = grads if self._moved_by is None else torch._foreach_add(self._moved_by, grads)
        with torch.no_grad():
            steps = -self.lr if lrs is None else [-lr for lr in lrs]
            torch._foreach_add_(params, torch._foreach_mul(grads, steps))  # maml_update's p + (-lr * g)
        self._moved = True
        return clone

    def restore(self) -> None:
        """Put the base weights back after an in-place clone moved them (a no-op otherwise)."""
        if self._moved:
            with torch.no_grad():
                torch._foreach_copy_([p for p in self.model.parameters()], self._saved)
            self._moved = False
