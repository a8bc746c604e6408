"""3DPW preprocessing on fabricated sequence pickles in the official layout (Python-2 pickles)."""

from __future__ import annotations

import math
import pickle
import struct

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cemr.body import load_body_model, make_synthetic_body_model
from cemr.body.joints import OPENPOSE18_TO_J49
from cemr.data.pw3d import camera_frame_pose, load_sequence, prepare_3dpw, project, world_to_camera
from cemr.safe_io import FileFormatError, UnsafePickleError

K = np.array([[1961.9, 0.0, 540.0], [0.0, 1969.2, 960.0], [0.0, 0.0, 1.0]])


class Py2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 `str` (BINSTRING), as 3DPW's pickles were written."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def write_py2_pickle(path, obj):
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def fake_sequence(name, genders, frames, rng, num_vertices=6890):
    """A sequence dict with 3DPW's keys, dtypes and shapes (FORMATS.md 1.2)."""
    people = len(genders)
    yaw = np.linspace(0.0, 0.3, frames)
    cam_rot = Rotation.from_euler("x", np.pi) * Rotation.from_euler(
        "y", yaw[:, None]
    )  # world +y up -> camera y down
    cam_poses = np.tile(np.eye(4), (frames, 1, 1))
    cam_poses[:, :3, :3] = cam_rot.as_matrix()
    cam_poses[:, :3, 3] = np.stack([0.1 * yaw, 0.05 + 0 * yaw, 4.5 + yaw], 1)
    poses, trans, poses2d, valid = [], [], [], []
    for p in range(people):
        pose = rng.normal(0.0, 0.2, (frames, 72))
        pose[:, :3] = np.stack(
            [0.1 * np.ones(frames), np.linspace(-1.0, 1.0, frames) + p, np.zeros(frames)], 1
        )
        poses.append(pose)
        trans.append(
            np.stack([np.full(frames, 0.9 * p - 0.45), 0.02 * np.arange(frames), np.zeros(frames)], 1)
        )
        kp = rng.uniform(100.0, 1000.0, (frames, 3, 18))
        kp[:, 2] = rng.uniform(0.0, 1.0, (frames, 18))
        poses2d.append(kp)
        v = np.ones(frames, dtype=bool)
        v[[3, 4] if p == 0 else [0, frames - 1]] = False
        valid.append(v if p == 0 else v.astype(np.int64))  # the dtype is not certain: bool or 0/1
    return {
        "sequence": name,
        "genders": genders,
        "betas": [rng.normal(0, 1, 10) if p == 0 else rng.normal(0, 1, 300) for p in range(people)],
        "betas_clothed": [rng.normal(0, 1, 10) for _ in range(people)],
        "v_template_clothed": [rng.normal(0, 1, (num_vertices, 3)) for _ in range(people)],
        "texture_maps": [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(people)],
        "poses": poses,
        "trans": trans,
        "poses_60Hz": [np.repeat(p, 2, axis=0) for p in poses],
        "trans_60Hz": [np.repeat(t, 2, axis=0) for t in trans],
        "poses2d": poses2d,
        "jointPositions": [rng.normal(0, 1, (frames, 72)) for _ in range(people)],
        "img_frame_ids": np.arange(0, 2 * frames, 2),
        "cam_poses": cam_poses,
        "campose_valid": valid,
        "cam_intrinsics": K.copy(),
    }


SEQUENCES = {  # split -> [(name, genders, frames)]
    "test": [
        ("a_custom_00", ["m"], 5),
        ("downtown_walking_00", ["m", "f"], 20),
        ("flat_packBags_00", ["f"], 6),
    ],
    "train": [("courtyard_basketball_00", ["f"], 5)],
}


@pytest.fixture(scope="module")
def body_dir(tmp_path_factory):
    return make_synthetic_body_model(tmp_path_factory.mktemp("body"))


@pytest.fixture(scope="module")
def pw3d_root(tmp_path_factory):
    """A 3DPW root: sequenceFiles/<split>/<seq>.pkl and imageFiles/<seq>/image_%05d.jpg."""
    root = tmp_path_factory.mktemp("3DPW")
    rng = np.random.default_rng(0)
    jpg = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")  # content is never decoded here
    sequences = {}
    for split, seqs in SEQUENCES.items():
        (root / "sequenceFiles" / split).mkdir(parents=True)
        for name, genders, frames in seqs:
            seq = fake_sequence(name, genders, frames, rng)
            write_py2_pickle(root / "sequenceFiles" / split / f"{name}.pkl", seq)
            (root / "imageFiles" / name).mkdir(parents=True)
            for i in range(frames):
                (root / "imageFiles" / name / f"image_{i:05d}.jpg").write_bytes(jpg)
            sequences[name] = seq
    poses2d = sequences["downtown_walking_00"]["poses2d"][0]
    poses2d[7] = 0.0  # no OpenPose detection in frame 7 of person 0 (3dpw-eval drops such frames)
    write_py2_pickle(
        root / "sequenceFiles" / "test" / "downtown_walking_00.pkl", sequences["downtown_walking_00"]
    )
    return root, sequences


@pytest.fixture(scope="module")
def prepared(pw3d_root, body_dir, tmp_path_factory):
    root, sequences = pw3d_root
    out = prepare_3dpw(root, tmp_path_factory.mktemp("prepared") / "3dpw", body_dir, splits=["train", "test"])
    return out, sequences


def test_fixture_pickle_is_python2_style_and_loads_with_latin1(pw3d_root):
    root, sequences = pw3d_root
    path = root / "sequenceFiles" / "test" / "flat_packBags_00.pkl"
    with open(path, "rb") as f, pytest.raises(UnicodeDecodeError):
        pickle.load(f)  # what plain Python 3 does with the real files
    seq = load_sequence(path)
    raw = sequences["flat_packBags_00"]
    assert seq.name == "flat_packBags_00" and seq.genders == ["f"]
    np.testing.assert_array_equal(seq.poses[0], raw["poses"][0])
    np.testing.assert_array_equal(seq.poses2d[0], raw["poses2d"][0].transpose(0, 2, 1))  # (N, 18, 3)
    np.testing.assert_array_equal(seq.cam_poses, raw["cam_poses"])
    np.testing.assert_array_equal(seq.campose_valid[0], raw["campose_valid"][0])


def test_known_world_point_projects_to_known_pixel():
    cam = np.eye(4)[None].copy()
    cam[0, :3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # 90 deg about z
    cam[0, :3, 3] = [0.1, -0.2, 2.0]
    intrinsics = np.array([[1000.0, 0.0, 540.0], [0.0, 1100.0, 960.0], [0.0, 0.0, 1.0]])
    point_cam = world_to_camera(np.array([[[1.0, 2.0, 3.0]]]), cam)
    # R X = (-2, 1, 3); + t = (-1.9, 0.8, 5); u = 1000 * -1.9 / 5 + 540, v = 1100 * 0.8 / 5 + 960
    np.testing.assert_allclose(point_cam, [[[-1.9, 0.8, 5.0]]], atol=1e-12)
    np.testing.assert_allclose(project(point_cam, intrinsics), [[[160.0, 1136.0]]], atol=1e-9)


def test_camera_frame_global_orientation_by_hand():
    pose = np.zeros((1, 72))
    pose[0, :3] = [math.pi / 2, 0.0, 0.0]  # 90 deg about x
    pose[0, 3:] = np.arange(69) / 100.0
    rz90 = np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    out = camera_frame_pose(pose, rz90)
    # Rz(90) Rx(90) = [[0,0,1],[1,0,0],[0,1,0]] maps x->y->z->x: 120 deg about (1,1,1)/sqrt(3).
    np.testing.assert_allclose(out[0, :3], 2 * math.pi / 3 / math.sqrt(3) * np.ones(3), atol=1e-12)
    np.testing.assert_array_equal(out[0, 3:], pose[0, 3:])


def test_rows_are_ordered_by_dynaboa_sequence_order_person_and_frame(prepared):
    out, sequences = prepared
    test = np.load(out / "test.npz")
    # DynaBOA's list order (flat_packBags_00 is its 3rd, downtown_walking_00 its 10th), then the rest by name
    order = ["flat_packBags_00", "downtown_walking_00", "a_custom_00"]
    expected = []
    for name in order:
        for p, valid in enumerate(sequences[name]["campose_valid"]):
            expected += [(name, p, i) for i in np.flatnonzero(valid)]
    assert list(zip(test["seq"], test["person"], test["frame"], strict=True)) == expected
    assert test["imgname"][0] == "imageFiles/flat_packBags_00/image_00000.jpg"
    assert [str(n) for n in test["imgname"]] == [f"imageFiles/{s}/image_{i:05d}.jpg" for s, _, i in expected]
    assert list(np.load(out / "train.npz")["frame"]) == [0, 1, 2]  # frames 3, 4 have no valid camera pose


def _independent_projection(body_dir, seq, p, frames):
    """GT joints the way FORMATS.md 1.2 writes it, frame by frame in numpy."""
    gender = {"m": "male", "f": "female"}[seq["genders"][p]]
    model = load_body_model(body_dir, gender, dtype=torch.float64)
    pose = torch.as_tensor(seq["poses"][p][frames])
    betas = torch.as_tensor(np.asarray(seq["betas"][p])[:10]).repeat(len(frames), 1)
    out = model(betas=betas, body_pose=pose[:, 3:], global_orient=pose[:, :3])
    uv, xc_all = [], []
    for k, i in enumerate(frames):
        xw = out.joints[k].numpy() + seq["trans"][p][i]
        xc = (seq["cam_poses"][i][:3, :3] @ xw.T).T + seq["cam_poses"][i][:3, 3]
        uv.append((K @ (xc / xc[:, 2:3]).T).T[:, :2])
        xc_all.append(xc)
    return np.array(uv), np.array(xc_all), model


def test_gt_keypoints_boxes_and_3d_joints_match_an_independent_computation(prepared, body_dir):
    out, sequences = prepared
    test = np.load(out / "test.npz")
    seq = sequences["downtown_walking_00"]
    for p in (0, 1):
        rows = (test["seq"] == "downtown_walking_00") & (test["person"] == p)
        frames = test["frame"][rows]
        uv, xc, _ = _independent_projection(body_dir, seq, p, frames)
        np.testing.assert_allclose(test["part"][rows][..., :2], uv[:, 25:], atol=1e-6)
        np.testing.assert_array_equal(test["part"][rows][..., 2], 1.0)
        low, high = uv.min(1), uv.max(1)  # DynaBOA: box of all 49 projected joints, scale factor 1.0
        np.testing.assert_allclose(test["center"][rows], (low + high) / 2, atol=1e-6)
        np.testing.assert_allclose(test["scale"][rows], (high - low).max(1) / 200.0, atol=1e-8)
        np.testing.assert_allclose(test["S"][rows][..., :3], xc[:, 25:] - xc[:, 25 + 14, None], atol=1e-9)
        np.testing.assert_allclose(
            test["shape"][rows], np.tile(np.asarray(seq["betas"][p])[:10], (len(frames), 1))
        )
        assert set(test["gender"][rows]) == {seq["genders"][p]}
    # the female person really went through the female model
    rows = (test["seq"] == "downtown_walking_00") & (test["person"] == 1)
    male = seq | {"genders": ["m", "m"]}
    uv_male, _, _ = _independent_projection(body_dir, male, 1, test["frame"][rows])
    assert np.abs(test["part"][rows][..., :2] - uv_male[:, 25:]).max() > 1.0


def test_camera_frame_pose_and_translation_reproduce_the_camera_frame_body(prepared, body_dir):
    out, sequences = prepared
    test = np.load(out / "test.npz")
    seq = sequences["downtown_walking_00"]
    rows = np.flatnonzero((test["seq"] == "downtown_walking_00") & (test["person"] == 1))
    frames = test["frame"][rows]
    model = load_body_model(body_dir, "female", dtype=torch.float64)
    betas = torch.as_tensor(test["shape"][rows])
    pose_cam = torch.as_tensor(test["pose"][rows])
    cam_body = model(betas=betas, body_pose=pose_cam[:, 3:], global_orient=pose_cam[:, :3])
    pose_w = torch.as_tensor(seq["poses"][1][frames])
    world_body = model(betas=betas, body_pose=pose_w[:, 3:], global_orient=pose_w[:, :3])
    R, t = seq["cam_poses"][frames, :3, :3], seq["cam_poses"][frames, :3, 3]
    expected = (
        np.einsum("nij,nvj->nvi", R, world_body.vertices.numpy() + seq["trans"][1][frames, None]) + t[:, None]
    )
    np.testing.assert_allclose(cam_body.vertices.numpy() + test["trans"][rows, None], expected, atol=1e-9)
    # root rotation = R_cam @ R_root_world, checked with scipy's independent Rodrigues
    root = Rotation.from_rotvec(test["pose"][rows, :3]).as_matrix()
    np.testing.assert_allclose(
        root, R @ Rotation.from_rotvec(seq["poses"][1][frames, :3]).as_matrix(), atol=1e-12
    )
    np.testing.assert_array_equal(test["pose"][rows, 3:], seq["poses"][1][frames, 3:])


def test_detected_keypoints_are_3dpw_poses2d_in_openpose_slots(prepared):
    out, sequences = prepared
    test = np.load(out / "test.npz")
    rows = (test["seq"] == "flat_packBags_00") & (test["person"] == 0)
    frames = test["frame"][rows]
    poses2d = sequences["flat_packBags_00"]["poses2d"][0][frames].transpose(0, 2, 1)  # (M, 18, 3)
    detected = test["keypoints_detected"][rows]
    np.testing.assert_array_equal(detected[:, OPENPOSE18_TO_J49], poses2d)
    others = np.setdiff1d(np.arange(49), OPENPOSE18_TO_J49)  # MidHip, feet and the 24 GT slots
    np.testing.assert_array_equal(detected[:, others], 0.0)
    np.testing.assert_array_equal(test["openpose"][rows], detected[:, :25])


def test_prepare_is_idempotent_and_rebuilds_when_parameters_change(prepared, pw3d_root, body_dir):
    out, _ = prepared
    root, _ = pw3d_root
    before = (out / "test.npz").stat().st_mtime_ns
    assert prepare_3dpw(root, out, body_dir, splits=["train", "test"]) == out
    assert (out / "test.npz").stat().st_mtime_ns == before
    other = out.parent / "3dpw_12"
    prepare_3dpw(
        root,
        other,
        body_dir,
        splits=["test"],
        scale_factor=1.2,
        sequences={"test": ["downtown_walking_00"]},
        drop_missing_poses2d=True,
    )
    test, ref = np.load(other / "test.npz"), np.load(out / "test.npz")
    assert set(test["seq"]) == {"downtown_walking_00"}
    p0 = test["frame"][test["person"] == 0]
    assert 7 not in p0 and 7 in ref["frame"][(ref["seq"] == "downtown_walking_00") & (ref["person"] == 0)]
    same = (ref["seq"] == "downtown_walking_00") & ~((ref["person"] == 0) & (ref["frame"] == 7))
    np.testing.assert_allclose(test["scale"], ref["scale"][same] * 1.2)


# ----------------------------------------------------------------------------- bad input


def test_missing_root_split_and_sequence_are_named(tmp_path, pw3d_root, body_dir):
    root, _ = pw3d_root
    with pytest.raises(FileNotFoundError, match="3DPW root .*nowhere not found"):
        prepare_3dpw(tmp_path / "nowhere", tmp_path / "o1", body_dir)
    with pytest.raises(FileNotFoundError, match="sequenceFiles/validation not found"):
        prepare_3dpw(root, tmp_path / "o2", body_dir, splits=["validation"])
    with pytest.raises(FileNotFoundError, match="office_phoneCall_00.pkl"):
        prepare_3dpw(
            root, tmp_path / "o3", body_dir, splits=["test"], sequences={"test": ["office_phoneCall_00"]}
        )
    for o in ("o1", "o2", "o3"):  # nothing that looks complete
        assert not list((tmp_path / o).glob("*.npz")) and not (tmp_path / o / "prepare.json").exists()


def _root_with(tmp_path, pw3d_root, name, content: bytes):
    """A copy of the fixture root whose test split holds one pickle `name` with `content`."""
    src, _ = pw3d_root
    root = tmp_path / "3DPW"
    (root / "sequenceFiles" / "test").mkdir(parents=True)
    (root / "sequenceFiles" / "test" / f"{name}.pkl").write_bytes(content)
    (root / "imageFiles").symlink_to(src / "imageFiles")
    return root


def test_truncated_and_unsafe_pickles_are_refused_with_the_file_named(tmp_path, pw3d_root, body_dir):
    src, _ = pw3d_root
    good = (src / "sequenceFiles" / "test" / "flat_packBags_00.pkl").read_bytes()
    root = _root_with(tmp_path, pw3d_root, "flat_packBags_00", good[: len(good) // 2])
    with pytest.raises(FileFormatError, match="flat_packBags_00.pkl: not a readable pickle"):
        prepare_3dpw(root, tmp_path / "out", body_dir, splits=["test"])
    (root / "sequenceFiles" / "test" / "flat_packBags_00.pkl").write_bytes(
        b"cos\nsystem\n(S'echo pwned'\ntR."
    )
    with pytest.raises(UnsafePickleError, match="flat_packBags_00.pkl.*'os.system'"):
        prepare_3dpw(root, tmp_path / "out", body_dir, splits=["test"])
    assert not (tmp_path / "out" / "test.npz").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("cam_poses"), r"missing keys \['cam_poses'\]"),
        (
            lambda s: s.__setitem__("poses", [p[:, :69] for p in s["poses"]]),
            r"'poses' person 0 has shape \(6, 69\), "
            r"expected \(6, 72\)",
        ),
        (lambda s: s.__setitem__("genders", ["x"]), "'genders' person 0 is 'x'"),
        (lambda s: s.__setitem__("cam_intrinsics", np.eye(4)), r"'cam_intrinsics' has shape \(4, 4\)"),
        (lambda s: s.__setitem__("sequence", "other_00"), "'sequence' is 'other_00', expected the file name"),
        (
            lambda s: s.__setitem__("trans", s["trans"] * 2),
            "'trans' should be a list with one entry per person",
        ),
    ],
)
def test_malformed_sequence_pickles_name_file_key_and_shape(tmp_path, pw3d_root, body_dir, edit, message):
    _, sequences = pw3d_root
    seq = {k: (list(v) if isinstance(v, list) else v) for k, v in sequences["flat_packBags_00"].items()}
    edit(seq)
    root = _root_with(tmp_path, pw3d_root, "flat_packBags_00", b"")
    write_py2_pickle(root / "sequenceFiles" / "test" / "flat_packBags_00.pkl", seq)
    with pytest.raises(FileFormatError, match=f"flat_packBags_00.pkl: .*{message}"):
        prepare_3dpw(root, tmp_path / "out", body_dir, splits=["test"])


def test_missing_images_are_named(tmp_path, pw3d_root, body_dir):
    src, _ = pw3d_root
    root = tmp_path / "3DPW"
    (root / "sequenceFiles" / "test").mkdir(parents=True)
    (root / "sequenceFiles" / "test" / "flat_packBags_00.pkl").write_bytes(
        (src / "sequenceFiles" / "test" / "flat_packBags_00.pkl").read_bytes()
    )
    with pytest.raises(
        FileNotFoundError, match="4 images missing .*imageFiles/flat_packBags_00/image_00000.jpg"
    ):
        prepare_3dpw(root, tmp_path / "out", body_dir, splits=["test"])
