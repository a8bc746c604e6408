"""Progress without a terminal: a plain log line every N batches and at the end, naming the phase;
with one, a bar that names the phase instead of "Epoch 0/0"."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from cemr.progress import LogProgress, PhaseProgressBar, progress_callbacks


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        loss = ((self.w - batch[0]) ** 2).mean()
        self.log("running", float(batch_idx), prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(callbacks, batches=7, epochs=1):
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=any(isinstance(c, PhaseProgressBar) for c in callbacks),
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.arange(batches, dtype=torch.float32)), batch_size=1))
    return trainer


def test_log_lines_every_n_batches_and_at_the_end(caplog):
    with caplog.at_level(logging.INFO, logger="cemr.progress"):
        fit([LogProgress("adapt", "frames of the target stream", every=3)])
    lines = [r.getMessage() for r in caplog.records if r.name == "cemr.progress"]
    assert [line.split(" (")[0] for line in lines] == [
        "adapt: 3/7 frames of the target stream",
        "adapt: 6/7 frames of the target stream",
        "adapt: 7/7 frames of the target stream",
    ]
    assert lines[-1].endswith(", running 6)")  # the progress-bar metrics ride along


def test_epochs_are_counted_from_one_when_there_are_several(caplog):
    with caplog.at_level(logging.INFO, logger="cemr.progress"):
        fit([LogProgress("source", "batches", every=100)], batches=2, epochs=2)
    lines = [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "cemr.progress"]
    assert lines == ["source: epoch 1/2, 2/2 batches", "source: epoch 2/2, 2/2 batches"]


def test_the_bar_names_the_phase_and_no_terminal_means_log_lines():
    bar = PhaseProgressBar("adapt", "frames of the target stream")
    trainer = fit([bar], batches=2)
    assert bar._get_train_description(0) == "adapt: frames of the target stream"
    trainer.fit_loop.max_epochs = 3
    assert bar._get_train_description(1) == "adapt: epoch 2/3"
    (shown,) = progress_callbacks("adapt", "frames")  # pytest captures stdout: not a terminal
    assert isinstance(shown, LogProgress)
