"""An independent allocation for the quota tests: exact fractions, no numpy, no dpcli code."""

from __future__ import annotations

from fractions import Fraction


def largest_remainder(sizes: list[int], total: int, caps: list[int] | None = None) -> list[int]:
    """``total`` split over groups by size: each the floor of its exact share (at most its cap), then one more
    to the largest remainders (ties to the lower index) while the cap allows, in rounds until all is given."""
    caps = list(sizes) if caps is None else list(caps)
    whole = sum(sizes)
    if whole == 0:
        return [0] * len(sizes)
    exact = [Fraction(s * total, whole) for s in sizes]
    counts = [min(int(e), c) for e, c in zip(exact, caps)]
    order = sorted(range(len(sizes)), key=lambda g: (-(exact[g] - counts[g]), g))
    rest = total - sum(counts)
    for g in order:
        if rest and counts[g] < caps[g]:
            counts[g], rest = counts[g] + 1, rest - 1
    for g in range(len(sizes)):  # capped groups left some over: the first groups with room take it
        take = min(rest, caps[g] - counts[g])
        counts[g], rest = counts[g] + take, rest - take
    assert rest == 0
    return counts


def class_quotas(sizes: list[int], m: int) -> list[int]:
    """Each class its share of ``m``, none emptied while ``m`` leaves every class a sample."""
    keeps_one = m <= sum(sizes) - len(sizes)
    return largest_remainder(sizes, m, [s - 1 for s in sizes] if keeps_one else None)


def quantile_bins(difficulty: list[float], strata: int) -> list[int]:
    """The stratum of each sample: its rank by difficulty (ties by position) times strata // count."""
    ranked = sorted(range(len(difficulty)), key=lambda i: (difficulty[i], i))
    bins = [0] * len(difficulty)
    for rank, i in enumerate(ranked):
        bins[i] = rank * strata // len(ranked)
    return bins
