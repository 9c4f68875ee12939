"""Each faithful baseline against a plain transcription of its authors' reference code (the oracles
below mirror the reference arithmetic line by line; see docs/baselines.md for repositories and commits).

Inputs are synthetic and continuous, so there are no exact ties; kept sets must be identical at
30/50/70/90 % pruned.  Ties, where they matter, are broken by a stable sort (lower index first in
ascending order), as documented.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import softmax
from scipy.stats import beta as beta_dist

from dpcli.config import PruneConfig
from dpcli.select.base import Context
from dpcli.select.linalg import count_from_ratio
from dpcli.select.methods import ccs, d2, dual, dual_beta, moderate, tdds
from dpcli.train.dynamics import Dynamics

RATIOS = (0.3, 0.5, 0.7, 0.9)


# ---------------------------------------------------------------- oracles (plain transcriptions)


def oracle_tdds_scores(logits, index, T=30, J=10, decay=0.9):
    """importance_evaluation.py::generate: softmax, index_add re-ordering, per-window loops."""
    P = softmax(np.asarray(logits, dtype=np.float32)[:T], axis=2)
    Q = np.zeros_like(P)
    for e in range(T):
        np.add.at(Q[e], np.asarray(index[e], dtype=int), P[e])
    P = Q
    moving = []
    k = 0
    while k < T - J + 1:
        kd = []
        for j in range(J - 1):
            kd.append(np.abs(P[k + j + 1] * (np.log(P[k + j + 1] + 1e-8) - np.log(P[k + j] + 1e-8))).sum(axis=1))
        kd = np.array(kd)
        mean = kd.sum(0) / (J - 1)
        dev = np.linalg.norm(kd - mean, axis=0)
        moving.append(dev * decay * (1 - decay) ** (T - J - k))
        k += 1
    return np.squeeze(sum(np.array(moving), 0))


def oracle_keep_tail(score, prune_rate):
    """data_subset.py: the tail of the ascending order (stable here) after int(r N) samples."""
    return np.argsort(score, kind="stable")[int(prune_rate * len(score)) :]


def oracle_aum(probs, labels):
    n = np.arange(probs.shape[1])
    p_y = probs[:, n, labels]
    other = probs.copy()
    other[:, n, labels] = 0.0
    return (p_y - other.max(axis=2)).sum(axis=0)


def oracle_ccs_bin_allocate(num, counts):
    counts = np.asarray(counts)
    order = np.argsort(counts, kind="stable")
    rest, budgets = int(num), []
    for i, c in enumerate(counts[order]):
        b = min(int(c), rest // (len(counts) - i))
        budgets.append(b)
        rest -= b
    out = np.zeros(len(counts), dtype=int)
    out[order] = budgets
    return out


def oracle_ccs_select(aum, coreset_ratio, mis_ratio, stratas=50, rng=None):
    rng = np.random.default_rng(rng)
    aum = np.asarray(aum, dtype=np.float64)
    N = len(aum)
    mis_num = int(mis_ratio * N)
    easy = np.argsort(aum, kind="stable")[mis_num:]
    s = aum[easy]
    lo, hi = s.min(), s.max() * 1.0001
    step = (hi - lo) / stratas
    masks = [(s >= lo + k * step) & (s < lo + (k + 1) * step) for k in range(stratas)]
    budgets = oracle_ccs_bin_allocate(int(coreset_ratio * N), [m.sum() for m in masks])
    sel = []
    for m, b in zip(masks, budgets):
        pool = np.nonzero(m)[0]
        sel.extend(pool[rng.permutation(len(pool))][:b])
    return easy[np.asarray(sel, dtype=int)], masks, budgets, easy


def oracle_dual_scores(target_probs, T=30, J=10):
    p = np.asarray(target_probs, dtype=np.float64)[:T]
    s = [p[i : i + J].std(axis=0, ddof=1) * 10.0 * (1.0 - p[i : i + J].mean(axis=0)) for i in range(p.shape[0] - J + 1)]
    return np.mean(s, axis=0)


def oracle_dual_beta_select(target_probs, score, prune_rate, c_d=4.0, T=30, rng=None):
    m = np.asarray(target_probs, dtype=np.float64)[:T].mean(axis=0)
    order = np.argsort(score, kind="stable")
    anchor = m[order[-10:]].mean()
    b = 15.0 * (1.0 - anchor) * (1.0 - prune_rate**c_d)
    a = 16.0 - b
    w = beta_dist.pdf(m, a, b) * np.asarray(score, dtype=np.float64)
    p = w / w.sum()
    n_keep = int(round((1 - prune_rate) * len(p)))
    return np.random.default_rng(rng).choice(len(p), size=n_keep, replace=False, p=p)


def oracle_moderate(features, labels, keep_ratio):
    F, y = np.asarray(features), np.asarray(labels)
    protos = {c: np.median(F[y == c], axis=0) for c in np.unique(y)}
    P = np.stack([protos[c] for c in y]).astype(np.float64)
    distance = np.linalg.norm(F - P, axis=1)
    n = len(distance)
    low, high = 0.5 - keep_ratio / 2, 0.5 + keep_ratio / 2
    order = np.argsort(distance, kind="stable")
    return order[round(n * low) : round(n * high)], distance


def oracle_d2_graph_density(X, s, k=5, eps=1e-7):
    X = np.asarray(X, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    n = len(X)
    D = cdist(X, X)
    Dk = D.copy()
    np.fill_diagonal(Dk, np.inf)
    nn = np.argsort(Dk, axis=1, kind="stable")[:, :k]
    E = np.zeros((n, n), dtype=bool)
    E[np.repeat(np.arange(n), k), nn.ravel()] = True
    E = E | E.T
    W = np.where(E, np.exp(-D) * np.maximum(s, eps)[None, :], 0.0)
    return W.sum(1) + s, W, D


def oracle_d2_select(X, s, budget, k=5, gamma_r=0.1):
    dens, W, D = oracle_d2_graph_density(X, s, k)
    dens = dens.copy()
    batch = []
    while len(batch) < budget:
        sel = int(np.argmax(dens))
        nbrs = np.nonzero(W[sel] > 0)[0]
        dens[nbrs] = dens[nbrs] - np.exp(-D[sel, nbrs] * gamma_r) * dens[sel]
        if sel not in batch:
            batch.append(sel)
        dens[batch] = dens.min() - 1.0
    return batch


def oracle_d2_bin_allocate(num, counts):
    counts = np.asarray(counts, dtype=int)
    order = np.argsort(counts, kind="stable")
    sc = counts[order]
    rest = int(num)
    budgets = []
    for i, c in enumerate(sc):
        if c == 0:
            budgets.append(0)
            continue
        avg = rest // np.count_nonzero(sc[i:])
        b = min(int(c), avg)
        rest -= b
        budgets.append(b)
    budgets = np.array(budgets)
    if budgets.sum() < num:
        delta = num - budgets.sum()
        i = 1
        while delta and i <= len(sc):
            if budgets[-i] < sc[-i]:
                budgets[-i] += 1
                delta -= 1
            i += 1
    out = np.zeros(len(counts), dtype=int)
    out[order] = budgets
    return out


def oracle_forgetting(correct):
    """generate_importance_score.py: +1 on last_correct == 1 and now 0, last starts at 0."""
    events = np.zeros(correct.shape[1])
    last = np.zeros(correct.shape[1])
    for e in range(correct.shape[0]):
        for i in range(correct.shape[1]):
            now = correct[e, i]
            events[i] += last[i] == 1 and now == 0
            last[i] = now
    return events


# ---------------------------------------------------------------- helpers


def _ctx(labels, **dyn) -> Context:
    n = len(labels)
    ctx = Context(S=np.zeros((n, 2)), labels=np.asarray(labels))
    base = dict(loss=np.zeros((1, n), np.float32), correct=np.zeros((1, n), np.uint8))
    base.update(dyn)
    ctx.supply(dynamics=Dynamics(**base))
    return ctx


def _kept(pruned):
    return set(np.flatnonzero(~pruned).tolist())


def _trajectory(rng, E, N, C):
    """Logits that drift over epochs like training (the true class gains), with per-sample noise."""
    labels = rng.integers(0, C, N)
    drift = np.linspace(0, 4, E)[:, None] * rng.random(N)[None, :]
    logits = rng.normal(size=(E, N, C)).astype(np.float32)
    logits[:, np.arange(N), labels] += drift.astype(np.float32)
    return logits, labels


# ---------------------------------------------------------------- TDDS


@pytest.mark.parametrize("r", RATIOS)
def test_tdds_matches_the_reference(r):
    rng = np.random.default_rng(0)
    E, N, C = 32, 400, 10
    logits, labels = _trajectory(rng, E, N, C)
    index = np.stack([rng.permutation(N) for _ in range(E)])  # loader order, as saved by the reference
    shuffled = np.stack([logits[e][index[e]] for e in range(E)])  # row j of epoch e is sample index[e, j]
    want = oracle_tdds_scores(shuffled, index)
    probs = softmax(logits, axis=2).astype(np.float32)
    got = tdds.TDDS(PruneConfig(ratio=r)).scores(_ctx(labels, probs=probs))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    m = count_from_ratio(N, r)
    pruned, _ = tdds.TDDS(PruneConfig(ratio=r)).select(_ctx(labels, probs=probs), m, None)
    assert m == int(r * N) and _kept(pruned) == set(oracle_keep_tail(want, r).tolist())


def test_tdds_weights_later_windows_and_needs_three_epochs():
    rng = np.random.default_rng(1)
    logits, _ = _trajectory(rng, 12, 50, 4)
    p = softmax(logits, axis=2)
    np.testing.assert_allclose(
        tdds.tdds_scores(p, T=12, J=10), oracle_tdds_scores(logits, [np.arange(50)] * 12, T=12), rtol=1e-5
    )
    short = tdds.tdds_scores(p[:3])  # a 3-epoch run: T = 3, J = 3 (one window)
    np.testing.assert_allclose(short, oracle_tdds_scores(logits[:3], [np.arange(50)] * 3, T=3, J=3), rtol=1e-4)
    from dpcli.errors import DpcliError

    with pytest.raises(DpcliError):
        tdds.tdds_scores(p[:2])


# ---------------------------------------------------------------- CCS


@pytest.mark.parametrize("r", RATIOS)
def test_ccs_matches_the_reference_draw_for_draw(r):
    rng = np.random.default_rng(2)
    E, N, C = 20, 1000, 10
    logits, labels = _trajectory(rng, E, N, C)
    probs = softmax(logits, axis=2)
    margin = oracle_aum(probs[:, :, :], labels)  # sum of margins; the per-epoch ones feed dpcli
    n = np.arange(N)
    other = probs.copy()
    other[:, n, labels] = 0
    per_epoch = (probs[:, n, labels] - other.max(2)).astype(np.float32)
    m = count_from_ratio(N, r)
    beta = ccs.ccs_cutoff(r)
    for seed in (0, 7):
        want, masks, budgets, easy = oracle_ccs_select(margin, (N - m) / N, beta, rng=seed)
        cfg = PruneConfig(ratio=r, method="ccs", cutoff=None, seed=seed)
        pruned, label = ccs.CCS(cfg).select(_ctx(labels, margin=per_epoch), m, None)
        assert _kept(pruned) == set(want.tolist()), (r, seed)
        assert f"cutoff={beta:g}" in label
    # RNG-free invariants of the reference: the int(beta N) lowest AUM are never kept; per-stratum counts
    lowest = np.argsort(margin, kind="stable")[: int(beta * N)]
    assert not _kept(pruned) & set(lowest.tolist())
    kept_pos = np.isin(easy, np.flatnonzero(~pruned))
    np.testing.assert_array_equal([int((mk & kept_pos).sum()) for mk in masks], budgets)
    assert len(want) == N - m


def test_ccs_published_cutoffs_and_bin_allocation():
    assert ccs.ccs_cutoff(0.9) == pytest.approx(0.3) and ccs.ccs_cutoff(0.8) == pytest.approx(0.2)
    assert ccs.ccs_cutoff(0.5) == 0 and ccs.ccs_cutoff(0.3) == 0
    rng = np.random.default_rng(3)
    for _ in range(200):
        counts = rng.integers(0, 40, size=rng.integers(1, 60))
        num = int(rng.integers(0, counts.sum() + 1))
        np.testing.assert_array_equal(ccs.bin_allocate(num, counts), oracle_ccs_bin_allocate(num, counts))


def test_ccs_keeps_the_top_stratum_when_every_aum_is_negative():
    s = -np.arange(1.0, 101.0)  # the reference's * 1.0001 would drop the maximum from every stratum
    pruned = ccs.ccs_select(s, 0, np.random.default_rng(0), cutoff=0.0)
    assert not pruned.any()


# ---------------------------------------------------------------- DUAL


@pytest.mark.parametrize("r", RATIOS)
def test_dual_and_dual_beta_match_the_reference(r):
    rng = np.random.default_rng(4)
    E, N = 40, 2000
    logits, labels = _trajectory(rng, E, N, 10)
    p = softmax(logits, axis=2)[:, np.arange(N), labels]
    loss = (-np.log(p)).astype(np.float32)
    score = oracle_dual_scores(p)
    m = count_from_ratio(N, r)
    cfg = PruneConfig(ratio=r, method="dual", seed=5)
    got = dual.DUAL(cfg).scores(_ctx(labels, loss=loss))
    np.testing.assert_allclose(got, score, rtol=1e-5)
    pruned, _ = dual.DUAL(cfg).select(_ctx(labels, loss=loss), m, None)
    assert _kept(pruned) == set(np.argsort(score, kind="stable")[-(N - m) :].tolist())
    want = oracle_dual_beta_select(p, score, m / N, rng=5)
    pruned, _ = dual_beta.DUALBeta(cfg).select(_ctx(labels, loss=loss), m, None)
    assert _kept(pruned) == set(want.tolist())


def test_dual_beta_fills_with_top_scores_when_too_few_weights_are_positive():
    p = np.full((12, 20), 0.5)
    p[:, :5] += np.linspace(0, 0.3, 12)[:, None]  # only 5 samples vary: 15 zero scores
    score = dual.dual_scores(p)
    pruned = dual_beta.dual_beta_select(p, score, 10, np.random.default_rng(0))
    kept = np.flatnonzero(~pruned)
    assert len(kept) == 10 and set(range(5)) <= set(kept.tolist())


# ---------------------------------------------------------------- Moderate


@pytest.mark.parametrize("r", RATIOS)
def test_moderate_matches_the_reference_band(r):
    rng = np.random.default_rng(6)
    N = 1003
    labels = rng.integers(0, 7, N)
    features = (rng.normal(size=(N, 16)) + labels[:, None]).astype(np.float32)
    m = count_from_ratio(N, r)
    want, distance = oracle_moderate(features, labels, (N - m) / N)
    np.testing.assert_allclose(moderate.median_distance(features, labels), distance, rtol=1e-12)
    ctx = _ctx(labels)
    ctx.supply(features=features)
    pruned, _ = moderate.Moderate(PruneConfig(ratio=r)).select(ctx, m, None)
    kept = _kept(pruned)
    assert len(kept) == N - m
    if len(want) == N - m:  # the reference's round() on both edges can keep one more or fewer
        assert kept == set(want.tolist())
    else:
        assert len(kept ^ set(want.tolist())) == 1


# ---------------------------------------------------------------- D2


def test_d2_bin_allocation_and_forgetting_match_the_reference():
    rng = np.random.default_rng(7)
    for _ in range(300):
        counts = rng.choice(200, size=rng.integers(1, 12), replace=False)  # distinct, as verified upstream
        num = int(rng.integers(0, counts.sum() + 1))
        np.testing.assert_array_equal(d2.bin_allocate_uniform(num, counts), oracle_d2_bin_allocate(num, counts))
    correct = rng.integers(0, 2, size=(9, 60)).astype(np.uint8)
    np.testing.assert_array_equal(d2.forgetting_events(correct), oracle_forgetting(correct))


def test_d2_graph_density_matches_the_reference():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(150, 6))
    s = rng.integers(0, 6, 150).astype(float)
    want, _, _ = oracle_d2_graph_density(X, s)
    _, _, _, got = d2.graph(X, s)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for budget in (1, 40, 149):
        assert set(d2.d2_greedy(X, s, budget).tolist()) == set(oracle_d2_select(X, s, budget))


@pytest.mark.parametrize("r", RATIOS)
def test_d2_matches_the_reference_per_class(r):
    rng = np.random.default_rng(9)
    N, C = 360, 4
    labels = rng.integers(0, C, N)
    features = (rng.normal(size=(N, 8)) + 2.0 * labels[:, None]).astype(np.float32)
    correct = rng.integers(0, 2, size=(10, N)).astype(np.uint8)
    margin = rng.normal(size=(10, N)).astype(np.float32)
    m = count_from_ratio(N, r)
    beta = ccs.ccs_cutoff(r)
    # reference wiring: AUM cutoff, class bins of the rest, uniform budgets, per-class graph selection
    aum_ = margin.astype(np.float64).sum(0)
    pool = np.argsort(aum_, kind="stable")[int(beta * N) :]
    classes = np.unique(labels[pool])
    budgets = oracle_d2_bin_allocate(N - m, [np.sum(labels[pool] == c) for c in classes])
    imp = oracle_forgetting(correct)
    want = set()
    for c, b in zip(classes, budgets):
        members = pool[labels[pool] == c]
        want |= set(members[oracle_d2_select(features[members], imp[members], int(b))].tolist())
    ctx = _ctx(labels, correct=correct, margin=margin)
    ctx.supply(features=features)
    pruned, _ = d2.D2(PruneConfig(ratio=r, method="d2", cutoff=None)).select(ctx, m, None)
    assert _kept(pruned) == want and len(want) == N - m


@pytest.mark.parametrize("selector", [ccs.CCS, tdds.TDDS, d2.D2])
def test_checkpoints_without_the_new_records_get_one_clear_error(selector):
    from dpcli.errors import DpcliError

    labels = np.arange(20) % 2
    ctx = _ctx(labels, loss=np.zeros((3, 20), np.float32), correct=np.zeros((3, 20), np.uint8))
    ctx.supply(features=np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.raises(DpcliError, match="train --force"):
        selector(PruneConfig(ratio=0.5, cutoff=None)).select(ctx, 10, None)


def test_tdds_on_float16_probabilities_keeps_nearly_the_same_sets():
    """`train` stores probabilities as float16; the reference scores float32 logits (docs/baselines.md)."""
    rng = np.random.default_rng(0)
    logits, _ = _trajectory(rng, 40, 4000, 10)
    p32 = softmax(logits, axis=2).astype(np.float32)
    a, b = tdds.tdds_scores(p32), tdds.tdds_scores(p32.astype(np.float16))
    assert np.max(np.abs(a - b) / a) < 5e-3
    for r in RATIOS:
        ka, kb = set(oracle_keep_tail(a, r).tolist()), set(oracle_keep_tail(b, r).tolist())
        assert len(ka & kb) / len(ka | kb) >= 0.99, r
