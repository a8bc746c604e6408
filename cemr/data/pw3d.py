"""3DPW sequence pickles -> prepared `<split>.npz` (DynaBOA's preprocessing, FORMATS.md sections 1 and 3).

Per sequence, person and frame with a valid camera pose (`campose_valid`):
- pose: SMPL theta with the root rotated into the camera frame (R_cam @ R_root_world);
- part: the 24 GT joints of the gendered SMPL (world pose + trans, through `cam_poses` and K),
  in pixels, visibility 1; center/scale from all 49 projected joints (DynaBOA, scale factor 1.0);
- S: the same 24 joints in the camera frame, metres, centred on the GT pelvis (J24 index 14);
  trans: camera-frame root translation, so SMPL(pose_cam, betas) + trans is the camera-frame body;
- keypoints_detected / openpose: 3DPW's own OpenPose COCO-18 detections (`poses2d`) in the
  49 / BODY_25 slots.
imgname is relative to the 3DPW root (`imageFiles/<seq>/image_%05d.jpg`), which is the image root
the DataModule reads from (dataset.img_root).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cemr.atomic import save_npz_atomic
from cemr.body import GENDER_CODES
from cemr.body.joints import NUM_OPENPOSE
from cemr.data.keypoints import bbox_from_keypoints, to_j49
from cemr.data.prepare import mark_prepared, start_or_skip
from cemr.geometry import axis_angle_to_rotmat, rotmat_to_axis_angle
from cemr.safe_io import FileFormatError, load_pickle

log = logging.getLogger(__name__)

# DynaBOA's fixed order of the 24 test sequences (its results depend on the stream order).
DYNABOA_TEST_ORDER = [
    "downtown_runForBus_00",
    "downtown_rampAndStairs_00",
    "flat_packBags_00",
    "downtown_runForBus_01",
    "office_phoneCall_00",
    "downtown_windowShopping_00",
    "downtown_walkUphill_00",
    "downtown_sitOnStairs_00",
    "downtown_enterShop_00",
    "downtown_walking_00",
    "downtown_stairs_00",
    "downtown_crossStreets_00",
    "downtown_car_00",
    "downtown_downstairs_00",
    "downtown_bar_00",
    "downtown_walkBridge_01",
    "downtown_weeklyMarket_00",
    "downtown_warmWelcome_00",
    "downtown_arguing_00",
    "downtown_upstairs_00",
    "downtown_bus_00",
    "flat_guitar_01",
    "downtown_cafe_00",
    "outdoors_fencing_01",
]
GT_PELVIS = 14  # "Pelvis (MPII)" in the 24 GT joints


@dataclass
class Sequence3DPW:
    """One 3DPW sequence pickle, checked; P people, N image frames."""

    name: str
    genders: list[str]  # P x 'm' / 'f'
    betas: np.ndarray  # (P, 10)
    poses: np.ndarray  # (P, N, 72) world-frame axis-angle
    trans: np.ndarray  # (P, N, 3) world-frame root translation, metres
    poses2d: np.ndarray  # (P, N, 18, 3) OpenPose COCO-18 x, y, conf
    campose_valid: np.ndarray  # (P, N) bool
    cam_poses: np.ndarray  # (N, 4, 4) world -> camera
    intrinsics: np.ndarray  # (3, 3)


def _found(value) -> str:
    """A short description of a value found in a file, for error messages."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)}"
    return "None" if value is None else f"a value of type {type(value).__name__}"


def _numbers(value, path: Path, what: str, kinds: str = "iuf") -> np.ndarray:
    """`value` as an array of numbers (numpy kinds `kinds`), or a FileFormatError naming file and `what`."""
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nested lists
        raise FileFormatError(f"{path}: {what} is not an array ({error})") from error
    if array.dtype.kind not in kinds:
        raise FileFormatError(f"{path}: {what} holds {_found(array)}, expected numbers")
    return array


def _person_list(data: dict, key: str, people: int | None, path: Path) -> list:
    """`data[key]`, checked to be a list with one entry per person (`people`, or at least one if None)."""
    value = data[key]
    if not isinstance(value, list | tuple) or not value or (people is not None and len(value) != people):
        expected = "at least one" if people is None else f"{people}, as in 'genders'"
        raise FileFormatError(
            f"{path}: key '{key}' should be a list with one entry per person ({expected}), "
            f"found {_found(value)}"
        )
    return list(value)


def _per_person(data: dict, key: str, people: int, frame_shape: tuple, frames: int, path: Path) -> np.ndarray:
    """Stack the per-person list `data[key]` into (P, N, *frame_shape), checking every entry."""
    out = []
    for p, entry in enumerate(_person_list(data, key, people, path)):
        entry = _numbers(entry, path, f"key '{key}' person {p}", kinds="biuf")
        expected = (frames, *frame_shape)
        if entry.shape != expected:
            raise FileFormatError(
                f"{path}: key '{key}' person {p} has shape {entry.shape}, expected {expected} "
                f"(N = {frames} frames, the length of 'cam_poses')"
            )
        out.append(entry)
    return np.stack(out)


def _check_finite(path: Path, key: str, values: np.ndarray, used: np.ndarray) -> None:
    """Refuse NaN/inf in `values` at the (person,) frame entries marked in `used` ((P, N) or (N,))."""
    bad = np.argwhere(used & ~np.isfinite(values).reshape(*used.shape, -1).all(axis=-1))
    if len(bad):
        where = f"person {bad[0][0]} frame {bad[0][1]}" if used.ndim == 2 else f"frame {bad[0][0]}"
        raise FileFormatError(
            f"{path}: key '{key}' {where} holds NaN or infinite values (a frame with a valid camera pose)"
        )


def load_sequence(path: str | Path) -> Sequence3DPW:
    """Read and check a 3DPW sequence pickle (python-2 pickle, restricted loader, latin1)."""
    path = Path(path)
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise FileFormatError(f"{path}: expected a dict at the top level, found {type(data).__name__}")
    required = [
        "sequence",
        "genders",
        "betas",
        "poses",
        "trans",
        "poses2d",
        "campose_valid",
        "cam_poses",
        "cam_intrinsics",
    ]
    missing = [k for k in required if k not in data]
    if missing:
        raise FileFormatError(
            f"{path}: not a 3DPW sequence file: missing keys {missing} (found {sorted(map(str, data))})"
        )
    if not isinstance(data["sequence"], str):
        raise FileFormatError(
            f"{path}: key 'sequence' should be the sequence name, found {_found(data['sequence'])}"
        )
    cam_poses = _numbers(data["cam_poses"], path, "key 'cam_poses'").astype(np.float64)
    if cam_poses.ndim != 3 or cam_poses.shape[1:] != (4, 4):
        raise FileFormatError(f"{path}: key 'cam_poses' has shape {cam_poses.shape}, expected (N, 4, 4)")
    intrinsics = _numbers(data["cam_intrinsics"], path, "key 'cam_intrinsics'").astype(np.float64)
    if intrinsics.shape != (3, 3):
        raise FileFormatError(f"{path}: key 'cam_intrinsics' has shape {intrinsics.shape}, expected (3, 3)")
    if not np.isfinite(intrinsics).all():
        raise FileFormatError(f"{path}: key 'cam_intrinsics' holds NaN or infinite values")
    frames = cam_poses.shape[0]
    genders = []
    for p, g in enumerate(_person_list(data, "genders", None, path)):
        if not isinstance(g, str) or g.lower() not in ("m", "male", "f", "female"):
            raise FileFormatError(f"{path}: key 'genders' person {p} is {g!r}, expected 'm' or 'f'")
        genders.append(g.lower()[0])
    people = len(genders)
    betas = []
    for p, b in enumerate(_person_list(data, "betas", people, path)):
        b = _numbers(b, path, f"key 'betas' person {p}").astype(np.float64).reshape(-1)
        if b.size < 10:
            raise FileFormatError(f"{path}: key 'betas' person {p} has {b.size} values, expected at least 10")
        if not np.isfinite(b[:10]).all():
            raise FileFormatError(f"{path}: key 'betas' person {p} holds NaN or infinite values")
        betas.append(b[:10])
    seq = Sequence3DPW(
        name=data["sequence"],
        genders=genders,
        betas=np.stack(betas),
        poses=_per_person(data, "poses", people, (72,), frames, path).astype(np.float64),
        trans=_per_person(data, "trans", people, (3,), frames, path).astype(np.float64),
        poses2d=_per_person(data, "poses2d", people, (3, 18), frames, path)
        .astype(np.float64)
        .transpose(0, 1, 3, 2),
        campose_valid=_per_person(data, "campose_valid", people, (), frames, path).astype(bool),
        cam_poses=cam_poses,
        intrinsics=intrinsics,
    )
    _check_finite(path, "poses", seq.poses, seq.campose_valid)
    _check_finite(path, "trans", seq.trans, seq.campose_valid)
    _check_finite(path, "cam_poses", cam_poses, seq.campose_valid.any(axis=0))
    return seq


def camera_frame_pose(pose_world: np.ndarray, cam_rotation: np.ndarray) -> np.ndarray:
    """(M, 72) world-frame theta, (M, 3, 3) world->camera R -> (M, 72) with root R @ R_root (FORMATS 1.3)."""
    root = axis_angle_to_rotmat(torch.as_tensor(pose_world[:, :3], dtype=torch.float64))
    root_cam = torch.as_tensor(cam_rotation, dtype=torch.float64) @ root
    out = pose_world.copy()
    out[:, :3] = rotmat_to_axis_angle(root_cam).numpy()
    return out


def world_to_camera(points_world: np.ndarray, cam_poses: np.ndarray) -> np.ndarray:
    """(M, J, 3) world points, (M, 4, 4) extrinsics -> (M, J, 3) camera-frame points, X_c = R X_w + t."""
    return points_world @ cam_poses[:, :3, :3].transpose(0, 2, 1) + cam_poses[:, None, :3, 3]


def project(points_cam: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame points -> (..., 2) pixels, uv = (K (X / Z))_xy."""
    return (points_cam / points_cam[..., 2:]) @ intrinsics[:2].T


def sequence_files(raw_root: Path, split: str, sequences: list[str] | None = None) -> list[Path]:
    """The pickles of a split, in stream order.

    `sequences` given: exactly these, in that order. Otherwise every pickle of the split: for the
    test split DynaBOA's 24 in its order first, then any others sorted by name.
    """
    split_dir = raw_root / "sequenceFiles" / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"3DPW: split folder {split_dir} not found (expected the official layout "
            f"<3DPW root>/sequenceFiles/{{train,validation,test}}/<seq>.pkl; see data/README.md)"
        )
    if sequences is not None:
        files = [split_dir / f"{name}.pkl" for name in sequences]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"3DPW: sequence files not found: {missing}")
        return files
    files = sorted(split_dir.glob("*.pkl"))
    if not files:
        raise FileNotFoundError(f"3DPW: no sequence pickles in {split_dir}")
    rank = {name: i for i, name in enumerate(DYNABOA_TEST_ORDER)} if split == "test" else {}
    return sorted(files, key=lambda f: (rank.get(f.stem, len(rank)), f.stem))


class _GenderedBodies:
    """Male/female body models loaded once, run in float64 in chunks."""

    def __init__(self, model_dir: str | Path, regressor_extra=None, regressor_h36m=None, chunk: int = 256):
        from cemr.body import load_body_model

        self.chunk, self.models = chunk, {}
        self._load = functools.partial(
            load_body_model,
            model_dir,
            regressor_extra=regressor_extra,
            regressor_h36m=regressor_h36m,
            dtype=torch.float64,
        )

    @torch.no_grad()
    def __call__(self, gender: str, pose: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 72) pose, (M, 10) betas -> 49 joints (M, 49, 3) and SMPL root joint (M, 3), no translation."""
        if gender not in self.models:
            self.models[gender] = self._load(gender=GENDER_CODES[gender])
        model = self.models[gender]
        joints, roots = [], []
        for start in range(0, len(pose), self.chunk):
            p = torch.as_tensor(pose[start : start + self.chunk], dtype=torch.float64)
            b = torch.as_tensor(betas[start : start + self.chunk], dtype=torch.float64)
            out = model(betas=b, body_pose=p[:, 3:], global_orient=p[:, :3])
            joints.append(out.joints.numpy())
            roots.append(out.smpl_joints[:, 0].numpy())
        return np.concatenate(joints), np.concatenate(roots)


def person_rows(
    seq: Sequence3DPW, p: int, bodies: _GenderedBodies, scale_factor: float, drop_missing_poses2d: bool
) -> dict[str, np.ndarray] | None:
    """The prepared rows of person `p` of `seq` (valid frames in time order), or None if it has none."""
    keep = seq.campose_valid[p].copy()
    if drop_missing_poses2d:  # the official 3dpw-eval rule, off in DynaBOA
        keep &= np.abs(seq.poses2d[p]).sum(axis=(1, 2)) > 0
    frames = np.flatnonzero(keep)
    if frames.size == 0:
        return None
    m = frames.size
    pose_world = seq.poses[p, frames]
    betas = np.repeat(seq.betas[p][None], m, axis=0)
    joints_body, root_rest = bodies(seq.genders[p], pose_world, betas)
    cams = seq.cam_poses[frames]
    joints_cam = world_to_camera(joints_body + seq.trans[p, frames, None], cams)  # (M, 49, 3)
    j2d = np.concatenate([project(joints_cam, seq.intrinsics), np.ones((m, 49, 1))], axis=-1)
    center, scale = bbox_from_keypoints(j2d, scale_factor)
    # Rotating the root turns the body about its rest root joint J0, so the camera-frame
    # translation is R (J0 + trans_w) + t - J0.
    root_joint_cam = world_to_camera((root_rest + seq.trans[p, frames])[:, None], cams)[:, 0]
    gt3d = joints_cam[:, NUM_OPENPOSE:] - joints_cam[:, NUM_OPENPOSE + GT_PELVIS, None]
    detected = to_j49(seq.poses2d[p, frames], "coco18")
    return {
        "imgname": np.array([f"imageFiles/{seq.name}/image_{i:05d}.jpg" for i in frames]),
        "center": center,
        "scale": scale,
        "pose": camera_frame_pose(pose_world, cams[:, :3, :3]),
        "shape": betas,
        "has_smpl": np.ones(m),
        "gender": np.full(m, seq.genders[p]),
        "S": np.concatenate([gt3d, np.ones((m, 24, 1))], axis=-1),
        "part": j2d[:, NUM_OPENPOSE:].copy(),
        "openpose": detected[:, :NUM_OPENPOSE].copy(),
        "keypoints_detected": detected,
        "trans": root_joint_cam - root_rest,
        "seq": np.full(m, seq.name),
        "person": np.full(m, p, dtype=np.int64),
        "frame": frames.astype(np.int64),
    }


def prepare_split(
    raw_root: Path,
    split: str,
    bodies: _GenderedBodies,
    sequences: list[str] | None,
    scale_factor: float,
    drop_missing_poses2d: bool,
) -> dict[str, np.ndarray]:
    """All rows of a split, ordered by (sequence in stream order, person, frame)."""
    parts = []
    for path in sequence_files(raw_root, split, sequences):
        seq = load_sequence(path)
        if seq.name != path.stem:
            raise FileFormatError(
                f"{path}: key 'sequence' is {seq.name!r}, expected the file name {path.stem!r}"
            )
        for p in range(len(seq.genders)):
            rows = person_rows(seq, p, bodies, scale_factor, drop_missing_poses2d)
            if rows is not None:
                parts.append(rows)
    if not parts:
        raise FileFormatError(f"3DPW split '{split}' in {raw_root}: no frame with a valid camera pose")
    arrays = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    missing = [name for name in dict.fromkeys(arrays["imgname"]) if not (raw_root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"3DPW split '{split}': {len(missing)} images missing under {raw_root}, "
            f"first {raw_root / missing[0]} (imageFiles/ incomplete?)"
        )
    return arrays


def prepare_3dpw(
    raw_root: str | Path,
    out_dir: str | Path,
    body_model_dir: str | Path,
    regressor_extra: str | Path | None = None,
    regressor_h36m: str | Path | None = None,
    splits: list[str] = ("train", "validation", "test"),
    sequences: dict[str, list[str]] | None = None,
    scale_factor: float = 1.0,
    drop_missing_poses2d: bool = False,
    overwrite: bool = False,
) -> Path:
    """Build `<out_dir>/<split>.npz` for each split from the 3DPW root; returns `out_dir`.

    Returns at once when `out_dir` already holds these splits built with the same parameters.
    `body_model_dir` holds the gendered SMPL models (SMPL_MALE/FEMALE); the regressors default to
    J_regressor_extra.npy / J_regressor_h36m.npy next to them or one folder up (cemr.body);
    `sequences` optionally restricts a split to named sequences (in that order).
    """
    raw_root, out_dir = Path(raw_root), Path(out_dir)
    splits = list(splits)
    params = dict(
        dataset="3dpw",
        raw_root=raw_root.resolve(),
        body_model_dir=Path(body_model_dir).resolve(),
        regressor_extra=None if regressor_extra is None else Path(regressor_extra).resolve(),
        splits=splits,
        sequences=sequences,
        scale_factor=scale_factor,
        drop_missing_poses2d=drop_missing_poses2d,
    )
    if start_or_skip(out_dir, splits, params, overwrite):
        return out_dir
    if not raw_root.is_dir():
        raise FileNotFoundError(
            f"3DPW root {raw_root} not found; download 3DPW and place it there "
            "(see data/README.md), or set dataset.raw_root"
        )
    bodies = _GenderedBodies(body_model_dir, regressor_extra, regressor_h36m)
    arrays = {
        split: prepare_split(
            raw_root, split, bodies, (sequences or {}).get(split), scale_factor, drop_missing_poses2d
        )
        for split in splits
    }
    for split, split_arrays in arrays.items():
        save_npz_atomic(out_dir / f"{split}.npz", split_arrays)
        log.info("3DPW %s: %d frames -> %s", split, len(split_arrays["imgname"]), out_dir / f"{split}.npz")
    mark_prepared(out_dir, params)
    return out_dir
