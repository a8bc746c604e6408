"""Speed of test-time adaptation per level, and of source training, on the configured backbone.

    python -m benchmarks.bench_adapt                       # CPU, hmr_small, 64 frames per level
    python -m benchmarks.bench_adapt --backbone hmr --frames 32 --device cuda --precision 16-mixed

Frames are random crops with random keypoints (speed does not depend on content); the body model
is the procedural one; replay is off (it adds one source crop per step). Prints a table of
ms/frame and frames/s per adapter.levels, then source-training images/s at the config's batch size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.data import DataLoader, Dataset

from cemr.adapt.module import AdaptationModule
from cemr.body import MaxMixturePrior, load_body_model, make_synthetic_body_model
from cemr.models.foreign import build_backbone
from cemr.train.module import SourceModule

REPO = Path(__file__).resolve().parents[1]


class RandomFrames(Dataset):
    """One track of random crops with keypoints and SMPL labels (zero pose)."""

    def __init__(self, n: int, crop: int):
        gen = torch.Generator().manual_seed(0)
        self.img = torch.randn(n, 3, crop, crop, generator=gen)
        self.kp = torch.cat([torch.rand(n, 49, 2, generator=gen) * 1.6 - 0.8, torch.ones(n, 49, 1)], -1)

    def __len__(self):
        return len(self.img)

    def __getitem__(self, i):
        return {
            "img": self.img[i],
            "keypoints": self.kp[i],
            "seq_id": torch.tensor(0),
            "person": torch.tensor(0),
            "index": torch.tensor(i),
            "has_smpl": torch.tensor(1.0),
            "pose": torch.zeros(72),
            "betas": torch.zeros(10),
            "joints3d": torch.zeros(24, 4),
        }


def trainer(args, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="hmr_small")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    body_dir = make_synthetic_body_model(Path(tempfile.gettempdir()) / "cemr_bench_body")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("adapt", [f"backbone={args.backbone}", f"paths.data_dir={body_dir.parent}"])
    with open_dict(cfg):
        cfg.body.model_dir = str(body_dir)
        cfg.body.mean_params = str(body_dir / "smpl_mean_params.npz")
    body = load_body_model(body_dir, "neutral")
    prior = MaxMixturePrior.from_file(body_dir / "gmm_08.pkl")
    crop = cfg.backbone.crop_size
    frames = RandomFrames(args.frames, crop)

    print(
        f"backbone={args.backbone} crop={crop} device={args.device} precision={args.precision} "
        f"threads={torch.get_num_threads()} frames={args.frames}"
    )
    print(f"{'adapter.levels':>15} {'ms/frame':>10} {'frames/s':>10} {'outer steps':>12} {'clip steps':>11}")
    for levels in (0, 1, 2, 3):
        adapter = cfg.adapter.copy()
        adapter.levels = levels
        adapter.replay.enabled = False
        torch.manual_seed(0)
        model = build_backbone(cfg.backbone)
        clip_level = levels >= 3
        module = AdaptationModule(
            model,
            body,
            prior,
            adapter,
            cfg.focal_length,
            crop,
            video_encoder=instantiate(cfg.video_encoder) if clip_level else None,
            align_head=torch.nn.Linear(model.trunk.num_features, cfg.video_encoder.embed_dim)
            if clip_level
            else None,
        )
        start = time.perf_counter()
        trainer(args, max_epochs=1).fit(module, DataLoader(frames, batch_size=1))
        seconds = time.perf_counter() - start
        print(
            f"{levels:>15} {1000 * seconds / args.frames:>10.1f} {args.frames / seconds:>10.2f} "
            f"{module.counters['outer_steps']:>12} {module.counters['clip_steps']:>11}"
        )

    batch = cfg.training.batch_size
    steps = max(2, args.frames // batch)
    source = SourceModule(build_backbone(cfg.backbone), body, cfg.training, cfg.focal_length, crop)
    loader = DataLoader(RandomFrames(batch * steps, crop), batch_size=batch)
    start = time.perf_counter()
    trainer(args, max_epochs=1).fit(source, loader)
    seconds = time.perf_counter() - start
    print(f"source training: {batch * steps / seconds:.1f} images/s at batch {batch} ({steps} steps)")


if __name__ == "__main__":
    main()
