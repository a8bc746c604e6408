"""`build_benchmark`: generate the synthetic two-domain benchmark into the prepared-dataset layout.

Layout of `out_dir` (the same one the 3DPW and H3.6M preprocessors write):

    images/<seq>/image_<frame:05d>.jpg
    source_train.npz  source_test.npz  target_test.npz
    meta.json         generation config, generator version, settings hash, content_sha256 of the files (last)

Source sequences (Human3.6M-like) are split by subject: `source_subjects = (train, test)`
people, the test ones never appear in training. Source videos keep every
`source_frame_stride`-th frame (as SPIN subsamples H3.6M), so `frame` counts video frames.
Target sequences (3DPW-like) keep every frame. One person per sequence (`person` = 0).

npz keys (rows ordered by seq, then frame): imgname (N,) relative path; center (N, 2) f8 and
scale (N,) f8, the box of all 49 projected joints (centre of the min/max extent, side =
bbox_scale_factor * max(w, h) = 200 * scale); pose (N, 72) f8 axis-angle with the root in the
camera frame; shape (N, 10) f8; has_smpl (N,) f8 ones; gender (N,) '<U1' 'm'/'f' (the body model
the frame was made with); S (N, 24, 4) f8 GT joints in metres, camera axes, relative to the
pelvis (J24 index 14), column 3 = 1; part (N, 24, 3) f8 and openpose (N, 25, 3) f8 exact
projections (x, y, 1) of the 49 joints 25: and :25; keypoints_detected (N, 49, 3) f8 detector-like
(x, y, conf), zeros where dropped; seq (N,) str; person (N,) i8; frame (N,) i8; trans (N, 3) f8
SMPL translation in the camera frame; focal (N,) f8 pixels. The camera has principal point
(W/2, H/2) in 0-based pixel-centre coordinates, so
part[..., :2] == perspective_projection(body(pose, shape).joints[:, 25:], trans, focal, (W/2, H/2)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import torch

from cemr.atomic import remove_leftovers, write_npz
from cemr.body import GENDER_CODES, BodyModel, load_body_model
from cemr.data.synthetic.domains import DOMAINS
from cemr.data.synthetic.keypoints import KeypointNoise
from cemr.data.synthetic.motions import FAMILIES
from cemr.data.synthetic.sequence import SequenceSpec, encode_jpeg, generate_sequence

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLITS = ("source_train", "source_test", "target_test")
SOURCE_SPLITS = SPLITS[:2]
TARGET_ONLY_SETTINGS = ("seed", "target_sequences", "target_image_size", "target_families")
META = "meta.json"
GENDERS = {code: name for code, name in GENDER_CODES.items() if name != "neutral"}  # the rendered people
# The source covers every motion family (as Human3.6M covers 3DPW's motions); the target is a
# 3DPW-like mix, mostly walking. Sequence k of a domain has family k modulo the list.
SOURCE_FAMILY_NAMES = tuple(FAMILIES)
TARGET_FAMILY_NAMES = (
    *("walking", "sitting", "reaching", "walking", "dancing", "bending"),
    *("turning", "crouching", "walking", "kicking", "arm_raise", "squat"),
)


@dataclass(frozen=True)
class BenchmarkConfig:
    """Every setting that changes the generated content (the cache key hashes all of them)."""

    seed: int = 0  # the target build
    source_seed: int = 0  # the source domain, the same for every target build
    source_sequences: int = 400
    target_sequences: int = 12
    frames_per_sequence: int = 150
    source_frame_stride: int = 3
    source_test_fraction: float = 0.2
    source_subjects: tuple[int, int] = (10, 3)
    fps: float = 30.0
    source_image_size: tuple[int, int] = (192, 192)
    target_image_size: tuple[int, int] = (160, 240)
    supersample: int = 1
    bbox_scale_factor: float = 1.2
    keypoint_noise: KeypointNoise = field(default_factory=KeypointNoise)
    # motion families (motions.FAMILIES names) each domain's sequences cycle through, in order
    source_families: tuple[str, ...] = SOURCE_FAMILY_NAMES
    target_families: tuple[str, ...] = TARGET_FAMILY_NAMES

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"build_benchmark: {name} must be {expected}, found {getattr(self, name)!r}")

        def is_int(value) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        need(is_int(self.seed) and self.seed >= 0, "seed", "a non-negative int")
        need(is_int(self.source_seed) and self.source_seed >= 0, "source_seed", "a non-negative int")
        need(
            is_int(self.source_sequences) and self.source_sequences >= 2,
            "source_sequences",
            "an int >= 2 (at least one train and one test sequence)",
        )
        need(is_int(self.target_sequences) and self.target_sequences >= 1, "target_sequences", "an int >= 1")
        need(
            is_int(self.frames_per_sequence) and self.frames_per_sequence >= 1,
            "frames_per_sequence",
            "an int >= 1",
        )
        need(
            is_int(self.source_frame_stride) and 1 <= self.source_frame_stride <= self.frames_per_sequence,
            "source_frame_stride",
            "an int in [1, frames_per_sequence]",
        )
        need(0.0 < self.source_test_fraction < 1.0, "source_test_fraction", "in (0, 1)")
        need(
            len(self.source_subjects) == 2 and all(is_int(n) and n >= 1 for n in self.source_subjects),
            "source_subjects",
            "two ints >= 1 (train subjects, test subjects)",
        )
        need(self.fps > 0, "fps", "> 0")
        for name in ("source_image_size", "target_image_size"):
            need(
                len(getattr(self, name)) == 2 and all(is_int(n) and n >= 16 for n in getattr(self, name)),
                name,
                "(width, height), ints >= 16",
            )
        need(is_int(self.supersample) and 1 <= self.supersample <= 4, "supersample", "an int in [1, 4]")
        need(self.bbox_scale_factor > 0, "bbox_scale_factor", "> 0")
        for name in ("source_families", "target_families"):
            families = getattr(self, name)
            need(
                len(families) > 0 and all(f in FAMILIES for f in families),
                name,
                f"a non-empty list of motion families among {sorted(FAMILIES)}",
            )

    @property
    def source_test_sequences(self) -> int:
        return min(
            self.source_sequences - 1, max(1, round(self.source_sequences * self.source_test_fraction))
        )

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def specs(self) -> dict[str, list[SequenceSpec]]:
        """The sequences of each split, in row order (names sort in generation order)."""
        common = dict(
            num_frames=self.frames_per_sequence,
            fps=float(self.fps),
            supersample=self.supersample,
            bbox_scale_factor=float(self.bbox_scale_factor),
            keypoint_noise=self.keypoint_noise,
        )
        n_test = self.source_test_sequences
        n_train_subjects, n_test_subjects = self.source_subjects
        source = DOMAINS["source"]
        rig = (self.source_seed, 0, 2)  # one studio rig for the whole source domain
        out: dict[str, list[SequenceSpec]] = {split: [] for split in SPLITS}
        for split, count, first_subject, subjects in (
            ("source_train", self.source_sequences - n_test, 0, n_train_subjects),
            ("source_test", n_test, n_train_subjects, n_test_subjects),
        ):
            for k in range(count):
                subject = first_subject + k % subjects
                family = self.source_families[k % len(self.source_families)]
                camera = k % source.rig_cameras
                out[split].append(
                    SequenceSpec(
                        domain="source",
                        name=f"{split.split('_')[1]}_{k:03d}_S{subject}_{family}_cam{camera}",
                        family=family,
                        entropy=(self.source_seed, 0, 0, SPLITS.index(split), k),
                        subject_entropy=(self.source_seed, 0, 1, subject),
                        camera_entropy=rig,
                        camera_index=camera,
                        frame_stride=self.source_frame_stride,
                        image_size=tuple(self.source_image_size),
                        **common,
                    )
                )
        for k in range(self.target_sequences):
            family = self.target_families[k % len(self.target_families)]
            out["target_test"].append(
                SequenceSpec(
                    domain="target",
                    name=f"wild_{k:03d}_{family}",
                    family=family,
                    entropy=(self.seed, 1, 0, k),
                    subject_entropy=(self.seed, 1, 1, k),
                    frame_stride=1,
                    image_size=tuple(self.target_image_size),
                    **common,
                )
            )
        return out


def build_benchmark(
    out_dir: str | os.PathLike,
    body_model_dir: str | os.PathLike,
    seed: int = 0,
    source_seed: int = 0,
    source_sequences: int = 400,
    target_sequences: int = 12,
    frames_per_sequence: int = 150,
    source_frame_stride: int = 3,
    source_test_fraction: float = 0.2,
    source_subjects: Sequence[int] = (10, 3),
    fps: float = 30.0,
    source_image_size: Sequence[int] = (192, 192),
    target_image_size: Sequence[int] = (160, 240),
    supersample: int = 1,
    bbox_scale_factor: float = 1.2,
    keypoint_noise: Mapping | KeypointNoise | None = None,
    source_families: Sequence[str] = SOURCE_FAMILY_NAMES,
    target_families: Sequence[str] = TARGET_FAMILY_NAMES,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Generate (or reuse) the benchmark in `out_dir`; returns `out_dir`. See the module docstring.

    The body model directory holds SMPL_MALE/SMPL_FEMALE and the extra regressors (real SMPL or
    `cemr.body.make_synthetic_body_model`). An existing `out_dir` whose meta.json carries the same
    content hash (config + generator version + body model files) is reused untouched; otherwise
    the benchmark is built in a temporary sibling directory and renamed into place, so a killed
    build never leaves a directory that looks complete. Only a directory this function built (its
    meta.json says so, and it holds nothing else) is ever replaced: any other non-empty `out_dir`
    raises FileExistsError. `workers` processes render sequences in parallel (0 or 1: in this
    process); the output does not depend on it, and they are terminated if the build stops early.
    """
    if not isinstance(keypoint_noise, KeypointNoise):
        keypoint_noise = KeypointNoise(**dict(keypoint_noise or {}))
    config = BenchmarkConfig(
        seed=seed,
        source_seed=source_seed,
        source_sequences=source_sequences,
        target_sequences=target_sequences,
        frames_per_sequence=frames_per_sequence,
        source_frame_stride=source_frame_stride,
        source_test_fraction=float(source_test_fraction),
        source_subjects=tuple(source_subjects),
        fps=float(fps),
        source_image_size=tuple(source_image_size),
        target_image_size=tuple(target_image_size),
        supersample=supersample,
        bbox_scale_factor=float(bbox_scale_factor),
        keypoint_noise=keypoint_noise,
        source_families=tuple(source_families),
        target_families=tuple(target_families),
    )
    out_dir = Path(out_dir).resolve()  # `..` must not put the hidden siblings anywhere else
    body_model_dir = Path(body_model_dir)
    key = {
        "generator": __package__,
        "version": GENERATOR_VERSION,
        "config": config.to_json(),
        "body_model_sha256": body_model_hashes(body_model_dir),
    }
    content_hash = _sha256_json(key)
    source_hash = _sha256_json({**key, "config": source_settings(key["config"])})
    if is_complete(out_dir, content_hash):
        log.info("synthetic benchmark: reusing %s", out_dir)
        return out_dir
    check_replaceable(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir.parent, name=out_dir.name)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        start = time.perf_counter()
        specs = config.specs()
        donor = find_source_donor(out_dir, source_hash)
        if donor is not None:  # another build has these very source splits: link them, render the target
            link_source(donor, tmp, specs)
            log.info("synthetic benchmark: source splits linked from %s", donor)
        todo = {split: s for split, s in specs.items() if donor is None or split not in SOURCE_SPLITS}
        rows = _generate(todo, body_model_dir, tmp, workers, progress)
        counts = {}
        for split, split_specs in specs.items():
            if split in todo:
                write_npz(tmp / f"{split}.npz", _assemble(split_specs, rows))
            with np.load(tmp / f"{split}.npz") as arrays:
                frames = len(arrays["imgname"])
            counts[split] = {"sequences": len(split_specs), "frames": frames}
        meta = {
            **key,
            "hash": content_hash,
            "source_hash": source_hash,
            "content_sha256": tree_sha256(tmp),
            "splits": counts,
            "image_size": {
                "source": list(config.source_image_size),
                "target": list(config.target_image_size),
            },
            "principal_point": "(W/2, H/2), 0-based pixel centres",
            "root_joint_of_S": "J24 14 Pelvis (MPII)",
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        _replace_dir(tmp, out_dir)
        log.info(
            "synthetic benchmark: %d frames in %.1f s -> %s",
            sum(c["frames"] for c in counts.values()),
            time.perf_counter() - start,
            out_dir,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def source_settings(config: dict) -> dict:
    """The settings the source splits depend on: all but the target's."""
    return {k: v for k, v in config.items() if k not in TARGET_ONLY_SETTINGS}


def find_source_donor(out_dir: Path, source_hash: str) -> Path | None:
    """A finished build beside out_dir whose source splits were made with the same settings."""
    if not out_dir.parent.is_dir():
        return None
    for sibling in sorted(out_dir.parent.iterdir()):
        if sibling == out_dir or sibling.name.startswith(".") or not sibling.is_dir():
            continue
        meta = _read_meta(sibling)
        if meta and meta.get("source_hash") == source_hash and is_complete(sibling, meta.get("hash")):
            return sibling
    return None


def link_source(donor: Path, out_dir: Path, specs: dict[str, list[SequenceSpec]]) -> None:
    """Hard-link (or copy, across file systems) the donor's source split files and images into out_dir."""
    files = [Path(f"{split}.npz") for split in SOURCE_SPLITS]
    for split in SOURCE_SPLITS:
        for spec in specs[split]:
            files += sorted(p.relative_to(donor) for p in (donor / "images" / spec.name).iterdir())
    for relative in files:
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(donor / relative, out_dir / relative)
        except OSError:
            shutil.copy2(donor / relative, out_dir / relative)


def _read_meta(out_dir: Path) -> dict | None:
    """out_dir's meta.json if it is one this generator wrote, else None."""
    try:
        meta = json.loads((out_dir / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == __package__ else None


def is_complete(out_dir: Path, content_hash: str) -> bool:
    """True if out_dir holds a finished benchmark with this content hash."""
    meta = _read_meta(out_dir)
    return (
        meta is not None
        and meta.get("hash") == content_hash
        and all((out_dir / f"{split}.npz").is_file() for split in SPLITS)
    )


def check_replaceable(out_dir: Path) -> None:
    """Raise FileExistsError unless out_dir is absent, empty, or a benchmark this function built
    holding nothing but what it writes (replacing it deletes everything in it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"build_benchmark: {out_dir} exists and is not a directory")
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not entries:
        return
    if _read_meta(out_dir) is None:
        raise FileExistsError(
            f"build_benchmark: {out_dir} exists, is not empty and has no {META} written by {__package__}; "
            "it is not a synthetic benchmark this function made, so it will not replace it (and delete "
            "what it holds): choose another dataset.root, or empty that directory yourself"
        )
    foreign = [name for name in entries if name not in OWN_ENTRIES]
    if foreign:
        raise FileExistsError(
            f"build_benchmark: {out_dir} holds a synthetic benchmark but also {', '.join(foreign)}, which "
            "it did not write; rebuilding would delete them: move them out, or choose another dataset.root"
        )


def body_model_hashes(body_model_dir: Path) -> dict[str, str]:
    """sha256 of the files the generator reads: gendered models and the regressors next to them."""
    if not body_model_dir.is_dir():
        raise FileNotFoundError(
            f"build_benchmark: body model directory {body_model_dir} does not exist; build it first "
            "(config body.prepare, e.g. cemr.body.make_synthetic_body_model) or point body_model_dir at "
            "real SMPL"
        )
    hashes = {}
    for gender in GENDERS.values():
        stem = f"SMPL_{gender.upper()}"
        found = [p for p in (body_model_dir / f"{stem}.pkl", body_model_dir / f"{stem}.npz") if p.is_file()]
        if not found:
            raise FileNotFoundError(f"build_benchmark: {body_model_dir} has no {stem}.pkl or {stem}.npz")
        hashes[found[0].name] = _sha256(found[0])
    for name in ("J_regressor_extra.npy", "J_regressor_h36m.npy"):
        for folder in (body_model_dir, body_model_dir.parent):
            if (folder / name).is_file():
                hashes[name] = _sha256(folder / name)
                break
    return hashes


def tree_sha256(folder: Path) -> str:
    """sha256 over every file under `folder` (relative path and bytes, in sorted order) except meta.json:
    two builds with the same settings must give the same value on any machine and worker count."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if is_complete(out_dir, json.loads((tmp / META).read_text())["hash"]):
        return  # another process finished the same build first
    check_replaceable(out_dir)  # again: files may have been put there during the build
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------ generation


def load_gendered_models(body_model_dir: Path) -> dict[str, BodyModel]:
    return {
        tag: load_body_model(body_model_dir, gender, dtype=torch.float64) for tag, gender in GENDERS.items()
    }


_WORKER_MODELS: dict[str, BodyModel] = {}


def _init_worker(body_model_dir: Path) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate() stops a worker with SIGTERM
    torch.set_num_threads(1)
    _WORKER_MODELS.update(load_gendered_models(body_model_dir))


def _render(task: tuple[SequenceSpec, Path]) -> tuple[str, dict]:
    spec, out_dir = task
    return spec.name, _make_sequence(spec, out_dir)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _worker_pool(workers: int, body_model_dir: Path) -> Iterator[Pool]:
    """A pool of `workers` processes that is terminated, not drained, when the build stops early:
    on any exception, Ctrl-C, or SIGTERM (turned into SystemExit while the pool runs), so that a
    killed build leaves no worker rendering on."""
    # fork where available (no re-import of the caller's __main__, as spawn would need); the
    # workers start here, before the progress bar starts its refresh thread
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    pool = get_context(method).Pool(workers, initializer=_init_worker, initargs=(body_model_dir,))
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        if main:
            signal.signal(signal.SIGTERM, previous)


def _make_sequence(spec: SequenceSpec, out_dir: Path, models: dict[str, BodyModel] | None = None) -> dict:
    """Render one sequence, write its JPEGs under out_dir, return its label arrays."""
    data = generate_sequence(spec, models or _WORKER_MODELS)
    folder = out_dir / "images" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for image, frame in zip(data.images, data.labels["frame"], strict=True):
        name = f"images/{spec.name}/image_{frame:05d}.jpg"
        (out_dir / name).write_bytes(encode_jpeg(image, data.jpeg_quality))
        names.append(name)
    return {**data.labels, "imgname": np.array(names)}


def _generate(
    specs: dict[str, list[SequenceSpec]],
    body_model_dir: Path,
    out_dir: Path,
    workers: int,
    show_progress: bool,
) -> dict[str, dict]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    todo = [spec for split_specs in specs.values() for spec in split_specs]
    total = sum(len(range(0, s.num_frames, s.frame_stride)) for s in todo)
    columns = (
        TextColumn("[bold]synthetic benchmark"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    rows: dict[str, dict] = {}
    start = time.perf_counter()
    pooled = _worker_pool(workers, body_model_dir) if workers > 1 else nullcontext()
    with pooled as pool, Progress(*columns, disable=not show_progress) as bar:
        task = bar.add_task("generate", total=total, rate="")

        def done(name: str, labels: dict) -> None:
            rows[name] = labels
            bar.advance(task, len(labels["frame"]))
            frames = bar.tasks[0].completed
            bar.update(task, rate=f"{frames / max(time.perf_counter() - start, 1e-9):.1f} frames/s")

        if pool is None:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # same arithmetic as in a worker process
            try:
                models = load_gendered_models(body_model_dir)
                for spec in todo:
                    done(spec.name, _make_sequence(spec, out_dir, models))
            finally:
                torch.set_num_threads(threads)
        else:
            for name, labels in pool.imap_unordered(_render, [(spec, out_dir) for spec in todo]):
                done(name, labels)
    return rows


def _assemble(split_specs: list[SequenceSpec], rows: dict[str, dict]) -> dict[str, np.ndarray]:
    """Concatenate one split's sequences (in order) into the npz arrays."""
    names = [spec.name for spec in split_specs]
    if names != sorted(names):
        raise AssertionError(f"sequence names must sort in generation order, found {names}")
    parts = [rows[name] for name in names]
    arrays = {
        key: np.concatenate([p[key] for p in parts]) for key in NPZ_KEYS if key not in ("seq", "person")
    }
    arrays["seq"] = np.concatenate(
        [np.full(len(p["frame"]), name) for p, name in zip(parts, names, strict=True)]
    )
    arrays["person"] = np.zeros(len(arrays["frame"]), dtype=np.int64)
    return {key: arrays[key] for key in NPZ_KEYS}


OWN_ENTRIES = {"images", META, *(f"{split}.npz" for split in SPLITS)}

NPZ_KEYS = (
    "imgname",
    "center",
    "scale",
    "pose",
    "shape",
    "has_smpl",
    "gender",
    "S",
    "part",
    "openpose",
    "keypoints_detected",
    "seq",
    "person",
    "frame",
    "trans",
    "focal",
)
