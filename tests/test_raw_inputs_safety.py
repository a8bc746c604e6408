"""Raw inputs with bad content (issue 11): 3DPW sequence pickles and detector keypoint JSON.

Each bad file gets a FileFormatError that names the file and the key or entry, before any work.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from cemr.data.keypoints import read_alphapose, read_coco, read_openpose
from cemr.data.pw3d import load_sequence
from cemr.safe_io import FileFormatError
from tests.test_pw3d import fake_sequence, write_py2_pickle

# ----------------------------------------------------------------------------- 3DPW pickles


def _sequence(genders=("m", "f"), frames=6) -> dict:
    return fake_sequence("flat_packBags_00", list(genders), frames, np.random.default_rng(1), num_vertices=5)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_python3_pickled_sequence_loads_at_every_protocol(tmp_path, protocol):
    """3DPW re-saved by Python 3 (plain pickle.dump): empty bytes and empty arrays pickle as
    builtins.bytes() under protocol <= 2, which was refused as unsafe."""
    seq = _sequence()
    seq["texture_maps"] = [np.zeros((0, 0, 3), np.uint8), b""]  # empty payloads
    seq["genders"] = np.array(["m", "f"]).tolist()
    path = tmp_path / "flat_packBags_00.pkl"
    with open(path, "wb") as file:
        pickle.dump(seq, file, protocol=protocol)
    loaded = load_sequence(path)
    assert loaded.name == "flat_packBags_00" and loaded.genders == ["m", "f"]
    np.testing.assert_array_equal(loaded.poses, np.stack(seq["poses"]))
    np.testing.assert_array_equal(loaded.campose_valid, np.stack(seq["campose_valid"]).astype(bool))
    np.testing.assert_array_equal(loaded.cam_poses, seq["cam_poses"])


def _nan_at(key, person, frame):
    def edit(s):
        s[key][person] = s[key][person].copy()
        s[key][person][frame, 0] = np.nan

    return edit


BAD_SEQUENCES = {  # name -> (edit of the sequence dict, expected words after the file name)
    "no people": (
        lambda s: s.update(genders=[]),
        "key 'genders' should be a list with one entry per person (at least one), found a list of 0",
    ),
    "genders None": (
        lambda s: s.update(genders=None),
        "key 'genders' should be a list with one entry per person (at least one), found None",
    ),
    "genders a string": (
        lambda s: s.update(genders="mf"),
        "key 'genders' should be a list with one entry per person (at least one), found a value of type str",
    ),
    "gender a number": (
        lambda s: s.update(genders=[1, "f"]),
        "key 'genders' person 0 is 1, expected 'm' or 'f'",
    ),
    "poses strings": (
        lambda s: s.update(poses=["abc", "def"]),
        "key 'poses' person 0 holds an array of shape () and dtype <U3, expected numbers",
    ),
    "poses ragged": (
        lambda s: s.update(poses=[[[1.0, 2.0], [3.0]], s["poses"][1]]),
        "key 'poses' person 0 is not an array",
    ),
    "trans missing": (lambda s: s.pop("trans"), "missing keys ['trans']"),
    "trans a scalar": (
        lambda s: s.update(trans=3.0),
        "key 'trans' should be a list with one entry per person (2, as in 'genders'), "
        "found a value of type float",
    ),
    "betas a scalar": (
        lambda s: s.update(betas=5),
        "key 'betas' should be a list with one entry per person (2, as in 'genders'), "
        "found a value of type int",
    ),
    "betas strings": (
        lambda s: s.update(betas=[np.array(["x"] * 10), s["betas"][1]]),
        "key 'betas' person 0 holds an array of shape (10,) and dtype <U1, expected numbers",
    ),
    "cam_poses text": (
        lambda s: s.update(cam_poses="identity"),
        "key 'cam_poses' holds an array of shape () and dtype <U8, expected numbers",
    ),
    "cam_intrinsics None": (
        lambda s: s.update(cam_intrinsics=None),
        "key 'cam_intrinsics' holds an array of shape () and dtype object, expected numbers",
    ),
    "sequence a number": (
        lambda s: s.update(sequence=7),
        "key 'sequence' should be the sequence name, found a value of type int",
    ),
    "poses NaN in a valid frame": (
        _nan_at("poses", 1, 2),
        "key 'poses' person 1 frame 2 holds NaN or infinite values",
    ),
    "trans NaN in a valid frame": (_nan_at("trans", 0, 0), "key 'trans' person 0 frame 0 holds NaN"),
    "cam_poses inf": (
        lambda s: s["cam_poses"].__setitem__((1, 0, 3), np.inf),
        "key 'cam_poses' frame 1 holds NaN",
    ),
    "betas NaN": (lambda s: s["betas"][0].__setitem__(3, np.nan), "key 'betas' person 0 holds NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_SEQUENCES))
def test_bad_sequence_content_names_file_and_key(tmp_path, case):
    edit, message = BAD_SEQUENCES[case]
    seq = _sequence()
    edit(seq)
    path = tmp_path / "flat_packBags_00.pkl"
    write_py2_pickle(path, seq)
    with pytest.raises(FileFormatError) as info:
        load_sequence(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_nan_outside_the_valid_frames_is_not_used_and_allowed(tmp_path):
    seq = _sequence()
    invalid = int(np.flatnonzero(~np.asarray(seq["campose_valid"][0], bool))[0])
    _nan_at("poses", 0, invalid)(seq)
    write_py2_pickle(tmp_path / "s.pkl", seq)
    assert np.isnan(load_sequence(tmp_path / "s.pkl").poses[0, invalid, 0])


# ----------------------------------------------------------------------------- keypoint JSON


def _coco_keypoints(confidence=0.9):
    kp = np.concatenate([np.stack([np.arange(17.0), np.arange(17.0)], 1), np.full((17, 1), confidence)], 1)
    return kp.ravel().tolist()


def _alphapose(**changes):
    entry = {
        "image_id": "3.jpg",
        "category_id": 1,
        "keypoints": _coco_keypoints(),
        "score": 2.7,
        "idx": [1.0],
    }
    return [entry, {**entry, **changes}]


BAD_ALPHAPOSE = {
    "keypoints a string": (
        _alphapose(keypoints="1 2 0.5"),
        "entry 1 'keypoints' should be a list of numbers, found a JSON str",
    ),
    "keypoints hold a string": (
        _alphapose(keypoints=["1"] + _coco_keypoints()[1:]),
        "entry 1 'keypoints' should be a list of numbers, found a list holding non-numbers",
    ),
    "keypoints hold true": (
        _alphapose(keypoints=[True] + _coco_keypoints()[1:]),
        "entry 1 'keypoints' should be a list of numbers",
    ),
    "image_id a dict": (
        _alphapose(image_id={"frame": 3}),
        "entry 1 'image_id' should be a file name, found a JSON dict",
    ),
    "image_id a number": (_alphapose(image_id=3), "entry 1 'image_id' should be a file name, found 3"),
    "score a string": (_alphapose(score="0.9"), "entry 1 'score' should be a number, found a JSON str"),
    "score NaN": (_alphapose(score=float("nan")), "entry 1 'score' should be a number, found nan"),
    "idx a string": (_alphapose(idx="a"), "entry 1 'idx' should be an integer track id, found a JSON str"),
    "idx fractional": (_alphapose(idx=[1.5]), "entry 1 'idx' should be an integer track id, found 1.5"),
    "confidence above 1": (
        _alphapose(keypoints=_coco_keypoints(1.5)),
        "entry 1 'keypoints' joint 0 has confidence 1.5, expected a value in [0, 1]",
    ),
    "negative confidence": (
        _alphapose(keypoints=_coco_keypoints(-0.2)),
        "entry 1 'keypoints' joint 0 has confidence -0.2, expected a value in [0, 1]",
    ),
    "NaN coordinate": (
        _alphapose(keypoints=[float("nan")] + _coco_keypoints()[1:]),
        "entry 1 'keypoints' joint 0 holds NaN or infinite values",
    ),
    "huge integer": (_alphapose(keypoints=[10**400] + _coco_keypoints()[1:]), "should be a list of numbers"),
}


BAD_COCO = {
    "results image_id a float": (
        [{"image_id": 3.0, "keypoints": _coco_keypoints()}],
        "entry 0 'image_id' should be an integer or a file name, found 3.0",
    ),
    "annotations not a list": (
        {"images": [], "annotations": {"0": 1}},
        "the detections should be a JSON list",
    ),
    "images not a list": (
        {"images": "frames/", "annotations": []},
        "'images' should be a JSON list, found a JSON str",
    ),
    "image without id": (
        {"images": [{"file_name": "1.jpg"}], "annotations": []},
        "images entry 0 should have an integer or text 'id', found keys ['file_name']",
    ),
    "frame_id a string": (
        {"images": [{"id": 1, "frame_id": "4"}], "annotations": []},
        "images entry 0 'frame_id' should be an integer, found a JSON str",
    ),
    "file_name a number": (
        {"images": [{"id": 1, "file_name": 12}], "annotations": []},
        "cannot tell a frame index from 12, expected a file name",
    ),
    "track_id a list of two": (
        {
            "images": [{"id": 1, "file_name": "1.jpg"}],
            "annotations": [{"image_id": 1, "keypoints": _coco_keypoints(), "track_id": [1, 2]}],
        },
        "entry 0 'track_id' should be an integer track id, found a JSON list",
    ),
    "confidence 2": (
        [{"image_id": 0, "keypoints": _coco_keypoints(2.0)}],
        "entry 0 'keypoints' joint 0 has confidence 2, expected a value in [0, 1]",
    ),
}


DETECTION_FILES = {"alphapose": (read_alphapose, BAD_ALPHAPOSE), "coco": (read_coco, BAD_COCO)}


@pytest.mark.parametrize(
    ("layout", "case"),
    [(layout, case) for layout, (_, cases) in DETECTION_FILES.items() for case in sorted(cases)],
)
def test_detection_fields_of_the_wrong_type_or_range(tmp_path, layout, case):
    read, cases = DETECTION_FILES[layout]
    content, message = cases[case]
    path = tmp_path / f"{layout}.json"
    path.write_text(json.dumps(content))
    with pytest.raises(FileFormatError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def _body25(confidence=0.8):
    return np.concatenate([np.full((25, 2), 100.0), np.full((25, 1), confidence)], 1).ravel().tolist()


@pytest.mark.parametrize(
    "bad, message",
    [
        ("NaN", "people[1].pose_keypoints_2d joint 0 holds NaN or infinite values"),
        ("Infinity", "people[1].pose_keypoints_2d joint 0 holds NaN or infinite values"),
        ("1.7", "people[1].pose_keypoints_2d joint 0 has confidence 1.7, expected a value in [0, 1]"),
        ("-1", "people[1].pose_keypoints_2d joint 0 has confidence -1, expected a value in [0, 1]"),
        ('"0.5"', "people[1].pose_keypoints_2d should be a list of numbers"),
    ],
)
def test_openpose_nan_and_out_of_range_confidence_name_the_file(tmp_path, bad, message):
    """json.loads accepts NaN and Infinity; a NaN person used to surface as 'no person track'."""
    good = json.dumps({"people": [{"pose_keypoints_2d": _body25()}]})
    (tmp_path / "clip_000000000000_keypoints.json").write_text(good)
    person = json.dumps(_body25()).replace("0.8", bad, 1)  # the first confidence
    if bad in ("NaN", "Infinity"):
        person = person.replace("100.0", bad, 1)  # the first x
    path = tmp_path / "clip_000000000001_keypoints.json"
    path.write_text(
        f'{{"people": [{{"pose_keypoints_2d": {_body25()}}}, {{"pose_keypoints_2d": {person}}}]}}'
    )
    with pytest.raises(FileFormatError) as info:
        read_openpose(tmp_path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_openpose_person_not_an_object(tmp_path):
    path = tmp_path / "clip_000000000000_keypoints.json"
    path.write_text(json.dumps({"people": [_body25()]}))
    with pytest.raises(
        FileFormatError, match="person 0 has no 'pose_keypoints_2d' \\(a JSON list\\)"
    ) as info:
        read_openpose(tmp_path)
    assert str(path) in str(info.value)
