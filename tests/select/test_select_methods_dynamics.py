"""What `train` records for the faithful baselines (per-epoch class probabilities of the first epochs,
per-epoch margins), against a plain re-run of the same training loop."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpcli.data.sources import iterate_batches, load_dataset
from dpcli.train import dynamics
from dpcli.train.dynamics import read_dynamics
from dpcli.train.loop import _epoch_generator, make_model, train
from tests.conftest import tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _dyn(path):
    with h5py.File(path, "r") as f:
        return read_dynamics(f)


def _plain_probs(cfg, ds, epochs):
    """Re-run the training loop by hand and collect each sample's softmax from the pass that trained on it."""
    model = make_model(cfg, ds)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    out = np.zeros((epochs, len(ds.train.labels), ds.num_classes))
    for epoch in range(epochs):
        model.train()
        for x, y, idx in iterate_batches(
            ds.train,
            cfg.batch_size,
            mean=ds.mean,
            std=ds.std,
            device=CPU,
            shuffle=True,
            augment=False,
            generator=_epoch_generator(cfg.seed, epoch),
        ):
            logits = model(x)
            out[epoch, idx.numpy()] = torch.softmax(logits.detach(), 1).numpy()
            opt.zero_grad()
            F.cross_entropy(logits, y).backward()
            opt.step()
        sched.step()
    return out


def test_probs_and_margin_match_a_plain_training_loop(digits, tmp_path):
    cfg = tiny_config(seed=3)
    ck = train(cfg, digits, tmp_path / "c.h5", device=CPU, snapshot_epochs=())
    dyn = _dyn(ck.path)
    n, c = len(digits.train.labels), digits.num_classes
    assert dyn.probs.dtype == np.float16 and dyn.probs.shape == (3, n, c)
    assert dyn.margin.shape == (3, n)
    plain = _plain_probs(cfg, digits, 3)
    np.testing.assert_allclose(dyn.probs.astype(np.float64), plain, atol=2e-3)
    y = digits.train.labels
    for e in range(3):
        for i in range(0, n, 37):  # margin from its definition, one sample at a time
            other = max(plain[e, i, k] for k in range(c) if k != y[i])
            assert dyn.margin[e, i] == pytest.approx(plain[e, i, y[i]] - other, abs=1e-5)
    # the true-class probability DUAL reads from the loss is the recorded softmax
    np.testing.assert_allclose(np.exp(-dyn.loss.astype(np.float64)), plain[:, np.arange(n), y], atol=1e-5)


def test_probs_cover_only_the_first_epochs_and_survive_resume(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(dynamics, "PROB_EPOCHS", 2)
    cfg = tiny_config(seed=4)
    full = _dyn(train(cfg, digits, tmp_path / "a.h5", device=CPU, snapshot_epochs=()).path)
    n = len(digits.train.labels)
    assert full.probs.shape == (2, n, digits.num_classes) and full.margin.shape == (3, n)
    train(cfg, digits, tmp_path / "b.h5", device=CPU, snapshot_epochs=(), stop_after=1)
    resumed = _dyn(train(cfg, digits, tmp_path / "b.h5", device=CPU, snapshot_epochs=()).path)
    np.testing.assert_array_equal(resumed.probs, full.probs)
    np.testing.assert_array_equal(resumed.margin, full.margin)


def test_subset_training_marks_unseen_probs_and_margins(digits, tmp_path):
    keep = np.arange(0, len(digits.train.labels), 4)
    dyn = _dyn(
        train(tiny_config(epochs=2), digits, tmp_path / "s.h5", device=CPU, keep_indices=keep, snapshot_epochs=()).path
    )
    unseen = np.setdiff1d(np.arange(len(digits.train.labels)), keep)
    assert np.isnan(dyn.margin[:, unseen]).all() and np.isnan(dyn.probs[:, unseen]).all()
    assert not np.isnan(dyn.margin[:, keep]).any() and not np.isnan(dyn.probs[:, keep]).any()


def test_probs_over_the_budget_are_skipped_with_the_reason_and_margins_kept(digits, tmp_path, monkeypatch):
    """n x C x 2 B x min(30, epochs) is the memory the probabilities take: 1438 x 10 x 2 x 3 = 86,280 B."""
    from dpcli.errors import DpcliError

    cfg = tiny_config(seed=5)
    monkeypatch.setenv("DPCLI_PROBS_BUDGET", "90K")  # 92,160 B: fits
    assert _dyn(train(cfg, digits, tmp_path / "fits.h5", device=CPU, snapshot_epochs=()).path).probs is not None
    monkeypatch.setenv("DPCLI_PROBS_BUDGET", "80K")  # 81,920 B: does not
    full = _dyn(train(cfg, digits, tmp_path / "a.h5", device=CPU, snapshot_epochs=()).path)
    assert full.probs is None and "DPCLI_PROBS_BUDGET" in full.probs_skipped
    assert full.margin.shape == (3, len(digits.train.labels))  # CCS and D2 still have what they read
    with pytest.raises(DpcliError, match="did not record.*DPCLI_PROBS_BUDGET"):
        full.require("probs", "--method tdds")
    train(cfg, digits, tmp_path / "b.h5", device=CPU, snapshot_epochs=(), stop_after=1)
    resumed = _dyn(train(cfg, digits, tmp_path / "b.h5", device=CPU, snapshot_epochs=()).path)
    assert resumed.probs is None and resumed.probs_skipped
    np.testing.assert_array_equal(resumed.margin, full.margin)
