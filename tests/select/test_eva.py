"""EVA against a plain transcription of its authors' code (xxxx-Bella/EVA @ b83eab7), and the per-epoch
error-vector norm that `train` records for it, against a plain re-run of the training loop.

The oracle below mirrors ``generate_importance_score.py::EVA`` line by line: it walks the training-dynamics
log (one entry per batch, dataset indices in loader order, log-softmax outputs), scores ``sqrt(sum((onehot -
exp(output))**2))``, takes ``torch.var`` over each window when the first batch of the epoch after it
arrives, L1-normalizes with ``F.normalize`` and mixes the windows with ``wt``; ``score_monotonic_selection``
then keeps the ``int(ratio * N)`` highest.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpcli.config import PruneConfig
from dpcli.errors import DpcliError
from dpcli.select.base import Context
from dpcli.select.linalg import count_from_ratio
from dpcli.select.methods import eva
from dpcli.train.dynamics import Dynamics, DynamicsRecorder, read_dynamics
from dpcli.train.loop import train
from tests.conftest import interrupt_after, tiny_config
from tests.select.test_select_methods_dynamics import _dyn, _plain_probs, digits  # noqa: F401 (a fixture)
from tests.select.test_select_methods_reference import RATIOS, _kept, _trajectory

CPU = torch.device("cpu")


# ---------------------------------------------------------------- the oracle (plain transcription)


def oracle_eva(td_log, targets, num_classes, e_min, e_max, l_min, l_max, wt=0.5):
    """generate_importance_score.py::EVA, as published (the early variance is taken when epoch e_max begins,
    the later one, and the score, when epoch l_max begins)."""
    data_size = len(targets)
    early = torch.zeros((e_max - e_min, data_size)).type(torch.float32)
    later = torch.zeros((l_max - l_min, data_size)).type(torch.float32)
    l2_loss = torch.nn.MSELoss(reduction="none")

    def record_training_dynamics(item, epoch_idx, phase):
        output = torch.exp(item["output"].type(torch.float))
        index = item["idx"].type(torch.long)
        label = targets[index]
        label_onehot = F.one_hot(label, num_classes=num_classes)
        score = torch.sqrt(l2_loss(label_onehot, output).sum(dim=1))
        if phase == "early":
            early[epoch_idx - e_min, index] = score
        else:
            later[epoch_idx - l_min, index] = score

    for item in td_log:
        epoch_idx = item["epoch"]
        if e_min <= epoch_idx < e_max:
            record_training_dynamics(item, epoch_idx, "early")
        elif l_min <= epoch_idx < l_max:
            record_training_dynamics(item, epoch_idx, "later")
        if epoch_idx == e_max:
            el2n_var_e_norm = F.normalize(torch.var(early, dim=0).unsqueeze(0), p=1, dim=1)
        elif epoch_idx == l_max:
            el2n_var_l_norm = F.normalize(torch.var(later, dim=0).unsqueeze(0), p=1, dim=1)
            return torch.squeeze(wt * el2n_var_e_norm + (1 - wt) * el2n_var_l_norm).numpy()
    raise AssertionError("the log must reach epoch l_max")


def oracle_keep(score, coreset_ratio):
    """Coreset.py::score_monotonic_selection with descending=True: the int(ratio N) highest scores."""
    order = torch.from_numpy(np.asarray(score)).argsort(descending=True)
    return order[: int(coreset_ratio * len(score))].numpy()


# ---------------------------------------------------------------- helpers


def _run(logits, labels, batch=64, seed=0, half=False):
    """One shuffled pass per epoch over fixed logits: the reference's log and dpcli's recorder side by side."""
    E, N, _ = logits.shape
    z, y = torch.from_numpy(logits), torch.from_numpy(labels)
    g = torch.Generator().manual_seed(seed)
    rec = DynamicsRecorder(N, epochs=E)
    td_log = []
    for e in range(E):
        rec.begin_epoch("cpu")
        for it, idx in enumerate(torch.randperm(N, generator=g).split(batch)):
            rec.add_batch(idx, F.cross_entropy(z[e, idx], y[idx], reduction="none"), z[e, idx], y[idx])
            out = F.log_softmax(z[e, idx], dim=1)
            td_log.append({"epoch": e, "iteration": it, "idx": idx.clone(), "output": out.half() if half else out})
        rec.end_epoch()
    return td_log, rec


def _written(rec, tmp_path):
    """The recorder's rows as a checkpoint stores and reads them back."""
    path = tmp_path / "dyn.h5"
    with h5py.File(path, "w") as f:
        rec.write(f)
    with h5py.File(path, "r") as f:
        return read_dynamics(f)


def _ctx(labels, dyn: Dynamics) -> Context:
    ctx = Context(S=np.zeros((len(labels), 2)), labels=np.asarray(labels))
    ctx._cache["dynamics"] = dyn
    return ctx


# ---------------------------------------------------------------- the reference


@pytest.mark.parametrize("r", RATIOS)
def test_eva_matches_the_reference(r, tmp_path):
    rng = np.random.default_rng(11)
    E, N, C = 32, 600, 10  # windows [0, 10) and [16, 26); the log reaches epoch 26
    logits, labels = _trajectory(rng, E, N, C)
    td_log, rec = _run(logits, labels)
    want = oracle_eva(td_log, torch.from_numpy(labels), C, 0, 10, 16, 26)
    dyn = _written(rec, tmp_path)
    assert dyn.el2n.dtype == np.float32 and dyn.el2n.shape == (E, N)
    got = eva.EVA(PruneConfig(ratio=r)).scores(_ctx(labels, dyn))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
    m = count_from_ratio(N, r)
    assert int(((N - m) / N) * N) == N - m  # the reference's int(ratio N) keeps the same count here
    pruned, label = eva.EVA(PruneConfig(ratio=r)).select(_ctx(labels, dyn), m, None)
    assert label == "eva" and _kept(pruned) == set(oracle_keep(want, (N - m) / N).tolist())


def test_eva_windows_follow_the_readme_and_short_runs():
    assert eva.eva_windows(200) == (slice(0, 10), slice(100, 110))  # the README's 0 10 100 110
    assert eva.eva_windows(40) == (slice(0, 10), slice(20, 30))
    assert eva.eva_windows(4) == (slice(0, 2), slice(2, 4))
    assert eva.eva_windows(3) == (slice(0, 2), slice(1, 3))
    with pytest.raises(DpcliError, match="at least 3 recorded epochs"):
        eva.eva_windows(2)
    rng = np.random.default_rng(12)
    logits, labels = _trajectory(rng, 7, 80, 4)  # the log reaches epoch 6 = l_max
    td_log, rec = _run(logits, labels, batch=16)
    el2n = np.stack(rec._el2n)[:6]  # a 6-epoch run: windows [0, 3) and [3, 6)
    want = oracle_eva(td_log, torch.from_numpy(labels), 4, 0, 3, 3, 6)
    np.testing.assert_allclose(eva.eva_scores(el2n), want, rtol=1e-5, atol=1e-12)
    weighted = eva.eva_scores(el2n, weight=0.8)
    np.testing.assert_allclose(
        weighted, oracle_eva(td_log, torch.from_numpy(labels), 4, 0, 3, 3, 6, wt=0.8), rtol=1e-5, atol=1e-12
    )


def test_eva_on_the_references_float16_log_keeps_nearly_the_same_sets():
    """The reference stores log-softmax outputs as float16; dpcli records the norm from float32 (docs/baselines.md)."""
    rng = np.random.default_rng(13)
    logits, labels = _trajectory(rng, 32, 4000, 10)
    td16, rec = _run(logits, labels, batch=128, half=True)
    a = eva.eva_scores(np.stack(rec._el2n))
    b = oracle_eva(td16, torch.from_numpy(labels), 10, 0, 10, 16, 26)
    assert np.max(np.abs(a - b) / a) < 5e-3  # 1.1e-3 on this draw
    for r in RATIOS:
        keep = 1 - r
        ka, kb = set(oracle_keep(a, keep).tolist()), set(oracle_keep(b, keep).tolist())
        assert len(ka & kb) / len(ka | kb) >= 0.99, r


def test_the_references_dropped_last_batch_inflates_the_variance_dpcli_records_every_sample():
    """The reference trains with ``drop_last=True``: each epoch, the ``N mod batch`` samples of the last,
    incomplete batch keep an error norm of 0 in its log, a jump that inflates their variance and puts most of
    them in the coreset.  dpcli records every sample in every epoch (docs/baselines.md)."""
    rng = np.random.default_rng(14)
    E, N, C, batch = 32, 2000, 10, 64  # 2000 mod 64 = 16 samples left out of each epoch
    logits, labels = _trajectory(rng, E, N, C)
    td_log, rec = _run(logits, labels, batch=batch)
    dropped = [item for item in td_log if len(item["idx"]) < batch]
    missed = np.unique(
        np.concatenate([item["idx"].numpy() for item in dropped if item["epoch"] < 10 or 16 <= item["epoch"] < 26])
    )
    reference = oracle_eva(
        [item for item in td_log if len(item["idx"]) == batch], torch.from_numpy(labels), C, 0, 10, 16, 26
    )
    ours = eva.eva_scores(np.stack(rec._el2n))
    np.testing.assert_allclose(ours, oracle_eva(td_log, torch.from_numpy(labels), C, 0, 10, 16, 26), rtol=1e-5)
    top = set(oracle_keep(reference, 0.1).tolist())  # 90 % pruned
    share_reference = np.mean([i in top for i in missed])
    share_ours = np.mean([i in set(oracle_keep(ours, 0.1).tolist()) for i in missed])
    assert share_reference > 0.5 and share_ours < 0.25, (share_reference, share_ours, len(missed))


def test_checkpoints_without_el2n_or_with_unseen_samples_get_one_clear_error():
    labels = np.arange(20) % 2
    old = Dynamics(
        loss=np.zeros((5, 20), np.float32), correct=np.zeros((5, 20), np.uint8), margin=np.zeros((5, 20), np.float32)
    )
    with pytest.raises(DpcliError, match="--method eva.*train --force"):
        eva.EVA(PruneConfig(ratio=0.5)).select(_ctx(labels, old), 10, None)
    el2n = np.random.default_rng(0).random((5, 20)).astype(np.float32)
    el2n[3, 7] = np.nan  # a sample outside a retrain subset
    with pytest.raises(DpcliError, match="every sample"):
        eva.eva_scores(el2n)


# ---------------------------------------------------------------- what `train` records


def test_recorded_el2n_matches_a_plain_training_loop_and_survives_resume(digits, tmp_path):  # noqa: F811
    cfg = tiny_config(seed=6)
    full = _dyn(train(cfg, digits, tmp_path / "a.h5", device=CPU, snapshot_epochs=()).path)
    n, y = len(digits.train.labels), digits.train.labels
    plain = _plain_probs(cfg, digits, 3)
    onehot = np.eye(digits.num_classes)[y]
    np.testing.assert_allclose(full.el2n, np.linalg.norm(plain - onehot[None], axis=2), atol=1e-5)
    assert full.el2n.shape == (3, n)
    # resumed from the checkpoint's own groups (a stop_after run) and from the side log (an interrupted run)
    train(cfg, digits, tmp_path / "b.h5", device=CPU, snapshot_epochs=(), stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, digits, tmp_path / "c.h5", device=CPU, snapshot_epochs=(), on_epoch=interrupt_after(1))
    for name in ("b.h5", "c.h5"):
        resumed = _dyn(train(cfg, digits, tmp_path / name, device=CPU, snapshot_epochs=()).path)
        np.testing.assert_array_equal(resumed.el2n, full.el2n, err_msg=name)


def test_subset_training_marks_unseen_el2n_and_eva_refuses_it(digits, tmp_path):  # noqa: F811
    keep = np.arange(0, len(digits.train.labels), 3)
    dyn = _dyn(train(tiny_config(), digits, tmp_path / "s.h5", device=CPU, keep_indices=keep, snapshot_epochs=()).path)
    unseen = np.setdiff1d(np.arange(len(digits.train.labels)), keep)
    assert np.isnan(dyn.el2n[:, unseen]).all() and not np.isnan(dyn.el2n[:, keep]).any()
    with pytest.raises(DpcliError, match="every sample"):
        eva.eva_scores(dyn.el2n)
