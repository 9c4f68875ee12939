"""Refits of the linear head on a kept set of embeddings: the embeddings path's retrain, as checkpoint artifacts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dpcli.data.embeddings import SOURCE, Embeddings, reload_embeddings
from dpcli.errors import DpcliError
from dpcli.influence.head import DEFAULT_MAX_ITER, DEFAULT_TOL, HeadFit, fit_head, objective

if TYPE_CHECKING:
    from torch import Tensor

    from dpcli.stages.masks import MaskInfo


_CHUNK = 8192  # rows per evaluation block


# ------------------------------------------------------------------------------------------ runs
@dataclass(repr=False)
class Refit:
    """The head refitted on a subset, and its losses."""

    head: HeadFit
    train_loss: float  # mean CE on ALL training rows (no regularizer)
    test_loss: float | None
    test_accuracy: float | None
    seconds: float

    def __repr__(self) -> str:  # one line, not the weights
        test = (
            ""
            if self.test_loss is None
            else f", test_loss={self.test_loss:.6g}, test_accuracy={self.test_accuracy:.2f}%"
        )
        return f"Refit(train_loss={self.train_loss:.6g}{test}, seconds={self.seconds:.2f}, head={self.head!r})"


REFIT_OBJECTIVE = "(1/n) sum_kept CE + damping/2 ||[W, b]||^2"


def refit(
    emb: Embeddings,
    keep: np.ndarray,
    damping: float,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    init: tuple | None = None,
) -> Refit:
    """The model S predicts: the head refitted to the optimum of the full run's objective with the pruned
    rows' weights set to zero, ``(1/n) sum_kept CE + damping/2 ||theta||^2`` (:data:`REFIT_OBJECTIVE`).

    S_i = (1/n) (H + damping I)^-1 g_i is the first-order change of that optimum, so ``sum_pruned S_i``
    matches the refit up to second order.  Over the kept rows' mean CE it is an L2 of
    ``damping * n / n_kept``; a retrain on the kept set with the full run's weight decay and a mean loss
    (the usual one) minimizes another objective, whose optimum differs at first order.  From zero or
    from ``init = (W, b)``: the objective is strongly convex, so the start changes only the steps."""
    import torch

    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (emb.n,):
        raise DpcliError(f"the mask has {keep.shape[0]} samples but the features have {emb.n} rows")
    if not keep.any():
        raise DpcliError("the mask keeps no samples; nothing to refit")
    t0 = time.perf_counter()
    idx = torch.from_numpy(np.flatnonzero(keep))
    x, y = torch.from_numpy(emb.x), torch.from_numpy(emb.y)
    head = fit_head(x[idx], y[idx], emb.num_classes, damping * emb.n / len(idx), tol=tol, max_iter=max_iter, init=init)
    return _evaluate(emb, head, time.perf_counter() - t0)


def _mean_ce(x: "Tensor", y: "Tensor", head: HeadFit) -> float:
    return objective(x, y, head.weight, head.bias, 0.0)[0]


def full_fit(influence: Path | str, emb: Embeddings) -> Refit:
    """The full-data optimum recorded in ``influence.h5`` (theta), with its losses: no second fit of all rows."""
    import torch

    from dpcli.artifacts.h5 import get_attr, open_artifact

    t0 = time.perf_counter()
    with open_artifact(influence, "influence") as f:
        theta = torch.from_numpy(np.asarray(f["theta"][()], dtype=np.float64))
        damping = float(get_attr(f, "damping"))
        fit = (
            get_attr(f, "head_grad_norm"),
            get_attr(f, "head_iterations"),
            get_attr(f, "head_solver"),
            get_attr(f, "head_loss"),
        )
    c, dim = emb.num_classes, emb.x.shape[1]
    head = HeadFit(
        theta[: c * dim].reshape(c, dim),
        theta[c * dim :],
        damping,
        float(fit[0]),
        int(fit[1]),
        str(fit[2]),
        float(fit[3]),
    )
    return _evaluate(emb, head, time.perf_counter() - t0)


def _evaluate(emb: Embeddings, head: HeadFit, seconds: float) -> Refit:
    import torch

    train_loss = _mean_ce(torch.from_numpy(emb.x), torch.from_numpy(emb.y), head)
    test_loss = test_acc = None
    if emb.x_test is not None:
        xt, yt = torch.from_numpy(emb.x_test), torch.from_numpy(emb.y_test)
        test_loss = _mean_ce(xt, yt, head)
        correct = 0
        for a in range(0, xt.shape[0], _CHUNK):
            logits = torch.addmm(head.bias, xt[a : a + _CHUNK].double(), head.weight.T)
            correct += int((logits.argmax(1) == yt[a : a + _CHUNK]).sum())
        test_acc = 100.0 * correct / xt.shape[0]
    return Refit(head, train_loss, test_loss, test_acc, seconds)


def head_config(emb: Embeddings, mask: "MaskInfo", damping: float):
    """The TrainConfig a head refit is recorded under (its key names the run directory, as for other retrains):
    a linear model, one full-batch solve, L2 = damping, on the mask's kept rows."""
    from dpcli.config import TrainConfig

    name = Path(emb.lineage.get("features", "in-memory")).name
    return TrainConfig(
        dataset=f"{SOURCE}:{name}",
        arch="linear",
        width=int(emb.x.shape[1]),
        depth=1,
        epochs=1,
        lr=1.0,
        momentum=0.0,
        weight_decay=float(damping),
        batch_size=int(mask.n_kept),
        augment=False,
        seed=0,
        subset=mask.fingerprint,
    )


def head_checkpoint_path(mask: "MaskInfo", damping: float) -> Path:
    """Where ``retrain`` (and ``verify-bound``) put the refit of ``mask``: beside it, keyed like other retrains."""
    from dpcli.artifacts.runs import retrain_path

    emb_stub = Embeddings(np.empty((0, 0), np.float32), np.empty(0, np.int64), 0)
    return retrain_path(Path(mask.path), head_config(emb_stub, mask, damping).replace(dataset=SOURCE, width=1))


def _reusable_head(out: Path, mask: "MaskInfo", emb: Embeddings, damping: float) -> dict | None:
    """The metrics of a refit already at ``out`` for this very mask, features and L2 (else None)."""
    import h5py

    from dpcli.artifacts.h5 import get_attr

    if not out.is_file() or not h5py.is_hdf5(str(out)):
        return None
    try:
        with h5py.File(out, "r") as f:
            lineage = get_attr(f, "lineage") or {}
            ok = (
                get_attr(f, "dpcli_kind") == "checkpoint"
                and get_attr(f, "source") == SOURCE
                and lineage.get("mask_fingerprint") == mask.fingerprint
                and get_attr(f, "dataset_fingerprint") == emb.fingerprint
                and float(get_attr(f, "damping", float("nan"))) == float(damping)
                and bool(get_attr(f, "complete"))
                and get_attr(f, "refit_objective") == REFIT_OBJECTIVE
            )
            return dict(get_attr(f, "metrics")) if ok else None
    except (OSError, KeyError, TypeError, ValueError):
        return None


def write_head_checkpoint(
    out: Path, sub: Refit, emb: Embeddings, mask: "MaskInfo", damping: float, metrics: dict[str, Any]
) -> None:
    """The refit as a checkpoint artifact (atomic, lineage, readable by :func:`dpcli.train.checkpoint.load_checkpoint`):
    ``model/head.weight`` (C x D) and ``model/head.bias`` in float64, one history row, the kept indices."""
    from dpcli.artifacts.h5 import array_fingerprint, atomic_h5, set_attr
    from dpcli.train.checkpoint import EpochRecord

    weight, bias = sub.head.weight.cpu().numpy(), sub.head.bias.cpu().numpy()
    config = head_config(emb, mask, damping)
    rec = EpochRecord(
        epoch=1,
        train_loss=sub.train_loss,
        train_acc=float("nan"),
        test_loss=float("nan") if sub.test_loss is None else sub.test_loss,
        test_acc=float("nan") if sub.test_accuracy is None else sub.test_accuracy,
        seconds=sub.seconds,
        steps=sub.head.iterations,
        lr=1.0,
    )
    lineage = {
        "mask": str(Path(mask.path).resolve()),
        "mask_fingerprint": mask.fingerprint,
        "influence": str(mask.influence),
        **emb.lineage,
    }
    attrs = {
        "config": config.to_dict(),
        "dataset": config.dataset,
        "dataset_fingerprint": emb.fingerprint,
        "n_train": emb.n,
        "skipped_files": {"count": 0, "first": []},
        "num_classes": emb.num_classes,
        "epoch": 1,
        "complete": True,
        "fingerprint": array_fingerprint(weight, bias),
        "lineage": lineage,
        "world_size": 1,
        "source": SOURCE,
        "damping": float(damping),
        "head_solver": sub.head.solver,
        "head_iterations": sub.head.iterations,
        "head_grad_norm": sub.head.grad_norm,
        "head_loss": sub.head.loss,
        "metrics": metrics,
        "refit_objective": REFIT_OBJECTIVE,
        "note": f"the last layer refitted to the optimum of {REFIT_OBJECTIVE}: the model S predicts",
    }
    with atomic_h5(out, "checkpoint", attrs) as f:
        g = f.create_group("model")
        g.create_dataset("head.weight", data=weight)
        g.create_dataset("head.bias", data=bias)
        set_attr(f.create_group("optimizer"), "param_groups", [])
        set_attr(f, "scheduler", {})
        h = f.create_group("history")
        for key in EpochRecord.__dataclass_fields__:
            h.create_dataset(key, data=np.array([getattr(rec, key)], dtype=np.float64))
        f.create_dataset("keep_indices", data=mask.keep_indices)


def retrain_head(
    mask: "MaskInfo",
    out: Path | None = None,
    *,
    force: bool = False,
    info: Callable[[str], None] | None = None,
    loaded: tuple[Embeddings, float] | None = None,
) -> dict[str, Any]:
    """``retrain`` for an embeddings run: refit on the kept rows, compared with the full-data optimum.

    Writes a checkpoint artifact (reused when it was made from this mask, these features and this L2)
    and ``metrics.json`` beside it; returns the metrics.  ``loaded``: the run's features, already
    checked by :func:`reload_embeddings` (verify-bound refits several masks of one run)."""
    import torch

    from dpcli.artifacts.h5 import check_writable, write_json
    from dpcli.stages.bound import influence_sum

    emb, damping = loaded if loaded is not None else reload_embeddings(mask.influence)
    if mask.n != emb.n:
        raise DpcliError(f"{mask.path}: mask has n={mask.n} but the features have {emb.n} rows")
    out = Path(out) if out is not None else head_checkpoint_path(mask, damping)
    cached = None if force else _reusable_head(out, mask, emb, damping)
    if cached is not None:
        if info is not None:
            info(f"reusing {out}")
        return cached
    check_writable(out)
    full = full_fit(mask.influence, emb)
    # from the full-data optimum: pruning moves it little, so Newton needs a few steps instead of ~8 from zero
    sub = refit(emb, mask.keep, damping, init=(full.head.weight, full.head.bias))
    change = torch.cat([(sub.head.weight - full.head.weight).reshape(-1), sub.head.bias - full.head.bias]).numpy()
    predicted = influence_sum(Path(mask.influence), ~mask.keep)
    metrics = {
        "checkpoint": str(out),
        "mask": str(mask.path),
        "influence": mask.influence,
        "n_kept": mask.n_kept,
        "n_pruned": mask.n_pruned,
        "prune_ratio": mask.n_pruned / mask.n,
        "arch": "linear",
        "epochs": 1,
        "mode": "head refit on frozen features",
        "damping": damping,
        "objective": REFIT_OBJECTIVE,
        "l2_over_kept_mean": damping * mask.n / mask.n_kept,
        "head_grad_norm": sub.head.grad_norm,
        "head_iterations": sub.head.iterations,
        "head_solver": sub.head.solver,
        "optimizer_steps": sub.head.iterations,
        "train_seconds": sub.seconds,
        "test_loss": sub.test_loss,
        "test_accuracy": sub.test_accuracy,
        "train_loss_all": sub.train_loss,
        "full_data_test_loss": full.test_loss,
        "full_data_test_accuracy": full.test_accuracy,
        "full_data_train_loss_all": full.train_loss,
        "parameter_change": float(np.linalg.norm(change)),
        # Theorem 1's first-order prediction and what it misses (second order); None for a sketched S
        "predicted_change": float(np.linalg.norm(predicted)) if predicted.shape == change.shape else None,
        "first_order_residual": (
            float(np.linalg.norm(predicted - change)) if predicted.shape == change.shape else None
        ),
        "metrics_file": str(out.with_name("metrics.json")),
    }
    write_head_checkpoint(out, sub, emb, mask, damping, metrics)
    write_json(out.with_name("metrics.json"), metrics)
    return metrics
