"""What the selection grid says about ``auto``'s candidates: the tie table it ships and its hit rate.

Run by hand (not a test); reads the grid's JSON lines (benchmarks/results/grid/cells-*.jsonl), trains nothing.

``--prior``: for every prune share of the grid, ``auto``'s candidates ranked by their mean *regret* across the
regimes: in each regime, the best mean retrained accuracy of any selector at that share minus the candidate's
mean there, averaged over the regimes that ran the candidate.  The order is :data:`auto.TIE_ORDER`, which
decides a tie on ``auto``'s validation.  A candidate is read from the grid cells of the method that makes the
same selection (:data:`GRID_NAME`; ``random-stratified`` from plain ``random``, the nearest the grid ran).
Candidates no regime ran (``strata``, ``strata+cutoff``) rank last, in candidate order.

``--hits``: for every regime x share, the selector with the best mean retrained accuracy vs what ``auto``
chose there (its recorded choice per seed, read as the grid method that makes it): a hit where they are the
same method; *within spread* where the chosen method's mean is within the best's seed standard deviation;
and ``auto``'s own retrained mean against the best's and random's.  Cells of the current default (those that
record ``selection_code``) and of earlier defaults (the rest, and ``--superseded`` folders) are counted apart.

``--cost``: what a validation that sees retraining would cost (SVP: train each candidate's kept set from
scratch for a few epochs), from the grid's own timings: one full-data training (its ``train_seconds``), one epoch
on a kept set at each share (``random``'s retrains: ``train_seconds / epochs``) and ``auto``'s current selection
(``select_seconds``); the epochs per candidate that fit in 10 % of one training beside what auto costs already.

``--docs FILE`` writes the three tables between ``<!-- auto-evidence:NAME:begin/end -->`` markers instead.

    python3 benchmarks/auto_evidence.py --prior
    python3 benchmarks/auto_evidence.py --cost
    python3 benchmarks/auto_evidence.py --docs docs/benchmarks.md --superseded benchmarks/results/grid/superseded
    python3 benchmarks/auto_evidence.py --hits --superseded benchmarks/results/grid/superseded
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.grid import EPSILON_CELLS, REGIMES, _replace, mean_se, read_cells

# auto's candidate -> the grid method whose cells make the same selection
GRID_NAME = {
    "pure": "optimization",
    "balanced": "opt+balance",
    "strata+cutoff+features": "opt+coverage+0.5x+features",
    "dual-beta": "dual-beta",
    "random-stratified": "random",
}
CANDIDATES = ("balanced", "pure", "strata", "strata+cutoff", "strata+cutoff+features", "dual-beta", "random-stratified")
NOT_SELECTORS = {"full", "auto", *EPSILON_CELLS}


def accuracies(cells: list[dict]) -> dict[tuple[str, float], list[float]]:
    acc: dict = {}
    for c in cells:
        if "error" in c or c.get("toy") or c["method"] in {"full", *EPSILON_CELLS}:
            continue
        acc.setdefault((c["method"], round(float(c["ratio"]), 6)), []).append(float(c["test_accuracy"]))
    return acc


def load(folder: Path) -> dict[str, list[dict]]:
    return {name: read_cells(folder / f"cells-{name}.jsonl") for name in REGIMES}


def best_selector(acc: dict, ratio: float) -> tuple[str, float, float] | None:
    """(method, mean, seed sd) of the best mean retrained accuracy at ``ratio`` among the selectors."""
    rows = [(m, *mean_se(v)[::2]) for (m, r), v in acc.items() if r == ratio and m not in NOT_SELECTORS]
    return max(rows, key=lambda t: t[1]) if rows else None


def prior(cells: dict[str, list[dict]]) -> dict[float, list[tuple[str, float, int]]]:
    """Per share: (candidate, mean regret in points, regimes) in ascending regret, then the unmeasured ones."""
    acc = {name: accuracies(cs) for name, cs in cells.items()}
    ratios = sorted({r for a in acc.values() for (_, r) in a}, reverse=True)
    out = {}
    for r in ratios:
        regret: dict[str, list[float]] = {}
        for a in acc.values():
            best = best_selector(a, r)
            for cand, method in GRID_NAME.items():
                if best and (method, r) in a:
                    regret.setdefault(cand, []).append(best[1] - float(np.mean(a[(method, r)])))
        ranked = sorted(
            ((c, float(np.mean(v)), len(v)) for c, v in regret.items()), key=lambda t: (t[1], CANDIDATES.index(t[0]))
        )
        out[r] = ranked + [(c, float("nan"), 0) for c in CANDIDATES if c not in regret]
    return out


def print_prior(table: dict) -> None:
    print("| pruned | " + " | ".join(f"#{i + 1}" for i in range(len(CANDIDATES))) + " |")
    print("|---|" + "---|" * len(CANDIDATES))
    for r, ranked in table.items():
        print(f"| {r:.0%} | " + " | ".join(f"`{c}` {g:.2f} ({k})" if k else f"`{c}` –" for c, g, k in ranked) + " |")
    print("\nTIE_ORDER = {")
    for r, ranked in table.items():
        print(f"    {r}: ({', '.join(repr(c) for c, _, _ in ranked)}),")
    print("}")


def candidate_of(rule: str) -> str:
    """The candidate a solver label names (cells without auto's record: the frozen backbone's masks)."""
    if not rule.startswith("swap"):
        return rule  # dual-beta, random-stratified
    if "+coverage(" not in rule:
        return "pure"
    if "strata=1," in rule:
        return "balanced"
    if rule.endswith("+features"):
        return "strata+cutoff+features"
    return "strata" if "cutoff=0)" in rule else "strata+cutoff"


def chosen(c: dict) -> str:
    """The candidate auto chose in cell ``c``."""
    rec = c.get("auto", {}).get("auto", {})
    return rec.get("chosen") if isinstance(rec, dict) and rec.get("chosen") else candidate_of(c.get("rule", "?"))


def hits(cells: dict[str, list[dict]], old: dict[str, list[dict]]) -> None:
    print(
        "| regime | pruned | best selector (mean ± sd) | auto chose (seeds; read as GRID_NAME's method) | hit | "
        "within spread | auto | auto − best | auto − random | default |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals: dict = {}
    for name in REGIMES:
        acc = accuracies(cells[name])
        for gen, source in (("current", cells[name]), ("earlier", cells[name] + old.get(name, []))):
            mine = [
                c
                for c in source
                if c["method"] == "auto"
                and "error" not in c
                and not c.get("toy")
                and (("selection_code" in c) == (gen == "current"))
            ]
            for r in sorted({round(float(c["ratio"]), 6) for c in mine}, reverse=True):
                best = best_selector(acc, r)
                at = [c for c in mine if round(float(c["ratio"]), 6) == r]
                if best is None:
                    continue
                names = [chosen(c) for c in at]
                picks = [GRID_NAME.get(n, n) for n in names]  # the grid method that makes that selection
                hit = sum(p == best[0] for p in picks)
                near = sum((p, r) in acc and best[1] - np.mean(acc[(p, r)]) <= best[2] for p in picks)
                mean = float(np.mean([c["test_accuracy"] for c in at]))
                rnd = f"{mean - np.mean(acc[('random', r)]):+.2f}" if ("random", r) in acc else "–"
                counts = {n: names.count(n) for n in sorted(set(names))}
                t = totals.setdefault((name, gen), [0, 0, 0])
                t[0], t[1], t[2] = t[0] + hit, t[1] + near, t[2] + len(picks)
                print(
                    f"| {name} | {r:.0%} | `{best[0]}` {best[1]:.2f} ± {best[2]:.2f} | "
                    + ", ".join(f"`{p}` ×{k}" for p, k in counts.items())
                    + f" | {hit}/{len(picks)} | {near}/{len(picks)} | {mean:.2f} | {mean - best[1]:+.2f} | {rnd} "
                    f"| {gen} |"
                )
    print("\n| regime | default | hit rate | within the best's spread |")
    print("|---|---|---|---|")
    for (name, gen), (h, n_near, n) in totals.items():
        print(f"| {name} | {gen} | {h}/{n} ({h / n:.0%}) | {n_near}/{n} ({n_near / n:.0%}) |")


def cost(cells: dict[str, list[dict]], share: float = 0.1) -> None:
    """Epochs of from-scratch training per candidate that fit in ``share`` of one full-data training."""
    print(
        "| regime | pruned | one training (s) | one epoch on the kept set (s) | auto's selection (s) | candidates | "
        "proxy epochs per candidate within 10 % | the regime's epochs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, regime in REGIMES.items():
        full = [c["train_seconds"] for c in cells[name] if c["method"] == "full" and "train_seconds" in c]
        if not full or regime.backbone_per_class:  # frozen-backbone: the "retraining" is the head refit auto runs
            continue
        for r in sorted({round(float(c["ratio"]), 6) for c in cells[name] if c["method"] == "random"}, reverse=True):

            def at(m: str, name: str = name, r: float = r) -> list[dict]:
                return [
                    c for c in cells[name] if c["method"] == m and round(float(c["ratio"]), 6) == r and "error" not in c
                ]

            epoch = float(np.median([c["train_seconds"] for c in at("random")])) / regime.epochs
            mine = [c for c in at("auto") if "selection_code" in c] or at("auto")
            select = float(np.median([c["select_seconds"] for c in mine])) if mine else 0.0
            k = len(CANDIDATES)  # the current default's, with training dynamics
            bound = share * float(np.median(full)) / (k * epoch)  # were auto's own selection free
            room = max(share * float(np.median(full)) - select, 0.0) / (k * epoch)
            print(
                f"| {name} | {r:.0%} | {np.median(full):.0f} | {epoch:.1f} | "
                f"{f'{select:.1f}' if mine else 'not run'} | {k} | {room:.2f} (free selection: {bound:.2f}) | "
                f"{regime.epochs} |"
            )


def write_docs(path: Path, cells: dict[str, list[dict]], old: dict[str, list[dict]]) -> None:
    """Each table between its markers in ``path`` (the prior's Python literal left out: it is in auto.py)."""
    import contextlib
    import io

    def text(fn, *a) -> str:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            fn(*a)
        return buf.getvalue().split("\nTIE_ORDER = {")[0].rstrip("\n")

    doc = path.read_text()
    autos = {k: [c for c in v if c["method"] == "auto"] for k, v in old.items()}
    for name, body in (
        ("prior", text(print_prior, prior(cells))),
        ("hits", text(hits, cells, autos)),
        ("cost", text(cost, cells)),
    ):
        begin, end = f"<!-- auto-evidence:{name}:begin -->", f"<!-- auto-evidence:{name}:end -->"
        doc = _replace(doc, begin, end, f"{begin}\n{body}\n{end}")
    path.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/grid"))
    ap.add_argument("--superseded", type=Path, help="a folder of earlier defaults' auto cells")
    ap.add_argument("--prior", action="store_true")
    ap.add_argument("--hits", action="store_true")
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--docs", type=Path, help="write the tables into this markdown file's auto-evidence sections")
    args = ap.parse_args()
    cells = load(args.results)
    if args.docs:
        write_docs(args.docs, cells, load(args.superseded) if args.superseded else {})
        return
    if args.cost:
        cost(cells)
    if args.prior or not (args.hits or args.cost):
        print_prior(prior(cells))
    if args.hits:
        old = load(args.superseded) if args.superseded else {}
        hits(cells, {k: [c for c in v if c["method"] == "auto"] for k, v in old.items()})


if __name__ == "__main__":
    main()
