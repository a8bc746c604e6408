"""The learning curve of source training: errors on held-out frames, printed every few epochs.

Training loss alone does not say whether the model reads pose; this callback scores the model (the
same protocol as `evaluate_source`) on a subset of the held-out source split and of the target (the
first frames of evenly spaced tracks), so `python train.py` prints how in-domain and target errors
fall with the epochs.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import lightning as L
import numpy as np

from cemr.evaluation.report import score_dataset, summarize_errors
from cemr.models.prediction import predict_frames

log = logging.getLogger(__name__)


class SubsetFrames:
    """The first rows of some tracks of a PreparedDataset, indexable from 0, with their own tracks (what
    predict_frames iterates over; a sequence model sees each kept piece of track as a track)."""

    def __init__(self, frames, max_frames: int) -> None:
        if max_frames < 1:
            raise ValueError(f"training.curve.max_frames must be >= 1, found {max_frames}")
        tracks = frames.sequences()
        kept = tracks[:: max(1, math.ceil(len(tracks) / max_frames))]
        per_track = max(1, max_frames // len(kept))
        self.frames, self.tracks, rows = frames, [], []
        for track in kept:
            piece = range(track.start, min(track.stop, track.start + per_track))
            self.tracks.append(dataclasses.replace(track, start=len(rows), stop=len(rows) + len(piece)))
            rows.extend(piece)
        self.rows = np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.frames[int(self.rows[i])]

    def sequences(self) -> list:
        return list(self.tracks)


def score_subset(
    model, subset: SubsetFrames, body_models: dict, regressor: np.ndarray, truths: dict | None = None
) -> dict[str, float]:
    """Frame-mean errors (mm) of the model on the subset's rows of its dataset (`truths`: score_dataset's)."""
    predictions = predict_frames(model, subset)
    predictions["index"] = subset.rows
    return summarize_errors(score_dataset(predictions, subset.frames, body_models, regressor, truths))


class LearningCurve(L.Callback):
    """Every `every_n_epochs` epochs (and after the last), scores the model on at most `max_frames`
    frames of each split, prints one line and logs `curve/<split>_<metric>`. Rank 0 only."""

    def __init__(
        self, splits: dict, body_models: dict, regressor: np.ndarray, every_n_epochs: int, max_frames: int
    ):
        if every_n_epochs < 1:
            raise ValueError(f"training.curve.every_n_epochs must be >= 1, found {every_n_epochs}")
        self.splits = {name: SubsetFrames(frames, max_frames) for name, frames in splits.items()}
        self.body_models, self.regressor, self.every = body_models, regressor, every_n_epochs
        self.truths = {name: {} for name in splits}  # each split's ground truth, built at the first score
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.is_global_zero or (epoch % self.every and epoch != trainer.max_epochs):
            return
        row: dict[str, float] = {"epoch": float(epoch)}
        for name, subset in self.splits.items():
            truths = self.truths[name]
            scores = score_subset(pl_module.model, subset, self.body_models, self.regressor, truths)
            row.update({f"{name}_{k}": v for k, v in scores.items() if k != "frames"})
        self.history.append(row)
        pl_module.log_dict({f"curve/{k}": v for k, v in row.items() if k != "epoch"}, rank_zero_only=True)
        parts = "  ".join(
            f"{name} PA-MPJPE {row[f'{name}_pa_mpjpe']:6.1f} MPJPE {row[f'{name}_mpjpe']:6.1f}"
            for name in self.splits
        )
        sizes = ", ".join(f"{name} {len(subset)} frames" for name, subset in self.splits.items())
        log.info(f"epoch {epoch:3d}: {parts} mm ({sizes})")
