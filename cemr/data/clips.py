"""Fixed-length clips of consecutive frames of one track (level 3, video-encoder pretraining)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class ClipDataset(Dataset):
    """Clips of `length` consecutive rows of one track of a PreparedDataset, every `stride` rows.

    Items: img (3, T, H, W) — the clip layout of the video encoder — and keypoints (T, 49, 3).
    """

    def __init__(self, frames, length: int, stride: int) -> None:
        if length < 1 or stride < 1:
            raise ValueError(f"clip length and stride must be >= 1, got {length} and {stride}")
        self.frames = frames
        self.length = length
        self.starts = [
            start
            for track in frames.sequences()
            for start in range(track.start, track.stop - length + 1, stride)
        ]
        if not self.starts:
            raise ValueError(f"{frames.path}: no track has {length} frames, so no clip can be cut")

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = self.starts[index]
        items = [self.frames[i] for i in range(start, start + self.length)]
        return {
            "img": torch.stack([it["img"] for it in items], dim=1),
            "keypoints": torch.stack([it["keypoints"] for it in items]),
        }
