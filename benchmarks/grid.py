"""Selection-quality grid: every `prune --method` x prune ratios x seeds, each mask retrained.

Run by hand (not a test); resumable: every finished cell (method, ratio, seed) is a JSON file
under ``<work>/cells/``, so a rerun skips it and the grid can span several sittings.  The
CPU proxy of docs/benchmarks.md::

    python benchmarks/grid.py --tarball ../shared/data/cifar10-jpg.tar.gz --work /tmp/bench \\
        --per-class 1000 --width 16 --epochs 15 --docs docs/benchmarks.md

Protocol (the paper's): train the full-data model once (seed 0), compute exact S, then for
each cell select with the method (selection seed = cell seed where the method is random),
retrain a fresh model on the kept samples with the same settings and training seed = cell
seed, and record the final test accuracy on the whole test set.  The full-data accuracy is
the mean over the same seeds.  Extras: Figure 4 (test accuracy against training time for
pruned and full data, per-epoch evaluation) and Figure 3 (selected with this network,
retrained with a wider one: ``--large-width``).

Writes the generated part of ``--docs`` between ``<!-- grid:begin -->`` and
``<!-- grid:end -->`` (the rest of the file is left as written) and a plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dpcli.stages import core as stages  # noqa: E402
from dpcli.artifacts import runs as pipeline
from dpcli.select import solvers as selection
from dpcli.config import InfluenceConfig, PruneConfig, TrainConfig  # noqa: E402
from dpcli.data.sources import load_dataset  # noqa: E402
from dpcli.train.loop import resolve_device, train  # noqa: E402


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: dict = field(default_factory=dict)
    seeded: bool = True  # the selection itself depends on the seed


METHODS = {
    "random": MethodSpec("random", {"method": "random"}),
    "herding": MethodSpec("herding", {"method": "herding"}, seeded=False),
    "forgetting": MethodSpec("forgetting", {"method": "forgetting"}, seeded=False),
    "grand": MethodSpec("grand", {"method": "grand"}, seeded=False),
    "el2n": MethodSpec("el2n", {"method": "el2n"}, seeded=False),
    "influence-score": MethodSpec("influence-score", {"method": "influence-score"}, seeded=False),
    "ccs": MethodSpec("ccs", {"method": "ccs", "cutoff": None}),
    "tdds": MethodSpec("tdds", {"method": "tdds"}, seeded=False),
    "ccs-loss": MethodSpec("ccs-loss", {"method": "ccs-loss", "cutoff": None}),
    "tdds-loss": MethodSpec("tdds-loss", {"method": "tdds-loss"}, seeded=False),
    "dual": MethodSpec("dual", {"method": "dual"}, seeded=False),
    "dual-beta": MethodSpec("dual-beta", {"method": "dual-beta"}),
    "d2": MethodSpec("d2", {"method": "d2", "cutoff": None}, seeded=False),
    "moderate": MethodSpec("moderate", {"method": "moderate"}, seeded=False),
    # the paper's objective, then our options on top of it
    "opt": MethodSpec("opt", {}),
    "opt+balance": MethodSpec("opt+balance", {"balance": True}),
    "opt+coverage": MethodSpec("opt+coverage", {"balance": True, "strata": 10}),
    "opt+coverage+cutoff": MethodSpec("opt+coverage+cutoff", {"balance": True, "strata": 10, "cutoff": None}),
    "opt+coverage+0.5x": MethodSpec("opt+coverage+0.5x", {"balance": True, "strata": 10, "cutoff_ratio": 0.5}),
    "opt+coverage+0.5x+features": MethodSpec("opt+coverage+0.5x+features",
                                             {"balance": True, "strata": 10, "cutoff_ratio": 0.5,
                                              "match_features": True}, seeded=False),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def prepare_subset(args: argparse.Namespace) -> Path:
    """``per_class`` training images per class (seeded) and the whole test set, as symlinks."""
    if args.data:
        return Path(args.data)
    work = Path(args.work)
    full = work / "cifar10-jpg"
    if not full.exists():
        log(f"extracting {args.tarball}")
        with tarfile.open(args.tarball) as tar:
            tar.extractall(work, filter="data")
    dst = work / f"cifar10-{args.per_class}pc"
    if dst.exists():
        return dst
    rng = random.Random(args.subset_seed)
    for split, per in (("train", args.per_class), ("test", None)):
        for c in sorted(os.listdir(full / split)):
            files = sorted(os.listdir(full / split / c))
            if per and per < len(files):
                files = sorted(rng.sample(files, per))
            (dst / split / c).mkdir(parents=True, exist_ok=True)
            for f in files:
                os.symlink((full / split / c / f).resolve(), dst / split / c / f)
    return dst


def base_config(args: argparse.Namespace, dataset: str, **changes) -> TrainConfig:
    cfg = TrainConfig(dataset=dataset, arch=args.arch, width=args.width, depth=args.depth, epochs=args.epochs,
                      lr=args.lr, batch_size=args.batch_size, augment=True, seed=0)
    return cfg.replace(**changes)


def retrain_cell(ds, mask: stages.MaskInfo, cfg: TrainConfig, out: Path, device, eval_every: int) -> dict:
    t0 = time.perf_counter()
    ck = stages.retrain(ds, mask, out, base=cfg, overrides={}, device=device, eval_every=eval_every,
                        snapshot_epochs=()).checkpoint
    return {"test_accuracy": ck.final.test_acc, "test_loss": ck.final.test_loss, "train_seconds": ck.seconds,
            "wall_seconds": time.perf_counter() - t0, "steps": ck.steps,
            "history": [[r.epoch, r.seconds, r.test_acc] for r in ck.history]}


def run_grid(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    runs = work / "runs"
    cells = work / "cells"
    data = prepare_subset(args)
    dataset = f"imagefolder:{data.resolve()}"
    ds = load_dataset(dataset, work / "data")
    device = resolve_device(args.device)
    base = base_config(args, dataset)
    ck_path = pipeline.checkpoint_path(runs, base)
    log(f"full-data model: {ck_path}")
    train(base, ds, ck_path, device=device)
    icfg = InfluenceConfig().validate()
    inf_path = pipeline.influence_path(ck_path, icfg)
    if not inf_path.exists():
        log("influence (exact)")
        stages.compute_influence(ck_path, inf_path, icfg, device=device, ds=ds)

    for seed in args.seeds:  # full-data reference, same seeds as the cells
        cell = cells / f"full__s{seed}.json"
        if cell.exists():
            continue
        cfg = base.replace(seed=seed)
        path = ck_path if seed == 0 else pipeline.checkpoint_path(runs, cfg)
        ck = train(cfg, ds, path, device=device)
        write_json(cell, {"method": "full", "ratio": 0.0, "seed": seed, "test_accuracy": ck.final.test_acc,
                          "train_seconds": ck.seconds, "history": [[r.epoch, r.seconds, r.test_acc] for r in ck.history]})
        log(f"full s{seed}: {ck.final.test_acc:.2f}%")

    def run_cell(file: str, name: str, ratio: float, seed: int, cfg: TrainConfig, tag: str,
                 eval_every: int) -> None:
        """Select with ``name`` at ``ratio``, retrain with ``cfg``, record the cell (skipped if recorded)."""
        cell = cells / file
        if cell.exists():
            return
        spec = METHODS[name]
        mask = make_mask(spec, ratio, seed if spec.seeded else 0, inf_path, device, ds)
        out = Path(mask.path).parent / f"retrain-{tag}" / "checkpoint.h5"
        res = retrain_cell(ds, mask, cfg, out, device, eval_every=eval_every)
        write_json(cell, {"method": name, "ratio": ratio, "seed": seed, "n_kept": mask.n_kept,
                          "norm": mask.norm, "select_seconds": mask.seconds, **res})
        log(f"{file}: {res['test_accuracy']:.2f}% (||sum S|| {mask.norm:.3g}, {res['wall_seconds']:.0f}s)")

    for seed in args.seeds:
        for ratio in args.ratios:
            for name in args.methods:
                run_cell(f"{name}__r{ratio:g}__s{seed}.json", name, ratio, seed, base.replace(seed=seed),
                         f"w{args.width}-s{seed}", args.epochs)
    for name in args.figure4:  # per-epoch evaluation: accuracy against training time
        for ratio in args.ratios:
            run_cell(f"fig4__{name}__r{ratio:g}.json", name, ratio, 0, base, "fig4", 1)
    if args.large_width:  # selected with this network, retrained with a wider one
        large = base.replace(width=args.large_width)
        for seed in args.large_seeds:
            cell = cells / f"fig3__full__s{seed}.json"
            if not cell.exists():
                ck = train(large.replace(seed=seed), ds, pipeline.checkpoint_path(runs, large.replace(seed=seed)),
                           device=device, eval_every=args.epochs, snapshot_epochs=())
                write_json(cell, {"method": "full", "ratio": 0.0, "seed": seed, "test_accuracy": ck.final.test_acc})
                log(f"fig3 full s{seed}: {ck.final.test_acc:.2f}%")
            for name in args.figure3:
                for ratio in args.ratios:
                    run_cell(f"fig3__{name}__r{ratio:g}__s{seed}.json", name, ratio, seed,
                             large.replace(seed=seed), f"w{args.large_width}-s{seed}", args.epochs)


def make_mask(spec: MethodSpec, ratio: float, seed: int, inf_path: Path, device, ds) -> stages.MaskInfo:
    pcfg = PruneConfig(ratio=ratio, seed=seed, **spec.options).validate()
    path = pipeline.mask_path(inf_path, pcfg)
    if path.exists():
        return stages.read_mask(path)
    return stages.prune(inf_path, path, pcfg, device=device, ds=ds)


# --------------------------------------------------------------------------- report
def summarize(cells: list[dict]) -> dict:
    table: dict = {}
    for c in cells:
        table.setdefault((c["method"], c["ratio"]), []).append(c["test_accuracy"])
    return table


def report(args: argparse.Namespace) -> str:
    work = Path(args.work)
    files = sorted((work / "cells").glob("*.json"))
    main = [json.loads(p.read_text()) for p in files if not p.name.startswith(("fig3", "fig4"))]
    fig3 = [json.loads(p.read_text()) for p in files if p.name.startswith("fig3")]
    fig4 = [json.loads(p.read_text()) for p in files if p.name.startswith("fig4")]
    acc = summarize(main)
    full = acc.get(("full", 0.0), [])
    ratios = sorted({r for (_, r) in acc if r > 0})
    methods = [m for m in args.methods if any((m, r) in acc for r in ratios)]
    lines = []
    lines.append(f"Full data: **{np.mean(full):.2f} ± {np.std(full):.2f} %** test accuracy "
                 f"(mean ± std over {len(full)} training seeds).\n")
    lines.append("| method | " + " | ".join(f"{r:.0%} pruned" for r in ratios) + " |")
    lines.append("|---|" + "---|" * len(ratios))
    best = {r: max(np.mean(acc[(m, r)]) for m in methods if (m, r) in acc) for r in ratios}
    for m in methods:
        row = []
        for r in ratios:
            v = acc.get((m, r))
            if not v:
                row.append("–")
                continue
            cell = f"{np.mean(v):.2f} ± {np.std(v):.2f}"
            if len(v) < len(args.seeds):
                cell += f" (n={len(v)})"
            row.append(f"**{cell}**" if np.isclose(np.mean(v), best[r]) else cell)
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Mean ± standard deviation of the final test accuracy (%) over seeds (n={len(args.seeds)} "
                 "unless noted); bold = best mean per ratio.")
    lines.append(_margins(acc, args.ours, [m for m in methods if not m.startswith("opt")], ratios))
    norms: dict = {}
    for c in main:
        if c["method"] != "full":
            norms.setdefault((c["method"], c["ratio"]), []).append(c["norm"])
    lines.append("\n`||sum S_pruned||` (the paper's objective; smaller = predicted closer to the full-data last layer):\n")
    lines.append("| method | " + " | ".join(f"{r:.0%}" for r in ratios) + " |")
    lines.append("|---|" + "---|" * len(ratios))
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f"{np.mean(norms[(m, r)]):.3g}" if (m, r) in norms else "–"
                                             for r in ratios) + " |")
    plot = Path(args.docs).with_name("benchmarks-grid.png")
    _plot(acc, methods, ratios, full, plot)
    lines.append(f"\n![accuracy against prune ratio]({plot.name})\n")
    if fig4:
        lines.append("### Figure 4 reproduction: training cost on the pruned set\n")
        ref = [c for c in main if c["method"] == "full" and c["seed"] == 0]
        lines.append(_fig4(fig4, ref[0] if ref else None, args.batch_size, Path(args.docs).with_name("benchmarks-fig4.png")))
    if fig3:
        lines.append("### Figure 3 reproduction: selected with the small network, retrained with a wider one\n")
        a3 = summarize(fig3)
        f3 = a3.get(("full", 0.0), [])
        lines.append(f"Wider network (width {args.large_width}) on all data: {_mean_std(f3)} % "
                     f"({len(f3)} seed{'s' if len(f3) != 1 else ''}).\n")
        r3 = sorted({r for (_, r) in a3 if r > 0})
        lines.append("| method | " + " | ".join(f"{r:.0%} pruned" for r in r3) + " |")
        lines.append("|---|" + "---|" * len(r3))
        for m in args.figure3:
            lines.append(f"| {m} | " + " | ".join(_mean_std(a3[(m, r)]) if (m, r) in a3 else "–" for r in r3) + " |")
        lines.append("")
    return "\n".join(lines)


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.2f}" if len(values) == 1 else f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def _margins(acc: dict, ours: str, baselines: list[str], ratios: list[float]) -> str:
    """The Done criterion: our mean minus each rival's, against the larger of the two spreads."""
    out = [f"\nMargin of `{ours}` over each baseline (difference of means, in points; `*` = larger than both "
           "methods' seed-to-seed standard deviations):\n",
           "| baseline | " + " | ".join(f"{r:.0%}" for r in ratios) + " |", "|---|" + "---|" * len(ratios)]
    for b in baselines:
        row = []
        for r in ratios:
            if (ours, r) not in acc or (b, r) not in acc:
                row.append("–")
                continue
            diff = np.mean(acc[(ours, r)]) - np.mean(acc[(b, r)])
            spread = max(np.std(acc[(ours, r)]), np.std(acc[(b, r)]))
            row.append(f"{diff:+.2f}{'*' if diff > spread else ''}")
        out.append(f"| {b} | " + " | ".join(row) + " |")
    return "\n".join(out)


def _fig4(fig4: list[dict], full: dict | None, batch_size: int, path: Path) -> str:
    """Figure 4: test accuracy against optimizer steps (machine-independent) for full and pruned data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = ["| method | pruned | final acc % | optimizer steps | steps vs full | wall s (shared CPU) |",
           "|---|---|---|---|---|---|"]
    full_steps = None
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    if full:
        per = -(-10_000 // batch_size)
        full_steps = per * len(full["history"])
        ax.plot([per * h[0] for h in full["history"]], [h[2] for h in full["history"]], "k-", label="full data")
        out.append(f"| full data | 0% | {full['test_accuracy']:.2f} | {full_steps} | 1.00 | "
                   f"{sum(h[1] for h in full['history']):.0f} |")
    for c in sorted(fig4, key=lambda c: (c["method"], c["ratio"])):
        n_kept = c.get("n_kept", 10_000 - selection.count_from_ratio(10_000, c["ratio"]))  # older cells
        per = -(-n_kept // batch_size)
        steps = per * len(c["history"])
        rel = f"{steps / full_steps:.2f}" if full_steps else "–"
        out.append(f"| {c['method']} | {c['ratio']:.0%} | {c['test_accuracy']:.2f} | {steps} | {rel} | "
                   f"{sum(h[1] for h in c['history']):.0f} |")
        ax.plot([per * h[0] for h in c["history"]], [h[2] for h in c["history"]],
                "-" if c["method"].startswith("opt") else "--", label=f"{c['method']} {c['ratio']:.0%}")
    _save(fig, ax, "optimizer steps", path)
    return "\n".join(out) + f"\n\n![accuracy against optimizer steps]({path.name})\n"


def _plot(acc: dict, methods: list[str], ratios: list[float], full: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m in methods:
        rs = [r for r in ratios if (m, r) in acc]
        mean = [np.mean(acc[(m, r)]) for r in rs]
        std = [np.std(acc[(m, r)]) for r in rs]
        style = "-o" if m.startswith("opt") else "--."
        ax.errorbar([100 * r for r in rs], mean, yerr=std, fmt=style, capsize=3, label=m,
                    linewidth=2 if m.startswith("opt") else 1)
    if full:
        ax.axhline(np.mean(full), color="k", linestyle=":", label="full data")
    _save(fig, ax, "pruned (%)", path)


def _save(fig, ax, xlabel: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def write_docs(args: argparse.Namespace, body: str) -> None:
    path = Path(args.docs)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n<!-- grid:begin -->\n<!-- grid:end -->\n"
    head, rest = text.split("<!-- grid:begin -->", 1)
    _, tail = rest.split("<!-- grid:end -->", 1)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    cmd = "python benchmarks/grid.py " + " ".join(sys.argv[1:])
    gen = (f"<!-- grid:begin -->\n<!-- generated by benchmarks/grid.py; edits here are overwritten -->\n"
           f"Written by: `{cmd}` (commit {commit}; the cells it reports were run by the commands under "
           f"*Reproduce*)  \nMachine: {machine()}  \n"
           f"Settings: {args.arch} (ConvNet width {args.width} depth {args.depth}), {args.epochs} epochs, batch {args.batch_size}, "
           f"lr {args.lr} cosine, augmentation on; retrained with the same settings on the kept samples; "
           f"seeds {', '.join(map(str, args.seeds))}.\n\n{body}\n<!-- grid:end -->")
    path.write_text(head + gen + tail)
    log(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", default="../shared/data/cifar10-jpg.tar.gz")
    ap.add_argument("--data", help="an existing imagefolder subset (skips extraction)")
    ap.add_argument("--work", default="benchmark-runs/grid")
    ap.add_argument("--per-class", type=int, default=1000, help="training images per class (0: all)")
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--arch", default="convnet", help="convnet (CPU proxy) or resnet18 (paper scale, GPU)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure4", nargs="*", default=[], choices=list(METHODS))
    ap.add_argument("--figure3", nargs="*", default=[], choices=list(METHODS))
    ap.add_argument("--large-width", type=int, default=0)
    ap.add_argument("--large-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--docs", default="docs/benchmarks.md")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--ours", default="opt+coverage+0.5x+features", choices=list(METHODS),
                    help="the variant whose margins over the baselines the report tabulates")
    args = ap.parse_args()
    if not args.report_only:
        run_grid(args)
    write_docs(args, report(args))


if __name__ == "__main__":
    main()
