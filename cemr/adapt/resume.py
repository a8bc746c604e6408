"""Checkpoints of the adaptation stream every N frames, so a killed run resumes to the same numbers."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader


class StreamCheckpoint(L.Callback):
    """Writes the AdaptationModule's full state to `path` (atomically) every `every_n_frames` frames."""

    def __init__(self, path: str | Path, every_n_frames: int):
        if every_n_frames < 1:
            raise ValueError(f"adapter.checkpoint_every must be >= 1 frame, got {every_n_frames}")
        self.path = Path(path)
        self.every = every_n_frames

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if len(pl_module.records) % self.every == 0 and trainer.is_global_zero:
            tmp = self.path.with_name(self.path.name + ".tmp")
            torch.save(pl_module.resume_state(), tmp)
            os.replace(tmp, self.path)


def remaining_stream(loader: DataLoader, done: int) -> DataLoader:
    """The same stream without its first `done` frames (already adapted before a restart)."""
    if done == 0:
        return loader
    order = list(loader.sampler)[done:]
    return DataLoader(loader.dataset, batch_size=1, sampler=order, num_workers=loader.num_workers)
