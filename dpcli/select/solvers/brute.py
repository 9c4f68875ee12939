"""Exhaustive meet-in-the-middle enumeration: the oracle for n <= 20."""

from __future__ import annotations

import math

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.linalg import Rows
from dpcli.select.solvers._common import Clock, Solver

BRUTE_MAX_N = 20


def _half_sums(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All 2^k subset sums of the rows of X (bit t of the index = row t) and their sizes."""
    sums = np.zeros((1, X.shape[1]), dtype=np.float64)
    sizes = np.zeros(1, dtype=np.int64)
    for row in X:
        sums = np.vstack([sums, sums + row])
        sizes = np.concatenate([sizes, sizes + 1])
    return sums, sizes


def brute(rows: Rows, q: np.ndarray, m: int | None, eps: float | None) -> tuple[np.ndarray, int]:
    """Exhaustive search by meet in the middle: norms of all 2^n sums via one Gram product.

    Candidates are ranked by the (rounded) expanded norm and the winners re-checked with
    :meth:`Rows.norm`, so near-ties and the epsilon boundary are decided exactly.
    """
    n = rows.n
    X = rows.take(np.arange(n))
    h = n // 2
    A, ca = _half_sums(X[:h])
    B, cb = _half_sums(X[h:])
    norm2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] + 2.0 * (A @ B.T)
    sizes = ca[:, None] + cb[None, :]

    def mask_of(flat: int) -> np.ndarray:
        a, b = divmod(int(flat), B.shape[0])
        bits = [(a >> t) & 1 for t in range(h)] + [(b >> t) & 1 for t in range(n - h)]
        return np.array(bits, dtype=bool)

    slack = 1e-9 * float(np.sqrt(q).sum()) ** 2 + 1e-300
    if m is not None:
        cand = np.flatnonzero((sizes == m).ravel())
        best = float(norm2.ravel()[cand].min())
        close = cand[norm2.ravel()[cand] <= best + slack]
        close = close[np.argsort(norm2.ravel()[close], kind="stable")][:256]
        masks = [mask_of(c) for c in close]
        norms = [rows.norm(mk) for mk in masks]
        return masks[int(np.argmin(norms))], int(math.comb(n, m))
    assert eps is not None
    for size in range(n, -1, -1):
        cand = np.flatnonzero(((sizes == size) & (norm2 <= eps * eps + slack)).ravel())
        for c in cand[np.argsort(norm2.ravel()[cand], kind="stable")]:
            mk = mask_of(c)
            if rows.norm(mk) <= eps:
                return mk, 1 << n
    return np.zeros(n, dtype=bool), 1 << n  # pragma: no cover - the empty set is always feasible


class Brute(Solver):
    name = "brute"
    help = f"exhaustive enumeration (an oracle for n <= {BRUTE_MAX_N})"
    max_n = BRUTE_MAX_N

    def check(self, n: int) -> None:
        if n > BRUTE_MAX_N:
            raise DpcliError(
                f"the brute solver enumerates all subsets and accepts at most {BRUTE_MAX_N} "
                f"samples, got {n}; use --solver swap"
            )

    def cardinality(
        self, rows: Rows, q: np.ndarray, m: int, clock: Clock, rng: np.random.Generator, proposals: int | None = None
    ) -> tuple[np.ndarray, int]:
        return brute(rows, q, m=m, eps=None)

    def epsilon(
        self, rows: Rows, q: np.ndarray, eps: float, clock: Clock, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        return brute(rows, q, m=None, eps=eps)
