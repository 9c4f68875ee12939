"""Herding (Welling, 2009; Chen et al., 2010), class-wise, in the final model's feature space.

Per class, greedily keep the sample that brings the running mean of the kept samples closest to the
class mean (the textbook rule).  DeepCore's ``herding.py`` instead takes the argmax of that distance
(the farthest point), so its kept sets differ from these; see docs/baselines.md.
"""

from __future__ import annotations

import numpy as np

from dpcli.select.base import Context, Selector
from dpcli.select.scoring import check_count, proportional_counts


def herding(features: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """The pruned mask: each class keeps its share, chosen to follow the class mean."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(labels)
    check_count(m, n)
    classes, sizes = np.unique(labels, return_counts=True)
    keep_counts = sizes - proportional_counts(sizes, m)
    keep = np.zeros(n, dtype=bool)
    for c, k in zip(classes, keep_counts):
        idx = np.flatnonzero(labels == c)
        X = features[idx]
        mu = X.mean(0)
        sq = np.einsum("ij,ij->i", X, X)
        total = np.zeros(X.shape[1])
        free = np.ones(len(idx), dtype=bool)
        for t in range(int(k)):
            # ||mu - (total + x)/(t+1)||^2 up to terms constant in x
            target = (t + 1) * mu - total
            cost = sq - 2.0 * (X @ target)
            cost[~free] = np.inf
            j = int(np.argmin(cost))
            free[j] = False
            total += X[j]
        keep[idx[~free]] = True
    return ~keep


class Herding(Selector):
    name = "herding"
    needs = frozenset({"features"})
    help = "class-wise herding towards each class mean of the final features"

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        assert m is not None  # no epsilon mode: base.select refuses --epsilon for it
        return herding(ctx.features(), ctx.labels, m), self.name
