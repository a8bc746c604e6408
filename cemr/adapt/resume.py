"""The adaptation stream of one process, and its checkpoints every N frames so a killed run resumes to
the same numbers."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from cemr.adapt.parallel import PaddedStream
from cemr.atomic import write_atomic

log = logging.getLogger(__name__)


class StreamCheckpoint(L.Callback):
    """Restores the AdaptationModule's state from `path` when it exists (at setup, before the stream
    starts) and writes it there, atomically, every `every_n_frames` frames.

    Each state records what it belongs to (`belongs_to`: the run's config digest and the identity of
    the target data and source model, see `cemr.adapt.run.stream_identity`); a state that belongs to
    anything else is refused (StreamStateMismatch) rather than resumed. Under DDP each rank keeps its
    own file, `<stem>.rank<r>of<world><suffix>`, as each adapts its own sequences.
    """

    def __init__(self, path: str | Path, every_n_frames: int, belongs_to: dict | None = None):
        if every_n_frames < 1:
            raise ValueError(f"adapter.checkpoint_every must be >= 1 frame, got {every_n_frames}")
        self.path = Path(path)
        self.every = every_n_frames
        self.belongs_to = belongs_to or {}

    def rank_path(self, trainer) -> Path:
        if trainer.world_size == 1:
            return self.path
        rank = f"rank{trainer.global_rank}of{trainer.world_size}"
        return self.path.with_name(f"{self.path.stem}.{rank}{self.path.suffix}")

    def setup(self, trainer, pl_module, stage: str) -> None:
        path = self.rank_path(trainer)
        if path.is_file():
            check_stream_state(path, self.belongs_to)
            done = pl_module.load_resume_state(path)
            log.info(f"resuming from {path}: {done} frames already adapted")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "padding" not in batch and pl_module.frames_done % self.every == 0:
            state = {**pl_module.resume_state(), "belongs_to": self.belongs_to}
            write_atomic(self.rank_path(trainer), lambda file: torch.save(state, file))


class StreamStateMismatch(RuntimeError):
    """A stream state (adapt_state.pt) belongs to another run: another config, target or source model."""


def check_stream_state(path: str | Path, belongs_to: dict) -> None:
    """Raise StreamStateMismatch, naming the file and what differs, unless the stream state at `path`
    belongs to `belongs_to` (resuming it would mix two runs' numbers)."""
    from cemr.safe_io import load_torch

    found = load_torch(path).get("belongs_to")
    if found == belongs_to:
        return
    if not isinstance(found, dict):
        what = "it does not record which run it belongs to (written by an older version)"
    else:
        keys = sorted(k for k in found.keys() | belongs_to.keys() if found.get(k) != belongs_to.get(k))
        what = "it belongs to another " + " and ".join(keys) + f" ({found} here, {belongs_to} now)"
    raise StreamStateMismatch(
        f"stream state {path} cannot be resumed by this run: {what}; rerun with the config it was "
        "written with, choose another run dir (hydra.run.dir=...), or pass overwrite=true to start over"
    )


class TargetStream(L.LightningDataModule):
    """The target frames this process adapts, in stream order: its rank's share of the sequences (all
    of them on one device), less the frames its module had already adapted before a restart.

    Under DDP the shorter shards are padded to the longest: Lightning's loop runs a collective on
    every step, so every rank must take the same number of steps.
    """

    def __init__(self, data) -> None:
        super().__init__()
        self.data = data

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        loader = self.data.stream_dataloader(trainer.global_rank, trainer.world_size)
        loader = remaining_stream(loader, trainer.lightning_module.frames_done)
        if trainer.world_size == 1:
            return loader
        longest = torch.tensor(len(loader), device=trainer.strategy.root_device)
        torch.distributed.all_reduce(longest, op=torch.distributed.ReduceOp.MAX)
        return DataLoader(
            PaddedStream(loader.dataset, list(loader.sampler), int(longest)),
            batch_size=1,
            num_workers=loader.num_workers,
        )


def remaining_stream(loader: DataLoader, done: int) -> DataLoader:
    """The same stream without its first `done` frames (already adapted before a restart)."""
    if done == 0:
        return loader
    order = list(loader.sampler)[done:]
    return DataLoader(loader.dataset, batch_size=1, sampler=order, num_workers=loader.num_workers)
