"""`render=true` (adapt.py or evaluate.py): a run dir's source-only and adapted meshes over the input
frames, as overlays/frame_*.png and overlays/overlay.mp4, from predictions.npz and config.yaml alone."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf

from cemr.models.prediction import body_vertices
from cemr.runtime import build_body_models, build_datamodule
from cemr.viz.overlay import (
    ADAPTED_COLOR,
    SOURCE_COLOR,
    draw_mesh,
    full_image_camera,
    side_by_side,
    write_video,
)

NEEDED = ("index", "pose", "betas", "cam", "center", "scale", "focal_length", "crop_size")


def load_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    path = run_dir / "predictions.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no predictions.npz; is this the output dir of `python adapt.py`?"
        )
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in NEEDED if k not in f]
        if missing:
            raise ValueError(
                f"{path}: lacks {missing} (written before runs saved cameras and boxes); rerun adapt.py"
            )
        return {k: f[k] for k in f.files}


def render_run(run_dir: str | Path, overlay: DictConfig) -> Path:
    """Draw every `overlay.every`-th frame of the stream (at most `overlay.max_frames`): input, source
    only and adapted side by side. Returns the mp4's path."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    pred = load_predictions(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    target = build_datamodule(cfg).target
    body_model = build_body_models(cfg.body)["neutral"]
    faces = body_model.faces.cpu().numpy()
    rows = np.arange(0, len(pred["index"]), int(overlay.every))
    if overlay.max_frames is not None:
        rows = rows[: int(overlay.max_frames)]
    if not len(rows):
        raise ValueError(
            f"{run_dir}: no frame to draw (overlay.every={overlay.every}, max_frames={overlay.max_frames})"
        )
    models = [("adapted", "", ADAPTED_COLOR)]
    if "source_pose" in pred:
        models.insert(0, ("source only", "source_", SOURCE_COLOR))
    vertices = {
        prefix: body_vertices(body_model, pred[f"{prefix}pose"][rows], pred[f"{prefix}betas"][rows])
        for _, prefix, _ in models
    }
    out_dir = run_dir / "overlays"
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("frame_*.png"):  # an earlier drawing's frames must not mix with these
        old.unlink()
    written = []
    for i, k in enumerate(tqdm(rows, desc="drawing meshes", unit="frame", disable=None)):
        image = np.ascontiguousarray(target.load_image(int(pred["index"][k])))
        panels = [("input", image)]
        for title, prefix, color in models:
            camera, translation = full_image_camera(
                pred[f"{prefix}cam"][k],
                pred["center"][k],
                float(pred["scale"][k]),
                float(pred["focal_length"]),
                int(pred["crop_size"]),
                image.shape[1],
                image.shape[0],
            )
            drawn, _ = draw_mesh(image, vertices[prefix][i], faces, camera, translation, color)
            panels.append((title, drawn))
        path = out_dir / f"frame_{i:05d}.png"
        cv2.imwrite(str(path), side_by_side(panels)[:, :, ::-1])
        written.append(path)
    return write_video(written, out_dir / "overlay.mp4", float(overlay.fps))
