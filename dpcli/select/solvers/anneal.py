"""anneal: the paper's simulated annealing, with O(d) incremental move evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dpcli.select.linalg import Rows
from dpcli.select.solvers._common import (
    ANNEAL_ACCEPT0,
    ANNEAL_COOL,
    ANNEAL_MAX_MOVES,
    ANNEAL_MIN_MOVES,
    Clock,
    Solver,
    typical_step,
)


@dataclass
class _Split:
    """Index lists of both sides with O(1) membership moves (``pos`` = place in its list)."""

    members: np.ndarray  # [0, size) = A (pruned), [size, n) = outside
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
    return int(min(ANNEAL_MAX_MOVES, max(ANNEAL_MIN_MOVES, 300 * n)))


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

    def __init__(self, rows: Rows, q: np.ndarray, mask: np.ndarray, clock: Clock, rng: np.random.Generator) -> None:
        self.rows, self.q, self.clock, self.rng = rows, q, clock, rng
        self.n, self.d = rows.n, rows.d
        self.split = _Split.of(mask)
        self.s = rows.masked_sum(mask)
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
        Xi, Xj = self.rows.take(ii), self.rows.take(jj)
        si, sj = Xi @ self.s, Xj @ self.s
        cross = np.einsum("ij,ij->i", Xi, Xj)
        new = (
            self.ns2
            - np.where(hi, 2.0 * si - self.q[ii], 0.0)
            + np.where(hj, 2.0 * sj + self.q[jj], 0.0)
            - np.where(hi & hj, 2.0 * cross, 0.0)
        )
        return np.maximum(new, 0.0)

    def _move(self, i: int, j: int, sign: float) -> None:
        if j >= 0:
            self.s = self.s + sign * self.rows.row(j)
        if i >= 0:
            self.s = self.s - sign * self.rows.row(i)
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

    def run(
        self,
        propose: Callable[[int], tuple[np.ndarray, np.ndarray]],
        delta_energy: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
        key: Callable[[], tuple[float, float]],
        t0: float,
        t1: float,
        feasible: Callable[[float], bool] = lambda ns2: True,
    ) -> np.ndarray:
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


def anneal_cardinality(
    rows: Rows, q: np.ndarray, m: int, clock: Clock, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Eq. 4 by SA over m-subsets from a random start; moves swap a pruned and a kept sample.

    Energy ``||s||``.  ``T0`` is set so a typical uphill swap from a near-zero sum (its size is
    the median ``||S_j - S_i||`` of random pairs) is accepted with probability ~0.3 at the start;
    cooling is geometric down to ``T0 * 1e-4``.
    """
    n = rows.n
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, m, replace=False)] = True
    an = _Anneal(rows, q, mask, clock, rng)
    t0 = typical_step(rows, q, rng) / math.log(1 / ANNEAL_ACCEPT0)

    def propose(b: int) -> tuple[np.ndarray, np.ndarray]:
        sp = an.split
        i = sp.members[rng.integers(0, sp.size, b)]
        j = sp.members[sp.size + rng.integers(0, n - sp.size, b)]
        return i, j

    def delta_energy(i: np.ndarray, j: np.ndarray, new: np.ndarray) -> np.ndarray:
        return np.sqrt(new) - math.sqrt(an.ns2)

    mask = an.run(propose, delta_energy, lambda: (an.ns2, 0.0), t0, t0 * ANNEAL_COOL)
    return mask, an.evaluated


def anneal_epsilon(
    rows: Rows, q: np.ndarray, eps: float, clock: Clock, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Eq. 3 by penalty SA from the empty set, returning the best FEASIBLE set visited.

    Moves: add, remove or swap (equally likely; only valid kinds when a side is empty).  Energy
    ``-|W| + mu * max(0, ||s|| - epsilon) / step`` with ``step`` the median ``||S_j - S_i||``:
    infeasible states are allowed, so the chain can cross barriers that a feasibility-
    preserving walk cannot (e.g. when every single row is longer than epsilon), and the
    penalty weight ``mu`` grows from 1 to 1e4 over the schedule.  Temperature is in units of
    one sample, cooling geometrically from 1 to 0.01.  A chain that ends just infeasible is
    repaired by greedy removals and kept if that beats the best feasible state visited.
    """
    n = rows.n
    an = _Anneal(rows, q, np.zeros(n, dtype=bool), clock, rng)
    eps2 = (eps * (1.0 - 1e-9)) ** 2
    step = typical_step(rows, q, rng)

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
        s = rows.masked_sum(end)
        if float(s @ s) <= eps2 or not end.any():
            break
        score = 2.0 * rows.matvec(s) - q  # ||s||^2 - ||s - S_i||^2
        score[~end | (q == 0.0)] = -np.inf  # dropping an all-zero row never helps
        if not np.isfinite(score).any():
            break
        end[int(np.argmax(score))] = False
    if float(s @ s) <= eps2 and int(np.count_nonzero(end)) > int(np.count_nonzero(mask)):
        mask = end
    return mask, an.evaluated


class Anneal(Solver):
    name = "anneal"
    help = "the paper's simulated annealing"

    def cardinality(
        self, rows: Rows, q: np.ndarray, m: int, clock: Clock, rng: np.random.Generator, proposals: int | None = None
    ) -> tuple[np.ndarray, int]:
        return anneal_cardinality(rows, q, m, clock, rng)

    def epsilon(
        self, rows: Rows, q: np.ndarray, eps: float, clock: Clock, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        return anneal_epsilon(rows, q, eps, clock, rng)
