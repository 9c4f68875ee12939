"""The estimator registry and LiSSA's reported convergence check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpcli.config import InfluenceConfig
from dpcli.errors import DpcliError
from dpcli.influence.base import ESTIMATORS, Estimator, LastLayer
from dpcli.influence.kernels import exact_influence
from dpcli.select.base import SELECTORS


def _problem(n: int = 120, dim: int = 5, classes: int = 3, seed: int = 0) -> LastLayer:
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(n, dim, generator=gen, dtype=torch.float64).abs()
    y = torch.randint(0, classes, (n,), generator=gen)
    w = torch.randn(classes, dim, generator=gen, dtype=torch.float64)
    b = 0.3 * torch.randn(classes, generator=gen, dtype=torch.float64)
    return LastLayer(f, y, w, b)


def test_registries_list_their_modules_and_name_the_choices():
    assert set(ESTIMATORS.names()) == {"exact", "cg", "lissa", "sgd"}
    assert {
        "optimization",
        "random",
        "herding",
        "forgetting",
        "el2n",
        "grand",
        "influence-score",
        "ccs",
        "tdds",
    } <= set(SELECTORS.names())
    assert all(issubclass(ESTIMATORS.get(n), Estimator) and ESTIMATORS.get(n).name == n for n in ESTIMATORS.names())
    with pytest.raises(
        DpcliError, match=r"unknown --estimator 'lisa' \(did you mean 'lissa'\?\); choose one of cg, exact"
    ):
        ESTIMATORS.get("lisa")
    with pytest.raises(DpcliError, match="unknown --method 'herd'"):
        InfluenceConfig(estimator="exact").validate() and SELECTORS.get("herd")


def _lissa(problem: LastLayer, depth: int, scale: float, damping: float):
    cfg = InfluenceConfig(
        estimator="lissa", lissa_depth=depth, lissa_scale=scale, lissa_batch_size=10**6, damping=damping
    ).validate()
    rows: dict[int, np.ndarray] = {}
    said: list[str] = []

    def sink(start, block):
        for i, r in enumerate(block):
            rows[start + i] = r

    attrs = ESTIMATORS.get("lissa")(cfg).solve(
        problem, damping=damping, rows=(0, problem.n), sink=sink, info=said.append
    )
    return np.stack([rows[i] for i in range(problem.n)]), attrs, said


def test_lissa_reports_its_error_against_an_independent_exact_solve():
    problem = _problem()
    # damping 0.5 bounds the slowest direction's contraction by 1 - 0.5/2: 100 steps converge, 2 do not
    exact = exact_influence(problem.features, problem.labels, problem.weight, problem.bias, damping=0.5)
    for depth, converged in ((2, False), (100, True)):
        got, attrs, said = _lissa(problem, depth, scale=2.0, damping=0.5)
        lo, hi = attrs["lissa_check_rows"]
        assert hi - lo == 32 and 0 <= lo and hi <= problem.n
        ref = exact[lo:hi].astype(np.float64)
        err = np.linalg.norm(got[lo:hi] - ref, axis=1) / np.linalg.norm(ref, axis=1)
        assert attrs["lissa_rel_error_median"] == pytest.approx(float(np.median(err)), rel=1e-3, abs=1e-6)
        assert attrs["lissa_rel_error_max"] == pytest.approx(float(err.max()), rel=1e-3, abs=1e-6)
        if converged:
            assert attrs["lissa_rel_error_median"] < 1e-3 and not said
        else:
            assert attrs["lissa_rel_error_median"] > 0.05
            assert len(said) == 1 and "LiSSA has not converged" in said[0] and "--lissa-depth" in said[0]
