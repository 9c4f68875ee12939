"""The swap solver's batched pool search: the exact gain of a batch of swaps, batches that never share a row,
and a search that ends at a true swap local optimum, all checked against sums recomputed from S."""

from __future__ import annotations

import numpy as np
import pytest

from dpcli.select.solvers._swap_search import _batch_gain, _disjoint, _pool_search


def _problem(n: int, d: int, members: int, seed: int, mean: float = 0.0):
    """Rows with a shared mean direction (so ``||s||`` starts large), a random set A, and the float64 pieces."""
    rng = np.random.default_rng(seed)
    S = rng.standard_normal((n, d)) * rng.lognormal(0, 1, (n, 1)) + mean
    A = np.zeros(n, dtype=bool)
    A[rng.choice(n, members, replace=False)] = True
    return S, A, S @ S.T


def _ns2(S: np.ndarray, A: np.ndarray) -> float:
    s = S[A].sum(0)
    return float(s @ s)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_batch_gain_is_the_exact_change_of_every_prefix(seed):
    """The prefix _batch_gain picks is the one whose recomputed ||sum S_A||^2 falls most, by that amount."""
    S, A, G = _problem(100, 7, 50, seed, mean=0.3)
    rng = np.random.default_rng(seed + 10)
    T = 20 if seed else 45  # seed 0: longer than the 32 pairs tried first
    po = rng.permutation(np.flatnonzero(A))[:T]
    pj = rng.permutation(np.flatnonzero(~A))[:T]
    s = S[A].sum(0)
    vP = S @ s
    before = float(s @ s)
    after = []
    for t in range(1, T + 1):
        B = A.copy()
        B[po[:t]], B[pj[:t]] = False, True
        after.append(_ns2(S, B))
    t, gain, net = _batch_gain(po, pj, G, vP, np.zeros(len(S)))
    assert t == int(np.argmin(after)) + 1
    assert gain == pytest.approx(before - after[t - 1], rel=1e-9, abs=1e-9 * before)
    assert net == pytest.approx(gain)


def test_a_batch_gain_counts_the_rounding_allowance_of_every_row_in_it():
    S, A, G = _problem(30, 5, 12, 3, mean=0.5)
    po, pj = np.flatnonzero(A)[:4], np.flatnonzero(~A)[:4]
    vP = S @ S[A].sum(0)
    slack = np.random.default_rng(0).random(30) * 1e-3
    for t_, gain, net in [_batch_gain(po[:T], pj[:T], G, vP, slack) for T in (1, 4)]:
        assert net == pytest.approx(gain - slack[po[:t_]].sum() - slack[pj[:t_]].sum())


def test_disjoint_keeps_first_claims_and_never_two_swaps_on_one_row():
    po = np.array([1, 1, 2, 3, 2, 4, 5])
    pj = np.array([9, 8, 9, 7, 6, 7, 6])
    o, j = _disjoint(po, pj)
    assert o.tolist() == [1, 3] and j.tolist() == [9, 7]  # (2,9): 9 named before; (5,6): 6 named first by (2,6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        o, j = _disjoint(rng.integers(0, 30, 60), rng.integers(30, 60, 60))
        assert o.size and np.unique(o).size == o.size and np.unique(j).size == j.size


@pytest.mark.parametrize("seed,mean", [(0, 0.0), (1, 0.4), (2, 1.0), (3, 0.2)])
def test_the_pool_search_ends_at_a_swap_local_optimum_with_its_sum_exact(seed, mean):
    """After the search: |A| kept, its tracked ||s||^2 and S_P s equal the sums recomputed from S, and no single
    swap (brute force over all pairs) improves ||s||^2 beyond the tolerance."""
    n = 700  # more than twice the focus rows: focused and whole-block rounds, batches and single swaps
    S, A, G = _problem(n, 24, 300, seed, mean)
    s = S[A].sum(0)
    vP = S @ s
    inA = A.copy()
    ns2, moves = _pool_search(G, vP, inA, float(s @ s), np.zeros(n), None)
    assert moves > 0 and inA.sum() == A.sum()
    exact = _ns2(S, inA)
    assert ns2 == pytest.approx(exact, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(vP, S @ S[inA].sum(0), rtol=1e-9, atol=1e-9 * np.abs(vP).max())
    q = np.diag(G)
    v = S @ S[inA].sum(0)
    o, j = np.flatnonzero(inA), np.flatnonzero(~inA)
    gain = (2.0 * v[o] - q[o])[:, None] - (2.0 * v[j] + q[j])[None, :] + 2.0 * G[np.ix_(o, j)]
    assert gain.max() <= 1e-9 * exact + 1e-12
    assert exact < _ns2(S, A)


def test_batches_reach_the_local_optimum_with_fewer_rounds_than_single_swaps(monkeypatch):
    """From a start far from the optimum a round applies many swaps at once: the search needs far fewer
    rounds than the swaps it applies (one swap per round would need as many)."""
    from dpcli.select.solvers import _swap_search

    rounds = []
    real = _swap_search._search_block

    def counted(*args):
        out = real(*args)
        rounds.append(out[0])
        return out

    monkeypatch.setattr(_swap_search, "_search_block", counted)
    S, A, G = _problem(1200, 16, 500, 5, mean=0.6)
    s = S[A].sum(0)
    inA = A.copy()
    _, moves = _pool_search(G, S @ s, inA, float(s @ s), np.zeros(len(S)), None)
    assert moves >= 100 and len(rounds) < moves / 4, (moves, len(rounds))
    assert max(rounds) >= 32
