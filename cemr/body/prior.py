"""SMPLify's max-mixture GMM prior over the 69-d body pose, as SPIN and DynaBOA use it (FORMATS.md 5.2)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cemr.safe_io import FileFormatError, PathLike, load_pickle

POSE_DIM = 69  # 23 body joints x axis-angle, root excluded


class MaxMixturePrior(nn.Module):
    """cost(θ) = min_k [0.5 (θ - μ_k)^T Σ_k^-1 (θ - μ_k) - log ŵ_k],  (B, 69) -> (B,)

    with ŵ_k = w_k / ((2π)^(D/2) sqrt(det Σ_k) / min_j sqrt(det Σ_j)): SMPLify's `use_merged=True`
    cost, the one SPIN and DynaBOA optimise. The constants are computed once in float64.
    """

    def __init__(
        self, means: np.ndarray, covars: np.ndarray, weights: np.ndarray, dtype: torch.dtype = torch.float32
    ):
        """means (K, D), covars (K, D, D) symmetric positive definite, weights (K,) positive."""
        super().__init__()
        means, covars, weights = (np.asarray(a, dtype=np.float64) for a in (means, covars, weights))
        dim = means.shape[1]
        _, log_dets = np.linalg.slogdet(covars)
        neg_log_weights = -np.log(weights) + 0.5 * dim * np.log(2 * np.pi) + 0.5 * (log_dets - log_dets.min())
        self.register_buffer("means", torch.as_tensor(means, dtype=dtype))
        self.register_buffer("precisions", torch.as_tensor(np.linalg.inv(covars), dtype=dtype))
        self.register_buffer("neg_log_weights", torch.as_tensor(neg_log_weights, dtype=dtype))

    @classmethod
    def from_file(
        cls, path: PathLike, num_gaussians: int = 8, dtype: torch.dtype = torch.float32
    ) -> MaxMixturePrior:
        """Read SMPLify's `gmm_08.pkl` (a dict of means, covars, weights); a directory means
        `<dir>/gmm_{num_gaussians:02d}.pkl`."""
        path = Path(path)
        if path.is_dir():
            path = path / f"gmm_{num_gaussians:02d}.pkl"
        if not path.is_file():
            raise FileNotFoundError(
                f"GMM pose prior {path} does not exist; SPIN's data archive has gmm_08.pkl, "
                "cemr.body.make_synthetic_body_model writes a stand-in"
            )
        gmm = load_pickle(path)
        if not isinstance(gmm, Mapping):
            raise FileFormatError(f"GMM pose prior {path}: holds a {type(gmm).__name__}, expected a dict")

        def array(key: str) -> np.ndarray:
            if key not in gmm:
                raise FileFormatError(
                    f"GMM pose prior {path}: key '{key}' is missing (expected means, covars, weights)"
                )
            value = np.asarray(gmm[key])
            if value.dtype.kind not in "iuf" or not np.all(np.isfinite(value)):
                raise FileFormatError(
                    f"GMM pose prior {path}: key '{key}' must hold finite numbers, found {value.dtype}"
                )
            return value.astype(np.float64)

        means, covars, weights = array("means"), array("covars"), array("weights")
        num_components = means.shape[0] if means.ndim == 2 else 0
        checks = {
            "means": (means, (num_components, POSE_DIM), "(K, 69)"),
            "covars": (covars, (num_components, POSE_DIM, POSE_DIM), "(K, 69, 69)"),
            "weights": (weights, (num_components,), "(K,)"),
        }
        for key, (value, shape, expected) in checks.items():
            if num_components < 1 or value.shape != shape:
                raise FileFormatError(
                    f"GMM pose prior {path}: key '{key}' has shape {value.shape}, expected {expected} "
                    f"with K = number of Gaussians = rows of 'means' ({num_components} here)"
                )
        if np.any(weights <= 0):
            raise FileFormatError(f"GMM pose prior {path}: key 'weights' has non-positive entries {weights}")
        for k in range(num_components):
            if not np.allclose(covars[k], covars[k].T) or np.any(np.linalg.eigvalsh(covars[k]) <= 0):
                raise FileFormatError(
                    f"GMM pose prior {path}: key 'covars' entry {k} is not symmetric positive definite"
                )
        return cls(means, covars, weights, dtype=dtype)

    def forward(self, body_pose_aa: torch.Tensor) -> torch.Tensor:
        """body_pose_aa (B, 69) axis-angle of the 23 body joints -> (B,) cost."""
        if body_pose_aa.ndim != 2 or body_pose_aa.shape[1] != self.means.shape[1]:
            raise ValueError(
                f"body_pose_aa: expected shape (B, {self.means.shape[1]}), found {tuple(body_pose_aa.shape)}"
            )
        diff = body_pose_aa.to(self.means.dtype).unsqueeze(1) - self.means  # (B, K, D)
        mahalanobis = torch.einsum("bki,kij,bkj->bk", diff, self.precisions, diff)
        return (0.5 * mahalanobis + self.neg_log_weights).min(dim=1).values


def cost_quantile(
    prior: MaxMixturePrior, poses: np.ndarray, quantile: float, batch_size: int = 4096
) -> float:
    """The `quantile` (linear interpolation, numpy's default) of the prior's cost over (N, 72) axis-angle
    poses, root first: at 0.99 over real poses, a cost that 1 % of them exceed."""
    poses = np.asarray(poses)
    if poses.ndim != 2 or poses.shape[1] != POSE_DIM + 3 or len(poses) == 0:
        raise ValueError(f"poses: expected a non-empty (N, {POSE_DIM + 3}) array, found {poses.shape}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    buffer = prior.means
    with torch.no_grad():
        costs = [
            prior(torch.as_tensor(poses[i : i + batch_size, 3:], dtype=buffer.dtype, device=buffer.device))
            for i in range(0, len(poses), batch_size)
        ]
    return float(np.quantile(torch.cat(costs).double().cpu().numpy(), quantile))
