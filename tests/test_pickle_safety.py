"""Restricted unpickler against hostile pickles of allowed classes (issue 11).

Bad scipy.sparse index arrays (a segfault in scipy before they were checked), numpy arrays of
uninitialised memory, dtypes with out-of-bounds fields, state-setting of allowed classes and
functions, deep or self-containing nesting. Pickles that would crash the process are loaded in a
subprocess so that this one survives to report.
"""

from __future__ import annotations

import copyreg
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from cemr.body.smpl import read_smpl_file
from cemr.safe_io import FileFormatError, UnsafePickleError, load_pickle
from tests.test_body_model import as_smpl_pickle, fabricate_smpl
from tests.test_safe_io import Ch, write_pickle

REPO = Path(__file__).resolve().parents[1]


class Reduces:
    """Pickles as the given __reduce__ value: (callable, args[, state])."""

    def __init__(self, *value):
        self.value = value

    def __reduce__(self):
        return self.value


# ----------------------------------------------------------------------------- sparse matrices


def _csc(**changes) -> scipy.sparse.csc_matrix:
    """The fabricated (24, 40) J_regressor as csc with attributes replaced (pickled as its state)."""
    matrix = scipy.sparse.csc_matrix(fabricate_smpl(0, 10)["J_regressor"])
    for name, value in changes.items():
        setattr(matrix, name, value(matrix) if callable(value) else value)
    return matrix


def _coo(row=None) -> scipy.sparse.coo_matrix:
    matrix = scipy.sparse.coo_matrix(fabricate_smpl(0, 10)["J_regressor"])
    if row is not None:
        matrix.coords = (row(matrix.coords[0]), matrix.coords[1])
    return matrix


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


INCONSISTENT = "of shape (24, 40) is inconsistent"  # then scipy's own words, which vary by version
BAD_REGRESSORS = {  # name -> (J_regressor, words of the expected message)
    "index_out_of_range": (_csc(indices=lambda m: _with(m.indices, 5, 10**8)), INCONSISTENT),
    "negative_index": (_csc(indices=lambda m: _with(m.indices, 5, -7)), INCONSISTENT),
    "indptr_decreasing": (_csc(indptr=lambda m: _with(m.indptr, 3, m.indptr[-1])), INCONSISTENT),
    "indptr_negative_end": (
        _csc(indptr=lambda m: _with(m.indptr, -1, -5)),
        INCONSISTENT,
    ),  # scipy skips its checks
    "indptr_unsigned_decreasing": (
        _csc(indptr=lambda m: _with(m.indptr, 3, m.indptr[-1]).astype(np.uint64)),
        INCONSISTENT,
    ),
    "indptr_past_nnz": (_csc(indptr=lambda m: _with(m.indptr, -1, 10**6)), INCONSISTENT),
    "indptr_not_from_zero": (_csc(indptr=lambda m: _with(m.indptr, 0, 2)), INCONSISTENT),
    "shape_too_wide": (_csc(_shape=(24, 10**6)), "of shape (24, 1000000) is inconsistent"),
    "float_indices": (
        _csc(indices=lambda m: m.indices.astype(np.float64)),
        "'indices' should be a 1-D array",
    ),
    "coo_row_out_of_range": (_coo(row=lambda r: _with(r, 0, 10**8)), INCONSISTENT),
}


@pytest.mark.slow
def test_corrupt_sparse_regressor_is_refused_not_a_crash(tmp_path):
    """Each bad J_regressor in a SMPL model file is read by read_smpl_file in a child process:
    without the checks scipy reads out of bounds (a segfault for the far indices). The child's
    address space is capped so that a regressor too wide to make dense cannot exhaust the machine."""
    model = fabricate_smpl(0, 10)
    files = []
    for name, (regressor, _) in BAD_REGRESSORS.items():
        for protocol in (0, 2):  # _reconstructor + BUILD, NEWOBJ + BUILD; Python-2 style like SMPL's
            stored = dict(as_smpl_pickle(model), J_regressor=regressor)
            files.append(write_pickle(tmp_path / f"SMPL_{name}_{protocol}.pkl", stored, protocol, py2=True))
    # Consistent but (24, 10**9): 190 GB once dense. Its shape is checked before toarray().
    wide = scipy.sparse.csr_matrix(
        (np.ones(1), np.zeros(1, np.int32), np.r_[0, np.ones(24, np.int32)]), (24, 10**9)
    )
    huge = write_pickle(
        tmp_path / "SMPL_wide.pkl", dict(as_smpl_pickle(model), J_regressor=wide), 2, py2=True
    )
    script = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from cemr.body.smpl import read_smpl_file\n"
        "from cemr.safe_io import FileFormatError\n"
        "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        read_smpl_file(Path(path))\n"
        "        print(json.dumps([path, 'loaded']), flush=True)\n"
        "    except FileFormatError as error:\n"
        "        print(json.dumps([path, 'FileFormatError: ' + str(error)]), flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, files), str(huge)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"child died with {result.returncode}: {result.stdout}{result.stderr}"
    outcomes = dict(json.loads(line) for line in result.stdout.splitlines())
    for path in files:
        name = path.stem.removeprefix("SMPL_").rsplit("_", 1)[0]
        message = outcomes[str(path)]
        assert message.startswith(f"FileFormatError: {path}: scipy.sparse.")
        assert "at ['J_regressor']" in message and BAD_REGRESSORS[name][1] in message, message
    assert outcomes[str(huge)].startswith(
        f"FileFormatError: SMPL file {huge}: key 'J_regressor' has shape (24, 1000000000), "
        "expected (24, V) with V = 40"
    )


def test_sparse_values_only_where_smpl_stores_them(tmp_path):
    model = fabricate_smpl(0, 10)
    stored = dict(as_smpl_pickle(model), v_template=scipy.sparse.csc_matrix(model["v_template"]))
    path = write_pickle(tmp_path / "SMPL_NEUTRAL.pkl", stored, 2, py2=True)
    with pytest.raises(
        FileFormatError, match="'v_template' is a scipy.sparse matrix, expected a dense"
    ) as info:
        read_smpl_file(path)
    assert str(path) in str(info.value)


def test_good_sparse_matrices_are_rebuilt_as_scipy_matrices(tmp_path):
    dense = fabricate_smpl(0, 10)["J_regressor"]
    stored = {
        "csc": scipy.sparse.csc_matrix(dense),
        "csr_array": scipy.sparse.csr_array(dense),
        "coo": scipy.sparse.coo_matrix(dense),
        "empty": scipy.sparse.csc_matrix((3, 0)),
    }
    for protocol in (0, 2, 5):
        loaded = load_pickle(write_pickle(tmp_path / "m.pkl", stored, protocol))
        for key, matrix in stored.items():
            assert type(loaded[key]) is type(matrix)
            np.testing.assert_array_equal(loaded[key].toarray(), matrix.toarray())


def test_sparse_matrix_without_state_or_with_foreign_state(tmp_path):
    cases = {
        "no_state": (Reduces(scipy.sparse.csc_matrix, ()), "has no stored arrays"),
        "bad_shape": (
            Reduces(scipy.sparse.csc_matrix, (), {"_shape": (3, -1), "data": np.ones(1)}),
            "stored shape should be two non-negative integers, found (3, -1)",
        ),
        "list_data": (
            Reduces(
                scipy.sparse.csr_matrix,
                (),
                {"_shape": (1, 1), "data": [1.0], "indices": np.zeros(1, int), "indptr": np.array([0, 1])},
            ),
            "'data' should be a 1-D array of numbers, found a list",
        ),
    }
    for name, (obj, message) in cases.items():
        path = write_pickle(tmp_path / f"{name}.pkl", {"J_regressor": obj})
        with pytest.raises(FileFormatError) as info:
            load_pickle(path)
        assert str(path) in str(info.value) and message in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- uninitialised memory


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize(
    "obj, refused",
    [
        (Reduces(copyreg._reconstructor, (np.ndarray, np.ndarray, (4096,))), "copyreg._reconstructor"),
        (Reduces(copyreg._reconstructor, (np.ndarray, object, None)), "copyreg._reconstructor"),
        (Reduces(np.ndarray, ((4096,),)), "calls numpy.ndarray directly"),
        (
            Reduces(np.core.multiarray._reconstruct, (np.ndarray, (4096,), b"b")),
            "other than with (ndarray, (0,))",
        ),
    ],
    ids=["reconstructor", "reconstructor_object_base", "ndarray_call", "reconstruct_shape"],
)
def test_arrays_of_uninitialised_memory_are_refused(tmp_path, protocol, obj, refused):
    path = write_pickle(tmp_path / "leak.pkl", {"v_template": obj}, protocol)
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(path)
    assert str(path) in str(info.value) and refused in str(info.value)


@pytest.mark.parametrize(
    "spec, state",
    [  # a field 1 MB past the 8-byte item; float64 whose flags claim object references (pointers)
        ("V8", (3, "|", None, ("a",), {"a": (np.dtype("<f8"), 1_000_000)}, 8, 1, 16)),
        ("f8", (3, "<", None, None, None, -1, -1, 63)),
        ("S4", (3, "|", None, None, None, 4096, 1, 0)),
    ],
    ids=["field_offset", "object_flags", "item_size"],
)
def test_dtype_state_unlike_numpys_own_is_refused(tmp_path, spec, state):
    """numpy's dtype state-setting takes field offsets, item sizes and flags as given."""
    path = write_pickle(tmp_path / "dtype.pkl", {"data": Reduces(np.dtype, (spec, False, True), state)})
    with pytest.raises(
        UnsafePickleError, match="numpy dtype with fields, sub-arrays or sizes and flags"
    ) as info:
        load_pickle(path)
    assert str(path) in str(info.value)


def test_plain_dtypes_still_load(tmp_path):
    arrays = {
        "f4": np.arange(3, dtype=np.float32),
        "text": np.array(["m", "f"]),
        "bytes": np.array([b"ab"]),
        "bool": np.array([True, False]),
        "u32": np.array([4294967295], dtype=np.uint32),
        "dates": np.array(["2018-01-01"], dtype="datetime64[D]"),
        "objects": np.array([1, "a", None], dtype=object),
    }
    for protocol in (0, 2, 5):
        loaded = load_pickle(write_pickle(tmp_path / "d.pkl", arrays, protocol, py2=protocol < 3))
        for key, array in arrays.items():
            assert loaded[key].dtype == array.dtype
            np.testing.assert_array_equal(loaded[key], array)


def test_state_of_allowed_functions_and_classes_cannot_be_set(tmp_path):
    """BUILD with (None, {'__defaults__': (1,)}) on copyreg._reconstructor would change it for the
    whole process; only arrays, dtypes and stand-ins may have their state set."""
    data = b"\x80\x02ccopy_reg\n_reconstructor\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b."
    path = tmp_path / "build.pkl"
    path.write_bytes(data)
    try:
        with pytest.raises(UnsafePickleError, match="sets the state of") as info:
            load_pickle(path)
        assert str(path) in str(info.value)
    finally:
        assert copyreg._reconstructor.__defaults__ is None, "the pickle changed copyreg._reconstructor"


def test_bytes_and_bytearray_only_from_bytes(tmp_path):
    for obj in (Reduces(bytes, (10**6,)), Reduces(bytearray, (10**6,))):
        path = write_pickle(tmp_path / "big.pkl", obj)
        with pytest.raises(UnsafePickleError, match="with other than bytes") as info:
            load_pickle(path)
        assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- nesting


def test_deeply_nested_pickle_is_a_file_error(tmp_path):
    depth = 5000  # loads fine with pickle itself (its stack is not recursive)
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
    with pytest.raises(FileFormatError, match="nests containers more than 100 levels deep") as info:
        load_pickle(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"\x80\x02" + b"}X\x01\x00\x00\x00k" * depth + b"K\x01" + b"s" * depth + b".")
    with pytest.raises(FileFormatError, match="levels deep"):
        load_pickle(path)


def test_self_containing_list_is_a_file_error(tmp_path):
    path = tmp_path / "cycle.pkl"
    path.write_bytes(b"\x80\x02]q\x00h\x00a.")  # l = []; l.append(l)
    with pytest.raises(FileFormatError, match="contains itself") as info:
        load_pickle(path)
    assert str(path) in str(info.value)


def test_shared_containers_are_resolved_once(tmp_path):
    """A list holding the same list twice, 18 levels deep: 2**18 copies unless shared objects are
    resolved once; the sharing is kept."""
    obj = [Ch(np.array([1.5]))]
    for _ in range(18):
        obj = [obj, obj]
    loaded = load_pickle(write_pickle(tmp_path / "shared.pkl", obj))
    inner = loaded
    for _ in range(18):
        assert inner[0] is inner[1]
        inner = inner[0]
    np.testing.assert_array_equal(inner[0], [1.5])
