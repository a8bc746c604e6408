"""Shared fixtures: the real config tree composed with Hydra, tightened for CPU tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")

os.environ.setdefault("WANDB_MODE", "offline")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 (the development loop): one thread per worker, or two workers of torch's two threads
    # each fight over the two cores. Subprocesses that tests start inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
# Tests never write into (or read) the committed checkpoints of the embedded default.
os.environ["CEMR_CHECKPOINT_DIR"] = tempfile.mkdtemp(prefix="cemr_test_checkpoints_")


# Overrides that shrink the embedded default to a few short sequences and one-epoch training.
TINY = [
    "dataset.prepare.source_sequences=5",
    "dataset.prepare.target_sequences=1",
    "dataset.prepare.frames_per_sequence=32",
    "dataset.prepare.source_frame_stride=2",
    "dataset.prepare.workers=1",
    "dataset.prepare.progress=false",
    "training.max_epochs=1",
    "training.batch_size=16",
    "training.videomae.max_epochs=1",
    "training.align.epochs=5",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def tiny(**prepare: int) -> list[str]:
    """TINY with some `dataset.prepare` counts replaced (Hydra refuses a key given twice)."""
    keys = {f"dataset.prepare.{k}" for k in prepare}
    kept = [o for o in TINY if o.split("=")[0] not in keys]
    return kept + [f"dataset.prepare.{k}={v}" for k, v in prepare.items()]


def compose_config(name: str, overrides: list[str] | None = None, out_dir: Path | None = None) -> DictConfig:
    """Compose `configs/<name>.yaml` as the CLI would, with `paths.output_dir` made concrete."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides or [])
    if out_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(out_dir)
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(name: str, overrides: list[str] | None = None) -> DictConfig:
        return compose_config(
            name, [f"paths.data_dir={tmp_path / 'data'}", *(overrides or [])], tmp_path / "out"
        )

    return _compose


@pytest.fixture(scope="session")
def synthetic_body_dir(tmp_path_factory) -> Path:
    """The procedural SMPL-format body model, written once per test session."""
    from cemr.body import make_synthetic_body_model

    return make_synthetic_body_model(tmp_path_factory.mktemp("body") / "body_synthetic")


@pytest.fixture(scope="session")
def parts(synthetic_body_dir):
    """(neutral body model, GMM pose prior, mean-params file) of the synthetic body, for adaptation tests."""
    from cemr.body import MaxMixturePrior, load_body_model

    body = load_body_model(synthetic_body_dir, "neutral")
    prior = MaxMixturePrior.from_file(synthetic_body_dir / "gmm_08.pkl")
    return body, prior, synthetic_body_dir / "smpl_mean_params.npz"
