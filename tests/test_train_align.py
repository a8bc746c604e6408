"""The projection head P learned with the source model (training.align.joint_weight > 0): the loss it
adds to SourceModule, where its gradient goes, and train_source end to end on a tiny benchmark."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import default_collate

from cemr.body import load_body_model
from cemr.data.clips import ClipDataset
from cemr.data.datamodule import CEMRDataModule
from cemr.data.prepare import prepare_assets
from cemr.data.synthetic import build_benchmark
from cemr.models import load_checkpoint
from cemr.models.losses import labelled_objective
from cemr.models.prediction import decode
from cemr.train.module import SourceModule
from cemr.train.run import train_source
from tests.conftest import compose_config
from tests.test_train_vibe import (
    CROP,
    LOSS_WEIGHTS,
    SEQ_LEN,
    TINY_BENCHMARK,
    TINY_IMAGES_AND_ENCODER,
    tiny_hmr,
)

WEIGHT = 0.7


@pytest.fixture(scope="module")
def source(synthetic_body_dir, tmp_path_factory):
    """source_train of a tiny synthetic benchmark: 2 tracks of 6 frames."""
    prepared = build_benchmark(
        tmp_path_factory.mktemp("bench") / "bench", synthetic_body_dir, **TINY_BENCHMARK
    )
    return CEMRDataModule(
        prepared, "source_train", "target_test", crop_size=CROP, batch_size=8, seed=3
    ).source


def test_source_module_adds_the_weighted_alignment_of_its_clips(source, synthetic_body_dir):
    body = load_body_model(synthetic_body_dir, "neutral")
    model = tiny_hmr(synthetic_body_dir / "smpl_mean_params.npz")
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 5)
    training = SimpleNamespace(
        loss_weights=SimpleNamespace(**LOSS_WEIGHTS), align=SimpleNamespace(joint_weight=WEIGHT)
    )
    module = SourceModule(model, body, training, focal_length=5000.0, crop_size=CROP, align_head=head)
    frames = default_collate([source[i] for i in range(4)])
    clips = ClipDataset(source, SEQ_LEN, stride=2)
    targets = torch.randn(2, 5)
    batch = {
        "frames": frames,
        "clips": {"img": torch.stack([clips[0]["img"], clips[1]["img"]]), "target": targets},
    }
    model.eval()  # no dropout, so the loss can be recomputed

    loss = module.training_step(batch, 0)

    with torch.no_grad():
        pred = decode(model(frames["img"]), body, 5000.0, CROP)
        supervised, _ = labelled_objective(pred, frames, training.loss_weights)
        cosines = []
        for c in range(2):  # one clip at a time, frame by frame
            features = torch.stack(
                [model.extract_features(clips[c]["img"][:, t][None])[0] for t in range(SEQ_LEN)]
            )
            cosines.append(torch.nn.functional.cosine_similarity(head(features.mean(0)), targets[c], dim=0))
        expected = supervised + WEIGHT * (1 - torch.stack(cosines)).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)

    # Its gradient reaches P and, through the clips' features, the trunk; the optimiser holds both.
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    trained = {id(p) for p in module.trained_parameters()}
    assert id(head.weight) in trained and all(id(p) in trained for p in model.parameters())


def test_without_a_head_the_optimiser_trains_the_model_weights_in_order(source, synthetic_body_dir):
    body = load_body_model(synthetic_body_dir, "neutral")
    model = tiny_hmr(synthetic_body_dir / "smpl_mean_params.npz")
    module = SourceModule(model, body, SimpleNamespace(), focal_length=5000.0, crop_size=CROP)
    assert [id(p) for p in module.trained_parameters()] == [id(p) for p in model.parameters()]


def tiny_train_config(tmp_path, *overrides):
    prepare = [f"dataset.prepare.{k}={v}" for k, v in TINY_BENCHMARK.items()]
    return compose_config(
        "train",
        [
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.checkpoint_dir={tmp_path / 'checkpoints'}",
            "backbone=hmr",
            "backbone.trunk=resnet18",
            "+backbone.trunk_kwargs.channels=[8,8,16,16]",
            f"backbone.crop_size={CROP}",
            "backbone.dropout=0.0",
            *prepare,
            *TINY_IMAGES_AND_ENCODER,
            "training.max_epochs=3",
            "training.batch_size=8",
            "training.videomae.max_epochs=1",
            "training.curve=null",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            *overrides,
        ],
        tmp_path / "out",
    )


def alignment(checkpoint, cfg) -> torch.Tensor:
    """1 - cos(P(mean trunk features), E_video) of each source clip, recomputed from the saved files."""
    model = checkpoint.model.eval()
    head = torch.nn.Linear(16, 24)
    head.load_state_dict(checkpoint.extra["align_head"])
    encoder = load_checkpoint(cfg.training.video_encoder_checkpoint).model.eval()
    clips = default_collate(list(ClipDataset(CEMRDataModule.from_config(cfg.dataset).source, SEQ_LEN, 2)))
    frames = clips["img"].transpose(1, 2)
    with torch.no_grad():
        features = model.extract_features(frames.flatten(0, 1)).unflatten(0, frames.shape[:2]).mean(1)
        return 1 - torch.nn.functional.cosine_similarity(head(features), encoder(clips["img"]))


@pytest.mark.slow
def test_train_source_learns_p_with_the_model(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    joint_cfg = tiny_train_config(
        tmp_path / "joint", f"training.align.joint_weight={WEIGHT}", "training.align.clips_per_step=2"
    )
    prepare_assets(joint_cfg)
    train_source(joint_cfg)
    joint = load_checkpoint(joint_cfg.training.checkpoint)
    out = caplog.text
    assert f"projection head P: learned with the model on 4 source clips (weight {WEIGHT})" in out
    logged = re.search(r"P \(learned with the model\): alignment 1 - cos = ([\d.]+) on 4 source clips", out)
    assert logged, out
    # The saved P and trunk give the alignment the run printed.
    assert alignment(joint, joint_cfg).mean().item() == pytest.approx(float(logged.group(1)), abs=1e-4)
    assert "projection head P: alignment 1 - cos" not in out  # no fit afterwards

    # The same run with P fitted afterwards: the alignment term changed the trunk.
    fitted_cfg = tiny_train_config(tmp_path / "fitted")
    prepare_assets(fitted_cfg)
    train_source(fitted_cfg)
    fitted = load_checkpoint(fitted_cfg.training.checkpoint)
    trunk = [
        (k, v)
        for k, v in joint.model.state_dict().items()
        if k.startswith("trunk.") and v.is_floating_point()
    ]
    other = fitted.model.state_dict()
    assert any(not torch.equal(v, other[k]) for k, v in trunk)


def test_joint_weight_is_refused_for_sequence_models_and_below_zero(tmp_path):
    from cemr.train.run import joint_alignment

    cfg = tiny_train_config(tmp_path, "training.align.joint_weight=-1")
    with pytest.raises(ValueError, match=r"training.align.joint_weight must be >= 0, got -1"):
        joint_alignment(cfg, torch.nn.Identity(), None, None)
    cfg = tiny_train_config(tmp_path, "training.align.joint_weight=0.5", "backbone.name=vibe_small")
    model = SimpleNamespace(seq_len=SEQ_LEN)
    with pytest.raises(ValueError, match=r"P is learned with single-frame models only; vibe_small"):
        joint_alignment(cfg, model, None, None)
