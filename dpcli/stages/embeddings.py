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

from dpcli.data.embeddings import SOURCE, Embeddings, load_embeddings, reload_embeddings
from dpcli.errors import DpcliError
from dpcli.influence.head import DEFAULT_DAMPING, DEFAULT_MAX_ITER, DEFAULT_TOL, HeadFit, fit_head

if TYPE_CHECKING:
    from torch import Tensor

    from dpcli.config import InfluenceConfig
    from dpcli.influence.sketch import Sketch
    from dpcli.stages.core import InfluenceInfo
    from dpcli.stages.masks import MaskInfo
from dpcli.stages.heads import REFIT_OBJECTIVE, full_fit, retrain_head

Sink = Callable[[int, np.ndarray], None]


# ------------------------------------------------------------------------------------------ influence
@dataclass
class Fitted:
    """The head fitted on a run's features, on the device the solves run on, with what the artifact stores."""

    x: "Tensor"
    y: "Tensor"
    head: HeadFit
    damping: float
    loss: np.ndarray  # per-sample CE at the optimum (float32)
    grad_norm: np.ndarray  # per-sample ||g_i|| (float32)
    test_grad: np.ndarray | None  # mean test-loss gradient (float64), when test features were given
    seconds: float


def fit_embeddings(
    emb: Embeddings,
    damping: float = DEFAULT_DAMPING,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    device: Any = None,
    info: Callable[[str], None] | None = None,
) -> Fitted:
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
        test_grad = (
            infl.mean_grad(
                torch.from_numpy(emb.x_test).to(dev), torch.from_numpy(emb.y_test).to(dev), head.weight, head.bias
            )
            .cpu()
            .numpy()
        )
    return Fitted(
        x,
        y,
        head,
        float(damping),
        losses.astype(np.float32),
        norms.astype(np.float32),
        test_grad,
        time.perf_counter() - t0,
    )


def sketch_of(cfg: "InfluenceConfig", num_classes: int, dim: int) -> "Sketch | None":
    """The JL sketch S is stored through (None: S itself): known from the shapes, before any fit."""
    from dpcli.influence import sketch as influence_scale

    return influence_scale.make_sketch(cfg, num_classes * (dim + 1))


def solve_rows(
    fitted: Fitted,
    cfg: "InfluenceConfig",
    sink: Sink,
    *,
    progress: Callable[[int, int], None] | None = None,
    info: Callable[[str], None] | None = None,
) -> dict[str, Any]:
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
        return sketched_rows(
            x,
            y,
            head.weight,
            head.bias,
            fitted.damping,
            sketch,
            tol=cfg.cg_tol,
            max_iter=cfg.cg_max_iter,
            sink=checked,
            progress=progress,
        )
    problem = LastLayer(x, y, head.weight, head.bias)  # float64: the optimum, not a rounding of it
    return ESTIMATORS.get(cfg.estimator)(cfg).solve(
        problem, damping=fitted.damping, rows=(0, n), sink=checked, progress=progress, info=info
    )


def _check_estimator(cfg: "InfluenceConfig") -> None:
    cfg.validate()
    if cfg.estimator == "sgd":
        raise DpcliError("--estimator sgd replays a recorded training run; on features use exact, cg or lissa")


def influence_in_memory(
    emb: Embeddings,
    cfg: "InfluenceConfig",
    damping: float = DEFAULT_DAMPING,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, HeadFit]:
    """S (n x d, or n x k sketched) and the fitted head, without files (what :func:`dpcli.api.influence` returns)."""
    _check_estimator(cfg)
    sketch = sketch_of(cfg, emb.num_classes, emb.x.shape[1])
    S = np.empty((emb.n, emb.num_classes * (emb.x.shape[1] + 1) if sketch is None else sketch.k), dtype=np.float32)
    fitted = fit_embeddings(emb, damping, tol=tol, max_iter=max_iter, device=device)

    def into(start: int, rows: np.ndarray) -> None:
        S[start : start + len(rows)] = rows

    solve_rows(fitted, cfg, into, progress=progress)
    return S, fitted.head


def embeddings_influence(
    emb: Embeddings,
    out: Path,
    cfg: "InfluenceConfig",
    *,
    damping: float | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
    info: Callable[[str], None] | None = None,
    space: Any = None,
) -> "InfluenceInfo":
    """``influence --features``: the in-memory fit and solve, written as ``influence.h5`` (S, loss, labels,
    theta, test gradient, lineage), atomically; ``space``: the user's index of each row
    (:class:`dpcli.data.samples.SampleSpace`), for a dataset's features."""
    import torch

    from dpcli.artifacts.h5 import StreamHash, atomic_h5, set_attr
    from dpcli.artifacts.rows import check_space, create_rows
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
        "method": cfg.estimator,
        "damping": float(damping),
        "n": n,
        "d": d,
        "num_classes": c,
        "feature_dim": dim,
        "config": {**cfg.to_dict(), "damping": damping, "source": SOURCE},
        "checkpoint": "",
        "checkpoint_fingerprint": "",
        "dataset": f"{SOURCE}:{Path(emb.lineage.get('features', 'in-memory')).name}",
        "dataset_fingerprint": emb.fingerprint,
        "source": SOURCE,
        "lineage": emb.lineage,
        "head_solver": head.solver,
        "head_iterations": head.iterations,
        "head_grad_norm": head.grad_norm,
        "head_loss": head.loss,
        "head_seconds": fitted.seconds,
        "head_hvps": head.hvps,
        "head_tol": float(tol),
        "head_max_iter": int(max_iter),
        "class_names": list(emb.classes or ()),
        "epsilon_convention": "S_i includes the 1/n factor (Eq. 3): ||sum S_i|| is the predicted parameter change",
        "parameter_order": "last layer: weight (C x D) row-major, then bias (C)",
    }
    attrs.update(influence_scale.output_attrs(cfg, n, None))
    with atomic_h5(out, "influence", attrs) as f:
        dset = create_rows(f, "S", n, width)
        hasher = StreamHash()

        def write(start: int, rows: np.ndarray) -> None:
            dset[start : start + len(rows)] = rows
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


# ------------------------------------------------------------------------------------------ verify-bound
def verify_bound(
    influence: Path,
    masks: list["MaskInfo"],
    out_dir: Path,
    *,
    random_seed: int = 0,
    force: bool = False,
    info_line: Callable[[str], None] | None = None,
) -> dict:
    """Theorem 1 on an embeddings run: predicted bound beside the observed test-loss gap of exact refits
    (no seed noise: every fit is deterministic and run to its optimum).  Each mask is paired with random
    pruning of the same count."""
    from dpcli.artifacts.h5 import write_json
    from dpcli.stages.bound import BoundRow, plot, predict
    from dpcli.stages.core import read_influence_info
    from dpcli.stages.masks import random_mask

    emb, damping = reload_embeddings(influence)
    if emb.x_test is None:
        raise DpcliError(
            f"{influence}: verify-bound needs test features; rerun influence with --test-features and --test-labels"
        )
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
            rows.append(
                BoundRow(
                    label=label,
                    method=m.method,
                    mask=str(m.path),
                    n_pruned=m.n_pruned,
                    prune_ratio=m.n_pruned / m.n,
                    epsilon=m.target if m.mode == "epsilon" else None,
                    norm=norm,
                    predicted_bound=bound,
                    first_order=first,
                    observed_gap=sub["test_loss"] - full.test_loss,
                    test_loss=sub["test_loss"],
                    test_accuracy=sub["test_accuracy"],
                    parameter_change=sub["parameter_change"],
                    first_order_residual=sub["first_order_residual"],
                )
            )
    report = {
        "command": "verify-bound",
        "source": SOURCE,
        "influence": str(influence),
        "n": emb.n,
        "full_test_loss": full.test_loss,
        "full_test_accuracy": full.test_accuracy,
        "note": f"head refits to the optimum of {REFIT_OBJECTIVE} on frozen features (the model S predicts): "
        "the observed gap has no seed noise",
        "rows": [r.to_dict() for r in rows],
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "bound.json", report)
    if rows:
        plot(rows, out_dir / "bound.png")
    return report


# ------------------------------------------------------------------------------------------ frozen backbone
def freeze_backbone(
    config,
    ds,
    out_dir: Path,
    *,
    device: Any,
    icfg: "InfluenceConfig",
    damping: float | None = None,
    info: Callable[[str], None] | None = None,
    head_fit: tuple[float, int] = (DEFAULT_TOL, DEFAULT_MAX_ITER),
) -> "InfluenceInfo":
    """``train --freeze-backbone``: features of the (pretrained) backbone computed once and cached as
    .npy in ``out_dir``, then the head fit (``head_fit`` = its tol and max_iter) and exact influence of
    :func:`embeddings_influence`, all on ``device``."""
    from dpcli.artifacts.h5 import config_key
    from dpcli.train.loop import extract_features, make_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = config_key(
        {
            k: v
            for k, v in config.to_dict().items()
            if k in ("dataset", "arch", "weights", "head_module", "width", "depth", "seed", "image_size")
        }
    )
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
    return embeddings_influence(
        emb,
        out_dir / "influence.h5",
        icfg,
        damping=damping,
        tol=tol,
        max_iter=max_iter,
        device=device,
        info=info,
        space=ds.samples,
    )
