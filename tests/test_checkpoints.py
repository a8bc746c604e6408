"""cemr.models.checkpoints: foreign layouts built with their real key names and shapes (FORMATS 6, 10).

The SPIN / DynaBOA trunks come from torchvision's ResNet-50 (an implementation independent of
timm), so a passing load also proves the layouts compute the same features.
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from cemr.models import (
    HMR,
    VIBE,
    CheckpointError,
    VideoEncoder,
    VideoMAEPretrainer,
    load_checkpoint,
    load_dynaboa_checkpoint,
    load_spin_checkpoint,
    load_vibe_checkpoint,
    load_videomae_checkpoint,
    save_checkpoint,
)
from cemr.models.checkpoints import cemr_key_to_spin, spin_key_to_cemr, videomae_hf_to_original
from cemr.safe_io import UnsafePickleError
from tests.test_models import TINY_TRUNK, TINY_VIDEO, write_mean_params


@pytest.fixture
def mean_params(tmp_path):
    path = tmp_path / "smpl_mean_params.npz"
    write_mean_params(path)
    return path


def randomised(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The module's state dict with every float tensor perturbed (norm weights away from 1, stats set)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator) * 0.05
            value = value.abs() + 0.5 + noise if key.endswith("running_var") else value + noise
        state[key] = value.clone()
    return state


def spin_head(feature_dim: int = 2048, seed: int = 0) -> dict[str, torch.Tensor]:
    """SPIN's regressor tensors with their real shapes (FORMATS 6.1)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "fc1.weight": (1024, feature_dim + 144 + 10 + 3),
        "fc1.bias": (1024,),
        "fc2.weight": (1024, 1024),
        "fc2.bias": (1024,),
        "decpose.weight": (144, 1024),
        "decpose.bias": (144,),
        "decshape.weight": (10, 1024),
        "decshape.bias": (10,),
        "deccam.weight": (3, 1024),
        "deccam.bias": (3,),
        "init_pose": (1, 144),
        "init_shape": (1, 10),
        "init_cam": (1, 3),
    }
    return {k: torch.randn(s, generator=generator) * 0.01 for k, s in shapes.items()}


def torchvision_resnet50(norm: str) -> nn.Module:
    """torchvision's ResNet-50 without fc, BatchNorm (SPIN) or GroupNorm(4, C) (DynaBOA's gn_helper)."""
    norm_layer = nn.BatchNorm2d if norm == "batch" else (lambda channels: nn.GroupNorm(4, channels))
    model = torchvision.models.resnet50(norm_layer=norm_layer)
    model.fc = nn.Identity()
    return model


def write_spin_like(path, norm: str, prefix: str = "", seed: int = 0) -> tuple[dict, nn.Module]:
    """A SPIN model_checkpoint.pt (norm=batch) or DynaBOA basemodel.pt (norm=group) in the real layout."""
    reference = torchvision_resnet50(norm)
    trunk = randomised(reference, seed)
    reference.load_state_dict(trunk)
    state = {f"{prefix}{k}": v for k, v in {**trunk, **spin_head(seed=seed)}.items()}
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 7}, path)
    return state, reference.eval()


def resnet50_hmr(mean_params, norm: str) -> HMR:
    torch.manual_seed(0)
    return HMR(mean_params, trunk="resnet50", norm=norm, crop_size=64).eval()


# ----------------------------------------------------------------------------- SPIN / DynaBOA


def test_spin_checkpoint_loads_into_hmr_and_computes_the_same_features(tmp_path, mean_params):
    state, reference = write_spin_like(tmp_path / "model_checkpoint.pt", "batch")
    assert tuple(state["fc1.weight"].shape) == (1024, 2205) and "layer4.2.bn3.running_var" in state
    model = resnet50_hmr(mean_params, "batch")
    report = load_spin_checkpoint(tmp_path / "model_checkpoint.pt", model, strict=True)
    assert report.ok and len(report.loaded) == len(state) == len(model.state_dict())
    for key in (
        "conv1.weight",
        "layer3.2.conv2.weight",
        "layer2.0.downsample.1.running_mean",
        "bn1.running_var",
    ):
        assert torch.equal(model.state_dict()[f"trunk.{key}"], state[key])
    for key in ("fc1.weight", "deccam.bias", "init_pose", "init_shape", "init_cam"):
        assert torch.equal(model.state_dict()[f"regressor.{key}"], state[key])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.extract_features(images), reference(images), atol=1e-5, rtol=1e-5)


def test_dynaboa_checkpoint_with_module_prefix_and_groupnorm(tmp_path, mean_params):
    path = tmp_path / "basemodel.pt"
    state, reference = write_spin_like(path, "group", prefix="module.", seed=1)
    assert all(k.startswith("module.") for k in state) and not any("running" in k for k in state)
    assert "module.layer1.0.downsample.1.weight" in state  # the downsample norm is a GroupNorm too
    model = resnet50_hmr(mean_params, "group")
    report = load_dynaboa_checkpoint(path, model, strict=True)
    assert report.ok and len(report.loaded) == len(state)
    assert torch.equal(
        model.trunk.layer1[0].downsample[1].weight, state["module.layer1.0.downsample.1.weight"]
    )
    assert torch.equal(model.regressor.decpose.weight, state["module.decpose.weight"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.extract_features(images), reference(images), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_norm_mismatch_between_file_and_model_is_reported(tmp_path, mean_params):
    write_spin_like(tmp_path / "spin.pt", "batch")
    write_spin_like(tmp_path / "dynaboa.pt", "group")
    group_model = resnet50_hmr(mean_params, "group")
    report = load_spin_checkpoint(tmp_path / "spin.pt", group_model)
    # 53 BatchNorms in a ResNet-50, each with running_mean, running_var, num_batches_tracked.
    assert len(report.unexpected) == 53 * 3 and not report.missing and not report.mismatched
    assert ("trunk.bn1.running_mean", (64,)) in report.unexpected
    with pytest.raises(
        CheckpointError, match=r"missing in file:   trunk\.bn1\.running_mean \(model \(64,\)\)"
    ):
        load_dynaboa_checkpoint(tmp_path / "dynaboa.pt", resnet50_hmr(mean_params, "batch"), strict=True)


def test_mis_shaped_keys_are_reported_and_strict_loading_changes_nothing(tmp_path, mean_params):
    state, _ = write_spin_like(tmp_path / "spin.pt", "batch")
    torch.manual_seed(0)
    small = HMR(mean_params, **TINY_TRUNK, norm="batch")
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_spin_checkpoint(tmp_path / "spin.pt", small, strict=True)
    message = str(error.value)
    assert "strict loading failed, nothing was loaded" in message
    assert "mis-shaped:        regressor.fc1.weight file (1024, 2205) vs model (1024, 221)" in message
    assert (
        "mis-shaped:        trunk.layer1.0.conv1.weight file (64, 64, 1, 1) vs model (8, 64, 3, 3)" in message
    )
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())
    report = load_spin_checkpoint(tmp_path / "spin.pt", small)  # non-strict: what fits is copied
    assert ("regressor.fc1.weight", (1024, 2205), (1024, 221)) in report.mismatched
    assert torch.equal(small.regressor.fc2.weight, state["fc2.weight"])
    assert torch.equal(small.trunk.conv1.weight, state["conv1.weight"])  # the 64-wide stem fits
    assert torch.equal(small.regressor.fc1.weight, before["regressor.fc1.weight"])
    assert not report.ok and "regressor.fc2.weight" in report.loaded
    # Every ResNet-18 name exists in ResNet-50; its extra conv3 / bn3 and blocks are unexpected.
    assert report.missing == []
    assert ("trunk.layer4.2.conv3.weight", (2048, 512, 1, 1)) in report.unexpected


def test_spin_key_mapping_round_trips(mean_params):
    keys = list(HMR(mean_params, **TINY_TRUNK).state_dict())
    spin = [cemr_key_to_spin(k) for k in keys]
    assert "fc1.weight" in spin and "layer1.0.bn1.weight" in spin and "init_cam" in spin
    assert [spin_key_to_cemr(k) for k in spin] == keys


def test_a_file_without_the_model_entry_is_refused(tmp_path, mean_params):
    torch.save({"state_dict": spin_head()}, tmp_path / "lightning.ckpt")
    with pytest.raises(
        CheckpointError, match=r"lightning\.ckpt: no state dict under 'model' \(SPIN.*\['state_dict'\]"
    ):
        load_spin_checkpoint(tmp_path / "lightning.ckpt", HMR(mean_params, **TINY_TRUNK))
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(
        CheckpointError, match=r"tensor\.pt: expected a dict \(SPIN model_checkpoint\.pt\), found Tensor"
    ):
        load_spin_checkpoint(tmp_path / "tensor.pt", HMR(mean_params, **TINY_TRUNK))


# ----------------------------------------------------------------------------- VIBE


def vibe_generator_state(num_vertices: int = 50) -> dict[str, torch.Tensor]:
    """VIBE's released generator (2-layer GRU 2048 -> 1024, linear, residual) with SMPL buffers.

    The SMPL buffers are skipped by the loader, so a small vertex count stands in for SMPL's.
    """
    generator = torch.Generator().manual_seed(3)
    gru = {}
    for layer, input_size in (("l0", 2048), ("l1", 1024)):
        gru[f"encoder.gru.weight_ih_{layer}"] = (3072, input_size)
        gru[f"encoder.gru.weight_hh_{layer}"] = (3072, 1024)
        gru[f"encoder.gru.bias_ih_{layer}"] = (3072,)
        gru[f"encoder.gru.bias_hh_{layer}"] = (3072,)
    shapes = {**gru, "encoder.linear.weight": (2048, 1024), "encoder.linear.bias": (2048,)}
    state = {k: torch.randn(s, generator=generator) * 0.01 for k, s in shapes.items()}
    state |= {f"regressor.{k}": v for k, v in spin_head(seed=4).items()}
    v = num_vertices
    smpl = {"v_template": (v, 3), "shapedirs": (v, 3, 10), "posedirs": (207, v * 3), "J_regressor": (24, v)}
    smpl |= {"J_regressor_extra": (9, v), "lbs_weights": (v, 24)}
    state |= {f"regressor.smpl.{k}": torch.randn(s, generator=generator) for k, s in smpl.items()}
    state["regressor.smpl.parents"] = torch.tensor(
        [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
    )
    state["regressor.smpl.faces_tensor"] = torch.randint(0, v, (96, 3), generator=generator)
    return state


def test_vibe_generator_loads_and_skips_the_smpl_buffers(tmp_path, mean_params):
    state = vibe_generator_state()
    checkpoint = {"epoch": 30, "gen_state_dict": state, "performance": 81.2, "gen_optimizer": {}}
    checkpoint |= {
        "disc_motion_state_dict": {"gru.weight_ih_l0": torch.zeros(3, 2)},
        "disc_motion_optimizer": {},
    }
    torch.save(checkpoint, tmp_path / "vibe_model_wo_3dpw.pth.tar")
    torch.manual_seed(0)
    model = VIBE(mean_params, trunk="resnet50", norm="batch", crop_size=64)
    report = load_vibe_checkpoint(tmp_path / "vibe_model_wo_3dpw.pth.tar", model, strict=True)
    assert report.ok and len(report.ignored) == 8 and "regressor.smpl.posedirs" in report.ignored
    assert len(report.loaded) == 10 + 13
    weights = model.state_dict()
    for key in (
        "encoder.gru.weight_hh_l1",
        "encoder.gru.bias_ih_l0",
        "encoder.linear.weight",
        "regressor.deccam.bias",
    ):
        assert torch.equal(weights[key], state[key])
    assert "ignored on purpose: regressor.smpl.v_template" in str(report)


@pytest.mark.slow
def test_spin_then_vibe_give_a_complete_vibe(tmp_path, mean_params):
    """VIBE's own recipe: SPIN's trunk for the features, the generator for GRU and regressor."""
    spin_state, reference = write_spin_like(tmp_path / "spin.pt", "batch")
    torch.save({"gen_state_dict": vibe_generator_state()}, tmp_path / "vibe.pth.tar")
    torch.manual_seed(0)
    model = VIBE(mean_params, trunk="resnet50", norm="batch", crop_size=64).eval()
    spin_report = load_spin_checkpoint(tmp_path / "spin.pt", model, strict=True)
    vibe_report = load_vibe_checkpoint(tmp_path / "vibe.pth.tar", model, strict=True)
    assert set(spin_report.loaded) | set(vibe_report.loaded) == set(model.state_dict())
    images = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model.extract_features(images)[0], reference(images[0]), atol=1e-5, rtol=1e-5
        )
    with pytest.raises(
        CheckpointError, match=r"spin\.pt: no state dict under 'gen_state_dict' \(VIBE generator\)"
    ):
        load_vibe_checkpoint(tmp_path / "spin.pt", model)
    with pytest.raises(TypeError, match=r"submodules \('encoder', 'regressor'\); HMR lacks \['encoder'\]"):
        load_vibe_checkpoint(tmp_path / "vibe.pth.tar", HMR(mean_params, **TINY_TRUNK))


# ----------------------------------------------------------------------------- VideoMAE


def source_encoder(final_norm: str, seed: int = 0) -> VideoEncoder:
    torch.manual_seed(seed)
    encoder = VideoEncoder(**TINY_VIDEO, final_norm=final_norm)
    encoder.load_state_dict(randomised(encoder, seed))
    return encoder.eval()


def hf_layout(original: dict[str, torch.Tensor], prefix: str = "videomae.") -> dict[str, torch.Tensor]:
    """Original VideoMAE names -> HF transformers', as HF's convert_videomae_to_pytorch.py does."""
    renames = [
        ("patch_embed.proj", "embeddings.patch_embeddings.projection"),
        ("attn.proj", "attention.output.dense"),
        ("attn.q_bias", "attention.attention.q_bias"),
        ("attn.v_bias", "attention.attention.v_bias"),
        ("norm1", "layernorm_before"),
        ("norm2", "layernorm_after"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ]
    converted = {}
    for key, value in original.items():
        match = re.match(r"(decoder\.)?blocks\.(\d+)\.attn\.qkv\.weight", key)
        if match:
            layer = (
                f"decoder.decoder_layers.{match.group(2)}"
                if match.group(1)
                else f"{prefix}encoder.layer.{match.group(2)}"
            )
            width = value.shape[1]
            for i, part in enumerate(("query", "key", "value")):
                converted[f"{layer}.attention.attention.{part}.weight"] = value[i * width : (i + 1) * width]
            continue
        new = key
        for old, hf in renames:
            new = new.replace(old, hf)
        if new.startswith("decoder.blocks."):
            new = new.replace("decoder.blocks.", "decoder.decoder_layers.")
        elif new.startswith("blocks."):
            new = prefix + new.replace("blocks.", "encoder.layer.")
        elif new.startswith(("norm.", "embeddings.")):
            new = prefix + new.replace("norm.", "layernorm.")
        elif new.startswith("head."):
            new = new.replace("head.", "classifier.")
        converted[new] = value
    return converted


def test_finetuned_videomae_in_deepspeed_wrapper_loads_and_skips_the_classifier(tmp_path):
    source = source_encoder("fc_norm")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state |= {"module.head.weight": torch.randn(400, 24), "module.head.bias": torch.randn(400)}
    torch.save({"module": state}, tmp_path / "finetuned.pth")
    target = source_encoder("fc_norm", seed=1)
    report = load_videomae_checkpoint(tmp_path / "finetuned.pth", target, strict=True)
    assert report.ok and report.ignored == ["head.weight", "head.bias"]
    assert torch.equal(target.blocks[1].attn.v_bias, source.blocks[1].attn.v_bias)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(clip), source(clip))


def test_pretraining_videomae_with_args_loads_into_encoder_and_pretrainer(tmp_path):
    torch.manual_seed(0)
    pretrain = {"decoder_embed_dim": 12, "decoder_depth": 1, "decoder_num_heads": 2}
    source = VideoMAEPretrainer.from_encoder(source_encoder("norm"), **pretrain)
    state = source.state_dict()
    assert {"encoder.norm.weight", "encoder.blocks.0.attn.qkv.weight", "decoder.blocks.0.attn.q_bias"} <= set(
        state
    )
    args = argparse.Namespace(model="pretrain_videomae_base_patch16_224", mask_ratio=0.9, input_size=224)
    torch.save(
        {"model": state, "optimizer": {}, "epoch": 799, "scaler": {}, "args": args},
        tmp_path / "checkpoint-799.pth",
    )
    encoder = source_encoder("norm", seed=1)
    report = load_videomae_checkpoint(tmp_path / "checkpoint-799.pth", encoder, strict=True)
    assert report.ok and "encoder_to_decoder.weight" in report.ignored and "mask_token" in report.ignored
    assert torch.equal(encoder.norm.bias, state["encoder.norm.bias"])
    torch.manual_seed(1)
    pretrainer = VideoMAEPretrainer.from_encoder(VideoEncoder(**TINY_VIDEO), **pretrain)
    report = load_videomae_checkpoint(tmp_path / "checkpoint-799.pth", pretrainer, strict=True)
    assert report.ok and len(report.loaded) == len(state)
    assert torch.equal(pretrainer.mask_token, source.mask_token)
    # The same file into a fine-tuned-layout encoder: its norm and fc_norm differ, and that is reported.
    report = load_videomae_checkpoint(tmp_path / "checkpoint-799.pth", source_encoder("fc_norm"))
    assert report.unexpected == [("norm.weight", (24,)), ("norm.bias", (24,))]
    assert report.missing == [("fc_norm.weight", (24,)), ("fc_norm.bias", (24,))]


def test_hf_videomae_layout_is_converted_by_concatenating_q_k_v(tmp_path):
    source = source_encoder("fc_norm")
    original = dict(source.state_dict()) | {
        "head.weight": torch.randn(174, 24),
        "head.bias": torch.randn(174),
    }
    hf = hf_layout(original)
    assert "videomae.encoder.layer.1.attention.attention.key.weight" in hf and "classifier.bias" in hf
    assert not any("qkv" in k for k in hf)
    assert videomae_hf_to_original(hf).keys() == original.keys()
    torch.save(hf, tmp_path / "pytorch_model.bin")
    target = source_encoder("fc_norm", seed=2)
    report = load_videomae_checkpoint(tmp_path / "pytorch_model.bin", target, strict=True)
    assert report.ok and "HF transformers layout" in report.source
    expected_qkv = torch.cat(
        [hf[f"videomae.encoder.layer.0.attention.attention.{p}.weight"] for p in ("query", "key", "value")]
    )
    assert torch.equal(target.blocks[0].attn.qkv.weight, expected_qkv)
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(clip), source(clip))


def test_hf_pretraining_layout_with_decoder_round_trips_into_the_pretrainer(tmp_path):
    torch.manual_seed(0)
    pretrain = {"decoder_embed_dim": 12, "decoder_depth": 2, "decoder_num_heads": 2}
    source = VideoMAEPretrainer.from_encoder(source_encoder("norm"), **pretrain)
    original = {
        k.removeprefix("encoder."): v for k, v in source.state_dict().items()
    }  # HF keeps no 'encoder.'
    hf = hf_layout(original)
    assert (
        "decoder.decoder_layers.1.attention.attention.value.weight" in hf
        and "videomae.layernorm.weight" in hf
    )
    torch.save({"model": hf}, tmp_path / "hf_pretrain.bin")
    torch.manual_seed(1)
    target = VideoMAEPretrainer.from_encoder(VideoEncoder(**TINY_VIDEO), **pretrain)
    assert load_videomae_checkpoint(tmp_path / "hf_pretrain.bin", target, strict=True).ok
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_videomae_problems_are_reported(tmp_path):
    source = source_encoder("fc_norm")
    state = dict(source.state_dict())
    state["pos_embed"] = torch.zeros(1, 8, 24)  # a learnable-position variant
    state["blocks.0.attn.qkv.weight"] = torch.zeros(96, 24)
    del state["blocks.1.mlp.fc2.bias"]
    torch.save(state, tmp_path / "odd.pth")
    report = load_videomae_checkpoint(tmp_path / "odd.pth", source_encoder("fc_norm", seed=1))
    assert report.unexpected == [("pos_embed", (1, 8, 24))]
    assert report.mismatched == [("blocks.0.attn.qkv.weight", (96, 24), (72, 24))]
    assert report.missing == [("blocks.1.mlp.fc2.bias", (24,))]
    text = str(report)
    assert "1 missing, 1 unexpected, 1 mis-shaped" in text and "odd.pth (VideoMAE)" in text
    hf = hf_layout(dict(source.state_dict()))
    del hf["videomae.encoder.layer.1.attention.attention.key.weight"]
    torch.save(hf, tmp_path / "broken_hf.bin")
    with pytest.raises(
        CheckpointError,
        match=r"broken_hf\.bin: HF VideoMAE layer 'encoder\.layer\.1' lacks attention\.attention\.key\.weight"
        r"$",
    ):
        load_videomae_checkpoint(tmp_path / "broken_hf.bin", source_encoder("fc_norm"))


@pytest.mark.slow
def test_vit_b_matches_the_public_checkpoint_layout():
    encoder = VideoEncoder(final_norm="fc_norm")  # ViT-B/16 defaults, 16 frames at 224
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert len(shapes) + 2 == 162  # the fine-tuned file also holds head.weight / head.bias
    assert shapes["patch_embed.proj.weight"] == (768, 3, 2, 16, 16)
    assert shapes["blocks.11.attn.qkv.weight"] == (2304, 768) and shapes["blocks.11.attn.q_bias"] == (768,)
    assert shapes["blocks.0.mlp.fc1.weight"] == (3072, 768) and shapes["blocks.0.mlp.fc2.weight"] == (
        768,
        3072,
    )
    assert encoder.num_tokens == 1568
    pretrainer = VideoMAEPretrainer(
        VideoEncoder(), decoder_embed_dim=384, decoder_depth=4, decoder_num_heads=6
    )
    shapes = {k: tuple(v.shape) for k, v in pretrainer.state_dict().items()}
    assert shapes["decoder.head.weight"] == (1536, 384) and shapes["encoder_to_decoder.weight"] == (384, 768)
    assert shapes["mask_token"] == (1, 1, 384) and "decoder.blocks.3.attn.v_bias" in shapes
    assert "decoder.blocks.4.norm1.weight" not in shapes and "decoder_pos_embed" not in shapes


# ----------------------------------------------------------------------------- safety


class NotAWeight:
    """Any class outside torch's weights-only allow-list."""


LOADERS = {
    "spin": load_spin_checkpoint,
    "dynaboa": load_dynaboa_checkpoint,
    "vibe": load_vibe_checkpoint,
    "videomae": load_videomae_checkpoint,
}


@pytest.mark.parametrize("loader", LOADERS)
def test_files_that_need_arbitrary_code_are_refused(tmp_path, mean_params, loader):
    path = tmp_path / f"{loader}.pt"
    torch.save({"model": {}, "gen_state_dict": {}, "payload": NotAWeight()}, path)
    with pytest.raises(
        UnsafePickleError,
        match=rf"{loader}\.pt: the checkpoint asks for the global 'tests\.test_checkpoints\.NotAWeight'",
    ):
        LOADERS[loader](
            path, VIBE(mean_params, **TINY_TRUNK) if loader != "videomae" else VideoEncoder(**TINY_VIDEO)
        )
    with pytest.raises(UnsafePickleError, match="NotAWeight"):
        load_checkpoint(path)


def test_argparse_namespace_is_allowed_for_videomae_only(tmp_path, mean_params):
    torch.save(
        {"model": spin_head(feature_dim=64), "args": argparse.Namespace(lr=1.0)}, tmp_path / "with_args.pt"
    )
    with pytest.raises(UnsafePickleError, match="argparse.Namespace"):
        load_spin_checkpoint(tmp_path / "with_args.pt", HMR(mean_params, **TINY_TRUNK))
    report = load_videomae_checkpoint(tmp_path / "with_args.pt", VideoEncoder(**TINY_VIDEO))
    assert len(report.unexpected) == 13 and not report.loaded


# ----------------------------------------------------------------------------- CEMR checkpoints


def model_configs(mean_params) -> dict[str, dict]:
    trunk = {**TINY_TRUNK, "trunk_kwargs": {"channels": [8, 16, 32, 64]}, "norm": "group"}
    return {
        "hmr": {"_target_": "cemr.models.HMR", "mean_params": str(mean_params), **trunk},
        "vibe": {"_target_": "cemr.models.VIBE", "mean_params": str(mean_params), "hidden_size": 16, **trunk},
        "video": {"_target_": "cemr.models.VideoEncoder", **TINY_VIDEO, "pretrain": {"decoder_depth": 1}},
    }


@pytest.mark.parametrize("name", ["hmr", "vibe", "video"])
def test_cemr_checkpoint_round_trip(tmp_path, mean_params, name):
    from hydra.utils import instantiate

    config = model_configs(mean_params)[name]
    torch.manual_seed(0)
    model = instantiate(config).eval()
    projection = nn.Linear(3, 2)
    path = save_checkpoint(
        tmp_path / "out" / "model.ckpt",
        model,
        OmegaConf.create(config),
        extra={"projection": projection.state_dict(), "step": 12},
    )
    assert path.is_file() and not path.with_name("model.ckpt.tmp").exists()
    torch.manual_seed(1)
    loaded = load_checkpoint(path)
    assert type(loaded.model) is type(model) and loaded.config == config and loaded.report.ok
    assert loaded.extra["step"] == 12 and torch.equal(
        loaded.extra["projection"]["weight"], projection.weight.detach()
    )
    state = model.state_dict()
    assert loaded.model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    inputs = {"hmr": (2, 3, 64, 64), "vibe": (1, 3, 3, 64, 64), "video": (1, 3, 4, 32, 32)}[name]
    x = torch.randn(inputs)
    with torch.no_grad():
        a, b = model(x), loaded.model.eval()(x)
    assert torch.equal(a if name == "video" else a.rotmat, b if name == "video" else b.rotmat)


def test_cemr_checkpoint_overrides_and_errors(tmp_path, mean_params):
    config = model_configs(mean_params)["hmr"]
    model = HMR(**{k: v for k, v in config.items() if k != "_target_"})
    path = save_checkpoint(tmp_path / "hmr.ckpt", model, config)
    moved = tmp_path / "moved" / "smpl_mean_params.npz"
    moved.parent.mkdir()
    write_mean_params(moved, seed=1)
    loaded = load_checkpoint(path, mean_params=str(moved))
    assert loaded.config["mean_params"] == str(moved)
    assert torch.equal(
        loaded.model.regressor.init_pose, model.regressor.init_pose
    )  # weights win over the file
    with pytest.raises(ValueError, match="config for HMR has no '_target_'"):
        save_checkpoint(tmp_path / "x.ckpt", model, {"mean_params": str(mean_params)})
    with pytest.raises(ValueError, match="config '_target_' cemr.models.VIBE does not build a HMR"):
        save_checkpoint(tmp_path / "x.ckpt", model, {**config, "_target_": "cemr.models.VIBE"})
    write_spin_like(tmp_path / "spin.pt", "batch")
    with pytest.raises(
        CheckpointError,
        match=r"spin\.pt: not a CEMR checkpoint \(expected format 'cemr-checkpoint-v1', found None\)",
    ):
        load_checkpoint(tmp_path / "spin.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*absent.ckpt"):
        load_checkpoint(tmp_path / "absent.ckpt")
