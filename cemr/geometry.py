"""Rotations, cameras and crops in SPIN's conventions (shared/reference/FORMATS.md, sections 5.2 and 8).

Rotation and camera functions are torch, batched over leading dimensions, on the inputs'
device and dtype. Crop functions are numpy + OpenCV and work in 0-based pixel coordinates
(integer values are pixel centres, as in ``cv2.warpAffine``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

FOCAL_LENGTH = 5000.0
CROP_SIZE = 224
BBOX_UNIT = 200.0  # bbox side in pixels = BBOX_UNIT * scale


def _check_last_dims(x, dims: tuple[int, ...], name: str) -> None:
    if x.ndim < len(dims) or tuple(x.shape[x.ndim - len(dims) :]) != dims:
        expected = ", ".join(["..."] + [str(d) for d in dims])
        raise ValueError(f"{name}: expected shape ({expected}), found {tuple(x.shape)}")


# ----------------------------------------------------------------------------- rotations


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3). SPIN: view as (3, 2) columns a1, a2, Gram-Schmidt, b3 = b1 x b2."""
    _check_last_dims(x, (6,), "rot6d_to_rotmat input")
    cols = x.reshape(*x.shape[:-1], 3, 2)
    a1, a2 = cols[..., 0], cols[..., 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def rotmat_to_rot6d(rotmat: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): first two columns, row-major, i.e. [R00, R01, R10, R11, R20, R21]."""
    _check_last_dims(rotmat, (3, 3), "rotmat_to_rot6d input")
    return rotmat[..., :, :2].reshape(*rotmat.shape[:-2], 6)


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix [v]_x."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    rows = (zero, -z, y, z, zero, -x, -y, x, zero)
    return torch.stack(rows, dim=-1).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_rotmat(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) by Rodrigues, R = I + a K + b K^2 with K = [aa]_x.

    a = sin(t)/t and b = (1 - cos t)/t^2 = 2 sin^2(t/2)/t^2 (no cancellation); Taylor series
    below t^2 < eps keep values and gradients finite at t = 0.
    """
    _check_last_dims(axis_angle, (3,), "axis_angle_to_rotmat input")
    theta2 = (axis_angle * axis_angle).sum(-1)[..., None, None]
    small = theta2 < torch.finfo(axis_angle.dtype).eps
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, 2.0 * (torch.sin(theta / 2) / theta) ** 2)
    skew = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a * skew + b * (skew @ skew)


def rotmat_to_quaternion(rotmat: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) unit quaternion (w, x, y, z) with w >= 0.

    Shepperd's method: of the four algebraically equal formulas, use the one whose divisor
    (2|q_i|) is largest, so the result is accurate for every angle including pi.
    """
    _check_last_dims(rotmat, (3, 3), "rotmat_to_quaternion input")
    m = rotmat.reshape(*rotmat.shape[:-2], 9).unbind(-1)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    diag4 = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    )
    q_abs2 = diag4.clamp_min(0.0)  # = 4 q_i^2
    candidates = torch.stack(
        [
            torch.stack([q_abs2[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs2[..., 1], m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs2[..., 2], m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs2[..., 3]], dim=-1),
        ],
        dim=-2,
    )  # row i = 4 q_i * q
    best = q_abs2.argmax(dim=-1, keepdim=True)  # its q_abs2 >= 1 since they sum to 4
    row = torch.gather(candidates, -2, best[..., None].expand(*best.shape, 4)).squeeze(-2)
    quat = row / (2.0 * torch.gather(q_abs2, -1, best).sqrt())
    return torch.where(quat[..., :1] < 0, -quat, quat)


def rotmat_to_axis_angle(rotmat: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) axis-angle with angle in [0, pi], via the quaternion."""
    quat = rotmat_to_quaternion(rotmat)
    w, v = quat[..., :1], quat[..., 1:]
    sin_half2 = (v * v).sum(-1, keepdim=True)
    small = sin_half2 < torch.finfo(rotmat.dtype).eps
    sin_half = torch.where(small, torch.ones_like(sin_half2), sin_half2).sqrt()
    angle_over_sin_half = torch.where(
        small, 2.0 / w - 2.0 * sin_half2 / (3.0 * w**3), 2.0 * torch.atan2(sin_half, w) / sin_half
    )
    return v * angle_over_sin_half


def rotation_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) x2 -> (...) geodesic angle in radians of the rotation from a to b, in [0, pi]."""
    _check_last_dims(a, (3, 3), "rotation_angle a")
    _check_last_dims(b, (3, 3), "rotation_angle b")
    return rotmat_to_axis_angle(a.transpose(-1, -2) @ b).norm(dim=-1)


# ----------------------------------------------------------------------------- cameras


def weak_perspective_to_translation(
    cam: torch.Tensor, focal_length: float = FOCAL_LENGTH, crop_size: int = CROP_SIZE
) -> torch.Tensor:
    """(..., 3) crop camera [s, tx, ty] -> (..., 3) translation (tx, ty, 2 f / (res s + 1e-9))."""
    _check_last_dims(cam, (3,), "weak_perspective_to_translation cam")
    s, tx, ty = cam.unbind(-1)
    return torch.stack([tx, ty, 2.0 * focal_length / (crop_size * s + 1e-9)], dim=-1)


def perspective_projection(
    points: torch.Tensor,
    translation: torch.Tensor,
    focal_length: torch.Tensor | float = FOCAL_LENGTH,
    camera_center: torch.Tensor | None = None,
    rotation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pinhole projection, SPIN's perspective_projection: u = f (R X + t)_xy / (R X + t)_z + c.

    points (B, N, 3), translation (B, 3), focal_length (B,) or float, camera_center (B, 2)
    (None: principal point 0, i.e. pixels relative to the crop centre), rotation (B, 3, 3)
    (None: identity). Returns (B, N, 2) pixels. Any leading dims work in place of B (a tensor
    focal_length then has those leading dims).
    """
    _check_last_dims(points, (3,), "perspective_projection points")
    _check_last_dims(translation, (3,), "perspective_projection translation")
    if rotation is not None:
        _check_last_dims(rotation, (3, 3), "perspective_projection rotation")
        points = points @ rotation.transpose(-1, -2)
    cam_points = points + translation[..., None, :]
    focal = torch.as_tensor(focal_length, dtype=points.dtype, device=points.device)
    pixels = focal[..., None, None] * cam_points[..., :2] / cam_points[..., 2:]
    if camera_center is not None:
        _check_last_dims(camera_center, (2,), "perspective_projection camera_center")
        pixels = pixels + camera_center[..., None, :]
    return pixels


def crop_camera_to_full_image(cam, center, scale, img_w: float, img_h: float):
    """VIBE convert_crop_cam_to_orig_img: crop [s, tx, ty] -> full-image [sx, sy, tx, ty].

    cam (B, 3), center (B, 2) pixels, scale (B,) bbox side / 200. Numpy or torch in, same out.
    """
    _check_last_dims(cam, (3,), "crop_camera_to_full_image cam")
    _check_last_dims(center, (2,), "crop_camera_to_full_image center")
    if tuple(scale.shape) != tuple(cam.shape[:-1]):
        raise ValueError(
            f"crop_camera_to_full_image scale: expected shape {tuple(cam.shape[:-1])}, "
            f"found {tuple(scale.shape)}"
        )
    side = BBOX_UNIT * scale
    half_w, half_h = img_w / 2.0, img_h / 2.0
    sx = cam[..., 0] * side / img_w
    sy = cam[..., 0] * side / img_h
    tx = (center[..., 0] - half_w) / half_w / sx + cam[..., 1]
    ty = (center[..., 1] - half_h) / half_h / sy + cam[..., 2]
    stack = torch.stack if isinstance(cam, torch.Tensor) else np.stack
    return stack([sx, sy, tx, ty], -1)


# ----------------------------------------------------------------------------- crops


def crop_transform_matrix(center, scale: float, res: int, rot: float = 0.0, flip: bool = False) -> np.ndarray:
    """(3, 3) affine from image pixels to a res x res crop (SPIN imutils.get_transform).

    The box of side 200*scale around ``center`` maps onto [0, res]^2; ``rot`` (degrees)
    rotates about the crop centre, in SPIN's sense; ``flip`` then mirrors the crop about its
    centre (u -> res - u), so a normalised keypoint x becomes exactly -x.
    """
    cx, cy = (float(c) for c in np.asarray(center, dtype=np.float64).reshape(2))
    side = BBOX_UNIT * float(scale)
    if not side > 0:
        raise ValueError(f"crop_transform_matrix: scale must be > 0, found {scale}")
    t = np.array(
        [
            [res / side, 0.0, res * (-cx / side + 0.5)],
            [0.0, res / side, res * (-cy / side + 0.5)],
            [0.0, 0.0, 1.0],
        ]
    )
    if rot != 0:
        rad = -rot * math.pi / 180.0
        sn, cs = math.sin(rad), math.cos(rad)
        rot_mat = np.array([[cs, -sn, 0.0], [sn, cs, 0.0], [0.0, 0.0, 1.0]])
        to_origin = np.array([[1.0, 0.0, -res / 2], [0.0, 1.0, -res / 2], [0.0, 0.0, 1.0]])
        back = np.array([[1.0, 0.0, res / 2], [0.0, 1.0, res / 2], [0.0, 0.0, 1.0]])
        t = back @ rot_mat @ to_origin @ t
    if flip:
        t = np.array([[-1.0, 0.0, float(res)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ t
    return t


def transform_keypoints(
    points_px, center, scale: float, res: int, invert: bool = False, rot: float = 0.0, flip: bool = False
) -> np.ndarray:
    """(..., 2) image pixels -> (..., 2) crop pixels (or back with ``invert``), float.

    Unlike SPIN's ``transform`` (1-based, truncated to int) this is the exact affine map in
    0-based coordinates, the same map ``crop_image`` applies, so the bbox centre lands at
    res/2, which ``normalize_keypoints`` sends to 0, the camera centre.
    """
    points = np.asarray(points_px, dtype=np.float64)
    _check_last_dims(points, (2,), "transform_keypoints points_px")
    t = crop_transform_matrix(center, scale, res, rot, flip)
    if invert:
        t = np.linalg.inv(t)
    return points @ t[:2, :2].T + t[:2, 2]


def normalize_keypoints(points_px_in_crop, res: int):
    """Crop pixels -> [-1, 1] crop units: 2 u / res - 1. Numpy or torch, (..., 2)."""
    _check_last_dims(points_px_in_crop, (2,), "normalize_keypoints input")
    return 2.0 * points_px_in_crop / res - 1.0


def denormalize_keypoints(points_norm, res: int):
    """Inverse of ``normalize_keypoints``: (u + 1) res / 2."""
    _check_last_dims(points_norm, (2,), "denormalize_keypoints input")
    return (points_norm + 1.0) * res / 2.0


def crop_image(
    image: np.ndarray, center, scale: float, res: int, rot: float = 0.0, flip: bool = False
) -> np.ndarray:
    """(H, W, C) uint8 -> (res, res, C) uint8 crop with the affine of ``crop_transform_matrix``.

    Zero padding outside the image. When shrinking, the box is first warped to k*res pixels
    (k = ceil(side / res)) and then area-averaged k x k, an anti-aliased resize like the PIL
    one SPIN used; the 0.5 (k - 1) offset keeps every point's crop position unchanged.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"crop_image: expected an (H, W, C) uint8 image, found shape {image.shape} dtype {image.dtype}"
        )
    t = crop_transform_matrix(center, scale, res, rot, flip)
    k = max(1, math.ceil(BBOX_UNIT * float(scale) / res - 1e-6))  # 200 * 1.12 = 224.00000000000003
    up = np.diag([k, k, 1.0])
    up[:2, 2] = 0.5 * (k - 1)
    big = cv2.warpAffine(
        image,
        (up @ t)[:2],
        (k * res, k * res),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if k > 1:  # integer-factor INTER_AREA is the exact k x k box mean
        big = cv2.resize(big, (res, res), interpolation=cv2.INTER_AREA)
    return big.reshape(res, res, image.shape[2])  # OpenCV drops a single channel axis
