"""What every solver shares: the result type, option checks and a budgeted, throttled clock."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dpcli.errors import DpcliError

from dpcli.select.registry import SOLVERS  # noqa: F401 (re-exported)
BRUTE_MAX_N = 20
# anneal (and swap's annealing phase): proposals without a budget = clamp(300 n, MIN, MAX); the start
# temperature accepts a typical uphill swap (median ||S_j - S_i||) with probability ACCEPT0; cools by COOL.
ANNEAL_MIN_MOVES = 5_000
ANNEAL_MAX_MOVES = 20_000_000
ANNEAL_ACCEPT0 = 0.3
ANNEAL_COOL = 1e-4

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




def check_solver(solver: str, n: int) -> None:
    if solver not in SOLVERS:
        raise DpcliError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver == "brute" and n > BRUTE_MAX_N:
        raise DpcliError(f"the brute solver enumerates all subsets and accepts at most {BRUTE_MAX_N} "
                         f"samples, got {n}; use --solver swap")


def check_budget(time_budget: float | None) -> float | None:
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
class Clock:
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



def typical_step(S: np.ndarray, rng: np.random.Generator, pairs: int = 256) -> float:
    """Median ``||S_j - S_i||`` over random pairs: the natural energy scale of one swap."""
    n = S.shape[0]
    i, j = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
    diff = S[j].astype(np.float64) - S[i].astype(np.float64)
    step = float(np.median(np.linalg.norm(diff, axis=1)))
    return step if step > 0 else 1.0
