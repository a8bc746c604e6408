"""From a regressor's output to a posed body and its 2D keypoints in the crop (shared by train and adapt)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from cemr.geometry import perspective_projection, rotmat_to_axis_angle, weak_perspective_to_translation
from cemr.models.hmr import shared_stages
from cemr.models.vibe import causal_windows


@dataclass
class BodyPrediction:
    """A batch of predicted bodies; B may be B*T for sequence models."""

    rotmat: torch.Tensor  # (B, 24, 3, 3) global orient first
    betas: torch.Tensor  # (B, 10)
    cam: torch.Tensor  # (B, 3) weak-perspective (s, tx, ty) in the crop
    vertices: torch.Tensor  # (B, V, 3) metres, root-relative SMPL frame
    joints: torch.Tensor  # (B, 49, 3) SPIN joints, metres
    keypoints_2d: torch.Tensor  # (B, 49, 2) projection in normalised crop units [-1, 1]
    feature: torch.Tensor  # (B, C) pooled trunk feature
    head_feature: torch.Tensor  # (B, 1024) regressor's inner feature (dynamic stopping)


def project_to_crop(
    joints: torch.Tensor, cam: torch.Tensor, focal_length: float, crop_size: int
) -> torch.Tensor:
    """(B, J, 3) joints and (B, 3) crop cameras -> (B, J, 2) keypoints in [-1, 1] crop units (SPIN)."""
    translation = weak_perspective_to_translation(cam, focal_length, crop_size)
    return perspective_projection(joints, translation, focal_length) / (crop_size / 2.0)


def decode(output, body_model, focal_length: float, crop_size: int) -> BodyPrediction:
    """Pose the body model with a regressor output (anything with rotmat, betas, cam, feature, head_feature).

    Leading dims beyond the batch (e.g. VIBE's time) are flattened into the batch.
    """
    rotmat = output.rotmat.reshape(-1, 24, 3, 3)
    betas = output.betas.reshape(-1, output.betas.shape[-1])
    cam = output.cam.reshape(-1, 3)
    body = body_model(betas=betas, body_pose=rotmat[:, 1:], global_orient=rotmat[:, :1])
    return BodyPrediction(
        rotmat=rotmat,
        betas=betas,
        cam=cam,
        vertices=body.vertices,
        joints=body.joints,
        keypoints_2d=project_to_crop(body.joints, cam, focal_length, crop_size),
        feature=output.feature.reshape(rotmat.shape[0], -1),
        head_feature=output.head_feature.reshape(rotmat.shape[0], -1),
    )


@torch.no_grad()
def body_vertices(body_model, pose: np.ndarray, betas: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(N, 72) axis-angle pose and (N, 10) betas -> (N, V, 3) float64 vertices in metres, no translation."""
    buffer = next(body_model.buffers())
    out = []
    for start in range(0, len(pose), batch_size):
        p = torch.as_tensor(pose[start : start + batch_size], dtype=buffer.dtype, device=buffer.device)
        b = torch.as_tensor(betas[start : start + batch_size], dtype=buffer.dtype, device=buffer.device)
        verts = body_model(betas=b, body_pose=p[:, 3:], global_orient=p[:, :3]).vertices
        out.append(verts.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 3))


@torch.no_grad()
def predict_frames(
    model: torch.nn.Module, frames, batch_size: int = 64, num_workers: int = 0, features: bool = False
) -> dict:
    """The model's (no adaptation) SMPL parameters for every row of a dataset, in row order.

    A single-frame model sees batches of rows. A sequence model (one declaring `seq_len`) predicts
    each frame from the causal window of its track's last seq_len frames (`causal_windows`), as the
    adaptation stream does: trunk features once per frame, then one window per frame.
    Returns numpy arrays: index (N,), pose (N, 72) axis-angle, betas (N, 10), cam (N, 3) weak-perspective
    crop camera, and with `features` the pooled trunk feature (N, C).
    """
    return predict_frames_of([model], frames, batch_size, num_workers, features)[0]


@torch.no_grad()
def predict_frames_of(
    models: list[torch.nn.Module], frames, batch_size: int = 64, num_workers: int = 0, features: bool = False
) -> list[dict]:
    """`predict_frames` of each model, the same numbers, in one pass over the frames for single-frame
    models: each batch is read once and runs once through the trunk stages whose weights they all
    share (`shared_stages`: an adapted model's frozen ones and its source model's)."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    sequence = [getattr(model, "seq_len", None) is not None for model in models]
    if not any(sequence):
        outputs = _single_frame_outputs(models, frames, batch_size, num_workers)
    else:
        outputs = [
            _sequence_outputs(model, frames, batch_size, num_workers)
            if is_sequence
            else _single_frame_outputs([model], frames, batch_size, num_workers)[0]
            for model, is_sequence in zip(models, sequence, strict=True)
        ]
    for model, mode in zip(models, modes, strict=True):
        model.train(mode)
    return [_parameters(output, len(frames), features) for output in outputs]


def _parameters(outputs: list, count: int, features: bool) -> dict:
    """A model's outputs over the rows -> predict_frames' numpy arrays."""
    result = {
        "index": torch.arange(count).numpy(),
        "pose": torch.cat([rotmat_to_axis_angle(o.rotmat.float()).reshape(-1, 72) for o in outputs]),
        "betas": torch.cat([o.betas.float() for o in outputs]),
        "cam": torch.cat([o.cam.float() for o in outputs]),
    }
    if features:
        result["feature"] = torch.cat([o.feature.float() for o in outputs])
    return {k: v.cpu().numpy() if torch.is_tensor(v) else v for k, v in result.items()}


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _single_frame_outputs(models: list, frames, batch_size: int, num_workers: int) -> list[list]:
    """Each model's outputs for batches of rows, the stages they share run once a batch."""
    shared = shared_stages(models) if len(models) > 1 else 0
    loader = DataLoader(frames, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    outputs = [[] for _ in models]
    for batch in loader:
        images = batch["img"].to(_device(models[0]))
        maps = models[0].stem(images, shared) if shared else images
        for model, output in zip(models, outputs, strict=True):
            output.append(model.forward_from(maps, shared) if shared else model(images))
    return outputs


def _sequence_outputs(model, frames, batch_size: int, num_workers: int) -> list:
    return [
        output
        for track in frames.sequences()
        for output in _causal_track(model, frames, track, batch_size, num_workers)
    ]


def _causal_track(model, frames, track, batch_size: int, num_workers: int):
    """A sequence model's outputs (B, ...) for the rows of one track, each from its causal window."""
    rows = torch.utils.data.Subset(frames, range(track.start, track.stop))
    loader = DataLoader(rows, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats = torch.cat([model.extract_features(b["img"].to(_device(model))[:, None])[:, 0] for b in loader])
    windows = causal_windows(feats, model.seq_len)
    return [model.forward_windows(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
