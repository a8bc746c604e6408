"""`run(cfg)` behind train.py: build the cached assets, then train the source model."""

from __future__ import annotations

from omegaconf import DictConfig

from cemr.runtime import prepare_assets, seed_everything


def run(cfg: DictConfig) -> dict[str, float]:
    seed_everything(cfg.seed)
    prepare_assets(cfg)
    print("CEMR: assets ready; source training (issue 5) is not built yet.")
    return {}
