"""Adaptation on several devices: whole sequences sharded across DDP ranks (adapter.reset=sequence).

Under reset=sequence every sequence starts from the source weights and depends on nothing else, so
ranks can adapt disjoint sequences side by side. They must not average gradients (each rank's model
follows its own sequences), so the strategy is DDP's processes and process group without the
DistributedDataParallel wrapper; at the end rank 0 gathers every rank's predictions.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import Dataset

# Trainer strategies that start one process per device, and the start method each stands for.
DDP_START_METHODS = {"ddp": "popen", "ddp_fork": "fork", "ddp_notebook": "fork"}


class IndependentRanksStrategy(DDPStrategy):
    """DDP's processes and process group, but no gradient all-reduce: each rank adapts on its own."""

    def configure_ddp(self) -> None:
        pass  # keep the bare LightningModule: training_step runs on it directly, gradients stay local


def adaptation_strategy(strategy: str | None, reset: str):
    """The Trainer strategy for the adaptation stream, given `trainer.strategy` and `adapter.reset`."""
    if not (isinstance(strategy, str) and strategy.startswith("ddp")):
        return strategy
    if strategy not in DDP_START_METHODS:
        raise ValueError(
            f"trainer.strategy={strategy} cannot shard the adaptation stream (spawned processes do not "
            f"hand the adapted predictions back); use one of {sorted(DDP_START_METHODS)}"
        )
    if reset != "sequence":
        raise ValueError(
            f"trainer.strategy={strategy} with adapter.reset={reset}: one stream that never resets is "
            "adapted in time order through one model and cannot be split across devices; use "
            "adapter.reset=sequence (each sequence restarts from the source weights, so sequences are "
            "sharded across ranks) or a single device (trainer=cpu / trainer=gpu)"
        )
    return IndependentRanksStrategy(start_method=DDP_START_METHODS[strategy])


class PaddedStream(Dataset):
    """The rows `order` of `dataset`, then placeholder items {"padding": True} up to `length`: the
    steps a rank with a shorter shard idles through, as Lightning's loop runs a collective on every
    step and so needs the same number of steps on every rank."""

    def __init__(self, dataset: Dataset, order: list[int], length: int) -> None:
        if length < len(order):
            raise ValueError(f"PaddedStream: length {length} < the {len(order)} frames of the stream")
        self.dataset, self.order, self.length = dataset, order, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.order[i]] if i < len(self.order) else {"padding": torch.tensor(True)}


def gather_predictions(local: dict[str, np.ndarray] | None, counters: dict[str, float], world_size: int):
    """Every rank's predictions {index, pose, betas} merged in frame-index order, and counters summed.

    Collective: every rank must call it. Returns (predictions, counters) on rank 0, None on the
    others; one process returns its own unchanged. `local` is None on a rank that adapted no frame.
    """
    parts = [(local, counters)]
    if world_size > 1:
        parts = [None] * world_size
        torch.distributed.all_gather_object(parts, (local, counters))
        if torch.distributed.get_rank() != 0:
            return None
    shards = [shard for shard, _ in parts if shard is not None]
    if not shards:
        raise RuntimeError("no frames were adapted: the target stream is empty")
    totals = {k: sum(c[k] for _, c in parts) for k in counters}
    if len(parts) == 1:
        return shards[0], totals
    merged = {k: np.concatenate([shard[k] for shard in shards]) for k in shards[0]}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}, totals
