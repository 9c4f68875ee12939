"""Choose the samples to prune from the influence matrix S (Yang et al., ICLR 2023, Sec. 4.2).

Row ``S[i]`` is the parameter change caused by removing sample ``i``; removing a set W moves the
parameters by about ``sum_{i in W} S[i]``.  Two discrete problems are solved over W, the PRUNED set:

* epsilon mode (Eq. 3): maximize ``|W|`` subject to ``||sum_W S_i||_2 <= epsilon``;
* cardinality mode (Eq. 4): minimize ``||sum_W S_i||_2`` subject to ``|W| = m``.

Solvers are registered by subclassing :class:`Solver` (``SOLVERS``, one module each, ``--solver NAME``):

* ``swap`` (default): swap local search with maintained inner products ``v = S s`` (``s`` = current sum),
  so a swap's gain costs O(1) to screen and a k x k Gram block evaluates k^2 swaps at once; then annealing
  over pools in cycles until a cycle stops improving (:mod:`.swap`).
* ``anneal``: the paper's simulated annealing, with O(d) incremental move evaluation.
* ``brute``: exhaustive meet-in-the-middle enumeration, an oracle for ``n <= 20``.

``device`` says where the passes over S and the Gram blocks run (:class:`dpcli.select.linalg.Rows`: numpy
on the CPU, torch float32 elsewhere).  Whatever the solver and device, the returned norm is recomputed from
S in float64 by :func:`subset_norm` (independent of solver state) and an epsilon-mode result that violates
the constraint is refused.  With ``time_budget=None`` every solver is deterministic for a given seed; with a
budget the result depends on how far the solver gets in the time allowed.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.certificate import certify, repair
from dpcli.select.linalg import (  # noqa: F401
    Rows,
    as_mask,
    as_matrix,
    count_from_ratio,
    masked_sum,
    matvec,
    row_sq_norms,
    subset_norm,
)
from dpcli.select.solvers._common import SOLVERS, Clock, Progress, Selection, Solver, check_budget, get_solver  # noqa: F401 (re-exported)


def _rows(S, device) -> Rows:
    """S as the solvers read it; a numpy S is validated here (2-D, real, non-empty)."""
    if isinstance(S, np.ndarray) or not hasattr(S, "device"):
        S = as_matrix(S)
    elif S.ndim != 2 or S.shape[0] == 0 or S.shape[1] == 0:
        raise DpcliError(f"the influence matrix must be a non-empty 2-D array, got shape {tuple(S.shape)}")
    return Rows(S, device)


def _norm(S, rows: Rows, mask: np.ndarray) -> float:
    return subset_norm(S, mask) if isinstance(S, np.ndarray) else rows.norm(mask)


def minimize_norm(
    S: np.ndarray,
    m: int,
    solver: str = "swap",
    time_budget: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    proposals: int | None = None,
    device=None,
) -> Selection:
    """Eq. 4: the ``m`` samples whose summed influence has the smallest norm.

    ``S``: a numpy array (or a torch tensor already on ``device``).  ``proposals`` caps swap's annealing
    (which otherwise runs until a cycle stops improving).
    """
    t0 = time.perf_counter()
    rows = _rows(S, device)
    n = rows.n
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise DpcliError(f"the prune count must be an integer, got {m!r}")
    m = int(m)
    if not 0 <= m <= n:
        raise DpcliError(f"the prune count must lie in [0, {n}] for {n} samples, got {m}")
    impl = _solver(solver, n)
    clock = Clock(check_budget(time_budget), progress)
    q = rows.sq_norms()
    rng = np.random.default_rng(seed)
    if m == 0 or m == n:
        mask, iters = np.full(n, m == n), 0
    else:
        mask, iters = impl.cardinality(rows, q, m, clock, rng, proposals=proposals)
    clock.done()
    if int(np.count_nonzero(mask)) != m:  # pragma: no cover - would be a solver bug
        raise DpcliError(f"solver {solver} returned {int(np.count_nonzero(mask))} pruned samples, not {m}")
    return Selection(mask, _norm(S, rows, mask), solver, "cardinality", float(m), time.perf_counter() - t0, iters)


def _solver(name: str, n: int) -> Solver:
    if not isinstance(name, str) or name not in SOLVERS:
        raise DpcliError(SOLVERS.unknown(str(name)))
    return get_solver(name, n)


def maximize_pruned(
    S: np.ndarray,
    epsilon: float,
    solver: str = "swap",
    time_budget: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    device=None,
) -> Selection:
    """Eq. 3: as many samples as possible whose summed influence has norm <= ``epsilon``."""
    t0 = time.perf_counter()
    S = as_matrix(S)
    n = S.shape[0]
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise DpcliError(f"epsilon must be a finite number >= 0, got {epsilon!r}") from None
    if not (math.isfinite(eps) and eps >= 0.0):
        raise DpcliError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    impl = _solver(solver, n)
    clock = Clock(check_budget(time_budget), progress)
    rows = Rows(S, device)
    q = rows.sq_norms()
    rng = np.random.default_rng(seed)
    everything = np.ones(n, dtype=bool)
    if subset_norm(S, everything) <= eps:
        mask, iters = everything, 0  # pruning all samples is feasible, hence optimal
    else:
        mask, iters = impl.epsilon(rows, q, eps, clock, rng)
    mask, extra = repair(S, q, mask, eps)
    clock.done()
    norm = certify(S, mask, eps).norm
    return Selection(mask, norm, solver, "epsilon", eps, time.perf_counter() - t0, iters + extra)


def refine(
    S: np.ndarray,
    pruned: np.ndarray,
    epsilon: float | None = None,
    time_budget: float | None = None,
    max_cycles: int | None = None,
    progress: Progress | None = None,
    grow: bool = True,
    seed: int = 0,
    *,
    device=None,
) -> tuple[np.ndarray, int]:
    """Warm-started swap local search from ``pruned`` (e.g. the union of bucket solutions).

    Without ``epsilon``: swaps at fixed count, never worse than the start (Eq. 4).  With
    ``epsilon``: swaps (then greedy removals, one pass over S each) until ``||sum|| <= epsilon``,
    then (``grow``) swap's count bisection warm-started from that feasible set, else a bounded
    add/swap polish (Eq. 3).  Deterministic for a seed; returns ``(mask, moves)`` and
    leaves certification to the caller (:func:`subset_norm`).
    """
    from dpcli.select.solvers.swap import Engine, SwapState, local_search, swap_epsilon

    S = as_matrix(S)
    n, d = S.shape
    mask = as_mask(pruned, n).copy()
    clock = Clock(check_budget(time_budget), progress)
    rows = Rows(S, device)
    q = rows.sq_norms()
    if epsilon is None:
        m = int(np.count_nonzero(mask))
        if m == 0 or m == n:
            return mask, 0
        complement = m > n - m
        offset = -rows.masked_sum(np.ones(n, dtype=bool)) if complement else np.zeros(d)
        eng = Engine(rows, q, offset)
        A = ~mask if complement else mask
        st = SwapState(A, offset + rows.masked_sum(A))
        local_search(eng, st, clock, max_cycles=max_cycles)
        return (~st.A if complement else st.A), st.moves
    eng = Engine(rows, q)
    eps2 = (float(epsilon) * (1.0 - 1e-9)) ** 2
    st = SwapState(mask, rows.masked_sum(mask))
    if st.ns2 > eps2:
        local_search(eng, st, clock, eps2=eps2, give_up=True, max_cycles=max_cycles)
    while st.ns2 > eps2 and st.A.any():  # still infeasible: drop the row that helps most
        score = np.where(st.A, 2.0 * eng.v(st) - q, -np.inf)
        i = int(np.argmax(score))
        st.A[i] = False
        st.s = st.s - rows.row(i)
        st.moves += 1
    if not grow:
        local_search(eng, st, clock, eps2=eps2, max_cycles=3)  # add more while feasible
        return st.A, st.moves
    return swap_epsilon(eng, float(epsilon), clock, np.random.default_rng(seed), start=st)
