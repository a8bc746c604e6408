"""The procedural body model: SMPL's file layout, a closed outward mesh, a working shape space, regressors,
mean parameters and pose prior, loaded through the same path as the real SMPL files."""

from __future__ import annotations

import json
import os
import pickletools
import shutil

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from cemr.body import MaxMixturePrior, load_body_model, make_synthetic_body_model, synthetic
from cemr.body.joints import (
    EXTRA_JOINT_NAMES,
    H36M17_NAMES,
    JOINT_NAMES_49,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    VERTEX_JOINT_NAMES,
)
from cemr.geometry import rot6d_to_rotmat
from cemr.safe_io import load_pickle

GENDERS = ("NEUTRAL", "MALE", "FEMALE")
J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}
H36M = {name: i for i, name in enumerate(H36M17_NAMES)}
EXTRA = {name: i for i, name in enumerate(EXTRA_JOINT_NAMES)}
J49 = {name: i for i, name in enumerate(JOINT_NAMES_49)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_synthetic_body_model(tmp_path_factory.mktemp("synthetic_body") / "model", seed=0)


@pytest.fixture(scope="module")
def smpl(model_dir):
    return {gender: load_pickle(model_dir / f"SMPL_{gender}.pkl") for gender in GENDERS}


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (verts[faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def winding_numbers(verts: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(P,) generalized winding numbers (van Oosterom-Strackee solid angles): 1 inside, 0 outside."""
    a, b, c = (verts[faces[:, k]][None] - points[:, None] for k in range(3))
    la, lb, lc = (np.linalg.norm(x, axis=2) for x in (a, b, c))
    det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
    dot = lambda x, y: np.einsum("pfi,pfi->pf", x, y)  # noqa: E731
    denom = la * lb * lc + dot(a, b) * lc + dot(b, c) * la + dot(c, a) * lb
    return 2.0 * np.arctan2(det, denom).sum(axis=1) / (4.0 * np.pi)


def height(verts: np.ndarray) -> float:
    return float(verts[:, 1].max() - verts[:, 1].min())


# ----------------------------------------------------------------------------- file layout


def test_smpl_files_have_smpl_keys_shapes_and_dtypes(model_dir, smpl):
    num_vertices = smpl["NEUTRAL"]["v_template"].shape[0]
    assert 1500 <= num_vertices <= 4000
    parents = np.array([4294967295] + SMPL_PARENTS[1:], dtype=np.int64)
    for gender, data in smpl.items():
        assert {"v_template", "shapedirs", "posedirs", "J_regressor", "J", "weights", "kintree_table", "f",
                "bs_style", "bs_type", "cemr_vertex_joint_ids"} == set(data)  # fmt: skip
        expected = {
            "v_template": ((num_vertices, 3), np.float64), "shapedirs": ((num_vertices, 3, 10), np.float64),
            "posedirs": ((num_vertices, 3, 207), np.float64), "J": ((24, 3), np.float64),
            "weights": ((num_vertices, 24), np.float64), "kintree_table": ((2, 24), np.int64),
        }  # fmt: skip
        for key, (shape, dtype) in expected.items():
            assert type(data[key]) is np.ndarray and data[key].shape == shape and data[key].dtype == dtype, (
                key
            )
        assert scipy.sparse.issparse(data["J_regressor"]) and data["J_regressor"].format == "csc"
        assert data["J_regressor"].shape == (24, num_vertices) and data["J_regressor"].dtype == np.float64
        assert data["f"].dtype == np.uint32 and data["f"].shape == (2 * (num_vertices - 2), 3)
        np.testing.assert_array_equal(data["f"], smpl["NEUTRAL"]["f"])  # one topology for all genders
        np.testing.assert_array_equal(data["kintree_table"], np.stack([parents, np.arange(24)]))
        assert data["bs_style"] == "lbs" and data["bs_type"] == "lrotmin"
        ids = data["cemr_vertex_joint_ids"]
        assert list(ids) == VERTEX_JOINT_NAMES and all(
            type(i) is int and 0 <= i < num_vertices for i in ids.values()
        )
        assert ids == smpl["NEUTRAL"]["cemr_vertex_joint_ids"]
        assert not data["posedirs"].any()
        # Python-2 era protocols, as the released files: SMPL protocol 2, the GMM protocol 0.
        ops = list(pickletools.genops((model_dir / f"SMPL_{gender}.pkl").read_bytes()))
        assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    gmm_ops = list(pickletools.genops((model_dir / "gmm_08.pkl").read_bytes()))
    assert max(op.proto for op, _, _ in gmm_ops) == 0


def test_every_file_and_manifest_is_written(model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == sorted([*synthetic.MODEL_FILES, synthetic.MANIFEST])
    manifest = json.loads((model_dir / synthetic.MANIFEST).read_text())
    assert manifest == {"generator": "cemr.body.synthetic", "version": synthetic.GENERATOR_VERSION, "seed": 0}
    assert not [p for p in model_dir.parent.iterdir() if ".tmp-" in p.name]  # no leftovers


# ----------------------------------------------------------------------------- mesh


@pytest.mark.parametrize("gender", GENDERS)
def test_mesh_is_one_closed_outward_genus0_manifold(smpl, gender):
    verts, faces = smpl[gender]["v_template"], smpl[gender]["f"].astype(np.int64)
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    # Consistently oriented and closed: each directed edge once, and its reverse exactly once.
    keys = directed[:, 0] * len(verts) + directed[:, 1]
    assert len(np.unique(keys)) == len(keys)
    assert np.isin(directed[:, 1] * len(verts) + directed[:, 0], keys).all()
    num_edges = len(keys) // 2
    assert len(verts) - num_edges + len(faces) == 2  # Euler characteristic of a sphere
    adjacency = scipy.sparse.coo_matrix((np.ones(len(directed)), directed.T), shape=(len(verts),) * 2)
    assert connected_components(adjacency, directed=False)[0] == 1
    assert np.array_equal(np.unique(faces), np.arange(len(verts)))  # no stray vertices
    areas = np.linalg.norm(
        np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]]), axis=1
    )
    assert areas.min() > 1e-8
    # Outward normals: positive volume of about a person's (65 kg at ~1 kg/l is 0.065 m^3).
    assert 0.04 < signed_volume(verts, faces) < 0.11
    # Left-right mirror symmetric (to rounding).
    distance, _ = cKDTree(verts).query(verts * [-1.0, 1.0, 1.0])
    assert distance.max() < 1e-9


def test_rest_pose_follows_smpl_conventions(smpl):
    for gender, data in smpl.items():
        verts, joints = data["v_template"], data["J"]
        assert 1.6 <= height(verts) <= 1.85, gender
        assert np.linalg.norm(joints[J["pelvis"]]) < 0.3  # SMPL's pelvis is at about (0, -0.22, 0.03)
        assert joints[J["left_hip"], 0] > 0 > joints[J["right_hip"], 0]  # the body's left at +x
        assert (
            joints[J["left_wrist"], 0] > 0.6 and abs(joints[J["left_wrist"], 1] - joints[J["neck"], 1]) < 0.1
        )
        assert (
            joints[J["head"], 1] > joints[J["neck"], 1] > joints[J["pelvis"], 1] > joints[J["left_knee"], 1]
        )
        nose = verts[data["cemr_vertex_joint_ids"]["nose"]]
        assert nose[2] > joints[J["head"], 2] + 0.08  # the face looks towards +z
    heights = {gender: height(smpl[gender]["v_template"]) for gender in GENDERS}
    assert heights["MALE"] > heights["NEUTRAL"] + 0.05 > heights["FEMALE"] + 0.1

    def shoulders_over_hips(joints):
        return np.ptp(joints[[J["left_shoulder"], J["right_shoulder"]], 0]) / np.ptp(
            joints[[J["left_hip"], J["right_hip"]], 0]
        )

    ratio = {gender: shoulders_over_hips(smpl[gender]["J"]) for gender in GENDERS}
    assert ratio["MALE"] > ratio["NEUTRAL"] + 0.2 > ratio["FEMALE"] + 0.4


def test_vertex_picked_joints_sit_on_their_body_parts(smpl):
    verts = smpl["NEUTRAL"]["v_template"]
    v = {name: verts[i] for name, i in smpl["NEUTRAL"]["cemr_vertex_joint_ids"].items()}
    joints = smpl["NEUTRAL"]["J"]
    head = verts[verts[:, 1] > joints[J["neck"], 1] + 0.04]
    assert v["nose"][2] == head[:, 2].max() and abs(v["nose"][0]) < 1e-9  # nose tip: front-most
    assert v["nose"][1] < v["leye"][1] and v["leye"][2] > joints[J["head"], 2] + 0.05
    for left, right in [("leye", "reye"), ("lear", "rear"), ("LBigToe", "RBigToe"), ("LHeel", "RHeel"),
                        ("lthumb", "rthumb"), ("lpinky", "rpinky")]:  # fmt: skip
        np.testing.assert_allclose(v[right], v[left] * [-1, 1, 1], atol=1e-9)
        assert v[left][0] > 0
    assert v["lear"][0] > head[:, 0].max() - 0.01  # ears at the sides of the head
    ground = verts[:, 1].min()
    for name in ("LBigToe", "LSmallToe", "LHeel"):
        assert v[name][1] < ground + 0.025
    assert v["LBigToe"][2] - v["LHeel"][2] > 0.22  # foot length
    assert v["LSmallToe"][0] > v["LBigToe"][0]  # the little toe is lateral
    assert v["LHeel"][2] < joints[J["left_ankle"], 2] < v["LBigToe"][2]
    tips = [v[name] for name in ("lthumb", "lindex", "lmiddle", "lring", "lpinky")]
    assert all(tip[0] > joints[J["left_wrist"], 0] + 0.07 for tip in tips)
    assert [tip[2] for tip in tips] == sorted([tip[2] for tip in tips], reverse=True)  # thumb in front
    assert v["lmiddle"][0] > v["lthumb"][0] + 0.08


# ----------------------------------------------------------------------------- skinning and regressors


def test_skinning_weights_are_smooth_convex_and_local(smpl):
    faces = smpl["NEUTRAL"]["f"].astype(np.int64)
    weights = smpl["NEUTRAL"]["weights"]
    assert weights.min() >= 0.0
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert set(weights.argmax(axis=1)) == set(range(24))  # every joint drives part of the body
    # Blends: no hard seams along mesh edges, and joints mix only with nearby ones in the tree.
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    assert np.abs(weights[edges[:, 0]] - weights[edges[:, 1]]).sum(axis=1).max() < 0.6
    assert ((weights > 0.02) & (weights < 0.98)).any(axis=1).mean() > 0.3
    hops = np.full((24, 24), 99)
    for j in range(24):  # tree distance by breadth-first search
        hops[j, j], frontier = 0, [j]
        while frontier:
            k = frontier.pop()
            for n in [SMPL_PARENTS[k]] * (k > 0) + [c for c, p in enumerate(SMPL_PARENTS) if p == k]:
                if hops[j, n] > hops[j, k] + 1:
                    hops[j, n] = hops[j, k] + 1
                    frontier.append(n)
    rows, cols = np.nonzero(weights > 0.05)
    assert hops[weights.argmax(axis=1)[rows], cols].max() <= 3


@pytest.mark.parametrize("gender", GENDERS)
def test_joint_regressor_is_convex_local_and_reproduces_J(smpl, gender):
    data = smpl[gender]
    verts, faces = data["v_template"], data["f"].astype(np.int64)
    regressor = data["J_regressor"].toarray()
    assert regressor.min() >= 0.0
    np.testing.assert_allclose(regressor.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(regressor @ verts, data["J"], atol=1e-10)
    np.testing.assert_allclose(
        data["J"],
        synthetic.shaped_joints(synthetic.rest_joints(), synthetic.GENDER_BETAS[gender]),
        atol=1e-10,
    )
    if gender == "NEUTRAL":  # the designed skeleton, SMPL-like (metres)
        for name, point in [("pelvis", (0, -0.225, 0.015)), ("left_hip", (0.07, -0.315, 0.005)),
                            ("right_wrist", (-0.69, 0.215, -0.025)), ("head", (0, 0.37, 0.025))]:  # fmt: skip
            np.testing.assert_allclose(data["J"][J[name]], point, atol=1e-10)
    rows, cols = np.nonzero(regressor)
    assert np.linalg.norm(verts[cols] - data["J"][rows], axis=1).max() < 0.25  # made from nearby vertices
    np.testing.assert_allclose(winding_numbers(verts, faces, data["J"]), 1.0, atol=1e-6)  # inside the body


def test_extra_and_h36m_regressors_are_anatomical(model_dir, smpl):
    data = smpl["NEUTRAL"]
    verts, faces, joints = data["v_template"], data["f"].astype(np.int64), data["J"]
    extra_reg = np.load(model_dir / "J_regressor_extra.npy")
    h36m_reg = np.load(model_dir / "J_regressor_h36m.npy")
    assert extra_reg.shape == (9, len(verts)) and h36m_reg.shape == (17, len(verts))
    assert extra_reg.dtype == h36m_reg.dtype == np.float64
    for reg in (extra_reg, h36m_reg):
        assert reg.min() >= 0.0
        np.testing.assert_allclose(reg.sum(axis=1), 1.0, atol=1e-12)
    extra, h36m = extra_reg @ verts, h36m_reg @ verts
    np.testing.assert_allclose(winding_numbers(verts, faces, np.concatenate([extra, h36m])), 1.0, atol=1e-6)
    crown = verts[:, 1].max()
    for name, point in [("extra", extra[EXTRA["Top of Head (LSP)"]]), ("h36m", h36m[H36M["headtop"]])]:
        assert crown - 0.025 < point[1] < crown, name
    for side, sign in (("Left", 1), ("Right", -1)):
        lsp_hip, smpl_hip = extra[EXTRA[f"{side} Hip"]], joints[J[f"{side.lower()}_hip"]]
        assert sign * lsp_hip[0] > sign * smpl_hip[0] and lsp_hip[1] < smpl_hip[1] - 0.02
        h36m_hip = h36m[H36M[f"{side[0].lower()}hip"]]
        assert sign * h36m_hip[0] > sign * smpl_hip[0] + 0.01  # H3.6M hips sit wider than SMPL's
    np.testing.assert_allclose(h36m[H36M["pelvis"]], (h36m[H36M["lhip"]] + h36m[H36M["rhip"]]) / 2, atol=1e-9)
    np.testing.assert_allclose(
        extra[EXTRA["Pelvis (MPII)"]], (extra[EXTRA["Left Hip"]] + extra[EXTRA["Right Hip"]]) / 2, atol=1e-9
    )
    y = {name: h36m[i, 1] for name, i in H36M.items()}
    assert y["lankle"] < y["lknee"] < y["lhip"] < y["spine"] < y["neck"] < y["head"] < y["headtop"]
    x = {name: h36m[i, 0] for name, i in H36M.items()}
    assert 0 < x["lshoulder"] < x["lelbow"] < x["lwrist"] and 0 > x["rshoulder"] > x["relbow"] > x["rwrist"]
    jaw, head = extra[EXTRA["Jaw (H36M)"]], extra[EXTRA["Head (H36M)"]]
    assert jaw[1] < head[1] and jaw[2] > head[2]  # the jaw is below and in front of the head centre
    neck = extra[EXTRA["Neck (LSP)"]]
    assert joints[J["left_shoulder"], 1] < neck[1] < joints[J["head"], 1]


# ----------------------------------------------------------------------------- shape space


def _measure(verts: np.ndarray, joints: np.ndarray) -> dict[str, float]:
    """A named body measurement (metres) that each beta is meant to change."""

    def bone(*names):
        return sum(
            np.linalg.norm(joints[J[b]] - joints[J[a]]) for a, b in zip(names[:-1], names[1:], strict=True)
        )

    waist = verts[(np.abs(verts[:, 1] + 0.10) < 0.03) & (np.abs(verts[:, 0]) < 0.25)]
    thigh = verts[(np.abs(verts[:, 1] + 0.52) < 0.03) & (verts[:, 0] > 0)]
    head = verts[verts[:, 1] > joints[J["head"], 1]]
    return {
        "height": height(verts),
        "girth": np.ptp(waist[:, 0]) + np.ptp(waist[:, 2]),
        "leg_length": bone("left_hip", "left_knee", "left_ankle"),
        "arm_length": bone("left_shoulder", "left_elbow", "left_wrist"),
        "shoulder_width": np.ptp(joints[[J["left_shoulder"], J["right_shoulder"]], 0]),
        "hip_width": np.ptp(joints[[J["left_hip"], J["right_hip"]], 0]),
        "torso_length": joints[J["neck"], 1] - joints[J["pelvis"], 1],
        "head_size": np.ptp(head[:, 1]),
        "belly": waist[np.abs(waist[:, 0]) < 0.05, 2].max(),
        "limb_thickness": np.ptp(thigh[:, 0]),
    }


def test_each_beta_changes_its_named_measurement(smpl):
    data = smpl["NEUTRAL"]
    verts0, shapedirs, regressor = data["v_template"], data["shapedirs"], data["J_regressor"]

    def shaped(betas):
        verts = verts0 + shapedirs @ betas
        return verts, regressor @ verts

    heights = [height(shaped(np.r_[b, np.zeros(9)])[0]) for b in np.linspace(-3, 3, 13)]
    assert np.all(np.diff(heights) > 0.005)
    assert 1.5 < heights[2] and heights[10] < 1.95  # beta0 = -2, +2
    for i, name in enumerate(synthetic.SHAPE_NAMES):
        low, high = (_measure(*shaped(s * np.eye(10)[i])) for s in (-1.0, 1.0))
        assert high[name] - low[name] > 0.004 and high[name] / low[name] > 1.03, name
        if name in ("girth", "arm_length", "shoulder_width", "hip_width", "belly", "limb_thickness"):
            assert abs(high["height"] - low["height"]) < 0.002, name  # leaves the height alone


def test_extreme_shapes_stay_valid_bodies(smpl):
    """beta = +-2 along each direction: no flipped triangle, joints and regressed keypoints inside."""
    data = smpl["NEUTRAL"]
    verts0, shapedirs, regressor = data["v_template"], data["shapedirs"], data["J_regressor"]
    faces = data["f"].astype(np.int64)

    def normals(verts):
        n = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    rest = normals(verts0)
    for i in range(10):
        for s in (-2.0, 2.0):
            verts = verts0 + s * shapedirs[:, :, i]
            assert (np.einsum("ij,ij->i", normals(verts), rest) > 0.3).all(), (i, s)
            assert 1.5 < height(verts) < 1.95
            np.testing.assert_allclose(winding_numbers(verts, faces, regressor @ verts), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- mean params and prior


def test_mean_params_decode_to_an_upright_relaxed_pose(model_dir):
    with np.load(model_dir / "smpl_mean_params.npz") as f:
        assert sorted(f.files) == ["cam", "pose", "shape"]
        pose, shape, cam = f["pose"], f["shape"], f["cam"]
    assert pose.shape == (144,) and pose.dtype == np.float32
    assert shape.shape == (10,) and shape.dtype == np.float64 and not shape.any()
    assert cam.dtype == np.float32 and cam.tolist() == pytest.approx([0.9, 0.0, 0.0])
    np.testing.assert_array_equal(pose[:6], [1, 0, 0, -1, 0, 0])  # [R00,R01,R10,R11,R20,R21] of diag(1,-1,-1)
    rotmats = rot6d_to_rotmat(torch.from_numpy(pose).double().view(24, 6))
    np.testing.assert_allclose(rotmats @ rotmats.transpose(1, 2), torch.eye(3).expand(24, 3, 3), atol=1e-6)
    np.testing.assert_allclose(torch.linalg.det(rotmats), 1.0, atol=1e-6)
    np.testing.assert_allclose(rotmats[0], np.diag([1.0, -1.0, -1.0]), atol=1e-7)  # 180 deg about x
    model = load_body_model(model_dir, dtype=torch.float64)
    body = rotmats[1:][None]
    rest = model(torch.zeros(1, 10, dtype=torch.float64), body, torch.eye(3, dtype=torch.float64)[None])
    joints = rest.smpl_joints[0]
    for side in ("left", "right"):  # arms lowered from the T-pose, not hanging straight
        drop = joints[J[f"{side}_shoulder"], 1] - joints[J[f"{side}_wrist"], 1]
        assert 0.2 < drop < 0.45
    camera = model(torch.zeros(1, 10, dtype=torch.float64), body, rotmats[:1][None]).smpl_joints[0]
    assert camera[J["head"], 1] < camera[J["pelvis"], 1] < camera[J["left_ankle"], 1]  # upright with y down
    nose = model(torch.zeros(1, 10, dtype=torch.float64), body, rotmats[:1][None]).joints[0, J49["OP Nose"]]
    assert nose[2] < camera[J["head"], 2]  # faces the camera (-z)


def test_gmm_is_a_valid_deterministic_pose_prior(model_dir):
    gmm = load_pickle(model_dir / "gmm_08.pkl")
    assert sorted(gmm) == ["covars", "means", "weights"]
    assert (
        gmm["means"].shape == (8, 69) and gmm["covars"].shape == (8, 69, 69) and gmm["weights"].shape == (8,)
    )
    assert gmm["means"].dtype == gmm["covars"].dtype == gmm["weights"].dtype == np.float64
    np.testing.assert_allclose(gmm["covars"], gmm["covars"].transpose(0, 2, 1), atol=1e-15)
    assert np.linalg.eigvalsh(gmm["covars"]).min() > 1e-4  # SPD, not degenerate
    assert (gmm["weights"] > 0).all() and gmm["weights"].sum() == pytest.approx(1.0, abs=1e-12)
    for key in gmm:
        np.testing.assert_array_equal(gmm[key], synthetic._gmm(0)[key])
    assert not np.array_equal(synthetic._gmm(1)["covars"], gmm["covars"])
    prior = MaxMixturePrior.from_file(model_dir / "gmm_08.pkl")
    plausible = torch.from_numpy(gmm["means"])
    implausible = plausible.clone().view(8, 23, 3)
    implausible[:, J["left_knee"] - 1, 0] = -1.5  # knees bent forwards
    implausible[:, J["right_elbow"] - 1, 1] = -1.5  # elbow bent backwards
    cost_plausible, cost_implausible = prior(plausible), prior(implausible.view(8, 69))
    assert torch.isfinite(cost_plausible).all() and (cost_implausible > cost_plausible + 10).all()
    # Flexing the knee the natural way costs less than the same angle the wrong way.
    sitting = torch.from_numpy(gmm["means"][3:4]).clone()
    reversed_knees = sitting.clone().view(1, 23, 3)
    reversed_knees[:, [J["left_knee"] - 1, J["right_knee"] - 1], 0] *= -1
    assert prior(reversed_knees.view(1, 69)) > prior(sitting) + 20


# ----------------------------------------------------------------------------- loading and posing


def test_loads_through_load_body_model_with_49_joints(model_dir, smpl):
    model = load_body_model(model_dir, "neutral", dtype=torch.float64)
    verts = smpl["NEUTRAL"]["v_template"]
    assert model.num_vertices == len(verts)
    zeros = torch.zeros(1, 10, dtype=torch.float64)
    out = model(zeros, torch.zeros(1, 69, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))
    assert out.vertices.shape == (1, len(verts), 3) and out.joints.shape == (1, 49, 3)
    np.testing.assert_allclose(out.vertices[0].numpy(), verts, atol=1e-12)
    joints = out.joints[0].numpy()
    ids = smpl["NEUTRAL"]["cemr_vertex_joint_ids"]
    np.testing.assert_allclose(joints[J49["OP Nose"]], verts[ids["nose"]], atol=1e-12)
    assert joints[J49["OP Nose"], 2] > joints[J49["Head (H36M)"], 2] + 0.08  # front of the head
    assert verts[:, 1].max() - 0.025 < joints[J49["Top of Head (LSP)"], 1]
    for name in ("OP LHeel", "OP RHeel", "OP LBigToe", "OP RBigToe"):
        assert joints[J49[name], 1] < verts[:, 1].min() + 0.025  # feet at the bottom
    assert joints[J49["Left Hip"], 0] > 0 > joints[J49["Right Hip"], 0]
    np.testing.assert_allclose(
        out.joints_h36m[0].numpy(), np.load(model_dir / "J_regressor_h36m.npy") @ verts, atol=1e-12
    )

    # Skinning: bending the left elbow 90 degrees forwards carries the hand (and its fingertips) to +z.
    pose = torch.zeros(1, 23, 3, dtype=torch.float64)
    pose[0, J["left_elbow"] - 1] = torch.tensor([0.0, -np.pi / 2, 0.0])
    bent = model(zeros, pose.view(1, 69), torch.zeros(1, 3, dtype=torch.float64))
    elbow = bent.smpl_joints[0, J["left_elbow"]].numpy()
    wrist, fingertip = bent.joints[0, J49["OP LWrist"]].numpy(), bent.vertices[0, ids["lmiddle"]].numpy()
    assert wrist[2] > elbow[2] + 0.2 and abs(wrist[0] - elbow[0]) < 0.02
    assert fingertip[2] > elbow[2] + 0.35 and abs(fingertip[0] - elbow[0]) < 0.05
    upper_arm = np.argmin(np.linalg.norm(verts - [0.31, 0.265, -0.025], axis=1))  # 13 cm from the elbow
    assert np.linalg.norm(bent.vertices[0, upper_arm].numpy() - verts[upper_arm]) < 0.005


# ----------------------------------------------------------------------------- writing, caching, atomicity


@pytest.mark.slow
def test_rebuild_is_byte_identical_and_overwrite_replaces_damage(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    with open(copy / "gmm_08.pkl", "ab") as f:
        f.write(b"damage")
    (copy / "SMPL_MALE.pkl").write_bytes(b"damage")
    assert make_synthetic_body_model(copy, seed=0, overwrite=True) == copy
    for name in [*synthetic.MODEL_FILES, synthetic.MANIFEST]:
        assert (copy / name).read_bytes() == (model_dir / name).read_bytes(), name


def test_seed_changes_only_the_pose_prior(model_dir, tmp_path):
    other = make_synthetic_body_model(str(tmp_path / "seed1"), seed=1)
    for name in synthetic.MODEL_FILES:
        same = (other / name).read_bytes() == (model_dir / name).read_bytes()
        assert same == (name != "gmm_08.pkl"), name
    assert json.loads((other / synthetic.MANIFEST).read_text())["seed"] == 1


def test_existing_model_is_a_cache(model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    with open(copy / "gmm_08.pkl", "ab") as f:
        f.write(b"!")
    marked = (copy / "gmm_08.pkl").read_bytes()

    def no_build(seed):
        raise AssertionError("a cached model was rebuilt")

    monkeypatch.setattr(synthetic, "build_synthetic_body_model", no_build)
    assert make_synthetic_body_model(copy, seed=0) == copy
    assert (copy / "gmm_08.pkl").read_bytes() == marked


def test_refuses_to_clobber_foreign_or_mismatched_models(model_dir, tmp_path, monkeypatch):
    def fake_build(seed):
        raise RuntimeError(f"rebuilt with seed {seed}")

    monkeypatch.setattr(synthetic, "build_synthetic_body_model", fake_build)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "SMPL_NEUTRAL.pkl").write_bytes(b"licensed SMPL")
    with pytest.raises(
        FileExistsError, match=r"holds SMPL_NEUTRAL\.pkl but no synthetic_body\.json.*overwrite=True"
    ):
        make_synthetic_body_model(foreign)
    assert (foreign / "SMPL_NEUTRAL.pkl").read_bytes() == b"licensed SMPL"

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    with pytest.raises(FileExistsError, match=r"made with seed 0, expected seed 3"):
        make_synthetic_body_model(copy, seed=3)
    (copy / synthetic.MANIFEST).write_text("{not json")
    with pytest.raises(FileExistsError, match=r"synthetic_body\.json: unreadable manifest"):
        make_synthetic_body_model(copy, seed=0)
    # A model from an older generator version is stale and gets rebuilt.
    (copy / synthetic.MANIFEST).write_text(
        json.dumps({"version": synthetic.GENERATOR_VERSION - 1, "seed": 0})
    )
    with pytest.raises(RuntimeError, match="rebuilt with seed 0"):
        make_synthetic_body_model(copy, seed=0)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0", None])
def test_bad_arguments_raise(tmp_path, seed):
    with pytest.raises(ValueError, match=f"seed must be a non-negative integer, found {seed!r}"):
        make_synthetic_body_model(tmp_path / "model", seed=seed)


def test_out_dir_that_is_a_file_raises(tmp_path):
    path = tmp_path / "model"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match=f"{path} exists and is not a directory"):
        make_synthetic_body_model(path)


def test_interrupted_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(
        synthetic, "build_synthetic_body_model", lambda seed: dict.fromkeys(synthetic.MODEL_FILES)
    )
    written = []

    def flaky_write(path, value):
        written.append(path.name)
        if len(written) == 3:
            raise OSError("disk full")
        path.write_bytes(b"partial")

    monkeypatch.setattr(synthetic, "_write_file", flaky_write)
    with pytest.raises(OSError, match="disk full"):
        make_synthetic_body_model(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []  # neither a half model nor the temporary directory


def test_interrupted_overwrite_is_never_taken_as_complete(model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    monkeypatch.setattr(
        synthetic, "build_synthetic_body_model", lambda seed: dict.fromkeys(synthetic.MODEL_FILES)
    )
    monkeypatch.setattr(synthetic, "_write_file", lambda path, value: path.write_bytes(b"new"))
    real_replace, moved = os.replace, []

    def flaky_replace(src, dst):
        moved.append(dst)
        if len(moved) == 4:
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(synthetic.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="killed"):
        make_synthetic_body_model(copy, seed=0, overwrite=True)
    monkeypatch.setattr(synthetic.os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not (copy / synthetic.MANIFEST).exists()
    with pytest.raises(FileExistsError, match="interrupted"):
        make_synthetic_body_model(copy, seed=0)
