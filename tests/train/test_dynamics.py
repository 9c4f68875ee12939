"""Training dynamics: what train records agrees with its own epoch statistics, survives resume,
and the snapshots are the model at those epochs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from dpcli.data.sources import load_dataset
from dpcli.train.checkpoint import load_checkpoint
from dpcli.train.dynamics import read_dynamics
from dpcli.train.loop import make_model, train
from tests.conftest import tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _cfg(**kw):
    return tiny_config(**{"augment": True, "seed": 3, **kw})


def _dyn(path):
    with h5py.File(path, "r") as f:
        return read_dynamics(f)


def test_recorded_losses_match_epoch_statistics_and_snapshots(digits, tmp_path):
    cfg = _cfg()
    ck = train(cfg, digits, tmp_path / "c.h5", device=CPU, snapshot_epochs=(0, 2, 3))
    dyn = _dyn(ck.path)
    n = len(digits.train.labels)
    assert dyn.loss.shape == (3, n) and dyn.correct.shape == (3, n)
    assert not np.isnan(dyn.loss).any() and set(np.unique(dyn.correct)) <= {0, 1}
    for e, rec in enumerate(ck.history):  # history aggregates the same forward passes independently
        assert dyn.loss[e].astype(np.float64).mean() == pytest.approx(rec.train_loss, rel=1e-5)
        assert 100.0 * dyn.correct[e].mean() == pytest.approx(rec.train_acc, abs=1e-9)
    init = make_model(cfg, digits).state_dict()
    for k, v in init.items():
        assert torch.equal(dyn.snapshots[0][k], v), k
    for k, v in ck.state.items():
        assert torch.equal(dyn.snapshots[3][k], v), k
    # epoch 2's snapshot is exactly what a run stopped after epoch 2 holds
    stopped = train(cfg, digits, tmp_path / "stop.h5", device=CPU, stop_after=2)
    assert stopped.epoch == 2 and not stopped.complete
    for k, v in stopped.state.items():
        assert torch.equal(dyn.snapshots[2][k], v), k
    # ... and resuming it finishes the same run, dynamics included
    resumed = train(cfg, digits, tmp_path / "stop.h5", device=CPU, snapshot_epochs=(0, 2, 3))
    assert resumed.complete
    again = _dyn(resumed.path)
    np.testing.assert_array_equal(again.loss, dyn.loss)
    np.testing.assert_array_equal(again.correct, dyn.correct)


def test_subset_training_marks_unseen_samples(digits, tmp_path):
    keep = np.arange(0, len(digits.train.labels), 3)
    ck = train(_cfg(epochs=2), digits, tmp_path / "s.h5", device=CPU, keep_indices=keep)
    dyn = _dyn(ck.path)
    seen = ~np.isnan(dyn.loss)
    assert np.array_equal(np.flatnonzero(seen[0]), keep) and np.array_equal(seen[0], seen[1])
    assert np.all(dyn.correct[:, np.setdiff1d(np.arange(len(digits.train.labels)), keep)] == 255)


def test_eval_every_skips_intermediate_evaluations(digits, tmp_path):
    ck = train(_cfg(), digits, tmp_path / "e.h5", device=CPU, eval_every=100)
    accs = [r.test_acc for r in ck.history]
    assert np.isnan(accs[0]) and np.isnan(accs[1]) and np.isfinite(accs[2])
    assert load_checkpoint(ck.path).final.test_acc == accs[2]


def test_cli_snapshot_epochs(tmp_path, capsys):
    from tests.conftest import TINY, run_cli

    out = tmp_path / "c.h5"
    code, _, err = run_cli(["train", "digits", *TINY, "--snapshot-epochs", "1,3", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert sorted(_dyn(out).snapshots) == [1, 3]
    code, outp, err = run_cli(["train", "digits", *TINY, "--snapshot-epochs", "9", "--out", tmp_path / "d.h5"], capsys)
    assert code == 2 and "--snapshot-epochs" in err and err.strip().count("\n") == 0
