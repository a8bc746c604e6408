"""Predicted meshes drawn over the input frames, with the project's own headless rasterizer.

A prediction's crop camera (s, tx, ty) with focal length f places the root-relative mesh at
t = (tx, ty, 2 f / (res s)) in front of a pinhole whose principal point is the crop centre. The crop
is the box of side 200 scale around `center` resized to res pixels, so in the full image the very
same camera is a pinhole of focal f * side / res with its principal point at `center`: the mesh lands
exactly where the keypoint labels and the crop put the person.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cemr.data.synthetic.renderer import Camera, Light, Mesh, render
from cemr.geometry import BBOX_UNIT

LIGHT = Light(
    direction=np.array([0.0, -0.4, -1.0])
    / np.linalg.norm([0.0, -0.4, -1.0]),  # towards the camera, from above
    color=np.array([0.75, 0.75, 0.75]),
    ambient=np.array([0.35, 0.35, 0.35]),
)
SOURCE_COLOR = (0.85, 0.55, 0.35)  # RGB albedo of the source-only mesh
ADAPTED_COLOR = (0.45, 0.65, 0.95)


def full_image_camera(
    cam: np.ndarray,
    center: np.ndarray,
    scale: float,
    focal_length: float,
    crop_size: int,
    width: int,
    height: int,
) -> tuple[Camera, np.ndarray]:
    """The full-image pinhole of a crop camera, and the mesh translation (3,) in its frame."""
    s, tx, ty = (float(v) for v in cam)
    translation = np.array([tx, ty, 2.0 * focal_length / (crop_size * s + 1e-9)])
    side = BBOX_UNIT * float(scale)
    camera = Camera(
        rotation=np.eye(3),
        translation=np.zeros(3),
        focal=focal_length * side / crop_size,
        width=width,
        height=height,
        cx=float(center[0]),
        cy=float(center[1]),
    )
    return camera, translation


def project_vertices(vertices: np.ndarray, camera: Camera, translation: np.ndarray) -> np.ndarray:
    """(V, 3) root-relative vertices -> (V, 3) full-image pixels (u, v) and depth."""
    return camera.project(vertices + translation)


def draw_mesh(
    image: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    camera: Camera,
    translation: np.ndarray,
    color=ADAPTED_COLOR,
    alpha: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB with the shaded mesh blended over it, and the (H, W) bool mesh mask."""
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_mesh: expected an (H, W, 3) uint8 image, found {image.shape} {image.dtype}")
    background = image.astype(np.float64) / 255.0
    mesh = Mesh(
        vertices + translation,
        np.asarray(faces),
        np.tile(np.asarray(color, dtype=np.float64), (len(vertices), 1)),
    )
    drawn = render([mesh], camera, LIGHT, background)
    mask = drawn.mesh_id >= 0
    out = background.copy()
    out[mask] = alpha * np.clip(drawn.image[mask], 0.0, 1.0) + (1 - alpha) * background[mask]
    return (out * 255.0 + 0.5).astype(np.uint8), mask


def side_by_side(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Panels (title, (H, W, 3) uint8) next to each other with their titles written on them."""
    out = []
    for title, panel in panels:
        panel = panel.copy()
        size = max(0.35, panel.shape[0] / 600)
        cv2.putText(
            panel,
            title,
            (4, int(16 * size / 0.35)),
            cv2.FONT_HERSHEY_SIMPLEX,
            size,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        out.append(panel)
    return np.concatenate(out, axis=1)


def write_video(frames: list[Path], path: Path, fps: float) -> Path:
    """The PNG frames (same size) as an mp4 (OpenCV's mp4v codec)."""
    first = cv2.imread(str(frames[0]))
    height, width = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open an mp4 writer (mp4v codec)")
    try:
        for frame in frames:
            writer.write(cv2.imread(str(frame)))
    finally:
        writer.release()
    return path
