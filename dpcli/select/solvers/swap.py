"""swap: bulk rounds, screened pool search, then annealing over pooled swaps (the default solver).

Swap local search with maintained inner products ``v = S s`` (``s`` = current sum), so a swap's gain
costs O(1) to screen: bulk rounds (thousands of swaps per gemv while ``||s||`` is large), then exact
search over screened pools (a k x k Gram block), then annealing over pooled swaps at O(1) per proposal
for the rest of the time budget, or without one for a fixed 300 n proposals (deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dpcli.select.linalg import CHUNK_BYTES, masked_sum, matvec, sum_rows, take_rows
from dpcli.select.solvers.common import (ANNEAL_ACCEPT0, ANNEAL_COOL, ANNEAL_MAX_MOVES, ANNEAL_MIN_MOVES, Clock,
                                          typical_step)

# A swap must improve ||s||^2 by this relative amount; below it we call the search converged.
_REL_TOL = 1e-10
# swap's budget phase on large problems: start temperature accepts this share of the first
# pool's uphill swaps on average; cools by COOL.
_POOL_ACCEPT0 = 0.05
_POOL_COOL = 1e-2
# float64 bytes of one annealing pool (2k rows of S): bounds the solver's memory beyond S for wide S.
_POOL_BYTES = 256 << 20


@dataclass
class SwapState:
    """The side being optimized: ``A`` (pruned set, or kept set when complemented) and its sum.

    ``s = offset + sum_{i in A} S_i`` in float64; the objective is ``||s||``.
    """

    A: np.ndarray
    s: np.ndarray
    moves: int = 0

    @property
    def ns2(self) -> float:
        return float(self.s @ self.s)

    def copy(self) -> "SwapState":
        return SwapState(self.A.copy(), self.s.copy(), self.moves)


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


def _pool_round(S: np.ndarray, q: np.ndarray, st: SwapState, v: np.ndarray, k: int,
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
    X = take_rows(S, P)
    G = X @ X.T
    vP = X @ st.s
    inA = st.A[P].copy()
    st.s, applied = _pool_search(X, G, vP, inA, st.s, eps2)
    st.A[P] = inA
    st.moves += applied
    return applied


def _bulk_rounds(S: np.ndarray, q: np.ndarray, st: SwapState, clock: Clock,
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
        v = matvec(S, st.s)
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
            s_new = st.s + sum_rows(S, ins[:T]) - sum_rows(S, outs[:T])
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


def local_search(S: np.ndarray, q: np.ndarray, st: SwapState, clock: Clock,
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
    ws_side = max(kmax, min(CHUNK_BYTES // (8 * d), n // 8))
    rounds = cycles = 0
    while not clock.expired() and (max_cycles is None or cycles < max_cycles):
        cycles += 1
        start_ns2 = st.ns2
        if give_up and eps2 is not None and start_ns2 <= eps2:
            return
        v = matvec(S, st.s)
        applied = _pool_round(S, q, st, v, k, eps2)
        rounds += 1
        clock.report(1.0 - 1.0 / (1.0 + 0.1 * rounds))
        if applied == 0:
            return
        k = _next_pool_size(k, applied, kmax)
        if 4 * ws_side < n:
            # Working set: rows screened best on each side by the refreshed v.
            v = matvec(S, st.s)
            a = np.where(st.A, 2.0 * v - q, -np.inf)
            b = np.where(st.A, np.inf, 2.0 * v + q)
            U = np.unique(np.concatenate([np.argpartition(-a, ws_side - 1)[:ws_side],
                                          np.argpartition(b, ws_side - 1)[:ws_side]]))
            SU = np.ascontiguousarray(S[U])
            while not clock.expired():
                applied = _pool_round(S, q, st, matvec(SU, st.s), k, eps2, universe=U)
                rounds += 1
                clock.report(1.0 - 1.0 / (1.0 + 0.1 * rounds))
                if applied == 0 or (give_up and eps2 is not None and st.ns2 <= eps2):
                    break
                k = _next_pool_size(k, applied, kmax)
        if give_up and eps2 is not None and st.ns2 > 64.0 * eps2 and st.ns2 > start_ns2 / 16.0:
            return


def _greedy_fill(S: np.ndarray, q: np.ndarray, st: SwapState, count: int) -> None:
    """Add ``count`` rows one at a time, each minimizing ``||s + S_j||`` (one gemv per row)."""
    for _ in range(count):
        score = 2.0 * matvec(S, st.s) + q
        score[st.A] = np.inf
        j = int(np.argmin(score))
        st.A[j] = True
        st.s = st.s + S[j].astype(np.float64)
        st.moves += 1


def _pool_anneal(S: np.ndarray, q: np.ndarray, st: SwapState, clock: Clock,
                 rng: np.random.Generator, refresh: int = 200_000,
                 proposals: int | None = None) -> SwapState:
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
    k = int(min(1024, max(128, 2 * d), max(64, _POOL_BYTES // (16 * d))))  # 2k float64 rows <= _POOL_BYTES
    full = n <= 4 * k and 8 * n * d <= 2 * _POOL_BYTES
    start, span = clock.elapsed(), max(clock.left(), 1e-9)
    t0: float | None = None
    t1 = 0.0
    if full:
        t0 = 0.3 * typical_step(S, rng) / math.log(1 / ANNEAL_ACCEPT0)
        t1 = t0 * ANNEAL_COOL
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
            v = matvec(S, st.s)
            ko, ki = min(k, n_in), min(k, n - n_in)
            P = np.concatenate([np.argpartition(np.where(st.A, q - 2.0 * v, np.inf), ko - 1)[:ko],
                                np.argpartition(np.where(st.A, np.inf, 2.0 * v + q), ki - 1)[:ki]])
        X = take_rows(S, P)
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
        st.s = st.s + sum_rows(S, moved_in) - sum_rows(S, moved_out)
        st.A[P] = inA
        if pool_best_inA is not None and pool_best < best_ns2:
            cand = st.copy()
            back_in, back_out = P[pool_best_inA & ~inA], P[inA & ~pool_best_inA]
            cand.s = cand.s + sum_rows(S, back_in) - sum_rows(S, back_out)
            cand.A[P] = pool_best_inA
            if cand.ns2 < best_ns2:
                best, best_ns2 = cand, cand.ns2
        clock.report(0.0)
    best.moves = st.moves
    return best


def default_pool_proposals(n: int) -> int:
    """Proposals of swap's final annealing phase when no time budget is given (O(1) each)."""
    return int(min(ANNEAL_MAX_MOVES, max(ANNEAL_MIN_MOVES, 300 * n)))


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


def swap_cardinality(S: np.ndarray, q: np.ndarray, m: int, clock: Clock,
                      rng: np.random.Generator, proposals: int | None = None) -> tuple[np.ndarray, int]:
    """Eq. 4: start, local search to a swap local optimum, then anneal while budget remains.

    Works on the smaller side: if m > n/2 it picks the n - m KEPT rows with target
    ``sum_K S_i = sum_all S_i`` (the same objective).  Small problems start from exact greedy
    construction; large ones from a random set, whose bias the bulk rounds remove cheaply.
    """
    n, d = S.shape
    complement = m > n - m
    k = n - m if complement else m
    offset = -masked_sum(S, np.ones(n, dtype=bool)) if complement else np.zeros(d)
    st = SwapState(np.zeros(n, dtype=bool), offset.copy())
    if k * n * d <= 5e7:  # small: exact greedy construction is cheap and strong
        _greedy_fill(S, q, st, k)
    else:  # large: a random start; the first swap rounds remove its bias at k swaps per gemv
        st.A[rng.choice(n, k, replace=False)] = True
        st.s = offset + masked_sum(S, st.A)
    local_search(S, q, st, clock)
    if clock.budget is not None and not clock.expired():
        st = _pool_anneal(S, q, st, clock, rng)
    elif clock.budget is None:  # a fixed, deterministic annealing phase past the local optimum
        st = _pool_anneal(S, q, st, clock, rng,
                          proposals=default_pool_proposals(n) if proposals is None else proposals)
    mask = ~st.A if complement else st.A
    return mask, st.moves


def swap_epsilon(S: np.ndarray, q: np.ndarray, eps: float, clock: Clock,
                  rng: np.random.Generator, start: "SwapState | None" = None) -> tuple[np.ndarray, int]:
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
    best = start.copy() if start is not None else SwapState(np.zeros(n, dtype=bool), np.zeros(d))
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
            trial.s = trial.s + sum_rows(S, add)
            trial.moves += extra
        local_search(S, q, trial, clock, eps2=eps2, give_up=True)
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
    local_search(S, q, best, clock, eps2=eps2, max_cycles=3)
    return best.A, best.moves


