"""HMR: a timm CNN trunk and SPIN's iterative error-feedback regressor (6D rotations, mean-param start).

Parameter names follow SPIN (`fc1`, `fc2`, `decpose`, `decshape`, `deccam`, `init_*`) inside the
`regressor` submodule, and torchvision's ResNet layout (`conv1`, `bn1`, `layer1..4`, `downsample`)
inside the `trunk` submodule, so SPIN / DynaBOA checkpoints load after a prefix mapping
(`cemr.models.checkpoints`). VIBE's generator uses the same `regressor.*` names directly.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.layers import GroupNorm
from torch import nn

from cemr.geometry import rot6d_to_rotmat
from cemr.models.pooling import faster_max_pools
from cemr.safe_io import FileFormatError, load_npz

NUM_JOINTS = 24
POSE_6D_DIM = NUM_JOINTS * 6  # 144
NUM_BETAS = 10
CAM_DIM = 3  # weak-perspective (s, tx, ty)
MEAN_PARAM_SHAPES = {"pose": (POSE_6D_DIM,), "shape": (NUM_BETAS,), "cam": (CAM_DIM,)}
# timm ResNet.forward_features, stage by stage (without gradient checkpointing)
RESNET_STAGES = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")


@dataclass
class HMROutput:
    """Regressor output. Leading dims `...` are (B,) for HMR and (B, T) for VIBE."""

    rotmat: torch.Tensor  # (..., 24, 3, 3) SMPL joint rotations, global orientation first
    betas: torch.Tensor  # (..., 10)
    cam: torch.Tensor  # (..., 3) weak-perspective (s, tx, ty) for the crop
    pose6d: torch.Tensor  # (..., 144) the 6D pose before Gram-Schmidt
    feature: torch.Tensor  # (..., C) the regressor's input: pooled trunk feature (VIBE: per frame)
    head_feature: torch.Tensor  # (..., 1024) fc1 output of the last iteration (DynaBOA's stopping feature)

    def last_frame(self) -> HMROutput:
        """(B, T, ...) fields -> (B, ...) of the last time step."""
        return HMROutput(**{f.name: getattr(self, f.name)[:, -1] for f in dataclasses.fields(self)})

    def unflatten(self, batch_size: int, num_frames: int) -> HMROutput:
        """(B*T, ...) fields -> (B, T, ...)."""
        return HMROutput(
            **{
                f.name: getattr(self, f.name).reshape(
                    batch_size, num_frames, *getattr(self, f.name).shape[1:]
                )
                for f in dataclasses.fields(self)
            }
        )


def load_mean_params(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read SPIN's `smpl_mean_params.npz` -> {'pose': (1, 144), 'shape': (1, 10), 'cam': (1, 3)} float32."""
    arrays = load_npz(path)
    params = {}
    for key, shape in MEAN_PARAM_SHAPES.items():
        if key not in arrays:
            raise FileFormatError(
                f"mean-parameter file {path}: lacks key '{key}' (expected keys pose (144,), shape (10,), "
                f"cam (3,); found {sorted(arrays)})"
            )
        if arrays[key].shape != shape:
            raise FileFormatError(
                f"mean-parameter file {path}: key '{key}' has shape {arrays[key].shape}, expected {shape}"
            )
        params[key] = torch.from_numpy(arrays[key].astype("float32")).unsqueeze(0)
    return params


class Regressor(nn.Module):
    """SPIN's iterative error feedback: [feature, pose, shape, cam] -> fc1 -> drop -> fc2 -> drop -> deltas.

    There is no non-linearity between fc1 and fc2 (as in SPIN, DynaBOA and VIBE).
    """

    def __init__(
        self,
        feature_dim: int,
        mean_params: str | os.PathLike,
        n_iter: int = 3,
        dropout: float = 0.5,
        hidden_dim: int = 1024,
    ) -> None:
        super().__init__()
        self.n_iter = n_iter
        self.feature_dim = feature_dim
        self.fc1 = nn.Linear(feature_dim + POSE_6D_DIM + NUM_BETAS + CAM_DIM, hidden_dim)
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.drop2 = nn.Dropout(dropout)
        self.decpose = nn.Linear(hidden_dim, POSE_6D_DIM)
        self.decshape = nn.Linear(hidden_dim, NUM_BETAS)
        self.deccam = nn.Linear(hidden_dim, CAM_DIM)
        for layer in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
        mean = load_mean_params(mean_params)
        self.register_buffer("init_pose", mean["pose"])
        self.register_buffer("init_shape", mean["shape"])
        self.register_buffer("init_cam", mean["cam"])

    def forward(
        self,
        feature: torch.Tensor,
        init_pose: torch.Tensor | None = None,
        init_shape: torch.Tensor | None = None,
        init_cam: torch.Tensor | None = None,
    ) -> HMROutput:
        """feature (N, C) -> HMROutput with (N, ...) fields; starts from the mean parameters unless given."""
        if feature.ndim != 2 or feature.shape[1] != self.feature_dim:
            raise ValueError(
                f"Regressor expects features of shape (N, {self.feature_dim}), got {tuple(feature.shape)}"
            )
        n = feature.shape[0]
        pose = self.init_pose.expand(n, -1) if init_pose is None else init_pose
        shape = self.init_shape.expand(n, -1) if init_shape is None else init_shape
        cam = self.init_cam.expand(n, -1) if init_cam is None else init_cam
        for _ in range(self.n_iter):
            head_feature = self.fc1(torch.cat([feature, pose, shape, cam], dim=1))
            x = self.fc2(self.drop1(head_feature))
            x = self.drop2(x)
            pose = self.decpose(x) + pose
            shape = self.decshape(x) + shape
            cam = self.deccam(x) + cam
        rotmat = rot6d_to_rotmat(pose.reshape(n, NUM_JOINTS, 6))
        return HMROutput(
            rotmat=rotmat, betas=shape, cam=cam, pose6d=pose, feature=feature, head_feature=head_feature
        )


NORM_LAYERS = {
    "batch": nn.BatchNorm2d,
    # DynaBOA's base model: GroupNorm(32 // 8 = 4 groups, C) everywhere BatchNorm was.
    "group": functools.partial(GroupNorm, num_groups=4),
}


def create_trunk(name: str, norm: str = "batch", pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm CNN without pooling or classifier; `trunk.num_features` is its channel count C.

    `norm`: 'batch' (SPIN) or 'group' (GroupNorm with 4 groups, DynaBOA). Extra kwargs go to timm
    (e.g. `channels=(32, 64, 128, 256)` for a half-width ResNet-18); lists become tuples.
    """
    if norm not in NORM_LAYERS:
        raise ValueError(f"trunk norm must be one of {sorted(NORM_LAYERS)}, got '{norm}'")
    if pretrained and norm != "batch":
        raise ValueError(
            f"pretrained ImageNet weights for '{name}' have BatchNorm statistics; they cannot initialise "
            f"a trunk with norm='{norm}' (train from scratch or load a GroupNorm checkpoint instead)"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    trunk = timm.create_model(
        name, pretrained=pretrained, num_classes=0, global_pool="", norm_layer=NORM_LAYERS[norm], **kwargs
    )
    return faster_max_pools(trunk)


def pooled_trunk_features(trunk: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """images (N, 3, H, W) -> (N, C) spatial mean of the last feature map (SPIN's avgpool(7) at 224)."""
    feature_map = trunk.forward_features(images)
    if feature_map.ndim != 4:
        raise ValueError(
            f"trunk {type(trunk).__name__} returns features of shape {tuple(feature_map.shape)}; "
            "HMR needs a CNN feature map (N, C, h, w)"
        )
    return feature_map.mean(dim=(2, 3))


def check_images(images: torch.Tensor, crop_size: int, leading: tuple[str, ...], model: str) -> None:
    """Raise unless images are (*leading, 3, crop_size, crop_size), e.g. leading = ("B", "T")."""
    if images.ndim != len(leading) + 3 or images.shape[-3:] != (3, crop_size, crop_size):
        raise ValueError(
            f"{model} expects images of shape ({', '.join(leading)}, 3, {crop_size}, {crop_size}) "
            f"(crop_size={crop_size}), got {tuple(images.shape)}"
        )


class HMR(nn.Module):
    """Single-frame mesh regressor: trunk -> pooled feature (B, C) -> Regressor."""

    def __init__(
        self,
        mean_params: str | os.PathLike,
        trunk: str = "resnet50",
        norm: str = "group",
        crop_size: int = 224,
        name: str = "hmr",
        trunk_kwargs: dict[str, Any] | None = None,
        pretrained: bool = False,
        n_iter: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.name = name
        self.crop_size = crop_size
        self.trunk = create_trunk(trunk, norm, pretrained, **(trunk_kwargs or {}))
        self.regressor = Regressor(self.trunk.num_features, mean_params, n_iter=n_iter, dropout=dropout)

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S), S = crop_size, ImageNet-normalised RGB -> pooled trunk features (B, C)."""
        check_images(images, self.crop_size, ("B",), "HMR")
        return pooled_trunk_features(self.trunk, images)

    def forward_features(self, features: torch.Tensor) -> HMROutput:
        """Pooled trunk features (B, C) -> HMROutput with (B, ...) fields."""
        return self.regressor(features)

    def forward(self, images: torch.Tensor) -> HMROutput:
        """images (B, 3, S, S) -> HMROutput: rotmat (B, 24, 3, 3), betas (B, 10), cam (B, 3), ..."""
        return self.forward_features(self.extract_features(images))

    @property
    def staged(self) -> bool:
        """Whether the trunk runs as RESNET_STAGES (timm's ResNet without gradient checkpointing)."""
        return type(self.trunk) is timm.models.ResNet and not self.trunk.grad_checkpointing

    def frozen_stages(self) -> int:
        """How many of the trunk's leading stages (RESNET_STAGES) hold no weight that trains: their
        output for an image is the same under any update, so a stream can compute it once (`stem`) and
        run the rest (`forward_from`) as often as it likes. 0 for trunks other than timm's ResNet."""
        count = 0
        for name in RESNET_STAGES if self.staged else ():
            if any(p.requires_grad for p in getattr(self.trunk, name).parameters()):
                break
            count += 1
        return count

    def stem(self, images: torch.Tensor, stages: int) -> torch.Tensor:
        """images (B, 3, S, S) -> the feature maps after the trunk's first `stages` stages."""
        check_images(images, self.crop_size, ("B",), "HMR")
        return self._run_stages(images, 0, stages)

    def forward_from(self, maps: torch.Tensor, stages: int) -> HMROutput:
        """`stem(images, stages)` -> forward(images), the same numbers bit for bit."""
        if stages == 0:
            return self(maps)
        return self.forward_features(self._run_stages(maps, stages, len(RESNET_STAGES)).mean(dim=(2, 3)))

    def _run_stages(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for name in RESNET_STAGES[start:stop]:
            x = getattr(self.trunk, name)(x)
        return x


def shared_stages(models: list[nn.Module]) -> int:
    """How many leading trunk stages (RESNET_STAGES) hold the same weights and buffers in all of
    `models` (HMRs with staged trunks; else 0): one `stem` then serves them all, e.g. an adapted
    model's frozen stages and its source model's."""
    if not all(isinstance(m, HMR) and m.staged for m in models):
        return 0
    count = 0
    for name in RESNET_STAGES:
        states = [getattr(m.trunk, name).state_dict() for m in models]
        if not all(all(torch.equal(state[k], states[0][k]) for k in states[0]) for state in states[1:]):
            break
        count += 1
    return count
