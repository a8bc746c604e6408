"""Mesh overlays: the full-image camera puts a mesh where the crop pipeline puts its keypoints, the drawn
mesh covers its projected vertices and nothing else, and frames round-trip through the mp4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemr.geometry import denormalize_keypoints, transform_keypoints
from cemr.models.prediction import project_to_crop
from cemr.viz.overlay import draw_mesh, full_image_camera, project_vertices, side_by_side, write_video

FOCAL, CROP = 5000.0, 112
CAM = np.array([0.9, 0.05, -0.1])
CENTER, SCALE = np.array([70.0, 130.0]), 0.9  # a box of 180 px in a 160 x 240 image


def body_vertices(parts):
    body, _, _ = parts
    with torch.no_grad():
        pose = torch.zeros(1, 72, dtype=torch.float64)
        pose[0, 0] = np.pi  # upright in the camera frame (y down), as the models predict
        out = body(
            betas=torch.zeros(1, 10, dtype=torch.float64), body_pose=pose[:, 3:], global_orient=pose[:, :3]
        )
    return out.vertices[0].numpy(), body.faces.numpy()


def test_full_image_camera_lands_where_the_crop_pipeline_puts_points():
    points = np.random.default_rng(0).normal(0.0, 0.4, (50, 3))
    crop_units = project_to_crop(torch.from_numpy(points)[None], torch.from_numpy(CAM)[None], FOCAL, CROP)[0]
    expected = transform_keypoints(
        denormalize_keypoints(crop_units.numpy(), CROP), CENTER, SCALE, CROP, invert=True
    )
    camera, translation = full_image_camera(CAM, CENTER, SCALE, FOCAL, CROP, 160, 240)
    found = project_vertices(points, camera, translation)[:, :2]
    np.testing.assert_allclose(found, expected, atol=1e-6)


def test_the_drawn_mesh_covers_its_projected_vertices_and_nothing_else(parts):
    vertices, faces = body_vertices(parts)
    image = np.full((240, 160, 3), 40, dtype=np.uint8)
    camera, translation = full_image_camera(CAM, CENTER, SCALE, FOCAL, CROP, 160, 240)
    drawn, mask = draw_mesh(image, vertices, faces, camera, translation)
    uv = np.rint(project_vertices(vertices, camera, translation)[:, :2]).astype(int)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < 160) & (uv[:, 1] >= 0) & (uv[:, 1] < 240)
    assert inside.mean() > 0.95  # the body fits the frame
    grown = np.zeros_like(mask)  # a vertex sits on a triangle's corner: within one pixel of the mask
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
    assert grown[uv[inside, 1], uv[inside, 0]].mean() > 0.99
    lo, hi = uv[inside].min(0), uv[inside].max(0)
    rows, cols = np.nonzero(mask)
    assert (
        cols.min() >= lo[0] - 1
        and cols.max() <= hi[0] + 1
        and rows.min() >= lo[1] - 1
        and rows.max() <= hi[1] + 1
    )
    assert np.array_equal(drawn[~mask], image[~mask]) and not np.array_equal(drawn[mask], image[mask])
    with pytest.raises(ValueError, match="uint8 image"):
        draw_mesh(image.astype(np.float32), vertices, faces, camera, translation)


def test_panels_sit_side_by_side_and_frames_round_trip_through_the_mp4(tmp_path):
    import cv2

    panel = np.zeros((48, 32, 3), dtype=np.uint8)
    assert side_by_side([("a", panel), ("b", panel + 100)]).shape == (48, 64, 3)
    frames = []
    for i in range(6):
        path = tmp_path / f"f{i}.png"
        cv2.imwrite(str(path), np.full((48, 64, 3), 30 * i, dtype=np.uint8))
        frames.append(path)
    video = cv2.VideoCapture(str(write_video(frames, tmp_path / "v.mp4", fps=10)))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    ok, first = video.read()
    assert ok and first.shape == (48, 64, 3)
