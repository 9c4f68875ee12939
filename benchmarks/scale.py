"""Selection and influence throughput at scale (run by hand, not a test).

Two parts::

    # selection: each (n, solver, mode) runs in a fresh child process, so its peak RSS is its own
    python benchmarks/scale.py selection --sizes 50000 200000 1280000 --d 512 --timeout 900
    # influence: ConvNet(width 32, depth 3), n = 10,000 CIFAR-sized images, exact influence
    python benchmarks/scale.py influence --n 10000

Selection uses the synthetic S of ``benchmarks/solvers.py`` (``synthetic``; float32, generated in
chunks into one preallocated array, so generation peaks near ``S.nbytes``).  Per size: ``swap``
with no budget (natural stopping, deterministic), then ``anneal`` with a budget equal to swap's
wall time in the same mode (only for n <= ``--anneal-max-n``), then ``dpcli.buckets.solve_bucketed``
if that module imports.  Cardinality mode prunes m = n/2; epsilon mode uses
``epsilon = --eps-factor * median row norm of S`` (default 1.0, i.e. one typical row).
Peak memory is ``ru_maxrss`` of the child (includes the interpreter, numpy and S itself).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from solvers import synthetic  # noqa: E402  (the synthetic-S generator of benchmarks/solvers.py)

MEAN, SIGMA, SEED = 0.5, 1.0, 0


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def have_buckets() -> bool:
    try:
        from dpcli.select import buckets  # noqa: F401

        return hasattr(buckets, "solve_bucketed")
    except Exception:
        return False


# ----------------------------------------------------------------------------- selection child


def one(args: argparse.Namespace) -> None:
    """Run a single configuration and print one JSON line."""
    from dpcli.select import solvers as selection

    base = _rss_gib()
    t = time.perf_counter()
    S = synthetic(args.n, args.d, SEED, MEAN, SIGMA)
    gen_s = time.perf_counter() - t
    gen_peak = _rss_gib()
    # row norms chunk by chunk: np.linalg.norm(S, axis=1) would allocate an S-sized temporary
    row_norms = np.concatenate(
        [np.sqrt(np.einsum("ij,ij->i", S[a : a + 65536], S[a : a + 65536])) for a in range(0, args.n, 65536)]
    )
    med = float(np.median(row_norms))
    del row_norms
    m = args.n // 2
    eps = args.eps_factor * med
    budget = args.budget if args.budget > 0 else None
    t = time.perf_counter()
    if args.solver == "bucketed":
        from dpcli.select.buckets import solve_bucketed

        kw = dict(m=m) if args.mode == "cardinality" else dict(epsilon=eps)
        res = solve_bucketed(S, buckets=args.buckets, workers=args.workers, **kw)
        wall = time.perf_counter() - t
        mask = np.asarray(getattr(res, "pruned", res), dtype=bool)
        pruned = int(mask.sum())
        norm = selection.subset_norm(S, mask)  # recomputed independently
        iters = getattr(res, "iterations", None)
    else:
        if args.mode == "cardinality":
            sel = selection.minimize_norm(S, m, solver=args.solver, time_budget=budget, seed=SEED)
        else:
            sel = selection.maximize_pruned(S, eps, solver=args.solver, time_budget=budget, seed=SEED)
        wall = time.perf_counter() - t
        pruned, norm, iters = sel.n_pruned, sel.norm, sel.iterations
    print(
        json.dumps(
            dict(
                n=args.n,
                d=args.d,
                solver=args.solver,
                mode=args.mode,
                m=m,
                eps=eps,
                median_row_norm=med,
                budget=budget,
                wall_s=wall,
                norm=norm,
                pruned=pruned,
                iterations=iters,
                gen_s=gen_s,
                S_gib=S.nbytes / 2**30,
                base_rss_gib=base,
                gen_peak_gib=gen_peak,
                peak_rss_gib=_rss_gib(),
                worker_peak_gib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
            )
        ),
        flush=True,
    )


def run_child(n: int, d: int, solver: str, mode: str, budget: float, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "_one",
        "--n",
        str(n),
        "--d",
        str(d),
        "--solver",
        solver,
        "--mode",
        mode,
        "--budget",
        f"{budget:.3f}",
        "--eps-factor",
        str(args.eps_factor),
        "--buckets",
        str(args.buckets),
        "--workers",
        str(args.workers),
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return dict(n=n, d=d, solver=solver, mode=mode, error=f"timeout {args.timeout}s")
    if p.returncode != 0:
        return dict(n=n, d=d, solver=solver, mode=mode, error=(p.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


def selection_bench(args: argparse.Namespace) -> None:
    bucketed = have_buckets() and not args.no_buckets
    print(f"bucketed selection (dpcli.buckets) available: {bucketed}", flush=True)
    print(
        "| n | d | S (GiB) | mode | target | solver | budget (s) | wall (s) | norm | pruned | "
        "peak RSS (GiB) | after generating S (GiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for n in args.sizes:
        for mode in args.modes:
            solvers = ["swap"] + (["anneal"] if n <= args.anneal_max_n else []) + (["bucketed"] if bucketed else [])
            swap_wall = None
            for solver in solvers:
                budget = swap_wall if solver == "anneal" else 0.0
                if solver == "anneal" and not budget:
                    continue
                r = run_child(n, args.d, solver, mode, budget or 0.0, args)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(r) + "\n")
                if "error" in r:
                    print(f"| {n:,} | {args.d} | | {mode} | | {solver} | | **{r['error']}** | | | | |", flush=True)
                    continue
                if solver == "swap":
                    swap_wall = r["wall_s"]
                target = f"m={r['m']:,}" if mode == "cardinality" else f"eps={r['eps']:.3g}"
                b = f"{r['budget']:.1f}" if r["budget"] else "none"
                print(
                    f"| {n:,} | {args.d} | {r['S_gib']:.2f} | {mode} | {target} | {solver} | {b} | "
                    f"{r['wall_s']:.1f} | {r['norm']:.4g} | {r['pruned']:,} | {r['peak_rss_gib']:.2f} | "
                    f"{r['gen_peak_gib']:.2f} |"
                    + (f" largest worker {r['worker_peak_gib']:.2f} GiB |" if r.get("worker_peak_gib") else ""),
                    flush=True,
                )


# ----------------------------------------------------------------------------- influence


def influence_bench(args: argparse.Namespace) -> None:
    import torch

    from dpcli.data.sources import Dataset, Split, iterate_batches
    from dpcli.influence import kernels as influence
    from dpcli.models.zoo import build_model
    from dpcli.train.loop import extract_features

    torch.manual_seed(0)
    n = args.n
    caches = sorted(glob.glob("/tmp/cifarrun/data/imagefolder-cache/*.h5"))
    if caches:
        import h5py

        with h5py.File(caches[0], "r") as f:
            images = f["train/images"][:n]
            labels = f["train/labels"][:n]
        source = f"real CIFAR-10 train images from {caches[0]} (first {n:,})"
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int64)
        source = f"random uint8 32x32x3 images (n={n:,})"
    split = Split(images, labels)
    ds = Dataset(
        "cifar10",
        split,
        split,
        tuple(str(i) for i in range(10)),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        False,
    )
    model = build_model("convnet", 10, 3, 32, width=32, depth=3).eval()
    dev = torch.device("cpu")
    print(
        f"data: {source}; torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"model: ConvNet width 32 depth 3, feature dim {model.feature_dim}, untrained weights "
        f"(throughput does not depend on the weights)",
        flush=True,
    )

    # (a) plain inference: forward pass, eval, no grad, same batching as extract_features
    with torch.no_grad():
        t = time.perf_counter()
        for x, _, _ in iterate_batches(
            split, args.batch, mean=ds.mean, std=ds.std, device=dev, shuffle=False, augment=False, generator=None
        ):
            model(x)
        t_inf = time.perf_counter() - t

    # (b) influence stage: features + exact influence
    t = time.perf_counter()
    feats = extract_features(model, split, ds, dev, batch_size=args.batch)
    t_feat = time.perf_counter() - t
    y = torch.as_tensor(labels)
    stamps: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    S = influence.exact_influence(
        feats,
        y,
        model.head.weight,
        model.head.bias,
        damping=args.damping,
        chunk_size=args.chunk,
        progress=lambda done, total: stamps.append((time.perf_counter(), done)),
    )
    t_inflx = time.perf_counter() - t0
    C, D = 10, model.feature_dim + 1
    d = S.shape[1]
    # per-row solve time from the chunks after the first; setup (Hessian + Cholesky) = rest
    if len(stamps) >= 2:
        per_row = (stamps[-1][0] - stamps[0][0]) / (stamps[-1][1] - stamps[0][1])
    else:
        per_row = float("nan")
    t_solve = per_row * n
    t_setup = t_inflx - t_solve
    total = t_feat + t_inflx
    print(
        f"\nn = {n:,}, d = C(D) = {C} x {D} = {d}, batch {args.batch}, chunk {args.chunk}, damping {args.damping:g}\n"
    )
    print("| stage | seconds | samples/s |")
    print("|---|---|---|")
    print(f"| (a) plain inference (forward, eval, no grad) | {t_inf:.2f} | {n / t_inf:,.0f} |")
    print(f"| feature extraction | {t_feat:.2f} | {n / t_feat:,.0f} |")
    print(f"| exact_influence total | {t_inflx:.2f} | {n / t_inflx:,.0f} |")
    print(f"|   of which Hessian build + Cholesky (inferred) | {t_setup:.2f} | |")
    print(f"|   of which per-row solves (measured per chunk) | {t_solve:.2f} | {1 / per_row:,.0f} |")
    print(f"| (b) influence stage (features + exact_influence) | {total:.2f} | {n / total:,.0f} |")
    print(
        json.dumps(
            dict(
                n=n,
                d=d,
                t_inf=t_inf,
                t_feat=t_feat,
                t_inflx=t_inflx,
                t_setup=t_setup,
                t_solve=t_solve,
                per_row=per_row,
                peak_rss_gib=_rss_gib(),
            )
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("selection")
    s.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 1_280_000])
    s.add_argument("--d", type=int, default=512)
    s.add_argument("--modes", nargs="+", choices=["cardinality", "epsilon"], default=["cardinality", "epsilon"])
    s.add_argument("--anneal-max-n", type=int, default=200_000)
    s.add_argument("--eps-factor", type=float, default=1.0, help="epsilon = factor * median row norm")
    s.add_argument("--buckets", type=int, default=8)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--no-buckets", action="store_true")
    s.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    s.add_argument("--jsonl", default="", help="append raw results here")
    o = sub.add_parser("_one")
    o.add_argument("--n", type=int, required=True)
    o.add_argument("--d", type=int, default=512)
    o.add_argument("--solver", required=True)
    o.add_argument("--mode", choices=["cardinality", "epsilon"], required=True)
    o.add_argument("--budget", type=float, default=0.0)
    o.add_argument("--eps-factor", type=float, default=1.0)
    o.add_argument("--buckets", type=int, default=8)
    o.add_argument("--workers", type=int, default=2)
    i = sub.add_parser("influence")
    i.add_argument("--n", type=int, default=10_000)
    i.add_argument("--batch", type=int, default=1024)
    i.add_argument("--chunk", type=int, default=1024)
    i.add_argument("--damping", type=float, default=1e-3)
    args = ap.parse_args()
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}, "
        f"numpy {np.__version__}; load: {os.getloadavg()}",
        file=sys.stderr,
    )
    {"selection": selection_bench, "_one": one, "influence": influence_bench}[args.cmd](args)


if __name__ == "__main__":
    main()
