"""What a pruned set costs against the hardware's floor: dpcli's selection beside the cheapest computation
that could stand in for it, measured in one process.

Run by hand (not a test)::

    python3 benchmarks/selection_speed.py --out benchmarks/results/selection_speed.json
    python3 benchmarks/selection_speed.py --problems s3k s50k --out /tmp/s.json   # a subset
    python3 benchmarks/selection_speed.py --plot-only benchmarks/results/selection_speed.json

Problems (``--problems``; S realistic, see :func:`softmax_influence`):

* ``s3k``, ``s50k``, ``s200k``: S of 3,000 / 50,000 / 200,000 x 5,130 (10 classes x 512 features + bias),
  pruned 50 / 30 / 30 %;
* ``s1.28m``: 1,280,000 x 512 (8 classes x 63 + 1), pruned 40 %, given as a ``.npy`` and memory-mapped;
* ``emb3k``: 3,000 x 512 features, 10 classes, through ``dpcli.api.influence`` then ``dpcli.api.prune``;
* ``emb100k``: 100,000 x 768 features, 100 classes: S would be 100,000 x 76,900 (28.6 GiB), so
  ``influence(estimator="cg", sketch=8, cg_tol=1e-3)`` stores the sketch ``S R`` (100,000 x 8), then ``prune``.

For every problem: dpcli's time (``dpcli.api.prune(S, method="optimization")``; for the embeddings rows
also ``dpcli.api.influence``) and its floor measured right beside it in the same process:

* the Gram-matrix greedy pass (one ``S @ S.T``, then O(n) per pick) where ``S S^T`` fits in memory
  (n <= 20,000), with the norm it reaches;
* one pass over S (a BLAS ``S @ v``) for every S: the least any method that reads S must spend;
* for the embeddings rows, scikit-learn's ``LogisticRegression(lbfgs)`` on the same L2 objective (the
  head fit dpcli's influence needs; ``benchmarks/head_fit.py``'s, same tolerance), plus for an exact S the
  same S solve at scikit-learn's optimum: the influence stage's floor.  On ``emb100k`` lbfgs is capped at
  ``sklearn_max_iter`` iterations and the gradient norm each fit reached is recorded.

``--update`` keeps the other problems' rows of an existing ``--out`` and replaces only those run now
(every row records its own command and load average).

Peak memory is each problem's own high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``
before it), S's resident pages included.  Results go to ``--out`` (JSON, written after each problem) and a
plot of time against n to ``--plot`` (default ``docs/selection-speed.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # head_fit's scikit-learn floor

GRAM_MAX_N = 20_000  # S S^T (float32) up to 1.6 GB


@dataclass(frozen=True)
class Problem:
    name: str
    n: int
    classes: int
    dim: int  # features; S has classes * (dim + 1) columns
    ratio: float
    kind: str = "S"  # "S": S given; "npy": S given as a memory-mapped .npy; "emb": from features
    sketch: int | None = None
    cg_tol: float = 1e-6
    sklearn_max_iter: int = 20_000


PROBLEMS = {
    p.name: p
    for p in (
        Problem("s3k", 3_000, 10, 512, 0.5),
        Problem("s50k", 50_000, 10, 512, 0.3),
        Problem("s200k", 200_000, 10, 512, 0.3),
        Problem("s1.28m", 1_280_000, 8, 63, 0.4, kind="npy"),
        Problem("emb3k", 3_000, 10, 512, 0.5, kind="emb"),
        Problem("emb100k", 100_000, 100, 768, 0.3, kind="emb", sketch=8, cg_tol=1e-3, sklearn_max_iter=30),
    )
}


# ----------------------------------------------------------------------------------------------- data
def features(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-structured float32 features: class means plus noise with a decaying spectrum (like a
    network's penultimate layer: a few strong directions, a long weak tail)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    spectrum = (1.0 + np.arange(dim)) ** -0.5
    spectrum = (spectrum / np.sqrt(np.mean(spectrum**2))).astype(np.float32)
    means = (rng.standard_normal((classes, dim)) * 1.5 / np.sqrt(dim) * spectrum * np.sqrt(dim) / 4).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    step = max(1, (1 << 22) // dim)
    for a in range(0, n, step):
        b = min(n, a + step)
        x[a:b] = means[y[a:b]] + rng.standard_normal((b - a, dim), dtype=np.float32) * spectrum / np.sqrt(dim) * 2
    return x, y


def softmax_influence(
    n: int, classes: int, dim: int, seed: int, out: np.ndarray | None = None, damping: float = 1e-3
) -> np.ndarray:
    """S with the structure of a real last-layer influence matrix, at any size, in O(n C D).

    ``S_i = (A^-1 r_i) (x) (B^-1 [x_i, 1]) / n``: the per-sample gradient of the softmax cross-entropy,
    ``r_i (x) [x_i, 1]`` with ``r_i = p_i - e_{y_i}``, through the Kronecker-factored Hessian
    ``A (x) B`` (``A`` = mean ``diag(p) - p p^T``, ``B`` = mean ``[x, 1][x, 1]^T``, both damped).  The
    head is a noisy teacher (class means), so most samples are confidently right (small rows) and a few
    are wrong (large rows): influence norms are heavy-tailed, and S is class-structured and low-rank in
    its feature factor, as real S are.
    """
    x, y = features(n, classes, dim, seed)
    rng = np.random.default_rng(seed + 1)
    means = np.stack([x[y == c].mean(0) if np.any(y == c) else np.zeros(dim, np.float32) for c in range(classes)])
    W = (
        10.0 * means / np.mean(np.linalg.norm(means, axis=1)) ** 2
        + 0.3 * rng.standard_normal(means.shape) / np.sqrt(dim)
    ).astype(np.float64)
    S = np.empty((n, classes * (dim + 1)), dtype=np.float32) if out is None else out
    step = max(1, (1 << 24) // (classes * (dim + 1)))
    A = np.zeros((classes, classes))
    B = np.zeros((dim + 1, dim + 1))
    for a in range(0, n, step):  # the Hessian factors: one pass
        xt = np.hstack([x[a : a + step].astype(np.float64), np.ones((min(step, n - a), 1))])
        p = _softmax(xt[:, :dim] @ W.T)
        A += np.einsum("ic,id->cd", p, -p) + np.diag(p.sum(0))
        B += xt.T @ xt
    A = A / n + np.sqrt(damping) * np.eye(classes)
    B = B / n + np.sqrt(damping) * np.eye(dim + 1)
    Ai, Bi = np.linalg.inv(A), np.linalg.inv(B)
    for a in range(0, n, step):
        xt = np.hstack([x[a : a + step].astype(np.float64), np.ones((min(step, n - a), 1))])
        r = _softmax(xt[:, :dim] @ W.T)
        r[np.arange(len(r)), y[a : a + step]] -= 1.0
        S[a : a + step] = (np.einsum("ic,id->icd", r @ Ai.T, xt @ Bi.T) / n).reshape(len(r), -1)
    return S


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ----------------------------------------------------------------------------------------------- floors
def gram_greedy(S: np.ndarray, m: int) -> np.ndarray:
    """The Gram-matrix greedy pass: one ``S @ S.T``, then each pick the row minimizing ``||s + S_j||``."""
    G = S @ S.T
    q = np.diag(G).astype(np.float64)
    v = np.zeros(len(S))
    picked = np.zeros(len(S), dtype=bool)
    for _ in range(m):
        score = 2.0 * v + q
        score[picked] = np.inf
        j = int(np.argmin(score))
        picked[j] = True
        v += G[j]
    return picked


def one_pass(S: np.ndarray) -> None:
    """One BLAS pass over S (``S @ v``), streamed by 64 MiB when S is a memory map."""
    v = np.ones(S.shape[1], dtype=S.dtype)
    step = max(1, (64 << 20) // (4 * S.shape[1]))
    for a in range(0, S.shape[0], step):
        S[a : a + step] @ v


def sklearn_floor(x: np.ndarray, y: np.ndarray, p: Problem, damping: float = 1e-3, tol: float = 1e-7) -> dict:
    """scikit-learn's lbfgs on dpcli's head objective (head_fit.py's), and for an exact S the S solve at its
    optimum: the seconds of each and the gradient norm the fit reached.  Small fits run on one thread, as
    dpcli's do (both are several times slower with two on a shared 2-core machine; head_fit.py)."""
    import torch
    from head_fit import fit_sklearn, grad_norm

    from dpcli.influence.head import _SMALL_PASS
    from dpcli.influence.kernels import exact_influence

    threads = 1 if x.shape[0] * x.shape[1] * p.classes < _SMALL_PASS else None  # as dpcli's fit chooses
    t = time.perf_counter()
    w, b, note = fit_sklearn(x, y, p.classes, damping, tol, threads=threads, max_iter=p.sklearn_max_iter)
    out = {
        "sklearn_fit_seconds": time.perf_counter() - t,
        "sklearn_fit": note,
        "sklearn_grad_norm": grad_norm(x, y, w, b, damping),
    }
    if p.sketch is None:
        t = time.perf_counter()
        exact_influence(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w), torch.from_numpy(b), damping)
        out["S_solve_seconds"] = time.perf_counter() - t
    return out


# ----------------------------------------------------------------------------------------------- measuring
def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def norm_of(S: np.ndarray, mask: np.ndarray) -> float:
    from dpcli.select.linalg import subset_norm

    return subset_norm(S, mask)


class Work:
    """Counts what the solver asks of the hardware (wraps ``Rows``; adds no work): passes over all of S and
    Gram-block flops."""

    def __init__(self) -> None:
        from dpcli.select import linalg

        self.linalg, self.passes, self.gram_flops = linalg, 0, 0.0
        self._matvec, self._gram, self._extend = linalg.Rows.matvec, linalg.Rows.gram, linalg.Rows._extend
        work = self

        def matvec(rows, x):
            work.passes += rows.n == work.n
            return work._matvec(rows, x)

        def gram(rows, idx):
            work.gram_flops += 2.0 * len(idx) ** 2 * rows.d
            return work._gram(rows, idx)

        def extend(rows, old, at, fresh):
            work.gram_flops += 2.0 * len(fresh) * (len(at) + len(fresh)) * rows.d
            return work._extend(rows, old, at, fresh)

        linalg.Rows.matvec, linalg.Rows.gram, linalg.Rows._extend = matvec, gram, extend
        self.n = -1

    def close(self) -> None:
        self.linalg.Rows.matvec, self.linalg.Rows.gram, self.linalg.Rows._extend = (
            self._matvec,
            self._gram,
            self._extend,
        )


def run_problem(p: Problem, work: Path, seed: int, repeats: int) -> dict:
    import dpcli.api as dp
    from dpcli.select.linalg import count_from_ratio

    rec: dict = {
        "problem": p.name,
        "n": p.n,
        "d": p.classes * (p.dim + 1),
        "classes": p.classes,
        "dim": p.dim,
        "ratio": p.ratio,
        "kind": p.kind,
        "load_before": os.getloadavg()[0],
    }
    t_gen = time.perf_counter()
    if p.kind == "emb":
        x, y = features(p.n, p.classes, p.dim, seed)
        rec["generate_seconds"] = time.perf_counter() - t_gen
        dp.influence(x[:500], y[:500], num_classes=p.classes)  # warm: first-call imports are not the stage's
        reset_peak()
        rec["influence_seconds"], (S, head) = timed(
            dp.influence, x, y, estimator="cg" if p.sketch else "exact", sketch=p.sketch, cg_tol=p.cg_tol
        )
        rec["influence_peak_gib"] = peak_gib()
        rec["head_grad_norm"], rec["head_newton_steps"] = float(head.grad_norm), int(head.iterations)
        rec.update(sklearn_floor(x, y, p))
        if "S_solve_seconds" in rec:
            rec["influence_ratio_to_floor"] = rec["influence_seconds"] / (
                rec["sklearn_fit_seconds"] + rec["S_solve_seconds"]
            )
        del x
    elif p.kind == "npy":
        path = work / f"{p.name}-S.npy"
        S = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(p.n, p.classes * (p.dim + 1)))
        softmax_influence(p.n, p.classes, p.dim, seed, out=S)
        S.flush()
        del S
        rec["generate_seconds"] = time.perf_counter() - t_gen
        os.posix_fadvise(os.open(path, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)  # start from disk, honestly
        S = np.load(path, mmap_mode="r")
    else:
        S = softmax_influence(p.n, p.classes, p.dim, seed)
        rec["generate_seconds"] = time.perf_counter() - t_gen
    m = count_from_ratio(S.shape[0], p.ratio)
    rec["S_gib"] = S.nbytes / 2**30
    rec["m"] = m
    print(f"{p.name}: S {S.shape[0]:,} x {S.shape[1]:,} ({rec['S_gib']:.2f} GiB), prune {m:,}", flush=True)

    reset_peak()
    rec["rss_before_gib"] = rss_gib()
    times, cpu, sel = [], [], None
    for r in range(repeats):
        counter = Work() if r == 0 else None  # counts the first run's passes and Gram flops (a call each)
        if counter is not None:
            counter.n = S.shape[0]
        c = time.process_time()
        t, sel = timed(dp.prune, S, prune_count=m, method="optimization", solver_seed=seed)
        times.append(t)
        cpu.append(time.process_time() - c)
        if counter is not None:
            counter.close()
            rec["passes_over_S"], rec["gram_gflop"] = counter.passes, counter.gram_flops / 1e9
    rec["dpcli_seconds"] = float(np.median(times))
    rec["dpcli_cpu_seconds"] = float(np.median(cpu))  # all threads: on a shared machine, the work itself
    rec["dpcli_runs"] = times
    rec["dpcli_peak_gib"] = peak_gib()
    rec["dpcli_norm"] = sel.norm
    rec["dpcli_solver"] = sel.solver

    passes = [timed(one_pass, S)[0] for _ in range(3)]
    rec["pass_seconds"] = float(np.median(passes))
    if S.shape[0] <= GRAM_MAX_N:
        g = [timed(gram_greedy, np.ascontiguousarray(S), m) for _ in range(repeats)]
        rec["greedy_seconds"] = float(np.median([t for t, _ in g]))
        rec["greedy_norm"] = norm_of(S, g[0][1])
    floor = rec.get("greedy_seconds", rec["pass_seconds"])
    rec["floor"] = "gram greedy" if "greedy_seconds" in rec else "one pass over S"
    rec["ratio_to_floor"] = rec["dpcli_seconds"] / floor
    rec["ratio_to_pass"] = rec["dpcli_seconds"] / rec["pass_seconds"]
    rec["peak_over_S"] = rec["dpcli_peak_gib"] / rec["S_gib"]
    rec["load_after"] = os.getloadavg()[0]
    print(json.dumps({k: v for k, v in rec.items() if k != "dpcli_runs"}, default=float), flush=True)
    return rec


def kernels(repeats: int = 7) -> dict:
    """numpy against torch on this CPU for the solver's kernels (medians, seconds): which backend the CPU uses."""
    import torch

    rng = np.random.default_rng(0)
    out: dict = {"torch_threads": torch.get_num_threads()}
    S = rng.standard_normal((50_000, 5_130), dtype=np.float32)
    St = torch.from_numpy(S)
    x = rng.standard_normal(5_130).astype(np.float32)
    idx = np.sort(rng.choice(50_000, 2_048, replace=False))

    def med(fn) -> float:
        return float(np.median([timed(fn)[0] for _ in range(repeats)]))

    X, Xt = S[idx], St[torch.from_numpy(idx)]
    out["pass 50000x5130 (S @ v)"] = (med(lambda: S @ x), med(lambda: St @ torch.from_numpy(x)))
    out["pool Gram 2048x5130 float32"] = (med(lambda: X @ X.T), med(lambda: Xt @ Xt.T))
    out["gather 2048 rows"] = (med(lambda: S[idx]), med(lambda: St[torch.from_numpy(idx)]))
    v, vt = rng.standard_normal(2_048), torch.from_numpy(rng.standard_normal(2_048))
    out["small op (2048-vector add), per call"] = (
        med(lambda: [v + v for _ in range(1000)]) / 1000,
        med(lambda: [vt + vt for _ in range(1000)]) / 1000,
    )
    for k, (a, b) in list(out.items())[1:]:
        print(f"  {k}: numpy {a * 1e3:.3f} ms, torch {b * 1e3:.3f} ms (torch / numpy {b / a:.2f})", flush=True)
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((r for r in results if r["kind"] != "emb"), key=lambda r: r["n"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, style in (
        ("dpcli_seconds", "dpcli prune (optimization)", "o-"),
        ("greedy_seconds", "Gram-matrix greedy pass", "s--"),
        ("pass_seconds", "one pass over S (S @ v)", "^:"),
    ):
        pts = [(r["n"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    for r in rows:
        ax.annotate(
            f"{r['n']:,} x {r['d']:,}",
            (r["n"], r["dpcli_seconds"]),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("n (rows of S)")
    ax.set_ylabel("seconds")
    ax.set_title("Selection time against n (2 CPU cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--repeats", type=int, default=3, help="runs of dpcli and of the greedy floor (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/selection_speed.json"))
    ap.add_argument("--plot", type=Path, default=Path("docs/selection-speed.png"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for the .npy problems")
    ap.add_argument("--plot-only", type=Path, default=None, help="redraw the plot from a results file")
    ap.add_argument("--no-kernels", action="store_true", help="skip the numpy-against-torch kernel timings")
    ap.add_argument("--update", action="store_true", help="keep --out's rows of the problems not run now")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text())["results"], args.plot)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="dpcli-selection-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    command = "python3 benchmarks/selection_speed.py " + " ".join(sys.argv[1:])
    report = {
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "numpy": np.__version__,
        },
        "results": [],
    }
    if args.update and args.out.exists():
        old = json.loads(args.out.read_text())
        for rec in old["results"]:
            rec.setdefault("command", old["command"])
        report = {**old, "results": [r for r in old["results"] if r["problem"] not in args.problems]}
    if not args.no_kernels:
        report["kernels_numpy_torch_seconds"] = kernels()
    for name in args.problems:
        rec = run_problem(PROBLEMS[name], work, args.seed, 1 if PROBLEMS[name].n > GRAM_MAX_N else args.repeats)
        rec["command"] = command
        report["results"].append(rec)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=float))
    plot(report["results"], args.plot)


if __name__ == "__main__":
    main()
