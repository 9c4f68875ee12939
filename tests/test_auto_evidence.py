"""benchmarks/auto_evidence.py and the grid report's `auto` rows (run by hand; their arithmetic is tested here):
which candidate a recorded solver label names, the hit rate against the retrained best, the current-default count."""

from __future__ import annotations

import numpy as np
import pytest

import dpcli.api as dp
from benchmarks import auto_evidence as ev
from benchmarks import grid
from dpcli.select.methods import auto


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)
    x = (rng.normal(size=(300, 6)) + 2 * np.eye(6)[y]).astype(np.float32)
    S, _ = dp.influence(x, y)
    return x, y, S


def test_a_solver_label_names_the_candidate_that_made_it(labelled):
    """Each candidate run as its own method; the label it reports reads back as that candidate."""
    from dpcli.config import PruneConfig
    from dpcli.select.base import Context

    x, y, S = labelled
    for rung in (auto.PURE, *auto.LADDER, auto.STRATIFIED):
        ctx = Context(S=S, labels=y).supply(features=x, difficulty=np.linspace(0, 1, len(y)))
        _, label = auto.run_rung(rung, PruneConfig(ratio=0.5).validate(), ctx, 150, None)
        assert ev.candidate_of(label) == rung.name, label


def _cell(method, ratio, seed, acc, **extra):
    return {"regime": "digits", "method": method, "ratio": ratio, "seed": seed, "test_accuracy": acc, **extra}


def test_hits_count_auto_choices_that_are_the_retrained_best(capsys):
    cells = {name: [] for name in grid.REGIMES}
    cells["digits"] = [_cell("dual-beta", 0.9, s, 96.0 + 0.1 * s) for s in range(3)]
    cells["digits"] += [_cell("random", 0.9, s, 95.0) for s in range(3)]
    cells["digits"] += [
        _cell("auto", 0.9, 0, 96.0, rule="dual-beta", selection_code="x"),
        _cell("auto", 0.9, 1, 95.0, rule="random-stratified", selection_code="x"),
        _cell("auto", 0.9, 2, 95.5, rule="swap+coverage(balance=True,strata=1,cutoff=0)"),
    ]
    ev.hits(cells, {})
    out = capsys.readouterr().out
    # current: 1 of 2 picks is dual-beta, the best mean (96.1 ± 0.1); random (95.0) is outside its spread
    assert (
        "| digits | 90% | `dual-beta` 96.10 ± 0.10 | `dual-beta` ×1, `random-stratified` ×1 | 1/2 | 1/2 | 95.50 "
        "| -0.60 | +0.50 | current |"
    ) in out
    assert (
        "| digits | 90% | `dual-beta` 96.10 ± 0.10 | `balanced` ×1 | 0/1 | 0/1 | 95.50 | -0.60 | +0.50 | earlier |"
        in out
    )
    assert "| digits | current | 1/2 (50%) | 1/2 (50%) |" in out


def test_the_report_counts_the_cells_of_the_current_default():
    cells = [
        _cell("auto", 0.9, 0, 96.0, rule="dual-beta", selection_code="x"),
        _cell("auto", 0.9, 1, 95.0, rule="dual-beta"),
        _cell("auto", 0.7, 0, 99.0, rule="random-stratified"),
    ]
    text = grid.auto_choices(cells, [0.9, 0.7, 0.5], True)
    assert "| 90% | `dual-beta` ×2 | 1 of 2 |" in text and "| 70% | `random-stratified` ×1 | 0 of 1 |" in text
    assert "| 50% | not run | – |" in text
