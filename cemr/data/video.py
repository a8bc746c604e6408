"""Any video + 2D keypoints -> a prepared dataset (frames, person tracks, boxes, 49-joint keypoints).

No ground truth: `has_smpl` is 0, pose/shape are zeros, `part` (GT 2D) is zeros, gender 'n'.
The detector's keypoints go to `keypoints_detected` (49 layout) and its BODY_25 slots to
`openpose`, so adaptation runs with `dataset.keypoints=detected`. Frames are written as
`frames/%06d.jpg` (0-based video frame index); the DataModule crops them with center/scale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from cemr.atomic import save_npz_atomic, write_image_atomic
from cemr.data.keypoints import Detection, bbox_from_keypoints, read_keypoints, track_by_overlap
from cemr.data.prepare import mark_prepared, start_or_skip
from cemr.data.validate import without_smpl
from cemr.safe_io import FileFormatError

log = logging.getLogger(__name__)


def read_video(
    path: str | Path, keep: Callable[[int], bool], on_frame: Callable[[int, np.ndarray], None]
) -> int:
    """Walk every frame of `path` in order, decode the kept ones, pass them (BGR) to `on_frame`.

    Returns the number of frames. Raises FileNotFoundError / FileFormatError naming the file when
    it is missing, cannot be opened, or has no frames.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise FileFormatError(
                f"{path}: OpenCV cannot open this video (unknown container/codec or damaged)"
            )
        count = 0
        while capture.grab():
            if keep(count):
                ok, frame = capture.retrieve()
                if not ok:
                    raise FileFormatError(f"{path}: frame {count} cannot be decoded")
                on_frame(count, frame)
            count += 1
    finally:
        capture.release()
    if count == 0:
        raise FileFormatError(f"{path}: the video has no frames")
    return count


def _enough_joints(det: Detection, conf_threshold: float, min_joints: int) -> bool:
    return int((det.keypoints[:, 2] > conf_threshold).sum()) >= min_joints


def assign_tracks(
    detections: list[Detection], conf_threshold: float, iou_threshold: float, max_gap: int, source: Path
) -> list[int]:
    """Track ids per detection: the detector's own ids when every detection has one, else greedy IoU.

    Where a detector id appears twice in one frame, the higher-scoring detection keeps it and the
    other is dropped (id -1), with a warning.
    """
    if not detections or any(d.track is None for d in detections):
        return track_by_overlap(detections, conf_threshold, iou_threshold, max_gap)
    ids = [int(d.track) for d in detections]
    best: dict[tuple[int, int], int] = {}
    for i, det in enumerate(detections):
        key = (det.frame, ids[i])
        if key not in best or det.score > detections[best[key]].score:
            best[key] = i
    dropped = len(detections) - len(best)
    if dropped:
        log.warning(
            "%s: %d detections share a track id with a higher-scoring one in the same frame; dropped",
            source,
            dropped,
        )
    keep = set(best.values())
    return [t if i in keep else -1 for i, t in enumerate(ids)]


def prepare_video(
    video_path: str | Path,
    keypoints_path: str | Path,
    keypoints_format: str,
    out_dir: str | Path,
    seq_name: str = "video",
    split: str = "test",
    scale_factor: float = 1.2,
    conf_threshold: float = 0.2,
    min_joints: int = 6,
    min_track_length: int = 10,
    iou_threshold: float = 0.3,
    max_gap: int = 5,
    frame_offset: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build `<out_dir>/<split>.npz` and `<out_dir>/frames/` from a video and its keypoints.

    Detections with fewer than `min_joints` joints above `conf_threshold` are dropped; tracks
    shorter than `min_track_length` frames are dropped; people are numbered 0.. by first
    appearance. The box is the SPIN/DynaBOA rule (joints above the threshold, box centre,
    `scale_factor * max side / 200`). `frame_offset` is subtracted from the frame numbers in the
    keypoint file names (1 for frames dumped 1-based, e.g. by ffmpeg `%06d.jpg`).
    """
    if video_path is None or keypoints_path is None:
        raise ValueError(
            "dataset=video needs dataset.video_path and dataset.keypoints_path, e.g. `python -m "
            "cemr.data.prepare dataset=video video_path=clip.mp4 keypoints_path=clip_openpose/`"
        )
    video_path, keypoints_path, out_dir = Path(video_path), Path(keypoints_path), Path(out_dir)
    params = dict(
        video_path=video_path.resolve(),
        keypoints_path=keypoints_path.resolve(),
        keypoints_format=keypoints_format,
        seq_name=seq_name,
        split=split,
        scale_factor=scale_factor,
        conf_threshold=conf_threshold,
        min_joints=min_joints,
        min_track_length=min_track_length,
        iou_threshold=iou_threshold,
        max_gap=max_gap,
        frame_offset=frame_offset,
    )
    if min_joints < 1:
        raise ValueError(f"prepare_video: min_joints must be >= 1, found {min_joints}")
    if start_or_skip(out_dir, [split], params, overwrite):
        return out_dir
    if not video_path.is_file():
        raise FileNotFoundError(f"video not found: {video_path}")

    detections = read_keypoints(keypoints_path, keypoints_format)
    for det in detections:
        det.frame -= frame_offset
        if det.frame < 0:
            raise FileFormatError(
                f"{keypoints_path}: frame index {det.frame + frame_offset} minus "
                f"frame_offset {frame_offset} is negative"
            )
    detections = [d for d in detections if _enough_joints(d, conf_threshold, min_joints)]
    tracks = assign_tracks(detections, conf_threshold, iou_threshold, max_gap, keypoints_path)
    members: dict[int, list[int]] = {}
    for i, track in enumerate(tracks):
        if track >= 0:
            members.setdefault(track, []).append(i)
    kept = [m for m in members.values() if len(m) >= min_track_length]
    if not kept:
        raise FileFormatError(
            f"{keypoints_path}: no person track with at least {min_track_length} frames of >= {min_joints} "
            f"joints above confidence {conf_threshold} ({len(detections)} usable detections, "
            f"{len(members)} tracks)"
        )
    kept.sort(key=lambda m: min(detections[i].frame for i in m))  # person ids by first appearance

    rows = [
        (person, detections[i])
        for person, m in enumerate(kept)
        for i in sorted(m, key=lambda i: detections[i].frame)
    ]
    needed = {det.frame for _, det in rows}
    frames_dir = out_dir / "frames"
    num_frames = read_video(
        video_path,
        lambda i: i in needed,
        lambda i, frame: write_image_atomic(frames_dir / f"{i:06d}.jpg", frame),
    )
    if max(needed) >= num_frames:
        raise FileFormatError(
            f"{keypoints_path}: keypoints refer to frame {max(needed)}, but {video_path} has only "
            f"{num_frames} frames (frame counts do not match; check frame_offset)"
        )

    keypoints = np.stack([det.keypoints for _, det in rows])  # (N, 49, 3)
    center, scale = bbox_from_keypoints(keypoints, scale_factor, conf_threshold)
    n = len(rows)
    arrays = {
        "imgname": np.array([f"frames/{det.frame:06d}.jpg" for _, det in rows]),
        "center": center,
        "scale": scale,
        **without_smpl(n),
        "part": np.zeros((n, 24, 3)),
        "openpose": keypoints[:, :25].copy(),
        "keypoints_detected": keypoints,
        "seq": np.full(n, seq_name),
        "person": np.array([person for person, _ in rows], dtype=np.int64),
        "frame": np.array([det.frame for _, det in rows], dtype=np.int64),
    }
    save_npz_atomic(out_dir / f"{split}.npz", arrays)
    mark_prepared(out_dir, params)
    log.info("%s: %d tracks, %d frames -> %s", video_path, len(kept), n, out_dir)
    return out_dir
