"""The baseline selection rules against plain-loop reimplementations of their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from dpcli.errors import DpcliError
from dpcli.select import scoring
from dpcli.select.methods.ccs import ccs_cutoff
from dpcli.select.methods.ccs_loss import ccs_loss as ccs
from dpcli.select.methods.forgetting import forgetting_counts
from dpcli.select.methods.herding import herding
from dpcli.select.methods.tdds_loss import tdds_scores
from dpcli.select.signals import el2n


def test_forgetting_counts_follow_the_definition():
    rng = np.random.default_rng(0)
    correct = rng.integers(0, 2, size=(7, 40)).astype(np.uint8)
    correct[:, 5] = 0  # never learned
    correct[2, 6] = 255  # unseen in one epoch: the transition spans the gap
    expected = []
    for i in range(40):
        seq = [int(c) for c in correct[:, i] if c != 255]
        if 1 not in seq:
            expected.append(7 + 1)
        else:
            expected.append(sum(1 for a, b in zip(seq, seq[1:]) if a == 1 and b == 0))
    np.testing.assert_array_equal(forgetting_counts(correct), expected)


def test_prune_lowest_breaks_ties_by_index():
    s = np.array([3.0, 1.0, 1.0, 2.0, 0.5])
    np.testing.assert_array_equal(np.flatnonzero(scoring.prune_lowest(s, 3)), [1, 2, 4])
    with pytest.raises(DpcliError):
        scoring.prune_lowest(s, 6)


def test_proportional_counts():
    sizes = np.array([10, 3, 7, 0, 5])
    for total in range(26):
        c = scoring.proportional_counts(sizes, total)
        assert c.sum() == total and np.all(c <= sizes) and np.all(c >= 0)
        assert np.all(np.abs(c - sizes * total / sizes.sum()) < 1 + 1e-9)


def test_herding_matches_a_plain_greedy_loop():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 4))
    y = np.repeat([0, 1, 2], 10)
    pruned = herding(X, y, m=15)
    keep = set()
    for c in range(3):
        idx = list(np.flatnonzero(y == c))
        mu = X[idx].mean(0)
        chosen: list[int] = []
        for _ in range(5):
            best = min((j for j in idx if j not in chosen), key=lambda j: np.linalg.norm(mu - X[chosen + [j]].mean(0)))
            chosen.append(best)
        keep |= set(chosen)
    assert set(np.flatnonzero(~pruned)) == keep


def test_el2n_and_tdds_definitions():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 0])
    np.testing.assert_allclose(el2n(probs, labels), [np.sqrt(0.09 + 0.04 + 0.01), np.sqrt(0.81 + 0.01 + 0.64)])
    rng = np.random.default_rng(2)
    loss = rng.random((8, 5))
    got = tdds_scores(loss, window=3, decay=0.5)
    delta = [loss[t - 1] - loss[t] for t in range(1, 8)]
    windows = [np.std(delta[t : t + 3], axis=0) for t in range(len(delta) - 2)]
    w = [0.5 ** (len(windows) - 1 - k) for k in range(len(windows))]
    np.testing.assert_allclose(got, sum(wi * s for wi, s in zip(w, windows)) / sum(w))


def test_ccs_cuts_the_hardest_and_covers_the_strata():
    rng = np.random.default_rng(3)
    diff = rng.random(1000) ** 3  # skewed: most samples easy
    pruned = ccs(diff, 700, np.random.default_rng(0), cutoff=0.1, strata=10)
    keep = np.flatnonzero(~pruned)
    assert len(keep) == 300
    hardest = np.argsort(-diff)[:100]
    assert not set(hardest) & set(keep)
    # equal-width strata of the rest; a stratum either keeps all its samples or its equal share
    rest = np.setdiff1d(np.arange(1000), hardest)
    edges = np.linspace(diff[rest].min(), diff[rest].max(), 11)
    bins = np.clip(np.searchsorted(edges, diff, side="right") - 1, 0, 9)
    sizes = np.array([np.sum(bins[rest] == b) for b in range(10)])
    kept = np.array([np.sum(bins[keep] == b) for b in range(10)])
    full = kept == sizes
    assert np.all(kept[~full] >= kept[full].max(initial=0)) and kept[~full].max() - kept[~full].min() <= 1
    assert ccs_cutoff(0.3) == 0 and ccs_cutoff(0.7) == pytest.approx(0.1)
    assert ccs_cutoff(0.9) == pytest.approx(0.3)


def test_random_prune_count_and_seed():
    a = scoring.random_prune(50, 20, np.random.default_rng(5))
    b = scoring.random_prune(50, 20, np.random.default_rng(5))
    assert a.sum() == 20 and np.array_equal(a, b)


def test_proportional_counts_refuses_overflow():
    with pytest.raises(DpcliError):
        scoring.proportional_counts(np.array([1, 2]), 4)


def _lowest_by_loop(s, m):
    """The m lowest scores by repeated minimum search, ties to the smaller index: the definition."""
    left, out = list(range(len(s))), []
    for _ in range(m):
        best = left[0]
        for i in left[1:]:
            if s[i] < s[best]:
                best = i
        out.append(best)
        left.remove(best)
    return out


@pytest.mark.parametrize("m", [0, 1, 4, 9])
def test_prune_lowest_matches_a_plain_loop(m):
    rng = np.random.default_rng(m)
    s = rng.integers(0, 4, 9).astype(float)  # many ties: the index rule decides
    s[rng.integers(0, 9)] = -np.inf
    expected = np.zeros(9, bool)
    expected[_lowest_by_loop(s, m)] = True
    np.testing.assert_array_equal(scoring.prune_lowest(s, m), expected)
