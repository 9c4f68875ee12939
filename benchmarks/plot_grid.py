"""Plots of the selection-quality grid: retrained test accuracy against the pruned share, one panel per regime.

A benchmark figure, run by hand after benchmarks/grid.py; it reads the cells the grid appended.

    python3 benchmarks/plot_grid.py --results benchmarks/results/grid --out docs/grid-accuracy.png

Each line is a selector's mean over its seeds; the band is one standard error.  Random pruning, the floor
every selector must beat, is drawn black and dashed; the full-data model is a grey line.  Only selectors with
cells at two or more shares are drawn, so a panel shows trends rather than isolated points.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

# drawn in this order (the rest after them), so the lines that matter most are on top
PREFERRED = ("auto", "random", "dual-beta", "optimization", "ccs", "herding", "eva")


def load(folder: Path) -> dict[str, list[dict]]:
    """Every measured cell per regime (toy rehearsal cells and failed cells left out)."""
    cells: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(folder.glob("cells-*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            c = json.loads(line)
            if c.get("toy") or c.get("test_accuracy") is None:
                continue
            cells[c["regime"]].append(c)
    return cells


def summarize(cells: list[dict]) -> tuple[dict[str, dict[float, tuple[float, float, int]]], float | None]:
    """Per selector and share: (mean, standard error, seeds); and the full-data accuracy."""
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    full = [c["test_accuracy"] for c in cells if c["method"] == "full"]
    for c in cells:
        if c["method"] != "full" and c.get("ratio"):
            acc[c["method"]][round(float(c["ratio"]), 4)].append(float(c["test_accuracy"]))
    out: dict[str, dict[float, tuple[float, float, int]]] = {}
    for method, by_ratio in acc.items():
        out[method] = {
            r: (statistics.fmean(v), statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0, len(v))
            for r, v in sorted(by_ratio.items())
        }
    return out, statistics.fmean(full) if full else None


def plot(cells: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted(cells)
    cols = min(3, len(regimes))
    rows = math.ceil(len(regimes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, regime in zip(axes.flat, regimes):
        stats, full = summarize(cells[regime])
        order = [m for m in PREFERRED if m in stats] + sorted(m for m in stats if m not in PREFERRED)
        palette = itertools.cycle(plt.cm.tab20.colors[2:])  # the first pair (blue) is auto's alone
        for method in order:
            pts = stats[method]
            if len(pts) < 2:
                continue
            xs = [100 * r for r in pts]
            ys = [m for m, _, _ in pts.values()]
            es = [e for _, e, _ in pts.values()]
            style = (
                {"color": "black", "linestyle": "--", "linewidth": 2}
                if method == "random"
                else {"color": plt.cm.tab20.colors[0], "linewidth": 2.6}
                if method == "auto"
                else {"color": next(palette), "linewidth": 1.1, "alpha": 0.85}
            )
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=method, **style)
            ax.fill_between(
                xs,
                [y - e for y, e in zip(ys, es)],
                [y + e for y, e in zip(ys, es)],
                color=line.get_color(),
                alpha=0.15,
                linewidth=0,
            )
        if full is not None:
            ax.axhline(full, color="grey", linewidth=0.8, label="full data")
        ax.set_title(regime)
        ax.set_xlabel("pruned share of the training set (%)")
        ax.set_ylabel("test accuracy after retraining (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    for ax in list(axes.flat)[len(regimes) :]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/grid"))
    ap.add_argument("--out", type=Path, default=Path("docs/grid-accuracy.png"))
    a = ap.parse_args()
    cells = load(a.results)
    if not cells:
        raise SystemExit(f"no grid cells under {a.results}")
    plot(cells, a.out)
    print(f"wrote {a.out}: {', '.join(f'{r} ({len(c)} cells)' for r, c in sorted(cells.items()))}")


if __name__ == "__main__":
    main()
