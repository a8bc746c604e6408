"""`backbone.weights`: released SPIN / DynaBOA / VIBE files, fabricated here in their key layouts, load
into the configured backbone; files that do not fit are refused with what did not fit."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cemr.models import CheckpointError
from cemr.models.checkpoints import cemr_key_to_spin
from cemr.models.foreign import build_backbone, build_video_encoder, model_config, weights_format
from tests.conftest import compose_config


@pytest.fixture
def backbone(parts):
    _, _, mean_params = parts
    node = compose_config("adapt", ["backbone=hmr_small"]).backbone
    return OmegaConf.merge(node, {"mean_params": str(mean_params)})


def released_layout(model: torch.nn.Module, path, prefix: str = "module.") -> dict:
    """The model's weights as SPIN / DynaBOA save them: dict['model'] in SPIN's key names."""
    state = {prefix + cemr_key_to_spin(k): v.clone() for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": {}}, path)
    return state


def test_dynaboa_layout_loads_into_the_configured_backbone(backbone, tmp_path):
    torch.manual_seed(3)
    released = build_backbone(backbone)
    for p in released.parameters():
        p.data.normal_()
    released_layout(released, tmp_path / "basemodel.pt")
    built = build_backbone(OmegaConf.merge(backbone, {"weights": str(tmp_path / "basemodel.pt")}))
    expected = released.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in built.state_dict().items())
    assert "weights" not in model_config(
        OmegaConf.merge(backbone, {"weights": "x", "weights_format": "spin"})
    )


def test_the_format_follows_the_backbone_unless_named(backbone):
    assert weights_format(backbone) == "dynaboa"  # GroupNorm, as DynaBOA's basemodel.pt
    assert weights_format(OmegaConf.merge(backbone, {"norm": "batch"})) == "spin"
    assert weights_format(compose_config("adapt", ["backbone=vibe"]).backbone) == "vibe"
    assert weights_format(OmegaConf.merge(backbone, {"weights_format": "spin"})) == "spin"
    with pytest.raises(ValueError, match="weights_format must be auto or one of"):
        weights_format(OmegaConf.merge(backbone, {"weights_format": "hmr"}))


def test_a_file_that_does_not_fit_is_refused_with_what_did_not_fit(backbone, tmp_path):
    narrower = build_backbone(OmegaConf.merge(backbone, {"trunk_kwargs": {"channels": [16, 32, 64, 128]}}))
    released_layout(narrower, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"does not fit backbone=hmr_small:\n.*mis-shaped"):
        build_backbone(OmegaConf.merge(backbone, {"weights": str(tmp_path / "other.pt")}))
    with pytest.raises(FileNotFoundError, match="backbone.weights: .*absent.pt not found"):
        build_backbone(OmegaConf.merge(backbone, {"weights": str(tmp_path / "absent.pt")}))


def test_released_videomae_weights_are_the_video_encoder_and_need_no_pretraining(tmp_path):
    from cemr.adapt.plan import Plan
    from cemr.adapt.run import checkpoints_needed
    from cemr.train.run import ensure_video_encoder

    cfg = compose_config("adapt", ["adapter.levels=3", "adapter.clip.enabled=true"])  # E_video is its
    torch.manual_seed(5)
    released = build_video_encoder(cfg.video_encoder)
    for p in released.parameters():
        p.data.normal_()
    state = {f"encoder.{k}": v for k, v in released.state_dict().items()}  # VideoMAE pretraining layout
    torch.save({"model": state, "epoch": 799}, tmp_path / "checkpoint-799.pth")
    cfg.video_encoder.weights = str(tmp_path / "checkpoint-799.pth")
    cfg.training.video_encoder_checkpoint = str(tmp_path / "absent.ckpt")  # would be pretrained if needed
    encoder = ensure_video_encoder(cfg)
    expected = released.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in encoder.state_dict().items())
    assert "video_encoder_checkpoint" not in checkpoints_needed(cfg, Plan.from_config(cfg.adapter))
    assert "weights" not in model_config(cfg.video_encoder)  # what a checkpoint stores


def test_a_videomae_file_that_does_not_fit_or_a_p_of_another_encoder_is_refused(tmp_path):
    from cemr.adapt.run import projection_head

    node = compose_config("adapt", []).video_encoder
    wider = build_video_encoder(OmegaConf.merge(node, {"embed_dim": 96, "num_heads": 2}))
    torch.save({"model": wider.state_dict()}, tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match=r"does not fit video_encoder=tiny:\n.*mis-shaped"):
        build_video_encoder(OmegaConf.merge(node, {"weights": str(tmp_path / "wider.pth")}))
    with pytest.raises(FileNotFoundError, match="video_encoder.weights: .*absent.pth not found"):
        build_video_encoder(OmegaConf.merge(node, {"weights": str(tmp_path / "absent.pth")}))
    head = torch.nn.Linear(256, 192)
    assert projection_head(head.state_dict(), build_video_encoder(node), "tiny").out_features == 192
    with pytest.raises(ValueError, match="P maps to 192-d video features, but video_encoder=small gives 96"):
        projection_head(head.state_dict(), wider, "small")
