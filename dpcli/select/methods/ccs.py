"""Coverage-centric coreset selection (Zheng et al., ICLR 2023) on the mean training loss."""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.base import Context, Selector
from dpcli.select.scoring import check_count


def ccs_cutoff(ratio: float) -> float:
    """CCS's hard-example cutoff beta for a prune ratio (CIFAR-10 settings: none up to 50 % pruned,
    10 % of the hardest at 70 %, 30 % at 90 %; linear in between)."""
    return float(np.interp(ratio, [0.0, 0.5, 0.7, 0.9, 1.0], [0.0, 0.0, 0.1, 0.3, 0.4]))


def ccs(difficulty: np.ndarray, m: int, rng: np.random.Generator, *, cutoff: float,
        strata: int = 50) -> np.ndarray:
    """Drop the hardest ``cutoff`` share, split the difficulty range of the rest into ``strata``
    equal-width bins, give every bin an equal share of the keep budget (smallest bins first, their
    unused share passed on), and sample each bin's share at random."""
    difficulty = np.asarray(difficulty, dtype=np.float64)
    n = len(difficulty)
    check_count(m, n)
    keep_budget = n - m
    order = np.lexsort((np.arange(n), -difficulty))
    n_cut = min(int(round(cutoff * n)), n - keep_budget)
    candidates = np.sort(order[n_cut:])
    d = difficulty[candidates]
    edges = np.linspace(d.min(), d.max(), strata + 1)
    bins = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, strata - 1)
    members = [candidates[bins == b] for b in range(strata)]
    keep = np.zeros(n, dtype=bool)
    left = keep_budget
    for rank, b in enumerate(sorted(range(strata), key=lambda b: (len(members[b]), b))):
        share = min(len(members[b]), left // (strata - rank))
        if share:
            keep[rng.choice(members[b], size=share, replace=False)] = True
        left -= share
    return ~keep


class CCS(Selector):
    name = "ccs"
    needs = frozenset({"dynamics"})
    help = "stratified over difficulty with a hard cutoff (--hard-cutoff, default auto)"

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        if m is None:
            raise DpcliError("--method ccs needs --prune-ratio or --prune-count")
        cutoff = ccs_cutoff(m / ctx.n) if self.cfg.cutoff is None else self.cfg.cutoff
        pruned = ccs(ctx.difficulty(), m, np.random.default_rng(self.cfg.seed), cutoff=cutoff)
        return pruned, f"ccs(cutoff={cutoff:g})"
