"""SPIN's augmentation: left/right permutations, and crop, keypoints, 3D joints and pose kept consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemr.data.augment import (
    J24_FLIP_PERM,
    J49_FLIP_PERM,
    SMPL_FLIP_PERM,
    AugmentParams,
    SpinAugment,
    augment_colour,
    augment_labels,
    flip_joints,
    flip_keypoints_49,
    flip_pose,
    rotate_root,
)
from cemr.geometry import BBOX_UNIT, crop_image, normalize_keypoints, transform_keypoints

# SPIN's constants.py, written out by hand there.
SPIN_J24_FLIP_PERM = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18, 19, 21, 20, 23, 22]
SPIN_SMPL_FLIP_PERM = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]
SPIN_OP_FLIP_PERM = [0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19, 20, 21]


def test_flip_permutations_equal_spins_hand_written_ones():
    assert J24_FLIP_PERM == SPIN_J24_FLIP_PERM
    assert SMPL_FLIP_PERM == SPIN_SMPL_FLIP_PERM
    assert J49_FLIP_PERM == SPIN_OP_FLIP_PERM + [25 + i for i in SPIN_J24_FLIP_PERM]


def test_flip_pose_swaps_sides_and_negates_y_z_and_is_an_involution():
    rng = np.random.default_rng(0)
    pose = rng.normal(size=72)
    flipped = flip_pose(pose).reshape(24, 3)
    original = pose.reshape(24, 3)
    np.testing.assert_array_equal(flipped[1], original[2] * [1, -1, -1])  # left hip <- right hip
    np.testing.assert_array_equal(flipped[0], original[0] * [1, -1, -1])  # root stays, mirrored
    np.testing.assert_array_equal(flip_pose(flip_pose(pose)), pose)
    joints = rng.normal(size=(24, 4))
    np.testing.assert_array_equal(flip_joints(flip_joints(joints, J24_FLIP_PERM), J24_FLIP_PERM), joints)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("rot", [0.0, 25.0, -47.5])
def test_keypoints_through_the_crop_match_the_augmented_3d_joints(rot, flip):
    """Orthographic camera centred on the box: the augmented 2D keypoints must be the image of the
    augmented 3D joints, which pins down every sign of rotation and flip."""
    rng = np.random.default_rng(1)
    joints = np.concatenate([rng.normal(scale=0.4, size=(24, 3)), np.ones((24, 1))], axis=1)
    px_per_m, center, scale, res = 90.0, np.array([130.0, 95.0]), 1.1, 112
    keypoints = np.zeros((49, 3))
    keypoints[25:, :2] = joints[:, :2] * px_per_m + center
    keypoints[25:, 2] = 1.0
    params = AugmentParams(flip=flip, rot=rot, scale=0.9)

    crop_xy = transform_keypoints(keypoints[:, :2], center, scale * params.scale, res, rot=rot, flip=flip)
    augmented_2d = normalize_keypoints(crop_xy, res)
    if flip:
        augmented_2d = flip_keypoints_49(augmented_2d)
    pose, augmented_3d = augment_labels(params, np.zeros(72), joints)

    side = BBOX_UNIT * scale * params.scale
    np.testing.assert_allclose(augmented_2d[25:], 2 * px_per_m * augmented_3d[:, :2] / side, atol=1e-9)
    np.testing.assert_array_equal(augmented_3d[:, 3], 1.0)


def test_rotate_root_turns_the_posed_body_like_the_3d_joints(synthetic_body_dir):
    from cemr.body import load_body_model

    body = load_body_model(synthetic_body_dir, "neutral", dtype=torch.float64)
    rng = np.random.default_rng(2)
    pose = rng.normal(scale=0.3, size=72)
    params = AugmentParams(rot=33.0)
    turned_pose, _ = augment_labels(params, pose, np.zeros((24, 4)))
    np.testing.assert_allclose(turned_pose, rotate_root(pose, 33.0))

    def joints(p):
        out = body(
            betas=torch.zeros(1, 10, dtype=torch.float64),
            global_orient=torch.tensor(p[None, :3]),
            body_pose=torch.tensor(p[None, 3:]),
        )
        j = out.joints[0].numpy()
        return j - j[0]

    _, expected = augment_labels(params, pose, np.concatenate([joints(pose)[:24], np.ones((24, 1))], 1))
    np.testing.assert_allclose(joints(turned_pose)[:24], expected[:, :3], atol=1e-9)


def test_flipped_crop_mirrors_the_unflipped_one_about_its_centre():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    res = 32  # box side 32 px around (32, 32): the crop is an exact copy, no resampling
    center, scale = (32.0, 32.0), res / BBOX_UNIT
    plain = crop_image(image, center, scale, res)
    flipped = crop_image(image, center, scale, res, flip=True)
    np.testing.assert_array_equal(plain, image[16:48, 16:48])
    # u -> res - u: flipped column j shows plain column res - j
    np.testing.assert_array_equal(flipped[:, 1:], plain[:, ::-1][:, :-1])


def test_colour_noise_scales_each_channel_and_clips():
    crop = np.full((2, 2, 3), 200, dtype=np.uint8)
    out = augment_colour(crop, AugmentParams(colour=(0.5, 1.0, 1.4)))
    np.testing.assert_array_equal(out[0, 0], [100, 200, 255])
    assert augment_colour(crop, AugmentParams()) is crop


def test_sample_is_seeded_and_within_spins_ranges():
    augment = SpinAugment()
    draws = [augment.sample(np.random.default_rng([7, i])) for i in range(400)]
    assert draws[5] == augment.sample(np.random.default_rng([7, 5]))
    rots = np.array([d.rot for d in draws])
    assert np.all(np.abs(rots) <= 60.0) and 0.45 < np.mean(rots == 0.0) < 0.75
    assert all(0.75 <= d.scale <= 1.25 for d in draws)
    assert all(0.6 <= c <= 1.4 for d in draws for c in d.colour)
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6
    off = SpinAugment(flip_prob=0.0, rot_prob=0.0, scale_factor=0.0, noise_factor=0.0)
    assert off.sample(np.random.default_rng(0)) == AugmentParams()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"flip_prob": 1.5}, "flip_prob"), ({"rot_factor": -1}, "rot_factor"), ({"scale_factor": 1.0}, "< 1")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpinAugment(**kwargs)


# ----------------------------------------------------------------------------- in the dataset


def test_a_flipped_item_mirrors_crop_keypoints_and_labels(tmp_path):
    import cv2

    from cemr.data.datamodule import PreparedDataset
    from tests.test_datamodule import RES, make_arrays

    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    arrays = make_arrays()
    for name in arrays["imgname"]:
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, size=(80, 100, 3), dtype=np.uint8))
    np.savez(tmp_path / "train.npz", **arrays)
    frames = PreparedDataset(tmp_path / "train.npz", crop_size=RES)
    plain, flipped = frames.item(1), frames.item(1, AugmentParams(flip=True))

    np.testing.assert_array_equal(flipped["img"][:, :, 1:], plain["img"].flip(-1)[:, :, :-1])
    expected_kp = flip_keypoints_49(plain["keypoints"].numpy() * np.array([-1.0, 1.0, 1.0]))
    expected_kp[expected_kp[:, 2] == 0, :2] = 0.0
    np.testing.assert_allclose(flipped["keypoints"].numpy(), expected_kp, atol=1e-6)
    assert flipped["keypoints"][30, 2] == 1.0 and flipped["keypoints"][25, 2] == 0.0  # right ankle -> left
    np.testing.assert_allclose(flipped["pose"].numpy(), flip_pose(arrays["pose"][1]), atol=1e-6)
    np.testing.assert_allclose(
        flipped["joints3d"].numpy(), flip_joints(arrays["S"][1], J24_FLIP_PERM), atol=1e-6
    )

    scaled = frames.item(1, AugmentParams(scale=1.25))
    assert scaled["scale"].item() == pytest.approx(0.16 * 1.25)
    np.testing.assert_allclose(scaled["keypoints"][25:26, :2].numpy(), plain["keypoints"][25:26, :2] / 1.25)


def test_training_batches_are_augmented_and_seeded(tmp_path):
    import cv2

    from cemr.data.datamodule import AugmentedFrames, CEMRDataModule
    from tests.test_datamodule import RES, make_arrays

    (tmp_path / "images").mkdir()
    arrays = make_arrays()
    rng = np.random.default_rng(5)
    for name in arrays["imgname"]:
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, size=(80, 100, 3), dtype=np.uint8))
    np.savez(tmp_path / "train.npz", **arrays)
    np.savez(tmp_path / "test.npz", **arrays)
    data = CEMRDataModule(tmp_path, crop_size=RES, batch_size=3, augment=SpinAugment())
    loader = data.train_dataloader()
    assert isinstance(loader.dataset, AugmentedFrames)

    def first_batch():
        torch.manual_seed(0)
        return next(iter(data.train_dataloader()))

    a, b = first_batch(), first_batch()
    torch.testing.assert_close(a["img"], b["img"])
    plain = CEMRDataModule(tmp_path, crop_size=RES, batch_size=3)
    torch.manual_seed(0)
    c = next(iter(plain.train_dataloader()))
    assert torch.equal(a["index"], c["index"])  # the same rows, drawn differently
    assert not torch.allclose(a["img"], c["img"])


def test_training_config_turns_spins_augmentation_on(compose_cfg):
    from cemr.train.run import spin_augment

    assert spin_augment(compose_cfg("train").training) == SpinAugment()  # SPIN's defaults
    assert spin_augment(compose_cfg("train", ["training.augment.enabled=false"]).training) is None
    cfg = compose_cfg("train", ["training.augment.enabled=true", "training.augment.rot_prob=0.6"])
    assert spin_augment(cfg.training) == SpinAugment(rot_prob=0.6)
    with pytest.raises(ValueError, match="flip_prob"):
        spin_augment(
            compose_cfg("train", ["training.augment.enabled=true", "training.augment.flip_prob=2"]).training
        )
