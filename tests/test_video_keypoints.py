"""Any video + OpenPose / AlphaPose / COCO keypoints -> prepared dataset; readers, tracking, crops, errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cemr.body.joints import COCO17_TO_J49
from cemr.data.datamodule import PreparedDataset
from cemr.data.keypoints import Detection, read_alphapose, read_coco, read_openpose, to_j49, track_by_overlap
from cemr.data.prepare import main as prepare_main
from cemr.data.video import prepare_video, read_video
from cemr.geometry import denormalize_keypoints, transform_keypoints
from cemr.safe_io import FileFormatError

W, H, FRAMES = 160, 120, 30
RNG = np.random.default_rng(0)
SHAPE_A = np.concatenate([RNG.uniform([-12, -14], [12, 20], (25, 2)), np.full((25, 1), 0.9)], 1)
SHAPE_B = np.concatenate([RNG.uniform([-12, -14], [12, 20], (25, 2)), np.full((25, 1), 0.8)], 1)
for shape in (SHAPE_A, SHAPE_B):
    shape[0, :2] = [0.0, -18.0]  # the nose sits above the body


def body25(shape, cx, cy):
    kp = shape.copy()
    kp[:, :2] += [cx, cy]
    return kp


def people_at(i):
    """Ground-truth BODY_25 (25, 3) of the people in frame i: A walks right, B walks left, C is brief."""
    people = {"A": body25(SHAPE_A, 40 + i, 60), "B": body25(SHAPE_B, 120 - i, 62)}
    if i in (20, 21):
        del people["B"]  # B is missed for two frames (within max_gap)
    if i == 12:
        people = {}  # nobody detected
    if i < 3:
        people["C"] = body25(SHAPE_A, 80, 20 + 30 * i)  # too short a track (and jumps)
    return people


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """An mp4 (black, a white square on each person's nose) and OpenPose JSON for it."""
    root = tmp_path_factory.mktemp("clip")
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (W, H))
    (root / "openpose").mkdir()
    for i in range(FRAMES):
        frame = np.zeros((H, W, 3), np.uint8)
        people = people_at(i)
        for kp in people.values():
            x, y = np.round(kp[0, :2]).astype(int)
            frame[y - 2 : y + 3, x - 2 : x + 3] = 255
        writer.write(frame)
        listed = list(people.values())[::-1] if i % 2 else list(people.values())  # JSON order is arbitrary
        if i == 5:
            listed.append(
                np.concatenate([np.tile([50.0, 50.0, 1.0], (3, 1)), np.zeros((22, 3))])
            )  # 3 joints only: dropped
        content = {
            "version": 1.3,
            "people": [
                {"person_id": [-1], "pose_keypoints_2d": kp.ravel().tolist(), "face_keypoints_2d": []}
                for kp in listed
            ],
        }
        (root / "openpose" / f"clip_{i:012d}_keypoints.json").write_text(json.dumps(content))
    writer.release()
    return root


@pytest.fixture(scope="module")
def prepared(clip, tmp_path_factory):
    out = prepare_video(
        clip / "clip.mp4",
        clip / "openpose",
        "openpose",
        tmp_path_factory.mktemp("p") / "clip",
        seq_name="clip",
        min_track_length=5,
    )
    return out, np.load(out / "test.npz")


def test_openpose_tracks_are_stitched_and_rows_time_ordered(prepared):
    _, data = prepared
    a_frames = [i for i in range(FRAMES) if i != 12]
    b_frames = [i for i in a_frames if i not in (20, 21)]
    assert list(zip(data["person"], data["frame"], strict=True)) == [(0, i) for i in a_frames] + [
        (1, i) for i in b_frames
    ]
    expected = np.stack([people_at(i)["A"] for i in a_frames] + [people_at(i)["B"] for i in b_frames])
    np.testing.assert_allclose(
        data["keypoints_detected"][:, :25], expected, atol=1e-9
    )  # BODY_25 = slots 0..24
    np.testing.assert_array_equal(data["keypoints_detected"][:, 25:], 0.0)
    np.testing.assert_array_equal(data["openpose"], data["keypoints_detected"][:, :25])
    low, high = expected[..., :2].min(1), expected[..., :2].max(1)  # all joints have conf > 0.2
    np.testing.assert_allclose(data["center"], (low + high) / 2, atol=1e-9)
    np.testing.assert_allclose(data["scale"], 1.2 * (high - low).max(1) / 200, atol=1e-12)
    assert set(data["seq"]) == {"clip"} and set(data["gender"]) == {"n"}
    np.testing.assert_array_equal(data["has_smpl"], 0.0)
    np.testing.assert_array_equal(data["part"], 0.0)
    np.testing.assert_array_equal(data["pose"], 0.0)
    assert data["imgname"][13] == "frames/000014.jpg"


def test_frames_are_written_and_crops_land_on_the_keypoints(prepared):
    out, data = prepared
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        f"{i:06d}.jpg" for i in range(FRAMES) if i != 12
    ]
    dataset = PreparedDataset(out / "test.npz", crop_size=64, keypoints="detected")
    for index in (0, 17, 40):
        item = dataset[index]
        rgb = item["img"].numpy().transpose(1, 2, 0) * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406]
        ys, xs = np.nonzero(rgb.mean(-1) > 0.5)
        square = np.round(data["keypoints_detected"][index, 0, :2])  # the white square's centre pixel
        expected = transform_keypoints(square, data["center"][index], data["scale"][index], 64)
        assert np.hypot(xs.mean() - expected[0], ys.mean() - expected[1]) < 1.0
        nose = denormalize_keypoints(item["keypoints"][0, :2].numpy().astype(np.float64), 64)
        zoom = 64 / (200 * data["scale"][index])  # crop pixels per image pixel; rounding moved <= 0.5 px
        assert np.hypot(*(nose - expected)) <= zoom * 0.5 * np.sqrt(2) + 1e-4


def test_read_video_counts_and_decodes_only_kept_frames(clip):
    seen = []
    count = read_video(
        clip / "clip.mp4", lambda i: i % 10 == 3, lambda i, frame: seen.append((i, frame.shape))
    )
    assert count == FRAMES and seen == [(3, (H, W, 3)), (13, (H, W, 3)), (23, (H, W, 3))]


def test_track_by_overlap_follows_boxes_not_list_order_and_ends_after_a_gap():
    def det(frame, x):
        kp = np.zeros((49, 3))
        kp[:2] = [[x, 0, 1], [x + 10, 10, 1]]
        return Detection(frame, kp)

    dets = [det(0, 0), det(0, 50), det(1, 52), det(1, 2), det(2, 4), det(8, 6), det(15, 7)]
    # frames 3..7 missed (5 = max_gap): same track; frames 9..14 missed (6): a new track
    assert track_by_overlap(dets, max_gap=5) == [0, 1, 1, 0, 0, 0, 2]


def test_alphapose_idx_tracks_and_coco17_slots(tmp_path):
    entries = []
    for i in range(4):
        for idx, x in ((7, 10.0), (3, 100.0)):
            kp = np.concatenate(
                [np.stack([x + np.arange(17), 50 + np.arange(17)], 1), np.full((17, 1), 0.9)], 1
            )
            entries.append(
                {
                    "image_id": f"{i}.jpg",
                    "category_id": 1,
                    "keypoints": kp.ravel().tolist(),
                    "score": 2.8,
                    "box": [x, 50, 17, 17],
                    "idx": [float(idx)] if i % 2 else idx,
                }
            )
    dets = read_alphapose(_write(tmp_path / "ap.json", entries))
    assert [(d.frame, d.track) for d in dets[:4]] == [(0, 7), (0, 3), (1, 7), (1, 3)]
    nose = dets[0].keypoints[44]  # COCO nose -> 49-slot 44 (GT "Nose"); COCO joint k -> COCO17_TO_J49[k]
    np.testing.assert_array_equal(nose, [10.0, 50.0, 0.9])
    np.testing.assert_array_equal(dets[0].keypoints[COCO17_TO_J49, 0], 10.0 + np.arange(17))
    np.testing.assert_array_equal(np.delete(dets[0].keypoints, COCO17_TO_J49, axis=0), 0.0)
    writer = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (W, H))
    for _ in range(4):
        writer.write(np.zeros((H, W, 3), np.uint8))
    writer.release()
    entries.append(dict(entries[0], score=1.0))  # same idx twice in frame 0: the higher score stays
    out = prepare_video(
        tmp_path / "v.mp4",
        _write(tmp_path / "ap.json", entries),
        "alphapose",
        tmp_path / "o",
        min_track_length=4,
    )
    data = np.load(out / "test.npz")
    assert list(data["person"]) == [0] * 4 + [1] * 4  # idx 7 first seen first -> person 0
    np.testing.assert_array_equal(data["keypoints_detected"][:4, 44, 0], 10.0)


def test_coco_annotation_dict_and_results_list(tmp_path):
    kp = (
        np.concatenate([np.stack([np.arange(17.0), np.arange(17.0)], 1), np.ones((17, 1))], 1)
        .ravel()
        .tolist()
    )
    content = {
        "images": [
            {"id": 11, "file_name": "frame_000003.jpg"},
            {"id": 12, "file_name": "x.jpg", "frame_id": 4},
        ],
        "annotations": [
            {"image_id": 11, "keypoints": kp, "track_id": 5},
            {"image_id": 12, "keypoints": kp, "track_id": 5},
        ],
    }
    dets = read_coco(_write(tmp_path / "c.json", content))
    assert [(d.frame, d.track) for d in dets] == [(3, 5), (4, 5)]
    dets = read_coco(_write(tmp_path / "r.json", [{"image_id": 8, "keypoints": kp, "score": 0.5}]))
    assert [(d.frame, d.track, d.score) for d in dets] == [(8, None, 0.5)]
    np.testing.assert_array_equal(dets[0].keypoints, to_j49(np.reshape(kp, (17, 3)), "coco17"))


def _write(path, content):
    path.write_text(json.dumps(content))
    return path


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "reader, name, content, message",
    [
        (
            read_alphapose,
            "ap.json",
            [{"image_id": "0.jpg", "keypoints": [0.0] * 78}],
            r"ap.json: unknown keypoint layout: entry 0 'keypoints' has 78 values, expected one of 51",
        ),
        (
            read_alphapose,
            "ap.json",
            {"people": []},
            "ap.json: unknown keypoint layout: expected AlphaPose's JSON list",
        ),
        (
            read_alphapose,
            "ap.json",
            [{"keypoints": [0.0] * 51}],
            r"entry 0 should have 'image_id' and 'keypoints', "
            r"found \['keypoints'\]",
        ),
        (read_coco, "c.json", {"images": []}, r"c.json: unknown keypoint layout: .*found \['images'\]"),
        (
            read_coco,
            "c.json",
            {"images": [], "annotations": [{"image_id": 1, "keypoints": [0.0] * 51}]},
            "annotation refers to image_id 1, not in 'images'",
        ),
        (
            read_alphapose,
            "ap.json",
            [{"image_id": "frame.jpg", "keypoints": [0.0] * 51}],
            "cannot tell the frame index of 'frame.jpg'",
        ),
    ],
)
def test_unknown_or_malformed_keypoint_files_are_named(tmp_path, reader, name, content, message):
    with pytest.raises(FileFormatError, match=message):
        reader(_write(tmp_path / name, content))


def test_openpose_errors_name_the_file(tmp_path):
    folder = tmp_path / "op"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.json files in .*op"):
        read_openpose(folder)
    _write(folder / "v_000000000000_keypoints.json", {"people": [{"pose_keypoints_2d": [0.0] * 60}]})
    with pytest.raises(
        FileFormatError,
        match=r"v_000000000000_keypoints.json: unknown keypoint layout: "
        r"people\[0\].pose_keypoints_2d has 60 values, expected one of 75 \(body25",
    ):
        read_openpose(folder)
    _write(folder / "v_000000000000_keypoints.json", [1, 2])
    with pytest.raises(FileFormatError, match="expected OpenPose JSON with a 'people' list, found list"):
        read_openpose(folder)
    (folder / "v_000000000000_keypoints.json").write_text("{truncated")
    with pytest.raises(FileFormatError, match="v_000000000000_keypoints.json: not a readable JSON file"):
        read_openpose(folder)
    with pytest.raises(FileNotFoundError, match="is not a folder of per-frame JSON files"):
        read_openpose(tmp_path / "absent")


def test_bad_videos_and_mismatched_frames_are_named(tmp_path, clip):
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(FileFormatError, match="bad.mp4: OpenCV cannot open this video"):
        prepare_video(
            tmp_path / "bad.mp4", clip / "openpose", "openpose", tmp_path / "o1", min_track_length=5
        )
    cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (W, H)).release()
    with pytest.raises(FileFormatError, match="empty.avi: the video has no frames"):
        prepare_video(
            tmp_path / "empty.avi", clip / "openpose", "openpose", tmp_path / "o2", min_track_length=5
        )
    with pytest.raises(FileNotFoundError, match="video not found: .*absent.mp4"):
        prepare_video(tmp_path / "absent.mp4", clip / "openpose", "openpose", tmp_path / "o3")
    short = tmp_path / "short.mp4"
    writer = cv2.VideoWriter(str(short), cv2.VideoWriter_fourcc(*"mp4v"), 25, (W, H))
    for _ in range(20):
        writer.write(np.zeros((H, W, 3), np.uint8))
    writer.release()
    with pytest.raises(
        FileFormatError, match="keypoints refer to frame 29, but .*short.mp4 has only 20 frames"
    ):
        prepare_video(short, clip / "openpose", "openpose", tmp_path / "o4", min_track_length=5)
    with pytest.raises(FileFormatError, match="no person track with at least 40 frames"):
        prepare_video(clip / "clip.mp4", clip / "openpose", "openpose", tmp_path / "o5", min_track_length=40)
    with pytest.raises(ValueError, match="keypoints_format 'mediapipe' is unknown"):
        prepare_video(clip / "clip.mp4", clip / "openpose", "mediapipe", tmp_path / "o6")
    with pytest.raises(ValueError, match="needs dataset.video_path and dataset.keypoints_path"):
        prepare_video(None, None, "openpose", tmp_path / "o7")
    prepare_video(clip / "clip.mp4", clip / "openpose", "openpose", tmp_path / "o8", min_track_length=5)
    assert (tmp_path / "o8" / "prepare.json").exists()
    with pytest.raises(FileFormatError, match="short.mp4 has only 20 frames"):  # a failed rebuild ...
        prepare_video(short, clip / "openpose", "openpose", tmp_path / "o8", min_track_length=5)
    assert not (tmp_path / "o8" / "prepare.json").exists()  # ... leaves the old npz unstamped: redone
    for o in ("o1", "o2", "o3", "o4", "o5", "o6"):
        assert not (tmp_path / o / "test.npz").exists() and not (tmp_path / o / "prepare.json").exists()


def test_prepare_cli_with_dataset_shorthand(clip, tmp_path, capsys):
    root = prepare_main(
        [
            "dataset=video",
            f"paths.data_dir={tmp_path}",
            "body.prepare=null",
            f"video_path={clip / 'clip.mp4'}",
            f"keypoints_path={clip / 'openpose'}",
            "seq_name=walk",
            "dataset.prepare.min_track_length=5",
        ]
    )
    assert root == tmp_path / "prepared" / "video" / "walk"
    data = np.load(root / "test.npz")
    assert set(data["seq"]) == {"walk"} and len(data["frame"]) == 29 + 27
    assert "test.npz: 56 frames" in capsys.readouterr().out
