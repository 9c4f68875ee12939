"""Proxy sets for architecture search (the ICLR paper's Table 1): does a pruned set rank candidates as all data does?

A benchmark, run by hand (not a test).  K candidate configurations (ConvNet width x depth x learning rate) are
each trained on the whole pool and on proxy sets kept by each selector (`auto`, `optimization`, random,
herding, forgetting) at a few kept shares; for each (selector, share, seed) we report Spearman's rank
correlation between the candidates' validation accuracies after proxy training and after whole-pool
training, the test accuracy of the proxy's top-1 candidate when trained on the whole pool (beside the best
candidate's), and the search time: selection + the K proxy trainings against the K whole-pool trainings.

Protocol.  The selections read S and the training dynamics of ONE reference training on the whole pool (the
paper's protocol; benchmarks/grid.py's :func:`image_setup`, whose cost every selector but random pays).  The
pool is ``--per-class`` CIFAR-10 training images per class (grid.py's draw); the validation set that ranks
the candidates is ``--val-per-class`` other training images per class; the test set is CIFAR-10's own.  A
proxy training runs the candidate's own settings for at least ``--proxy-steps`` optimizer steps (the paper
trains proxies as long as the whole set, 100 epochs; a few epochs of a 1-2 % proxy are a handful of steps).
Seeds drive the random draw, the seeded selectors and the proxy trainings; whole-pool trainings use seed 0.
Times are CPU seconds of this process (one torch thread), which other jobs on a shared CPU barely move;
wall seconds are recorded beside them.

Every training appends one JSON line to ``<results>/records.jsonl`` (``tiny.jsonl`` for ``--tiny``) the moment
it finishes; a rerun skips finished records, and a training killed mid-way resumes from its last epoch.

    python3 benchmarks/proxy_search.py --tiny --work /tmp/proxysearch-tiny           # CPU rehearsal, minutes
    nice -n 19 python3 benchmarks/proxy_search.py --work /tmp/proxysearch-work \\
        --results benchmarks/results/proxy_search --seeds 0 1
    python3 benchmarks/proxy_search.py --report-only --results benchmarks/results/proxy_search
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grid  # noqa: E402  (benchmarks/grid.py: the pool, the reference run, the selectors, the JSON lines)
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

SELECTORS = ("auto", "optimization", "random", "herding", "forgetting")
KEPT = (0.02, 0.10)  # kept shares of the pool: the paper's 2 % (100 images per class of 50,000) and 10 %
DOCS_BEGIN, DOCS_END = "<!-- proxy_search:begin -->", "<!-- proxy_search:end -->"


@dataclass(frozen=True)
class Candidate:
    width: int
    depth: int
    lr: float

    @property
    def name(self) -> str:
        return f"w{self.width}-d{self.depth}-lr{self.lr:g}"


def candidates(widths: list[int], depths: list[int], lrs: list[float]) -> list[Candidate]:
    return [Candidate(w, d, lr) for w, d, lr in itertools.product(widths, depths, lrs)]


def proxy_epochs(kept: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """The whole-pool epochs, or more until the proxy gets ``min_steps`` optimizer steps (last batch partial)."""
    return max(epochs, math.ceil(min_steps / math.ceil(kept / batch_size)))


# --------------------------------------------------------------------------- records
def key(rec: dict) -> tuple:
    return (
        rec["kind"],
        rec.get("config", ""),
        rec.get("selector", ""),
        round(float(rec.get("kept", 1.0)), 6),
        int(rec.get("seed", 0)),
    )


class Records:
    """One JSON-lines file; a line is appended (and fsynced) the moment its training or selection finishes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.all = {key(r): r for r in grid.read_cells(path)}

    def get(self, k: tuple) -> dict | None:
        return self.all.get(k)

    def add(self, rec: dict) -> dict:
        grid.append_line(self.path, json.dumps(rec) + "\n")
        self.all[key(rec)] = rec
        return rec


@dataclass
class Timer:
    """Wall and CPU seconds of this process since construction."""

    wall0: float = dataclasses.field(default_factory=time.perf_counter)
    cpu0: float = dataclasses.field(default_factory=time.process_time)

    def read(self) -> dict:
        return {"wall_seconds": time.perf_counter() - self.wall0, "cpu_seconds": time.process_time() - self.cpu0}


# --------------------------------------------------------------------------- the run
def validation_split(cifar: Path, pool: Path, work: Path, per_class: int, seed: int):
    """``per_class`` training images per class outside the pool, decoded (the split that ranks the candidates)."""
    from dpcli.data.sources import load_dataset

    used = {c: set(os.listdir(pool / "train" / c)) for c in os.listdir(pool / "train")}
    folder = grid.link_subset(
        cifar, work / f"cifar10-val-{per_class}pc-s{seed}", per_class, seed=seed, exclude=used, test=False
    )
    if not (folder / "test").exists():
        os.symlink("train", folder / "test")  # an ImageFolder needs a test split; only .train is read
    return load_dataset(f"imagefolder:{folder.resolve()}", work / "data").train


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = Records(Path(args.results) / ("tiny.jsonl" if args.tiny else "records.jsonl"))
    clock = grid.Clock(time.time() + args.budget if args.budget else None)
    cifar = Path(args.data) if args.data else grid.extract_cifar(Path(args.tarball), work)
    pool = grid.link_subset(cifar, work / f"cifar10-{args.per_class}pc", args.per_class, seed=args.subset_seed)
    regime = grid.Regime(
        "proxy-reference",
        "proxy search reference",
        "cifar10",
        per_class=args.per_class,
        width=args.ref_width,
        depth=args.ref_depth,
        epochs=args.epochs,
        lr=args.ref_lr,
        batch_size=args.batch_size,
        toy=args.tiny,
    )
    t = Timer()
    setup = grid.image_setup(regime, pool, work, device, clock)  # train (dynamics recorded) -> exact S
    if store.get(("reference", "", "", 1.0, 0)) is None:
        store.add(
            {
                "kind": "reference",
                **t.read(),
                "settings": setup.settings,
                "n": setup.info.n,
                "model": setup.info.checkpoint_fingerprint[:12],
                "machine": grid.machine(),
                "argv": sys.argv[1:],
                **({"toy": True} if args.tiny else {}),
            }
        )
    ds = dataclasses.replace(
        setup.ctx.ds, test=validation_split(cifar, pool, work, args.val_per_class, args.subset_seed + 1)
    )
    cands = candidates(args.widths, args.depths, args.lrs)
    base = regime.train_config(f"imagefolder:{pool.resolve()}", device, epochs=args.epochs)
    try:
        for c in cands:
            clock.check(f"whole {c.name}")
            whole_training(store, ds, setup.ctx.ds.test, base, c, work, device)
        for seed in args.seeds:
            for kept in args.kept:
                for selector in args.selectors:
                    mask = selection(store, setup, selector, kept, seed)
                    for c in cands:
                        clock.check(f"proxy {selector} {kept:.0%} s{seed} {c.name}")
                        proxy_training(store, ds, base, c, mask, selector, kept, seed, work, device, args.proxy_steps)
    except grid.BudgetSpent as stop:
        grid.log(f"time budget spent (at: {stop}); every finished record is in {store.path}")


def _train(cfg, ds, out: Path, device, keep: np.ndarray | None = None):
    from dpcli.train.loop import train

    return train(cfg, ds, out, device=device, keep_indices=keep, eval_every=cfg.epochs, snapshot_epochs=())


def whole_training(store: Records, ds, test, base, c: Candidate, work: Path, device) -> dict:
    """Candidate ``c`` on the whole pool (seed 0): validation accuracy (the search's) and test accuracy."""
    from dpcli.train.loop import evaluate, load_trained

    k = ("whole", c.name, "", 1.0, 0)
    if (rec := store.get(k)) is not None:
        return rec
    out = work / "trainings" / f"whole-{c.name}" / "checkpoint.h5"
    resumed = out.exists()
    t = Timer()
    ck = _train(base.replace(width=c.width, depth=c.depth, lr=c.lr, seed=0), ds, out, device)
    search = t.read()  # the search pays the training and the validation only
    model, _, _ = load_trained(out, device, ds=ds)
    _, test_acc = evaluate(model, test, ds, device)
    rec = store.add(
        {
            "kind": "whole",
            "config": c.name,
            "seed": 0,
            "kept": 1.0,
            "n_kept": len(ds.train),
            "epochs": ck.config.epochs,
            "steps": ck.steps,
            "val_accuracy": ck.final.test_acc,
            "test_accuracy": test_acc,
            **search,
            "resumed": resumed,
            **_toy(store),
        }
    )
    grid.log(f"whole {c.name}: val {rec['val_accuracy']:.2f}% test {test_acc:.2f}% ({search['cpu_seconds']:.0f} cpu s)")
    return rec


def selection(store: Records, setup: grid.Setup, selector: str, kept: float, seed: int):
    """The selector's mask keeping ``kept`` of the pool (grid.py's make_mask: cached on disk, keyed on its code)."""
    spec = grid.METHODS[selector]
    seed = seed if spec.seeded else 0  # a deterministic selector has one mask; its proxy trainings still vary
    t = Timer()
    mask, rec = grid.make_mask(setup, spec, 1.0 - kept, seed)
    k = ("selection", "", selector, kept, seed)
    if store.get(k) is None:
        store.add(
            {
                "kind": "selection",
                "selector": selector,
                "kept": kept,
                "seed": seed,
                "n_kept": mask.n_kept,
                "norm": mask.norm,
                **rec,
                **t.read(),
                **_toy(store),
            }
        )
    return mask


def proxy_training(
    store: Records,
    ds,
    base,
    c: Candidate,
    mask,
    selector: str,
    kept: float,
    seed: int,
    work: Path,
    device,
    min_steps: int,
) -> dict:
    k = ("proxy", c.name, selector, kept, seed)
    if (rec := store.get(k)) is not None:
        return rec
    epochs = proxy_epochs(mask.n_kept, base.batch_size, base.epochs, min_steps)
    out = work / "trainings" / f"proxy-{selector}-{kept:g}-s{seed}-{c.name}" / "checkpoint.h5"
    resumed = out.exists()
    t = Timer()
    ck = _train(
        base.replace(width=c.width, depth=c.depth, lr=c.lr, seed=seed, epochs=epochs),
        ds,
        out,
        device,
        keep=np.flatnonzero(mask.keep),
    )
    rec = store.add(
        {
            "kind": "proxy",
            "config": c.name,
            "selector": selector,
            "kept": kept,
            "seed": seed,
            "n_kept": mask.n_kept,
            "epochs": epochs,
            "steps": ck.steps,
            "val_accuracy": ck.final.test_acc,
            **t.read(),
            "resumed": resumed,
            **_toy(store),
        }
    )
    grid.log(
        f"proxy {selector} {kept:.0%} s{seed} {c.name}: val {rec['val_accuracy']:.2f}% ({rec['cpu_seconds']:.0f} cpu s)"
    )
    return rec


def _toy(store: Records) -> dict:
    return {"toy": True} if store.path.name == "tiny.jsonl" else {}


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class Outcome:
    """One proxy search (selector, kept share, seed) against the whole-pool search."""

    selector: str
    kept: float
    seed: int
    n_kept: int
    rho: float  # Spearman's rank correlation of the K validation accuracies
    chosen: str  # the proxy's top-1 candidate
    chosen_test: float  # its test accuracy when trained on the whole pool
    cpu_seconds: float  # selection (with the reference training it reads) + the K proxy trainings
    ratio: float  # cpu_seconds / the K whole-pool trainings' CPU seconds


def outcomes(records: list[dict]) -> tuple[list[Outcome], dict]:
    """Every (selector, kept, seed) whose K proxy trainings all finished, and the whole-pool search itself."""
    whole = {r["config"]: r for r in records if r["kind"] == "whole"}
    if not whole:
        return [], {}
    names = sorted(whole)
    whole_val = [whole[n]["val_accuracy"] for n in names]
    whole_cpu = sum(whole[n]["cpu_seconds"] for n in names)
    top = names[int(np.argmax(whole_val))]
    ref = next((r["cpu_seconds"] for r in records if r["kind"] == "reference"), 0.0)
    sel = {
        (r["selector"], round(r["kept"], 6), r["seed"]): r["cpu_seconds"] for r in records if r["kind"] == "selection"
    }
    proxies: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r["kind"] == "proxy":
            proxies.setdefault((r["selector"], round(r["kept"], 6), r["seed"]), {})[r["config"]] = r
    out = []
    for (selector, kept, seed), by_config in sorted(proxies.items()):
        if set(by_config) != set(names):
            continue  # an unfinished search
        val = [by_config[n]["val_accuracy"] for n in names]
        chosen = names[int(np.argmax(val))]
        mask_seed = seed if grid.METHODS[selector].seeded else 0
        cost = (
            (ref if selector != "random" else 0.0)
            + sel.get((selector, kept, mask_seed), 0.0)
            + sum(by_config[n]["cpu_seconds"] for n in names)
        )
        n_kept = next(iter(by_config.values()))["n_kept"]
        rho = float(spearmanr(val, whole_val).statistic) if len(set(val)) > 1 else math.nan  # all tied: undefined
        out.append(
            Outcome(selector, kept, seed, n_kept, rho, chosen, whole[chosen]["test_accuracy"], cost, cost / whole_cpu)
        )
    best = max(names, key=lambda n: whole[n]["test_accuracy"])
    return out, {
        "k": len(names),
        "chosen": top,
        "chosen_test": whole[top]["test_accuracy"],
        "best": best,
        "best_test": whole[best]["test_accuracy"],
        "cpu_seconds": whole_cpu,
        "reference_cpu": ref,
        "wall_seconds": sum(whole[n]["wall_seconds"] for n in names),
    }


def table(outs: list[Outcome], whole: dict) -> str:
    """The markdown table: one row per (selector, kept share), mean ± standard deviation over seeds."""
    lines = [
        "| selector | proxy | seeds | rank correlation | chosen candidate: whole-pool test accuracy | "
        "vs the best | time ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[Outcome]] = {}
    for o in outs:
        groups.setdefault((o.kept, o.selector), []).append(o)
    order = {s: i for i, s in enumerate(SELECTORS)}
    for (kept, selector), group in sorted(groups.items(), key=lambda g: (g[0][0], order.get(g[0][1], 99))):
        rho = np.array([o.rho for o in group])
        acc = np.array([o.chosen_test for o in group])
        picks = ", ".join(o.chosen for o in group)
        ties = int(np.isnan(rho).sum())  # every candidate tied on the proxy: no ranking at all
        rho_text = f"{np.nanmean(rho):.2f}{_sd(rho[~np.isnan(rho)])}" if ties < len(rho) else "undefined"
        rho_text += f" ({ties} undefined: all tied)" if 0 < ties < len(rho) else ""
        lines.append(
            f"| {selector} | {kept:.0%} ({group[0].n_kept:,} images) | {len(group)} | "
            f"{rho_text} | {acc.mean():.2f}{_sd(acc)} ({picks}) | {acc.mean() - whole['best_test']:+.2f} | "
            f"{np.mean([o.ratio for o in group]):.3f} |"
        )
    lines.append(
        f"| whole pool | 100 % | 1 | 1.00 | {whole['chosen_test']:.2f} ({whole['chosen']}) | "
        f"{whole['chosen_test'] - whole['best_test']:+.2f} | 1 |"
    )
    return "\n".join(lines)


def _sd(a: np.ndarray) -> str:
    return f" ± {a.std(ddof=1):.2f}" if len(a) > 1 else ""


def plot(outs: list[Outcome], whole: dict, path: Path) -> None:
    """Rank correlation (left) and the chosen candidate's whole-pool test accuracy (right), one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kepts = sorted({o.kept for o in outs})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for j, kept in enumerate(kepts):
        for i, s in enumerate(SELECTORS):
            mine = [o for o in outs if o.kept == kept and o.selector == s]
            x = i + (j - (len(kepts) - 1) / 2) * 0.3
            rhos = [o.rho for o in mine if not math.isnan(o.rho)]
            label = f"{kept:.0%} kept" if i == 0 else None
            if rhos:
                axes[0].bar(x, np.mean(rhos), width=0.28, color=f"C{j}", alpha=0.5, label=label)
                axes[0].plot([x] * len(rhos), rhos, "k.", ms=4)
            if mine:  # an accuracy axis does not start at 0: the mean as a tick, not a bar
                accs = [o.chosen_test for o in mine]
                axes[1].plot([x], [np.mean(accs)], "_", color=f"C{j}", ms=18, mew=3, label=label)
                axes[1].plot([x] * len(accs), accs, "k.", ms=4)
    axes[1].axhline(whole["best_test"], color="k", ls="--", lw=1, label=f"best candidate ({whole['best']})")
    axes[1].axhline(whole["chosen_test"], color="g", ls=":", lw=1, label=f"whole-pool search ({whole['chosen']})")
    lo = min([o.chosen_test for o in outs] + [whole["best_test"]])
    axes[1].set_ylim(lo - 2, whole["best_test"] + 1.5)
    axes[0].set_ylabel("Spearman's rank correlation")
    axes[1].set_ylabel("chosen candidate, whole-pool test accuracy (%)")
    for ax in axes:
        ax.set_xticks(range(len(SELECTORS)), SELECTORS)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].axhline(0, color="k", lw=0.5)
    fig.suptitle(
        f"Proxy search over K = {whole['k']} candidates (bars and ticks: mean over seeds; dots: seeds)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    records = grid.read_cells(Path(args.results) / ("tiny.jsonl" if args.tiny else "records.jsonl"))
    outs, whole = outcomes(records)
    if not outs:
        raise SystemExit(f"{args.results}: no finished proxy search yet")
    ref = next(r for r in records if r["kind"] == "reference")
    toy = "**TOY DRY RUN (--tiny): these numbers mean nothing.**\n\n" if args.tiny else ""
    body = (
        f"{toy}Reference training: {ref['settings']}. K = {whole['k']} candidates; the whole-pool search "
        f"(the K trainings) took {whole['cpu_seconds']:,.0f} CPU seconds ({whole['wall_seconds']:,.0f} s wall), "
        f"the reference training and S {whole['reference_cpu']:,.0f}; best candidate on the test set "
        f"{whole['best']} ({whole['best_test']:.2f} %).\n\n" + table(outs, whole) + "\n"
    )
    print(body)
    if args.docs:
        path = Path(args.docs)
        note = "<!-- generated by benchmarks/proxy_search.py --report-only; edits here are overwritten -->"
        block = f"{DOCS_BEGIN}\n{note}\n{body}{DOCS_END}"
        path.write_text(grid._replace(path.read_text(), DOCS_BEGIN, DOCS_END, block))
        grid.log(f"wrote {path}")
    if args.plot:
        plot(outs, whole, Path(args.plot))
        grid.log(f"wrote {args.plot}")


# --------------------------------------------------------------------------- entry point
def tiny(args: argparse.Namespace) -> None:
    """Toy sizes (100 images per class, 2 epochs, K = 12 narrow candidates): a dry run of every path."""
    args.per_class, args.val_per_class, args.epochs, args.proxy_steps = 100, 10, 2, 4
    args.widths, args.depths, args.lrs = [4, 8, 12], [1, 2], [0.02, 0.08]
    args.ref_width, args.ref_depth = 8, 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", default="../shared/data/cifar10-jpg.tar.gz")
    ap.add_argument("--data", help="an extracted CIFAR-10 ImageFolder (train/ and test/); skips the tarball")
    ap.add_argument("--work", default="benchmark-runs/proxy_search", help="the pool, runs, masks and trainings")
    ap.add_argument("--results", help="folder of the JSON lines [default: WORK/results]")
    ap.add_argument("--per-class", type=int, default=1000, help="pool images per class")
    ap.add_argument("--val-per-class", type=int, default=200, help="validation images per class, outside the pool")
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--widths", nargs="+", type=int, default=[8, 16, 32])
    ap.add_argument("--depths", nargs="+", type=int, default=[2, 3])
    ap.add_argument("--lrs", nargs="+", type=float, default=[0.02, 0.08])
    ap.add_argument("--epochs", type=int, default=6, help="whole-pool epochs (candidates and the reference)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--proxy-steps", type=int, default=60, help="least optimizer steps of a proxy training")
    ap.add_argument("--ref-width", type=int, default=16, help="the reference training's ConvNet")
    ap.add_argument("--ref-depth", type=int, default=3)
    ap.add_argument("--ref-lr", type=float, default=0.05)
    ap.add_argument("--selectors", nargs="+", default=list(SELECTORS), choices=list(SELECTORS))
    ap.add_argument("--kept", nargs="+", type=float, default=list(KEPT), help="kept shares of the pool")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--budget", type=float, default=0, help="stop cleanly after this many seconds (0: none)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: a dry run of every code path")
    ap.add_argument("--report-only", action="store_true", help="print the table from --results (and --docs, --plot)")
    ap.add_argument("--docs", help="rewrite the generated block of this markdown file (with --report-only)")
    ap.add_argument("--plot", help="write the figure here (with --report-only)")
    args = ap.parse_args()
    args.results = args.results or str(Path(args.work) / "results")
    if args.tiny:
        tiny(args)
    if args.report_only:
        return report(args)
    check(args)
    run(args)


def check(args: argparse.Namespace) -> None:
    """Every option before the first expensive step: one line and exit status 2."""
    bad = [f"--kept {k:g} is not in (0, 1)" for k in args.kept if not 0 < k < 1]
    bad += [
        f"--{n} must be positive"
        for n in ("per_class", "val_per_class", "epochs", "batch_size", "proxy_steps")
        if getattr(args, n) <= 0
    ]
    bad += [f"--lrs {lr:g} must be positive" for lr in args.lrs if lr <= 0]
    if len(candidates(args.widths, args.depths, args.lrs)) < 2:
        bad.append("a search needs at least 2 candidates (--widths x --depths x --lrs)")
    if args.data and not (Path(args.data) / "train").is_dir():
        bad.append(f"--data {args.data}: no train/ folder")
    if not args.data and not Path(args.tarball).is_file():
        bad.append(f"--tarball {args.tarball}: no such file")
    bad += [
        f"--kept {k:g} keeps no image of a {args.per_class * 10:,}-image pool"
        for k in args.kept
        if round(k * args.per_class * 10) < 1
    ]
    if bad:
        print(f"proxy_search.py: {bad[0]}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
