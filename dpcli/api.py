"""The Python API: from features (or a model and its inputs) to S, and from S to certified keep indices.

Same defaults as the CLI, built on the same stage functions, and every keyword is the CLI flag's name
(``--prune-ratio`` is ``prune_ratio=``), so an error that names a flag names the keyword too::

    import dpcli.api as dp
    S, head = dp.influence(features, labels)              # n x d, exact at the fitted head's optimum
    sel = dp.prune(S, epsilon=1e-3)                       # largest set with ||sum S_pruned|| <= 1e-3
    sel.keep_indices, sel.norm                            # what to train on, the certified norm
    sel = dp.prune(S, prune_ratio=0.7, labels=labels, features=features)  # auto: validated on held-out features
    sel.auto["line"]                                      # what auto chose and why

``influence`` fits the last layer as L2-regularized softmax regression to convergence (the
frozen-backbone setting of the paper's Theorem 1), so S is the exact first-order parameter change.

Silent by default: progress and messages go to the ``logging`` logger ``"dpcli"`` (INFO: a line when a
stage starts, every ``$DPCLI_PROGRESS_INTERVAL`` seconds, and when it ends) and, per call, to an optional
``progress`` callback that gets a :class:`ProgressEvent` at every update.  Every error is a
:class:`dpcli.errors.DpcliError` with a one-line message.
"""

from __future__ import annotations

import numbers
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from dpcli import console
from dpcli.console import ProgressEvent
from dpcli.errors import DpcliError
from dpcli.influence.head import DEFAULT_DAMPING, DEFAULT_MAX_ITER, DEFAULT_TOL, HeadFit
from dpcli.select.certificate import KeepMask
from dpcli.stages.heads import Refit

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["influence", "influence_file", "prune", "refit", "embed", "Selection", "HeadFit", "Refit", "ProgressEvent"]

Progress = Optional[Callable[[ProgressEvent], None]]


def influence(
    features: Any,
    labels: Any,
    *,
    damping: float = DEFAULT_DAMPING,
    estimator: str = "exact",
    sketch: int | None = None,
    sketch_seed: int = 0,
    cg_tol: float = 1e-6,
    cg_max_iter: int = 1000,
    num_classes: int | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    progress: Progress = None,
) -> tuple[np.ndarray, HeadFit]:
    """S (n x d float32; n x ``sketch`` when sketched) for frozen ``features`` (n x D) and labels (integers
    0..C-1 or class names).

    ``damping`` is both the head's L2 coefficient and the Hessian's damping, so H is the Hessian of
    the objective actually minimized.  Returns S and the fitted head (``grad_norm`` says how close
    to the optimum it got).
    """
    from dpcli.config import InfluenceConfig
    from dpcli.data.embeddings import from_arrays
    from dpcli.stages import embeddings

    with console.library(progress):
        _numbers(
            damping=damping,
            sketch=sketch,
            sketch_seed=sketch_seed,
            cg_tol=cg_tol,
            cg_max_iter=cg_max_iter,
            num_classes=num_classes,
            tol=tol,
            max_iter=max_iter,
        )
        _names(estimator=estimator)
        emb = from_arrays(_matrix(features, "features"), _vector(labels, "labels"), num_classes=num_classes)
        cfg = InfluenceConfig(
            estimator=estimator,
            damping=damping,
            cg_tol=cg_tol,
            cg_max_iter=cg_max_iter,
            sketch_k=sketch,
            sketch_seed=sketch_seed,
        ).validate()
        with console.progress_bar(f"influence ({estimator}, features)", total=emb.n) as update:
            return embeddings.influence_in_memory(
                emb, cfg, damping=damping, tol=tol, max_iter=max_iter, progress=lambda done, total: update(done, total)
            )


def influence_file(
    features: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    test_features: str | Path | None = None,
    test_labels: str | Path | None = None,
    damping: float = DEFAULT_DAMPING,
    estimator: str = "exact",
    sketch: int | None = None,
    sketch_seed: int = 0,
    cg_tol: float = 1e-6,
    cg_max_iter: int = 1000,
    progress: Progress = None,
) -> Path:
    """What ``dpcli influence --features F --labels L --out OUT`` does: an influence.h5 with lineage."""
    from dpcli.config import InfluenceConfig
    from dpcli.data.embeddings import load_embeddings
    from dpcli.stages import embeddings

    with console.library(progress):
        _numbers(damping=damping, sketch=sketch, sketch_seed=sketch_seed, cg_tol=cg_tol, cg_max_iter=cg_max_iter)
        _names(estimator=estimator)
        cfg = InfluenceConfig(
            estimator=estimator,
            damping=damping,
            cg_tol=cg_tol,
            cg_max_iter=cg_max_iter,
            sketch_k=sketch,
            sketch_seed=sketch_seed,
        ).validate()
        emb = load_embeddings(Path(features), Path(labels), _opt(test_features), _opt(test_labels))
        with console.progress_bar(f"influence ({estimator}, features)", total=emb.n) as update:
            return embeddings.embeddings_influence(
                emb,
                Path(out),
                cfg,
                damping=damping,
                info=console.info,
                progress=lambda done, total: update(done, total),
            ).path


@dataclass(frozen=True, repr=False)
class Selection(KeepMask):
    """A certified pruning: ``norm`` is ``||sum_{pruned} S_i||`` recomputed from S."""

    keep: np.ndarray  # bool, True = train on it
    norm: float
    epsilon: float | None
    solver: str
    auto: dict | None = None  # method="auto": what it measured and chose (as in mask.h5's ``auto`` attribute)

    def __repr__(self) -> str:
        eps = "" if self.epsilon is None else f", epsilon={self.epsilon:g}"
        chosen = "" if self.auto is None else f", auto={self.auto.get('chosen')!r}"
        return (
            f"Selection(n={self.keep.size}, kept={self.n_kept}, pruned={self.n_pruned}, norm={self.norm:.6g}"
            f"{eps}, solver={self.solver!r}{chosen})"
        )


def prune(
    S: Any,
    *,
    epsilon: float | None = None,
    prune_ratio: float | None = None,
    prune_count: int | None = None,
    labels: Any = None,
    features: Any = None,
    method: str = "auto",
    solver: str = "swap",
    solver_seed: int = 0,
    time_budget: float | None = None,
    balance: bool = False,
    progress: Progress = None,
) -> Selection:
    """Choose the samples to prune from S exactly as ``dpcli prune`` does, and certify the result.

    Give one of ``epsilon`` (largest set within the norm bound), ``prune_ratio`` or ``prune_count`` (that
    many, smallest norm).  ``labels`` (integers or class names) are needed by class-aware options
    (``balance``) and by ``auto``, which also needs the penultimate ``features`` (n x D) to validate its
    choice; without them it runs the paper's objective within class quotas (``method="optimization",
    balance=True``) and says why in ``Selection.auto``.
    """
    import torch

    from dpcli.config import PruneConfig
    from dpcli.data.embeddings import check_features, check_labels, encode_labels
    from dpcli.select.base import Context, select
    from dpcli.select.linalg import float32_rows, nonfinite_rows
    from dpcli.stages.masks import certify_selection

    with console.library(progress):
        S = _matrix(S, "S")
        if S.dtype == np.float32 and S.flags.c_contiguous:  # a memory map stays one: checked by row chunks
            bad = nonfinite_rows(S)
        else:
            S, bad = float32_rows(S)
        if bad:
            raise DpcliError(f"S has {bad} rows with NaN or inf")
        _numbers(
            epsilon=epsilon,
            prune_ratio=prune_ratio,
            prune_count=prune_count,
            solver_seed=solver_seed,
            time_budget=time_budget,
        )
        _names(method=method, solver=solver)
        cfg = PruneConfig(
            epsilon=epsilon,
            ratio=prune_ratio,
            count=prune_count,
            solver=solver,
            seed=solver_seed,
            time_budget=time_budget,
            method=method,
            balance=bool(balance),
        ).validate()
        if balance and labels is None:
            raise DpcliError("balance=True needs labels")
        n = S.shape[0]
        cfg.check_against(n)
        y = (
            np.zeros(n, dtype=np.int64)
            if labels is None
            else check_labels(encode_labels(_vector(labels, "labels"), None, "labels")[0], n, None, "labels")
        )
        with console.progress_bar(f"prune ({solver if method == 'optimization' else method})", total=1.0) as update:
            ctx = Context(S=S, labels=y, device=torch.device("cpu"), progress=lambda f: update(f))
            if features is not None:
                x = check_features(_matrix(features, "features"), "features")
                if x.shape[0] != n:
                    raise DpcliError(f"features have {x.shape[0]} rows but S has {n}")
                ctx.supply(features=x)
            pruned, used = select(cfg, ctx)
            update(1.0)
        cert = certify_selection(S, pruned, cfg, ctx)  # says what the kept set lacks: classes, class shares
        return Selection(np.array(cert.keep), cert.norm, cert.epsilon, used, ctx.record.get("auto"))


def refit(
    features: Any,
    labels: Any,
    keep: Any,
    *,
    damping: float = DEFAULT_DAMPING,
    test_features: Any = None,
    test_labels: Any = None,
    progress: Progress = None,
) -> Refit:
    """Refit the head on the kept rows (what ``retrain`` does on an embeddings run).

    ``keep`` is a boolean mask, True = train on it (``Selection.keep``), or a :class:`Selection`."""
    from dpcli.data.embeddings import from_arrays
    from dpcli.stages import heads

    with console.library(progress):
        emb = from_arrays(
            _matrix(features, "features"),
            _vector(labels, "labels"),
            None if test_features is None else _matrix(test_features, "test features"),
            None if test_labels is None else _vector(test_labels, "test labels"),
        )
        mask = _keep_mask(keep, emb.n)
        with console.progress_bar("refit"):
            return heads.refit(emb, mask, _damping(damping))


def embed(
    model: "nn.Module",
    inputs: Any,
    *,
    batch_size: int = 256,
    head_module: str | None = None,
    device: str = "cpu",
    progress: Progress = None,
) -> np.ndarray:
    """Penultimate features (N x D float32) of ``inputs`` from any classifier: its last linear layer is found
    (``fc``, ``classifier``, ``head``, timm ``get_classifier()``, or ``head_module``) and bypassed, and the
    model is left as it was.

    ``inputs`` is a tensor or array (N x ...) or any map-style ``torch.utils.data.Dataset`` whose items are
    ``x`` or ``(x, y, ...)`` with ``x`` a tensor or array (e.g. ``ImageFolder`` with a ``ToTensor`` transform);
    a dataset is read in order by a DataLoader.  Feed the result to :func:`influence`."""
    import torch

    from dpcli.models.library import split_head
    from dpcli.train.loop import resolve_device

    with console.library(progress):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DpcliError(f"batch_size must be a positive integer, got {batch_size!r}")
        dev = resolve_device(device)
        if not isinstance(model, torch.nn.Module):
            raise DpcliError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        body, _ = split_head(model, head_module)
        body = body.to(dev).eval()
        batches, total = _batches(inputs, int(batch_size))
        out = []
        done = 0
        with console.progress_bar("embed", total=total) as update, torch.no_grad():
            for x in batches:
                out.append(_forward(body, x.to(dev)))
                done += x.shape[0]
                update(done)
        if not out:
            raise DpcliError("inputs are empty: nothing to embed")
        return torch.cat(out).numpy()


# ------------------------------------------------------------------------------------------ input checks
def _matrix(a: Any, what: str) -> np.ndarray:
    """A 2-D real array (torch tensors and nested lists too), refused in one line otherwise; finiteness is
    checked where the rows are copied to float32 (:func:`float32_rows`), without an n x d boolean array."""
    x = _numpy(_given(a, what), what)
    if x.ndim != 2:
        raise DpcliError(f"{what} must be 2-D (n x d), got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise DpcliError(f"{what} must be real numbers, got dtype {x.dtype}")
    if x.size == 0:
        raise DpcliError(f"{what} is empty (shape {x.shape})")
    return x


def _vector(a: Any, what: str) -> np.ndarray:
    y = _numpy(_given(a, what), what)
    if y.ndim == 0:
        raise DpcliError(f"{what} must be one entry per sample, got a scalar")
    return y


def _given(a: Any, what: str) -> Any:
    """``a``, refused in one line when None (a required array left out)."""
    if a is None:
        raise DpcliError(f"{what} is required, got None")
    return a


def _numpy(a: Any, what: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise DpcliError(f"{what} is not an array: {str(exc).splitlines()[0]}") from None


def _keep_mask(keep: Any, n: int) -> np.ndarray:
    keep = getattr(keep, "keep", keep)  # a Selection
    mask = _numpy(keep, "keep")
    if mask.dtype != bool:
        raise DpcliError(
            f"keep must be a boolean mask (True = train on it), got dtype {mask.dtype}; for indices "
            f"use np.isin(np.arange(n), indices)"
        )
    if mask.shape != (n,):
        raise DpcliError(f"keep has shape {mask.shape} but the features have {n} rows")
    return mask


def _damping(damping: Any) -> float:
    from dpcli.influence import kernels

    _numbers(damping=damping)
    return kernels.check_damping(damping)


def _numbers(**values: Any) -> None:
    """Numeric keywords are real numbers (None where optional), so a string or a flag fails in one line."""
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise DpcliError(f"{name} must be a number, got {value!r}")


def _names(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, str):
            raise DpcliError(f"{name} must be a name (a string), got {value!r}")


def _batches(inputs: Any, batch_size: int) -> tuple[Any, int]:
    """Batches of model inputs from a tensor/array or a map-style dataset, and how many samples."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    if isinstance(inputs, Dataset) or (
        hasattr(inputs, "__getitem__")
        and hasattr(inputs, "__len__")
        and not isinstance(inputs, (np.ndarray, torch.Tensor, list, tuple))
    ):
        loader: DataLoader[Any] = DataLoader(inputs, batch_size=batch_size, shuffle=False, collate_fn=_collate)
        if not isinstance(inputs, Sized):  # an IterableDataset: its size is unknown up front
            raise DpcliError(f"inputs must be a map-style Dataset (with __len__), got {type(inputs).__name__}")
        return iter(loader), len(inputs)
    x = inputs if isinstance(inputs, torch.Tensor) else _numpy(inputs, "inputs")
    if x.ndim < 2 or (x.dtype.is_complex if isinstance(x, torch.Tensor) else x.dtype.kind not in "biuf"):
        raise DpcliError(
            f"inputs must be a batch of real numbers (N x ...) or a Dataset, got shape {tuple(x.shape)} dtype {x.dtype}"
        )
    x = torch.as_tensor(x)
    return (x[a : a + batch_size] for a in range(0, x.shape[0], batch_size)), int(x.shape[0])


def _collate(items: list[Any]) -> "torch.Tensor":
    """The model input of each item (``x`` or the first of ``(x, y, ...)``), stacked."""
    import torch

    xs = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
    odd = next((x for x in xs if not isinstance(x, (torch.Tensor, np.ndarray))), None)
    if odd is not None:
        raise DpcliError(
            f"dataset items must be tensors or arrays, got {type(odd).__name__}; give the dataset a "
            f"transform such as torchvision.transforms.ToTensor()"
        )
    try:
        return torch.stack([torch.as_tensor(x) for x in xs])
    except RuntimeError as exc:
        raise DpcliError(
            f"dataset items must share one shape to be batched ({str(exc).splitlines()[0]}); "
            f"give the dataset a transform that resizes them"
        ) from None


def _forward(body: "nn.Module", x: "torch.Tensor") -> "torch.Tensor":
    import torch

    try:
        return torch.flatten(body(x), 1).float().cpu()
    except (RuntimeError, ValueError, TypeError) as exc:
        raise DpcliError(
            f"the model failed on a batch of shape {tuple(x.shape)}: {str(exc).strip().splitlines()[0]}"
        ) from None


def _opt(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)
