"""`run(cfg)` behind adapt.py: build the cached assets, then adapt the source model on the target stream."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from cemr.runtime import prepare_assets, seed_everything

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    seed_everything(cfg.seed)
    prepare_assets(cfg)
    # The adaptation module lands with issue 6 (MiRRo levels 1-3).
    print("CEMR: assets ready; test-time adaptation (issue 6) is not built yet, so no metrics to report.")
    return {}
