"""Named submodules of a model kept at their weights (`backbone.frozen` in training, `adapter.frozen`
at test time): no gradient, so no backward pass below the lowest one that still learns."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def freeze(model: nn.Module, names: Iterable[str], setting: str) -> None:
    """`requires_grad_(False)` on each submodule of `model` at a dotted path in `names`; a path that is
    not there is refused, naming `setting` (the config key) and the submodules two levels deep."""
    for name in names:
        try:
            submodule = model.get_submodule(name)
        except AttributeError:
            children = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
            raise ValueError(
                f"{setting}: {type(model).__name__} has no submodule {name!r} (its submodules two levels "
                f"deep: {', '.join(children)})"
            ) from None
        submodule.requires_grad_(False)
