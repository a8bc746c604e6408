"""Loading untrusted pickles, numpy files and torch checkpoints without running their code.

A pickle can call any importable function while it loads. `load_pickle` only lets through what
SMPL model files, the GMM pose prior and 3DPW sequence files need: numpy arrays, dtypes and
scalars, scipy.sparse matrices (also under their legacy module paths, e.g. `scipy.sparse.csc`),
chumpy values (replaced by plain arrays, so chumpy need not be installed) and builtin containers.
Files written by Python 2 are read with `encoding="latin1"` (FORMATS.md 1.2, 5.1).
"""

from __future__ import annotations

import _codecs
import builtins
import copyreg
import functools
import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch

PathLike = str | os.PathLike


class FileFormatError(ValueError):
    """A data file is corrupt, truncated or lacks the expected content. The message names the file."""


class UnsafePickleError(FileFormatError):
    """A pickle asked for a global outside the allow-list; nothing of it was executed."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[module, "_reconstruct"] = np.core.multiarray._reconstruct
        allowed[module, "scalar"] = np.core.multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[module, "_frombuffer"] = np.core.numeric._frombuffer  # protocol-5 arrays
    allowed["numpy", "ndarray"] = np.ndarray
    allowed["numpy", "dtype"] = np.dtype
    for fmt in ("csc", "csr", "coo"):
        for module in ("scipy.sparse", f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):
            for kind in ("matrix", "array"):
                allowed[module, f"{fmt}_{kind}"] = getattr(scipy.sparse, f"{fmt}_{kind}")
    for name in ("set", "frozenset", "object", "complex", "bytearray"):
        allowed["builtins", name] = getattr(builtins, name)
    # Python 3 pickles bytes under protocol <= 2 as _codecs.encode(text, "latin1").
    allowed["_codecs", "encode"] = _codecs.encode
    # Protocol 0/1 pickles of new-style objects: _reconstructor(cls, base, state), where cls and
    # base come through this same allow-list.
    allowed["copyreg", "_reconstructor"] = copyreg._reconstructor
    return allowed


_ALLOWED = _allowed_globals()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class ChumpyStandIn:
    """Takes the place of any chumpy object while unpickling; a chumpy `Ch` keeps its value in `x`."""

    chumpy_class = "chumpy"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


@functools.cache
def _chumpy_stand_in(module: str, name: str) -> type[ChumpyStandIn]:
    return type(name, (ChumpyStandIn,), {"chumpy_class": f"{module}.{name}"})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        if module == "chumpy" or module.startswith("chumpy."):
            return _chumpy_stand_in(module, name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        raise UnsafePickleError(
            f"{self.path}: the pickle asks for the global '{module}.{name}', which the restricted "
            "loader refuses (it allows numpy arrays, scipy.sparse matrices, chumpy values and "
            "builtin containers only); nothing from the file was executed"
        )


def _replace_chumpy(obj: Any, path: Path) -> Any:
    """Return `obj` with every chumpy stand-in inside dicts, lists and tuples replaced by its array."""
    if isinstance(obj, ChumpyStandIn):
        state = obj.state
        if not isinstance(state, dict) or "x" not in state:
            raise FileFormatError(
                f"{path}: chumpy object of class '{obj.chumpy_class}' has no stored value 'x' "
                "(only plain chumpy Ch values can be read without chumpy); convert the file once "
                "with smplx's tools/clean_ch.py"
            )
        return np.asarray(_replace_chumpy(state["x"], path))
    if isinstance(obj, dict):
        return {key: _replace_chumpy(value, path) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_replace_chumpy(value, path) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_replace_chumpy(value, path) for value in obj)
    return obj


def load_pickle(path: PathLike) -> Any:
    """Unpickle `path` with the restricted loader; chumpy values come back as numpy arrays.

    Raises FileNotFoundError if the file is missing, UnsafePickleError if the pickle refers to a
    global outside the allow-list, FileFormatError if it is truncated or corrupt.
    """
    path = Path(path)
    with open(path, "rb") as file:
        try:
            obj = _RestrictedUnpickler(file, path).load()
        except UnsafePickleError:
            raise
        except Exception as error:  # a corrupt pickle can fail in many ways
            raise FileFormatError(
                f"{path}: not a readable pickle, the file is truncated or corrupt "
                f"({type(error).__name__}: {error})"
            ) from error
    return _replace_chumpy(obj, path)


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Read all arrays of an `.npz` file into a dict, refusing pickled object arrays."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise UnsafePickleError(f"{path}: holds pickled object arrays, which are refused") from error
        raise FileFormatError(f"{path}: not a readable .npz file ({error})") from error
    except Exception as error:  # zipfile, EOF and OS errors of a damaged archive
        raise FileFormatError(
            f"{path}: not a readable .npz file, truncated or corrupt ({type(error).__name__}: {error})"
        ) from error


def load_npy(path: PathLike) -> np.ndarray:
    """Read one `.npy` array, refusing pickled object arrays."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise UnsafePickleError(f"{path}: holds a pickled object array, which is refused") from error
        raise FileFormatError(f"{path}: not a readable .npy file ({error})") from error
    except Exception as error:
        raise FileFormatError(
            f"{path}: not a readable .npy file, truncated or corrupt ({type(error).__name__}: {error})"
        ) from error


def load_torch(path: PathLike, map_location: Any = "cpu", allowed_globals: Iterable[Any] = ()) -> Any:
    """`torch.load(path, weights_only=True)` with errors that name the file.

    `allowed_globals` lists extra classes the checkpoint may hold (e.g. `argparse.Namespace` in
    VideoMAE checkpoints), passed to `torch.serialization.safe_globals`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        if refused:
            raise UnsafePickleError(
                f"{path}: the checkpoint asks for the global '{refused.group(1)}', which "
                "torch.load(weights_only=True) refuses; pass it in allowed_globals only if you "
                "trust the file"
            ) from error
        raise FileFormatError(f"{path}: not a readable torch checkpoint ({error})") from error
    except Exception as error:  # zip, EOF and key errors of damaged files
        raise FileFormatError(
            f"{path}: not a readable torch checkpoint, truncated or corrupt ({type(error).__name__}: {error})"
        ) from error
