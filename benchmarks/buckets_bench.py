"""Bucketed vs unbucketed selection on synthetic S: quality, time, peak RSS (one config per process).

python benchmarks/buckets_bench.py --n 200000 --d 512 --mode cardinality --buckets 1
python benchmarks/buckets_bench.py --n 200000 --d 512 --mode epsilon --buckets 8 --workers 2
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from dpcli.select import solvers as selection
from dpcli.select.buckets import solve_bucketed


def synthetic(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Heavy-tailed rows: N(0, I) directions times log-normal scales, float32."""
    rng = np.random.default_rng(seed)
    S = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        S[a:b] = rng.standard_normal((b - a, d), dtype=np.float32) * rng.lognormal(0, 1, (b - a, 1)).astype(np.float32)
    return S


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--mode", choices=["cardinality", "epsilon"], default="cardinality")
    p.add_argument("--buckets", type=int, default=1)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--time-budget", type=float, default=None)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--eps-frac", type=float, default=1e-3, help="epsilon = this x ||sum of a random half||")
    a = p.parse_args()
    S = synthetic(a.n, a.d)
    rng = np.random.default_rng(1)
    half = selection.subset_norm(S, rng.random(a.n) < 0.5)
    m = eps = None
    if a.mode == "cardinality":
        m = int(a.ratio * a.n)
    else:
        eps = a.eps_frac * half
    t0 = time.perf_counter()
    sel = solve_bucketed(S, m=m, epsilon=eps, buckets=a.buckets, workers=a.workers, time_budget=a.time_budget)
    secs = time.perf_counter() - t0
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 0) / 1024
    rss_c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "n": a.n,
                "d": a.d,
                "mode": a.mode,
                "buckets": a.buckets,
                "workers": a.workers,
                "m": m,
                "epsilon": eps,
                "n_pruned": sel.n_pruned,
                "norm": sel.norm,
                "random_half_norm": half,
                "seconds": round(secs, 1),
                "peak_rss_mib": round(rss),
                "peak_rss_child_mib": round(rss_c),
            }
        )
    )


if __name__ == "__main__":
    main()
