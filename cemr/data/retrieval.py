"""Replay bank of level 2: k-means over pooled source features, queried by a target frame's feature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def kmeans(
    features: torch.Tensor, k: int, iterations: int = 25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding on (N, C) features -> centres (k, C), assignment (N,).

    Deterministic for a seed. An empty cluster keeps its previous centre.
    """
    n = features.shape[0]
    if n == 0:
        raise ValueError("kmeans: no features to cluster")
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    x = features.double().cpu()
    centres = x[torch.randint(n, (1,), generator=gen)]
    for _ in range(1, k):
        dist = torch.cdist(x, centres).min(dim=1).values ** 2
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / n)
        centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=gen)]])
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)[:, None]
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        if torch.allclose(new, centres):
            break
        centres = new
    assign = torch.cdist(x, centres).argmin(dim=1)
    return centres.to(features.dtype), assign


@dataclass
class ReplayBank:
    """Source sample indices grouped by the k-means cluster of their pooled feature."""

    centres: torch.Tensor  # (K, C)
    assignment: torch.Tensor  # (N,) cluster of each source sample

    @classmethod
    def build(cls, features: torch.Tensor, clusters: int, seed: int = 0) -> ReplayBank:
        centres, assignment = kmeans(features, clusters, seed=seed)
        return cls(centres, assignment)

    def retrieve(self, feature: torch.Tensor, count: int, generator: torch.Generator) -> list[int]:
        """`count` source indices drawn from the cluster whose centre is nearest to feature (C,)."""
        cluster = torch.cdist(feature.detach().double().cpu()[None], self.centres.double()).argmin()
        members = torch.nonzero(self.assignment == cluster).flatten()
        picks = torch.randint(len(members), (count,), generator=generator)
        return members[picks].tolist()

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, centres=self.centres.numpy(), assignment=self.assignment.numpy())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ReplayBank:
        with np.load(path, allow_pickle=False) as f:
            return cls(torch.from_numpy(f["centres"]), torch.from_numpy(f["assignment"]))
