"""What ``--method auto`` costs beside the paper's objective alone, on in-memory features.

Run by hand::

    nice python3 benchmarks/auto_cost.py                 # 10,000 x 256 features, 10 classes, 50 % pruned
    nice python3 benchmarks/auto_cost.py --n 2000 --dim 64

S is the exact last-layer influence of an L2 softmax head on Gaussian-class features (dpcli.api.influence);
then ``dpcli.api.prune`` is timed with ``method="optimization"`` and ``method="auto"`` (wall and CPU seconds),
and auto's line is printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--noise", type=float, default=0.2, help="share of labels redrawn at random")
    a = ap.parse_args()
    import dpcli.api as dp

    rng = np.random.default_rng(0)
    y = rng.integers(0, a.classes, a.n)
    x = (rng.normal(size=(a.classes, a.dim)) * 0.3)[y] + rng.normal(size=(a.n, a.dim))
    flip = rng.random(a.n) < a.noise
    y[flip] = rng.integers(0, a.classes, int(flip.sum()))
    t = time.perf_counter()
    S, _ = dp.influence(x.astype(np.float32), y)
    print(f"influence: S {S.shape[0]} x {S.shape[1]} in {time.perf_counter() - t:.1f}s")
    for method in ("optimization", "auto"):
        w, c = time.perf_counter(), time.process_time()
        sel = dp.prune(S, prune_ratio=a.ratio, labels=y, features=x, method=method)
        print(f"{method}: {time.perf_counter() - w:.1f}s wall, {time.process_time() - c:.1f}s CPU, "
              f"kept {sel.n_kept}, norm {sel.norm:.4g}")
        if sel.auto:
            print(f"  {sel.auto['line']}  (auto's own seconds: {sel.auto['seconds']:.1f})")


if __name__ == "__main__":
    main()
