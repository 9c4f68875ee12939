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


def _pool_search(
    G: np.ndarray, vP: np.ndarray, inA: np.ndarray, ns2: float, slack: np.ndarray, eps2: float | None
) -> tuple[float, int]:
    """Local search restricted to a pool (Gram block ``G``, ``vP = S_P s``); returns ``||s||^2`` and moves.

    Moves: swap a member of A for an outsider (gain ``a_i - b_j + 2 G_ij``) and, with ``eps2``, additions
    that keep ``||s||^2 <= eps2``.  Each round screens the gain matrix in float32 (first the best-screened
    ``_FOCUS`` rows of each side, the whole block when they stall) and applies, as one update, the batch
    of disjoint swaps whose exact float64 gain is largest (:func:`_apply_batch`); where no batch beats a
    single swap, the best swap of every row and column best first, each re-evaluated against the current
    state.  Gains are discounted by ``slack`` (rounding), so nothing applies that rounding could have made
    look good.  ``vP`` and ``inA`` are updated in place.
    """
    qP = np.diag(G).copy()
    W = G.astype(np.float32)
    applied = 0
    while True:
        progressed = 0
        if eps2 is not None:  # additions first: they are what epsilon mode maximizes
            ins = np.flatnonzero(~inA)
            for pj in ins[np.argsort(2.0 * vP[ins] + qP[ins], kind="stable")].tolist():
                cost = 2.0 * vP[pj] + qP[pj] + slack[pj]
                if ns2 + cost <= eps2:
                    ns2 = max(ns2 + cost - slack[pj], 0.0)
                    inA[pj] = True
                    vP += G[pj]  # G is symmetric: a row is the column, contiguous
                    progressed += 1
        outs, ins = np.flatnonzero(inA), np.flatnonzero(~inA)
        if outs.size and ins.size and ns2 > 0.0:
            a = (vP[outs] - 0.5 * (qP[outs] + slack[outs])).astype(np.float32)  # half gains: a_i - b_j + G_ij
            b = (vP[ins] + 0.5 * (qP[ins] + slack[ins])).astype(np.float32)
            if max(outs.size, ins.size) > 2 * _FOCUS:  # most moves are among the best-screened rows
                ro = np.argpartition(-a, _FOCUS - 1)[:_FOCUS] if outs.size > _FOCUS else np.arange(outs.size)
                ri = np.argpartition(b, _FOCUS - 1)[:_FOCUS] if ins.size > _FOCUS else np.arange(ins.size)
                progressed, ns2 = _search_block(outs[ro], ins[ri], a[ro], b[ri], W, G, vP, qP, inA, slack, ns2)
            if not progressed:
                progressed, ns2 = _search_block(outs, ins, a, b, W, G, vP, qP, inA, slack, ns2)
        if progressed == 0 and ns2 > 0.0:
            ns2, progressed = _pair_swap(G, vP, inA, ns2, slack)
        applied += progressed
        if progressed == 0:
            return ns2, applied


def _search_block(
    outs: np.ndarray,
    ins: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    W: np.ndarray,
    G: np.ndarray,
    vP: np.ndarray,
    qP: np.ndarray,
    inA: np.ndarray,
    slack: np.ndarray,
    ns2: float,
) -> tuple[int, float]:
    """One round on the swaps between ``outs`` and ``ins``: a batch if one beats a single swap, else the
    best swaps per row and column one at a time.  Returns the swaps applied and ``||s||^2``."""
    po, pj = _best_pairs(W[np.ix_(outs, ins)], a, b, outs, ins)
    progressed, ns2 = _apply_batch(_ranked(outs, ins, a, b), (po, pj), G, vP, inA, slack, ns2)
    if not progressed:
        progressed, ns2 = _apply_swaps(po, pj, G, vP, qP, inA, slack, ns2)
    return progressed, ns2


def _best_pairs(
    block: np.ndarray, a: np.ndarray, b: np.ndarray, outs: np.ndarray, ins: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The best swap of every row and every column of a gain block (float32), as (member of A, outsider)
    candidates with a positive screened gain, best first."""
    gain = block + a[:, None]
    gain -= b[None, :]
    jb = gain.argmax(1)
    ib = gain.argmax(0)
    po = np.concatenate([outs, outs[ib]])
    pj = np.concatenate([ins[jb], ins])
    g = np.concatenate([gain[np.arange(outs.size), jb], gain[ib, np.arange(ins.size)]])
    keep = np.flatnonzero(g > 0.0)
    keep = keep[np.argsort(-g[keep], kind="stable")]
    return po[keep], pj[keep]


def _ranked(
    outs: np.ndarray, ins: np.ndarray, a: np.ndarray, b: np.ndarray, cap: int = 2 * _FOCUS
) -> tuple[np.ndarray, np.ndarray]:
    """Rank pairing: the t-th best member of A (largest ``a``) with the t-th best outsider (smallest ``b``).

    Where ``||s||`` is large against single rows, every row's best partner is the same few rows, so the
    best swap per row and column names few disjoint swaps; pairing by rank names up to ``cap`` of them.
    """
    t = min(cap, outs.size, ins.size)
    ro = np.argpartition(-a, t - 1)[:t] if t < outs.size else np.arange(outs.size)
    ri = np.argpartition(b, t - 1)[:t] if t < ins.size else np.arange(ins.size)
    return outs[ro[np.argsort(-a[ro], kind="stable")]][:t], ins[ri[np.argsort(b[ri], kind="stable")]][:t]


def _disjoint(po: np.ndarray, pj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidates (in order) that are the first to name both their member and their outsider: no two
    of those share a row."""
    first_o = np.zeros(po.size, dtype=bool)
    first_j = np.zeros(pj.size, dtype=bool)
    first_o[np.unique(po, return_index=True)[1]] = True
    first_j[np.unique(pj, return_index=True)[1]] = True
    keep = first_o & first_j
    return po[keep], pj[keep]


def _batch_gain(
    po: np.ndarray, pj: np.ndarray, G: np.ndarray, vP: np.ndarray, slack: np.ndarray, first: int = 32
) -> tuple[int, float, float]:
    """The best prefix of disjoint swaps ``(po[t], pj[t])`` applied together: its length, exact float64 gain
    in ``||s||^2`` and that gain less the rows' rounding allowance.

    With ``e = sum_t (S_j - S_o)`` the change is ``2 s.e + ||e||^2``; ``||e||^2`` of every prefix is the
    cumulative sum of the pairs' interaction block ``M`` (from the Gram block: one gather, no pass over S).
    The first ``first`` pairs are tried alone (O(T^2)): most batches end there.
    """
    if po.size > 2 * first:
        t, gain, net = _batch_gain(po[:first], pj[:first], G, vP, slack, first)
        if t < first:
            return t, gain, net
    T = po.size
    idx = np.concatenate([pj, po])
    Gs = G[np.ix_(idx, idx)]
    M = Gs[:T, :T] - Gs[:T, T:] - Gs[T:, :T] + Gs[T:, T:]
    lower = np.tril(M, -1).sum(1)
    change = np.cumsum(2.0 * (vP[pj] - vP[po]) + np.diagonal(M) + 2.0 * lower)
    net = -change - np.cumsum(slack[po] + slack[pj])
    t = int(np.argmax(net))
    return t + 1, float(-change[t]), float(net[t])


def _apply_batch(
    ranked: tuple[np.ndarray, np.ndarray],
    best: tuple[np.ndarray, np.ndarray],
    G: np.ndarray,
    vP: np.ndarray,
    inA: np.ndarray,
    slack: np.ndarray,
    ns2: float,
) -> tuple[int, float]:
    """Apply the better of two batches of disjoint swaps (the rank pairing and the best swaps per row and
    column, first claims kept) as one update, if it gains more than one swap would: the prefix whose exact
    gain is largest.  Returns the swaps applied (0: nothing beat a single swap) and ``||s||^2``."""
    found = (0, 0.0, 0.0, ranked)
    for po, pj in (ranked, _disjoint(*best)):
        if po.size < 2:
            continue
        t, gain, net = _batch_gain(po, pj, G, vP, slack)
        if t >= 2 and net > _REL_TOL * ns2 and net > found[2]:
            found = (t, gain, net, (po[:t], pj[:t]))
    t, gain, _, (po, pj) = found
    if t < 2:
        return 0, ns2
    inA[po], inA[pj] = False, True
    vP += G[pj].sum(0) - G[po].sum(0)
    return t, max(ns2 - gain, 0.0)


def _apply_swaps(
    po: np.ndarray,
    pj: np.ndarray,
    G: np.ndarray,
    vP: np.ndarray,
    qP: np.ndarray,
    inA: np.ndarray,
    slack: np.ndarray,
    ns2: float,
) -> tuple[int, float]:
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
        progressed += 1
    return progressed, ns2


def _pair_swap(
    G: np.ndarray, vP: np.ndarray, inA: np.ndarray, ns2: float, slack: np.ndarray, k2: int = 16
) -> tuple[float, int]:
    """Best exchange of two members of A for two outsiders among the top-``k2`` of each side.

    Escapes many 1-swap local optima: two individually worsening swaps can cancel each other's
    error.  Evaluated from the pool Gram for all C(k2,2)^2 pairs of pairs; returns ``||s||^2`` and the
    swaps applied.
    """
    qP = np.diag(G)
    outs, ins = np.flatnonzero(inA), np.flatnonzero(~inA)
    if outs.size < 2 or ins.size < 2:
        return ns2, 0
    outs = outs[np.argsort(-(2.0 * vP[outs] - qP[outs]), kind="stable")[:k2]]
    ins = ins[np.argsort(2.0 * vP[ins] + qP[ins], kind="stable")[:k2]]
    ou, ow = np.triu_indices(outs.size, 1)
    ju, jw = np.triu_indices(ins.size, 1)
    Gs = G[np.ix_(outs, ins)]
    Go, Gi = G[np.ix_(outs, outs)], G[np.ix_(ins, ins)]
    so, si = slack[outs], slack[ins]
    row = (
        2.0 * (vP[outs][ou] + vP[outs][ow]) - (qP[outs][ou] + qP[outs][ow] + 2.0 * Go[ou, ow]) - 2.0 * (so[ou] + so[ow])
    )
    col = 2.0 * (vP[ins][ju] + vP[ins][jw]) + (qP[ins][ju] + qP[ins][jw] + 2.0 * Gi[ju, jw]) + 2.0 * (si[ju] + si[jw])
    R = Gs[ou] + Gs[ow]
    gain = row[:, None] - col[None, :] + 2.0 * (R[:, ju] + R[:, jw])
    best = int(np.argmax(gain))
    if not gain.flat[best] > _REL_TOL * ns2:
        return ns2, 0
    r, c = divmod(best, ju.size)
    o1, o2, j1, j2 = outs[ou[r]], outs[ow[r]], ins[ju[c]], ins[jw[c]]
    inA[[o1, o2]] = False
    inA[[j1, j2]] = True
    vP += G[j1] + G[j2] - G[o1] - G[o2]
    return max(ns2 - float(gain.flat[best]), 0.0), 2


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


def _pool_round(
    eng: Engine, st: SwapState, v: np.ndarray | None, k: int, eps2: float | None, universe: np.ndarray | None = None
) -> int:
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


def _bulk_rounds(
    eng: Engine, st: SwapState, clock: Clock, eps2: float | None = None, min_batch: int = 64
) -> np.ndarray | None:
    """Many swaps per pass over S while ``||s||`` is large compared with single rows.

    Far from the optimum the gain of a swap is dominated by its linear part, so the best
    ``T`` outs (largest ``a = 2v - q``) are paired with the best ``T`` ins (smallest
    ``b = 2v + q``), and ``T`` minimizes the model ``(R - P_T)^2 + sum_{t<T} (q_out + q_in)``,
    where ``P_T`` is the pairs' total projection on ``s`` and the second term the orthogonal
    noise they add.  Each round is one pass over S plus an O(T d) exact update; the pool search
    takes over once ``T`` falls below ``min_batch``.  Returns ``S s`` of the final state where the last
    pass computed it (the local search that follows needs it: one pass fewer), else None.
    """
    n, q = eng.n, eng.q
    while not clock.expired():
        ns2 = st.ns2
        if ns2 <= 0.0 or (eps2 is not None and ns2 <= eps2):
            return None
        n_in = int(np.count_nonzero(st.A))
        cap = min(n_in, n - n_in, max(1 << 12, n // 8))
        if cap < min_batch:
            return None
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
            return v
        while T >= min_batch:
            s_new = st.s + eng.rows.sum_rows(ins[:T]) - eng.rows.sum_rows(outs[:T])
            if float(s_new @ s_new) < _BULK_KEEP * ns2:
                break
            T //= 2
        if T < min_batch:
            return v
        st.A[outs[:T]] = False
        st.A[ins[:T]] = True
        st.s = s_new
        st.moves += 2 * T
        clock.report(0.05)
    return None


def local_search(
    eng: Engine,
    st: SwapState,
    clock: Clock,
    eps2: float | None = None,
    k0: int = 256,
    give_up: bool = False,
    max_cycles: int | None = None,
) -> None:
    """Bulk rounds, then pool rounds (with ``eps2``, additions too) until none improves.

    Each outer cycle refreshes ``v = S s`` with one pass over S and screens from it a working set of the
    best rows of each side (its first pool is the one all of S would give); inner rounds work on the working
    set (a much cheaper pass), where the late, fine swaps happen.  Where the whole Gram matrix is held,
    every round searches all rows.  With ``give_up`` (epsilon trials) the search
    ends as soon as the set is feasible, or when a cycle leaves ``||s||`` above ``8 epsilon`` while
    shrinking it less than 4x.  ``max_cycles`` bounds the number of outer cycles.
    """
    n, d = eng.n, eng.d
    v = _bulk_rounds(eng, st, clock, eps2)
    kmax = _pool_size_cap(d)
    k = min(k0, kmax)
    ws_side = max(kmax, min(CHUNK_BYTES // (8 * d), n // 8))
    rounds = cycles = 0

    def round_done(applied: int) -> bool:
        """Count a round; is the search to go on with this pool size?"""
        nonlocal rounds, k
        rounds += 1
        clock.report(1.0 - 1.0 / (1.0 + 0.1 * rounds))
        k = _next_pool_size(k, applied, kmax) if applied else k
        return applied > 0 and not (give_up and eps2 is not None and st.ns2 <= eps2)

    while not clock.expired() and (max_cycles is None or cycles < max_cycles):
        cycles += 1
        start_ns2 = st.ns2
        if give_up and eps2 is not None and start_ns2 <= eps2:
            return
        if eng.full or 4 * ws_side >= n:
            applied = _pool_round(eng, st, None if eng.full else (eng.v(st) if v is None else v), k, eps2)
            v = None
            round_done(applied)
            if applied == 0:
                return
        else:
            v = eng.rows.matvec(st.s) if v is None else v
            U = np.unique(np.concatenate(_screen(st.A, v, eng.q, ws_side)))
            SU = eng.rows.subset(U)
            vU, v, total = v[U], None, 0
            while not clock.expired():
                applied = _pool_round(eng, st, vU, k, eps2, universe=U)
                total += applied
                if not round_done(applied):
                    break
                vU = SU.matvec(st.s)
            if total == 0:
                return
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
