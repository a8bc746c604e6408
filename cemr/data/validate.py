"""Checks of a prepared split (keys, shapes, dtypes and values), run once when it is loaded.

Every check is vectorised over the whole split and raises `FileFormatError` naming the file, the
key, the first bad row (with its seq/person/frame when the file has them), what was expected and
what was found, so a bad file is refused before any training or adaptation work starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cemr.safe_io import FileFormatError

# key -> shape after the row axis; None = any (checked separately). Only imgname, center and scale
# are required; the others get SPIN's defaults when absent.
SHAPES: dict[str, tuple | None] = {
    "imgname": (),
    "center": (2,),
    "scale": (),
    "pose": (72,),
    "shape": None,
    "has_smpl": (),
    "gender": (),
    "S": (24, 4),
    "part": (24, 3),
    "openpose": (25, 3),
    "keypoints_detected": (49, 3),
    "seq": (),
    "person": (),
    "frame": (),
    "trans": (3,),
    "focal": (),
}
REQUIRED = ("imgname", "center", "scale")


def without_smpl(rows: int) -> dict[str, np.ndarray]:
    """The SMPL keys of rows that have no SMPL ground truth (Human3.6M's raw mocap, a user's video)."""
    return {
        "pose": np.zeros((rows, 72)),
        "shape": np.zeros((rows, 10)),
        "has_smpl": np.zeros(rows),
        "gender": np.full(rows, "n"),
    }


KEYPOINT_KEYS = ("part", "openpose", "keypoints_detected")
# numpy dtype kinds each key may have: U str, b bool, i/u integers, f floats
_KINDS = {"imgname": "U", "gender": "U", "seq": "Uiu", "person": "iu", "frame": "iu"}
_NUMERIC = "biuf"
_KIND_NAMES = {"U": "str", "b": "bool", "i": "int", "u": "uint", "f": "float"}


def validate_prepared(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Refuse a prepared split whose keys, shapes, dtypes or values are unusable (FileFormatError)."""
    _check_layout(arrays, path)
    _check_values(arrays, path)


def _check_layout(arrays: dict[str, np.ndarray], path: Path) -> None:
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise FileFormatError(f"{path}: missing keys {missing} (found {sorted(arrays)})")
    if arrays["imgname"].ndim != 1:
        raise FileFormatError(f"{path}: key 'imgname' has shape {arrays['imgname'].shape}, expected (N)")
    n = len(arrays["imgname"])
    if n == 0:
        raise FileFormatError(f"{path}: split '{path.stem}' is empty (0 rows), expected at least one frame")
    for key, tail in SHAPES.items():
        if key not in arrays:
            continue
        shape = arrays[key].shape
        bad = (
            shape[:1] != (n,)
            or (tail is not None and shape[1:] != tail)
            or (key == "shape" and (len(shape) != 2 or shape[1] < 10))
        )
        if bad:
            want = "(N, >=10)" if tail is None else "(" + ", ".join(["N", *map(str, tail)]) + ")"
            raise FileFormatError(
                f"{path}: key '{key}' has shape {shape}, expected {want} with N = {n} rows "
                "(the length of 'imgname')"
            )
        kinds = _KINDS.get(key, _NUMERIC)
        if arrays[key].dtype.kind not in kinds:
            want = " or ".join(_KIND_NAMES[k] for k in kinds)
            raise FileFormatError(f"{path}: key '{key}' has dtype {arrays[key].dtype}, expected {want}")


def _check_values(arrays: dict[str, np.ndarray], path: Path) -> None:
    def refuse(key: str, bad: np.ndarray, expected: str, axes: tuple[str, ...] = ()) -> None:
        """Raise for the first row of `bad`, a mask over `key` of shape (N, *axes), that has a bad entry."""
        rows = bad.reshape(len(bad), -1).any(axis=1)
        if not rows.any():
            return
        row = int(np.argmax(rows))
        at = tuple(int(i) for i in np.argwhere(bad[row])[0]) if axes else ()
        where = "".join(f", {axis} {i}" for axis, i in zip(axes, at, strict=True))
        found = np.asarray(arrays[key][row][at]).tolist()
        more = f" ({int(rows.sum()) - 1} more bad rows)" if rows.sum() > 1 else ""
        raise FileFormatError(
            f"{path}: key '{key}' {_row_name(arrays, row)}{where}: expected {expected}, found {found}{more}"
        )

    def finite(key: str) -> np.ndarray:
        return np.isfinite(arrays[key])

    refuse("center", ~finite("center"), "finite pixel coordinates", ("column",))
    refuse("scale", ~(finite("scale") & (arrays["scale"] > 0)), "a finite box scale > 0")
    # Labels are masked by multiplying with has_smpl / visibility, and NaN * 0 is NaN: a non-finite
    # label poisons the loss of its whole batch even in a row that claims no ground truth.
    labels = {"pose": ("column",), "shape": ("column",), "S": ("joint", "column"), "trans": ("column",)}
    for key, axes in labels.items():
        if key in arrays:
            refuse(
                key, ~finite(key), "finite values in every row (rows without ground truth hold zeros)", axes
            )
    if "has_smpl" in arrays:
        refuse("has_smpl", ~np.isin(arrays["has_smpl"], (0, 1)), "0 or 1")
    if "S" in arrays:
        refuse("S", _outside_unit(arrays["S"][..., 3]), "visibility (column 3) in [0, 1]", ("joint",))
    if "focal" in arrays:
        refuse("focal", ~(finite("focal") & (arrays["focal"] > 0)), "a finite focal length > 0")
    for key in KEYPOINT_KEYS:
        if key in arrays:
            kp = arrays[key]
            refuse(key, _outside_unit(kp[..., 2]), "confidence (column 2) in [0, 1]", ("joint",))
            # a joint with confidence 0 is ignored (its coordinates become 0), so only visible ones count
            usable = (kp[..., 2] == 0) | np.isfinite(kp[..., :2]).all(axis=-1)
            refuse(key, ~usable, "finite x, y on a joint with confidence > 0", ("joint",))


def _outside_unit(values: np.ndarray) -> np.ndarray:
    """Mask of entries that are NaN, inf or outside [0, 1]."""
    return ~((values >= 0) & (values <= 1))


def _row_name(arrays: dict[str, np.ndarray], row: int) -> str:
    """'row 3 (seq 'a', person 0, frame 12)' from the keys the file has."""
    ids = [f"seq '{arrays['seq'][row]}'"] if "seq" in arrays else []
    ids += [f"{key} {arrays[key][row]}" for key in ("person", "frame") if key in arrays]
    return f"row {row}" + (f" ({', '.join(ids)})" if ids else "")
