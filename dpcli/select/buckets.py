"""Bucketed, parallel selection (the journal extension's "distributed discrete optimization").

The rows of S are split into ``buckets`` buckets, each bucket is solved by
:mod:`dpcli.select.solvers` in its own worker process, and the union is repaired so that the GLOBAL
constraint holds on the whole of S:

* cardinality: bucket ``b`` prunes ``m_b`` rows, shares proportional to bucket size by largest
  remainder (so ``sum m_b = m`` exactly); then :func:`selection.refine` swaps on the full S,
  warm-started from the union, at the same count (a few outer cycles).
* epsilon: bucket ``b`` solves Eq. 3 with ``eps / sqrt(B)`` (bucket sums of near-independent
  random buckets add roughly in quadrature; ``eps / B`` from the triangle inequality is far
  too conservative); then :func:`selection.refine` recomputes the union's sum from S, swaps
  and greedily drops rows until ``<= eps``, and adds/swaps more while feasible.

The result's norm is recomputed by :func:`selection.subset_norm`; an epsilon violation is refused.
Workers get S without a per-task copy: forked workers inherit it (copy-on-write); under
'spawn' they open a read-only memmap of a temporary .npy.  Bucket ``b`` uses seed
``SeedSequence([seed, b])`` and results are combined in bucket order, so with
``time_budget=None`` the result depends on ``seed`` only, not on ``workers``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from pathlib import Path

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select import solvers as selection
from dpcli.select.certificate import certify, repair
from dpcli.select.linalg import as_matrix, row_sq_norms
from dpcli.select.solvers._common import check_budget

# Outer cycles of the global refinement (each is one gemv over S plus pool rounds).
REFINE_CYCLES = 4

_S_SHARED: np.ndarray | None = None  # set in the parent before forking / in each spawned worker


def _init_worker(path: str | None) -> None:
    global _S_SHARED
    if path is not None:
        _S_SHARED = np.load(path, mmap_mode="r")


def _solve_bucket(
    idx: np.ndarray, m: int | None, eps: float | None, solver: str, budget: float | None, seed: int
) -> tuple[np.ndarray, int]:
    S = _S_SHARED
    assert S is not None
    Sb = np.ascontiguousarray(S[idx])
    if eps is not None:
        sel = selection.maximize_pruned(Sb, eps, solver=solver, time_budget=budget, seed=seed)
    else:
        assert m is not None  # exactly one of the two (solve_bucketed)
        sel = selection.minimize_norm(Sb, m, solver=solver, time_budget=budget, seed=seed)
    return idx[sel.pruned], sel.iterations


def partition(q: np.ndarray, buckets: int, seed: int) -> list[np.ndarray]:
    """Buckets stratified by row norm: rows sorted by ``||S_i||``, each consecutive block of
    ``buckets`` rows dealt to the buckets in a seeded random order, so every bucket holds the
    same mix of large and small rows (the large rows set the achievable norm; a purely random
    split can leave one bucket with most of them)."""
    n = q.size
    order = np.argsort(q, kind="stable")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6275636B]))
    blocks = -(-n // buckets)
    labels = rng.permuted(np.tile(np.arange(buckets), (blocks, 1)), axis=1).ravel()[:n]
    return [np.sort(order[labels == b]) for b in range(buckets)]


def shares(sizes: list[int], m: int) -> list[int]:
    """Split ``m`` over buckets proportionally to ``sizes`` (largest remainder; sums to m)."""
    n = sum(sizes)
    raw = [m * s / n for s in sizes]
    out = [min(int(math.floor(r)), s) for r, s in zip(raw, sizes)]
    rest = m - sum(out)
    for b in sorted(range(len(sizes)), key=lambda b: (-(raw[b] - out[b]), b)):
        if rest == 0:
            break
        if out[b] < sizes[b]:
            out[b] += 1
            rest -= 1
    return out


def solve_bucketed(
    S: np.ndarray,
    *,
    m: int | None = None,
    epsilon: float | None = None,
    buckets: int,
    workers: int | None = None,
    solver: str = "swap",
    time_budget: float | None = None,
    seed: int = 0,
    progress: selection.Progress | None = None,
) -> selection.Selection:
    """Solve Eq. 4 (``m``) or Eq. 3 (``epsilon``) bucket by bucket in parallel; see the module doc.

    ``time_budget`` (seconds) is split: 80% for the bucket solves (each bucket gets that share
    times ``workers / buckets``), the rest for the global refinement.
    """
    global _S_SHARED
    t0 = time.perf_counter()
    if (m is None) == (epsilon is None):
        raise DpcliError("give exactly one of m (cardinality) or epsilon")
    if isinstance(buckets, bool) or not isinstance(buckets, (int, np.integer)) or buckets < 1:
        raise DpcliError(f"--buckets must be an integer >= 1, got {buckets!r}")
    if workers is None:
        workers = min(int(buckets), os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise DpcliError(f"--workers must be an integer >= 1, got {workers!r}")
    S = as_matrix(S)
    n = S.shape[0]
    buckets, workers = int(buckets), int(workers)
    if buckets > n:
        raise DpcliError(f"--buckets {buckets} exceeds the {n} samples")
    if m is not None:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 0 <= m <= n:
            raise DpcliError(f"the prune count must be an integer in [0, {n}], got {m!r}")
        m = int(m)
    else:
        assert epsilon is not None  # exactly one, checked above
        eps = float(epsilon)
        if not (math.isfinite(eps) and eps >= 0.0):
            raise DpcliError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    budget = check_budget(time_budget)
    if buckets == 1:
        if m is not None:
            return selection.minimize_norm(S, m, solver, time_budget=budget, seed=seed, progress=progress)
        return selection.maximize_pruned(S, eps, solver, time_budget=budget, seed=seed, progress=progress)

    q = row_sq_norms(S)  # also refuses NaN/inf
    parts = partition(q, buckets, seed)
    targets: list = shares([p.size for p in parts], m) if m is not None else [None] * buckets
    eps_b = eps / math.sqrt(buckets) if m is None else None
    b_budget = None if budget is None else 0.8 * budget * min(1.0, workers / buckets)
    seeds = [int(np.random.SeedSequence([seed, b + 1]).generate_state(1)[0]) for b in range(buckets)]
    args = [(parts[b], targets[b], eps_b, solver, b_budget, seeds[b]) for b in range(buckets)]

    results: list[tuple[np.ndarray, int]] = []
    tmpdir = None
    try:
        if workers == 1:
            _S_SHARED = S
            for b, a in enumerate(args):
                results.append(_solve_bucket(*a))
                if progress:
                    progress(0.8 * (b + 1) / buckets)
        else:
            methods = mp.get_all_start_methods()
            ctx: BaseContext
            if "fork" in methods:
                ctx, init = mp.get_context("fork"), None
                _S_SHARED = S  # inherited by the forked workers, no copy
            else:  # pragma: no cover - platforms without fork
                ctx = mp.get_context("spawn")
                tmpdir = tempfile.TemporaryDirectory(prefix="dpcli-buckets-")
                init = str(Path(tmpdir.name) / "S.npy")
                np.save(init, S)
            with ProcessPoolExecutor(
                max_workers=min(workers, buckets), mp_context=ctx, initializer=_init_worker, initargs=(init,)
            ) as pool:
                futures = [pool.submit(_solve_bucket, *a) for a in args]
                for b, f in enumerate(futures):  # bucket order: independent of scheduling
                    results.append(f.result())
                    if progress:
                        progress(0.8 * (b + 1) / buckets)
    finally:
        _S_SHARED = None
        if tmpdir is not None:
            tmpdir.cleanup()

    mask = np.zeros(n, dtype=bool)
    iters = 0
    for idx, it in results:
        mask[idx] = True
        iters += it
    r_budget = None if budget is None else max(budget - (time.perf_counter() - t0), 1e-3)
    mask, moves = selection.refine(
        S, mask, epsilon=None if m is not None else eps, time_budget=r_budget, max_cycles=REFINE_CYCLES, seed=seed
    )
    iters += moves
    if progress:
        progress(1.0)
    if m is not None:
        if int(np.count_nonzero(mask)) != m:  # pragma: no cover - would be a bug
            raise DpcliError(f"bucketed selection returned {int(np.count_nonzero(mask))} samples, not {m}")
        norm = selection.subset_norm(S, mask)
        return selection.Selection(mask, norm, solver, "cardinality", float(m), time.perf_counter() - t0, iters)
    mask, extra = repair(S, q, mask, eps)
    norm = certify(S, mask, eps).norm
    return selection.Selection(mask, norm, solver, "epsilon", eps, time.perf_counter() - t0, iters + extra)
