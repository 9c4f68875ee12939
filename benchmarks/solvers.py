"""Compare dpcli's pruning solvers at equal time budgets on synthetic influence matrices.

Run by hand (not a test), e.g.::

    python benchmarks/solvers.py --sizes 10000x64 10000x512 50000x64 50000x512 --budget 10 \\
        --large 1280000x512

Synthetic S: rows ``r_i * (N(0, I) + mean * mu) / sqrt(d)`` with a fixed unit direction ``mu``
and lognormal scales ``r_i`` (``--sigma``; influence norms are heavy-tailed in practice), so a
typical row has norm ~1 and a random half of the rows sums to a norm in the hundreds.
Prints markdown tables: cardinality mode (prune half) for every solver at the same budget, then
``swap`` alone on the large size in both modes (natural stopping) with time and peak memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dpcli.select import solvers as selection  # noqa: E402


def synthetic(n: int, d: int, seed: int, mean: float, sigma: float) -> np.ndarray:
    """float32 (n, d) rows: heavy-tailed scales times (isotropic noise + a mean direction)."""
    rng = np.random.default_rng(seed)
    S = np.empty((n, d), dtype=np.float32)
    mu = rng.standard_normal(d)
    mu = (mu / np.linalg.norm(mu)).astype(np.float32)
    step = max(1, (1 << 22) // d)
    for a in range(0, n, step):
        b = min(n, a + step)
        block = rng.standard_normal((b - a, d), dtype=np.float32) + np.float32(mean) * mu
        block *= (np.exp(sigma * rng.standard_normal(b - a)) / np.sqrt(d)).astype(np.float32)[:, None]
        S[a:b] = block
    return S


def parse_size(text: str) -> tuple[int, int]:
    n, d = text.lower().split("x")
    return int(n), int(d)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=["10000x64", "10000x512", "50000x64", "50000x512"],
                    help="NxD sizes compared at equal budgets")
    ap.add_argument("--solvers", nargs="+", default=["swap", "anneal"])
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per solver run")
    ap.add_argument("--ratio", type=float, default=0.5, help="prune ratio for cardinality mode")
    ap.add_argument("--large", default="1280000x512", help="NxD for the swap-only timing ('' to skip)")
    ap.add_argument("--large-eps", type=float, default=1.0, help="epsilon for the large epsilon-mode run")
    ap.add_argument("--mean", type=float, default=0.5)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"numpy {np.__version__}, python {platform.python_version()}")
    print(f"synthetic S: mean={args.mean}, lognormal sigma={args.sigma}, seed={args.seed}\n")

    if args.sizes:
        print(f"### Cardinality mode (prune ratio {args.ratio}), budget {args.budget:g} s per solver\n")
        print("| n | d | m | random-subset norm | median row norm | "
              + " | ".join(f"{s} norm" for s in args.solvers) + " | "
              + " | ".join(f"{s} iters" for s in args.solvers) + " |")
        print("|" + "---|" * (5 + 2 * len(args.solvers)))
        for size in args.sizes:
            n, d = parse_size(size)
            S = synthetic(n, d, args.seed, args.mean, args.sigma)
            m = selection.count_from_ratio(n, args.ratio)
            rng = np.random.default_rng(args.seed + 1)
            rand = np.zeros(n, dtype=bool)
            rand[rng.choice(n, m, replace=False)] = True
            row = float(np.median(np.linalg.norm(S, axis=1)))
            norms, iters = [], []
            for solver in args.solvers:
                sel = selection.minimize_norm(S, m, solver=solver, time_budget=args.budget, seed=args.seed)
                norms.append(f"{sel.norm:.4g}")
                iters.append(f"{sel.iterations:,}")
            print(f"| {n:,} | {d} | {m:,} | {selection.subset_norm(S, rand):.4g} | {row:.3g} | "
                  + " | ".join(norms) + " | " + " | ".join(iters) + " |", flush=True)
            del S

    if args.large:
        n, d = parse_size(args.large)
        t = time.perf_counter()
        S = synthetic(n, d, args.seed, args.mean, args.sigma)
        gen = time.perf_counter() - t
        m = selection.count_from_ratio(n, args.ratio)
        print(f"\n### swap at n={n:,}, d={d} (S = {S.nbytes / 2**30:.2f} GiB float32, generated in {gen:.0f} s), "
              "natural stopping\n")
        print("| mode | target | pruned | norm | seconds | moves applied | peak RSS (GiB) |")
        print("|---|---|---|---|---|---|---|")
        sel = selection.minimize_norm(S, m, solver="swap", seed=args.seed)
        print(f"| cardinality | m={m:,} | {sel.n_pruned:,} | {sel.norm:.4g} | {sel.seconds:.1f} | "
              f"{sel.iterations:,} | {peak_rss_gib():.2f} |", flush=True)
        sel = selection.maximize_pruned(S, args.large_eps, solver="swap", seed=args.seed)
        print(f"| epsilon | eps={args.large_eps:g} | {sel.n_pruned:,} | {sel.norm:.4g} | {sel.seconds:.1f} | "
              f"{sel.iterations:,} | {peak_rss_gib():.2f} |", flush=True)


if __name__ == "__main__":
    main()
