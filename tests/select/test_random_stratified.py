"""``--method random-stratified``: every class pruned by its proportional share, uniformly at random within it."""

from __future__ import annotations

import numpy as np
import pytest

import dpcli.api as dp
from dpcli.errors import DpcliError
from dpcli.select.linalg import subset_norm
from dpcli.select.methods.random_stratified import stratified_prune


def test_each_class_loses_its_proportional_share():
    y = np.repeat([2, 5, 9], [7, 30, 63])[np.random.default_rng(0).permutation(100)]
    pruned = stratified_prune(y, 40, seed=1)
    # exact shares 2.8, 12, 25.2: floors 2 + 12 + 25 = 39, the one left goes to the largest remainder (class 2)
    assert [int(np.sum(pruned & (y == c))) for c in (2, 5, 9)] == [3, 12, 25]
    assert stratified_prune(y, 0, 1).sum() == 0 and stratified_prune(y, 100, 1).all()
    with pytest.raises(DpcliError, match="prune count must lie in"):
        stratified_prune(y, 101, 1)


def test_within_a_class_every_sample_is_equally_likely():
    y = np.repeat([0, 1], [20, 80])
    hits = np.zeros(100)
    draws = 2000
    for seed in range(draws):
        hits += stratified_prune(y, 50, seed)
    for c, k, size in ((0, 10, 20), (1, 40, 80)):
        p = k / size  # each of the class's samples is pruned with probability count / size
        freq = hits[y == c] / draws
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / draws)), (c, freq.min(), freq.max())
    assert not np.array_equal(stratified_prune(y, 50, 0), stratified_prune(y, 50, 1))
    assert np.array_equal(stratified_prune(y, 50, 3), stratified_prune(y, 50, 3))


def test_the_method_is_the_function_seeded_by_solver_seed_and_certified():
    rng = np.random.default_rng(4)
    S = rng.normal(size=(90, 6)).astype(np.float32)
    y = np.repeat([0, 1, 2], [10, 20, 60])
    sel = dp.prune(S, prune_count=45, labels=y, method="random-stratified", solver_seed=7)
    assert np.array_equal(~sel.keep, stratified_prune(y, 45, 7))
    assert sel.norm == pytest.approx(subset_norm(S, ~sel.keep), rel=1e-6)  # ||sum of the pruned S_i||
    assert np.bincount(y[~sel.keep]).tolist() == [5, 10, 30]
