"""PreparedDataset / CEMRDataModule on a fabricated prepared dir: items, keypoint modes, order, sharding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cemr.data.augment import SpinAugment
from cemr.data.datamodule import CEMRDataModule, PreparedDataset, Track, TrackSampler, shard_sequences
from cemr.runtime import build_datamodule
from cemr.safe_io import FileFormatError
from tests.conftest import compose_config

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
RES = 32
# (seq, person, frame) of the 9 rows, grouped by track and in time order
ROWS = [
    ("b_seq", 0, 0),
    ("b_seq", 0, 2),
    ("b_seq", 0, 5),
    ("b_seq", 1, 1),
    ("b_seq", 1, 2),
    ("a_seq", 0, 0),
    ("a_seq", 0, 1),
    ("a_seq", 0, 2),
    ("a_seq", 0, 3),
]


def make_arrays():
    n = len(ROWS)
    rng = np.random.default_rng(0)
    part = np.zeros((n, 24, 3))
    part[:, 0] = [60.0, 30.0, 1.0]  # right ankle on the marked pixel
    part[:, 1] = [55.5, 41.25, 1.0]
    part[:, 2] = [70.0, 10.0, 0.0]  # invisible
    detected = np.zeros((n, 49, 3))
    detected[:, 5] = [52.0, 44.0, 0.7]
    return {
        # side 200 * 0.16 = 32 = RES: the crop is the image shifted by (RES/2 - cx, RES/2 - cy) = (-34, -24)
        "imgname": np.array([f"images/{s}_{p}_{f}.png" for s, p, f in ROWS]),
        "center": np.tile([50.0, 40.0], (n, 1)),
        "scale": np.full(n, 0.16),
        "pose": rng.normal(size=(n, 72)),
        "shape": rng.normal(size=(n, 10)),
        "has_smpl": np.array([1.0] * 5 + [0.0] * 4),
        "gender": np.array(["m", "f", "n", "m", "f", "m", "m", "m", "m"]),
        "S": np.concatenate([rng.normal(size=(n, 24, 3)), np.ones((n, 24, 1))], axis=-1),  # visibility 1
        "part": part,
        "openpose": detected[:, :25].copy(),
        "keypoints_detected": detected,
        "seq": np.array([s for s, _, _ in ROWS]),
        "person": np.array([p for _, p, _ in ROWS]),
        "frame": np.array([f for _, _, f in ROWS]),
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    (root / "images").mkdir()
    for s, p, f in ROWS:
        image = np.zeros((80, 100, 3), np.uint8)
        image[30, 60] = [50, 100, 200]  # BGR on disk: RGB (200, 100, 50) at x=60, y=30
        image[0, 0] = [f, p, 7]
        cv2.imwrite(str(root / "images" / f"{s}_{p}_{f}.png"), image)
    arrays = make_arrays()
    np.savez(root / "test.npz", **arrays)
    np.savez(root / "train.npz", **arrays)
    return root


def write(tmp_path, **changes):
    arrays = make_arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(tmp_path / "x.npz", **arrays)
    return tmp_path / "x.npz"


def test_item_holds_the_normalised_rgb_crop_and_labels(root):
    dataset = PreparedDataset(root / "test.npz", crop_size=RES)
    arrays = make_arrays()
    item = dataset[3]
    img = item["img"].numpy()
    assert img.shape == (3, RES, RES) and img.dtype == np.float32
    np.testing.assert_allclose(
        img[:, 30 - 24, 60 - 34], (np.array([200, 100, 50]) / 255 - MEAN) / STD, atol=1e-6
    )
    np.testing.assert_allclose(
        img[:, 0, 0], -MEAN / STD, atol=1e-6
    )  # black, and outside the image is black too
    assert (img[:, 6, 26] != img[:, 5, 26]).all()
    np.testing.assert_allclose(item["pose"].numpy(), arrays["pose"][3], atol=1e-6)
    np.testing.assert_allclose(item["betas"].numpy(), arrays["shape"][3], atol=1e-6)
    np.testing.assert_allclose(item["joints3d"].numpy(), arrays["S"][3], atol=1e-6)
    assert item["has_smpl"].item() == 1.0 and item["gender"].item() == 0
    assert [dataset[i]["gender"].item() for i in range(3)] == [0, 1, -1]
    assert (item["seq"], item["seq_id"].item(), item["person"].item(), item["frame"].item()) == (
        "b_seq",
        0,
        1,
        1,
    )
    assert dataset[6]["seq_id"].item() == 1 and item["index"].item() == 3
    assert item["img_hw"].tolist() == [80, 100] and item["scale"].item() == pytest.approx(0.16)
    assert item["imgname"] == str(root / "images" / "b_seq_1_1.png")


def test_gt_keypoints_are_part_in_the_gt_slots_normalised_in_the_crop(root):
    kp = PreparedDataset(root / "test.npz", crop_size=RES, keypoints="gt")[0]["keypoints"].numpy()
    assert kp.shape == (49, 3) and kp.dtype == np.float32
    np.testing.assert_array_equal(kp[:25], 0.0)
    # (60, 30) -> crop (26, 6) -> 2 u / 32 - 1; (55.5, 41.25) -> (21.5, 17.25)
    np.testing.assert_allclose(kp[25], [2 * 26 / RES - 1, 2 * 6 / RES - 1, 1.0], atol=1e-7)
    np.testing.assert_allclose(kp[26], [2 * 21.5 / RES - 1, 2 * 17.25 / RES - 1, 1.0], atol=1e-7)
    np.testing.assert_array_equal(kp[27], 0.0)  # invisible joint: no coordinates
    np.testing.assert_array_equal(kp[28:], 0.0)


def test_detected_keypoints_and_openpose_fallback(root, tmp_path):
    kp = PreparedDataset(root / "test.npz", crop_size=RES, keypoints="detected")[2]["keypoints"].numpy()
    np.testing.assert_allclose(kp[5], [2 * 18 / RES - 1, 2 * 20 / RES - 1, 0.7], atol=1e-7)
    np.testing.assert_array_equal(np.delete(kp, 5, axis=0), 0.0)
    path = write(tmp_path, keypoints_detected=None)
    fallback = PreparedDataset(path, root, crop_size=RES, keypoints="detected").crop_keypoints(2)
    np.testing.assert_allclose(fallback, kp, atol=1e-7)


def test_noisy_keypoints_are_seeded_per_row_and_leave_invisible_joints(root):
    gt = PreparedDataset(root / "test.npz", crop_size=RES, keypoints="gt")
    noisy = PreparedDataset(
        root / "test.npz", crop_size=RES, keypoints="noisy", keypoint_noise_std=0.05, seed=3
    )
    again = PreparedDataset(
        root / "test.npz", crop_size=RES, keypoints="noisy", keypoint_noise_std=0.05, seed=3
    )
    other = PreparedDataset(
        root / "test.npz", crop_size=RES, keypoints="noisy", keypoint_noise_std=0.05, seed=4
    )
    np.testing.assert_array_equal(noisy.crop_keypoints(4), again.crop_keypoints(4))
    delta = noisy.crop_keypoints(4) - gt.crop_keypoints(4)
    expected = np.random.default_rng([3, 4]).normal(0.0, 0.05, (49, 2))
    np.testing.assert_allclose(delta[25:27, :2], expected[25:27], atol=1e-12)  # the two visible joints
    np.testing.assert_array_equal(np.delete(delta, [25, 26], axis=0), 0.0)  # confidences and hidden joints
    assert not np.allclose(other.crop_keypoints(4), noisy.crop_keypoints(4))
    assert not np.allclose(noisy.crop_keypoints(5) - gt.crop_keypoints(5), delta)


def test_sequences_and_stream_order(root):
    dm = CEMRDataModule(root, source_split="train", target_split="test", crop_size=RES, batch_size=4)
    tracks = dm.target.sequences()
    assert tracks == [Track("b_seq", 0, 0, 0, 3), Track("b_seq", 0, 1, 3, 5), Track("a_seq", 1, 0, 5, 9)]
    batches = list(dm.stream_dataloader())
    assert [b["index"].tolist() for b in batches] == [[i] for i in range(9)]
    assert [b["frame"].item() for b in batches] == [f for _, _, f in ROWS]
    shard = list(dm.stream_dataloader(rank=1, world_size=2))  # b_seq (5 frames) on rank 0, a_seq on rank 1
    assert [b["index"].item() for b in shard] == [5, 6, 7, 8]
    workers = CEMRDataModule(root, crop_size=RES, num_workers=1)
    assert [b["index"].item() for b in workers.predict_dataloader()] == list(range(9))


def test_train_loader_is_a_seeded_shuffle_of_the_source_split(root):
    def epoch(seed):
        dm = CEMRDataModule(root, crop_size=RES, batch_size=4, seed=seed)
        return [i for b in dm.train_dataloader() for i in b["index"].tolist()]

    first = epoch(0)
    assert sorted(first) == list(range(9)) and first != list(range(9)) and first == epoch(0)
    batch = next(iter(CEMRDataModule(root, crop_size=RES, batch_size=4).train_dataloader()))
    assert batch["img"].shape == (4, 3, RES, RES) and batch["keypoints"].shape == (4, 49, 3)


def test_shard_sequences_partitions_whole_sequences_without_duplicates():
    rng = np.random.default_rng(0)
    for _ in range(50):
        tracks, start = [], 0
        for seq_id in range(int(rng.integers(1, 9))):
            for person in range(int(rng.integers(1, 3))):
                length = int(rng.integers(1, 30))
                tracks.append(Track(f"s{seq_id}", seq_id, person, start, start + length))
                start += length
        world = int(rng.integers(1, 6))
        shards = [shard_sequences(tracks, r, world) for r in range(world)]
        flat = [t for shard in shards for t in shard]
        assert sorted(flat, key=lambda t: t.start) == tracks and len(flat) == len(
            tracks
        )  # no loss, no duplicate
        for shard in shards:
            assert shard == sorted(shard, key=lambda t: t.start)  # file order kept
            for other in shards:
                if other is not shard:
                    assert not {t.seq_id for t in shard} & {t.seq_id for t in other}  # sequences stay whole
        assert shards == [shard_sequences(tracks, r, world) for r in range(world)]  # deterministic
    tracks = [Track("a", 0, 0, 0, 10), Track("b", 1, 0, 10, 14), Track("c", 2, 0, 14, 19)]
    assert [shard_sequences(tracks, r, 2) for r in range(2)] == [
        [tracks[0]],
        tracks[1:],
    ]  # 10 vs 4 + 5 frames
    assert shard_sequences(tracks, 3, 4) == [] and len(TrackSampler([])) == 0  # more ranks than sequences
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        shard_sequences(tracks, 2, 2)


def datamodule_settings(dm) -> tuple:
    return (dm.root, dm.img_root, dm.source_split, dm.target_split, dm.keypoints, dm.crop_size,
            dm.batch_size, dm.num_workers, dm.noise_std, dm.seed, dm.augment)  # fmt: skip


@pytest.mark.parametrize("dataset", ["3dpw", "h36m", "video", "synthetic"])
def test_the_datamodule_node_reads_the_dataset_yaml(tmp_path, dataset):
    """build_datamodule instantiates `datamodule` (its _target_ can be swapped); a config saved before
    that node existed (an old run's config.yaml) gives the same datamodule from `dataset`."""
    over = [f"dataset={dataset}", f"paths.data_dir={tmp_path}", "dataset.num_workers=0", "seed=3"]
    cfg = compose_config("adapt", over)
    augment = SpinAugment()
    dm = build_datamodule(cfg, batch_size=2, augment=augment)
    assert type(dm) is CEMRDataModule and dm.augment is augment  # passed through, not turned into a config
    legacy = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "datamodule"])
    old = build_datamodule(legacy, batch_size=2, augment=augment)
    assert datamodule_settings(old) == datamodule_settings(dm)
    assert (dm.crop_size, dm.batch_size, dm.seed) == (cfg.backbone.crop_size, 2, 3)
    if dataset == "3dpw":
        assert (dm.root, dm.img_root) == (tmp_path / "prepared" / "3dpw", tmp_path / "3DPW")
        assert (dm.source_split, dm.target_split, dm.keypoints) == ("train", "test", "gt")
    if dataset == "video":
        assert dm.source_split is None and dm.keypoints == "detected"
        with pytest.raises(ValueError, match="has no source split"):
            dm.train_dataloader()
    cfg.datamodule._target_ = f"{__name__}.OtherDataModule"
    assert type(build_datamodule(cfg)) is OtherDataModule


class OtherDataModule(CEMRDataModule):
    pass


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"center": None}, r"x.npz: missing keys \['center'\]"),
        (
            {"pose": np.zeros((9, 70))},
            r"x.npz: key 'pose' has shape \(9, 70\), expected \(N, 72\) with N = 9",
        ),
        ({"scale": np.ones(8)}, r"key 'scale' has shape \(8,\), expected \(N\) with N = 9"),
        ({"shape": np.zeros((9, 8))}, r"key 'shape' has shape \(9, 8\), expected \(N, >=10\)"),
        (
            {"frame": np.array([0, 2, 2, 1, 2, 0, 1, 2, 3])},
            "frames of sequence 'b_seq' person 0 are not strictly",
        ),
        (
            {"seq": np.array(["b_seq"] * 3 + ["a_seq"] * 2 + ["b_seq"] * 4)},
            "rows of sequence 'b_seq' person 0 are not",
        ),
        ({"part": None}, "no GT 2D keypoints .* keypoints='gt' is impossible"),
    ],
)
def test_malformed_prepared_files_are_named(tmp_path, changes, message):
    with pytest.raises(FileFormatError, match=message):
        PreparedDataset(write(tmp_path, **changes), tmp_path)


def test_other_bad_inputs(tmp_path, root):
    with pytest.raises(FileNotFoundError, match="prepared split not found: .*nothing.npz"):
        PreparedDataset(tmp_path / "nothing.npz")
    with pytest.raises(ValueError, match="keypoints='openpose' is unknown"):
        PreparedDataset(root / "test.npz", keypoints="openpose")
    path = write(tmp_path, keypoints_detected=None, openpose=None)
    with pytest.raises(FileFormatError, match="no detector keypoints .* keypoints='detected' is impossible"):
        PreparedDataset(path, keypoints="detected")
    dataset = PreparedDataset(path, tmp_path)
    with pytest.raises(FileNotFoundError, match="row 0 image not found: .*images/b_seq_0_0.png"):
        dataset[0]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "b_seq_0_0.png").write_bytes(b"not a png")
    with pytest.raises(FileFormatError, match="b_seq_0_0.png: OpenCV cannot read this image"):
        dataset[0]
    (tmp_path / "y.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(FileFormatError, match="y.npz: not a readable .npz"):
        PreparedDataset(tmp_path / "y.npz")


def test_spin_style_npz_without_sequence_keys_is_one_track(tmp_path, root):
    path = write(tmp_path, seq=None, person=None, frame=None, has_smpl=None)
    dataset = PreparedDataset(path, root, crop_size=RES)
    assert dataset.sequences() == [Track("x", 0, 0, 0, 9)]
    assert dataset[4]["frame"].item() == 4 and dataset[4]["has_smpl"].item() == 1.0  # SPIN: pose present
    assert torch.equal(
        dataset[4]["keypoints"], PreparedDataset(root / "test.npz", crop_size=RES)[4]["keypoints"]
    )
