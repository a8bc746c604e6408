"""2D keypoints of common detectors (OpenPose, AlphaPose, COCO) in SPIN's 49-joint layout.

Readers turn detector files into a flat list of `Detection`s (frame index, (49, 3) keypoints in
pixels + confidence, optional detector track id); `bbox_from_keypoints` gives SPIN's
centre/scale box; `track_by_overlap` links detections of consecutive frames into person tracks
when the detector gave no track ids. Formats: shared/reference/FORMATS.md section 7.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cemr.body.joints import COCO17_TO_J49, NUM_OPENPOSE, OPENPOSE18_TO_J49
from cemr.safe_io import FileFormatError

log = logging.getLogger(__name__)

NUM_JOINTS = 49
BBOX_UNIT = 200.0  # bbox side in pixels = BBOX_UNIT * scale

# Layout name -> 49-slot of each of its joints, in the detector's joint order.
LAYOUT_TO_J49: dict[str, list[int]] = {
    "body25": list(range(NUM_OPENPOSE)),  # OpenPose BODY_25 is SPIN's 0..24 one to one
    "coco18": OPENPOSE18_TO_J49,  # OpenPose COCO model, 3DPW poses2d
    "coco17": COCO17_TO_J49,  # COCO / AlphaPose
}
# Flat keypoint-list length (joints x (x, y, conf)) -> layout, per reader.
_OPENPOSE_LENGTHS = {75: "body25", 54: "coco18"}
_COCO_LENGTHS = {51: "coco17"}


def to_j49(keypoints: np.ndarray, layout: str) -> np.ndarray:
    """(..., J, 3) keypoints of `layout` -> (..., 49, 3), zeros in the slots the layout lacks."""
    slots = LAYOUT_TO_J49[layout]
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape[-2:] != (len(slots), 3):
        raise ValueError(f"to_j49: layout '{layout}' expects (..., {len(slots)}, 3), found {keypoints.shape}")
    out = np.zeros(keypoints.shape[:-2] + (NUM_JOINTS, 3))
    out[..., slots, :] = keypoints
    return out


@dataclass
class Detection:
    """One person in one frame."""

    frame: int
    keypoints: np.ndarray  # (49, 3) pixels x, y and confidence; zeros where undetected
    track: int | None = None  # the detector's own person id (AlphaPose idx, PoseTrack track_id)
    score: float = 1.0


# ----------------------------------------------------------------------------- readers


def frame_index_from_name(name: str, source: Path) -> int:
    """Frame index = the last run of digits in a file name's stem (`clip_000000000012_keypoints` -> 12)."""
    if not isinstance(name, str):
        raise FileFormatError(
            f"{source}: cannot tell a frame index from {_found(name)}, expected a file name"
        )
    stem = Path(name).name.split(".")[0].removesuffix("_keypoints")
    digits = re.findall(r"\d+", stem)
    if not digits:
        raise FileFormatError(f"{source}: cannot tell the frame index of '{name}': its name has no digits")
    return int(digits[-1])


def _is_number(value) -> bool:
    """A JSON number that fits a float64 (json gives True/False as bool, an int subclass)."""
    return isinstance(value, float) or (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
    )


def _is_integer(value) -> bool:
    return _is_number(value) and float(value).is_integer()


def _found(value) -> str:
    return repr(value) if _is_number(value) or value is None else f"a JSON {type(value).__name__}"


def _flat_keypoints(values, lengths: dict[int, str], source: Path, what: str) -> np.ndarray:
    """Flat x0,y0,c0,x1,... list -> (49, 3) via the layout its length implies.

    The values must be finite numbers and the confidences (every third) in [0, 1].
    """
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
        found = _found(values) if not isinstance(values, list) else "a list holding non-numbers"
        raise FileFormatError(f"{source}: {what} should be a list of numbers, found {found}")
    flat = np.asarray(values, dtype=np.float64)
    layout = lengths.get(flat.size)
    if layout is None:
        known = ", ".join(f"{n} ({name}: {n // 3} joints x 3)" for n, name in lengths.items())
        raise FileFormatError(
            f"{source}: unknown keypoint layout: {what} has {flat.size} values, expected one of {known}"
        )
    keypoints = flat.reshape(-1, 3)
    bad = np.flatnonzero(~np.isfinite(keypoints).all(axis=1))
    if bad.size:
        raise FileFormatError(f"{source}: {what} joint {bad[0]} holds NaN or infinite values")
    bad = np.flatnonzero((keypoints[:, 2] < 0.0) | (keypoints[:, 2] > 1.0))
    if bad.size:
        raise FileFormatError(
            f"{source}: {what} joint {bad[0]} has confidence {keypoints[bad[0], 2]:g}, "
            "expected a value in [0, 1]"
        )
    return to_j49(keypoints, layout)


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FileFormatError(f"{path}: not a readable JSON file ({error})") from error


def read_openpose(keypoints_dir: str | Path) -> list[Detection]:
    """A folder of OpenPose per-frame JSON (`<name>_<frame>_keypoints.json`) -> detections.

    `pose_keypoints_2d` holds 75 values (BODY_25) or 54 (OpenPose's COCO-18 model). The frame
    index is the last number in the file name.
    """
    keypoints_dir = Path(keypoints_dir)
    if not keypoints_dir.is_dir():
        raise FileNotFoundError(
            f"OpenPose keypoints: {keypoints_dir} is not a folder of per-frame JSON files"
        )
    files = sorted(keypoints_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"OpenPose keypoints: no *.json files in {keypoints_dir}")
    detections: list[Detection] = []
    seen: dict[int, Path] = {}
    for path in files:
        frame = frame_index_from_name(path.name, path)
        if frame in seen:
            raise FileFormatError(f"{path}: frame index {frame} is also the frame of {seen[frame]}")
        seen[frame] = path
        content = _load_json(path)
        if not isinstance(content, dict) or not isinstance(content.get("people"), list):
            found = sorted(content) if isinstance(content, dict) else type(content).__name__
            raise FileFormatError(
                f"{path}: unknown keypoint layout: expected OpenPose JSON with a 'people' list, found {found}"
            )
        for i, person in enumerate(content["people"]):
            if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
                found = f"keys: {sorted(person)}" if isinstance(person, dict) else _found(person)
                raise FileFormatError(
                    f"{path}: unknown keypoint layout: person {i} has no 'pose_keypoints_2d' ({found})"
                )
            kp = _flat_keypoints(
                person["pose_keypoints_2d"], _OPENPOSE_LENGTHS, path, f"people[{i}].pose_keypoints_2d"
            )
            detections.append(Detection(frame=frame, keypoints=kp))
    return detections


def _read_detection_list(
    entries, path: Path, frame_of, track_key: str | None, id_types: tuple[type, ...]
) -> list[Detection]:
    """COCO results-style entries {image_id, keypoints (51), score, [track_key]} -> detections.

    `image_id` must be of `id_types`; `score` a finite number; the track id an integer, alone or
    in a one-element list (AlphaPose writes `idx` either way).
    """
    if not isinstance(entries, list):
        raise FileFormatError(f"{path}: the detections should be a JSON list, found {_found(entries)}")
    detections = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "keypoints" not in entry or "image_id" not in entry:
            found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise FileFormatError(
                f"{path}: unknown keypoint layout: entry {i} should have 'image_id' "
                f"and 'keypoints', found {found}"
            )
        image_id = entry["image_id"]
        if not isinstance(image_id, id_types) or isinstance(image_id, bool):
            expected = " or ".join("a file name" if t is str else "an integer" for t in id_types)
            raise FileFormatError(
                f"{path}: entry {i} 'image_id' should be {expected}, found {_found(image_id)}"
            )
        kp = _flat_keypoints(entry["keypoints"], _COCO_LENGTHS, path, f"entry {i} 'keypoints'")
        score = entry.get("score", 1.0)
        if not _is_number(score) or not np.isfinite(float(score)):
            raise FileFormatError(f"{path}: entry {i} 'score' should be a number, found {_found(score)}")
        track = None
        if track_key is not None and entry.get(track_key) is not None:
            track = entry[track_key]
            if isinstance(track, list) and len(track) == 1:
                track = track[0]
            if not _is_integer(track):
                raise FileFormatError(
                    f"{path}: entry {i} '{track_key}' should be an integer track id, found {_found(track)}"
                )
        detections.append(
            Detection(
                frame=frame_of(image_id),
                keypoints=kp,
                track=None if track is None else int(track),
                score=float(score),
            )
        )
    return detections


def read_alphapose(path: str | Path) -> list[Detection]:
    """AlphaPose results JSON: a list of {image_id: '<frame>.jpg', keypoints: 17 x 3, score, idx}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AlphaPose keypoints: file not found: {path}")
    content = _load_json(path)
    if not isinstance(content, list):
        raise FileFormatError(
            f"{path}: unknown keypoint layout: expected AlphaPose's JSON list of "
            f"detections, found a {type(content).__name__}"
        )
    return _read_detection_list(
        content, path, lambda image_id: frame_index_from_name(image_id, path), "idx", (str,)
    )


def read_coco(path: str | Path) -> list[Detection]:
    """COCO keypoints JSON: either a results list (like AlphaPose, `image_id` an int frame index or
    a file name) or an annotation dict {images: [{id, file_name, [frame_id]}], annotations:
    [{image_id, keypoints, [track_id]}]} (PoseTrack-style `track_id` gives the person tracks)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO keypoints: file not found: {path}")
    content = _load_json(path)

    def frame_of_id(image_id) -> int:
        return image_id if isinstance(image_id, int) else frame_index_from_name(image_id, path)

    if isinstance(content, list):
        return _read_detection_list(content, path, frame_of_id, "track_id", (int, str))
    if not isinstance(content, dict) or not {"images", "annotations"} <= set(content):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise FileFormatError(
            f"{path}: unknown keypoint layout: expected a COCO results list or a dict "
            f"with 'images' and 'annotations', found {found}"
        )
    if not isinstance(content["images"], list):
        raise FileFormatError(f"{path}: 'images' should be a JSON list, found {_found(content['images'])}")
    frames = {}
    for i, image in enumerate(content["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int | str):
            found = f"keys {sorted(image)}" if isinstance(image, dict) else _found(image)
            raise FileFormatError(
                f"{path}: images entry {i} should have an integer or text 'id', found {found}"
            )
        if "frame_id" not in image:
            frames[image["id"]] = frame_index_from_name(image.get("file_name"), path)
        elif _is_integer(image["frame_id"]):
            frames[image["id"]] = int(image["frame_id"])
        else:
            raise FileFormatError(
                f"{path}: images entry {i} 'frame_id' should be an integer, found {_found(image['frame_id'])}"
            )

    def frame_of_image(image_id) -> int:
        if image_id not in frames:
            raise FileFormatError(f"{path}: annotation refers to image_id {image_id!r}, not in 'images'")
        return frames[image_id]

    return _read_detection_list(content["annotations"], path, frame_of_image, "track_id", (int, str))


READERS = {"openpose": read_openpose, "alphapose": read_alphapose, "coco": read_coco}


def read_keypoints(path: str | Path, keypoints_format: str) -> list[Detection]:
    """Dispatch on `keypoints_format` (openpose | alphapose | coco)."""
    if keypoints_format not in READERS:
        raise ValueError(
            f"keypoints_format '{keypoints_format}' is unknown; expected one of {sorted(READERS)}"
        )
    return READERS[keypoints_format](path)


# ----------------------------------------------------------------------------- boxes and tracks


def keypoint_box(keypoints: np.ndarray, conf_threshold: float = 0.0) -> np.ndarray:
    """(..., J, 3) -> (..., 4) tight box [x0, y0, x1, y1] of the joints with conf > threshold.

    Raises ValueError where a frame has no such joint.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    visible = keypoints[..., 2] > conf_threshold
    if not visible.any(axis=-1).all():
        raise ValueError(f"keypoint_box: a frame has no joint with confidence > {conf_threshold}")
    xy = keypoints[..., :2]
    low = np.where(visible[..., None], xy, np.inf).min(axis=-2)
    high = np.where(visible[..., None], xy, -np.inf).max(axis=-2)
    return np.concatenate([low, high], axis=-1)


def bbox_from_keypoints(
    keypoints: np.ndarray, scale_factor: float, conf_threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(..., J, 3) -> centre (..., 2), scale (...): box centre, scale = factor * max(w, h) / 200.

    The DynaBOA/SPIN rule over the joints with conf > threshold (FORMATS.md 1.4, 3, 7).
    """
    box = keypoint_box(keypoints, conf_threshold)
    center = (box[..., :2] + box[..., 2:]) / 2.0
    scale = scale_factor * (box[..., 2:] - box[..., :2]).max(axis=-1) / BBOX_UNIT
    return center, scale


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [x0, y0, x1, y1] boxes."""
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0.0, None).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
    return float(inter / union) if union > 0 else 0.0


def track_by_overlap(
    detections: list[Detection], conf_threshold: float = 0.0, iou_threshold: float = 0.3, max_gap: int = 5
) -> list[int]:
    """Greedy frame-to-frame tracking: a track id for each detection (same order).

    Frames are visited in order; each detection joins the live track whose last box overlaps it
    most (IoU >= iou_threshold, highest IoU pairs first, one detection per track), else starts a
    new track. A track missed in more than `max_gap` consecutive frames ends.
    """
    boxes = [keypoint_box(d.keypoints, conf_threshold) for d in detections]
    ids = [-1] * len(detections)
    live: dict[int, tuple[np.ndarray, int]] = {}  # track id -> (last box, last frame)
    next_id = 0
    by_frame: dict[int, list[int]] = {}
    for i, det in enumerate(detections):
        by_frame.setdefault(det.frame, []).append(i)
    for frame in sorted(by_frame):
        live = {t: v for t, v in live.items() if frame - v[1] - 1 <= max_gap}  # <= max_gap frames missed
        pairs = sorted(
            ((box_iou(box, boxes[i]), t, i) for t, (box, _) in live.items() for i in by_frame[frame]),
            key=lambda p: -p[0],
        )
        used_tracks: set[int] = set()
        for iou, t, i in pairs:
            if iou < iou_threshold:
                break
            if t not in used_tracks and ids[i] < 0:
                ids[i] = t
                used_tracks.add(t)
        for i in by_frame[frame]:
            if ids[i] < 0:
                ids[i] = next_id
                next_id += 1
            live[ids[i]] = (boxes[i], frame)
    return ids
