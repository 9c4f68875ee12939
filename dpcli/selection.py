"""Choose the samples to prune from the influence matrix S (Yang et al., ICLR 2023, Sec. 4.2).

Row ``S[i]`` is the parameter change caused by removing sample ``i``; removing a set W moves the
parameters by about ``sum_{i in W} S[i]``.  Two discrete problems are solved over W, the PRUNED set:

* epsilon mode (Eq. 3): maximize ``|W|`` subject to ``||sum_W S_i||_2 <= epsilon``;
* cardinality mode (Eq. 4): minimize ``||sum_W S_i||_2`` subject to ``|W| = m``.

Solvers (``SOLVERS``):

* ``swap`` (default): swap local search with maintained inner products ``v = S s`` (``s`` =
  current sum), so a swap's gain costs O(1) to screen: bulk rounds (thousands of swaps per
  gemv while ``||s||`` is large), then exact search over screened pools (a k x k Gram block),
  then annealing over pooled swaps at O(1) per proposal: for the rest of the time budget, or
  without one for a fixed 300 n proposals (deterministic).
* ``anneal``: the paper's simulated annealing, with O(d) incremental move evaluation.
* ``brute``: exhaustive meet-in-the-middle enumeration, an oracle for ``n <= 20``.

Whatever the solver, the returned norm is recomputed from S by :func:`subset_norm` (float64,
independent of solver state) and an epsilon-mode result that violates the constraint is refused.
With ``time_budget=None`` every solver is deterministic for a given seed (``swap`` anneals for
a fixed number of pooled proposals past its local optimum, ``anneal`` runs a fixed number); with a budget the result depends on
how far the solver gets in the time allowed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dpcli.errors import DpcliError

SOLVERS = ("swap", "anneal", "brute")
BRUTE_MAX_N = 20

# Elements (rows * d) materialized at once when S is streamed in float64 (64 MiB).
_CHUNK_ELEMS = 1 << 23
# A swap must improve ||s||^2 by this relative amount; below it we call the search converged.
_REL_TOL = 1e-10
# anneal: proposals without a budget = clamp(100 n, MIN, MAX); start temperature accepts a
# typical uphill swap (median ||S_j - S_i||) with probability ACCEPT0; cools by COOL.
_ANNEAL_MIN_MOVES = 5_000
_ANNEAL_MAX_MOVES = 20_000_000
_ANNEAL_ACCEPT0 = 0.3
_ANNEAL_COOL = 1e-4
# swap's budget phase on large problems: start temperature accepts this share of the first
# pool's uphill swaps on average; cools by COOL.
_POOL_ACCEPT0 = 0.05
_POOL_COOL = 1e-2

Progress = Callable[[float], None]


@dataclass(frozen=True)
class Selection:
    """A solved pruning problem; ``pruned[i]`` is True for a sample to DROP.

    ``iterations`` counts moves APPLIED for ``swap`` (swaps, additions, removals), moves EVALUATED
    (proposals) for ``anneal``, and subsets enumerated for ``brute``.
    """

    pruned: np.ndarray
    norm: float
    solver: str
    mode: str
    target: float
    seconds: float
    iterations: int

    @property
    def n_pruned(self) -> int:
        return int(np.count_nonzero(self.pruned))


# --------------------------------------------------------------------------------------------
# Public helpers


def count_from_ratio(n: int, ratio: float) -> int:
    """Number of samples to PRUNE for a prune ratio, rounded to nearest (validates 0 < ratio < 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DpcliError(f"the number of samples must be a non-negative integer, got {n!r}")
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise DpcliError(f"the prune ratio must be a number strictly between 0 and 1, got {ratio!r}") from None
    if not (math.isfinite(r) and 0.0 < r < 1.0):
        raise DpcliError(f"the prune ratio must lie strictly between 0 and 1, got {ratio!r}")
    return int(math.floor(int(n) * r + 0.5))


def subset_norm(S: np.ndarray, pruned: np.ndarray, chunk_rows: int = 65536) -> float:
    """``||sum_{i: pruned[i]} S_i||_2`` in float64, streamed over row chunks.

    Independent of any solver state, so it is the number we certify and report.
    """
    S = _as_matrix(S)
    mask = _as_mask(pruned, S.shape[0])
    return float(np.linalg.norm(_masked_sum(S, mask, chunk_rows)))


def minimize_norm(S: np.ndarray, m: int, solver: str = "swap", time_budget: float | None = None,
                  seed: int = 0, progress: Progress | None = None, *,
                  proposals: int | None = None) -> Selection:
    """Eq. 4: the ``m`` samples whose summed influence has the smallest norm.

    ``proposals`` overrides swap's fixed annealing length without a budget (default 300 n, capped).
    """
    t0 = time.perf_counter()
    S = _as_matrix(S)
    n = S.shape[0]
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise DpcliError(f"the prune count must be an integer, got {m!r}")
    m = int(m)
    if not 0 <= m <= n:
        raise DpcliError(f"the prune count must lie in [0, {n}] for {n} samples, got {m}")
    _check_solver(solver, n)
    clock = _Clock(_check_budget(time_budget), progress)
    q = _row_sq_norms(S)
    rng = np.random.default_rng(seed)
    if m == 0 or m == n:
        mask, iters = np.full(n, m == n), 0
    elif solver == "brute":
        mask, iters = _brute(S, q, m=m, eps=None)
    elif solver == "anneal":
        mask, iters = _anneal_cardinality(S, q, m, clock, rng)
    else:
        mask, iters = _swap_cardinality(S, q, m, clock, rng, proposals=proposals)
    clock.done()
    if int(np.count_nonzero(mask)) != m:  # pragma: no cover - would be a solver bug
        raise DpcliError(f"solver {solver} returned {int(np.count_nonzero(mask))} pruned samples, not {m}")
    norm = subset_norm(S, mask)
    return Selection(mask, norm, solver, "cardinality", float(m), time.perf_counter() - t0, iters)


def maximize_pruned(S: np.ndarray, epsilon: float, solver: str = "swap", time_budget: float | None = None,
                    seed: int = 0, progress: Progress | None = None) -> Selection:
    """Eq. 3: as many samples as possible whose summed influence has norm <= ``epsilon``."""
    t0 = time.perf_counter()
    S = _as_matrix(S)
    n = S.shape[0]
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise DpcliError(f"epsilon must be a finite number >= 0, got {epsilon!r}") from None
    if not (math.isfinite(eps) and eps >= 0.0):
        raise DpcliError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    _check_solver(solver, n)
    clock = _Clock(_check_budget(time_budget), progress)
    q = _row_sq_norms(S)
    rng = np.random.default_rng(seed)
    everything = np.ones(n, dtype=bool)
    if subset_norm(S, everything) <= eps:
        mask, iters = everything, 0  # pruning all samples is feasible, hence optimal
    elif solver == "brute":
        mask, iters = _brute(S, q, m=None, eps=eps)
    elif solver == "anneal":
        mask, iters = _anneal_epsilon(S, q, eps, clock, rng)
    else:
        mask, iters = _swap_epsilon(S, q, eps, clock, rng)
    mask, extra = _repair(S, q, mask, eps)
    clock.done()
    norm = _certify(S, mask, eps)
    return Selection(mask, norm, solver, "epsilon", eps, time.perf_counter() - t0, iters + extra)


def refine(S: np.ndarray, pruned: np.ndarray, epsilon: float | None = None,
           time_budget: float | None = None, max_cycles: int | None = None,
           progress: Progress | None = None, grow: bool = True, seed: int = 0) -> tuple[np.ndarray, int]:
    """Warm-started swap local search from ``pruned`` (e.g. the union of bucket solutions).

    Without ``epsilon``: swaps at fixed count, never worse than the start (Eq. 4).  With
    ``epsilon``: swaps (then greedy removals, one gemv each) until ``||sum|| <= epsilon``,
    then (``grow``) swap's count bisection warm-started from that feasible set, else a bounded
    add/swap polish (Eq. 3).  Deterministic for a seed; returns ``(mask, moves)`` and
    leaves certification to the caller (:func:`subset_norm`).
    """
    S = _as_matrix(S)
    n, d = S.shape
    mask = _as_mask(pruned, n).copy()
    clock = _Clock(_check_budget(time_budget), progress)
    q = _row_sq_norms(S)
    if epsilon is None:
        m = int(np.count_nonzero(mask))
        if m == 0 or m == n:
            return mask, 0
        complement = m > n - m
        offset = -_masked_sum(S, np.ones(n, dtype=bool)) if complement else np.zeros(d)
        A = ~mask if complement else mask
        st = _SwapState(A, offset + _masked_sum(S, A))
        _local_search(S, q, st, clock, max_cycles=max_cycles)
        return (~st.A if complement else st.A), st.moves
    eps2 = (float(epsilon) * (1.0 - 1e-9)) ** 2
    st = _SwapState(mask, _masked_sum(S, mask))
    if st.ns2 > eps2:
        _local_search(S, q, st, clock, eps2=eps2, give_up=True, max_cycles=max_cycles)
    while st.ns2 > eps2 and st.A.any():  # still infeasible: drop the row that helps most
        score = np.where(st.A, 2.0 * _matvec(S, st.s) - q, -np.inf)
        i = int(np.argmax(score))
        st.A[i] = False
        st.s = st.s - S[i].astype(np.float64)
        st.moves += 1
    if not grow:
        _local_search(S, q, st, clock, eps2=eps2, max_cycles=3)  # add more while feasible
        return st.A, st.moves
    return _swap_epsilon(S, q, float(epsilon), clock, np.random.default_rng(seed), start=st)


# --------------------------------------------------------------------------------------------
# Validation, streaming and certification


def _as_matrix(S: np.ndarray) -> np.ndarray:
    """S as a 2-D float32/float64 array, without copying float32/float64 input (S can be GBs)."""
    if not isinstance(S, np.ndarray):
        S = np.asarray(S)
    if S.ndim != 2:
        raise DpcliError(f"the influence matrix must be 2-D (samples x parameters), got shape {S.shape}")
    if S.shape[0] == 0 or S.shape[1] == 0:
        raise DpcliError(f"the influence matrix is empty (shape {S.shape})")
    if S.dtype in (np.float32, np.float64):
        return S
    if S.dtype.kind == "f":
        return S.astype(np.float32)
    if S.dtype.kind in "iu":
        return S.astype(np.float64)
    raise DpcliError(f"the influence matrix must hold real numbers, got dtype {S.dtype}")


def _as_mask(pruned: np.ndarray, n: int) -> np.ndarray:
    mask = np.asarray(pruned)
    if mask.dtype != np.bool_ or mask.shape != (n,):
        raise DpcliError(f"the pruned mask must be a boolean array of shape ({n},), "
                         f"got {mask.dtype} {mask.shape}")
    return mask


def _chunk(d: int, chunk_rows: int = 65536) -> int:
    return max(1, min(int(chunk_rows), _CHUNK_ELEMS // max(d, 1)))


def _masked_sum(S: np.ndarray, mask: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """float64 sum of the rows selected by ``mask``, touching one chunk of S at a time."""
    n, d = S.shape
    total = np.zeros(d, dtype=np.float64)
    step = _chunk(d, chunk_rows)
    for a in range(0, n, step):
        sel = mask[a:a + step]
        if sel.any():
            total += S[a:a + step][sel].sum(axis=0, dtype=np.float64)
    return total


def _row_sq_norms(S: np.ndarray) -> np.ndarray:
    """float64 ``||S_i||^2`` for every row; also refuses NaN/inf (one streaming pass)."""
    n, d = S.shape
    q = np.empty(n, dtype=np.float64)
    step = _chunk(d)
    for a in range(0, n, step):
        X = S[a:a + step]
        if not np.isfinite(X).all():
            bad = a + int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise DpcliError(f"the influence matrix has a non-finite value (NaN or inf) in row {bad}")
        X64 = X.astype(np.float64)
        q[a:a + step] = np.einsum("ij,ij->i", X64, X64)
    return q


def _matvec(S: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float64 ``S @ x`` computed in S's precision (one BLAS gemv, streamed if S is strided)."""
    xs = x.astype(S.dtype)
    if S.flags.c_contiguous or S.flags.f_contiguous:
        return (S @ xs).astype(np.float64)
    n, d = S.shape
    out = np.empty(n, dtype=np.float64)
    step = _chunk(d)
    for a in range(0, n, step):
        out[a:a + step] = np.ascontiguousarray(S[a:a + step]) @ xs
    return out


def _rows(S: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of S as a float64 copy (pool arithmetic is done in float64)."""
    return S[idx].astype(np.float64)


def _certify(S: np.ndarray, mask: np.ndarray, eps: float) -> float:
    """Recompute the norm from S and refuse a set that breaks the epsilon constraint."""
    norm = subset_norm(S, mask)
    if not norm <= eps:
        raise DpcliError(f"refusing the selection: its influence norm {norm:.6g} exceeds epsilon {eps:.6g} "
                         "(a solver bug; please report it)")
    return norm


def _repair(S: np.ndarray, q: np.ndarray, mask: np.ndarray, eps: float) -> tuple[np.ndarray, int]:
    """Drop samples while the recomputed norm exceeds epsilon by a rounding-sized amount.

    A solver's running float64 sum and :func:`subset_norm` add in different orders, so a set
    right at the boundary may be off by ~1e-12 relative; that is fixed here.  A real violation
    is left alone for :func:`_certify` to refuse.
    """
    mask = mask.copy()
    removed = 0
    while mask.any():
        s = _masked_sum(S, mask)
        norm = float(np.linalg.norm(s))
        if norm <= eps or norm > eps * (1.0 + 1e-6):
            break
        score = 2.0 * _matvec(S, s) - q  # ||s||^2 - ||s - S_i||^2
        score[~mask] = -np.inf
        mask[int(np.argmax(score))] = False
        removed += 1
    return mask, removed


def _check_solver(solver: str, n: int) -> None:
    if solver not in SOLVERS:
        raise DpcliError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver == "brute" and n > BRUTE_MAX_N:
        raise DpcliError(f"the brute solver enumerates all subsets and accepts at most {BRUTE_MAX_N} "
                         f"samples, got {n}; use --solver swap")


def _check_budget(time_budget: float | None) -> float | None:
    if time_budget is None:
        return None
    try:
        b = float(time_budget)
    except (TypeError, ValueError):
        raise DpcliError(f"the time budget must be a positive number of seconds, got {time_budget!r}") from None
    if not (math.isfinite(b) and b > 0):
        raise DpcliError(f"the time budget must be a positive number of seconds, got {time_budget!r}")
    return b


@dataclass
class _Clock:
    """Time budget plus a throttled, monotone progress callback."""

    budget: float | None
    progress: Progress | None
    start: float = field(default_factory=time.perf_counter)
    _last_call: float = -1.0
    _last_frac: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def expired(self) -> bool:
        return self.budget is not None and self.elapsed() >= self.budget

    def left(self) -> float:
        return math.inf if self.budget is None else self.budget - self.elapsed()

    def report(self, fraction: float) -> None:
        """Report ``fraction`` of the work done (the elapsed share of the budget, if there is one)."""
        if self.progress is None:
            return
        if self.budget is not None:
            fraction = self.elapsed() / self.budget
        fraction = min(0.99, max(self._last_frac, fraction))
        now = time.perf_counter()
        if now - self._last_call >= 0.1:
            self._last_call, self._last_frac = now, fraction
            self.progress(fraction)

    def done(self) -> None:
        if self.progress is not None:
            self.progress(1.0)


# --------------------------------------------------------------------------------------------
# Brute force (oracle)


def _half_sums(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All 2^k subset sums of the rows of X (bit t of the index = row t) and their sizes."""
    sums = np.zeros((1, X.shape[1]), dtype=np.float64)
    sizes = np.zeros(1, dtype=np.int64)
    for row in X:
        sums = np.vstack([sums, sums + row])
        sizes = np.concatenate([sizes, sizes + 1])
    return sums, sizes


def _brute(S: np.ndarray, q: np.ndarray, m: int | None, eps: float | None) -> tuple[np.ndarray, int]:
    """Exhaustive search by meet in the middle: norms of all 2^n sums via one Gram product.

    Candidates are ranked by the (rounded) expanded norm and the winners re-checked with
    :func:`subset_norm`, so near-ties and the epsilon boundary are decided exactly.
    """
    n = S.shape[0]
    X = np.asarray(S, dtype=np.float64)
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
        norms = [subset_norm(S, mk) for mk in masks]
        return masks[int(np.argmin(norms))], int(math.comb(n, m))
    assert eps is not None
    for size in range(n, -1, -1):
        cand = np.flatnonzero(((sizes == size) & (norm2 <= eps * eps + slack)).ravel())
        for c in cand[np.argsort(norm2.ravel()[cand], kind="stable")]:
            mk = mask_of(c)
            if subset_norm(S, mk) <= eps:
                return mk, 1 << n
    return np.zeros(n, dtype=bool), 1 << n  # pragma: no cover - the empty set is always feasible


# --------------------------------------------------------------------------------------------
# swap: bulk rounds, screened pool search, pool annealing


@dataclass
class _SwapState:
    """The side being optimized: ``A`` (pruned set, or kept set when complemented) and its sum.

    ``s = offset + sum_{i in A} S_i`` in float64; the objective is ``||s||``.
    """

    A: np.ndarray
    s: np.ndarray
    moves: int = 0

    @property
    def ns2(self) -> float:
        return float(self.s @ self.s)

    def copy(self) -> "_SwapState":
        return _SwapState(self.A.copy(), self.s.copy(), self.moves)


def _pool_size_cap(d: int) -> int:
    """Largest per-side pool whose float64 Gram (2k x 2k x d) stays around a second of BLAS."""
    return int(max(64, min(1024, math.sqrt(1e9 / max(d, 1)))))


def _next_pool_size(k: int, applied: int, kmax: int) -> int:
    """Grow the pool while rounds use most of it, shrink it when they use little (cost ~ k^2)."""
    if applied >= k // 2:
        return min(kmax, 2 * k)
    if applied < k // 8:
        return max(64, k // 2)
    return k


def _pool_search(X: np.ndarray, G: np.ndarray, vP: np.ndarray, inA: np.ndarray, s: np.ndarray,
                 eps2: float | None) -> tuple[np.ndarray, int]:
    """Exact local search restricted to a pool of rows ``X`` (Gram ``G``, ``vP = X @ s``).

    Moves: swap one pool member of A for one outside (gain ``a_i - b_j + 2 G_ij`` with
    ``a = 2v - q``, ``b = 2v + q``), and, when ``eps2`` is given, additions that keep
    ``||s||^2 <= eps2``.  Candidate swaps are ranked from the full k x k gain matrix and applied
    best-first, each re-checked exactly against the current ``s``.  Returns ``s`` and the
    number of moves applied; ``vP`` and ``inA`` are updated in place.
    """
    qP = np.diag(G).copy()
    ns2 = float(s @ s)
    applied = 0
    while True:
        progressed = 0
        if eps2 is not None:  # additions first: they are what epsilon mode maximizes
            ins = np.flatnonzero(~inA)
            for pj in ins[np.argsort(2.0 * vP[ins] + qP[ins], kind="stable")].tolist():
                if ns2 + 2.0 * vP[pj] + qP[pj] > eps2:
                    continue
                s_new = s + X[pj]
                ns2_new = float(s_new @ s_new)
                if ns2_new <= eps2:
                    s, ns2 = s_new, ns2_new
                    inA[pj] = True
                    vP += G[pj]  # G is symmetric: a row is the column, contiguous
                    progressed += 1
        outs = np.flatnonzero(inA)
        ins = np.flatnonzero(~inA)
        if outs.size and ins.size and ns2 > 0.0:
            a = 2.0 * vP[outs] - qP[outs]
            b = 2.0 * vP[ins] + qP[ins]
            gain = (a[:, None] - b[None, :] + 2.0 * G[np.ix_(outs, ins)]).ravel()
            tol = _REL_TOL * ns2
            top = min(gain.size, 4 * max(outs.size, ins.size))
            cand = np.argpartition(-gain, top - 1)[:top] if top < gain.size else np.arange(gain.size)
            cand = cand[gain[cand] > tol]
            cand = cand[np.argsort(-gain[cand], kind="stable")]
            for po, pj in zip(outs[cand // ins.size].tolist(), ins[cand % ins.size].tolist()):
                if not inA[po] or inA[pj]:
                    continue
                if 2.0 * (vP[po] - vP[pj]) - qP[po] - qP[pj] + 2.0 * G[po, pj] <= _REL_TOL * ns2:
                    continue
                s_new = s + X[pj] - X[po]
                ns2_new = float(s_new @ s_new)
                if ns2_new >= ns2 * (1.0 - _REL_TOL):
                    continue  # rounding disagreed with the screened gain: not a real improvement
                s, ns2 = s_new, ns2_new
                inA[po], inA[pj] = False, True
                vP += G[pj] - G[po]
                progressed += 1
        if progressed == 0 and ns2 > 0.0:
            s, ns2, progressed = _pair_swap(X, G, vP, inA, s, ns2)
        applied += progressed
        if progressed == 0:
            return s, applied


def _pair_swap(X: np.ndarray, G: np.ndarray, vP: np.ndarray, inA: np.ndarray, s: np.ndarray,
               ns2: float, k2: int = 16) -> tuple[np.ndarray, float, int]:
    """Best exchange of two members of A for two outsiders among the top-``k2`` of each side.

    Escapes many 1-swap local optima: two individually worsening swaps can cancel each other's
    error.  Evaluated exactly from the pool Gram for all C(k2,2)^2 pairs of pairs.
    """
    qP = np.diag(G)
    outs, ins = np.flatnonzero(inA), np.flatnonzero(~inA)
    if outs.size < 2 or ins.size < 2:
        return s, ns2, 0
    outs = outs[np.argsort(-(2.0 * vP[outs] - qP[outs]), kind="stable")[:k2]]
    ins = ins[np.argsort(2.0 * vP[ins] + qP[ins], kind="stable")[:k2]]
    ou, ow = np.triu_indices(outs.size, 1)
    ju, jw = np.triu_indices(ins.size, 1)
    Gs = G[np.ix_(outs, ins)]
    Go, Gi = G[np.ix_(outs, outs)], G[np.ix_(ins, ins)]
    row = 2.0 * (vP[outs][ou] + vP[outs][ow]) - (qP[outs][ou] + qP[outs][ow] + 2.0 * Go[ou, ow])
    col = 2.0 * (vP[ins][ju] + vP[ins][jw]) + (qP[ins][ju] + qP[ins][jw] + 2.0 * Gi[ju, jw])
    R = Gs[ou] + Gs[ow]
    gain = row[:, None] - col[None, :] + 2.0 * (R[:, ju] + R[:, jw])
    best = int(np.argmax(gain))
    if not gain.flat[best] > _REL_TOL * ns2:
        return s, ns2, 0
    r, c = divmod(best, ju.size)
    o1, o2, j1, j2 = outs[ou[r]], outs[ow[r]], ins[ju[c]], ins[jw[c]]
    s_new = s - X[o1] - X[o2] + X[j1] + X[j2]
    ns2_new = float(s_new @ s_new)
    if ns2_new >= ns2 * (1.0 - _REL_TOL):
        return s, ns2, 0
    inA[[o1, o2]] = False
    inA[[j1, j2]] = True
    vP += G[j1] + G[j2] - G[o1] - G[o2]
    return s_new, ns2_new, 2


def _pool_round(S: np.ndarray, q: np.ndarray, st: _SwapState, v: np.ndarray, k: int,
                eps2: float | None, universe: np.ndarray | None = None) -> int:
    """Screen a pool from ``v`` (top-k of each side by its O(1) gain part), search it exactly.

    ``universe`` restricts the candidates (indices into S; ``v`` is then indexed like it).
    """
    A = st.A if universe is None else st.A[universe]
    a = 2.0 * v - (q if universe is None else q[universe])
    b = 2.0 * v + (q if universe is None else q[universe])
    a = np.where(A, a, -np.inf)
    b = np.where(A, np.inf, b)
    n_in = int(np.count_nonzero(A))
    ko, ki = min(k, n_in), min(k, A.size - n_in)
    outs = np.argpartition(-a, ko - 1)[:ko] if 0 < ko < A.size else np.flatnonzero(A)[:ko]
    ins = np.argpartition(b, ki - 1)[:ki] if 0 < ki < A.size else np.flatnonzero(~A)[:ki]
    P = np.sort(np.concatenate([outs, ins]))
    if universe is not None:
        P = universe[P]
    X = _rows(S, P)
    G = X @ X.T
    vP = X @ st.s
    inA = st.A[P].copy()
    st.s, applied = _pool_search(X, G, vP, inA, st.s, eps2)
    st.A[P] = inA
    st.moves += applied
    return applied


def _sum_rows(S: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float64 sum of rows ``idx`` of S, gathered a chunk at a time."""
    total = np.zeros(S.shape[1], dtype=np.float64)
    step = _chunk(S.shape[1])
    idx = np.sort(idx)
    for a in range(0, idx.size, step):
        total += S[idx[a:a + step]].sum(axis=0, dtype=np.float64)
    return total


def _bulk_rounds(S: np.ndarray, q: np.ndarray, st: _SwapState, clock: _Clock,
                 eps2: float | None = None, min_batch: int = 64) -> None:
    """Many swaps per gemv while ``||s||`` is large compared with single rows.

    Far from the optimum the gain of a swap is dominated by its linear part, so the best
    ``T`` outs (largest ``a = 2v - q``) are paired with the best ``T`` ins (smallest
    ``b = 2v + q``), and ``T`` minimizes the model ``(R - P_T)^2 + sum_{t<T} (q_out + q_in)``,
    where ``P_T`` is the pairs' total projection on ``s`` and the second term the orthogonal
    noise they add.  Each round is one gemv plus an O(T d) exact update; the exact pool search
    takes over once ``T`` falls below ``min_batch``.
    """
    n = st.A.size
    while not clock.expired():
        ns2 = st.ns2
        if ns2 <= 0.0 or (eps2 is not None and ns2 <= eps2):
            return
        n_in = int(np.count_nonzero(st.A))
        cap = min(n_in, n - n_in, max(1 << 12, n // 8))
        if cap < min_batch:
            return
        v = _matvec(S, st.s)
        R = math.sqrt(ns2)
        a = np.where(st.A, 2.0 * v - q, -np.inf)
        b = np.where(st.A, np.inf, 2.0 * v + q)
        outs = np.argpartition(-a, cap - 1)[:cap] if cap < n else np.flatnonzero(st.A)
        ins = np.argpartition(b, cap - 1)[:cap] if cap < n else np.flatnonzero(~st.A)
        outs = outs[np.argsort(-a[outs], kind="stable")]
        ins = ins[np.argsort(b[ins], kind="stable")]
        proj = np.cumsum((v[outs] - v[ins]) / R)
        noise = np.cumsum(q[outs] + q[ins])
        model = (R - proj) ** 2 + noise
        T = int(np.argmin(model)) + 1
        if T < min_batch or model[T - 1] >= 0.9 * ns2:
            return
        while T >= min_batch:
            s_new = st.s + _sum_rows(S, ins[:T]) - _sum_rows(S, outs[:T])
            if float(s_new @ s_new) < 0.9 * ns2:
                break
            T //= 2
        if T < min_batch:
            return
        st.A[outs[:T]] = False
        st.A[ins[:T]] = True
        st.s = s_new
        st.moves += T
        clock.report(0.05)


def _local_search(S: np.ndarray, q: np.ndarray, st: _SwapState, clock: _Clock,
                  eps2: float | None = None, k0: int = 256, give_up: bool = False,
                  max_cycles: int | None = None) -> None:
    """Bulk rounds, then screened swap (and, with ``eps2``, add) rounds until none improves.

    Each outer cycle refreshes ``v = S s`` with one gemv over all of S; inner rounds work on a
    working set of the best-screened rows of each side (a much cheaper gemv), which is where
    the late, fine-grained swaps happen.  With ``give_up`` (epsilon trials) the search ends
    as soon as the set is feasible, or when a cycle leaves ``||s||`` above ``8 epsilon`` while
    shrinking it less than 4x.  ``max_cycles`` bounds the number of outer cycles.
    """
    n, d = S.shape
    _bulk_rounds(S, q, st, clock, eps2)
    kmax = _pool_size_cap(d)
    k = min(k0, kmax)
    ws_side = max(kmax, min(_CHUNK_ELEMS // d, n // 8))
    rounds = cycles = 0
    while not clock.expired() and (max_cycles is None or cycles < max_cycles):
        cycles += 1
        start_ns2 = st.ns2
        if give_up and eps2 is not None and start_ns2 <= eps2:
            return
        v = _matvec(S, st.s)
        applied = _pool_round(S, q, st, v, k, eps2)
        rounds += 1
        clock.report(1.0 - 1.0 / (1.0 + 0.1 * rounds))
        if applied == 0:
            return
        k = _next_pool_size(k, applied, kmax)
        if 4 * ws_side < n:
            # Working set: rows screened best on each side by the refreshed v.
            v = _matvec(S, st.s)
            a = np.where(st.A, 2.0 * v - q, -np.inf)
            b = np.where(st.A, np.inf, 2.0 * v + q)
            U = np.unique(np.concatenate([np.argpartition(-a, ws_side - 1)[:ws_side],
                                          np.argpartition(b, ws_side - 1)[:ws_side]]))
            SU = np.ascontiguousarray(S[U])
            while not clock.expired():
                applied = _pool_round(S, q, st, _matvec(SU, st.s), k, eps2, universe=U)
                rounds += 1
                clock.report(1.0 - 1.0 / (1.0 + 0.1 * rounds))
                if applied == 0 or (give_up and eps2 is not None and st.ns2 <= eps2):
                    break
                k = _next_pool_size(k, applied, kmax)
        if give_up and eps2 is not None and st.ns2 > 64.0 * eps2 and st.ns2 > start_ns2 / 16.0:
            return


def _greedy_fill(S: np.ndarray, q: np.ndarray, st: _SwapState, count: int) -> None:
    """Add ``count`` rows one at a time, each minimizing ``||s + S_j||`` (one gemv per row)."""
    for _ in range(count):
        score = 2.0 * _matvec(S, st.s) + q
        score[st.A] = np.inf
        j = int(np.argmin(score))
        st.A[j] = True
        st.s = st.s + S[j].astype(np.float64)
        st.moves += 1


def _pool_anneal(S: np.ndarray, q: np.ndarray, st: _SwapState, clock: _Clock,
                 rng: np.random.Generator, refresh: int = 200_000,
                 proposals: int | None = None) -> _SwapState:
    """Spend the rest of a time budget annealing from the local optimum; return the best state.

    Without a time budget the schedule runs over a fixed number of ``proposals`` instead of
    elapsed time, so the result is deterministic for a seed.

    Beyond a swap local optimum only uphill moves lead on.  Proposals come from a pool and
    cost O(1) each from the pool Gram (O(d) per random pair in ``anneal``).  Small problems
    (``n <= 4k``) use every row and a full annealing schedule (from 0.3 x anneal's start
    temperature down by 1e4): there local optima are poor and re-annealing pays.  Large ones
    use the top-k of each side by the O(1) gain part (as in :func:`_pool_round`), re-screened
    every ``refresh`` proposals, and anneal gently: the start temperature accepts 5% of the
    first pool's uphill swaps on average and cools by 100, refining a near-zero sum without
    throwing it away.  Temperature is geometric in elapsed time.
    """
    n, d = S.shape
    k = int(min(1024, max(128, 2 * d)))
    full = n <= 4 * k
    start, span = clock.elapsed(), max(clock.left(), 1e-9)
    t0: float | None = None
    t1 = 0.0
    if full:
        t0 = 0.3 * _typical_step(S, rng) / math.log(1 / _ANNEAL_ACCEPT0)
        t1 = t0 * _ANNEAL_COOL
    best, best_ns2 = st.copy(), st.ns2
    st = st.copy()
    chunk = 1 << 16
    total = 0

    def more() -> bool:
        return not clock.expired() and (proposals is None or total < proposals)

    def progress_share() -> float:
        if proposals is not None:
            return min(1.0, total / proposals)
        return min(1.0, (clock.elapsed() - start) / span)

    while more() and st.ns2 > 0.0 and (t0 is None or t0 > 0.0):
        n_in = int(np.count_nonzero(st.A))
        if full:
            P = np.concatenate([np.flatnonzero(st.A), np.flatnonzero(~st.A)])
            ko, ki = n_in, n - n_in
        else:
            v = _matvec(S, st.s)
            ko, ki = min(k, n_in), min(k, n - n_in)
            P = np.concatenate([np.argpartition(np.where(st.A, q - 2.0 * v, np.inf), ko - 1)[:ko],
                                np.argpartition(np.where(st.A, np.inf, 2.0 * v + q), ki - 1)[:ki]])
        X = _rows(S, P)
        G = X @ X.T  # symmetric: rows double as columns (contiguous)
        qP = np.diag(G).copy()
        vP = X @ st.s
        inA = st.A[P].copy()
        outs, ins = np.arange(ko), np.arange(ko, ko + ki)
        ns2 = st.ns2
        if t0 is None:  # calibrate on this first pool's proposals
            ro, ri = outs[rng.integers(0, ko, 4096)], ins[rng.integers(0, ki, 4096)]
            gain = 2.0 * (vP[ro] - vP[ri]) - qP[ro] - qP[ri] + 2.0 * G[ro, ri]
            up = np.sqrt(np.maximum(ns2 - gain, 0.0)) - math.sqrt(ns2)
            t0 = _temperature_for(up[up > 0.0], _POOL_ACCEPT0)
            t1 = t0 * _POOL_COOL
            if t0 <= 0.0:
                break
        pool_best, pool_best_inA = ns2, None
        done, batch, acc_rate = 0, 16, 0.5
        while done < refresh and more():
            R1, R2 = rng.integers(0, ko, chunk), rng.integers(0, ki, chunk)
            L = -np.log1p(-rng.random(chunk))  # accept uphill dE iff dE <= T * L
            c = 0
            while c < chunk and (proposals is None or total < proposals):
                temp = t0 * (t1 / t0) ** progress_share()
                ro, ri = R1[c:c + batch], R2[c:c + batch]
                po, pj = outs[ro], ins[ri]
                gain = 2.0 * (vP[po] - vP[pj]) - qP[po] - qP[pj] + 2.0 * G[po, pj]
                # ||s'|| - ||s|| <= T L  <=>  gain >= ns2 - (||s|| + T L)^2
                ok = np.flatnonzero(gain >= ns2 - (math.sqrt(ns2) + temp * L[c:c + batch]) ** 2)
                got = ro.size
                acc_rate = 0.9 * acc_rate + 0.1 * (ok.size / got)
                if ok.size:
                    t = int(ok[0])
                    o, j = int(po[t]), int(pj[t])
                    ns2 = max(ns2 - float(gain[t]), 0.0)
                    inA[o], inA[j] = False, True
                    vP += G[j] - G[o]
                    outs[ro[t]], ins[ri[t]] = j, o
                    st.moves += 1
                    got = t + 1
                    if ns2 < pool_best:
                        pool_best, pool_best_inA = ns2, inA.copy()
                c += got
                done += got
                total += got
                batch = int(min(1024, max(1, 2.0 / max(acc_rate, 1e-6))))
        # Write the pool back; exact sums from the rows that changed side.
        moved_in, moved_out = P[inA & ~st.A[P]], P[~inA & st.A[P]]
        st.s = st.s + _sum_rows(S, moved_in) - _sum_rows(S, moved_out)
        st.A[P] = inA
        if pool_best_inA is not None and pool_best < best_ns2:
            cand = st.copy()
            back_in, back_out = P[pool_best_inA & ~inA], P[inA & ~pool_best_inA]
            cand.s = cand.s + _sum_rows(S, back_in) - _sum_rows(S, back_out)
            cand.A[P] = pool_best_inA
            if cand.ns2 < best_ns2:
                best, best_ns2 = cand, cand.ns2
        clock.report(0.0)
    best.moves = st.moves
    return best


def _default_pool_proposals(n: int) -> int:
    """Proposals of swap's final annealing phase when no time budget is given (O(1) each)."""
    return int(min(_ANNEAL_MAX_MOVES, max(_ANNEAL_MIN_MOVES, 300 * n)))


def _temperature_for(uphill: np.ndarray, accept: float) -> float:
    """Temperature at which the mean Metropolis acceptance of these uphill steps is ``accept``."""
    if uphill.size == 0:
        return 0.0
    lo, hi = float(uphill.min()) * 1e-6, float(uphill.max()) * 1e6
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if float(np.mean(np.exp(-uphill / mid))) > accept:
            hi = mid
        else:
            lo = mid
    return hi


def _swap_cardinality(S: np.ndarray, q: np.ndarray, m: int, clock: _Clock,
                      rng: np.random.Generator, proposals: int | None = None) -> tuple[np.ndarray, int]:
    """Eq. 4: start, local search to a swap local optimum, then anneal while budget remains.

    Works on the smaller side: if m > n/2 it picks the n - m KEPT rows with target
    ``sum_K S_i = sum_all S_i`` (the same objective).  Small problems start from exact greedy
    construction; large ones from a random set, whose bias the bulk rounds remove cheaply.
    """
    n, d = S.shape
    complement = m > n - m
    k = n - m if complement else m
    offset = -_masked_sum(S, np.ones(n, dtype=bool)) if complement else np.zeros(d)
    st = _SwapState(np.zeros(n, dtype=bool), offset.copy())
    if k * n * d <= 5e7:  # small: exact greedy construction is cheap and strong
        _greedy_fill(S, q, st, k)
    else:  # large: a random start; the first swap rounds remove its bias at k swaps per gemv
        st.A[rng.choice(n, k, replace=False)] = True
        st.s = offset + _masked_sum(S, st.A)
    _local_search(S, q, st, clock)
    if clock.budget is not None and not clock.expired():
        st = _pool_anneal(S, q, st, clock, rng)
    elif clock.budget is None:  # a fixed, deterministic annealing phase past the local optimum
        st = _pool_anneal(S, q, st, clock, rng,
                          proposals=_default_pool_proposals(n) if proposals is None else proposals)
    mask = ~st.A if complement else st.A
    return mask, st.moves


def _swap_epsilon(S: np.ndarray, q: np.ndarray, eps: float, clock: _Clock,
                  rng: np.random.Generator, start: "_SwapState | None" = None) -> tuple[np.ndarray, int]:
    """Eq. 3 as a bisection over the count, with the cardinality machinery as the oracle.

    Pruning all n is known to be infeasible, so the search brackets the count in [lo, n).
    A trial at count c warm-starts from the best feasible set plus ``c - lo`` extra samples
    and runs the swap/add search; it succeeds if it ends feasible (it may add more on the
    way).  Extra samples are random rather than the smallest rows: small rows on BOTH sides
    are what the fine swaps use.  Small counts also probe +2..+64 past non-monotone gaps (a
    set can be feasible although no set one smaller is, e.g. two large rows that cancel).
    """
    n, d = S.shape
    eps2 = (eps * (1.0 - 1e-9)) ** 2  # margin so the independent recomputation agrees
    best = start.copy() if start is not None else _SwapState(np.zeros(n, dtype=bool), np.zeros(d))
    moves = 0
    failed: set[int] = set()  # counts that failed from the current best

    def attempt(m_try: int) -> bool:
        nonlocal best, moves
        trial = best.copy()
        trial.moves = moves
        extra = m_try - int(np.count_nonzero(trial.A))
        if extra * n * d <= 5e7:
            _greedy_fill(S, q, trial, extra)
        else:
            add = np.flatnonzero(~trial.A)
            add = add[rng.choice(add.size, extra, replace=False)]
            trial.A[add] = True
            trial.s = trial.s + _sum_rows(S, add)
            trial.moves += extra
        _local_search(S, q, trial, clock, eps2=eps2, give_up=True)
        moves = trial.moves
        if trial.ns2 <= eps2 and int(np.count_nonzero(trial.A)) >= m_try:
            best = trial
            failed.clear()
            return True
        failed.add(m_try)
        return False

    lo, hi = int(np.count_nonzero(best.A)), n  # lo feasible (best, or a feasible warm start), hi infeasible
    while not clock.expired():
        if hi - lo > max(1, lo // 512):  # bisect to 0.2% of the count (exact for small counts)
            m_try = (lo + hi) // 2
            if attempt(m_try):
                lo = max(lo, int(np.count_nonzero(best.A)))
                hi = max(hi, lo + 1)
            else:
                hi = m_try
            continue
        probes = [lo + p for p in (2, 4, 8, 16, 32, 64) if lo < 256 and lo + p < n and lo + p not in failed]
        for m_try in probes:
            if clock.expired():
                break
            if attempt(m_try):
                lo, hi = int(np.count_nonzero(best.A)), n
                break
        else:
            break
    # A short add/swap polish of the winner (bounded: unbounded adding creeps slowly at scale).
    best.moves = moves
    _local_search(S, q, best, clock, eps2=eps2, max_cycles=3)
    return best.A, best.moves


# --------------------------------------------------------------------------------------------
# anneal: simulated annealing (the paper's solver)


@dataclass
class _Split:
    """Index lists of both sides with O(1) membership moves (``pos`` = place in its list)."""

    members: np.ndarray   # [0, size) = A (pruned), [size, n) = outside
    pos: np.ndarray
    size: int

    @classmethod
    def of(cls, mask: np.ndarray) -> "_Split":
        members = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])
        pos = np.empty_like(members)
        pos[members] = np.arange(members.size)
        return cls(members, pos, int(np.count_nonzero(mask)))

    def _swap_places(self, p: int, r: int) -> None:
        a, b = self.members[p], self.members[r]
        self.members[p], self.members[r] = b, a
        self.pos[a], self.pos[b] = r, p

    def exchange(self, i: int, j: int) -> None:
        """i leaves A, j joins A."""
        self._swap_places(int(self.pos[i]), int(self.pos[j]))

    def add(self, j: int) -> None:
        self._swap_places(int(self.pos[j]), self.size)
        self.size += 1

    def remove(self, i: int) -> None:
        self.size -= 1
        self._swap_places(int(self.pos[i]), self.size)

    def mask(self) -> np.ndarray:
        out = np.zeros(self.members.size, dtype=bool)
        out[self.members[: self.size]] = True
        return out


@dataclass
class _BestTracker:
    """Best state seen, kept as an undo log of the moves applied since it.

    When the log outgrows a mask copy, the best mask is materialized and the log dropped.
    """

    n: int
    key: tuple[float, float] = (math.inf, math.inf)
    log: list[tuple[int, int]] = field(default_factory=list)  # (left A or -1, joined A or -1)
    snapshot: np.ndarray | None = None

    def moved(self, out_i: int, in_j: int, split: "_Split") -> None:
        if self.snapshot is not None:
            return
        self.log.append((out_i, in_j))
        if len(self.log) > max(1 << 16, self.n // 4):
            self.snapshot = self.best_mask(split.mask())
            self.log.clear()

    def unmoved(self) -> None:
        if self.snapshot is None and self.log:
            self.log.pop()

    def offer(self, key: tuple[float, float]) -> None:
        if key < self.key:
            self.key = key
            self.log.clear()
            self.snapshot = None

    def best_mask(self, current: np.ndarray) -> np.ndarray:
        if self.snapshot is not None:
            return self.snapshot
        mask = current.copy()
        for out_i, in_j in reversed(self.log):
            if in_j >= 0:
                mask[in_j] = False
            if out_i >= 0:
                mask[out_i] = True
        return mask


def _default_moves(n: int) -> int:
    return int(min(_ANNEAL_MAX_MOVES, max(_ANNEAL_MIN_MOVES, 300 * n)))


def _batch_cap(d: int) -> int:
    return int(max(16, min(4096, (1 << 20) // max(d, 1))))


class _Anneal:
    """Shared annealing loop: batched proposals, exact O(d) evaluation, Metropolis acceptance.

    A batch of B proposals is evaluated against the current sum with three O(d) dot products
    each (``s.S_i``, ``s.S_j``, ``S_i.S_j``; norms are precomputed); the first accepted move is
    applied and the rest of the batch is discarded (speculative evaluation, so the chain is
    exactly sequential SA).  B tracks about twice the inverse acceptance rate, so little work is
    wasted at any temperature.  Cooling is geometric in the fraction of the schedule done
    (proposals, or elapsed time when there is a budget).  The best state seen is returned.
    """

    def __init__(self, S: np.ndarray, q: np.ndarray, mask: np.ndarray, clock: _Clock,
                 rng: np.random.Generator) -> None:
        self.S, self.q, self.clock, self.rng = S, q, clock, rng
        self.n, self.d = S.shape
        self.split = _Split.of(mask)
        self.s = _masked_sum(S, mask)
        self.ns2 = float(self.s @ self.s)
        self.total_moves = _default_moves(self.n)
        self.evaluated = 0
        self.best = _BestTracker(self.n)

    def fraction(self) -> float:
        if self.clock.budget is not None:
            return min(1.0, self.clock.elapsed() / self.clock.budget)
        return min(1.0, self.evaluated / self.total_moves)

    def finished(self) -> bool:
        if self.clock.budget is not None:
            return self.clock.expired()
        return self.evaluated >= self.total_moves

    def evaluate(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """New ``||s||^2`` for each move (i leaves A unless -1, j joins A unless -1)."""
        hi, hj = i >= 0, j >= 0
        ii, jj = np.where(hi, i, 0), np.where(hj, j, 0)
        Xi, Xj = self.S[ii].astype(np.float64), self.S[jj].astype(np.float64)
        si, sj = Xi @ self.s, Xj @ self.s
        cross = np.einsum("ij,ij->i", Xi, Xj)
        new = (self.ns2 - np.where(hi, 2.0 * si - self.q[ii], 0.0) + np.where(hj, 2.0 * sj + self.q[jj], 0.0)
               - np.where(hi & hj, 2.0 * cross, 0.0))
        return np.maximum(new, 0.0)

    def _move(self, i: int, j: int, sign: float) -> None:
        if j >= 0:
            self.s = self.s + sign * self.S[j].astype(np.float64)
        if i >= 0:
            self.s = self.s - sign * self.S[i].astype(np.float64)
        self.ns2 = float(self.s @ self.s)

    def apply(self, i: int, j: int, feasible: Callable[[float], bool]) -> bool:
        """Apply a move; undo it if the exactly updated sum breaks feasibility."""
        sp = self.split
        if i >= 0 and j >= 0:
            sp.exchange(i, j)
        elif j >= 0:
            sp.add(j)
        else:
            sp.remove(i)
        self._move(i, j, 1.0)
        if feasible(self.ns2):
            self.best.moved(i, j, sp)
            return True
        if i >= 0 and j >= 0:
            sp.exchange(j, i)
        elif j >= 0:
            sp.remove(j)
        else:
            sp.add(i)
        self._move(i, j, -1.0)
        return False

    def run(self, propose: Callable[[int], tuple[np.ndarray, np.ndarray]],
            delta_energy: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
            key: Callable[[], tuple[float, float]], t0: float, t1: float,
            feasible: Callable[[float], bool] = lambda ns2: True) -> np.ndarray:
        cap = _batch_cap(self.d)
        batch, acc_rate = 16, 0.5
        self.best.offer(key())
        while not self.finished():
            f = self.fraction()
            temp = t0 * (t1 / t0) ** f
            i, j = propose(batch)
            new = self.evaluate(i, j)
            dE = delta_energy(i, j, new)
            with np.errstate(over="ignore"):
                ok = (dE <= 0.0) | (self.rng.random(i.size) < np.exp(-np.maximum(dE, 0.0) / temp))
            hit = np.flatnonzero(ok)
            self.evaluated += int(hit[0]) + 1 if hit.size else i.size
            acc_rate = 0.9 * acc_rate + 0.1 * (hit.size / i.size)
            batch = int(min(cap, max(4, 2.0 / max(acc_rate, 1e-6))))
            if hit.size and self.apply(int(i[hit[0]]), int(j[hit[0]]), feasible):
                self.best.offer(key())
            self.clock.report(f)
        return self.best.best_mask(self.split.mask())


def _anneal_cardinality(S: np.ndarray, q: np.ndarray, m: int, clock: _Clock,
                        rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Eq. 4 by SA over m-subsets from a random start; moves swap a pruned and a kept sample.

    Energy ``||s||``.  ``T0`` is set so a typical uphill swap from a near-zero sum (its size is
    the median ``||S_j - S_i||`` of random pairs) is accepted with probability ~0.3 at the start;
    cooling is geometric down to ``T0 * 1e-4``.
    """
    n = S.shape[0]
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, m, replace=False)] = True
    an = _Anneal(S, q, mask, clock, rng)
    t0 = _typical_step(S, rng) / math.log(1 / _ANNEAL_ACCEPT0)

    def propose(b: int) -> tuple[np.ndarray, np.ndarray]:
        sp = an.split
        i = sp.members[rng.integers(0, sp.size, b)]
        j = sp.members[sp.size + rng.integers(0, n - sp.size, b)]
        return i, j

    def delta_energy(i: np.ndarray, j: np.ndarray, new: np.ndarray) -> np.ndarray:
        return np.sqrt(new) - math.sqrt(an.ns2)

    mask = an.run(propose, delta_energy, lambda: (an.ns2, 0.0), t0, t0 * _ANNEAL_COOL)
    return mask, an.evaluated


def _anneal_epsilon(S: np.ndarray, q: np.ndarray, eps: float, clock: _Clock,
                    rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Eq. 3 by penalty SA from the empty set, returning the best FEASIBLE set visited.

    Moves: add, remove or swap (equally likely; only valid kinds when a side is empty).  Energy
    ``-|W| + mu * max(0, ||s|| - epsilon) / step`` with ``step`` the median ``||S_j - S_i||``:
    infeasible states are allowed, so the chain can cross barriers that a feasibility-
    preserving walk cannot (e.g. when every single row is longer than epsilon), and the
    penalty weight ``mu`` grows from 1 to 1e4 over the schedule.  Temperature is in units of
    one sample, cooling geometrically from 1 to 0.01.  A chain that ends just infeasible is
    repaired by greedy removals and kept if that beats the best feasible state visited.
    """
    n = S.shape[0]
    an = _Anneal(S, q, np.zeros(n, dtype=bool), clock, rng)
    eps2 = (eps * (1.0 - 1e-9)) ** 2
    step = _typical_step(S, rng)

    def propose(b: int) -> tuple[np.ndarray, np.ndarray]:
        sp = an.split
        kind = rng.integers(0, 3, b)  # 0 add, 1 remove, 2 swap
        if sp.size == 0:
            kind[:] = 0
        elif sp.size == n:
            kind[:] = 1
        i = sp.members[rng.integers(0, max(sp.size, 1), b)]
        j = sp.members[np.minimum(sp.size + rng.integers(0, max(n - sp.size, 1), b), n - 1)]
        i = np.where(kind == 0, -1, i)
        j = np.where(kind == 1, -1, j)
        return i, j

    def delta_energy(i: np.ndarray, j: np.ndarray, new: np.ndarray) -> np.ndarray:
        count = (j >= 0).astype(np.float64) - (i >= 0)
        mu = 1e4 ** an.fraction()
        excess = np.maximum(np.sqrt(new) - eps, 0.0) - max(math.sqrt(an.ns2) - eps, 0.0)
        return -count + mu * excess / step

    def key() -> tuple[float, float]:
        return (-float(an.split.size), an.ns2) if an.ns2 <= eps2 else (math.inf, math.inf)

    mask = an.run(propose, delta_energy, key, 1.0, 0.01)
    # The chain may end slightly infeasible with more samples than any feasible state it
    # visited: drop the most helpful samples until feasible and keep that if it is better.
    end = an.split.mask()
    for _ in range(256):
        s = _masked_sum(S, end)
        if float(s @ s) <= eps2 or not end.any():
            break
        score = 2.0 * _matvec(S, s) - q  # ||s||^2 - ||s - S_i||^2
        score[~end | (q == 0.0)] = -np.inf  # dropping an all-zero row never helps
        if not np.isfinite(score).any():
            break
        end[int(np.argmax(score))] = False
    if float(s @ s) <= eps2 and int(np.count_nonzero(end)) > int(np.count_nonzero(mask)):
        mask = end
    return mask, an.evaluated


def _typical_step(S: np.ndarray, rng: np.random.Generator, pairs: int = 256) -> float:
    """Median ``||S_j - S_i||`` over random pairs: the natural energy scale of one swap."""
    n = S.shape[0]
    i, j = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
    diff = S[j].astype(np.float64) - S[i].astype(np.float64)
    step = float(np.median(np.linalg.norm(diff, axis=1)))
    return step if step > 0 else 1.0
