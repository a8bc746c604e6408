"""`python -m cemr.data.prepare dataset=3dpw|h36m|video [overrides]`: raw data -> prepared dataset.

The CLI composes the same config as adapt.py and calls the body model's and the dataset's
`prepare` nodes (cemr.runtime.prepare_assets), the very functions a run calls when the prepared
files are missing. Overrides without a dot that name a key of the chosen dataset are taken as
`dataset.<key>` (so `dataset=video video_path=clip.mp4` works); `dataset.prepare.overwrite=true`
rebuilds.

Also home of the write discipline every preparer follows: arrays and images are written under a
temporary name and renamed, and `prepare.json` (the parameters the outputs were built with) is
written last. A dataset dir counts as prepared only when its stamp matches the parameters asked
for and every split file exists, so an interrupted run is redone rather than trusted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

STAMP_NAME = "prepare.json"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _temporary(path: Path) -> Path:
    # Keep the real suffix last: np.savez and cv2.imwrite choose the format by extension.
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """`np.savez` to a temporary name, then rename over `path` (no half-written npz is ever visible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_image_atomic(path: str | Path, image_bgr: np.ndarray) -> None:
    """`cv2.imwrite` (format from the suffix) to a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        if not cv2.imwrite(str(tmp), image_bgr):
            raise OSError(f"could not write image {path}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    """The form the stamp stores: paths as str, tuples as lists."""
    return json.loads(json.dumps(params, default=str))


def start_or_skip(
    out_dir: str | Path, splits: list[str], params: dict[str, Any], overwrite: bool = False
) -> bool:
    """True if `out_dir` already holds `splits` built with `params` (the caller returns at once).

    Otherwise removes any old stamp (so a failed rebuild never passes for complete) and returns
    False; the writers below create folders as needed.
    """
    out_dir = Path(out_dir)
    stamp = out_dir / STAMP_NAME
    if not overwrite and stamp.is_file() and all((out_dir / f"{s}.npz").is_file() for s in splits):
        try:
            if json.loads(stamp.read_text()) == _jsonable(params):
                return True
        except json.JSONDecodeError:
            pass
    stamp.unlink(missing_ok=True)
    return False


def mark_prepared(out_dir: str | Path, params: dict[str, Any]) -> None:
    """Write the stamp, last, once every output is in place."""
    stamp = Path(out_dir) / STAMP_NAME
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(stamp)
    tmp.write_text(json.dumps(_jsonable(params), indent=2, sort_keys=True))
    os.replace(tmp, stamp)


# ----------------------------------------------------------------------------- CLI


def _dataset_shorthand(overrides: list[str], config_dir: Path, config_name: str) -> list[str]:
    """Rewrite `key=value` to `dataset.key=value` where `key` is a dataset key and not a top-level one."""
    from hydra import compose, initialize_config_dir

    groups = {p.name for p in config_dir.iterdir() if p.is_dir()}

    def is_shorthand(item: str) -> bool:
        key = item.split("=", 1)[0]
        return "=" in item and key.isidentifier() and key not in groups

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        base = compose(config_name=config_name, overrides=[o for o in overrides if not is_shorthand(o)])

    def rewritten(item: str) -> str:
        key = item.split("=", 1)[0]
        if is_shorthand(item) and key not in base and key in base.dataset:
            return f"dataset.{item}"
        return item  # anything else is Hydra's to accept or reject

    return [rewritten(o) for o in overrides]


def main(
    argv: list[str] | None = None, config_dir: str | Path = CONFIG_DIR, config_name: str = "adapt"
) -> Path:
    """Compose the config with `argv` overrides, build body model and dataset, return the dataset dir."""
    from hydra import compose, initialize_config_dir

    from cemr.runtime import prepare_assets

    config_dir = Path(config_dir)
    overrides = _dataset_shorthand(list(sys.argv[1:] if argv is None else argv), config_dir, config_name)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if cfg.dataset.get("prepare") is None:
        raise ValueError(f"dataset '{cfg.dataset.name}' has no prepare node; nothing to build")
    prepare_assets(cfg)
    root = Path(cfg.dataset.root)
    print(f"prepared dataset '{cfg.dataset.name}' in {root}")
    for npz in sorted(root.glob("*.npz")):
        with np.load(npz) as archive:
            print(f"  {npz.name}: {len(archive['imgname'])} frames")
    return root


if __name__ == "__main__":
    main()
