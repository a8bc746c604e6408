"""Human3.6M CDF poses + videos -> prepared `<split>.npz` and `images/` (SPIN's preprocessing, FORMATS.md 4).

Per subject, action and camera: `MyPoseFeatures/D3_Positions_mono/<Action>.<camera>.cdf` (32 joints,
camera frame, mm), `MyPoseFeatures/D2_Positions/<Action>.<camera>.cdf` (32 joints, pixels) and
`Videos/<Action>.<camera>.mp4`. Every `frame_step`-th frame (frame_i % 5 == 0 by default) becomes
a row and a jpg `images/<S>_<Action>.<camera>_<frame_i+1:06d>.jpg` (spaces in the action name become
`_`; `_ALL` files are skipped). 17 of the 32 joints are placed in the 24 GT order: S (N, 24, 4)
in metres centred on the pelvis, part (N, 24, 3) pixels, both with visibility 1 on those 17.

Deviation from SPIN: SPIN's box comes from the foreground masks (MySegmentsMat, scale factor 0.9);
here it comes from the 32 2D joints (box centre, `scale_factor * max side / 200`, 1.2 by default),
so no mask files are needed. SMPL pose/shape are zeros with has_smpl 0 unless a fits npz is given.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cemr.atomic import save_npz_atomic, write_image_atomic
from cemr.body.joints import H36M32_TO_J24_SOURCE, H36M32_TO_J24_TARGET
from cemr.data.keypoints import bbox_from_keypoints
from cemr.data.prepare import mark_prepared, start_or_skip
from cemr.data.validate import without_smpl
from cemr.data.video import read_video
from cemr.safe_io import FileFormatError, load_npz

log = logging.getLogger(__name__)

CAMERAS = ("54138969", "55011271", "58860488", "60457274")
TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
PROTOCOL2_CAMERA = "60457274"


def read_cdf_pose(path: Path, width: int) -> np.ndarray:
    """The `Pose` zVariable of a Human3.6M CDF as (N, width) float64 (record axis of size 1 dropped)."""
    from spacepy import pycdf

    if not path.is_file():
        raise FileNotFoundError(f"Human3.6M: CDF file not found: {path}")
    try:
        cdf = pycdf.CDF(str(path))
    except Exception as error:  # noqa: BLE001 - pycdf raises CDFError and OS errors alike
        raise FileFormatError(f"{path}: not a readable CDF file ({type(error).__name__}: {error})") from error
    try:
        if "Pose" not in cdf:
            raise FileFormatError(f"{path}: no zVariable 'Pose' (found {sorted(cdf.keys())})")
        pose = np.asarray(cdf["Pose"][...], dtype=np.float64)
    finally:
        cdf.close()
    if pose.ndim == 3 and pose.shape[0] == 1:
        pose = pose[0]
    if pose.ndim != 2 or pose.shape[1] != width or pose.shape[0] == 0:
        raise FileFormatError(
            f"{path}: 'Pose' has shape {pose.shape}, expected (1, N, {width}) with N >= 1 "
            f"(32 joints x {width // 32} values)"
        )
    return pose


def subject_sequences(subject_dir: Path, cameras: list[str] | None) -> list[tuple[str, str]]:
    """(action as in the file names, camera id) of a subject, sorted; `_ALL` files skipped."""
    mono_dir = subject_dir / "MyPoseFeatures" / "D3_Positions_mono"
    if not mono_dir.is_dir():
        raise FileNotFoundError(
            f"Human3.6M: {mono_dir} not found (expected <H36M root>/<subject>/"
            "MyPoseFeatures/D3_Positions_mono/<Action>.<camera>.cdf; see data/README.md)"
        )
    found = []
    for path in sorted(mono_dir.glob("*.cdf")):
        parts = path.name.split(".")
        if len(parts) != 3:
            raise FileFormatError(f"{path}: file name should be <Action>.<camera>.cdf")
        action, camera = parts[0], parts[1]
        if action.startswith("_ALL") or (cameras is not None and camera not in cameras):
            continue
        found.append((action, camera))
    if not found:
        raise FileNotFoundError(f"Human3.6M: no sequences for cameras {cameras or 'all'} in {mono_dir}")
    return found


def place_gt_joints(joints32: np.ndarray) -> np.ndarray:
    """(N, 32, D) raw joints -> (N, 24, D+1): the 17 H3.6M joints in the 24 GT order, visibility 1."""
    out = np.zeros((joints32.shape[0], 24, joints32.shape[2] + 1))
    out[:, H36M32_TO_J24_TARGET, :-1] = joints32[:, H36M32_TO_J24_SOURCE]
    out[:, H36M32_TO_J24_TARGET, -1] = 1.0
    return out


def sequence_rows(
    raw_root: Path,
    out_dir: Path,
    subject: str,
    action: str,
    camera: str,
    frame_step: int,
    scale_factor: float,
    max_extra_video_frames: int,
    overwrite: bool,
) -> dict[str, np.ndarray]:
    """Rows of one (subject, action, camera) sequence; writes its images."""
    subject_dir = raw_root / subject
    name = f"{action}.{camera}"
    mono_path = subject_dir / "MyPoseFeatures" / "D3_Positions_mono" / f"{name}.cdf"
    d2_path = subject_dir / "MyPoseFeatures" / "D2_Positions" / f"{name}.cdf"
    video_path = subject_dir / "Videos" / f"{name}.mp4"
    pose3d = read_cdf_pose(mono_path, 96).reshape(-1, 32, 3) / 1000.0  # mm -> m
    pose2d = read_cdf_pose(d2_path, 64).reshape(-1, 32, 2)
    n = pose3d.shape[0]
    if pose2d.shape[0] != n:
        raise FileFormatError(
            f"{d2_path}: {pose2d.shape[0]} frames, but {mono_path} has {n} (frame counts differ)"
        )

    seq = f"{subject}_{action.replace(' ', '_')}.{camera}"
    frames = np.arange(0, n, frame_step)
    imgnames = [f"images/{seq}_{i + 1:06d}.jpg" for i in frames]
    wanted = dict(zip(frames.tolist(), imgnames, strict=True))

    def keep(i: int) -> bool:  # a complete jpg is never rewritten unless asked (writes are atomic)
        return i in wanted and (overwrite or not (out_dir / wanted[i]).is_file())

    num_video = read_video(video_path, keep, lambda i, img: write_image_atomic(out_dir / wanted[i], img))
    if not n <= num_video <= n + max_extra_video_frames:
        raise FileFormatError(
            f"{video_path}: {num_video} video frames, but {mono_path} has {n} poses "
            f"(frame counts differ; max_extra_video_frames={max_extra_video_frames})"
        )

    joints3d = pose3d[frames]
    s24 = place_gt_joints(joints3d - joints3d[:, H36M32_TO_J24_SOURCE[0], None])  # root: raw joint 11, pelvis
    center, scale = bbox_from_keypoints(
        np.concatenate([pose2d[frames], np.ones((len(frames), 32, 1))], -1), scale_factor
    )
    m = len(frames)
    return {
        "imgname": np.array(imgnames),
        "center": center,
        "scale": scale,
        **without_smpl(m),
        "S": s24,
        "part": place_gt_joints(pose2d[frames]),
        "openpose": np.zeros((m, 25, 3)),
        "seq": np.full(m, seq),
        "person": np.zeros(m, dtype=np.int64),
        "frame": frames.astype(np.int64),
    }


def merge_smpl_fits(arrays: dict[str, np.ndarray], fits_path: Path) -> int:
    """Fill pose/shape/has_smpl from a fits npz (imgname (M,), pose (M, 72), shape (M, >=10)).

    Rows are matched by imgname; returns the number of matched rows.
    """
    fits = load_npz(fits_path)
    missing = [key for key in ("imgname", "pose", "shape") if key not in fits]
    if missing:
        raise FileFormatError(f"{fits_path}: keys {missing} missing (found {sorted(fits)})")
    m = len(fits["imgname"]) if fits["imgname"].ndim == 1 else -1
    wrong = {
        "imgname": ("(M,)", m < 0),
        "pose": ("(M, 72)", fits["pose"].shape != (m, 72)),
        "shape": (
            "(M, >=10)",
            fits["shape"].ndim != 2 or len(fits["shape"]) != m or fits["shape"].shape[1] < 10,
        ),
    }
    for key, (expected, bad) in wrong.items():
        if bad:
            raise FileFormatError(
                f"{fits_path}: key '{key}' has shape {fits[key].shape}, expected {expected} "
                f"with M = {m} (the length of 'imgname')"
            )
    row_of = {str(name): i for i, name in enumerate(fits["imgname"])}
    matched = 0
    for r, name in enumerate(arrays["imgname"]):
        i = row_of.get(str(name))
        if i is not None:
            arrays["pose"][r] = fits["pose"][i]
            arrays["shape"][r] = fits["shape"][i, :10]
            arrays["has_smpl"][r] = 1.0
            matched += 1
    return matched


def prepare_h36m(
    raw_root: str | Path,
    out_dir: str | Path,
    splits: dict[str, dict] | None = None,
    frame_step: int = 5,
    scale_factor: float = 1.2,
    smpl_fits: str | Path | None = None,
    max_extra_video_frames: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build `<out_dir>/<split>.npz` + `<out_dir>/images/` from the Human3.6M root; returns `out_dir`.

    `splits` maps a split name to {subjects: [...], cameras: [...] or None (all four)}; the default
    is train = S1 S5 S6 S7 S8, all cameras, and test = S9 S11, camera 60457274 (protocol 2).
    Returns at once when `out_dir` already holds these splits built with the same parameters.
    `smpl_fits`: optional npz of SMPL fits keyed by imgname (e.g. SPIN's h36m_train extras).
    A video may have up to `max_extra_video_frames` more frames than its CDF (ignored, as SPIN
    does); any other mismatch is an error.
    """
    raw_root, out_dir = Path(raw_root), Path(out_dir)
    if splits is None:
        splits = {
            "train": {"subjects": list(TRAIN_SUBJECTS), "cameras": None},
            "test": {"subjects": list(TEST_SUBJECTS), "cameras": [PROTOCOL2_CAMERA]},
        }
    splits = {
        name: {
            "subjects": [str(s) for s in spec["subjects"]],
            "cameras": None if spec.get("cameras") is None else [str(c) for c in spec["cameras"]],
        }
        for name, spec in dict(splits).items()
    }
    params = dict(
        dataset="h36m",
        raw_root=raw_root.resolve(),
        splits=splits,
        frame_step=frame_step,
        scale_factor=scale_factor,
        smpl_fits=None if smpl_fits is None else Path(smpl_fits).resolve(),
        max_extra_video_frames=max_extra_video_frames,
    )
    if start_or_skip(out_dir, list(splits), params, overwrite):
        return out_dir
    if not raw_root.is_dir():
        raise FileNotFoundError(
            f"Human3.6M root {raw_root} not found; download Human3.6M and place it there "
            "(see data/README.md), or set dataset.raw_root"
        )
    for split, spec in splits.items():
        parts = []
        for subject in spec["subjects"]:
            if not (raw_root / subject).is_dir():
                raise FileNotFoundError(
                    f"Human3.6M: subject folder {raw_root / subject} not found (split '{split}')"
                )
            for action, camera in subject_sequences(raw_root / subject, spec["cameras"]):
                parts.append(
                    sequence_rows(
                        raw_root,
                        out_dir,
                        subject,
                        action,
                        camera,
                        frame_step,
                        scale_factor,
                        max_extra_video_frames,
                        overwrite,
                    )
                )
        arrays = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        if smpl_fits is not None:
            matched = merge_smpl_fits(arrays, Path(smpl_fits))
            log.info("Human3.6M %s: SMPL fits for %d of %d frames", split, matched, len(arrays["imgname"]))
        save_npz_atomic(out_dir / f"{split}.npz", arrays)
        log.info("Human3.6M %s: %d frames -> %s", split, len(arrays["imgname"]), out_dir / f"{split}.npz")
    mark_prepared(out_dir, params)
    return out_dir
