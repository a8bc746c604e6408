"""Prepared splits with bad values are refused when loaded, naming the file, key and first bad row."""

from __future__ import annotations

import numpy as np
import pytest

from cemr.data.datamodule import CEMRDataModule, PreparedDataset
from cemr.data.synthetic.build import build_benchmark
from cemr.safe_io import FileFormatError
from tests.test_datamodule import make_arrays

# Fixtures of the preparers' own tests, reused to check that their outputs pass (module-scoped there).
from tests.test_h36m import h36m  # noqa: F401
from tests.test_pw3d import body_dir, pw3d_root  # noqa: F401
from tests.test_pw3d import prepared as pw3d_prepared  # noqa: F401
from tests.test_synthetic import SMALL
from tests.test_video_keypoints import clip  # noqa: F401
from tests.test_video_keypoints import prepared as video_prepared  # noqa: F401

ROW = 6  # a_seq, person 0, frame 1 in tests.test_datamodule.ROWS
WHERE = r"row 6 \(seq 'a_seq', person 0, frame 1\)"


def write(tmp_path, key, edit):
    """A prepared split in the real layout with `edit(arrays[key][ROW])` applied (one bad row)."""
    arrays = make_arrays()
    arrays[key] = arrays[key].astype(np.float64)
    value = edit(arrays[key][ROW])
    if value is not None:
        arrays[key][ROW] = value
    path = tmp_path / "target_test.npz"
    np.savez(path, **arrays)
    return path


def set_at(index, value):
    def edit(row):
        row[index] = value

    return edit


@pytest.mark.parametrize(
    ("key", "edit", "message"),
    [
        ("center", set_at(1, np.nan), ", column 1: expected finite pixel coordinates, found nan"),
        ("center", set_at(0, np.inf), ", column 0: expected finite pixel coordinates, found inf"),
        ("scale", lambda row: 0.0, ": expected a finite box scale > 0, found 0.0"),
        ("scale", lambda row: -0.5, ": expected a finite box scale > 0, found -0.5"),
        ("scale", lambda row: np.nan, ": expected a finite box scale > 0, found nan"),
        ("pose", set_at(40, np.nan), ", column 40: expected finite values in every row"),
        ("shape", set_at(3, np.inf), ", column 3: expected finite values in every row"),
        ("S", set_at((5, 2), np.nan), ", joint 5, column 2: expected finite values in every row"),
        ("S", set_at((7, 3), -1.0), r", joint 7: expected visibility \(column 3\) in \[0, 1\]"),
        ("has_smpl", lambda row: np.nan, ": expected 0 or 1, found nan"),
        ("has_smpl", lambda row: 2.0, ": expected 0 or 1, found 2.0"),
        (
            "part",
            set_at((1, 2), -0.5),
            r", joint 1: expected confidence \(column 2\) in \[0, 1\], found \[55.5",
        ),
        ("part", set_at((1, 2), 1.5), r", joint 1: expected confidence \(column 2\) in \[0, 1\]"),
        ("part", set_at((0, 2), np.nan), r", joint 0: expected confidence \(column 2\) in \[0, 1\]"),
        ("part", set_at((1, 0), np.nan), r", joint 1: expected finite x, y on a joint with confidence > 0"),
        ("openpose", set_at((5, 2), -1.0), r", joint 5: expected confidence \(column 2\) in \[0, 1\]"),
        (
            "openpose",
            set_at((5, 1), np.inf),
            ", joint 5: expected finite x, y on a joint with confidence > 0",
        ),
        (
            "keypoints_detected",
            set_at((5, 2), 7.0),
            r", joint 5: expected confidence \(column 2\) in \[0, 1\]",
        ),
        ("keypoints_detected", set_at((5, 0), np.nan), ", joint 5: expected finite x, y on a joint with"),
    ],
)
def test_one_bad_row_is_refused_naming_file_key_and_row(tmp_path, key, edit, message):
    path = write(tmp_path, key, edit)
    with pytest.raises(FileFormatError, match=f"target_test.npz: key '{key}' {WHERE}{message}"):
        PreparedDataset(path, tmp_path)


@pytest.mark.parametrize("keypoints", ["gt", "noisy", "detected"])
def test_negative_confidences_are_refused_in_every_keypoint_mode(tmp_path, keypoints):
    """The case of issue 11: negative confidences made adaptation worse than none."""
    path = write(tmp_path, "keypoints_detected", set_at((5, 2), -0.7))
    with pytest.raises(FileFormatError, match=f"key 'keypoints_detected' {WHERE}, joint 5"):
        PreparedDataset(path, tmp_path, keypoints=keypoints)
    path = write(tmp_path, "part", set_at((0, 2), -0.7))
    with pytest.raises(FileFormatError, match=f"key 'part' {WHERE}, joint 0"):
        PreparedDataset(path, tmp_path, keypoints=keypoints)


def test_the_first_bad_row_is_named_and_the_others_counted(tmp_path):
    arrays = make_arrays()
    arrays["scale"][[4, 7, 8]] = [-1.0, 0.0, np.nan]
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(
        FileFormatError,
        match=r"x.npz: key 'scale' row 4 \(seq 'b_seq', person 1, frame 2\): .*found -1.0 \(2 more bad rows",
    ):
        PreparedDataset(tmp_path / "x.npz", tmp_path)


def test_a_spin_style_file_names_the_row_by_index_only(tmp_path):
    arrays = make_arrays()
    for key in ("seq", "person", "frame"):
        del arrays[key]
    arrays["center"][2, 0] = np.nan
    np.savez(tmp_path / "spin.npz", **arrays)
    with pytest.raises(FileFormatError, match=r"spin.npz: key 'center' row 2, column 0: expected finite"):
        PreparedDataset(tmp_path / "spin.npz", tmp_path)


def test_hidden_joints_may_hold_zeros_or_nan(tmp_path):
    """Confidence 0 marks a missing joint (video.py, h36m.py write zeros): its coordinates are ignored."""
    arrays = make_arrays()
    arrays["part"][ROW, 2, :2] = np.nan  # joint 2 is invisible (confidence 0) in every row
    arrays["keypoints_detected"][ROW, 10] = [np.nan, np.inf, 0.0]
    arrays["S"][:, :, 3] = 0.0  # no 3D joints at all
    arrays["has_smpl"][:] = 0.0
    arrays["pose"][:] = 0.0
    np.savez(tmp_path / "ok.npz", **arrays)
    for mode in ("gt", "noisy", "detected"):
        dataset = PreparedDataset(tmp_path / "ok.npz", tmp_path, crop_size=32, keypoints=mode)
        assert np.isfinite(dataset.crop_keypoints(ROW)).all()


def test_an_empty_split_is_refused_naming_file_and_split(tmp_path):
    arrays = {key: value[:0] for key, value in make_arrays().items()}
    np.savez(tmp_path / "target_test.npz", **arrays)
    np.savez(tmp_path / "source_train.npz", **make_arrays())
    data = CEMRDataModule(tmp_path, source_split="source_train", target_split="target_test")
    assert len(data.source) == 9
    with pytest.raises(FileFormatError, match=r"target_test.npz: split 'target_test' is empty \(0 rows\)"):
        _ = data.target


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "center",
            np.array([["1", "2"]] * 9),
            r"key 'center' has dtype <U1, expected bool or int or uint or float",
        ),
        ("scale", np.full(9, 1 + 1j), "key 'scale' has dtype complex128, expected"),
        ("part", np.zeros((9, 24, 3), dtype="datetime64[s]"), "key 'part' has dtype datetime64"),
        ("imgname", np.array([b"a.png"] * 9), r"key 'imgname' has dtype \|S5, expected str"),
        ("gender", np.zeros(9), "key 'gender' has dtype float64, expected str"),
        ("frame", np.arange(9.0), "key 'frame' has dtype float64, expected int or uint"),
        ("imgname", np.array("a.png"), r"key 'imgname' has shape \(\), expected \(N\)"),
        ("keypoints_detected", np.zeros((9, 25, 3)), r"key 'keypoints_detected' has shape \(9, 25, 3\)"),
    ],
)
def test_wrong_dtypes_and_shapes_are_refused(tmp_path, key, value, message):
    arrays = make_arrays()
    arrays[key] = value
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(FileFormatError, match=f"x.npz: {message}"):
        PreparedDataset(tmp_path / "x.npz", tmp_path)


@pytest.fixture(scope="module")
def synthetic(body_dir, tmp_path_factory):  # noqa: F811
    return build_benchmark(tmp_path_factory.mktemp("bench") / "synthetic", body_dir, seed=0, **SMALL)


@pytest.mark.parametrize(
    ("fixture", "root_of", "modes"),
    [
        ("synthetic", lambda built: built, ("gt", "noisy", "detected")),
        ("pw3d_prepared", lambda built: built[0], ("gt", "noisy", "detected")),
        ("h36m", lambda built: built[1], ("gt", "noisy")),
        ("video_prepared", lambda built: built[0], ("detected",)),
    ],
)
@pytest.mark.slow
def test_real_preparer_outputs_pass_the_checks(request, fixture, root_of, modes):
    """Every split the synthetic, 3DPW, Human3.6M and video preparers write loads in every mode it allows."""
    splits = sorted(root_of(request.getfixturevalue(fixture)).glob("*.npz"))
    assert splits
    for path in splits:
        for mode in modes:
            assert len(PreparedDataset(path, keypoints=mode)) > 0


@pytest.mark.slow
def test_adapt_refuses_a_bad_target_before_it_would_train_the_source_model(compose_cfg):
    from pathlib import Path

    from cemr.adapt.run import run
    from cemr.data.prepare import prepare_assets
    from tests.conftest import tiny

    cfg = compose_cfg("adapt", tiny())
    prepare_assets(cfg)
    target = Path(cfg.dataset.root) / f"{cfg.dataset.target_split}.npz"
    arrays = dict(np.load(target))
    arrays["scale"][3] = 0.0
    np.savez(target, **arrays)
    assert not Path(cfg.training.checkpoint).exists()
    with pytest.raises(FileFormatError, match=r"target_test.npz: key 'scale' row 3"):
        run(cfg)
    assert not Path(cfg.training.checkpoint).exists()  # no source model was trained first
