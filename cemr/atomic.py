"""The write discipline of every file CEMR writes (prepared data, caches, checkpoints, run outputs):
written under a temporary name `.<stem>.tmp<pid><suffix>`, flushed and renamed, so that a reader, a
killed run or a full disk never leaves a half-written file where a complete one is expected. Leftovers
of killed processes (`remove_leftovers`) are removed by the next writer of the same folder.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import cv2
import numpy as np

log = logging.getLogger(__name__)

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


def write_npz(file: str | Path | IO, arrays: Mapping[str, np.ndarray]) -> None:
    """Like `np.savez`, but without pickles and with fixed zip timestamps: equal arrays give equal bytes
    (builds compare content hashes across machines)."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            entry = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(entry, buffer.getvalue())


def save_npz_atomic(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """`write_npz` to a temporary name, then rename over `path` (no half-written npz is ever visible)."""
    return write_atomic(path, lambda file: write_npz(file, arrays))


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
