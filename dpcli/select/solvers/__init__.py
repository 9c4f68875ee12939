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

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.certificate import certify, repair
from dpcli.select.linalg import as_mask, as_matrix, count_from_ratio, masked_sum, matvec, row_sq_norms, subset_norm  # noqa: F401
from dpcli.select.solvers.anneal import anneal_cardinality, anneal_epsilon
from dpcli.select.solvers.brute import brute
from dpcli.select.solvers.common import (BRUTE_MAX_N, SOLVERS,  # noqa: F401 (re-exported)
                                          Clock, Progress, Selection, check_budget,
                                          check_solver)
from dpcli.select.solvers.swap import SwapState, local_search, swap_cardinality, swap_epsilon


def minimize_norm(S: np.ndarray, m: int, solver: str = "swap", time_budget: float | None = None,
                  seed: int = 0, progress: Progress | None = None, *,
                  proposals: int | None = None) -> Selection:
    """Eq. 4: the ``m`` samples whose summed influence has the smallest norm.

    ``proposals`` overrides swap's fixed annealing length without a budget (default 300 n, capped).
    """
    t0 = time.perf_counter()
    S = as_matrix(S)
    n = S.shape[0]
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise DpcliError(f"the prune count must be an integer, got {m!r}")
    m = int(m)
    if not 0 <= m <= n:
        raise DpcliError(f"the prune count must lie in [0, {n}] for {n} samples, got {m}")
    check_solver(solver, n)
    clock = Clock(check_budget(time_budget), progress)
    q = row_sq_norms(S)
    rng = np.random.default_rng(seed)
    if m == 0 or m == n:
        mask, iters = np.full(n, m == n), 0
    elif solver == "brute":
        mask, iters = brute(S, q, m=m, eps=None)
    elif solver == "anneal":
        mask, iters = anneal_cardinality(S, q, m, clock, rng)
    else:
        mask, iters = swap_cardinality(S, q, m, clock, rng, proposals=proposals)
    clock.done()
    if int(np.count_nonzero(mask)) != m:  # pragma: no cover - would be a solver bug
        raise DpcliError(f"solver {solver} returned {int(np.count_nonzero(mask))} pruned samples, not {m}")
    norm = subset_norm(S, mask)
    return Selection(mask, norm, solver, "cardinality", float(m), time.perf_counter() - t0, iters)



def maximize_pruned(S: np.ndarray, epsilon: float, solver: str = "swap", time_budget: float | None = None,
                    seed: int = 0, progress: Progress | None = None) -> Selection:
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
    check_solver(solver, n)
    clock = Clock(check_budget(time_budget), progress)
    q = row_sq_norms(S)
    rng = np.random.default_rng(seed)
    everything = np.ones(n, dtype=bool)
    if subset_norm(S, everything) <= eps:
        mask, iters = everything, 0  # pruning all samples is feasible, hence optimal
    elif solver == "brute":
        mask, iters = brute(S, q, m=None, eps=eps)
    elif solver == "anneal":
        mask, iters = anneal_epsilon(S, q, eps, clock, rng)
    else:
        mask, iters = swap_epsilon(S, q, eps, clock, rng)
    mask, extra = repair(S, q, mask, eps)
    clock.done()
    norm = certify(S, mask, eps).norm
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
    S = as_matrix(S)
    n, d = S.shape
    mask = as_mask(pruned, n).copy()
    clock = Clock(check_budget(time_budget), progress)
    q = row_sq_norms(S)
    if epsilon is None:
        m = int(np.count_nonzero(mask))
        if m == 0 or m == n:
            return mask, 0
        complement = m > n - m
        offset = -masked_sum(S, np.ones(n, dtype=bool)) if complement else np.zeros(d)
        A = ~mask if complement else mask
        st = SwapState(A, offset + masked_sum(S, A))
        local_search(S, q, st, clock, max_cycles=max_cycles)
        return (~st.A if complement else st.A), st.moves
    eps2 = (float(epsilon) * (1.0 - 1e-9)) ** 2
    st = SwapState(mask, masked_sum(S, mask))
    if st.ns2 > eps2:
        local_search(S, q, st, clock, eps2=eps2, give_up=True, max_cycles=max_cycles)
    while st.ns2 > eps2 and st.A.any():  # still infeasible: drop the row that helps most
        score = np.where(st.A, 2.0 * matvec(S, st.s) - q, -np.inf)
        i = int(np.argmax(score))
        st.A[i] = False
        st.s = st.s - S[i].astype(np.float64)
        st.moves += 1
    if not grow:
        local_search(S, q, st, clock, eps2=eps2, max_cycles=3)  # add more while feasible
        return st.A, st.moves
    return swap_epsilon(S, q, float(epsilon), clock, np.random.default_rng(seed), start=st)

