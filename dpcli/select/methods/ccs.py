"""Coverage-centric coreset selection (Zheng et al., ICLR 2023) as its reference code does it.

Reference: github.com/haizhongzheng/Coverage-centric-coreset-selection @ b37f166
(``core/data/Coreset.py``: ``mislabel_mask``, ``stratified_sampling``, ``bin_allocate``).
Difficulty is the area under the margin (AUM): the sum over every training epoch of
``p_y - max_{c != y} p_c`` from the training forward pass.  The ``int(beta * n)`` lowest-AUM samples
(hard, likely mislabelled) are removed first; the rest is split into 50 equal-width AUM strata, the
keep budget is allocated smallest stratum first, and each stratum is sampled uniformly (seeded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.base import Context, Selector
from dpcli.select.scoring import check_count

if TYPE_CHECKING:
    from dpcli.config import PruneConfig

STRATA = 50  # hard-coded in the reference's stratified_sampling


def ccs_cutoff(ratio: float) -> float:
    """The hard cutoff beta (share of ALL samples removed hardest-first) for a prune ratio.

    Published: CIFAR-10 90 % -> 0.3, ImageNet 90 % -> 0.3 and 80 % -> 0.2.  All three lie on
    ``beta = ratio - 0.6``; dpcli uses that line for every ratio and dataset (0 up to 60 % pruned),
    which is an extrapolation below 80 % (docs/baselines.md)."""
    return float(np.clip(ratio - 0.6, 0.0, 0.4))


def resolve_cutoff(cfg: "PruneConfig", m: int, n: int) -> float:
    """``--hard-cutoff``: a share B, ``Fx`` (F times the prune ratio) or auto (:func:`ccs_cutoff`)."""
    share = m / n
    if cfg.cutoff_ratio is not None:
        return cfg.cutoff_ratio * share
    return ccs_cutoff(share) if cfg.cutoff is None else float(cfg.cutoff)


def aum(margin: np.ndarray) -> np.ndarray:
    """Area under the margin: the per-sample sum of the recorded per-epoch margins (low = hard)."""
    margin = np.asarray(margin, dtype=np.float64)
    if np.isnan(margin).any():
        raise DpcliError("AUM needs the margin of every sample at every epoch; train on the full dataset")
    return margin.sum(axis=0)


def bin_allocate(num: int, counts: np.ndarray) -> np.ndarray:
    """The reference's budget split: strata in ascending size (stable on ties) each take
    ``min(size, rest // strata left)``; what a small stratum cannot use passes on to the larger ones."""
    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(counts, kind="stable")
    budgets = np.zeros(len(counts), dtype=np.int64)
    rest = int(num)
    for i, b in enumerate(order):  # one step per stratum (50), not per sample
        budgets[b] = min(int(counts[b]), rest // (len(counts) - i))
        rest -= int(budgets[b])
    return budgets


def strata_of(s: np.ndarray, strata: int = STRATA) -> np.ndarray:
    """Equal-width bins on ``[min, 1.0001 max)``, half-open, edges ``lo + k * step`` as the reference.

    The reference's ``* 1.0001`` leaves the maximum out of every bin when ``max <= 0``; dpcli then
    widens the range additively instead, so no sample is lost (documented difference)."""
    lo, top = float(s.min()), float(s.max())
    hi = top * 1.0001 if top > 0 else top + 1e-4 * max(abs(top), top - lo, 1e-12)
    step = (hi - lo) / strata
    edges = np.array([lo + k * step for k in range(strata + 1)])
    return np.searchsorted(edges, s, side="right") - 1  # == strata (never sampled) only above hi


def ccs_select(
    score: np.ndarray, m: int, rng: np.random.Generator, *, cutoff: float, strata: int = STRATA
) -> np.ndarray:
    """The pruned mask: cut the ``int(cutoff * n)`` lowest scores, stratify the rest, sample the strata."""
    score = np.asarray(score, dtype=np.float64)
    n = len(score)
    check_count(m, n)
    keep_n = n - m
    cut = min(int(cutoff * n), m)
    easy = np.argsort(score, kind="stable")[cut:]
    keep = np.zeros(n, dtype=bool)
    if keep_n == 0:
        return ~keep
    bins = strata_of(score[easy], strata)
    budgets = bin_allocate(keep_n, np.bincount(bins, minlength=strata + 1)[:strata])
    for k in range(strata):  # the reference's draw order: stratum 0..49, one permutation each
        pool = np.flatnonzero(bins == k)
        keep[easy[pool[rng.permutation(len(pool))][: budgets[k]]]] = True
    short = keep_n - int(keep.sum())
    if short:  # only if strata were too small to take the budget; never with the additive fix above
        free = easy[~keep[easy]]
        keep[rng.choice(free, size=short, replace=False)] = True
    return ~keep


class CutoffStrata(Selector):
    """CCS's shape, shared with its ``ccs-loss`` variant: resolve the hard cutoff, score every sample's
    difficulty from the training dynamics, and let ``prune`` cut and stratify (seeded)."""

    coverage = True
    auto_cutoff = True
    needs = frozenset({"dynamics"})
    label = ""  # the rule as recorded in mask.h5, formatted with the cutoff

    def difficulty(self, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def prune(self, difficulty: np.ndarray, m: int, rng: np.random.Generator, cutoff: float) -> np.ndarray:
        raise NotImplementedError

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        assert m is not None  # no epsilon mode: base.select refuses --epsilon for it
        cutoff = resolve_cutoff(self.cfg, m, ctx.n)
        pruned = self.prune(self.difficulty(ctx), m, np.random.default_rng(self.cfg.seed), cutoff)
        return pruned, self.label.format(cutoff=cutoff)


class CCS(CutoffStrata):
    name = "ccs"
    help = "CCS as published: AUM strata (50, equal width) after a hard AUM cutoff (--hard-cutoff, default auto)"
    label = "ccs(aum, cutoff={cutoff:g})"

    def difficulty(self, ctx: Context) -> np.ndarray:
        return aum(ctx.dynamics().require("margin", "--method ccs"))

    def prune(self, difficulty: np.ndarray, m: int, rng: np.random.Generator, cutoff: float) -> np.ndarray:
        return ccs_select(difficulty, m, rng, cutoff=cutoff)
