"""Source training of the VIBE-style sequence regressor: clips with stacked labels, clip batches in
SourceModule, the loader train_source picks, features for the projection head, and adaptation refused."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from cemr.body import load_body_model
from cemr.data.clips import CLIP_LABELS, ClipDataset
from cemr.data.datamodule import CEMRDataModule
from cemr.data.prepare import prepare_assets
from cemr.data.synthetic import build_benchmark
from cemr.models import HMR, VIBE, load_checkpoint
from cemr.models.losses import labelled_objective
from cemr.models.prediction import decode, predict_frames
from cemr.models.vibe import causal_windows
from cemr.train.module import SourceModule
from cemr.train.run import clip_features, source_dataloader, train_source
from cemr.train.run import run as train_run
from tests.conftest import TINY, compose_config

CROP, SEQ_LEN = 32, 4
TINY_TRUNK = {"trunk": "resnet18", "trunk_kwargs": {"channels": [8, 8, 16, 16]}, "crop_size": CROP}
LOSS_WEIGHTS = {"keypoints_2d": 5.0, "joints_3d": 5.0, "pose": 1.0, "betas": 0.001}
TINY_BENCHMARK = {
    "source_sequences": 3,
    "target_sequences": 1,
    "frames_per_sequence": 12,
    "source_frame_stride": 2,
    "source_image_size": [48, 48],
    "target_image_size": [48, 64],
    "workers": 1,
    "progress": False,
}

# train.py overrides for TINY_BENCHMARK's images and a one-block video encoder on SEQ_LEN frames
TINY_IMAGES_AND_ENCODER = [
    "dataset.prepare.source_image_size=[48,48]",
    "dataset.prepare.target_image_size=[48,64]",
    f"video_encoder.num_frames={SEQ_LEN}",
    "video_encoder.embed_dim=24",
    "video_encoder.depth=1",
    "video_encoder.num_heads=2",
    "video_encoder.pretrain.decoder_embed_dim=16",
    "video_encoder.pretrain.decoder_depth=1",
    "video_encoder.pretrain.decoder_num_heads=2",
]


def tiny_vibe(mean_params, seed: int = 0) -> VIBE:
    torch.manual_seed(seed)
    return VIBE(mean_params, **TINY_TRUNK, seq_len=SEQ_LEN, hidden_size=32, dropout=0.0)


def tiny_hmr(mean_params, seed: int = 0) -> HMR:
    torch.manual_seed(seed)
    return HMR(mean_params, **TINY_TRUNK, norm="group", dropout=0.0)


@pytest.fixture(scope="module")
def prepared(synthetic_body_dir, tmp_path_factory):
    """A tiny synthetic benchmark: source_train has 2 tracks of 6 frames (every 2nd of 12)."""
    return build_benchmark(tmp_path_factory.mktemp("bench") / "bench", synthetic_body_dir, **TINY_BENCHMARK)


@pytest.fixture(scope="module")
def data(prepared):
    return CEMRDataModule(prepared, "source_train", "target_test", crop_size=CROP, batch_size=8, seed=3)


def test_clips_hold_the_frames_of_one_track_and_their_stacked_labels(data):
    frames = data.source
    tracks = frames.sequences()
    assert [len(t) for t in tracks] == [6, 6]
    clips = ClipDataset(frames, SEQ_LEN, stride=2)
    # Each 6-frame track gives clips starting at its frames 0 and 2.
    assert clips.starts == [tracks[0].start, tracks[0].start + 2, tracks[1].start, tracks[1].start + 2]
    for index, start in enumerate(clips.starts):
        clip = clips[index]
        assert set(clip) == {"img", *CLIP_LABELS}
        assert tuple(clip["img"].shape) == (3, SEQ_LEN, CROP, CROP)
        for t in range(SEQ_LEN):
            item = frames[start + t]
            assert torch.equal(clip["img"][:, t], item["img"])
            for key in CLIP_LABELS:
                assert torch.equal(clip[key][t], item[key]), key
    assert clips[3]["index"].tolist() == [tracks[1].start + 2 + t for t in range(SEQ_LEN)]
    assert tuple(clips[0]["joints3d"].shape) == (SEQ_LEN, 24, 4)


def test_clip_dataset_errors(data):
    with pytest.raises(ValueError, match="clip length and stride must be >= 1, got 4 and 0"):
        ClipDataset(data.source, SEQ_LEN, stride=0)
    with pytest.raises(ValueError, match=r"source_train.npz: no track has 7 frames, so no clip can be cut"):
        ClipDataset(data.source, 7, stride=1)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_source_module_trains_vibe_on_clip_batches(data, synthetic_body_dir):
    body = load_body_model(synthetic_body_dir, "neutral")
    model = tiny_vibe(synthetic_body_dir / "smpl_mean_params.npz")
    training = SimpleNamespace(loss_weights=SimpleNamespace(**LOSS_WEIGHTS))
    module = SourceModule(model, body, training, focal_length=5000.0, crop_size=CROP)
    clips = ClipDataset(data.source, SEQ_LEN, stride=2)
    batch = default_collate([clips[0], clips[3]])  # img (2, 3, T, S, S), labels (2, T, ...)

    # The clip batch's loss is SPIN's loss on its 8 frames, labels taken frame by frame.
    with torch.no_grad():
        loss = module.training_step(batch, 0)
        frames = [
            data.source[start + t] for start in (clips.starts[0], clips.starts[3]) for t in range(SEQ_LEN)
        ]
        labels = {key: torch.stack([f[key] for f in frames]) for key in CLIP_LABELS}
        pred = decode(model(batch["img"].transpose(1, 2)), body, 5000.0, CROP)
        expected, _ = labelled_objective(pred, labels, training.loss_weights)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)

    # Clipped as train_source clips (training.gradient_clip_val): the camera depth makes raw steps explode.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(10):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_sequence_model_gets_shuffled_clip_batches(data, synthetic_body_dir):
    vibe = tiny_vibe(synthetic_body_dir / "smpl_mean_params.npz")
    loader = source_dataloader(data, vibe)
    assert isinstance(loader.dataset, ClipDataset)
    assert (loader.dataset.length, loader.batch_size) == (SEQ_LEN, 8 // SEQ_LEN)
    tracks = data.source.sequences()
    assert loader.dataset.starts == [t.start + s for t in tracks for s in (0, SEQ_LEN // 2)]

    def epoch():
        return [batch["index"] for batch in loader]

    first = epoch()
    assert [tuple(b.shape) for b in first] == [(2, SEQ_LEN)] * 2
    assert tuple(next(iter(loader))["img"].shape) == (2, 3, SEQ_LEN, CROP, CROP)
    starts = sorted(b[0].item() for batch in first for b in batch)
    assert starts == loader.dataset.starts  # every clip once per epoch
    for batch in first:  # consecutive rows of one track
        assert torch.equal(batch - batch[:, :1], torch.arange(SEQ_LEN).expand_as(batch))
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(), strict=True))  # seeded shuffle

    hmr = tiny_hmr(synthetic_body_dir / "smpl_mean_params.npz")
    frame_loader = source_dataloader(data, hmr)
    assert frame_loader.dataset is data.source and frame_loader.batch_size == 8
    assert tuple(next(iter(frame_loader))["img"].shape) == (8, 3, CROP, CROP)


def test_clip_features_are_per_frame_trunk_features_for_both_kinds(synthetic_body_dir):
    mean_params = synthetic_body_dir / "smpl_mean_params.npz"
    clips = torch.randn(2, 3, SEQ_LEN, CROP, CROP)
    for model in (tiny_vibe(mean_params).eval(), tiny_hmr(mean_params).eval()):
        with torch.no_grad():
            features = clip_features(model, clips)
            per_frame = [
                model.trunk.forward_features(clips[:, :, t]).mean(dim=(2, 3)) for t in range(SEQ_LEN)
            ]
        assert tuple(features.shape) == (2, SEQ_LEN, 16)
        torch.testing.assert_close(features, torch.stack(per_frame, dim=1), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_train_source_trains_and_saves_a_tiny_vibe(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    prepare = [f"dataset.prepare.{k}={v}" for k, v in TINY_BENCHMARK.items()]
    cfg = compose_config(
        "train",
        [
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.checkpoint_dir={tmp_path / 'checkpoints'}",
            "backbone=vibe",
            "backbone.trunk=resnet18",
            "+backbone.trunk_kwargs.channels=[8,8,16,16]",
            f"backbone.crop_size={CROP}",
            f"backbone.seq_len={SEQ_LEN}",
            "backbone.hidden_size=32",
            *prepare,
            *TINY_IMAGES_AND_ENCODER,
            "training.max_epochs=1",
            "training.batch_size=8",
            "training.videomae.max_epochs=1",
            "training.align.epochs=200",
            "training.align.lr=0.01",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ],
        tmp_path / "out",
    )
    prepare_assets(cfg)
    train_source(cfg)
    checkpoint = load_checkpoint(cfg.training.checkpoint)
    model = checkpoint.model.eval()
    assert isinstance(model, VIBE) and model.seq_len == SEQ_LEN
    # P was fitted on the mean VIBE trunk features of the 4 source clips of 4 frames.
    head = torch.nn.Linear(16, 24)
    head.load_state_dict(checkpoint.extra["align_head"])
    encoder = load_checkpoint(cfg.training.video_encoder_checkpoint).model.eval()
    clips = default_collate(list(ClipDataset(CEMRDataModule.from_config(cfg.dataset).source, SEQ_LEN, 2)))
    with torch.no_grad():
        features = model.extract_features(clips["img"].transpose(1, 2)).mean(1)
        cosine = torch.nn.functional.cosine_similarity(head(features), encoder(clips["img"]))
    assert len(cosine) == 4 and cosine.min() > 0.95, cosine
    out = caplog.text
    assert "on 4 source clips" in out
    assert re.search(r"epoch   1: source_test PA-MPJPE +[\d.]+ MPJPE +[\d.]+  target PA-MPJPE", out), out


def test_predict_frames_runs_a_sequence_model_over_the_causal_window_of_each_frame(data, synthetic_body_dir):
    frames = data.source  # 2 tracks of 6 rows, SEQ_LEN 4
    model = tiny_vibe(synthetic_body_dir / "smpl_mean_params.npz").eval()
    pred = predict_frames(model, frames, batch_size=4, features=True)
    assert pred["pose"].shape == (12, 72) and pred["feature"].shape[0] == 12
    expected = []
    with torch.no_grad():
        for track in frames.sequences():
            for t in range(track.start, track.stop):  # t-3 .. t, the first frame before the track's start
                window = [max(track.start, i) for i in range(t - SEQ_LEN + 1, t + 1)]
                images = torch.stack([frames[i]["img"] for i in window])[None]
                expected.append(model(images).betas[0, -1])
    assert np.allclose(pred["betas"], torch.stack(expected).numpy(), atol=1e-6)


def test_causal_windows_end_at_each_frame_and_repeat_the_first_before_the_start():
    features = torch.arange(5.0)[:, None]  # frame i's feature is i
    windows = causal_windows(features, 3)[..., 0]
    assert windows.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vibe", "vibe_small"])
def test_train_fast_dev_run_of_vibe_feeds_its_crops_to_the_video_encoder_at_its_own_size(tmp_path, backbone):
    """VIBE's 224 px crops and the tiny encoder's 112 px clips: the encoder resizes (issue 15's crash)."""
    cfg = compose_config(
        "train",
        [
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.checkpoint_dir={tmp_path / 'checkpoints'}",
            f"backbone={backbone}",
            *[o for o in TINY if not o.startswith("training.batch_size")],
            "trainer.fast_dev_run=true",
            "training.batch_size=2",
            "training.videomae.batch_size=2",
            "backbone.init_from=null",  # vibe_small's default starts from an HMR source model
        ],
        tmp_path / "out",
    )
    assert cfg.video_encoder.img_size == 112 and cfg.backbone.crop_size == (
        224 if backbone == "vibe" else 112
    )
    metrics = train_run(cfg)
    assert np.isfinite(metrics["target_pa_mpjpe"])
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())
