"""Prepared datasets (synthetic, 3DPW, Human3.6M, any video) read lazily, streamed in time order.

A prepared split is `<root>/<split>.npz` with SPIN's keys plus `seq`, `person`, `frame`; rows are
grouped by track (seq, person) in time order (data/README.md). Numeric arrays are held in memory
and checked once on load (`cemr.data.validate`: shapes, dtypes, finite labels, confidences in
[0, 1], positive scales); each image is read from `img_root / imgname` when its item is asked for.

Keypoints given to the model are (49, 3) in SPIN's layout, normalised to [-1, 1] in the crop:
- `gt`: the GT 2D joints (`part`) in slots 25..48, slots 0..24 zero (DynaBOA adapts on these);
- `noisy`: `gt` plus Gaussian jitter of std `keypoint_noise_std` (normalised crop units) on each
  visible joint, seeded by (seed, row index), so the same row always gets the same noise;
- `detected`: a detector's keypoints (`keypoints_detected`, else `openpose` in slots 0..24).
Joints with confidence 0 get coordinates 0. Keypoints map to the crop by the exact affine the image
crop uses (cemr.geometry), not SPIN's 1-based integer `transform`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cemr.data.augment import AugmentParams, SpinAugment, augment_colour, augment_labels, flip_keypoints_49
from cemr.data.validate import validate_prepared
from cemr.geometry import crop_image, normalize_keypoints, transform_keypoints
from cemr.safe_io import FileFormatError, load_npz

KEYPOINT_MODES = ("gt", "noisy", "detected")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
NO_AUGMENT = AugmentParams()
GENDER_IDS = {"m": 0, "f": 1}  # anything else ('n', missing) is -1


@dataclass(frozen=True)
class Track:
    """One person in one sequence: rows [start, stop) of a split, in time order."""

    seq: str
    seq_id: int
    person: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def _read_prepared(path: Path) -> dict[str, np.ndarray]:
    """Load a prepared npz, check keys, shapes, dtypes and values (`validate_prepared`), fill defaults
    for the optional keys."""
    arrays = load_npz(path)
    validate_prepared(arrays, path)
    n = len(arrays["imgname"])
    if "pose" in arrays and "has_smpl" not in arrays:
        arrays["has_smpl"] = np.ones(n)
    defaults = {
        "pose": np.zeros((n, 72)),
        "shape": np.zeros((n, 10)),
        "has_smpl": np.zeros(n),
        "gender": np.full(n, "n"),
        "S": np.zeros((n, 24, 4)),
        "seq": np.full(n, path.stem),
        "person": np.zeros(n, dtype=np.int64),
        "frame": np.arange(n),
    }
    for key, value in defaults.items():
        arrays.setdefault(key, value)
    arrays["shape"] = arrays["shape"][:, :10]
    return arrays


def _tracks(seq: np.ndarray, person: np.ndarray, frame: np.ndarray, path: Path) -> list[Track]:
    """Split rows into tracks; each (seq, person) must be one contiguous block with increasing frames."""
    n = len(seq)
    change = np.flatnonzero((seq[1:] != seq[:-1]) | (person[1:] != person[:-1])) + 1
    bounds = [0, *change.tolist(), n]
    seq_ids: dict[str, int] = {}
    tracks, seen = [], set()
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        key = (str(seq[start]), int(person[start]))
        if key in seen:
            raise FileFormatError(
                f"{path}: rows of sequence {key[0]!r} person {key[1]} are not contiguous "
                "(rows must be ordered by sequence, person, frame)"
            )
        seen.add(key)
        if np.any(np.diff(frame[start:stop]) <= 0):
            raise FileFormatError(
                f"{path}: frames of sequence {key[0]!r} person {key[1]} are not strictly "
                "increasing (rows must be in time order)"
            )
        tracks.append(Track(key[0], seq_ids.setdefault(key[0], len(seq_ids)), key[1], start, stop))
    return tracks


class PreparedDataset(Dataset):
    """One prepared split. Items are dicts of tensors (see `__getitem__`)."""

    def __init__(
        self,
        npz_path: str | Path,
        img_root: str | Path | None = None,
        crop_size: int = 224,
        keypoints: str = "gt",
        keypoint_noise_std: float = 0.02,
        seed: int = 0,
    ) -> None:
        self.path = Path(npz_path)
        if keypoints not in KEYPOINT_MODES:
            raise ValueError(f"keypoints='{keypoints}' is unknown; expected one of {KEYPOINT_MODES}")
        if not self.path.is_file():
            raise FileNotFoundError(
                f"prepared split not found: {self.path} (run python -m cemr.data.prepare)"
            )
        self.img_root = Path(img_root) if img_root is not None else self.path.parent
        self.crop_size, self.mode, self.noise_std, self.seed = crop_size, keypoints, keypoint_noise_std, seed
        self.data = _read_prepared(self.path)
        self.tracks = _tracks(self.data["seq"], self.data["person"], self.data["frame"], self.path)
        self.seq_names = list(dict.fromkeys(t.seq for t in self.tracks))
        self.seq_ids = np.zeros(len(self), dtype=np.int64)
        for t in self.tracks:
            self.seq_ids[t.start : t.stop] = t.seq_id
        self.keypoints_px = self._source_keypoints()

    def _source_keypoints(self) -> np.ndarray:
        """(N, 49, 3) keypoints in image pixels for the chosen mode (before noise)."""
        n, d = len(self), self.data
        if self.mode in ("gt", "noisy"):
            if "part" not in d or not d["part"][..., 2].any():
                raise FileFormatError(
                    f"{self.path}: no GT 2D keypoints ('part' missing or all invisible), "
                    f"so keypoints='{self.mode}' is impossible; use keypoints=detected"
                )
            return np.concatenate([np.zeros((n, 25, 3)), d["part"]], axis=1)
        if "keypoints_detected" in d:
            return d["keypoints_detected"]
        if "openpose" in d and d["openpose"][..., 2].any():
            return np.concatenate([d["openpose"], np.zeros((n, 24, 3))], axis=1)
        raise FileFormatError(
            f"{self.path}: no detector keypoints (neither 'keypoints_detected' nor a non-zero "
            "'openpose'), so keypoints='detected' is impossible; use keypoints=gt"
        )

    def __len__(self) -> int:
        return len(self.data["imgname"])

    def sequences(self) -> list[Track]:
        """The tracks (seq, person) with their row ranges, in file order."""
        return list(self.tracks)

    def image_path(self, index: int) -> Path:
        return self.img_root / str(self.data["imgname"][index])

    def load_image(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB full image of a row."""
        path = self.image_path(index)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            if not path.is_file():
                raise FileNotFoundError(f"{self.path}: row {index} image not found: {path}")
            raise FileFormatError(f"{path}: OpenCV cannot read this image (row {index} of {self.path})")
        return image[:, :, ::-1]

    def crop_keypoints(self, index: int, augment: AugmentParams = NO_AUGMENT) -> np.ndarray:
        """(49, 3) keypoints of a row in [-1, 1] crop units with confidence (noise applied for `noisy`),
        through the crop that `augment` scales, rotates and flips."""
        kp = self.keypoints_px[index]
        center, scale = self.data["center"][index], float(self.data["scale"][index]) * augment.scale
        crop_xy = transform_keypoints(
            kp[:, :2], center, scale, self.crop_size, rot=augment.rot, flip=augment.flip
        )
        xy = normalize_keypoints(crop_xy, self.crop_size)
        visible = kp[:, 2] > 0
        if self.mode == "noisy":
            rng = np.random.default_rng([self.seed, index])
            xy = xy + rng.normal(0.0, self.noise_std, size=xy.shape) * visible[:, None]
        xy = np.where(visible[:, None], xy, 0.0)
        keypoints = np.concatenate([xy, kp[:, 2:]], axis=1)
        return flip_keypoints_49(keypoints) if augment.flip else keypoints

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index)

    def item(self, index: int, augment: AugmentParams = NO_AUGMENT) -> dict[str, Any]:
        """img (3, res, res) ImageNet-normalised RGB, keypoints (49, 3), pose (72,), betas (10,),
        has_smpl, joints3d (24, 4), gender (0 m, 1 f, -1 unknown), seq_id, seq, person, frame,
        index, center (2,), scale, img_hw (2,) full-image size, imgname (full path).

        `augment` (training only) scales, rotates, flips and recolours the crop, with every label
        following (cemr.data.augment); `scale` is then the scaled box's.
        """
        d = self.data
        image = self.load_image(index)
        scale = float(d["scale"][index]) * augment.scale
        crop = crop_image(
            np.ascontiguousarray(image), d["center"][index], scale, self.crop_size, augment.rot, augment.flip
        )
        img = (augment_colour(crop, augment).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        pose, joints3d = d["pose"][index], d["S"][index]
        if augment != NO_AUGMENT:
            pose, joints3d = augment_labels(augment, pose, joints3d)
        return {
            "img": torch.from_numpy(img.transpose(2, 0, 1).copy()),
            "keypoints": torch.from_numpy(self.crop_keypoints(index, augment).astype(np.float32)),
            "pose": torch.from_numpy(pose.astype(np.float32)),
            "betas": torch.from_numpy(d["shape"][index].astype(np.float32)),
            "has_smpl": torch.tensor(float(d["has_smpl"][index]), dtype=torch.float32),
            "joints3d": torch.from_numpy(joints3d.astype(np.float32)),
            "gender": torch.tensor(GENDER_IDS.get(str(d["gender"][index]), -1)),
            "seq_id": torch.tensor(int(self.seq_ids[index])),
            "seq": str(d["seq"][index]),
            "person": torch.tensor(int(d["person"][index])),
            "frame": torch.tensor(int(d["frame"][index])),
            "index": torch.tensor(index),
            "center": torch.from_numpy(d["center"][index].astype(np.float32)),
            "scale": torch.tensor(scale, dtype=torch.float32),
            "img_hw": torch.tensor(image.shape[:2]),
            "imgname": str(self.image_path(index)),
        }


class AugmentedFrames(Dataset):
    """The rows of a PreparedDataset, each drawn through a fresh SPIN augmentation.

    A draw's seed comes from torch's generator, which Lightning seeds in the main process and in
    every worker, so a seeded run gives the same draws with any number of workers.
    """

    def __init__(self, frames: PreparedDataset, augment: SpinAugment) -> None:
        self.frames, self.augment = frames, augment

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        return self.frames.item(index, self.augment.sample(rng))


class TrackSampler(Sampler[int]):
    """Row indices of the given tracks: each track in time order, tracks in the given order."""

    def __init__(self, tracks: list[Track]) -> None:
        self.tracks = list(tracks)

    def __iter__(self):
        for track in self.tracks:
            yield from range(track.start, track.stop)

    def __len__(self) -> int:
        return sum(len(t) for t in self.tracks)


def shard_sequences(tracks: list[Track], rank: int, world_size: int) -> list[Track]:
    """The tracks rank `rank` of `world_size` adapts on (reset=sequence), in file order.

    All tracks of a sequence stay on one rank; sequences go, longest first, to the rank with the
    fewest frames so far (ties: lowest rank), so the shards partition the tracks exactly: every
    track is on exactly one rank and the result is the same on every rank.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"shard_sequences: need 0 <= rank < world_size, found rank={rank}, world_size={world_size}"
        )
    frames: dict[int, int] = {}
    first: dict[int, int] = {}
    for i, t in enumerate(tracks):
        frames[t.seq_id] = frames.get(t.seq_id, 0) + len(t)
        first.setdefault(t.seq_id, i)
    load = [0] * world_size
    owner = {}
    for seq_id in sorted(frames, key=lambda s: (-frames[s], first[s])):
        target = min(range(world_size), key=lambda r: (load[r], r))
        owner[seq_id] = target
        load[target] += frames[seq_id]
    return [t for t in tracks if owner[t.seq_id] == rank]


class CEMRDataModule(L.LightningDataModule):
    """Source split (shuffled batches, training and replay) and target split (the adaptation stream).

    The stream is batch 1, no shuffle, each track in time order; given a rank and world size
    (adapter.reset=sequence under DDP) only that rank's `shard_sequences` share. Lightning must not
    swap in a DistributedSampler for the stream: use Trainer(use_distributed_sampler=False).
    """

    def __init__(
        self,
        root: str | Path,
        source_split: str | None = "train",
        target_split: str = "test",
        keypoints: str = "gt",
        crop_size: int = 224,
        img_root: str | Path | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        keypoint_noise_std: float = 0.02,
        seed: int = 0,
        augment: SpinAugment | None = None,
    ) -> None:
        super().__init__()
        self.augment = augment
        self.root = Path(root)
        self.img_root = Path(img_root) if img_root is not None else self.root
        self.source_split, self.target_split = source_split, target_split
        self.keypoints, self.crop_size = keypoints, crop_size
        # more loader workers than cores only slows things down (and torch warns about it)
        self.batch_size, self.num_workers = batch_size, min(num_workers, os.cpu_count() or 1)
        self.noise_std, self.seed = keypoint_noise_std, seed
        self._source: PreparedDataset | None = None
        self._target: PreparedDataset | None = None

    @classmethod
    def from_config(cls, dataset_cfg, **kwargs) -> CEMRDataModule:
        """Build from a `dataset` config node (root, splits, keypoints, crop_size, optional img_root,
        num_workers, keypoint_noise_std); `kwargs` (batch_size, seed, ...) win."""
        keys = (
            "root",
            "source_split",
            "target_split",
            "keypoints",
            "crop_size",
            "img_root",
            "num_workers",
            "keypoint_noise_std",
        )
        args = {k: dataset_cfg[k] for k in keys if k in dataset_cfg}
        return cls(**{**args, **kwargs})

    def split(self, split: str, keypoints: str) -> PreparedDataset:
        """Any prepared split of this dataset (e.g. a held-out source test split) with the given keypoints."""
        return PreparedDataset(
            self.root / f"{split}.npz", self.img_root, self.crop_size, keypoints, self.noise_std, self.seed
        )

    @property
    def source(self) -> PreparedDataset:
        """The source split with GT keypoints (training labels)."""
        if self.source_split is None:
            raise ValueError(f"dataset at {self.root} has no source split (source_split is null)")
        if self._source is None:
            self._source = self.split(self.source_split, "gt")
        return self._source

    @property
    def target(self) -> PreparedDataset:
        """The target split with the configured keypoints."""
        if self._target is None:
            self._target = self.split(self.target_split, self.keypoints)
        return self._target

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset, num_workers=self.num_workers, persistent_workers=self.num_workers > 0, **kwargs
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) source batches, augmented when the datamodule has an `augment`."""
        generator = torch.Generator().manual_seed(self.seed)
        frames = self.source if self.augment is None else AugmentedFrames(self.source, self.augment)
        return self._loader(frames, batch_size=self.batch_size, shuffle=True, generator=generator)

    def stream_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Target frames one at a time, each track in time order: rank `rank`'s share of the tracks."""
        tracks = shard_sequences(self.target.sequences(), rank, world_size)
        return self._loader(self.target, batch_size=1, sampler=TrackSampler(tracks))

    def test_dataloader(self) -> DataLoader:
        return self.stream_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.stream_dataloader()
