"""cemr.body: SMPL loading and validation, SPIN's 49 / H3.6M's 17 joints, GMM pose prior.

Model files are fabricated in the real SMPL layout (FORMATS.md 5.1): chumpy `Ch` values, a csc
J_regressor under scipy's legacy module path, uint32 faces, kintree root 4294967295; one file
written the Python-2 way, one as `.npz`. Expected values come from an independent numpy LBS.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial.transform import Rotation

from cemr.body import BodyModel, MaxMixturePrior, load_body_model
from cemr.body.joints import (
    EXTRA_JOINT_NAMES,
    JOINT_NAMES_49,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    VERTEX_JOINT_NAMES,
)
from cemr.safe_io import FileFormatError, UnsafePickleError, load_pickle
from tests.test_safe_io import Ch, _RunsCommand, write_pickle

NUM_VERTICES = 40
GENDER_FILES = {"neutral": "SMPL_NEUTRAL.pkl", "male": "SMPL_MALE.pkl", "female": "SMPL_FEMALE.npz"}

# ----------------------------------------------------------------------------- fabricated model


def fabricate_smpl(seed: int, num_shape: int) -> dict:
    """Plain arrays of a random but valid SMPL-layout body with NUM_VERTICES vertices."""
    rng = np.random.default_rng(seed)
    V = NUM_VERTICES
    J_regressor = np.zeros((24, V))
    for row in J_regressor:
        row[rng.choice(V, 3, replace=False)] = rng.dirichlet(np.ones(3))
    return {
        "v_template": rng.normal(scale=0.3, size=(V, 3)),
        "shapedirs": rng.normal(scale=0.02, size=(V, 3, num_shape)),
        "posedirs": rng.normal(scale=0.02, size=(V, 3, 207)),
        "J_regressor": J_regressor,
        "weights": rng.dirichlet(np.full(24, 0.3), size=V),
        "kintree_table": np.array([[4294967295, *SMPL_PARENTS[1:]], list(range(24))], dtype=np.int64),
        "f": rng.integers(0, V, size=(70, 3)).astype(np.uint32),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "cemr_vertex_joint_ids": dict(
            zip(VERTEX_JOINT_NAMES, rng.choice(V, 21, replace=False).tolist(), strict=True)
        ),
    }


def as_smpl_pickle(model: dict) -> dict:
    """The values the way the official files hold them: chumpy Ch arrays, csc J_regressor."""
    stored = dict(model)
    for key in ("v_template", "shapedirs", "weights"):
        stored[key] = Ch(model[key])
    stored["J"] = Ch(model["J_regressor"] @ model["v_template"])
    stored["J_regressor"] = scipy.sparse.csc_matrix(model["J_regressor"])
    return stored


def write_npz(path, model: dict) -> None:
    """npz variant: dense arrays, posedirs flattened to (3 V, 207), vertex ids in VERTEX_JOINT_NAMES order."""
    arrays = {key: value for key, value in model.items() if key != "cemr_vertex_joint_ids"}
    arrays["posedirs"] = model["posedirs"].reshape(-1, 207)
    ids = model["cemr_vertex_joint_ids"]
    arrays["cemr_vertex_joint_ids"] = np.array([ids[name] for name in VERTEX_JOINT_NAMES])
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    """data/smpl/SMPL_{NEUTRAL.pkl (protocol 2, 300 betas), MALE.pkl (Python-2 style, 10 betas),
    FEMALE.npz}, with the extra regressors one directory up, as SPIN lays them out."""
    root = tmp_path_factory.mktemp("data")
    model_dir = root / "smpl"
    model_dir.mkdir()
    models = {
        "neutral": fabricate_smpl(1, 300),
        "male": fabricate_smpl(2, 10),
        "female": fabricate_smpl(3, 300),
    }
    write_pickle(model_dir / GENDER_FILES["neutral"], as_smpl_pickle(models["neutral"]))
    write_pickle(model_dir / GENDER_FILES["male"], as_smpl_pickle(models["male"]), py2=True)
    write_npz(model_dir / GENDER_FILES["female"], models["female"])
    rng = np.random.default_rng(4)
    regressors = {
        "extra": rng.dirichlet(np.ones(NUM_VERTICES), size=9),
        "h36m": rng.dirichlet(np.ones(NUM_VERTICES), size=17),
    }
    np.save(root / "J_regressor_extra.npy", regressors["extra"])
    np.save(root / "J_regressor_h36m.npy", regressors["h36m"])
    return model_dir, models, regressors


# ----------------------------------------------------------------------------- independent reference


def reference_smpl(model: dict, betas: np.ndarray, rotmats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Textbook SMPL in numpy: shape and pose blend shapes, forward kinematics, skinning.

    betas (NB,), rotmats (24, 3, 3) -> vertices (V, 3), posed joints (24, 3).
    """
    v_shaped = model["v_template"] + model["shapedirs"][:, :, : len(betas)] @ betas
    J = model["J_regressor"] @ v_shaped
    v_posed = v_shaped + model["posedirs"] @ (rotmats[1:] - np.eye(3)).reshape(-1)
    world = np.zeros((24, 4, 4))
    for i, parent in enumerate(SMPL_PARENTS):
        local = np.eye(4)
        local[:3, :3] = rotmats[i]
        local[:3, 3] = J[i] - (J[parent] if parent >= 0 else 0.0)
        world[i] = local if parent < 0 else world[parent] @ local
    skinning = world.copy()
    skinning[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], J)
    per_vertex = np.einsum("vj,jab->vab", model["weights"], skinning)
    vertices = np.einsum("vab,vb->va", per_vertex[:, :3, :3], v_posed) + per_vertex[:, :3, 3]
    return vertices, world[:, :3, 3]


# Where each of SPIN's 49 joints comes from, by name (SPIN constants.JOINT_MAP semantics).
SMPL_SOURCE = {
    "OP Neck": "neck", "OP RShoulder": "right_shoulder", "OP RElbow": "right_elbow",
    "OP RWrist": "right_wrist", "OP LShoulder": "left_shoulder", "OP LElbow": "left_elbow",
    "OP LWrist": "left_wrist", "OP MidHip": "pelvis", "OP RHip": "right_hip", "OP RKnee": "right_knee",
    "OP RAnkle": "right_ankle", "OP LHip": "left_hip", "OP LKnee": "left_knee", "OP LAnkle": "left_ankle",
    "Right Ankle": "right_ankle", "Right Knee": "right_knee", "Left Knee": "left_knee",
    "Left Ankle": "left_ankle", "Right Wrist": "right_wrist", "Right Elbow": "right_elbow",
    "Right Shoulder": "right_shoulder", "Left Shoulder": "left_shoulder", "Left Elbow": "left_elbow",
    "Left Wrist": "left_wrist",
}  # fmt: skip
VERTEX_SOURCE = {
    "OP Nose": "nose", "OP REye": "reye", "OP LEye": "leye", "OP REar": "rear", "OP LEar": "lear",
    "OP LBigToe": "LBigToe", "OP LSmallToe": "LSmallToe", "OP LHeel": "LHeel", "OP RBigToe": "RBigToe",
    "OP RSmallToe": "RSmallToe", "OP RHeel": "RHeel", "Nose": "nose", "Left Eye": "leye",
    "Right Eye": "reye", "Left Ear": "lear", "Right Ear": "rear",
}  # fmt: skip


def expected_joints_49(model: dict, extra: np.ndarray, vertices: np.ndarray, smpl_joints: np.ndarray):
    """(49, 3) from the name tables above: SMPL joint, mesh vertex or extra regressor row of that name."""
    ids = model["cemr_vertex_joint_ids"]
    rows = []
    for name in JOINT_NAMES_49:
        if name in SMPL_SOURCE:
            rows.append(smpl_joints[SMPL_JOINT_NAMES.index(SMPL_SOURCE[name])])
        elif name in VERTEX_SOURCE:
            rows.append(vertices[ids[VERTEX_SOURCE[name]]])
        else:
            rows.append(extra[EXTRA_JOINT_NAMES.index(name)] @ vertices)
    return np.stack(rows)


def random_pose(batch: int, seed: int, scale: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.5, size=(batch, 10)), rng.normal(scale=scale, size=(batch, 72))


def run(model: BodyModel, betas, pose_aa):
    """Call the model with numpy axis-angle (B, 72) in the model's dtype."""
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=model.dtype)  # noqa: E731
    return model(as_tensor(betas), as_tensor(pose_aa[:, 3:]), as_tensor(pose_aa[:, :3]))


# ----------------------------------------------------------------------------- forward values


@pytest.mark.parametrize("gender", ["neutral", "male", "female"])
def test_rest_pose_is_the_template(body, gender):
    model_dir, models, _ = body
    model = load_body_model(model_dir, gender, dtype=torch.float64)
    out = run(model, np.zeros((2, 10)), np.zeros((2, 72)))
    reference = models[gender]
    for b in range(2):
        np.testing.assert_allclose(out.vertices[b].numpy(), reference["v_template"], rtol=0, atol=1e-12)
        expected_joints = reference["J_regressor"] @ reference["v_template"]
        np.testing.assert_allclose(out.smpl_joints[b].numpy(), expected_joints, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gender", ["neutral", "male", "female"])
def test_random_pose_and_shape_match_numpy_lbs(body, gender):
    model_dir, models, regressors = body
    model = load_body_model(model_dir, gender, dtype=torch.float64)
    betas, pose = random_pose(3, seed=10)
    out = run(model, betas, pose)
    for b in range(3):
        rotmats = Rotation.from_rotvec(pose[b].reshape(24, 3)).as_matrix()
        vertices, joints = reference_smpl(models[gender], betas[b], rotmats)
        np.testing.assert_allclose(out.vertices[b].numpy(), vertices, rtol=0, atol=1e-9)
        np.testing.assert_allclose(out.smpl_joints[b].numpy(), joints, rtol=0, atol=1e-9)
        np.testing.assert_allclose(
            out.joints_h36m[b].numpy(), regressors["h36m"] @ vertices, rtol=0, atol=1e-9
        )
        expected_49 = expected_joints_49(models[gender], regressors["extra"], vertices, joints)
        np.testing.assert_allclose(out.joints[b].numpy(), expected_49, rtol=0, atol=1e-9)
    assert out.vertices.shape == (3, NUM_VERTICES, 3) and out.joints.shape == (3, 49, 3)
    assert out.joints_h36m.shape == (3, 17, 3) and out.smpl_joints.shape == (3, 24, 3)


def test_name_tables_cover_all_49_joints_once():
    """The tables used as the independent expectation name each of the 49 joints exactly once."""
    extra_named = [name for name in JOINT_NAMES_49 if name in EXTRA_JOINT_NAMES]
    assert len(SMPL_SOURCE) + len(VERTEX_SOURCE) + len(extra_named) == 49
    assert set(SMPL_SOURCE) | set(VERTEX_SOURCE) | set(extra_named) == set(JOINT_NAMES_49)


@pytest.mark.parametrize(
    ("axis_angle", "rotation"),
    [
        ([0.0, math.pi / 2, 0.0], [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),
        ([math.pi / 2, 0.0, 0.0], [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    ],
)
def test_root_rotation_by_90_degrees_rotates_about_the_pelvis(body, axis_angle, rotation):
    model_dir, models, _ = body
    model = load_body_model(model_dir, dtype=torch.float64)
    pose = np.zeros((1, 72))
    pose[0, :3] = axis_angle
    out = run(model, np.zeros((1, 10)), pose)
    v_template = models["neutral"]["v_template"]
    rest_joints = models["neutral"]["J_regressor"] @ v_template
    pelvis = rest_joints[0]
    R = np.array(rotation)
    np.testing.assert_allclose(out.vertices[0].numpy(), (v_template - pelvis) @ R.T + pelvis, atol=1e-12)
    np.testing.assert_allclose(out.smpl_joints[0].numpy(), (rest_joints - pelvis) @ R.T + pelvis, atol=1e-12)


def test_axis_angle_and_rotation_matrix_inputs_agree(body):
    model_dir, _, _ = body
    model = load_body_model(model_dir, dtype=torch.float64)
    betas, pose = random_pose(2, seed=11, scale=1.0)
    rotmats = torch.as_tensor(Rotation.from_rotvec(pose.reshape(-1, 3)).as_matrix().reshape(2, 24, 3, 3))
    reference = run(model, betas, pose)
    betas = torch.as_tensor(betas)
    for global_orient in (rotmats[:, 0], rotmats[:, :1], torch.as_tensor(pose[:, :3])):
        for body_pose in (rotmats[:, 1:], torch.as_tensor(pose[:, 3:])):
            out = model(betas, body_pose, global_orient)
            for field in ("vertices", "joints", "joints_h36m", "smpl_joints"):
                torch.testing.assert_close(getattr(out, field), getattr(reference, field), rtol=0, atol=1e-12)


def test_float32_default_batching_and_gradients(body):
    model_dir, _, _ = body
    model32 = load_body_model(model_dir)
    model64 = load_body_model(model_dir, dtype=torch.float64)
    assert model32.dtype == torch.float32 and model32.smpl.v_template.dtype == torch.float32
    betas, pose = random_pose(3, seed=12)
    out32 = run(model32, betas, pose)
    out64 = run(model64, betas, pose)
    assert out32.vertices.dtype == torch.float32
    np.testing.assert_allclose(out32.vertices.numpy(), out64.vertices.numpy(), atol=1e-5)
    for b in range(3):  # batching does not mix samples
        single = run(model64, betas[b : b + 1], pose[b : b + 1])
        torch.testing.assert_close(single.joints[0], out64.joints[b], rtol=0, atol=1e-12)
    # float64 inputs into the float32 model are cast to the model's dtype
    cast = model32(torch.as_tensor(betas), torch.as_tensor(pose[:, 3:]), torch.as_tensor(pose[:, :3]))
    torch.testing.assert_close(cast.vertices, out32.vertices)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the model stays in float32
        mixed = model32(torch.as_tensor(betas), torch.as_tensor(pose[:, 3:]), torch.as_tensor(pose[:, :3]))
    assert mixed.vertices.dtype == mixed.joints.dtype == torch.float32
    torch.testing.assert_close(mixed.joints, out32.joints)
    pose_t = torch.tensor(pose, requires_grad=True)
    model64(torch.as_tensor(betas), pose_t[:, 3:], pose_t[:, :3]).joints.square().sum().backward()
    assert torch.isfinite(pose_t.grad).all() and pose_t.grad.abs().sum() > 0


def test_model_attributes_and_exact_buffers(body):
    model_dir, models, regressors = body
    model = load_body_model(model_dir / "SMPL_NEUTRAL.pkl", "n", dtype=torch.float64)
    reference = models["neutral"]
    assert model.num_vertices == NUM_VERTICES and model.num_betas == 10 and model.gender == "neutral"
    assert model.faces.dtype == torch.long and np.array_equal(model.faces.numpy(), reference["f"])
    assert model.parents.tolist() == SMPL_PARENTS
    assert model.J_regressor_h36m.shape == (17, NUM_VERTICES)
    # smplx would round these through float32; the model keeps the file's float64 values
    assert np.array_equal(model.smpl.v_template.numpy(), reference["v_template"])
    assert np.array_equal(model.smpl.shapedirs.numpy(), reference["shapedirs"][:, :, :10])
    assert np.array_equal(model.J_regressor_h36m.numpy(), regressors["h36m"])


def test_licensed_arrays_stay_out_of_state_dicts(body):
    model_dir, _, _ = body
    holder = torch.nn.Module()
    holder.body = load_body_model(model_dir, "neutral")
    holder.head = torch.nn.Linear(2, 2)
    assert sorted(holder.state_dict()) == ["head.bias", "head.weight"]
    moved = holder.to(torch.float64)
    assert moved.body.smpl.v_template.dtype == torch.float64  # buffers still move with the module


def test_more_betas_than_ten(body):
    model_dir, models, _ = body
    model = load_body_model(model_dir, num_betas=16, dtype=torch.float64)
    betas, pose = np.random.default_rng(13).normal(size=(1, 16)), random_pose(1, seed=13)[1]
    out = run(model, betas, pose)
    rotmats = Rotation.from_rotvec(pose[0].reshape(24, 3)).as_matrix()
    vertices, _ = reference_smpl(models["neutral"], betas[0], rotmats)
    np.testing.assert_allclose(out.vertices[0].numpy(), vertices, atol=1e-9)
    with pytest.raises(
        FileFormatError, match=r"key 'shapedirs' has shape \(40, 3, 10\), expected \(V, 3, >= 16\)"
    ):
        load_body_model(model_dir, "male", num_betas=16)


def test_gender_aliases_and_unknown_gender(body):
    model_dir, models, _ = body
    zero = (np.zeros((1, 10)), np.zeros((1, 72)))
    for alias in ("m", "M", "male", "MALE"):
        out = run(load_body_model(model_dir, alias, dtype=torch.float64), *zero)
        np.testing.assert_allclose(out.vertices[0].numpy(), models["male"]["v_template"], atol=1e-12)
    out = run(load_body_model(model_dir, "f", dtype=torch.float64), *zero)
    np.testing.assert_allclose(out.vertices[0].numpy(), models["female"]["v_template"], atol=1e-12)
    for bad in ("x", "neutrall", "", None):
        with pytest.raises(ValueError, match="unknown SMPL gender"):
            load_body_model(model_dir, bad)


# ----------------------------------------------------------------------------- file errors


def test_missing_model_file_or_directory_entry(body, tmp_path):
    model_dir, _, _ = body
    for target, shown in (
        (tmp_path, "SMPL_NEUTRAL.pkl or SMPL_NEUTRAL.npz"),
        (tmp_path / "SMPL_X.pkl", "SMPL_X.pkl"),
    ):
        with pytest.raises(FileNotFoundError) as info:
            load_body_model(target)
        message = str(info.value)
        assert shown in message and str(tmp_path) in message
        assert "https://smpl.is.tue.mpg.de" in message and "make_synthetic_body_model" in message


def test_regressor_lookup_and_errors(body, tmp_path):
    model_dir, models, regressors = body
    alone = tmp_path / "deep" / "smpl"
    alone.mkdir(parents=True)
    write_pickle(alone / "SMPL_NEUTRAL.pkl", as_smpl_pickle(models["neutral"]))
    with pytest.raises(FileNotFoundError) as info:
        load_body_model(alone)
    assert str(alone / "J_regressor_extra.npy") in str(info.value)
    assert str(alone.parent / "J_regressor_extra.npy") in str(info.value)

    explicit = load_body_model(
        alone,
        regressor_extra=model_dir.parent / "J_regressor_extra.npy",
        regressor_h36m=model_dir.parent / "J_regressor_h36m.npy",
        dtype=torch.float64,
    )
    assert np.array_equal(explicit.J_regressor_extra.numpy(), regressors["extra"])

    np.save(alone / "J_regressor_extra.npy", regressors["extra"][:, :-1])  # next to the model: found first
    with pytest.raises(FileFormatError, match=r"has shape \(9, 39\) .* expected \(9, V\) .* V = 40") as info:
        load_body_model(alone, regressor_h36m=model_dir.parent / "J_regressor_h36m.npy")
    assert str(alone / "J_regressor_extra.npy") in str(info.value)
    with pytest.raises(FileNotFoundError, match="nothere.npy"):
        load_body_model(alone, regressor_extra=tmp_path / "nothere.npy")


def _drop(key):
    return lambda stored, plain: {k: v for k, v in stored.items() if k != key}


def _set(key, make):
    """Replace `key` of the stored (pickled) dict by make(plain arrays of the model)."""
    return lambda stored, plain: {**stored, key: make(plain)}


BAD_MODELS = {
    "missing J_regressor": (_drop("J_regressor"), "key 'J_regressor' is missing"),
    "v_template not (V, 3)": (
        _set("v_template", lambda m: m["v_template"][:, :2]),
        r"'v_template' has shape \(40, 2\)",
    ),
    "v_template text": (_set("v_template", lambda m: "abc"), "'v_template' has dtype <U3"),
    "v_template NaN": (_set("v_template", lambda m: np.full((40, 3), np.nan)), "'v_template' holds NaN"),
    "too few shape components": (
        _set("shapedirs", lambda m: Ch(m["shapedirs"][:, :, :5])),
        r"'shapedirs' has shape \(40, 3, 5\), expected \(V, 3, >= 10\)",
    ),
    "posedirs not 207": (
        _set("posedirs", lambda m: m["posedirs"][:, :, :200]),
        r"'posedirs' has shape \(40, 3, 200\), expected \(V, 3, 207\) or \(3 V, 207\) with V = 40",
    ),
    "J_regressor wrong V": (
        _set("J_regressor", lambda m: scipy.sparse.csc_matrix(m["J_regressor"][:, :-1])),
        r"'J_regressor' has shape \(24, 39\), expected \(24, V\) with V = 40",
    ),
    "weights row does not sum to 1": (
        _set("weights", lambda m: m["weights"] * np.where(np.arange(40) == 3, 0.5, 1.0)[:, None]),
        "'weights' row 3 sums to 0.5, expected skinning weights whose rows sum to 1",
    ),
    "weights wrong shape": (
        _set("weights", lambda m: m["weights"][:, :23]),
        r"'weights' has shape \(40, 23\)",
    ),
    "kintree_table not SMPL": (
        _set("kintree_table", lambda m: np.array([[4294967295] + [0] * 23, list(range(24))])),
        "'kintree_table' has parents",
    ),
    "kintree_table wrong shape": (
        _set("kintree_table", lambda m: m["kintree_table"][:, :23]),
        r"'kintree_table' has shape \(2, 23\)",
    ),
    "face index out of range": (
        _set("f", lambda m: np.vstack([m["f"], [[0, 1, 40]]]).astype(np.uint32)),
        r"'f' has vertex indices in \[\d+, 40\], expected \[0, 39\]",
    ),
    "float faces": (_set("f", lambda m: m["f"].astype(np.float64)), "'f' has dtype float64"),
    "vertex joint id out of range": (
        _set("cemr_vertex_joint_ids", lambda m: {**m["cemr_vertex_joint_ids"], "rear": 45}),
        "vertex joint 'rear' uses vertex 45 .* has 40 vertices",
    ),
    "no vertex ids: smplx's real-SMPL ids do not fit": (
        _drop("cemr_vertex_joint_ids"),
        "vertex joint 'nose' uses vertex 332 \\(smplx's SMPL-H vertex ids",
    ),
    "vertex ids incomplete": (
        _set("cemr_vertex_joint_ids", lambda m: {"nose": 0}),
        r"'cemr_vertex_joint_ids' lacks the vertex joints \['reye'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_malformed_model_file_names_file_key_and_expectation(body, tmp_path, case):
    model_dir, models, _ = body
    mutate, message = BAD_MODELS[case]
    stored = mutate(as_smpl_pickle(models["neutral"]), models["neutral"])
    path = write_pickle(tmp_path / "SMPL_NEUTRAL.pkl", stored)
    with pytest.raises(FileFormatError, match=message) as info:
        load_body_model(path, regressor_extra=model_dir.parent / "J_regressor_extra.npy")
    assert f"SMPL file {path}:" in str(info.value)
    if "vertex joint '" not in message:
        assert "https://smpl.is.tue.mpg.de" in str(info.value)


def test_corrupt_unsafe_and_foreign_model_files(body, tmp_path):
    model_dir, models, _ = body
    regressor = {"regressor_extra": model_dir.parent / "J_regressor_extra.npy"}
    data = (model_dir / "SMPL_NEUTRAL.pkl").read_bytes()
    (tmp_path / "SMPL_NEUTRAL.pkl").write_bytes(data[: len(data) // 3])
    with pytest.raises(FileFormatError, match="truncated or corrupt") as info:
        load_body_model(tmp_path, **regressor)
    assert str(tmp_path / "SMPL_NEUTRAL.pkl") in str(info.value)

    marker = tmp_path / "executed"
    evil = {**as_smpl_pickle(models["neutral"]), "bs_style": _RunsCommand(os.system, f"touch {marker}")}
    path = write_pickle(tmp_path / "evil.pkl", evil)
    with pytest.raises(UnsafePickleError, match="'posix.system'") as info:
        load_body_model(path, **regressor)
    assert str(path) in str(info.value) and not marker.exists()

    with pytest.raises(FileFormatError, match="holds a list, expected a dict"):
        load_body_model(write_pickle(tmp_path / "list.pkl", [1, 2]), **regressor)
    (tmp_path / "model.txt").write_text("v_template")
    with pytest.raises(FileFormatError, match="unknown extension"):
        load_body_model(tmp_path / "model.txt", **regressor)


def test_forward_rejects_bad_shapes(body):
    model = load_body_model(body[0])
    betas, pose = torch.zeros(2, 10), torch.zeros(2, 72)
    with pytest.raises(ValueError, match=r"body_pose: expected \(B, 69\) axis-angle or \(B, 23, 3, 3\)"):
        model(betas, pose[:, 3:60], pose[:, :3])
    with pytest.raises(ValueError, match=r"global_orient: .* found shape \(2, 4\)"):
        model(betas, pose[:, 3:], pose[:, :4])
    with pytest.raises(ValueError, match=r"betas: expected shape \(B, 10\) .* found \(2, 9\)"):
        model(betas[:, :9], pose[:, 3:], pose[:, :3])
    with pytest.raises(ValueError, match=r"betas: .* found \(1, 10\)"):
        model(betas[:1], pose[:, 3:], pose[:, :3])


# ----------------------------------------------------------------------------- GMM pose prior


def fabricate_gmm(seed: int = 5, num_components: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    covars = []
    for k in range(num_components):
        A = rng.normal(size=(69, 69))
        covars.append(A @ A.T / 69 * (0.2 + 0.3 * k) + 0.05 * np.eye(69))
    weights = rng.random(num_components) + 0.2
    return {
        "means": rng.normal(scale=0.3, size=(num_components, 69)),
        "covars": np.stack(covars),
        "weights": weights / weights.sum(),
    }


def gmm_component_costs(gmm: dict, pose: np.ndarray) -> np.ndarray:
    """FORMATS.md 5.2 written out, before the min over components: (B, 69) -> (B, K)."""
    sqrt_dets = np.sqrt(np.linalg.det(gmm["covars"]))
    nll_weights = gmm["weights"] / ((2 * np.pi) ** (69 / 2) * sqrt_dets / sqrt_dets.min())
    return np.array(
        [
            [
                0.5 * (theta - mu) @ np.linalg.inv(cov) @ (theta - mu) - np.log(w)
                for mu, cov, w in zip(gmm["means"], gmm["covars"], nll_weights, strict=True)
            ]
            for theta in pose
        ]
    )


def test_gmm_prior_cost_matches_formula(tmp_path):
    gmm = fabricate_gmm()
    write_pickle(tmp_path / "gmm_08.pkl", gmm, protocol=0, py2=True)  # the real file is Python-2 protocol 0
    rng = np.random.default_rng(6)
    pose = np.concatenate([gmm["means"] + rng.normal(scale=0.05, size=(3, 69)), rng.normal(size=(2, 69))])
    costs = gmm_component_costs(gmm, pose)
    winners = costs.argmin(axis=1)
    assert set(winners[:3]) == {0, 1, 2}  # each component is the minimum for some sample
    prior64 = MaxMixturePrior.from_file(tmp_path, dtype=torch.float64)  # directory -> gmm_08.pkl
    np.testing.assert_allclose(prior64(torch.as_tensor(pose)).numpy(), costs.min(axis=1), rtol=1e-10)
    prior32 = MaxMixturePrior.from_file(tmp_path / "gmm_08.pkl")
    cost32 = prior32(torch.as_tensor(pose, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(cost32, costs.min(axis=1), rtol=1e-5)

    # gradient of the winning component: precision_k (theta - mu_k)
    theta = torch.tensor(pose, requires_grad=True)
    prior64(theta).sum().backward()
    for b, k in enumerate(winners):
        expected_grad = np.linalg.inv(gmm["covars"][k]) @ (pose[b] - gmm["means"][k])
        np.testing.assert_allclose(theta.grad[b].numpy(), expected_grad, rtol=1e-9, atol=1e-12)


BAD_GMMS = {
    "missing covars": (lambda g: {k: v for k, v in g.items() if k != "covars"}, "key 'covars' is missing"),
    "means not 69-d": (
        lambda g: {**g, "means": g["means"][:, :60]},
        r"key 'means' has shape \(3, 60\), expected \(K, 69\)",
    ),
    "covars wrong": (
        lambda g: {**g, "covars": g["covars"][:, :, :68]},
        r"key 'covars' has shape \(3, 69, 68\)",
    ),
    "weights count": (
        lambda g: {**g, "weights": g["weights"][:2]},
        r"key 'weights' has shape \(2,\), expected \(K,\)",
    ),
    "negative weight": (lambda g: {**g, "weights": -g["weights"]}, "non-positive"),
    "covariance not PD": (
        lambda g: {**g, "covars": np.concatenate([g["covars"][:2], -g["covars"][2:]])},
        "entry 2 is not symmetric positive definite",
    ),
    "not a dict": (lambda g: [g["means"]], "holds a list, expected a dict"),
}


@pytest.mark.parametrize("case", sorted(BAD_GMMS))
def test_bad_gmm_files(tmp_path, case):
    mutate, message = BAD_GMMS[case]
    path = write_pickle(tmp_path / "gmm_08.pkl", mutate(fabricate_gmm()))
    with pytest.raises(FileFormatError, match=message) as info:
        MaxMixturePrior.from_file(path)
    assert str(path) in str(info.value)


def test_gmm_missing_file_and_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="gmm_08.pkl"):
        MaxMixturePrior.from_file(tmp_path)
    prior = MaxMixturePrior(**fabricate_gmm())
    with pytest.raises(ValueError, match=r"expected shape \(B, 69\), found \(2, 72\)"):
        prior(torch.zeros(2, 72))


def test_cost_quantile_is_numpys_quantile_of_the_body_pose_costs_and_refuses_bad_input():
    from cemr.body.prior import cost_quantile

    prior = MaxMixturePrior(**fabricate_gmm())
    rng = np.random.default_rng(3)
    poses = rng.normal(scale=0.4, size=(1000, 72)).astype(np.float32)
    costs = prior(torch.as_tensor(poses[:, 3:])).double().numpy()  # the root's 3 values are not a body pose
    for q in (0.5, 0.99):
        expected = np.quantile(costs, q)
        assert cost_quantile(prior, poses, q, batch_size=300) == pytest.approx(expected, rel=1e-6)
    poses[:, :3] = 100.0
    assert cost_quantile(prior, poses, 0.5) == pytest.approx(np.quantile(costs, 0.5), rel=1e-6)
    with pytest.raises(ValueError, match=r"non-empty \(N, 72\) array, found \(5, 69\)"):
        cost_quantile(prior, poses[:5, 3:], 0.5)
    with pytest.raises(ValueError, match="quantile must lie in"):
        cost_quantile(prior, poses, 1.0)


# ----------------------------------------------------------------------------- procedural model


def test_procedural_model_loads_through_the_same_path(tmp_path):
    from cemr.body import make_synthetic_body_model, synthetic

    assert make_synthetic_body_model is synthetic.make_synthetic_body_model
    make_synthetic_body_model(tmp_path, seed=0)
    for gender in ("neutral", "male", "female"):
        model = load_body_model(tmp_path, gender, dtype=torch.float64)
        raw = load_pickle(tmp_path / f"SMPL_{gender.upper()}.pkl")
        v_template = np.asarray(raw["v_template"])
        J_regressor = raw["J_regressor"]
        J_regressor = J_regressor.toarray() if scipy.sparse.issparse(J_regressor) else np.asarray(J_regressor)
        out = model(torch.zeros(1, 10, dtype=torch.float64), torch.zeros(1, 69), torch.zeros(1, 3))
        assert model.num_vertices == v_template.shape[0]
        np.testing.assert_allclose(out.vertices[0].numpy(), v_template, atol=1e-12)
        np.testing.assert_allclose(out.smpl_joints[0].numpy(), J_regressor @ v_template, atol=1e-12)
        assert torch.isfinite(out.joints).all() and torch.isfinite(out.joints_h36m).all()
    prior = MaxMixturePrior.from_file(tmp_path / "gmm_08.pkl")
    assert torch.isfinite(prior(torch.zeros(2, 69))).all()
