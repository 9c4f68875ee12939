"""benchmarks/grid.py's run machinery (the benchmark itself is run by hand): the `paper` regime's priority
order, resuming from finished cells in several folders without mixing toy and measured ones, and the epsilon
cells (Eq. 3 beside random pruning of the count it reached), on a real tiny S."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dpcli.data.sources import load_dataset
from dpcli.select.base import Context
from dpcli.select.linalg import count_from_ratio, subset_norm
from dpcli.select.solvers import minimize_norm
from dpcli.stages import core as stages
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def grid():
    return load_benchmark("grid")


def test_the_paper_regime_runs_whole_comparisons_first(grid):
    regime = grid.REGIMES["paper"]
    assert (regime.arch, regime.per_class, regime.batch_size, regime.lead) == ("resnet18", 0, 512, ("auto", "random"))
    ratios = [0.9, 0.8, 0.7, 0.5, 0.3]
    order = grid.comparison_order(regime, list(regime.methods), (0, 1), ratios)
    seed0 = [(m, r) for s, m, r in order if s == 0]
    pairs = [(m, r) for r in ratios for m in ("auto", "random")]
    assert seed0[:11] == [("full", 0.0)] + pairs  # the free full-data cell, then auto and random ratio by ratio
    assert seed0[11:13] == [("optimization-eps", 0.4), ("readme-eps0.05", 0.0)]
    assert seed0[13:] == [(m, r) for m in ("dual-beta", "ccs", "eva") for r in ratios]
    seed1 = [(m, r) for s, m, r in order if s == 1]
    assert seed1[-1] == ("full", 0.0) and sorted(seed1) == sorted(seed0)  # a full training run: last
    assert [s for s, _, _ in order] == sorted(s for s, _, _ in order)  # seed 0 whole before seed 1


def test_cells_resume_from_every_results_folder_and_toy_cells_stay_apart(grid, tmp_path):
    committed, out = tmp_path / "committed", tmp_path / "out"
    grid.CellStore(committed, "paper").add({"method": "auto", "ratio": 0.9, "seed": 0, "test_accuracy": 1.0})
    store = grid.CellStore(tmp_path / "run", "paper", also=(str(committed),), mirror=out)
    assert store.has("auto", 0.9, 0) and not store.has("random", 0.9, 0)
    store.add({"method": "random", "ratio": 0.9, "seed": 0, "test_accuracy": 2.0})
    assert [c["method"] for c in grid.read_cells(out / "cells-paper.jsonl")] == ["random"]  # new cells only
    # a run killed mid-write leaves a torn line: the next cell starts a line of its own
    path = tmp_path / "run" / "cells-paper.jsonl"
    path.write_text(path.read_text() + '{"method": "ccs", "rat')
    grid.CellStore(tmp_path / "run", "paper").add({"method": "eva", "ratio": 0.5, "seed": 1, "test_accuracy": 3.0})
    assert [c["method"] for c in grid.read_cells(path)] == ["random", "eva"]
    # toy cells never count as done for a measured run, nor the other way round, and never land beside measured ones
    toy = grid.CellStore(tmp_path / "toy", "paper", toy=True, also=(str(committed),))
    assert not toy.has("auto", 0.9, 0)
    toy.add({"method": "auto", "ratio": 0.9, "seed": 0, "toy": True, "test_accuracy": 0.0})
    assert not grid.CellStore(tmp_path / "other", "paper", also=(str(tmp_path / "toy"),)).has("auto", 0.9, 0)
    with pytest.raises(SystemExit, match="holds measured cells"):
        grid.CellStore(committed, "paper", toy=True)


@pytest.fixture
def setup(grid, tiny_run, tmp_path):
    """The paper regime's cell machinery on the tiny digits run's real S; a retrain that reports the kept share."""
    inf = tmp_path / "influence.h5"
    shutil.copy(tiny_run.influence, inf)  # masks are written beside it
    info = stages.read_influence_info(inf)
    S = stages.load_S(inf)
    ds = load_dataset("digits")
    ctx = Context(
        S=np.asarray(S),
        labels=np.asarray(ds.train.labels),
        checkpoint=tiny_run.checkpoint,
        device=torch.device("cpu"),
        ds=ds,
    )

    def retrain(keep, seed, _mask):
        return {"test_accuracy": 100.0 * float(np.mean(keep)), "test_loss": 0.0, "train_seconds": 0.0, "steps": 0}

    return grid.Setup(grid.REGIMES["paper"].tiny(), info, ctx, retrain, lambda s: retrain(np.ones(1), s, None), "")


def test_an_epsilon_cell_prunes_within_the_calibrated_bound_beside_random_of_the_same_count(grid, setup, tmp_path):
    store = grid.CellStore(tmp_path / "cells", "paper", toy=True)
    grid.run_cell(setup, store, "optimization-eps", 0.4, 0, "cpu")
    (cell,) = grid.read_cells(store.path)
    S = setup.ctx.S
    m = count_from_ratio(len(S), 0.4)
    eq4 = minimize_norm(S, m, seed=0).pruned  # the calibrating selection, recomputed
    assert cell["epsilon"] == pytest.approx(subset_norm(S, eq4), rel=1e-9)
    pruned = len(S) - cell["n_kept"]
    # Eq. 3 as `prune --epsilon` solves it: within the bound (a set of m exists there; the solver may stop short)
    assert 0 < pruned < len(S) and cell["norm"] <= cell["epsilon"]
    assert cell["pruned_share"] == pytest.approx(pruned / len(S))
    # both retrains report their kept share: equal only if random pruned the same count
    assert cell["test_accuracy"] == cell["random_test_accuracy"] == pytest.approx(100.0 * cell["n_kept"] / len(S))
    assert cell["random_norm"] > cell["norm"]
    grid.run_cell(setup, store, "readme-eps0.05", 0.0, 0, "cpu")
    readme = grid.read_cells(store.path)[-1]
    assert readme["epsilon"] == 0.05 and ("error" in readme or readme["norm"] <= 0.05)
    report = grid.epsilon_report(grid.read_cells(store.path))
    assert "| optimization-eps | 0 |" in report and f"({cell['pruned_share']:.1%})" in report
    json.dumps(cell)  # a JSON line, as written
