"""Human3.6M preprocessing on fabricated CDF files (spacepy) and videos (OpenCV) in the official layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from spacepy import pycdf

from cemr.body.joints import H36M32_TO_J24_SOURCE, H36M32_TO_J24_TARGET
from cemr.data.h36m import prepare_h36m
from cemr.safe_io import FileFormatError

W, H = 64, 48
SPLITS = {
    "train": {"subjects": ["S1"], "cameras": None},
    "test": {"subjects": ["S9"], "cameras": ["60457274"]},
}


def write_cdf(path, pose, name="Pose"):
    """A CDF with one zVariable of shape (1, N, D), as the H3.6M files hold it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # pycdf refuses to create over an existing file
    with pycdf.CDF(str(path), "") as cdf:
        cdf[name] = pose[None]


def write_video(path, frames):
    """mp4 whose frame i is flat grey 20 i, so a decoded frame tells its index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 50, (W, H))
    for i in range(frames):
        writer.write(np.full((H, W, 3), 20 * i, np.uint8))
    writer.release()


def make_sequence(root, subject, name, n, rng, video_frames=None, pose_name="Pose", d2_frames=None):
    """D3_Positions_mono, D2_Positions and video of `<subject>/<name>` (name = '<Action>.<camera>')."""
    pose3d = rng.normal(0.0, 400.0, (n, 96)).astype(np.float32) + np.tile([0, 0, 4500], 32).astype(np.float32)
    pose2d = rng.uniform(5.0, 40.0, (n if d2_frames is None else d2_frames, 64)).astype(np.float32)
    features = root / subject / "MyPoseFeatures"
    write_cdf(features / "D3_Positions_mono" / f"{name}.cdf", pose3d, pose_name)
    write_cdf(features / "D2_Positions" / f"{name}.cdf", pose2d)
    write_video(root / subject / "Videos" / f"{name}.mp4", n if video_frames is None else video_frames)
    return pose3d.astype(np.float64), pose2d.astype(np.float64)


@pytest.fixture(scope="module")
def h36m(tmp_path_factory):
    root = tmp_path_factory.mktemp("h36m")
    rng = np.random.default_rng(0)
    raw = {}
    for subject, name, n in [
        ("S1", "Walking 1.54138969", 12),
        ("S1", "Walking 1.60457274", 12),
        ("S1", "Directions.55011271", 11),
        ("S9", "Directions.60457274", 12),
        ("S9", "Directions.54138969", 12),
    ]:
        raw[subject, name] = make_sequence(root, subject, name, n, rng)
    write_cdf(
        root / "S1" / "MyPoseFeatures" / "D3_Positions_mono" / "_ALL.54138969.cdf", np.zeros((3, 5)), "Junk"
    )
    out = prepare_h36m(root, tmp_path_factory.mktemp("prepared") / "h36m", SPLITS)
    return root, out, raw


def test_sequences_cameras_and_every_fifth_frame(h36m):
    _, out, _ = h36m
    train, test = np.load(out / "train.npz"), np.load(out / "test.npz")
    assert list(dict.fromkeys(train["seq"])) == [
        "S1_Directions.55011271",
        "S1_Walking_1.54138969",
        "S1_Walking_1.60457274",
    ]  # _ALL skipped, spaces -> _
    assert list(train["frame"]) == [0, 5, 10] * 3
    assert train["imgname"][4] == "images/S1_Walking_1.54138969_000006.jpg"  # SPIN: frame_i + 1
    assert list(dict.fromkeys(test["seq"])) == ["S9_Directions.60457274"]  # protocol 2 camera only
    for name, frame in zip(train["imgname"], train["frame"], strict=True):
        image = cv2.imread(str(out / name))
        assert (
            image.shape == (H, W, 3) and abs(image.mean() - 20 * frame) < 8
        )  # frame i is grey 20 i (+- codec error)
    assert set(train["person"]) == {0} and set(train["gender"]) == {"n"}
    np.testing.assert_array_equal(train["has_smpl"], 0.0)
    np.testing.assert_array_equal(train["openpose"], 0.0)


def test_gt_joints_are_placed_in_the_24_gt_order_root_centred_in_metres(h36m):
    _, out, raw = h36m
    train = np.load(out / "train.npz")
    rows = train["seq"] == "S1_Walking_1.54138969"
    pose3d, pose2d = raw["S1", "Walking 1.54138969"]
    for row, frame in zip(np.flatnonzero(rows), train["frame"][rows], strict=True):
        joints = pose3d[frame].reshape(32, 3) / 1000.0
        s = train["S"][row]
        for src, dst in zip(H36M32_TO_J24_SOURCE, H36M32_TO_J24_TARGET, strict=True):
            np.testing.assert_allclose(s[dst, :3], joints[src] - joints[11], atol=1e-12)
            np.testing.assert_allclose(
                train["part"][row, dst, :2], pose2d[frame].reshape(32, 2)[src], atol=1e-12
            )
        np.testing.assert_array_equal(s[14, :3], 0.0)  # the pelvis (raw joint 11) is the root
        unused = np.setdiff1d(np.arange(24), H36M32_TO_J24_TARGET)
        np.testing.assert_array_equal(s[unused], 0.0)
        np.testing.assert_array_equal(s[H36M32_TO_J24_TARGET, 3], 1.0)
        np.testing.assert_array_equal(train["part"][row, unused], 0.0)
        xy = pose2d[frame].reshape(32, 2)  # box of all 32 2D joints, scale factor 1.2
        np.testing.assert_allclose(train["center"][row], (xy.min(0) + xy.max(0)) / 2, atol=1e-12)
        np.testing.assert_allclose(train["scale"][row], 1.2 * (xy.max(0) - xy.min(0)).max() / 200, atol=1e-12)


def test_smpl_fits_are_merged_by_imgname(h36m, tmp_path):
    root, _, _ = h36m
    fits = tmp_path / "fits.npz"
    pose = np.arange(2 * 72, dtype=np.float64).reshape(2, 72)
    np.savez(
        fits,
        imgname=np.array(["images/S9_Directions.60457274_000006.jpg", "images/elsewhere.jpg"]),
        pose=pose,
        shape=np.ones((2, 10)),
    )
    out = prepare_h36m(root, tmp_path / "out", {"test": SPLITS["test"]}, smpl_fits=fits)
    test = np.load(out / "test.npz")
    assert list(test["has_smpl"]) == [0.0, 1.0, 0.0]
    np.testing.assert_array_equal(test["pose"][1], pose[0])
    np.testing.assert_array_equal(test["shape"][1], 1.0)
    np.testing.assert_array_equal(test["pose"][[0, 2]], 0.0)
    np.savez(fits, imgname=np.array(["a.jpg"]), pose=np.zeros((1, 69)), shape=np.ones((1, 10)))
    with pytest.raises(
        FileFormatError, match=r"fits.npz: key 'pose' has shape \(1, 69\), expected \(M, 72\)"
    ):
        prepare_h36m(root, tmp_path / "out2", {"test": SPLITS["test"]}, smpl_fits=fits)
    np.savez(fits, pose=np.zeros((1, 72)), shape=np.ones((1, 10)))
    with pytest.raises(FileFormatError, match=r"fits.npz: keys \['imgname'\] missing"):
        prepare_h36m(root, tmp_path / "out2", {"test": SPLITS["test"]}, smpl_fits=fits)


def test_prepare_is_idempotent(h36m):
    root, out, _ = h36m
    before = (out / "train.npz").stat().st_mtime_ns
    prepare_h36m(root, out, SPLITS)
    assert (out / "train.npz").stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- bad input


def _one(tmp_path, **kwargs):
    root = tmp_path / "h36m"
    make_sequence(root, "S9", "Sitting 2.60457274", 12, np.random.default_rng(1), **kwargs)
    return root


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"pose_name": "Other"},
            FileFormatError,
            r"D3_Positions_mono/Sitting 2.60457274.cdf: no zVariable 'Pose' "
            r"\(found \['Other'\]\)",
        ),
        (
            {"video_frames": 11},
            FileFormatError,
            "Videos/Sitting 2.60457274.mp4: 11 video frames, but .*has 12 poses",
        ),
        (
            {"video_frames": 13},
            FileFormatError,
            "Videos/Sitting 2.60457274.mp4: 13 video frames, but .*has 12 poses",
        ),
        ({"d2_frames": 10}, FileFormatError, "D2_Positions/Sitting 2.60457274.cdf: 10 frames, but .* has 12"),
    ],
)
def test_bad_sequences_name_the_file_and_leave_nothing_complete(tmp_path, kwargs, error, message):
    root = _one(tmp_path, **kwargs)
    with pytest.raises(error, match=message):
        prepare_h36m(root, tmp_path / "out", {"test": SPLITS["test"]})
    assert not (tmp_path / "out" / "test.npz").exists() and not (tmp_path / "out" / "prepare.json").exists()


def test_extra_video_frames_can_be_allowed(tmp_path):
    root = _one(tmp_path, video_frames=13)
    out = prepare_h36m(root, tmp_path / "out", {"test": SPLITS["test"]}, max_extra_video_frames=1)
    assert list(np.load(out / "test.npz")["frame"]) == [0, 5, 10]


def test_unreadable_inputs_are_named(tmp_path):
    root = _one(tmp_path)
    base = root / "S9" / "MyPoseFeatures"
    with pytest.raises(FileNotFoundError, match="Human3.6M root .*missing not found"):
        prepare_h36m(tmp_path / "missing", tmp_path / "out", {"test": SPLITS["test"]})
    with pytest.raises(FileNotFoundError, match="subject folder .*h36m/S1 not found \\(split 'train'\\)"):
        prepare_h36m(root, tmp_path / "out")  # the default splits need S1 S5 S6 S7 S8 S9 S11
    write_cdf(base / "D2_Positions" / "Sitting 2.60457274.cdf", np.zeros((12, 60)))
    with pytest.raises(
        FileFormatError,
        match=r"D2_Positions/Sitting 2.60457274.cdf: 'Pose' has shape \(12, 60\), "
        r"expected \(1, N, 64\)",
    ):
        prepare_h36m(root, tmp_path / "out", {"test": SPLITS["test"]})
    (base / "D2_Positions" / "Sitting 2.60457274.cdf").unlink()
    with pytest.raises(FileNotFoundError, match="CDF file not found: .*D2_Positions/Sitting 2.60457274.cdf"):
        prepare_h36m(root, tmp_path / "out", {"test": SPLITS["test"]})
    (base / "D2_Positions" / "Sitting 2.60457274.cdf").write_bytes(b"not a cdf")
    with pytest.raises(FileFormatError, match="D2_Positions/Sitting 2.60457274.cdf: not a readable CDF file"):
        prepare_h36m(root, tmp_path / "out", {"test": SPLITS["test"]})
    root = _one(tmp_path / "b")
    (root / "S9" / "Videos" / "Sitting 2.60457274.mp4").write_bytes(b"garbage")
    with pytest.raises(FileFormatError, match="Sitting 2.60457274.mp4: OpenCV cannot open this video"):
        prepare_h36m(root, tmp_path / "out", {"test": SPLITS["test"]})
    with pytest.raises(FileNotFoundError, match="no sequences for cameras \\['55011271'\\]"):
        prepare_h36m(root, tmp_path / "out", {"test": {"subjects": ["S9"], "cameras": ["55011271"]}})
