"""Per-frame cost of test-time adaptation against one forward+backward of the trunk (issue 16).

    python -m benchmarks.bench_adapt                                   # CPU, hmr_small, 64 frames per row
    python -m benchmarks.bench_adapt --backbone hmr --frames 16 --threads 1 --json bench.json
    python -m benchmarks.bench_adapt --device cuda --precision bf16-mixed --frames 32
    python -m benchmarks.bench_adapt --memory --memory-frames 200,1000,5000   # memory vs stream length

The floor is one forward+backward of the backbone's trunk on one crop (median of --repeats),
measured in the same run just before each row: same device, precision and threads, and the same load
on a shared machine. Then the AdaptationModule, as it is, streams one track of --frames random crops
with random keypoints for each row: adapter.levels=0..3 and experiment=boa|dynaboa|cemr, each the
adapt config composed with that override. The body model is the procedural one; replayed source
samples are random labelled crops too (DynaBOA's feature bank clusters random features: retrieval
costs the same). Speed does not depend on content, except for how many extra steps dynamic stopping
takes. The first --warmup frames run but are neither timed nor counted.

Columns: the row's floor; per timed frame: ms, and its ratio to the floor; trunk forwards (calls,
then the crops they carry); trunk backwards (each backward pass that reaches the trunk's last convolution:
loss.backward, torch.autograd.grad in the inner step, and a second-order outer step's pass back
through the inner step's graph); body-model calls (one of them scores the frame against its label
for the progress bar); outer steps (dynamic stopping's extra ones included); peak memory in MiB: on
CPU the growth of the peak RSS over the RSS at the row's start, on CUDA max_memory_allocated.

adapter.levels=0 has no step: the module clones the model and predicts each frame once under
no_grad (adapt.py itself does not stream at level 0: it scores the source model's predictions).

--breakdown streams the default config (or --breakdown-row OVERRIDE) under cProfile and splits each
frame's time into parts that do not overlap: backward passes; model forwards (the trunk among them);
the frozen trunk stages (`adapter.frozen`), run once per image and read by every forward of it;
decoding into the body model; the video encoder; the losses; the optimiser steps; the MAML clone, its
gradient clipping and update; the teacher's EMA; scoring and recording the frame for the progress bar;
Lightning's logging; and the rest (Python glue). cProfile slows Python-heavy parts more than kernels.

--memory streams max(--memory-frames) frames at the config's default level once and, when the stream
reaches each of those lengths, prints the peak memory so far, the memory held then (same scale) and
the ms/frame since the previous length: flat means that nothing but the per-frame records (about 1 KB
each) grows with the stream. On CPU, 20k frames of hmr_small take about an hour.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cemr.adapt.module import AdaptationModule
from cemr.adapt.plan import Plan
from cemr.body import MaxMixturePrior, load_body_model, make_synthetic_body_model
from cemr.data.retrieval import PoseIndex, ReplayBank
from cemr.models.foreign import build_backbone, build_video_encoder
from cemr.models.hmr import pooled_trunk_features

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("boa", "dynaboa", "cemr")  # configs/experiment/
AUTOCAST = {"32": None, "32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
# labelled crops the replaying rows draw from: as many as the embedded default's source_train, so
# that pose retrieval searches an index of the size it searches there (64 until session 19)
SOURCE_FRAMES = 16_000


class RandomFrames(Dataset):
    """One track of random crops with random keypoints and SMPL labels (zero pose), each made from its
    index when asked for, so that a 20k-frame stream holds no frames in memory."""

    def __init__(self, n: int, crop: int, seed: int = 0):
        self.n, self.crop, self.seed = n, crop, seed

    def __len__(self):
        return self.n

    def keypoints(self, i) -> tuple[torch.Tensor, torch.Generator]:
        """Frame i's (49, 3) keypoints, and the generator its crop is drawn from next."""
        gen = torch.Generator().manual_seed(self.seed * 10**9 + i)
        xy = torch.rand(49, 2, generator=gen) * 1.6 - 0.8
        return torch.cat([xy, torch.ones(49, 1)], -1), gen

    def __getitem__(self, i):
        keypoints, gen = self.keypoints(i)
        return {
            "img": torch.randn(3, self.crop, self.crop, generator=gen),
            "keypoints": keypoints,
            "seq_id": torch.tensor(0),
            "person": torch.tensor(0),
            "index": torch.tensor(i),
            "has_smpl": torch.tensor(1.0),
            "pose": torch.zeros(72),
            "betas": torch.zeros(10),
            "joints3d": torch.zeros(24, 4),
        }


# ---------------------------------------------------------------------------------------- counting


@dataclasses.dataclass
class Counts:
    forwards: int = 0
    crops: int = 0
    backwards: int = 0
    body_calls: int = 0

    def copy(self) -> Counts:
        return dataclasses.replace(self)

    def since(self, before: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) - getattr(before, f.name) for f in dataclasses.fields(self)))


def last_convolution(trunk: nn.Module) -> nn.Module:
    """The trunk's last convolution, which every trunk pass reaches. Hooks on the trunk itself never
    fire: the models call `trunk.forward_features` or run its stages, not `trunk(...)`."""
    return [m for m in trunk.modules() if isinstance(m, nn.Conv2d)][-1]


def count_trunk(model: nn.Module, counts: Counts) -> None:
    """Count the trunk's forwards and their crops, and the backward passes that reach it, at its last
    convolution's output: with `adapter.frozen` the stem runs once per image and gets no gradient.

    Also counts on copies made later: learn2learn's MAML clones share the module's hook dicts, and
    deepcopy (the EMA teacher) keeps the hook, a plain function, which counts into the same `counts`.
    A gradient hook on the output sees loss.backward and torch.autograd.grad alike.
    """

    def on_backward(grad):
        counts.backwards += 1

    def on_forward(module, inputs, output):
        counts.forwards += 1
        counts.crops += output.shape[0]
        if output.requires_grad:
            output.register_hook(on_backward)

    last_convolution(model.trunk).register_forward_hook(on_forward)


def count_body_calls(body_model: nn.Module, counts: Counts) -> None:
    def on_forward(module, inputs, output):
        counts.body_calls += 1

    body_model.register_forward_hook(on_forward)


# ------------------------------------------------------------------------------------------ memory


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset Linux's peak RSS (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def _maxrss_kib() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss  # bytes on macOS, KiB on Linux


def _release_freed_memory() -> None:
    gc.collect()
    try:  # glibc keeps freed memory; give it back so that the next row's baseline is its own
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory (MiB) since construction: CUDA's max_memory_allocated, or on CPU the peak RSS's
    growth over the RSS now (where VmHWM cannot be reset, over the process's earlier peak)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        _release_freed_memory()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        self.resettable = _reset_peak_rss()
        self.base_kib = _proc_status_kib("VmRSS") if self.resettable else _maxrss_kib()

    def mib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        peak = _proc_status_kib("VmHWM") if self.resettable else _maxrss_kib()
        return max(0, peak - self.base_kib) / 1024

    def now_mib(self) -> float | None:
        """Memory held now, on the same scale (None where the RSS cannot be read)."""
        if self.cuda:
            return torch.cuda.memory_allocated() / 2**20
        rss = _proc_status_kib("VmRSS") if self.resettable else None
        return None if rss is None else (rss - self.base_kib) / 1024


# ------------------------------------------------------------------------------------------ timing


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Probe(L.Callback):
    """Times and counts every frame after the first `warmup`; at each of `marks` (frames streamed)
    calls `on_mark(frames, PeakMemory, seconds timed, frames timed)`."""

    def __init__(self, counts: Counts, device: str, warmup: int, marks=(), on_mark=None):
        self.counts, self.device, self.warmup = counts, device, warmup
        self.marks, self.on_mark = set(marks), on_mark
        self.seconds, self.timed = 0.0, 0
        self.start = self.end = None  # (Counts, module counters) around the timed frames

    def on_train_start(self, trainer, pl_module):
        self.memory = PeakMemory(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = (self.counts.copy(), dict(pl_module.counters))
        synchronize(self.device)
        self.began = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        synchronize(self.device)
        if batch_idx >= self.warmup:
            self.seconds += time.perf_counter() - self.began
            self.timed += 1
        if batch_idx + 1 in self.marks and self.on_mark is not None:
            self.on_mark(batch_idx + 1, self.memory, self.seconds, self.timed)

    def on_train_end(self, trainer, pl_module):
        self.end = (self.counts.copy(), dict(pl_module.counters))
        self.peak_mib = self.memory.mib()

    def per_frame(self) -> dict[str, float]:
        counts = self.end[0].since(self.start[0])
        steps = {k: self.end[1][k] - self.start[1][k] for k in ("outer_steps", "clip_steps")}
        per = {f.name: getattr(counts, f.name) / self.timed for f in dataclasses.fields(counts)}
        per.update({k: v / self.timed for k, v in steps.items()})
        return {"ms_per_frame": 1000 * self.seconds / self.timed, **per, "peak_mib": self.peak_mib}


def floor_ms(model: nn.Module, crop: int, device: str, precision: str, repeats: int, counts: Counts) -> float:
    """Median ms of one forward+backward of the trunk on one crop (eval mode, as the stream runs it);
    refuses to go on unless the hooks counted every one of these passes. The trunk goes back to the
    CPU afterwards, out of the next row's CUDA memory."""
    trunk = model.trunk.to(device).eval()
    image = torch.randn(1, 3, crop, crop, device=device)
    dtype = AUTOCAST[precision]
    warmup, before, times = 3, counts.copy(), []
    for _ in range(warmup + repeats):
        synchronize(device)
        began = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            feature = pooled_trunk_features(trunk, image)
        feature.float().sum().backward()
        synchronize(device)
        times.append(time.perf_counter() - began)
        trunk.zero_grad(set_to_none=True)
    trunk.cpu()
    seen = counts.copy().since(before)
    if (seen.forwards, seen.backwards) != (warmup + repeats,) * 2:
        raise RuntimeError(f"the trunk hooks counted {seen} over {warmup + repeats} forward+backward passes")
    return 1000 * statistics.median(times[warmup:])


# ------------------------------------------------------------------------------------------ building


def compose_adapt(backbone: str, data_dir: Path, override: str | None = None) -> DictConfig:
    overrides = [f"backbone={backbone}", f"paths.data_dir={data_dir}", *(override or "").split()]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("adapt", overrides)


def replay_source(plan: Plan, cfg: DictConfig, feature_dim: int):
    """(index, dataset) as adapt/run.py builds them, over random labelled crops; None without replay."""
    if plan.replay is None:
        return None
    source = RandomFrames(SOURCE_FRAMES, cfg.backbone.crop_size, seed=1)
    if plan.replay == "pose":
        index = PoseIndex.build(torch.stack([source.keypoints(i)[0] for i in range(len(source))]))
    elif plan.replay == "feature":
        features = torch.randn(len(source), feature_dim, generator=torch.Generator().manual_seed(1))
        index = ReplayBank.build(features, cfg.adapter.replay.clusters, seed=cfg.seed)
    else:
        index = None
    return index, source


def build_module(cfg: DictConfig, body: nn.Module, prior: nn.Module, counts: Counts) -> AdaptationModule:
    torch.manual_seed(0)
    model = build_backbone(cfg.backbone)
    count_trunk(model, counts)  # before the module deep-copies the model into its teacher
    plan = Plan.from_config(cfg.adapter)
    video_encoder = align_head = None
    if plan.video_align:
        video_encoder = build_video_encoder(cfg.video_encoder)
        align_head = nn.Linear(model.trunk.num_features, cfg.video_encoder.embed_dim)
    return instantiate(cfg.adapter.module)(
        model,
        body,
        prior,
        cfg.adapter,
        cfg.focal_length,
        cfg.backbone.crop_size,
        video_encoder=video_encoder,
        align_head=align_head,
        replay_source=replay_source(plan, cfg, model.trunk.num_features),
        replay_weights=cfg.training.loss_weights,
        seed=cfg.seed,
    )


def stream(args, module: AdaptationModule, frames: Dataset, probe: Probe) -> None:
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        max_epochs=1,
        logger=False,
        callbacks=[probe],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(frames, batch_size=1))


# ------------------------------------------------------------------------------------------ the runs


ROW_HEADER = (
    f"{'row':<18} {'floor ms':>8} {'ms/frame':>9} {'x floor':>8} {'fwd':>6} {'(crops)':>8} {'bwd':>6} "
    f"{'body':>6} {'outer':>6} {'peak MiB':>9}"
)


def format_row(row: dict) -> str:
    return (
        f"{row['row']:<18} {row['floor_ms']:>8.1f} {row['ms_per_frame']:>9.1f} {row['ratio']:>7.2f}x "
        f"{row['forwards']:>6.2f} "
        f"{'(' + format(row['crops'], '.2f') + ')':>8} {row['backwards']:>6.2f} {row['body_calls']:>6.2f} "
        f"{row['outer_steps']:>6.2f} {row['peak_mib']:>9.1f}"
    )


def table(args, setup: dict, counts: Counts) -> dict:
    """One row per adapter.levels and experiment, each against the floor measured just before it (on a
    shared machine, the load drifts between rows)."""
    floor_model = build_backbone(compose_adapt(args.backbone, setup["data_dir"]).backbone)
    count_trunk(floor_model, counts)
    print(f"floor: one forward+backward of the trunk on one crop, median of {args.repeats}, before each row")
    print(ROW_HEADER, flush=True)
    overrides = [f"adapter.levels={level}" for level in range(4)] + [f"experiment={e}" for e in EXPERIMENTS]
    rows = []
    for override in overrides:
        cfg = compose_adapt(args.backbone, setup["data_dir"], override)
        floor = floor_ms(floor_model, setup["crop"], setup["device"], args.precision, args.repeats, counts)
        module = build_module(cfg, setup["body"], setup["prior"], counts)
        probe = Probe(counts, setup["device"], args.warmup)
        stream(args, module, RandomFrames(args.frames, setup["crop"]), probe)
        per_frame = probe.per_frame()
        ms = per_frame.pop("ms_per_frame")
        name = override.removeprefix("adapter.")
        row = {"row": name, "override": override, "floor_ms": floor, "ms_per_frame": ms, "ratio": ms / floor}
        row.update(per_frame)
        rows.append(row)
        print(format_row(row), flush=True)
        del module, probe
    floor = statistics.median(row["floor_ms"] for row in rows)
    print(
        f"floor over the rows: median {floor:.1f} ms, {min(r['floor_ms'] for r in rows):.1f}-"
        f"{max(r['floor_ms'] for r in rows):.1f}"
    )
    return {"floor_ms": floor, "rows": rows}


def memory_run(args, setup: dict, counts: Counts) -> dict:
    """One stream of max(lengths) frames at the default config; peak memory as it reaches each length."""
    lengths = sorted(args.memory_frames)
    cfg = compose_adapt(args.backbone, setup["data_dir"])
    print(f"memory vs stream length, adapter.levels={cfg.adapter.levels} (the default)")
    print(f"{'frames':>8} {'ms/frame':>9} {'peak MiB':>9} {'now MiB':>9}", flush=True)
    marks, last = [], {"seconds": 0.0, "timed": 0}

    def on_mark(frames, memory, seconds, timed):
        ms = 1000 * (seconds - last["seconds"]) / max(1, timed - last["timed"])
        last.update(seconds=seconds, timed=timed)
        mark = {"frames": frames, "ms_per_frame": ms, "peak_mib": memory.mib(), "now_mib": memory.now_mib()}
        marks.append(mark)
        now = "-" if mark["now_mib"] is None else f"{mark['now_mib']:.1f}"
        print(f"{frames:>8} {ms:>9.1f} {mark['peak_mib']:>9.1f} {now:>9}", flush=True)

    module = build_module(cfg, setup["body"], setup["prior"], counts)
    probe = Probe(counts, setup["device"], args.warmup, lengths, on_mark)
    stream(args, module, RandomFrames(lengths[-1], setup["crop"]), probe)
    return {"levels": int(cfg.adapter.levels), "memory": marks}


# (file suffix, function[, caller]) of the cumulative times --breakdown reads (with a caller: only the
# calls it made). A part's own time is its functions' total less that of the functions in
# NESTED[part], which run inside them and are counted by another part.
GRAD = ("torch/autograd/__init__.py", "grad")
DECODE = ("cemr/models/prediction.py", "decode")
LOG = ("lightning/pytorch/core/module.py", "log")
PARTS = {
    "backward passes": [("torch/autograd/__init__.py", "backward"), GRAD],
    "model forwards": [("cemr/adapt/module.py", "predict_body")],
    "  of which the trunk": [
        ("cemr/models/hmr.py", "pooled_trunk_features"),
        ("cemr/models/hmr.py", "_run_stages", "forward_from"),  # the stages after the frozen ones
    ],
    "frozen trunk stages, once per image": [("cemr/adapt/module.py", "_inputs")],
    "decoding (body model, projection)": [DECODE],
    "video encoder": [("cemr/models/video_encoder.py", "forward_tokens")],
    "losses": [
        ("cemr/adapt/levels.py", "frame_objective"),
        ("cemr/adapt/levels.py", "clip_objective"),
        ("cemr/adapt/levels.py", "video_align"),
        ("cemr/models/losses.py", "teacher_consistency"),
        ("cemr/models/losses.py", "motion_consistency"),
        ("cemr/models/losses.py", "emitted_smoothness"),
        ("cemr/adapt/module.py", "_replay_loss"),
    ],
    "replay retrieval (search, loading the samples)": [("cemr/adapt/module.py", "_retrieve_source")],
    "optimiser steps": [("torch/optim/adam.py", "step")],
    "MAML clone, clipping, update": [
        ("learn2learn/algorithms/maml.py", "clone"),
        ("cemr/adapt/inner.py", "clone"),
        ("cemr/adapt/inner.py", "step"),
        ("cemr/adapt/inner.py", "restore"),
    ],
    "teacher EMA": [("cemr/adapt/teacher.py", "ema_update")],
    "progress-bar score, record": [("cemr/adapt/module.py", "_record")],
    "Lightning logging": [LOG],
}
NESTED = {
    "model forwards": [DECODE],
    "MAML clone, clipping, update": [GRAD],  # the inner step's torch.autograd.grad
    "progress-bar score, record": [LOG],
    "replay retrieval (search, loading the samples)": [("cemr/adapt/module.py", "_inputs", "_source_sample")],
}


def breakdown(args, setup: dict, counts: Counts) -> dict:
    """ms per frame of each part of PARTS, under cProfile, for one row."""
    import cProfile
    import pstats

    cfg = compose_adapt(args.backbone, setup["data_dir"], args.breakdown_row)
    module = build_module(cfg, setup["body"], setup["prior"], counts)
    profile = cProfile.Profile()
    profile.enable()
    stream(
        args, module, RandomFrames(args.frames, setup["crop"]), Probe(counts, setup["device"], args.warmup)
    )
    profile.disable()
    stats = pstats.Stats(profile).stats  # (file, line, function) -> (calls, calls, own, cumulative, callers)

    def cumulative(functions) -> float:
        total = 0.0
        for (file, _, name), row in stats.items():
            for suffix, function, *caller in functions:
                if file.endswith(suffix) and name == function:
                    calls = [c for (_, _, by), c in row[4].items() if by in caller] if caller else [row]
                    total += sum(c[3] for c in calls)
        return total

    frames = args.frames  # cProfile covers every frame, the warm-up ones too
    total = cumulative([("cemr/adapt/module.py", "training_step")]) / frames
    parts = {p: (cumulative(fns) - cumulative(NESTED.get(p, []))) / frames for p, fns in PARTS.items()}
    parts["the rest"] = total - sum(v for p, v in parts.items() if not p.startswith("  "))
    label = args.breakdown_row or f"adapter.levels={cfg.adapter.levels} (default)"
    print(f"where a frame's time goes: {label}, {frames} frames under cProfile, {1000 * total:.1f} ms/frame")
    for part, seconds in parts.items():
        print(f"  {part:<36} {1000 * seconds:>8.1f} ms  {100 * seconds / total:>5.1f} %")
    return {"row": label, "ms_per_frame": 1000 * total, "parts_ms": {p: 1000 * v for p, v in parts.items()}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="hmr_small", help="hmr_small | hmr | vibe_small | vibe")
    parser.add_argument("--frames", type=int, default=64, help="frames streamed per row")
    parser.add_argument("--warmup", type=int, default=1, help="first frames of each row not timed or counted")
    parser.add_argument("--repeats", type=int, default=10, help="floor: timed forward+backward passes")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="32", choices=sorted(AUTOCAST))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--memory", action="store_true", help="memory vs stream length instead of the table")
    parser.add_argument(
        "--breakdown", action="store_true", help="where a frame's time goes, instead of the table"
    )
    parser.add_argument(
        "--breakdown-row",
        help="--breakdown: overrides separated by spaces (default config), e.g. experiment=boa",
    )
    parser.add_argument(
        "--memory-frames",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1000, 5000, 20000],
        help="--memory: comma-separated stream lengths (default 1000,5000,20000)",
    )
    args = parser.parse_args(argv)
    shortest = min(args.memory_frames) if args.memory else args.frames
    if shortest <= args.warmup or args.warmup < 0:
        parser.error(f"need more frames than --warmup ({args.warmup}) and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def quiet_lightning() -> None:
    """Lightning's loader-workers warning, once per row (its device lines and tips are silenced by
    `import cemr`, under every name its rank-zero logger goes by)."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = Path(tempfile.gettempdir()) / "cemr_bench"
    body_dir = make_synthetic_body_model(data_dir / "cache" / "body_synthetic")  # where the config looks
    counts = Counts()
    body = load_body_model(body_dir, "neutral")
    count_body_calls(body, counts)
    crop = compose_adapt(args.backbone, data_dir).backbone.crop_size
    setup = {
        "data_dir": data_dir,
        "body": body,
        "prior": MaxMixturePrior.from_file(body_dir / "gmm_08.pkl"),
        "crop": crop,
        "device": args.device,
    }
    meta = {
        "backbone": args.backbone,
        "crop": crop,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "frames": args.frames,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "peak_memory": "max_memory_allocated" if args.device == "cuda" else "peak RSS growth",
    }
    if args.memory:
        del meta["frames"]
    print(" ".join(f"{k}={v}" for k, v in meta.items()), flush=True)
    run = memory_run if args.memory else breakdown if args.breakdown else table
    result = run(args, setup, counts)
    if args.json:
        args.json.write_text(json.dumps({**meta, **result}, indent=2) + "\n")
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
