"""SGD-Influence (dpcli.sgd_influence) against actual leave-one-out retraining along the same SGD sequence.

Oracle: n + 1 softmax regressions trained side by side by a real ``torch.optim.SGD`` (momentum,
coupled weight decay, per-epoch learning rates) on one fixed batch sequence; model ``j`` has sample
``j`` left out of its batches (batch mean over the remaining samples), model ``n`` is the full run.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpcli.errors import DpcliError
from dpcli.influence.kernels import exact_influence
from dpcli.influence.sgd import Trajectory, load_trajectory, replay_last_layer, sgd_influence

F64 = torch.float64


def _problem(n: int = 60, dim: int = 4, classes: int = 3, epochs: int = 5, batch: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dim, generator=gen, dtype=F64)
    teacher = torch.randn(classes, dim, generator=gen, dtype=F64)
    y = (X @ teacher.T + 1.5 * torch.randn(n, classes, generator=gen, dtype=F64)).argmax(1)
    W0 = 0.1 * torch.randn(classes, dim, generator=gen, dtype=F64)
    b0 = 0.1 * torch.randn(classes, generator=gen, dtype=F64)
    order = np.stack([torch.randperm(n, generator=gen).numpy() for _ in range(epochs)]).astype(np.int32)
    lrs = np.array([0.2 * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)])
    return X, y, W0, b0, order, lrs, batch


def _oracle(X, y, W0, b0, order, lrs, batch, mu=0.9, wd=5e-3, remove_from_epoch=0):
    """Train the full model and all n leave-one-out models; returns (final W, b of all n+1, snapshots)."""
    n, dim = X.shape
    classes = W0.shape[0]
    models = n + 1
    W = torch.nn.Parameter(W0.expand(models, classes, dim).clone())
    B = torch.nn.Parameter(b0.expand(models, classes).clone())
    opt = torch.optim.SGD([W, B], lr=float(lrs[0]), momentum=mu, weight_decay=wd)
    snaps = []
    for e in range(order.shape[0]):
        for group in opt.param_groups:
            group["lr"] = float(lrs[e])
        st_w, st_b = opt.state.get(W, {}), opt.state.get(B, {})
        snaps.append(
            (
                W[n].detach().clone(),
                B[n].detach().clone(),
                st_w["momentum_buffer"][n].clone()
                if "momentum_buffer" in st_w
                else torch.zeros(classes, dim, dtype=F64),
                st_b["momentum_buffer"][n].clone() if "momentum_buffer" in st_b else torch.zeros(classes, dtype=F64),
                "momentum_buffer" in st_w,
            )
        )
        for s in range(0, n, batch):
            idx = torch.from_numpy(order[e, s : s + batch].astype(np.int64))
            mask = torch.ones(models, idx.numel(), dtype=F64)
            if e >= remove_from_epoch:
                mask[idx, torch.arange(idx.numel())] = 0.0  # model j drops sample j
            logits = torch.einsum("bd,mcd->mbc", X[idx], W) + B[:, None, :]
            ce = F.cross_entropy(logits.reshape(-1, classes), y[idx].repeat(models), reduction="none")
            ce = ce.reshape(models, idx.numel())
            loss = ((ce * mask).sum(1) / mask.sum(1).clamp_min(1.0)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return W.detach(), B.detach(), snaps


def _trajectory(snaps, order, lrs, batch, mu=0.9, wd=5e-3) -> Trajectory:
    return Trajectory(
        epochs=np.arange(len(snaps)),
        lr=np.asarray(lrs, dtype=np.float64),
        weight=np.stack([s[0].numpy() for s in snaps]),
        bias=np.stack([s[1].numpy() for s in snaps]),
        momentum_weight=np.stack([s[2].numpy() for s in snaps]),
        momentum_bias=np.stack([s[3].numpy() for s in snaps]),
        has_momentum=np.array([s[4] for s in snaps]),
        order=order,
        batch_size=batch,
        momentum=mu,
        weight_decay=wd,
    )


def _flat(W, B):
    return torch.cat([W.reshape(W.shape[0], -1), B], dim=1)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def oracle_run():
    X, y, W0, b0, order, lrs, batch = _problem()
    W, B, snaps = _oracle(X, y, W0, b0, order, lrs, batch)
    theta = _flat(W, B)
    actual = (theta[:-1] - theta[-1]).numpy()
    return dict(X=X, y=y, order=order, lrs=lrs, batch=batch, W=W, B=B, snaps=snaps, actual=actual)


def test_replay_reproduces_the_sgd_run(oracle_run):
    r = oracle_run
    traj = _trajectory(r["snaps"], r["order"], r["lrs"], r["batch"])
    w, b = replay_last_layer(r["X"], r["y"], traj)
    n = r["X"].shape[0]
    assert torch.allclose(w, r["W"][n], atol=1e-12) and torch.allclose(b, r["B"][n], atol=1e-12)
    # from a later snapshot (with momentum buffers) too
    w2, b2 = replay_last_layer(r["X"], r["y"], traj, epochs=2)
    assert torch.allclose(w2, r["W"][n], atol=1e-12) and torch.allclose(b2, r["B"][n], atol=1e-12)


def test_sgd_influence_predicts_leave_one_out_sgd_better_than_influence_function(oracle_run):
    r = oracle_run
    n = r["X"].shape[0]
    traj = _trajectory(r["snaps"], r["order"], r["lrs"], r["batch"])
    S_sgd = sgd_influence(r["X"], r["y"], traj).astype(np.float64)
    S_if = exact_influence(r["X"], r["y"], r["W"][n], r["B"][n], damping=5e-3).astype(np.float64)
    actual = r["actual"]
    err_sgd, err_if = _rel(S_sgd, actual), _rel(S_if, actual)
    corr = float(np.corrcoef(S_sgd.ravel(), actual.ravel())[0, 1])
    msg = f"relative error: SGD-Influence {err_sgd:.3e}, influence function {err_if:.3e}; corr {corr:.5f}"
    print(msg)
    assert err_sgd < err_if, msg
    assert corr > 0.99, msg
    assert err_sgd < 0.1, msg


def test_truncated_window_predicts_removal_in_the_last_epochs_only():
    X, y, W0, b0, order, lrs, batch = _problem(seed=1)
    W, B, snaps = _oracle(X, y, W0, b0, order, lrs, batch, remove_from_epoch=3)
    theta = _flat(W, B)
    actual = (theta[:-1] - theta[-1]).numpy()
    S = sgd_influence(X, y, _trajectory(snaps, order, lrs, batch), epochs=2).astype(np.float64)
    assert _rel(S, actual) < 0.1, _rel(S, actual)


def test_chunking_streaming_and_window_validation(oracle_run):
    r = oracle_run
    traj = _trajectory(r["snaps"], r["order"], r["lrs"], r["batch"])
    full = sgd_influence(r["X"], r["y"], traj)
    rows, calls = {}, []
    sgd_influence(
        r["X"],
        r["y"],
        traj,
        chunk_size=7,
        sink=lambda s, block: rows.__setitem__(s, block),
        progress=lambda done, total: calls.append((done, total)),
    )
    streamed = np.concatenate([rows[k] for k in sorted(rows)])
    np.testing.assert_allclose(streamed, full, rtol=1e-6, atol=1e-9)
    assert calls[-1] == (60, 60) and [c[0] for c in calls] == sorted(c[0] for c in calls)
    with pytest.raises(DpcliError, match="sgd-epochs"):
        sgd_influence(r["X"], r["y"], traj, epochs=6)
    with pytest.raises(DpcliError, match="sgd-epochs"):
        sgd_influence(r["X"], r["y"], traj, epochs=0)


# --------------------------------------------------------------------------- #
# recording in `train`, and the CLI end to end on digits
# --------------------------------------------------------------------------- #

from dpcli.data.sources import load_dataset  # noqa: E402
from dpcli.train.checkpoint import load_checkpoint  # noqa: E402
from dpcli.train.loop import _epoch_generator, extract_features, load_trained, make_model, train  # noqa: E402
from tests.conftest import interrupt_after, run_cli, run_json, tiny_config  # noqa: E402

CPU = torch.device("cpu")


def _traj_equal(a: Trajectory, b: Trajectory) -> None:
    for key in ("epochs", "lr", "weight", "bias", "momentum_weight", "momentum_bias", "has_momentum", "order"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert (a.batch_size, a.momentum, a.weight_decay) == (b.batch_size, b.momentum, b.weight_decay)


def test_trajectory_survives_resume(tmp_path):
    digits = load_dataset("digits")
    cfg = tiny_config(augment=True)
    train(cfg, digits, tmp_path / "full.h5", device=CPU)
    part = tmp_path / "part.h5"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, digits, part, device=CPU, on_epoch=interrupt_after(2))
    from dpcli.train import epochlog  # an interrupted run's rows are in the append-only side log

    rows = epochlog.split(epochlog.read(part, 2), "trajectory")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    train(cfg, digits, part, device=CPU)
    full, resumed = load_trajectory(tmp_path / "full.h5"), load_trajectory(part)
    _traj_equal(full, resumed)
    assert list(full.epochs) == [0, 1, 2]


def test_recorded_trajectory_matches_the_training_run(tiny_run):
    ck = load_checkpoint(tiny_run.checkpoint)
    cfg = ck.config
    traj = load_trajectory(tiny_run.checkpoint)
    n = ck.n_train
    assert len(traj) == cfg.epochs and traj.order.shape == (cfg.epochs, n) and traj.order.dtype == np.int32
    for e in range(cfg.epochs):  # the batch order is the epoch generator's permutation
        assert np.array_equal(traj.order[e], torch.randperm(n, generator=_epoch_generator(cfg.seed, e)).numpy())
    assert np.allclose(traj.lr, [r.lr for r in ck.history])
    assert list(traj.has_momentum) == [False] + [True] * (cfg.epochs - 1)
    assert (traj.batch_size, traj.momentum, traj.weight_decay) == (cfg.batch_size, cfg.momentum, cfg.weight_decay)
    initial = make_model(cfg, load_dataset("digits")).head
    assert np.array_equal(traj.weight[0], initial.weight.detach().numpy())
    assert np.array_equal(traj.bias[0], initial.bias.detach().numpy())


def test_cli_influence_sgd_end_to_end(tiny_run, tmp_path, capsys):
    ck = tiny_run.checkpoint
    outs = [tmp_path / "a.h5", tmp_path / "b.h5"]
    summaries = [
        run_json(["influence", ck, "--estimator", "sgd", "--sgd-epochs", "2", "--out", o, "--device", "cpu"], capsys)
        for o in outs
    ]
    assert summaries[0]["method"] == "sgd"
    assert summaries[0]["fingerprint"] == summaries[1]["fingerprint"]  # deterministic
    model, ckpt, ds = load_trained(ck, CPU)
    n, C, D = ckpt.n_train, ds.num_classes, model.head.weight.shape[1]
    with h5py.File(outs[0], "r") as f:
        S = f["S"][()]
        assert f.attrs["method"] == "sgd"
        assert '"sgd_epochs": 2' in f.attrs["config"]
    assert S.shape == (n, C * (D + 1)) and np.isfinite(S).all() and np.abs(S).max() > 0
    feats = extract_features(model, ds.train, ds, CPU)
    labels = torch.from_numpy(ds.train.labels)
    w, b = replay_last_layer(feats, labels, load_trajectory(ck))
    assert w.shape == (C, D) and b.shape == (C,) and torch.isfinite(w).all() and torch.isfinite(b).all()
    # a checkpoint without a trajectory is refused with one clear line
    bare = tmp_path / "bare.h5"
    bare.write_bytes(ck.read_bytes())
    with h5py.File(bare, "a") as f:
        del f["trajectory"]
    code, _, err = run_cli(
        ["influence", bare, "--estimator", "sgd", "--out", tmp_path / "c.h5", "--device", "cpu"], capsys
    )
    assert code == 2 and "no SGD trajectory" in err
    code, _, err = run_cli(
        [
            "influence",
            ck,
            "--estimator",
            "sgd",
            "--sgd-epochs",
            "9",
            "--out",
            tmp_path / "d.h5",
            "--device",
            "cpu",
            "--force",
        ],
        capsys,
    )
    assert code == 2 and "--sgd-epochs" in err


def test_config_keys_sgd_epochs_only_for_sgd():
    from dpcli.config import InfluenceConfig

    assert (
        "sgd_epochs" not in InfluenceConfig(estimator="exact", sgd_epochs=3).to_dict()
    )  # it does not change an exact S
    assert InfluenceConfig(estimator="sgd", sgd_epochs=3).validate().to_dict()["sgd_epochs"] == 3
    with pytest.raises(DpcliError, match="--sgd-epochs"):
        InfluenceConfig(estimator="sgd", sgd_epochs=0).validate()
