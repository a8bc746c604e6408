"""Level 3's fixed-lag smoother of the emitted predictions (cemr/adapt/smoothing.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cemr.adapt.smoothing import smooth_emitted, smooth_pose, smooth_rotations, smooth_track
from cemr.geometry import axis_angle_to_rotmat


def difference(n: int, order: int) -> np.ndarray:
    d = np.eye(n)
    for _ in range(order):
        d = np.diff(d, axis=0)
    return d


def test_two_frames_by_hand():
    # min (x0 - 0)^2 + (x1 - 3)^2 + (x1 - x0)^2: x0 = 1, x1 = 2
    out = smooth_track(np.array([0.0, 3.0]), weight=1.0, order=1, past=5, lag=5)
    np.testing.assert_allclose(out, [1.0, 2.0], atol=1e-12)


@pytest.mark.parametrize("order", [1, 2])
def test_a_window_over_the_whole_track_is_the_minimiser_of_the_energy(order):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(12, 3))
    x = smooth_track(y, weight=7.0, order=order, past=100, lag=100)
    d = difference(12, order)
    gradient = (x - y) + 7.0 * d.T @ d @ x  # half the energy's gradient: zero at the minimiser
    np.testing.assert_allclose(gradient, 0.0, atol=1e-10)
    energy = lambda z: ((z - y) ** 2).sum() + 7.0 * ((d @ z) ** 2).sum()  # noqa: E731
    assert energy(x) < energy(y)


def test_frame_t_uses_only_frames_from_t_minus_past_to_t_plus_lag():
    rng = np.random.default_rng(1)
    y = rng.normal(size=20)
    base = smooth_track(y, weight=10.0, order=1, past=4, lag=2)
    for changed in range(20):
        moved = y.copy()
        moved[changed] += 1.0
        out = smooth_track(moved, weight=10.0, order=1, past=4, lag=2)
        affected = np.flatnonzero(out != base)
        # frame t reads frame s only when t - 4 <= s <= t + 2, i.e. t in [s - 2, s + 4]
        np.testing.assert_array_equal(affected, np.arange(max(0, changed - 2), min(20, changed + 5)))


def test_order_two_keeps_a_straight_line_and_order_one_a_constant():
    line = np.linspace(-1.0, 2.0, 15)
    np.testing.assert_allclose(smooth_track(line, 50.0, 2, 6, 3), line, atol=1e-12)
    np.testing.assert_allclose(smooth_track(np.full(15, 0.7), 50.0, 1, 6, 3), 0.7, atol=1e-12)
    assert not np.allclose(smooth_track(line, 50.0, 1, 6, 3), line)  # velocity penalised: the ends bend


def test_a_still_pose_stays_and_a_jittered_one_is_pulled_to_the_truth():
    rng = np.random.default_rng(2)
    still = np.tile(rng.normal(scale=0.5, size=72), (10, 1))
    np.testing.assert_allclose(smooth_pose(still, 30.0, 1, 8, 8), still, atol=1e-9)
    jittered = still + rng.normal(scale=0.05, size=still.shape)

    def rotations(pose):
        return axis_angle_to_rotmat(torch.from_numpy(pose).view(-1, 3)).numpy()

    out = smooth_pose(jittered, 30.0, 1, 8, 8)
    error = lambda p: np.abs(rotations(p) - rotations(still)).mean()  # noqa: E731
    assert error(out) < 0.5 * error(jittered)
    # the output holds proper rotations
    r = rotations(out)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-9)


def predictions_of(n: int, seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "index": np.arange(n),
        "pose": rng.normal(scale=0.3, size=(n, 72)).astype(np.float32),
        "betas": rng.normal(size=(n, 10)).astype(np.float32),
        "cam": rng.normal(size=(n, 3)).astype(np.float32),
    }


SETTINGS = OmegaConf.create({"weight": 30.0, "order": 1, "past": 32, "lag": 16})


def test_each_track_is_smoothed_alone_and_shape_is_left_as_predicted():
    predictions = predictions_of(12)
    tracks = [SimpleNamespace(start=0, stop=5), SimpleNamespace(start=5, stop=12)]
    out = smooth_emitted(predictions, tracks, SETTINGS)
    args = (30.0, 1, 32, 16)
    for rows in (slice(0, 5), slice(5, 12)):
        expected_pose = smooth_pose(predictions["pose"][rows], *args)
        np.testing.assert_allclose(out["pose"][rows], expected_pose, atol=1e-6)
        np.testing.assert_allclose(out["cam"][rows], smooth_track(predictions["cam"][rows], *args), atol=1e-6)
    np.testing.assert_array_equal(out["betas"], predictions["betas"])
    np.testing.assert_array_equal(out["index"], predictions["index"])
    assert out["pose"].dtype == np.float32 and out["cam"].dtype == np.float32


def test_a_shard_of_the_rows_smooths_the_tracks_it_holds():
    predictions = predictions_of(12)
    held = {k: v[5:] for k, v in predictions.items()}  # a DDP rank that adapted the second track only
    tracks = [SimpleNamespace(start=0, stop=5), SimpleNamespace(start=5, stop=12)]
    out = smooth_emitted(held, tracks, SETTINGS)
    whole = smooth_emitted(predictions, tracks, SETTINGS)
    np.testing.assert_array_equal(out["pose"], whole["pose"][5:])


def test_predictions_out_of_row_order_are_refused():
    predictions = predictions_of(4)
    predictions["index"] = np.array([0, 2, 1, 3])
    with pytest.raises(ValueError, match="increasing dataset-row order"):
        smooth_emitted(predictions, [SimpleNamespace(start=0, stop=4)], SETTINGS)


@pytest.mark.parametrize("order", [1, 2])
def test_a_clips_pseudo_labels_are_the_smoother_over_the_whole_clip(order):
    pose = np.random.default_rng(4).normal(scale=0.3, size=(9, 72))
    rotmat = axis_angle_to_rotmat(torch.from_numpy(pose).view(9, 24, 3))
    pseudo = smooth_rotations(rotmat, weight=30.0, order=order)
    smoothed = smooth_pose(pose, 30.0, order, past=9, lag=9)
    expected = axis_angle_to_rotmat(torch.from_numpy(smoothed).view(9, 24, 3))
    assert pseudo.shape == rotmat.shape
    torch.testing.assert_close(pseudo, expected, atol=1e-9, rtol=0)
    still = rotmat[:1].expand(5, -1, -1, -1)
    torch.testing.assert_close(smooth_rotations(still, 30.0, order), still, atol=1e-12, rtol=0)
    for at in (0, 4, 8):
        one = smooth_rotations(rotmat, weight=30.0, order=order, at=at)
        torch.testing.assert_close(one, pseudo[at : at + 1], atol=1e-12, rtol=0)
