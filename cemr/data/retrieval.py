"""Replay retrieval of level 2: which labelled source samples a target frame replays.

`PoseIndex` (the default) finds the source frames whose normalised 2D pose is nearest to the target
frame's keypoints; `ReplayBank` (DynaBOA's) draws from the k-means cluster of pooled source features
nearest to the frame's feature. Feature retrieval collapses on a domain gap (most target frames land
in one cluster); 2D pose is what the target frame is known to share with the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cemr.atomic import save_npz_atomic


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
        save_npz_atomic(path, {"centres": self.centres.numpy(), "assignment": self.assignment.numpy()})

    @classmethod
    def load(cls, path: str | Path) -> ReplayBank:
        with np.load(path, allow_pickle=False) as f:
            return cls(torch.from_numpy(f["centres"]), torch.from_numpy(f["assignment"]))


# The 24 "GT" joints of the 49-joint SPIN set (keypoints[:, 25:49]).
_GT_JOINTS = slice(25, 49)


def _normalize(xy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(..., 24, 2) points centred at their weighted mean and scaled to unit weighted RMS radius, so two
    frames of the same pose compare equal whatever the person's place and size in the crop."""
    total = weight.sum(-2, keepdim=True).clamp(min=1e-12)
    centred = xy - (weight * xy).sum(-2, keepdim=True) / total
    radius = ((weight * centred**2).sum((-2, -1), keepdim=True) / total).sqrt()
    return centred / radius.clamp(min=1e-9)


def _gt24(keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if keypoints.ndim != 3 or keypoints.shape[1:] != (49, 3):
        raise ValueError(f"pose retrieval: expected keypoints (N, 49, 3), got {tuple(keypoints.shape)}")
    kp = keypoints[:, _GT_JOINTS].double()
    return kp[..., :2], kp[..., 2:].clamp(min=0)


@dataclass
class PoseIndex:
    """The 2D poses (24 GT joints) of every source sample, searched exhaustively (N x 24 x 2 is small).

    Each comparison normalises both poses over the joints confident in both, so a target frame with
    missing joints is compared on the joints it has."""

    xy: torch.Tensor  # (N, 24, 2)
    conf: torch.Tensor  # (N, 24, 1)

    def __post_init__(self):
        # A query whose confidences cover the index's (every joint seen, as with exact keypoints) weighs
        # each pair by the index's own confidences: what depends on the weights alone is then the same
        # for every query. Computed once here, that is most of a query's time saved, with the same numbers.
        self._own = self._weighted(self.conf, _normalize(self.xy, self.conf))
        # with one confidence pattern in the index, every row's weights are the same for any query
        self._one_pattern = bool((self.conf == self.conf[:1]).all())

    @staticmethod
    def _weighted(weight: torch.Tensor, index: torch.Tensor):
        """(the index normalised with `weight`, the weights' per-row total, rows sharing >= 2 joints)."""
        return index, weight.sum((-2, -1)), (weight[..., 0] > 0).sum(-1) >= 2

    @classmethod
    def build(cls, keypoints) -> PoseIndex:
        keypoints = torch.as_tensor(keypoints)
        if len(keypoints) == 0:
            raise ValueError("PoseIndex: the source split has no frames to replay")
        return cls(*_gt24(keypoints))

    def distances(self, keypoints: torch.Tensor) -> torch.Tensor:
        """(49, 3) keypoints -> (N,) weighted mean squared distance of the normalised poses, weights the
        smaller of the two confidences; inf where fewer than two joints are shared."""
        xy, conf = _gt24(keypoints.detach().cpu()[None])
        weight = torch.minimum(self.conf, conf)
        covered = torch.equal(weight, self.conf)
        index, total, shared = self._own if covered else self._weighted(weight, _normalize(self.xy, weight))
        query = _normalize(xy, weight[:1] if self._one_pattern else weight)
        diff = index - query
        # the two coordinates' squares summed as written: the same numbers as (diff**2).sum(-1), without
        # a reduction over a last dim of two (several times slower)
        square = diff * diff
        sq = (square[..., 0] + square[..., 1])[..., None]
        dist = (weight * sq).sum((-2, -1)) / total.clamp(min=1e-12)
        return torch.where(shared, dist, torch.full_like(dist, float("inf")))

    def retrieve(self, keypoints: torch.Tensor, count: int) -> list[int]:
        """The `count` source indices nearest in normalised 2D pose to a frame's (49, 3) keypoints,
        nearest first (ties by index, so retrieval is deterministic)."""
        order = torch.argsort(self.distances(keypoints), stable=True)
        return order[: min(count, len(order))].tolist()
