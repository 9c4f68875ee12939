"""What every solver shares: the Solver base class (the registry), the result type, option checks and a
budgeted, throttled clock."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.registry import SOLVERS

if TYPE_CHECKING:
    from dpcli.select.linalg import Rows

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


class Solver:
    """One way to solve Eq. 3 / Eq. 4 on S.  Subclass with a ``name`` to register it (``prune --solver NAME``).

    A solver reads S through :class:`~dpcli.select.linalg.Rows` (S on its device) and ``q = ||S_i||^2``, and
    returns the PRUNED mask and a count of its work (see :attr:`Selection.iterations`); the entry points in
    :mod:`dpcli.select.solvers` validate, time and certify around it.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    max_n: ClassVar[int | None] = None  # the most samples it accepts (None: any)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            SOLVERS.add(cls)

    def check(self, n: int) -> None:
        if self.max_n is not None and n > self.max_n:
            raise DpcliError(f"the {self.name} solver accepts at most {self.max_n} samples, got {n}; use --solver swap")

    def cardinality(
        self,
        rows: "Rows",
        q: np.ndarray,
        m: int,
        clock: "Clock",
        rng: np.random.Generator,
        proposals: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """Eq. 4: exactly ``m`` pruned, smallest ``||sum S_i||``; ``proposals`` caps annealing work, if any."""
        raise NotImplementedError

    def epsilon(
        self, rows: "Rows", q: np.ndarray, eps: float, clock: "Clock", rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """Eq. 3: as many pruned as possible with ``||sum S_i|| <= eps`` (repaired and certified by the caller)."""
        raise NotImplementedError


def get_solver(name: str, n: int) -> Solver:
    """The registered solver ``name``, checked against the problem size."""
    s = SOLVERS.get(name)()
    s.check(n)
    return s


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


def typical_step(rows, q: np.ndarray, rng: np.random.Generator, pairs: int = 256) -> float:
    """Median ``||S_j - S_i||`` over random pairs (``rows``: a :class:`~dpcli.select.linalg.Rows`): the
    natural energy scale of one swap."""
    n = q.size
    i, j = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
    idx = np.concatenate([i, j])
    G = rows.gram(idx)
    cross = G[np.arange(pairs), pairs + np.arange(pairs)]
    step = float(np.median(np.sqrt(np.maximum(q[i] + q[j] - 2.0 * cross, 0.0))))
    return step if step > 0 else 1.0
