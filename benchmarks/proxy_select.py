"""Selection via proxy vs selection with the target: selection cost and the target's retrained accuracy.

    python3 benchmarks/proxy_select.py --data digits --proxy convnet:5 --ratios 0.3,0.5 --seeds 0,1

For each prune ratio: the keep mask from S of the fully trained target network (the paper's
pipeline), from S of the proxy (``--proxy ARCH[:EPOCHS]``), and a random mask of the same size;
the target is retrained on each kept set (same configuration, each seed) and its test accuracy
reported.  Selection cost = wall seconds of train + influence + prune for that mask, measured
in this process (nothing cached: a fresh run root).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dpcli.artifacts import runs
from dpcli.config import InfluenceConfig, PruneConfig, default_train_config
from dpcli.data.sources import load_dataset
from dpcli.stages import core
from dpcli.stages.proxy import ProxySpec, select_via_proxy
from dpcli.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--proxy", default="convnet:5")
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--seeds", default="0,1", help="Retraining seeds.")
    ap.add_argument("--epochs", type=int, default=None, help="Target epochs [default: the dataset profile's].")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    ds = load_dataset(args.data)
    target = default_train_config(ds.name, ds.augment).replace(epochs=args.epochs)
    spec = ProxySpec.parse(args.proxy)
    rows = []
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
        print(f"target {target.arch} {target.epochs} epochs: test {full.final.test_acc:.2f}%  train {t_train:.1f}s  "
              f"influence {t_infl:.1f}s", flush=True)
        for ratio in (float(r) for r in args.ratios.split(",")):
            pcfg = PruneConfig(ratio=ratio)
            t0 = time.perf_counter()
            own = core.prune(s_path, runs.mask_path(s_path, pcfg), pcfg, device=cpu, ds=ds)
            own_cost = t_train + t_infl + time.perf_counter() - t0
            sel = select_via_proxy(ds, target, spec, pcfg, device=cpu, run_root=root)
            rnd = core.random_mask(core.read_influence_info(s_path), own.n_pruned, 0,
                                   root / f"random-{ratio}" / "mask.h5")
            for name, mask, cost in (("target", own, own_cost), ("proxy", sel.mask, sel.selection_seconds),
                                     ("random", rnd, 0.0)):
                accs = []
                for seed in (int(s) for s in args.seeds.split(",")):
                    out = root / f"re-{name}-{ratio}-{seed}" / "checkpoint.h5"
                    res = core.retrain(ds, mask, out, base=target, overrides={"seed": seed}, device=cpu)
                    accs.append(res.metrics["test_accuracy"])
                row = {"ratio": ratio, "selection": name, "selection_seconds": cost, "kept": int(mask.n_kept),
                       "test_acc_mean": float(np.mean(accs)), "test_acc": accs,
                       "overlap_with_target_pruned": float(np.mean(~own.keep[~mask.keep])) if name != "target" else 1.0}
                rows.append(row)
                print(f"ratio {ratio:.2f}  {name:<7} selection {cost:7.1f}s  kept {row['kept']:5d}  "
                      f"target acc {row['test_acc_mean']:.2f}% {accs}  pruned-overlap {row['overlap_with_target_pruned']:.2f}",
                      flush=True)
    print(json.dumps({"target": target.to_dict(), "proxy": args.proxy, "full_test_acc": full.final.test_acc,
                      "rows": rows}))


if __name__ == "__main__":
    main()
