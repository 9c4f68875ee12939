"""benchmarks/proxy_search.py's pure logic (the benchmark itself is run by hand): the outcome of a proxy search
against a recount by hand (rank correlation from the textbook formula, top-1 pick, time ratio), resuming from
the JSON lines, and the proxy schedule against the steps dpcli's training loop really takes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import load_benchmark

NAMES = ["w8-d2-lr0.02", "w8-d2-lr0.08", "w16-d3-lr0.02", "w16-d3-lr0.08", "w32-d3-lr0.02"]


@pytest.fixture(scope="module")
def ps():
    return load_benchmark("proxy_search")


def _records() -> list[dict]:
    """Five candidates; the whole pool's validation ranking differs from its test ranking on purpose."""
    whole_val = [40.0, 44.0, 47.0, 52.0, 50.0]
    whole_test = [41.0, 45.0, 49.0, 50.5, 51.0]  # best on test: w32, but the whole-pool search picks w16-lr0.08
    recs = [{"kind": "reference", "cpu_seconds": 30.0, "wall_seconds": 90.0, "settings": "s"}]
    recs += [
        {
            "kind": "whole",
            "config": n,
            "seed": 0,
            "kept": 1.0,
            "val_accuracy": v,
            "test_accuracy": t,
            "cpu_seconds": 20.0 + i,
            "wall_seconds": 60.0,
        }
        for i, (n, v, t) in enumerate(zip(NAMES, whole_val, whole_test))
    ]
    proxies = {
        ("auto", 0): [20.0, 25.0, 22.0, 24.0, 26.0],
        ("random", 0): [30.0, 21.0, 23.0, 29.0, 22.0],
        ("random", 1): [27.0, 27.0, 27.0, 27.0, 27.0],
    }  # seed 1: all tied, no ranking
    for (sel, seed), vals in proxies.items():
        recs.append({"kind": "selection", "selector": sel, "kept": 0.02, "seed": seed, "cpu_seconds": 4.0})
        recs += [
            {
                "kind": "proxy",
                "config": n,
                "selector": sel,
                "kept": 0.02,
                "seed": seed,
                "n_kept": 200,
                "val_accuracy": v,
                "cpu_seconds": 2.0,
                "wall_seconds": 5.0,
            }
            for n, v in zip(NAMES, vals)
        ]
    recs += [
        {
            "kind": "proxy",
            "config": NAMES[0],
            "selector": "herding",
            "kept": 0.1,
            "seed": 0,
            "n_kept": 1000,
            "val_accuracy": 30.0,
            "cpu_seconds": 9.0,
            "wall_seconds": 9.0,
        }
    ]  # an unfinished search
    return recs


def _spearman_by_hand(a: list[float], b: list[float]) -> float:
    """1 - 6 sum d^2 / (n (n^2 - 1)) on ranks (no ties)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    n = len(a)
    return 1.0 - 6.0 * float(((ra - rb) ** 2).sum()) / (n * (n * n - 1))


def test_outcomes_recount_rank_correlation_top1_and_time_ratio(ps):
    recs = _records()
    outs, whole = ps.outcomes(recs)
    by = {(o.selector, o.seed): o for o in outs}
    assert set(by) == {("auto", 0), ("random", 0), ("random", 1)}  # herding's search is unfinished: left out
    whole_val = [r["val_accuracy"] for r in recs if r["kind"] == "whole"]
    whole_cpu = sum(r["cpu_seconds"] for r in recs if r["kind"] == "whole")
    for (sel, seed), o in by.items():
        vals = [r["val_accuracy"] for r in recs if r["kind"] == "proxy" and (r["selector"], r["seed"]) == (sel, seed)]
        if len(set(vals)) == 1:
            assert math.isnan(o.rho)  # every candidate tied: no ranking to correlate
        else:
            assert o.rho == pytest.approx(_spearman_by_hand(vals, whole_val), abs=1e-12)
        assert dict(zip(NAMES, vals))[o.chosen] == max(vals)  # a top-1 (any one of tied tops)
        assert o.chosen_test == next(
            r["test_accuracy"] for r in recs if r.get("config") == o.chosen and r["kind"] == "whole"
        )
        reference = 30.0 if sel != "random" else 0.0  # random reads no reference training
        assert o.cpu_seconds == pytest.approx(reference + 4.0 + 5 * 2.0)
        assert o.ratio == pytest.approx(o.cpu_seconds / whole_cpu)
    assert by[("auto", 0)].rho == pytest.approx(0.5)  # ranks (0,3,1,2,4) against (0,1,2,4,3): 1 - 6*10/120
    assert (by[("auto", 0)].chosen, by[("random", 0)].chosen) == ("w32-d3-lr0.02", "w8-d2-lr0.02")
    assert (whole["chosen"], whole["best"], whole["k"]) == ("w16-d3-lr0.08", "w32-d3-lr0.02", 5)
    assert whole["cpu_seconds"] == pytest.approx(whole_cpu)
    assert "undefined" not in ps.table(outs, whole).splitlines()[2]  # auto's row has a correlation


def test_a_rerun_skips_finished_records_and_survives_a_torn_line(ps, tmp_path):
    path = tmp_path / "records.jsonl"
    store = ps.Records(path)
    done = store.add(
        {"kind": "proxy", "config": "w8-d2-lr0.02", "selector": "auto", "kept": 0.02, "seed": 1, "val_accuracy": 31.0}
    )
    with open(path, "a") as fh:
        fh.write('{"kind": "proxy", "config": "w8-d2-lr0.08", "sel')  # a run killed mid-write
    again = ps.Records(path)
    assert len(again.all) == 1
    cand = ps.Candidate(8, 2, 0.02)
    # finished: returned as recorded; nothing is trained (no data set, no model are even given)
    assert ps.proxy_training(again, None, None, cand, None, "auto", 0.02, 1, tmp_path, None, 60) == done
    again.add({"kind": "whole", "config": "w8-d2-lr0.08", "val_accuracy": 40.0})
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["kind"] == "whole" and len(ps.Records(path).all) == 2  # the torn line was closed


@pytest.mark.parametrize("kept,batch,epochs,min_steps", [(20, 8, 1, 9), (24, 8, 1, 9), (20, 64, 2, 5)])
def test_proxy_epochs_give_the_least_epochs_reaching_the_steps(ps, tmp_path, kept, batch, epochs, min_steps):
    from dpcli.config import TrainConfig
    from dpcli.data.sources import load_dataset
    from dpcli.train.loop import train

    ds = load_dataset("digits")
    e = ps.proxy_epochs(kept, batch, epochs, min_steps)
    cfg = TrainConfig(
        dataset="digits", arch="convnet", width=4, depth=1, epochs=e, lr=0.05, batch_size=batch, augment=False, seed=0
    )
    ck = train(
        cfg,
        ds,
        tmp_path / "checkpoint.h5",
        device=torch.device("cpu"),
        keep_indices=np.arange(kept),
        eval_every=e,
        snapshot_epochs=(),
    )
    per_epoch = ck.steps // e  # the loop's own count
    assert ck.steps >= min_steps and e >= epochs
    assert e == epochs or ck.steps - per_epoch < min_steps  # one epoch fewer would fall short
