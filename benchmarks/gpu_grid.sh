#!/usr/bin/env bash
# The quality grid on one GPU, in one call of at most 9 minutes: the `paper` regime first (ResNet-18 on all of
# CIFAR-10), then cifar-scarce and cifar-rich with whatever time is left.
#
#   bash benchmarks/gpu_grid.sh /path/to/cifar10-jpg.tar.gz OUT [extra grid.py options]
#
# Order (benchmarks/grid.py, comparison_order): the seed-0 full-data model and its S, then seed 0 of `auto` and
# random at 90/80/70/50/30 % pruned (each ratio's pair at once), the paper's Eq. 3 at 40 % and the README's own
# command (`prune --epsilon 0.05` with the default method), each retrained beside random pruning of the count it
# reached, then dual-beta, ccs and eva; then seeds 1 and 2 the same way, each ending with its full-data cell.
#
# Finished cells are appended, one flushed JSON line each, to the committed
# benchmarks/results/grid/cells-<regime>.jsonl (GRID_RESULTS) and to OUT; a run skips every cell already in
# either, so the next call resumes where this one stopped.  Where the checkout does not come back (a lent
# machine), OUT holds this run's new cells: append them to the committed files, e.g.
#   cat OUT/cells-paper.jsonl >> benchmarks/results/grid/cells-paper.jsonl
# The run stops cleanly when GRID_BUDGET seconds (default 500, counted from this script's start, data unpack
# included) are spent: between cells and at every training epoch; a `timeout` 30 s later is the backstop.
# A fresh machine first retrains the seed-0 model and its S (about 1.5 minutes on an H100); GPU training is
# not bitwise repeatable, so each cell names the model it was selected on (its `model` field).
# OUT receives cells-<regime>.jsonl (new cells only), machine.json and log.txt.  Render the docs tables with
#   python3 benchmarks/grid.py --report-only --results benchmarks/results/grid
#
# Environment: GRID_BUDGET (seconds), GRID_RESULTS (the results folder, default benchmarks/results/grid),
# GRID_REGIMES (default "paper cifar-scarce cifar-rich"), GRID_WORK (scratch, default /tmp/dpcli-gpu-grid),
# GRID_THREADS (CPU threads for selection, default 8).  The CPU rehearsal of every path at toy size (30 images
# per class, 3 epochs, a ConvNet of width 8), with a stop and a resume (benchmarks/results/paper-rehearsal/):
#   GRID_RESULTS=/tmp/r GRID_REGIMES=paper GRID_BUDGET=120 bash benchmarks/gpu_grid.sh TARBALL OUT --device cpu --tiny --threads 1
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
budget=${GRID_BUDGET:-500}
work=${GRID_WORK:-/tmp/dpcli-gpu-grid}
repo=$(cd "$(dirname "$0")/.." && pwd)
results=${GRID_RESULTS:-$repo/benchmarks/results/grid}
read -r -a regimes <<< "${GRID_REGIMES:-paper cifar-scarce cifar-rich}"
mkdir -p "$out" "$work" "$results"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
deadline=$((start + budget))

set +e
timeout --kill-after=10 $((budget + 30)) python3 "$repo/benchmarks/grid.py" \
    --regimes "${regimes[@]}" --tarball "$tarball" --work "$work" --results "$results" --mirror "$out" \
    --device cuda --threads "${GRID_THREADS:-8}" --deadline "$deadline" "$@" 2>&1 | tee -a "$out/log.txt"
rc=${PIPESTATUS[0]}
set -e
cells=$(cat "$out"/cells-*.jsonl 2>/dev/null | wc -l || true)  # none yet: cat fails, wc says 0
echo "gpu_grid.sh: exit $rc after $(( $(date +%s) - start )) s; $cells cells in $out (this and earlier runs), also in $results" \
    | tee -a "$out/log.txt"
exit "$rc"
