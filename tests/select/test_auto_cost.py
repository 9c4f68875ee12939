"""What ``auto``'s validation solves on: a Johnson-Lindenstrauss sketch of the fit part's rows of S (and of
its features for feature matching), checked against the sketch product written out and an independent solve."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import dpcli.api as dp
from dpcli.config import PruneConfig
from dpcli.influence.sketch import Sketch
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


def test_validation_solves_the_candidates_on_the_sketch_of_the_fit_rows(monkeypatch):
    """With a sketch narrower than S, the objective alone's kept fit-part set is the solve of S[fit] R (R
    written out), not of S[fit]; the final solve on all of S is the method's own on S itself."""
    x, y = _problem(900, 5, 3, 0.1, 2.0, 4)
    S, _ = dp.influence(x, y)  # 900 x 18
    monkeypatch.setattr(auto, "SKETCH_COLUMNS", 6)
    cfg = PruneConfig(ratio=0.5, seed=0).validate()
    ctx = Context(S=S, labels=y)
    m = count_from_ratio(len(y), 0.5)
    v = auto.validate(ctx, cfg, m, x, auto._difficulty(ctx, x)[0])
    fit = v.fit
    sk = (S[fit].astype(np.float64) @ Sketch(S.shape[1], 6, 0).matrix()).astype(np.float32)
    plain = dataclasses.replace(cfg, method="optimization")
    on_sketch, _ = Optimization(plain).select(Context(S=sk, labels=y[fit], proposals=0), v.m_fit, None)
    on_S, _ = Optimization(plain).select(Context(S=S[fit], labels=y[fit], proposals=0), v.m_fit, None)
    pure = next(s for s in v.scores if s.name == "pure")
    assert np.array_equal(pure.keep, ~on_sketch) and not np.array_equal(on_sketch, on_S)
    sel = dp.prune(S, prune_ratio=0.5, labels=y, features=x)
    own = dp.prune(S, prune_ratio=0.5, labels=y, method=sel.auto["chosen"], solver_seed=0)
    assert np.array_equal(sel.keep, own.keep)


def test_feature_matching_in_the_validation_reads_sketched_features(monkeypatch):
    """The feature rung's validation solve matches features through FEATURE_SKETCH directions: a kept set
    equal to the covered solve given the sketched features, written out."""
    x, y = _problem(900, 12, 3, 0.1, 2.0, 5)
    S, _ = dp.influence(x, y)
    monkeypatch.setattr(auto, "FEATURE_SKETCH", 4)
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


@pytest.mark.parametrize("kd", [6, 512])
def test_the_budget_counts_the_sketch_not_the_fit_rows_of_s(monkeypatch, kd):
    """The validation holds the fit part's sketch (float32, n_fit x k), not a copy of its rows of S: the
    objective alone fits a budget just above that sketch and not one just below it."""
    x, y = _problem(600, 5, 3, 0.1, 2.0, 6)
    S, _ = dp.influence(x, y)  # 600 x 18
    monkeypatch.setattr(auto, "SKETCH_COLUMNS", kd)
    ctx = Context(S=S, labels=y)
    n_fit = len(y) - auto.n_held_out(y)
    width = min(kd, S.shape[1])
    held = n_fit * width * (4 if width < S.shape[1] else S.dtype.itemsize)
    for budget, fits in ((held + 1, True), (held - 1, False)):
        monkeypatch.setenv("DPCLI_SOLVE_BUDGET", str(budget))
        rungs, _ = auto.affordable((auto.PURE,), ctx, 5)
        assert (rungs == (auto.PURE,)) is fits
