#!/usr/bin/env bash
# The GPU check of issue 16, on a machine with an NVIDIA GPU (meant to take under 8 minutes on one
# H200; not yet timed on one):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]
#
# 1. nvidia-smi and what torch sees;
# 2. the speed table (python -m benchmarks.bench_adapt) of hmr_small on CUDA at precision 32,
#    bf16-mixed and 16-mixed, and of hmr at $SPEED_PRECISION: each is also the CUDA path of the
#    AdaptationModule at that precision;
# 3. python adapt.py trainer=gpu at each precision on a tiny synthetic build (the first run renders
#    it and trains the source model and video encoder; the next two reuse them);
# 4. the same under DDP with 2 processes (adapter.reset=sequence), where there are 2 GPUs;
# 5. optionally, memory vs stream length ($MEMORY_FRAMES, e.g. 1000,5000,20000: minutes per 1000).
# Then one summary: each check ok / FAILED / skipped with its time. It runs every check whatever
# failed before, and exits 1 if any failed. Logs and the tables' JSON go to OUT_DIR (default $OUT,
# else a new temporary dir); data, checkpoints and run dirs go to a temporary dir removed at the
# end: nothing is written into the repository.
#
# Environment: SPEED_FRAMES (24) frames per table row, SPEED_PRECISION (16-mixed, trainer=gpu's)
# for the hmr table, MEMORY_FRAMES (empty: skipped), CHECK_TIMEOUT (420) seconds per check.
# CHECK_DEVICE=cpu rehearses the whole script on a machine without a GPU (trainer=cpu, precisions 32
# and bf16-mixed, as torch has no 16-mixed on CPU; the 2-process DDP check on gloo), so that a scarce
# GPU session does not find a mistake in the script itself.

set -u -o pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.." || exit 1

SPEED_FRAMES=${SPEED_FRAMES:-24}
SPEED_PRECISION=${SPEED_PRECISION:-16-mixed}
MEMORY_FRAMES=${MEMORY_FRAMES:-}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-420}
CHECK_DEVICE=${CHECK_DEVICE:-cuda}
case "$CHECK_DEVICE" in
cuda) PRECISIONS=(32 bf16-mixed 16-mixed) TRAINER=gpu DDP=(trainer=ddp) ;;
cpu)
    PRECISIONS=(32 bf16-mixed) TRAINER=cpu DDP=(trainer=cpu trainer.strategy=ddp trainer.devices=2)
    [ "$SPEED_PRECISION" != 16-mixed ] || SPEED_PRECISION=bf16-mixed # torch has no 16-mixed on CPU
    ;;
*)
    echo "CHECK_DEVICE must be cuda or cpu, not '$CHECK_DEVICE'" >&2
    exit 2
    ;;
esac

# tests/conftest.py's TINY, with two target sequences so that DDP gives each rank one
TINY=(
    dataset.prepare.source_sequences=5
    dataset.prepare.target_sequences=2
    dataset.prepare.frames_per_sequence=32
    dataset.prepare.source_frame_stride=2
    dataset.prepare.workers=4
    dataset.prepare.progress=false
    training.max_epochs=1
    training.batch_size=16
    training.videomae.max_epochs=1
    training.align.epochs=5
    logger=none
    trainer.enable_progress_bar=false
    trainer.enable_model_summary=false
)

gpu_info() {
    local rc=0
    [ "$CHECK_DEVICE" = cpu ] || nvidia-smi || rc=1
    python - <<'EOF' || rc=1
import os
import sys

import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if os.environ["CHECK_DEVICE"] == "cpu":
    print(f"CPU rehearsal: {torch.get_num_threads()} threads")
    sys.exit(0)
assert torch.cuda.is_available(), "torch sees no CUDA device"
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
print(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF
    return $rc
}

bench() { # bench BACKBONE PRECISION: the speed table, its JSON into OUT_DIR
    python -m benchmarks.bench_adapt --device "$CHECK_DEVICE" --backbone "$1" --precision "$2" \
        --frames "$SPEED_FRAMES" --json "$OUT_DIR/speed_$1_$2.json"
}

# adapt RUN_NAME OVERRIDES...: python adapt.py on the tiny build, then its metrics.json must be finite
adapt() {
    local run="$WORK/runs/$1"
    shift
    python adapt.py paths.data_dir="$WORK/data" paths.checkpoint_dir="$WORK/checkpoints" "${TINY[@]}" \
        hydra.run.dir="$run" "$@" || return 1
    python - "$run/metrics.json" <<'EOF'
import json, math, sys

metrics = json.load(open(sys.argv[1]))
shown = ("pa_mpjpe", "source_pa_mpjpe", "frames", "outer_steps", "clip_steps", "skipped_steps")
print(", ".join(f"{k} {metrics[k]:g}" for k in shown if k in metrics))
sys.exit(0 if math.isfinite(metrics["pa_mpjpe"]) else 1)
EOF
}

if [ "${1:-}" = "--step" ]; then # one check, run by check() below under a timeout
    shift
    "$@"
    exit
fi

OUT_DIR=$(realpath -m "${1:-${OUT:-$(mktemp -d -t cemr_gpu_check.XXXXXX)}}")
WORK=$(mktemp -d -t cemr_gpu_work.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT_DIR"
export OUT_DIR WORK SPEED_FRAMES SPEED_PRECISION CHECK_DEVICE WANDB_MODE=offline PYTHONUNBUFFERED=1

SUMMARY=()
FAILED=0

# check NAME COMMAND...: run it under a timeout (which ends its whole process group), its output
# into OUT_DIR/NAME.log, the log's tail here
check() {
    local name=$1 log="$OUT_DIR/$1.log" start=$SECONDS rc
    shift
    echo "=== $name: $*"
    timeout "$CHECK_TIMEOUT" bash "$SELF" --step "$@" >"$log" 2>&1
    rc=$?
    tail -n 20 "$log"
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("$(printf '%-8s %-28s %5ds' ok "$name" $((SECONDS - start)))")
    else
        FAILED=1
        SUMMARY+=("$(printf '%-8s %-28s %5ds  exit %d, log %s' FAILED "$name" $((SECONDS - start)) "$rc" "$log")")
    fi
}

skip() {
    SUMMARY+=("$(printf '%-8s %-28s %6s  %s' skipped "$1" - "$2")")
}

if [ "$CHECK_DEVICE" = cpu ]; then
    gpus=2 # the DDP check runs 2 gloo processes on the CPU
else
    gpus=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
fi

check gpu_info gpu_info
for precision in "${PRECISIONS[@]}"; do
    check "speed_hmr_small_$precision" bench hmr_small "$precision"
done
check "speed_hmr_$SPEED_PRECISION" bench hmr "$SPEED_PRECISION"
for precision in "${PRECISIONS[@]}"; do
    check "adapt_$precision" adapt "${TRAINER}_$precision" trainer="$TRAINER" trainer.precision="$precision"
done
if [ "$gpus" -ge 2 ]; then
    check adapt_ddp_2gpus adapt ddp "${DDP[@]}" adapter.reset=sequence
else
    skip adapt_ddp_2gpus "$gpus GPU(s)"
fi
if [ -n "$MEMORY_FRAMES" ]; then
    check memory python -m benchmarks.bench_adapt --device "$CHECK_DEVICE" --precision "$SPEED_PRECISION" \
        --memory --memory-frames "$MEMORY_FRAMES" --json "$OUT_DIR/memory.json"
else
    skip memory "MEMORY_FRAMES not set"
fi

echo "=== summary (logs and JSON in $OUT_DIR)"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
