"""DUAL with Beta sampling (Cho et al., ICML 2025), the paper's variant for high prune rates.

Reference: github.com/behaapyy/dual-pruning @ 4ab525d (``exp_cifar/data_subset.py::beta_sampling``).
``m_i`` = mean true-class probability over the first 30 epochs; ``anchor`` = mean of m over the 10
highest DUAL scores; ``b = 15 (1 - anchor)(1 - r^4)``, ``a = 16 - b`` (r = prune ratio); the kept set is
drawn without replacement with probability proportional to ``BetaPDF(m_i; a, b) * score_i``, seeded by
``--solver-seed`` (the reference never seeds numpy).  The reference's README passes the argsort mask where the
score belongs; dpcli uses the score, as intended.
"""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.base import Context, Selector
from dpcli.select.methods.dual import dual_scores, true_class_probs
from dpcli.select.scoring import check_count

C_D = 4.0  # the exponent c_d of the prune rate (reference default)


def beta_weights(p: np.ndarray, score: np.ndarray, prune_rate: float, T: int = 30) -> np.ndarray:
    """Unnormalised sampling weights ``BetaPDF(m; a, b) * score``."""
    from scipy.stats import beta

    m = np.asarray(p, dtype=np.float64)[:T].mean(axis=0)
    top = np.argsort(score, kind="stable")[-10:]
    anchor = m[top].mean()
    b = 15.0 * (1.0 - anchor) * (1.0 - prune_rate**C_D)
    a = 16.0 - b
    with np.errstate(divide="ignore", invalid="ignore"):
        w = beta.pdf(m, a, b) * np.asarray(score, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise DpcliError(
            f"DUAL's Beta weights are not finite (a={a:.3g}, b={b:.3g}: the top-scored samples are "
            f"never wrong); use --method dual"
        )
    return w


def dual_beta_select(p: np.ndarray, score: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """The pruned mask: ``n - m`` samples drawn by weight; if fewer have a positive weight (the reference
    fails there), all of those are kept and the rest are the highest-scoring others."""
    n = len(score)
    check_count(m, n)
    keep_n = n - m
    w = beta_weights(p, score, m / n)
    keep = np.zeros(n, dtype=bool)
    if keep_n == 0:
        return ~keep
    positive = int(np.count_nonzero(w > 0))
    if positive >= keep_n:
        keep[rng.choice(n, size=keep_n, replace=False, p=w / w.sum())] = True
        return ~keep
    keep[w > 0] = True
    rest = np.flatnonzero(~keep)
    keep[rest[np.argsort(score[rest], kind="stable")[len(rest) - (keep_n - positive) :]]] = True
    return ~keep


def beta_draw(p: np.ndarray, m: int, seed: int) -> np.ndarray:
    """The pruned mask of ``--method dual-beta --solver-seed seed`` on true-class probabilities ``p``
    (epochs x rows)."""
    return dual_beta_select(p, dual_scores(p), m, np.random.default_rng(seed))


class DUALBeta(Selector):
    name = "dual-beta"
    needs = frozenset({"dynamics"})
    help = "DUAL with Beta sampling around the easy side, seeded by --solver-seed (the paper's high-rate variant)"

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        assert m is not None  # no epsilon mode: base.select refuses --epsilon for it
        return beta_draw(true_class_probs(ctx.dynamics().loss), m, self.cfg.seed), self.name
