"""swap: swap local search over screened pools, then annealing over pools until it stops improving (the default).

The objective is ``||s||^2`` with ``s = offset + sum_{i in A} S_i``.  With ``v = S s`` and ``q_i = ||S_i||^2``, a
swap (i leaves A, j joins it) lowers it by ``a_i - b_j + 2 G_ij`` where ``a = 2v - q``, ``b = 2v + q`` and
``G = S S^T``: one pass over S screens every swap at O(1), and a k x k block of G evaluates k^2 swaps at once.

1. Start: a random set whose bias bulk rounds remove (thousands of swaps per pass over S while ``||s||`` is
   large); where S S^T is small enough to compute once, also the greedy set built from it, and the better of
   the two after local search is kept.
2. Local search: pools of the best-screened rows of each side, searched through their Gram block (batches of
   disjoint swaps applied as one update where their exact gain beats a single swap, else the best swap per
   row and column, best first), until no swap improves.
3. Annealing over the pools at O(1) per proposal, in cycles from the best set so far; it stops when a gentle
   and then a hotter cycle each improve ``||s||^2`` by less than ``CONVERGED`` (relative), when the time
   budget ends, or after ``proposals`` proposals.

Heavy arithmetic (passes over S, Gram blocks) runs where :class:`dpcli.select.linalg.Rows` puts it; the
sequential part works on n-vectors and k x k blocks on the host.  ``s`` is kept exact (float64 row sums);
what a pool changes is recomputed from the rows before it is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dpcli.select.linalg import CHUNK_BYTES, Rows
from dpcli.select.solvers._common import ANNEAL_MAX_MOVES, ANNEAL_MIN_MOVES, Clock, Solver
from dpcli.select.solvers._swap_search import Engine, SwapState, _bulk_rounds, _screen, greedy_fill, local_search

# Annealing stops when a cycle improves the best ||s||^2 by less than this share.
CONVERGED = 0.01
# Proposals of a gentle annealing cycle: CYCLE_PER_ROW per row, within [ANNEAL_MIN_MOVES, CYCLE_MAX]; above
# CYCLE_FULL_N rows or 512 columns the cap shrinks in proportion, to no less than CYCLE_LARGE_MIN.
CYCLE_PER_ROW = 100
CYCLE_MAX = 5_000_000
CYCLE_FULL_N = 200_000
CYCLE_LARGE_MIN = 1_000_000
# The hotter cycle that tries to leave a basin makes at most this many proposals (it need not cool slowly).
HOT_MAX = 1_000_000
# Large problems: the start temperature accepts this share of the first pool's uphill swaps; cools by COOL.
_POOL_ACCEPT0 = 0.05
_POOL_COOL = 1e-2
# After a gentle cycle that gains less than CONVERGED, one cycle starts hotter (this acceptance) before stopping.
_HOT_ACCEPT0 = 0.3
# Every start is searched (the best kept) when n d is at most this; above it only the smallest after bulk rounds.
SEARCH_ALL_STARTS = 1e8
# Proposals between re-screenings of an annealing pool (and exact recomputations of s); the working set
# the pools are screened from is itself re-screened by a pass over S every _WS_REFRESH pools.
_REFRESH = 65536
_REFRESH_MIN = 4096  # and at least 16 pools per cycle above that
_WS_REFRESH = 8


def cycle_proposals(n: int, d: int) -> int:
    """Proposals of the first annealing cycle (O(1) each).

    Slow cooling is what finds the better basins (at 50,000 x 512 a 5M-proposal cycle ends 12 % below a
    1M one).  Above ``CYCLE_FULL_N`` rows the batched local search from the smallest rows already ends
    where annealing finds nothing more (1,280,000 x 512: two cycles, no gain); above 512 columns each pool
    the proposals run on costs d (50,000 x 5,130: a 5M cycle gained 0.03 % for 3 s more).  There the cap
    shrinks in proportion.
    """
    cap = CYCLE_MAX * min(1.0, CYCLE_FULL_N / n, 512 / max(d, 1))
    return int(min(max(CYCLE_LARGE_MIN, cap), max(ANNEAL_MIN_MOVES, CYCLE_PER_ROW * n)))


def annealing_cap(n: int) -> int:
    """The most proposals annealing may make without a budget or ``proposals``: 300 per row, 5,000..20M."""
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


@dataclass
class _Chain:
    """One pool's Metropolis chain: membership, ``vP``, the tracked ``||s||^2`` and the best membership seen."""

    G: np.ndarray
    vP: np.ndarray
    inA: np.ndarray
    ns2: float
    best_ns2: float
    best_inA: np.ndarray | None = None
    accepted: int = 0

    def run(self, proposals: int, temp: Callable[[int], float], rng: np.random.Generator, chunk: int = 1 << 14) -> int:
        """``proposals`` proposals (swap a random member for a random outsider), evaluated in batches.

        A batch is evaluated at once from the Gram block; its first accepted proposal is applied and the
        rest discarded, so the chain is exactly sequential; the batch size tracks twice the inverse
        acceptance rate.  Accept an uphill step iff ``||s'|| - ||s|| <= T L``, L ~ Exp(1).
        """
        G, vP = self.G, self.vP
        qP = np.diag(G).copy()
        outs, ins = np.flatnonzero(self.inA), np.flatnonzero(~self.inA)
        ko, ki = outs.size, ins.size
        a, b = 2.0 * vP - qP, 2.0 * vP + qP
        done, batch, acc_rate = 0, 16, 0.5
        chunk = max(256, min(chunk, proposals // 64))
        while done < proposals:
            m = min(chunk, proposals - done)
            R1, R2 = rng.integers(0, ko, m), rng.integers(0, ki, m)
            L = -np.log1p(-rng.random(m))
            T = temp(done)
            c = 0
            while c < m:
                ro, ri = R1[c : c + batch], R2[c : c + batch]
                po, pj = outs[ro], ins[ri]
                gain = a[po] - b[pj] + 2.0 * G[po, pj]
                root = math.sqrt(self.ns2)
                ok = np.flatnonzero(gain >= self.ns2 - (root + T * L[c : c + batch]) ** 2)
                got = ro.size
                acc_rate = 0.9 * acc_rate + 0.1 * (ok.size / got)
                if ok.size:
                    t = int(ok[0])
                    o, j = int(po[t]), int(pj[t])
                    self.ns2 = max(self.ns2 - float(gain[t]), 0.0)
                    self.inA[o], self.inA[j] = False, True
                    delta = 2.0 * (G[j] - G[o])
                    a += delta
                    b += delta
                    outs[ro[t]], ins[ri[t]] = j, o
                    self.accepted += 1
                    got = t + 1
                    if self.ns2 < self.best_ns2:
                        self.best_ns2, self.best_inA = self.ns2, self.inA.copy()
                c += got
                batch = int(min(1024, max(1, 2.0 / max(acc_rate, 1e-6))))
            done += m
        self.vP[:] = (a + b) / 4.0
        return done


def _calibrate(chain: _Chain, rng: np.random.Generator, accept: float) -> float:
    """Start temperature at which the mean acceptance of this pool's uphill swaps is ``accept``."""
    G, vP, inA = chain.G, chain.vP, chain.inA
    qP = np.diag(G)
    outs, ins = np.flatnonzero(inA), np.flatnonzero(~inA)
    ro, ri = outs[rng.integers(0, outs.size, 4096)], ins[rng.integers(0, ins.size, 4096)]
    gain = 2.0 * (vP[ro] - vP[ri]) - qP[ro] - qP[ri] + 2.0 * G[ro, ri]
    up = np.sqrt(np.maximum(chain.ns2 - gain, 0.0)) - math.sqrt(chain.ns2)
    return _temperature_for(up[up > 0.0], accept)


class _WorkingSet:
    """The rows an annealing pool is screened from: the best ``side`` of each side by a pass over all of S,
    re-screened every ``_WS_REFRESH`` pools; in between a pool costs a pass over the working set only."""

    def __init__(self, eng: Engine, side: int) -> None:
        self.eng = eng
        self.side = max(side, min(CHUNK_BYTES // (8 * eng.d), eng.n // 8))
        self.U: np.ndarray | None = None
        self.SU: Rows | None = None
        self.age = _WS_REFRESH

    def pool(self, st: SwapState, k: int) -> np.ndarray:
        eng = self.eng
        if eng.full or 4 * self.side >= eng.n:
            return np.concatenate(_screen(st.A, eng.v(st), eng.q, k))
        if self.age >= _WS_REFRESH:
            self.age = 0
            v = eng.rows.matvec(st.s)
            self.U = np.unique(np.concatenate(_screen(st.A, v, eng.q, self.side)))
            self.SU = eng.rows.subset(self.U)
        self.age += 1
        U, SU = self.U, self.SU
        assert U is not None and SU is not None  # screened on the first call: age starts at _WS_REFRESH
        return U[np.concatenate(_screen(st.A[U], SU.matvec(st.s), eng.q[U], k))]


def _anneal_cycle(
    eng: Engine,
    st: SwapState,
    clock: Clock,
    rng: np.random.Generator,
    proposals: int,
    t0: float | None,
    cool: float,
    accept: float = 0.05,
) -> tuple[SwapState, int, float | None]:
    """One annealing cycle of ``proposals`` from ``st``: the best state seen, proposals made, start temperature.

    Pools are re-screened and ``s`` recomputed exactly every ``_REFRESH`` proposals; the
    temperature falls geometrically from ``t0`` (calibrated on the first pool when None) to ``t0 * cool``
    over the proposals, or over the time left when the budget ends first.
    """
    best, best_ns2 = st.copy(), st.ns2
    st = st.copy()
    start, span = clock.elapsed(), max(clock.left(), 1e-9)
    done = 0

    def share(extra: int) -> float:
        by_work = (done + extra) / proposals
        return max(by_work, (clock.elapsed() - start) / span) if clock.budget is not None else by_work

    ws = _WorkingSet(eng, 2 * eng.k)
    while done < proposals and not clock.expired() and st.ns2 > 0.0:
        P, G, vP = eng.pool(st, ws.pool(st, eng.k))
        inA = st.A[P].copy()
        if inA.all() or not inA.any():
            break
        chain = _Chain(G, vP, inA, st.ns2, st.ns2)
        if t0 is None:
            t0 = _calibrate(chain, rng, accept)
            if t0 <= 0.0:
                break
        t0_ = t0
        # a pool's set-up (new Gram rows ~ d, its screening ~ n) is amortized over more proposals when it costs more
        every = max(_REFRESH_MIN, min(_REFRESH, proposals // 16)) * max(1, eng.d // 512, eng.n // 65536)
        budget = min(every, proposals - done)
        done += chain.run(budget, lambda extra: t0_ * cool ** min(1.0, share(extra)), rng)  # noqa: B023
        st.s, moved = eng.apply(st, P, chain.inA)
        st.A[P] = chain.inA
        st.moves += chain.accepted
        if chain.best_inA is not None and chain.best_ns2 < best_ns2:
            cand = SwapState(st.A.copy(), st.s.copy(), st.moves)
            cand.s, _ = eng.apply(cand, P, chain.best_inA)
            cand.A[P] = chain.best_inA
            if cand.ns2 < best_ns2:
                best, best_ns2 = cand, cand.ns2
        clock.report(0.0)
    best.moves = st.moves
    return best, done, t0


def anneal(
    eng: Engine, st: SwapState, clock: Clock, rng: np.random.Generator, proposals: int | None = None
) -> SwapState:
    """Annealing cycles from the best state, each followed by a local search, until one improves
    ``||s||^2`` by less than ``CONVERGED`` (relative); at most ``proposals`` proposals in all.

    Beyond a swap local optimum only uphill moves lead on.  Proposals come from pools screened like the
    local search's (the top-k of each side by the O(1) gain part: random pairs over all of S are mostly
    wasted), re-screened every ``_REFRESH`` proposals.  The start temperature accepts 5% of the first
    pool's uphill swaps on average and cools by 100 over a cycle, refining a near-zero sum without
    throwing it away.  A cycle that gains ``CONVERGED`` or more is followed by one twice as long (slower
    cooling where annealing pays); when a cycle gains less, one cycle starting at 30% (at most ``HOT_MAX``
    proposals) tries to leave the basin before the search is called converged.  At most :func:`annealing_cap`
    proposals in all (300 per row).  Deterministic for a seed without a time budget.
    """
    temps: dict[float, float | None] = {_POOL_ACCEPT0: None, _HOT_ACCEPT0: None}
    accept = _POOL_ACCEPT0
    left = annealing_cap(eng.n) if proposals is None else int(proposals)
    best, length = st, cycle_proposals(eng.n, eng.d)
    while left > 0 and not clock.expired() and best.ns2 > 0.0:
        length = int(min(length, left))
        this = min(length, HOT_MAX) if accept == _HOT_ACCEPT0 else length
        cand, done, temps[accept] = _anneal_cycle(eng, best, clock, rng, this, temps[accept], _POOL_COOL, accept)
        left -= max(done, 1)
        local_search(eng, cand, clock)
        gain = best.ns2 - cand.ns2
        moves = cand.moves
        if cand.ns2 < best.ns2:
            best = cand
        best.moves = moves
        if done == 0:
            break
        if gain < CONVERGED * (best.ns2 + gain):
            if accept == _HOT_ACCEPT0:
                break
            accept = _HOT_ACCEPT0  # a gentle cycle found little: one hotter try before calling it converged
        else:
            accept, length = _POOL_ACCEPT0, 2 * length  # annealing pays here: cool more slowly next time
    return best


def swap_cardinality(
    eng: Engine, m: int, clock: Clock, rng: np.random.Generator, proposals: int | None = None
) -> tuple[np.ndarray, int]:
    """Eq. 4: start, local search to a swap local optimum, then anneal until it stops improving.

    Works on the smaller side: if m > n/2 it picks the n - m KEPT rows with target
    ``sum_K S_i = sum_all S_i`` (the same objective).  Starts: a random set, the rows of smallest norm
    (influence norms are heavy-tailed: their sum is often near the optimum already) and, where it is
    cheap, the greedy set.  Each is searched and the best kept where that is cheap (S S^T held, or
    ``n d <= SEARCH_ALL_STARTS``); otherwise only the one with the smallest norm after bulk rounds (a
    smallest-norm start can end in a poorer local optimum: it leaves no small rows outside to swap in).
    """
    n, d = eng.n, eng.d
    complement = m > n - m
    k = n - m if complement else m
    offset = -eng.rows.masked_sum(np.ones(n, dtype=bool)) if complement else np.zeros(d)
    eng.set_offset(offset)

    def start(rows: np.ndarray) -> SwapState:
        A = np.zeros(n, dtype=bool)
        A[rows] = True
        return SwapState(A, offset + eng.rows.masked_sum(A))

    starts = [start(rng.choice(n, k, replace=False)), start(np.argpartition(eng.q, k - 1)[:k])]
    if eng.full or k * n * d <= 5e7:  # the greedy start costs a row of S S^T (or a pass) per pick
        greedy = SwapState(np.zeros(n, dtype=bool), offset.copy())
        greedy_fill(eng, greedy, k)
        starts.append(greedy)
    if eng.full or n * d <= SEARCH_ALL_STARTS:
        for st in starts:
            local_search(eng, st, clock)
    else:
        for st in starts:
            _bulk_rounds(eng, st, clock)
        starts = [min(starts, key=lambda st: st.ns2)]
        local_search(eng, starts[0], clock)
    st = min(starts, key=lambda st: st.ns2)
    st.moves = sum(s.moves for s in starts)
    if not clock.expired():
        st = anneal(eng, st, clock, rng, proposals)
    mask = ~st.A if complement else st.A
    return mask, st.moves


def swap_epsilon(
    eng: Engine, eps: float, clock: Clock, rng: np.random.Generator, start: "SwapState | None" = None
) -> tuple[np.ndarray, int]:
    """Eq. 3 as a bisection over the count, with the cardinality machinery as the oracle.

    Pruning all n is known to be infeasible, so the search brackets the count in [lo, n).
    A trial at count c warm-starts from the best feasible set plus ``c - lo`` extra samples
    and runs the swap/add search; it succeeds if it ends feasible (it may add more on the
    way).  Extra samples are random rather than the smallest rows: small rows on BOTH sides
    are what the fine swaps use.  Small counts also probe +2..+64 past non-monotone gaps (a
    set can be feasible although no set one smaller is, e.g. two large rows that cancel).
    """
    n, d = eng.n, eng.d
    eps2 = (eps * (1.0 - 1e-9)) ** 2  # margin so the independent recomputation agrees
    best = start.copy() if start is not None else SwapState(np.zeros(n, dtype=bool), np.zeros(d))
    moves = 0
    failed: set[int] = set()  # counts that failed from the current best

    def attempt(m_try: int) -> bool:
        nonlocal best, moves
        trial = best.copy()
        trial.moves = moves
        extra = m_try - int(np.count_nonzero(trial.A))
        if eng.full or extra * n * d <= 5e7:
            greedy_fill(eng, trial, extra)
        else:
            add = np.flatnonzero(~trial.A)
            add = add[rng.choice(add.size, extra, replace=False)]
            trial.A[add] = True
            trial.s = trial.s + eng.rows.sum_rows(add)
            trial.moves += extra
        local_search(eng, trial, clock, eps2=eps2, give_up=True)
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
    local_search(eng, best, clock, eps2=eps2, max_cycles=3)
    return best.A, best.moves


class Swap(Solver):
    name = "swap"
    help = "swap local search over Gram blocks, then annealing until it stops improving (default)"

    def cardinality(
        self, rows: Rows, q: np.ndarray, m: int, clock: Clock, rng: np.random.Generator, proposals: int | None = None
    ) -> tuple[np.ndarray, int]:
        return swap_cardinality(Engine(rows, q), m, clock, rng, proposals=proposals)

    def epsilon(
        self, rows: Rows, q: np.ndarray, eps: float, clock: Clock, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        return swap_epsilon(Engine(rows, q), eps, clock, rng)
