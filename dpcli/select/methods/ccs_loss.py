"""A variant of CCS (Zheng et al., ICLR 2023) on the mean training loss, kept as ``ccs-loss``.

The authors rank by the area under the margin (that is ``ccs``); this variant stratifies and cuts on
the mean training loss (hardest = highest loss), with strata edges from ``linspace`` and a ``round``ed
cutoff count.  See docs/baselines.md.
"""

from __future__ import annotations

import numpy as np

from dpcli.select.base import Context
from dpcli.select.methods.ccs import CutoffStrata
from dpcli.select.scoring import check_count


def ccs_loss(
    difficulty: np.ndarray, m: int, rng: np.random.Generator, *, cutoff: float, strata: int = 50
) -> np.ndarray:
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


class CCSLoss(CutoffStrata):
    name = "ccs-loss"
    help = "variant of CCS stratified over the mean training loss (not the authors' score)"
    label = "ccs-loss(cutoff={cutoff:g})"

    def difficulty(self, ctx: Context) -> np.ndarray:
        return ctx.difficulty()

    def prune(self, difficulty: np.ndarray, m: int, rng: np.random.Generator, cutoff: float) -> np.ndarray:
        return ccs_loss(difficulty, m, rng, cutoff=cutoff)
