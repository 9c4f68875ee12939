"""The swap solver's local search: its state, the engine over S's rows, screened pools searched through their
Gram blocks, bias bulk rounds and the greedy start (:mod:`dpcli.select.solvers.swap` anneals over them).

The objective is ``||s||^2`` with ``s = offset + sum_{i in A} S_i``; see :mod:`dpcli.select.solvers.swap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dpcli.select.linalg import CHUNK_BYTES, Block, Rows
from dpcli.select.solvers._common import Clock

# A swap must improve ||s||^2 by this relative amount; below it we call the search converged.
_REL_TOL = 1e-10
# A pool search first scans the best-screened _FOCUS rows of each side, the whole block only when they stall.
_FOCUS = 256
# Bulk rounds continue while one pass over S buys a swap batch that keeps at most this share of ||s||^2.
_BULK_KEEP = 0.99
# float64 bytes of one pool (2k rows): bounds the solver's memory beyond S for wide S.
_POOL_BYTES = 256 << 20
# S S^T is computed once (float64 on the CPU: 128 MiB at FULL_N) when n <= FULL_N and n^2 d <= FULL_FLOPS.
FULL_N = 4096
FULL_FLOPS = 1e11


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


class Engine:
    """S as the swap solver reads it: its rows where they live, ``q``, and S S^T when it is cheap enough.

    S S^T is computed once when ``n <= FULL_N`` and ``n^2 d <= FULL_FLOPS``: then every pool is all of S,
    its block a slice, and ``v = S offset + G 1_A`` exact without a pass over S.  ``offset`` is the constant
    part of ``s`` (minus the total when the kept side is optimized).
    """

    def __init__(self, rows: Rows, q: np.ndarray, offset: np.ndarray | None = None) -> None:
        self.rows, self.q = rows, q
        self.n, self.d = rows.n, rows.d
        self.k = pool_size(self.d)
        self.r = np.sqrt(q)
        full = self.n <= FULL_N and float(self.n) ** 2 * self.d <= FULL_FLOPS
        self.G = rows.full_gram() if full else None
        self._blk: Block | None = None
        self.set_offset(np.zeros(self.d) if offset is None else offset)

    def set_offset(self, offset: np.ndarray) -> None:
        self.offset = offset
        self.v_off = self.rows.matvec(offset) if self.G is not None and offset.any() else np.zeros(self.n)

    @property
    def full(self) -> bool:
        return self.G is not None

    def v(self, st: "SwapState") -> np.ndarray:
        """``S s`` for every row: from S S^T where it is held (float64), else one pass over S."""
        if self.G is not None:
            return self.v_off + self.G @ st.A.astype(np.float64)
        return self.rows.matvec(st.s)

    def pool(self, st: "SwapState", P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pool ``P`` in the order it is held, its Gram block (float64) and ``S_P s``; the pool's rows are
        kept for :meth:`apply`.  Successive pools share most rows: only new members' Gram rows are multiplied.
        """
        if self.G is not None:
            self._blk = None
            G = self.G if P.size == self.n else self.G[np.ix_(P, P)]
            return P, G, self.v(st)[P]
        self._blk = self.rows.block(P, self._blk)
        return self._blk.P, self._blk.G, self._blk.dot(st.s)

    def slack(self, P: np.ndarray, ns2: float) -> np.ndarray:
        """Rounding allowance per pool row: a screened gain is trusted beyond the rows' share of it."""
        return self.rows.rel_err * (self.q[P] + 2.0 * self.r[P] * math.sqrt(ns2))

    def apply(self, st: "SwapState", P: np.ndarray, inA: np.ndarray) -> tuple[np.ndarray, int]:
        """``s`` after pool ``P`` takes membership ``inA``, exact from the rows, and how many rows moved."""
        was = st.A[P]
        into, out = np.flatnonzero(inA & ~was), np.flatnonzero(~inA & was)
        blk = self._blk
        if blk is not None and blk.P is P:
            s = st.s + blk.sum(into) - blk.sum(out)
        else:
            s = st.s + self.rows.sum_rows(P[into]) - self.rows.sum_rows(P[out])
        return s, int(into.size + out.size)


def pool_size(d: int) -> int:
    """Rows per side of an annealing pool: 2k float64 rows within ``_POOL_BYTES``, 128..1024."""
    return int(min(1024, max(128, 2 * d), max(64, _POOL_BYTES // (16 * d))))


def _pool_size_cap(d: int) -> int:
    """Largest per-side search pool whose Gram (2k x 2k x d) stays around a second of BLAS."""
    return int(max(64, min(1024, math.sqrt(1e9 / max(d, 1)))))


def _next_pool_size(k: int, applied: int, kmax: int) -> int:
    """Grow the pool while rounds use most of it, shrink it when they use little (cost ~ k^2)."""
    if applied >= k // 2:
        return min(kmax, 2 * k)
    if applied < k // 8:
        return max(64, k // 2)
    return k


def _pool_search(G: np.ndarray, vP: np.ndarray, inA: np.ndarray, ns2: float, slack: np.ndarray,
                 eps2: float | None) -> tuple[float, int]:
    """Local search restricted to a pool (Gram block ``G``, ``vP = S_P s``); returns ``||s||^2`` and moves.

    Moves: swap a member of A for an outsider (gain ``a_i - b_j + 2 G_ij``) and, with ``eps2``, additions
    that keep ``||s||^2 <= eps2``.  Each round takes the best swap of every row and every column of the
    k x k gain matrix and applies them best first, each re-evaluated in float64 against the current state;
    gains are discounted by ``slack`` (rounding), so nothing applies that rounding could have made look good.
    The gain matrix is screened in float32 from a copy of ``G`` kept permuted so that A's rows come first
    (a move swaps two rows and two columns), so each round reads a block instead of gathering one.
    ``vP`` and ``inA`` are updated in place.
    """
    qP = np.diag(G).copy()
    order = np.concatenate([np.flatnonzero(inA), np.flatnonzero(~inA)])  # pool row at each position
    pos = np.empty_like(order)
    pos[order] = np.arange(order.size)
    ko = int(np.count_nonzero(inA))
    W = G.astype(np.float32)[np.ix_(order, order)]

    def place(p: int, r: int) -> None:
        """Exchange positions p and r (rows and columns of W)."""
        W[[p, r]] = W[[r, p]]
        W[:, [p, r]] = W[:, [r, p]]
        order[p], order[r] = order[r], order[p]
        pos[order[p]], pos[order[r]] = p, r

    applied = 0
    while True:
        progressed = 0
        if eps2 is not None:  # additions first: they are what epsilon mode maximizes
            ins = order[ko:]
            for pj in ins[np.argsort(2.0 * vP[ins] + qP[ins], kind="stable")].tolist():
                cost = 2.0 * vP[pj] + qP[pj] + slack[pj]
                if ns2 + cost <= eps2:
                    ns2 = max(ns2 + cost - slack[pj], 0.0)
                    inA[pj] = True
                    vP += G[pj]  # G is symmetric: a row is the column, contiguous
                    place(int(pos[pj]), ko)
                    ko += 1
                    progressed += 1
        if 0 < ko < order.size and ns2 > 0.0:
            outs, ins = order[:ko], order[ko:]
            a = (vP[outs] - 0.5 * (qP[outs] + slack[outs])).astype(np.float32)  # half gains: a_i - b_j + G_ij
            b = (vP[ins] + 0.5 * (qP[ins] + slack[ins])).astype(np.float32)
            focus = max(ko, ins.size) > 2 * _FOCUS
            if focus:  # first the best-screened rows of each side: most moves are there, at a 16th of the cost
                ro = np.argpartition(-a, min(_FOCUS, ko) - 1)[:_FOCUS] if ko > _FOCUS else np.arange(ko)
                ri = np.argpartition(b, min(_FOCUS, ins.size) - 1)[:_FOCUS] if ins.size > _FOCUS else np.arange(ins.size)
                po, pj, g = _best_pairs(W[np.ix_(ro, ko + ri)], W[np.ix_(ko + ri, ro)], a[ro], b[ri], outs[ro], ins[ri])
                progressed, ns2 = _apply_swaps(po, pj, g, G, vP, qP, inA, slack, ns2, place, pos)
            if not progressed:
                po, pj, g = _best_pairs(W[:ko, ko:], W[ko:, :ko], a, b, outs, ins)
                progressed, ns2 = _apply_swaps(po, pj, g, G, vP, qP, inA, slack, ns2, place, pos)
        if progressed == 0 and ns2 > 0.0:
            ns2, pair = _pair_swap(G, vP, inA, ns2, slack)
            for o, j in pair:
                place(int(pos[o]), int(pos[j]))
            progressed = len(pair)
        applied += progressed
        if progressed == 0:
            return ns2, applied


def _best_pairs(block: np.ndarray, block_t: np.ndarray, a: np.ndarray, b: np.ndarray, outs: np.ndarray,
                ins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best swap of every row and every column of a gain block (``block`` and its transpose, float32),
    as (member of A, outsider, half gain) candidates with a positive screened gain."""
    gain = block + a[:, None]
    gain -= b[None, :]
    jb = gain.argmax(1)
    g_row = gain[np.arange(outs.size), jb]
    gain = block_t - b[:, None]  # column maxima as contiguous row maxima
    gain += a[None, :]
    ib = gain.argmax(1)
    g_col = gain[np.arange(ins.size), ib]
    po = np.concatenate([outs, outs[ib]])
    pj = np.concatenate([ins[jb], ins])
    g = np.concatenate([g_row, g_col])
    keep = g > 0.0
    order = np.argsort(-g[keep], kind="stable")
    return po[keep][order], pj[keep][order], g[keep][order]


def _apply_swaps(po: np.ndarray, pj: np.ndarray, g: np.ndarray, G: np.ndarray, vP: np.ndarray, qP: np.ndarray,
                 inA: np.ndarray, slack: np.ndarray, ns2: float, place, pos: np.ndarray) -> tuple[int, float]:
    """Apply candidate swaps best first, each re-evaluated in float64 against the current state."""
    progressed = 0
    for o, j in zip(po.tolist(), pj.tolist()):
        if not inA[o] or inA[j]:
            continue
        gij = 2.0 * (vP[o] - vP[j]) - qP[o] - qP[j] + 2.0 * G[o, j] - slack[o] - slack[j]
        if gij <= _REL_TOL * ns2:
            continue
        ns2 = max(ns2 - gij - slack[o] - slack[j], 0.0)
        inA[o], inA[j] = False, True
        vP += G[j] - G[o]
        place(int(pos[o]), int(pos[j]))
        progressed += 1
    return progressed, ns2


def _pair_swap(G: np.ndarray, vP: np.ndarray, inA: np.ndarray, ns2: float, slack: np.ndarray,
               k2: int = 16) -> tuple[float, list[tuple[int, int]]]:
    """Best exchange of two members of A for two outsiders among the top-``k2`` of each side.

    Escapes many 1-swap local optima: two individually worsening swaps can cancel each other's
    error.  Evaluated from the pool Gram for all C(k2,2)^2 pairs of pairs; returns the swaps applied.
    """
    qP = np.diag(G)
    outs, ins = np.flatnonzero(inA), np.flatnonzero(~inA)
    if outs.size < 2 or ins.size < 2:
        return ns2, []
    outs = outs[np.argsort(-(2.0 * vP[outs] - qP[outs]), kind="stable")[:k2]]
    ins = ins[np.argsort(2.0 * vP[ins] + qP[ins], kind="stable")[:k2]]
    ou, ow = np.triu_indices(outs.size, 1)
    ju, jw = np.triu_indices(ins.size, 1)
    Gs = G[np.ix_(outs, ins)]
    Go, Gi = G[np.ix_(outs, outs)], G[np.ix_(ins, ins)]
    so, si = slack[outs], slack[ins]
    row = (2.0 * (vP[outs][ou] + vP[outs][ow]) - (qP[outs][ou] + qP[outs][ow] + 2.0 * Go[ou, ow])
           - 2.0 * (so[ou] + so[ow]))
    col = (2.0 * (vP[ins][ju] + vP[ins][jw]) + (qP[ins][ju] + qP[ins][jw] + 2.0 * Gi[ju, jw])
           + 2.0 * (si[ju] + si[jw]))
    R = Gs[ou] + Gs[ow]
    gain = row[:, None] - col[None, :] + 2.0 * (R[:, ju] + R[:, jw])
    best = int(np.argmax(gain))
    if not gain.flat[best] > _REL_TOL * ns2:
        return ns2, []
    r, c = divmod(best, ju.size)
    o1, o2, j1, j2 = outs[ou[r]], outs[ow[r]], ins[ju[c]], ins[jw[c]]
    inA[[o1, o2]] = False
    inA[[j1, j2]] = True
    vP += G[j1] + G[j2] - G[o1] - G[o2]
    return max(ns2 - float(gain.flat[best]), 0.0), [(int(o1), int(j1)), (int(o2), int(j2))]


def _screen(A: np.ndarray, v: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` members of A whose removal helps most and the ``k`` outsiders whose addition hurts least."""
    a = np.where(A, 2.0 * v - q, -np.inf)
    b = np.where(A, np.inf, 2.0 * v + q)
    n_in = int(np.count_nonzero(A))
    ko, ki = min(k, n_in), min(k, A.size - n_in)
    outs = np.argpartition(-a, ko - 1)[:ko] if 0 < ko < A.size else np.flatnonzero(A)[:ko]
    ins = np.argpartition(b, ki - 1)[:ki] if 0 < ki < A.size else np.flatnonzero(~A)[:ki]
    return outs, ins


def _accepts(before: float, after: float, count_before: int, count_after: int, eps2: float | None) -> bool:
    """Is the exactly recomputed result of a pool round better than where it started?"""
    if eps2 is None or before > eps2:
        return after < before * (1.0 - _REL_TOL)
    return after <= eps2 and (count_after > count_before or after < before * (1.0 - _REL_TOL))


def _pool_round(eng: Engine, st: SwapState, v: np.ndarray | None, k: int, eps2: float | None,
                universe: np.ndarray | None = None) -> int:
    """Screen a pool from ``v`` (top-k of each side by its O(1) gain part; all rows where S S^T is held),
    search it, and keep the result if its exact ``||s||^2`` says so.  Returns the moves applied.

    ``universe`` restricts the candidates (indices into S; ``v`` is then indexed like it).
    """
    if eng.full:
        P = np.arange(eng.n)
    else:
        A = st.A if universe is None else st.A[universe]
        q = eng.q if universe is None else eng.q[universe]
        assert v is not None  # the callers give v whenever S S^T is not held
        outs, ins = _screen(A, v, q, k)
        P = np.concatenate([outs, ins])
        if universe is not None:
            P = universe[P]
    P, G, vP = eng.pool(st, P)
    inA = st.A[P].copy()
    before = st.ns2
    _, applied = _pool_search(G, vP, inA, before, eng.slack(P, before), eps2)
    if applied == 0:
        return 0
    s, moved = eng.apply(st, P, inA)
    after = float(s @ s)
    count_before = int(np.count_nonzero(st.A[P]))
    if not _accepts(before, after, count_before, int(np.count_nonzero(inA)), eps2):
        return 0
    st.s = s
    st.A[P] = inA
    st.moves += moved
    return moved


def _bulk_rounds(eng: Engine, st: SwapState, clock: Clock, eps2: float | None = None, min_batch: int = 64) -> None:
    """Many swaps per pass over S while ``||s||`` is large compared with single rows.

    Far from the optimum the gain of a swap is dominated by its linear part, so the best
    ``T`` outs (largest ``a = 2v - q``) are paired with the best ``T`` ins (smallest
    ``b = 2v + q``), and ``T`` minimizes the model ``(R - P_T)^2 + sum_{t<T} (q_out + q_in)``,
    where ``P_T`` is the pairs' total projection on ``s`` and the second term the orthogonal
    noise they add.  Each round is one pass over S plus an O(T d) exact update; the pool search
    takes over once ``T`` falls below ``min_batch``.
    """
    n, q = eng.n, eng.q
    while not clock.expired():
        ns2 = st.ns2
        if ns2 <= 0.0 or (eps2 is not None and ns2 <= eps2):
            return
        n_in = int(np.count_nonzero(st.A))
        cap = min(n_in, n - n_in, max(1 << 12, n // 8))
        if cap < min_batch:
            return
        v = eng.rows.matvec(st.s)
        R = math.sqrt(ns2)
        outs, ins = _screen(st.A, v, q, cap)
        outs = outs[np.argsort(-(2.0 * v[outs] - q[outs]), kind="stable")]
        ins = ins[np.argsort(2.0 * v[ins] + q[ins], kind="stable")]
        proj = np.cumsum((v[outs] - v[ins]) / R)
        noise = np.cumsum(q[outs] + q[ins])
        model = (R - proj) ** 2 + noise
        T = int(np.argmin(model)) + 1
        if T < min_batch or model[T - 1] >= _BULK_KEEP * ns2:
            return
        while T >= min_batch:
            s_new = st.s + eng.rows.sum_rows(ins[:T]) - eng.rows.sum_rows(outs[:T])
            if float(s_new @ s_new) < _BULK_KEEP * ns2:
                break
            T //= 2
        if T < min_batch:
            return
        st.A[outs[:T]] = False
        st.A[ins[:T]] = True
        st.s = s_new
        st.moves += 2 * T
        clock.report(0.05)


def local_search(eng: Engine, st: SwapState, clock: Clock, eps2: float | None = None, k0: int = 256,
                 give_up: bool = False, max_cycles: int | None = None) -> None:
    """Bulk rounds, then pool rounds (with ``eps2``, additions too) until none improves.

    Each outer cycle refreshes ``v = S s`` with one pass over S; inner rounds work on a working set of the
    best-screened rows of each side (a much cheaper pass), where the late, fine swaps happen.  Where the
    whole Gram matrix is held, every round searches all rows.  With ``give_up`` (epsilon trials) the search
    ends as soon as the set is feasible, or when a cycle leaves ``||s||`` above ``8 epsilon`` while
    shrinking it less than 4x.  ``max_cycles`` bounds the number of outer cycles.
    """
    n, d = eng.n, eng.d
    _bulk_rounds(eng, st, clock, eps2)
    kmax = _pool_size_cap(d)
    k = min(k0, kmax)
    ws_side = max(kmax, min(CHUNK_BYTES // (8 * d), n // 8))
    rounds = cycles = 0
    while not clock.expired() and (max_cycles is None or cycles < max_cycles):
        cycles += 1
        start_ns2 = st.ns2
        if give_up and eps2 is not None and start_ns2 <= eps2:
            return
        applied = _pool_round(eng, st, None if eng.full else eng.v(st), k, eps2)
        rounds += 1
        clock.report(1.0 - 1.0 / (1.0 + 0.1 * rounds))
        if applied == 0:
            return
        k = _next_pool_size(k, applied, kmax)
        if not eng.full and 4 * ws_side < n:
            # Working set: rows screened best on each side by the refreshed v.
            outs, ins = _screen(st.A, eng.rows.matvec(st.s), eng.q, ws_side)
            U = np.unique(np.concatenate([outs, ins]))
            SU = eng.rows.subset(U)
            while not clock.expired():
                applied = _pool_round(eng, st, SU.matvec(st.s), k, eps2, universe=U)
                rounds += 1
                clock.report(1.0 - 1.0 / (1.0 + 0.1 * rounds))
                if applied == 0 or (give_up and eps2 is not None and st.ns2 <= eps2):
                    break
                k = _next_pool_size(k, applied, kmax)
        if give_up and eps2 is not None and st.ns2 > 64.0 * eps2 and st.ns2 > start_ns2 / 16.0:
            return


def greedy_fill(eng: Engine, st: SwapState, count: int) -> None:
    """Add ``count`` rows one at a time, each minimizing ``||s + S_j||`` (a row of S S^T, or a pass over S, each)."""
    if count <= 0:
        return
    if eng.G is not None:  # eng.full: S S^T is held
        v = eng.v(st)
        picked = np.empty(count, dtype=np.int64)
        A = st.A.copy()
        for t in range(count):
            score = 2.0 * v + eng.q
            score[A] = np.inf
            j = int(np.argmin(score))
            A[j] = True
            picked[t] = j
            v += eng.G[j]
        st.s = st.s + eng.rows.sum_rows(picked)
        st.A = A
        st.moves += count
        return
    for _ in range(count):
        score = 2.0 * eng.rows.matvec(st.s) + eng.q
        score[st.A] = np.inf
        j = int(np.argmin(score))
        st.A[j] = True
        st.s = st.s + eng.rows.row(j)
        st.moves += 1
