"""Training: checkpoints are complete, resumable, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpcli.data.sources import load_dataset
from dpcli.errors import DpcliError
from dpcli.train.checkpoint import EpochRecord, load_checkpoint, time_to_accuracy
from dpcli.train.loop import evaluate, load_trained, train
from tests.conftest import interrupt_after
from tests.conftest import tiny_config as _cfg

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_resume_after_interrupt_equals_uninterrupted(digits, tmp_path):
    cfg = _cfg(augment=True)  # augmentation randomness must be reproduced on resume too
    full = train(cfg, digits, tmp_path / "full.h5", device=CPU)
    part = tmp_path / "part.h5"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, digits, part, device=CPU, on_epoch=interrupt_after(1))
    mid = load_checkpoint(part)
    assert mid.epoch == 1 and not mid.complete
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    # a deterministic restart from epoch 0 would give the same weights: count what actually runs
    executed, batches = [], []
    resumed = train(
        cfg,
        digits,
        part,
        device=CPU,
        on_epoch=lambda r: executed.append(r.epoch),
        on_batch=lambda e, seen, per: batches.append(e),
    )
    assert executed == [2, 3] and sorted(set(batches)) == [1, 2]  # epochs 2 and 3 (0-based 1, 2) only
    assert resumed.complete and resumed.epoch == 3
    for key, value in full.state.items():
        assert torch.equal(value, resumed.state[key]), key
    assert [r.train_loss for r in full.history] == [r.train_loss for r in resumed.history]


def test_checkpoint_contents_and_reuse(digits, tmp_path):
    cfg = _cfg()
    path = tmp_path / "ck.h5"
    ck = train(cfg, digits, path, device=CPU)
    back = load_checkpoint(path)
    assert back.config == cfg and back.complete and back.epoch == 3
    assert back.dataset_fingerprint == digits.fingerprint
    assert back.optimizer is not None and len(back.optimizer["state"]) > 0  # momentum buffers saved
    assert back.scheduler["last_epoch"] == 3
    # the recorded test accuracy is what the saved weights give
    model, _, _ = load_trained(path, CPU, ds=digits)
    loss, acc = evaluate(model, digits.test, digits, CPU)
    assert acc == pytest.approx(back.final.test_acc)
    assert loss == pytest.approx(back.final.test_loss, rel=1e-5)
    assert acc > 60  # a real model, not chance (10 %)
    # a second call with the same config reuses the file instead of training again
    again = train(cfg, digits, path, device=CPU, on_epoch=lambda r: pytest.fail("retrained"))
    assert again.fingerprint == ck.fingerprint
    with pytest.raises(DpcliError, match="another configuration"):
        train(cfg.replace(lr=0.1), digits, path, device=CPU)


def test_subset_training_uses_only_kept_samples(digits, tmp_path):
    keep = np.arange(0, len(digits.train.labels), 3)
    ck = train(_cfg(epochs=1), digits, tmp_path / "sub.h5", device=CPU, keep_indices=keep)
    assert ck.history[0].steps == int(np.ceil(len(keep) / 64))
    assert np.array_equal(load_checkpoint(tmp_path / "sub.h5").keep_indices, keep)


def test_time_to_accuracy():
    hist = [
        EpochRecord(epoch=i + 1, train_loss=0, train_acc=0, test_loss=0, test_acc=acc, seconds=2.0, steps=1, lr=0.1)
        for i, acc in enumerate([50.0, 70.0, 90.0])
    ]
    assert time_to_accuracy(hist, 70.0) == (4.0, 2)
    assert time_to_accuracy(hist, 95.0) is None


def test_epoch_metrics_equal_the_per_sample_records(digits, tmp_path):
    """train_loss / train_acc (summed on the device) equal the mean of the per-sample records of the same passes."""
    from dpcli.select.signals import load_dynamics

    ck = train(_cfg(epochs=2), digits, tmp_path / "ck.h5", device=torch.device("cpu"))
    dyn = load_dynamics(ck.path, snapshots=False)
    for e, rec in enumerate(ck.history):
        assert rec.train_acc == pytest.approx(100.0 * float(np.mean(dyn.correct[e] == 1)), abs=1e-9)
        assert rec.train_loss == pytest.approx(float(np.mean(dyn.loss[e].astype(np.float64))), rel=1e-5)
