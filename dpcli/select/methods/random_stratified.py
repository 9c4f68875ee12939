"""Class-stratified random pruning: random within each class, every class pruned by the same share.

The reference a class-balanced selector must beat (plain random lets a class's share drift by chance,
which at 90 % pruned costs a network more than the selection rule can gain), and one of ``auto``'s
candidates.  Per-class counts are :func:`proportional_counts` of the class sizes (largest remainder).
"""

from __future__ import annotations

import numpy as np

from dpcli.select.base import Context, Selector
from dpcli.select.scoring import check_count, proportional_counts


def stratified_prune(labels: np.ndarray, m: int, seed: int) -> np.ndarray:
    """The pruned mask: ``m`` samples, each class's share of them proportional to its size, drawn at random."""
    labels = np.asarray(labels)
    check_count(m, len(labels))
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    counts = proportional_counts(sizes, m)
    rng = np.random.default_rng(seed)
    # one permutation, then the first counts[c] members of each class in that order: no loop over samples
    order = rng.permutation(len(labels))
    by_class = order[np.argsort(inverse[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - np.repeat(starts, sizes)
    return rank < counts[inverse]


class RandomStratified(Selector):
    name = "random-stratified"
    help = "at random within each class, every class pruned by the same share (seeded by --solver-seed)"

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        assert m is not None  # no epsilon mode: base.select refuses --epsilon for it
        return stratified_prune(ctx.labels, m, self.cfg.seed), self.name
