"""What ``auto``'s feature rung matches on the fit part: a Johnson-Lindenstrauss sketch of its features,
checked against the sketch product written out and an independent covered solve."""

from __future__ import annotations

import numpy as np

import dpcli.api as dp
from dpcli.config import PruneConfig
from dpcli.influence.sketch import Sketch
from dpcli.select import heldout
from dpcli.select.base import Context
from dpcli.select.linalg import count_from_ratio
from dpcli.select.methods import auto
from dpcli.select.methods.optimization import Optimization
from tests.select.test_auto import _problem


def test_sketch_rows_is_the_rows_times_the_seeded_gaussian(monkeypatch):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 40)).astype(np.float32)
    rows = np.array([7, 3, 3, 49, 0, 12, 30])
    R = Sketch(40, 9, 5).matrix()  # N(0, 1/k) entries, seeded as influence --sketch seeds them
    want = (a[rows].astype(np.float64) @ R).astype(np.float32)
    assert np.allclose(auto.sketch_rows(a, rows, 9, 5), want, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr("dpcli.select.linalg.row_step", lambda d: 2)  # chunks of two rows give the same rows
    assert np.allclose(auto.sketch_rows(a, rows, 9, 5), want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(auto.sketch_rows(a, rows, 9, 6), want, atol=1e-3)  # another seed, another sketch
    assert np.array_equal(auto.sketch_rows(a, rows, 40, 5), a[rows])  # no wider than k: the rows themselves
    # what the sketch keeps: the norm of a fixed subset's sum, within the JL spread (k = 400: a few %)
    big = rng.normal(size=(300, 2000))
    sub = rng.random(300) < 0.5
    ratio = np.linalg.norm(auto.sketch_rows(big, np.arange(300), 400, 0)[sub].sum(0)) / np.linalg.norm(big[sub].sum(0))
    assert abs(ratio - 1) < 0.15


def test_feature_matching_in_the_validation_reads_sketched_features(monkeypatch):
    """The feature rung's validation solve matches features through FEATURE_SKETCH directions: a kept set
    equal to the covered solve given the sketched features, written out."""
    x, y = _problem(900, 12, 3, 0.1, 2.0, 5)
    S, _ = dp.influence(x, y)
    monkeypatch.setattr(heldout, "FEATURE_SKETCH", 4)
    cfg = PruneConfig(ratio=0.5, seed=0).validate()
    ctx = Context(S=S, labels=y)
    diff = auto._difficulty(ctx, x)[0]
    m = count_from_ratio(len(y), 0.5)
    v = auto.validate(ctx, cfg, m, x, diff)
    fit = v.fit
    feats = (x[fit].astype(np.float64) @ Sketch(12, 4, 0).matrix()).astype(np.float32)
    rung = auto.LADDER[3]
    sub = Context(S=S[fit], labels=y[fit], proposals=0).supply(difficulty=diff[fit], features=feats)
    want, _ = Optimization(auto.rung_config(cfg, rung)).select(sub, v.m_fit, None)
    got = next(s for s in v.scores if s.name == rung.name)
    assert np.array_equal(got.keep, ~want)
    dense = Context(S=S[fit], labels=y[fit], proposals=0).supply(difficulty=diff[fit], features=x[fit])
    assert not np.array_equal(Optimization(auto.rung_config(cfg, rung)).select(dense, v.m_fit, None)[0], want)


def test_the_budget_counts_the_feature_rungs_sketched_columns(monkeypatch):
    """The feature rung's validation solve holds C x FEATURE_SKETCH feature columns, not C x D: with 40
    features sketched to 4 it fits a budget just above the final solve's need (which the dense columns on the
    fit part, beside its copy of S, would pass) and not one just below."""
    from dpcli.select.coverage import count_columns

    x, y = _problem(600, 40, 3, 0.1, 2.0, 6)
    S, _ = dp.influence(x, y)  # 600 x 123
    monkeypatch.setattr(heldout, "FEATURE_SKETCH", 4)
    ctx = Context(S=S, labels=y)
    n, d, size = len(y), S.shape[1], S.dtype.itemsize
    n_fit = n - auto.n_held_out(y)
    counts = count_columns(3, True, 10)
    full = n * (d + counts + 3 * 40) * size
    dense = n_fit * d * size + n_fit * (d + counts + 3 * 40) * size
    sketched = n_fit * d * size + n_fit * (d + counts + 3 * 4) * size
    assert sketched < full < dense  # what makes the budgets below tell the two apart
    for budget, fits in ((full + 1, True), (full - 1, False)):
        monkeypatch.setenv("DPCLI_SOLVE_BUDGET", str(budget))
        rungs, _ = auto.affordable(auto.LADDER, ctx, 40)
        assert (auto.LADDER[3] in rungs) is fits and auto.LADDER[2] in rungs
