"""cemr.models: HMR, VIBE and the VideoMAE-style video encoder against hand-written references.

Tiny sizes keep the file fast: a ResNet-18 of width 8-64 on 64x64 crops, a 4-frame 32x32 video ViT.
`write_mean_params` is shared with test_checkpoints.py.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from cemr.models import HMR, VIBE, Regressor, TemporalEncoder, VideoEncoder, VideoMAEPretrainer
from cemr.models.frozen import freeze
from cemr.models.hmr import create_trunk, load_mean_params, pooled_trunk_features, shared_stages
from cemr.models.prediction import predict_frames, predict_frames_of
from cemr.models.video_encoder import IMAGENET_MEAN, IMAGENET_STD, sinusoid_table, tube_mask, tube_targets
from cemr.safe_io import FileFormatError

TINY_TRUNK = {"trunk": "resnet18", "trunk_kwargs": {"channels": [8, 16, 32, 64]}, "crop_size": 64}
TINY_VIDEO = {"img_size": 32, "patch_size": 16, "num_frames": 4, "tubelet_size": 2, "embed_dim": 24}
TINY_VIDEO |= {"depth": 2, "num_heads": 3}


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) rotations from random unit quaternions (independent of cemr.geometry)."""
    q = rng.normal(size=(n, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    ).transpose(2, 0, 1)


def write_mean_params(path, seed: int = 0) -> dict[str, np.ndarray]:
    """A `smpl_mean_params.npz` in SPIN's layout (pose float32 6D, shape float64, cam float32)."""
    rng = np.random.default_rng(seed)
    rotations = random_rotations(24, rng)
    params = {
        "pose": rotations[:, :, :2].reshape(144).astype(np.float32),  # first two columns, row-major
        "shape": rng.normal(size=10),
        "cam": np.array([0.9, 0.05, 0.2], dtype=np.float32),
    }
    np.savez(path, **params)
    return params


def gram_schmidt_numpy(pose6d: np.ndarray) -> np.ndarray:
    """(N, 6) -> (N, 3, 3), SPIN's rot6d_to_rotmat written out in numpy."""
    a = pose6d.reshape(-1, 3, 2)
    b1 = a[:, :, 0] / np.linalg.norm(a[:, :, 0], axis=1, keepdims=True)
    a2 = a[:, :, 1]
    b2 = a2 - (b1 * a2).sum(1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=2)


@pytest.fixture
def mean_params(tmp_path):
    path = tmp_path / "smpl_mean_params.npz"
    return path, write_mean_params(path)


def tiny_hmr(mean_params_path, seed: int = 0, **kwargs) -> HMR:
    torch.manual_seed(seed)
    return HMR(mean_params_path, **{**TINY_TRUNK, "norm": "group", "dropout": 0.0, **kwargs})


def tiny_vibe(mean_params_path, seed: int = 0, **kwargs) -> VIBE:
    torch.manual_seed(seed)
    return VIBE(
        mean_params_path, **{**TINY_TRUNK, "norm": "group", "dropout": 0.0, "hidden_size": 32, **kwargs}
    )


def assert_proper_rotations(rotmat: torch.Tensor) -> None:
    r = rotmat.reshape(-1, 3, 3).double()
    eye = torch.eye(3, dtype=r.dtype).expand_as(r)
    torch.testing.assert_close(r.transpose(1, 2) @ r, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(len(r), dtype=r.dtype), atol=1e-5, rtol=0)


def fit_steps(model: nn.Module, compute_loss, steps: int = 15, lr: float = 1e-3) -> list[float]:
    """Adam steps on `compute_loss()`; returns the loss before each step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = compute_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------- mean parameters


def test_mean_params_are_read_as_float32_rows(mean_params):
    path, params = mean_params
    loaded = load_mean_params(path)
    assert {k: (tuple(v.shape), v.dtype) for k, v in loaded.items()} == {
        "pose": ((1, 144), torch.float32),
        "shape": ((1, 10), torch.float32),
        "cam": ((1, 3), torch.float32),
    }
    for key in params:
        np.testing.assert_allclose(loaded[key][0].numpy(), params[key].astype(np.float32), rtol=0, atol=0)


def test_mean_params_errors_name_file_and_key(tmp_path):
    missing = tmp_path / "no_cam.npz"
    np.savez(missing, pose=np.zeros(144), shape=np.zeros(10))
    with pytest.raises(FileFormatError, match=r"no_cam\.npz: lacks key 'cam'.*found \['pose', 'shape'\]"):
        load_mean_params(missing)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pose=np.zeros((24, 6)), shape=np.zeros(10), cam=np.zeros(3))
    with pytest.raises(
        FileFormatError, match=r"wrong\.npz: key 'pose' has shape \(24, 6\), expected \(144,\)"
    ):
        load_mean_params(wrong)


# ----------------------------------------------------------------------------- HMR


def test_hmr_output_shapes_and_proper_rotations(mean_params):
    model = tiny_hmr(mean_params[0]).eval()
    out = model(torch.randn(3, 3, 64, 64))
    shapes = {
        k: tuple(getattr(out, k).shape)
        for k in ("rotmat", "betas", "cam", "pose6d", "feature", "head_feature")
    }
    assert shapes == {
        "rotmat": (3, 24, 3, 3),
        "betas": (3, 10),
        "cam": (3, 3),
        "pose6d": (3, 144),
        "feature": (3, 64),
        "head_feature": (3, 1024),
    }
    assert_proper_rotations(out.rotmat)


def test_hmr_is_deterministic_given_a_seed(mean_params):
    images = torch.randn(2, 3, 64, 64)
    a, b = tiny_hmr(mean_params[0], seed=3).eval(), tiny_hmr(mean_params[0], seed=3).eval()
    c = tiny_hmr(mean_params[0], seed=4).eval()
    with torch.no_grad():
        out_a, out_a2, out_b, out_c = a(images), a(images), b(images), c(images)
    assert torch.equal(out_a.rotmat, out_a2.rotmat) and torch.equal(out_a.rotmat, out_b.rotmat)
    assert torch.equal(out_a.head_feature, out_b.head_feature)
    assert not torch.equal(out_a.feature, out_c.feature)


def test_trunk_feature_is_the_spatial_mean_of_the_last_feature_map(mean_params):
    model = tiny_hmr(mean_params[0]).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = model.trunk.maxpool(model.trunk.act1(model.trunk.bn1(model.trunk.conv1(images))))
        for layer in (model.trunk.layer1, model.trunk.layer2, model.trunk.layer3, model.trunk.layer4):
            x = layer(x)
        expected = x.mean(dim=(2, 3))
        torch.testing.assert_close(model.extract_features(images), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(model(images).feature, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "frozen,stages",
    [([], 0), (["trunk.layer1"], 0), (["trunk.conv1"], 1), (["trunk.conv1", "trunk.bn1"], 4)]
    + [(["trunk.conv1", "trunk.bn1", "trunk.layer1", "trunk.layer2"], 6), (["trunk"], 8)],
)
def test_the_frozen_stem_then_the_rest_is_the_forward_pass_bit_for_bit(mean_params, frozen, stages):
    model = tiny_hmr(mean_params[0]).eval()
    freeze(model, frozen, "adapter.frozen")
    assert model.frozen_stages() == stages  # act1 and maxpool hold no weight: frozen with what precedes them
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        whole = model(images)
        for k in range(9):
            maps = model.stem(images, k)
            assert maps.shape[0] == 3 and (k > 0 or torch.equal(maps, images))
            rest = model.forward_from(maps, k)
            assert all(torch.equal(getattr(whole, f), getattr(rest, f)) for f in ("rotmat", "cam", "betas"))
            assert torch.equal(whole.feature, rest.feature)
    model.trunk.set_grad_checkpointing(True)  # its forward runs the stages its own way
    assert model.frozen_stages() == 0


def test_models_predicted_in_one_pass_get_their_own_predictions_bit_for_bit(mean_params):
    source = tiny_hmr(mean_params[0])
    adapted, other = copy.deepcopy(source), tiny_hmr(mean_params[0], seed=5)
    with torch.no_grad():  # as a stream adapts all but the frozen stem and first two stages
        for name in ("layer3", "layer4"):
            for p in getattr(adapted.trunk, name).parameters():
                p.add_(0.01 * torch.randn_like(p))
    assert shared_stages([source, adapted]) == 6 and shared_stages([source, other]) == 0
    assert shared_stages([source, adapted, tiny_vibe(mean_params[0])]) == 0  # not an HMR
    frames = [{"img": torch.randn(3, 64, 64)} for _ in range(5)]
    together = predict_frames_of([source, adapted, other], frames, batch_size=2)
    for model, predicted in zip((source, adapted, other), together, strict=True):
        alone = predict_frames(model, frames, batch_size=2)
        assert set(alone) == set(predicted) and all(np.array_equal(alone[k], predicted[k]) for k in alone)
    assert not np.array_equal(together[0]["pose"], together[1]["pose"])
    with torch.no_grad():
        adapted.trunk.layer1[0].conv1.weight[0, 0, 0, 0] += 1e-6
    assert shared_stages([source, adapted]) == 4


def test_zeroed_head_returns_the_mean_parameters(mean_params):
    path, params = mean_params
    model = tiny_hmr(path).eval()
    for layer in (model.regressor.decpose, model.regressor.decshape, model.regressor.deccam):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    for i in range(2):
        np.testing.assert_array_equal(out.pose6d[i].numpy(), params["pose"])
        np.testing.assert_array_equal(out.betas[i].numpy(), params["shape"].astype(np.float32))
        np.testing.assert_array_equal(out.cam[i].numpy(), params["cam"])
        np.testing.assert_allclose(
            out.rotmat[i].numpy(), gram_schmidt_numpy(params["pose"].reshape(24, 6)), atol=1e-6
        )
    # The mean 6D pose was made from rotations, so decoding it gives those rotations back.
    rotations = random_rotations(24, np.random.default_rng(0))
    np.testing.assert_allclose(out.rotmat[0].numpy(), rotations, atol=1e-6)


def test_regressor_matches_spin_iterative_error_feedback_by_hand(mean_params):
    torch.manual_seed(0)
    regressor = Regressor(feature_dim=5, mean_params=mean_params[0], n_iter=3, dropout=0.0).double()
    for p in regressor.parameters():  # large enough deltas that every iteration matters
        nn.init.normal_(p, std=0.05)
    feature = torch.randn(2, 5, dtype=torch.float64)
    out = regressor(feature)
    w = {
        name: (layer.weight.detach().numpy(), layer.bias.detach().numpy())
        for name, layer in regressor.named_children()
        if isinstance(layer, nn.Linear)
    }
    pose = np.tile(mean_params[1]["pose"], (2, 1)).astype(np.float64)
    shape = np.tile(mean_params[1]["shape"].astype(np.float32), (2, 1)).astype(np.float64)
    cam = np.tile(mean_params[1]["cam"], (2, 1)).astype(np.float64)
    for _ in range(3):
        x = np.concatenate([feature.numpy(), pose, shape, cam], axis=1)
        fc1_out = x @ w["fc1"][0].T + w["fc1"][1]
        h = fc1_out @ w["fc2"][0].T + w["fc2"][1]  # no non-linearity between fc1 and fc2 (SPIN)
        pose = pose + h @ w["decpose"][0].T + w["decpose"][1]
        shape = shape + h @ w["decshape"][0].T + w["decshape"][1]
        cam = cam + h @ w["deccam"][0].T + w["deccam"][1]
    np.testing.assert_allclose(out.pose6d.detach().numpy(), pose, atol=1e-10)
    np.testing.assert_allclose(out.betas.detach().numpy(), shape, atol=1e-10)
    np.testing.assert_allclose(out.cam.detach().numpy(), cam, atol=1e-10)
    # DynaBOA's dynamic-stopping feature (its feature list element 12) is the last iteration's fc1 output.
    np.testing.assert_allclose(out.head_feature.detach().numpy(), fc1_out, atol=1e-10)
    np.testing.assert_allclose(
        out.rotmat.detach().numpy(), gram_schmidt_numpy(pose).reshape(2, 24, 3, 3), atol=1e-10
    )


def test_regressor_starts_from_given_parameters(mean_params):
    regressor = Regressor(feature_dim=4, mean_params=mean_params[0], n_iter=1).eval()
    for layer in (regressor.decpose, regressor.decshape, regressor.deccam):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    init_shape, init_cam = torch.randn(2, 10), torch.randn(2, 3)
    out = regressor(torch.randn(2, 4), init_shape=init_shape, init_cam=init_cam)
    assert torch.equal(out.betas, init_shape) and torch.equal(out.cam, init_cam)
    assert torch.equal(out.pose6d, regressor.init_pose.expand(2, -1))


def test_hmr_rejects_wrong_inputs(mean_params):
    model = tiny_hmr(mean_params[0])
    with pytest.raises(
        ValueError,
        match=r"HMR expects images of shape \(B, 3, 64, 64\) \(crop_size=64\), got \(2, 3, 32, 32\)",
    ):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, 64, 64\).*got \(3, 64, 64\)"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"Regressor expects features of shape \(N, 64\), got \(2, 65\)"):
        model.forward_features(torch.zeros(2, 65))


def test_trunk_norm_choice(mean_params):
    group = create_trunk("resnet18", "group", channels=(8, 16, 32, 64))
    norms = [m for m in group.modules() if isinstance(m, nn.GroupNorm)]
    # stem (64 wide), two per block, four downsamples (layer1 too: the stem is wider than 8)
    assert len(norms) == 1 + 4 * 2 * 2 + 4
    assert all(m.num_groups == 4 for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in group.modules())
    assert not any("running" in k for k in group.state_dict())
    batch = create_trunk("resnet18", "batch", channels=(8, 16, 32, 64))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch.modules()) == len(norms)
    with pytest.raises(ValueError, match=r"trunk norm must be one of \['batch', 'group'\], got 'layer'"):
        create_trunk("resnet18", "layer")
    with pytest.raises(
        ValueError, match="BatchNorm statistics; they cannot initialise a trunk with norm='group'"
    ):
        create_trunk("resnet18", "group", pretrained=True)


def test_hmr_adam_steps_reduce_a_loss_on_a_tiny_batch(mean_params):
    model = tiny_hmr(mean_params[0]).train()
    images = torch.randn(4, 3, 64, 64)
    target_rotmat = (
        torch.from_numpy(random_rotations(4 * 24, np.random.default_rng(1))).float().reshape(4, 24, 3, 3)
    )
    target_betas = torch.randn(4, 10)

    def loss_fn(out):
        return ((out.rotmat - target_rotmat) ** 2).mean() + ((out.betas - target_betas) ** 2).mean()

    losses = fit_steps(model, lambda: loss_fn(model(images)))
    assert losses[-1] < 0.5 * losses[0], losses


# ----------------------------------------------------------------------------- VIBE


def manual_gru(x: np.ndarray, gru: nn.GRU) -> np.ndarray:
    """One-layer GRU over time, x (T, B, F) time-major, with PyTorch's gate equations."""
    w_ih, w_hh = gru.weight_ih_l0.detach().double().numpy(), gru.weight_hh_l0.detach().double().numpy()
    b_ih, b_hh = gru.bias_ih_l0.detach().double().numpy(), gru.bias_hh_l0.detach().double().numpy()
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h = np.zeros((x.shape[1], gru.hidden_size))
    outputs = []
    for x_t in x:
        gi, gh = x_t @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = sigmoid(gi[:, : gru.hidden_size] + gh[:, : gru.hidden_size])
        z = sigmoid(
            gi[:, gru.hidden_size : 2 * gru.hidden_size] + gh[:, gru.hidden_size : 2 * gru.hidden_size]
        )
        n = np.tanh(gi[:, 2 * gru.hidden_size :] + r * gh[:, 2 * gru.hidden_size :])
        h = (1 - z) * n + z * h
        outputs.append(h)
    return np.stack(outputs)


def test_temporal_encoder_is_vibes_gru_relu_linear_residual():
    torch.manual_seed(0)
    encoder = TemporalEncoder(input_size=6, n_layers=1, hidden_size=4, add_linear=True, residual=True)
    x = torch.randn(2, 5, 6)  # B != T, so a batch-first mix-up would show
    gru = manual_gru(x.transpose(0, 1).double().numpy(), encoder.gru).transpose(1, 0, 2)
    w, b = encoder.linear.weight.detach().double().numpy(), encoder.linear.bias.detach().double().numpy()
    expected = np.maximum(gru, 0) @ w.T + b + x.double().numpy()
    np.testing.assert_allclose(encoder(x).detach().numpy(), expected, atol=1e-6)


def test_temporal_encoder_variants():
    plain = TemporalEncoder(input_size=6, n_layers=1, hidden_size=4, add_linear=False, residual=True)
    assert (
        plain.linear is None and plain.output_size == 4 and not plain.residual
    )  # widths differ: no residual
    x = torch.randn(2, 5, 6)
    np.testing.assert_allclose(
        plain(x).detach().numpy(),
        manual_gru(x.transpose(0, 1).double().numpy(), plain.gru).transpose(1, 0, 2),
        atol=1e-6,
    )
    bidirectional = TemporalEncoder(
        input_size=6, n_layers=2, hidden_size=4, add_linear=False, bidirectional=True
    )
    assert tuple(bidirectional.linear.weight.shape) == (6, 8) and bidirectional.output_size == 6
    assert tuple(bidirectional(x).shape) == (2, 5, 6)
    vibe = TemporalEncoder(input_size=2048)  # VIBE's released setting
    assert {k: tuple(v.shape) for k, v in vibe.state_dict().items()} == {
        "gru.weight_ih_l0": (3072, 2048),
        "gru.weight_hh_l0": (3072, 1024),
        "gru.bias_ih_l0": (3072,),
        "gru.bias_hh_l0": (3072,),
        "gru.weight_ih_l1": (3072, 1024),
        "gru.weight_hh_l1": (3072, 1024),
        "gru.bias_ih_l1": (3072,),
        "gru.bias_hh_l1": (3072,),
        "linear.weight": (2048, 1024),
        "linear.bias": (2048,),
    }


def test_vibe_shapes_features_and_causality(mean_params):
    model = tiny_vibe(mean_params[0]).eval()
    images = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        features = model.extract_features(images)
        per_frame = pooled_trunk_features(model.trunk, images[1, 2:3])
        changed = images.clone()
        changed[:, -1] = torch.randn(2, 3, 64, 64)
        out_changed = model(changed)
    assert tuple(out.rotmat.shape) == (2, 4, 24, 3, 3) and tuple(out.betas.shape) == (2, 4, 10)
    assert tuple(out.cam.shape) == (2, 4, 3) and tuple(out.head_feature.shape) == (2, 4, 1024)
    assert torch.equal(out.feature, features) and tuple(features.shape) == (2, 4, 64)
    torch.testing.assert_close(features[1, 2:3], per_frame, atol=1e-6, rtol=0)
    assert_proper_rotations(out.rotmat)
    # The GRU runs forward in time: changing the last frame leaves the earlier predictions alone.
    assert torch.equal(out_changed.rotmat[:, :-1], out.rotmat[:, :-1])
    assert not torch.equal(out_changed.rotmat[:, -1], out.rotmat[:, -1])


def test_vibe_forward_features_matches_regressor_on_encoded_features(mean_params):
    model = tiny_vibe(mean_params[0]).eval()
    features = torch.randn(3, 5, 64)
    with torch.no_grad():
        out = model.forward_features(features)
        flat = model.regressor(model.encoder(features).reshape(15, 64))
    torch.testing.assert_close(out.rotmat.reshape(15, 24, 3, 3), flat.rotmat, atol=0, rtol=0)
    torch.testing.assert_close(out.cam[2, 4], flat.cam[14], atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"VIBE expects features of shape \(B, T, 64\), got \(15, 64\)"):
        model.forward_features(features.reshape(15, 64))
    with pytest.raises(ValueError, match=r"VIBE expects images of shape \(B, T, 3, 64, 64\)"):
        model(torch.zeros(2, 3, 64, 64))


def test_vibe_is_deterministic_and_trains(mean_params):
    images = torch.randn(2, 4, 3, 64, 64)
    a, b = tiny_vibe(mean_params[0], seed=1).eval(), tiny_vibe(mean_params[0], seed=1).eval()
    with torch.no_grad():
        assert torch.equal(a(images).pose6d, b(images).pose6d)
    target = torch.randn(2, 4, 10)
    losses = fit_steps(a.train(), lambda: ((a(images).betas - target) ** 2).mean())
    assert losses[-1] < 0.5 * losses[0], losses


# ----------------------------------------------------------------------------- video encoder


def test_sinusoid_table_matches_videomae_formula():
    n, d = 7, 10
    table = sinusoid_table(n, d)
    expected = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for pos in range(n)])
    expected[:, 0::2] = np.sin(expected[:, 0::2])
    expected[:, 1::2] = np.cos(expected[:, 1::2])
    assert tuple(table.shape) == (1, n, d) and table.dtype == torch.float32
    np.testing.assert_allclose(table[0].numpy(), expected, atol=1e-6)


def reference_videomae_embedding(encoder: VideoEncoder, clip: torch.Tensor) -> torch.Tensor:
    """VideoMAE modeling_finetune.py written out: explicit tubes, attention with (q_bias, 0, v_bias)."""
    p, q, d = encoder.patch_size, encoder.tubelet_size, encoder.embed_dim
    b, _, t, h, w = clip.shape
    proj = encoder.patch_embed.proj
    tokens = []
    for ti in range(t // q):  # token order (t, h, w), w fastest
        for hi in range(h // p):
            for wi in range(w // p):
                tube = clip[:, :, ti * q : (ti + 1) * q, hi * p : (hi + 1) * p, wi * p : (wi + 1) * p]
                tokens.append(torch.einsum("bctyx,dctyx->bd", tube, proj.weight) + proj.bias)
    x = torch.stack(tokens, dim=1) + sinusoid_table(len(tokens), d)
    for block in encoder.blocks:
        attn, heads = block.attn, block.attn.num_heads
        y = nn.functional.layer_norm(x, (d,), block.norm1.weight, block.norm1.bias, 1e-6)
        bias = torch.cat([attn.q_bias, torch.zeros(d), attn.v_bias])
        qkv = (y @ attn.qkv.weight.T + bias).reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        weights = ((qkv[0] * (d // heads) ** -0.5) @ qkv[1].transpose(-2, -1)).softmax(-1)
        x = x + attn.proj((weights @ qkv[2]).transpose(1, 2).reshape(b, -1, d))
        y = nn.functional.layer_norm(x, (d,), block.norm2.weight, block.norm2.bias, 1e-6)
        x = x + block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(y)))
    if encoder.norm is not None:
        return nn.functional.layer_norm(x, (d,), encoder.norm.weight, encoder.norm.bias, 1e-6).mean(1)
    return nn.functional.layer_norm(x.mean(1), (d,), encoder.fc_norm.weight, encoder.fc_norm.bias, 1e-6)


@pytest.mark.parametrize("final_norm", ["norm", "fc_norm"])
def test_video_encoder_matches_the_videomae_reference(final_norm):
    torch.manual_seed(0)
    encoder = VideoEncoder(**TINY_VIDEO, final_norm=final_norm).eval()
    with torch.no_grad():
        for p in encoder.parameters():  # non-trivial biases and norms everywhere
            p.add_(0.1 * torch.randn_like(p))
        clip = torch.randn(2, 3, 4, 32, 32)
        out = encoder(clip)
        assert tuple(out.shape) == (2, 24) and encoder.num_tokens == 8
        torch.testing.assert_close(out, reference_videomae_embedding(encoder, clip), atol=1e-5, rtol=1e-5)


def test_video_encoder_key_names_follow_videomae():
    keys = set(VideoEncoder(**TINY_VIDEO, final_norm="fc_norm").state_dict())
    block = {
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.q_bias",
        "attn.v_bias",
        "attn.proj.weight",
    }
    block |= {
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
    }
    block |= {"mlp.fc2.bias"}
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias", "fc_norm.weight", "fc_norm.bias"}
    expected |= {f"blocks.{i}.{k}" for i in range(2) for k in block}
    assert keys == expected  # no qkv.bias, no stored position table
    pretrain_keys = set(VideoEncoder(**TINY_VIDEO, final_norm="norm").state_dict())
    assert pretrain_keys == (expected - {"fc_norm.weight", "fc_norm.bias"}) | {"norm.weight", "norm.bias"}


def test_video_encoder_is_deterministic_and_checks_its_input():
    torch.manual_seed(5)
    a = VideoEncoder(**TINY_VIDEO).eval()
    torch.manual_seed(5)
    b = VideoEncoder(**TINY_VIDEO).eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(clip), b(clip)) and torch.equal(a(clip), a(clip))
    with pytest.raises(
        ValueError,
        match=r"expects clips of shape \(B, C, T, H, W\) = \(B, 3, 4, 32, 32\), got \(1, 4, 3, 32, 32\)",
    ):
        a(clip.transpose(1, 2))
    with pytest.raises(ValueError, match="final_norm must be 'norm' or 'fc_norm', got 'none'"):
        VideoEncoder(**TINY_VIDEO, final_norm="none")
    with pytest.raises(ValueError, match="img_size 40 must be a multiple of patch_size 16"):
        VideoEncoder(**{**TINY_VIDEO, "img_size": 40})


def test_tube_mask_masks_the_same_patches_in_every_time_slot():
    mask = tube_mask(3, (8, 14, 14), 0.9, generator=torch.Generator().manual_seed(0))
    assert tuple(mask.shape) == (3, 1568) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [1408, 1408, 1408]  # 176 of 196 patches x 8 time slots (FORMATS 10)
    per_slot = mask.reshape(3, 8, 196)
    assert torch.equal(per_slot, per_slot[:, :1].expand(-1, 8, -1))
    assert not torch.equal(per_slot[0, 0], per_slot[1, 0])
    again = tube_mask(3, (8, 14, 14), 0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


@pytest.mark.parametrize("normalize", [True, False])
def test_tube_targets_match_explicit_tubes(normalize):
    torch.manual_seed(0)
    clip = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    targets = tube_targets(clip, patch_size=16, tubelet_size=2, normalize=normalize)
    assert tuple(targets.shape) == (2, 8, 2 * 16 * 16 * 3)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    for b, (ti, hi, wi) in [(0, (0, 0, 0)), (1, (1, 0, 1)), (0, (1, 1, 0))]:
        token = ti * 4 + hi * 2 + wi
        tube = clip[b, :, 2 * ti : 2 * ti + 2, 16 * hi : 16 * hi + 16, 16 * wi : 16 * wi + 16]
        pixels = tube.permute(1, 2, 3, 0).reshape(-1, 3) * std + mean  # (t, h, w) rows, channel columns
        if normalize:
            pixels = (pixels - pixels.mean(0)) / (pixels.std(0, unbiased=True) + 1e-6)
        np.testing.assert_allclose(targets[b, token].numpy(), pixels.reshape(-1).numpy(), atol=1e-10)


def tiny_pretrainer(seed: int = 0) -> VideoMAEPretrainer:
    torch.manual_seed(seed)
    pretrain = {"decoder_embed_dim": 12, "decoder_depth": 1, "decoder_num_heads": 2, "mask_ratio": 0.75}
    return VideoMAEPretrainer.from_encoder(VideoEncoder(**TINY_VIDEO, pretrain=pretrain))


def test_pretrainer_predicts_masked_tubes_and_its_loss_is_the_masked_mse():
    model = tiny_pretrainer()
    clip = torch.randn(2, 3, 4, 32, 32)
    mask = model.make_mask(2, generator=torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [6, 6]  # int(0.75 * 4) = 3 patches x 2 time slots
    prediction = model(clip, mask)
    assert tuple(prediction.shape) == (2, 6, 1536)
    targets = tube_targets(clip, 16, 2)
    expected = torch.stack([((prediction[i] - targets[i][mask[i]]) ** 2).mean() for i in range(2)]).mean()
    torch.testing.assert_close(model.loss(clip, mask), expected, atol=1e-6, rtol=1e-6)
    # Keys of the official pretraining layout.
    keys = set(model.state_dict())
    assert {"encoder_to_decoder.weight", "mask_token", "decoder.norm.weight", "decoder.head.weight"} <= keys
    assert "encoder.norm.weight" in keys and "encoder_to_decoder.bias" not in keys
    assert tuple(model.decoder.head.weight.shape) == (1536, 12) and tuple(model.mask_token.shape) == (
        1,
        1,
        12,
    )


def test_pretrainer_adam_steps_reduce_the_loss():
    model = tiny_pretrainer()
    clip = torch.randn(2, 3, 4, 32, 32)
    mask = model.make_mask(2, generator=torch.Generator().manual_seed(0))
    losses = fit_steps(model, lambda: model.loss(clip, mask), steps=40, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses


def test_pretrainer_needs_the_pretraining_norm_layout():
    with pytest.raises(ValueError, match="build the encoder with final_norm='norm' \\(got 'fc_norm'\\)"):
        VideoMAEPretrainer(VideoEncoder(**TINY_VIDEO, final_norm="fc_norm"), 12, 1, 2)
    with pytest.raises(TypeError, match="decoder_embed_dim"):
        VideoMAEPretrainer.from_encoder(VideoEncoder(**TINY_VIDEO))  # no pretrain settings given


def test_video_encoder_position_table_has_one_row_per_tube():
    encoder = VideoEncoder(**{**TINY_VIDEO, "num_frames": 6, "img_size": 48})
    assert encoder.patch_embed.grid == (3, 3, 3) and encoder.num_tokens == 27
    assert tuple(encoder.pos_embed.shape) == (1, 27, 24) and "pos_embed" not in encoder.state_dict()
    assert math.isclose(encoder.pos_embed[0, 26, 0].item(), math.sin(26.0), abs_tol=1e-6)


# ----------------------------------------------------------------------------- adaptation readiness


@pytest.mark.parametrize("name", ["hmr", "vibe"])
def test_models_run_under_bf16_autocast(mean_params, name):
    model = tiny_hmr(mean_params[0]) if name == "hmr" else tiny_vibe(mean_params[0])
    images = torch.randn(2, 3, 64, 64) if name == "hmr" else torch.randn(1, 3, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
        loss = out.rotmat.float().sum() + out.betas.float().sum() + out.cam.float().sum()
    loss.backward()
    # Pose, shape and camera accumulate on the float32 mean parameters, so they stay float32.
    assert out.rotmat.dtype == out.betas.dtype == out.cam.dtype == torch.float32
    assert_proper_rotations(out.rotmat)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_video_models_run_under_bf16_autocast():
    model = tiny_pretrainer()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(clip, model.make_mask(2, generator=torch.Generator().manual_seed(0)))
        embedding = model.encoder(clip)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and tuple(embedding.shape) == (2, 24)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# learn2learn refreshes a cloned GRU's flat weights with `_apply`, which reads .grad of non-leaf tensors.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor")
@pytest.mark.parametrize("name", ["hmr", "vibe"])
def test_learn2learn_clones_adapt_and_pass_second_order_gradients(mean_params, name):
    import learn2learn as l2l

    model = tiny_hmr(mean_params[0]) if name == "hmr" else tiny_vibe(mean_params[0])
    images = torch.randn(2, 3, 64, 64) if name == "hmr" else torch.randn(1, 3, 3, 64, 64)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    clone = l2l.algorithms.MAML(model, lr=1e-2, first_order=False).clone()
    before = clone(images).betas
    clone.adapt((clone(images).betas ** 2).sum())
    after = clone(images).betas
    assert not torch.allclose(before, after)
    (after**2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())  # the clone moved, not theta


def test_the_video_encoder_takes_clips_of_any_frame_size_at_its_own():
    from cemr.models import VideoMAEPretrainer

    torch.manual_seed(5)
    encoder = VideoEncoder(**TINY_VIDEO).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    bigger = clip.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # 64 px: every pixel 2 x 2
    torch.testing.assert_close(encoder.at_own_resolution(bigger), clip)  # halving averages the 2 x 2
    assert encoder.at_own_resolution(clip) is clip
    with torch.no_grad():
        torch.testing.assert_close(encoder(bigger), encoder(clip))
        decoder = {"decoder_embed_dim": 12, "decoder_depth": 1, "decoder_num_heads": 3}
        pretrainer = VideoMAEPretrainer.from_encoder(encoder, mask_ratio=0.5, **decoder)
        mask = pretrainer.make_mask(2, torch.Generator().manual_seed(0))
        torch.testing.assert_close(pretrainer.loss(bigger, mask), pretrainer.loss(clip, mask))


# ----------------------------------------------------------------------------- the stem's max pooling


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_channels_last_max_pool_is_nn_max_pool_bit_for_bit(dtype):
    """Outputs, gradients and second-order gradients (BOA's MAML) of MaxPool2d equal nn.MaxPool2d's on
    maps full of ties and a NaN, in every window geometry of a ResNet stem, odd sizes included."""
    from cemr.models.pooling import MaxPool2d

    gen = torch.Generator().manual_seed(0)
    for shape, geometry in [
        ((3, 8, 12, 12), (3, 2, 1)),
        ((2, 5, 11, 9), (3, 2, 1)),
        ((2, 4, 8, 8), (2, 2, 0)),
    ]:
        x = torch.randint(0, 3, shape, generator=gen).to(dtype)
        x[0, 0, :2, :2] = float("nan")
        ours, theirs = MaxPool2d(*geometry), nn.MaxPool2d(*geometry)
        with torch.no_grad():
            assert torch.equal(ours(x).nan_to_num(-1), theirs(x).nan_to_num(-1))
            x_cl = x.contiguous(memory_format=torch.channels_last)  # an input's layout is kept
            assert ours(x_cl).stride() == theirs(x_cl).stride() and ours(x).stride() == theirs(x).stride()
        a, b = (x.clone().requires_grad_(True) for _ in range(2))
        out_a, out_b = ours(a), theirs(b)
        assert out_a.is_contiguous() and torch.equal(out_a.nan_to_num(-1), out_b.nan_to_num(-1))
        weight = torch.randn(out_a.shape, generator=gen).to(dtype)
        (ga,) = torch.autograd.grad((out_a.nan_to_num(0) * weight).sum(), a, create_graph=True)
        (gb,) = torch.autograd.grad((out_b.nan_to_num(0) * weight).sum(), b, create_graph=True)
        assert torch.equal(ga, gb)
        assert (ga != 0).sum() > 0
        second = torch.randn(ga.shape, generator=gen).to(dtype)
        probe_a, probe_b = (weight.clone().requires_grad_(True) for _ in range(2))
        (ga,) = torch.autograd.grad((ours(a).nan_to_num(0) * probe_a).sum(), a, create_graph=True)
        (gb,) = torch.autograd.grad((theirs(b).nan_to_num(0) * probe_b).sum(), b, create_graph=True)
        (ha,) = torch.autograd.grad((ga * second).sum(), probe_a)
        (hb,) = torch.autograd.grad((gb * second).sum(), probe_b)
        assert torch.equal(ha, hb)


def test_trunks_pool_in_channels_last_and_train_as_before(mean_params):
    """create_trunk swaps the stem's nn.MaxPool2d; an HMR's prediction and weight gradients are those of
    the same HMR with nn.MaxPool2d put back, to the bit."""
    from cemr.models.pooling import MaxPool2d

    path, _ = mean_params
    ours = tiny_hmr(path)
    assert type(ours.trunk.maxpool) is MaxPool2d
    theirs = tiny_hmr(path)
    theirs.trunk.maxpool = nn.MaxPool2d(3, 2, 1)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (ours, theirs):
        out = model(images)
        loss = out.rotmat.square().sum() + out.betas.square().sum() + out.cam.square().sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_freeze_stops_the_gradient_of_named_submodules_and_refuses_a_missing_one():
    model = nn.Sequential(OrderedDict(stem=nn.Linear(2, 2), head=nn.Linear(2, 1)))
    freeze(model, ["stem"], "backbone.frozen")
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    with pytest.raises(ValueError, match=r"backbone.frozen: Sequential has no submodule 'neck' .*stem, head"):
        freeze(model, ["neck"], "backbone.frozen")
