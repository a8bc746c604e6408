"""The learning curve of source training: evenly spaced held-out rows, scored by the run's own protocol."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cemr.data.datamodule import PreparedDataset
from cemr.evaluation.report import score_dataset
from cemr.models.prediction import predict_frames
from cemr.train.curve import LearningCurve, SubsetFrames, score_subset
from tests.test_datamodule import make_arrays
from tests.test_models import tiny_hmr, write_mean_params


def test_subset_keeps_the_first_frames_of_evenly_spaced_tracks(tmp_path):
    np.savez(tmp_path / "test.npz", **make_arrays())  # tracks: b_seq/0 rows 0-2, b_seq/1 3-4, a_seq/0 5-8
    frames = PreparedDataset(tmp_path / "test.npz", crop_size=32)
    np.testing.assert_array_equal(SubsetFrames(frames, 6).rows, [0, 1, 3, 4, 5, 6])
    np.testing.assert_array_equal(SubsetFrames(frames, 100).rows, np.arange(9))
    two = SubsetFrames(frames, 2)  # one frame of every second track
    np.testing.assert_array_equal(two.rows, [0, 5])
    assert [(t.seq, t.person, t.start, t.stop) for t in two.sequences()] == [
        ("b_seq", 0, 0, 1),
        ("a_seq", 0, 1, 2),
    ]
    with pytest.raises(ValueError, match="max_frames must be >= 1"):
        SubsetFrames(frames, 0)
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        LearningCurve({}, {}, np.zeros(0), every_n_epochs=0, max_frames=10)


def test_a_subset_scores_as_those_rows_of_the_full_split(tmp_path, synthetic_body_dir):
    from cemr.body import load_body_model

    (tmp_path / "images").mkdir()
    arrays = make_arrays()
    arrays["pose"] *= 0.2
    rng = np.random.default_rng(0)
    for name in arrays["imgname"]:
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, size=(80, 100, 3), dtype=np.uint8))
    np.savez(tmp_path / "test.npz", **arrays)
    frames = PreparedDataset(tmp_path / "test.npz", crop_size=64)
    write_mean_params(tmp_path / "mean.npz")
    model = tiny_hmr(tmp_path / "mean.npz")
    body_models = {g: load_body_model(synthetic_body_dir, g) for g in ("neutral", "male", "female")}
    regressor = body_models["neutral"].J_regressor_h36m.double().numpy()

    full = score_dataset(predict_frames(model, frames), frames, body_models, regressor)
    subset = SubsetFrames(frames, 6)  # rows 0, 1, 3, 4, 5, 6; rows 0-4 have SMPL labels
    scores = score_subset(model, subset, body_models, regressor)
    for metric in ("mpjpe", "pa_mpjpe", "pve"):
        assert scores[metric] == pytest.approx(full[metric][[0, 1, 3, 4]].mean(), abs=1e-4)
    assert scores["frames"] == 4


def test_ground_truth_kept_across_calls_scores_as_built_each_time(tmp_path, synthetic_body_dir):
    """score_dataset's `truths`: the ground truth of a set of rows is built once and reused for the
    next model scored on them, with the same errors to the bit; other rows get their own."""
    from cemr.body import load_body_model
    from cemr.evaluation.protocol import score_frames
    from cemr.models.prediction import body_vertices

    arrays = make_arrays()
    arrays["pose"] *= 0.2
    arrays["gender"] = np.array(list("mfnmfnmfn"))[: len(arrays["pose"])]
    np.savez(tmp_path / "test.npz", **arrays)
    frames = PreparedDataset(tmp_path / "test.npz", crop_size=32)
    body_models = {g: load_body_model(synthetic_body_dir, g) for g in ("neutral", "male", "female")}
    regressor = body_models["neutral"].J_regressor_h36m.double().numpy()
    rng = np.random.default_rng(1)
    n = len(frames)

    def prediction(rows):
        return {
            "index": rows,
            "pose": rng.normal(scale=0.2, size=(len(rows), 72)),
            "betas": np.zeros((len(rows), 10)),
        }

    first, second, part = prediction(np.arange(n)), prediction(np.arange(n)), prediction(np.arange(3))
    truths = {}
    kept = [score_dataset(p, frames, body_models, regressor, truths) for p in (first, second, part)]
    fresh = [score_dataset(p, frames, body_models, regressor) for p in (first, second, part)]
    assert len(truths) == 2  # all labelled rows, and the first three
    for a, b in zip(kept, fresh, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(kept[0]["mpjpe"], kept[1]["mpjpe"])
    labelled = np.flatnonzero(arrays["has_smpl"] > 0)  # independently: the protocol on the meshes
    gt = np.stack(
        [
            body_vertices(body_models[{"m": "male", "f": "female", "n": "neutral"}[g]], p[None], s[None])[0]
            for p, s, g in zip(
                arrays["pose"][labelled], arrays["shape"][labelled], arrays["gender"][labelled], strict=True
            )
        ]
    )
    neutral = body_vertices(body_models["neutral"], arrays["pose"][labelled], arrays["shape"][labelled])
    pred = body_vertices(body_models["neutral"], second["pose"][labelled], second["betas"][labelled])
    expected = score_frames(pred, gt, regressor, gt_vertices_pve_m=neutral)
    for name, values in expected.items():
        np.testing.assert_allclose(
            kept[1][name], values, rtol=0, atol=1e-4
        )  # float32 body model, other batches
