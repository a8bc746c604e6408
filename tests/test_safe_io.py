"""cemr.safe_io: restricted unpickling of Python-2 SMPL-style pickles, npz/npy, torch checkpoints.

The pickle writers here (fake chumpy `Ch`, Python-2 `str` payloads, legacy scipy module path) are
also used by test_body_model.py to fabricate SMPL model files in the real layout.
"""

from __future__ import annotations

import argparse
import codecs
import io
import os
import pickle
import struct
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import scipy.sparse
import torch

from cemr.safe_io import (
    FileFormatError,
    UnsafePickleError,
    load_npy,
    load_npz,
    load_pickle,
    load_torch,
)

# ----------------------------------------------------------------------------- pickle writers


class Ch:
    """Pickles like chumpy's `Ch`: class chumpy.ch.Ch, state a dict holding the value in 'x'."""

    def __init__(self, x):
        self.x = np.asarray(x)

    def __getstate__(self):
        return {"x": self.x, "_dirty_vars": set(), "_itr": None}


Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"


class ChumpyAdd:
    """A chumpy expression (chumpy.ch_ops.add): no stored value, so it cannot be read without chumpy."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __getstate__(self):
        return {"a": self.a, "b": self.b}


ChumpyAdd.__module__, ChumpyAdd.__qualname__ = "chumpy.ch_ops", "add"


class _Py2Pickler(pickle._Pickler):
    """Writes `bytes` and ASCII `str` as Python-2 `str` (STRING/SHORT_BINSTRING/BINSTRING), as Python 2 wrote
    SMPL and 3DPW files: array payloads then need `encoding='latin1'` in Python 3."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("ascii")
        if self.proto == 0:
            self.write(pickle.STRING + b"'" + codecs.escape_encode(data)[0] + b"'\n")
        elif len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_str_or_unicode(self, obj):
        if obj.isascii():
            self.save_py2_str(obj)
        else:
            pickle._Pickler.save_str(self, obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_str_or_unicode


def pickle_bytes(obj, protocol: int = 2, py2: bool = False) -> bytes:
    """Pickle `obj` (which may hold `Ch`/`ChumpyAdd`) with chumpy faked in sys.modules while writing.

    py2=True writes Python-2 strings and scipy's legacy module paths (`scipy.sparse.csc`).
    """
    fake_ch = types.ModuleType("chumpy.ch")
    fake_ch.Ch = Ch
    fake_ops = types.ModuleType("chumpy.ch_ops")
    fake_ops.add = ChumpyAdd
    fakes = {"chumpy": types.ModuleType("chumpy"), "chumpy.ch": fake_ch, "chumpy.ch_ops": fake_ops}
    buffer = io.BytesIO()
    with mock.patch.dict(sys.modules, fakes):
        (_Py2Pickler if py2 else pickle.Pickler)(buffer, protocol=protocol).dump(obj)
    data = buffer.getvalue()
    if py2:
        for fmt in (b"csc", b"csr"):
            data = data.replace(b"scipy.sparse._" + fmt + b"\n", b"scipy.sparse." + fmt + b"\n")
    return data


def write_pickle(path: Path, obj, protocol: int = 2, py2: bool = False) -> Path:
    path.write_bytes(pickle_bytes(obj, protocol, py2))
    return path


class _RunsCommand:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


# ----------------------------------------------------------------------------- load_pickle


def smpl_like_dict() -> dict:
    """Values of the kinds a real SMPL file holds (FORMATS.md 5.1); negative floats give bytes > 127."""
    rng = np.random.default_rng(0)
    J_regressor = np.zeros((4, 6))
    J_regressor[[0, 1, 2, 3], [5, 0, 3, 2]] = [0.25, -1.5, 1.0, 2.0]
    return {
        "v_template": Ch(rng.normal(size=(6, 3))),
        "shapedirs": Ch(rng.normal(size=(6, 3, 2))),
        "posedirs": rng.normal(size=(6, 3, 207)),
        "J_regressor": scipy.sparse.csc_matrix(J_regressor),
        "kintree_table": np.array([[4294967295, 0, 0, 1], [0, 1, 2, 3]], dtype=np.int64),
        "f": np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint32),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "vert_sym_idxs": np.arange(6, dtype=np.int64)[::-1].copy(),
    }


def assert_same_smpl_like(loaded: dict, expected: dict) -> None:
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        if isinstance(value, Ch):
            assert type(loaded[key]) is np.ndarray
            np.testing.assert_array_equal(loaded[key], value.x)
        elif scipy.sparse.issparse(value):
            assert scipy.sparse.issparse(loaded[key]) and loaded[key].format == "csc"
            np.testing.assert_array_equal(loaded[key].toarray(), value.toarray())
        elif isinstance(value, np.ndarray):
            assert loaded[key].dtype == value.dtype
            np.testing.assert_array_equal(loaded[key], value)
        else:
            assert loaded[key] == value and type(loaded[key]) is str


@pytest.mark.parametrize("protocol", [0, 2])
def test_python2_smpl_pickle_needs_latin1_and_loads(tmp_path, protocol):
    expected = smpl_like_dict()
    data = pickle_bytes(expected, protocol=protocol, py2=True)
    # It really is written the Python-2 way: legacy scipy path, chumpy class, py2 str for text and
    # array payloads (STRING / SHORT_BINSTRING opcodes, never unicode or _codecs.encode).
    for module_and_name in (b"scipy.sparse.csc\ncsc_matrix\n", b"chumpy.ch\nCh\n", b"__builtin__\nset\n"):
        assert b"c" + module_and_name in data
    assert {0: b"S'lbs'\n", 2: b"U\x03lbs"}[protocol] in data
    assert {0: b"Vlbs\n", 2: b"X\x03\x00\x00\x00lbs"}[protocol] not in data and b"_codecs" not in data
    array_data = pickle_bytes(np.array([-1.5, 2.0]), protocol=protocol, py2=True)
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(array_data)  # plain Python-3 loading fails, as FORMATS.md 1.2 says
    np.testing.assert_array_equal(pickle.loads(array_data, encoding="latin1"), [-1.5, 2.0])

    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(data)
    assert "chumpy" not in sys.modules
    assert_same_smpl_like(load_pickle(path), expected)
    assert "chumpy" not in sys.modules  # the stand-in was used, chumpy was never imported


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_round_trip_every_protocol(tmp_path, protocol):
    obj = {
        "floats": np.array([[1.5, -2.25], [np.pi, -0.0]]),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        "scalar": np.float64(-3.5),
        "bytes": b"\x00\xff\x80",
        "containers": [(1, "two"), {3, 4}, frozenset({5}), complex(1, -2), bytearray(b"\x01\xfe")],
        "csr": scipy.sparse.csr_matrix(np.array([[0.0, 2.0], [-1.0, 0.0]])),
        "coo": scipy.sparse.coo_matrix(np.array([[0.0, 0.5], [0.0, 7.0]])),
        "ch": [Ch(np.array([0.5, -1.0]))],
    }
    loaded = load_pickle(write_pickle(tmp_path / "obj.pkl", obj, protocol=protocol))
    np.testing.assert_array_equal(loaded["floats"], obj["floats"])
    assert loaded["fortran"].dtype == np.int32 and loaded["fortran"].flags.f_contiguous
    np.testing.assert_array_equal(loaded["fortran"], obj["fortran"])
    assert loaded["scalar"] == -3.5 and type(loaded["scalar"]) is np.float64
    assert loaded["bytes"] == b"\x00\xff\x80"
    assert loaded["containers"] == obj["containers"]
    for key in ("csr", "coo"):
        assert loaded[key].format == key
        np.testing.assert_array_equal(loaded[key].toarray(), obj[key].toarray())
    np.testing.assert_array_equal(loaded["ch"][0], [0.5, -1.0])


def test_chumpy_expression_without_value_is_an_error(tmp_path):
    path = write_pickle(tmp_path / "expr.pkl", {"shapedirs": ChumpyAdd(Ch([1.0]), Ch([2.0]))})
    with pytest.raises(FileFormatError, match="chumpy.ch_ops.add") as info:
        load_pickle(path)
    assert str(path) in str(info.value) and "clean_ch.py" in str(info.value)


@pytest.mark.parametrize(
    ("function", "refused"),
    [(os.system, "posix.system"), (eval, "builtins.eval"), (getattr, "builtins.getattr")],
)
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_code_running_pickle_is_refused_and_nothing_runs(tmp_path, function, refused, protocol):
    marker = tmp_path / "executed"
    argument = {
        os.system: f"touch {marker}",
        eval: f"open({str(marker)!r}, 'w')",
        getattr: "ignored",
    }[function]
    payload = _RunsCommand(function, argument)
    path = write_pickle(tmp_path / "evil.pkl", {"v_template": np.zeros(3), "x": payload}, protocol=protocol)
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(path)
    assert str(path) in str(info.value) and f"'{refused}'" in str(info.value)
    assert not marker.exists()


def test_numpy_object_array_cannot_smuggle_a_global(tmp_path):
    marker = tmp_path / "executed"
    array = np.empty(1, dtype=object)
    array[0] = _RunsCommand(os.system, f"touch {marker}")
    with pytest.raises(UnsafePickleError, match="posix.system"):
        load_pickle(write_pickle(tmp_path / "obj.pkl", array))
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pkl"):
        load_pickle(tmp_path / "nothere.pkl")


def test_every_truncation_and_garbage_is_a_file_error(tmp_path):
    small = {key: value for key, value in smpl_like_dict().items() if key != "posedirs"}
    data = pickle_bytes(small, py2=True)
    path = tmp_path / "cut.pkl"
    for end in range(len(data)):  # every proper prefix
        path.write_bytes(data[:end])
        with pytest.raises(FileFormatError) as info:
            load_pickle(path)
        assert str(path) in str(info.value)
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(FileFormatError, match="truncated or corrupt"):
        load_pickle(path)


# ----------------------------------------------------------------------------- npz / npy


def test_npz_and_npy_round_trip_and_refuse_objects(tmp_path):
    arrays = {"a": np.arange(6.0).reshape(2, 3), "names": np.array(["x", "yz"])}
    np.savez(tmp_path / "ok.npz", **arrays)
    loaded = load_npz(tmp_path / "ok.npz")
    assert set(loaded) == {"a", "names"}
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    assert loaded["names"].tolist() == ["x", "yz"]
    np.save(tmp_path / "ok.npy", arrays["a"])
    np.testing.assert_array_equal(load_npy(tmp_path / "ok.npy"), arrays["a"])

    np.savez(tmp_path / "obj.npz", d=np.array([{"k": 1}], dtype=object))
    with pytest.raises(UnsafePickleError, match="obj.npz"):
        load_npz(tmp_path / "obj.npz")
    np.save(tmp_path / "obj.npy", np.array([{"k": 1}], dtype=object))
    with pytest.raises(UnsafePickleError, match="obj.npy"):
        load_npy(tmp_path / "obj.npy")

    for name, good in (("bad.npz", tmp_path / "ok.npz"), ("bad.npy", tmp_path / "ok.npy")):
        (tmp_path / name).write_bytes(good.read_bytes()[:-40])
        with pytest.raises(FileFormatError, match=name):
            (load_npz if name.endswith("npz") else load_npy)(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="none.npz"):
        load_npz(tmp_path / "none.npz")


# ----------------------------------------------------------------------------- load_torch


def test_load_torch_round_trip_and_errors(tmp_path):
    state = {"model": {"fc.weight": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    torch.save(state, tmp_path / "ok.pt")
    loaded = load_torch(tmp_path / "ok.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["fc.weight"], state["model"]["fc.weight"])

    torch.save({"args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pt")
    with pytest.raises(UnsafePickleError, match="argparse.Namespace") as info:
        load_torch(tmp_path / "ns.pt")
    assert str(tmp_path / "ns.pt") in str(info.value)
    assert load_torch(tmp_path / "ns.pt", allowed_globals=[argparse.Namespace])["args"].lr == 0.1

    marker = tmp_path / "executed"
    torch.save({"x": _RunsCommand(os.system, f"touch {marker}")}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match="posix.system"):
        load_torch(tmp_path / "evil.pt")
    assert not marker.exists()

    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="cut.pt"):
        load_torch(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="none.pt"):
        load_torch(tmp_path / "none.pt")
