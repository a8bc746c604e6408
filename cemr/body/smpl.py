"""SMPL body model: checked loading of SMPL `.pkl`/`.npz` files, and the joint sets on top of smplx.

The model file is read by `cemr.safe_io` (never by smplx's own `pickle.load`), every array is
checked against the layout in FORMATS.md 5.1, and `smplx.SMPL` is built from the checked arrays.
`BodyModel.forward` returns the mesh, the 24 SMPL joints, SPIN's 49 joints and the 17 H3.6M joints.
The vertex count V comes from the file, so the procedural body model goes through the same code.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import smplx
import torch
from smplx.utils import Struct
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS
from torch import nn

from cemr.body.joints import JOINT_MAP_49, SMPL_PARENTS, VERTEX_JOINT_NAMES
from cemr.geometry import axis_angle_to_rotmat
from cemr.safe_io import FileFormatError, PathLike, load_npy, load_npz, load_pickle

NUM_SMPL_JOINTS = 24
NUM_POSE_BASIS = 9 * (NUM_SMPL_JOINTS - 1)  # 207
NUM_EXTRA_JOINTS = 9
NUM_H36M_JOINTS = 17

# The one gender table: the one-letter code prepared datasets store -> the body model's name.
GENDER_CODES = {"n": "neutral", "m": "male", "f": "female"}
GENDERS = {**{name: name for name in GENDER_CODES.values()}, **GENDER_CODES}  # what normalize_gender takes

HOW_TO_GET_SMPL = (
    "Get the real model from https://smpl.is.tue.mpg.de and place SMPL_NEUTRAL.pkl, SMPL_MALE.pkl and "
    "SMPL_FEMALE.pkl in the model directory (the neutral one is SMPLify's "
    "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl, renamed), or write the procedural stand-in with "
    "cemr.body.make_synthetic_body_model(model_dir) (config body=synthetic)."
)
HOW_TO_GET_REGRESSORS = (
    "SPIN's data archive (http://visiondata.cis.upenn.edu/spin/data.tar.gz) has J_regressor_extra.npy and "
    "J_regressor_h36m.npy; cemr.body.make_synthetic_body_model writes equivalents for the procedural model."
)


def normalize_gender(gender: str) -> str:
    """'neutral' | 'male' | 'female' (also 'n', 'm', 'f', any case) -> the full lower-case name."""
    key = gender.lower() if isinstance(gender, str) else None
    if key not in GENDERS:
        raise ValueError(f"unknown SMPL gender {gender!r}, expected one of {sorted(GENDERS)}")
    return GENDERS[key]


def resolve_model_file(path_or_dir: PathLike, gender: str = "neutral") -> Path:
    """A model file as given, or `SMPL_{GENDER}.pkl` (else `.npz`) inside a directory."""
    path = Path(path_or_dir)
    if path.is_dir():
        stem = f"SMPL_{normalize_gender(gender).upper()}"
        for candidate in (path / f"{stem}.pkl", path / f"{stem}.npz"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"SMPL model directory {path} has no {stem}.pkl or {stem}.npz. {HOW_TO_GET_SMPL}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"SMPL model file {path} does not exist. {HOW_TO_GET_SMPL}")
    return path


class _ModelFile:
    """Reads and checks the arrays of one SMPL model file, with errors that name file and key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".pkl":
            self.raw = load_pickle(path)
        elif path.suffix == ".npz":
            self.raw = load_npz(path)
        else:
            raise FileFormatError(f"SMPL model file {path}: unknown extension, expected .pkl or .npz")
        if not isinstance(self.raw, Mapping):
            raise FileFormatError(
                f"SMPL model file {path}: holds a {type(self.raw).__name__}, expected a dict of arrays"
            )

    def fail(self, key: str, problem: str) -> FileFormatError:
        return FileFormatError(f"SMPL file {self.path}: key '{key}' {problem}. {HOW_TO_GET_SMPL}")

    def array(self, key: str, meaning: str, ndims: tuple[int, ...], sparse: bool = False) -> np.ndarray:
        """The checked dense array of `key`; a scipy.sparse value (checked by load_pickle) only where
        `sparse` allows it, after the caller has checked its shape (a huge one would not fit dense)."""
        if key not in self.raw:
            raise self.fail(key, f"is missing (expected {meaning})")
        value = self.raw[key]
        if scipy.sparse.issparse(value):
            if not sparse:
                raise self.fail(key, f"is a scipy.sparse matrix, expected a dense array ({meaning})")
            value = value.toarray()
        try:
            value = np.asarray(value)
        except Exception as error:
            raise self.fail(key, f"is not an array ({error})") from error
        if value.dtype.kind not in "iuf":
            raise self.fail(key, f"has dtype {value.dtype}, expected numbers ({meaning})")
        if value.ndim not in ndims:
            raise self.fail(key, f"has shape {value.shape}, expected {meaning}")
        if not np.all(np.isfinite(value)):
            raise self.fail(key, "holds NaN or infinite values")
        return value

    def expect(self, ok: bool, key: str, value: np.ndarray, expected: str) -> None:
        if not ok:
            raise self.fail(key, f"has shape {value.shape}, expected {expected}")


def read_smpl_file(path: Path, num_betas: int = 10) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Checked arrays of a SMPL model file, in the layout `smplx.SMPL(data_struct=...)` takes.

    Returns (arrays, vertex_joint_ids): arrays `v_template` (V, 3), `shapedirs` (V, 3, num_betas),
    `posedirs` (V, 3, 207), `J_regressor` (24, V), `weights` (V, 24), `kintree_table` (2, 24) with
    parent -1 at the root, `f` (F, 3) int64; vertex_joint_ids maps each of the 21 vertex-picked
    joint names to its vertex index.
    """
    file = _ModelFile(path)
    v_template = file.array("v_template", "(V, 3) template vertices", (2,))
    num_vertices = v_template.shape[0]
    file.expect(v_template.shape[1] == 3 and num_vertices > 0, "v_template", v_template, "(V, 3)")
    per_vertex = f"V = {num_vertices} vertices (from v_template)"

    shapedirs = file.array("shapedirs", "(V, 3, num_betas) shape blend shapes", (3,))
    file.expect(
        shapedirs.shape[:2] == (num_vertices, 3) and shapedirs.shape[2] >= num_betas,
        "shapedirs",
        shapedirs,
        f"(V, 3, >= {num_betas}) with {per_vertex} and num_betas = {num_betas}",
    )

    posedirs = file.array("posedirs", "(V, 3, 207) pose blend shapes", (2, 3))
    file.expect(
        posedirs.shape in ((num_vertices, 3, NUM_POSE_BASIS), (num_vertices * 3, NUM_POSE_BASIS)),
        "posedirs",
        posedirs,
        f"(V, 3, {NUM_POSE_BASIS}) or (3 V, {NUM_POSE_BASIS}) with {per_vertex}",
    )

    stored, expected = file.raw.get("J_regressor"), f"(24, V) with {per_vertex}"
    if scipy.sparse.issparse(stored):  # checked before it is made dense: a huge shape would not fit
        file.expect(stored.shape == (NUM_SMPL_JOINTS, num_vertices), "J_regressor", stored, expected)
    J_regressor = file.array("J_regressor", "(24, V) joint regressor", (2,), sparse=True)
    file.expect(J_regressor.shape == (NUM_SMPL_JOINTS, num_vertices), "J_regressor", J_regressor, expected)

    weights = file.array("weights", "(V, 24) skinning weights", (2,))
    file.expect(
        weights.shape == (num_vertices, NUM_SMPL_JOINTS), "weights", weights, f"(V, 24) with {per_vertex}"
    )
    row_sums = weights.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if abs(row_sums[worst] - 1.0) > 1e-3:
        raise file.fail(
            "weights",
            f"row {worst} sums to {row_sums[worst]:.6g}, expected skinning weights whose rows sum to 1",
        )

    kintree_table = file.array("kintree_table", "(2, 24) kinematic tree", (2,))
    file.expect(kintree_table.shape == (2, NUM_SMPL_JOINTS), "kintree_table", kintree_table, "(2, 24)")
    parents = kintree_table[0].astype(np.int64)  # root entry is -1 or 4294967295 (uint32 -1)
    parents[0] = -1
    if parents.tolist() != SMPL_PARENTS:
        raise file.fail(
            "kintree_table", f"has parents {parents.tolist()} in row 0, expected SMPL's {SMPL_PARENTS}"
        )

    faces = file.array("f", "(F, 3) integer triangle vertex indices", (2,))
    file.expect(faces.shape[1:] == (3,) and faces.shape[0] > 0, "f", faces, "(F, 3)")
    if faces.dtype.kind not in "iu":
        raise file.fail("f", f"has dtype {faces.dtype}, expected integer vertex indices")
    if faces.min() < 0 or faces.max() >= num_vertices:
        raise file.fail(
            "f", f"has vertex indices in [{faces.min()}, {faces.max()}], expected [0, {num_vertices - 1}]"
        )

    arrays = {
        "v_template": v_template.astype(np.float64),
        "shapedirs": shapedirs[:, :, :num_betas].astype(np.float64),
        "posedirs": posedirs.reshape(num_vertices, 3, NUM_POSE_BASIS).astype(np.float64),
        "J_regressor": J_regressor.astype(np.float64),
        "weights": weights.astype(np.float64),
        "kintree_table": np.stack([parents, np.arange(NUM_SMPL_JOINTS)]),
        "f": faces.astype(np.int64),
    }
    return arrays, _vertex_joint_ids(file, num_vertices)


def _vertex_joint_ids(file: _ModelFile, num_vertices: int) -> dict[str, int]:
    """The file's own 'cemr_vertex_joint_ids' (dict, or (21,) array in VERTEX_JOINT_NAMES order), else
    smplx's SMPL-H ids, which index the real SMPL mesh."""
    key = "cemr_vertex_joint_ids"
    stored = file.raw.get(key)
    if stored is None:
        ids, origin = (
            SMPLX_VERTEX_IDS["smplh"],
            "smplx's SMPL-H vertex ids (they fit the real SMPL mesh only)",
        )
    elif isinstance(stored, Mapping):
        ids, origin = stored, f"key '{key}'"
    else:
        stored = np.asarray(stored)
        if stored.shape != (len(VERTEX_JOINT_NAMES),) or stored.dtype.kind not in "iu":
            raise file.fail(
                key,
                f"has shape {stored.shape} and dtype {stored.dtype}, expected a dict "
                f"name -> vertex or ({len(VERTEX_JOINT_NAMES)},) integers",
            )
        ids, origin = dict(zip(VERTEX_JOINT_NAMES, stored.tolist(), strict=True)), f"key '{key}'"
    missing = [name for name in VERTEX_JOINT_NAMES if name not in ids]
    if missing:
        raise file.fail(key, f"lacks the vertex joints {missing}")
    for name in VERTEX_JOINT_NAMES:
        vertex = int(ids[name])
        if not 0 <= vertex < num_vertices:
            raise FileFormatError(
                f"SMPL file {file.path}: vertex joint '{name}' uses vertex {vertex} ({origin}), but "
                f"the model has {num_vertices} vertices; a body model with another mesh must store its "
                f"own ids under '{key}'"
            )
    return {name: int(ids[name]) for name in VERTEX_JOINT_NAMES}


def read_regressor(
    path: PathLike | None, file_name: str, model_file: Path, rows: int, num_vertices: int
) -> np.ndarray:
    """A dense (rows, V) joint regressor from `path`, or from `file_name` next to the model file or
    in its parent directory."""
    if path is None:
        candidates = [model_file.parent / file_name, model_file.parent.parent / file_name]
        found = [candidate for candidate in candidates if candidate.is_file()]
        if not found:
            raise FileNotFoundError(
                f"{file_name} not found (looked for {' and '.join(map(str, candidates))}). "
                f"{HOW_TO_GET_REGRESSORS}"
            )
        path = found[0]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"joint regressor {path} does not exist. {HOW_TO_GET_REGRESSORS}")
    regressor = load_npy(path)
    if regressor.shape != (rows, num_vertices) or regressor.dtype.kind not in "iuf":
        raise FileFormatError(
            f"joint regressor {path}: has shape {regressor.shape} and dtype {regressor.dtype}, expected "
            f"({rows}, V) numbers with V = {num_vertices} vertices of {model_file}"
        )
    if not np.all(np.isfinite(regressor)):
        raise FileFormatError(f"joint regressor {path}: holds NaN or infinite values")
    return regressor.astype(np.float64)


@dataclass
class BodyOutput:
    vertices: torch.Tensor  # (B, V, 3) metres
    joints: torch.Tensor  # (B, 49, 3) SPIN's 49 joints (joints.JOINT_NAMES_49)
    joints_h36m: torch.Tensor  # (B, 17, 3) J_regressor_h36m @ vertices
    smpl_joints: torch.Tensor  # (B, 24, 3) posed SMPL skeleton joints


class BodyModel(nn.Module):
    """smplx.SMPL plus SPIN's 49 joints and the H3.6M regressor. Build it with `load_body_model`.

    Computes in the dtype of its buffers (float32 unless loaded with another `dtype` or moved with
    `.to(dtype)`), also inside an autocast region; inputs of other dtypes are cast to it. Its
    buffers (the SMPL arrays) move with `.to()` but stay out of `state_dict`, so checkpoints of
    models that hold a body model never carry the licensed SMPL data.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        vertex_joint_ids: Mapping[str, int],
        J_regressor_extra: np.ndarray,
        J_regressor_h36m: np.ndarray,
        gender: str = "neutral",
        dtype: torch.dtype = torch.float32,
        source: str = "",
    ) -> None:
        """`arrays` and `vertex_joint_ids` as returned by `read_smpl_file`; regressors (9, V), (17, V)."""
        super().__init__()
        self.gender = normalize_gender(gender)
        self.num_betas = arrays["shapedirs"].shape[2]
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning for < 300 shape components
            self.smpl = smplx.SMPL(
                model_path=source,
                data_struct=Struct(**arrays),
                num_betas=self.num_betas,
                gender=self.gender,
                vertex_ids=dict(vertex_joint_ids),
                dtype=dtype,
                create_betas=False,
                create_global_orient=False,
                create_body_pose=False,
                create_transl=False,
            )
        # smplx rounds every array through float32 and caps files with < 300 shape components at 10
        # betas, so set the arrays it uses ourselves.
        exact = {
            "v_template": arrays["v_template"],
            "shapedirs": arrays["shapedirs"],
            "posedirs": np.ascontiguousarray(arrays["posedirs"].reshape(-1, NUM_POSE_BASIS).T),  # (207, 3 V)
            "J_regressor": arrays["J_regressor"],
            "lbs_weights": arrays["weights"],
        }
        for name, array in exact.items():
            setattr(self.smpl, name, torch.as_tensor(array, dtype=dtype))
        self.register_buffer("J_regressor_extra", torch.as_tensor(J_regressor_extra, dtype=dtype))
        self.register_buffer("J_regressor_h36m", torch.as_tensor(J_regressor_h36m, dtype=dtype))
        self.register_buffer("faces", torch.as_tensor(arrays["f"], dtype=torch.long))
        self.register_buffer("joint_map", torch.tensor(JOINT_MAP_49, dtype=torch.long), persistent=False)
        # The SMPL arrays are licensed data: keep them out of the state_dict of any model holding this one.
        for module in self.modules():
            module._non_persistent_buffers_set.update(module._buffers)

    @property
    def num_vertices(self) -> int:
        return self.smpl.v_template.shape[0]

    @property
    def parents(self) -> torch.Tensor:
        """(24,) parent of each SMPL joint, -1 at the root."""
        return self.smpl.parents

    @property
    def dtype(self) -> torch.dtype:
        return self.smpl.v_template.dtype

    @staticmethod
    def _rotmats(rotation: torch.Tensor, num_joints: int, name: str) -> torch.Tensor:
        """(B, 3 n) axis-angle or (B, [n,] 3, 3) rotation matrices -> (B, n, 3, 3)."""
        if rotation.ndim == 2 and rotation.shape[1] == 3 * num_joints:
            return axis_angle_to_rotmat(rotation.reshape(-1, num_joints, 3))
        if (
            rotation.ndim in (3, 4)
            and rotation.shape[-2:] == (3, 3)
            and math.prod(rotation.shape[1:]) == 9 * num_joints
        ):
            return rotation.reshape(-1, num_joints, 3, 3)
        raise ValueError(
            f"{name}: expected (B, {3 * num_joints}) axis-angle or (B, {num_joints}, 3, 3) rotation "
            "matrices, "
            f"found shape {tuple(rotation.shape)}"
        )

    def forward(
        self, betas: torch.Tensor, body_pose: torch.Tensor, global_orient: torch.Tensor
    ) -> BodyOutput:
        """betas (B, num_betas); body_pose (B, 23, 3, 3) or (B, 69); global_orient (B, 1, 3, 3),
        (B, 3, 3) or (B, 3). Rotation matrices when the last two dims are 3 x 3, axis-angle otherwise."""
        # Full precision even under mixed precision: in bf16 the mesh would be off by millimetres.
        with torch.autocast(device_type=body_pose.device.type, enabled=False):
            dtype = self.dtype
            body_rotmats = self._rotmats(body_pose.to(dtype), NUM_SMPL_JOINTS - 1, "body_pose")
            root_rotmats = self._rotmats(global_orient.to(dtype), 1, "global_orient")
            batch = body_rotmats.shape[0]
            if betas.shape != (batch, self.num_betas) or root_rotmats.shape[0] != batch:
                raise ValueError(
                    f"betas: expected shape (B, {self.num_betas}) with B = {batch} as in body_pose and "
                    f"B = {root_rotmats.shape[0]} as in global_orient, found {tuple(betas.shape)}"
                )
            output = self.smpl(
                betas=betas.to(dtype), body_pose=body_rotmats, global_orient=root_rotmats, pose2rot=False
            )
            vertices, smpl_and_vertex_joints = output.vertices, output.joints  # (B, V, 3), (B, 24 + 21, 3)
            extra = torch.einsum("jv,bvc->bjc", self.J_regressor_extra, vertices)
            return BodyOutput(
                vertices=vertices,
                joints=torch.cat([smpl_and_vertex_joints, extra], dim=1)[:, self.joint_map],
                joints_h36m=torch.einsum("jv,bvc->bjc", self.J_regressor_h36m, vertices),
                smpl_joints=smpl_and_vertex_joints[:, :NUM_SMPL_JOINTS],
            )


def load_body_model(
    path_or_dir: PathLike,
    gender: str = "neutral",
    regressor_extra: PathLike | None = None,
    regressor_h36m: PathLike | None = None,
    num_betas: int = 10,
    dtype: torch.dtype = torch.float32,
) -> BodyModel:
    """Load a SMPL model (real `.pkl`/`.npz` or the procedural one) with its extra regressors.

    path_or_dir: a model file, or a directory holding SMPL_{NEUTRAL,MALE,FEMALE}.{pkl,npz}.
    The regressors default to J_regressor_extra.npy and J_regressor_h36m.npy in the model's
    directory, then in its parent directory.
    """
    gender = normalize_gender(gender)
    if not isinstance(num_betas, int) or num_betas < 1:
        raise ValueError(f"num_betas must be a positive int, found {num_betas!r}")
    path = resolve_model_file(path_or_dir, gender)
    arrays, vertex_joint_ids = read_smpl_file(path, num_betas)
    num_vertices = arrays["v_template"].shape[0]
    J_regressor_extra = read_regressor(
        regressor_extra, "J_regressor_extra.npy", path, NUM_EXTRA_JOINTS, num_vertices
    )
    J_regressor_h36m = read_regressor(
        regressor_h36m, "J_regressor_h36m.npy", path, NUM_H36M_JOINTS, num_vertices
    )
    return BodyModel(arrays, vertex_joint_ids, J_regressor_extra, J_regressor_h36m, gender, dtype, str(path))
