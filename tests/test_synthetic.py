"""cemr.data.synthetic: the embedded two-domain benchmark (renderer, motions, cameras, labels, cache).

Small sizes throughout (2 sequences x 6 frames per domain, 96-112 px images). Labels are checked
against independent recomputation: the stored camera-frame pose/shape/trans go through the body
model again and are projected with a plain numpy pinhole; the rasterizer is checked on shapes
whose pixel coverage is known in closed form.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cemr.body import load_body_model, make_synthetic_body_model
from cemr.body.joints import J24_NAMES, JOINT_NAMES_49
from cemr.data.synthetic import build as build_module
from cemr.data.synthetic import build_benchmark
from cemr.data.synthetic.build import NPZ_KEYS, SPLITS, BenchmarkConfig, load_gendered_models
from cemr.data.synthetic.domains import DOMAINS, SOURCE, TARGET, Degradation, finish_image, look_at
from cemr.data.synthetic.keypoints import LIMB_SWAPS, KeypointNoise, bbox_from_keypoints, detect_keypoints
from cemr.data.synthetic.motions import (
    BODY_LIMITS_DEG,
    FAMILIES,
    JOINT_LIMITS_DEG,
    SOURCE_FAMILIES,
    TARGET_FAMILIES,
    sample_motion,
)
from cemr.data.synthetic.renderer import Camera, Light, Mesh, box_mesh, rasterize, render
from cemr.data.synthetic.sequence import generate_sequence
from cemr.geometry import axis_angle_to_rotmat

SMALL = dict(
    source_sequences=2,
    target_sequences=2,
    frames_per_sequence=6,
    source_frame_stride=2,
    source_image_size=(96, 96),
    target_image_size=(80, 112),
    workers=0,
    progress=False,
)
IMAGE_SIZE = {"source_train": (96, 96), "source_test": (96, 96), "target_test": (80, 112)}


@pytest.fixture(scope="module")
def body_dir(tmp_path_factory) -> Path:
    return make_synthetic_body_model(tmp_path_factory.mktemp("body") / "model")


@pytest.fixture(scope="module")
def built(body_dir, tmp_path_factory) -> Path:
    return build_benchmark(tmp_path_factory.mktemp("bench") / "synthetic", body_dir, seed=0, **SMALL)


def load_split(root: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(root / f"{split}.npz") as data:
        return {key: data[key] for key in data.files}


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- renderer


def test_rasterize_square_covers_exactly_the_pixel_centres_inside():
    # square [1.5, 5.5] x [2.5, 4.5] in pixels -> centres x in {2..5}, y in {3, 4}
    points = np.array([[1.5, 2.5, 2.0], [5.5, 2.5, 2.0], [5.5, 4.5, 2.0], [1.5, 4.5, 2.0]])
    frags = rasterize(points, np.array([[0, 1, 2], [0, 2, 3]]), 8, 7)
    expected = np.zeros((7, 8), bool)
    expected[3:5, 2:6] = True
    np.testing.assert_array_equal(frags.face >= 0, expected)
    np.testing.assert_allclose(frags.depth[expected], 2.0)
    assert np.all(np.isinf(frags.depth[~expected]))
    np.testing.assert_allclose(frags.bary[expected].sum(-1), 1.0)


def test_rasterize_keeps_the_nearest_surface_whatever_the_order():
    big = np.array([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
    for near_first in (True, False):
        depths = (1.0, 3.0) if near_first else (3.0, 1.0)
        points = np.concatenate([np.c_[big, np.full(3, depths[0])], np.c_[big, np.full(3, depths[1])]])
        frags = rasterize(points, np.array([[0, 1, 2], [3, 4, 5]]), 10, 10)
        near_face = 0 if near_first else 1
        assert set(np.unique(frags.face[frags.face >= 0])) == {near_face}
        np.testing.assert_allclose(frags.depth[frags.face >= 0], 1.0)


def test_rasterize_perspective_correct_depth_and_barycentrics():
    # a tilted triangle: depth at a pixel must be the depth of the 3D point seen through it
    camera = Camera(np.eye(3), np.zeros(3), 50.0, 40, 40, 20.0, 20.0)
    vertices = np.array([[-0.5, -0.5, 2.0], [0.6, -0.4, 3.0], [-0.3, 0.7, 4.0]])
    frags = rasterize(camera.project(vertices), np.array([[0, 1, 2]]), 40, 40)
    rows, cols = np.nonzero(frags.face == 0)
    assert len(rows) > 50
    points = np.einsum("nk,kc->nc", frags.bary[rows, cols], vertices)  # 3D point from the barycentrics
    np.testing.assert_allclose(points[:, 2], frags.depth[rows, cols], rtol=1e-12)
    reprojected = camera.project(points)
    np.testing.assert_allclose(reprojected[:, 0], cols, atol=1e-9)
    np.testing.assert_allclose(reprojected[:, 1], rows, atol=1e-9)


def test_render_sphere_silhouette_area_and_shading():
    n, m = 40, 80
    theta, phi = np.meshgrid(
        np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, m, endpoint=False), indexing="ij"
    )
    unit = np.stack([np.sin(theta) * np.cos(phi), np.cos(theta), np.sin(theta) * np.sin(phi)], -1).reshape(
        -1, 3
    )
    faces = [[i * m + j, i * m + (j + 1) % m, (i + 1) * m + j] for i in range(n - 1) for j in range(m)]
    faces += [
        [i * m + (j + 1) % m, (i + 1) * m + (j + 1) % m, (i + 1) * m + j]
        for i in range(n - 1)
        for j in range(m)
    ]
    radius, distance, focal = 0.5, 3.0, 200.0
    mesh = Mesh(unit * radius + [0, 0, distance], np.array(faces), np.full((len(unit), 3), 0.8))
    camera = Camera(np.eye(3), np.zeros(3), focal, 128, 128, 64.0, 64.0)
    light = Light(np.array([0.0, 0.0, -1.0]), np.full(3, 0.5), np.full(3, 0.25))  # from the camera
    out = render([mesh], camera, light, np.zeros((128, 128, 3)))
    # silhouette of a sphere: a disc of radius f tan(asin(r / d)) (the mesh is inscribed, slightly smaller)
    disc = math.pi * (focal * math.tan(math.asin(radius / distance))) ** 2
    assert 0.96 * disc < (out.mesh_id == 0).sum() < 1.001 * disc
    # facing the light at the centre: albedo (ambient + diffuse) = 0.8 * 0.75; darker towards the rim
    np.testing.assert_allclose(out.image[64, 64], 0.6, atol=0.01)
    assert out.image[64, 64 + 30, 0] < out.image[64, 64, 0] - 0.1


def test_box_mesh_is_closed_with_outward_normals():
    box = box_mesh(np.array([1.0, 0.0, 2.0]), np.array([0.4, 1.0, 0.2]), 0.3, np.array([0.5, 0.5, 0.5]))
    centre = np.array([1.0, 0.5, 2.0])
    face_centres = box.vertices[box.faces].mean(1)
    assert np.all(((face_centres - centre) * box.normals[box.faces[:, 0]]).sum(-1) > 0)
    np.testing.assert_allclose(box.vertices[:, 1].min(), 0.0)
    np.testing.assert_allclose(box.vertices[:, 1].max(), 1.0)


def test_look_at_centres_the_target_and_keeps_world_up_up():
    eye, target = np.array([[3.0, 1.5, 2.0]]), np.array([[0.0, 1.0, 0.0]])
    rotation, translation = look_at(eye, target)
    np.testing.assert_allclose(rotation[0] @ rotation[0].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotation[0]), 1.0)
    camera = Camera(rotation[0], translation[0], 100.0, 64, 48, 32.0, 24.0)
    centre = camera.project(rotation[0] @ target[0] + translation[0])
    np.testing.assert_allclose(centre[:2], [32.0, 24.0], atol=1e-9)
    above = camera.project(rotation[0] @ (target[0] + [0, 0.5, 0]) + translation[0])
    assert above[1] < 24.0 - 5  # world +y is image up (smaller row)


# ----------------------------------------------------------------------------- motions and keypoints


def _euler_xyz(rotmat: np.ndarray) -> np.ndarray:
    """(..., 3, 3) = Rx(a) Ry(b) Rz(c) -> (..., 3) degrees with |b| <= 90."""
    a = np.arctan2(-rotmat[..., 1, 2], rotmat[..., 2, 2])
    b = np.arcsin(np.clip(rotmat[..., 0, 2], -1, 1))
    c = np.arctan2(-rotmat[..., 0, 1], rotmat[..., 0, 0])
    return np.degrees(np.stack([a, b, c], -1))


def _within_limits(rotmat: np.ndarray, limits_deg: np.ndarray) -> np.ndarray:
    """(..., 3, 3), (..., 3, 2) -> (...) True where one of the two xyz angle triples of R is within limits."""
    first = _euler_xyz(rotmat)
    second = first + [180.0, 0.0, 180.0]  # the same rotation: (a + 180, 180 - b, c + 180)
    second[..., 1] = 180.0 - first[..., 1]
    inside = []
    for angles in (first, second):
        wrapped = (angles + 180.0) % 360.0 - 180.0  # both triples to [-180, 180) then also try +-360 for b
        for shift in (0.0, 360.0, -360.0):
            candidate = wrapped + [0.0, shift, 0.0]
            inside.append(
                np.all(
                    (candidate >= limits_deg[..., 0] - 1e-6) & (candidate <= limits_deg[..., 1] + 1e-6), -1
                )
            )
    return np.any(inside, axis=0)


@pytest.mark.parametrize("family", SOURCE_FAMILIES + TARGET_FAMILIES, ids=lambda f: f.name)
def test_motions_are_smooth_and_within_joint_limits(family):
    motion = sample_motion(family, 90, 30.0, np.random.default_rng(3))
    assert motion.body_pose.shape == (90, 23, 3) and motion.root_orient.shape == (90, 3)
    rotmats = axis_angle_to_rotmat(torch.from_numpy(motion.body_pose)).numpy()
    assert np.all(_within_limits(rotmats, BODY_LIMITS_DEG))
    step = np.einsum("tjab,tjab->tj", rotmats[1:], rotmats[:-1])  # trace(R_t^T R_t-1) = 1 + 2 cos(angle)
    assert np.degrees(np.arccos(np.clip((step - 1) / 2, -1, 1))).max() < 12.0  # degrees per frame at 30 fps
    root = axis_angle_to_rotmat(torch.from_numpy(motion.root_orient)).numpy()
    up = root[:, :, 1]  # the pelvis' up axis in the world
    assert np.all(up[:, 1] > math.cos(math.radians(JOINT_LIMITS_DEG["root"][0][1] + 1)))
    assert np.linalg.norm(np.diff(motion.root_xz, axis=0), axis=1).max() < 0.1  # metres per frame


def test_target_motions_reach_poses_the_source_never_sees():
    def largest_rotations_deg(families):
        rng = np.random.default_rng(0)
        pose = np.concatenate([sample_motion(f, 60, 30.0, rng).body_pose for f in families for _ in range(4)])
        return np.degrees(np.linalg.norm(pose, axis=-1)).max(axis=0)  # (23,) largest rotation per joint

    source, target = largest_rotations_deg(SOURCE_FAMILIES), largest_rotations_deg(TARGET_FAMILIES)
    hips, elbows, spine = [0, 1], [17, 18], [2, 5, 8]  # body-pose slots = SMPL joint index - 1
    assert np.all(target[hips] > source[hips] + 15)
    assert np.all(target[elbows] > source[elbows] + 45)
    assert np.all(target[spine] > source[spine] + 5)


def test_limb_swaps_exchange_left_and_right_of_one_limb():
    arm, leg = LIMB_SWAPS
    index = {name: i for i, name in enumerate(JOINT_NAMES_49)}
    assert arm[index["OP RElbow"]] == index["OP LElbow"] and arm[index["Left Wrist"]] == index["Right Wrist"]
    assert arm[index["OP RKnee"]] == index["OP RKnee"] and arm[index["Nose"]] == index["Nose"]
    assert leg[index["OP LBigToe"]] == index["OP RBigToe"] and leg[index["Right Hip"]] == index["Left Hip"]
    assert leg[index["Neck (LSP)"]] == index["Neck (LSP)"] and leg[index["OP REye"]] == index["OP REye"]
    for perm in LIMB_SWAPS:
        np.testing.assert_array_equal(perm[perm], np.arange(49))  # an involution


def test_detector_noise_statistics():
    rng = np.random.default_rng(0)
    frames = 4000
    points = rng.uniform(20, 80, (frames, 49, 2))
    visible = np.ones((frames, 49), bool)
    visible[:, :10] = False
    scale = np.full(frames, 0.5)  # bbox side 100 px
    noise = KeypointNoise(jitter_frac=0.02, drop_prob=0.1, occluded_drop_prob=0.6, swap_prob=0.0)
    det = detect_keypoints(points, visible, scale, 1000, 1000, noise, np.random.default_rng(1))
    dropped = det[..., 2] == 0
    np.testing.assert_array_equal(det[dropped], 0.0)
    assert abs(dropped[:, 10:].mean() - 0.1) < 0.01 and abs(dropped[:, :10].mean() - 0.6) < 0.02
    residual = (det[..., :2] - points)[~dropped] / (0.02 * 100)
    assert abs(residual.std() - 1.0) < 0.02 and abs(residual.mean()) < 0.02
    conf = det[..., 2][~dropped]
    assert conf.min() >= 0.05 and conf.max() <= 1.0
    assert det[:, 10:, 2][~dropped[:, 10:]].mean() > det[:, :10, 2][~dropped[:, :10]].mean() + 0.3

    # no noise: exact copies; points outside the image are always dropped
    exact = detect_keypoints(
        points, visible, scale, 60, 1000, KeypointNoise(0, 0, 0, 0), np.random.default_rng(2)
    )
    inside = points[..., 0] <= 59
    np.testing.assert_array_equal(exact[..., :2][inside], points[inside])
    np.testing.assert_array_equal(exact[~inside], 0.0)

    # swaps: about swap_prob of the frames have one whole limb mirrored
    swapped = detect_keypoints(
        points, visible, scale, 1000, 1000, KeypointNoise(0, 0, 0, 0.25), np.random.default_rng(3)
    )
    changed = np.any(swapped[..., :2] != points, axis=(1, 2))
    assert abs(changed.mean() - 0.25) < 0.03
    for t in np.flatnonzero(changed)[:20]:
        assert any(np.array_equal(swapped[t, :, :2], points[t, perm]) for perm in LIMB_SWAPS)


def test_bbox_from_keypoints_hand_computed():
    points = np.array([[[10.0, 20.0], [50.0, 30.0], [30.0, 120.0]]])
    center, scale = bbox_from_keypoints(points, 1.2)
    np.testing.assert_allclose(center, [[30.0, 70.0]])
    np.testing.assert_allclose(scale, [1.2 * 100.0 / 200.0])


def test_keypoint_noise_rejects_bad_values():
    with pytest.raises(ValueError, match="drop_prob.*probability.*1.5"):
        KeypointNoise(drop_prob=1.5)
    with pytest.raises(ValueError, match="jitter_frac.*>= 0"):
        KeypointNoise(jitter_frac=-0.1)


# ----------------------------------------------------------------------------- generated labels


def test_npz_layout(built):
    meta = json.loads((built / "meta.json").read_text())
    for split in SPLITS:
        data = load_split(built, split)
        assert tuple(data) == NPZ_KEYS
        n = len(data["imgname"])
        assert meta["splits"][split]["frames"] == n
        expected = {
            "center": (2,),
            "scale": (),
            "pose": (72,),
            "shape": (10,),
            "has_smpl": (),
            "S": (24, 4),
            "part": (24, 3),
            "openpose": (25, 3),
            "keypoints_detected": (49, 3),
            "trans": (3,),
            "focal": (),
        }
        for key, tail in expected.items():
            assert data[key].shape == (n, *tail) and data[key].dtype == np.float64, key
        for key in ("person", "frame"):
            assert data[key].shape == (n,) and data[key].dtype == np.int64
        for key in ("imgname", "seq", "gender"):
            assert data[key].dtype.kind == "U"
        assert data["gender"].dtype == np.dtype("<U1") and set(data["gender"]) <= {"m", "f"}
        np.testing.assert_array_equal(data["has_smpl"], 1.0)
        np.testing.assert_array_equal(data["person"], 0)
        np.testing.assert_array_equal(data["S"][..., 3], 1.0)
        np.testing.assert_array_equal(data["part"][..., 2], 1.0)
        np.testing.assert_array_equal(data["S"][:, J24_NAMES.index("Pelvis (MPII)"), :3], 0.0)
        # rows grouped by sequence in sorted order, frames increasing inside each
        order = np.lexsort((data["frame"], data["seq"]))
        np.testing.assert_array_equal(order, np.arange(n))
        stride = 2 if split.startswith("source") else 1
        for seq in np.unique(data["seq"]):
            np.testing.assert_array_equal(data["frame"][data["seq"] == seq], np.arange(0, 6, stride))
            assert np.unique(data["shape"][data["seq"] == seq], axis=0).shape[0] == 1
        for name, frame, seq in zip(data["imgname"], data["frame"], data["seq"], strict=True):
            assert name == f"images/{seq}/image_{frame:05d}.jpg"
            image = cv2.imread(str(built / name))
            assert image is not None and image.shape == (IMAGE_SIZE[split][1], IMAGE_SIZE[split][0], 3)
    assert (
        len({s for split in SPLITS for s in load_split(built, split)["seq"]}) == 4
    )  # names unique across splits


def test_labels_reproject_from_the_stored_camera_frame_pose(built, body_dir):
    models = {g: load_body_model(body_dir, g, dtype=torch.float64) for g in ("m", "f")}
    for split in SPLITS:
        data = load_split(built, split)
        width, height = IMAGE_SIZE[split]
        for gender, model in models.items():
            rows = data["gender"] == gender
            if not rows.any():
                continue
            pose = torch.from_numpy(data["pose"][rows])
            with torch.no_grad():
                out = model(torch.from_numpy(data["shape"][rows]), pose[:, 3:], pose[:, :3])
            joints = out.joints.numpy() + data["trans"][rows][:, None]  # (n, 49, 3) camera frame
            focal = data["focal"][rows][:, None]
            u = focal * joints[..., 0] / joints[..., 2] + width / 2.0
            v = focal * joints[..., 1] / joints[..., 2] + height / 2.0
            np.testing.assert_allclose(data["openpose"][rows][..., 0], u[:, :25], atol=1e-4)
            np.testing.assert_allclose(data["openpose"][rows][..., 1], v[:, :25], atol=1e-4)
            np.testing.assert_allclose(data["part"][rows][..., 0], u[:, 25:], atol=1e-4)
            np.testing.assert_allclose(data["part"][rows][..., 1], v[:, 25:], atol=1e-4)
            pelvis = joints[:, 25 + J24_NAMES.index("Pelvis (MPII)")]
            np.testing.assert_allclose(data["S"][rows][..., :3], joints[:, 25:] - pelvis[:, None], atol=1e-9)
            assert np.all(joints[..., 2] > 0.5)  # in front of the camera
            # bbox: centre of the extent of all 49 projections, side 1.2 x the larger extent
            uv = np.stack([u, v], -1)
            np.testing.assert_allclose(data["center"][rows], (uv.min(1) + uv.max(1)) / 2, atol=1e-4)
            np.testing.assert_allclose(
                data["scale"][rows], 1.2 * (uv.max(1) - uv.min(1)).max(1) / 200, atol=1e-6
            )


def test_projected_joints_land_on_the_rendered_body(body_dir, monkeypatch):
    # no occluders or clutter in the target, so every joint inside the image has the body in front
    monkeypatch.setitem(
        DOMAINS, "target", dataclasses.replace(TARGET, occluder_prob=0.0, clutter_props=(0, 0))
    )
    models = load_gendered_models(body_dir)
    specs = BenchmarkConfig(
        source_sequences=2,
        target_sequences=2,
        frames_per_sequence=6,
        source_frame_stride=1,
        source_image_size=(96, 96),
        target_image_size=(80, 112),
        target_families=("walking", "reaching"),
    ).specs()
    for spec in (specs["source_train"][0], specs["source_test"][0], specs["target_test"][1]):
        assert not FAMILIES[spec.family].seated  # no stool in front of the legs
        data = generate_sequence(spec, models)
        height, width = data.body_mask.shape[1:]
        mask = np.stack(
            [cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0 for m in data.body_mask]
        )
        points = np.round(data.labels["part"][..., :2]).astype(int)  # (T, 24, 2)
        inside = (
            (points[..., 0] >= 0)
            & (points[..., 0] < width)
            & (points[..., 1] >= 0)
            & (points[..., 1] < height)
        )
        assert inside.mean() > 0.5
        t = np.broadcast_to(np.arange(len(points))[:, None], inside.shape)
        on_body = mask[t[inside], points[..., 1][inside], points[..., 0][inside]]
        assert on_body.mean() > 0.95, spec.name
        assert data.body_mask.mean(axis=(1, 2)).min() > 0.03  # the person is actually drawn
        if inside.all():  # the silhouette's extent agrees with the joints' extent
            rows = np.flatnonzero(data.body_mask[0].any(1))
            joint_h = np.ptp(data.labels["part"][0, :, 1])
            assert 0.9 * joint_h < rows[-1] - rows[0] + 1 < 1.35 * joint_h


def test_detected_keypoints_in_the_benchmark(built):
    for split in SPLITS:
        data = load_split(built, split)
        exact = np.concatenate([data["openpose"], data["part"]], axis=1)[..., :2]
        det = data["keypoints_detected"]
        dropped = det[..., 2] == 0
        assert 0 < dropped.mean() < 0.6
        np.testing.assert_array_equal(det[dropped], 0.0)
        side = 200 * data["scale"][:, None, None]
        residual = ((det[..., :2] - exact) / side)[~dropped]
        residual = residual[np.all(np.abs(residual) < 5 * 0.015, axis=1)]  # leave out swapped limbs
        assert 0.7 < residual.std() / 0.015 < 1.3
        assert np.all(det[..., 2][~dropped] > 0)


# ----------------------------------------------------------------------------- domain gap


def _image_stats(root: Path, split: str) -> dict[str, float]:
    data = load_split(root, split)
    edges, saturation, hue_hist = [], [], np.zeros(18)
    for name in data["imgname"]:
        image = cv2.imread(str(root / name))
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        edges.append((cv2.Canny(gray, 50, 150) > 0).mean())
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        saturation.append(hsv[..., 1].mean())
        hue_hist += np.histogram(hsv[..., 0], bins=18, range=(0, 180), weights=hsv[..., 1] / 255.0)[0]
    return {
        "edges": float(np.mean(edges)),
        "saturation": float(np.mean(saturation)),
        "hue": hue_hist / hue_hist.sum(),
    }


def test_target_images_differ_from_source_by_measurable_statistics(built):
    train, test, target = (_image_stats(built, split) for split in SPLITS)
    for source in (train, test):
        assert target["edges"] > 2.0 * source["edges"]  # cluttered backgrounds
        assert target["saturation"] > 3.0 * source["saturation"]  # colourful scenes and clothes
    in_domain = np.abs(train["hue"] - test["hue"]).sum()
    cross = min(np.abs(train["hue"] - target["hue"]).sum(), np.abs(test["hue"] - target["hue"]).sum())
    assert cross > 2.0 * in_domain


def test_target_degradations_blur_and_add_noise():
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 3))
    image[:, 32:] = 0.8  # one vertical edge
    clean = finish_image(image, Degradation(), np.zeros(2), rng)
    blurred = finish_image(image, Degradation(blur_px=6.0), np.zeros(2), rng)
    noisy = finish_image(image, Degradation(noise_std=0.03), np.zeros(2), rng)
    moving = finish_image(image, Degradation(), np.array([0.0, 12.0]), rng)  # vertical image motion
    np.testing.assert_array_equal(moving, clean)  # blurs along the edge: no change
    assert np.count_nonzero(np.diff(clean[32, :, 0].astype(int))) == 1  # a step
    assert np.count_nonzero(np.diff(blurred[32, :, 0].astype(int))) >= 5  # a ramp 6 px wide
    np.testing.assert_array_equal(blurred[:, :, 0], blurred[:1, :, 0].repeat(64, 0))  # horizontal blur only
    assert 3 < (noisy.astype(float) - clean).std() < 12
    assert TARGET.blur_px[1] > 0 and SOURCE.blur_px == (0.0, 0.0)
    assert TARGET.jpeg_quality[1] < SOURCE.jpeg_quality[0]


def test_source_cameras_are_a_fixed_rig_and_target_cameras_move(built):
    source, target = load_split(built, "source_train"), load_split(built, "target_test")
    assert np.ptp(source["focal"]) == 0.0
    for seq in np.unique(target["seq"]):
        focal = target["focal"][target["seq"] == seq]
        assert np.ptp(focal) > 0  # zoom
    rig = SOURCE.sample_rig(np.random.default_rng(0), 96, 96)
    heights = [-(track.rotation[0].T @ track.translation[0])[1] for track in rig]
    assert len(rig) == 4 and all(1.3 < h < 1.7 for h in heights)  # chest height


# ----------------------------------------------------------------------------- determinism and cache


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(built, body_dir, tmp_path):
    again = build_benchmark(tmp_path / "again", body_dir, seed=0, **SMALL)
    assert file_bytes(again) == file_bytes(built)
    other = build_benchmark(tmp_path / "other", body_dir, seed=1, **SMALL)
    # another build is another target; the source domain stays (one source model serves all builds)
    for split in ("source_train", "source_test"):
        assert (other / f"{split}.npz").read_bytes() == (built / f"{split}.npz").read_bytes()
    assert (other / "target_test.npz").read_bytes() != (built / "target_test.npz").read_bytes()
    other_source = build_benchmark(tmp_path / "other_source", body_dir, seed=0, source_seed=1, **SMALL)
    for split in ("source_train", "source_test"):
        assert (other_source / f"{split}.npz").read_bytes() != (built / f"{split}.npz").read_bytes()
    assert (other_source / "target_test.npz").read_bytes() == (built / "target_test.npz").read_bytes()


def test_worker_processes_give_the_same_bytes(built, body_dir, tmp_path):
    parallel = build_benchmark(tmp_path / "parallel", body_dir, seed=0, **{**SMALL, "workers": 2})
    assert file_bytes(parallel) == file_bytes(built)
    # the content hash a build records is that of its files, so two machines can compare builds
    content = json.loads((parallel / "meta.json").read_text())["content_sha256"]
    assert content == json.loads((built / "meta.json").read_text())["content_sha256"]
    assert content == build_module.tree_sha256(built) == build_module.tree_sha256(parallel)
    (parallel / "images").joinpath(sorted(p.name for p in (parallel / "images").iterdir())[0]).rename(
        parallel / "images" / "renamed"
    )
    assert build_module.tree_sha256(parallel) != content


@pytest.mark.slow
def test_a_build_links_the_source_splits_of_a_finished_sibling(built, body_dir, tmp_path):
    first = build_benchmark(tmp_path / "builds" / "seed0", body_dir, seed=0, **SMALL)
    second = build_benchmark(tmp_path / "builds" / "seed1", body_dir, seed=1, **SMALL)
    fresh = build_benchmark(tmp_path / "alone" / "seed1", body_dir, seed=1, **SMALL)
    assert file_bytes(second) == file_bytes(fresh)  # the same bytes as rendering everything
    image = sorted((first / "images").glob("train_000*/*.jpg"))[0].relative_to(first)
    assert (second / image).stat().st_ino == (first / image).stat().st_ino  # linked, not rendered
    target = sorted((second / "images").glob("wild_000*/*.jpg"))[0].relative_to(second)
    assert not (first / target).exists() or (second / target).stat().st_ino != (first / target).stat().st_ino
    other_source = build_benchmark(tmp_path / "builds" / "src1", body_dir, seed=0, source_seed=1, **SMALL)
    assert (other_source / image).stat().st_ino != (first / image).stat().st_ino


def test_families_are_chosen_by_config_and_checked(body_dir, tmp_path):
    shared = ("walking", "sitting")
    out = build_benchmark(
        tmp_path / "shared", body_dir, **{**SMALL, "source_families": shared, "target_families": shared}
    )
    for split in SPLITS:
        names = np.unique(load_split(out, split)["seq"])
        assert [any(f in n for f in shared) for n in names] == [True] * len(names), names
    assert [n.split("_", 2)[2] for n in np.unique(load_split(out, "target_test")["seq"])] == list(shared)
    with pytest.raises(ValueError, match="target_families must be a non-empty list of motion families"):
        build_benchmark(tmp_path / "bad", body_dir, **{**SMALL, "target_families": ("moonwalk",)})


@pytest.mark.slow
def test_cache_reuses_and_rebuilds_on_changed_config(body_dir, tmp_path):
    out = build_benchmark(tmp_path / "bench", body_dir, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert build_benchmark(tmp_path / "bench", body_dir, **SMALL) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps  # nothing rewritten
    old_hash = json.loads((out / "meta.json").read_text())["hash"]

    build_benchmark(tmp_path / "bench", body_dir, **{**SMALL, "keypoint_noise": {"jitter_frac": 0.05}})
    meta = json.loads((out / "meta.json").read_text())
    assert meta["hash"] != old_hash and meta["config"]["keypoint_noise"]["jitter_frac"] == 0.05
    build_benchmark(tmp_path / "bench", body_dir, **{**SMALL, "target_sequences": 3})
    assert len(np.unique(load_split(out, "target_test")["seq"])) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # no temporary dirs left


def test_killed_build_never_looks_complete(body_dir, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(build_module, "_assemble", crash)
    with pytest.raises(KeyboardInterrupt):
        build_benchmark(tmp_path / "bench", body_dir, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_foreign_directory(body_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine.*not empty.*meta.json"):
        build_benchmark(tmp_path / "mine", body_dir, **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"source_sequences": 1}, "source_sequences must be an int >= 2"),
        ({"target_sequences": 0}, "target_sequences must be an int >= 1"),
        ({"source_frame_stride": 7}, r"source_frame_stride must be an int in \[1, frames_per_sequence\]"),
        ({"source_image_size": (8, 96)}, r"source_image_size must be \(width, height\), ints >= 16"),
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"source_test_fraction": 1.0}, r"source_test_fraction must be in \(0, 1\)"),
    ],
)
def test_bad_settings_raise(body_dir, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        build_benchmark(tmp_path / "bench", body_dir, **{**SMALL, **override})


def test_unknown_keypoint_noise_setting_raises(body_dir, tmp_path):
    with pytest.raises(TypeError, match="jiter_frac"):
        build_benchmark(tmp_path / "bench", body_dir, **{**SMALL, "keypoint_noise": {"jiter_frac": 0.1}})


def test_missing_body_model_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="body model directory .*nowhere does not exist"):
        build_benchmark(tmp_path / "bench", tmp_path / "nowhere", **SMALL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no SMPL_MALE.pkl or SMPL_MALE.npz"):
        build_benchmark(tmp_path / "bench", tmp_path / "empty", **SMALL)


# ----------------------------------------------------------------------------- config, preview, CLI


def test_config_prepare_node_matches_build_benchmark(compose_cfg):
    cfg = compose_cfg("adapt", ["dataset=synthetic"])
    node = {k: v for k, v in cfg.dataset.prepare.items() if not k.startswith("_")}
    inspect.signature(build_benchmark).bind(**node)  # every key is a parameter
    assert cfg.dataset.prepare._target_ == "cemr.data.synthetic.build_benchmark"
    assert cfg.dataset.prepare.out_dir == cfg.dataset.root and cfg.dataset.root.endswith("synthetic_seed0")
    assert cfg.dataset.prepare.body_model_dir == cfg.body.model_dir
    assert cfg.dataset.crop_size == cfg.backbone.crop_size
    assert {cfg.dataset.source_split, cfg.dataset.source_test_split, cfg.dataset.target_split} == set(SPLITS)
    # the yaml, build_benchmark's signature and BenchmarkConfig agree on every default
    config_defaults = BenchmarkConfig().to_json()
    signature = inspect.signature(build_benchmark).parameters
    for key, value in config_defaults.items():
        if key == "keypoint_noise":
            assert signature[key].default is None and node[key] == value
        else:
            assert node[key] == value and json.loads(json.dumps(signature[key].default)) == value, key
    assert node["workers"] == signature["workers"].default


def test_preview_contact_sheets(built, body_dir, tmp_path):
    from cemr.data.synthetic.__main__ import main

    assert (
        main(
            [
                "preview",
                "--out",
                str(tmp_path / "read.png"),
                "--benchmark-dir",
                str(built),
                "--sequences",
                "1",
                "--detected",
            ]
        )
        == 0
    )
    sheet = cv2.imread(str(tmp_path / "read.png"))
    assert sheet.shape[0] == 2 * (240 + 2)  # one source and one target row of 240 px tiles
    assert sheet.shape[1] == 4 * 240  # 4 square source tiles are the widest row
    from cemr.data.synthetic.preview import render_preview

    render_preview(
        tmp_path / "fresh.png",
        body_dir,
        sequences_per_domain=1,
        frames_per_row=2,
        frames_per_sequence=4,
        tile_height=60,
    )
    fresh = cv2.imread(str(tmp_path / "fresh.png"))
    assert fresh.shape == (2 * 62, 2 * 60, 3) and fresh.std() > 10


def test_cli_build(body_dir, tmp_path, capsys):
    from cemr.data.synthetic.__main__ import main

    assert (
        main(
            [
                "build",
                "--out",
                str(tmp_path / "cli"),
                "--body-model-dir",
                str(body_dir),
                "--source-sequences",
                "2",
                "--target-sequences",
                "1",
                "--frames-per-sequence",
                "3",  # the source keeps every 3rd frame: one
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert "benchmark ready" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert meta["splits"] == {
        "source_train": {"sequences": 1, "frames": 1},
        "source_test": {"sequences": 1, "frames": 1},
        "target_test": {"sequences": 1, "frames": 3},
    }
