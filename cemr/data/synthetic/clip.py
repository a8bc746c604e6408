"""A demo input for `dataset=video`: one wild sequence of a built benchmark as an mp4 and a folder of
OpenPose BODY_25 JSON files (its detector-like keypoints), the layout a user's own video comes in."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

OPENPOSE_JOINTS = 25  # the first 25 of the 49 SPIN joints are OpenPose BODY_25


def write_clip(benchmark_dir: str | Path, out_dir: str | Path, sequence: int = 0, fps: float = 25.0) -> Path:
    """Write `<out_dir>/clip.mp4` and `<out_dir>/openpose/clip_<frame>_keypoints.json` for the
    `sequence`-th sequence of the benchmark's target split; returns out_dir."""
    benchmark_dir, out_dir = Path(benchmark_dir), Path(out_dir)
    split = benchmark_dir / "target_test.npz"
    if not split.is_file():
        raise FileNotFoundError(
            f"{benchmark_dir}: no target_test.npz; build the benchmark first (python adapt.py, or "
            f"python -m cemr.data.synthetic build --out {benchmark_dir})"
        )
    with np.load(split, allow_pickle=False) as data:
        names = list(dict.fromkeys(data["seq"].tolist()))
        if not 0 <= sequence < len(names):
            raise ValueError(f"{split}: sequence {sequence} does not exist ({len(names)} sequences)")
        rows = np.flatnonzero((data["seq"] == names[sequence]) & (data["person"] == data["person"][0]))
        images = [benchmark_dir / str(name) for name in data["imgname"][rows]]
        keypoints = data["keypoints_detected"][rows, :OPENPOSE_JOINTS]
    first = cv2.imread(str(images[0]))
    height, width = first.shape[:2]
    (out_dir / "openpose").mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out_dir / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        for frame, (image, kp) in enumerate(zip(images, keypoints, strict=True)):
            writer.write(cv2.imread(str(image)))
            people = [{"person_id": [-1], "pose_keypoints_2d": np.round(kp, 3).reshape(-1).tolist()}]
            path = out_dir / "openpose" / f"clip_{frame:012d}_keypoints.json"
            path.write_text(json.dumps({"version": 1.3, "people": people}))
    finally:
        writer.release()
    return out_dir
