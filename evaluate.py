"""`python evaluate.py [overrides]`: a thin Hydra wrapper over cemr.evaluation.run.run(cfg)."""

import hydra
from omegaconf import DictConfig

from cemr.evaluation.run import run


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    return metrics.get(cfg.get("optimized_metric")) if metrics else None


if __name__ == "__main__":
    main()
