"""`python -m cemr.data.prepare dataset=3dpw|h36m|video [overrides]`: raw data -> prepared dataset.

The CLI composes the same config as adapt.py and calls the body model's and the dataset's
`prepare` nodes (cemr.runtime.prepare_assets), the very functions a run calls when the prepared
files are missing. Overrides without a dot that name a key of the chosen dataset are taken as
`dataset.<key>` (so `dataset=video video_path=clip.mp4` works); `dataset.prepare.overwrite=true`
rebuilds.

Also home of the write discipline every preparer (and every run output) follows: files are written
under a temporary name `.<stem>.tmp<pid><suffix>` and renamed, and `prepare.json` (the parameters
the outputs were built with) is written last. A dataset dir counts as prepared only when its stamp
matches the parameters asked for and every split file exists, so an interrupted run is redone
rather than trusted. Split files in a dir that has neither a stamp nor the `.prepare.building`
mark of an interrupted build are someone else's: they are not overwritten unless asked.
Leftovers of killed processes (`remove_leftovers`) are removed by the next build.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

STAMP_NAME = "prepare.json"
BUILDING_MARK = ".prepare.building"  # present from the start of a build until its stamp is written
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# Temporaries and build dirs carry the pid of the process writing them: `.<name>.tmp<pid>[.ext]`,
# `.<name>.building-<pid>`, `.<name>.old-<pid>`.
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp|building-|old-)(?P<pid>\d+)(?:\.[^.]+)?$")
STARTED = time.time()  # (about) when this process started: later files may be another host's


def _temporary(path: Path) -> Path:
    # Keep the real suffix last: np.savez and cv2.imwrite choose the format by extension.
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def raise_if_disk_full(err: OSError, path: str | Path) -> None:
    """Re-raise a full disk (ENOSPC) as such, naming the file that could not be written."""
    if err.errno == errno.ENOSPC:
        raise OSError(
            errno.ENOSPC, f"disk full: no space left to write {path}; free some space and rerun", str(path)
        ) from err


def write_atomic(path: str | Path, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """`write(file)` into a temporary sibling, flushed to disk, then renamed over `path`: a reader
    (or a killed or full-disk run) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise_if_disk_full(err, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """`np.savez` to a temporary name, then rename over `path` (no half-written npz is ever visible)."""
    return write_atomic(path, lambda file: np.savez(file, **arrays))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file (config.yaml, metrics.json, stamps) atomically, as `save_npz_atomic` does."""
    return write_atomic(path, lambda file: file.write(text), mode="w")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a killed, unreaped zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_leftovers(folder: str | Path, name: str | None = None, recursive: bool = False) -> list[Path]:
    """Remove the temporaries and build dirs (see LEFTOVER) that killed processes left in `folder`.

    Only those of a process that is gone and last touched before this one started; with `name`,
    only those of that file or dir (e.g. the hidden siblings of one dataset dir).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.rglob(".*") if recursive else folder.glob(".*")):
        match = LEFTOVER.match(path.name)
        if not match or (name is not None and match["name"] != name):
            continue
        pid = int(match["pid"])
        try:
            fresh = path.lstat().st_mtime >= STARTED
        except FileNotFoundError:
            continue  # inside a leftover dir removed just before
        if pid == os.getpid() or fresh or pid_alive(pid):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d leftovers of killed runs: %s", len(removed), ", ".join(map(str, removed)))
    return removed


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

    Otherwise marks the dir as being built, removes any old stamp (so a failed rebuild never passes
    for complete) and leftovers of killed builds, and returns False; the writers below create
    folders as needed. Raises FileExistsError, before writing anything, where `out_dir` holds split
    files that no build of this project made (no stamp, no build mark), unless `overwrite`.
    """
    out_dir = Path(out_dir).resolve()
    stamp = out_dir / STAMP_NAME
    found = None
    if stamp.is_file():
        try:
            found = json.loads(stamp.read_text())
        except (OSError, ValueError):
            pass
    if not overwrite and found == _jsonable(params) and all((out_dir / f"{s}.npz").is_file() for s in splits):
        return True
    ours = isinstance(found, dict) or (out_dir / BUILDING_MARK).is_file()
    theirs = [f"{s}.npz" for s in splits if (out_dir / f"{s}.npz").exists()]
    if stamp.exists() and not isinstance(found, dict):
        theirs.append(STAMP_NAME)
    if theirs and not ours and not overwrite:
        raise FileExistsError(
            f"{out_dir} holds {', '.join(theirs)} but no valid {STAMP_NAME}: not prepared by this project "
            "(or by a version that left no mark), so they are not overwritten; choose another dataset.root, "
            "or pass dataset.prepare.overwrite=true to replace them"
        )
    write_text_atomic(out_dir / BUILDING_MARK, json.dumps(_jsonable(params), sort_keys=True))
    stamp.unlink(missing_ok=True)
    remove_leftovers(out_dir, recursive=True)
    return False


def mark_prepared(out_dir: str | Path, params: dict[str, Any]) -> None:
    """Write the stamp, last, once every output is in place."""
    write_text_atomic(Path(out_dir) / STAMP_NAME, json.dumps(_jsonable(params), indent=2, sort_keys=True))
    (Path(out_dir) / BUILDING_MARK).unlink(missing_ok=True)


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
