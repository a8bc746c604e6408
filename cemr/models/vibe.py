"""VIBE's temporal regressor: per-frame trunk features (B, T, C) -> GRU encoder -> SPIN's Regressor.

Module names match VIBE's released generator (`encoder.gru.*`, `encoder.linear.*`, `regressor.*`),
so `vibe_model_wo_3dpw.pth.tar` loads directly; the trunk is SPIN's ResNet-50 (`trunk.*`).

Online, frame t is predicted from the causal window of its track's last `seq_len` frames (t-T+1 ..
t, the track's first frame repeated before its start): the GRU is unidirectional, so this is what a
model that has seen frames <= t only can say about t. `causal_windows` builds those windows from
per-frame features; `VIBE.forward_windows` predicts each window's last frame.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cemr.models.hmr import HMROutput, Regressor, check_images, create_trunk, pooled_trunk_features


def causal_windows(features: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Per-frame features (N, C) of one track in time order -> (N, seq_len, C): row t holds frames
    t-seq_len+1 .. t, where frames before the track's start are its first frame repeated."""
    frame = torch.arange(features.shape[0], device=features.device)
    offset = torch.arange(1 - seq_len, 1, device=features.device)
    return features[(frame[:, None] + offset).clamp(min=0)]


class TemporalEncoder(nn.Module):
    """VIBE's TemporalEncoder: a GRU over time, optional ReLU + linear back to the input width, residual."""

    def __init__(
        self,
        input_size: int,
        n_layers: int = 2,
        hidden_size: int = 1024,
        add_linear: bool = True,
        bidirectional: bool = False,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.gru = nn.GRU(
            input_size=input_size, hidden_size=hidden_size, num_layers=n_layers, bidirectional=bidirectional
        )
        gru_size = hidden_size * (2 if bidirectional else 1)
        # As VIBE: a bidirectional GRU always gets the linear layer back to the input width.
        self.linear = nn.Linear(gru_size, input_size) if bidirectional or add_linear else None
        self.output_size = input_size if self.linear is not None else gru_size
        # VIBE adds the residual only when the widths agree.
        self.residual = residual and self.output_size == input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, F) -> (B, T, output_size)."""
        x = x.transpose(0, 1)  # (T, B, F): the GRU is not batch-first, as in VIBE
        y, _ = self.gru(x)
        if self.linear is not None:
            y = self.linear(F.relu(y))
        if self.residual:
            y = y + x
        return y.transpose(0, 1)


class VIBE(nn.Module):
    """Sequence mesh regressor: trunk per frame -> TemporalEncoder -> Regressor per frame."""

    def __init__(
        self,
        mean_params: str | os.PathLike,
        trunk: str = "resnet50",
        norm: str = "batch",
        crop_size: int = 224,
        name: str = "vibe",
        seq_len: int = 16,
        trunk_kwargs: dict[str, Any] | None = None,
        pretrained: bool = False,
        n_layers: int = 2,
        hidden_size: int = 1024,
        add_linear: bool = True,
        bidirectional: bool = False,
        residual: bool = True,
        n_iter: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.name = name
        self.crop_size = crop_size
        self.seq_len = seq_len  # clip length used in training; forward accepts any T
        self.trunk = create_trunk(trunk, norm, pretrained, **(trunk_kwargs or {}))
        self.encoder = TemporalEncoder(
            self.trunk.num_features, n_layers, hidden_size, add_linear, bidirectional, residual
        )
        self.regressor = Regressor(self.encoder.output_size, mean_params, n_iter=n_iter, dropout=dropout)

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, T, 3, S, S) -> per-frame pooled trunk features (B, T, C)."""
        check_images(images, self.crop_size, ("B", "T"), "VIBE")
        b, t = images.shape[:2]
        return pooled_trunk_features(self.trunk, images.flatten(0, 1)).reshape(b, t, -1)

    def forward_features(self, features: torch.Tensor) -> HMROutput:
        """Per-frame trunk features (B, T, C) -> HMROutput with (B, T, ...) fields.

        `feature` holds the input per-frame features; the regressor sees the temporal encoding.
        """
        if features.ndim != 3 or features.shape[-1] != self.trunk.num_features:
            raise ValueError(
                f"VIBE expects features of shape (B, T, {self.trunk.num_features}), "
                f"got {tuple(features.shape)}"
            )
        b, t = features.shape[:2]
        output = self.regressor(self.encoder(features).flatten(0, 1)).unflatten(b, t)
        output.feature = features
        return output

    def forward_windows(self, windows: torch.Tensor) -> HMROutput:
        """Causal windows of per-frame features (B, T, C) -> HMROutput (B, ...) of each window's last
        frame; `feature` is that frame's own trunk feature."""
        return self.forward_features(windows).last_frame()

    def forward(self, images: torch.Tensor) -> HMROutput:
        """images (B, T, 3, S, S) -> HMROutput with (B, T, ...) fields."""
        return self.forward_features(self.extract_features(images))
