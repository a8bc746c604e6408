"""Every MiRRo loss against a hand computation; teacher EMA maths; the replay bank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cemr.adapt.teacher import ema_update, make_teacher
from cemr.data.retrieval import ReplayBank, kmeans
from cemr.models import losses
from cemr.models.prediction import BodyPrediction, project_to_crop


def test_keypoint_2d_is_confidence_weighted_mean_square():
    pred = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.5, -0.5]]])
    target = torch.tensor([[[0.1, 0.2, 1.0], [0.0, 1.0, 0.5], [9.0, 9.0, 0.0]]])
    # joint 0: 0.01 + 0.04; joint 1: 0.5 * (1 + 0); joint 2: conf 0 -> nothing; mean over 3 joints x 2 coords
    expected = (0.01 + 0.04 + 0.5 * 1.0) / 6
    assert losses.keypoint_2d(pred, target).item() == pytest.approx(expected, abs=1e-7)


def test_shape_prior_is_mean_squared_norm():
    betas = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    assert losses.shape_prior(betas).item() == pytest.approx((5.0 + 9.0) / 2)


def test_pose_prior_passes_body_axis_angle_to_the_prior():
    seen = {}

    class Recorder(nn.Module):
        def forward(self, pose):
            seen["pose"] = pose
            return pose.sum(-1)

    angle = 0.3
    rot = torch.eye(3).repeat(2, 24, 1, 1)
    rot[:, 5] = torch.tensor(
        [[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]]
    )
    costs = losses.prior_costs(Recorder(), rot)
    assert seen["pose"].shape == (2, 69) and costs.shape == (2,)
    # joint 5 of 24 is body joint 4: axis-angle entries 12..14 = (0.3, 0, 0)
    assert torch.allclose(seen["pose"][0, 12:15], torch.tensor([angle, 0.0, 0.0]), atol=1e-6)
    assert costs.mean().item() == pytest.approx(angle, abs=1e-6)


def test_pose_barrier_is_the_prior_cost_above_the_threshold_and_nothing_below_it():
    class SquaredNorm(nn.Module):  # cost = |body pose|^2 (axis-angle), easy to compute by hand
        def forward(self, pose):
            return (pose**2).sum(-1)

    angles = torch.tensor([0.2, 0.5, 1.0], requires_grad=True)
    rot = torch.eye(3).repeat(3, 24, 1, 1)
    c, s = torch.cos(angles), torch.sin(angles)
    rot[:, 7, 1, 1], rot[:, 7, 1, 2], rot[:, 7, 2, 1], rot[:, 7, 2, 2] = c, -s, s, c
    costs = losses.prior_costs(SquaredNorm(), rot)
    barrier = losses.pose_barrier(costs, threshold=0.3)
    # costs 0.04, 0.25, 1.0: only the last lies above 0.3, by 0.7; mean over the 3 poses
    assert barrier.item() == pytest.approx(0.7 / 3, abs=1e-6)
    barrier.backward()
    assert angles.grad[0].item() == 0 and angles.grad[1].item() == 0  # no pull on plausible poses
    assert angles.grad[2].item() == pytest.approx(2 * 1.0 / 3, abs=1e-5)  # d/da of a^2 / 3
    assert losses.pose_barrier(costs, threshold=2.0).item() == 0.0


def test_motion_consistency_compares_displacements_with_min_confidence():
    pred_now = torch.tensor([[[1.0, 1.0]]])
    pred_before = torch.tensor([[[0.0, 0.0]]])
    target_now = torch.tensor([[[0.5, 0.0, 1.0]]])
    target_before = torch.tensor([[[0.0, 0.0, 0.5]]])
    # predicted motion (1, 1), keypoint motion (0.5, 0); conf min(1, 0.5)
    expected = 0.5 * (0.25 + 1.0) / 2
    assert losses.motion_consistency(
        pred_now, pred_before, target_now, target_before
    ).item() == pytest.approx(expected)


def _prediction(**fields) -> BodyPrediction:
    base = dict(
        rotmat=torch.eye(3).repeat(1, 24, 1, 1),
        betas=torch.zeros(1, 10),
        cam=torch.zeros(1, 3),
        vertices=torch.zeros(1, 4, 3),
        joints=torch.zeros(1, 49, 3),
        keypoints_2d=torch.zeros(1, 49, 2),
        feature=torch.zeros(1, 8),
        head_feature=torch.zeros(1, 8),
    )
    base.update(fields)
    return BodyPrediction(**base)


def test_teacher_consistency_has_dynaboas_weights_over_all_24_rotations_and_detaches_the_teacher():
    student = _prediction(
        betas=torch.ones(1, 10, requires_grad=True), keypoints_2d=torch.full((1, 49, 2), 0.5)
    )
    teacher_betas = torch.zeros(1, 10, requires_grad=True)
    teacher = _prediction(betas=teacher_betas, joints=torch.full((1, 49, 3), 0.2))
    rot = torch.eye(3).repeat(1, 24, 1, 1)
    rot[0, 0] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    teacher.rotmat = rot
    loss = losses.teacher_consistency(student, teacher)
    # 5 x 2D + 5 x 3D + 0.001 x betas + rotations: two of the 24 x 9 entries differ by 2
    expected = 5 * 0.25 + 5 * 0.04 + 0.001 * 1.0 + 8.0 / (24 * 9)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert teacher_betas.grad is None


def test_joints_3d_is_hip_centred_and_visibility_weighted():
    target = torch.zeros(1, 24, 4)
    target[0, 2, :3] = torch.tensor([1.0, 0.0, 0.0])
    target[0, 3, :3] = torch.tensor([-1.0, 0.0, 0.0])
    target[..., 3] = 1.0
    target[0, 10, 3] = 0.0
    pred = target[..., :3].clone() + torch.tensor([5.0, 5.0, 5.0])  # a translated copy: zero after centring
    pred[0, 0] += torch.tensor([0.0, 0.3, 0.0])
    pred[0, 10] += torch.tensor([7.0, 0.0, 0.0])  # invisible: ignored
    assert losses.joints_3d(pred, target).item() == pytest.approx(0.09 / (24 * 3), abs=1e-8)


def test_smpl_parameters_only_on_labelled_samples():
    pred_rot = torch.eye(3).repeat(2, 24, 1, 1)
    gt_rot = pred_rot.clone()
    gt_rot[0, 3, 0, 0] = 0.0  # one entry off by 1 in sample 0
    gt_rot[1] += 5.0  # sample 1 has no label
    pred_betas, gt_betas = torch.zeros(2, 10), torch.zeros(2, 10)
    gt_betas[0, 0] = 2.0
    pose, betas = losses.smpl_parameters(pred_rot, pred_betas, gt_rot, gt_betas, torch.tensor([1.0, 0.0]))
    assert pose.item() == pytest.approx(1.0 / (24 * 9))
    assert betas.item() == pytest.approx(4.0 / 10)
    none = losses.smpl_parameters(pred_rot, pred_betas, gt_rot, gt_betas, torch.zeros(2))
    assert none[0].item() == 0.0 and none[1].item() == 0.0


def test_video_alignment_shape_consistency_and_smoothness():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[1.0, 1.0]])
    assert losses.video_alignment(a, b).item() == pytest.approx(1 - 1 / math.sqrt(2))
    betas = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    assert losses.shape_consistency(betas).item() == pytest.approx((1.0 + 0.0) / 2)  # var (1, 0), mean
    t = torch.arange(5, dtype=torch.float32)
    joints = torch.stack([t**2, torch.zeros(5), torch.zeros(5)], dim=-1)[:, None]  # x = t^2: acceleration 2
    assert losses.smoothness(joints).item() == pytest.approx(4.0)  # squared
    assert losses.smoothness(joints[:, :, :] * 0 + 3.0).item() == 0.0
    assert losses.smoothness(joints[:2]).item() == 0.0  # fewer than 3 frames: no acceleration


def test_emitted_smoothness_is_the_squared_velocity_or_acceleration_after_the_emitted_frames():
    def frame(x):  # (1, 24, 3): every joint at x, hips included, plus a fixed pose offset
        offsets = torch.arange(72, dtype=torch.float32).reshape(1, 24, 3) / 100
        offsets[:, 2:4] = 0
        return offsets + torch.tensor([x, 0.0, 0.0])

    now = frame(5.0).requires_grad_(True)
    assert losses.emitted_smoothness(now, [], order=1).item() == 0.0  # nothing emitted yet
    assert losses.emitted_smoothness(now, [frame(1.0)], order=2).item() == 0.0  # fewer than two
    # hip-centred, so a translation of the whole body is neither velocity nor acceleration
    for order in (1, 2):
        value = losses.emitted_smoothness(now, [frame(1.0), frame(3.0)], order=order).item()
        assert value == pytest.approx(0.0, abs=1e-10)
    bent = frame(0.0)
    bent[0, 10, 1] += 0.3  # one joint moved 0.3 m in the newest frame, on 1 of 24 joints
    bent.requires_grad_(True)
    assert losses.emitted_smoothness(bent, [frame(0.0)], order=1).item() == pytest.approx(0.09 / 24)
    still = frame(0.0)
    still[0, 10, 1] += 0.1  # the joint was moving 0.1 m a frame: extrapolated 0.2, it is at 0.3
    loss = losses.emitted_smoothness(bent, [frame(0.0), still], order=2)
    assert loss.item() == pytest.approx(0.01 / 24)
    loss.backward()
    assert bent.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        losses.emitted_smoothness(bent, [], order=3)


def test_projection_to_crop_equals_weak_perspective_for_a_point_at_the_origin_depth():
    cam = torch.tensor([[0.8, 0.1, -0.2]])
    point = torch.tensor([[[0.3, -0.4, 0.0]]])
    # at depth t_z = 2 f / (res s), u = f (x + tx) / t_z / (res / 2) = s (x + tx)
    uv = project_to_crop(point, cam, 5000.0, 112)
    assert torch.allclose(uv, torch.tensor([[[0.8 * 0.4, 0.8 * -0.6]]]), atol=1e-6)


def test_ema_update_maths_and_buffers():
    student = nn.BatchNorm1d(2)
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.copy_(torch.tensor([3.0, 5.0]))
        student.running_mean.copy_(torch.tensor([7.0, 8.0]))
    ema_update(teacher, student, momentum=0.1)  # teacher weight was 1
    assert torch.allclose(teacher.weight, torch.tensor([0.1 + 0.9 * 3.0, 0.1 + 0.9 * 5.0]))
    assert torch.equal(teacher.running_mean, torch.tensor([7.0, 8.0]))
    with pytest.raises(ValueError, match="momentum"):
        ema_update(teacher, student, 1.5)
    with pytest.raises(ValueError, match="teacher has 2 parameters, the student 3"):
        ema_update(teacher, _three_parameters(), 0.5)


def test_ema_update_leaves_a_weight_the_student_does_not_train_bit_for_bit():
    student = nn.Linear(100, 100)
    teacher = make_teacher(student)
    student.bias.requires_grad_(False)  # frozen (adapter.frozen): equal in both, as a stream keeps it
    frozen = teacher.bias.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    for _ in range(3):
        ema_update(teacher, student, momentum=0.999)
    assert torch.equal(teacher.bias, frozen)
    rounded = frozen.clone().mul_(0.999).add_(frozen, alpha=0.001)
    assert not torch.equal(rounded, frozen)  # what averaging it with itself would have done
    assert not torch.equal(teacher.weight, student.weight - 1.0)


def _three_parameters() -> nn.Module:
    holder = nn.Module()
    holder.a, holder.b, holder.c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    return holder


def test_ema_update_is_bitwise_the_per_tensor_formula():
    """The foreach update does the per-tensor arithmetic m * teacher + (1 - m) * student exactly."""
    torch.manual_seed(0)
    student, teacher = (
        nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3)),
        nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3)),
    )
    expected = [
        t.detach().clone().mul_(0.3).add_(s.detach(), alpha=0.7)
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True)
    ]
    ema_update(teacher, student, momentum=0.3)
    assert all(torch.equal(t, e) for t, e in zip(teacher.parameters(), expected, strict=True))


def test_kmeans_separates_blobs_and_bank_retrieves_from_the_nearest_cluster():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.05, size=(20, 3)) for c in (0.0, 5.0, 10.0)])
    feats = torch.from_numpy(blobs).float()
    centres, assign = kmeans(feats, 3, seed=1)
    for i in range(3):
        assert len(set(assign[20 * i : 20 * (i + 1)].tolist())) == 1
    assert sorted(centres[:, 0].round().tolist()) == [0.0, 5.0, 10.0]
    bank = ReplayBank(centres, assign)
    picks = bank.retrieve(torch.full((3,), 9.7), 5, torch.Generator().manual_seed(0))
    assert all(40 <= i < 60 for i in picks)
    again = ReplayBank.build(feats, 3, seed=1)
    assert torch.equal(again.assignment, assign)


def test_replay_bank_round_trip(tmp_path):
    bank = ReplayBank(torch.randn(4, 3), torch.tensor([0, 1, 2, 3, 3]))
    bank.save(tmp_path / "bank.npz")
    back = ReplayBank.load(tmp_path / "bank.npz")
    assert torch.equal(back.centres, bank.centres) and torch.equal(back.assignment, bank.assignment)
    with pytest.raises(ValueError, match="no features"):
        kmeans(torch.zeros(0, 3), 2)


def test_replay_cache_key_holds_checkpoint_split_clusters_and_seed(tmp_path):
    from cemr.adapt.run import replay_cache_path
    from tests.conftest import compose_config

    def path(split, *overrides):
        cfg = compose_config("adapt", [f"paths.cache_dir={tmp_path}", *overrides])
        return replay_cache_path(cfg, split)

    base = path(tmp_path / "seed0" / "source_train.npz")
    assert base.parent == tmp_path / "replay" and base.name.endswith("_k64_seed0.npz")
    assert path(tmp_path / "seed0" / "source_train.npz") == base  # stable
    others = [
        path(tmp_path / "seed1" / "source_train.npz"),  # same file name, another dataset
        path(tmp_path / "seed0" / "source_train.npz", "seed=1"),
        path(tmp_path / "seed0" / "source_train.npz", "adapter.replay.clusters=8"),
        path(tmp_path / "seed0" / "source_train.npz", "training.checkpoint=/elsewhere/model.ckpt"),
    ]
    assert len({base, *others}) == 5
