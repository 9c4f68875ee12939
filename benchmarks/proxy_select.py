"""Selection via proxy vs selection with the target: selection cost and the target's retrained accuracy.

    python3 benchmarks/proxy_select.py --data digits --proxy convnet:5 --ratios 0.3,0.5 --seeds 0,1

    # CIFAR-10 CPU proxy: 1,000 training images per class (seeded), the whole test set
    python3 benchmarks/proxy_select.py --tarball ../shared/data/cifar10-jpg.tar.gz --work /tmp/proxy \\
        --per-class 1000 --arch convnet --width 16 --depth 3 --epochs 15 --batch-size 128 --lr 0.05 \\
        --proxy convnet:4 --method optimization --ratios 0.5,0.7 --seeds 0,1,2 --threads 2

For each prune ratio and each ``--method``: the keep mask from S of the fully trained target
network (the paper's pipeline), from S of the proxy (``--proxy ARCH[:EPOCHS]``), and random
masks of the same size (selection seed = retraining seed); the target is retrained on each kept
set (same configuration, each seed) and its test accuracy reported.  Selection cost = wall
seconds of train + influence + prune for that mask, measured in this process (nothing cached:
a fresh run root); the train and influence seconds are paid once and counted in every row.
``--tarball``/``--work``/``--per-class`` build the class-balanced subset as benchmarks/grid.py does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpcli.artifacts import runs  # noqa: E402
from dpcli.config import InfluenceConfig, PruneConfig, default_train_config  # noqa: E402
from dpcli.data.sources import load_dataset  # noqa: E402
from dpcli.stages import core  # noqa: E402
from dpcli.stages import masks as mask_stage
from dpcli.stages.proxy import ProxySpec, select_via_proxy  # noqa: E402
from dpcli.train.loop import train  # noqa: E402


def dataset_name(args: argparse.Namespace) -> str:
    """``--data`` as given, or an imagefolder of the class-balanced subset grid.py builds from ``--tarball``."""
    if not args.tarball:
        return args.data
    from grid import prepare_subset  # benchmarks/grid.py: extraction + seeded per-class subset

    sub = prepare_subset(
        argparse.Namespace(
            data=None, work=args.work, tarball=args.tarball, per_class=args.per_class, subset_seed=args.subset_seed
        )
    )
    return f"imagefolder:{sub.resolve()}"


def summary(accs: list[float]) -> tuple[float, float]:
    se = float(np.std(accs, ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else float("nan")
    return float(np.mean(accs)), se


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--tarball", help="CIFAR-10 JPEG ImageFolder tarball: use a --per-class subset of it")
    ap.add_argument("--work", default="/tmp/proxy", help="where --tarball is unpacked and the subset linked")
    ap.add_argument("--per-class", type=int, default=1000, help="training images per class (0: all)")
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--proxy", default="convnet:5")
    ap.add_argument("--method", default="optimization", help="prune --method values, comma-separated")
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--seeds", default="0,1", help="Retraining seeds.")
    ap.add_argument("--epochs", type=int, default=None, help="Target epochs [default: the dataset profile's].")
    ap.add_argument("--arch", default=None, help="Target architecture [default: the dataset profile's].")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="also write the result rows here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.method.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    spec = ProxySpec.parse(args.proxy)
    for m in methods:
        PruneConfig(ratio=0.5, method=m).validate()
    ds = load_dataset(dataset_name(args))
    target = default_train_config(ds.name, ds.augment).replace(
        arch=args.arch, epochs=args.epochs, width=args.width, depth=args.depth, batch_size=args.batch_size, lr=args.lr
    )
    print(
        f"data {ds.name}: {len(ds.train.labels)} train / {len(ds.test.labels)} test; target {target.arch} "
        f"w{target.width} d{target.depth} {target.epochs} ep bs{target.batch_size} lr{target.lr}",
        flush=True,
    )
    rows: list[dict] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        ck = runs.checkpoint_path(root, target)
        full = train(target, ds, ck, device=cpu)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        s_path = runs.influence_path(ck, InfluenceConfig())
        core.compute_influence(ck, s_path, InfluenceConfig(), device=cpu, ds=ds)
        t_infl = time.perf_counter() - t0
        print(
            f"target full data: test {full.final.test_acc:.2f}%  train {t_train:.1f}s  influence {t_infl:.1f}s",
            flush=True,
        )
        # every mask first (cheap), then the retrains seed by seed: a run stopped early still has
        # complete tables for the seeds it finished
        proxy_fixed: dict[str, float] = {}  # the proxy's train + influence, paid once
        cells: list[tuple] = []  # (ratio, method, selection, own mask, cost, mask per seed)
        for ratio in ratios:
            for method in methods:
                pcfg = PruneConfig(ratio=ratio, method=method)
                t0 = time.perf_counter()
                own = mask_stage.prune(s_path, runs.mask_path(s_path, pcfg), pcfg, device=cpu, ds=ds)
                t_own = time.perf_counter() - t0
                sel = select_via_proxy(ds, target, spec, pcfg, device=cpu, run_root=root)
                if not proxy_fixed:
                    proxy_fixed = {k: sel.seconds[k] for k in ("train", "influence")}
                cells.append(
                    (
                        ratio,
                        method,
                        "target",
                        own,
                        {"train": t_train, "influence": t_infl, "prune": t_own},
                        {s: own for s in seeds},
                    )
                )
                cells.append(
                    (
                        ratio,
                        method,
                        "proxy",
                        own,
                        {**proxy_fixed, "prune": sel.seconds["prune"]},
                        {s: sel.mask for s in seeds},
                    )
                )
                print(f"masks ratio {ratio} {method}: target prune {t_own:.1f}s, proxy {sel.seconds}", flush=True)
            info = core.read_influence_info(s_path)
            cells.append(
                (
                    ratio,
                    "random",
                    "random",
                    own,
                    {},  # selection seed = retraining seed
                    {
                        s: mask_stage.random_mask(info, own.n_pruned, s, root / f"random-{ratio}-{s}" / "mask.h5")
                        for s in seeds
                    },
                )
            )
        accs: dict[int, list[float]] = {i: [] for i in range(len(cells))}
        for seed in seeds:
            for i, (ratio, method, name, _own, _cost, masks) in enumerate(cells):
                t0 = time.perf_counter()
                res = mask_stage.retrain(
                    ds,
                    masks[seed],
                    root / f"re-{i}-{seed}" / "checkpoint.h5",
                    base=target,
                    overrides={"seed": seed},
                    device=cpu,
                    eval_every=target.epochs,
                )
                accs[i].append(float(res.metrics["test_accuracy"]))
                print(
                    f"  retrain seed {seed} ratio {ratio} {method} {name}: {accs[i][-1]:.2f}% "
                    f"({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
        for i, (ratio, method, name, own, cost, masks) in enumerate(cells):
            add_row(rows, ratio, method, name, masks[seeds[-1]], own, cost, accs[i])
    result = {
        "data": ds.name,
        "n_train": len(ds.train.labels),
        "target": target.to_dict(),
        "proxy": args.proxy,
        "full_test_acc": full.final.test_acc,
        "seeds": seeds,
        "wall_seconds": time.perf_counter() - t_start,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def add_row(rows: list[dict], ratio: float, method: str, name: str, mask, own, cost: dict, accs: list[float]) -> None:
    mean, se = summary(accs)
    overlap = float(np.mean(~own.keep[~mask.keep])) if name != "target" else 1.0
    row = {
        "ratio": ratio,
        "method": method,
        "selection": name,
        "selection_seconds": float(sum(cost.values())),
        "cost": cost,
        "kept": int(mask.n_kept),
        "test_acc_mean": mean,
        "test_acc_se": se,
        "test_acc": accs,
        "overlap_with_target_pruned": overlap,
    }
    rows.append(row)
    print(
        f"ratio {ratio:.2f}  {method:<12} {name:<7} selection {row['selection_seconds']:7.1f}s "
        f"{ {k: round(v, 1) for k, v in cost.items()} }  kept {row['kept']:5d}  target acc {mean:.2f} ± {se:.2f}% "
        f"{accs}  pruned-overlap {overlap:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
