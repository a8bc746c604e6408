import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cemr.body.joints import H36M17_NAMES
from cemr.evaluation import metrics, protocol


def random_joints(n=6, j=14, seed=0):
    return np.random.default_rng(seed).normal(size=(n, j, 3))


def similar_copy(x, seed=1):
    """s R x + t per frame with random proper rotations."""
    rots = Rotation.random(len(x), random_state=seed).as_matrix()
    rng = np.random.default_rng(seed)
    scales, trans = rng.uniform(0.5, 2.0, size=(len(x), 1, 1)), rng.normal(size=(len(x), 1, 3))
    return scales * np.einsum("nij,nkj->nki", rots, x) + trans


def reference_procrustes(pred, gt):
    """Independent: Kabsch rotation from scipy (proper by construction), then optimal scale."""
    out = []
    for p, g in zip(pred, gt, strict=True):
        x, y = p - p.mean(0), g - g.mean(0)
        rot = Rotation.align_vectors(y, x)[0].as_matrix()  # y ~ R x
        rx = x @ rot.T
        out.append((rx * y).sum() / (x * x).sum() * rx + g.mean(0))
    return np.stack(out)


def test_mpjpe_and_pve_by_hand():
    gt = np.zeros((2, 2, 3))
    pred = np.array([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    np.testing.assert_allclose(metrics.mpjpe(pred, gt), [2.5, 1.5], rtol=1e-15)
    np.testing.assert_allclose(metrics.pve(pred + 7.0, gt + 7.0), [2.5, 1.5], rtol=1e-15)


def test_pa_mpjpe_is_zero_for_a_similar_copy():
    gt = random_joints()
    np.testing.assert_allclose(metrics.pa_mpjpe(similar_copy(gt), gt), 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics.similarity_procrustes(similar_copy(gt), gt), gt, atol=1e-6)


def test_pa_mpjpe_does_not_undo_a_reflection():
    gt = random_joints()
    mirrored = similar_copy(gt) * np.array([-1.0, 1.0, 1.0])
    err = metrics.pa_mpjpe(mirrored, gt)
    assert (err > 0.1).all()
    expected = np.linalg.norm(reference_procrustes(mirrored, gt) - gt, axis=-1).mean(-1)
    np.testing.assert_allclose(err, expected, atol=1e-6)


def test_pa_mpjpe_matches_independent_implementation():
    gt, pred = random_joints(seed=2), random_joints(seed=3)
    aligned = metrics.similarity_procrustes(pred, gt)
    np.testing.assert_allclose(aligned, reference_procrustes(pred, gt), atol=1e-6)
    expected = np.linalg.norm(aligned - gt, axis=-1).mean(-1)
    np.testing.assert_allclose(metrics.pa_mpjpe(pred, gt), expected, rtol=1e-12)


def test_accel_error_by_hand_with_visibility():
    # joint 0 moves in x through 0, 1, 3, 2, 5: accelerations 1, -3, 4
    # joint 1 moves in y through 0, 0, 2, 0, 0: accelerations 2, -4, 2
    pred = np.zeros((5, 2, 3))
    pred[:, 0, 0] = [0, 1, 3, 2, 5]
    pred[:, 1, 1] = [0, 0, 2, 0, 0]
    gt = np.zeros_like(pred) + np.arange(5.0)[:, None, None]  # constant velocity: zero acceleration
    np.testing.assert_allclose(metrics.accel_error(pred, gt), [1.5, 3.5, 3.0], rtol=1e-15)
    np.testing.assert_allclose(metrics.accel_error(pred, gt, np.array([1, 1, 1, 0, 1])), [1.5])
    np.testing.assert_allclose(metrics.accel_error(pred, gt, np.array([1, 1, 1, 1, 0], bool)), [1.5, 3.5])
    np.testing.assert_allclose(metrics.accel_error(pred, gt, np.array([0, 1, 1, 1, 1])), [3.5, 3.0])
    out = metrics.accel_error(torch.from_numpy(pred), torch.from_numpy(gt), torch.tensor([1, 1, 1, 1, 0]))
    np.testing.assert_allclose(out.numpy(), [1.5, 3.5])


@pytest.mark.parametrize("name", ["mpjpe", "pa_mpjpe", "pve", "accel_error", "similarity_procrustes"])
def test_numpy_and_torch_agree_and_keep_their_type(name):
    fn = getattr(metrics, name)
    pred, gt = random_joints(seed=4), random_joints(seed=5)
    out_np = fn(pred, gt)
    out_t = fn(torch.from_numpy(pred), torch.from_numpy(gt))
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    assert out_t.dtype == torch.float64
    np.testing.assert_allclose(out_t.numpy(), out_np, rtol=0, atol=1e-12)
    out_32 = fn(torch.from_numpy(pred).float(), torch.from_numpy(gt).float())
    assert out_32.dtype == torch.float32
    np.testing.assert_allclose(out_32.numpy(), out_np, atol=1e-5)


def test_torch_pa_mpjpe_is_differentiable():
    pred = torch.from_numpy(random_joints(seed=6)).requires_grad_()
    gt = torch.from_numpy(random_joints(seed=7))
    assert torch.autograd.gradcheck(lambda p: metrics.pa_mpjpe(p, gt), (pred,))
    exact = gt.clone().requires_grad_()
    metrics.mpjpe(exact, gt).sum().backward()  # zero distance: zero, not NaN, gradient
    assert (exact.grad == 0).all()


@pytest.mark.parametrize("name", ["mpjpe", "pa_mpjpe", "pve", "accel_error", "similarity_procrustes"])
@pytest.mark.parametrize(
    "pred_shape, gt_shape", [((4, 14, 3), (4, 13, 3)), ((4, 14, 2), (4, 14, 2)), ((14, 3), (14, 3))]
)
def test_bad_shapes_raise(name, pred_shape, gt_shape):
    with pytest.raises(ValueError, match=r"\(N, J, 3\), found .*" + str(pred_shape[0])):
        getattr(metrics, name)(np.zeros(pred_shape), np.zeros(gt_shape))


def test_bad_types_and_accel_inputs_raise():
    with pytest.raises(TypeError, match="found ndarray and Tensor"):
        metrics.mpjpe(np.zeros((2, 3, 3)), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"at least 3 frames, found pred shape \(2, 3, 3\)"):
        metrics.accel_error(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match=r"visible must have shape \(5,\).*found \(4,\)"):
        metrics.accel_error(np.zeros((5, 3, 3)), np.zeros((5, 3, 3)), np.ones(4))


# ----------------------------------------------------------------------------- protocol

LSP14_AS_H36M = [
    "rankle",
    "rknee",
    "rhip",
    "lhip",
    "lknee",
    "lankle",
    "rwrist",
    "relbow",
    "rshoulder",
    "lshoulder",
    "lelbow",
    "lwrist",
    "neck",
    "headtop",
]


def random_meshes(n=4, v=50, seed=0):
    rng = np.random.default_rng(seed)
    regressor = rng.uniform(size=(17, v))
    return rng.normal(size=(n, v, 3)), regressor / regressor.sum(1, keepdims=True)


def test_joints14_pelvis_centred_by_hand():
    verts, reg = random_meshes()
    out = protocol.joints14(verts, reg)
    assert out.shape == (4, 14, 3)
    for n in range(4):
        joints17 = reg @ verts[n]
        expected = [joints17[H36M17_NAMES.index(name)] - joints17[0] for name in LSP14_AS_H36M]
        np.testing.assert_allclose(out[n], expected, atol=1e-12)


def test_joints14_hips_centred_and_same_pa_mpjpe():
    verts, reg = random_meshes(seed=1)
    pred = verts + np.random.default_rng(2).normal(scale=0.1, size=verts.shape)
    pelvis, hips = protocol.joints14(verts, reg), protocol.joints14(verts, reg, center="hips")
    np.testing.assert_allclose(hips[:, 2] + hips[:, 3], 0.0, atol=1e-12)
    np.testing.assert_allclose(hips, pelvis - (pelvis[:, 2:3] + pelvis[:, 3:4]) / 2, atol=1e-12)
    by_center = {
        c: (protocol.joints14(pred, reg, c), protocol.joints14(verts, reg, c)) for c in ("pelvis", "hips")
    }
    pa = {c: metrics.pa_mpjpe(*pair) for c, pair in by_center.items()}
    mp = {c: metrics.mpjpe(*pair) for c, pair in by_center.items()}
    np.testing.assert_allclose(pa["pelvis"], pa["hips"], atol=1e-12)
    assert (np.abs(mp["pelvis"] - mp["hips"]) > 1e-4).all()


def test_joints14_numpy_torch_and_mixed_regressor_agree():
    verts, reg = random_meshes(seed=3)
    out_np = protocol.joints14(verts, reg, "hips")
    out_t = protocol.joints14(torch.from_numpy(verts).float(), reg, "hips")
    assert out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=1e-5)
    np.testing.assert_allclose(protocol.joints14(verts, torch.from_numpy(reg)), protocol.joints14(verts, reg))


def test_joints14_bad_input_raises():
    verts, reg = random_meshes()
    with pytest.raises(ValueError, match=r"center must be one of \('pelvis', 'hips'\), found 'root'"):
        protocol.joints14(verts, reg, center="root")
    with pytest.raises(ValueError, match=r"\(17, V\) with V = 50 vertices, found \(17, 49\)"):
        protocol.joints14(verts, reg[:, :49])
    with pytest.raises(ValueError, match=r"vertices must have shape \(N, V, 3\), found \(50, 3\)"):
        protocol.joints14(verts[0], reg)


def test_score_frames_units_and_pve_mesh():
    gt, reg = random_meshes(seed=4)
    shifted = gt + np.array([0.006, 0.0, 0.008])  # 10 mm everywhere, removed by root centring
    scores = protocol.score_frames(shifted, gt, reg)
    np.testing.assert_allclose(scores["pve"], 10.0, rtol=1e-12)
    np.testing.assert_allclose(scores["mpjpe"], 0.0, atol=1e-9)
    np.testing.assert_allclose(scores["pa_mpjpe"], 0.0, atol=1e-6)
    scores = protocol.score_frames(gt, shifted, reg, gt_vertices_pve_m=gt - [0.0, 0.02, 0.0])
    np.testing.assert_allclose(scores["pve"], 20.0, rtol=1e-12)
    pred = gt + np.random.default_rng(5).normal(scale=0.05, size=gt.shape)
    scores = protocol.score_frames(pred, gt, reg, center="hips")
    pj, gj = protocol.joints14(pred, reg, "hips"), protocol.joints14(gt, reg, "hips")
    np.testing.assert_allclose(scores["mpjpe"], 1000 * metrics.mpjpe(pj, gj), rtol=1e-12)
    np.testing.assert_allclose(scores["pa_mpjpe"], 1000 * metrics.pa_mpjpe(pj, gj), rtol=1e-12)


def test_summarize_means_and_rejects_empty():
    out = protocol.summarize({"mpjpe": np.array([1.0, 2.0, 6.0]), "pve": torch.tensor([4.0])})
    assert out == {"mpjpe": 3.0, "pve": 4.0} and all(type(v) is float for v in out.values())
    with pytest.raises(ValueError, match="'accel_error' has no frames"):
        protocol.summarize({"accel_error": np.zeros(0)})


def test_pa_mpjpe_under_autocast_runs_in_full_precision():
    pred, gt = (
        torch.from_numpy(random_joints(seed=8)).float(),
        torch.from_numpy(random_joints(seed=9)).float(),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = metrics.pa_mpjpe(pred, gt)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, metrics.pa_mpjpe(pred, gt), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_and_protocol_on_cuda_match_cpu():
    verts, reg = random_meshes(seed=10)
    pred = verts + np.random.default_rng(11).normal(scale=0.05, size=verts.shape)
    cpu = protocol.score_frames(pred, verts, reg)
    cuda = protocol.score_frames(torch.from_numpy(pred).cuda(), torch.from_numpy(verts).cuda(), reg)
    for name, values in cpu.items():
        assert cuda[name].is_cuda
        np.testing.assert_allclose(cuda[name].cpu().numpy(), values, atol=1e-9)
