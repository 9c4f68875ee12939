"""Compare dpcli's pruning solvers at equal time budgets on synthetic influence matrices.

Run by hand (not a test), e.g.::

    python benchmarks/solvers.py --sizes 10000x64 10000x512 50000x64 50000x512 --budget 10 \\
        --large 1280000x512

Synthetic S: rows ``r_i * (N(0, I) + mean * mu) / sqrt(d)`` with a fixed unit direction ``mu``
and lognormal scales ``r_i`` (``--sigma``; influence norms are heavy-tailed in practice), so a
typical row has norm ~1 and a random half of the rows sums to a norm in the hundreds.
Prints markdown tables: cardinality mode (prune half) for every solver at the same budget, then
``swap`` alone on the large size in both modes (natural stopping) with time and peak memory.

``--compare-tree DIR`` instead compares natural stopping (no budget) of ``swap`` in this tree against
another dpcli tree (e.g. ``git archive ab05d0a dpcli | tar -x -C /tmp/base``), each instance solved in
its own process per tree, on the ``--sizes`` instances and on S files (``--files path.h5@ratio``)::

    python benchmarks/solvers.py --compare-tree /tmp/base --sizes 10000x64 10000x512 50000x64 50000x512 \\
        --files influence.h5@0.5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
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


def _solve_in(tree: str, spec: str, ratio: float, seed: int, args) -> dict:
    """Natural-stopping swap on one instance, in a fresh process importing dpcli from ``tree``."""
    code = f"""
import json, sys, time, numpy as np
sys.path.insert(0, {tree!r})
from dpcli.select import solvers as selection
spec = {spec!r}
if spec.endswith('.h5'):
    import h5py
    with h5py.File(spec) as f:
        S = np.asarray(f['S'][()], dtype=np.float32)
else:
    sys.path.insert(1, {os.path.dirname(os.path.abspath(__file__))!r})
    from solvers import synthetic
    n, d = (int(x) for x in spec.lower().split('x'))
    S = synthetic(n, d, {args.seed}, {args.mean}, {args.sigma})
m = selection.count_from_ratio(S.shape[0], {ratio})
t, c = time.perf_counter(), time.process_time()
sel = selection.minimize_norm(S, m, seed={seed})
print(json.dumps({{'norm': sel.norm, 'seconds': time.perf_counter() - t, 'cpu': time.process_time() - c}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": tree}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args) -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cases = [(s, args.ratio) for s in args.sizes] + [
        (f.rsplit("@", 1)[0], float(f.rsplit("@", 1)[1])) for f in args.files
    ]
    print(f"### swap, natural stopping: this tree against {args.compare_tree} (median over seeds {args.seeds})\n")
    print("| instance | prune ratio | norm before | norm now | now / before | CPU s before | CPU s now |")
    print("|---|---|---|---|---|---|---|")
    for spec, ratio in cases:
        runs = {tree: [_solve_in(tree, spec, ratio, s, args) for s in args.seeds] for tree in (args.compare_tree, here)}
        med = {
            tree: (float(np.median([r["norm"] for r in rs])), float(np.median([r["cpu"] for r in rs])))
            for tree, rs in runs.items()
        }
        (nb, cb), (nn, cn) = med[args.compare_tree], med[here]
        name = spec if not spec.endswith(".h5") else os.path.basename(os.path.dirname(spec)) or spec
        print(f"| {name} | {ratio:g} | {nb:.5g} | {nn:.5g} | {nn / nb:.3f} | {cb:.1f} | {cn:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes",
        nargs="*",
        default=["10000x64", "10000x512", "50000x64", "50000x512"],
        help="NxD sizes compared at equal budgets",
    )
    ap.add_argument("--solvers", nargs="+", default=["swap", "anneal"])
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per solver run")
    ap.add_argument("--ratio", type=float, default=0.5, help="prune ratio for cardinality mode")
    ap.add_argument("--large", default="1280000x512", help="NxD for the swap-only timing ('' to skip)")
    ap.add_argument("--large-eps", type=float, default=1.0, help="epsilon for the large epsilon-mode run")
    ap.add_argument("--mean", type=float, default=0.5)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-tree", default=None, help="another dpcli tree to compare natural stopping with")
    ap.add_argument("--files", nargs="*", default=[], help="S files (influence.h5@ratio) for --compare-tree")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="solver seeds for --compare-tree")
    args = ap.parse_args()
    if args.compare_tree:
        compare(args)
        return

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"numpy {np.__version__}, python {platform.python_version()}"
    )
    print(f"synthetic S: mean={args.mean}, lognormal sigma={args.sigma}, seed={args.seed}\n")

    if args.sizes:
        print(f"### Cardinality mode (prune ratio {args.ratio}), budget {args.budget:g} s per solver\n")
        print(
            "| n | d | m | random-subset norm | median row norm | "
            + " | ".join(f"{s} norm" for s in args.solvers)
            + " | "
            + " | ".join(f"{s} iters" for s in args.solvers)
            + " |"
        )
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
            print(
                f"| {n:,} | {d} | {m:,} | {selection.subset_norm(S, rand):.4g} | {row:.3g} | "
                + " | ".join(norms)
                + " | "
                + " | ".join(iters)
                + " |",
                flush=True,
            )
            del S

    if args.large:
        n, d = parse_size(args.large)
        t = time.perf_counter()
        S = synthetic(n, d, args.seed, args.mean, args.sigma)
        gen = time.perf_counter() - t
        m = selection.count_from_ratio(n, args.ratio)
        print(
            f"\n### swap at n={n:,}, d={d} (S = {S.nbytes / 2**30:.2f} GiB float32, generated in {gen:.0f} s), "
            "natural stopping\n"
        )
        print("| mode | target | pruned | norm | seconds | moves applied | peak RSS (GiB) |")
        print("|---|---|---|---|---|---|---|")
        sel = selection.minimize_norm(S, m, solver="swap", seed=args.seed)
        print(
            f"| cardinality | m={m:,} | {sel.n_pruned:,} | {sel.norm:.4g} | {sel.seconds:.1f} | "
            f"{sel.iterations:,} | {peak_rss_gib():.2f} |",
            flush=True,
        )
        sel = selection.maximize_pruned(S, args.large_eps, solver="swap", seed=args.seed)
        print(
            f"| epsilon | eps={args.large_eps:g} | {sel.n_pruned:,} | {sel.norm:.4g} | {sel.seconds:.1f} | "
            f"{sel.iterations:,} | {peak_rss_gib():.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
