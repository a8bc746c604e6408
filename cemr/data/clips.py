"""Fixed-length clips of consecutive frames of one track (video-encoder pretraining, sequence models)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

# Per-frame labels of a PreparedDataset item that a clip stacks over time.
CLIP_LABELS = ("keypoints", "pose", "betas", "has_smpl", "joints3d", "index")


class ClipDataset(Dataset):
    """Clips of `length` consecutive rows of one track of a PreparedDataset, every `stride` rows.

    Items: img (3, T, H, W), the video encoder's clip layout (a sequence model such as VIBE takes
    (T, 3, H, W): transpose dims 0 and 1), and the frames' labels stacked over time: keypoints
    (T, 49, 3), pose (T, 72), betas (T, 10), has_smpl (T,), joints3d (T, 24, 4), index (T,) rows.
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
        clip = {"img": torch.stack([it["img"] for it in items], dim=1)}
        clip.update({key: torch.stack([it[key] for it in items]) for key in CLIP_LABELS})
        return clip
