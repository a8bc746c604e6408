import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cemr import geometry as geo


def random_axis_angle(shape, seed=0, max_angle=math.pi):
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(*shape, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    return axis * rng.uniform(0.0, max_angle, size=(*shape, 1))


# ----------------------------------------------------------------------------- rotations


def test_axis_angle_to_rotmat_matches_scipy_batched():
    aa = random_axis_angle((4, 5))
    rot = geo.axis_angle_to_rotmat(torch.from_numpy(aa))
    assert rot.shape == (4, 5, 3, 3) and rot.dtype == torch.float64
    expected = Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(4, 5, 3, 3)
    np.testing.assert_allclose(rot.numpy(), expected, atol=1e-12)


def test_rotmat_to_axis_angle_matches_scipy_batched():
    aa = random_axis_angle((3, 7), seed=1, max_angle=math.pi - 1e-3)
    mats = Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(3, 7, 3, 3)
    out = geo.rotmat_to_axis_angle(torch.from_numpy(mats))
    assert out.shape == (3, 7, 3)
    np.testing.assert_allclose(out.numpy(), aa, atol=1e-10)


def test_rotation_angle_matches_scipy_including_near_zero_and_pi():
    a = Rotation.from_rotvec(random_axis_angle((20,), seed=2)).as_matrix()
    b = Rotation.from_rotvec(random_axis_angle((20,), seed=3)).as_matrix()
    expected = (Rotation.from_matrix(a).inv() * Rotation.from_matrix(b)).magnitude()
    got = geo.rotation_angle(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    near = Rotation.from_rotvec([[0, 0, 1e-9], [0, math.pi - 1e-9, 0], [math.pi, 0, 0]]).as_matrix()
    np.testing.assert_allclose(
        geo.rotation_angle(torch.from_numpy(np.eye(3)).expand(3, 3, 3), torch.from_numpy(near)).numpy(),
        [1e-9, math.pi - 1e-9, math.pi],
        atol=1e-8,
    )
    with pytest.raises(ValueError, match=r"rotation_angle b: expected shape \(\.\.\., 3, 3\)"):
        geo.rotation_angle(torch.eye(3), torch.zeros(3, 4))


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-8, 1e-5, 1e-3])
def test_axis_angle_round_trip_near_zero(angle):
    aa = np.array([[0.6, -0.8, 0.0]]) * angle
    rot = geo.axis_angle_to_rotmat(torch.from_numpy(aa))
    np.testing.assert_allclose(rot.numpy(), Rotation.from_rotvec(aa).as_matrix(), atol=1e-15)
    np.testing.assert_allclose(geo.rotmat_to_axis_angle(rot).numpy(), aa, atol=1e-15)
    rot32 = geo.axis_angle_to_rotmat(torch.from_numpy(aa).float())
    assert rot32.dtype == torch.float32
    np.testing.assert_allclose(geo.rotmat_to_axis_angle(rot32).numpy(), aa, atol=1e-7)


@pytest.mark.parametrize("gap", [1e-3, 1e-6, 1e-9])
def test_axis_angle_round_trip_near_pi(gap):
    axis = np.array([2.0, -1.0, 0.5]) / np.linalg.norm([2.0, -1.0, 0.5])
    aa = (axis * (math.pi - gap))[None]
    mats = Rotation.from_rotvec(aa).as_matrix()
    np.testing.assert_allclose(geo.axis_angle_to_rotmat(torch.from_numpy(aa)).numpy(), mats, atol=1e-12)
    np.testing.assert_allclose(geo.rotmat_to_axis_angle(torch.from_numpy(mats)).numpy(), aa, atol=1e-9)


@pytest.mark.parametrize("axis", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, -1.0]])
def test_rotmat_to_axis_angle_at_exactly_pi(axis):
    # At pi, aa and -aa are the same rotation: check the angle and the matrix it gives back.
    axis = np.array(axis) / np.linalg.norm(axis)
    mats = torch.from_numpy(Rotation.from_rotvec(axis * math.pi).as_matrix())
    aa = geo.rotmat_to_axis_angle(mats)
    assert abs(torch.linalg.norm(aa).item() - math.pi) < 1e-12
    assert abs(abs(float(aa @ torch.from_numpy(axis))) - math.pi) < 1e-12
    np.testing.assert_allclose(geo.axis_angle_to_rotmat(aa).numpy(), mats.numpy(), atol=1e-12)


def test_rotation_gradients_are_finite_at_zero_and_match_finite_differences():
    zero = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    geo.axis_angle_to_rotmat(zero).sum().backward()
    assert torch.isfinite(zero.grad).all()
    aa = torch.from_numpy(random_axis_angle((3,), seed=2, max_angle=3.0)).requires_grad_()
    assert torch.autograd.gradcheck(geo.axis_angle_to_rotmat, (aa,))
    mats = geo.axis_angle_to_rotmat(aa.detach()).requires_grad_()
    assert torch.autograd.gradcheck(geo.rotmat_to_axis_angle, (mats,))
    eye = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1).requires_grad_()
    geo.rotmat_to_axis_angle(eye).sum().backward()
    assert torch.isfinite(eye.grad).all()


def test_rotmat_to_rot6d_layout_is_first_two_columns_row_major():
    rot = torch.arange(9.0).reshape(3, 3)
    assert geo.rotmat_to_rot6d(rot).tolist() == [0.0, 1.0, 3.0, 4.0, 6.0, 7.0]


def test_rot6d_to_rotmat_gram_schmidt_by_hand():
    # columns a1 = (2, 0, 0), a2 = (1, 1, 0) -> b1 = x, b2 = y, b3 = z
    x = torch.tensor([2.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(geo.rot6d_to_rotmat(x), torch.eye(3), rtol=0, atol=1e-7)
    # a1 = (0, 0, 3), a2 = (1, 0, 5) -> b1 = z, b2 = x, b3 = z cross x = y
    x = torch.tensor([0.0, 1.0, 0.0, 0.0, 3.0, 5.0])
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(geo.rot6d_to_rotmat(x), expected, rtol=0, atol=1e-7)


def test_rot6d_round_trip_and_spin_reference():
    mats = torch.from_numpy(Rotation.random(24, random_state=3).as_matrix()).reshape(2, 12, 3, 3)
    torch.testing.assert_close(geo.rot6d_to_rotmat(geo.rotmat_to_rot6d(mats)), mats, rtol=0, atol=1e-12)

    x = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = x.view(-1, 3, 2)  # SPIN utils/geometry.py rot6d_to_rotmat, verbatim maths
    b1 = torch.nn.functional.normalize(v[:, :, 0])
    a2 = v[:, :, 1]
    b2 = torch.nn.functional.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
    spin = torch.stack((b1, b2, torch.cross(b1, b2, dim=1)), dim=-1)
    torch.testing.assert_close(geo.rot6d_to_rotmat(x), spin, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "fn, bad",
    [
        (geo.rot6d_to_rotmat, torch.zeros(4, 9)),
        (geo.rotmat_to_rot6d, torch.zeros(4, 3, 2)),
        (geo.axis_angle_to_rotmat, torch.zeros(4, 4)),
        (geo.rotmat_to_axis_angle, torch.zeros(3)),
        (geo.weak_perspective_to_translation, torch.zeros(2, 4)),
    ],
)
def test_rotation_and_camera_bad_shapes_raise(fn, bad):
    with pytest.raises(ValueError, match=r"expected shape .* found"):
        fn(bad)


# ----------------------------------------------------------------------------- cameras


def test_weak_perspective_to_translation_by_hand():
    cam = torch.tensor([[0.5, 0.1, -0.2], [2.0, 0.0, 0.3]], dtype=torch.float64)
    t = geo.weak_perspective_to_translation(cam)
    expected = [[0.1, -0.2, 10000.0 / (112.0 + 1e-9)], [0.0, 0.3, 10000.0 / (448.0 + 1e-9)]]
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-15)
    t = geo.weak_perspective_to_translation(cam[0], focal_length=1000.0, crop_size=256)
    np.testing.assert_allclose(t.numpy(), [0.1, -0.2, 2000.0 / (128.0 + 1e-9)], rtol=1e-15)


def test_perspective_projection_of_known_points():
    points = torch.tensor([[[0.1, -0.2, 0.0], [1.0, 0.0, 10.0]]], dtype=torch.float64)
    trans = torch.tensor([[0.0, 0.0, 10.0]], dtype=torch.float64)
    center = torch.tensor([[112.0, 100.0]], dtype=torch.float64)
    px = geo.perspective_projection(points, trans, 1000.0, center)
    np.testing.assert_allclose(px.numpy(), [[[122.0, 80.0], [162.0, 100.0]]], atol=1e-12)
    # 90 degrees about z: (x, y, z) -> (-y, x, z); per-batch focal length
    rz = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    px = geo.perspective_projection(points, trans, torch.tensor([500.0], dtype=torch.float64), None, rz)
    np.testing.assert_allclose(px.numpy(), [[[10.0, 5.0], [0.0, 25.0]]], atol=1e-12)


def test_weak_perspective_camera_projects_to_normalised_crop_coordinates():
    # SPIN's weak perspective: a point at depth ~0 lands at s * (X + t) in [-1, 1] crop units.
    cam = torch.tensor([[0.9, 0.05, -0.1]], dtype=torch.float64)
    points = torch.tensor([[[0.3, -0.4, 0.0]]], dtype=torch.float64)
    px = geo.perspective_projection(points, geo.weak_perspective_to_translation(cam), 5000.0)
    expected = 0.9 * (points[..., :2] + cam[:, None, 1:])
    torch.testing.assert_close(px / (224 / 2), expected, rtol=1e-9, atol=1e-12)


def test_crop_camera_to_full_image_by_hand_numpy_and_torch():
    cam = np.array([[0.8, 0.1, -0.05]])
    center, scale = np.array([[600.0, 400.0]]), np.array([2.0])
    expected = [[0.32, 0.4, 0.2 / 0.32 + 0.1, -0.05]]
    np.testing.assert_allclose(geo.crop_camera_to_full_image(cam, center, scale, 1000, 800), expected)
    out = geo.crop_camera_to_full_image(*map(torch.from_numpy, (cam, center, scale)), 1000, 800)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-15)
    with pytest.raises(ValueError, match="scale"):
        geo.crop_camera_to_full_image(cam, center, np.array([2.0, 1.0]), 1000, 800)


def test_full_image_camera_agrees_with_crop_camera_and_uncrop():
    cam, center, scale, res = np.array([0.7, 0.2, -0.3]), np.array([640.0, 310.0]), 1.7, 224
    point_xy = np.array([0.25, -0.6])
    crop_px = geo.denormalize_keypoints(cam[0] * (point_xy + cam[1:]), res)
    image_px = geo.transform_keypoints(crop_px, center, scale, res, invert=True)
    sx, sy, tx, ty = geo.crop_camera_to_full_image(cam[None], center[None], np.array([scale]), 1280, 720)[0]
    full_px = (np.array([sx * (point_xy[0] + tx), sy * (point_xy[1] + ty)]) + 1) * np.array([1280, 720]) / 2
    np.testing.assert_allclose(full_px, image_px, atol=1e-9)


# ----------------------------------------------------------------------------- crops


def test_crop_transform_maps_bbox_centre_and_corners():
    center, scale, res = (300.0, 200.0), 1.0, 224  # box side 200 px: [200, 400] x [100, 300]
    pts = np.array([[300.0, 200.0], [200.0, 100.0], [400.0, 300.0], [250.0, 275.0]])
    out = geo.transform_keypoints(pts, center, scale, res)
    np.testing.assert_allclose(out, [[112, 112], [0, 0], [224, 224], [56, 196]], atol=1e-12)
    np.testing.assert_allclose(geo.transform_keypoints(out, center, scale, res, invert=True), pts, atol=1e-12)
    t = geo.crop_transform_matrix(center, scale, res)
    np.testing.assert_allclose(t, [[1.12, 0, -224], [0, 1.12, -112], [0, 0, 1]], atol=1e-12)


def test_crop_transform_rotation_about_crop_centre():
    # SPIN negates rot: rot=+90 turns an offset (dx, dy) into (dy, -dx) around the crop centre.
    pts = np.array([[300.0, 200.0], [350.0, 200.0], [300.0, 150.0]])
    out = geo.transform_keypoints(pts, (300.0, 200.0), 1.0, 224, rot=90.0)
    np.testing.assert_allclose(out, [[112, 112], [112, 56], [56, 112]], atol=1e-12)


def test_transform_keypoints_keeps_leading_dims():
    pts = np.random.default_rng(0).uniform(0, 500, size=(2, 3, 2))
    out = geo.transform_keypoints(pts, (250.0, 240.0), 1.3, 224)
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out, 224 / 260 * (pts - [250.0, 240.0]) + 112, atol=1e-12)
    with pytest.raises(ValueError, match=r"transform_keypoints.*\(\.\.\., 2\).*\(4, 3\)"):
        geo.transform_keypoints(np.zeros((4, 3)), (0, 0), 1.0, 224)


def test_normalize_keypoints_and_inverse():
    px = np.array([[0.0, 224.0], [112.0, 56.0]])
    np.testing.assert_allclose(geo.normalize_keypoints(px, 224), [[-1, 1], [0, -0.5]])
    np.testing.assert_allclose(geo.denormalize_keypoints(geo.normalize_keypoints(px, 224), 224), px)
    t = geo.normalize_keypoints(torch.from_numpy(px), 224)
    assert isinstance(t, torch.Tensor) and t.tolist() == [[-1, 1], [0, -0.5]]


def test_crop_image_moves_a_pixel_to_the_expected_crop_pixel():
    image = np.zeros((400, 600, 3), np.uint8)
    image[205, 310] = (10, 20, 30)
    crop = geo.crop_image(image, (300.0, 200.0), 224 / 200, 224)  # side 224: shift only
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    ys, xs = np.nonzero(crop.any(-1))
    assert ys.tolist() == [117] and xs.tolist() == [122]
    assert crop[117, 122].tolist() == [10, 20, 30]


def test_crop_image_zero_pads_outside_the_image():
    image = np.full((100, 100, 3), 200, np.uint8)
    crop = geo.crop_image(image, (0.0, 50.0), 0.5, 100)  # box x in [-50, 50]: left half outside
    assert (crop[:, :49] == 0).all() and (crop[:, 51:] == 200).all()


def centroid(img):
    w = img.astype(np.float64)
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()


@pytest.mark.parametrize("scale, rot", [(2.24, 0.0), (4.0, 0.0), (3.1, 0.0), (2.0, 30.0), (0.7, 0.0)])
def test_crop_image_puts_a_blob_where_transform_keypoints_says(scale, rot):
    # A smooth blob keeps its centroid under resampling; a half-pixel slip would show as >= 0.25.
    ys, xs = np.mgrid[:900, :900]
    blob_xy = np.array([399.3, 519.6])
    blob = 250 * np.exp(-((xs - blob_xy[0]) ** 2 + (ys - blob_xy[1]) ** 2) / (2 * 8.0**2))
    center, res = (430.0, 480.0), 224
    crop = geo.crop_image(blob.round().astype(np.uint8)[..., None], center, scale, res, rot=rot)
    assert crop.shape == (res, res, 1)
    expected = geo.transform_keypoints(blob_xy, center, scale, res, rot=rot)
    np.testing.assert_allclose(centroid(crop[..., 0]), expected, atol=0.05)


def test_crop_image_antialiases_when_shrinking():
    # 1-px stripes shrunk 4x average to grey; point sampling would give pure black or white.
    image = np.zeros((800, 800, 3), np.uint8)
    image[:, ::2] = 255
    crop = geo.crop_image(image, (400.0, 400.0), 896 / 200, 224)
    inner = crop[20:-20, 20:-20].astype(int)
    assert np.abs(inner - 127.5).max() <= 1


def test_crop_image_bad_input_raises():
    with pytest.raises(ValueError, match=r"uint8 image, found shape \(10, 10\) dtype uint8"):
        geo.crop_image(np.zeros((10, 10), np.uint8), (5, 5), 1.0, 224)
    with pytest.raises(ValueError, match="dtype float32"):
        geo.crop_image(np.zeros((10, 10, 3), np.float32), (5, 5), 1.0, 224)
    with pytest.raises(ValueError, match="scale must be > 0, found 0.0"):
        geo.crop_image(np.zeros((10, 10, 3), np.uint8), (5, 5), 0.0, 224)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rotations_and_cameras_on_cuda_match_cpu():
    aa = torch.from_numpy(random_axis_angle((8, 24), seed=5))
    for fn in (
        geo.axis_angle_to_rotmat,
        lambda x: geo.rotmat_to_axis_angle(geo.axis_angle_to_rotmat(x)),
        lambda x: geo.rot6d_to_rotmat(geo.rotmat_to_rot6d(geo.axis_angle_to_rotmat(x))),
    ):
        out = fn(aa.cuda())
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), fn(aa), rtol=0, atol=1e-10)
    points, cam = aa[:, :5] + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), aa[:, 0]

    def project(p, c):
        return geo.perspective_projection(p, geo.weak_perspective_to_translation(c), 5000.0)

    torch.testing.assert_close(project(points.cuda(), cam.cuda()).cpu(), project(points, cam))
