"""The frozen-backbone / embeddings path: features in, exact last-layer influence out.

When the backbone is fixed (``--freeze-backbone``, or features from any encoder passed with
``influence --features``), the trained parameters are those of an L2-regularized softmax
regression, fitted to its optimum by :mod:`dpcli.influence.head`.  That objective is strongly
convex, so the paper's Theorem 1 holds exactly: S from :mod:`dpcli.influence.estimators` with
``damping`` equal to the L2 coefficient is the true Hessian inverse at the optimum, ``retrain`` is a
refit of the head on the kept rows, and the observed gap of ``verify-bound`` has no seed noise.

The in-memory functions are the primitive (:func:`fit_embeddings`, :func:`solve_rows`,
:func:`influence_in_memory`, what :mod:`dpcli.api` calls); :func:`embeddings_influence` wraps them
with the ``influence.h5`` artifact.  Input files are read by :mod:`dpcli.data.embeddings`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dpcli.data.embeddings import SOURCE, Embeddings, load_embeddings, load_external_S, reload_embeddings
from dpcli.errors import DpcliError
from dpcli.influence.head import DEFAULT_DAMPING, DEFAULT_MAX_ITER, DEFAULT_TOL, HeadFit, fit_head, objective

if TYPE_CHECKING:
    from torch import Tensor

    from dpcli.config import InfluenceConfig, PruneConfig
    from dpcli.influence.sketch import Sketch
    from dpcli.stages.core import InfluenceInfo, MaskInfo

_CHUNK = 8192
Sink = Callable[[int, np.ndarray], None]


# ------------------------------------------------------------------------------------------ influence
@dataclass
class Fitted:
    """The head fitted on a run's features, on the device the solves run on, with what the artifact stores."""

    x: "Tensor"
    y: "Tensor"
    head: HeadFit
    damping: float
    loss: np.ndarray       # per-sample CE at the optimum (float32)
    grad_norm: np.ndarray  # per-sample ||g_i|| (float32)
    test_grad: np.ndarray | None  # mean test-loss gradient (float64), when test features were given
    seconds: float


def fit_embeddings(emb: Embeddings, damping: float = DEFAULT_DAMPING, *, tol: float = DEFAULT_TOL,
                   max_iter: int = DEFAULT_MAX_ITER, device: Any = None,
                   info: Callable[[str], None] | None = None) -> Fitted:
    """The head fitted to its optimum on ``emb`` and the per-sample statistics selectors read."""
    import torch

    from dpcli.influence import kernels as infl

    t0 = time.perf_counter()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    x, y = torch.from_numpy(emb.x).to(dev), torch.from_numpy(emb.y).to(dev)
    head = fit_head(x, y, emb.num_classes, damping, tol=tol, max_iter=max_iter, info=info)
    losses, norms = infl.loss_and_grad_norm(x, y, head.weight, head.bias)
    test_grad = None
    if emb.x_test is not None:
        test_grad = infl.mean_grad(torch.from_numpy(emb.x_test).to(dev), torch.from_numpy(emb.y_test).to(dev),
                                   head.weight, head.bias).cpu().numpy()
    return Fitted(x, y, head, float(damping), losses.astype(np.float32), norms.astype(np.float32), test_grad,
                  time.perf_counter() - t0)


def sketch_of(cfg: "InfluenceConfig", num_classes: int, dim: int) -> "Sketch | None":
    """The JL sketch S is stored through (None: S itself): known from the shapes, before any fit."""
    from dpcli.influence import sketch as influence_scale

    return influence_scale.make_sketch(cfg, num_classes * (dim + 1))


def solve_rows(fitted: Fitted, cfg: "InfluenceConfig", sink: Sink, *,
               progress: Callable[[int, int], None] | None = None,
               info: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rows of S (or of ``S R`` under ``--sketch``) at the fitted head, float32 to ``sink(start, rows)``;
    returns what the estimator records.  Above the dense limit a sketch is solved first
    (:func:`dpcli.influence.cg.sketched_rows`: k systems instead of one per sample)."""
    from dpcli.influence.base import ESTIMATORS, LastLayer
    from dpcli.influence.cg import sketched_rows
    from dpcli.influence.rows import dense_fits

    x, y, head = fitted.x, fitted.y, fitted.head
    n, dim = x.shape
    sketch = sketch_of(cfg, head.weight.shape[0], dim)
    presketched = sketch is not None and (cfg.estimator == "cg" or not dense_fits(head.weight.shape[0], dim))

    def checked(start: int, rows: np.ndarray) -> None:
        if not np.all(np.isfinite(rows)):
            raise DpcliError("influence produced non-finite values; increase --damping")
        sink(start, sketch.apply(rows) if sketch is not None and not presketched else rows)

    if presketched:
        return sketched_rows(x, y, head.weight, head.bias, fitted.damping, sketch, tol=cfg.cg_tol,
                             max_iter=cfg.cg_max_iter, sink=checked, progress=progress)
    problem = LastLayer(x, y, head.weight, head.bias)  # float64: the optimum, not a rounding of it
    return ESTIMATORS.get(cfg.estimator)(cfg).solve(problem, damping=fitted.damping, rows=(0, n), sink=checked,
                                                 progress=progress, info=info)


def _check_estimator(cfg: "InfluenceConfig") -> None:
    cfg.validate()
    if cfg.estimator == "sgd":
        raise DpcliError("--estimator sgd replays a recorded training run; on features use exact, cg or lissa")


def influence_in_memory(emb: Embeddings, cfg: "InfluenceConfig", damping: float = DEFAULT_DAMPING,
                        tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER,
                        device: Any = None,
                        progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, HeadFit]:
    """S (n x d, or n x k sketched) and the fitted head, without files (what :func:`dpcli.api.influence` returns)."""
    _check_estimator(cfg)
    sketch = sketch_of(cfg, emb.num_classes, emb.x.shape[1])
    S = np.empty((emb.n, emb.num_classes * (emb.x.shape[1] + 1) if sketch is None else sketch.k), dtype=np.float32)
    fitted = fit_embeddings(emb, damping, tol=tol, max_iter=max_iter, device=device)

    def into(start: int, rows: np.ndarray) -> None:
        S[start:start + len(rows)] = rows

    solve_rows(fitted, cfg, into, progress=progress)
    return S, fitted.head


def embeddings_influence(emb: Embeddings, out: Path, cfg: "InfluenceConfig", *, damping: float | None = None,
                         tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER, device: Any = None,
                         progress: Callable[[int, int], None] | None = None,
                         info: Callable[[str], None] | None = None, space: Any = None) -> "InfluenceInfo":
    """``influence --features``: the in-memory fit and solve, written as ``influence.h5`` (S, loss, labels,
    theta, test gradient, lineage), atomically; ``space``: the user's index of each row
    (:class:`dpcli.data.samples.SampleSpace`), for a dataset's features."""
    import torch

    from dpcli.artifacts.h5 import StreamHash, atomic_h5, check_space, create_rows, set_attr
    from dpcli.influence import sketch as influence_scale
    from dpcli.stages.core import read_influence_info

    _check_estimator(cfg)
    t0 = time.perf_counter()
    damping = DEFAULT_DAMPING if damping is None else float(damping)
    n, dim = emb.x.shape
    c = emb.num_classes
    d = c * (dim + 1)
    sketch = sketch_of(cfg, c, dim)
    width = d if sketch is None else sketch.k
    check_space(out, 4 * n * width, f"S ({n:,} x {width:,} float32)")  # before the fit: refused in a second
    fitted = fit_embeddings(emb, damping, tol=tol, max_iter=max_iter, device=device, info=info)
    head = fitted.head
    attrs = {
        "method": cfg.estimator, "damping": float(damping), "n": n, "d": d, "num_classes": c, "feature_dim": dim,
        "config": {**cfg.to_dict(), "damping": damping, "source": SOURCE}, "checkpoint": "",
        "checkpoint_fingerprint": "", "dataset": f"{SOURCE}:{Path(emb.lineage.get('features', 'in-memory')).name}",
        "dataset_fingerprint": emb.fingerprint, "source": SOURCE, "lineage": emb.lineage,
        "head_solver": head.solver, "head_iterations": head.iterations, "head_grad_norm": head.grad_norm,
        "head_loss": head.loss, "head_seconds": fitted.seconds, "head_hvps": head.hvps, "head_tol": float(tol),
        "head_max_iter": int(max_iter), "class_names": list(emb.classes or ()),
        "epsilon_convention": "S_i includes the 1/n factor (Eq. 3): ||sum S_i|| is the predicted parameter change",
        "parameter_order": "last layer: weight (C x D) row-major, then bias (C)",
    }
    attrs.update(influence_scale.output_attrs(cfg, n, None))
    with atomic_h5(out, "influence", attrs) as f:
        dset = create_rows(f, "S", n, width)
        hasher = StreamHash()

        def write(start: int, rows: np.ndarray) -> None:
            dset[start:start + len(rows)] = rows
            hasher.update(rows)

        for key, value in solve_rows(fitted, cfg, write, progress=progress, info=info).items():
            set_attr(f, key, value)
        f.create_dataset("loss", data=fitted.loss)
        f.create_dataset("grad_norm", data=fitted.grad_norm)
        f.create_dataset("labels", data=emb.y)
        if fitted.test_grad is not None:
            f.create_dataset("test_grad", data=fitted.test_grad.astype(np.float64))
        f.create_dataset("theta", data=torch.cat([head.weight.reshape(-1), head.bias]).cpu().numpy())
        if space is not None:
            space.write(f)
        f.attrs["fingerprint"] = hasher.hexdigest()
        f.attrs["seconds"] = time.perf_counter() - t0
    return read_influence_info(out)


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
        test = "" if self.test_loss is None else \
            f", test_loss={self.test_loss:.6g}, test_accuracy={self.test_accuracy:.2f}%"
        return f"Refit(train_loss={self.train_loss:.6g}{test}, seconds={self.seconds:.2f}, head={self.head!r})"


REFIT_OBJECTIVE = "(1/n) sum_kept CE + damping/2 ||[W, b]||^2"


def refit(emb: Embeddings, keep: np.ndarray, damping: float, tol: float = DEFAULT_TOL,
          max_iter: int = DEFAULT_MAX_ITER, init: tuple | None = None) -> Refit:
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
    head = fit_head(x[idx], y[idx], emb.num_classes, damping * emb.n / len(idx), tol=tol, max_iter=max_iter,
                    init=init)
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
        fit = (get_attr(f, "head_grad_norm"), get_attr(f, "head_iterations"), get_attr(f, "head_solver"),
               get_attr(f, "head_loss"))
    c, dim = emb.num_classes, emb.x.shape[1]
    head = HeadFit(theta[:c * dim].reshape(c, dim), theta[c * dim:], damping, float(fit[0]), int(fit[1]),
                   str(fit[2]), float(fit[3]))
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
            logits = torch.addmm(head.bias, xt[a:a + _CHUNK].double(), head.weight.T)
            correct += int((logits.argmax(1) == yt[a:a + _CHUNK]).sum())
        test_acc = 100.0 * correct / xt.shape[0]
    return Refit(head, train_loss, test_loss, test_acc, seconds)


def head_config(emb: Embeddings, mask: "MaskInfo", damping: float):
    """The TrainConfig a head refit is recorded under (its key names the run directory, as for other retrains):
    a linear model, one full-batch solve, L2 = damping, on the mask's kept rows."""
    from dpcli.config import TrainConfig

    name = Path(emb.lineage.get("features", "in-memory")).name
    return TrainConfig(dataset=f"{SOURCE}:{name}", arch="linear", width=int(emb.x.shape[1]), depth=1, epochs=1,
                       lr=1.0, momentum=0.0, weight_decay=float(damping), batch_size=int(mask.n_kept),
                       augment=False, seed=0, subset=mask.fingerprint)


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
            ok = (get_attr(f, "dpcli_kind") == "checkpoint" and get_attr(f, "source") == SOURCE
                  and lineage.get("mask_fingerprint") == mask.fingerprint
                  and get_attr(f, "dataset_fingerprint") == emb.fingerprint
                  and float(get_attr(f, "damping", float("nan"))) == float(damping) and bool(get_attr(f, "complete"))
                  and get_attr(f, "refit_objective") == REFIT_OBJECTIVE)
            return dict(get_attr(f, "metrics")) if ok else None
    except (OSError, KeyError, TypeError, ValueError):
        return None


def write_head_checkpoint(out: Path, sub: Refit, emb: Embeddings, mask: "MaskInfo", damping: float,
                          metrics: dict[str, Any]) -> None:
    """The refit as a checkpoint artifact (atomic, lineage, readable by :func:`dpcli.train.loop.load_checkpoint`):
    ``model/head.weight`` (C x D) and ``model/head.bias`` in float64, one history row, the kept indices."""
    from dpcli.artifacts.h5 import array_fingerprint, atomic_h5, set_attr
    from dpcli.train.loop import EpochRecord

    weight, bias = sub.head.weight.cpu().numpy(), sub.head.bias.cpu().numpy()
    config = head_config(emb, mask, damping)
    rec = EpochRecord(epoch=1, train_loss=sub.train_loss,
                      train_acc=float("nan"), test_loss=float("nan") if sub.test_loss is None else sub.test_loss,
                      test_acc=float("nan") if sub.test_accuracy is None else sub.test_accuracy,
                      seconds=sub.seconds, steps=sub.head.iterations, lr=1.0)
    lineage = {"mask": str(Path(mask.path).resolve()), "mask_fingerprint": mask.fingerprint,
               "influence": str(mask.influence), **emb.lineage}
    attrs = {
        "config": config.to_dict(), "dataset": config.dataset, "dataset_fingerprint": emb.fingerprint,
        "n_train": emb.n, "skipped_files": {"count": 0, "first": []}, "num_classes": emb.num_classes, "epoch": 1,
        "complete": True, "fingerprint": array_fingerprint(weight, bias), "lineage": lineage, "world_size": 1,
        "source": SOURCE, "damping": float(damping), "head_solver": sub.head.solver,
        "head_iterations": sub.head.iterations, "head_grad_norm": sub.head.grad_norm, "head_loss": sub.head.loss,
        "metrics": metrics, "refit_objective": REFIT_OBJECTIVE,
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


def retrain_head(mask: "MaskInfo", out: Path | None = None, *, force: bool = False,
                 info: Callable[[str], None] | None = None,
                 loaded: tuple[Embeddings, float] | None = None) -> dict[str, Any]:
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
        "checkpoint": str(out), "mask": str(mask.path), "influence": mask.influence, "n_kept": mask.n_kept,
        "n_pruned": mask.n_pruned, "prune_ratio": mask.n_pruned / mask.n, "arch": "linear", "epochs": 1,
        "mode": "head refit on frozen features", "damping": damping, "objective": REFIT_OBJECTIVE,
        "l2_over_kept_mean": damping * mask.n / mask.n_kept,
        "head_grad_norm": sub.head.grad_norm, "head_iterations": sub.head.iterations, "head_solver": sub.head.solver,
        "optimizer_steps": sub.head.iterations, "train_seconds": sub.seconds,
        "test_loss": sub.test_loss, "test_accuracy": sub.test_accuracy, "train_loss_all": sub.train_loss,
        "full_data_test_loss": full.test_loss, "full_data_test_accuracy": full.test_accuracy,
        "full_data_train_loss_all": full.train_loss,
        "parameter_change": float(np.linalg.norm(change)),
        # Theorem 1's first-order prediction and what it misses (second order); None for a sketched S
        "predicted_change": float(np.linalg.norm(predicted)) if predicted.shape == change.shape else None,
        "first_order_residual": (float(np.linalg.norm(predicted - change)) if predicted.shape == change.shape
                                 else None),
        "metrics_file": str(out.with_name("metrics.json")),
    }
    write_head_checkpoint(out, sub, emb, mask, damping, metrics)
    write_json(out.with_name("metrics.json"), metrics)
    return metrics




# ------------------------------------------------------------------------------------------ verify-bound
def verify_bound(influence: Path, masks: list["MaskInfo"], out_dir: Path, *, random_seed: int = 0,
                 force: bool = False, info_line: Callable[[str], None] | None = None) -> dict:
    """Theorem 1 on an embeddings run: predicted bound beside the observed test-loss gap of exact refits
    (no seed noise: every fit is deterministic and run to its optimum).  Each mask is paired with random
    pruning of the same count."""
    from dpcli.artifacts.h5 import write_json
    from dpcli.stages.bound import BoundRow, plot, predict
    from dpcli.stages.core import random_mask, read_influence_info

    emb, damping = reload_embeddings(influence)
    if emb.x_test is None:
        raise DpcliError(f"{influence}: verify-bound needs test features; rerun influence with "
                         "--test-features and --test-labels")
    info = read_influence_info(influence)
    full = full_fit(influence, emb)
    rows: list[BoundRow] = []
    for mi in masks:
        if Path(mi.influence).resolve() != Path(influence).resolve():
            raise DpcliError(f"{mi.path}: was pruned from {mi.influence}, not {influence}")
        rnd_path = Path(out_dir) / f"random-{mi.n_pruned}-seed{random_seed}.h5"
        rnd = random_mask(info, mi.n_pruned, random_seed, rnd_path)
        for label, m in ((f"{mi.mode} {mi.target:g}", mi), (f"random {mi.n_pruned}", rnd)):
            if m.n_pruned == 0:
                continue
            # the same checkpoint `retrain` writes (reused)
            sub = retrain_head(m, force=force, info=info_line, loaded=(emb, damping))
            norm, bound, first = predict(Path(influence), ~m.keep)
            rows.append(BoundRow(label=label, method=m.method, mask=str(m.path), n_pruned=m.n_pruned,
                                 prune_ratio=m.n_pruned / m.n, epsilon=m.target if m.mode == "epsilon" else None,
                                 norm=norm, predicted_bound=bound, first_order=first,
                                 observed_gap=sub["test_loss"] - full.test_loss, test_loss=sub["test_loss"],
                                 test_accuracy=sub["test_accuracy"], parameter_change=sub["parameter_change"],
                                 first_order_residual=sub["first_order_residual"]))
    report = {"command": "verify-bound", "source": SOURCE, "influence": str(influence), "n": emb.n,
              "full_test_loss": full.test_loss, "full_test_accuracy": full.test_accuracy,
              "note": f"head refits to the optimum of {REFIT_OBJECTIVE} on frozen features (the model S predicts): "
                      "the observed gap has no seed noise",
              "rows": [r.to_dict() for r in rows]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "bound.json", report)
    if rows:
        plot(rows, out_dir / "bound.png")
    return report


# ------------------------------------------------------------------------------------------ frozen backbone
def freeze_backbone(config, ds, out_dir: Path, *, device: Any, icfg: "InfluenceConfig",
                    damping: float | None = None, info: Callable[[str], None] | None = None,
                    head_fit: tuple[float, int] = (DEFAULT_TOL, DEFAULT_MAX_ITER)) -> "InfluenceInfo":
    """``train --freeze-backbone``: features of the (pretrained) backbone computed once and cached as
    .npy in ``out_dir``, then the head fit (``head_fit`` = its tol and max_iter) and exact influence of
    :func:`embeddings_influence`, all on ``device``."""
    from dpcli.artifacts.h5 import config_key
    from dpcli.train.loop import extract_features, make_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = config_key({k: v for k, v in config.to_dict().items()
                      if k in ("dataset", "arch", "weights", "head_module", "width", "depth", "seed", "image_size")})
    files = {s: (out_dir / f"{s}-features-{key}.npy", out_dir / f"{s}-labels-{key}.npy") for s in ("train", "test")}
    if not all(p.exists() for pair in files.values() for p in pair):
        model = make_model(config, ds).to(device).eval()
        for split_name, split in (("train", ds.train), ("test", ds.test)):
            feats = extract_features(model, split, ds, device).cpu().numpy()
            np.save(files[split_name][0], feats)
            np.save(files[split_name][1], np.asarray(split.labels, dtype=np.int64))
    elif info is not None:
        info(f"reusing cached backbone features in {out_dir}")
    emb = load_embeddings(*files["train"], *files["test"], num_classes=ds.num_classes)
    if ds.input is not None:  # the features were computed with the weights' own preprocessing
        from dpcli.models import preprocess

        emb.lineage[preprocess.LINEAGE_KEY] = preprocess.to_dict(ds.input)
    damping = damping if damping is not None else (config.weight_decay or DEFAULT_DAMPING)
    tol, max_iter = head_fit
    return embeddings_influence(emb, out_dir / "influence.h5", icfg, damping=damping, tol=tol, max_iter=max_iter,
                                device=device, info=info, space=ds.samples)
