"""Moderate coreset (Xia et al., ICLR 2023): keep the band of samples around the median distance.

Reference: github.com/tmllab/2023_ICLR_Moderate-DS @ 7f64d31 (``selection.py``).  Each sample's score
is the Euclidean distance of its feature to its class's element-wise median feature; the samples
are ranked by it over the WHOLE dataset (not per class) and the middle ``rate`` fraction is kept:
``order[round(n (0.5 - rate/2)) : ...]``.  The reference's upper edge is ``round(n (0.5 + rate/2))``,
which can keep one sample more or fewer than ``rate n``; dpcli keeps exactly ``n - m`` from the same
lower edge.  Features are the final model's penultimate layer in eval mode (the reference forgets
``model.eval()``, so its BatchNorm uses batch statistics).
"""

from __future__ import annotations

import numpy as np

from dpcli.select.base import Context, Selector
from dpcli.select.scoring import check_count


def median_distance(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``||f_i - median_{j: y_j = y_i} f_j||_2`` per sample."""
    features = np.asarray(features)
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    protos = np.stack([np.median(features[labels == c], axis=0) for c in classes])  # one per class
    return np.linalg.norm(features.astype(np.float64) - protos[inverse].astype(np.float64), axis=1)


def moderate_select(distance: np.ndarray, m: int) -> np.ndarray:
    """The pruned mask: keep the ``n - m`` samples of the global ranking's middle band."""
    n = len(distance)
    check_count(m, n)
    rate = (n - m) / n
    lo = round(n * (0.5 - rate / 2))  # Python round (half to even), as the reference
    lo = min(lo, m)
    order = np.argsort(distance, kind="stable")
    pruned = np.ones(n, dtype=bool)
    pruned[order[lo : lo + n - m]] = False
    return pruned


class Moderate(Selector):
    name = "moderate"
    needs = frozenset({"features"})
    help = "Moderate coreset: keep the band around the median distance to the class median feature"

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        assert m is not None  # no epsilon mode: base.select refuses --epsilon for it
        return moderate_select(median_distance(ctx.features(), ctx.labels), m), self.name
