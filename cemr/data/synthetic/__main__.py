"""python -m cemr.data.synthetic preview|build|clip [options]

  preview --out preview.png [--body-model-dir DIR] [--benchmark-dir DIR] [--seed N] [--detected]
  build   --out DIR [--body-model-dir DIR] [--seed N] [--source-sequences N] [--target-sequences N]
          [--frames-per-sequence N] [--workers N]
  clip    --out DIR [--benchmark-dir DIR] [--sequence N]: one wild sequence as DIR/clip.mp4 and
          DIR/openpose/ (BODY_25 JSON), a demo input for `python adapt.py dataset=video`

Without --body-model-dir the procedural body model is used, written once to
$CEMR_DATA_DIR/cache/body_synthetic (default data/cache/body_synthetic), as configs/body/synthetic.yaml does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _body_model_dir(given: str | None) -> Path:
    if given is not None:
        return Path(given)
    from cemr.body import make_synthetic_body_model

    return make_synthetic_body_model(
        Path(os.environ.get("CEMR_DATA_DIR", "data")) / "cache" / "body_synthetic"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cemr.data.synthetic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    preview = commands.add_parser("preview", help="write a PNG contact sheet of both domains")
    preview.add_argument("--out", default="preview.png")
    preview.add_argument("--body-model-dir")
    preview.add_argument(
        "--benchmark-dir", help="read frames of a built benchmark instead of rendering new ones"
    )
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--sequences", type=int, default=3, help="sequences per domain")
    preview.add_argument("--detected", action="store_true", help="also draw the detector-like keypoints")
    build = commands.add_parser("build", help="generate the benchmark (reused when already built)")
    build.add_argument("--out", required=True)
    build.add_argument("--body-model-dir")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--source-sequences", type=int)
    build.add_argument("--target-sequences", type=int)
    build.add_argument("--frames-per-sequence", type=int)
    build.add_argument("--workers", type=int, default=2)
    clip = commands.add_parser("clip", help="write a wild sequence as an mp4 with OpenPose JSON keypoints")
    clip.add_argument("--out", required=True)
    clip.add_argument(
        "--benchmark-dir",
        default=str(Path(os.environ.get("CEMR_DATA_DIR", "data")) / "cache" / "synthetic_seed0"),
        help="a built benchmark (default: the embedded default's, which python adapt.py builds)",
    )
    clip.add_argument("--sequence", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "preview":
        from cemr.data.synthetic.preview import preview_benchmark, render_preview

        if args.benchmark_dir is not None:
            path = preview_benchmark(
                args.out, args.benchmark_dir, args.sequences, show_detected=args.detected
            )
        else:
            path = render_preview(
                args.out,
                _body_model_dir(args.body_model_dir),
                args.seed,
                args.sequences,
                show_detected=args.detected,
            )
        print(f"wrote {path}")
        return 0

    if args.command == "clip":
        from cemr.data.synthetic.clip import write_clip

        out = write_clip(args.benchmark_dir, args.out, args.sequence)
        print(f"wrote {out / 'clip.mp4'} and {out / 'openpose'}/")
        return 0

    from cemr.data.synthetic import build_benchmark

    sizes = {
        name: getattr(args, name)
        for name in ("source_sequences", "target_sequences", "frames_per_sequence")
        if getattr(args, name) is not None
    }
    path = build_benchmark(
        args.out, _body_model_dir(args.body_model_dir), seed=args.seed, workers=args.workers, **sizes
    )
    print(f"benchmark ready in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
