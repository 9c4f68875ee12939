#!/usr/bin/env bash
# GPU smoke test and benchmark of dpcli, in one run of at most ~8 minutes on one H100/H200.
#
#   benchmarks/gpu_smoke.sh [--dry-run] PATH/TO/cifar10-jpg.tar.gz
#
# Installs this checkout (no network: --no-deps, no build isolation), unpacks the CIFAR-10
# JPEG archive, runs the CUDA tests, then train -> influence -> prune -> retrain on CUDA
# (ResNet-18, $EPOCHS epochs) and the same selection through a fast proxy, and prints
# per-stage wall times, training images/s (fp32, bf16, bf16+channels_last, +compile) and
# the peak GPU memory.  --dry-run prints the commands without running them (CPU test).
# Environment: EPOCHS (default 4), PROXY (default convnet:4), WORK (default a fresh /tmp dir).
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ $# -ne 1 ]]; then
    echo "usage: $0 [--dry-run] PATH/TO/cifar10-jpg.tar.gz" >&2
    exit 2
fi
TARBALL=$(realpath -m "$1")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
EPOCHS=${EPOCHS:-4}
PROXY=${PROXY:-convnet:4}
if [[ -z "${WORK:-}" ]]; then
    WORK=$(mktemp -d /tmp/dpcli-gpu-smoke.XXXXXX)
    if (( DRY )); then trap 'rm -rf "$WORK"' EXIT; fi
fi
DATA="imagefolder:$WORK/data/cifar10-jpg"
RUNS="$WORK/runs"
STAGES="$WORK/stages.txt"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout even if the editable install fails
COMMON=(--device cuda --run-root "$RUNS" --quiet)
TRAIN=(--arch resnet18 --epochs "$EPOCHS" --batch-size 512 --lr 0.2)

# run NAME SECONDS CMD...: print the command, run it under `timeout`, record its wall time
run() {
    local name=$1 limit=$2
    shift 2
    echo "+ $*" >&2
    if (( DRY )); then return 0; fi
    local t0 t1
    t0=$(date +%s%N)
    timeout "$limit" "$@"
    t1=$(date +%s%N)
    printf 'STAGE %-26s %8.1f s\n' "$name" "$(( (t1 - t0) / 1000000 ))e-3" | tee -a "$STAGES"
}

# json FILE KEY: one value from a --json output
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

if (( ! DRY )); then
    [[ -f "$TARBALL" ]] || { echo "no such archive: $TARBALL" >&2; exit 2; }
    mkdir -p "$WORK/data" "$RUNS"
    : > "$STAGES"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
fi

run install 120 python3 -m pip install --no-deps --no-build-isolation --no-index -e . \
    || echo "editable install failed; using PYTHONPATH=$ROOT"
run unpack 120 tar -xzf "$TARBALL" -C "$WORK/data"
run cuda-tests 150 python3 -m pytest -q -x tests/test_train_perf.py -k "cuda or refined or host"

# the pipeline on the target network
run train 240 python3 -m dpcli train "$DATA" "${TRAIN[@]}" "${COMMON[@]}" --json --out "$RUNS/full/checkpoint.h5" \
    > "$WORK/train.json"
run influence 120 python3 -m dpcli influence "$RUNS/full/checkpoint.h5" --device cuda --quiet --json \
    --out "$RUNS/full/influence.h5" > "$WORK/influence.json"
run prune 120 python3 -m dpcli prune "$RUNS/full/influence.h5" --prune-ratio 0.3 --time-budget 45 --device cuda --quiet --json \
    --out "$RUNS/full/mask.h5" > "$WORK/prune.json"
run retrain 240 python3 -m dpcli retrain "$DATA" --mask "$RUNS/full/mask.h5" "${TRAIN[@]}" "${COMMON[@]}" --json \
    --out "$RUNS/full/retrain.h5" > "$WORK/retrain.json"
# the same selection through the fast proxy, then the target retrained on the proxy's kept set
run proxy-select 180 python3 -m dpcli prune "$DATA" --proxy "$PROXY" --prune-ratio 0.3 --time-budget 45 "${TRAIN[@]}" "${COMMON[@]}" \
    --json --out "$RUNS/proxy/mask.h5" > "$WORK/proxy.json"
run proxy-retrain 240 python3 -m dpcli retrain "$DATA" --mask "$RUNS/proxy/mask.h5" "${TRAIN[@]}" "${COMMON[@]}" \
    --json --out "$RUNS/proxy/retrain.h5" > "$WORK/proxy-retrain.json"
# training throughput of the loop, per precision / memory format / compile
run throughput 180 python3 benchmarks/train_throughput.py --data "$DATA" --device cuda --arch resnet18 \
    --batch-size 512 --steps 40 --repeats 2 --variants fp32,bf16,bf16+cl,bf16+cl+compile

if (( ! DRY )); then
    echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    cat "$STAGES"
    echo "full-data test accuracy:        $(json "$WORK/train.json" test_accuracy)"
    echo "target on target-selected set:  $(json "$WORK/retrain.json" test_accuracy)"
    echo "target on proxy-selected set:   $(json "$WORK/proxy-retrain.json" test_accuracy)"
    echo "proxy selection seconds:        $(json "$WORK/proxy.json" selection_seconds)"
fi
