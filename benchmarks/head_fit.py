"""dpcli's head fit against scikit-learn's LogisticRegression(lbfgs) on the same objective, in one process.

    nice python3 benchmarks/head_fit.py                       # the default problems, 3 repeats each
    nice python3 benchmarks/head_fit.py --problems relu:3000x512x10 --repeats 5 --json out.json

The objective is dpcli's: mean cross-entropy + lam/2 ||[W, b]||^2 over C (D + 1) parameters.  scikit-learn
fits the same one with ``fit_intercept=False`` on ``[x, 1]`` (so the bias is penalized too) and
``C = 1 / (n lam)`` (its loss is the mean CE + ||w||^2 / (2 C n)).  Both stop at the same tolerance:
dpcli on ``||grad||_2 <= tol``; scikit-learn (scipy's L-BFGS-B, which tests the largest gradient entry)
at ``tol / sqrt(d)``, which implies ``||grad||_2 <= tol``, with ``max_iter`` high enough to get there.  The
gradient norm each reached is recomputed by one shared function.  Reported: median wall seconds over the
repeats, the ratio dpcli / scikit-learn, iterations, and the gradient norms.

``--influence`` also times the whole ``influence --features`` stage in process (the head fit, exact S by
Cholesky, the artifact written) against its floor: scikit-learn's fit plus the same exact S solve at its optimum
(``dpcli.influence.kernels.exact_influence``); the target is at most 2x.

Problems (``kind:NxDxC``): ``blobs`` (Gaussian classes, well conditioned), ``relu`` (ReLU features of a
random projection with per-dimension scales spanning e^+-2: nonnegative, offset and correlated, as
penultimate features of a network are) and ``digits`` (scikit-learn's 8x8 digits pixels, 1,797 x 64 x 10).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import numpy as np


def make(kind: str, n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return (x / 16).astype(np.float32), y
    centers = rng.normal(size=(classes, dim)) / np.sqrt(dim) * 3
    y = rng.integers(0, classes, n)
    z = centers[y] + rng.normal(size=(n, dim))
    if kind == "blobs":
        return z.astype(np.float32), y
    if kind == "relu":
        x = np.maximum(z @ rng.normal(size=(dim, dim)) / np.sqrt(dim) + 0.5, 0) * np.exp(rng.normal(size=dim))
        return x.astype(np.float32), y
    raise SystemExit(f"unknown problem kind {kind!r}")


def grad_norm(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, lam: float) -> float:
    import torch

    from dpcli.influence.head import objective

    _, gw, gb = objective(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w), torch.from_numpy(b), lam)
    return float(torch.cat([gw.reshape(-1), gb]).norm())


def fit_dpcli(x: np.ndarray, y: np.ndarray, c: int, lam: float, tol: float) -> tuple[np.ndarray, np.ndarray, str]:
    import torch

    from dpcli.influence.head import fit_head

    h = fit_head(torch.from_numpy(x), torch.from_numpy(y), c, lam, tol=tol)
    return h.weight.numpy(), h.bias.numpy(), f"{h.iterations} Newton steps, {h.hvps} Hessian-vector products"


def fit_sklearn(
    x: np.ndarray, y: np.ndarray, c: int, lam: float, tol: float, threads: int | None = None, max_iter: int = 20_000
) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    n, dim = x.shape
    xa = np.hstack([x.astype(np.float64), np.ones((n, 1))])
    with warnings.catch_warnings(), threadpool_limits(limits=threads):
        warnings.simplefilter("ignore")  # ConvergenceWarning: the gradient norm reached is reported instead
        m = LogisticRegression(
            C=1.0 / (n * lam), fit_intercept=False, solver="lbfgs", tol=tol / np.sqrt(c * (dim + 1)), max_iter=max_iter
        ).fit(xa, y)
    return m.coef_[:, :dim].copy(), m.coef_[:, dim].copy(), f"{int(np.max(m.n_iter_))} L-BFGS iterations"


def influence_vs_floor(
    x: np.ndarray, y: np.ndarray, c: int, lam: float, tol: float, threads: int | None
) -> dict[str, float]:
    """Seconds of dpcli's ``influence --features`` stage and of scikit-learn's fit + the exact S solve."""
    import tempfile
    from pathlib import Path

    import torch

    from dpcli.config import InfluenceConfig
    from dpcli.data.embeddings import from_arrays
    from dpcli.influence.kernels import exact_influence
    from dpcli.stages.embeddings import embeddings_influence

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        embeddings_influence(
            from_arrays(x, y), Path(tmp) / "influence.h5", InfluenceConfig().validate(), damping=lam, tol=tol
        )
        out["dpcli_influence_s"] = time.perf_counter() - t
    t = time.perf_counter()
    w, b, _ = fit_sklearn(x, y, c, lam, tol, threads)
    out["sklearn_fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    exact_influence(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w), torch.from_numpy(b), lam)
    out["S_solve_s"] = time.perf_counter() - t
    out["ratio"] = out["dpcli_influence_s"] / (out["sklearn_fit_s"] + out["S_solve_s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--problems",
        nargs="+",
        default=["blobs:3000x512x10", "relu:3000x512x10", "digits:1797x64x10", "relu:20000x128x20"],
    )
    ap.add_argument("--lam", type=float, default=1e-3)
    ap.add_argument("--tol", type=float, default=1e-7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--sklearn-threads",
        type=int,
        default=None,
        help="BLAS/OpenMP threads of scikit-learn's fit (threadpoolctl; default: its own setting). "
        "dpcli runs a small fit on one thread, which on a shared machine is the faster choice",
    )
    ap.add_argument("--influence", action="store_true", help="also time influence --features against its floor")
    a = ap.parse_args()
    rows = []
    for spec in a.problems:
        kind, shape = spec.split(":")
        n, dim, c = (int(v) for v in shape.split("x"))
        x, y = make(kind, n, dim, c)
        c = int(y.max()) + 1
        times: dict[str, list[float]] = {"dpcli": [], "sklearn": []}
        notes, norms = {}, {}
        for _ in range(a.repeats):  # alternate, so both see the same machine load
            for name, fit in (("dpcli", fit_dpcli), ("sklearn", fit_sklearn)):
                kw = {"threads": a.sklearn_threads} if name == "sklearn" else {}
                t = time.perf_counter()
                w, b, notes[name] = fit(x, y, c, a.lam, a.tol, **kw)
                times[name].append(time.perf_counter() - t)
                norms[name] = grad_norm(x, y, w, b, a.lam)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "problem": spec,
            "n": len(y),
            "D": x.shape[1],
            "C": c,
            "lam": a.lam,
            "tol": a.tol,
            "sklearn_threads": a.sklearn_threads,
            "dpcli_s": med["dpcli"],
            "sklearn_s": med["sklearn"],
            "ratio": med["dpcli"] / med["sklearn"],
            "dpcli_grad_norm": norms["dpcli"],
            "sklearn_grad_norm": norms["sklearn"],
            "dpcli": notes["dpcli"],
            "sklearn": notes["sklearn"],
            "times": times,
        }
        if a.influence:
            runs = [influence_vs_floor(x, y, c, a.lam, a.tol, a.sklearn_threads) for _ in range(a.repeats)]
            row["influence"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            inf = row["influence"]
            print(
                f"{spec:>20}: influence --features {inf['dpcli_influence_s']:.2f} s; floor: scikit-learn fit "
                f"{inf['sklearn_fit_s']:.2f} s + S solve {inf['S_solve_s']:.2f} s; ratio {inf['ratio']:.2f}",
                flush=True,
            )
        rows.append(row)
        print(
            f"{spec:>20}: dpcli {med['dpcli']:7.2f} s ({notes['dpcli']}, ||grad|| {norms['dpcli']:.1e})  "
            f"sklearn {med['sklearn']:7.2f} s ({notes['sklearn']}, ||grad|| {norms['sklearn']:.1e})  "
            f"ratio {row['ratio']:.2f}",
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "load_average_after": os.getloadavg(), "cpus": os.cpu_count()}, fh, indent=2)


if __name__ == "__main__":
    main()
