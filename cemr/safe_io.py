"""Loading untrusted pickles, numpy files and torch checkpoints without running their code.

A pickle can call any importable function while it loads. `load_pickle` only lets through what
SMPL model files, the GMM pose prior and 3DPW sequence files need: numpy arrays, dtypes and
scalars, scipy.sparse matrices (also under their legacy module paths, e.g. `scipy.sparse.csc`),
chumpy values (replaced by plain arrays, so chumpy need not be installed) and builtin containers.
Files written by Python 2 are read with `encoding="latin1"` (FORMATS.md 1.2, 5.1).

Even allowed classes are not handed the pickle's raw state where they trust it: scipy.sparse
matrices are rebuilt from their arrays with scipy's constructors and checked, numpy dtypes with
fields or sub-arrays are refused (their offsets are not checked by numpy), and `numpy.ndarray` is
only usable the way numpy's own pickles use it (an array of uninitialised memory otherwise).
"""

from __future__ import annotations

import _codecs
import builtins
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


class _StandIn:
    """Takes the place of an object whose class must not see the pickle's state; keeps the state."""

    state: Any = None  # also for one made by NEWOBJ (no __init__) that the pickle gives no state

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class ChumpyStandIn(_StandIn):
    """Takes the place of any chumpy object while unpickling; a chumpy `Ch` keeps its value in `x`."""

    chumpy_class = "chumpy"


class SparseStandIn(_StandIn):
    """Takes the place of a scipy.sparse matrix while unpickling.

    scipy trusts the index arrays that pickle's state-setting gives it (out-of-range `indices`
    crash the process), so the matrix is rebuilt from them with scipy's constructors and checked.
    """

    sparse_class: type
    sparse_format: str  # "csc", "csr" or "coo"


@functools.cache
def _chumpy_stand_in(module: str, name: str) -> type[ChumpyStandIn]:
    return type(name, (ChumpyStandIn,), {"chumpy_class": f"{module}.{name}"})


@functools.cache
def _sparse_stand_in(fmt: str, kind: str) -> type[SparseStandIn]:
    sparse_class = getattr(scipy.sparse, f"{fmt}_{kind}")
    return type(sparse_class.__name__, (SparseStandIn,), {"sparse_class": sparse_class, "sparse_format": fmt})


def _from_bytes(cls: type) -> Any:
    """`bytes` / `bytearray` as pickles call them (no argument, or the bytes); `bytes(10**12)` is refused."""

    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], bytes | bytearray)):
            raise UnsafePickleError(f"the pickle calls builtins.{cls.__name__} with other than bytes")
        return cls(*args)

    return build


def _dtype(spec: Any, align: bool = False, copy: bool = True) -> np.dtype:
    # Always a fresh copy: the state-setting that follows must never change numpy's shared dtypes.
    return np.dtype(spec, bool(align), True)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> what the unpickler gets; "ndarray", "_reconstruct" and "_reconstructor"
    are placeholders that each unpickler replaces by its checked version."""
    allowed: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[module, "_reconstruct"] = "_reconstruct"
        allowed[module, "scalar"] = np.core.multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[module, "_frombuffer"] = np.core.numeric._frombuffer  # protocol-5 arrays
    allowed["numpy", "ndarray"] = "ndarray"
    allowed["numpy", "dtype"] = _dtype
    for fmt in ("csc", "csr", "coo"):
        for module in ("scipy.sparse", f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):
            for kind in ("matrix", "array"):
                allowed[module, f"{fmt}_{kind}"] = _sparse_stand_in(fmt, kind)
    for name in ("set", "frozenset", "object", "complex"):
        allowed["builtins", name] = getattr(builtins, name)
    # Python 3 pickles bytes under protocol <= 2 as _codecs.encode(text, "latin1"), empty bytes as
    # bytes(), and bytearrays under protocol <= 4 as bytearray(bytes).
    allowed["_codecs", "encode"] = _codecs.encode
    allowed["builtins", "bytes"] = _from_bytes(bytes)
    allowed["builtins", "bytearray"] = _from_bytes(bytearray)
    # Protocol 0/1 pickles of new-style objects: _reconstructor(cls, object, None).
    allowed["copyreg", "_reconstructor"] = "_reconstructor"
    return allowed


_ALLOWED = _allowed_globals()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _ArrayClass:
    """Stands for `numpy.ndarray`, which numpy's pickles name only as the class argument of
    `_reconstruct`; called directly it would give an array of uninitialised memory."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(
            f"{self.path}: the pickle calls numpy.ndarray directly (an array of uninitialised memory); "
            "refused, numpy's own pickles never do this"
        )


def _plain_dtype_state(dtype: np.dtype, state: Any) -> bool:
    """Whether `state` fits the fresh `dtype` numpy made from the pickle's type string: no fields or
    sub-arrays (numpy takes their offsets as given), item size, alignment and flags as numpy's own
    (flags claiming object references in float data would make numpy treat the numbers as pointers);
    only the byte order and a datetime unit may differ."""
    own = dtype.__reduce__()[2]
    return (
        isinstance(state, tuple)
        and len(state) in (8, len(own))
        and state[1] in ("<", ">", "|", "=")
        and all(x is None for x in state[2:5])
        and tuple(state[5:8]) == own[5:8]
    )


# The objects whose state a pickle may set (BUILD): anything else, e.g. an allowed class or
# function, would let the file change it for the whole process.
_BUILDABLE = (np.ndarray, np.dtype, _StandIn)


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, which lets BUILD (state-setting) be checked before it runs."""

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path
        self.array_class = _ArrayClass(path)
        self.checked = {
            "ndarray": self.array_class,
            "_reconstruct": self.reconstruct,
            "_reconstructor": self.reconstructor,
        }

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        if module == "chumpy" or module.startswith("chumpy."):
            return _chumpy_stand_in(module, name)
        if (module, name) in _ALLOWED:
            value = _ALLOWED[module, name]
            return self.checked[value] if isinstance(value, str) else value
        raise UnsafePickleError(
            f"{self.path}: the pickle asks for the global '{module}.{name}', which the restricted "
            "loader refuses (it allows numpy arrays, scipy.sparse matrices, chumpy values and "
            "builtin containers only); nothing from the file was executed"
        )

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """numpy's `_reconstruct(ndarray, (0,), b"b")`: an empty array that BUILD then fills."""
        if subtype is not self.array_class or not isinstance(shape, tuple) or shape != (0,):
            raise UnsafePickleError(
                f"{self.path}: the pickle calls numpy's _reconstruct other than with (ndarray, (0,)) as "
                "numpy's own pickles do; refused (it would give an array of uninitialised memory)"
            )
        return np.core.multiarray._reconstruct(np.ndarray, (0,), dtype)

    def reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        """copyreg's `_reconstructor(cls, object, None)`, as protocol 0/1 pickles chumpy and scipy.sparse."""
        if not (isinstance(cls, type) and issubclass(cls, _StandIn) and base is object and state is None):
            name = getattr(cls, "__name__", type(cls).__name__)
            raise UnsafePickleError(
                f"{self.path}: the pickle calls copyreg._reconstructor for '{name}', which the restricted "
                "loader refuses (only chumpy values and scipy.sparse matrices are rebuilt this way)"
            )
        return object.__new__(cls)

    def load_build(self) -> None:
        target, state = self.stack[-2], self.stack[-1]
        if not isinstance(target, _BUILDABLE):
            raise UnsafePickleError(
                f"{self.path}: the pickle sets the state of a {type(target).__name__}, which the restricted "
                "loader refuses (only arrays, dtypes, chumpy values and sparse matrices have state)"
            )
        if isinstance(target, np.dtype) and not _plain_dtype_state(target, state):
            raise UnsafePickleError(
                f"{self.path}: the pickle holds a numpy dtype with fields, sub-arrays or sizes and flags "
                "other than numpy's own, which the restricted loader refuses (numpy does not check them "
                "when unpickling)"
            )
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


_MAX_DEPTH = 100  # real files nest a few levels; far below Python's recursion limit
_IN_PROGRESS = object()


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, int | float | np.integer):
        return repr(value)
    return f"a {type(value).__name__}"


def _location(where: tuple) -> str:
    """'['poses'][0]' from the (parent, key) chain that `_resolve` passes down."""
    parts = []
    while where:
        where, key = where
        parts.append(f"[{key!r}]" if isinstance(key, str | int) else f"[<{type(key).__name__} key>]")
    return "".join(reversed(parts)) or "the top level"


def _rebuild_sparse(stand_in: SparseStandIn, what: str) -> Any:
    """The scipy matrix a stand-in's stored arrays describe, built by scipy's constructors and checked;
    `what` starts the error messages."""
    cls, state = stand_in.sparse_class, stand_in.state
    if not isinstance(state, dict):
        raise FileFormatError(f"{what} has no stored arrays (its state is {_describe(state)})")
    shape = state.get("_shape", state.get("shape"))
    if not (
        isinstance(shape, tuple)
        and len(shape) == 2
        and all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        found = (
            f"({', '.join(_describe(n) for n in shape)})" if isinstance(shape, tuple) else _describe(shape)
        )
        raise FileFormatError(f"{what}: stored shape should be two non-negative integers, found {found}")
    if stand_in.sparse_format == "coo":
        coords = state.get("coords", (state.get("row"), state.get("col")))  # scipy >= 1.13 / older
        if not isinstance(coords, tuple) or len(coords) != 2:
            raise FileFormatError(f"{what}: 'coords' should be (row, col), found {_describe(coords)}")
        arrays = {"data": state.get("data"), "row": coords[0], "col": coords[1]}
    else:
        arrays = {key: state.get(key) for key in ("data", "indices", "indptr")}
    for key, value in arrays.items():
        kinds, kind_name = ("biufc", "numbers") if key == "data" else ("iu", "integers")
        if not (isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in kinds):
            raise FileFormatError(
                f"{what}: '{key}' should be a 1-D array of {kind_name}, found {_describe(value)}"
            )
    shape = (int(shape[0]), int(shape[1]))
    problem = _sparse_problem(stand_in.sparse_format, shape, arrays)
    if problem:
        raise FileFormatError(f"{what} of shape {shape} is inconsistent: {problem}")
    try:
        if stand_in.sparse_format == "coo":
            return cls((arrays["data"], (arrays["row"], arrays["col"])), shape=shape)
        matrix = cls((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape)
        matrix.check_format(full_check=True)
        return matrix
    except (ValueError, TypeError, IndexError, OverflowError) as error:
        raise FileFormatError(f"{what} of shape {shape} is inconsistent: {error}") from error


def _sparse_problem(fmt: str, shape: tuple[int, int], arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with these arrays for a `fmt` matrix of `shape`, or None. Checked here because
    scipy skips its index checks when the last `indptr` entry (nnz) is not positive."""
    data = arrays["data"]
    if fmt == "coo":
        for key, size in (("row", shape[0]), ("col", shape[1])):
            index = arrays[key]
            if len(index) != len(data):
                return f"'{key}' has {len(index)} entries, 'data' {len(data)}"
            if index.size and (index.min() < 0 or index.max() >= size):
                return f"'{key}' holds indices outside [0, {size})"
        return None
    major, minor = shape if fmt == "csr" else shape[::-1]
    indptr, indices = arrays["indptr"].astype(np.int64), arrays["indices"]  # unsigned diffs would wrap
    if len(indptr) != major + 1:
        return f"'indptr' has {len(indptr)} entries, expected {major + 1}"
    if len(indices) != len(data):
        return f"'indices' has {len(indices)} entries, 'data' {len(data)}"
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] > len(indices):
        return f"'indptr' should rise from 0 to at most {len(indices)} (the stored entries)"
    if indices.size and (indices.min() < 0 or indices.max() >= minor):
        return f"'indices' holds indices outside [0, {minor})"
    return None


def _resolve(obj: Any, path: Path, done: dict[int, Any], where: tuple = (), depth: int = 0) -> Any:
    """`obj` with every stand-in inside dicts, lists and tuples replaced: chumpy values by their
    arrays, sparse matrices by checked scipy matrices. Shared objects are resolved once; `where`
    is the (parent, key) chain of `obj` for messages."""
    if not isinstance(obj, _StandIn | dict | list | tuple):
        return obj
    if id(obj) in done:
        if done[id(obj)] is _IN_PROGRESS:
            raise FileFormatError(f"{path}: the pickle holds a container that contains itself")
        return done[id(obj)]
    if depth > _MAX_DEPTH:
        raise FileFormatError(f"{path}: the pickle nests containers more than {_MAX_DEPTH} levels deep")
    done[id(obj)] = _IN_PROGRESS
    if isinstance(obj, ChumpyStandIn):
        state = obj.state
        if not isinstance(state, dict) or "x" not in state:
            raise FileFormatError(
                f"{path}: chumpy object of class '{obj.chumpy_class}' at {_location(where)} has no "
                "stored value 'x' (only plain chumpy Ch values can be read without chumpy); convert "
                "the file once with smplx's tools/clean_ch.py"
            )
        result = np.asarray(_resolve(state["x"], path, done, (where, "x"), depth + 1))
    elif isinstance(obj, SparseStandIn):
        result = _rebuild_sparse(
            obj, f"{path}: scipy.sparse.{obj.sparse_class.__name__} at {_location(where)}"
        )
    elif isinstance(obj, dict):
        result = {key: _resolve(value, path, done, (where, key), depth + 1) for key, value in obj.items()}
    elif isinstance(obj, list):
        result = [_resolve(value, path, done, (where, i), depth + 1) for i, value in enumerate(obj)]
    else:
        result = tuple(_resolve(value, path, done, (where, i), depth + 1) for i, value in enumerate(obj))
    done[id(obj)] = result
    return result


def load_pickle(path: PathLike) -> Any:
    """Unpickle `path` with the restricted loader; chumpy values come back as numpy arrays.

    Raises FileNotFoundError if the file is missing, UnsafePickleError if the pickle refers to a
    global outside the allow-list or misuses an allowed one, FileFormatError if it is truncated,
    corrupt, nested too deeply or holds an inconsistent sparse matrix.
    """
    path = Path(path)
    with open(path, "rb") as file:
        try:
            obj = _RestrictedUnpickler(file, path).load()
        except UnsafePickleError as error:
            if str(path) in str(error):
                raise
            raise UnsafePickleError(f"{path}: {error}") from error
        except Exception as error:  # a corrupt pickle can fail in many ways
            raise FileFormatError(
                f"{path}: not a readable pickle, the file is truncated or corrupt "
                f"({type(error).__name__}: {error})"
            ) from error
    return _resolve(obj, path, {})


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
