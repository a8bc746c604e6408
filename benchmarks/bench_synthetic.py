"""Generation speed of the synthetic benchmark (cemr.data.synthetic) at the default sizes.

    python -m benchmarks.bench_synthetic                 # per-domain frames/s, 1 process, 1 thread
    python -m benchmarks.bench_synthetic --full          # + the whole default benchmark (its yaml)
    python -m benchmarks.bench_synthetic --supersample 1 2 --sequences 4

(run from the repository root). Per-domain rows render `--sequences` sequences of each domain with
the default settings and split the time per frame into stages: body model + motion + cameras
(setup), environment (floor and backdrop), rasterization, shading, degradations, JPEG encoding. The --full
row builds the default benchmark (all splits, `--workers` processes) into a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

import cemr.data.synthetic.renderer as renderer
import cemr.data.synthetic.sequence as sequence
from cemr.body import make_synthetic_body_model
from cemr.data.synthetic import build_benchmark
from cemr.data.synthetic.build import BenchmarkConfig, load_gendered_models

REPO = Path(__file__).resolve().parents[1]


class StageTimer:
    """Wraps module functions to accumulate their wall time under a stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo = []

    def wrap(self, module, name: str, stage: str) -> None:
        original = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        setattr(module, name, timed)
        self._undo.append((module, name, original))

    def restore(self) -> None:
        for module, name, original in reversed(self._undo):
            setattr(module, name, original)


def bench_domains(body_dir: Path, sequences: int, supersample: int) -> list[dict]:
    models = load_gendered_models(body_dir)
    config = BenchmarkConfig(
        source_sequences=sequences + 1, target_sequences=sequences, supersample=supersample
    )
    specs = config.specs()
    rows = []
    for domain, todo in (("source", specs["source_train"][:sequences]), ("target", specs["target_test"])):
        timer = StageTimer()
        timer.wrap(renderer, "rasterize", "raster")
        timer.wrap(sequence, "render", "render")
        timer.wrap(renderer.EnvironmentRenderer, "__call__", "environment")
        timer.wrap(sequence, "finish_image", "degrade")
        frames, start = 0, time.perf_counter()
        try:
            for spec in todo:
                data = generate_sequence_timed(spec, models, timer)
                frames += len(data.images)
        finally:
            timer.restore()
        total = time.perf_counter() - start
        stages = dict(timer.seconds)
        stages["render"] -= stages.get("raster", 0.0)
        stages["setup"] = total - sum(stages.values())
        width, height = todo[0].image_size
        rows.append(
            {
                "domain": domain,
                "size": f"{width}x{height}x{supersample}",
                "frames": frames,
                "fps": frames / total,
                **{k: 1000 * v / frames for k, v in stages.items()},
            }
        )
    return rows


def generate_sequence_timed(spec, models, timer: StageTimer):
    data = sequence.generate_sequence(spec, models)
    start = time.perf_counter()
    for image in data.images:
        sequence.encode_jpeg(image, data.jpeg_quality)
    timer.seconds["jpeg"] += time.perf_counter() - start
    return data


def bench_full(body_dir: Path, workers: int) -> dict:
    node = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "dataset" / "synthetic.yaml").prepare)
    kwargs = {
        k: v for k, v in node.items() if not k.startswith("_") and k not in ("out_dir", "body_model_dir")
    }
    kwargs.update(workers=workers, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = build_benchmark(Path(tmp) / "synthetic", body_dir, **kwargs)
        seconds = time.perf_counter() - start
        frames = sum(
            len(list((out / "images").glob(f"{seq.name}/*.jpg"))) for seq in (out / "images").iterdir()
        )
        size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "size_mb": size_mb}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--body-model-dir", help="default: the procedural model, written to a temporary dir")
    parser.add_argument(
        "--sequences", type=int, default=3, help="sequences per domain for the per-frame rows"
    )
    parser.add_argument("--supersample", type=int, nargs="+", default=[1])
    parser.add_argument("--full", action="store_true", help="also time the whole default benchmark")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        body_dir = (
            Path(args.body_model_dir)
            if args.body_model_dir
            else make_synthetic_body_model(Path(tmp) / "body")
        )
        print(f"torch threads {torch.get_num_threads()}; ms per frame by stage")
        header = (
            f"{'domain':<7} {'WxHxSS':>12} {'frames':>6} {'frames/s':>9} {'setup':>7} {'environ':>7} "
            f"{'raster':>7} {'shade':>7} {'degrade':>8} {'jpeg':>6}"
        )
        print(header)
        print("-" * len(header))
        for supersample in args.supersample:
            for row in bench_domains(body_dir, args.sequences, supersample):
                print(
                    f"{row['domain']:<7} {row['size']:>12} {row['frames']:>6} {row['fps']:>9.1f} "
                    f"{row['setup']:>7.2f} {row['environment']:>7.2f} {row['raster']:>7.2f} "
                    f"{row['render']:>7.2f} "
                    f"{row['degrade']:>8.2f} "
                    f"{row['jpeg']:>6.2f}"
                )
        if args.full:
            full = bench_full(body_dir, args.workers)
            print(
                f"\nfull default benchmark, {args.workers} workers: {full['frames']} frames in "
                f"{full['seconds']:.1f} s ({full['fps']:.1f} frames/s), {full['size_mb']:.1f} MiB on disk"
            )


if __name__ == "__main__":
    main()
