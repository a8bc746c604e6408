"""Progress of long loops: a Rich bar on a terminal, plain log lines every so often without one (SLURM,
`> log`), where a bar would only print at the end."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

log = logging.getLogger(__name__)


class PhaseProgressBar(RichProgressBar):
    """Rich bar that names the phase: "adapt: frames of the target stream" rather than "Epoch 0/0"."""

    def __init__(self, phase: str, unit: str):
        super().__init__(leave=True)
        self.phase, self.unit = phase, unit

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs == 1:
            return f"{self.phase}: {self.unit}"
        return f"{self.phase}: epoch {current_epoch + 1}/{self.trainer.max_epochs}"


class LogProgress(L.Callback):
    """One log line every `every` batches (and at the end): batches done, rate, the progress-bar
    metrics (e.g. the running PA-MPJPE). Goes through `logging`, so Hydra's <task>.log holds it too."""

    def __init__(self, phase: str, unit: str, every: int = 100):
        self.phase, self.unit, self.every = phase, unit, every
        self.start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = batch_idx + 1
        total = trainer.num_training_batches
        if done % self.every and done != total:
            return
        rate = done / max(time.monotonic() - self.start, 1e-9)
        metrics = {k: float(v) for k, v in trainer.progress_bar_metrics.items()}
        shown = "".join(f", {k} {v:.4g}" for k, v in metrics.items())
        epoch = f" epoch {trainer.current_epoch + 1}/{trainer.max_epochs}," if trainer.max_epochs != 1 else ""
        log.info(f"{self.phase}:{epoch} {done}/{total} {self.unit} ({rate:.2f}/s{shown})")


def progress_callbacks(phase: str, unit: str, every: int = 100) -> list[L.Callback]:
    """A Rich bar when stdout is a terminal, else periodic log lines."""
    if sys.stdout.isatty():
        return [PhaseProgressBar(phase, unit)]
    return [LogProgress(phase, unit, every)]
