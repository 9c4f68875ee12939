#!/usr/bin/env bash
# GPU smoke test and benchmark of dpcli, in one run of at most ~8 minutes on one H100/H200.
#
#   benchmarks/gpu_smoke.sh [--dry-run] PATH/TO/cifar10-jpg.tar.gz [OUTDIR]
#
# Installs this checkout (no network: --no-deps, no build isolation), unpacks the CIFAR-10
# JPEG archive, runs the CUDA tests, then train -> influence -> prune -> retrain on CUDA
# (ResNet-18, $EPOCHS epochs) and the same selection through a fast proxy, and prints
# per-stage wall times, training images/s (fp32, bf16, bf16+channels_last, +compile),
# influence in float64 and float32-refined, and the peak GPU memory of each stage.
# A failed stage is reported and the script goes on (the exit status is 1 if any failed).
# OUTDIR (optional) receives the log, the summary and each stage's JSON.
# --dry-run prints the commands without running them (CPU test).
# Environment: EPOCHS (default 4), PROXY (default convnet:4), WORK (default a fresh /tmp dir),
# DEVICE (default cuda; cpu rehearses the whole script on a small archive), STEPS (throughput, 40),
# VARIANTS (throughput variants, default fp32,bf16,bf16+cl,bf16+cl+compile), ARCH (default resnet18).
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 [--dry-run] PATH/TO/cifar10-jpg.tar.gz [OUTDIR]" >&2
    exit 2
fi
TARBALL=$(realpath -m "$1")
OUTDIR=${2:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
EPOCHS=${EPOCHS:-4}
PROXY=${PROXY:-convnet:4}
DEVICE=${DEVICE:-cuda}
ARCH=${ARCH:-resnet18}
STEPS=${STEPS:-40}
VARIANTS=${VARIANTS:-fp32,bf16,bf16+cl,bf16+cl+compile}
if [[ -z "${WORK:-}" ]]; then
    WORK=$(mktemp -d /tmp/dpcli-gpu-smoke.XXXXXX)
    if (( DRY )); then trap 'rm -rf "$WORK"' EXIT; fi
fi
DATA="imagefolder:$WORK/data/cifar10-jpg"
RUNS="$WORK/runs"
STAGES="$WORK/stages.txt"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout even if the editable install fails
export PYTHONUNBUFFERED=1 DPCLI_DATA="$WORK/cache"
COMMON=(--device "$DEVICE" --run-root "$RUNS" --quiet)
TRAIN=(--arch "$ARCH" --epochs "$EPOCHS" --batch-size 512 --lr 0.2 --channels-last)
FAILED=0

# run NAME SECONDS CMD...: print the command, run it under `timeout`, record its wall time or failure
run() {
    local name=$1 limit=$2
    shift 2
    echo "+ $*" >&2
    if (( DRY )); then return 0; fi
    local t0 t1 rc
    t0=$(date +%s%N)
    timeout "$limit" "$@"
    rc=$?
    t1=$(date +%s%N)
    if (( rc == 0 )); then
        printf 'STAGE %-26s %8.1f s\n' "$name" "$(( (t1 - t0) / 1000000 ))e-3" | tee -a "$STAGES" >&2
    else
        printf 'STAGE %-26s FAILED (exit %d after %.1f s)\n' "$name" "$rc" "$(( (t1 - t0) / 1000000 ))e-3" | tee -a "$STAGES" >&2
        FAILED=1
    fi
    return $rc
}

# json FILE KEY: one value from a --json output ("-" if absent)
json() { python3 -c "import json,sys
try: print(json.load(open(sys.argv[1])).get(sys.argv[2], '-'))
except Exception: print('-')" "$1" "$2"; }

# peak GPU memory of one stage: dpcli stages are separate processes, so read it from nvidia-smi's sampler
gpu_sampler() {
    if [[ "$DEVICE" != cuda* ]] || ! command -v nvidia-smi >/dev/null; then return; fi
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$WORK/gpumem.txt" 2>/dev/null &
    SAMPLER=$!
}

if (( ! DRY )); then
    [[ -f "$TARBALL" ]] || { echo "no such archive: $TARBALL" >&2; exit 2; }
    mkdir -p "$WORK/data" "$RUNS"
    : > "$STAGES"
    if [[ -n "$OUTDIR" ]]; then mkdir -p "$OUTDIR"; exec > >(tee "$OUTDIR/smoke.log") 2>&1; fi
    date -u +%Y-%m-%dT%H:%MZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
    nproc
    gpu_sampler
fi

run install 120 python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    || echo "editable install failed; using PYTHONPATH=$ROOT"
run unpack 120 tar -xzf "$TARBALL" -C "$WORK/data"
run cuda-tests 150 python3 -m pytest -q -rs -p no:cacheprovider tests -k "cuda"

# the pipeline on the target network
run train 200 python3 -m dpcli train "$DATA" "${TRAIN[@]}" "${COMMON[@]}" --json --out "$RUNS/full/checkpoint.h5" \
    > "$WORK/train.json"
run influence-float64 90 python3 -m dpcli influence "$RUNS/full/checkpoint.h5" --device "$DEVICE" --quiet --json \
    --precision float64 --out "$RUNS/full/influence.h5" > "$WORK/influence.json"
run influence-float32-refined 90 python3 -m dpcli influence "$RUNS/full/checkpoint.h5" --device "$DEVICE" --quiet \
    --json --precision float32-refined --out "$RUNS/full/influence-f32.h5" > "$WORK/influence-f32.json"
run prune 90 python3 -m dpcli prune "$RUNS/full/influence.h5" --prune-ratio 0.3 --time-budget 15 --device "$DEVICE" \
    --quiet --json --out "$RUNS/full/mask.h5" > "$WORK/prune.json"
run retrain 200 python3 -m dpcli retrain "$DATA" --mask "$RUNS/full/mask.h5" "${TRAIN[@]}" "${COMMON[@]}" --json \
    --out "$RUNS/full/retrain.h5" > "$WORK/retrain.json"
# the same selection through the fast proxy, then the target retrained on the proxy's kept set
run proxy-select 150 python3 -m dpcli prune "$DATA" --proxy "$PROXY" --prune-ratio 0.3 --time-budget 15 "${TRAIN[@]}" \
    "${COMMON[@]}" --json --out "$RUNS/proxy/mask.h5" > "$WORK/proxy.json"
run proxy-retrain 200 python3 -m dpcli retrain "$DATA" --mask "$RUNS/proxy/mask.h5" "${TRAIN[@]}" "${COMMON[@]}" \
    --json --out "$RUNS/proxy/retrain.h5" > "$WORK/proxy-retrain.json"
[[ -n "${SAMPLER:-}" ]] && kill "$SAMPLER" 2>/dev/null
# training throughput of the loop against a plain loop, per precision / memory format / compile
run throughput 180 python3 benchmarks/train_throughput.py --data "$DATA" --device "$DEVICE" --arch "$ARCH" \
    --batch-size 512 --steps "$STEPS" --repeats 2 --variants "$VARIANTS"

if (( ! DRY )); then
    {
        echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
        cat "$STAGES"
        echo "full-data test accuracy:        $(json "$WORK/train.json" test_accuracy)"
        echo "full-data train seconds:        $(json "$WORK/train.json" train_seconds)"
        echo "influence seconds f64 / f32r:   $(json "$WORK/influence.json" seconds) / $(json "$WORK/influence-f32.json" seconds)"
        echo "target on target-selected set:  $(json "$WORK/retrain.json" test_accuracy)"
        echo "target on proxy-selected set:   $(json "$WORK/proxy-retrain.json" test_accuracy)"
        echo "proxy selection seconds:        $(json "$WORK/proxy.json" selection_seconds)"
        if [[ -s "$WORK/gpumem.txt" ]]; then
            echo "peak GPU memory used (MiB, nvidia-smi, train..proxy-retrain): $(sort -n "$WORK/gpumem.txt" | tail -1)"
        fi
        python3 - "$RUNS/full/influence.h5" "$RUNS/full/influence-f32.h5" <<'EOF' || true
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r")["S"][...].astype(np.float64) for p in sys.argv[1:3])
print(f"float32-refined vs float64 S: max relative row error {np.max(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-300)):.2e}")
EOF
    } | tee "$WORK/summary.txt"
    if [[ -n "$OUTDIR" ]]; then  # few files: the GPU lease returns at most 8
        cp "$WORK/summary.txt" "$OUTDIR/"
        for f in "$WORK"/*.json; do echo "== $(basename "$f")"; cat "$f"; echo; done > "$OUTDIR/stages.json.txt"
    fi
fi
exit $FAILED
