"""Forward and forward+backward speed of each backbone (and the video encoders) from their configs.

    python -m benchmarks.bench_models                      # CPU, 1 thread, batch 1 and 8
    python -m benchmarks.bench_models --threads 4 --models hmr_small vibe --seq-len 16
    python -m benchmarks.bench_models --device cuda --amp  # bf16 autocast on a GPU

(run from the repository root, or anywhere once cemr is pip-installed)

Models are built from configs/backbone/*.yaml and configs/video_encoder/*.yaml exactly as the
entry points build them. VIBE and the video encoders take clips: their "batch" counts clips of
`--seq-len` (VIBE) or the config's num_frames (video encoders) frames; img/s counts frames.
Forward runs in eval mode without gradients; forward+backward in train mode, loss = sum of outputs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
BACKBONES = ("hmr_small", "hmr", "vibe")
VIDEO_ENCODERS = ("tiny", "vit_b")


def build(name: str, mean_params: Path) -> tuple[torch.nn.Module, str]:
    """A model from its config -> (model, kind) with kind 'image', 'sequence' or 'clip'."""
    group = "backbone" if name in BACKBONES else "video_encoder"
    backbone = "hmr_small" if group == "video_encoder" else name  # the video encoder sees backbone crops
    cfg = OmegaConf.create(
        {
            "body": {"mean_params": str(mean_params)},
            "backbone": OmegaConf.load(REPO / "configs" / "backbone" / f"{backbone}.yaml"),
            "video_encoder": OmegaConf.load(REPO / "configs" / "video_encoder" / f"{name}.yaml")
            if group == "video_encoder"
            else {},
        }
    )
    model = instantiate(cfg[group])
    kind = "clip" if group == "video_encoder" else ("sequence" if name == "vibe" else "image")
    return model, kind


def make_input(model: torch.nn.Module, kind: str, batch: int, seq_len: int) -> torch.Tensor:
    if kind == "clip":
        c, t, h, w = model.patch_embed.input_shape
        return torch.randn(batch, c, t, h, w)
    s = model.crop_size
    return torch.randn(batch, seq_len, 3, s, s) if kind == "sequence" else torch.randn(batch, 3, s, s)


def frames_per_sample(model: torch.nn.Module, kind: str, seq_len: int) -> int:
    if kind == "clip":
        return model.patch_embed.input_shape[1]
    return seq_len if kind == "sequence" else 1


def output_sum(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output.float().sum()
    return output.rotmat.float().sum() + output.betas.float().sum() + output.cam.float().sum()


def time_ms(step, device: torch.device, min_repeats: int, min_seconds: float) -> float:
    """Median wall time of `step()` in ms, after one warm-up call."""
    step()
    times = []
    while len(times) < min_repeats or sum(times) < min_seconds:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=[*BACKBONES, "tiny"], choices=[*BACKBONES, *VIDEO_ENCODERS]
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seq-len", type=int, default=4, help="frames per VIBE clip (VIBE trains on 16)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mean_params = Path(tmp) / "smpl_mean_params.npz"
        identity_6d = np.tile(np.array([1, 0, 0, 1, 0, 0], np.float32), 24)
        np.savez(mean_params, pose=identity_6d, shape=np.zeros(10), cam=np.array([0.9, 0, 0], np.float32))
        for name in args.models:
            model, kind = build(name, mean_params)
            model.to(device)
            params_m = sum(p.numel() for p in model.parameters()) / 1e6
            frames = frames_per_sample(model, kind, args.seq_len)
            for batch in args.batch_sizes:
                x = make_input(model, kind, batch, args.seq_len).to(device)

                def forward(x=x, model=model):
                    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=args.amp):
                        model(x)

                def forward_backward(x=x, model=model):
                    with torch.autocast(device.type, torch.bfloat16, enabled=args.amp):
                        loss = output_sum(model(x))
                    model.zero_grad(set_to_none=True)
                    loss.backward()

                model.eval()
                fwd = time_ms(forward, device, args.min_repeats, args.min_seconds)
                model.train()
                fwd_bwd = time_ms(forward_backward, device, args.min_repeats, args.min_seconds)
                size = model.crop_size if kind != "clip" else model.patch_embed.input_shape[-1]
                rows.append(
                    (name, size, frames, batch, params_m, fwd, fwd_bwd, 1000 * batch * frames / fwd_bwd)
                )

    where = (
        f"{device.type}, {args.threads} thread(s)"
        if device.type == "cpu"
        else torch.cuda.get_device_name(device)
    )
    print(f"# model speed ({where}{', bf16 autocast' if args.amp else ''}, torch {torch.__version__})")
    header = ("model", "crop", "frames", "batch", "params (M)", "forward (ms)", "fwd+bwd (ms)", "train img/s")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, size, frames, batch, params_m, fwd, fwd_bwd, rate in rows:
        cells = (name, size, frames, batch, f"{params_m:.1f}", f"{fwd:.1f}", f"{fwd_bwd:.1f}", f"{rate:.1f}")
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
