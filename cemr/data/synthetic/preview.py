"""Contact sheet of source and target frames with their 2D keypoints, for a person to look at.

Either renders a few fresh sequences (same generator and seed logic as `build_benchmark`), or
reads frames of an already built benchmark directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from cemr.body.joints import J24_NAMES
from cemr.data.synthetic.build import BenchmarkConfig, load_gendered_models
from cemr.data.synthetic.sequence import generate_sequence

_INDEX = {name: i for i, name in enumerate(J24_NAMES)}
LIMBS_24 = [
    (_INDEX[a], _INDEX[b])
    for a, b in (
        ("Right Ankle", "Right Knee"),
        ("Right Knee", "Right Hip"),
        ("Left Ankle", "Left Knee"),
        ("Left Knee", "Left Hip"),
        ("Right Hip", "Left Hip"),
        ("Right Wrist", "Right Elbow"),
        ("Right Elbow", "Right Shoulder"),
        ("Left Wrist", "Left Elbow"),
        ("Left Elbow", "Left Shoulder"),
        ("Right Shoulder", "Neck (LSP)"),
        ("Left Shoulder", "Neck (LSP)"),
        ("Neck (LSP)", "Top of Head (LSP)"),
        ("Pelvis (MPII)", "Thorax (MPII)"),
        ("Thorax (MPII)", "Neck (LSP)"),
    )
]
LEFT, RIGHT, CENTRE = (60, 140, 255), (255, 80, 60), (255, 230, 60)  # RGB


def draw_keypoints(
    image: np.ndarray, part: np.ndarray, detected: np.ndarray | None = None, scale: float = 1.0
) -> np.ndarray:
    """Draw the 24 GT joints (x, y, vis) as a skeleton on an RGB image; detected (49, 3) as small crosses."""
    out = image.copy()
    points = part[:, :2] * scale

    def colour(i: int) -> tuple[int, int, int]:
        name = J24_NAMES[i]
        return LEFT if name.startswith("Left") else RIGHT if name.startswith("Right") else CENTRE

    for a, b in LIMBS_24:
        pa, pb = np.round(points[a]).astype(int), np.round(points[b]).astype(int)
        cv2.line(
            out,
            tuple(pa.tolist()),
            tuple(pb.tolist()),
            colour(a if colour(a) != CENTRE else b),
            1,
            cv2.LINE_AA,
        )
    for i, p in enumerate(points):
        cv2.circle(out, tuple(np.round(p).astype(int).tolist()), 2, colour(i), -1, cv2.LINE_AA)
    if detected is not None:
        for x, y, conf in detected:
            if conf > 0:
                cv2.drawMarker(
                    out,
                    (int(round(x * scale)), int(round(y * scale))),
                    (0, 255, 0),
                    cv2.MARKER_TILTED_CROSS,
                    4,
                )
    return out


def _tile(image: np.ndarray, part: np.ndarray, detected: np.ndarray, label: str, height: int) -> np.ndarray:
    scale = height / image.shape[0]
    big = cv2.resize(image, (int(round(image.shape[1] * scale)), height), interpolation=cv2.INTER_LINEAR)
    big = draw_keypoints(big, part, detected, scale)
    cv2.putText(big, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return big


def _sheet(rows: list[list[np.ndarray]]) -> np.ndarray:
    lines = [np.concatenate(tiles, axis=1) for tiles in rows]
    width = max(line.shape[1] for line in lines)
    return np.concatenate(
        [np.pad(line, ((0, 2), (0, width - line.shape[1]), (0, 0))) for line in lines], axis=0
    )


def render_preview(
    out_path: str | Path,
    body_model_dir: str | Path | None = None,
    seed: int = 0,
    sequences_per_domain: int = 3,
    frames_per_row: int = 4,
    frames_per_sequence: int = 60,
    tile_height: int = 240,
    show_detected: bool = False,
) -> Path:
    """Render fresh sequences of both domains and write the PNG contact sheet (RGB) to out_path.

    body_model_dir None: a procedural body model is written to a temporary directory first.
    """
    if body_model_dir is None:
        from cemr.body import make_synthetic_body_model

        with tempfile.TemporaryDirectory() as tmp:
            return render_preview(
                out_path,
                make_synthetic_body_model(Path(tmp) / "body"),
                seed,
                sequences_per_domain,
                frames_per_row,
                frames_per_sequence,
                tile_height,
                show_detected,
            )
    config = BenchmarkConfig(
        seed=seed,
        source_sequences=max(2, sequences_per_domain + 1),
        target_sequences=sequences_per_domain,
        frames_per_sequence=frames_per_sequence,
    )
    specs = config.specs()
    models = load_gendered_models(Path(body_model_dir))
    rows = []
    for spec in specs["source_train"][:sequences_per_domain] + specs["target_test"][:sequences_per_domain]:
        data = generate_sequence(spec, models)
        picks = np.linspace(0, len(data.images) - 1, frames_per_row).round().astype(int)
        rows.append(
            [
                _tile(
                    data.images[i],
                    data.labels["part"][i],
                    data.labels["keypoints_detected"][i] if show_detected else None,
                    f"{spec.name} f{data.labels['frame'][i]}",
                    tile_height,
                )
                for i in picks
            ]
        )
    return _write(out_path, _sheet(rows))


def preview_benchmark(
    out_path: str | Path,
    benchmark_dir: str | Path,
    sequences_per_split: int = 3,
    frames_per_row: int = 4,
    tile_height: int = 240,
    show_detected: bool = False,
) -> Path:
    """Contact sheet of frames read back from a built benchmark (images + npz labels)."""
    root = Path(benchmark_dir)
    rows = []
    for split in ("source_train", "target_test"):
        path = root / f"{split}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"preview: {path} does not exist; build the benchmark first")
        with np.load(path) as data:
            seq, names, part, detected = (
                data["seq"],
                data["imgname"],
                data["part"],
                data["keypoints_detected"],
            )
        for name in list(dict.fromkeys(seq.tolist()))[:sequences_per_split]:
            rows_of = np.flatnonzero(seq == name)
            picks = rows_of[np.linspace(0, len(rows_of) - 1, frames_per_row).round().astype(int)]
            tiles = []
            for i in picks:
                image = cv2.imread(str(root / names[i]), cv2.IMREAD_COLOR)
                if image is None:
                    raise FileNotFoundError(
                        f"preview: cannot read image {root / names[i]} (row {i} of {path})"
                    )
                tiles.append(
                    _tile(
                        image[:, :, ::-1],
                        part[i],
                        detected[i] if show_detected else None,
                        Path(names[i]).parent.name,
                        tile_height,
                    )
                )
            rows.append(tiles)
    return _write(out_path, _sheet(rows))


def _write(out_path: str | Path, sheet_rgb: np.ndarray) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_path), sheet_rgb[:, :, ::-1]):
        raise OSError(f"preview: could not write {out_path}")
    return out_path
