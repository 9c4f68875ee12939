#!/usr/bin/env bash
# The quality grid's GPU regimes (cifar-scarce, cifar-rich) on one GPU, within a hard time budget.
#
#   bash benchmarks/gpu_grid.sh /path/to/cifar10-jpg.tar.gz OUT [extra grid.py options]
#
# Cells run in priority order (every method and ratio at seed 0 in both regimes, then seed 1, ...);
# the run stops cleanly when GRID_BUDGET seconds (default 280, counted from this script's start, data
# unpack included) are spent: between cells, and at every training epoch.  A `timeout` 40 s later is
# the backstop.  Every finished cell is already a line of OUT/cells-<regime>.jsonl (flushed at once), so
# whatever stops the run, OUT holds every finished cell.  OUT receives four files only:
#   cells-cifar-scarce.jsonl  cells-cifar-rich.jsonl  machine.json  log.txt
# Render the docs tables from them (beside earlier results) with
#   python3 benchmarks/grid.py --report-only --results benchmarks/results/grid OUT
#
# Environment: GRID_BUDGET (seconds), GRID_WORK (scratch, default /tmp/dpcli-gpu-grid), GRID_THREADS
# (CPU threads for selection, default 8).  A CPU dry run of every code path at toy sizes:
#   GRID_BUDGET=900 bash benchmarks/gpu_grid.sh cifar10-jpg.tar.gz /tmp/out --device cpu --tiny --threads 1
set -euo pipefail

start=$(date +%s)
if [ $# -lt 2 ]; then
    echo "usage: bash benchmarks/gpu_grid.sh CIFAR10_JPG_TARBALL OUT [grid.py options]" >&2
    exit 64
fi
tarball=$1
out=$2
shift 2
if [ ! -f "$tarball" ]; then
    echo "gpu_grid.sh: $tarball: no such file (the CIFAR-10 JPEG tarball)" >&2
    exit 66
fi
budget=${GRID_BUDGET:-280}
work=${GRID_WORK:-/tmp/dpcli-gpu-grid}
mkdir -p "$out" "$work"
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
deadline=$((start + budget))

set +e
timeout --kill-after=10 $((budget + 40)) python3 "$repo/benchmarks/grid.py" \
    --regimes cifar-scarce cifar-rich --tarball "$tarball" --work "$work" --results "$out" \
    --device cuda --threads "${GRID_THREADS:-8}" --deadline "$deadline" "$@" 2>&1 | tee "$out/log.txt"
rc=${PIPESTATUS[0]}
set -e
cells=$(cat "$out"/cells-*.jsonl 2>/dev/null | wc -l)
echo "gpu_grid.sh: exit $rc after $(( $(date +%s) - start )) s; $cells cells in $out" | tee -a "$out/log.txt"
exit "$rc"
